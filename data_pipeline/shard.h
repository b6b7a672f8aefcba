// data_pipeline/shard.h — the HDF5 feature shard of DESIGN.md §5 and its manifest: written once by
// `moe-asr make_shards` (ShardWriter), read by the loader (ShardReader). Layout of one shard:
//   /feats       float16 [total_frames, num_mel_bins], utterances back to back, chunked along time
//   /index       int64/int32/float32 columns, one row per utterance (ShardIndexEntry)
//   /text, /keys uint8, concatenated UTF-8 (no variable-length HDF5 types)
//   /cmvn_stats  float64 [2, num_mel_bins] (sum x, sum x^2); attribute cmvn_frames (int64)
//   attributes   format_version, fbank_config (JSON text), num_utts, num_frames, num_mel_bins, created_by
// A shard is written to "<path>.tmp" and renamed to <path> by finish(), so a shard that exists is
// complete. The manifest is JSON lines, one shard per line:
//   {"path": "shards/shard_000000.h5", "num_utts": 512, "num_frames": 421337, "bytes": 67432101,
//    "sha256": "9f2c..."}
// with paths relative to the manifest's directory.
//
// Details of the on-disk layout (format_version 1, as written by ShardWriter in shard.cc):
// - /feats is HDF5 IEEE binary16 (a user-defined float type: HDF5 1.10 has no predefined one; it is
//   the same type h5py writes for numpy.float16), chunked along time with chunks of
//   floor(1 MiB / (2 * num_mel_bins)) rows (6553 rows for 80 bins), no filter; writes are buffered so
//   every chunk is written whole.
// - /index is a group of seven 1-D datasets of length num_utts, one per ShardIndexEntry field:
//   /index/frame_offset int64, /index/num_frames int32, /index/text_offset int64,
//   /index/text_bytes int32, /index/key_offset int64, /index/key_bytes int32, /index/duration float32
//   (separate columns rather than a compound type: each reads with one H5Dread, from h5py too).
// - String attributes (fbank_config, created_by) are fixed-length, null-padded C strings; numeric
//   attributes are int64 (num_utts, num_frames, num_mel_bins, cmvn_frames) and int32 (format_version).
// - ShardReader::open checks: the file exists and is HDF5 (a truncated file fails here), format_version
//   is known, every dataset is present with the expected rank/size, the attributes agree with the
//   datasets, and every index row lies inside /feats, /text and /keys. Errors are Status (kNotFound
//   for a missing file, kDataLoss for corruption) whose message starts with the shard's path.
// - HDF5's automatic error printing is switched off (H5Eset_auto2) for the calling thread whenever a
//   writer or reader is made; HDF5 errors become Status messages carrying HDF5's innermost message.
// - File locking is switched off per file (H5Pset_file_locking(fapl, false, true), HDF5 >= 1.10.7):
//   shards are write-once then read-only, and flock fails or hangs on NFS/Lustre/GPFS. With an older
//   HDF5 set HDF5_USE_FILE_LOCKING=FALSE in the environment instead.
// - Objects are created without timestamps (H5Pset_obj_track_times false): the same utterances give
//   byte-identical shards, so reruns reproduce the manifest's sha256.
// - A ShardWriter destroyed without finish() removes its "<path>.tmp".
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace moeasr {

constexpr int32_t kShardFormatVersion = 1;

struct ShardIndexEntry {
  int64_t frame_offset = 0;  // first row in /feats
  int32_t num_frames = 0;
  int64_t text_offset = 0;  // first byte in /text
  int32_t text_bytes = 0;
  int64_t key_offset = 0;  // first byte in /keys
  int32_t key_bytes = 0;
  float duration = 0;  // seconds of audio
};

// Sums for global CMVN (WeNet's mean_stat / var_stat / frame_num), in double.
struct CmvnStats {
  std::vector<double> sum;     // [num_mel_bins]
  std::vector<double> sum_sq;  // [num_mel_bins]
  int64_t frames = 0;
};

class ShardWriter {
 public:
  virtual ~ShardWriter() = default;
  // Creates "<path>.tmp". `fbank_config_json` is stored as the fbank_config attribute.
  static StatusOr<std::unique_ptr<ShardWriter>> create(const std::string& path, int64_t num_mel_bins,
                                                       const std::string& fbank_config_json);
  // Appends one utterance: feats [num_frames, num_mel_bins] (stored as float16; CMVN sums from the
  // fp32 values).
  virtual Status add(const std::string& key, const std::string& text, const float* feats, int64_t num_frames,
                     float duration) = 0;
  // Writes index, text, keys, stats and attributes, closes, renames <path>.tmp -> <path>.
  virtual Status finish() = 0;
};

class ShardReader {
 public:
  virtual ~ShardReader() = default;
  // Opens and validates (format version, datasets present, index consistent with /feats).
  // Errors name the file and what is wrong. Not thread-safe (HDF5): one reader per I/O thread.
  static StatusOr<std::unique_ptr<ShardReader>> open(const std::string& path);
  virtual int64_t num_utts() const = 0;
  virtual int64_t num_mel_bins() const = 0;
  virtual int64_t num_frames() const = 0;
  virtual const ShardIndexEntry& entry(int64_t utt) const = 0;
  virtual std::string key(int64_t utt) const = 0;
  virtual std::string text(int64_t utt) const = 0;
  // feats [entry(utt).num_frames, num_mel_bins] as float32.
  virtual Status read_feats(int64_t utt, float* feats) = 0;
  virtual const CmvnStats& cmvn_stats() const = 0;
  virtual std::string fbank_config_json() const = 0;
  virtual const std::string& path() const = 0;
};

struct ManifestEntry {
  std::string path;  // relative to the manifest's directory
  int64_t num_utts = 0;
  int64_t num_frames = 0;
  int64_t bytes = 0;
  std::string sha256;  // hex
};

// Errors name the manifest file and line.
StatusOr<std::vector<ManifestEntry>> read_manifest(const std::string& manifest_path);
// Atomic: writes "<path>.tmp" then renames.
Status write_manifest(const std::string& manifest_path, const std::vector<ManifestEntry>& entries);
// The absolute (or manifest-relative resolved) path of an entry.
std::string manifest_entry_path(const std::string& manifest_path, const ManifestEntry& entry);

// Checks the shard an entry names: it exists (kNotFound otherwise), its size equals entry.bytes and,
// when check_sha256, its SHA-256 equals entry.sha256 (kDataLoss otherwise). Messages name the shard's
// path and the manifest.
Status verify_shard(const std::string& manifest_path, const ManifestEntry& entry, bool check_sha256);
// Lower-case hex SHA-256 of a file's bytes (OpenSSL EVP), read in 4 MiB blocks.
StatusOr<std::string> sha256_file(const std::string& path);

}  // namespace moeasr
