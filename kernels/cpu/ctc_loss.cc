// kernels/cpu/ctc_loss.cc — CTC loss forward (alpha recursion) and backward (beta recursion and
// posterior occupancies), after PyTorch's aten/src/ATen/native/LossCTC.cpp, in log space, one
// utterance per OpenMP thread. See ctc_loss.h for the semantics and the gradient convention.
#include "kernels/cpu/ctc_loss.h"

#include <cmath>
#include <limits>
#include <vector>

#include "core/check.h"
#include "kernels/cpu/cpu_parallel.h"

namespace moeasr {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// log(exp(a) + exp(b)) without overflow; -inf is the identity.
inline double log_add(double a, double b) {
  if (a == kNegInf) return b;
  if (b == kNegInf) return a;
  double hi = a > b ? a : b;
  double lo = a > b ? b : a;
  return hi + std::log1p(std::exp(lo - hi));
}

// Every size and label is checked once, before any parallel loop.
void check_ctc_inputs(const int32_t* input_lengths, const int32_t* targets, const int32_t* target_lengths,
                      int64_t batch, int64_t max_time, int64_t vocab, int64_t max_target_length) {
  CHECK_GE(batch, 0);
  CHECK_GE(max_time, 0);
  CHECK_GE(vocab, 1) << "the vocabulary must hold at least the blank";
  CHECK_GE(max_target_length, 0);
  for (int64_t b = 0; b < batch; ++b) {
    CHECK_GE(input_lengths[b], 0) << "utterance " << b;
    CHECK_LE(input_lengths[b], max_time) << "utterance " << b;
    CHECK_GE(target_lengths[b], 0) << "utterance " << b;
    CHECK_LE(target_lengths[b], max_target_length) << "utterance " << b;
    for (int32_t i = 0; i < target_lengths[b]; ++i) {
      int32_t label = targets[b * max_target_length + i];
      CHECK(label > kCtcBlank && label < vocab)
          << "CTC target label " << label << " at utterance " << b << " position " << i << " is outside [1, "
          << vocab << ") (0 is the blank)";
    }
  }
}

// Label of extended position s: blanks at even positions, target labels at odd ones.
inline int32_t extended_label(const int32_t* target, int64_t s) {
  return (s & 1) ? target[s / 2] : kCtcBlank;
}

// A transition s-2 -> s skips the blank between two labels; allowed unless they are equal.
inline bool can_skip(const int32_t* target, int64_t s) {
  return s >= 2 && (s & 1) && extended_label(target, s) != extended_label(target, s - 2);
}

// log p(target | x) from the last alpha row; -inf when the target is impossible.
template <class T>
double log_likelihood(const T* alpha, int64_t frames, int64_t positions, int64_t stride) {
  if (frames == 0) return positions == 1 ? 0.0 : kNegInf;  // empty input: only the empty target
  const T* last = alpha + (frames - 1) * stride;
  double lp = static_cast<double>(last[positions - 1]);
  if (positions >= 2) lp = log_add(lp, static_cast<double>(last[positions - 2]));
  return lp;
}

template <class T>
T utterance_forward(T* alpha,            // [T, stride]
                    const T* log_probs,  // [T, V]
                    const int32_t* target, int64_t frames, int64_t target_length, int64_t vocab,
                    int64_t stride) {
  const int64_t positions = 2 * target_length + 1;
  std::vector<double> prev(static_cast<size_t>(positions), kNegInf);
  std::vector<double> cur(static_cast<size_t>(positions), kNegInf);
  for (int64_t t = 0; t < frames; ++t) {
    const T* lp = log_probs + t * vocab;
    for (int64_t s = 0; s < positions; ++s) {
      double a;
      if (t == 0) {
        a = s < 2 ? 0.0 : kNegInf;
      } else {
        a = prev[s];
        if (s >= 1) a = log_add(a, prev[s - 1]);
        if (can_skip(target, s)) a = log_add(a, prev[s - 2]);
      }
      cur[s] = a == kNegInf ? kNegInf : a + static_cast<double>(lp[extended_label(target, s)]);
      alpha[t * stride + s] = static_cast<T>(cur[s]);
    }
    prev.swap(cur);
  }
  double log_p = frames == 0 ? (positions == 1 ? 0.0 : kNegInf)
                             : (positions >= 2 ? log_add(prev[positions - 1], prev[positions - 2])
                                               : prev[positions - 1]);
  if (log_p == kNegInf) return T(0);  // zero_infinity
  return static_cast<T>(-log_p);
}

template <class T>
void utterance_backward(T* dlog_probs,       // [T_max, V]
                        const T* alpha,      // [T, stride]
                        const T* log_probs,  // [T, V]
                        const int32_t* target, double weight, int64_t frames, int64_t max_time,
                        int64_t target_length, int64_t vocab, int64_t stride) {
  for (int64_t i = 0; i < max_time * vocab; ++i) dlog_probs[i] = T(0);
  const int64_t positions = 2 * target_length + 1;
  const double log_p = log_likelihood(alpha, frames, positions, stride);
  if (frames == 0 || !std::isfinite(log_p)) return;                   // nothing to learn, or zero_infinity
  std::vector<double> next(static_cast<size_t>(positions), kNegInf);  // beta at t + 1
  std::vector<double> cur(static_cast<size_t>(positions), kNegInf);   // beta at t (emission excluded)
  std::vector<double> occupancy(static_cast<size_t>(vocab), 0.0);
  for (int64_t t = frames - 1; t >= 0; --t) {
    if (t == frames - 1) {
      for (int64_t s = 0; s < positions; ++s) cur[s] = s >= positions - 2 ? 0.0 : kNegInf;
    } else {
      const T* lp_next = log_probs + (t + 1) * vocab;
      for (int64_t s = 0; s < positions; ++s) {
        double b = kNegInf;
        for (int64_t step = 0; step <= 2; ++step) {
          int64_t to = s + step;
          if (to >= positions) break;
          if (step == 2 && !can_skip(target, to)) continue;
          if (next[to] == kNegInf) continue;
          b = log_add(b, next[to] + static_cast<double>(lp_next[extended_label(target, to)]));
        }
        cur[s] = b;
      }
    }
    for (int64_t v = 0; v < vocab; ++v) occupancy[v] = 0.0;
    const T* alpha_t = alpha + t * stride;
    for (int64_t s = 0; s < positions; ++s) {
      double a = static_cast<double>(alpha_t[s]);
      if (a == kNegInf || cur[s] == kNegInf) continue;
      occupancy[extended_label(target, s)] += std::exp(a + cur[s] - log_p);
    }
    T* d = dlog_probs + t * vocab;
    for (int64_t v = 0; v < vocab; ++v) d[v] = static_cast<T>(-weight * occupancy[v]);
    next.swap(cur);
  }
}

}  // namespace

