// data_pipeline/loader.h — the streaming, resumable training-data loader over HDF5 feature shards:
// WeNet's UIO pipeline (shard list -> interleaved shards -> tokenize -> filter -> shuffle buffer ->
// sort buffer -> static/dynamic batch -> padding, wenet/dataset/{dataset,processor}.py) made a pure
// function of (manifest, options, seed, epoch, rank, world) with an exact, cheap cursor
// (asr_toolkits.md §3.3 "Deterministic resume").
//
// The stream, per epoch, on rank r of `world`:
//  1. Shard order: the manifest's shard indices shuffled by Fisher-Yates with Philox keyed by
//     RngKey{seed, kShuffle, epoch} (no shuffle when options.shuffle is false); rank r takes positions
//     r, r+world, r+2*world, ... (rank_shards()). Uneven counts: ranks differ by at most one shard; no
//     shard is dropped or repeated. Since the trainer ends the epoch for everyone when the first rank
//     runs dry (below), the tail of the longer ranks is not trained that epoch; the order is reshuffled
//     every epoch, so it is a different tail each time.
//  2. Interleaving: num_open_shards slots; before each pull every empty slot (in slot order) is filled
//     with the next shard of the rank's list; utterances are taken round robin over the slots, each
//     shard in index order. A shard that fails to open or validate is skipped (logged, counted).
//  3. Per utterance, from the shard index and text only: empty text -> bad (logged, counted);
//     tokenize (OOV -> <unk>, counted); filter as WeNet's processor.filter (frames from the index,
//     i.e. the stored fbank length; WeNet uses wav samples / sample_rate * 100); the kept length after
//     SpecTrim (a pure function of key and length, augment.h) is what sort and batching see.
//  4. Shuffle buffer as WeNet's: collect shuffle_size utterances, shuffle the block (Philox keyed by
//     seed, epoch, rank and the block number), pass all on; the last partial block at the end.
//  5. Sort buffer as WeNet's: collect sort_size, stable-sort ascending by kept frames, pass all on.
//  6. Batching as WeNet's: static (batch_size) or dynamic (DynamicBatchWindow: add while
//     longest * (n + 1) <= max_frames_in_batch; an utterance longer than max_frames_in_batch alone
//     forms a batch of one; WeNet would also emit an empty batch there, we do not). The last partial
//     batch of the epoch is emitted.
//  7. A composed batch is materialized: features read (fp16 in the shard -> float), non-finite
//     features -> the utterance is bad (logged, counted) and dropped from its batch (a batch left empty
//     is skipped); SpecAugment, SpecSub, SpecTrim (augment.h, keyed by seed, epoch, utterance key);
//     padded, ordered by length descending as WeNet's padding().
// Steps 1-6 hold only (shard, utt) ids, never features, so the buffers cost a few bytes per
// utterance and a cursor is just those ids.
//
// Threads and memory: with prefetch_batches > 0 one I/O thread does steps 1-6 and reads features
// (it is the only thread that touches HDF5, under options.hdf5_mutex), one worker thread augments and
// pads; two queues of at most prefetch_batches batches each bound memory. All loaders of a process
// (train + cv) must share one hdf5_mutex (HDF5 is not thread-safe). With prefetch_batches == 0
// everything runs on the caller's thread (same batches).
//
// Ranks end an epoch together (the protocol the trainer follows):
//   RETURN_IF_ERROR(loader->start_epoch(epoch));        // or restore(cursor) when resuming
//   while (allreduce_min(loader->has_next() ? 1 : 0)) {  // MPI_MIN over ranks; may ride on the loss
//     Batch batch;                                       // all-reduce of the previous step
//     Status s = loader->next(&batch);                   // non-OK: fatal on this rank -> abort the
//     ...train on batch...                               // job (MPI_Abort), never just return
//   }
// so when any rank runs dry every rank stops at the same step (no hang in collectives).
// A checkpoint taken after the epoch ended saves "epoch + 1 from its start" (start_epoch on resume),
// not the cursor, whose rank may still hold batches the all-reduce cut off.
//
// Resume: cursor() is the exact position after the last batch next() returned: epoch, this rank's
// shard list and position in it, each open slot's (shard, next utterance), every buffered utterance
// as a (shard, utt) id, the composed-but-not-returned batches, the batch count and the counters.
// restore(cursor) re-opens only the shards those ids name (the shards in flight: at most
// num_open_shards plus the few whose utterances still sit in the buffers), reads their index, and
// the batches that follow equal the uninterrupted run's exactly. remap_cursors() moves a world's
// cursors to another world size at shard granularity.
//
// Bad input: every bad shard / utterance is logged with its path / key and counted; next() fails
// with a message naming the counts only when (bad utterances + utterances of bad shards, by the
// manifest) exceed max_bad_fraction of this rank's planned utterances for the epoch.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/status.h"
#include "data_pipeline/augment.h"
#include "data_pipeline/shard.h"
#include "data_pipeline/tokenizer.h"

