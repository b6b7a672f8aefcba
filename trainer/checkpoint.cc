// trainer/checkpoint.cc — checkpoints with exact resume (see checkpoint.h; DESIGN.md §5). The save is
// icefall's/ESPnet's "write ckpt.tmp/, fsync, rename" made collective: world rank 0 prepares
// step_<N>.tmp/, every writer writes and fsyncs its HDF5 file (dense.h5 by world rank 0,
// experts_ep<r>.h5 by the EDP-rank-0 member of EP rank r), the writers' file sizes, file CRCs and
// per-tensor CRCs are gathered to world rank 0, which writes meta.pb, the WeNet-style yaml sidecar and
// DONE (the size and CRC32 of meta.pb) last, renames the directory, fsyncs the parent, replaces
// `latest` by tmp + rename and deletes complete checkpoints beyond `keep`. Ranks agree after each
// phase, so a failure anywhere is an error everywhere and never a hang.
#include "trainer/checkpoint.h"

#include <fcntl.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "core/logging.h"

namespace moeasr {

namespace fs = std::filesystem;

namespace {

// Closes an HDF5 handle when leaving scope.
struct H5Handle {
  hid_t id;
  herr_t (*close)(hid_t);
  H5Handle(hid_t i, herr_t (*c)(hid_t)) : id(i), close(c) {}
  H5Handle(const H5Handle&) = delete;
  H5Handle& operator=(const H5Handle&) = delete;
  ~H5Handle() {
    if (id >= 0) close(id);
  }
};

// File access without HDF5's file locks: they fail on some cluster file systems (NFS, Lustre), and
// checkpoint files are never written and read at the same time.
hid_t make_file_access_plist() {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  if (fapl >= 0) H5Pset_file_locking(fapl, 0, 1);
  return fapl;
}

std::string join_path(const std::string& dir, const std::string& name) {
  return (fs::path(dir) / name).string();
}

std::string errno_text(int err) {
  return std::strerror(err);
}

std::string shape_text(const google::protobuf::RepeatedField<int64_t>& dims) {
  std::string s = "[";
  for (int i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

std::string dims_text(const std::vector<hsize_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

Status fsync_path(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) return io_error("cannot open " + path + " to fsync it: " + errno_text(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) return io_error("fsync of " + path + " failed: " + errno_text(err));
  return Status();
}

// Writes `bytes` to `path` (truncating) and fsyncs it.
Status write_file_synced(const std::string& path, const std::string& bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return io_error("cannot create " + path + ": " + errno_text(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return io_error("cannot write " + path + ": " + errno_text(err) + " (disk full?)");
    }
    done += static_cast<size_t>(n);
  }
  int rc = ::fsync(fd);
  int err = errno;
  if (::close(fd) != 0 || rc != 0) return io_error("cannot fsync/close " + path + ": " + errno_text(err));
  return Status();
}

StatusOr<std::string> read_whole_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found_error("cannot open " + path);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return io_error("cannot read " + path);
  return bytes;
}

// Size and (when `want_crc`) CRC32 of a file, read in 4 MiB blocks.
Status file_size_and_crc(const std::string& path, bool want_crc, int64_t* bytes, uint32_t* crc) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return not_found_error("cannot open " + path + ": " + errno_text(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return io_error("cannot stat " + path + ": " + errno_text(err));
  }
  *bytes = static_cast<int64_t>(st.st_size);
  uLong c = crc32(0L, Z_NULL, 0);
  if (want_crc) {
    std::vector<unsigned char> block(size_t(4) << 20);
    for (;;) {
      ssize_t n = ::read(fd, block.data(), block.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        int err = errno;
        ::close(fd);
        return io_error("cannot read " + path + ": " + errno_text(err));
      }
      if (n == 0) break;
      c = crc32(c, block.data(), static_cast<uInt>(n));
    }
  }
  ::close(fd);
  *crc = static_cast<uint32_t>(c);
  return Status();
}

const char* data_suffix(CheckpointData what) {
  switch (what) {
    case CheckpointData::kValues: return "";
    case CheckpointData::kExpAvg: return ".exp_avg";
    case CheckpointData::kExpAvgSq: return ".exp_avg_sq";
  }
  return "";
}

const char* data_label(CheckpointData what) {
  switch (what) {
    case CheckpointData::kValues: return "values";
    case CheckpointData::kExpAvg: return "Adam exp_avg";
    case CheckpointData::kExpAvgSq: return "Adam exp_avg_sq";
  }
  return "";
}

// One tensor (and its moments, when trainable) to write.
struct TensorToWrite {
  const ParamEntry* entry = nullptr;
  const float* values = nullptr;
  const float* exp_avg = nullptr;  // nullptr for buffers
  const float* exp_avg_sq = nullptr;
};

Status write_dataset(hid_t file, const std::string& name, const Shape& shape, const float* data,
                     const std::string& path) {
  std::vector<hsize_t> dims;
  for (int i = 0; i < shape.ndim(); ++i) dims.push_back(static_cast<hsize_t>(shape[i]));
  H5Handle space{dims.empty() ? H5Screate(H5S_SCALAR)
                              : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
                 H5Sclose};
  H5Handle d{H5Dcreate2(file, name.c_str(), H5T_IEEE_F32LE, space.id, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
             H5Dclose};
  if (space.id < 0 || d.id < 0 || H5Dwrite(d.id, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) {
    return io_error("cannot write dataset '" + name + "' to " + path + " (disk full or not writable?)");
  }
  return Status();
}

// Writes one HDF5 file of the checkpoint, fsyncs it and reports it (size, CRC32, tensor CRCs).
Status write_tensor_file(const std::string& dir, const std::string& file_name,
                         const std::vector<TensorToWrite>& tensors, proto::CheckpointShardReport* report) {
  const std::string path = join_path(dir, file_name);
  {
    H5Handle fapl{make_file_access_plist(), H5Pclose};
    H5Handle file{H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.id), H5Fclose};
    if (file.id < 0) return io_error("cannot create " + path + " (check the directory is writable)");
    for (const TensorToWrite& t : tensors) {
      const ParamEntry& e = *t.entry;
      const size_t bytes = static_cast<size_t>(e.numel) * sizeof(float);
      proto::CheckpointTensor* m = report->add_tensors();
      m->set_name(e.name);
      for (int i = 0; i < e.shape.ndim(); ++i) m->add_shape(e.shape[i]);
      m->set_region(param_region_name(e.region));
      m->set_numel(e.numel);
      m->set_expert(e.expert);
      m->set_file(file_name);
      RETURN_IF_ERROR(write_dataset(file.id, e.name, e.shape, t.values, path));
      m->set_crc32(checkpoint_crc32(t.values, bytes));
      if (t.exp_avg != nullptr) {
        m->set_has_moments(true);
        RETURN_IF_ERROR(write_dataset(file.id, e.name + ".exp_avg", e.shape, t.exp_avg, path));
        RETURN_IF_ERROR(write_dataset(file.id, e.name + ".exp_avg_sq", e.shape, t.exp_avg_sq, path));
        m->set_crc32_exp_avg(checkpoint_crc32(t.exp_avg, bytes));
        m->set_crc32_exp_avg_sq(checkpoint_crc32(t.exp_avg_sq, bytes));
      }
    }
    if (H5Fflush(file.id, H5F_SCOPE_GLOBAL) < 0) return io_error("cannot flush " + path);
  }
  RETURN_IF_ERROR(fsync_path(path, false));
  int64_t bytes = 0;
  uint32_t crc = 0;
  RETURN_IF_ERROR(file_size_and_crc(path, true, &bytes, &crc));
  proto::CheckpointFile* f = report->add_files();
  f->set_name(file_name);
  f->set_bytes(bytes);
  f->set_crc32(crc);
  return Status();
}

// Every rank learns whether every rank succeeded. Returns this rank's own error first, else an error
// naming the ranks that failed.
Status agree(Communicator* world, const Status& mine, const std::string& phase) {
  const int n = world->size();
  int32_t flag = mine.ok() ? 0 : 1;
  std::vector<int32_t> flags(static_cast<size_t>(n), 0);
  RETURN_IF_ERROR(world->all_gather(flags.data(), &flag, 1, DType::i32));
  if (!mine.ok()) return mine.with_context("checkpoint save: " + phase);
  std::string failed;
  for (int r = 0; r < n; ++r) {
    if (flags[static_cast<size_t>(r)] != 0) failed += (failed.empty() ? "" : ", ") + std::to_string(r);
  }
  if (!failed.empty()) {
    return io_error("checkpoint save: " + phase + " failed on world rank(s) " + failed +
                    " (see their log lines); nothing was committed");
  }
  return Status();
}

// Every rank's bytes, gathered to every rank (lengths first, then padded blocks).
StatusOr<std::vector<std::string>> gather_bytes(Communicator* world, const std::string& mine) {
  const int n = world->size();
  int64_t length = static_cast<int64_t>(mine.size());
  std::vector<int64_t> lengths(static_cast<size_t>(n), 0);
  RETURN_IF_ERROR(world->all_gather(lengths.data(), &length, 1, DType::i64));
  int64_t block = 1;
  for (int64_t l : lengths) block = std::max(block, l);
  std::vector<uint8_t> in(static_cast<size_t>(block), 0), out(static_cast<size_t>(block * n), 0);
  std::memcpy(in.data(), mine.data(), mine.size());
  RETURN_IF_ERROR(world->all_gather(out.data(), in.data(), block, DType::u8));
  std::vector<std::string> all;
  for (int r = 0; r < n; ++r) {
    const char* p = reinterpret_cast<const char*>(out.data()) + r * block;
    all.emplace_back(p, static_cast<size_t>(lengths[static_cast<size_t>(r)]));
  }
  return all;
}

std::string format_double(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

// WeNet's step_N.yaml: what average_model --val_best reads (loss_dict.loss, as WeNet's
// average_model.py; cv_loss too, WeNet's older key).
std::string sidecar_yaml(const proto::CheckpointMeta& meta) {
  std::ostringstream y;
  y << "# moe-asr checkpoint sidecar (WeNet's step_N.yaml): read by average_model --val_best\n";
  y << "epoch: " << meta.epoch() << "\n";
  y << "step: " << meta.step() << "\n";
  y << "tag: " << checkpoint_dir_name(meta.step()) << "\n";
  y << "lrs: [" << format_double(meta.lr()) << "]\n";
  if (meta.has_cv_loss()) {
    y << "cv_loss: " << format_double(meta.cv_loss()) << "\n";
    y << "loss_dict:\n  loss: " << format_double(meta.cv_loss()) << "\n";
  }
  y << "batches_in_epoch: " << meta.batches_in_epoch() << "\n";
  y << "skipped_steps: " << meta.skipped_steps() << "\n";
  y << "world_size: " << meta.world_size() << "\n";
  y << "ep_size: " << meta.ep_size() << "\n";
  y << "save_time: " << meta.save_time_unix() << "\n";
  return y.str();
}

struct StepDir {
  int64_t step = -1;
  std::string path;
  bool tmp = false;  // step_<N>.tmp
};

// "step_<digits>" or "step_<digits>.tmp" → step, else -1.
int64_t parse_step_name(const std::string& name, bool* tmp) {
  const std::string prefix = "step_";
  if (name.compare(0, prefix.size(), prefix) != 0) return -1;
  std::string rest = name.substr(prefix.size());
  *tmp = false;
  if (rest.size() > 4 && rest.compare(rest.size() - 4, 4, ".tmp") == 0) {
    *tmp = true;
    rest.resize(rest.size() - 4);
  }
  if (rest.empty() || rest.size() > 18) return -1;
  for (char c : rest) {
    if (c < '0' || c > '9') return -1;
  }
  return std::stoll(rest);
}

std::vector<StepDir> scan_step_dirs(const std::string& model_dir) {
  std::vector<StepDir> dirs;
  std::error_code ec;
  for (fs::directory_iterator it(model_dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (!it->is_directory(ec)) continue;
    bool tmp = false;
    int64_t step = parse_step_name(it->path().filename().string(), &tmp);
    if (step < 0) continue;
    dirs.push_back({step, it->path().string(), tmp});
  }
  std::sort(dirs.begin(), dirs.end(), [](const StepDir& a, const StepDir& b) {
    return a.step != b.step ? a.step < b.step : a.tmp < b.tmp;
  });
  return dirs;
}

// Deletes complete checkpoints older than the newest `keep` ones at or below `current_step`, and
// leftovers of interrupted saves (step_<N>.tmp) below it. Newer directories (another timeline) and
// incomplete ones are left alone.
void prune_checkpoints(const std::string& model_dir, int64_t current_step, int keep) {
  std::vector<StepDir> complete;
  for (const StepDir& d : scan_step_dirs(model_dir)) {
    if (d.step > current_step) continue;
    std::error_code ec;
    if (d.tmp) {
      if (d.step < current_step) {
        LOG(INFO) << "removing " << d.path << ", left by an interrupted save";
        fs::remove_all(d.path, ec);
      }
      continue;
    }
    if (fs::exists(join_path(d.path, kCheckpointDoneFile), ec)) complete.push_back(d);
  }
  if (keep <= 0 || static_cast<int>(complete.size()) <= keep) return;
  const size_t remove = complete.size() - static_cast<size_t>(keep);
  for (size_t i = 0; i < remove; ++i) {
    if (complete[i].step == current_step) continue;  // never the one just written
    std::error_code ec;
    fs::remove_all(complete[i].path, ec);
    if (ec) {
      LOG(WARNING) << "cannot remove old checkpoint " << complete[i].path << ": " << ec.message();
    } else {
      LOG(INFO) << "removed old checkpoint " << complete[i].path << " (keeping the last " << keep << ")";
    }
  }
}

// World rank 0: makes <model_dir>/step_<N>.tmp empty.
Status prepare_tmp_dir(const std::string& model_dir, const std::string& tmp) {
  std::error_code ec;
  fs::create_directories(model_dir, ec);
  if (ec) return io_error("cannot create the model directory " + model_dir + ": " + ec.message());
  fs::remove_all(tmp, ec);
  if (ec) return io_error("cannot remove the leftover " + tmp + ": " + ec.message());
  fs::create_directory(tmp, ec);
  if (ec)
    return io_error("cannot create " + tmp + ": " + ec.message() + " (is the model directory writable?)");
  return Status();
}

// World rank 0: meta, sidecar, DONE, rename, latest, pruning.
Status commit_checkpoint(const std::string& model_dir, const std::string& tmp, const std::string& final_dir,
                         const TrainingState& state, const AdamOptimizer<float>& adam, Communicator* world,
                         Communicator* ep, const std::vector<std::string>& report_bytes, int keep) {
  proto::CheckpointMeta meta;
  meta.set_format_version(kCheckpointFormatVersion);
  meta.set_step(state.step);
  meta.set_epoch(state.epoch);
  meta.set_batches_in_epoch(state.batches_in_epoch);
  meta.set_seed(state.seed);
  meta.set_config_yaml(state.config_yaml);
  meta.set_world_size(world->size());
  meta.set_ep_size(ep->size());
  meta.set_lr(state.lr);
  meta.set_cv_loss(state.has_cv_loss ? state.cv_loss : 0.0);
  meta.set_has_cv_loss(state.has_cv_loss);
  meta.set_skipped_steps(state.skipped_steps);
  meta.set_adam_steps(adam.steps_taken());
  const bool gathered_cursors = static_cast<int>(state.data_cursors.size()) != world->size();
  std::unordered_set<std::string> names;
  for (size_t r = 0; r < report_bytes.size(); ++r) {
    proto::CheckpointShardReport report;
    if (!report.ParseFromString(report_bytes[r])) {
      return internal_error("the checkpoint report of world rank " + std::to_string(r) + " does not parse");
    }
    if (report.step() != state.step) {
      return failed_precondition_error("world rank " + std::to_string(r) + " saves step " +
                                       std::to_string(report.step()) + " but rank 0 saves step " +
                                       std::to_string(state.step) + " (ranks out of lock-step)");
    }
    meta.add_data_cursors(gathered_cursors ? report.data_cursor() : state.data_cursors[r]);
    for (const proto::CheckpointFile& f : report.files()) *meta.add_files() = f;
    for (const proto::CheckpointTensor& t : report.tensors()) {
      if (!names.insert(t.name()).second) {
        return internal_error("tensor '" + t.name() + "' written by two ranks (expert layout bug)");
      }
      *meta.add_tensors() = t;
    }
  }
  meta.set_save_time_unix(static_cast<int64_t>(
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
          .count()));

  const std::string meta_bytes = meta.SerializeAsString();
  RETURN_IF_ERROR(write_file_synced(join_path(tmp, kCheckpointMetaFile), meta_bytes));
  RETURN_IF_ERROR(write_file_synced(join_path(tmp, checkpoint_sidecar_name(state.step)), sidecar_yaml(meta)));
  const std::string done = std::string(kCheckpointMetaFile) + " " + std::to_string(meta_bytes.size()) + " " +
                           std::to_string(checkpoint_crc32(meta_bytes.data(), meta_bytes.size())) + "\n";
  RETURN_IF_ERROR(write_file_synced(join_path(tmp, kCheckpointDoneFile), done));
  RETURN_IF_ERROR(fsync_path(tmp, true));

  std::error_code ec;
  const std::string old = final_dir + ".old";
  if (fs::exists(final_dir, ec)) {  // the same step saved again (e.g. an epoch end on an interval step)
    fs::remove_all(old, ec);
    fs::rename(final_dir, old, ec);
    if (ec) return io_error("cannot move the previous " + final_dir + " aside: " + ec.message());
  }
  fs::rename(tmp, final_dir, ec);
  if (ec) return io_error("cannot rename " + tmp + " to " + final_dir + ": " + ec.message());
  RETURN_IF_ERROR(fsync_path(model_dir, true));
  fs::remove_all(old, ec);

  const std::string latest = join_path(model_dir, kCheckpointLatestFile);
  RETURN_IF_ERROR(write_file_synced(latest + ".tmp", checkpoint_dir_name(state.step) + "\n"));
  fs::rename(latest + ".tmp", latest, ec);
  if (ec) return io_error("cannot rename " + latest + ".tmp to " + latest + ": " + ec.message());
  RETURN_IF_ERROR(fsync_path(model_dir, true));
  prune_checkpoints(model_dir, state.step, keep);
  return Status();
}

StatusOr<ParamRegion> region_from_name(const std::string& name) {
  for (int r = 0; r < kNumParamRegions; ++r) {
    if (name == param_region_name(static_cast<ParamRegion>(r))) return static_cast<ParamRegion>(r);
  }
  return data_loss_error("unknown region '" + name + "'");
}

}  // namespace

std::string checkpoint_dir_name(int64_t step) {
  return "step_" + std::to_string(step);
}
std::string checkpoint_experts_file_name(int64_t ep_rank) {
  return "experts_ep" + std::to_string(ep_rank) + ".h5";
}
std::string checkpoint_sidecar_name(int64_t step) {
  return "step_" + std::to_string(step) + ".yaml";
}

uint32_t checkpoint_crc32(const void* data, size_t bytes) {
  uLong c = crc32(0L, Z_NULL, 0);
  const auto* p = static_cast<const Bytef*>(data);
  while (bytes > 0) {
    const size_t n = std::min<size_t>(bytes, size_t(1) << 30);
    c = crc32(c, p, static_cast<uInt>(n));
    p += n;
    bytes -= n;
  }
  return static_cast<uint32_t>(c);
}

int64_t checkpoint_step_from_path(const std::string& checkpoint_dir) {
  fs::path p(checkpoint_dir);
  if (p.filename().empty()) p = p.parent_path();  // trailing '/'
  bool tmp = false;
  int64_t step = parse_step_name(p.filename().string(), &tmp);
  return tmp ? -1 : step;
}

StatusOr<std::string> save_checkpoint(const std::string& model_dir, const TrainingState& state,
                                      const ParameterStore<float>& store, AdamOptimizer<float>& adam,
                                      Communicator* world, Communicator* ep, Communicator* edp, int keep) {
  CHECK(world != nullptr && ep != nullptr && edp != nullptr) << "save_checkpoint needs all three groups";
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const auto start = std::chrono::steady_clock::now();
  const int rank = world->rank();
  const std::string final_dir = join_path(model_dir, checkpoint_dir_name(state.step));
  const std::string tmp = final_dir + ".tmp";

  Status status;
  if (state.step < 0) status = invalid_argument_error("cannot save a checkpoint for a negative step");
  const size_t cursors = state.data_cursors.size();
  if (status.ok() && cursors > 1 && static_cast<int>(cursors) != world->size()) {
    status = invalid_argument_error("TrainingState::data_cursors has " + std::to_string(cursors) +
                                    " entries; pass every rank's (" + std::to_string(world->size()) +
                                    ") or only this rank's");
  }
  if (status.ok() && rank == 0) status = prepare_tmp_dir(model_dir, tmp);
  RETURN_IF_ERROR(agree(world, status, "preparing " + tmp));

  // Each writer writes its file.
  proto::CheckpointShardReport report;
  report.set_step(state.step);
  if (cursors == 1) report.set_data_cursor(state.data_cursors[0]);
  const ParameterTable& table = *store.table;
  auto to_write = [&](const ParamEntry& e) {
    TensorToWrite t;
    t.entry = &e;
    t.values = store.host_value(e);
    if (e.region != ParamRegion::kBuffer) {
      const int r = static_cast<int>(e.region);
      CHECK_EQ(adam.exp_avg(e.region).size(), store.values[r].size()) << "Adam moments of another store";
      t.exp_avg = adam.exp_avg(e.region).data() + e.offset;
      t.exp_avg_sq = adam.exp_avg_sq(e.region).data() + e.offset;
    }
    return t;
  };
  if (rank == 0) {
    std::vector<TensorToWrite> dense;
    for (const ParamEntry& e : table.entries()) {
      if (e.region != ParamRegion::kExpert) dense.push_back(to_write(e));
    }
    status = write_tensor_file(tmp, kCheckpointDenseFile, dense, &report);
  }
  if (status.ok() && edp->rank() == 0) {
    std::vector<TensorToWrite> experts;
    for (const ParamEntry& e : table.entries()) {
      if (e.region == ParamRegion::kExpert) experts.push_back(to_write(e));
    }
    if (!experts.empty()) {
      status = write_tensor_file(tmp, checkpoint_experts_file_name(ep->rank()), experts, &report);
    }
  }
  RETURN_IF_ERROR(agree(world, status, "writing the tensor files in " + tmp));

  ASSIGN_OR_RETURN(std::vector<std::string> reports, gather_bytes(world, report.SerializeAsString()));
  if (rank == 0) status = commit_checkpoint(model_dir, tmp, final_dir, state, adam, world, ep, reports, keep);
  RETURN_IF_ERROR(agree(world, status, "committing " + final_dir));
  if (rank == 0) {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    LOG(INFO) << "saved checkpoint " << final_dir << " (step " << state.step << ", epoch " << state.epoch
              << ", world " << world->size() << ", ep " << ep->size() << ") in " << seconds << " s";
  }
  return final_dir;
}

StatusOr<proto::CheckpointMeta> read_checkpoint_meta(const std::string& checkpoint_dir) {
  const std::string done_path = join_path(checkpoint_dir, kCheckpointDoneFile);
  const std::string meta_path = join_path(checkpoint_dir, kCheckpointMetaFile);
  StatusOr<std::string> done = read_whole_file(done_path);
  if (!done.ok()) {
    return data_loss_error(checkpoint_dir + " has no " + kCheckpointDoneFile +
                           " file: the save did not finish (an incomplete checkpoint)");
  }
  std::istringstream line(done.value());
  std::string name;
  int64_t bytes = -1;
  uint64_t crc = 0;
  if (!(line >> name >> bytes >> crc) || name != kCheckpointMetaFile) {
    return data_loss_error(done_path + " is corrupt (expected '" + kCheckpointMetaFile +
                           " <bytes> <crc32>')");
  }
  StatusOr<std::string> meta_bytes = read_whole_file(meta_path);
  if (!meta_bytes.ok()) return data_loss_error(meta_path + " is missing (a damaged checkpoint)");
  const std::string& m = meta_bytes.value();
  if (static_cast<int64_t>(m.size()) != bytes) {
    return data_loss_error(meta_path + " has " + std::to_string(m.size()) + " bytes but " +
                           kCheckpointDoneFile + " records " + std::to_string(bytes) +
                           " (truncated or overwritten)");
  }
  if (checkpoint_crc32(m.data(), m.size()) != crc) {
    return data_loss_error(meta_path + " fails its CRC32 check (corrupt)");
  }
  proto::CheckpointMeta meta;
  if (!meta.ParseFromString(m)) return data_loss_error("cannot parse " + meta_path + " (corrupt)");
  if (meta.format_version() > kCheckpointFormatVersion) {
    return failed_precondition_error(meta_path + " has format version " +
                                     std::to_string(meta.format_version()) + "; this build reads version " +
                                     std::to_string(kCheckpointFormatVersion) +
                                     " (written by a newer moe-asr)");
  }
  if (meta.format_version() < 1) {
    return data_loss_error(meta_path + " has no format version (not a moe-asr checkpoint)");
  }
  return meta;
}

Status verify_checkpoint(const std::string& checkpoint_dir, bool check_file_crcs) {
  ASSIGN_OR_RETURN(proto::CheckpointMeta meta, read_checkpoint_meta(checkpoint_dir));
  std::unordered_set<std::string> files;
  for (const proto::CheckpointFile& f : meta.files()) {
    files.insert(f.name());
    const std::string path = join_path(checkpoint_dir, f.name());
    int64_t bytes = 0;
    uint32_t crc = 0;
    Status s = file_size_and_crc(path, check_file_crcs, &bytes, &crc);
    if (!s.ok())
      return data_loss_error("checkpoint file " + path + " is missing or unreadable: " + s.message());
    if (bytes != f.bytes()) {
      return data_loss_error("checkpoint file " + path + " has " + std::to_string(bytes) + " bytes but " +
                             std::to_string(f.bytes()) + " were written (truncated or overwritten)");
    }
    if (check_file_crcs && crc != f.crc32()) {
      return data_loss_error("checkpoint file " + path +
                             " fails its CRC32 check (corrupt: a flipped bit or "
                             "a partial overwrite)");
    }
  }
  for (const proto::CheckpointTensor& t : meta.tensors()) {
    if (files.count(t.file()) == 0) {
      return data_loss_error(join_path(checkpoint_dir, kCheckpointMetaFile) + " places tensor '" + t.name() +
                             "' in " + t.file() + ", which it does not list (corrupt meta)");
    }
  }
  return Status();
}

std::vector<std::string> list_complete_checkpoints(const std::string& model_dir, bool check_file_crcs) {
  std::vector<std::string> out;
  for (const StepDir& d : scan_step_dirs(model_dir)) {
    if (d.tmp) {
      LOG(WARNING) << "skipping checkpoint " << d.path
                   << ": incomplete (a save was interrupted before the rename)";
      continue;
    }
    Status s = verify_checkpoint(d.path, check_file_crcs);
    if (!s.ok()) {
      LOG(WARNING) << "skipping checkpoint " << d.path << ": " << s.message();
      continue;
    }
    out.push_back(d.path);
  }
  return out;
}

StatusOr<std::string> find_latest_checkpoint(const std::string& model_dir) {
  std::error_code ec;
  if (!fs::is_directory(model_dir, ec)) {
    return not_found_error("no model directory " + model_dir + " (nothing to resume)");
  }
  std::vector<StepDir> dirs = scan_step_dirs(model_dir);
  int skipped = 0;
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    if (it->tmp) {
      LOG(WARNING) << "skipping checkpoint " << it->path
                   << ": incomplete (a save was interrupted before the rename); trying the previous one";
      ++skipped;
      continue;
    }
    Status s = verify_checkpoint(it->path, true);
    if (s.ok()) return it->path;
    LOG(WARNING) << "skipping checkpoint " << it->path << ": " << s.message() << "; trying the previous one";
    ++skipped;
  }
  return not_found_error("no complete checkpoint in " + model_dir +
                         (skipped > 0 ? " (" + std::to_string(skipped) +
                                            " incomplete or corrupt skipped, see the "
                                            "warnings)"
                                      : ""));
}

// ---- CheckpointReader ----

struct CheckpointReader::Files {
  std::unordered_map<std::string, int> by_name;  // tensor name → index in meta.tensors()
  std::unordered_map<std::string, hid_t> open;   // file name → HDF5 file
  ~Files() {
    for (auto& kv : open) H5Fclose(kv.second);
  }
};

CheckpointReader::CheckpointReader(std::string dir, proto::CheckpointMeta meta)
    : dir_(std::move(dir)), meta_(std::move(meta)), files_(std::make_unique<Files>()) {
  for (int i = 0; i < meta_.tensors_size(); ++i) files_->by_name[meta_.tensors(i).name()] = i;
}

CheckpointReader::~CheckpointReader() = default;

StatusOr<std::unique_ptr<CheckpointReader>> CheckpointReader::open(const std::string& checkpoint_dir) {
  RETURN_IF_ERROR(verify_checkpoint(checkpoint_dir, false));
  ASSIGN_OR_RETURN(proto::CheckpointMeta meta, read_checkpoint_meta(checkpoint_dir));
  return std::unique_ptr<CheckpointReader>(new CheckpointReader(checkpoint_dir, std::move(meta)));
}

const proto::CheckpointTensor* CheckpointReader::find(const std::string& name) const {
  auto it = files_->by_name.find(name);
  return it == files_->by_name.end() ? nullptr : &meta_.tensors(it->second);
}

Status CheckpointReader::read(const proto::CheckpointTensor& tensor, CheckpointData what, float* out) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const std::string path = join_path(dir_, tensor.file());
  const std::string label = std::string(data_label(what));
  if (what != CheckpointData::kValues && !tensor.has_moments()) {
    return data_loss_error(path + ": tensor '" + tensor.name() + "' has no " + label + " in this checkpoint");
  }
  auto it = files_->open.find(tensor.file());
  if (it == files_->open.end()) {
    H5Handle fapl{make_file_access_plist(), H5Pclose};
    hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.id);
    if (f < 0)
      return data_loss_error("cannot open checkpoint file " + path + " (missing, truncated or corrupt)");
    it = files_->open.emplace(tensor.file(), f).first;
  }
  const std::string dataset = tensor.name() + data_suffix(what);
  H5Handle d{H5Dopen2(it->second, dataset.c_str(), H5P_DEFAULT), H5Dclose};
  if (d.id < 0) return data_loss_error(path + " lacks dataset '" + dataset + "' (corrupt checkpoint)");
  H5Handle space{H5Dget_space(d.id), H5Sclose};
  const int ndim = H5Sget_simple_extent_ndims(space.id);
  std::vector<hsize_t> dims(static_cast<size_t>(ndim > 0 ? ndim : 0));
  if (ndim > 0) H5Sget_simple_extent_dims(space.id, dims.data(), nullptr);
  bool same = ndim == tensor.shape_size();
  for (int i = 0; same && i < ndim; ++i)
    same = static_cast<int64_t>(dims[static_cast<size_t>(i)]) == tensor.shape(i);
  if (!same) {
    return data_loss_error(path + ": tensor '" + dataset + "' has shape " + dims_text(dims) + " but " +
                           kCheckpointMetaFile + " records " + shape_text(tensor.shape()) +
                           " (corrupt checkpoint)");
  }
  if (H5Dread(d.id, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0) {
    return data_loss_error(path + ": cannot read tensor '" + dataset + "' (truncated or corrupt file)");
  }
  const uint32_t expected = what == CheckpointData::kValues   ? tensor.crc32()
                            : what == CheckpointData::kExpAvg ? tensor.crc32_exp_avg()
                                                              : tensor.crc32_exp_avg_sq();
  const uint32_t got = checkpoint_crc32(out, static_cast<size_t>(tensor.numel()) * sizeof(float));
  if (got != expected) {
    return data_loss_error(path + ": tensor '" + tensor.name() + "' (" + label +
                           ") fails its CRC32 check (stored " + std::to_string(expected) + ", read " +
                           std::to_string(got) + "): the checkpoint is corrupt; resume from an older one");
  }
  return Status();
}

// ---- load ----

Status load_checkpoint(const std::string& checkpoint_dir, TrainingState* state, ParameterStore<float>* store,
                       AdamOptimizer<float>* adam) {
  CHECK(state != nullptr && store != nullptr) << "load_checkpoint needs a state and a store";
  ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> reader, CheckpointReader::open(checkpoint_dir));
  const proto::CheckpointMeta& meta = reader->meta();
  const ParameterTable& table = *store->table;
  const std::string meta_path = join_path(checkpoint_dir, kCheckpointMetaFile);

  // The checkpoint must be of this model: every tensor present with its shape and region, and no
  // dense tensor the model lacks (other ranks' experts are expected).
  for (const proto::CheckpointTensor& t : meta.tensors()) {
    if (t.expert() < 0 && table.find(t.name()) == nullptr) {
      return invalid_argument_error(checkpoint_dir + " holds tensor '" + t.name() +
                                    "', which the configured model lacks (a checkpoint of another model?)");
    }
  }
  for (const ParamEntry& e : table.entries()) {
    const proto::CheckpointTensor* t = reader->find(e.name);
    if (t == nullptr) {
      return invalid_argument_error(checkpoint_dir + " lacks tensor '" + e.name +
                                    "' (a checkpoint of another model shape or expert count?)");
    }
    bool same = t->shape_size() == e.shape.ndim();
    for (int i = 0; same && i < e.shape.ndim(); ++i) same = t->shape(i) == e.shape[i];
    if (!same || t->numel() != e.numel) {
      return invalid_argument_error(checkpoint_dir + ": tensor '" + e.name + "' has shape " +
                                    shape_text(t->shape()) + " but the configured model expects " +
                                    e.shape.to_string() + " (a checkpoint of another model shape)");
    }
    StatusOr<ParamRegion> region = region_from_name(t->region());
    if (!region.ok())
      return data_loss_error(meta_path + ": tensor '" + e.name + "': " + region.status().message());
    if (region.value() != e.region) {
      return invalid_argument_error(checkpoint_dir + ": tensor '" + e.name + "' is a " + t->region() +
                                    " tensor there but a " + param_region_name(e.region) +
                                    " one in this model");
    }
  }
  for (const ParamEntry& e : table.entries()) {
    const proto::CheckpointTensor& t = *reader->find(e.name);
    RETURN_IF_ERROR(reader->read(t, CheckpointData::kValues, store->host_value(e)));
    if (adam != nullptr && e.region != ParamRegion::kBuffer) {
      const int r = static_cast<int>(e.region);
      CHECK_EQ(adam->exp_avg(e.region).size(), store->values[r].size()) << "Adam moments of another store";
      RETURN_IF_ERROR(reader->read(t, CheckpointData::kExpAvg, adam->exp_avg(e.region).data() + e.offset));
      RETURN_IF_ERROR(
          reader->read(t, CheckpointData::kExpAvgSq, adam->exp_avg_sq(e.region).data() + e.offset));
    }
  }
  if (adam != nullptr) adam->set_steps_taken(meta.adam_steps());

  TrainingState s;
  s.step = meta.step();
  s.epoch = meta.epoch();
  s.batches_in_epoch = meta.batches_in_epoch();
  s.seed = meta.seed();
  s.config_yaml = meta.config_yaml();
  s.world_size = meta.world_size();
  s.ep_size = meta.ep_size();
  s.data_cursors.assign(meta.data_cursors().begin(), meta.data_cursors().end());
  s.lr = meta.lr();
  s.cv_loss = meta.cv_loss();
  s.has_cv_loss = meta.has_cv_loss();
  s.skipped_steps = meta.skipped_steps();
  *state = std::move(s);
  return Status();
}

}  // namespace moeasr
