// trainer/wenet_yaml.cc — WeNet train.yaml → ModelConfig (see wenet_yaml.h).
#include "trainer/wenet_yaml.h"

#include <yaml-cpp/yaml.h>

#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

namespace moeasr {
namespace {

std::string where(const std::string& source, const YAML::Node& node, const std::string& key) {
  std::ostringstream out;
  out << source << ":" << node.Mark().line + 1 << ": '" << key << "'";
  return out.str();
}

// Applies each known key of a map section through its setter; unknown keys are errors.
Status read_section(
    const YAML::Node& section, const std::string& section_name, const std::string& source,
    const std::map<std::string, std::function<Status(const YAML::Node&, const std::string&)>>& keys,
    const std::set<std::string>& ignored) {
  if (!section) return Status();
  if (!section.IsMap())
    return invalid_argument_error(where(source, section, section_name) + " must be a mapping");
  for (const auto& item : section) {
    std::string key = item.first.as<std::string>();
    std::string full = section_name + "." + key;
    auto it = keys.find(key);
    if (it == keys.end()) {
      if (ignored.count(key)) continue;
      return invalid_argument_error(where(source, item.first, full) +
                                    " is not a key moe-asr knows; remove it or check its spelling");
    }
    RETURN_IF_ERROR(it->second(item.second, where(source, item.second, full)));
  }
  return Status();
}

template <class V>
std::function<Status(const YAML::Node&, const std::string&)> set(V* target) {
  return [target](const YAML::Node& node, const std::string& at) -> Status {
    try {
      *target = node.as<V>();
    } catch (const YAML::Exception&) {
      return invalid_argument_error(at + " has a value of the wrong type: '" + YAML::Dump(node) + "'");
    }
    return Status();
  };
}

template <class V>
std::function<Status(const YAML::Node&, const std::string&)> set_enum(V* target,
                                                                      std::map<std::string, V> names) {
  return [target, names](const YAML::Node& node, const std::string& at) -> Status {
    std::string value = node.IsScalar() ? node.as<std::string>() : "";
    auto it = names.find(value);
    if (it == names.end()) {
      std::string allowed;
      for (const auto& n : names) allowed += (allowed.empty() ? "" : ", ") + n.first;
      return invalid_argument_error(at + " = '" + value + "' is not one of: " + allowed);
    }
    *target = it->second;
    return Status();
  };
}

std::function<Status(const YAML::Node&, const std::string&)> require(const std::string& expected) {
  return [expected](const YAML::Node& node, const std::string& at) -> Status {
    std::string value = node.IsScalar() ? node.as<std::string>() : "";
    if (value != expected) {
      return invalid_argument_error(at + " = '" + value + "' is not supported; moe-asr implements '" +
                                    expected + "'");
    }
    return Status();
  };
}

std::function<Status(const YAML::Node&, const std::string&)> require_bool(bool expected) {
  return [expected](const YAML::Node& node, const std::string& at) -> Status {
    bool value = !expected;
    try {
      value = node.as<bool>();
    } catch (const YAML::Exception&) {
    }
    if (value != expected) {
      return invalid_argument_error(at + " must be " + (expected ? "true" : "false") +
                                    " in moe-asr's U2++ model");
    }
    return Status();
  };
}

const std::map<std::string, MlpType> kMlpTypes = {{"position_wise_feed_forward", MlpType::kDense},
                                                  {"moe", MlpType::kMoe}};
const std::map<std::string, ActivationType> kActivations = {{"relu", ActivationType::kRelu},
                                                            {"swish", ActivationType::kSwish}};

}  // namespace

StatusOr<ModelConfig> model_config_from_wenet_yaml_text(const std::string& yaml_text,
                                                        const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    return invalid_argument_error(source + ":" + std::to_string(e.mark.line + 1) +
                                  ": not valid YAML: " + e.msg);
  }
  ModelConfig c;
  c.encoder.ffn.activation = ActivationType::kSwish;
  c.decoder.ffn.activation = ActivationType::kRelu;
  c.encoder.cnn_module_norm = ConvNormType::kBatchNorm;
  std::string cnn_norm = "batch_norm";
  bool have_vocab = false;
  if (root["input_dim"]) c.input_dim = root["input_dim"].as<int64_t>();
  for (const char* key : {"output_dim", "vocab_size"}) {
    if (root[key]) {
      c.vocab_size = root[key].as<int64_t>();
      have_vocab = true;
    }
  }
  if (!have_vocab) return invalid_argument_error(source + ": needs output_dim (the vocabulary size)");
  if (root["encoder"] && root["encoder"].as<std::string>() != "conformer") {
    return invalid_argument_error(where(source, root["encoder"], "encoder") + " must be conformer");
  }
  if (root["decoder"] && root["decoder"].as<std::string>() != "bitransformer" &&
      root["decoder"].as<std::string>() != "transformer") {
    return invalid_argument_error(where(source, root["decoder"], "decoder") +
                                  " must be bitransformer or transformer");
  }

