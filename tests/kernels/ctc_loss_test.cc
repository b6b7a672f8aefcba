// tests/kernels/ctc_loss_test.cc — CTC loss against brute force: every one of the V^T alignments of a
// tiny case is enumerated, collapsed (merge repeats, drop blanks) and its probability summed when it
// spells the target; the gradient is minus the posterior occupancy counted over the same paths.
// Covers repeated labels, the empty target, T = 1, impossible targets (zero_infinity), a batch of
// different lengths with NaN padding that must never be read, float vs double, and thread counts.
#include "kernels/cpu/ctc_loss.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

// log_softmax of random logits: a valid [T, V] block of log-probabilities.
std::vector<double> random_log_probs(int64_t frames, int64_t vocab, uint64_t seed) {
  auto logits = testing::random_doubles(frames * vocab, seed, -2.0, 2.0);
  std::vector<double> out(logits.size());
  for (int64_t t = 0; t < frames; ++t) {
    double sum = 0.0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(logits[t * vocab + v]);
    for (int64_t v = 0; v < vocab; ++v) out[t * vocab + v] = logits[t * vocab + v] - std::log(sum);
  }
  return out;
}

struct BruteForce {
  double probability = 0.0;       // p(target | x)
  std::vector<double> occupancy;  // [T, V] sum over matching paths with path[t] = v of P(path) / p
};

// Enumerates all vocab^frames paths over a [frames, vocab] block.
BruteForce brute_force(const std::vector<double>& log_probs, int64_t frames, int64_t vocab,
                       const std::vector<int32_t>& target) {
  BruteForce result;
  result.occupancy.assign(static_cast<size_t>(frames * vocab), 0.0);
  int64_t num_paths = 1;
  for (int64_t t = 0; t < frames; ++t) num_paths *= vocab;
  std::vector<int32_t> path(static_cast<size_t>(frames));
  for (int64_t code = 0; code < num_paths; ++code) {
    int64_t rest = code;
    for (int64_t t = 0; t < frames; ++t) {
      path[t] = static_cast<int32_t>(rest % vocab);
      rest /= vocab;
    }
    std::vector<int32_t> collapsed;
    int32_t previous = -1;
    for (int32_t symbol : path) {
      if (symbol != previous && symbol != kCtcBlank) collapsed.push_back(symbol);
      previous = symbol;
    }
    if (collapsed != target) continue;
    double log_p = 0.0;
    for (int64_t t = 0; t < frames; ++t) log_p += log_probs[t * vocab + path[t]];
    double p = std::exp(log_p);
    result.probability += p;
    for (int64_t t = 0; t < frames; ++t) result.occupancy[t * vocab + path[t]] += p;
  }
  if (result.probability > 0.0) {
    for (double& o : result.occupancy) o /= result.probability;
  }
  return result;
}

// One utterance [frames, vocab] through the op (B = 1, no padding) against brute force.
void expect_single_matches_brute_force(int64_t frames, int64_t vocab, const std::vector<int32_t>& target,
                                       uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "T=" << frames << " V=" << vocab << " L=" << target.size());
  RunContext ctx = testing::cpu_test_context();
  auto lp = random_log_probs(frames, vocab, seed);
  const int64_t max_len = static_cast<int64_t>(target.size());
  std::vector<int32_t> targets = target.empty() ? std::vector<int32_t>{-1} : target;
  int32_t input_length = static_cast<int32_t>(frames), target_length = static_cast<int32_t>(max_len);
  std::vector<double> loss(1), total(1), alpha(ctc_loss_alpha_size(frames, max_len));
  ctc_loss_forward(loss.data(), total.data(), alpha.data(), lp.data(), &input_length, targets.data(),
                   &target_length, 1, frames, vocab, max_len, ctx);
  std::vector<double> dlp(lp.size(), 7.0);  // garbage: backward assigns
  ctc_loss_backward(dlp.data(), static_cast<const double*>(nullptr), 1.0, alpha.data(), lp.data(),
                    &input_length, targets.data(), &target_length, 1, frames, vocab, max_len, ctx);
  BruteForce want = brute_force(lp, frames, vocab, target);
  ASSERT_GT(want.probability, 0.0) << "test case is meant to be possible";
  EXPECT_NEAR(loss[0], -std::log(want.probability), 1e-12 * (1.0 + std::fabs(loss[0])));
  EXPECT_EQ(total[0], loss[0]);
  for (size_t i = 0; i < dlp.size(); ++i) EXPECT_NEAR(dlp[i], -want.occupancy[i], 1e-12) << "at " << i;
}

