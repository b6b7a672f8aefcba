// tests/model/bf16_model_test.cc — the bf16 model (U2ppModel<bf16>) on the CPU; the GPU run of the same
// model is checked in tests/gpu/u2pp_model_cuda_test.cc:
//   - op::convert_elements on the host rounds float -> bf16 as core/dtype.h does (nearest even, ties,
//     NaN/inf kept) and widens bf16 -> float exactly;
//   - ParameterStore<bf16> over an fp32 store: the copy holds the rounded masters, master() and grad()
//     are the fp32 store's own arrays, refresh_copy() follows a change of the masters;
//   - U2ppModel<bf16> on the CPU (ops.h's bf16 reference path: each op on fp32 copies, its outputs
//     rounded) against U2ppModel<float>: one training step's losses and gradients agree within bf16
//     rounding, and a second bf16 run repeats the first bit for bit;
//   - the MoE layers' device-sized path (the GPU's, EP = 1) gives the counted path's step bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

#include "core/arena.h"
#include "core/dtype.h"
#include "kernels/ops.h"
#include "model/expert_dispatch.h"
#include "model/parameter_table.h"
#include "model/u2pp_model.h"
#include "tests/common/gradcheck.h"
#include "tests/common/tiny_models.h"

namespace moeasr {
namespace {

ModelConfig tiny_moe_config() {
  return testing::tiny_moe_model_config(1);
}

uint16_t bits_of(bf16 value) {
  return value.bits;
}

TEST(Bf16Model, HostConversionRoundsToNearestEvenAndWidensExactly) {
  RunContext ctx = testing::cpu_test_context();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> x = testing::random_floats(1000, 3, -50.0f, 50.0f);
  // Ties: 1 + 2^-8 lies halfway between two bf16 values (1 and 1 + 2^-7) and rounds to the even one (1);
  // 1 + 3 * 2^-8 rounds up to 1 + 2^-6.
  x.insert(x.end(), {0.0f, -0.0f, 1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, inf, -inf,
                     std::numeric_limits<float>::quiet_NaN(), 3.0e38f, 1e-40f});
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<bf16> narrow(x.size());
  op::convert_elements(narrow.data(), x.data(), n, ctx);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(bits_of(narrow[static_cast<size_t>(i)]), float_to_bf16_bits(x[static_cast<size_t>(i)]))
        << "element " << i << " = " << x[static_cast<size_t>(i)];
  }
  EXPECT_EQ(static_cast<float>(narrow[n - 7]), 1.0f);            // the tie went to even
  EXPECT_EQ(static_cast<float>(narrow[n - 6]), 1.0f + 0x1p-6f);  // and this one up
  EXPECT_TRUE(std::isnan(static_cast<float>(narrow[n - 3])));    // NaN stays NaN
  EXPECT_EQ(static_cast<float>(narrow[n - 5]), inf);
  std::vector<float> wide(x.size(), -1.0f);
  op::convert_elements(wide.data(), narrow.data(), n, ctx);
  for (int64_t i = 0; i < n; ++i) {
    if (i == n - 3) continue;  // NaN compares unequal to itself
    ASSERT_EQ(wide[static_cast<size_t>(i)], bf16_bits_to_float(bits_of(narrow[static_cast<size_t>(i)])));
  }
  EXPECT_TRUE(std::isnan(wide[static_cast<size_t>(n - 3)]));
}

TEST(Bf16Model, ParameterStoreCopyHoldsTheRoundedMastersAndFollowsThem) {
  const ModelConfig config = tiny_moe_config();
  const ParameterTable table = build_u2pp_parameter_table(config, ExpertLayout{});
  ParameterStore<float> masters(table);
  initialize_parameters(&masters, 5);
  RunContext ctx = testing::cpu_test_context();
  Arena arena("bf16 copy", 1 << 16, Arena::Growth::kGrowable);
  ParameterStore<bf16> copy(&masters, &arena, ctx);
  ASSERT_EQ(copy.table, &table);
  int64_t checked = 0;
  for (const ParamEntry& e : table.entries()) {
    ASSERT_EQ(copy.master(e), masters.value(e)) << e.name;
    if (e.region != ParamRegion::kBuffer) {
      ASSERT_EQ(copy.grad(e), masters.grad(e)) << e.name;
    }
    const bf16* value = copy.value(e);
    for (int64_t i = 0; i < e.numel; ++i, ++checked) {
      ASSERT_EQ(value[i].bits, float_to_bf16_bits(masters.value(e)[i])) << e.name << "[" << i << "]";
    }
  }
  EXPECT_GT(checked, 1000);
  // An optimizer step changes the masters: the copy follows after refresh_copy, not before.
  const ParamEntry& w = table.at("ctc.ctc_lo.weight");
  masters.value(w)[0] = 0.75f;
  EXPECT_NE(static_cast<float>(copy.value(w)[0]), 0.75f);
  copy.refresh_copy(ctx);
  EXPECT_EQ(static_cast<float>(copy.value(w)[0]), 0.75f);
}

struct StepOutput {
  U2ppLoss loss;
  std::vector<float> grads[kNumParamRegions];
  std::vector<std::vector<int64_t>> expert_load;
};

// One training forward + backward of a tiny MoE model on the CPU from the same initial weights, batch
// and dropout masks: fp32, fp32 on the weights rounded to bf16 (the values the bf16 model's matrix
// products see), or the bf16 model.
enum class Precision { kFp32, kFp32RoundedWeights, kBf16 };

StepOutput cpu_step(const ModelConfig& config, const ParameterTable& table, Precision run,
                    const U2ppForwardOptions& options, bool moe_device_sizes = false) {
  ParameterStore<float> masters(table);
  initialize_parameters(&masters, 7);
  if (run == Precision::kFp32RoundedWeights) {
    for (std::vector<float>& region : masters.values) {
      for (float& v : region) v = static_cast<float>(bf16(v));
    }
  }
  RunContext ctx = testing::cpu_test_context();
  Arena arena("activations", 1 << 20, Arena::Growth::kGrowable);
  ctx.activations = &arena;
  ctx.force_moe_device_sizes = moe_device_sizes;
  const int64_t batch = 4, frames = 47, max_text = 4;
  std::vector<float> feats = testing::random_floats(batch * frames * config.input_dim, 21, -1.5f, 1.5f);
  std::vector<int32_t> feat_lengths = {47, 40, 31, 23};
  std::vector<int32_t> text = {1, 2, 3, 4, 5, 6, 7, 0, 8, 9, 0, 0, 10, 1, 10, 0}, text_lengths = {4, 3, 2, 3};
  U2ppBatch<float> view{feats.data(), feat_lengths.data(), text.data(), text_lengths.data(), batch, frames,
                        max_text};
  StepRng rng;
  rng.training = true;
  rng.base.seed = 99;
  rng.base.step = 3;
  StepOutput r;
  if (run == Precision::kBf16) {
    Arena copy_arena("bf16 copy", 1 << 16, Arena::Growth::kGrowable);
    ParameterStore<bf16> copy(&masters, &copy_arena, ctx);
    LocalExpertDispatcher<bf16> dispatcher;
    U2ppModel<bf16> model(config, &copy, &dispatcher, ExpertLayout{});
    r.loss = model.forward(view, options, rng, ctx);
    model.backward(1.0, rng, ctx);
    r.expert_load = model.expert_load(ctx);
  } else {
    LocalExpertDispatcher<float> dispatcher;
    U2ppModel<float> model(config, &masters, &dispatcher, ExpertLayout{});
    r.loss = model.forward(view, options, rng, ctx);
    model.backward(1.0, rng, ctx);
    r.expert_load = model.expert_load(ctx);
  }
  for (int i = 0; i < kNumParamRegions; ++i) r.grads[i] = masters.grads[i];
  return r;
}

// The bf16 model against the fp32 model on the same (bf16-rounded) weights: what is left is the
// rounding of the stored activations, so this checks what is stored in bf16 and what stays fp32 (a
// tensor bound to the wrong array or a wrong buffer size gives errors of order 1).
// Measured (this file's configs): losses agree to ~4e-5 relative; gradients 0.5-2% relative norm.
// The tiny random model is ill-conditioned: rounding the weights alone already moves the fp32 model's
// dense gradients by 3-6%, which is why the reference has the rounded weights. Tolerances: losses
// 1e-3 relative, gradients 4e-2 per region; with top-2 routing the expert region gets 8e-2 (a routing
// decision near a tie may go the other way in bf16 and move a token's gradient to another expert).
void expect_bf16_step_close(ConvNormType norm, double dropout, int64_t chunk_size, int64_t top_k) {
  SCOPED_TRACE(::testing::Message() << "norm " << static_cast<int>(norm) << " dropout " << dropout
                                    << " chunk " << chunk_size << " top-" << top_k);
  ModelConfig config = tiny_moe_config();
  config.encoder.num_blocks = 2;
  config.encoder.causal = true;
  config.encoder.cnn_module_norm = norm;
  config.encoder.ffn.n_expert_activated = top_k;
  config.decoder.ffn.n_expert_activated = top_k;
  config.encoder.dropout_rate = config.encoder.positional_dropout_rate = dropout;
  config.encoder.attention_dropout_rate = dropout;
  config.decoder.dropout_rate = config.decoder.positional_dropout_rate = dropout;
  config.decoder.self_attention_dropout_rate = config.decoder.src_attention_dropout_rate = dropout;
  const ParameterTable table = build_u2pp_parameter_table(config, ExpertLayout{});
  U2ppForwardOptions options;
  options.chunk_size = chunk_size;
  const StepOutput want = cpu_step(config, table, Precision::kFp32RoundedWeights, options);
  const StepOutput got = cpu_step(config, table, Precision::kBf16, options);
  auto near = [](double a, double b) { return std::fabs(a - b) <= 1e-3 * std::max(1.0, std::fabs(b)); };
  EXPECT_TRUE(near(got.loss.total, want.loss.total)) << got.loss.total << " vs " << want.loss.total;
  EXPECT_TRUE(near(got.loss.ctc, want.loss.ctc)) << got.loss.ctc << " vs " << want.loss.ctc;
  EXPECT_TRUE(near(got.loss.att_l2r, want.loss.att_l2r)) << got.loss.att_l2r << " vs " << want.loss.att_l2r;
  EXPECT_TRUE(near(got.loss.att_r2l, want.loss.att_r2l)) << got.loss.att_r2l << " vs " << want.loss.att_r2l;
  EXPECT_EQ(got.loss.num_tokens, want.loss.num_tokens);
  for (ParamRegion region : {ParamRegion::kDense, ParamRegion::kExpert}) {
    const int i = static_cast<int>(region);
    ASSERT_FALSE(want.grads[i].empty());
    const double error = testing::relative_norm_error(got.grads[i], want.grads[i]);
    const double tolerance =
        region == ParamRegion::kExpert && top_k < config.encoder.ffn.n_expert ? 8e-2 : 4e-2;
    std::printf("[ bf16 ] %s gradients: relative norm error %.3g (tolerance %.0e)\n",
                param_region_name(region), error, tolerance);
    EXPECT_LE(error, tolerance) << "gradient region " << i;
    EXPECT_GT(error, 0.0) << "gradient region " << i << ": the bf16 model must round its activations";
  }
  // The bf16 step is deterministic.
  const StepOutput again = cpu_step(config, table, Precision::kBf16, options);
  EXPECT_EQ(again.loss.total, got.loss.total);
  for (int i = 0; i < kNumParamRegions; ++i) EXPECT_EQ(again.grads[i], got.grads[i]) << "region " << i;
}

TEST(Bf16Model, TrainingStepOnCpuMatchesFp32BatchNormChunkMaskEveryExpert) {
  expect_bf16_step_close(ConvNormType::kBatchNorm, 0.0, 3, /*top_k=*/4);
}

TEST(Bf16Model, TrainingStepOnCpuMatchesFp32LayerNormDropoutTop2) {
  expect_bf16_step_close(ConvNormType::kLayerNorm, 0.1, -1, /*top_k=*/2);
}

// The combination the GPU trains with: the bf16 model and the MoE layers' device-sized path (row
// buffers of N*k, no routed-row count read back; RunContext::force_moe_device_sizes runs it on the
// CPU). Bit for bit the counted path's step, expert load statistics included.
TEST(Bf16Model, DeviceSizedMoeStepEqualsTheCountedStep) {
  ModelConfig config = tiny_moe_config();
  config.encoder.dropout_rate = config.decoder.dropout_rate = 0.1;
  const ParameterTable table = build_u2pp_parameter_table(config, ExpertLayout{});
  U2ppForwardOptions options;
  options.chunk_size = 3;
  for (Precision run : {Precision::kFp32, Precision::kBf16}) {
    SCOPED_TRACE(run == Precision::kBf16 ? "bf16" : "fp32");
    const StepOutput counted = cpu_step(config, table, run, options, false);
    const StepOutput sized = cpu_step(config, table, run, options, true);
    EXPECT_EQ(sized.loss.total, counted.loss.total);
    EXPECT_EQ(sized.loss.num_correct, counted.loss.num_correct);
    for (int i = 0; i < kNumParamRegions; ++i) EXPECT_EQ(sized.grads[i], counted.grads[i]) << "region " << i;
    ASSERT_EQ(counted.expert_load.size(), 4u);  // encoder macaron and ff, left and right decoder
    EXPECT_EQ(sized.expert_load, counted.expert_load);
  }
}

}  // namespace
}  // namespace moeasr
