// tests/gpu/ctc_loss_cuda_test.cc — the CUDA CTC loss against kernels/cpu/ctc_loss.h on fresh random
// log_softmax outputs: label length 0, repeated labels, T barely long enough (frames = labels +
// adjacent repeats), impossible targets (zero_infinity), zero frames, B = 0, a 3001-symbol vocabulary,
// and 1200 labels (S = 2401 positions: more than one position per thread and the backward's > 48 KiB
// shared-memory opt-in). Every output (loss, total, log_alpha, dlog_probs) is poisoned before the run.
//
// Tolerances: loss, total_loss and log_alpha use kFp32Tolerance (both sides run the recursion in
// double and round once to fp32). dlog_probs uses max(kFp32Tolerance, 2 * max|log_alpha| * 2^-23):
// the CPU op (like PyTorch) saves log_alpha in fp32 and the backward computes each occupancy as
// exp(alpha + beta - log p) from those fp32 values, so when the GPU's and the CPU's double alphas round
// to adjacent fp32 values (1 ulp = |alpha| * 2^-23, e.g. 5e-4 at |alpha| = 5000) that occupancy term
// differs by that relative amount. That is the precision of the CPU op itself, not a GPU error.
#include "kernels/cuda/ctc_loss_cuda.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cpu/ctc_loss.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_util.h"

