// tests/kernels/dropout_gradcheck_test.cc — finite-difference gradients (double) of Philox dropout
// with a fixed key: odd n, n = 1 (kept and dropped), n = 0, several p, threaded and reference loops.
#include <gtest/gtest.h>

#include <vector>

#include "core/philox.h"
#include "kernels/cpu/dropout.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::random_doubles;

PhiloxStream test_stream(uint64_t stream) {
  RngKey key;
  key.seed = 1234;
  key.purpose = RngPurpose::kDropout;
  key.step = 7;
  key.stream = stream;
  return philox_stream(key);
}

void check_dropout(int64_t n, double p, uint64_t stream_id, bool reference) {
  SCOPED_TRACE(::testing::Message() << "n=" << n << " p=" << p << " stream=" << stream_id
                                    << " reference=" << reference);
  RunContext ctx = testing::cpu_test_context(reference);
  PhiloxStream stream = test_stream(stream_id);
  auto x = random_doubles(n, 51), dy = random_doubles(n, 52);
  std::vector<double> y(n), dx(n);
  auto loss = [&]() {
    dropout_forward(y.data(), x.data(), stream, p, n, ctx);
    return testing::weighted_sum(y, dy);
  };
  auto grads = [&]() { dropout_backward(dx.data(), dy.data(), stream, p, n, ctx); };
  std::vector<uint8_t> mask(n);
  dropout_keep_mask(mask.data(), stream, p, n, ctx);
  int64_t kept = 0;
  for (uint8_t m : mask) kept += m;
  testing::GradCheckOptions options;
  options.require_nonzero_gradient = kept > 0;
  testing::expect_gradients_match(loss, grads, {{"x", x.data(), dx.data(), n}}, options);
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(dx[i], mask[i] ? dy[i] * (1.0 / (1.0 - p)) : 0.0) << i;
}

TEST(DropoutGradcheck, FixedKeyOddSizes) {
  for (bool reference : {false, true})
    for (double p : {0.0, 0.1, 0.3, 0.75}) check_dropout(37, p, 3, reference);
}

TEST(DropoutGradcheck, SingleElementKeptAndDropped) {
  // Find one stream whose element 0 is kept and one where it is dropped at p = 0.5.
  int found_kept = -1, found_dropped = -1;
  for (int s = 0; s < 64 && (found_kept < 0 || found_dropped < 0); ++s) {
    bool keep = philox_uniform(test_stream(s), 0) >= 0.5f;
    (keep ? found_kept : found_dropped) = s;
  }
  ASSERT_GE(found_kept, 0);
  ASSERT_GE(found_dropped, 0);
  check_dropout(1, 0.5, found_kept, false);
  check_dropout(1, 0.5, found_dropped, false);
}

TEST(DropoutGradcheck, EmptyInputTouchesNothing) {
  RunContext ctx = testing::cpu_test_context();
  std::vector<double> x(1, 2.0), y(1, -3.0), dx(1, -3.0);
  dropout_forward(y.data(), x.data(), test_stream(0), 0.2, 0, ctx);
  dropout_backward(dx.data(), x.data(), test_stream(0), 0.2, 0, ctx);
  EXPECT_EQ(y[0], -3.0);
  EXPECT_EQ(dx[0], -3.0);
}

}  // namespace
}  // namespace moeasr
