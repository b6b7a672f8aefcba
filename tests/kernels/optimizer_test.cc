// tests/kernels/optimizer_test.cc — Adam against PyTorch's formula evaluated in long double for three
// steps (with and without L2 weight decay, gradients small enough for eps to matter), the first-step
// closed form, zero gradients, float vs double and thread counts; global gradient norm exact on
// integer-valued buffers (across block boundaries), and clipping as torch.nn.utils.clip_grad_norm_.
#include "kernels/cpu/optimizer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

struct AdamHyper {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
};

// torch.optim.Adam (single tensor), in long double.
void adam_reference(std::vector<long double>* p, std::vector<long double>* m, std::vector<long double>* v,
                    const std::vector<double>& grad, const AdamHyper& h, int64_t step) {
  const long double b1 = h.beta1, b2 = h.beta2;
  const long double bc1 = 1.0L - std::pow(b1, static_cast<long double>(step));
  const long double bc2 = 1.0L - std::pow(b2, static_cast<long double>(step));
  for (size_t i = 0; i < p->size(); ++i) {
    long double g = grad[i] + static_cast<long double>(h.weight_decay) * (*p)[i];
    (*m)[i] = b1 * (*m)[i] + (1.0L - b1) * g;
    (*v)[i] = b2 * (*v)[i] + (1.0L - b2) * g * g;
    long double denom = std::sqrt((*v)[i]) / std::sqrt(bc2) + static_cast<long double>(h.eps);
    (*p)[i] -= static_cast<long double>(h.lr) / bc1 * (*m)[i] / denom;
  }
}

template <class T>
void expect_adam_matches_reference(const AdamHyper& h, double tol) {
  RunContext ctx = testing::cpu_test_context();
  const std::vector<double> p0 = {0.5, -1.25, 2.0, 0.0, 3.0};
  // Per step; element 3 has gradients near eps, element 4 changes sign.
  const std::vector<std::vector<double>> grads = {
      {0.1, -2.0, 0.003, 1e-8, 0.7}, {0.2, -1.5, -0.004, 3e-9, -0.9}, {-0.05, 0.5, 0.002, -2e-8, 0.4}};
  std::vector<T> p(p0.begin(), p0.end()), m(p0.size(), T(0)), v(p0.size(), T(0));
  std::vector<long double> rp(p0.begin(), p0.end()), rm(p0.size(), 0.0L), rv(p0.size(), 0.0L);
  for (int64_t step = 1; step <= 3; ++step) {
    const std::vector<double>& g = grads[step - 1];
    std::vector<T> gt(g.begin(), g.end());
    adam_update(p.data(), m.data(), v.data(), gt.data(), h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, step,
                static_cast<int64_t>(p.size()), ctx);
    std::vector<double> g_as_t(gt.begin(), gt.end());  // the reference sees the same (rounded) gradient
    adam_reference(&rp, &rm, &rv, g_as_t, h, step);
    for (size_t i = 0; i < p.size(); ++i) {
      EXPECT_NEAR(static_cast<double>(p[i]), static_cast<double>(rp[i]), tol)
          << "step " << step << " i " << i;
      EXPECT_NEAR(static_cast<double>(m[i]), static_cast<double>(rm[i]), tol)
          << "step " << step << " i " << i;
      EXPECT_NEAR(static_cast<double>(v[i]), static_cast<double>(rv[i]), tol)
          << "step " << step << " i " << i;
      EXPECT_NE(static_cast<double>(p[i]), p0[i]) << "every parameter moves";
    }
  }
}

TEST(Adam, ThreeStepsMatchPytorchFormula) {
  AdamHyper h;
  h.lr = 0.01;
  expect_adam_matches_reference<double>(h, 1e-14);
  expect_adam_matches_reference<float>(h, 2e-6);
}

TEST(Adam, ThreeStepsWithL2WeightDecay) {
  AdamHyper h;
  h.lr = 0.01;
  h.weight_decay = 0.1;
  expect_adam_matches_reference<double>(h, 1e-14);
  expect_adam_matches_reference<float>(h, 2e-6);
  // Weight decay enters the gradient (Adam), not the parameter (AdamW): with g = 0 the first step moves
  // p by -lr * (wd p) / (|wd p| + eps), i.e. about lr towards 0.
  RunContext ctx = testing::cpu_test_context();
  double p = 2.0, m = 0.0, v = 0.0, g = 0.0;
  adam_update(&p, &m, &v, &g, 0.01, 0.9, 0.999, 1e-8, 0.1, 1, 1, ctx);
  EXPECT_NEAR(p, 2.0 - 0.01 * 0.2 / (0.2 + 1e-8), 1e-15);
}

