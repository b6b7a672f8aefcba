// tests/kernels/dropout_test.cc — Philox dropout: the documented keep rule element by element,
// reproducibility from the key, different keys give different masks, keep fraction ~ 1 - p on large
// n, exact scaling of kept values, p = 0 is the identity (in place too), float and double draw the
// same mask, threaded vs reference bitwise, and p outside [0, 1) aborts.
#include "kernels/cpu/dropout.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/philox.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::random_doubles;

PhiloxStream test_stream(uint64_t seed, uint64_t step, uint64_t stream) {
  RngKey key;
  key.seed = seed;
  key.purpose = RngPurpose::kDropout;
  key.step = step;
  key.stream = stream;
  return philox_stream(key);
}

std::vector<uint8_t> keep_mask(const PhiloxStream& stream, double p, int64_t n, bool reference = false) {
  std::vector<uint8_t> mask(n, 7);
  dropout_keep_mask(mask.data(), stream, p, n, testing::cpu_test_context(reference));
  return mask;
}

TEST(Dropout, KeepRuleIsUniformAtLeastP) {
  PhiloxStream stream = test_stream(1, 2, 3);
  const double p = 0.3;
  auto mask = keep_mask(stream, p, 1000);
  for (int64_t i = 0; i < 1000; ++i) {
    ASSERT_EQ(mask[i], philox_uniform(stream, static_cast<uint64_t>(i)) >= p ? 1 : 0) << i;
  }
}

TEST(Dropout, KeptValuesScaledExactlyDroppedZero) {
  RunContext ctx = testing::cpu_test_context();
  PhiloxStream stream = test_stream(1, 2, 3);
  const int64_t n = 999;
  const double p = 0.25;                     // scale 4/3
  auto x = random_doubles(n, 61, 0.5, 1.5);  // never 0, so y = 0 means dropped
  std::vector<double> y(n);
  dropout_forward(y.data(), x.data(), stream, p, n, ctx);
  auto mask = keep_mask(stream, p, n);
  const double scale = 1.0 / (1.0 - p);
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(y[i], mask[i] ? x[i] * scale : 0.0) << i;
    kept += mask[i];
  }
  EXPECT_GT(kept, 0);
  EXPECT_LT(kept, n);
}

TEST(Dropout, ReproducibleFromTheKeyAndKeysDiffer) {
  const int64_t n = 4096;
  const double p = 0.5;
  auto a = keep_mask(test_stream(1, 2, 3), p, n);
  auto b = keep_mask(test_stream(1, 2, 3), p, n);
  EXPECT_EQ(a, b);
  // Changing any field of the key gives a different, roughly independent mask (~50% disagreement).
  for (const PhiloxStream& other : {test_stream(2, 2, 3), test_stream(1, 3, 3), test_stream(1, 2, 4)}) {
    auto c = keep_mask(other, p, n);
    int64_t differ = 0;
    for (int64_t i = 0; i < n; ++i) differ += a[i] != c[i];
    EXPECT_GT(differ, n / 2 - n / 10);
    EXPECT_LT(differ, n / 2 + n / 10);
  }
  // Values too: two forwards with the same key are bitwise equal.
  RunContext ctx = testing::cpu_test_context();
  auto x = random_doubles(n, 62);
  std::vector<double> y1(n), y2(n);
  dropout_forward(y1.data(), x.data(), test_stream(5, 0, 0), 0.1, n, ctx);
  dropout_forward(y2.data(), x.data(), test_stream(5, 0, 0), 0.1, n, ctx);
  EXPECT_EQ(y1, y2);
}

TEST(Dropout, KeepFractionIsOneMinusP) {
  const int64_t n = 1 << 20;
  for (double p : {0.05, 0.1, 0.5, 0.9}) {
    auto mask = keep_mask(test_stream(9, 1, 1), p, n);
    int64_t kept = 0;
    for (uint8_t m : mask) kept += m;
    double fraction = static_cast<double>(kept) / n;
    double sigma = std::sqrt(p * (1 - p) / n);
    EXPECT_NEAR(fraction, 1.0 - p, 6 * sigma) << "p=" << p;
  }
}

TEST(Dropout, ZeroProbabilityIsIdentity) {
  RunContext ctx = testing::cpu_test_context();
  const int64_t n = 101;
  auto x = random_doubles(n, 63);
  std::vector<double> y(n), dx(n);
  dropout_forward(y.data(), x.data(), test_stream(1, 1, 1), 0.0, n, ctx);
  EXPECT_EQ(y, x);
  dropout_backward(dx.data(), x.data(), test_stream(1, 1, 1), 0.0, n, ctx);
  EXPECT_EQ(dx, x);
  std::vector<float> xf(x.begin(), x.end()), in_place = xf;
  dropout_forward(in_place.data(), in_place.data(), test_stream(1, 1, 1), 0.0, n, ctx);
  EXPECT_EQ(in_place, xf);
  auto mask = keep_mask(test_stream(1, 1, 1), 0.0, n);
  EXPECT_EQ(mask, std::vector<uint8_t>(n, 1));
}

TEST(Dropout, FloatAndDoubleDrawTheSameMask) {
  RunContext ctx = testing::cpu_test_context();
  const int64_t n = 5000;
  const double p = 0.1;  // not exactly representable in float: p stays a double for both kernels
  auto xd = random_doubles(n, 64, 0.5, 1.5);
  std::vector<float> xf(xd.begin(), xd.end()), yf(n);
  std::vector<double> yd(n);
  dropout_forward(yf.data(), xf.data(), test_stream(3, 3, 3), p, n, ctx);
  dropout_forward(yd.data(), xd.data(), test_stream(3, 3, 3), p, n, ctx);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(yf[i] == 0.0f, yd[i] == 0.0) << i;
    ASSERT_NEAR(yf[i], yd[i], 1e-6) << i;
  }
}

TEST(Dropout, ThreadedMatchesReferenceBitwise) {
  const int64_t n = 1 << 16;
  auto x = random_doubles(n, 65), dy = random_doubles(n, 66);
  std::vector<double> y[2], dx[2];
  std::vector<uint8_t> mask[2];
  for (int reference = 0; reference < 2; ++reference) {
    RunContext ctx = testing::cpu_test_context(reference == 1);
    y[reference].resize(n);
    dx[reference].resize(n);
    dropout_forward(y[reference].data(), x.data(), test_stream(4, 4, 4), 0.3, n, ctx);
    dropout_backward(dx[reference].data(), dy.data(), test_stream(4, 4, 4), 0.3, n, ctx);
    mask[reference] = keep_mask(test_stream(4, 4, 4), 0.3, n, reference == 1);
  }
  EXPECT_EQ(y[0], y[1]);
  EXPECT_EQ(dx[0], dx[1]);
  EXPECT_EQ(mask[0], mask[1]);
}

TEST(DropoutDeathTest, ProbabilityOutsideRangeAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  RunContext ctx = testing::cpu_test_context();
  std::vector<float> x(4, 1.0f), y(4);
  EXPECT_DEATH(dropout_forward(y.data(), x.data(), test_stream(0, 0, 0), 1.0, 4, ctx),
               "must be in \\[0, 1\\)");
  EXPECT_DEATH(dropout_forward(y.data(), x.data(), test_stream(0, 0, 0), -0.1, 4, ctx),
               "must be in \\[0, 1\\)");
  EXPECT_DEATH(dropout_backward(y.data(), x.data(), test_stream(0, 0, 0), 1.5, 4, ctx),
               "must be in \\[0, 1\\)");
}

}  // namespace
}  // namespace moeasr
