// tests/trainer/train_optimizer_test.cc — WarmupLR against WeNet's formula, and the region-wise Adam step:
// clipping, skipping on a non-finite norm, buffers untouched, bias-corrected first step.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "tests/common/gradcheck.h"
#include "trainer/optimizer.h"

namespace moeasr {
namespace {

TEST(WarmupLr, PeaksAtWarmupThenDecaysAsInverseSqrt) {
  const double base = 1e-3;
  const int64_t w = 25000;
  EXPECT_NEAR(warmup_lr(base, w, w), base, 1e-15);
  EXPECT_NEAR(warmup_lr(base, w, 1), base * std::sqrt(25000.0) * std::pow(25000.0, -1.5), 1e-18);
  EXPECT_NEAR(warmup_lr(base, w, 100000), base * std::sqrt(25000.0 / 100000.0), 1e-15);
  EXPECT_LT(warmup_lr(base, w, w - 1), warmup_lr(base, w, w));
  EXPECT_LT(warmup_lr(base, w, w + 1), warmup_lr(base, w, w));
  EXPECT_NEAR(warmup_lr(base, 0, 4), base / 2, 1e-18);
}

ParameterTable tiny_table() {
  ParameterTable t;
  t.add("w", Shape{2, 2}, ParamRegion::kDense, ParamInit::kOnes, 2);
  t.add("experts.0.w", Shape{3}, ParamRegion::kExpert, ParamInit::kOnes, 3, 0, 0);
  t.add("cmvn", Shape{2}, ParamRegion::kBuffer, ParamInit::kOnes, 0);
  return t;
}

TEST(AdamOptimizer, FirstStepMovesEveryTrainableParameterByLr) {
  ParameterTable table = tiny_table();
  ParameterStore<double> store(table);
  initialize_parameters(&store, 1);
  for (auto& g : store.grads) std::fill(g.begin(), g.end(), 0.5);
  AdamOptions options;
  options.warmup_steps = 0;  // lr(1) = base
  options.grad_clip = 0;
  AdamOptimizer<double> adam(&store, options);
  RunContext ctx = testing::cpu_test_context();
  UpdateResult r = adam.step(ctx);
  EXPECT_FALSE(r.skipped);
  EXPECT_NEAR(r.grad_norm, std::sqrt(7 * 0.25), 1e-12);
  // Step 1 of Adam: m_hat = g, v_hat = g^2, so the update is lr * g / (|g| + eps) ~= lr.
  for (double v : store.values[0]) EXPECT_NEAR(v, 1.0 - 1e-3, 1e-10);
  for (double v : store.values[1]) EXPECT_NEAR(v, 1.0 - 1e-3, 1e-10);
  for (double v : store.values[2]) EXPECT_EQ(v, 1.0);  // buffers are not trained
  EXPECT_EQ(adam.steps_taken(), 1);
}

TEST(AdamOptimizer, ClipsToMaxNormAndSkipsNonFinite) {
  ParameterTable table = tiny_table();
  ParameterStore<double> store(table);
  initialize_parameters(&store, 1);
  for (auto& g : store.grads) std::fill(g.begin(), g.end(), 3.0);
  AdamOptions options;
  options.grad_clip = 1.0;
  AdamOptimizer<double> adam(&store, options);
  RunContext ctx = testing::cpu_test_context();
  UpdateResult r = adam.step(ctx);
  EXPECT_NEAR(r.grad_norm, std::sqrt(7 * 9.0), 1e-12);
  double clipped = 0;
  for (int reg = 0; reg < 2; ++reg)
    for (double g : store.grads[reg]) clipped += g * g;
  EXPECT_NEAR(std::sqrt(clipped), 1.0, 1e-5);

  store.grads[1][2] = std::numeric_limits<double>::quiet_NaN();
  auto before = store.values[0];
  UpdateResult skipped = adam.step(ctx);
  EXPECT_TRUE(skipped.skipped);
  EXPECT_EQ(store.values[0], before);
  EXPECT_EQ(adam.steps_taken(), 1);
}

TEST(AdamOptimizer, StepWithAGivenNormEqualsStepWithItsOwnNorm) {
  ParameterTable table = tiny_table();
  ParameterStore<double> a(table), b(table);
  initialize_parameters(&a, 1);
  initialize_parameters(&b, 1);
  for (auto* s : {&a, &b})
    for (auto& g : s->grads) std::fill(g.begin(), g.end(), 2.0);
  AdamOptions options;
  options.grad_clip = 1.0;
  AdamOptimizer<double> own(&a, options), given(&b, options);
  RunContext ctx = testing::cpu_test_context();
  UpdateResult ra = own.step(ctx);
  UpdateResult rb = given.step_with_norm(std::sqrt(7 * 4.0), ctx);
  EXPECT_DOUBLE_EQ(ra.grad_norm, rb.grad_norm);
  for (int r = 0; r < 2; ++r)
    for (size_t i = 0; i < a.values[r].size(); ++i) EXPECT_NEAR(a.values[r][i], b.values[r][i], 1e-15);
  EXPECT_TRUE(given.step_with_norm(std::numeric_limits<double>::infinity(), ctx).skipped);
}

}  // namespace
}  // namespace moeasr
