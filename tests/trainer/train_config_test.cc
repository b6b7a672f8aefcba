// tests/trainer/train_config_test.cc — the training config front end (trainer/train_config.h): the
// shipped configs/ parse and build models of the sizes anchors.md measured with WeNet's code; the
// model part maps to the same ModelConfig as trainer/wenet_yaml.cc; the resolved YAML reads back to an
// equal message (and the prototxt dump to an equal one); defaults are WeNet's; unknown keys, wrong types and
// impossible values are errors naming the key and its line (or the override); overrides in WeNet's and
// Hydra's forms.
#include "trainer/train_config.h"

#include <google/protobuf/text_format.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "model/parameter_table.h"
#include "tests/common/h5_reader.h"
#include "trainer/wenet_yaml.h"

namespace moeasr {
namespace {

namespace pb = google::protobuf;

std::string config_path(const std::string& name) {
  // tests/fixtures/../../configs/<name>
  return testing::fixture_path("../../configs/" + name);
}

proto::TrainConfig parse_ok(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  auto c = parse_train_config(yaml, "conf/train.yaml", overrides);
  EXPECT_TRUE(c.ok()) << c.status().to_string();
  return c.ok() ? c.value() : proto::TrainConfig();
}

// The error message of a config that must be refused.
std::string error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  auto c = parse_train_config(yaml, "conf/train.yaml", overrides);
  EXPECT_FALSE(c.ok()) << "accepted:\n" << yaml;
  if (c.ok()) return "";
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument) << c.status().to_string();
  return c.status().message();
}

// Every singular field of `m` and of its sub-messages is set.
void expect_all_set(const pb::Message& m, const std::string& prefix) {
  const pb::Descriptor* d = m.GetDescriptor();
  const pb::Reflection* r = m.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    std::string path = prefix + f->name();
    if (f->is_repeated()) {
      EXPECT_GT(r->FieldSize(m, f), 0) << path;
      continue;
    }
    EXPECT_TRUE(r->HasField(m, f)) << path << " is not set";
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE)
      expect_all_set(r->GetMessage(m, f), path + ".");
  }
}

void expect_same_ffn(const FfnConfig& a, const FfnConfig& b, const std::string& what) {
  EXPECT_EQ(a.mlp_type, b.mlp_type) << what;
  EXPECT_EQ(a.linear_units, b.linear_units) << what;
  EXPECT_EQ(a.n_expert, b.n_expert) << what;
  EXPECT_EQ(a.n_expert_activated, b.n_expert_activated) << what;
  EXPECT_EQ(a.mlp_bias, b.mlp_bias) << what;
  EXPECT_EQ(a.activation, b.activation) << what;
}