TEST(CtcLoss, MatchesBruteForceOnTinyCases) {
  expect_single_matches_brute_force(5, 3, {1, 2}, 1);
  expect_single_matches_brute_force(5, 3, {1, 1}, 2);     // repeat: needs a blank in between
  expect_single_matches_brute_force(5, 3, {2, 2, 2}, 3);  // T = 5 is exactly enough (2L - 1)
  expect_single_matches_brute_force(4, 3, {2, 1, 2}, 4);
  expect_single_matches_brute_force(5, 2, {1}, 5);
  expect_single_matches_brute_force(3, 3, {}, 6);   // empty target: all-blank path only
  expect_single_matches_brute_force(1, 3, {2}, 7);  // T = 1
  expect_single_matches_brute_force(1, 3, {}, 8);   // T = 1, empty target
  expect_single_matches_brute_force(2, 3, {1, 2}, 9);
}

TEST(CtcLoss, EmptyTargetIsMinusSumOfBlankLogProbs) {
  RunContext ctx = testing::cpu_test_context();
  const int64_t frames = 4, vocab = 3;
  auto lp = random_log_probs(frames, vocab, 17);
  int32_t input_length = 4, target_length = 0, dummy = -1;
  std::vector<double> loss(1), alpha(ctc_loss_alpha_size(frames, 0));
  ctc_loss_forward(loss.data(), static_cast<double*>(nullptr), alpha.data(), lp.data(), &input_length, &dummy,
                   &target_length, 1, frames, vocab, 0, ctx);
  double want = 0.0;
  for (int64_t t = 0; t < frames; ++t) want -= lp[t * vocab + kCtcBlank];
  EXPECT_NEAR(loss[0], want, 1e-13);
}

TEST(CtcLoss, ImpossibleTargetsGiveZeroLossAndZeroGradient) {
  RunContext ctx = testing::cpu_test_context();
  struct Case {
    int64_t frames;
    std::vector<int32_t> target;
  };
  // [1, 1] needs 3 frames; [1, 2] needs 2; [2, 2, 2] needs 5; no frames at all for a label.
  const Case cases[] = {{2, {1, 1}}, {1, {1, 2}}, {4, {2, 2, 2}}, {0, {1}}};
  for (const Case& c : cases) {
    const int64_t vocab = 3, max_time = std::max<int64_t>(c.frames, 1);
    const int64_t max_len = static_cast<int64_t>(c.target.size());
    auto lp = random_log_probs(max_time, vocab, 5);
    int32_t input_length = static_cast<int32_t>(c.frames), target_length = static_cast<int32_t>(max_len);
    std::vector<double> loss(1, 42.0), total(1, 42.0), alpha(ctc_loss_alpha_size(max_time, max_len));
    ctc_loss_forward(loss.data(), total.data(), alpha.data(), lp.data(), &input_length, c.target.data(),
                     &target_length, 1, max_time, vocab, max_len, ctx);
    EXPECT_EQ(loss[0], 0.0) << "T=" << c.frames;
    EXPECT_EQ(total[0], 0.0) << "T=" << c.frames;
    if (c.frames > 0) {
      EXPECT_EQ(brute_force(lp, c.frames, vocab, c.target).probability, 0.0);
    }
    std::vector<double> dlp(lp.size(), 7.0);
    ctc_loss_backward(dlp.data(), static_cast<const double*>(nullptr), 1.0, alpha.data(), lp.data(),
                      &input_length, c.target.data(), &target_length, 1, max_time, vocab, max_len, ctx);
    for (double g : dlp) EXPECT_EQ(g, 0.0) << "T=" << c.frames;
  }
}