namespace moeasr {
namespace {

using testing::DeviceBuffer;

struct CtcCase {
  const char* name;
  int64_t batch, max_time, vocab, max_target_length;
  std::vector<int32_t> input_lengths;   // [B]
  std::vector<int32_t> targets;         // [B, L], padding -1
  std::vector<int32_t> target_lengths;  // [B]
};

// Row-wise log_softmax of random logits in [-scale, scale), computed in double, stored in fp32.
std::vector<float> random_log_probs(int64_t rows, int64_t vocab, uint64_t seed, float scale) {
  auto logits = testing::random_floats(rows * vocab, seed, -scale, scale);
  std::vector<float> out(logits.size());
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = logits.data() + r * vocab;
    double max_value = x[0];
    for (int64_t v = 1; v < vocab; ++v) max_value = std::max(max_value, double(x[v]));
    double sum = 0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(double(x[v]) - max_value);
    const double lse = max_value + std::log(sum);
    for (int64_t v = 0; v < vocab; ++v) out[r * vocab + v] = static_cast<float>(double(x[v]) - lse);
  }
  return out;
}

// Adjacent repeats in a label sequence: each needs one extra frame (a blank in between).
int32_t min_frames(const std::vector<int32_t>& labels) {
  int32_t frames = static_cast<int32_t>(labels.size());
  for (size_t i = 1; i < labels.size(); ++i) frames += labels[i] == labels[i - 1] ? 1 : 0;
  return frames;
}

// Builds a case from per-utterance label lists and frame counts (targets padded with -1).
CtcCase make_case(const char* name, int64_t max_time, int64_t vocab,
                  const std::vector<std::vector<int32_t>>& labels, const std::vector<int32_t>& frames) {
  CtcCase c;
  c.name = name;
  c.batch = static_cast<int64_t>(labels.size());
  c.max_time = max_time;
  c.vocab = vocab;
  c.max_target_length = 0;
  for (const auto& l : labels) c.max_target_length = std::max<int64_t>(c.max_target_length, l.size());
  c.targets.assign(static_cast<size_t>(c.batch * c.max_target_length), -1);
  for (int64_t b = 0; b < c.batch; ++b) {
    for (size_t i = 0; i < labels[b].size(); ++i) c.targets[b * c.max_target_length + i] = labels[b][i];
    c.target_lengths.push_back(static_cast<int32_t>(labels[b].size()));
  }
  c.input_lengths = frames;
  return c;
}

std::vector<int32_t> random_labels(int64_t count, int64_t vocab, std::mt19937_64& rng, bool allow_repeats) {
  std::uniform_int_distribution<int32_t> dist(1, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> labels;
  while (static_cast<int64_t>(labels.size()) < count) {
    int32_t label = dist(rng);
    if (!allow_repeats && !labels.empty() && labels.back() == label) continue;
    labels.push_back(label);
  }
  return labels;
}

std::vector<CtcCase> cases() {
  std::vector<CtcCase> all;
  {  // hand-made edges, V = 7, T = 12
    std::vector<std::vector<int32_t>> labels = {
        {}, {2, 2, 2, 3, 3}, {2, 2, 2, 3, 3}, {}, {4, 5}, {1, 6, 2, 5, 3}, {6}, {4, 1, 4}, {3, 3}};
    std::vector<int32_t> frames = {12, 8, 7, 0, 0, 12, 1, 3, 3};
    EXPECT_EQ(min_frames(labels[1]), 8) << "case 1 is barely long enough";
    all.push_back(make_case("edges", 12, 7, labels, frames));
  }
  {  // random, small vocabulary (many repeats), some utterances barely long enough
    std::mt19937_64 rng(1234);
    std::vector<std::vector<int32_t>> labels;
    std::vector<int32_t> frames;
    const int64_t max_time = 61;
    for (int b = 0; b < 5; ++b) {
      auto l = random_labels(std::uniform_int_distribution<int64_t>(0, 17)(rng), 4, rng, true);
      int32_t need = min_frames(l);
      frames.push_back(b == 1 ? need : std::uniform_int_distribution<int32_t>(need, int32_t(max_time))(rng));
      labels.push_back(l);
    }
    labels.push_back({3, 3, 3});  // impossible: 5 frames needed
    frames.push_back(4);
    all.push_back(make_case("random_small_vocab", max_time, 4, labels, frames));
  }
  {  // decoder-sized vocabulary
    std::mt19937_64 rng(99);
    std::vector<std::vector<int32_t>> labels = {random_labels(41, 3001, rng, true),
                                                random_labels(13, 3001, rng, true),
                                                random_labels(0, 3001, rng, true)};
    all.push_back(make_case("vocab_3001", 203, 3001, labels, {203, 150, 77}));
  }
  {  // 1200 labels: S = 2401 positions > 1024 threads; backward shared memory > 48 KiB
    std::mt19937_64 rng(7);
    std::vector<std::vector<int32_t>> labels = {random_labels(1200, 23, rng, false),
                                                random_labels(700, 23, rng, true)};
    all.push_back(make_case("long_targets", 1300, 23, labels, {1300, 1000}));
  }
  all.push_back(make_case("empty_batch", 5, 3, {}, {}));
  return all;
}

void run_case(const CtcCase& c, bool with_dloss) {
  SCOPED_TRACE(::testing::Message() << "case " << c.name << (with_dloss ? " (with dloss)" : " (dloss null)"));
  RunContext cpu = testing::cpu_test_context(), gpu = testing::gpu_test_context();
  const int64_t alpha_size = c.batch * ctc_loss_alpha_size(c.max_time, c.max_target_length);
  const int64_t lp_size = c.batch * c.max_time * c.vocab;
  auto log_probs = random_log_probs(c.batch * c.max_time, c.vocab, 500 + c.vocab + c.max_time, 2.0f);
  auto dloss = testing::random_floats(c.batch, 77 + c.batch, 0.1f, 2.0f);
  const float dtotal = 0.25f;

  // CPU reference; log_alpha pre-filled with -inf where the CPU op leaves entries unwritten.
  std::vector<float> want_loss(static_cast<size_t>(c.batch)), want_total(1);
  std::vector<float> want_alpha(static_cast<size_t>(alpha_size), -std::numeric_limits<float>::infinity());
  ctc_loss_forward(want_loss.data(), want_total.data(), want_alpha.data(), log_probs.data(),
                   c.input_lengths.data(), c.targets.data(), c.target_lengths.data(), c.batch, c.max_time,
                   c.vocab, c.max_target_length, cpu);
  std::vector<float> want_grad(static_cast<size_t>(lp_size));
  ctc_loss_backward(want_grad.data(), with_dloss ? dloss.data() : nullptr, dtotal, want_alpha.data(),
                    log_probs.data(), c.input_lengths.data(), c.targets.data(), c.target_lengths.data(),
                    c.batch, c.max_time, c.vocab, c.max_target_length, cpu);

  DeviceBuffer<float> d_log_probs(log_probs), d_dloss(dloss);
  DeviceBuffer<int32_t> d_input_lengths(c.input_lengths), d_targets(c.targets),
      d_target_lengths(c.target_lengths);
  DeviceBuffer<float> d_loss(c.batch), d_total(1), d_alpha(alpha_size), d_grad(lp_size);
  ctc_loss_forward_cuda(d_loss.get(), d_total.get(), d_alpha.get(), d_log_probs.get(), d_input_lengths.get(),
                        d_targets.get(), d_target_lengths.get(), c.batch, c.max_time, c.vocab,
                        c.max_target_length, gpu);
  ctc_loss_backward_cuda(d_grad.get(), with_dloss ? d_dloss.get() : nullptr, dtotal, d_alpha.get(),
                         d_log_probs.get(), d_input_lengths.get(), d_targets.get(), d_target_lengths.get(),
                         c.batch, c.max_time, c.vocab, c.max_target_length, gpu);

  auto got_loss = d_loss.download();
  EXPECT_LE(testing::max_scaled_error(got_loss, want_loss), testing::kFp32Tolerance) << "loss";
  EXPECT_LE(testing::max_scaled_error(d_total.download(), want_total), testing::kFp32Tolerance)
      << "total_loss";
  auto got_alpha = d_alpha.download();
  EXPECT_LE(testing::max_scaled_error(got_alpha, want_alpha), testing::kFp32Tolerance) << "log_alpha";
  double max_alpha = 0;
  for (float a : want_alpha) {
    if (std::isfinite(a)) max_alpha = std::max(max_alpha, std::fabs(double(a)));
  }
  const double grad_tolerance = std::max(testing::kFp32Tolerance, 2.0 * max_alpha * std::ldexp(1.0, -23));
  EXPECT_LE(testing::max_scaled_error(d_grad.download(), want_grad), grad_tolerance)
      << "dlog_probs (tolerance " << grad_tolerance << ")";

  // Not vacuous: some loss is positive and some gradient is non-zero (when there is anything to learn).
  if (c.batch > 0) {
    EXPECT_GT(*std::max_element(want_loss.begin(), want_loss.end()), 0.0f);
    double grad_norm = 0;
    for (float g : want_grad) grad_norm += double(g) * g;
    EXPECT_GT(grad_norm, 0.0);
  }
  if (std::string(c.name) == "edges") {  // the impossible utterances: loss 0 (zero_infinity)
    EXPECT_EQ(got_loss[2], 0.0f);
    EXPECT_EQ(got_loss[4], 0.0f);
    EXPECT_EQ(got_loss[3], 0.0f);  // empty input, empty target: p = 1
    EXPECT_GT(got_loss[1], 0.0f);  // barely possible
  }
}

TEST(CtcLossCuda, MatchesCpuWithPerUtteranceUpstream) {
  MOEASR_SKIP_WITHOUT_GPU();
  for (const CtcCase& c : cases()) run_case(c, true);
}

TEST(CtcLossCuda, MatchesCpuWithTotalUpstreamOnly) {
  MOEASR_SKIP_WITHOUT_GPU();
  for (const CtcCase& c : cases()) run_case(c, false);
}

// Device-side behaviour the CPU op cannot show (it CHECK-fails): an utterance with a label outside
// [1, V) gets loss NaN and NaN gradients; the others are unaffected.
TEST(CtcLossCuda, BadLabelGivesNanForThatUtteranceOnly) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext gpu = testing::gpu_test_context();
  const int64_t batch = 2, max_time = 6, vocab = 5, max_target_length = 2;
  auto log_probs = random_log_probs(batch * max_time, vocab, 31, 1.0f);
  std::vector<int32_t> input_lengths = {6, 6}, targets = {1, 2, 3, 5}, target_lengths = {2, 2};
  DeviceBuffer<float> d_log_probs(log_probs);
  DeviceBuffer<int32_t> d_input_lengths(input_lengths), d_targets(targets), d_target_lengths(target_lengths);
  DeviceBuffer<float> d_loss(batch), d_total(1), d_alpha(batch * max_time * (2 * max_target_length + 1)),
      d_grad(batch * max_time * vocab);
  ctc_loss_forward_cuda(d_loss.get(), d_total.get(), d_alpha.get(), d_log_probs.get(), d_input_lengths.get(),
                        d_targets.get(), d_target_lengths.get(), batch, max_time, vocab, max_target_length,
                        gpu);
  ctc_loss_backward_cuda(d_grad.get(), nullptr, 1.0f, d_alpha.get(), d_log_probs.get(), d_input_lengths.get(),
                         d_targets.get(), d_target_lengths.get(), batch, max_time, vocab, max_target_length,
                         gpu);
  auto loss = d_loss.download();
  EXPECT_TRUE(std::isfinite(loss[0]));
  EXPECT_GT(loss[0], 0.0f);
  EXPECT_TRUE(std::isnan(loss[1]));
  EXPECT_TRUE(std::isnan(d_total.download()[0]));
  auto grad = d_grad.download();
  for (int64_t i = 0; i < max_time * vocab; ++i) {
    ASSERT_TRUE(std::isfinite(grad[i])) << i;
    ASSERT_TRUE(std::isnan(grad[max_time * vocab + i])) << i;
  }
}

}  // namespace
}  // namespace moeasr
