// trainer/model_weights.h — a model's weights as one HDF5 file: /params/<WeNet state-dict name>
// float32 in PyTorch shape, plus attributes format ("moe-asr-weights"), format_version and the
// model config (JSON-free text: the WeNet YAML it was built from, when known). What
// tools/convert_wenet.py writes from a WeNet checkpoint, what average_model writes, and what
// recognize loads. Experts are stored by GLOBAL id, so a file loads under any expert-parallel layout.
#pragma once

#include <string>

#include "core/status.h"
#include "model/parameter_table.h"

namespace moeasr {

constexpr int kModelWeightsFormatVersion = 1;

// Every tensor of the store's table must be in the file with the same shape: a missing tensor or
// a shape mismatch is an error naming the tensor and both shapes ("a checkpoint from another model
// shape"). Tensors in the file that the table lacks are errors too, except other ranks' experts and
// names in `ignored_suffixes` (e.g. ".num_batches_tracked").
Status load_model_weights(const std::string& path, ParameterStore<float>* store);
// Writes "<path>.tmp" and renames; `config_text` is stored as the config attribute.
Status save_model_weights(const std::string& path, const ParameterStore<float>& store,
                          const std::string& config_text);
// The config attribute of a weights file ("" when absent).
StatusOr<std::string> read_model_weights_config(const std::string& path);

}  // namespace moeasr
