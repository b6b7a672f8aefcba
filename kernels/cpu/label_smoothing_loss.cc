// kernels/cpu/label_smoothing_loss.cc — label-smoothing KL loss and its logits gradient, after WeNet's
// LabelSmoothingLoss and th_accuracy. See label_smoothing_loss.h for the semantics.
#include "kernels/cpu/label_smoothing_loss.h"

#include <cmath>
#include <vector>

#include "core/check.h"
#include "kernels/cpu/cpu_parallel.h"

namespace moeasr {
namespace {

// The smoothed target distribution: q_target for the label, q_other for every other symbol.
struct SmoothedTarget {
  double q_target;
  double q_other;
};

SmoothedTarget smoothed_target(double smoothing, int64_t vocab) {
  CHECK(smoothing >= 0.0 && smoothing <= 1.0) << "label smoothing " << smoothing << " outside [0, 1]";
  CHECK(vocab >= 2 || smoothing == 0.0) << "label smoothing needs at least 2 symbols, got " << vocab;
  return {1.0 - smoothing, vocab >= 2 ? smoothing / static_cast<double>(vocab - 1) : 0.0};
}

void check_targets(const int32_t* targets, int32_t ignore_id, double normalizer, int64_t n, int64_t vocab) {
  CHECK_GE(n, 0);
  CHECK_GE(vocab, 1);
  CHECK(normalizer > 0.0) << "label smoothing loss normalizer " << normalizer << " must be > 0";
  for (int64_t i = 0; i < n; ++i) {
    int32_t target = targets[i];
    CHECK(target == ignore_id || (target >= 0 && target < vocab))
        << "target " << target << " at row " << i << " is outside [0, " << vocab << ") and not ignore_id "
        << ignore_id;
  }
}

// q * log(q) with 0 * log 0 = 0.
inline double xlogx(double q) {
  return q > 0.0 ? q * std::log(q) : 0.0;
}

}  // namespace

template <class T>
void label_smoothing_loss_forward(T* loss, T* log_sum_exp, int64_t* num_kept, int64_t* num_correct,
                                  const T* logits, const int32_t* targets, double smoothing,
                                  int32_t ignore_id, double normalizer, int64_t n, int64_t vocab,
                                  const RunContext& ctx) {
  check_targets(targets, ignore_id, normalizer, n, vocab);
  const SmoothedTarget q = smoothed_target(smoothing, vocab);
  const double neg_entropy = xlogx(q.q_target) + static_cast<double>(vocab - 1) * xlogx(q.q_other);
  std::vector<double> row_kl(static_cast<size_t>(n), 0.0);
  std::vector<char> row_correct(static_cast<size_t>(n), 0);
  int threads = cpu_threads_for(ctx, n * vocab);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    if (targets[i] == ignore_id) {
      log_sum_exp[i] = T(0);
      continue;
    }
    const T* x = logits + i * vocab;
    double max_value = static_cast<double>(x[0]);
    int64_t argmax = 0;
    for (int64_t v = 1; v < vocab; ++v) {
      if (static_cast<double>(x[v]) > max_value) {
        max_value = static_cast<double>(x[v]);
        argmax = v;
      }
    }
    double sum = 0.0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(x[v]) - max_value);
    const double lse = max_value + std::log(sum);
    log_sum_exp[i] = static_cast<T>(lse);
    // sum_v q_v (log q_v - log p_v), split into the constant part and the cross-entropy part.
    double cross = 0.0;
    for (int64_t v = 0; v < vocab; ++v) {
      double qv = v == targets[i] ? q.q_target : q.q_other;
      if (qv > 0.0) cross += qv * (static_cast<double>(x[v]) - lse);
    }
    row_kl[i] = neg_entropy - cross;
    row_correct[i] = argmax == targets[i] ? 1 : 0;
  }
  double total = 0.0;  // row order, whatever the thread count
  int64_t kept = 0, correct = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (targets[i] == ignore_id) continue;
    total += row_kl[i];
    ++kept;
    correct += row_correct[i];
  }
  *loss = static_cast<T>(total / normalizer);
  if (num_kept != nullptr) *num_kept = kept;
  if (num_correct != nullptr) *num_correct = correct;
}

template <class T>
void label_smoothing_loss_backward(T* dlogits, T dloss, const T* logits, const T* log_sum_exp,
                                   const int32_t* targets, double smoothing, int32_t ignore_id,
                                   double normalizer, int64_t n, int64_t vocab, const RunContext& ctx) {
  check_targets(targets, ignore_id, normalizer, n, vocab);
  const SmoothedTarget q = smoothed_target(smoothing, vocab);
  const double scale = static_cast<double>(dloss) / normalizer;
  int threads = cpu_threads_for(ctx, n * vocab);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    T* d = dlogits + i * vocab;
    if (targets[i] == ignore_id) {
      for (int64_t v = 0; v < vocab; ++v) d[v] = T(0);
      continue;
    }
    const T* x = logits + i * vocab;
    const double lse = static_cast<double>(log_sum_exp[i]);
    for (int64_t v = 0; v < vocab; ++v) {
      double qv = v == targets[i] ? q.q_target : q.q_other;
      d[v] = static_cast<T>((std::exp(static_cast<double>(x[v]) - lse) - qv) * scale);
    }
  }
}

template void label_smoothing_loss_forward<float>(float*, float*, int64_t*, int64_t*, const float*,
                                                  const int32_t*, double, int32_t, double, int64_t, int64_t,
                                                  const RunContext&);
template void label_smoothing_loss_forward<double>(double*, double*, int64_t*, int64_t*, const double*,
                                                   const int32_t*, double, int32_t, double, int64_t, int64_t,
                                                   const RunContext&);
template void label_smoothing_loss_backward<float>(float*, float, const float*, const float*, const int32_t*,
                                                   double, int32_t, double, int64_t, int64_t,
                                                   const RunContext&);
template void label_smoothing_loss_backward<double>(double*, double, const double*, const double*,
                                                    const int32_t*, double, int32_t, double, int64_t, int64_t,
                                                    const RunContext&);

}  // namespace moeasr
