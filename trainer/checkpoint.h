// trainer/checkpoint.h — checkpoints with exact resume (DESIGN.md §5). One directory per save:
//   <model_dir>/step_<N>.tmp/ is written, then renamed to step_<N>/; DONE is written last (after a
//   barrier, by world rank 0); <model_dir>/latest (replaced atomically) names the newest; the last
//   `keep` complete checkpoints are kept. Inside:
//     meta.pb      protobuf (proto/checkpoint.proto): format version, TrainingState, parallel layout,
//                  the parameter table with a CRC32 per tensor (of values and of each Adam moment)
//     dense.h5     every dense and buffer tensor with its Adam moments (fp32), written by world rank 0
//     experts_epN.h5  the experts held by EP rank N (written by its EDP-rank-0 member), stored by
//                  (tensor name with GLOBAL expert id), so resuming with another EP size re-slices
//     step_<N>.yaml  sidecar with epoch, step, lr and cv_loss (what average_model --val_best reads)
// Loading verifies every checksum; an incomplete (no DONE) or corrupt checkpoint is refused with a
// message naming the file and tensor, and find_latest_checkpoint() falls back to the previous one.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "model/parameter_table.h"
#include "parallel/communicator.h"
#include "proto/checkpoint.pb.h"
#include "trainer/optimizer.h"

namespace moeasr {

constexpr int kCheckpointFormatVersion = 1;

// Everything besides tensors that exact resume needs.
struct TrainingState {
  int64_t step = 0;              // optimizer updates taken (AdamOptimizer::steps_taken)
  int64_t epoch = 0;             // current epoch (0-based)
  int64_t batches_in_epoch = 0;  // micro-batches consumed in this epoch (all ranks in lock-step)
  uint64_t seed = 0;             // the run's seed: every RngKey derives from it, so no RNG state is saved
  std::string config_yaml;       // the resolved training config
  int32_t world_size = 1;        // layout the checkpoint was written with
  int32_t ep_size = 1;
  std::vector<std::string> data_cursors;  // [world_size] serialized LoaderCursor of each rank
  double lr = 0;       // last learning rate (informational; WarmupLR recomputes it from step)
  double cv_loss = 0;  // last cv loss (NaN-free; 0 when none yet)
  bool has_cv_loss = false;
  int64_t skipped_steps = 0;  // non-finite steps skipped so far
};

// Collective over `world` (every rank calls it; each writes its part). `state.data_cursors` may hold
// every rank's cursor (size world->size(): rank 0's copy is saved) or only this rank's (size 0 or 1:
// they are gathered). The layout saved is world->size() and ep->size(). A failure on any rank is
// returned on every rank (no rank is left waiting), and leaves no complete-looking directory. `ep` is this
// rank's expert-parallel group and `edp` its expert-data-parallel group (only EDP rank 0 writes experts).
// Returns the final directory path.
StatusOr<std::string> save_checkpoint(const std::string& model_dir, const TrainingState& state,
                                      const ParameterStore<float>& store, AdamOptimizer<float>& adam,
                                      Communicator* world, Communicator* ep, Communicator* edp, int keep);

// The newest complete, uncorrupted checkpoint directory under model_dir (by step), or NotFound.
// Each skipped one is logged with the reason. Local: no communication. Checks candidates newest
// first with verify_checkpoint(dir, true), i.e. reads the chosen checkpoint's files once (their
// whole-file CRC32 catches truncation and flipped bits anywhere); on big jobs call it on one rank and
// broadcast the path.
StatusOr<std::string> find_latest_checkpoint(const std::string& model_dir);

// Restores weights, Adam moments (and step) and the state for this rank's layout (expert tensors
// selected by global id, so EP size may differ from the one saved). Verifies checksums.
// `adam` may be nullptr (weights and state only).
Status load_checkpoint(const std::string& checkpoint_dir, TrainingState* state, ParameterStore<float>* store,
                       AdamOptimizer<float>* adam);

// ---- The pieces find_latest_checkpoint, load_checkpoint and average_model share ----

// The files of a checkpoint directory.
inline constexpr const char* kCheckpointMetaFile = "meta.pb";
inline constexpr const char* kCheckpointDoneFile = "DONE";  // "meta.pb <bytes> <crc32>": written last
inline constexpr const char* kCheckpointDenseFile = "dense.h5";
inline constexpr const char* kCheckpointLatestFile = "latest";  // in model_dir: "step_<N>"
std::string checkpoint_dir_name(int64_t step);                  // "step_<N>"
std::string checkpoint_experts_file_name(int64_t ep_rank);      // "experts_ep<N>.h5"
std::string checkpoint_sidecar_name(int64_t step);              // "step_<N>.yaml"
uint32_t checkpoint_crc32(const void* data, size_t bytes);      // zlib CRC32

// Reads <dir>/meta.pb and checks it against the size and CRC32 that DONE records: DataLoss (naming
// the file) when DONE is missing or meta.pb is truncated, corrupt or unparsable; FailedPrecondition
// for a format version this build does not read.
StatusOr<proto::CheckpointMeta> read_checkpoint_meta(const std::string& checkpoint_dir);

// Checks that a directory is a complete, intact checkpoint without opening HDF5: DONE and meta as
// above, every data file present with its recorded size and, when `check_file_crcs`, its whole-file
// CRC32 (this reads every file once). DataLoss naming the directory, the file and the reason.
Status verify_checkpoint(const std::string& checkpoint_dir, bool check_file_crcs);

// The step_<N> directories under model_dir that pass verify_checkpoint(dir, check_file_crcs), oldest
// step first; each one skipped is logged (LOG(WARNING)) with its reason. Empty when none.
std::vector<std::string> list_complete_checkpoints(const std::string& model_dir, bool check_file_crcs);

// The step of a "step_<N>" directory path (its last component), or -1.
int64_t checkpoint_step_from_path(const std::string& checkpoint_dir);

enum class CheckpointData : uint8_t { kValues, kExpAvg, kExpAvgSq };

// Reads single tensors of one checkpoint (by name, any expert of any file), verifying each one's
// shape and CRC32: a mismatch is DataLoss naming the file, the tensor and what differs. Files are
// opened on first use and kept open. Not thread-safe (HDF5).
class CheckpointReader {
 public:
  // Checks the directory with verify_checkpoint(dir, false) and reads the meta.
  static StatusOr<std::unique_ptr<CheckpointReader>> open(const std::string& checkpoint_dir);
  ~CheckpointReader();
  CheckpointReader(const CheckpointReader&) = delete;
  CheckpointReader& operator=(const CheckpointReader&) = delete;

  const std::string& dir() const { return dir_; }
  const proto::CheckpointMeta& meta() const { return meta_; }
  const proto::CheckpointTensor* find(const std::string& name) const;  // nullptr when absent
  // `out` holds tensor.numel() floats. kExpAvg / kExpAvgSq of a tensor without moments is DataLoss.
  Status read(const proto::CheckpointTensor& tensor, CheckpointData what, float* out);

 private:
  struct Files;  // open HDF5 files and the name index
  CheckpointReader(std::string dir, proto::CheckpointMeta meta);

  std::string dir_;
  proto::CheckpointMeta meta_;
  std::unique_ptr<Files> files_;
};

}  // namespace moeasr