  EncoderConfig& e = c.encoder;
  RETURN_IF_ERROR(
      read_section(root["encoder_conf"], "encoder_conf", source,
                   {{"output_size", set(&e.output_size)},
                    {"attention_heads", set(&e.attention_heads)},
                    {"linear_units", set(&e.ffn.linear_units)},
                    {"num_blocks", set(&e.num_blocks)},
                    {"dropout_rate", set(&e.dropout_rate)},
                    {"positional_dropout_rate", set(&e.positional_dropout_rate)},
                    {"attention_dropout_rate", set(&e.attention_dropout_rate)},
                    {"cnn_module_kernel", set(&e.cnn_module_kernel)},
                    {"causal", set(&e.causal)},
                    {"cnn_module_norm", set(&cnn_norm)},
                    {"activation_type", set_enum(&e.ffn.activation, kActivations)},
                    {"mlp_type", set_enum(&e.ffn.mlp_type, kMlpTypes)},
                    {"n_expert", set(&e.ffn.n_expert)},
                    {"n_expert_activated", set(&e.ffn.n_expert_activated)},
                    {"mlp_bias", set(&e.ffn.mlp_bias)},
                    {"use_dynamic_chunk", set(&e.use_dynamic_chunk)},
                    {"use_dynamic_left_chunk", set(&e.use_dynamic_left_chunk)},
                    {"static_chunk_size", set(&e.static_chunk_size)},
                    {"input_layer", require("conv2d")},
                    {"pos_enc_layer_type", require("rel_pos")},
                    {"selfattention_layer_type", require("rel_selfattn")},
                    {"normalize_before", require_bool(true)},
                    {"macaron_style", require_bool(true)},
                    {"use_cnn_module", require_bool(true)}},
                   {"gradient_checkpointing", "cnn_module_norm_type", "use_sdpa", "layer_norm_type",
                    "norm_eps", "conv_bias", "query_bias", "key_bias", "value_bias", "final_norm"}));
  if (cnn_norm == "layer_norm") {
    e.cnn_module_norm = ConvNormType::kLayerNorm;
  } else if (cnn_norm != "batch_norm") {
    return invalid_argument_error(
        source + ": encoder_conf.cnn_module_norm must be batch_norm or layer_norm, not '" + cnn_norm + "'");
  }

  DecoderConfig& d = c.decoder;
  d.r_num_blocks = 0;
  RETURN_IF_ERROR(read_section(
      root["decoder_conf"], "decoder_conf", source,
      {{"attention_heads", set(&d.attention_heads)},
       {"linear_units", set(&d.ffn.linear_units)},
       {"num_blocks", set(&d.num_blocks)},
       {"r_num_blocks", set(&d.r_num_blocks)},
       {"dropout_rate", set(&d.dropout_rate)},
       {"positional_dropout_rate", set(&d.positional_dropout_rate)},
       {"self_attention_dropout_rate", set(&d.self_attention_dropout_rate)},
       {"src_attention_dropout_rate", set(&d.src_attention_dropout_rate)},
       {"activation_type", set_enum(&d.ffn.activation, kActivations)},
       {"mlp_type", set_enum(&d.ffn.mlp_type, kMlpTypes)},
       {"n_expert", set(&d.ffn.n_expert)},
       {"n_expert_activated", set(&d.ffn.n_expert_activated)},
       {"mlp_bias", set(&d.ffn.mlp_bias)},
       {"input_layer", require("embed")},
       {"normalize_before", require_bool(true)}},
      {"gradient_checkpointing", "tie_word_embedding", "use_output_layer", "src_attention", "concat_after",
       "use_sdpa", "layer_norm_type", "norm_eps", "query_bias", "key_bias", "value_bias"}));
  RETURN_IF_ERROR(read_section(root["model_conf"], "model_conf", source,
                               {{"ctc_weight", set(&c.ctc_weight)},
                                {"lsm_weight", set(&c.lsm_weight)},
                                {"reverse_weight", set(&c.reverse_weight)},
                                {"length_normalized_loss", set(&c.length_normalized_loss)}},
                               {"special_tokens"}));
  Status valid = validate_model_config(c);
  if (!valid.ok()) return valid.with_context(source);
  return c;
}

StatusOr<ModelConfig> model_config_from_wenet_yaml(const std::string& yaml_path) {
  std::ifstream in(yaml_path);
  if (!in) return not_found_error("cannot read the config file " + yaml_path);
  std::stringstream text;
  text << in.rdbuf();
  return model_config_from_wenet_yaml_text(text.str(), yaml_path);
}

}  // namespace moeasr
