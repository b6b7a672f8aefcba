// tests/kernels/grouped_linear_gradcheck_test.cc — finite-difference gradients (double) of the grouped
// expert Linear: x, every expert's weight and bias, with an expert that has no rows (its gradient must
// stay exactly as it was), rows beyond offsets[E] untouched, and m_max above the routed row count.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/cpu/grouped_linear.h"
#include "kernels/cpu/linear.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::random_doubles;

TEST(GroupedLinearGradcheck, InputWeightsAndBias) {
  const int64_t e_count = 3, in = 4, out = 5, m = 6, m_max = 8;
  const std::vector<int64_t> offsets = {0, 2, 2, 6};  // expert 1 has no rows
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    auto x = random_doubles(m_max * in, 1);
    auto w = random_doubles(e_count * out * in, 2);
    auto b = random_doubles(e_count * out, 3);
    auto dy = random_doubles(m * out, 4);
    std::vector<double> y(m_max * out), dx(m_max * in), dw(e_count * out * in), db(e_count * out);
    auto loss = [&] {
      grouped_linear_forward(y.data(), x.data(), w.data(), b.data(), offsets.data(), m_max, e_count, in, out,
                             ctx);
      return testing::weighted_sum(y.data(), dy.data(), m * out);
    };
    auto grads = [&] {
      std::fill(dw.begin(), dw.end(), 0.0);
      std::fill(db.begin(), db.end(), 0.0);
      std::fill(dx.begin(), dx.end(), 0.0);
      grouped_linear_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), offsets.data(),
                              m_max, e_count, in, out, ctx);
    };
    testing::expect_gradients_match(loss, grads,
                                    {{"x", x.data(), dx.data(), m * in},
                                     {"weight", w.data(), dw.data(), e_count * out * in},
                                     {"bias", b.data(), db.data(), e_count * out}});
    grads();
    for (int64_t j = 0; j < out * in; ++j) EXPECT_EQ(dw[out * in + j], 0.0) << "expert 1 has no rows";
  }
}

// Against linear_forward/backward applied expert by expert, bitwise (the same ops underneath), and the
// rows past offsets[E] keep their contents.
TEST(GroupedLinear, EqualsPerExpertLinearAndLeavesSpareRows) {
  RunContext ctx = testing::cpu_test_context();
  const int64_t e_count = 4, in = 7, out = 3, m_max = 12;
  const std::vector<int64_t> offsets = {0, 3, 3, 8, 10};
  auto x = testing::random_floats(m_max * in, 5);
  auto w = testing::random_floats(e_count * out * in, 6);
  auto dy = testing::random_floats(m_max * out, 7);
  std::vector<float> y(m_max * out, -7.0f), want(m_max * out, -7.0f);
  grouped_linear_forward(y.data(), x.data(), w.data(), static_cast<const float*>(nullptr), offsets.data(),
                         m_max, e_count, in, out, ctx);
  for (int64_t e = 0; e < e_count; ++e) {
    const int64_t rows = offsets[e + 1] - offsets[e];
    if (rows > 0)
      linear_forward(want.data() + offsets[e] * out, x.data() + offsets[e] * in, w.data() + e * out * in,
                     static_cast<const float*>(nullptr), rows, in, out, ctx);
  }
  EXPECT_EQ(y, want);
  for (int64_t i = offsets[e_count] * out; i < m_max * out; ++i)
    ASSERT_EQ(y[i], -7.0f) << "spare row written";
  std::vector<float> dx(m_max * in, -7.0f), dw(e_count * out * in, 0.25f);
  grouped_linear_backward(dx.data(), dw.data(), static_cast<float*>(nullptr), dy.data(), x.data(), w.data(),
                          offsets.data(), m_max, e_count, in, out, ctx);
  std::vector<float> want_dx(m_max * in, -7.0f), want_dw(e_count * out * in, 0.25f);
  for (int64_t e = 0; e < e_count; ++e) {
    const int64_t rows = offsets[e + 1] - offsets[e];
    if (rows > 0)
      linear_backward(want_dx.data() + offsets[e] * in, want_dw.data() + e * out * in,
                      static_cast<float*>(nullptr), dy.data() + offsets[e] * out, x.data() + offsets[e] * in,
                      w.data() + e * out * in, rows, in, out, ctx);
  }
  EXPECT_EQ(dx, want_dx);
  EXPECT_EQ(dw, want_dw);
}

TEST(GroupedLinear, RefusesBadOffsets) {
  RunContext ctx = testing::cpu_test_context();
  std::vector<float> buf(64, 0.0f);
  const std::vector<int64_t> decreasing = {0, 3, 2}, too_many = {0, 2, 9}, not_from_zero = {1, 2, 3};
  auto run = [&](const std::vector<int64_t>& off) {
    grouped_linear_forward(buf.data(), buf.data(), buf.data(), static_cast<const float*>(nullptr), off.data(),
                           8, 2, 2, 2, ctx);
  };
  EXPECT_DEATH(run(decreasing), "offsets of expert 1 decrease");
  EXPECT_DEATH(run(too_many), "exceed the buffers' capacity");
  EXPECT_DEATH(run(not_from_zero), "offsets\\[0\\]");
}

}  // namespace
}  // namespace moeasr
