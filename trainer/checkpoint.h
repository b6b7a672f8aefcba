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
#include <string>
#include <vector>

#include "core/status.h"
#include "model/parameter_table.h"
#include "parallel/communicator.h"
#include "trainer/optimizer.h"

namespace moeasr {

constexpr int kCheckpointFormatVersion = 1;

// Everything besides tensors that exact resume needs.
struct TrainingState {
  int64_t step = 0;               // optimizer updates taken (AdamOptimizer::steps_taken)
  int64_t epoch = 0;              // current epoch (0-based)
  int64_t batches_in_epoch = 0;   // micro-batches consumed in this epoch (all ranks in lock-step)
  uint64_t seed = 0;              // the run's seed: every RngKey derives from it, so no RNG state is saved
  std::string config_yaml;        // the resolved training config
  int32_t world_size = 1;         // layout the checkpoint was written with
  int32_t ep_size = 1;
  std::vector<std::string> data_cursors;  // [world_size] serialized LoaderCursor of each rank
  double lr = 0;                  // last learning rate (informational; WarmupLR recomputes it from step)
  double cv_loss = 0;             // last cv loss (NaN-free; 0 when none yet)
  bool has_cv_loss = false;
  int64_t skipped_steps = 0;      // non-finite steps skipped so far
};

// Collective over `world` (every rank calls it; each writes its part). `ep` is this rank's
// expert-parallel group and `edp` its expert-data-parallel group (only EDP rank 0 writes experts).
// Returns the final directory path.
StatusOr<std::string> save_checkpoint(const std::string& model_dir, const TrainingState& state,
                                      const ParameterStore<float>& store, AdamOptimizer<float>& adam,
                                      Communicator* world, Communicator* ep, Communicator* edp, int keep);

// The newest complete, uncorrupted checkpoint directory under model_dir (by step), or NotFound.
// Each skipped one is logged with the reason. Local: no communication.
StatusOr<std::string> find_latest_checkpoint(const std::string& model_dir);

// Restores weights, Adam moments (and step) and the state for this rank's layout (expert tensors
// selected by global id, so EP size may differ from the one saved). Verifies checksums.
Status load_checkpoint(const std::string& checkpoint_dir, TrainingState* state, ParameterStore<float>* store,
                       AdamOptimizer<float>* adam);

}  // namespace moeasr