namespace moeasr {

// WeNet's processor.filter; frames are 10 ms fbank frames, tokens are after tokenization.
struct FilterOptions {
  int64_t min_frames = 10;                // min_length
  int64_t max_frames = 10240;             // max_length
  int64_t min_tokens = 1;                 // token_min_length
  int64_t max_tokens = 200;               // token_max_length
  double min_token_frame_ratio = 0.0005;  // min_output_input_ratio
  double max_token_frame_ratio = 1.0;     // max_output_input_ratio
};
// True when WeNet's filter keeps an utterance of `frames` frames and `tokens` tokens.
bool filter_keeps(const FilterOptions& filter, int64_t frames, int64_t tokens);

enum class BatchType { kStatic, kDynamic };

using ShardOpenFn = std::function<StatusOr<std::unique_ptr<ShardReader>>(const std::string& path)>;

struct LoaderOptions {
  uint64_t seed = 0;
  int num_open_shards = 4;      // shards read at once, utterances interleaved
  bool shuffle = true;          // shard order and shuffle buffer (false: manifest order, e.g. cv)
  int64_t shuffle_size = 5000;  // WeNet shuffle_conf.shuffle_size
  bool sort = true;
  int64_t sort_size = 1000;  // WeNet sort_conf.sort_size
  FilterOptions filter;
  BatchType batch_type = BatchType::kDynamic;
  int64_t batch_size = 16;                 // static batching
  int64_t max_frames_in_batch = 12000;     // dynamic batching (padded frames)
  AugmentOptions augment;                  // all off by default (cv); training turns them on
  int64_t num_mel_bins = 0;                // 0: taken from the first shard; a shard that differs is bad
  int prefetch_batches = 4;                // 0: no threads, everything on the caller's thread
  double max_bad_fraction = 0.01;          // abort past this fraction of bad utterances (see above)
  bool verify_sha256 = false;              // also check each shard's SHA-256 at open (reads it all)
  std::shared_ptr<std::mutex> hdf5_mutex;  // shared by every loader of the process; made if null
  ShardOpenFn open_shard;                  // default ShardReader::open (tests pass in-memory shards)
};

// One padded batch, as WeNet's padding(): utterances ordered by length, longest first.
struct Batch {
  int64_t epoch = 0;
  int64_t index = 0;  // batches composed before this one in the epoch on this rank
  int64_t num_mel_bins = 0;
  int64_t max_frames = 0;              // T
  int64_t max_tokens = 0;              // L
  std::vector<std::string> keys;       // [B]
  std::vector<float> feats;            // [B, T, F], zero padded
  std::vector<int32_t> feat_lengths;   // [B]
  std::vector<int32_t> tokens;         // [B, L], padded with -1 (WeNet's IGNORE_ID)
  std::vector<int32_t> token_lengths;  // [B]
  int64_t size() const { return static_cast<int64_t>(keys.size()); }
};

// Counters of one rank in one epoch (carried in the cursor, so they survive a resume).
struct LoaderStats {
  int64_t shards_opened = 0;
  int64_t bad_shards = 0;
  int64_t bad_shard_utts = 0;  // utterances of bad shards, from the manifest
  int64_t utts_read = 0;       // utterances pulled from open shards
  int64_t bad_utts = 0;        // empty text, non-finite features, unreadable features
  int64_t filtered_utts = 0;   // dropped by the filter (not bad)
  int64_t tokens = 0;          // tokens of kept utterances
  int64_t unk_tokens = 0;      // of which <unk>
  int64_t batches = 0;         // batches composed
  int64_t frames = 0;          // kept (post-trim) frames of materialized utterances
};

// An utterance: manifest shard index and utterance index in the shard. `frames` (the kept length) is
// a cache, recomputed from the shard index on restore, and not serialized.
struct UttId {
  int32_t shard = -1;
  int32_t utt = 0;
  int32_t frames = 0;
};
inline bool operator==(const UttId& a, const UttId& b) {
  return a.shard == b.shard && a.utt == b.utt;
}

struct ShardSlot {
  int32_t shard = -1;  // manifest index; -1: empty
  int32_t next_utt = 0;
  int32_t num_utts = 0;  // cache (from the shard), not serialized
};

// Exactly where one rank is in an epoch (see the top comment).
struct LoaderCursor {
  uint64_t seed = 0;
  int64_t epoch = 0;
  int32_t rank = 0;
  int32_t world = 1;
  int64_t num_shards = 0;             // manifest size
  uint64_t manifest_fingerprint = 0;  // of (num_utts, num_frames, sha256) per manifest line
  uint64_t options_fingerprint = 0;   // of the options that shape the stream
  std::vector<int32_t> shard_list;    // this rank's shards for the epoch, manifest indices, in order
  int32_t next_list_pos = 0;          // next entry of shard_list to open
  std::vector<ShardSlot> slots;       // num_open_shards
  int32_t next_slot = 0;              // round-robin position
  int64_t shuffle_blocks = 0;         // shuffle blocks formed so far
  std::vector<UttId> shuffle_buffer;  // arrival order
  std::vector<UttId> sort_buffer;     // arrival order
  std::vector<UttId> batch_buffer;    // the batch being composed
  std::vector<std::vector<UttId>> ready_batches;  // composed, not yet returned
  bool flushed = false;                           // the source ran dry and the buffers were flushed
  LoaderStats stats;