TEST(Adam, FirstStepClosedForm) {
  // m1 = (1 - b1) g, v1 = (1 - b2) g^2: after bias correction p1 = p0 - lr * g / (|g| + eps).
  RunContext ctx = testing::cpu_test_context();
  std::vector<double> p = {1.0, 1.0, 1.0}, m(3, 0.0), v(3, 0.0), g = {0.5, -3.0, 2e-8};
  adam_update(p.data(), m.data(), v.data(), g.data(), 1e-3, 0.9, 0.999, 1e-8, 0.0, 1, 3, ctx);
  for (int i = 0; i < 3; ++i) {
    EXPECT_NEAR(p[i], 1.0 - 1e-3 * g[i] / (std::fabs(g[i]) + 1e-8), 1e-15) << i;
    EXPECT_NEAR(m[i], 0.1 * g[i], 1e-16 * std::fabs(g[i]) * 10) << i;
    EXPECT_NEAR(v[i], 0.001 * g[i] * g[i], 1e-15 * g[i] * g[i]) << i;
  }
}

TEST(Adam, ZeroGradientKeepsParametersWithoutWeightDecay) {
  RunContext ctx = testing::cpu_test_context();
  std::vector<float> p = {0.5f, -1.0f, 3.25f}, p0 = p, m(3, 0.0f), v(3, 0.0f), g(3, 0.0f);
  for (int64_t step = 1; step <= 3; ++step) {
    adam_update(p.data(), m.data(), v.data(), g.data(), 1e-3, 0.9, 0.999, 1e-8, 0.0, step, 3, ctx);
  }
  EXPECT_EQ(p, p0);
  EXPECT_EQ(m, std::vector<float>(3, 0.0f));
  EXPECT_EQ(v, std::vector<float>(3, 0.0f));
}

TEST(Adam, SameBitsForAnyThreadCountAndReferencePath) {
  const int64_t n = 5003;  // 10 n above the parallel threshold
  auto p0 = testing::random_floats(n, 1), g0 = testing::random_floats(n, 2);
  auto run = [&](bool reference, int threads) {
    RunContext ctx = testing::cpu_test_context(reference, threads);
    std::vector<float> p = p0, m(n, 0.0f), v(n, 0.0f), g = g0;
    for (int64_t step = 1; step <= 2; ++step) {
      adam_update(p.data(), m.data(), v.data(), g.data(), 1e-3, 0.9, 0.999, 1e-8, 0.01, step, n, ctx);
    }
    p.insert(p.end(), m.begin(), m.end());
    p.insert(p.end(), v.begin(), v.end());
    return p;
  };
  auto ref = run(true, 2);
  EXPECT_NE(std::vector<float>(ref.begin(), ref.begin() + n), p0);
  EXPECT_EQ(run(false, 1), ref);
  EXPECT_EQ(run(false, 2), ref);
  EXPECT_EQ(run(false, 3), ref);
}

template <class T>
void expect_integer_norms_exact(bool reference) {
  RunContext ctx = testing::cpu_test_context(reference);
  std::vector<T> a = {3, 4}, b = {12};
  std::vector<GradBuffer<T>> buffers = {{a.data(), 2}, {nullptr, 0}, {b.data(), 1}};
  EXPECT_EQ(global_grad_norm(buffers.data(), 3, ctx), 13.0);
  EXPECT_EQ(global_grad_norm(buffers.data(), 0, ctx), 0.0);
  // Buffers spanning several blocks: sum of squares is an exact integer.
  const int64_t na = 2 * kGradNormBlock + 12345, nb = kGradNormBlock + 1;
  std::vector<T> big_a(na), big_b(nb, T(2));
  int64_t want = 4 * nb;
  for (int64_t i = 0; i < na; ++i) {
    big_a[i] = static_cast<T>(i % 7 - 3);
    want += (i % 7 - 3) * (i % 7 - 3);
  }
  std::vector<GradBuffer<T>> big = {{big_a.data(), na}, {a.data(), 2}, {big_b.data(), nb}};
  EXPECT_EQ(global_grad_norm(big.data(), 3, ctx), std::sqrt(static_cast<double>(want + 25)));
}

TEST(GlobalGradNorm, ExactOnIntegerValuedBuffers) {
  for (bool reference : {false, true}) {
    expect_integer_norms_exact<float>(reference);
    expect_integer_norms_exact<double>(reference);
  }
}

