// tests/kernels/linear_gradcheck_test.cc — finite-difference gradients (double) of linear and
// batched matmul, including N = 0 and 1, odd sizes, no bias, and gradient accumulation (+=).
#include <gtest/gtest.h>

#include <vector>

#include "kernels/cpu/gemm.h"
#include "kernels/cpu/linear.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::random_doubles;

void check_linear(int64_t n, int64_t in, int64_t out, bool with_bias, bool reference) {
  RunContext ctx = testing::cpu_test_context(reference);
  auto x = random_doubles(n * in, 11);
  auto w = random_doubles(out * in, 12);
  auto b = random_doubles(out, 13);
  auto dy = random_doubles(n * out, 14);
  std::vector<double> y(n * out), dx(n * in), dw(out * in), db(out);
  const double* bias = with_bias ? b.data() : nullptr;
  auto loss = [&]() {
    linear_forward(y.data(), x.data(), w.data(), bias, n, in, out, ctx);
    return testing::weighted_sum(y, dy);
  };
  auto grads = [&]() {
    std::fill(dw.begin(), dw.end(), 0.0);
    std::fill(db.begin(), db.end(), 0.0);
    linear_forward(y.data(), x.data(), w.data(), bias, n, in, out, ctx);
    linear_backward(dx.data(), dw.data(), with_bias ? db.data() : nullptr, dy.data(), x.data(), w.data(), n,
                    in, out, ctx);
  };
  std::vector<testing::GradTarget> targets = {{"w", w.data(), dw.data(), out * in}};
  if (n > 0) targets.push_back({"x", x.data(), dx.data(), n * in});
  if (with_bias) targets.push_back({"b", b.data(), db.data(), out});
  if (n == 0) {
    // No rows: nothing flows, and the accumulated parameter gradients must stay exactly zero.
    grads();
    for (double g : dw) EXPECT_EQ(g, 0.0);
    for (double g : db) EXPECT_EQ(g, 0.0);
    return;
  }
  testing::expect_gradients_match(loss, grads, targets);
}

TEST(LinearGradcheck, OddSizesWithAndWithoutBias) {
  for (bool reference : {false, true}) {
    check_linear(5, 7, 3, true, reference);
    check_linear(5, 7, 3, false, reference);
    check_linear(1, 1, 1, true, reference);
    check_linear(1, 4, 9, true, reference);
  }
}

TEST(LinearGradcheck, EmptyBatch) {
  check_linear(0, 4, 3, true, false);
  check_linear(0, 4, 3, false, false);
}

TEST(LinearGradcheck, ParameterGradientsAccumulate) {
  RunContext ctx = testing::cpu_test_context();
  const int64_t n = 3, in = 4, out = 2;
  auto x = random_doubles(n * in, 1), w = random_doubles(out * in, 2), dy = random_doubles(n * out, 3);
  std::vector<double> dw(out * in, 0.0), db(out, 0.0), dx(n * in);
  linear_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), n, in, out, ctx);
  auto dw_once = dw;
  auto db_once = db;
  linear_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), n, in, out, ctx);
  for (size_t i = 0; i < dw.size(); ++i) EXPECT_DOUBLE_EQ(dw[i], 2 * dw_once[i]);
  for (size_t i = 0; i < db.size(); ++i) EXPECT_DOUBLE_EQ(db[i], 2 * db_once[i]);
}

TEST(BatchedMatmulGradcheck, BothTransposes) {
  RunContext ctx = testing::cpu_test_context();
  const int64_t g = 3, m = 4, n = 5, k = 3;
  for (Transpose tb : {Transpose::kNo, Transpose::kYes}) {
    auto a = random_doubles(g * m * k, 21), b = random_doubles(g * k * n, 22),
         dout = random_doubles(g * m * n, 23);
    std::vector<double> out(g * m * n), da(g * m * k), db(g * k * n);
    auto loss = [&]() {
      batched_matmul_forward(out.data(), a.data(), b.data(), tb, g, m, n, k, ctx);
      return testing::weighted_sum(out, dout);
    };
    auto grads = [&]() {
      batched_matmul_backward(da.data(), db.data(), dout.data(), a.data(), b.data(), tb, g, m, n, k, ctx);
    };
    testing::expect_gradients_match(
        loss, grads, {{"a", a.data(), da.data(), g * m * k}, {"b", b.data(), db.data(), g * k * n}});
  }
}

}  // namespace
}  // namespace moeasr
