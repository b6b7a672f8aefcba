// trainer/train_config.cc — the training config front end (see train_config.h): YAML (yaml-cpp) is
// walked against proto::TrainConfig's descriptor so that an unknown key or a value of the wrong type
// is reported with its key path and line, then turned into JSON and read with protobuf's
// JsonStringToMessage (asr_toolkits.md §5.2). Overrides follow WeNet's `--override_config "a.b value"`
// (and Hydra's "a.b=value"); absent fields get WeNet's class and recipe defaults (fill_defaults lists
// each with its origin); validation names the key, and the line or override it came from.
#include "trainer/train_config.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/text_format.h>
#include <google/protobuf/util/json_util.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

namespace moeasr {
namespace {

namespace pb = google::protobuf;

// Where each key's value came from, by dotted path: "conf/train.yaml:12" or
// "--override_config 'accum_grad 4'". Keys absent from both get defaults and no entry.
using Locations = std::map<std::string, std::string>;

// How a YAML tree being checked came in: from the file `source`, or from one override.
struct Origin {
  std::string source;
  std::string override_text;  // non-empty: the tree is an override's value
};

std::string location(const Origin& origin, const YAML::Node& node) {
  if (!origin.override_text.empty()) return "--override_config '" + origin.override_text + "'";
  return origin.source + ":" + std::to_string(node.Mark().line + 1);
}

std::string join_path(const std::string& prefix, const std::string& key) {
  return prefix.empty() ? key : prefix + "." + key;
}

// Shortest decimal text that reads back to exactly `v` (10 -> "10", 1e-8 -> "1e-08").
std::string format_double(double v) {
  char buffer[64];
  auto result = std::to_chars(buffer, buffer + sizeof(buffer), v);
  CHECK(result.ec == std::errc()) << "format_double";
  return std::string(buffer, result.ptr);
}

// Whether a string can be written as a plain YAML scalar and still read back as that string.
constexpr const char* kYamlSpecialWords[] = {"true", "false", "yes", "no",   "on",
                                             "off",  "y",     "n",   "null", "~"};
bool plain_yaml_string(const std::string& s) {
  if (s.empty() || !(std::isalpha(static_cast<unsigned char>(s[0])) || s[0] == '_' || s[0] == '/'))
    return false;
  for (char ch : s) {
    if (!std::isalnum(static_cast<unsigned char>(ch)) && std::string("_./-").find(ch) == std::string::npos) {
      return false;
    }
  }
  std::string lower = s;
  for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  for (const char* word : kYamlSpecialWords) {
    if (lower == word) return false;
  }
  return true;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// "; did you mean X?" for the closest field name, or the list of keys when none is close.
std::string suggest(const std::string& key, const pb::Descriptor* message, const std::string& parent) {
  std::string best;
  size_t best_distance = std::max<size_t>(2, key.size() / 3) + 1;
  std::string all;
  for (int i = 0; i < message->field_count(); ++i) {
    const std::string& name = message->field(i)->name();
    all += (all.empty() ? "" : ", ") + name;
    size_t d = edit_distance(key, name);
    if (d < best_distance) {
      best_distance = d;
      best = name;
    }
  }
  if (!best.empty()) return "; did you mean " + best + "?";
  return "; the keys of " + (parent.empty() ? std::string("the top level") : parent) + " are: " + all;
}

// Keys WeNet's yamls carry that moe-asr has no field for. They are accepted so WeNet configs port
// verbatim, but only with the value moe-asr implements (`required`; nullptr: any value, the key
// only tunes WeNet's implementation). A section entry ("{}") is a mapping whose keys are checked
// against this table in turn. They are dropped from the resolved config.
struct IgnoredKey {
  const char* path;
  const char* required;
};
constexpr IgnoredKey kIgnoredWenetKeys[] = {
    {"model", "asr_model"},
    {"dataset", "asr"},
    {"ctc", "ctc"},
    {"ctc_conf", "{}"},
    {"ctc_conf.ctc_blank_id", "0"},
    {"encoder_conf.use_sdpa", nullptr},
    {"encoder_conf.layer_norm_type", "layer_norm"},
    {"encoder_conf.norm_eps", "1e-5"},
    {"encoder_conf.query_bias", "true"},
    {"encoder_conf.key_bias", "true"},
    {"encoder_conf.value_bias", "true"},
    {"encoder_conf.conv_bias", "true"},
    {"encoder_conf.final_norm", "true"},
    {"decoder_conf.use_sdpa", nullptr},
    {"decoder_conf.layer_norm_type", "layer_norm"},
    {"decoder_conf.norm_eps", "1e-5"},
    {"decoder_conf.query_bias", "true"},
    {"decoder_conf.key_bias", "true"},
    {"decoder_conf.value_bias", "true"},
    {"decoder_conf.tie_word_embedding", "false"},
    {"decoder_conf.use_output_layer", "true"},
    {"decoder_conf.src_attention", "true"},
    {"decoder_conf.concat_after", "false"},
    {"model_conf.special_tokens", nullptr},
    {"tokenizer_conf.special_tokens", nullptr},
    {"tokenizer_conf.is_multilingual", "false"},
    {"tokenizer_conf.num_languages", "1"},
    {"dataset_conf.resample_conf", "{}"},
    {"dataset_conf.resample_conf.resample_rate", "16000"},
    {"dataset_conf.feats_type", "fbank"},
};

const IgnoredKey* find_ignored(const std::string& path) {
  for (const IgnoredKey& k : kIgnoredWenetKeys) {
    if (path == k.path) return &k;
  }
  return nullptr;
}

// Whether a scalar equals the text `required`, compared as a bool, a number or a string by the form
// of `required`.
bool scalar_matches(const YAML::Node& node, const std::string& required) {
  if (!node.IsScalar()) return false;
  const std::string& s = node.Scalar();
  if (required == "true" || required == "false") {
    bool value = false;
    if (!YAML::convert<bool>::decode(node, value)) return false;
    return value == (required == "true");
  }
  char* end = nullptr;
  double want = std::strtod(required.c_str(), &end);
  if (*end == '\0') {
    char* got_end = nullptr;
    double got = std::strtod(s.c_str(), &got_end);
    return !s.empty() && *got_end == '\0' && got == want;
  }
  return s == required;
}

Status check_ignored(const YAML::Node& key, const YAML::Node& value, const IgnoredKey& ignored,
                     const std::string& path, const Origin& origin) {
  std::string at = location(origin, key) + ": '" + path + "'";
  if (ignored.required == nullptr) return Status();
  std::string required = ignored.required;
  if (required == "{}") {
    if (value.IsNull()) return Status();
    if (!value.IsMap()) return invalid_argument_error(at + " must be a mapping");
    for (const auto& item : value) {
      std::string child = join_path(path, item.first.Scalar());
      const IgnoredKey* known = find_ignored(child);
      if (known == nullptr) {
        return invalid_argument_error(location(origin, item.first) + ": '" + child +
                                      "' is not a key moe-asr knows; remove it or check its spelling");
      }
      RETURN_IF_ERROR(check_ignored(item.first, item.second, *known, child, origin));
    }
    return Status();
  }
  if (!scalar_matches(value, required)) {
    return invalid_argument_error(at + " = '" + (value.IsScalar() ? value.Scalar() : YAML::Dump(value)) +
                                  "' is not supported: moe-asr implements only " + required +
                                  " (WeNet's key is accepted with that value)");
  }
  return Status();
}

bool parse_int64(const std::string& s, int64_t* out) {
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno != 0 || *end != '\0') return false;
  *out = v;
  return true;
}

bool parse_double(const std::string& s, double* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (*end != '\0') return false;
  *out = v;
  return true;
}

const char* type_name(const pb::FieldDescriptor* f) {
  switch (f->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT32:
    case pb::FieldDescriptor::CPPTYPE_INT64:
    case pb::FieldDescriptor::CPPTYPE_UINT32:
    case pb::FieldDescriptor::CPPTYPE_UINT64: return "an integer";
    case pb::FieldDescriptor::CPPTYPE_FLOAT:
    case pb::FieldDescriptor::CPPTYPE_DOUBLE: return "a number";
    case pb::FieldDescriptor::CPPTYPE_BOOL: return "true or false";
    case pb::FieldDescriptor::CPPTYPE_STRING: return "a string";
    case pb::FieldDescriptor::CPPTYPE_MESSAGE: return "a mapping";
    default: return "a value of another kind";
  }
}

// Converts one scalar to JSON by the field's type; false on a value of the wrong type.
bool scalar_to_json(const YAML::Node& node, const pb::FieldDescriptor* f, nlohmann::json* out) {
  if (!node.IsScalar()) return false;
  const std::string& s = node.Scalar();
  // A quoted scalar ('40', "true") is a string in YAML: only string fields take one.
  bool quoted = node.Tag() == "!";
  switch (f->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT64:
    case pb::FieldDescriptor::CPPTYPE_INT32: {
      int64_t v = 0;
      if (quoted || !parse_int64(s, &v)) return false;
      *out = std::to_string(v);  // proto3 JSON takes int64 as a string: exact beyond 2^53
      return true;
    }
    case pb::FieldDescriptor::CPPTYPE_DOUBLE:
    case pb::FieldDescriptor::CPPTYPE_FLOAT: {
      double v = 0;
      if (quoted || !parse_double(s, &v) || !std::isfinite(v)) return false;
      *out = v;
      return true;
    }
    case pb::FieldDescriptor::CPPTYPE_BOOL: {
      bool v = false;
      if (quoted || !YAML::convert<bool>::decode(node, v)) return false;
      *out = v;
      return true;
    }
    case pb::FieldDescriptor::CPPTYPE_STRING: *out = s; return true;
    default: return false;
  }
}

Status check_map(const YAML::Node& map, const pb::Descriptor* message, const std::string& path,
                 const Origin& origin, Locations* locations);

// Checks `value` (the value of `key`, at `path`) against field `f`; records where it came from.
Status check_value(const YAML::Node& key, const YAML::Node& value, const pb::FieldDescriptor* f,
                   const std::string& path, const Origin& origin, Locations* locations) {
  std::string where = location(origin, key);
  (*locations)[path] = where;
  if (value.IsNull()) return Status();  // `key:` with nothing, or `key: null`: the default
  std::string at = where + ": '" + path + "'";
  if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
    if (!value.IsMap())
      return invalid_argument_error(at + " must be a mapping of " + f->message_type()->name());
    return check_map(value, f->message_type(), path, origin, locations);
  }
  nlohmann::json ignored;
  if (f->is_repeated()) {
    if (!value.IsSequence()) {
      return invalid_argument_error(at + " must be a list of " + type_name(f) + ", e.g. [0.9, 0.999]");
    }
    for (const auto& element : value) {
      if (!scalar_to_json(element, f, &ignored)) {
        return invalid_argument_error(at + " has an element of the wrong type: '" + YAML::Dump(element) +
                                      "'; expected " + type_name(f));
      }
    }
    return Status();
  }
  if (!scalar_to_json(value, f, &ignored)) {
    std::string shown = value.IsScalar() ? value.Scalar() : YAML::Dump(value);
    return invalid_argument_error(at + " has a value of the wrong type: '" + shown + "'; expected " +
                                  type_name(f) +
                                  (value.IsScalar() && value.Tag() == "!" ? " (remove the quotes)" : ""));
  }
  return Status();
}

Status check_map(const YAML::Node& map, const pb::Descriptor* message, const std::string& path,
                 const Origin& origin, Locations* locations) {
  std::set<std::string> seen;
  for (const auto& item : map) {
    if (!item.first.IsScalar()) {
      return invalid_argument_error(location(origin, item.first) + ": a key under '" + path +
                                    "' is not a plain name");
    }
    const std::string& key = item.first.Scalar();
    std::string child = join_path(path, key);
    if (!seen.insert(key).second) {
      return invalid_argument_error(location(origin, item.first) + ": '" + child + "' appears twice");
    }
    const pb::FieldDescriptor* f = message->FindFieldByName(key);
    if (f == nullptr) {
      if (const IgnoredKey* ignored = find_ignored(child)) {
        RETURN_IF_ERROR(check_ignored(item.first, item.second, *ignored, child, origin));
        continue;
      }
      return invalid_argument_error(location(origin, item.first) + ": '" + child + "' is not a key" +
                                    suggest(key, message, path));
    }
    RETURN_IF_ERROR(check_value(item.first, item.second, f, child, origin, locations));
  }
  return Status();
}

// The checked tree as proto3 JSON (ignored WeNet keys and nulls left out).
nlohmann::json to_json(const YAML::Node& map, const pb::Descriptor* message) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& item : map) {
    const pb::FieldDescriptor* f = message->FindFieldByName(item.first.Scalar());
    if (f == nullptr || item.second.IsNull()) continue;
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      out[f->name()] = to_json(item.second, f->message_type());
    } else if (f->is_repeated()) {
      nlohmann::json list = nlohmann::json::array();
      for (const auto& element : item.second) {
        nlohmann::json v;
        CHECK(scalar_to_json(element, f, &v));
        list.push_back(v);
      }
      out[f->name()] = list;
    } else {
      nlohmann::json v;
      CHECK(scalar_to_json(item.second, f, &v));
      out[f->name()] = v;
    }
  }
  return out;
}

