// tests/trainer/wenet_checkpoint_test.cc — WeNet train.yaml → ModelConfig (values, defaults, errors
// naming key and line) and the HDF5 weights file (round trip, another model shape refused, experts by
// global id loaded under another expert-parallel layout).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "tests/common/gradcheck.h"
#include "trainer/model_weights.h"
#include "trainer/wenet_yaml.h"

namespace moeasr {
namespace {

const char* kMoeYaml = R"(# a U2++ MoE recipe in WeNet's keys
encoder: conformer
encoder_conf:
    output_size: 32
    attention_heads: 4
    linear_units: 64
    num_blocks: 2
    dropout_rate: 0.1
    positional_dropout_rate: 0.1
    attention_dropout_rate: 0.1
    input_layer: conv2d
    normalize_before: true
    cnn_module_kernel: 8
    use_cnn_module: true
    activation_type: 'swish'
    pos_enc_layer_type: 'rel_pos'
    selfattention_layer_type: 'rel_selfattn'
    causal: true
    use_dynamic_chunk: true
    cnn_module_norm: 'layer_norm'
    use_dynamic_left_chunk: false
    mlp_type: moe
    n_expert: 4
    n_expert_activated: 2
decoder: bitransformer
decoder_conf:
    attention_heads: 4
    linear_units: 64
    num_blocks: 1
    r_num_blocks: 1
    dropout_rate: 0.1
    positional_dropout_rate: 0.1
    self_attention_dropout_rate: 0.1
    src_attention_dropout_rate: 0.1
    mlp_type: moe
    n_expert: 4
    n_expert_activated: 2
model_conf:
    ctc_weight: 0.3
    lsm_weight: 0.1
    length_normalized_loss: false
    reverse_weight: 0.3
input_dim: 80
output_dim: 40
)";

TEST(WenetYaml, ReadsAU2ppMoeRecipe) {
  StatusOr<ModelConfig> parsed = model_config_from_wenet_yaml_text(kMoeYaml, "train.yaml");
  ASSERT_TRUE(parsed.ok()) << parsed.status().to_string();
  const ModelConfig& c = parsed.value();
  EXPECT_EQ(c.encoder.output_size, 32);
  EXPECT_EQ(c.encoder.cnn_module_kernel, 8);
  EXPECT_TRUE(c.encoder.causal);
  EXPECT_EQ(c.encoder.cnn_module_norm, ConvNormType::kLayerNorm);
  EXPECT_EQ(c.encoder.ffn.mlp_type, MlpType::kMoe);
  EXPECT_EQ(c.encoder.ffn.activation, ActivationType::kSwish);
  EXPECT_EQ(c.decoder.ffn.activation, ActivationType::kRelu);  // WeNet's decoder default
  EXPECT_EQ(c.decoder.ffn.n_expert, 4);
  EXPECT_EQ(c.decoder.r_num_blocks, 1);
  EXPECT_TRUE(c.encoder.use_dynamic_chunk);
  EXPECT_DOUBLE_EQ(c.reverse_weight, 0.3);
  EXPECT_EQ(c.vocab_size, 40);
  EXPECT_EQ(c.sos(), 39);
}

TEST(WenetYaml, ErrorsNameTheKeyAndLine) {
  std::string typo = kMoeYaml;
  typo.replace(typo.find("num_blocks: 2"), 13, "num_block: 2");
  StatusOr<ModelConfig> bad = model_config_from_wenet_yaml_text(typo, "exp/train.yaml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("exp/train.yaml:7: 'encoder_conf.num_block' is not a key"),
            std::string::npos)
      << bad.status().message();

  std::string wrong_type = kMoeYaml;
  wrong_type.replace(wrong_type.find("linear_units: 64"), 16, "linear_units: many");
  bad = model_config_from_wenet_yaml_text(wrong_type, "t.yaml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(
      bad.status().message().find("t.yaml:6: 'encoder_conf.linear_units' has a value of the wrong type"),
      std::string::npos)
      << bad.status().message();

  std::string unsupported = kMoeYaml;
  unsupported.replace(unsupported.find("'rel_pos'"), 9, "'abs_pos'");
  bad = model_config_from_wenet_yaml_text(unsupported, "t.yaml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("pos_enc_layer_type' = 'abs_pos' is not supported"),
            std::string::npos);

  std::string impossible = kMoeYaml;
  impossible.replace(impossible.find("n_expert_activated: 2"), 21, "n_expert_activated: 9");
  bad = model_config_from_wenet_yaml_text(impossible, "t.yaml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("n_expert_activated"), std::string::npos);

  EXPECT_EQ(model_config_from_wenet_yaml("/nonexistent/train.yaml").status().code(), StatusCode::kNotFound);
}

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "/" + std::to_string(getpid()) + "_" + name;
}

TEST(ModelWeights, RoundTripAndRefusals) {
  ModelConfig c = model_config_from_wenet_yaml_text(kMoeYaml, "t").value();
  ParameterTable table = build_u2pp_parameter_table(c, ExpertLayout{});
  ParameterStore<float> a(table);
  initialize_parameters(&a, 17);
  const std::string path = temp_path("weights.h5");
  ASSERT_TRUE(save_model_weights(path, a, kMoeYaml).ok());
  EXPECT_EQ(read_model_weights_config(path).value(), kMoeYaml);

  ParameterStore<float> b(table);
  ASSERT_TRUE(load_model_weights(path, &b).ok());
  for (int r = 0; r < kNumParamRegions; ++r) EXPECT_EQ(a.values[r], b.values[r]);

  // Experts by global id: rank 1 of EP=2 gets experts 2 and 3 of every MoE FFN.
  ParameterTable half = build_u2pp_parameter_table(c, ExpertLayout{1, 2});
  ParameterStore<float> h(half);
  ASSERT_TRUE(load_model_weights(path, &h).ok());
  const std::string name = "decoder.right_decoder.decoders.0.feed_forward.experts.3.w_1.weight";
  for (int64_t i = 0; i < table.at(name).numel; ++i) ASSERT_EQ(h.value(name)[i], a.value(name)[i]);

  // Another model shape is refused, naming the tensor and both shapes.
  ModelConfig wider = c;
  wider.encoder.ffn.linear_units = 96;
  ParameterTable other = build_u2pp_parameter_table(wider, ExpertLayout{});
  ParameterStore<float> o(other);
  Status refused = load_model_weights(path, &o);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.message().find("has shape [64, 32] but the configured model expects [96, 32]"),
            std::string::npos)
      << refused.message();
  ModelConfig dense = c;
  dense.encoder.ffn.mlp_type = MlpType::kDense;
  ParameterTable dense_table = build_u2pp_parameter_table(dense, ExpertLayout{});
  ParameterStore<float> dstore(dense_table);
  refused = load_model_weights(path, &dstore);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.message().find("another model"), std::string::npos) << refused.message();
  EXPECT_EQ(load_model_weights(temp_path("missing.h5"), &b).code(), StatusCode::kNotFound);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace moeasr
