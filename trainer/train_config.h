// trainer/train_config.h — the training config: YAML with WeNet's keys outside, the protobuf schema
// of proto/config.proto inside (YAML -> JSON -> JsonStringToMessage, as the reference recommends).
// Unknown keys and bad values are errors naming the key and its line; `--override_config "a.b v"`
// (and Hydra-style "a.b=v") change single values; defaults are WeNet's recipe values; the resolved
// config (every default filled in) is what exp/<name>/train.yaml holds.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"
#include "model/model_config.h"
#include "proto/config.pb.h"

namespace moeasr {

// Parses `yaml_path`, applies `overrides` in order, fills defaults, validates.
StatusOr<proto::TrainConfig> load_train_config(const std::string& yaml_path,
                                               const std::vector<std::string>& overrides);
StatusOr<proto::TrainConfig> parse_train_config(const std::string& yaml_text, const std::string& source,
                                                const std::vector<std::string>& overrides);
// The resolved config as YAML (WeNet key names, every field set) for exp/<name>/train.yaml.
std::string train_config_to_yaml(const proto::TrainConfig& config);
// The same as protobuf text format, for exp/<name>/train.prototxt (asr_toolkits.md §5.2: an exact dump).
std::string train_config_to_prototxt(const proto::TrainConfig& config);
// The model part as the ModelConfig the model code takes.
ModelConfig model_config_from_train_config(const proto::TrainConfig& config);

}  // namespace moeasr
