// trainer/average_model.h — `moe-asr average_model`, after WeNet's wenet/bin/average_model.py: pick
// the last `num` complete checkpoints of a model directory (by step), or with --val_best the `num`
// with the lowest cv loss read from the step_<N>.yaml sidecars (loss_dict.loss, else cv_loss), and
// write the element-wise mean of every tensor — buffers such as BatchNorm running statistics and the
// global CMVN included, as WeNet averages the whole state dict — as a weights file
// (trainer/model_weights.h) carrying the checkpoint's config text. Experts are gathered by global id
// from every experts_ep*.h5 file, so the output holds all experts whatever EP layout wrote each
// checkpoint. Differences from WeNet, all deliberate: "last" is by step rather than file mtime; the
// --min/max_step and --min/max_epoch windows apply to both selections; the mean is summed in double
// and rounded to float once (WeNet sums in float32); every tensor's CRC32 is verified while reading.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "core/status.h"

namespace moeasr {

struct AverageModelOptions {
  std::string src_path;   // --src_path: the model_dir holding step_<N>/ checkpoints
  std::string dst_model;  // --dst_model: the weights file to write
  int64_t num = 5;        // --num: how many checkpoints to average
  bool val_best = false;  // --val_best: the `num` with the lowest cv loss instead of the last `num`
  // --mode: hybrid (every checkpoint, WeNet's default) | step (every step_<N> checkpoint: here the
  // same set) | epoch (only checkpoints saved at an epoch boundary: batches_in_epoch == 0).
  std::string mode = "hybrid";
  int64_t min_epoch = 0;  // inclusive windows on the checkpoint's epoch and step
  int64_t max_epoch = std::numeric_limits<int64_t>::max();
  int64_t min_step = 0;
  int64_t max_step = std::numeric_limits<int64_t>::max();
};

// One candidate checkpoint, as the sidecar (and meta) describe it.
struct CheckpointScore {
  std::string dir;  // <src_path>/step_<N>
  std::string tag;  // step_<N>
  int64_t epoch = 0;
  int64_t step = 0;
  int64_t batches_in_epoch = 0;
  bool has_cv_loss = false;
  double cv_loss = 0.0;
};

// Reads <checkpoint_dir>/step_<N>.yaml (epoch, step, loss_dict.loss or cv_loss, batches_in_epoch).
// NotFound when absent, InvalidArgument naming the file and key when malformed.
StatusOr<CheckpointScore> read_checkpoint_sidecar(const std::string& checkpoint_dir);

// The checkpoints to average, in the order WeNet lists them: by step for the last `num`, by cv loss
// (then step) for --val_best. Incomplete or damaged checkpoints are skipped with a warning; fewer
// than `num` candidates is an InvalidArgument saying how many there are (WeNet asserts).
StatusOr<std::vector<CheckpointScore>> select_checkpoints_to_average(const AverageModelOptions& options);

// Writes the mean of the checkpoints' tensors to `dst_model`. Every checkpoint must hold the same
// tensors with the same shapes (else InvalidArgument naming the checkpoint and tensor); a CRC32
// mismatch is DataLoss naming the file and tensor. The config text is the newest checkpoint's.
Status average_checkpoints(const std::vector<std::string>& checkpoint_dirs, const std::string& dst_model);

// select_checkpoints_to_average + average_checkpoints; returns the checkpoints used.
StatusOr<std::vector<CheckpointScore>> average_model(const AverageModelOptions& options);

}  // namespace moeasr