TEST(CtcLoss, BatchOfDifferentLengthsNeverReadsPadding) {
  RunContext ctx = testing::cpu_test_context();
  const int64_t batch = 5, max_time = 5, vocab = 3, max_len = 3;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::vector<int32_t> input_lengths = {5, 3, 1, 4, 2};
  const std::vector<std::vector<int32_t>> labels = {{1, 1, 2}, {2}, {}, {1, 2}, {1, 1}};  // last: impossible
  std::vector<int32_t> targets(batch * max_len, -1), target_lengths(batch);
  std::vector<double> lp(batch * max_time * vocab, nan);
  for (int64_t b = 0; b < batch; ++b) {
    target_lengths[b] = static_cast<int32_t>(labels[b].size());
    for (size_t i = 0; i < labels[b].size(); ++i) targets[b * max_len + i] = labels[b][i];
    auto block = random_log_probs(input_lengths[b], vocab, 100 + b);
    std::copy(block.begin(), block.end(), lp.begin() + b * max_time * vocab);
  }
  std::vector<double> loss(batch), total(1), alpha(batch * ctc_loss_alpha_size(max_time, max_len));
  ctc_loss_forward(loss.data(), total.data(), alpha.data(), lp.data(), input_lengths.data(), targets.data(),
                   target_lengths.data(), batch, max_time, vocab, max_len, ctx);
  std::vector<double> weights = {0.5, -1.0, 2.0, 0.25, 3.0};
  const double dtotal = 0.75;
  std::vector<double> dlp(lp.size(), 7.0);
  ctc_loss_backward(dlp.data(), weights.data(), dtotal, alpha.data(), lp.data(), input_lengths.data(),
                    targets.data(), target_lengths.data(), batch, max_time, vocab, max_len, ctx);
  double want_total = 0.0;
  for (int64_t b = 0; b < batch; ++b) {
    SCOPED_TRACE(::testing::Message() << "utterance " << b);
    std::vector<double> block(lp.begin() + b * max_time * vocab,
                              lp.begin() + (b * max_time + input_lengths[b]) * vocab);
    BruteForce want = brute_force(block, input_lengths[b], vocab, labels[b]);
    double want_loss = want.probability > 0.0 ? -std::log(want.probability) : 0.0;
    want_total += want_loss;
    EXPECT_NEAR(loss[b], want_loss, 1e-12 * (1.0 + want_loss));
    const double w = dtotal + weights[b];
    for (int64_t t = 0; t < max_time; ++t) {
      for (int64_t v = 0; v < vocab; ++v) {
        double g = dlp[(b * max_time + t) * vocab + v];
        double want_g =
            t < input_lengths[b] && want.probability > 0.0 ? -w * want.occupancy[t * vocab + v] : 0.0;
        EXPECT_NEAR(g, want_g, 1e-12) << "t=" << t << " v=" << v;
      }
    }
  }
  EXPECT_NEAR(total[0], want_total, 1e-12 * want_total);
}

// Random larger batch: sizes, labels with repeats, lengths, all from a seed.
struct RandomBatch {
  int64_t batch, max_time, vocab, max_len;
  std::vector<int32_t> input_lengths, targets, target_lengths;
  std::vector<double> lp;
};

RandomBatch random_batch(int64_t batch, int64_t max_time, int64_t vocab, int64_t max_len, uint64_t seed) {
  RandomBatch r{batch, max_time, vocab, max_len, {}, {}, {}, {}};
  auto u = testing::random_doubles(3 * batch * (max_len + 2), seed, 0.0, 1.0);
  size_t k = 0;
  r.targets.assign(batch * max_len, -1);
  for (int64_t b = 0; b < batch; ++b) {
    int32_t frames = static_cast<int32_t>(max_time / 2 + u[k++] * (max_time - max_time / 2));
    if (b == 0) frames = static_cast<int32_t>(max_time);
    int32_t length = static_cast<int32_t>(u[k++] * (max_len + 1));
    if (length > max_len) length = static_cast<int32_t>(max_len);
    r.input_lengths.push_back(frames);
    r.target_lengths.push_back(length);
    for (int32_t i = 0; i < length; ++i) {
      r.targets[b * max_len + i] =
          1 + static_cast<int32_t>(u[k++] * (vocab - 1)) % static_cast<int32_t>(vocab - 1);
    }
  }
  r.lp = random_log_probs(batch * max_time, vocab, seed + 1);
  return r;
}

