// tests/kernels/label_smoothing_loss_test.cc — WeNet's LabelSmoothingLoss: hand-computed values,
// eps = 0 as cross-entropy, the normalizer, ignored rows, the accuracy counts (first argmax on ties, as
// torch.argmax), float vs double, and the same bits for any thread count.
#include "kernels/cpu/label_smoothing_loss.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

TEST(LabelSmoothingLoss, UniformLogitsByHand) {
  // V = 4, all logits equal: log p_v = -log 4. q = [0.9, 0.1/3, 0.1/3, 0.1/3] for target 0.
  // KL = 0.9 log 0.9 + 0.1 log(0.1 / 3) + log 4 = 0.95135015886...
  RunContext ctx = testing::cpu_test_context();
  std::vector<double> logits(4, 0.25), lse(1);
  int32_t target = 0;
  double loss = 0.0;
  int64_t kept = -1, correct = -1;
  label_smoothing_loss_forward(&loss, lse.data(), &kept, &correct, logits.data(), &target, 0.1, kIgnoreId,
                               1.0, 1, 4, ctx);
  const double want = 0.9 * std::log(0.9) + 0.1 * std::log(0.1 / 3.0) + std::log(4.0);
  EXPECT_NEAR(want, 0.95135015886163, 1e-13);
  EXPECT_NEAR(loss, want, 1e-15);
  EXPECT_NEAR(lse[0], 0.25 + std::log(4.0), 1e-15);
  EXPECT_EQ(kept, 1);
  EXPECT_EQ(correct, 1);  // all tied: torch.argmax takes the first, which is the target
  // dlogits = softmax - q = 0.25 - q.
  std::vector<double> d(4);
  label_smoothing_loss_backward(d.data(), 2.0, logits.data(), lse.data(), &target, 0.1, kIgnoreId, 1.0, 1, 4,
                                ctx);
  EXPECT_NEAR(d[0], 2.0 * (0.25 - 0.9), 1e-15);
  for (int v = 1; v < 4; ++v) EXPECT_NEAR(d[v], 2.0 * (0.25 - 0.1 / 3.0), 1e-15);
}

TEST(LabelSmoothingLoss, TwoRowsOneIgnoredDividedByNormalizer) {
  // Row 0: logits [1, 2, 3], target 1, eps 0.2, V = 3: q = [0.1, 0.8, 0.1].
  // Row 1 ignored (garbage logits, including NaN, must not matter). Normalizer 2 (e.g. batch size).
  RunContext ctx = testing::cpu_test_context();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> logits = {1, 2, 3, nan, 5, nan}, lse(2);
  std::vector<int32_t> targets = {1, kIgnoreId};
  double loss = 0.0;
  int64_t kept = 0, correct = 0;
  label_smoothing_loss_forward(&loss, lse.data(), &kept, &correct, logits.data(), targets.data(), 0.2,
                               kIgnoreId, 2.0, 2, 3, ctx);
  long double z = std::log(std::exp(1.0L) + std::exp(2.0L) + std::exp(3.0L));
  long double kl = 0.1L * (std::log(0.1L) - (1 - z)) + 0.8L * (std::log(0.8L) - (2 - z)) +
                   0.1L * (std::log(0.1L) - (3 - z));
  EXPECT_NEAR(loss, static_cast<double>(kl / 2), 1e-15);
  EXPECT_EQ(kept, 1);
  EXPECT_EQ(correct, 0);  // argmax 2 != target 1
  std::vector<double> d(6, 7.0);
  label_smoothing_loss_backward(d.data(), 1.0, logits.data(), lse.data(), targets.data(), 0.2, kIgnoreId, 2.0,
                                2, 3, ctx);
  const double q[3] = {0.1, 0.8, 0.1};
  for (int v = 0; v < 3; ++v) {
    EXPECT_NEAR(d[v], static_cast<double>((std::exp((v + 1) - z) - q[v]) / 2), 1e-15);
    EXPECT_EQ(d[3 + v], 0.0);
  }
}

TEST(LabelSmoothingLoss, ZeroSmoothingIsCrossEntropy) {
  RunContext ctx = testing::cpu_test_context();
  const int64_t n = 6, vocab = 5;
  auto logits = testing::random_doubles(n * vocab, 3, -3.0, 3.0);
  std::vector<int32_t> targets = {0, 4, 2, kIgnoreId, 1, 3};
  std::vector<double> lse(n);
  double loss = 0.0;
  int64_t kept = 0, correct = 0;
  label_smoothing_loss_forward(&loss, lse.data(), &kept, &correct, logits.data(), targets.data(), 0.0,
                               kIgnoreId, 5.0, n, vocab, ctx);
  double ce = 0.0;
  int64_t want_correct = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (targets[i] == kIgnoreId) continue;
    double sum = 0.0;
    int64_t argmax = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      sum += std::exp(logits[i * vocab + v]);
      if (logits[i * vocab + v] > logits[i * vocab + argmax]) argmax = v;
    }
    ce += std::log(sum) - logits[i * vocab + targets[i]];
    want_correct += argmax == targets[i];
  }
  EXPECT_NEAR(loss, ce / 5.0, 1e-14);
  EXPECT_EQ(kept, 5);
  EXPECT_EQ(correct, want_correct);
  EXPECT_GT(want_correct, 0) << "make the test see at least one correct row";
  EXPECT_LT(want_correct, 5) << "and at least one wrong row";
}