template <class T>
void ctc_loss_forward(T* loss, T* total_loss, T* log_alpha, const T* log_probs, const int32_t* input_lengths,
                      const int32_t* targets, const int32_t* target_lengths, int64_t batch, int64_t max_time,
                      int64_t vocab, int64_t max_target_length, const RunContext& ctx) {
  check_ctc_inputs(input_lengths, targets, target_lengths, batch, max_time, vocab, max_target_length);
  const int64_t stride = 2 * max_target_length + 1;
  int threads = cpu_threads_for(ctx, batch * max_time * stride);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t b = 0; b < batch; ++b) {
    loss[b] = utterance_forward(log_alpha + b * max_time * stride, log_probs + b * max_time * vocab,
                                targets + b * max_target_length, input_lengths[b], target_lengths[b], vocab,
                                stride);
  }
  if (total_loss != nullptr) {
    double sum = 0.0;  // batch order, whatever the thread count
    for (int64_t b = 0; b < batch; ++b) sum += static_cast<double>(loss[b]);
    *total_loss = static_cast<T>(sum);
  }
}

template <class T>
void ctc_loss_backward(T* dlog_probs, const T* dloss, T dtotal_loss, const T* log_alpha, const T* log_probs,
                       const int32_t* input_lengths, const int32_t* targets, const int32_t* target_lengths,
                       int64_t batch, int64_t max_time, int64_t vocab, int64_t max_target_length,
                       const RunContext& ctx) {
  check_ctc_inputs(input_lengths, targets, target_lengths, batch, max_time, vocab, max_target_length);
  const int64_t stride = 2 * max_target_length + 1;
  int threads = cpu_threads_for(ctx, batch * max_time * (stride + vocab));
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t b = 0; b < batch; ++b) {
    double weight =
        static_cast<double>(dtotal_loss) + (dloss != nullptr ? static_cast<double>(dloss[b]) : 0.0);
    utterance_backward(dlog_probs + b * max_time * vocab, log_alpha + b * max_time * stride,
                       log_probs + b * max_time * vocab, targets + b * max_target_length, weight,
                       input_lengths[b], max_time, target_lengths[b], vocab, stride);
  }
}

template void ctc_loss_forward<float>(float*, float*, float*, const float*, const int32_t*, const int32_t*,
                                      const int32_t*, int64_t, int64_t, int64_t, int64_t, const RunContext&);
template void ctc_loss_forward<double>(double*, double*, double*, const double*, const int32_t*,
                                       const int32_t*, const int32_t*, int64_t, int64_t, int64_t, int64_t,
                                       const RunContext&);
template void ctc_loss_backward<float>(float*, const float*, float, const float*, const float*,
                                       const int32_t*, const int32_t*, const int32_t*, int64_t, int64_t,
                                       int64_t, int64_t, const RunContext&);
template void ctc_loss_backward<double>(double*, const double*, double, const double*, const double*,
                                        const int32_t*, const int32_t*, const int32_t*, int64_t, int64_t,
                                        int64_t, int64_t, const RunContext&);

}  // namespace moeasr
