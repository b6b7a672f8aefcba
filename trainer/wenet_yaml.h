// trainer/wenet_yaml.h — reads the model part of a WeNet train.yaml (encoder_conf, decoder_conf,
// model_conf, input_dim, output_dim / vocab_size) into a ModelConfig, with WeNet's key names and class
// defaults. Unknown keys inside those sections and bad values are errors naming the key and its line.
// The full training config (dataset_conf, optim, scheduler, ...) comes with the trainer's schema.
#pragma once

#include <string>

#include "core/status.h"
#include "model/model_config.h"

namespace moeasr {

StatusOr<ModelConfig> model_config_from_wenet_yaml(const std::string& yaml_path);
// Same, from YAML text; `source` names it in messages.
StatusOr<ModelConfig> model_config_from_wenet_yaml_text(const std::string& yaml_text,
                                                        const std::string& source);

}  // namespace moeasr
