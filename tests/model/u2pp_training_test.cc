// tests/model/u2pp_training_test.cc — training behaviour of the U2++ MoE model on the CPU:
//   - gradient accumulation: two half-batches, each normalised by the full batch size, give the
//     gradients of the full batch (the same rule makes data parallelism exact);
//   - overfit one batch: Adam + WarmupLR + clipping drive the joint loss down by >= 90%.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "model/expert_dispatch.h"
#include "model/u2pp_model.h"
#include "tests/common/gradcheck.h"
#include "trainer/optimizer.h"

namespace moeasr {
namespace {

ModelConfig small_moe_config() {
  ModelConfig c;
  c.input_dim = 20;
  c.vocab_size = 12;
  c.encoder.output_size = 16;
  c.encoder.attention_heads = 2;
  c.encoder.num_blocks = 2;
  c.encoder.cnn_module_kernel = 3;
  c.encoder.causal = true;
  c.encoder.cnn_module_norm = ConvNormType::kLayerNorm;
  c.encoder.ffn.mlp_type = MlpType::kMoe;
  c.encoder.ffn.linear_units = 32;
  c.encoder.ffn.n_expert = 4;
  c.encoder.ffn.n_expert_activated = 2;
  c.encoder.dropout_rate = c.encoder.positional_dropout_rate = c.encoder.attention_dropout_rate = 0.0;
  c.decoder.attention_heads = 2;
  c.decoder.num_blocks = 1;
  c.decoder.r_num_blocks = 1;
  c.decoder.ffn = c.encoder.ffn;
  c.decoder.ffn.activation = ActivationType::kRelu;
  c.decoder.dropout_rate = c.decoder.positional_dropout_rate = 0.0;
  c.decoder.self_attention_dropout_rate = c.decoder.src_attention_dropout_rate = 0.0;
  return c;
}

struct HostBatch {
  std::vector<float> feats;
  std::vector<int32_t> feat_lengths, text, text_lengths;
  int64_t batch, frames, max_text;
  U2ppBatch<float> view() const {
    return {feats.data(), feat_lengths.data(), text.data(), text_lengths.data(), batch, frames, max_text};
  }
  // Utterances [begin, end) as their own padded batch (same padding, so the math per utterance is equal).
  HostBatch slice(int64_t begin, int64_t end, int64_t input_dim) const {
    HostBatch s;
    s.batch = end - begin;
    s.frames = frames;
    s.max_text = max_text;
    s.feats.assign(feats.begin() + begin * frames * input_dim, feats.begin() + end * frames * input_dim);
    s.feat_lengths.assign(feat_lengths.begin() + begin, feat_lengths.begin() + end);
    s.text.assign(text.begin() + begin * max_text, text.begin() + end * max_text);
    s.text_lengths.assign(text_lengths.begin() + begin, text_lengths.begin() + end);
    return s;
  }
};

HostBatch make_batch(int64_t input_dim) {
  HostBatch h;
  h.batch = 4;
  h.frames = 47;
  h.max_text = 4;
  h.feats = testing::random_floats(h.batch * h.frames * input_dim, 21, -1.5f, 1.5f);
  h.feat_lengths = {47, 40, 31, 23};
  h.text = {1, 2, 3, 4, 5, 6, 7, 0, 8, 9, 0, 0, 10, 1, 10, 0};
  h.text_lengths = {4, 3, 2, 3};
  return h;
}

TEST(U2ppTraining, HalfBatchesNormalisedByTheFullBatchAccumulateToFullBatchGradients) {
  ModelConfig config = small_moe_config();
  ParameterTable table = build_u2pp_parameter_table(config, ExpertLayout{});
  ParameterStore<float> store(table);
  initialize_parameters(&store, 3);
  LocalExpertDispatcher<float> dispatcher;
  U2ppModel<float> model(config, &store, &dispatcher, ExpertLayout{});
  Arena arena("activations", 1 << 20, Arena::Growth::kGrowable);
  RunContext ctx = testing::cpu_test_context();
  ctx.activations = &arena;
  HostBatch full = make_batch(config.input_dim);
  U2ppForwardOptions options;
  options.chunk_size = 3;
  StepRng rng;

  U2ppLoss whole = model.forward(full.view(), options, rng, ctx);
  model.backward(1.0, rng, ctx);
  std::vector<float> dense_full = store.grads[0], expert_full = store.grads[1];

  store.zero_grads();
  options.batch_normalizer = static_cast<double>(full.batch);
  double total = 0;
  for (int64_t begin : {int64_t(0), int64_t(2)}) {
    arena.reset();
    HostBatch half = full.slice(begin, begin + 2, config.input_dim);
    total += model.forward(half.view(), options, rng, ctx).total;
    model.backward(1.0, rng, ctx);
  }
  EXPECT_NEAR(total, whole.total, 1e-5 * std::fabs(whole.total));
  auto rel = [](const std::vector<float>& a, const std::vector<float>& b) {
    double d = 0, n = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      d += double(a[i] - b[i]) * (a[i] - b[i]);
      n += double(b[i]) * b[i];
    }
    return std::sqrt(d / n);
  };
  EXPECT_LT(rel(store.grads[0], dense_full), 1e-5);
  EXPECT_LT(rel(store.grads[1], expert_full), 1e-5);
}

TEST(U2ppTraining, OverfitsOneBatchWithAdam) {
  ModelConfig config = small_moe_config();
  ParameterTable table = build_u2pp_parameter_table(config, ExpertLayout{});
  ParameterStore<float> store(table);
  initialize_parameters(&store, 4);
  LocalExpertDispatcher<float> dispatcher;
  U2ppModel<float> model(config, &store, &dispatcher, ExpertLayout{});
  AdamOptions adam_options;
  adam_options.lr = 4e-3;
  adam_options.warmup_steps = 20;
  adam_options.grad_clip = 5.0;
  AdamOptimizer<float> adam(&store, adam_options);
  Arena arena("activations", 1 << 20, Arena::Growth::kGrowable);
  RunContext ctx = testing::cpu_test_context();
  ctx.activations = &arena;
  HostBatch batch = make_batch(config.input_dim);
  U2ppForwardOptions options;
  StepRng rng;

  double first = 0, last = 0;
  const int steps = 200;
  for (int step = 0; step < steps; ++step) {
    arena.reset();
    store.zero_grads();
    U2ppLoss loss = model.forward(batch.view(), options, rng, ctx);
    ASSERT_TRUE(std::isfinite(loss.total)) << "step " << step;
    if (step == 0) first = loss.total;
    last = loss.total;
    if (last <= 0.1 * first) break;
    model.backward(1.0, rng, ctx);
    UpdateResult r = adam.step(ctx);
    ASSERT_FALSE(r.skipped) << "step " << step;
  }
  std::printf("[ overfit ] loss %.4f -> %.4f after %lld updates\n", first, last,
              static_cast<long long>(adam.steps_taken()));
  EXPECT_LE(last, 0.1 * first) << "the joint loss did not fall by 90% in " << steps << " steps";
}

}  // namespace
}  // namespace moeasr
