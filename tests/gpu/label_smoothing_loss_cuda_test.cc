// tests/gpu/label_smoothing_loss_cuda_test.cc — the CUDA label-smoothing loss against
// kernels/cpu/label_smoothing_loss.h on fresh random logits: fp32 and bf16 logits, odd N and V,
// V = 5000 (the recipes' vocabulary), N = 0 and 1, ignore_id rows (and an all-ignored batch),
// smoothing 0 and 0.1, normalisation by batch and by kept tokens, rows whose argmax is the target
// (so the correct count is not trivially 0), and a second call that must give the same bits
// (deterministic loss). Every output is poisoned before the run.
//
// Tolerances: loss, log_sum_exp and fp32 dlogits use kFp32Tolerance. The GPU computes each row in
// fp32 (the CPU in double); with |logits| <= 8 and V = 5000 the log-sum-exp error is a few fp32 ulps
// of ~10, i.e. ~1e-6 scaled, and every later term inherits at most that. bf16 dlogits use
// kBf16Tolerance (relative norm) against the CPU op on the bf16-rounded logits; the loss and
// log_sum_exp of the bf16 path are fp32 outputs computed from the same values, so they keep
// kFp32Tolerance. The counts must be equal.
#include "kernels/cuda/label_smoothing_loss_cuda.h"

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#include "kernels/cpu/label_smoothing_loss.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_util.h"