std::string trim(const std::string& s) {
  size_t begin = s.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) return "";
  size_t end = s.find_last_not_of(" \t\r\n");
  return s.substr(begin, end - begin + 1);
}

// Applies one override ("a.b value" or "a.b=value") to the YAML tree, checking the key path and the
// value's type as the file's keys are checked; errors name the override.
Status apply_override(const std::string& raw, YAML::Node* root, Locations* locations) {
  std::string text = trim(raw);
  const std::string at = "--override_config '" + text + "'";
  size_t space = text.find_first_of(" \t");
  size_t equals = text.find('=');
  std::string key, value_text;
  if (equals != std::string::npos && (space == std::string::npos || equals < space)) {
    key = trim(text.substr(0, equals));
    value_text = trim(text.substr(equals + 1));
  } else if (space != std::string::npos) {
    key = text.substr(0, space);
    value_text = trim(text.substr(space));
  }
  if (key.empty() || value_text.empty()) {
    return invalid_argument_error(at +
                                  ": expected 'a.b value' (WeNet) or 'a.b=value' (Hydra), e.g. "
                                  "'dataset_conf.batch_conf.max_frames_in_batch 36000'");
  }
  std::vector<std::string> parts;
  std::stringstream split(key);
  for (std::string part; std::getline(split, part, '.');) parts.push_back(part);
  if (key.back() == '.') parts.push_back("");
  const pb::Descriptor* message = proto::TrainConfig::descriptor();
  const pb::FieldDescriptor* f = nullptr;
  std::string path;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (parts[i].empty()) return invalid_argument_error(at + ": '" + key + "' has an empty key part");
    std::string parent = path;
    path = join_path(path, parts[i]);
    f = message->FindFieldByName(parts[i]);
    if (f == nullptr) {
      return invalid_argument_error(at + ": '" + path + "' is not a key" +
                                    suggest(parts[i], message, parent));
    }
    if (i + 1 < parts.size()) {
      if (f->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE) {
        return invalid_argument_error(at + ": '" + path + "' is a value, not a section with keys");
      }
      message = f->message_type();
    }
  }
  YAML::Node value;
  try {
    value = YAML::Load(value_text);
  } catch (const YAML::Exception& e) {
    return invalid_argument_error(at + ": the value is not valid YAML: " + e.msg);
  }
  // The override replaces the whole value at `path`: forget where the old parts of it came from.
  for (auto it = locations->lower_bound(path); it != locations->end();) {
    if (it->first == path || it->first.rfind(path + ".", 0) == 0) {
      it = locations->erase(it);
    } else if (it->first > path + "/") {
      break;
    } else {
      ++it;
    }
  }
  Origin origin{"", text};
  RETURN_IF_ERROR(check_value(YAML::Node(), value, f, path, origin, locations));
  YAML::Node node;
  node.reset(*root);
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    if (!node[parts[i]].IsMap()) node[parts[i]] = YAML::Node(YAML::NodeType::Map);
    YAML::Node next = node[parts[i]];
    node.reset(next);
  }
  node[parts.back()] = value;
  return Status();
}

