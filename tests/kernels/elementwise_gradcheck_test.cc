// tests/kernels/elementwise_gradcheck_test.cc — finite-difference gradients (double) of add, scale,
// residual add, ReLU, SiLU, sigmoid and GLU, for lengths 0, 1 and odd sizes, on both the threaded and
// the reference path. ReLU inputs are kept at least 0.1 away from its kink at 0.
#include <gtest/gtest.h>

#include <functional>
#include <vector>

#include "kernels/cpu/elementwise.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::random_doubles;

const int64_t kLengths[] = {0, 1, 7, 13};

// Values in [0.1, 1) with a random sign: never within 0.1 of zero.
std::vector<double> away_from_zero(int64_t n, uint64_t seed) {
  auto magnitude = random_doubles(n, seed, 0.1, 1.0);
  auto sign = random_doubles(n, seed + 1000);
  for (int64_t i = 0; i < n; ++i) magnitude[i] *= sign[i] < 0 ? -1.0 : 1.0;
  return magnitude;
}

// forward(out, x) and backward(dx, dout, x, out) of a unary op on n elements.
using UnaryForward = std::function<void(double*, const double*, int64_t, const RunContext&)>;
using UnaryBackward =
    std::function<void(double*, const double*, const double*, const double*, int64_t, const RunContext&)>;

void check_unary(const UnaryForward& forward, const UnaryBackward& backward, std::vector<double> x,
                 bool reference) {
  RunContext ctx = testing::cpu_test_context(reference);
  int64_t n = static_cast<int64_t>(x.size());
  auto dout = random_doubles(n, 77);
  std::vector<double> out(n), dx(n);
  auto loss = [&]() {
    forward(out.data(), x.data(), n, ctx);
    return testing::weighted_sum(out, dout);
  };
  auto grads = [&]() {
    forward(out.data(), x.data(), n, ctx);
    backward(dx.data(), dout.data(), x.data(), out.data(), n, ctx);
  };
  if (n == 0) {
    grads();  // must not touch anything
    EXPECT_EQ(loss(), 0.0);
    return;
  }
  testing::expect_gradients_match(loss, grads, {{"x", x.data(), dx.data(), n}});
}

TEST(ElementwiseGradcheck, Relu) {
  for (bool reference : {false, true})
    for (int64_t n : kLengths) {
      check_unary([](double* out, const double* x, int64_t len,
                     const RunContext& ctx) { relu_forward(out, x, len, ctx); },
                  [](double* dx, const double* dout, const double* x, const double*, int64_t len,
                     const RunContext& ctx) { relu_backward(dx, dout, x, len, ctx); },
                  away_from_zero(n, 1 + n), reference);
    }
}

TEST(ElementwiseGradcheck, Silu) {
  for (bool reference : {false, true})
    for (int64_t n : kLengths) {
      check_unary([](double* out, const double* x, int64_t len,
                     const RunContext& ctx) { silu_forward(out, x, len, ctx); },
                  [](double* dx, const double* dout, const double* x, const double*, int64_t len,
                     const RunContext& ctx) { silu_backward(dx, dout, x, len, ctx); },
                  random_doubles(n, 2 + n, -6.0, 6.0), reference);
    }
}

TEST(ElementwiseGradcheck, SigmoidFromOutput) {
  for (bool reference : {false, true})
    for (int64_t n : kLengths) {
      check_unary([](double* out, const double* x, int64_t len,
                     const RunContext& ctx) { sigmoid_forward(out, x, len, ctx); },
                  [](double* dx, const double* dout, const double*, const double* out, int64_t len,
                     const RunContext& ctx) { sigmoid_backward(dx, dout, out, len, ctx); },
                  random_doubles(n, 3 + n, -6.0, 6.0), reference);
    }
}

