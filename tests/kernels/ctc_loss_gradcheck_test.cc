// tests/kernels/ctc_loss_gradcheck_test.cc — finite-difference gradients (double) of the CTC loss:
// directly with respect to raw log_probs (the op's gradient is the true derivative, valid for any
// input, normalised or not), and through a log_softmax on logits, where it must also equal PyTorch's
// formula w * (exp(log_probs) - occupancy). Batches mix lengths, an empty target, T = 1, repeated
// labels and an impossible target (zero_infinity: zero loss, zero gradient).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/cpu/ctc_loss.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::random_doubles;

struct Batch {
  int64_t batch, max_time, vocab, max_len;
  std::vector<int32_t> input_lengths, targets, target_lengths;
};

Batch mixed_batch() {
  // utt 0: full length, repeats; 1: empty target; 2: T = 1; 3: impossible ([2, 2] in 2 frames);
  // 4: odd lengths.
  Batch b{5, 6, 4, 3, {6, 4, 1, 2, 5}, {}, {3, 0, 1, 2, 2}};
  b.targets = {1, 1, 3, /**/ -1, -1, -1, /**/ 2, -1, -1, /**/ 2, 2, -1, /**/ 3, 1, -1};
  return b;
}

void check_raw_log_probs(bool reference) {
  RunContext ctx = testing::cpu_test_context(reference);
  Batch b = mixed_batch();
  const int64_t size = b.batch * b.max_time * b.vocab;
  auto lp = random_doubles(size, 61, -3.0, 0.0);  // not normalised: the derivative holds anyway
  auto dloss = random_doubles(b.batch, 62);
  const double dtotal = 0.375;
  std::vector<double> loss(b.batch), total(1), alpha(b.batch * ctc_loss_alpha_size(b.max_time, b.max_len));
  std::vector<double> dlp(size);
  auto forward = [&]() {
    ctc_loss_forward(loss.data(), total.data(), alpha.data(), lp.data(), b.input_lengths.data(),
                     b.targets.data(), b.target_lengths.data(), b.batch, b.max_time, b.vocab, b.max_len, ctx);
  };
  auto objective = [&]() {
    forward();
    return testing::weighted_sum(loss, dloss) + dtotal * total[0];
  };
  auto grads = [&]() {
    forward();
    ctc_loss_backward(dlp.data(), dloss.data(), dtotal, alpha.data(), lp.data(), b.input_lengths.data(),
                      b.targets.data(), b.target_lengths.data(), b.batch, b.max_time, b.vocab, b.max_len,
                      ctx);
  };
  testing::GradCheckOptions options;
  options.atol = 1e-7;
  testing::expect_gradients_match(objective, grads, {{"log_probs", lp.data(), dlp.data(), size}}, options);
  // The impossible utterance contributes nothing, and padded frames get no gradient.
  forward();
  EXPECT_EQ(loss[3], 0.0);
  grads();
  for (int64_t b_i = 0; b_i < b.batch; ++b_i) {
    for (int64_t t = 0; t < b.max_time; ++t) {
      for (int64_t v = 0; v < b.vocab; ++v) {
        if (b_i == 3 || t >= b.input_lengths[b_i]) {
          EXPECT_EQ(dlp[(b_i * b.max_time + t) * b.vocab + v], 0.0);
        }
      }
    }
  }
}

TEST(CtcLossGradcheck, RawLogProbsMixedBatch) {
  check_raw_log_probs(false);
  check_raw_log_probs(true);
}

TEST(CtcLossGradcheck, ThroughLogSoftmaxEqualsPytorchFormula) {
  RunContext ctx = testing::cpu_test_context();
  Batch b = mixed_batch();
  const int64_t rows = b.batch * b.max_time, size = rows * b.vocab;
  auto logits = random_doubles(size, 71, -2.0, 2.0);
  const double dtotal = 1.0 / static_cast<double>(b.batch);  // WeNet: loss_sum / B
  std::vector<double> lp(size), loss(b.batch), total(1),
      alpha(b.batch * ctc_loss_alpha_size(b.max_time, b.max_len));
  std::vector<double> dlp(size), dlogits(size);
  auto forward = [&]() {
    for (int64_t r = 0; r < rows; ++r) {
      double sum = 0.0;
      for (int64_t v = 0; v < b.vocab; ++v) sum += std::exp(logits[r * b.vocab + v]);
      for (int64_t v = 0; v < b.vocab; ++v) lp[r * b.vocab + v] = logits[r * b.vocab + v] - std::log(sum);
    }
    ctc_loss_forward(loss.data(), total.data(), alpha.data(), lp.data(), b.input_lengths.data(),
                     b.targets.data(), b.target_lengths.data(), b.batch, b.max_time, b.vocab, b.max_len, ctx);
  };
  auto objective = [&]() {
    forward();
    return dtotal * total[0];
  };
  auto grads = [&]() {
    forward();
    ctc_loss_backward(dlp.data(), static_cast<const double*>(nullptr), dtotal, alpha.data(), lp.data(),
                      b.input_lengths.data(), b.targets.data(), b.target_lengths.data(), b.batch, b.max_time,
                      b.vocab, b.max_len, ctx);
    // log_softmax backward: dz = g - softmax(z) * sum_v g.
    for (int64_t r = 0; r < rows; ++r) {
      double sum = 0.0;
      for (int64_t v = 0; v < b.vocab; ++v) sum += dlp[r * b.vocab + v];
      for (int64_t v = 0; v < b.vocab; ++v) {
        dlogits[r * b.vocab + v] = dlp[r * b.vocab + v] - std::exp(lp[r * b.vocab + v]) * sum;
      }
    }
  };
  testing::GradCheckOptions options;
  options.atol = 1e-8;
  testing::expect_gradients_match(objective, grads, {{"logits", logits.data(), dlogits.data(), size}},
                                  options);
  // PyTorch's CTC backward: w * exp(lp) - w * occupancy = w * exp(lp) + dlp on valid frames of possible
  // utterances (0 elsewhere); equal to our logits gradient.
  grads();
  for (int64_t b_i = 0; b_i < b.batch; ++b_i) {
    for (int64_t t = 0; t < b.max_time; ++t) {
      bool active = b_i != 3 && t < b.input_lengths[b_i];
      for (int64_t v = 0; v < b.vocab; ++v) {
        int64_t i = (b_i * b.max_time + t) * b.vocab + v;
        double pytorch = active ? dtotal * std::exp(lp[i]) + dlp[i] : 0.0;
        EXPECT_NEAR(dlogits[i], pytorch, 1e-14) << "b=" << b_i << " t=" << t << " v=" << v;
      }
    }
  }
}

}  // namespace
}  // namespace moeasr