// Absent fields get these values. Sources: WeNet's class defaults (ConformerEncoder,
// TransformerDecoder/BiTransformerDecoder, torch.optim.Adam) for the model and optimizer, the U2++
// recipes (u2pp_moe_wenet.md §7: examples/aishell/s0 and examples/wenetspeech/s0
// train_u2++_conformer.yaml) for the training and data settings, and moe-asr's own for its additions.
#define MOEASR_DEFAULT(message, field, value) \
  if (!(message)->has_##field()) (message)->set_##field(value)

void fill_defaults(proto::TrainConfig* c) {
  MOEASR_DEFAULT(c, encoder, "conformer");      // the only encoder
  MOEASR_DEFAULT(c, decoder, "bitransformer");  // U2++ recipes
  MOEASR_DEFAULT(c, input_dim,
                 c->dataset_conf().fbank_conf().has_num_mel_bins()
                     ? c->dataset_conf().fbank_conf().num_mel_bins()
                     : 80);                        // WeNet: input_dim = num_mel_bins (80)
  MOEASR_DEFAULT(c, vocab_size, c->output_dim());  // alias: always equal to output_dim

  // encoder_conf: WeNet ConformerEncoder's constructor defaults.
  proto::EncoderConf* e = c->mutable_encoder_conf();
  MOEASR_DEFAULT(e, output_size, 256);
  MOEASR_DEFAULT(e, attention_heads, 4);
  MOEASR_DEFAULT(e, linear_units, 2048);
  MOEASR_DEFAULT(e, num_blocks, 6);
  MOEASR_DEFAULT(e, dropout_rate, 0.1);
  MOEASR_DEFAULT(e, positional_dropout_rate, 0.1);
  MOEASR_DEFAULT(e, attention_dropout_rate, 0.0);
  MOEASR_DEFAULT(e, input_layer, "conv2d");
  MOEASR_DEFAULT(e, normalize_before, true);
  MOEASR_DEFAULT(e, cnn_module_kernel, 15);
  MOEASR_DEFAULT(e, use_cnn_module, true);
  MOEASR_DEFAULT(e, activation_type, "swish");
  MOEASR_DEFAULT(e, pos_enc_layer_type, "rel_pos");
  MOEASR_DEFAULT(e, selfattention_layer_type, "rel_selfattn");
  MOEASR_DEFAULT(e, causal, false);
  MOEASR_DEFAULT(e, use_dynamic_chunk, false);
  MOEASR_DEFAULT(e, use_dynamic_left_chunk, false);
  MOEASR_DEFAULT(e, cnn_module_norm, "batch_norm");
  MOEASR_DEFAULT(e, macaron_style, true);
  MOEASR_DEFAULT(e, static_chunk_size, 0);
  MOEASR_DEFAULT(e, mlp_type, "position_wise_feed_forward");
  MOEASR_DEFAULT(e, n_expert, 8);
  MOEASR_DEFAULT(e, n_expert_activated, 2);
  MOEASR_DEFAULT(e, mlp_bias, true);
  MOEASR_DEFAULT(e, gradient_checkpointing, false);

  // decoder_conf: WeNet TransformerDecoder's constructor defaults, except num_blocks and r_num_blocks:
  // a bitransformer decoder gets the U2++ recipe's 3 + 3 (the class default r_num_blocks 0 would
  // contradict reverse_weight 0.3), a transformer decoder 6 + 0 (the class defaults).
  const bool bidirectional = c->decoder() == "bitransformer";
  proto::DecoderConf* d = c->mutable_decoder_conf();
  MOEASR_DEFAULT(d, attention_heads, 4);
  MOEASR_DEFAULT(d, linear_units, 2048);
  MOEASR_DEFAULT(d, num_blocks, bidirectional ? 3 : 6);
  MOEASR_DEFAULT(d, r_num_blocks, bidirectional ? 3 : 0);
  MOEASR_DEFAULT(d, dropout_rate, 0.1);
  MOEASR_DEFAULT(d, positional_dropout_rate, 0.1);
  MOEASR_DEFAULT(d, self_attention_dropout_rate, 0.0);
  MOEASR_DEFAULT(d, src_attention_dropout_rate, 0.0);
  MOEASR_DEFAULT(d, input_layer, "embed");
  MOEASR_DEFAULT(d, normalize_before, true);
  MOEASR_DEFAULT(d, activation_type, "relu");
  MOEASR_DEFAULT(d, mlp_type, "position_wise_feed_forward");
  MOEASR_DEFAULT(d, n_expert, 8);
  MOEASR_DEFAULT(d, n_expert_activated, 2);
  MOEASR_DEFAULT(d, mlp_bias, true);
  MOEASR_DEFAULT(d, gradient_checkpointing, false);

  // model_conf: the U2++ recipes (reverse_weight 0 for a transformer decoder, which has no R2L half).
  proto::ModelConf* m = c->mutable_model_conf();
  MOEASR_DEFAULT(m, ctc_weight, 0.3);
  MOEASR_DEFAULT(m, lsm_weight, 0.1);
  MOEASR_DEFAULT(m, reverse_weight, bidirectional ? 0.3 : 0.0);
  MOEASR_DEFAULT(m, length_normalized_loss, false);

  MOEASR_DEFAULT(c, tokenizer, "char");  // the aishell recipe
  proto::TokenizerConf* t = c->mutable_tokenizer_conf();
  MOEASR_DEFAULT(t, symbol_table_path, "");  // empty: the command's flags / the demo supply units.txt
  MOEASR_DEFAULT(t, bpe_path, "");           // required for tokenizer: bpe
  MOEASR_DEFAULT(t, split_with_space, false);
  MOEASR_DEFAULT(t, non_lang_syms_path, "");

  MOEASR_DEFAULT(c, cmvn, "global_cmvn");  // WeNet recipes
  proto::CmvnConf* cm = c->mutable_cmvn_conf();
  MOEASR_DEFAULT(cm, cmvn_file, "");  // empty: identity CMVN (mean 0, istd 1) until stats are given
  MOEASR_DEFAULT(cm, is_json_cmvn, true);

  // dataset_conf: the WenetSpeech U2++ recipe (dynamic batching), with WeNet's processor defaults
  // (token_min_length 1, min_output_input_ratio 0.0005) where that recipe sets nothing.
  proto::DatasetConf* ds = c->mutable_dataset_conf();
  proto::FilterConf* fl = ds->mutable_filter_conf();
  MOEASR_DEFAULT(fl, max_length, 4096);  // frames of 10 ms: 40.96 s
  MOEASR_DEFAULT(fl, min_length, 10);
  MOEASR_DEFAULT(fl, token_max_length, 200);
  MOEASR_DEFAULT(fl, token_min_length, 1);
  MOEASR_DEFAULT(fl, max_output_input_ratio, 0.25);
  MOEASR_DEFAULT(fl, min_output_input_ratio, 0.0005);
  proto::FbankConf* fb = ds->mutable_fbank_conf();
  MOEASR_DEFAULT(fb, num_mel_bins, c->input_dim());  // 80
  MOEASR_DEFAULT(fb, frame_shift, 10.0);
  MOEASR_DEFAULT(fb, frame_length, 25.0);
  MOEASR_DEFAULT(fb, dither, 1.0);  // training; recognition uses 0
  MOEASR_DEFAULT(ds, spec_aug, true);
  proto::SpecAugConf* sa = ds->mutable_spec_aug_conf();
  MOEASR_DEFAULT(sa, num_t_mask, 2);
  MOEASR_DEFAULT(sa, num_f_mask, 2);
  MOEASR_DEFAULT(sa, max_t, 50);
  MOEASR_DEFAULT(sa, max_f, 30);
  MOEASR_DEFAULT(ds, spec_sub, true);
  proto::SpecSubConf* ss = ds->mutable_spec_sub_conf();
  MOEASR_DEFAULT(ss, num_t_sub, 3);
  MOEASR_DEFAULT(ss, max_t, 30);
  MOEASR_DEFAULT(ds, spec_trim, false);
  MOEASR_DEFAULT(ds->mutable_spec_trim_conf(), max_t, 30);
  MOEASR_DEFAULT(ds, shuffle, true);
  MOEASR_DEFAULT(ds->mutable_shuffle_conf(), shuffle_size, 5000);
  MOEASR_DEFAULT(ds, sort, true);
  MOEASR_DEFAULT(ds->mutable_sort_conf(), sort_size, 1000);
  proto::BatchConf* b = ds->mutable_batch_conf();
  MOEASR_DEFAULT(b, batch_type, "dynamic");
  MOEASR_DEFAULT(b, batch_size, 16);              // static batching (the aishell recipe)
  MOEASR_DEFAULT(b, max_frames_in_batch, 36000);  // dynamic batching
  MOEASR_DEFAULT(ds, speed_perturb, false);       // features are precomputed in the shards
  MOEASR_DEFAULT(ds, prefetch, 4);                // moe-asr: batches read ahead per rank

  MOEASR_DEFAULT(c, grad_clip, 5.0);     // U2++ recipes
  MOEASR_DEFAULT(c, accum_grad, 1);      // aishell recipe
  MOEASR_DEFAULT(c, max_epoch, 100);     // WeNet's train.py default
  MOEASR_DEFAULT(c, log_interval, 100);  // WeNet recipes
  MOEASR_DEFAULT(c, save_interval, 0);   // checkpoints at epoch ends only (WeNet's default)
  MOEASR_DEFAULT(c, optim, "adam");      // U2++ recipes
  proto::OptimConf* o = c->mutable_optim_conf();
  MOEASR_DEFAULT(o, lr, 0.001);  // U2++ recipes
  if (o->betas_size() == 0) {    // torch.optim.Adam defaults
    o->add_betas(0.9);
    o->add_betas(0.999);
  }
  MOEASR_DEFAULT(o, eps, 1e-8);
  MOEASR_DEFAULT(o, weight_decay, 0.0);
  MOEASR_DEFAULT(c, scheduler, "warmuplr");                          // U2++ recipes
  MOEASR_DEFAULT(c->mutable_scheduler_conf(), warmup_steps, 25000);  // aishell recipe
  MOEASR_DEFAULT(c, dtype, "fp32");

  // moe-asr's additions.
  proto::ParallelConf* p = c->mutable_parallel_conf();
  MOEASR_DEFAULT(p, ep_size, 1);  // experts replicated: plain data parallelism
  MOEASR_DEFAULT(p, debug_collectives, false);
  MOEASR_DEFAULT(p, collective_timeout_s, 600);  // a rank that waits 10 minutes aborts the job
  proto::TrainConf* tc = c->mutable_train_conf();
  MOEASR_DEFAULT(tc, seed, 777);  // WeNet's train.py --seed default
  MOEASR_DEFAULT(tc, keep_checkpoint_max, 5);
  MOEASR_DEFAULT(tc, cv_interval, 0);  // cv at epoch ends (WeNet)
  MOEASR_DEFAULT(tc, max_consecutive_nonfinite, 20);
  MOEASR_DEFAULT(tc, max_bad_data_fraction, 0.01);
  MOEASR_DEFAULT(tc, num_threads, 2);
}

#undef MOEASR_DEFAULT

// Validation: each failure names the key and where its value came from.
class Validator {
 public:
  Validator(const std::string& source, const Locations& locations) : source_(source), locations_(locations) {}

  std::string at(const std::string& path) const {
    auto it = locations_.find(path);
    if (it != locations_.end()) return it->second + ": '" + path + "'";
    return source_ + ": '" + path + "' (default value)";
  }
  Status fail(const std::string& path, const std::string& value, const std::string& what) const {
    return invalid_argument_error(at(path) + " = " + value + " " + what);
  }
  Status at_least(const std::string& path, int64_t value, int64_t lowest) const {
    if (value >= lowest) return Status();
    return fail(path, std::to_string(value), "must be >= " + std::to_string(lowest));
  }
  Status in_range(const std::string& path, double value, double lo, double hi, bool hi_open) const {
    if (value >= lo && (hi_open ? value < hi : value <= hi)) return Status();
    return fail(path, format_double(value),
                "must be in [" + format_double(lo) + ", " + format_double(hi) + (hi_open ? ")" : "]"));
  }
  Status positive(const std::string& path, double value) const {
    if (value > 0) return Status();
    return fail(path, format_double(value), "must be > 0");
  }
  Status one_of(const std::string& path, const std::string& value, const std::vector<std::string>& allowed,
                const std::string& note = "") const {
    if (std::find(allowed.begin(), allowed.end(), value) != allowed.end()) return Status();
    std::string list;
    for (const std::string& a : allowed) list += (list.empty() ? "" : " | ") + a;
    return fail(path, "'" + value + "'", "is not one of: " + list + note);
  }
  Status must_be(const std::string& path, bool value, bool expected) const {
    if (value == expected) return Status();
    return fail(path, value ? "true" : "false",
                std::string("is not supported: moe-asr's U2++ model needs ") + (expected ? "true" : "false"));
  }

 private:
  const std::string& source_;
  const Locations& locations_;
};

const std::vector<std::string> kMlpTypeNames = {"position_wise_feed_forward", "moe"};
const std::vector<std::string> kActivationNames = {"swish", "relu"};

Status validate(const proto::TrainConfig& c, const Validator& v, const std::string& source) {
  const std::string only = " (the only one moe-asr implements)";
  RETURN_IF_ERROR(v.one_of("encoder", c.encoder(), {"conformer"}, only));
  RETURN_IF_ERROR(v.one_of("decoder", c.decoder(), {"bitransformer", "transformer"}));
  const proto::EncoderConf& e = c.encoder_conf();
  RETURN_IF_ERROR(v.at_least("encoder_conf.output_size", e.output_size(), 1));
  RETURN_IF_ERROR(v.at_least("encoder_conf.attention_heads", e.attention_heads(), 1));
  RETURN_IF_ERROR(v.at_least("encoder_conf.linear_units", e.linear_units(), 1));
  RETURN_IF_ERROR(v.at_least("encoder_conf.num_blocks", e.num_blocks(), 1));
  RETURN_IF_ERROR(v.in_range("encoder_conf.dropout_rate", e.dropout_rate(), 0, 1, true));
  RETURN_IF_ERROR(
      v.in_range("encoder_conf.positional_dropout_rate", e.positional_dropout_rate(), 0, 1, true));
  RETURN_IF_ERROR(v.in_range("encoder_conf.attention_dropout_rate", e.attention_dropout_rate(), 0, 1, true));
  RETURN_IF_ERROR(v.one_of("encoder_conf.input_layer", e.input_layer(), {"conv2d"}, only));
  RETURN_IF_ERROR(v.must_be("encoder_conf.normalize_before", e.normalize_before(), true));
  RETURN_IF_ERROR(v.at_least("encoder_conf.cnn_module_kernel", e.cnn_module_kernel(), 1));
  RETURN_IF_ERROR(v.must_be("encoder_conf.use_cnn_module", e.use_cnn_module(), true));
  RETURN_IF_ERROR(v.one_of("encoder_conf.activation_type", e.activation_type(), kActivationNames));
  RETURN_IF_ERROR(v.one_of("encoder_conf.pos_enc_layer_type", e.pos_enc_layer_type(), {"rel_pos"}, only));
  RETURN_IF_ERROR(v.one_of("encoder_conf.selfattention_layer_type", e.selfattention_layer_type(),
                           {"rel_selfattn"}, only));
  RETURN_IF_ERROR(
      v.one_of("encoder_conf.cnn_module_norm", e.cnn_module_norm(), {"batch_norm", "layer_norm"}));
  RETURN_IF_ERROR(v.must_be("encoder_conf.macaron_style", e.macaron_style(), true));
  RETURN_IF_ERROR(v.at_least("encoder_conf.static_chunk_size", e.static_chunk_size(), 0));
  RETURN_IF_ERROR(v.one_of("encoder_conf.mlp_type", e.mlp_type(), kMlpTypeNames));
  RETURN_IF_ERROR(v.at_least("encoder_conf.n_expert", e.n_expert(), 1));
  RETURN_IF_ERROR(v.at_least("encoder_conf.n_expert_activated", e.n_expert_activated(), 1));

  const proto::DecoderConf& d = c.decoder_conf();
  RETURN_IF_ERROR(v.at_least("decoder_conf.attention_heads", d.attention_heads(), 1));
  RETURN_IF_ERROR(v.at_least("decoder_conf.linear_units", d.linear_units(), 1));
  RETURN_IF_ERROR(v.at_least("decoder_conf.num_blocks", d.num_blocks(), 1));
  RETURN_IF_ERROR(v.at_least("decoder_conf.r_num_blocks", d.r_num_blocks(), 0));
  if (c.decoder() == "transformer" && d.r_num_blocks() != 0) {
    return v.fail("decoder_conf.r_num_blocks", std::to_string(d.r_num_blocks()),
                  "needs decoder: bitransformer (a transformer decoder has no right-to-left blocks)");
  }
  RETURN_IF_ERROR(v.in_range("decoder_conf.dropout_rate", d.dropout_rate(), 0, 1, true));
  RETURN_IF_ERROR(
      v.in_range("decoder_conf.positional_dropout_rate", d.positional_dropout_rate(), 0, 1, true));
  RETURN_IF_ERROR(
      v.in_range("decoder_conf.self_attention_dropout_rate", d.self_attention_dropout_rate(), 0, 1, true));
  RETURN_IF_ERROR(
      v.in_range("decoder_conf.src_attention_dropout_rate", d.src_attention_dropout_rate(), 0, 1, true));
  RETURN_IF_ERROR(v.one_of("decoder_conf.input_layer", d.input_layer(), {"embed"}, only));
  RETURN_IF_ERROR(v.must_be("decoder_conf.normalize_before", d.normalize_before(), true));
  RETURN_IF_ERROR(v.one_of("decoder_conf.activation_type", d.activation_type(), kActivationNames));
  RETURN_IF_ERROR(v.one_of("decoder_conf.mlp_type", d.mlp_type(), kMlpTypeNames));
  RETURN_IF_ERROR(v.at_least("decoder_conf.n_expert", d.n_expert(), 1));
  RETURN_IF_ERROR(v.at_least("decoder_conf.n_expert_activated", d.n_expert_activated(), 1));

  RETURN_IF_ERROR(v.at_least("input_dim", c.input_dim(), 7));
  if (c.output_dim() != c.vocab_size()) {
    return v.fail("vocab_size", std::to_string(c.vocab_size()),
                  "differs from output_dim = " + std::to_string(c.output_dim()) +
                      "; set one of them (both are the vocabulary size)");
  }
  RETURN_IF_ERROR(v.at_least("output_dim", c.output_dim(), 3));
  RETURN_IF_ERROR(v.one_of("tokenizer", c.tokenizer(), {"char", "bpe"}));
  if (c.tokenizer() == "bpe" && c.tokenizer_conf().bpe_path().empty()) {
    return v.fail("tokenizer_conf.bpe_path", "''", "must name the sentencepiece model for tokenizer: bpe");
  }
  RETURN_IF_ERROR(v.one_of("cmvn", c.cmvn(), {"global_cmvn", "none"}));

  const proto::DatasetConf& ds = c.dataset_conf();
  const proto::FilterConf& fl = ds.filter_conf();
  RETURN_IF_ERROR(v.at_least("dataset_conf.filter_conf.min_length", fl.min_length(), 0));
  RETURN_IF_ERROR(v.at_least("dataset_conf.filter_conf.max_length", fl.max_length(),
                             std::max<int64_t>(1, fl.min_length())));
  RETURN_IF_ERROR(v.at_least("dataset_conf.filter_conf.token_min_length", fl.token_min_length(), 0));
  RETURN_IF_ERROR(v.at_least("dataset_conf.filter_conf.token_max_length", fl.token_max_length(),
                             std::max<int64_t>(1, fl.token_min_length())));
  RETURN_IF_ERROR(v.in_range("dataset_conf.filter_conf.min_output_input_ratio", fl.min_output_input_ratio(),
                             0, fl.max_output_input_ratio(), false));
  RETURN_IF_ERROR(v.positive("dataset_conf.filter_conf.max_output_input_ratio", fl.max_output_input_ratio()));
  const proto::FbankConf& fb = ds.fbank_conf();
  if (fb.num_mel_bins() != c.input_dim()) {
    return v.fail("dataset_conf.fbank_conf.num_mel_bins", std::to_string(fb.num_mel_bins()),
                  "differs from input_dim = " + std::to_string(c.input_dim()) +
                      " (the model reads num_mel_bins "
                      "features per frame)");
  }
  RETURN_IF_ERROR(v.positive("dataset_conf.fbank_conf.frame_shift", fb.frame_shift()));
  RETURN_IF_ERROR(v.positive("dataset_conf.fbank_conf.frame_length", fb.frame_length()));
  RETURN_IF_ERROR(v.in_range("dataset_conf.fbank_conf.dither", fb.dither(), 0, 1e9, false));
  RETURN_IF_ERROR(v.at_least("dataset_conf.spec_aug_conf.num_t_mask", ds.spec_aug_conf().num_t_mask(), 0));
  RETURN_IF_ERROR(v.at_least("dataset_conf.spec_aug_conf.num_f_mask", ds.spec_aug_conf().num_f_mask(), 0));
  RETURN_IF_ERROR(v.at_least("dataset_conf.spec_aug_conf.max_t", ds.spec_aug_conf().max_t(), 1));
  RETURN_IF_ERROR(v.at_least("dataset_conf.spec_aug_conf.max_f", ds.spec_aug_conf().max_f(), 1));
  RETURN_IF_ERROR(v.at_least("dataset_conf.spec_sub_conf.num_t_sub", ds.spec_sub_conf().num_t_sub(), 0));
  RETURN_IF_ERROR(v.at_least("dataset_conf.spec_sub_conf.max_t", ds.spec_sub_conf().max_t(), 1));
  RETURN_IF_ERROR(v.at_least("dataset_conf.spec_trim_conf.max_t", ds.spec_trim_conf().max_t(), 1));
  RETURN_IF_ERROR(v.at_least("dataset_conf.shuffle_conf.shuffle_size", ds.shuffle_conf().shuffle_size(), 1));
  RETURN_IF_ERROR(v.at_least("dataset_conf.sort_conf.sort_size", ds.sort_conf().sort_size(), 1));
  RETURN_IF_ERROR(
      v.one_of("dataset_conf.batch_conf.batch_type", ds.batch_conf().batch_type(), {"static", "dynamic"}));
  RETURN_IF_ERROR(v.at_least("dataset_conf.batch_conf.batch_size", ds.batch_conf().batch_size(), 1));
  RETURN_IF_ERROR(
      v.at_least("dataset_conf.batch_conf.max_frames_in_batch", ds.batch_conf().max_frames_in_batch(), 1));
  if (ds.speed_perturb()) {
    return v.fail("dataset_conf.speed_perturb", "true",
                  "is not supported: features are precomputed into the shards; perturb the audio when "
                  "making them");
  }
  RETURN_IF_ERROR(v.at_least("dataset_conf.prefetch", ds.prefetch(), 1));

  RETURN_IF_ERROR(v.positive("grad_clip", c.grad_clip()));
  RETURN_IF_ERROR(v.at_least("accum_grad", c.accum_grad(), 1));
  RETURN_IF_ERROR(v.at_least("max_epoch", c.max_epoch(), 1));
  RETURN_IF_ERROR(v.at_least("log_interval", c.log_interval(), 1));
  RETURN_IF_ERROR(v.at_least("save_interval", c.save_interval(), 0));
  RETURN_IF_ERROR(v.one_of("optim", c.optim(), {"adam"}, only));
  const proto::OptimConf& o = c.optim_conf();
  RETURN_IF_ERROR(v.positive("optim_conf.lr", o.lr()));
  if (o.betas_size() != 2) {
    return v.fail("optim_conf.betas", "a list of " + std::to_string(o.betas_size()), "must hold two numbers");
  }
  RETURN_IF_ERROR(v.in_range("optim_conf.betas", o.betas(0), 0, 1, true));
  RETURN_IF_ERROR(v.in_range("optim_conf.betas", o.betas(1), 0, 1, true));
  RETURN_IF_ERROR(v.positive("optim_conf.eps", o.eps()));
  RETURN_IF_ERROR(v.in_range("optim_conf.weight_decay", o.weight_decay(), 0, 1e9, false));
  RETURN_IF_ERROR(v.one_of("scheduler", c.scheduler(), {"warmuplr"}, only));
  RETURN_IF_ERROR(v.at_least("scheduler_conf.warmup_steps", c.scheduler_conf().warmup_steps(), 0));
  RETURN_IF_ERROR(v.one_of("dtype", c.dtype(), {"fp32", "bf16", "fp16"}));

  const proto::ParallelConf& p = c.parallel_conf();
  RETURN_IF_ERROR(v.at_least("parallel_conf.ep_size", p.ep_size(), 1));
  bool any_moe = false;
  for (const auto& [section, mlp_type, n_expert] :
       {std::make_tuple("encoder_conf", e.mlp_type(), e.n_expert()),
        std::make_tuple("decoder_conf", d.mlp_type(), d.n_expert())}) {
    if (mlp_type != "moe") continue;
    any_moe = true;
    if (n_expert % p.ep_size() != 0) {
      return v.fail("parallel_conf.ep_size", std::to_string(p.ep_size()),
                    std::string("does not divide ") + section + ".n_expert = " + std::to_string(n_expert) +
                        ": each expert-parallel rank must hold the same number of experts");
    }
  }
  if (!any_moe && p.ep_size() != 1) {
    return v.fail("parallel_conf.ep_size", std::to_string(p.ep_size()),
                  "needs mlp_type: moe in encoder_conf or decoder_conf (a dense model has no experts to "
                  "shard); use 1");
  }
  RETURN_IF_ERROR(v.at_least("parallel_conf.collective_timeout_s", p.collective_timeout_s(), 1));
  const proto::TrainConf& tc = c.train_conf();
  RETURN_IF_ERROR(v.at_least("train_conf.seed", tc.seed(), 0));
  RETURN_IF_ERROR(v.at_least("train_conf.keep_checkpoint_max", tc.keep_checkpoint_max(), 1));
  RETURN_IF_ERROR(v.at_least("train_conf.cv_interval", tc.cv_interval(), 0));
  RETURN_IF_ERROR(v.at_least("train_conf.max_consecutive_nonfinite", tc.max_consecutive_nonfinite(), 1));
  RETURN_IF_ERROR(v.in_range("train_conf.max_bad_data_fraction", tc.max_bad_data_fraction(), 0, 1, false));
  RETURN_IF_ERROR(v.at_least("train_conf.num_threads", tc.num_threads(), 1));

  // The combinations the model itself checks (heads dividing d, odd symmetric kernels, top-k, loss
  // weights); its messages name the keys.
  Status model = validate_model_config(model_config_from_train_config(c));
  if (!model.ok()) return model.with_context(source);
  return Status();
}

// WeNet's `special_tokens` (tokenizer_conf and model_conf) are accepted when they say what moe-asr
// does: <blank> 0, <unk> 1, <sos> = <eos> = output_dim - 1 (units.txt ends with <sos/eos>).
Status check_special_tokens(const YAML::Node& root, int64_t output_dim, const std::string& source) {
  for (const char* section : {"tokenizer_conf", "model_conf"}) {
    if (!root[section] || !root[section].IsMap()) continue;
    const YAML::Node tokens = root[section]["special_tokens"];
    if (!tokens || tokens.IsNull()) continue;
    std::string path = std::string(section) + ".special_tokens";
    if (!tokens.IsMap()) {
      return invalid_argument_error(source + ":" + std::to_string(tokens.Mark().line + 1) + ": '" + path +
                                    "' must be a mapping of token to id");
    }
    for (const auto& item : tokens) {
      std::string name = item.first.Scalar();
      std::string at =
          source + ":" + std::to_string(item.first.Mark().line + 1) + ": '" + path + "." + name + "'";
      int64_t expected = -1;
      if (name == "<blank>") expected = 0;
      if (name == "<unk>") expected = 1;
      if (name == "<sos>" || name == "<eos>" || name == "<sos/eos>") expected = output_dim - 1;
      if (expected < 0) {
        return invalid_argument_error(at + " is not a token moe-asr uses (<blank>, <unk>, <sos>, <eos>)");
      }
      int64_t id = -1;
      if (!item.second.IsScalar() || !parse_int64(item.second.Scalar(), &id) || id != expected) {
        return invalid_argument_error(at + " = " + (item.second.IsScalar() ? item.second.Scalar() : "?") +
                                      " is not supported: moe-asr uses id " + std::to_string(expected) +
                                      " (<blank> 0, <unk> 1, <sos> = <eos> = output_dim - 1)");
      }
    }
  }
  return Status();
}

// Writes a scalar field as YAML text that parse_train_config reads back to the same value.
std::string scalar_text(const pb::Message& m, const pb::FieldDescriptor* f, int index) {
  const pb::Reflection* r = m.GetReflection();
  switch (f->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT64:
      return std::to_string(f->is_repeated() ? r->GetRepeatedInt64(m, f, index) : r->GetInt64(m, f));
    case pb::FieldDescriptor::CPPTYPE_DOUBLE:
      return format_double(f->is_repeated() ? r->GetRepeatedDouble(m, f, index) : r->GetDouble(m, f));
    case pb::FieldDescriptor::CPPTYPE_BOOL:
      return (f->is_repeated() ? r->GetRepeatedBool(m, f, index) : r->GetBool(m, f)) ? "true" : "false";
    default: CHECK(false) << "train_config_to_yaml: unhandled field type of " << f->full_name(); return "";
  }
}

void emit_message(YAML::Emitter* out, const pb::Message& m) {
  const pb::Descriptor* d = m.GetDescriptor();
  const pb::Reflection* r = m.GetReflection();
  *out << YAML::BeginMap;
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    if (f->is_repeated() ? r->FieldSize(m, f) == 0 : !r->HasField(m, f)) continue;
    *out << YAML::Key << f->name() << YAML::Value;
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      emit_message(out, r->GetMessage(m, f));
    } else if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING) {
      // Plain where that reads back as the same string; double-quoted otherwise ("", "true", "1").
      const std::string& value = r->GetString(m, f);
      if (!plain_yaml_string(value)) *out << YAML::DoubleQuoted;
      *out << value;
    } else if (f->is_repeated()) {
      *out << YAML::Flow << YAML::BeginSeq;
      for (int j = 0; j < r->FieldSize(m, f); ++j) *out << scalar_text(m, f, j);
      *out << YAML::EndSeq;
    } else {
      *out << scalar_text(m, f, 0);
    }
  }
  *out << YAML::EndMap;
}

}  // namespace