TEST(LabelSmoothingLoss, AllRowsIgnoredOrNoRowsGiveZero) {
  RunContext ctx = testing::cpu_test_context();
  const int64_t n = 3, vocab = 4;
  auto logits = testing::random_doubles(n * vocab, 5);
  std::vector<int32_t> targets(n, kIgnoreId);
  std::vector<double> lse(n), d(n * vocab, 7.0);
  double loss = 42.0;
  int64_t kept = 42, correct = 42;
  label_smoothing_loss_forward(&loss, lse.data(), &kept, &correct, logits.data(), targets.data(), 0.1,
                               kIgnoreId, 2.0, n, vocab, ctx);
  EXPECT_EQ(loss, 0.0);
  EXPECT_EQ(kept, 0);
  EXPECT_EQ(correct, 0);
  label_smoothing_loss_backward(d.data(), 1.0, logits.data(), lse.data(), targets.data(), 0.1, kIgnoreId, 2.0,
                                n, vocab, ctx);
  for (double g : d) EXPECT_EQ(g, 0.0);
  loss = 42.0;
  label_smoothing_loss_forward(&loss, lse.data(), &kept, &correct, logits.data(), targets.data(), 0.1,
                               kIgnoreId, 2.0, 0, vocab, ctx);
  EXPECT_EQ(loss, 0.0);
  EXPECT_EQ(kept, 0);
}

TEST(LabelSmoothingLoss, FloatMatchesDouble) {
  RunContext ctx = testing::cpu_test_context();
  const int64_t n = 37, vocab = 53;
  auto logits = testing::random_doubles(n * vocab, 7, -6.0, 6.0);
  std::vector<int32_t> targets(n);
  for (int64_t i = 0; i < n; ++i) targets[i] = i % 5 == 4 ? kIgnoreId : static_cast<int32_t>((i * 7) % vocab);
  std::vector<double> lse(n), d(n * vocab);
  double loss = 0.0;
  int64_t kept = 0, correct = 0;
  label_smoothing_loss_forward(&loss, lse.data(), &kept, &correct, logits.data(), targets.data(), 0.1,
                               kIgnoreId, 4.0, n, vocab, ctx);
  label_smoothing_loss_backward(d.data(), 0.5, logits.data(), lse.data(), targets.data(), 0.1, kIgnoreId, 4.0,
                                n, vocab, ctx);
  std::vector<float> logits_f(logits.begin(), logits.end()), lse_f(n), d_f(n * vocab);
  float loss_f = 0.0f;
  int64_t kept_f = 0, correct_f = 0;
  label_smoothing_loss_forward(&loss_f, lse_f.data(), &kept_f, &correct_f, logits_f.data(), targets.data(),
                               0.1, kIgnoreId, 4.0, n, vocab, ctx);
  label_smoothing_loss_backward(d_f.data(), 0.5f, logits_f.data(), lse_f.data(), targets.data(), 0.1,
                                kIgnoreId, 4.0, n, vocab, ctx);
  EXPECT_NEAR(loss_f, loss, 1e-6 * loss);
  EXPECT_EQ(kept_f, kept);
  EXPECT_EQ(correct_f, correct);
  for (int64_t i = 0; i < n * vocab; ++i) EXPECT_NEAR(d_f[i], d[i], 1e-7) << "at " << i;
}

TEST(LabelSmoothingLoss, SameBitsForAnyThreadCountAndReferencePath) {
  const int64_t n = 70, vocab = 601;  // n * vocab above the parallel threshold
  auto logits = testing::random_doubles(n * vocab, 9, -4.0, 4.0);
  std::vector<int32_t> targets(n);
  for (int64_t i = 0; i < n; ++i)
    targets[i] = i % 7 == 3 ? kIgnoreId : static_cast<int32_t>((i * 13) % vocab);
  auto run = [&](bool reference, int threads, std::vector<double>* out) {
    RunContext ctx = testing::cpu_test_context(reference, threads);
    std::vector<double> lse(n), d(n * vocab);
    double loss = 0.0;
    int64_t kept = 0, correct = 0;
    label_smoothing_loss_forward(&loss, lse.data(), &kept, &correct, logits.data(), targets.data(), 0.1,
                                 kIgnoreId, 3.0, n, vocab, ctx);
    label_smoothing_loss_backward(d.data(), 1.0, logits.data(), lse.data(), targets.data(), 0.1, kIgnoreId,
                                  3.0, n, vocab, ctx);
    *out = d;
    out->push_back(loss);
    out->push_back(static_cast<double>(kept));
  };
  std::vector<double> ref, one, two, three;
  run(true, 2, &ref);
  run(false, 1, &one);
  run(false, 2, &two);
  run(false, 3, &three);
  EXPECT_GT(ref[ref.size() - 2], 0.0);
  EXPECT_EQ(one, ref);
  EXPECT_EQ(two, ref);
  EXPECT_EQ(three, ref);
}

TEST(LabelSmoothingLossDeathTest, RejectsOutOfRangeTargets) {
  RunContext ctx = testing::cpu_test_context();
  std::vector<double> logits(3, 0.0), lse(1);
  double loss = 0.0;
  for (int32_t bad : {3, -2}) {
    EXPECT_DEATH(label_smoothing_loss_forward(&loss, lse.data(), static_cast<int64_t*>(nullptr),
                                              static_cast<int64_t*>(nullptr), logits.data(), &bad, 0.1,
                                              kIgnoreId, 1.0, 1, 3, ctx),
                 "outside \\[0, 3\\)");
  }
}

}  // namespace
}  // namespace moeasr
