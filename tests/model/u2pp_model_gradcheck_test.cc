// tests/model/u2pp_model_gradcheck_test.cc — finite-difference gradients (double) of the whole U2++
// model's joint loss w.r.t. EVERY parameter, on a micro config: dense and MoE, layer-norm and
// batch-norm conv modules, full context and a chunk mask, and with every dropout active (the masks are
// keyed by the step, so each finite-difference evaluation draws the same ones).
#include <gtest/gtest.h>

#include <vector>

#include "model/expert_dispatch.h"
#include "model/u2pp_model.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

ModelConfig micro_config(bool moe, ConvNormType norm, double dropout) {
  ModelConfig c;
  c.input_dim = 9;  // F' = 1
  c.vocab_size = 7;
  c.encoder.output_size = 8;
  c.encoder.attention_heads = 2;
  c.encoder.num_blocks = 1;
  c.encoder.cnn_module_kernel = 3;
  c.encoder.causal = true;
  c.encoder.cnn_module_norm = norm;
  c.encoder.ffn.mlp_type = moe ? MlpType::kMoe : MlpType::kDense;
  c.encoder.ffn.linear_units = 6;
  c.encoder.ffn.n_expert = 3;
  c.encoder.ffn.n_expert_activated = 2;
  c.encoder.dropout_rate = c.encoder.positional_dropout_rate = c.encoder.attention_dropout_rate = dropout;
  c.decoder.attention_heads = 2;
  c.decoder.num_blocks = 1;
  c.decoder.r_num_blocks = 1;
  c.decoder.ffn = c.encoder.ffn;
  c.decoder.ffn.activation = ActivationType::kRelu;
  c.decoder.dropout_rate = c.decoder.positional_dropout_rate = dropout;
  c.decoder.self_attention_dropout_rate = c.decoder.src_attention_dropout_rate = dropout;
  return c;
}

void check_model_gradients(const ModelConfig& config, int64_t chunk) {
  ParameterTable table = build_u2pp_parameter_table(config, ExpertLayout{});
  ParameterStore<double> store(table);
  initialize_parameters(&store, 5);
  // Non-trivial LayerNorm/bias values so no gradient is structurally simple.
  auto jitter = testing::random_doubles(store.values[0].size(), 6, -0.05, 0.05);
  for (size_t i = 0; i < store.values[0].size(); ++i) store.values[0][i] += jitter[i];
  LocalExpertDispatcher<double> dispatcher;
  U2ppModel<double> model(config, &store, &dispatcher, ExpertLayout{});

  const int64_t batch = 2, frames = 15, max_text = 2;
  std::vector<double> feats = testing::random_doubles(batch * frames * config.input_dim, 7, -2.0, 2.0);
  std::vector<int32_t> feat_lengths = {15, 11}, text = {3, 1, 4, 0}, text_lengths = {2, 1};
  U2ppBatch<double> b{feats.data(), feat_lengths.data(), text.data(), text_lengths.data(), batch, frames,
                      max_text};
  U2ppForwardOptions options;
  options.training = true;
  options.chunk_size = chunk;
  StepRng rng;
  rng.training = true;
  rng.base.seed = 99;
  rng.base.step = 3;

  Arena arena("activations", 1 << 16, Arena::Growth::kGrowable);
  RunContext ctx = testing::cpu_test_context();
  ctx.activations = &arena;
  auto loss = [&] {
    arena.reset();
    return model.forward(b, options, rng, ctx).total;
  };
  auto grads = [&] {
    store.zero_grads();
    arena.reset();
    model.forward(b, options, rng, ctx);
    model.backward(1.0, rng, ctx);
  };
  std::vector<testing::GradTarget> targets;
  targets.push_back({"dense region", store.values[0].data(), store.grads[0].data(),
                     static_cast<int64_t>(store.values[0].size())});
  if (!store.values[1].empty()) {
    targets.push_back({"expert region", store.values[1].data(), store.grads[1].data(),
                       static_cast<int64_t>(store.values[1].size())});
  }
  testing::GradCheckOptions opts;
  opts.rtol = 1e-5;
  opts.atol = 1e-8;
  testing::expect_gradients_match(loss, grads, targets, opts);
}

TEST(U2ppModelGradcheck, DenseLayerNormChunked) {
  check_model_gradients(micro_config(false, ConvNormType::kLayerNorm, 0.0), 1);
}
TEST(U2ppModelGradcheck, MoeLayerNormFullContext) {
  check_model_gradients(micro_config(true, ConvNormType::kLayerNorm, 0.0), -1);
}
TEST(U2ppModelGradcheck, MoeBatchNormWithDropout) {
  check_model_gradients(micro_config(true, ConvNormType::kBatchNorm, 0.1), 2);
}

}  // namespace
}  // namespace moeasr