void expect_same_model(const ModelConfig& a, const ModelConfig& b, const std::string& what) {
  EXPECT_EQ(a.input_dim, b.input_dim) << what;
  EXPECT_EQ(a.vocab_size, b.vocab_size) << what;
  const EncoderConfig &ea = a.encoder, &eb = b.encoder;
  EXPECT_EQ(ea.output_size, eb.output_size) << what;
  EXPECT_EQ(ea.attention_heads, eb.attention_heads) << what;
  EXPECT_EQ(ea.num_blocks, eb.num_blocks) << what;
  EXPECT_EQ(ea.cnn_module_kernel, eb.cnn_module_kernel) << what;
  EXPECT_EQ(ea.causal, eb.causal) << what;
  EXPECT_EQ(ea.cnn_module_norm, eb.cnn_module_norm) << what;
  expect_same_ffn(ea.ffn, eb.ffn, what + " encoder ffn");
  EXPECT_EQ(ea.dropout_rate, eb.dropout_rate) << what;
  EXPECT_EQ(ea.positional_dropout_rate, eb.positional_dropout_rate) << what;
  EXPECT_EQ(ea.attention_dropout_rate, eb.attention_dropout_rate) << what;
  EXPECT_EQ(ea.use_dynamic_chunk, eb.use_dynamic_chunk) << what;
  EXPECT_EQ(ea.use_dynamic_left_chunk, eb.use_dynamic_left_chunk) << what;
  EXPECT_EQ(ea.static_chunk_size, eb.static_chunk_size) << what;
  EXPECT_EQ(ea.max_chunk_size, eb.max_chunk_size) << what;
  const DecoderConfig &da = a.decoder, &db = b.decoder;
  EXPECT_EQ(da.attention_heads, db.attention_heads) << what;
  EXPECT_EQ(da.num_blocks, db.num_blocks) << what;
  EXPECT_EQ(da.r_num_blocks, db.r_num_blocks) << what;
  expect_same_ffn(da.ffn, db.ffn, what + " decoder ffn");
  EXPECT_EQ(da.dropout_rate, db.dropout_rate) << what;
  EXPECT_EQ(da.positional_dropout_rate, db.positional_dropout_rate) << what;
  EXPECT_EQ(da.self_attention_dropout_rate, db.self_attention_dropout_rate) << what;
  EXPECT_EQ(da.src_attention_dropout_rate, db.src_attention_dropout_rate) << what;
  EXPECT_EQ(a.ctc_weight, b.ctc_weight) << what;
  EXPECT_EQ(a.lsm_weight, b.lsm_weight) << what;
  EXPECT_EQ(a.reverse_weight, b.reverse_weight) << what;
  EXPECT_EQ(a.length_normalized_loss, b.length_normalized_loss) << what;
}

struct ShippedConfig {
  const char* file;
  double params_millions;  // anchors.md, WeNet's own code at vocabulary 5000
  double tolerance_millions;
  bool moe;
};

const ShippedConfig kShipped[] = {
    {"tiny_dense.yaml", 33.6, 0.05, false},
    {"tiny_moe.yaml", 144.0, 0.05, true},
    {"dense_225m.yaml", 197, 0.5, false},
    {"moe_1b.yaml", 991, 0.5, true},
    {"dense_1b.yaml", 963, 0.5, false},
    {"demo_moe.yaml", 21.56, 0.05, true},  // the demo's model: our own count, not an anchor
};

TEST(TrainConfigTest, ShippedConfigsBuildTheAnchoredModelSizes) {
  for (const ShippedConfig& s : kShipped) {
    SCOPED_TRACE(s.file);
    auto c = load_train_config(config_path(s.file), {});
    ASSERT_TRUE(c.ok()) << c.status().to_string();
    EXPECT_EQ(c.value().output_dim(), 5000);
    ModelConfig m = model_config_from_train_config(c.value());
    EXPECT_EQ(m.encoder.ffn.mlp_type == MlpType::kMoe, s.moe);
    EXPECT_EQ(m.decoder.ffn.mlp_type == MlpType::kMoe, s.moe);
    ParameterTable table = build_u2pp_parameter_table(m, ExpertLayout{});
    // Trainable parameters, as WeNet's sum(p.numel() for p in model.parameters()) (no buffers).
    double params = static_cast<double>(table.region_numel(ParamRegion::kDense) +
                                        table.region_numel(ParamRegion::kExpert));
    EXPECT_NEAR(params / 1e6, s.params_millions, s.tolerance_millions) << params;
  }
}

TEST(TrainConfigTest, ModelPartMapsAsWenetYaml) {
  for (const ShippedConfig& s : kShipped) {
    auto c = load_train_config(config_path(s.file), {});
    ASSERT_TRUE(c.ok()) << c.status().to_string();
    auto wenet = model_config_from_wenet_yaml(config_path(s.file));
    ASSERT_TRUE(wenet.ok()) << wenet.status().to_string();
    expect_same_model(model_config_from_train_config(c.value()), wenet.value(), s.file);
  }
}