TEST(ElementwiseGradcheck, Scale) {
  for (bool reference : {false, true})
    for (int64_t n : kLengths) {
      check_unary([](double* out, const double* x, int64_t len,
                     const RunContext& ctx) { scale_forward(out, x, -0.75, len, ctx); },
                  [](double* dx, const double* dout, const double*, const double*, int64_t len,
                     const RunContext& ctx) { scale_backward(dx, dout, -0.75, len, ctx); },
                  random_doubles(n, 4 + n), reference);
    }
}

// Binary ops: out = f(a, b); backward writes da, db from dout.
void check_binary(
    const std::function<void(double*, const double*, const double*, int64_t, const RunContext&)>& fwd,
    const std::function<void(double*, double*, const double*, int64_t, const RunContext&)>& bwd, int64_t n,
    bool reference) {
  RunContext ctx = testing::cpu_test_context(reference);
  auto a = random_doubles(n, 31 + n), b = random_doubles(n, 32 + n), dout = random_doubles(n, 33 + n);
  std::vector<double> out(n), da(n), db(n);
  auto loss = [&]() {
    fwd(out.data(), a.data(), b.data(), n, ctx);
    return testing::weighted_sum(out, dout);
  };
  auto grads = [&]() {
    fwd(out.data(), a.data(), b.data(), n, ctx);
    bwd(da.data(), db.data(), dout.data(), n, ctx);
  };
  if (n == 0) {
    grads();
    EXPECT_EQ(loss(), 0.0);
    return;
  }
  testing::expect_gradients_match(loss, grads,
                                  {{"a", a.data(), da.data(), n}, {"b", b.data(), db.data(), n}});
}

TEST(ElementwiseGradcheck, Add) {
  for (bool reference : {false, true})
    for (int64_t n : kLengths) {
      check_binary([](double* out, const double* a, const double* b, int64_t len,
                      const RunContext& ctx) { add_forward(out, a, b, len, ctx); },
                   [](double* da, double* db, const double* dout, int64_t len, const RunContext& ctx) {
                     add_backward(da, db, dout, len, ctx);
                   },
                   n, reference);
    }
}

TEST(ElementwiseGradcheck, ResidualAddHalfStep) {
  // The Conformer's macaron half step x + 0.5 * ffn(x), and an arbitrary alpha.
  for (double alpha : {0.5, -1.25})
    for (bool reference : {false, true})
      for (int64_t n : kLengths) {
        check_binary([alpha](double* out, const double* x, const double* y, int64_t len,
                             const RunContext& ctx) { residual_add_forward(out, x, y, alpha, len, ctx); },
                     [alpha](double* dx, double* dy, const double* dout, int64_t len, const RunContext& ctx) {
                       residual_add_backward(dx, dy, dout, alpha, len, ctx);
                     },
                     n, reference);
      }
}

void check_glu(int64_t n, int64_t c, bool reference) {
  RunContext ctx = testing::cpu_test_context(reference);
  auto x = random_doubles(n * 2 * c, 41 + n * 100 + c, -3.0, 3.0);
  auto dout = random_doubles(n * c, 42 + n * 100 + c);
  std::vector<double> out(n * c), dx(n * 2 * c);
  auto loss = [&]() {
    glu_forward(out.data(), x.data(), n, c, ctx);
    return testing::weighted_sum(out, dout);
  };
  auto grads = [&]() {
    glu_forward(out.data(), x.data(), n, c, ctx);
    glu_backward(dx.data(), dout.data(), x.data(), n, c, ctx);
  };
  if (n * c == 0) {
    grads();
    EXPECT_EQ(loss(), 0.0);
    return;
  }
  testing::expect_gradients_match(loss, grads, {{"x", x.data(), dx.data(), n * 2 * c}});
}

TEST(ElementwiseGradcheck, GluLastDim) {
  for (bool reference : {false, true}) {
    check_glu(0, 7, reference);
    check_glu(1, 1, reference);
    check_glu(1, 7, reference);
    check_glu(5, 13, reference);
    check_glu(3, 4, reference);
  }
}

}  // namespace
}  // namespace moeasr
