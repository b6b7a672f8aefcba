// tests/kernels/label_smoothing_loss_gradcheck_test.cc — finite-difference gradients (double) of the
// label-smoothing loss with respect to the logits: odd sizes with ignored rows, eps = 0, one row, V = 2,
// and a normalizer other than 1. Ignored rows must get exactly zero gradient.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/cpu/label_smoothing_loss.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

void check_label_smoothing(int64_t n, int64_t vocab, double smoothing, double normalizer, bool reference,
                           uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "n=" << n << " V=" << vocab << " eps=" << smoothing);
  RunContext ctx = testing::cpu_test_context(reference);
  auto logits = testing::random_doubles(n * vocab, seed, -3.0, 3.0);
  std::vector<int32_t> targets(n);
  for (int64_t i = 0; i < n; ++i) {
    targets[i] = (n > 1 && i % 3 == 1) ? kIgnoreId : static_cast<int32_t>((i * 5 + 1) % vocab);
  }
  const double dloss = 0.625;
  std::vector<double> lse(n), dlogits(n * vocab);
  double loss = 0.0;
  auto objective = [&]() {
    label_smoothing_loss_forward(&loss, lse.data(), static_cast<int64_t*>(nullptr),
                                 static_cast<int64_t*>(nullptr), logits.data(), targets.data(), smoothing,
                                 kIgnoreId, normalizer, n, vocab, ctx);
    return dloss * loss;
  };
  auto grads = [&]() {
    objective();
    label_smoothing_loss_backward(dlogits.data(), dloss, logits.data(), lse.data(), targets.data(), smoothing,
                                  kIgnoreId, normalizer, n, vocab, ctx);
  };
  testing::expect_gradients_match(objective, grads, {{"logits", logits.data(), dlogits.data(), n * vocab}});
  grads();
  for (int64_t i = 0; i < n; ++i) {
    if (targets[i] != kIgnoreId) continue;
    for (int64_t v = 0; v < vocab; ++v) EXPECT_EQ(dlogits[i * vocab + v], 0.0) << "ignored row " << i;
  }
}

TEST(LabelSmoothingLossGradcheck, OddSizesIgnoredRowsAndSmoothings) {
  for (bool reference : {false, true}) {
    check_label_smoothing(7, 5, 0.1, 3.0, reference, 1);
    check_label_smoothing(7, 5, 0.0, 1.0, reference, 2);
    check_label_smoothing(1, 2, 0.1, 1.0, reference, 3);
    check_label_smoothing(4, 11, 0.3, 7.0, reference, 4);
  }
}

}  // namespace
}  // namespace moeasr