TEST(TrainConfigTest, ResolvedYamlReadsBackEqual) {
  std::vector<proto::TrainConfig> configs;
  for (const ShippedConfig& s : kShipped) {
    auto c = load_train_config(config_path(s.file), {});
    ASSERT_TRUE(c.ok()) << c.status().to_string();
    configs.push_back(c.value());
  }
  configs.push_back(parse_ok("output_dim: 100\n"));
  configs.push_back(parse_ok(
      "output_dim: 100\ndecoder: transformer\ntokenizer: bpe\n"
      "tokenizer_conf: {bpe_path: \"true\", symbol_table_path: '123', non_lang_syms_path: \"a b: c\"}\n"
      "optim_conf: {lr: 0.1, betas: [0.8, 0.9876543210123]}\n"
      "dataset_conf: {filter_conf: {max_output_input_ratio: 1e-3, "
      "min_output_input_ratio: 0}}\n"));
  for (const proto::TrainConfig& c : configs) {
    expect_all_set(c, "");
    std::string yaml = train_config_to_yaml(c);
    auto back = parse_train_config(yaml, "exp/x/train.yaml", {});
    ASSERT_TRUE(back.ok()) << back.status().to_string() << "\n" << yaml;
    std::string diff;
    pb::util::MessageDifferencer differ;
    differ.ReportDifferencesToString(&diff);
    EXPECT_TRUE(differ.Compare(c, back.value())) << diff << "\n" << yaml;
    proto::TrainConfig from_text;
    ASSERT_TRUE(pb::TextFormat::ParseFromString(train_config_to_prototxt(c), &from_text));
    EXPECT_TRUE(pb::util::MessageDifferencer::Equals(c, from_text));
  }
  // WeNet's layout: top-level keys unindented, sections indented by 4.
  std::string yaml = train_config_to_yaml(configs[0]);
  EXPECT_NE(yaml.find("\nencoder_conf:\n    output_size: 256\n"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("\n    betas: [0.9, 0.999]\n"), std::string::npos) << yaml;
}

TEST(TrainConfigTest, DefaultsAreWenets) {
  proto::TrainConfig c = parse_ok("output_dim: 100\n");
  EXPECT_EQ(c.vocab_size(), 100);
  EXPECT_EQ(c.input_dim(), 80);
  EXPECT_EQ(c.encoder(), "conformer");
  EXPECT_EQ(c.encoder_conf().output_size(), 256);
  EXPECT_EQ(c.encoder_conf().attention_heads(), 4);
  EXPECT_EQ(c.encoder_conf().linear_units(), 2048);
  EXPECT_EQ(c.encoder_conf().num_blocks(), 6);
  EXPECT_EQ(c.encoder_conf().cnn_module_kernel(), 15);
  EXPECT_EQ(c.encoder_conf().cnn_module_norm(), "batch_norm");
  EXPECT_EQ(c.encoder_conf().activation_type(), "swish");
  EXPECT_EQ(c.encoder_conf().attention_dropout_rate(), 0.0);
  EXPECT_EQ(c.decoder(), "bitransformer");
  EXPECT_EQ(c.decoder_conf().num_blocks(), 3);
  EXPECT_EQ(c.decoder_conf().r_num_blocks(), 3);
  EXPECT_EQ(c.decoder_conf().activation_type(), "relu");
  EXPECT_EQ(c.model_conf().ctc_weight(), 0.3);
  EXPECT_EQ(c.model_conf().lsm_weight(), 0.1);
  EXPECT_EQ(c.model_conf().reverse_weight(), 0.3);
  EXPECT_EQ(c.dataset_conf().batch_conf().batch_type(), "dynamic");
  EXPECT_EQ(c.dataset_conf().batch_conf().max_frames_in_batch(), 36000);
  EXPECT_EQ(c.dataset_conf().filter_conf().max_length(), 4096);
  EXPECT_EQ(c.dataset_conf().fbank_conf().num_mel_bins(), 80);
  EXPECT_EQ(c.grad_clip(), 5.0);
  EXPECT_EQ(c.accum_grad(), 1);
  EXPECT_EQ(c.max_epoch(), 100);
  EXPECT_EQ(c.log_interval(), 100);
  EXPECT_EQ(c.save_interval(), 0);
  EXPECT_EQ(c.optim(), "adam");
  EXPECT_EQ(c.optim_conf().lr(), 1e-3);
  ASSERT_EQ(c.optim_conf().betas_size(), 2);
  EXPECT_EQ(c.optim_conf().betas(1), 0.999);
  EXPECT_EQ(c.optim_conf().eps(), 1e-8);
  EXPECT_EQ(c.scheduler(), "warmuplr");
  EXPECT_EQ(c.scheduler_conf().warmup_steps(), 25000);
  EXPECT_EQ(c.parallel_conf().ep_size(), 1);
  EXPECT_EQ(c.train_conf().seed(), 777);
  EXPECT_EQ(c.train_conf().keep_checkpoint_max(), 5);
  EXPECT_EQ(c.train_conf().max_consecutive_nonfinite(), 20);
  EXPECT_EQ(c.train_conf().max_bad_data_fraction(), 0.01);
  EXPECT_EQ(c.train_conf().num_threads(), 2);
  // A transformer decoder has no right-to-left half: no R2L blocks, no reverse weight.
  proto::TrainConfig t = parse_ok("output_dim: 100\ndecoder: transformer\n");
  EXPECT_EQ(t.decoder_conf().num_blocks(), 6);
  EXPECT_EQ(t.decoder_conf().r_num_blocks(), 0);
  EXPECT_EQ(t.model_conf().reverse_weight(), 0.0);
  // `key:` with no value and `key: null` mean the default; vocab_size is output_dim's alias;
  // input_dim follows fbank_conf.num_mel_bins.
  proto::TrainConfig n = parse_ok(
      "vocab_size: 300\naccum_grad:\ngrad_clip: null\ndataset_conf:\n    fbank_conf:\n        num_mel_bins: "
      "40\n");
  EXPECT_EQ(n.output_dim(), 300);
  EXPECT_EQ(n.accum_grad(), 1);
  EXPECT_EQ(n.grad_clip(), 5.0);
  EXPECT_EQ(n.input_dim(), 40);
}

TEST(TrainConfigTest, UnknownKeysNameTheLineAndSuggest) {
  EXPECT_EQ(error_of("output_dim: 100\n"
                     "dataset_conf:\n"
                     "    batch_conf:\n"
                     "        batch_type: dynamic\n"
                     "        max_frame_in_batch: 12000\n"),
            "conf/train.yaml:5: 'dataset_conf.batch_conf.max_frame_in_batch' is not a key; did you mean "
            "max_frames_in_batch?");
  EXPECT_EQ(error_of("output_dim: 100\nencoder_conf:\n    num_block: 12\n"),
            "conf/train.yaml:3: 'encoder_conf.num_block' is not a key; did you mean num_blocks?");
  std::string far = error_of("output_dim: 100\nmodel_conf:\n    zebra: 1\n");
  EXPECT_EQ(
      far.rfind("conf/train.yaml:3: 'model_conf.zebra' is not a key; the keys of model_conf are: ctc_weight, "
                "lsm_weight",
                0),
      0u)
      << far;
  EXPECT_EQ(error_of("output_dim: 100\naccum_grad: 1\naccum_grad: 2\n"),
            "conf/train.yaml:3: 'accum_grad' appears twice");
}

TEST(TrainConfigTest, WrongTypesNameTheLine) {
  EXPECT_EQ(error_of("output_dim: 100\naccum_grad: four\n"),
            "conf/train.yaml:2: 'accum_grad' has a value of the wrong type: 'four'; expected an integer");
  EXPECT_EQ(error_of("output_dim: 100\naccum_grad: 1.5\n"),
            "conf/train.yaml:2: 'accum_grad' has a value of the wrong type: '1.5'; expected an integer");
  EXPECT_EQ(
      error_of("output_dim: '100'\n"),
      "conf/train.yaml:1: 'output_dim' has a value of the wrong type: '100'; expected an integer (remove "
      "the quotes)");
  EXPECT_EQ(error_of("output_dim: 100\ngrad_clip: .inf\n"),
            "conf/train.yaml:2: 'grad_clip' has a value of the wrong type: '.inf'; expected a number");
  EXPECT_EQ(error_of("output_dim: 100\nencoder_conf:\n    causal: maybe\n"),
            "conf/train.yaml:3: 'encoder_conf.causal' has a value of the wrong type: 'maybe'; expected true "
            "or false");
  EXPECT_EQ(error_of("output_dim: 100\nencoder_conf: 12\n"),
            "conf/train.yaml:2: 'encoder_conf' must be a mapping of EncoderConf");
  EXPECT_EQ(error_of("output_dim: 100\noptim_conf:\n    betas: 0.9\n"),
            "conf/train.yaml:3: 'optim_conf.betas' must be a list of a number, e.g. [0.9, 0.999]");
  EXPECT_EQ(error_of("output_dim: 100\noptim_conf:\n    betas: [0.9, x]\n"),
            "conf/train.yaml:3: 'optim_conf.betas' has an element of the wrong type: 'x'; expected a number");
  EXPECT_EQ(error_of("output_dim: 100\nmax_epoch: [1, 2]\n")
                .rfind("conf/train.yaml:2: 'max_epoch' has a value of "
                       "the wrong type",
                       0),
            0u);
  std::string yaml_error = error_of("output_dim: 100\nencoder_conf: {num_blocks: 3\n");
  EXPECT_NE(yaml_error.find("not valid YAML"), std::string::npos) << yaml_error;
  EXPECT_EQ(error_of("- a\n- b\n"), "conf/train.yaml: the config must be a YAML mapping of keys");
}

TEST(TrainConfigTest, OverridesInWenetAndHydraForms) {
  const std::string yaml =
      "output_dim: 100\ndataset_conf:\n    batch_conf:\n        max_frames_in_batch: 12000\n";
  proto::TrainConfig c =
      parse_ok(yaml, {"dataset_conf.batch_conf.max_frames_in_batch 36000", "accum_grad=4",
                      "optim_conf.betas [0.9, 0.98]", "encoder_conf.cnn_module_norm layer_norm",
                      "  train_conf.seed   12  ", "parallel_conf={ep_size: 1}"});
  EXPECT_EQ(c.dataset_conf().batch_conf().max_frames_in_batch(), 36000);
  EXPECT_EQ(c.accum_grad(), 4);
  EXPECT_EQ(c.optim_conf().betas(1), 0.98);
  EXPECT_EQ(c.encoder_conf().cnn_module_norm(), "layer_norm");
  EXPECT_EQ(c.train_conf().seed(), 12);
  // Later overrides win; an override of a key absent from the file creates it.
  proto::TrainConfig later = parse_ok(yaml, {"accum_grad 2", "accum_grad 3", "output_dim 7"});
  EXPECT_EQ(later.accum_grad(), 3);
  EXPECT_EQ(later.output_dim(), 7);
  // Overriding a whole section replaces it: its other keys go back to their defaults.
  proto::TrainConfig section = parse_ok(yaml, {"dataset_conf.batch_conf {batch_type: static}"});
  EXPECT_EQ(section.dataset_conf().batch_conf().batch_type(), "static");
  EXPECT_EQ(section.dataset_conf().batch_conf().max_frames_in_batch(), 36000);

  EXPECT_EQ(error_of(yaml, {"dataset_conf.batch_conf.max_frame_in_batch 1"}),
            "--override_config 'dataset_conf.batch_conf.max_frame_in_batch 1': "
            "'dataset_conf.batch_conf.max_frame_in_batch' is not a key; did you mean max_frames_in_batch?");
  EXPECT_EQ(
      error_of(yaml, {"datasetconf.batch_conf.batch_size=2"}),
      "--override_config 'datasetconf.batch_conf.batch_size=2': 'datasetconf' is not a key; did you mean "
      "dataset_conf?");
  EXPECT_EQ(
      error_of(yaml, {"accum_grad many"}),
      "--override_config 'accum_grad many': 'accum_grad' has a value of the wrong type: 'many'; expected an "
      "integer");
  EXPECT_EQ(error_of(yaml, {"accum_grad.x 1"}),
            "--override_config 'accum_grad.x 1': 'accum_grad' is a value, not a section with keys");
  EXPECT_NE(error_of(yaml, {"accum_grad"}).find("expected 'a.b value' (WeNet) or 'a.b=value' (Hydra)"),
            std::string::npos);
  EXPECT_NE(error_of(yaml, {"encoder_conf..num_blocks 3"}).find("has an empty key part"), std::string::npos);
  // Validation names the override that set the bad value.
  EXPECT_EQ(error_of(yaml, {"accum_grad 0"}),
            "--override_config 'accum_grad 0': 'accum_grad' = 0 must be >= 1");
}

TEST(TrainConfigTest, ImpossibleValuesNameTheKey) {
  EXPECT_EQ(error_of("output_dim: 100\naccum_grad: 0\n"), "conf/train.yaml:2: 'accum_grad' = 0 must be >= 1");
  EXPECT_EQ(error_of("output_dim: 100\nparallel_conf:\n    ep_size: 0\n"),
            "conf/train.yaml:3: 'parallel_conf.ep_size' = 0 must be >= 1");
  EXPECT_EQ(error_of("output_dim: 100\nencoder_conf:\n    mlp_type: moe\n    n_expert: 8\nparallel_conf:\n"
                     "    ep_size: 3\n"),
            "conf/train.yaml:6: 'parallel_conf.ep_size' = 3 does not divide encoder_conf.n_expert = 8: each "
            "expert-parallel rank must hold the same number of experts");
  EXPECT_NE(error_of("output_dim: 100\nparallel_conf:\n    ep_size: 2\n").find("needs mlp_type: moe"),
            std::string::npos);
  EXPECT_EQ(
      error_of("output_dim: 100\nencoder_conf:\n    mlp_type: moe2\n"),
      "conf/train.yaml:3: 'encoder_conf.mlp_type' = 'moe2' is not one of: position_wise_feed_forward | moe");
  EXPECT_EQ(error_of("output_dim: 100\ndecoder_conf:\n    activation_type: gelu\n"),
            "conf/train.yaml:3: 'decoder_conf.activation_type' = 'gelu' is not one of: swish | relu");
  EXPECT_EQ(error_of("output_dim: 100\nencoder_conf:\n    cnn_module_norm: group_norm\n"),
            "conf/train.yaml:3: 'encoder_conf.cnn_module_norm' = 'group_norm' is not one of: batch_norm | "
            "layer_norm");
  EXPECT_EQ(error_of("output_dim: 100\ntokenizer: word\n"),
            "conf/train.yaml:2: 'tokenizer' = 'word' is not one of: char | bpe");
  EXPECT_NE(
      error_of("output_dim: 100\ntokenizer: bpe\n").find("'tokenizer_conf.bpe_path' (default value) = ''"),
      std::string::npos);
  EXPECT_EQ(
      error_of("output_dim: 100\nencoder_conf:\n    input_layer: conv2d8\n"),
      "conf/train.yaml:3: 'encoder_conf.input_layer' = 'conv2d8' is not one of: conv2d (the only one moe-asr "
      "implements)");
  EXPECT_EQ(
      error_of("output_dim: 100\nencoder_conf:\n    macaron_style: false\n"),
      "conf/train.yaml:3: 'encoder_conf.macaron_style' = false is not supported: moe-asr's U2++ model needs "
      "true");
  EXPECT_NE(error_of("output_dim: 100\ndataset_conf:\n    speed_perturb: true\n")
                .find("conf/train.yaml:3: 'dataset_conf.speed_perturb' = true is not supported"),
            std::string::npos);
  EXPECT_EQ(error_of("output_dim: 100\ndecoder: transformer\ndecoder_conf:\n    r_num_blocks: 3\n"),
            "conf/train.yaml:4: 'decoder_conf.r_num_blocks' = 3 needs decoder: bitransformer (a transformer "
            "decoder has no right-to-left blocks)");
  EXPECT_EQ(
      error_of("output_dim: 100\nvocab_size: 101\n"),
      "conf/train.yaml:2: 'vocab_size' = 101 differs from output_dim = 100; set one of them (both are the "
      "vocabulary size)");
  EXPECT_NE(error_of("accum_grad: 1\n").find("conf/train.yaml: 'output_dim' is missing"), std::string::npos);
  EXPECT_EQ(
      error_of("output_dim: 100\ninput_dim: 40\ndataset_conf: {fbank_conf: {num_mel_bins: 80}}\n"),
      "conf/train.yaml:3: 'dataset_conf.fbank_conf.num_mel_bins' = 80 differs from input_dim = 40 (the model "
      "reads num_mel_bins features per frame)");
  EXPECT_EQ(error_of("output_dim: 100\noptim_conf:\n    betas: [0.9]\n"),
            "conf/train.yaml:3: 'optim_conf.betas' = a list of 1 must hold two numbers");
  EXPECT_EQ(error_of("output_dim: 100\noptim: sgd\n"),
            "conf/train.yaml:2: 'optim' = 'sgd' is not one of: adam (the only one moe-asr implements)");
  EXPECT_EQ(error_of("output_dim: 100\ntrain_conf:\n    max_bad_data_fraction: 1.5\n"),
            "conf/train.yaml:3: 'train_conf.max_bad_data_fraction' = 1.5 must be in [0, 1]");
  EXPECT_EQ(error_of("output_dim: 100\nmodel_conf:\n    lsm_weight: 1\n"),
            "conf/train.yaml: model_conf.lsm_weight must be in [0, 1)");  // the model's own check
  EXPECT_EQ(error_of("output_dim: 100\nencoder_conf:\n    attention_heads: 3\n"),
            "conf/train.yaml: encoder_conf.output_size must be a positive multiple of "
            "encoder_conf.attention_heads");
}

// WeNet's examples/aishell/s0/conf/train_u2++_conformer.yaml (keys and layout as WeNet writes them),
// with the keys moe-asr has no field for but accepts with WeNet's values.
constexpr const char* kWenetAishellU2pp = R"(# network architecture
# encoder related
encoder: conformer
encoder_conf:
    output_size: 256    # dimension of attention
    attention_heads: 4
    linear_units: 2048  # the number of units of position-wise feed forward
    num_blocks: 12      # the number of encoder blocks
    dropout_rate: 0.1
    positional_dropout_rate: 0.1
    attention_dropout_rate: 0.1
    input_layer: conv2d # encoder input type, you can chose conv2d, conv2d6 and conv2d8
    normalize_before: true
    cnn_module_kernel: 8
    use_cnn_module: True
    activation_type: 'swish'
    pos_enc_layer_type: 'rel_pos'
    selfattention_layer_type: 'rel_selfattn'
    causal: true
    use_dynamic_chunk: true
    cnn_module_norm: 'layer_norm' # using nn.LayerNorm makes model converge faster
    use_dynamic_left_chunk: false

# decoder related
decoder: bitransformer
decoder_conf:
    attention_heads: 4
    linear_units: 1024
    num_blocks: 3
    r_num_blocks: 3
    dropout_rate: 0.1
    positional_dropout_rate: 0.1
    self_attention_dropout_rate: 0.1
    src_attention_dropout_rate: 0.1

tokenizer: char
tokenizer_conf:
  symbol_table_path: 'data/dict/lang_char.txt'
  split_with_space: false
  bpe_path: null
  non_lang_syms_path: null
  is_multilingual: false
  num_languages: 1
  special_tokens:
    <blank>: 0
    <unk>: 1
    <sos>: 4232
    <eos>: 4232

ctc: ctc
ctc_conf:
  ctc_blank_id: 0

cmvn: global_cmvn
cmvn_conf:
  cmvn_file: 'data/train/global_cmvn'
  is_json_cmvn: true

# hybrid CTC/attention
model: asr_model
model_conf:
    ctc_weight: 0.3
    lsm_weight: 0.1     # label smoothing option
    length_normalized_loss: false
    reverse_weight: 0.3

dataset: asr
dataset_conf:
    filter_conf:
        max_length: 40960
        min_length: 0
        token_max_length: 200
        token_min_length: 1
    resample_conf:
        resample_rate: 16000
    speed_perturb: false
    fbank_conf:
        num_mel_bins: 80
        frame_shift: 10
        frame_length: 25
        dither: 1.0
    spec_aug: true
    spec_aug_conf:
        num_t_mask: 2
        num_f_mask: 2
        max_t: 50
        max_f: 10
    spec_sub: true
    spec_sub_conf:
        num_t_sub: 3
        max_t: 30
    spec_trim: false
    spec_trim_conf:
        max_t: 50
    shuffle: true
    shuffle_conf:
        shuffle_size: 1500
    sort: true
    sort_conf:
        sort_size: 500  # sort_size should be less than shuffle_size
    batch_conf:
        batch_type: 'static' # static or dynamic
        batch_size: 16

grad_clip: 5
accum_grad: 1
max_epoch: 360
log_interval: 100

optim: adam
optim_conf:
    lr: 0.001
scheduler: warmuplr     # pytorch v1.1.0+ required
scheduler_conf:
    warmup_steps: 25000
)";

