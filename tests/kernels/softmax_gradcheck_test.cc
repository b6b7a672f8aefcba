// tests/kernels/softmax_gradcheck_test.cc — finite-difference gradients (double) of softmax,
// log_softmax and the head-broadcast attention softmax: odd sizes, random keep-masks with a fully
// masked row and a single-kept row, C = 1 (gradient exactly 0), R = 0, threaded and reference loops.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/cpu/softmax.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::random_doubles;

// A keep-mask with ~1/3 masked entries, row 0 fully masked and row 1 (if any) with one kept entry.
std::vector<uint8_t> test_mask(int64_t rows, int64_t cols, uint64_t seed) {
  auto u = random_doubles(rows * cols, seed, 0.0, 1.0);
  std::vector<uint8_t> mask(static_cast<size_t>(rows * cols));
  for (int64_t i = 0; i < rows * cols; ++i) mask[i] = u[i] < 0.33 ? 0 : 1;
  if (rows > 0)
    for (int64_t j = 0; j < cols; ++j) mask[j] = 0;
  if (rows > 1)
    for (int64_t j = 0; j < cols; ++j) mask[cols + j] = j == cols / 2 ? 1 : 0;
  return mask;
}

void check_softmax(bool log, int64_t rows, int64_t cols, bool masked, bool reference) {
  SCOPED_TRACE(::testing::Message() << (log ? "log_softmax" : "softmax") << " R=" << rows << " C=" << cols
                                    << " masked=" << masked << " reference=" << reference);
  RunContext ctx = testing::cpu_test_context(reference);
  auto x = random_doubles(rows * cols, 31, -2.0, 2.0);
  auto dy = random_doubles(rows * cols, 32);
  std::vector<uint8_t> mask_storage = test_mask(rows, cols, 33);
  const uint8_t* mask = masked ? mask_storage.data() : nullptr;
  std::vector<double> y(rows * cols), dx(rows * cols);
  auto forward = [&]() {
    if (log) {
      log_softmax_forward(y.data(), x.data(), mask, rows, cols, ctx);
    } else {
      softmax_forward(y.data(), x.data(), mask, rows, cols, ctx);
    }
  };
  auto loss = [&]() {
    forward();
    return testing::weighted_sum(y, dy);
  };
  auto grads = [&]() {
    forward();
    if (log) {
      log_softmax_backward(dx.data(), dy.data(), y.data(), mask, rows, cols, ctx);
    } else {
      softmax_backward(dx.data(), dy.data(), y.data(), rows, cols, ctx);
    }
  };
  testing::GradCheckOptions options;
  options.require_nonzero_gradient = cols > 1;  // C = 1: the output is constant, the gradient 0
  testing::expect_gradients_match(loss, grads, {{"x", x.data(), dx.data(), rows * cols}}, options);
  // Masked entries (and so every entry of a fully masked row) get exactly zero gradient and output.
  grads();
  for (int64_t i = 0; i < rows * cols; ++i) {
    if (cols == 1 && !masked) {
      EXPECT_EQ(dx[i], 0.0) << i;
    }
    if (masked && mask[i] == 0) {
      EXPECT_EQ(dx[i], 0.0) << i;
      EXPECT_EQ(y[i], 0.0) << i;
    }
  }
}

TEST(SoftmaxGradcheck, UnmaskedOddSizes) {
  for (bool log : {false, true})
    for (bool reference : {false, true}) {
      check_softmax(log, 3, 7, false, reference);
      check_softmax(log, 5, 2, false, reference);
      check_softmax(log, 1, 13, false, reference);
    }
}

TEST(SoftmaxGradcheck, MaskedWithFullyMaskedAndSingleKeptRows) {
  for (bool log : {false, true})
    for (bool reference : {false, true}) {
      check_softmax(log, 6, 7, true, reference);
      check_softmax(log, 4, 3, true, reference);
    }
}

TEST(SoftmaxGradcheck, SingleColumnHasZeroGradient) {
  for (bool log : {false, true}) {
    check_softmax(log, 4, 1, false, false);
    check_softmax(log, 4, 1, true, false);
  }
}

TEST(SoftmaxGradcheck, ZeroRowsTouchNothing) {
  RunContext ctx = testing::cpu_test_context();
  const double sentinel = -7.5;
  std::vector<double> x(1, 1.0), y(1, sentinel), dy(1, 1.0), dx(1, sentinel);
  std::vector<uint8_t> mask(1, 1);
  softmax_forward(y.data(), x.data(), mask.data(), 0, 5, ctx);
  softmax_backward(dx.data(), dy.data(), y.data(), 0, 5, ctx);
  log_softmax_forward(y.data(), x.data(), mask.data(), 0, 5, ctx);
  log_softmax_backward(dx.data(), dy.data(), y.data(), mask.data(), 0, 5, ctx);
  attention_softmax_forward(y.data(), x.data(), mask.data(), 0, 4, 3, 5, ctx);
  attention_softmax_backward(dx.data(), dy.data(), y.data(), 0, 4, 3, 5, ctx);
  EXPECT_EQ(y[0], sentinel);
  EXPECT_EQ(dx[0], sentinel);
}

// [B, H, Tq, Tk] scores with a [B, Tq, Tk] chunk-style mask; batch 1 has length 0 (all rows masked).
TEST(SoftmaxGradcheck, AttentionSoftmaxBroadcastsMaskOverHeads) {
  const int64_t b = 3, h = 2, tq = 4, tk = 5;
  const int32_t lengths[b] = {5, 0, 3};
  std::vector<uint8_t> mask(b * tq * tk);
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t i = 0; i < tq; ++i)
      for (int64_t j = 0; j < tk; ++j) mask[(bi * tq + i) * tk + j] = (j < lengths[bi] && j <= i + 1) ? 1 : 0;
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    auto x = random_doubles(b * h * tq * tk, 41, -2.0, 2.0);
    auto dy = random_doubles(b * h * tq * tk, 42);
    std::vector<double> y(x.size()), dx(x.size());
    auto loss = [&]() {
      attention_softmax_forward(y.data(), x.data(), mask.data(), b, h, tq, tk, ctx);
      return testing::weighted_sum(y, dy);
    };
    auto grads = [&]() {
      attention_softmax_forward(y.data(), x.data(), mask.data(), b, h, tq, tk, ctx);
      attention_softmax_backward(dx.data(), dy.data(), y.data(), b, h, tq, tk, ctx);
    };
    testing::expect_gradients_match(loss, grads, {{"scores", x.data(), dx.data(), b * h * tq * tk}});
    grads();
    for (int64_t i = 0; i < h * tq * tk; ++i) {  // batch 1: every row fully masked
      EXPECT_EQ(y[h * tq * tk + i], 0.0);
      EXPECT_EQ(dx[h * tq * tk + i], 0.0);
    }
  }
}

}  // namespace
}  // namespace moeasr
