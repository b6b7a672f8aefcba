// tests/kernels/elementwise_test.cc — exact answers of the elementwise ops and GLU on hand-computed
// cases (integer data makes add/scale/residual exact in float), null gradient outputs, in-place
// aliasing, sigmoid/SiLU at large |x|, float against double on random data (<= 1e-5 relative), and
// the threaded path against the reference loop on vectors long enough to use several threads.
#include "kernels/cpu/elementwise.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::random_doubles;

std::vector<float> to_float(const std::vector<double>& v) {
  return std::vector<float>(v.begin(), v.end());
}

std::vector<double> to_double(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// |f - d| <= rtol * max(|d|, 1) element by element, and the reference is not all zeros.
void expect_float_matches_double(const std::vector<float>& f, const std::vector<double>& d, const char* what,
                                 double rtol = 1e-5) {
  ASSERT_EQ(f.size(), d.size()) << what;
  double max_abs = 0.0;
  int reported = 0;
  for (size_t i = 0; i < d.size(); ++i) {
    max_abs = std::max(max_abs, std::fabs(d[i]));
    double tol = rtol * std::max(std::fabs(d[i]), 1.0);
    if (std::fabs(static_cast<double>(f[i]) - d[i]) > tol && reported++ < 10) {
      ADD_FAILURE() << what << "[" << i << "]: float " << f[i] << " vs double " << d[i];
    }
  }
  if (!d.empty()) {
    EXPECT_GT(max_abs, 1e-3) << what << ": all ~0, the comparison proves nothing";
  }
}

TEST(Elementwise, AddScaleResidualExactOnIntegers) {
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    std::vector<float> a = {1, -2, 3, 40, 0}, b = {5, 6, -7, 8, 9}, out(5), da(5, -1.0f), db(5, -1.0f);
    add_forward(out.data(), a.data(), b.data(), 5, ctx);
    EXPECT_EQ(out, (std::vector<float>{6, 4, -4, 48, 9}));
    add_backward(da.data(), db.data(), b.data(), 5, ctx);
    EXPECT_EQ(da, b);
    EXPECT_EQ(db, b);
    scale_forward(out.data(), a.data(), 0.5f, 5, ctx);
    EXPECT_EQ(out, (std::vector<float>{0.5f, -1, 1.5f, 20, 0}));
    scale_backward(da.data(), a.data(), -2.0f, 5, ctx);
    EXPECT_EQ(da, (std::vector<float>{-2, 4, -6, -80, 0}));
    residual_add_forward(out.data(), a.data(), b.data(), 0.5f, 5, ctx);
    EXPECT_EQ(out, (std::vector<float>{3.5f, 1, -0.5f, 44, 4.5f}));
    residual_add_backward(da.data(), db.data(), b.data(), 0.5f, 5, ctx);
    EXPECT_EQ(da, b);
    EXPECT_EQ(db, (std::vector<float>{2.5f, 3, -3.5f, 4, 4.5f}));
  }
}

TEST(Elementwise, NullGradientOutputsAreSkipped) {
  RunContext ctx = testing::cpu_test_context();
  std::vector<double> dout = {1, 2, 3}, da(3, 0.0), dy(3, 0.0);
  add_backward(da.data(), static_cast<double*>(nullptr), dout.data(), 3, ctx);
  EXPECT_EQ(da, dout);
  add_backward(static_cast<double*>(nullptr), da.data(), dout.data(), 3, ctx);
  residual_add_backward(static_cast<double*>(nullptr), dy.data(), dout.data(), 0.5, 3, ctx);
  EXPECT_EQ(dy, (std::vector<double>{0.5, 1, 1.5}));
  residual_add_backward(da.data(), static_cast<double*>(nullptr), dout.data(), 0.5, 3, ctx);
  EXPECT_EQ(da, dout);
}