TEST(CtcLoss, FloatMatchesDoubleAndGradientRowsSumToMinusWeight) {
  RunContext ctx = testing::cpu_test_context();
  RandomBatch r = random_batch(4, 60, 7, 12, 31);
  std::vector<double> loss(r.batch), alpha(r.batch * ctc_loss_alpha_size(r.max_time, r.max_len));
  std::vector<double> dlp(r.lp.size());
  ctc_loss_forward(loss.data(), static_cast<double*>(nullptr), alpha.data(), r.lp.data(),
                   r.input_lengths.data(), r.targets.data(), r.target_lengths.data(), r.batch, r.max_time,
                   r.vocab, r.max_len, ctx);
  ctc_loss_backward(dlp.data(), static_cast<const double*>(nullptr), 0.5, alpha.data(), r.lp.data(),
                    r.input_lengths.data(), r.targets.data(), r.target_lengths.data(), r.batch, r.max_time,
                    r.vocab, r.max_len, ctx);
  std::vector<float> lpf(r.lp.begin(), r.lp.end()), lossf(r.batch), alphaf(alpha.size()), dlpf(dlp.size());
  ctc_loss_forward(lossf.data(), static_cast<float*>(nullptr), alphaf.data(), lpf.data(),
                   r.input_lengths.data(), r.targets.data(), r.target_lengths.data(), r.batch, r.max_time,
                   r.vocab, r.max_len, ctx);
  ctc_loss_backward(dlpf.data(), static_cast<const float*>(nullptr), 0.5f, alphaf.data(), lpf.data(),
                    r.input_lengths.data(), r.targets.data(), r.target_lengths.data(), r.batch, r.max_time,
                    r.vocab, r.max_len, ctx);
  for (int64_t b = 0; b < r.batch; ++b) {
    EXPECT_GT(loss[b], 1.0) << "utterance " << b << " should be a non-trivial possible case";
    EXPECT_NEAR(lossf[b], loss[b], 2e-6 * loss[b]);
    for (int64_t t = 0; t < r.max_time; ++t) {
      double row = 0.0;
      for (int64_t v = 0; v < r.vocab; ++v) {
        int64_t i = (b * r.max_time + t) * r.vocab + v;
        EXPECT_NEAR(dlpf[i], dlp[i], 1e-4) << "b=" << b << " t=" << t << " v=" << v;
        row += dlp[i];
      }
      // Occupancies of a valid frame sum to 1: this is why our gradient and PyTorch's
      // exp(lp) - occupancy agree after log_softmax backward.
      EXPECT_NEAR(row, t < r.input_lengths[b] ? -0.5 : 0.0, 1e-12) << "b=" << b << " t=" << t;
    }
  }
}

TEST(CtcLoss, SameBitsForAnyThreadCountAndReferencePath) {
  // batch * T * (2L + 1) = 8 * 200 * 21 is above the parallel threshold.
  RandomBatch r = random_batch(8, 200, 11, 10, 47);
  auto run = [&](bool reference, int threads, std::vector<double>* loss, std::vector<double>* dlp) {
    RunContext ctx = testing::cpu_test_context(reference, threads);
    std::vector<double> total(1), alpha(r.batch * ctc_loss_alpha_size(r.max_time, r.max_len));
    loss->assign(r.batch + 1, 0.0);
    dlp->assign(r.lp.size(), 0.0);
    ctc_loss_forward(loss->data(), total.data(), alpha.data(), r.lp.data(), r.input_lengths.data(),
                     r.targets.data(), r.target_lengths.data(), r.batch, r.max_time, r.vocab, r.max_len, ctx);
    (*loss)[r.batch] = total[0];
    ctc_loss_backward(dlp->data(), static_cast<const double*>(nullptr), 1.0, alpha.data(), r.lp.data(),
                      r.input_lengths.data(), r.targets.data(), r.target_lengths.data(), r.batch, r.max_time,
                      r.vocab, r.max_len, ctx);
  };
  std::vector<double> loss_ref, dlp_ref, loss1, dlp1, loss2, dlp2, loss3, dlp3;
  run(true, 2, &loss_ref, &dlp_ref);
  run(false, 1, &loss1, &dlp1);
  run(false, 2, &loss2, &dlp2);
  run(false, 3, &loss3, &dlp3);
  EXPECT_GT(loss_ref[r.batch], 0.0);
  EXPECT_EQ(loss1, loss_ref);
  EXPECT_EQ(loss2, loss_ref);
  EXPECT_EQ(loss3, loss_ref);
  EXPECT_EQ(dlp1, dlp_ref);
  EXPECT_EQ(dlp2, dlp_ref);
  EXPECT_EQ(dlp3, dlp_ref);
}

TEST(CtcLossDeathTest, RejectsBlankOrOutOfRangeLabels) {
  RunContext ctx = testing::cpu_test_context();
  std::vector<double> lp(2 * 3, -1.0), loss(1), alpha(ctc_loss_alpha_size(2, 1));
  int32_t input_length = 2, target_length = 1;
  for (int32_t bad : {0, 3, -1}) {
    EXPECT_DEATH(ctc_loss_forward(loss.data(), static_cast<double*>(nullptr), alpha.data(), lp.data(),
                                  &input_length, &bad, &target_length, 1, 2, 3, 1, ctx),
                 "CTC target label");
  }
  int32_t too_long = 3, label = 1;
  EXPECT_DEATH(ctc_loss_forward(loss.data(), static_cast<double*>(nullptr), alpha.data(), lp.data(),
                                &too_long, &label, &target_length, 1, 2, 3, 1, ctx),
               "input_lengths");
}

}  // namespace
}  // namespace moeasr