TEST(GlobalGradNorm, ThreadCountIndependentAndCloseToReference) {
  auto a = testing::random_floats(3 * kGradNormBlock + 7, 3), b = testing::random_floats(1001, 4);
  std::vector<GradBuffer<float>> buffers = {{a.data(), static_cast<int64_t>(a.size())},
                                            {b.data(), static_cast<int64_t>(b.size())}};
  auto norm = [&](bool reference, int threads) {
    RunContext ctx = testing::cpu_test_context(reference, threads);
    return global_grad_norm(buffers.data(), 2, ctx);
  };
  double one = norm(false, 1);
  EXPECT_EQ(norm(false, 2), one);
  EXPECT_EQ(norm(false, 3), one);
  EXPECT_NEAR(norm(true, 2), one, 1e-13 * one);
  EXPECT_GT(one, 100.0);
}

TEST(GlobalGradNorm, NonFiniteGradientsGiveNonFiniteNorm) {
  RunContext ctx = testing::cpu_test_context();
  std::vector<double> a = {1.0, std::numeric_limits<double>::infinity()};
  std::vector<double> b = {std::numeric_limits<double>::quiet_NaN(), 1.0};
  GradBuffer<double> ba{a.data(), 2}, bb{b.data(), 2};
  EXPECT_EQ(global_grad_norm(&ba, 1, ctx), std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::isnan(global_grad_norm(&bb, 1, ctx)));
}

template <class T>
void expect_clipping(bool reference) {
  RunContext ctx = testing::cpu_test_context(reference);
  const std::vector<T> a0 = {3, -4}, b0 = {12};
  {
    // Above max_norm: every gradient scaled by max_norm / (norm + 1e-6); the new norm is max_norm.
    std::vector<T> a = a0, b = b0;
    std::vector<GradBuffer<T>> buffers = {{a.data(), 2}, {b.data(), 1}};
    EXPECT_EQ(clip_grad_norm(buffers.data(), 6.5, 2, ctx), 13.0);
    const T coef = static_cast<T>(6.5 / (13.0 + 1e-6));
    EXPECT_EQ(a[0], a0[0] * coef);
    EXPECT_EQ(a[1], a0[1] * coef);
    EXPECT_EQ(b[0], b0[0] * coef);
    EXPECT_NEAR(global_grad_norm(buffers.data(), 2, ctx), 6.5, 1e-6);
  }
  {
    // At exactly max_norm PyTorch still scales, by 13 / (13 + 1e-6).
    std::vector<T> a = a0, b = b0;
    std::vector<GradBuffer<T>> buffers = {{a.data(), 2}, {b.data(), 1}};
    clip_grad_norm(buffers.data(), 13.0, 2, ctx);
    EXPECT_EQ(b[0], b0[0] * static_cast<T>(13.0 / (13.0 + 1e-6)));
  }
  {
    // Below max_norm: untouched.
    std::vector<T> a = a0, b = b0;
    std::vector<GradBuffer<T>> buffers = {{a.data(), 2}, {b.data(), 1}};
    EXPECT_EQ(clip_grad_norm(buffers.data(), 20.0, 2, ctx), 13.0);
    EXPECT_EQ(a, a0);
    EXPECT_EQ(b, b0);
  }
}

TEST(ClipGradNorm, ScalesToMaxNormOnlyAboveIt) {
  for (bool reference : {false, true}) {
    expect_clipping<float>(reference);
    expect_clipping<double>(reference);
  }
}

TEST(ClipGradNorm, LargeBuffersScaledInParallel) {
  auto a0 = testing::random_doubles(2 * kGradNormBlock + 3, 5);
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    auto a = a0;
    GradBuffer<double> buffer{a.data(), static_cast<int64_t>(a.size())};
    double norm = clip_grad_norm(&buffer, 1.0, 1, ctx);
    const double coef = 1.0 / (norm + 1e-6);
    for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], a0[i] * coef) << i;
    EXPECT_NEAR(global_grad_norm(&buffer, 1, ctx), 1.0, 1e-6);
  }
}

TEST(ClipGradNorm, NonFiniteNormReturnedAndGradientsLeftAlone) {
  RunContext ctx = testing::cpu_test_context();
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> a = {1.0, inf, 5.0};
  GradBuffer<double> buffer{a.data(), 3};
  EXPECT_EQ(clip_grad_norm(&buffer, 1.0, 1, ctx), inf);
  EXPECT_EQ(a, (std::vector<double>{1.0, inf, 5.0}));
  std::vector<double> b = {2.0, std::numeric_limits<double>::quiet_NaN()};
  GradBuffer<double> nan_buffer{b.data(), 2};
  EXPECT_TRUE(std::isnan(clip_grad_norm(&nan_buffer, 1.0, 1, ctx)));
  EXPECT_EQ(b[0], 2.0);
  EXPECT_TRUE(std::isnan(b[1]));
}

}  // namespace
}  // namespace moeasr