TEST(Elementwise, AddScaledInplaceAccumulates) {
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    std::vector<float> acc = {1, 2, 3, 4}, x = {2, -4, 6, 0};
    add_scaled_inplace(acc.data(), x.data(), 0.5f, 4, ctx);
    EXPECT_EQ(acc, (std::vector<float>{2, 0, 6, 4}));
    add_scaled_inplace(acc.data(), x.data(), 1.0f, 4, ctx);  // a second path adds on top
    EXPECT_EQ(acc, (std::vector<float>{4, -4, 12, 4}));
    add_scaled_inplace(acc.data(), x.data(), 1.0f, 0, ctx);  // n = 0 leaves it alone
    EXPECT_EQ(acc, (std::vector<float>{4, -4, 12, 4}));
  }
}

TEST(Elementwise, OutputMayAliasInput) {
  RunContext ctx = testing::cpu_test_context();
  std::vector<double> x = {1, -2, 3}, y = {2, 2, 2};
  residual_add_forward(x.data(), x.data(), y.data(), 0.5, 3, ctx);  // x += 0.5 * y
  EXPECT_EQ(x, (std::vector<double>{2, -1, 4}));
  relu_forward(x.data(), x.data(), 3, ctx);
  EXPECT_EQ(x, (std::vector<double>{2, 0, 4}));
}

TEST(Elementwise, ActivationKnownValues) {
  RunContext ctx = testing::cpu_test_context();
  std::vector<double> x = {-2, 0, 1, std::log(3.0)}, out(4), dx(4), ones(4, 1.0);
  relu_forward(out.data(), x.data(), 4, ctx);
  EXPECT_EQ(out, (std::vector<double>{0, 0, 1, std::log(3.0)}));
  relu_backward(dx.data(), ones.data(), x.data(), 4, ctx);
  EXPECT_EQ(dx, (std::vector<double>{0, 0, 1, 1}));  // 0 at the kink, as PyTorch

  sigmoid_forward(out.data(), x.data(), 4, ctx);
  EXPECT_DOUBLE_EQ(out[0], 1.0 / (1.0 + std::exp(2.0)));
  EXPECT_EQ(out[1], 0.5);
  EXPECT_DOUBLE_EQ(out[2], 0.7310585786300049);  // torch.sigmoid(torch.tensor(1.0, dtype=float64))
  EXPECT_DOUBLE_EQ(out[3], 0.75);                // 1 / (1 + 1/3)
  sigmoid_backward(dx.data(), ones.data(), out.data(), 4, ctx);
  EXPECT_EQ(dx[1], 0.25);
  EXPECT_DOUBLE_EQ(dx[3], 0.1875);

  silu_forward(out.data(), x.data(), 4, ctx);
  EXPECT_DOUBLE_EQ(out[0], -2.0 / (1.0 + std::exp(2.0)));
  EXPECT_EQ(out[1], 0.0);
  EXPECT_DOUBLE_EQ(out[2], 0.7310585786300049);
  EXPECT_DOUBLE_EQ(out[3], 0.75 * std::log(3.0));
  silu_backward(dx.data(), ones.data(), x.data(), 4, ctx);
  EXPECT_EQ(dx[1], 0.5);                                    // s(0) * (1 + 0)
  EXPECT_DOUBLE_EQ(dx[3], 0.75 * (1 + std::log(3.0) / 4));  // s * (1 + x * (1 - s))
}

TEST(Elementwise, SigmoidAndSiluStayFiniteAtLargeMagnitude) {
  RunContext ctx = testing::cpu_test_context();
  std::vector<float> x = {-1000.0f, -100.0f, 100.0f, 1000.0f}, out(4), dx(4), ones(4, 1.0f);
  sigmoid_forward(out.data(), x.data(), 4, ctx);
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_GE(out[1], 0.0f);
  EXPECT_LT(out[1], 1e-40f);
  EXPECT_EQ(out[2], 1.0f);
  EXPECT_EQ(out[3], 1.0f);
  silu_forward(out.data(), x.data(), 4, ctx);
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_EQ(out[2], 100.0f);
  EXPECT_EQ(out[3], 1000.0f);
  silu_backward(dx.data(), ones.data(), x.data(), 4, ctx);
  for (float g : dx) EXPECT_TRUE(std::isfinite(g));
  EXPECT_EQ(dx[0], 0.0f);
  EXPECT_EQ(dx[3], 1.0f);
}

