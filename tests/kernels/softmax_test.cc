// tests/kernels/softmax_test.cc — softmax / log_softmax exact answers (uniform rows, masked entries,
// fully masked rows, a masked row equals the softmax of its kept entries bit for bit), stability on
// large logits, head broadcast vs an expanded mask, threaded vs reference loops (bitwise), and float
// vs double agreement on random data.
#include "kernels/cpu/softmax.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::random_doubles;

TEST(Softmax, UniformRowIsExact) {
  RunContext ctx = testing::cpu_test_context();
  std::vector<float> x = {3, 3, 3, 3, -1, -1}, y(6);
  softmax_forward(y.data(), x.data(), nullptr, 1, 4, ctx);
  softmax_forward(y.data() + 4, x.data() + 4, nullptr, 1, 2, ctx);
  EXPECT_EQ(y, (std::vector<float>{0.25f, 0.25f, 0.25f, 0.25f, 0.5f, 0.5f}));
  std::vector<double> xd = {0, 0}, yd(2);
  log_softmax_forward(yd.data(), xd.data(), nullptr, 1, 2, ctx);
  EXPECT_EQ(yd[0], -std::log(2.0));
  EXPECT_EQ(yd[1], -std::log(2.0));
}

TEST(Softmax, KnownRatios) {
  RunContext ctx = testing::cpu_test_context();
  // exp(x) proportional to 1 : 2 : 5
  std::vector<double> x = {0.0, std::log(2.0), std::log(5.0)}, y(3), ly(3);
  softmax_forward(y.data(), x.data(), nullptr, 1, 3, ctx);
  log_softmax_forward(ly.data(), x.data(), nullptr, 1, 3, ctx);
  const double want[3] = {0.125, 0.25, 0.625};
  for (int j = 0; j < 3; ++j) {
    EXPECT_NEAR(y[j], want[j], 1e-15);
    EXPECT_NEAR(ly[j], std::log(want[j]), 1e-15);
  }
}

TEST(Softmax, MaskedEntriesAreZeroAndFullyMaskedRowsAllZero) {
  RunContext ctx = testing::cpu_test_context();
  std::vector<float> x = {1, 100, 1, 5, 5, 5, 2, 2, 2};
  std::vector<uint8_t> mask = {1, 0, 1, 0, 0, 0, 1, 1, 0};
  std::vector<float> y(9, -1.0f), ly(9, -1.0f);
  softmax_forward(y.data(), x.data(), mask.data(), 3, 3, ctx);
  log_softmax_forward(ly.data(), x.data(), mask.data(), 3, 3, ctx);
  EXPECT_EQ(y, (std::vector<float>{0.5f, 0, 0.5f, 0, 0, 0, 0.5f, 0.5f, 0}));
  const float half = static_cast<float>(-std::log(2.0));
  EXPECT_EQ(ly, (std::vector<float>{half, 0, half, 0, 0, 0, half, half, 0}));
}

TEST(Softmax, MaskedRowEqualsSoftmaxOfKeptEntriesBitwise) {
  RunContext ctx = testing::cpu_test_context();
  const int64_t cols = 11;
  auto x = random_doubles(cols, 5, -3.0, 3.0);
  std::vector<uint8_t> mask = {1, 0, 0, 1, 1, 0, 1, 1, 0, 0, 1};
  std::vector<double> kept;
  for (int64_t j = 0; j < cols; ++j)
    if (mask[j]) kept.push_back(x[j]);
  const int64_t k = static_cast<int64_t>(kept.size());
  for (bool log : {false, true}) {
    std::vector<double> y(cols), yk(k);
    if (log) {
      log_softmax_forward(y.data(), x.data(), mask.data(), 1, cols, ctx);
      log_softmax_forward(yk.data(), kept.data(), nullptr, 1, k, ctx);
    } else {
      softmax_forward(y.data(), x.data(), mask.data(), 1, cols, ctx);
      softmax_forward(yk.data(), kept.data(), nullptr, 1, k, ctx);
    }
    int64_t p = 0;
    for (int64_t j = 0; j < cols; ++j)
      EXPECT_EQ(y[j], mask[j] ? yk[p++] : 0.0) << "log=" << log << " j=" << j;
  }
}

TEST(Softmax, LargeLogitsAreStable) {
  RunContext ctx = testing::cpu_test_context();
  std::vector<float> x = {1000.0f, 1001.0f, -1000.0f}, y(3), ly(3);
  softmax_forward(y.data(), x.data(), nullptr, 1, 3, ctx);
  log_softmax_forward(ly.data(), x.data(), nullptr, 1, 3, ctx);
  const double e = std::exp(1.0);
  EXPECT_NEAR(y[0], 1.0 / (1.0 + e), 1e-7);
  EXPECT_NEAR(y[1], e / (1.0 + e), 1e-7);
  EXPECT_EQ(y[2], 0.0f);
  EXPECT_NEAR(ly[0], -std::log1p(e), 1e-6);
  EXPECT_NEAR(ly[1], 1.0 - std::log1p(e), 1e-6);
  EXPECT_NEAR(ly[2], -2000.0 - std::log1p(e), 1e-3);
}

