// tests/model/bf16_model_test.cc — the host side of the bf16 model (U2ppModel<bf16>, which runs on the
// CUDA device only; its numerics are checked against the CPU model in tests/gpu/u2pp_model_cuda_test.cc):
//   - op::convert_elements on the host rounds float -> bf16 as core/dtype.h does (nearest even, ties,
//     NaN/inf kept) and widens bf16 -> float exactly;
//   - ParameterStore<bf16> over an fp32 store: the copy holds the rounded masters, master() and grad()
//     are the fp32 store's own arrays, refresh_copy() follows a change of the masters;
//   - U2ppModel<bf16> binds every tensor to the copy (value) and the fp32 store (master, grad), and a
//     forward on the CPU stops with a message that names the op and says bf16 runs on the GPU only.
#include <gtest/gtest.h>

#include <cmath>
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

namespace moeasr {
namespace {

ModelConfig tiny_moe_config() {
  ModelConfig c;
  c.input_dim = 20;
  c.vocab_size = 12;
  c.encoder.output_size = 16;
  c.encoder.attention_heads = 2;
  c.encoder.num_blocks = 1;
  c.encoder.cnn_module_kernel = 3;
  c.encoder.ffn.mlp_type = MlpType::kMoe;
  c.encoder.ffn.linear_units = 32;
  c.encoder.ffn.n_expert = 4;
  c.encoder.ffn.n_expert_activated = 2;
  c.decoder.attention_heads = 2;
  c.decoder.num_blocks = 1;
  c.decoder.r_num_blocks = 1;
  c.decoder.ffn = c.encoder.ffn;
  c.decoder.ffn.activation = ActivationType::kRelu;
  c.reverse_weight = 0.3;
  return c;
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

TEST(Bf16Model, CpuForwardIsRefusedNamingTheOp) {
  const ModelConfig config = tiny_moe_config();
  const ParameterTable table = build_u2pp_parameter_table(config, ExpertLayout{});
  ParameterStore<float> masters(table);
  initialize_parameters(&masters, 5);
  RunContext ctx = testing::cpu_test_context();
  Arena arena("activations", 1 << 16, Arena::Growth::kGrowable);
  ctx.activations = &arena;
  ParameterStore<bf16> copy(&masters, &arena, ctx);
  LocalExpertDispatcher<bf16> dispatcher;
  U2ppModel<bf16> model(config, &copy, &dispatcher, ExpertLayout{});  // binding works on any device
  std::vector<float> feats = testing::random_floats(2 * 30 * config.input_dim, 9, -1.0f, 1.0f);
  std::vector<int32_t> feat_lengths = {30, 25}, text = {1, 2, 3, 4, 0, 0}, text_lengths = {3, 1};
  U2ppBatch<float> batch{feats.data(), feat_lengths.data(), text.data(), text_lengths.data(), 2, 30, 3};
  StepRng rng;
  EXPECT_DEATH(model.forward(batch, U2ppForwardOptions{}, rng, ctx),
               "op [a-z_0-9]+: bf16 tensors run on the CUDA device only");
}

}  // namespace
}  // namespace moeasr