// The float sigmoid's exp is its own vectorizable expf (elementwise.cc): against the sigmoid taken in
// double on a dense sweep of x, within 4 float ulp wherever the result is a normal float, and 0 or a
// value below 2e-38 where e^x underflows.
TEST(Elementwise, FloatSigmoidWithinFourUlpOfDouble) {
  RunContext ctx = testing::cpu_test_context();
  std::vector<float> x;
  for (float v = -95.0f; v <= 20.0f; v += 0.001953125f) x.push_back(v);  // 2^-9 steps
  std::vector<float> out(x.size());
  sigmoid_forward(out.data(), x.data(), static_cast<int64_t>(x.size()), ctx);
  double worst_ulps = 0.0;
  float worst_x = 0.0f;
  for (size_t i = 0; i < x.size(); ++i) {
    const double want = 1.0 / (1.0 + std::exp(-static_cast<double>(x[i])));
    if (want < 1.2e-38) {
      EXPECT_GE(out[i], 0.0f) << "x " << x[i];
      EXPECT_LT(out[i], 2e-38f) << "x " << x[i];
      continue;
    }
    const double ulp = std::nextafter(static_cast<float>(want), 2.0f) - static_cast<float>(want);
    const double ulps = std::abs(out[i] - want) / ulp;
    if (ulps > worst_ulps) worst_ulps = ulps, worst_x = x[i];
  }
  EXPECT_LE(worst_ulps, 4.0) << "at x " << worst_x;
  EXPECT_GT(x.size(), 50000u);
  // NaN stays NaN (sigmoid and SiLU), infinities saturate.
  std::vector<float> odd = {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::infinity()};
  std::vector<float> odd_out(3);
  sigmoid_forward(odd_out.data(), odd.data(), 3, ctx);
  EXPECT_TRUE(std::isnan(odd_out[0]));
  EXPECT_EQ(odd_out[1], 0.0f);
  EXPECT_EQ(odd_out[2], 1.0f);
  silu_forward(odd_out.data(), odd.data(), 1, ctx);
  EXPECT_TRUE(std::isnan(odd_out[0]));
}

TEST(Elementwise, GluKnownValues) {
  // torch.nn.functional.glu(torch.tensor([[2., 4., 0., ln 3], [1., -6., 1., 0.]]), dim=-1)
  //   = [[2 * 0.5, 4 * 0.75], [1 * s(1), -6 * 0.5]]
  RunContext ctx = testing::cpu_test_context();
  std::vector<double> x = {2, 4, 0, std::log(3.0), 1, -6, 1, 0}, out(4), dx(8);
  glu_forward(out.data(), x.data(), 2, 2, ctx);
  EXPECT_EQ(out[0], 1.0);
  EXPECT_DOUBLE_EQ(out[1], 3.0);
  EXPECT_DOUBLE_EQ(out[2], 0.7310585786300049);
  EXPECT_EQ(out[3], -3.0);
  std::vector<double> dout = {1, 1, 2, 1};
  glu_backward(dx.data(), dout.data(), x.data(), 2, 2, ctx);
  // da = dout * s(b); db = dout * a * s(b) * (1 - s(b))
  EXPECT_EQ(dx[0], 0.5);
  EXPECT_DOUBLE_EQ(dx[1], 0.75);
  EXPECT_EQ(dx[2], 0.5);                // 1 * 2 * 0.5 * 0.5
  EXPECT_DOUBLE_EQ(dx[3], 4 * 0.1875);  // 1 * 4 * 0.75 * 0.25
  EXPECT_DOUBLE_EQ(dx[4], 2 * 0.7310585786300049);
  EXPECT_EQ(dx[5], 0.5);
  EXPECT_DOUBLE_EQ(dx[6], 2 * 0.7310585786300049 * (1 - 0.7310585786300049));
  EXPECT_EQ(dx[7], -1.5);  // 1 * -6 * 0.25
}