namespace moeasr {
namespace {

using testing::DeviceBuffer;

struct LsCase {
  int64_t n, vocab;
  double smoothing;
  bool by_tokens;        // normalizer = kept rows (else the "batch size" 3)
  double ignored_share;  // fraction of rows set to ignore_id
};

const LsCase kCases[] = {
    {0, 7, 0.1, false, 0.0},       {1, 1, 0.0, false, 0.0},    {1, 2, 0.1, true, 0.0},
    {13, 37, 0.1, false, 0.3},     {29, 257, 0.0, true, 0.2},  {9, 11, 0.1, true, 1.0},
    {211, 5000, 0.1, false, 0.25}, {67, 5000, 0.1, true, 0.1}, {5, 4099, 0.3, false, 0.0}};

template <class T>
std::vector<T> to_storage(const std::vector<float>& x);
template <>
std::vector<float> to_storage<float>(const std::vector<float>& x) {
  return x;
}
template <>
std::vector<__nv_bfloat16> to_storage<__nv_bfloat16>(const std::vector<float>& x) {
  return testing::to_bf16(x);
}
std::vector<float> to_float(const std::vector<float>& x) {
  return x;
}
std::vector<float> to_float(const std::vector<__nv_bfloat16>& x) {
  return testing::from_bf16(x);
}

template <class T>
void run_case(const LsCase& c) {
  SCOPED_TRACE(::testing::Message() << "N=" << c.n << " V=" << c.vocab << " eps=" << c.smoothing
                                    << (c.by_tokens ? " by tokens" : " by batch")
                                    << " ignored=" << c.ignored_share);
  RunContext cpu = testing::cpu_test_context(), gpu = testing::gpu_test_context();
  const int32_t ignore_id = kIgnoreId;
  // Logits: what the device holds (bf16-rounded for bf16), so both sides see the same values.
  auto logits =
      to_float(to_storage<T>(testing::random_floats(c.n * c.vocab, 1000 + c.n * 7 + c.vocab, -8.0f, 8.0f)));
  std::mt19937_64 rng(55 + c.n + c.vocab);
  std::uniform_int_distribution<int32_t> label(0, static_cast<int32_t>(c.vocab - 1));
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::vector<int32_t> targets(static_cast<size_t>(c.n));
  int64_t kept = 0;
  bool some_forced_correct = false;  // a kept row whose target is its argmax
  for (int64_t i = 0; i < c.n; ++i) {
    if (unit(rng) < c.ignored_share) {
      targets[i] = ignore_id;
      continue;
    }
    ++kept;
    if (i % 3 == 0) {  // target = the row's first argmax, so some rows count as correct
      int64_t best = 0;
      for (int64_t v = 1; v < c.vocab; ++v)
        best = logits[i * c.vocab + v] > logits[i * c.vocab + best] ? v : best;
      targets[i] = static_cast<int32_t>(best);
      some_forced_correct = true;
    } else {
      targets[i] = label(rng);
    }
  }
  const double normalizer = c.by_tokens ? static_cast<double>(kept > 0 ? kept : 1) : 3.0;
  const float dloss = 0.7f;

  float want_loss = 0;
  int64_t want_kept = -1, want_correct = -1;
  std::vector<float> want_lse(static_cast<size_t>(c.n)), want_grad(static_cast<size_t>(c.n * c.vocab));
  label_smoothing_loss_forward(&want_loss, want_lse.data(), &want_kept, &want_correct, logits.data(),
                               targets.data(), c.smoothing, ignore_id, normalizer, c.n, c.vocab, cpu);
  label_smoothing_loss_backward(want_grad.data(), dloss, logits.data(), want_lse.data(), targets.data(),
                                c.smoothing, ignore_id, normalizer, c.n, c.vocab, cpu);

  DeviceBuffer<T> d_logits(to_storage<T>(logits));
  DeviceBuffer<int32_t> d_targets(targets);
  DeviceBuffer<float> d_loss(1), d_lse(c.n);
  DeviceBuffer<int64_t> d_kept(1), d_correct(1);
  DeviceBuffer<T> d_grad(c.n * c.vocab);
  const size_t workspace_bytes = label_smoothing_loss_workspace_bytes(c.n);
  DeviceBuffer<char> d_workspace(static_cast<int64_t>(workspace_bytes));
  label_smoothing_loss_forward_cuda<T>(d_loss.get(), d_lse.get(), d_kept.get(), d_correct.get(),
                                       d_logits.get(), d_targets.get(), c.smoothing, ignore_id, normalizer,
                                       c.n, c.vocab, d_workspace.get(), workspace_bytes, gpu);
  label_smoothing_loss_backward_cuda<T>(d_grad.get(), dloss, d_logits.get(), d_lse.get(), d_targets.get(),
                                        c.smoothing, ignore_id, normalizer, c.n, c.vocab, gpu);

  const std::vector<float> got_loss = d_loss.download();
  EXPECT_LE(testing::max_scaled_error(got_loss, std::vector<float>{want_loss}), testing::kFp32Tolerance)
      << "loss " << got_loss[0] << " vs " << want_loss;
  EXPECT_LE(testing::max_scaled_error(d_lse.download(), want_lse), testing::kFp32Tolerance) << "log_sum_exp";
  EXPECT_EQ(d_kept.download()[0], want_kept);
  EXPECT_EQ(d_correct.download()[0], want_correct);
  if (c.n > 0 && c.vocab >= 2 && c.ignored_share < 1.0) {
    EXPECT_GT(want_loss, 0.0f);  // not vacuous
    if (some_forced_correct) {
      EXPECT_GT(want_correct, 0);
    }
  }
  auto got_grad = to_float(d_grad.download());
  if constexpr (std::is_same_v<T, float>) {
    EXPECT_LE(testing::max_scaled_error(got_grad, want_grad), testing::kFp32Tolerance) << "dlogits";
  } else {
    bool all_zero = true;
    for (float g : want_grad) all_zero = all_zero && g == 0.0f;
    if (all_zero) {
      EXPECT_EQ(testing::max_scaled_error(got_grad, want_grad), 0.0) << "dlogits (all rows ignored)";
    } else {
      EXPECT_LE(testing::relative_norm_error(got_grad, want_grad), testing::kBf16Tolerance) << "dlogits";
    }
  }

  // Deterministic: a second forward gives the same loss bits.
  d_loss.poison();
  label_smoothing_loss_forward_cuda<T>(d_loss.get(), d_lse.get(), nullptr, nullptr, d_logits.get(),
                                       d_targets.get(), c.smoothing, ignore_id, normalizer, c.n, c.vocab,
                                       d_workspace.get(), workspace_bytes, gpu);
  const std::vector<float> again = d_loss.download();
  EXPECT_EQ(std::memcmp(again.data(), got_loss.data(), sizeof(float)), 0)
      << "loss not bit-identical on rerun";
}

TEST(LabelSmoothingLossCuda, Fp32MatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  for (const LsCase& c : kCases) run_case<float>(c);
}

TEST(LabelSmoothingLossCuda, Bf16MatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  for (const LsCase& c : kCases) run_case<__nv_bfloat16>(c);
}

// Device-side behaviour the CPU op cannot show (it CHECK-fails): a kept row whose target is outside
// [0, V) makes the loss NaN.
TEST(LabelSmoothingLossCuda, OutOfRangeTargetGivesNanLoss) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext gpu = testing::gpu_test_context();
  const int64_t n = 3, vocab = 6;
  auto logits = testing::random_floats(n * vocab, 8);
  std::vector<int32_t> targets = {1, 6, kIgnoreId};
  DeviceBuffer<float> d_logits(logits), d_loss(1), d_lse(n);
  DeviceBuffer<int32_t> d_targets(targets);
  const size_t workspace_bytes = label_smoothing_loss_workspace_bytes(n);
  DeviceBuffer<char> d_workspace(static_cast<int64_t>(workspace_bytes));
  label_smoothing_loss_forward_cuda<float>(d_loss.get(), d_lse.get(), nullptr, nullptr, d_logits.get(),
                                           d_targets.get(), 0.1, kIgnoreId, 1.0, n, vocab, d_workspace.get(),
                                           workspace_bytes, gpu);
  EXPECT_TRUE(std::isnan(d_loss.download()[0]));
}

}  // namespace
}  // namespace moeasr
