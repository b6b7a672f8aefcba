// data_pipeline/shard.cc — ShardWriter / ShardReader over the HDF5 C API (layout and checks in
// shard.h), after DESIGN.md §5 and the concatenated-array + index design of asr_toolkits.md §3.3
// (instead of Lhotse's dataset-per-utterance numpy_hdf5).
#include "data_pipeline/shard.h"

#include <fcntl.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <utility>

#include "core/dtype.h"

namespace moeasr {
namespace {

constexpr int64_t kChunkBytes = 1 << 20;  // ~1 MiB chunks along time
constexpr float kF16Max = 65504.0f;
const char* const kCreatedBy = "moe-asr ShardWriter (format_version 1)";

// Owns one HDF5 identifier and closes it with the matching H5?close.
class H5Id {
 public:
  H5Id() = default;
  H5Id(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
  H5Id(H5Id&& other) noexcept : id_(other.id_), close_(other.close_) { other.id_ = -1; }
  H5Id& operator=(H5Id&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = other.id_;
      close_ = other.close_;
      other.id_ = -1;
    }
    return *this;
  }
  ~H5Id() { reset(); }
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Closes now and reports whether closing succeeded (a file's close flushes it).
  bool close() {
    bool ok = true;
    if (id_ >= 0 && close_ != nullptr) ok = close_(id_) >= 0;
    id_ = -1;
    return ok;
  }
  void reset() { (void)close(); }

 private:
  hid_t id_ = -1;
  herr_t (*close_)(hid_t) = nullptr;
};

herr_t collect_error(unsigned, const H5E_error2_t* error, void* data) {
  auto* messages = static_cast<std::vector<std::string>*>(data);
  if (error->desc != nullptr && error->desc[0] != '\0') messages->emplace_back(error->desc);
  return 0;
}

// HDF5's error stack of the calling thread as one line ("<outermost>: <innermost>"), then cleared.
std::string h5_error_message() {
  std::vector<std::string> messages;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_error, &messages);
  H5Eclear2(H5E_DEFAULT);
  if (messages.empty()) return "HDF5 gave no detail";
  if (messages.size() == 1 || messages.front() == messages.back()) return messages.front();
  return messages.front() + ": " + messages.back();
}

// Silences HDF5's automatic printing of error stacks; errors become Status instead.
void quiet_hdf5() {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

// File access properties: no file locking (read-only shards on network filesystems).
H5Id make_fapl() {
  H5Id fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
#if H5_VERSION_GE(1, 10, 7)
  if (fapl.valid()) H5Pset_file_locking(fapl.get(), false, true);
#endif
  return fapl;
}

// IEEE 754 binary16, little endian: sign bit 15, exponent bits 10..14 (bias 15), mantissa bits 0..9.
H5Id make_f16_type() {
  H5Id type(H5Tcopy(H5T_IEEE_F32LE), H5Tclose);
  if (!type.valid()) return type;
  if (H5Tset_fields(type.get(), 15, 10, 5, 0, 10) < 0 || H5Tset_size(type.get(), 2) < 0 ||
      H5Tset_precision(type.get(), 16) < 0 || H5Tset_ebias(type.get(), 15) < 0) {
    return H5Id();
  }
  return type;
}

// Creation properties without object timestamps, so the same content gives the same bytes (and the
// same SHA-256) in every run.
H5Id make_untimed_cpl(hid_t cls) {
  H5Id cpl(H5Pcreate(cls), H5Pclose);
  if (cpl.valid()) H5Pset_obj_track_times(cpl.get(), false);
  return cpl;
}

Status h5_fail(const std::string& path, const std::string& what) {
  return io_error(path + ": " + what + " (" + h5_error_message() + ")");
}

Status write_attribute(hid_t object, const char* name, hid_t mem_type, hid_t file_type, const void* value,
                       const std::string& path) {
  H5Id space(H5Screate(H5S_SCALAR), H5Sclose);
  H5Id attr(H5Acreate2(object, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!attr.valid() || H5Awrite(attr.get(), mem_type, value) < 0) {
    return h5_fail(path, std::string("cannot write attribute ") + name);
  }
  return Status();
}

Status write_int_attribute(hid_t object, const char* name, int64_t value, const std::string& path) {
  return write_attribute(object, name, H5T_NATIVE_INT64, H5T_STD_I64LE, &value, path);
}

Status write_string_attribute(hid_t object, const char* name, const std::string& value,
                              const std::string& path) {
  H5Id type(H5Tcopy(H5T_C_S1), H5Tclose);
  std::string padded = value.empty() ? std::string(1, '\0') : value;
  if (!type.valid() || H5Tset_size(type.get(), padded.size()) < 0 ||
      H5Tset_strpad(type.get(), H5T_STR_NULLPAD) < 0) {
    return h5_fail(path, std::string("cannot make the string type of attribute ") + name);
  }
  return write_attribute(object, name, type.get(), type.get(), padded.data(), path);
}

// Creates a 1-D contiguous dataset holding `count` elements of `data`.
Status write_1d(hid_t location, const char* name, hid_t mem_type, hid_t file_type, const void* data,
                int64_t count, const std::string& path) {
  hsize_t dims[1] = {static_cast<hsize_t>(count)};
  H5Id space(H5Screate_simple(1, dims, nullptr), H5Sclose);
  H5Id dcpl = make_untimed_cpl(H5P_DATASET_CREATE);
  H5Id set(H5Dcreate2(location, name, file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
           H5Dclose);
  if (!set.valid()) return h5_fail(path, std::string("cannot create dataset ") + name);
  if (count > 0 && H5Dwrite(set.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) {
    return h5_fail(path, std::string("cannot write dataset ") + name);
  }
  return Status();
}

class HdfShardWriter final : public ShardWriter {
 public:
  HdfShardWriter(std::string path, int64_t num_mel_bins, std::string fbank_config_json)
      : path_(std::move(path)),
        tmp_path_(path_ + ".tmp"),
        bins_(num_mel_bins),
        fbank_config_json_(std::move(fbank_config_json)) {
    chunk_rows_ = std::max<int64_t>(1, kChunkBytes / (2 * bins_));
    stats_.sum.assign(static_cast<size_t>(bins_), 0.0);
    stats_.sum_sq.assign(static_cast<size_t>(bins_), 0.0);
  }

  ~HdfShardWriter() override {
    if (!finished_) {
      feats_.reset();
      file_.reset();
      std::remove(tmp_path_.c_str());
    }
  }

  Status open() {
    quiet_hdf5();
    f16_ = make_f16_type();
    if (!f16_.valid()) return h5_fail(tmp_path_, "cannot make the float16 type");
    H5Id fapl = make_fapl();
    file_ = H5Id(H5Fcreate(tmp_path_.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), H5Fclose);
    if (!file_.valid()) {
      return h5_fail(tmp_path_,
                     "cannot create the shard file (does its directory exist and is it writable?)");
    }
    hsize_t dims[2] = {0, static_cast<hsize_t>(bins_)};
    hsize_t max_dims[2] = {H5S_UNLIMITED, static_cast<hsize_t>(bins_)};
    hsize_t chunk[2] = {static_cast<hsize_t>(chunk_rows_), static_cast<hsize_t>(bins_)};
    H5Id space(H5Screate_simple(2, dims, max_dims), H5Sclose);
    H5Id dcpl = make_untimed_cpl(H5P_DATASET_CREATE);
    if (!space.valid() || !dcpl.valid() || H5Pset_chunk(dcpl.get(), 2, chunk) < 0) {
      return h5_fail(tmp_path_, "cannot set up /feats");
    }
    feats_ =
        H5Id(H5Dcreate2(file_.get(), "feats", f16_.get(), space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
             H5Dclose);
    if (!feats_.valid()) return h5_fail(tmp_path_, "cannot create /feats");
    return Status();
  }

  Status add(const std::string& key, const std::string& text, const float* feats, int64_t num_frames,
             float duration) override {
    if (finished_) return failed_precondition_error(path_ + ": add() after finish()");
    if (key.empty()) return invalid_argument_error(tmp_path_ + ": utterance with an empty key");
    if (num_frames < 0 || (num_frames > 0 && feats == nullptr)) {
      return invalid_argument_error(tmp_path_ + ": utterance '" + key + "': bad feature buffer (" +
                                    std::to_string(num_frames) + " frames)");
    }
    if (key.size() > INT32_MAX || text.size() > INT32_MAX || num_frames > INT32_MAX) {
      return invalid_argument_error(tmp_path_ + ": utterance '" + key + "' is too large for the index");
    }
    if (!(std::isfinite(duration) && duration >= 0)) {
      return invalid_argument_error(tmp_path_ + ": utterance '" + key + "': bad duration " +
                                    std::to_string(duration));
    }
    const int64_t n = num_frames * bins_;
    for (int64_t i = 0; i < n; ++i) {
      if (!std::isfinite(feats[i]) || std::fabs(feats[i]) > kF16Max) {
        return invalid_argument_error(tmp_path_ + ": utterance '" + key + "': feature value " +
                                      std::to_string(feats[i]) + " at frame " + std::to_string(i / bins_) +
                                      ", bin " + std::to_string(i % bins_) +
                                      " is not finite or outside the float16 range");
      }
    }
    ShardIndexEntry entry;
    entry.frame_offset = total_rows_;
    entry.num_frames = static_cast<int32_t>(num_frames);
    entry.text_offset = static_cast<int64_t>(text_.size());
    entry.text_bytes = static_cast<int32_t>(text.size());
    entry.key_offset = static_cast<int64_t>(keys_.size());
    entry.key_bytes = static_cast<int32_t>(key.size());
    entry.duration = duration;
    // CMVN sums from the fp32 values, frame by frame, in double.
    for (int64_t t = 0; t < num_frames; ++t) {
      const float* row = feats + t * bins_;
      for (int64_t b = 0; b < bins_; ++b) {
        const double x = row[b];
        stats_.sum[static_cast<size_t>(b)] += x;
        stats_.sum_sq[static_cast<size_t>(b)] += x * x;
      }
    }
    stats_.frames += num_frames;
    for (int64_t i = 0; i < n; ++i) pending_.push_back(float_to_f16_bits(feats[i]));
    index_.push_back(entry);
    text_ += text;
    keys_ += key;
    total_rows_ += num_frames;
    const int64_t pending_rows = static_cast<int64_t>(pending_.size()) / bins_;
    if (pending_rows >= chunk_rows_) RETURN_IF_ERROR(flush_rows(pending_rows / chunk_rows_ * chunk_rows_));
    return Status();
  }

  Status finish() override {
    if (finished_) return failed_precondition_error(path_ + ": finish() called twice");
    RETURN_IF_ERROR(flush_rows(static_cast<int64_t>(pending_.size()) / bins_));
    const hid_t file = file_.get();
    H5Id gcpl = make_untimed_cpl(H5P_GROUP_CREATE);
    H5Id index(H5Gcreate2(file, "index", H5P_DEFAULT, gcpl.get(), H5P_DEFAULT), H5Gclose);
    if (!index.valid()) return h5_fail(tmp_path_, "cannot create group /index");
    const int64_t n = static_cast<int64_t>(index_.size());
    std::vector<int64_t> i64(static_cast<size_t>(n));
    std::vector<int32_t> i32(static_cast<size_t>(n));
    std::vector<float> f32(static_cast<size_t>(n));
    auto column64 = [&](const char* name, int64_t ShardIndexEntry::*field) {
      for (int64_t u = 0; u < n; ++u) i64[static_cast<size_t>(u)] = index_[static_cast<size_t>(u)].*field;
      return write_1d(index.get(), name, H5T_NATIVE_INT64, H5T_STD_I64LE, i64.data(), n, tmp_path_);
    };
    auto column32 = [&](const char* name, int32_t ShardIndexEntry::*field) {
      for (int64_t u = 0; u < n; ++u) i32[static_cast<size_t>(u)] = index_[static_cast<size_t>(u)].*field;
      return write_1d(index.get(), name, H5T_NATIVE_INT32, H5T_STD_I32LE, i32.data(), n, tmp_path_);
    };
    RETURN_IF_ERROR(column64("frame_offset", &ShardIndexEntry::frame_offset));
    RETURN_IF_ERROR(column32("num_frames", &ShardIndexEntry::num_frames));
    RETURN_IF_ERROR(column64("text_offset", &ShardIndexEntry::text_offset));
    RETURN_IF_ERROR(column32("text_bytes", &ShardIndexEntry::text_bytes));
    RETURN_IF_ERROR(column64("key_offset", &ShardIndexEntry::key_offset));
    RETURN_IF_ERROR(column32("key_bytes", &ShardIndexEntry::key_bytes));
    for (int64_t u = 0; u < n; ++u) f32[static_cast<size_t>(u)] = index_[static_cast<size_t>(u)].duration;
    RETURN_IF_ERROR(
        write_1d(index.get(), "duration", H5T_NATIVE_FLOAT, H5T_IEEE_F32LE, f32.data(), n, tmp_path_));
    index.reset();
    RETURN_IF_ERROR(write_1d(file, "text", H5T_NATIVE_UINT8, H5T_STD_U8LE, text_.data(),
                             static_cast<int64_t>(text_.size()), tmp_path_));
    RETURN_IF_ERROR(write_1d(file, "keys", H5T_NATIVE_UINT8, H5T_STD_U8LE, keys_.data(),
                             static_cast<int64_t>(keys_.size()), tmp_path_));
    {
      std::vector<double> stats(static_cast<size_t>(2 * bins_));
      std::copy(stats_.sum.begin(), stats_.sum.end(), stats.begin());
      std::copy(stats_.sum_sq.begin(), stats_.sum_sq.end(), stats.begin() + bins_);
      hsize_t dims[2] = {2, static_cast<hsize_t>(bins_)};
      H5Id space(H5Screate_simple(2, dims, nullptr), H5Sclose);
      H5Id dcpl = make_untimed_cpl(H5P_DATASET_CREATE);
      H5Id set(
          H5Dcreate2(file, "cmvn_stats", H5T_IEEE_F64LE, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
          H5Dclose);
      if (!set.valid() ||
          H5Dwrite(set.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, stats.data()) < 0) {
        return h5_fail(tmp_path_, "cannot write /cmvn_stats");
      }
      RETURN_IF_ERROR(write_int_attribute(set.get(), "cmvn_frames", stats_.frames, tmp_path_));
    }
    const int32_t version = kShardFormatVersion;
    RETURN_IF_ERROR(
        write_attribute(file, "format_version", H5T_NATIVE_INT32, H5T_STD_I32LE, &version, tmp_path_));
    RETURN_IF_ERROR(write_string_attribute(file, "fbank_config", fbank_config_json_, tmp_path_));
    RETURN_IF_ERROR(write_int_attribute(file, "num_utts", n, tmp_path_));
    RETURN_IF_ERROR(write_int_attribute(file, "num_frames", total_rows_, tmp_path_));
    RETURN_IF_ERROR(write_int_attribute(file, "num_mel_bins", bins_, tmp_path_));
    RETURN_IF_ERROR(write_string_attribute(file, "created_by", kCreatedBy, tmp_path_));
    if (!feats_.close() || !file_.close()) return h5_fail(tmp_path_, "cannot flush and close the shard");
    // The data reach the disk before the rename makes the shard visible as complete.
    int fd = ::open(tmp_path_.c_str(), O_RDONLY);
    if (fd < 0 || ::fsync(fd) != 0) {
      int err = errno;
      if (fd >= 0) ::close(fd);
      return io_error(tmp_path_ + ": cannot fsync: " + std::strerror(err));
    }
    ::close(fd);
    if (std::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
      return io_error("cannot rename " + tmp_path_ + " to " + path_ + ": " + std::strerror(errno));
    }
    finished_ = true;
    return Status();
  }

 private:
  // Writes the first `rows` pending rows to /feats (whole chunks except at the end).
  Status flush_rows(int64_t rows) {
    if (rows <= 0) return Status();
    hsize_t new_dims[2] = {static_cast<hsize_t>(written_rows_ + rows), static_cast<hsize_t>(bins_)};
    if (H5Dset_extent(feats_.get(), new_dims) < 0) return h5_fail(tmp_path_, "cannot extend /feats");
    H5Id file_space(H5Dget_space(feats_.get()), H5Sclose);
    hsize_t start[2] = {static_cast<hsize_t>(written_rows_), 0};
    hsize_t count[2] = {static_cast<hsize_t>(rows), static_cast<hsize_t>(bins_)};
    H5Id mem_space(H5Screate_simple(2, count, nullptr), H5Sclose);
    if (!file_space.valid() ||
        H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr) < 0 ||
        H5Dwrite(feats_.get(), f16_.get(), mem_space.get(), file_space.get(), H5P_DEFAULT, pending_.data()) <
            0) {
      return h5_fail(tmp_path_, "cannot write /feats");
    }
    pending_.erase(pending_.begin(), pending_.begin() + rows * bins_);
    written_rows_ += rows;
    return Status();
  }

  std::string path_;
  std::string tmp_path_;
  int64_t bins_;
  std::string fbank_config_json_;
  int64_t chunk_rows_ = 1;
  H5Id f16_;
  H5Id file_;
  H5Id feats_;
  std::vector<uint16_t> pending_;  // float16 bits of rows not yet in /feats
  int64_t written_rows_ = 0;
  int64_t total_rows_ = 0;
  std::vector<ShardIndexEntry> index_;
  std::string text_;
  std::string keys_;
  CmvnStats stats_;
  bool finished_ = false;
};

// ---------------------------------------------------------------------------------------------------
// Reading.

bool link_exists(hid_t file, const char* name) {
  // Walks the path so that a missing group reads as "absent", not as an error.
  std::string partial;
  const std::string full(name);
  size_t start = 1;
  while (start <= full.size()) {
    size_t slash = full.find('/', start);
    partial = full.substr(0, slash == std::string::npos ? full.size() : slash);
    if (H5Lexists(file, partial.c_str(), H5P_DEFAULT) <= 0) return false;
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return true;
}

class HdfShardReader final : public ShardReader {
 public:
  explicit HdfShardReader(std::string path) : path_(std::move(path)) {}

  Status open() {
    quiet_hdf5();
    struct stat st;
    if (::stat(path_.c_str(), &st) != 0) {
      return not_found_error(path_ + ": shard file does not exist (" + std::strerror(errno) + ")");
    }
    f16_ = make_f16_type();
    if (!f16_.valid()) return h5_fail(path_, "cannot make the float16 type");
    H5Id fapl = make_fapl();
    file_ = H5Id(H5Fopen(path_.c_str(), H5F_ACC_RDONLY, fapl.get()), H5Fclose);
    if (!file_.valid()) {
      return data_loss_error(path_ + ": cannot open as HDF5, the file is truncated or not a shard (" +
                             h5_error_message() + "); rewrite it with make_shards");
    }
    const hid_t file = file_.get();
    int64_t version = 0;
    RETURN_IF_ERROR(read_int_attribute(file, "/", "format_version", &version));
    if (version != kShardFormatVersion) {
      return data_loss_error(path_ + ": unknown format_version " + std::to_string(version) +
                             " (this build reads version " + std::to_string(kShardFormatVersion) +
                             "); rewrite the shard with this build's make_shards");
    }
    int64_t num_frames_attr = 0;
    RETURN_IF_ERROR(read_int_attribute(file, "/", "num_mel_bins", &bins_));
    RETURN_IF_ERROR(read_int_attribute(file, "/", "num_utts", &num_utts_));
    RETURN_IF_ERROR(read_int_attribute(file, "/", "num_frames", &num_frames_attr));
    RETURN_IF_ERROR(read_string_attribute(file, "fbank_config", &fbank_config_));
    if (bins_ <= 0 || num_utts_ < 0 || num_frames_attr < 0) {
      return data_loss_error(path_ + ": bad attributes (num_mel_bins " + std::to_string(bins_) +
                             ", num_utts " + std::to_string(num_utts_) + ", num_frames " +
                             std::to_string(num_frames_attr) + ")");
    }
    // /feats
    std::vector<hsize_t> dims;
    RETURN_IF_ERROR(open_dataset("/feats", &feats_, &dims, 2));
    if (dims[1] != static_cast<hsize_t>(bins_) || dims[0] != static_cast<hsize_t>(num_frames_attr)) {
      return data_loss_error(path_ + ": /feats is [" + std::to_string(dims[0]) + ", " +
                             std::to_string(dims[1]) + "] but the attributes say [" +
                             std::to_string(num_frames_attr) + ", " + std::to_string(bins_) + "]");
    }
    {
      H5Id type(H5Dget_type(feats_.get()), H5Tclose);
      if (H5Tget_class(type.get()) != H5T_FLOAT)
        return data_loss_error(path_ + ": /feats is not floating point");
    }
    frames_ = num_frames_attr;
    // /index columns
    index_.assign(static_cast<size_t>(num_utts_), ShardIndexEntry());
    std::vector<int64_t> i64;
    std::vector<int32_t> i32;
    std::vector<float> f32;
    RETURN_IF_ERROR(read_column("/index/frame_offset", H5T_NATIVE_INT64, &i64));
    for (int64_t u = 0; u < num_utts_; ++u) index_[u].frame_offset = i64[u];
    RETURN_IF_ERROR(read_column("/index/num_frames", H5T_NATIVE_INT32, &i32));
    for (int64_t u = 0; u < num_utts_; ++u) index_[u].num_frames = i32[u];
    RETURN_IF_ERROR(read_column("/index/text_offset", H5T_NATIVE_INT64, &i64));
    for (int64_t u = 0; u < num_utts_; ++u) index_[u].text_offset = i64[u];
    RETURN_IF_ERROR(read_column("/index/text_bytes", H5T_NATIVE_INT32, &i32));
    for (int64_t u = 0; u < num_utts_; ++u) index_[u].text_bytes = i32[u];
    RETURN_IF_ERROR(read_column("/index/key_offset", H5T_NATIVE_INT64, &i64));
    for (int64_t u = 0; u < num_utts_; ++u) index_[u].key_offset = i64[u];
    RETURN_IF_ERROR(read_column("/index/key_bytes", H5T_NATIVE_INT32, &i32));
    for (int64_t u = 0; u < num_utts_; ++u) index_[u].key_bytes = i32[u];
    RETURN_IF_ERROR(read_column("/index/duration", H5T_NATIVE_FLOAT, &f32));
    for (int64_t u = 0; u < num_utts_; ++u) index_[u].duration = f32[u];
    // /text, /keys
    RETURN_IF_ERROR(read_bytes("/text", &text_));
    RETURN_IF_ERROR(read_bytes("/keys", &keys_));
    // /cmvn_stats
    {
      H5Id set;
      RETURN_IF_ERROR(open_dataset("/cmvn_stats", &set, &dims, 2));
      if (dims[0] != 2 || dims[1] != static_cast<hsize_t>(bins_)) {
        return data_loss_error(path_ + ": /cmvn_stats is [" + std::to_string(dims[0]) + ", " +
                               std::to_string(dims[1]) + "], expected [2, " + std::to_string(bins_) + "]");
      }
      std::vector<double> stats(static_cast<size_t>(2 * bins_));
      if (H5Dread(set.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, stats.data()) < 0) {
        return data_loss_error(path_ + ": cannot read /cmvn_stats (" + h5_error_message() + ")");
      }
      stats_.sum.assign(stats.begin(), stats.begin() + bins_);
      stats_.sum_sq.assign(stats.begin() + bins_, stats.end());
      RETURN_IF_ERROR(read_int_attribute(file, "/cmvn_stats", "cmvn_frames", &stats_.frames));
    }
    // Every row must lie inside the datasets it points into.
    for (int64_t u = 0; u < num_utts_; ++u) {
      const ShardIndexEntry& e = index_[u];
      auto bad = [&](const std::string& what) {
        return data_loss_error(path_ + ": /index row " + std::to_string(u) + ": " + what);
      };
      if (e.frame_offset < 0 || e.num_frames < 0 || e.frame_offset > frames_ - e.num_frames) {
        return bad("frames [" + std::to_string(e.frame_offset) + ", +" + std::to_string(e.num_frames) +
                   ") outside /feats (" + std::to_string(frames_) + " rows)");
      }
      if (e.text_offset < 0 || e.text_bytes < 0 ||
          e.text_offset > static_cast<int64_t>(text_.size()) - e.text_bytes) {
        return bad("text bytes [" + std::to_string(e.text_offset) + ", +" + std::to_string(e.text_bytes) +
                   ") outside /text (" + std::to_string(text_.size()) + " bytes)");
      }
      if (e.key_offset < 0 || e.key_bytes <= 0 ||
          e.key_offset > static_cast<int64_t>(keys_.size()) - e.key_bytes) {
        return bad("key bytes [" + std::to_string(e.key_offset) + ", +" + std::to_string(e.key_bytes) +
                   ") outside /keys (" + std::to_string(keys_.size()) + " bytes) or empty");
      }
      if (!(std::isfinite(e.duration) && e.duration >= 0))
        return bad("bad duration " + std::to_string(e.duration));
    }
    return Status();
  }

  int64_t num_utts() const override { return num_utts_; }
  int64_t num_mel_bins() const override { return bins_; }
  int64_t num_frames() const override { return frames_; }
  const ShardIndexEntry& entry(int64_t utt) const override {
    CHECK(utt >= 0 && utt < num_utts_) << path_ << ": utterance " << utt << " of " << num_utts_;
    return index_[static_cast<size_t>(utt)];
  }
  std::string key(int64_t utt) const override {
    const ShardIndexEntry& e = entry(utt);
    return keys_.substr(static_cast<size_t>(e.key_offset), static_cast<size_t>(e.key_bytes));
  }
  std::string text(int64_t utt) const override {
    const ShardIndexEntry& e = entry(utt);
    return text_.substr(static_cast<size_t>(e.text_offset), static_cast<size_t>(e.text_bytes));
  }
  Status read_feats(int64_t utt, float* feats) override {
    const ShardIndexEntry& e = entry(utt);
    if (e.num_frames == 0) return Status();
    hsize_t start[2] = {static_cast<hsize_t>(e.frame_offset), 0};
    hsize_t count[2] = {static_cast<hsize_t>(e.num_frames), static_cast<hsize_t>(bins_)};
    H5Id file_space(H5Dget_space(feats_.get()), H5Sclose);
    H5Id mem_space(H5Screate_simple(2, count, nullptr), H5Sclose);
    buffer_.resize(static_cast<size_t>(e.num_frames * bins_));
    if (!file_space.valid() ||
        H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr) < 0 ||
        H5Dread(feats_.get(), f16_.get(), mem_space.get(), file_space.get(), H5P_DEFAULT, buffer_.data()) <
            0) {
      return data_loss_error(path_ + ": cannot read /feats rows [" + std::to_string(e.frame_offset) + ", " +
                             std::to_string(e.frame_offset + e.num_frames) + ") of utterance '" + key(utt) +
                             "' (" + h5_error_message() + ")");
    }
    for (size_t i = 0; i < buffer_.size(); ++i) feats[i] = f16_bits_to_float(buffer_[i]);
    return Status();
  }
  const CmvnStats& cmvn_stats() const override { return stats_; }
  std::string fbank_config_json() const override { return fbank_config_; }
  const std::string& path() const override { return path_; }

 private:
  Status missing(const std::string& what) const {
    return data_loss_error(path_ + ": missing " + what +
                           " (not a complete moe-asr shard; rewrite it with make_shards)");
  }

  Status read_int_attribute(hid_t file, const char* object, const char* name, int64_t* value) {
    if (H5Aexists_by_name(file, object, name, H5P_DEFAULT) <= 0) {
      H5Eclear2(H5E_DEFAULT);
      return missing(std::string("attribute ") + name + " on " + object);
    }
    H5Id attr(H5Aopen_by_name(file, object, name, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    H5Id space(attr.valid() ? H5Aget_space(attr.get()) : -1, H5Sclose);
    H5Id type(attr.valid() ? H5Aget_type(attr.get()) : -1, H5Tclose);
    if (!space.valid() || !type.valid() || H5Sget_simple_extent_npoints(space.get()) != 1 ||
        H5Tget_class(type.get()) != H5T_INTEGER || H5Aread(attr.get(), H5T_NATIVE_INT64, value) < 0) {
      H5Eclear2(H5E_DEFAULT);
      return data_loss_error(path_ + ": attribute " + name + " on " + object + " is not a scalar integer");
    }
    return Status();
  }

  Status read_string_attribute(hid_t file, const char* name, std::string* value) {
    if (H5Aexists_by_name(file, "/", name, H5P_DEFAULT) <= 0) {
      H5Eclear2(H5E_DEFAULT);
      return missing(std::string("attribute ") + name);
    }
    H5Id attr(H5Aopen_by_name(file, "/", name, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    H5Id type(attr.valid() ? H5Aget_type(attr.get()) : -1, H5Tclose);
    auto bad = [&]() {
      H5Eclear2(H5E_DEFAULT);
      return data_loss_error(path_ + ": attribute " + name + " is not a string");
    };
    if (!type.valid() || H5Tget_class(type.get()) != H5T_STRING) return bad();
    if (H5Tis_variable_str(type.get()) > 0) {  // as h5py writes str attributes
      H5Id mem(H5Tcopy(H5T_C_S1), H5Tclose);
      H5Tset_size(mem.get(), H5T_VARIABLE);
      char* text = nullptr;
      if (H5Aread(attr.get(), mem.get(), &text) < 0) return bad();
      *value = text != nullptr ? text : "";
      H5free_memory(text);
      return Status();
    }
    size_t size = H5Tget_size(type.get());
    std::string buffer(size, '\0');
    H5Id mem(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(mem.get(), size);
    H5Tset_strpad(mem.get(), H5T_STR_NULLPAD);
    if (size > 0 && H5Aread(attr.get(), mem.get(), buffer.data()) < 0) return bad();
    while (!buffer.empty() && buffer.back() == '\0') buffer.pop_back();
    *value = std::move(buffer);
    return Status();
  }

  Status open_dataset(const char* name, H5Id* set, std::vector<hsize_t>* dims, int rank) {
    if (!link_exists(file_.get(), name)) {
      H5Eclear2(H5E_DEFAULT);
      return missing(std::string("dataset ") + name);
    }
    *set = H5Id(H5Dopen2(file_.get(), name, H5P_DEFAULT), H5Dclose);
    if (!set->valid())
      return data_loss_error(path_ + ": cannot open dataset " + name + " (" + h5_error_message() + ")");
    H5Id space(H5Dget_space(set->get()), H5Sclose);
    int got = space.valid() ? H5Sget_simple_extent_ndims(space.get()) : -1;
    if (got != rank) {
      return data_loss_error(path_ + ": dataset " + std::string(name) + " has rank " + std::to_string(got) +
                             ", expected " + std::to_string(rank));
    }
    dims->assign(static_cast<size_t>(rank), 0);
    H5Sget_simple_extent_dims(space.get(), dims->data(), nullptr);
    return Status();
  }

  template <class T>
  Status read_column(const char* name, hid_t mem_type, std::vector<T>* out) {
    H5Id set;
    std::vector<hsize_t> dims;
    RETURN_IF_ERROR(open_dataset(name, &set, &dims, 1));
    if (dims[0] != static_cast<hsize_t>(num_utts_)) {
      return data_loss_error(path_ + ": " + name + " has " + std::to_string(dims[0]) +
                             " rows but num_utts is " + std::to_string(num_utts_));
    }
    out->assign(static_cast<size_t>(num_utts_), T());
    if (num_utts_ > 0 && H5Dread(set.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out->data()) < 0) {
      return data_loss_error(path_ + ": cannot read " + name + " (" + h5_error_message() + ")");
    }
    return Status();
  }

  Status read_bytes(const char* name, std::string* out) {
    H5Id set;
    std::vector<hsize_t> dims;
    RETURN_IF_ERROR(open_dataset(name, &set, &dims, 1));
    out->assign(static_cast<size_t>(dims[0]), '\0');
    if (dims[0] > 0 && H5Dread(set.get(), H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, out->data()) < 0) {
      return data_loss_error(path_ + ": cannot read " + name + " (" + h5_error_message() + ")");
    }
    return Status();
  }

  std::string path_;
  H5Id f16_;
  H5Id file_;
  H5Id feats_;
  int64_t num_utts_ = 0;
  int64_t bins_ = 0;
  int64_t frames_ = 0;
  std::vector<ShardIndexEntry> index_;
  std::string text_;
  std::string keys_;
  CmvnStats stats_;
  std::string fbank_config_;
  std::vector<uint16_t> buffer_;
};

}  // namespace

StatusOr<std::unique_ptr<ShardWriter>> ShardWriter::create(const std::string& path, int64_t num_mel_bins,
                                                           const std::string& fbank_config_json) {
  if (path.empty()) return invalid_argument_error("ShardWriter::create: empty shard path");
  if (num_mel_bins <= 0) {
    return invalid_argument_error(path + ": num_mel_bins must be positive, got " +
                                  std::to_string(num_mel_bins));
  }
  auto writer = std::make_unique<HdfShardWriter>(path, num_mel_bins, fbank_config_json);
  RETURN_IF_ERROR(writer->open());
  return std::unique_ptr<ShardWriter>(std::move(writer));
}

StatusOr<std::unique_ptr<ShardReader>> ShardReader::open(const std::string& path) {
  auto reader = std::make_unique<HdfShardReader>(path);
  RETURN_IF_ERROR(reader->open());
  return std::unique_ptr<ShardReader>(std::move(reader));
}

}  // namespace moeasr