TEST(Elementwise, FloatMatchesDoubleOnRandomData) {
  RunContext ctx = testing::cpu_test_context();
  const int64_t n = 1001, rows = 37, c = 13;
  auto xd = to_double(to_float(random_doubles(n, 5, -8.0, 8.0)));
  auto doutd = to_double(to_float(random_doubles(n, 6)));
  auto xf = to_float(xd), doutf = to_float(doutd);
  std::vector<double> od(n), gd(n);
  std::vector<float> of(n), gf(n);

  silu_forward(od.data(), xd.data(), n, ctx);
  silu_forward(of.data(), xf.data(), n, ctx);
  expect_float_matches_double(of, od, "silu");
  silu_backward(gd.data(), doutd.data(), xd.data(), n, ctx);
  silu_backward(gf.data(), doutf.data(), xf.data(), n, ctx);
  expect_float_matches_double(gf, gd, "dsilu");

  sigmoid_forward(od.data(), xd.data(), n, ctx);
  sigmoid_forward(of.data(), xf.data(), n, ctx);
  expect_float_matches_double(of, od, "sigmoid");
  sigmoid_backward(gd.data(), doutd.data(), od.data(), n, ctx);
  sigmoid_backward(gf.data(), doutf.data(), of.data(), n, ctx);
  expect_float_matches_double(gf, gd, "dsigmoid");

  auto gx_d = to_double(to_float(random_doubles(rows * 2 * c, 7, -5.0, 5.0)));
  auto gx_f = to_float(gx_d);
  std::vector<double> god(rows * c), gdx_d(rows * 2 * c);
  std::vector<float> gof(rows * c), gdx_f(rows * 2 * c);
  glu_forward(god.data(), gx_d.data(), rows, c, ctx);
  glu_forward(gof.data(), gx_f.data(), rows, c, ctx);
  expect_float_matches_double(gof, god, "glu");
  glu_backward(gdx_d.data(), doutd.data(), gx_d.data(), rows, c, ctx);
  glu_backward(gdx_f.data(), doutf.data(), gx_f.data(), rows, c, ctx);
  expect_float_matches_double(gdx_f, gdx_d, "dglu");
}

TEST(Elementwise, ThreadedMatchesReferenceBitForBit) {
  // Long enough that cpu_threads_for() hands out several threads.
  RunContext fast = testing::cpu_test_context(false, 2), ref = testing::cpu_test_context(true);
  const int64_t n = 100003, rows = 1000, c = 50;  // glu reads rows * 2c <= n
  auto x = to_float(random_doubles(n, 8, -6.0, 6.0)), y = to_float(random_doubles(n, 9));
  std::vector<float> a(n), b(n);
  auto both = [&](auto op, const char* what) {
    op(a.data(), fast);
    op(b.data(), ref);
    EXPECT_EQ(a, b) << what;
  };
  both([&](float* o, const RunContext& ctx) { silu_forward(o, x.data(), n, ctx); }, "silu");
  both([&](float* o, const RunContext& ctx) { silu_backward(o, y.data(), x.data(), n, ctx); }, "dsilu");
  both([&](float* o, const RunContext& ctx) { sigmoid_forward(o, x.data(), n, ctx); }, "sigmoid");
  both([&](float* o, const RunContext& ctx) { relu_backward(o, y.data(), x.data(), n, ctx); }, "drelu");
  both([&](float* o, const RunContext& ctx) { residual_add_forward(o, x.data(), y.data(), 0.5f, n, ctx); },
       "residual");
  both(
      [&](float* o, const RunContext& ctx) {
        std::copy(y.begin(), y.end(), o);
        add_scaled_inplace(o, x.data(), -0.3f, n, ctx);
      },
      "add_scaled_inplace");
  both([&](float* o, const RunContext& ctx) { glu_forward(o, x.data(), rows, c, ctx); }, "glu");
  both([&](float* o, const RunContext& ctx) { glu_backward(o, y.data(), x.data(), rows / 2, c, ctx); },
       "dglu");
}

}  // namespace
}  // namespace moeasr