StatusOr<proto::TrainConfig> parse_train_config(const std::string& yaml_text, const std::string& source,
                                                const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    return invalid_argument_error(source + ":" + std::to_string(e.mark.line + 1) +
                                  ": not valid YAML: " + e.msg);
  }
  if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) return invalid_argument_error(source + ": the config must be a YAML mapping of keys");
  Locations locations;
  RETURN_IF_ERROR(check_map(root, proto::TrainConfig::descriptor(), "", Origin{source, ""}, &locations));
  for (const std::string& o : overrides) RETURN_IF_ERROR(apply_override(o, &root, &locations));

  proto::TrainConfig config;
  std::string json = to_json(root, proto::TrainConfig::descriptor()).dump();
  pb::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  auto parsed = pb::util::JsonStringToMessage(json, &config, options);
  if (!parsed.ok()) {
    return internal_error(source + ": the checked config did not convert to the schema (" +
                          parsed.ToString() + "); please report this with the config file");
  }

  Validator v(source, locations);
  if (!config.has_output_dim() && !config.has_vocab_size()) {
    return invalid_argument_error(source +
                                  ": 'output_dim' is missing: set it to the vocabulary size (the number "
                                  "of lines of units.txt), e.g. --override_config 'output_dim 4233'");
  }
  if (!config.has_output_dim()) config.set_output_dim(config.vocab_size());
  fill_defaults(&config);
  RETURN_IF_ERROR(validate(config, v, source));
  RETURN_IF_ERROR(check_special_tokens(root, config.output_dim(), source));
  return config;
}