TEST(TrainConfigTest, WenetRecipePortsVerbatim) {
  proto::TrainConfig c = parse_ok(kWenetAishellU2pp, {"output_dim 4233"});
  EXPECT_EQ(c.encoder_conf().cnn_module_kernel(), 8);
  EXPECT_EQ(c.dataset_conf().batch_conf().batch_type(), "static");
  EXPECT_EQ(c.tokenizer_conf().symbol_table_path(), "data/dict/lang_char.txt");
  EXPECT_EQ(c.tokenizer_conf().bpe_path(), "");
  EXPECT_EQ(c.max_epoch(), 360);
  auto wenet = model_config_from_wenet_yaml_text(std::string(kWenetAishellU2pp) + "output_dim: 4233\n", "x");
  ASSERT_TRUE(wenet.ok()) << wenet.status().to_string();
  expect_same_model(model_config_from_train_config(c), wenet.value(), "aishell u2++");

  // Keys moe-asr only accepts with the value it implements.
  std::string rms = std::string(kWenetAishellU2pp) + "output_dim: 4233\n";
  rms.replace(rms.find("    use_dynamic_left_chunk: false\n"), 0, "    layer_norm_type: rms_norm\n");
  EXPECT_NE(
      error_of(rms).find("'encoder_conf.layer_norm_type' = 'rms_norm' is not supported: moe-asr implements "
                         "only layer_norm"),
      std::string::npos);
  EXPECT_NE(error_of(kWenetAishellU2pp, {"output_dim 5000"})
                .find("'tokenizer_conf.special_tokens.<sos>' = 4232 is not supported: moe-asr uses id 4999"),
            std::string::npos);
  std::string blank = std::string(kWenetAishellU2pp) + "output_dim: 4233\n";
  blank.replace(blank.find("ctc_blank_id: 0"), 15, "ctc_blank_id: 3");
  EXPECT_EQ(error_of(blank).find("conf/train.yaml:52: 'ctc_conf.ctc_blank_id' = '3' is not supported"), 0u)
      << error_of(blank);
  std::string stray = std::string(kWenetAishellU2pp) + "output_dim: 4233\n";
  stray.replace(stray.find("ctc_blank_id: 0"), 15, "blank: 0");
  EXPECT_NE(error_of(stray).find("'ctc_conf.blank' is not a key moe-asr knows"), std::string::npos);
}

TEST(TrainConfigTest, MissingFileIsNotFound) {
  auto c = load_train_config("/nonexistent/conf/train.yaml", {});
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kNotFound);
  EXPECT_NE(c.status().message().find("/nonexistent/conf/train.yaml"), std::string::npos);
}

}  // namespace
}  // namespace moeasr