  // Little-endian binary with a magic, a version and a trailing checksum.
  std::string serialize() const;
  // Errors say what is wrong (truncated, bad magic/version/checksum, inconsistent sizes).
  static StatusOr<LoaderCursor> parse(const std::string& bytes);
  // The distinct shards the cursor's slots and ids name (what a restore re-opens), sorted.
  std::vector<int32_t> shards_in_flight() const;
};

// The manifest indices rank `rank` reads in `epoch` (step 1 above). Pure.
std::vector<int32_t> rank_shards(int64_t num_shards, uint64_t seed, int64_t epoch, bool shuffle, int rank,
                                 int world);

// Maps the cursors of all ranks of one world (same epoch and seed, ranks 0..world-1 each once) to
// `new_world` cursors, at shard granularity: shards not yet opened and shards in flight (open in a
// slot or named by any buffered id) are kept, in the epoch's shard order, and dealt round robin to
// the new ranks, each starting with empty slots and buffers. Shards already finished are not read
// again; the utterances of in-flight shards that were already trained are read again (at most about
// num_open_shards shards per old rank, plus those the buffers still named). Counters restart at 0.
StatusOr<std::vector<LoaderCursor>> remap_cursors(const std::vector<LoaderCursor>& cursors, int new_world);

class Loader {
 public:
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // `shards`: manifest entries with paths already resolved (manifest_entry_path); entries with
  // bytes > 0 are also checked against the file size at open (and against sha256 with
  // verify_sha256). `tokenizer` must outlive the loader.
  static StatusOr<std::unique_ptr<Loader>> create(std::vector<ManifestEntry> shards,
                                                  const Tokenizer* tokenizer, LoaderOptions options, int rank,
                                                  int world);
  // Reads and resolves the manifest, then create().
  static StatusOr<std::unique_ptr<Loader>> from_manifest(const std::string& manifest_path,
                                                         const Tokenizer* tokenizer, LoaderOptions options,
                                                         int rank, int world);

  // Starts `epoch` from its beginning (discarding anything prefetched).
  Status start_epoch(int64_t epoch);
  // Continues exactly from `cursor` (from cursor() of this rank, or remap_cursors()). Fails when the
  // cursor belongs to another manifest, seed, rank/world or num_open_shards; a change of other
  // stream options is allowed with a warning (the continuation then follows the new options).
  Status restore(const LoaderCursor& cursor);

  // Whether next() has a batch (or an error) to return; blocks until that is known.
  bool has_next();
  // The next batch; an error when the bad fraction was exceeded, or past the end.
  Status next(Batch* batch);

  // The position after the last batch next() returned (or the epoch start / restored cursor).
  const LoaderCursor& cursor() const;
  const LoaderStats& stats() const { return cursor().stats; }
  int64_t num_shards() const;

 private:
  struct Impl;
  explicit Loader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace moeasr