StatusOr<proto::TrainConfig> load_train_config(const std::string& yaml_path,
                                               const std::vector<std::string>& overrides) {
  std::ifstream in(yaml_path);
  if (!in) return not_found_error("cannot read the config file " + yaml_path + "; check the --config path");
  std::stringstream text;
  text << in.rdbuf();
  return parse_train_config(text.str(), yaml_path, overrides);
}

std::string train_config_to_yaml(const proto::TrainConfig& config) {
  YAML::Emitter out;
  out.SetIndent(4);  // WeNet's yamls indent by 4
  emit_message(&out, config);
  CHECK(out.good()) << "train_config_to_yaml: " << out.GetLastError();
  return "# moe-asr resolved training config: every key set (WeNet key names); `moe-asr train --config`\n"
         "# and `moe-asr recognize --config` read it back unchanged.\n" +
         std::string(out.c_str()) + "\n";
}

std::string train_config_to_prototxt(const proto::TrainConfig& config) {
  std::string text;
  CHECK(google::protobuf::TextFormat::PrintToString(config, &text)) << "train_config_to_prototxt";
  return text;
}

ModelConfig model_config_from_train_config(const proto::TrainConfig& c) {
  // As trainer/wenet_yaml.cc maps WeNet's model keys; `c` is resolved (every field set).
  ModelConfig m;
  m.input_dim = c.input_dim();
  m.vocab_size = c.output_dim();
  const proto::EncoderConf& e = c.encoder_conf();
  EncoderConfig& me = m.encoder;
  me.output_size = e.output_size();
  me.attention_heads = e.attention_heads();
  me.ffn.linear_units = e.linear_units();
  me.num_blocks = e.num_blocks();
  me.dropout_rate = e.dropout_rate();
  me.positional_dropout_rate = e.positional_dropout_rate();
  me.attention_dropout_rate = e.attention_dropout_rate();
  me.cnn_module_kernel = e.cnn_module_kernel();
  me.causal = e.causal();
  me.cnn_module_norm =
      e.cnn_module_norm() == "layer_norm" ? ConvNormType::kLayerNorm : ConvNormType::kBatchNorm;
  me.ffn.activation = e.activation_type() == "relu" ? ActivationType::kRelu : ActivationType::kSwish;
  me.ffn.mlp_type = e.mlp_type() == "moe" ? MlpType::kMoe : MlpType::kDense;
  me.ffn.n_expert = e.n_expert();
  me.ffn.n_expert_activated = e.n_expert_activated();
  me.ffn.mlp_bias = e.mlp_bias();
  me.use_dynamic_chunk = e.use_dynamic_chunk();
  me.use_dynamic_left_chunk = e.use_dynamic_left_chunk();
  me.static_chunk_size = e.static_chunk_size();

  const proto::DecoderConf& d = c.decoder_conf();
  DecoderConfig& md = m.decoder;
  md.attention_heads = d.attention_heads();
  md.ffn.linear_units = d.linear_units();
  md.num_blocks = d.num_blocks();
  md.r_num_blocks = d.r_num_blocks();
  md.dropout_rate = d.dropout_rate();
  md.positional_dropout_rate = d.positional_dropout_rate();
  md.self_attention_dropout_rate = d.self_attention_dropout_rate();
  md.src_attention_dropout_rate = d.src_attention_dropout_rate();
  md.ffn.activation = d.activation_type() == "swish" ? ActivationType::kSwish : ActivationType::kRelu;
  md.ffn.mlp_type = d.mlp_type() == "moe" ? MlpType::kMoe : MlpType::kDense;
  md.ffn.n_expert = d.n_expert();
  md.ffn.n_expert_activated = d.n_expert_activated();
  md.ffn.mlp_bias = d.mlp_bias();

  m.ctc_weight = c.model_conf().ctc_weight();
  m.lsm_weight = c.model_conf().lsm_weight();
  m.reverse_weight = c.model_conf().reverse_weight();
  m.length_normalized_loss = c.model_conf().length_normalized_loss();
  return m;
}

}  // namespace moeasr