TEST(Softmax, AttentionBroadcastEqualsExpandedMask) {
  RunContext ctx = testing::cpu_test_context();
  const int64_t b = 2, h = 3, tq = 5, tk = 7;
  auto x = random_doubles(b * h * tq * tk, 7, -3.0, 3.0);
  auto u = random_doubles(b * tq * tk, 8, 0.0, 1.0);
  std::vector<uint8_t> mask(b * tq * tk), expanded(b * h * tq * tk);
  for (size_t i = 0; i < mask.size(); ++i) mask[i] = u[i] < 0.4 ? 0 : 1;
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t hi = 0; hi < h; ++hi)
      for (int64_t e = 0; e < tq * tk; ++e) expanded[(bi * h + hi) * tq * tk + e] = mask[bi * tq * tk + e];
  std::vector<double> y(x.size()), want(x.size());
  attention_softmax_forward(y.data(), x.data(), mask.data(), b, h, tq, tk, ctx);
  softmax_forward(want.data(), x.data(), expanded.data(), b * h * tq, tk, ctx);
  EXPECT_EQ(y, want);
}

// rows * cols above kCpuParallelMinWork, so the threaded path really runs on 2 threads.
TEST(Softmax, ThreadedMatchesReferenceBitwise) {
  const int64_t rows = 301, cols = 257;
  auto x = random_doubles(rows * cols, 9, -4.0, 4.0), dy = random_doubles(rows * cols, 10);
  auto u = random_doubles(rows * cols, 11, 0.0, 1.0);
  std::vector<uint8_t> mask(rows * cols);
  for (size_t i = 0; i < mask.size(); ++i) mask[i] = u[i] < 0.2 ? 0 : 1;
  std::vector<double> out[2][4];
  for (int reference = 0; reference < 2; ++reference) {
    RunContext ctx = testing::cpu_test_context(reference == 1);
    auto& o = out[reference];
    for (auto& v : o) v.resize(rows * cols);
    softmax_forward(o[0].data(), x.data(), mask.data(), rows, cols, ctx);
    softmax_backward(o[1].data(), dy.data(), o[0].data(), rows, cols, ctx);
    log_softmax_forward(o[2].data(), x.data(), mask.data(), rows, cols, ctx);
    log_softmax_backward(o[3].data(), dy.data(), o[2].data(), mask.data(), rows, cols, ctx);
  }
  for (int k = 0; k < 4; ++k) EXPECT_EQ(out[0][k], out[1][k]) << "output " << k;
}

TEST(Softmax, FloatMatchesDouble) {
  RunContext ctx = testing::cpu_test_context();
  const int64_t rows = 37, cols = 129;
  auto xd = random_doubles(rows * cols, 12, -5.0, 5.0), dyd = random_doubles(rows * cols, 13);
  auto u = random_doubles(rows * cols, 14, 0.0, 1.0);
  std::vector<uint8_t> mask(rows * cols);
  for (size_t i = 0; i < mask.size(); ++i) mask[i] = u[i] < 0.3 ? 0 : 1;
  for (int64_t j = 0; j < cols; ++j) mask[5 * cols + j] = 0;  // one fully masked row
  std::vector<float> xf(xd.begin(), xd.end()), dyf(dyd.begin(), dyd.end());
  std::vector<double> yd(rows * cols), dxd(rows * cols), lyd(rows * cols), ldxd(rows * cols);
  std::vector<float> yf(rows * cols), dxf(rows * cols), lyf(rows * cols), ldxf(rows * cols);
  // Double runs on the float-rounded inputs so only the arithmetic differs.
  std::vector<double> xr(xf.begin(), xf.end()), dyr(dyf.begin(), dyf.end());
  softmax_forward(yd.data(), xr.data(), mask.data(), rows, cols, ctx);
  softmax_backward(dxd.data(), dyr.data(), yd.data(), rows, cols, ctx);
  log_softmax_forward(lyd.data(), xr.data(), mask.data(), rows, cols, ctx);
  log_softmax_backward(ldxd.data(), dyr.data(), lyd.data(), mask.data(), rows, cols, ctx);
  softmax_forward(yf.data(), xf.data(), mask.data(), rows, cols, ctx);
  softmax_backward(dxf.data(), dyf.data(), yf.data(), rows, cols, ctx);
  log_softmax_forward(lyf.data(), xf.data(), mask.data(), rows, cols, ctx);
  log_softmax_backward(ldxf.data(), dyf.data(), lyf.data(), mask.data(), rows, cols, ctx);
  double max_y = 0;
  for (int64_t i = 0; i < rows * cols; ++i) {
    ASSERT_NEAR(yf[i], yd[i], 1e-6) << i;
    ASSERT_NEAR(dxf[i], dxd[i], 1e-6) << i;
    ASSERT_NEAR(lyf[i], lyd[i], 4e-6) << i;
    ASSERT_NEAR(ldxf[i], ldxd[i], 2e-6) << i;
    max_y = std::max(max_y, yd[i]);
  }
  EXPECT_GT(max_y, 0.1);  // not vacuous
}

}  // namespace
}  // namespace moeasr
