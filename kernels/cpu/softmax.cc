// kernels/cpu/softmax.cc — masked softmax / log_softmax over rows (torch.softmax, torch.log_softmax,
// WeNet's masked_fill(-inf) -> softmax -> masked_fill(0)). One row per loop iteration, each row
// written by exactly one thread with sums in a fixed order, so the result does not depend on the
// thread count; ctx.use_reference_kernels runs the same loop on one thread.
#include "kernels/cpu/softmax.h"

#include <cmath>
#include <limits>

#include "core/check.h"
#include "kernels/cpu/cpu_parallel.h"

namespace moeasr {
namespace {

// Rows are viewed as [G, heads, q] and the mask as [G, q, C]: row (g, h, i) uses mask row (g, i).
// heads = 1, q = 1 is a plain [R, C] mask.
inline const uint8_t* mask_row(const uint8_t* mask, int64_t row, int64_t cols, int64_t heads, int64_t q) {
  if (mask == nullptr) return nullptr;
  int64_t m = (row / (heads * q)) * q + row % q;
  return mask + m * cols;
}

template <class T, bool kLog>
void softmax_rows_forward(T* y, const T* x, const uint8_t* mask, int64_t rows, int64_t cols, int64_t heads,
                          int64_t q, const RunContext& ctx) {
  CHECK_GE(rows, 0);
  CHECK_GE(cols, 0);
  CHECK_GE(heads, 1);
  CHECK_GE(q, 1);
  CHECK_EQ(rows % (heads * q), 0) << "rows must be a whole number of [heads, q] mask groups";
  int threads = cpu_threads_for(ctx, rows * cols);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    const uint8_t* m = mask_row(mask, r, cols, heads, q);
    bool any = false;
    T row_max = -std::numeric_limits<T>::infinity();
    for (int64_t j = 0; j < cols; ++j) {
      if (m != nullptr && m[j] == 0) continue;
      any = true;
      if (xr[j] > row_max) row_max = xr[j];
    }
    if (!any) {  // fully masked (or C = 0): all zeros
      for (int64_t j = 0; j < cols; ++j) yr[j] = T(0);
      continue;
    }
    double sum = 0.0;
    for (int64_t j = 0; j < cols; ++j) {
      if (m != nullptr && m[j] == 0) continue;
      sum += static_cast<double>(std::exp(xr[j] - row_max));
    }
    if (kLog) {
      const double log_sum = std::log(sum);
      for (int64_t j = 0; j < cols; ++j) {
        bool kept = m == nullptr || m[j] != 0;
        yr[j] = kept ? static_cast<T>(static_cast<double>(xr[j] - row_max) - log_sum) : T(0);
      }
    } else {
      const double inv_sum = 1.0 / sum;
      for (int64_t j = 0; j < cols; ++j) {
        bool kept = m == nullptr || m[j] != 0;
        yr[j] = kept ? static_cast<T>(static_cast<double>(std::exp(xr[j] - row_max)) * inv_sum) : T(0);
      }
    }
  }
}

}  // namespace

template <class T>
void softmax_forward(T* y, const T* x, const uint8_t* mask, int64_t rows, int64_t cols,
                     const RunContext& ctx) {
  softmax_rows_forward<T, false>(y, x, mask, rows, cols, 1, 1, ctx);
}

template <class T>
void softmax_backward(T* dx, const T* dy, const T* y, int64_t rows, int64_t cols, const RunContext& ctx) {
  CHECK_GE(rows, 0);
  CHECK_GE(cols, 0);
  int threads = cpu_threads_for(ctx, rows * cols);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* dyr = dy + r * cols;
    const T* yr = y + r * cols;
    T* dxr = dx + r * cols;
    double dot = 0.0;
    for (int64_t j = 0; j < cols; ++j) dot += static_cast<double>(dyr[j]) * static_cast<double>(yr[j]);
    for (int64_t j = 0; j < cols; ++j) {
      dxr[j] = static_cast<T>(static_cast<double>(yr[j]) * (static_cast<double>(dyr[j]) - dot));
    }
  }
}

template <class T>
void log_softmax_forward(T* y, const T* x, const uint8_t* mask, int64_t rows, int64_t cols,
                         const RunContext& ctx) {
  softmax_rows_forward<T, true>(y, x, mask, rows, cols, 1, 1, ctx);
}

template <class T>
void log_softmax_backward(T* dx, const T* dy, const T* y, const uint8_t* mask, int64_t rows, int64_t cols,
                          const RunContext& ctx) {
  CHECK_GE(rows, 0);
  CHECK_GE(cols, 0);
  int threads = cpu_threads_for(ctx, rows * cols);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* dyr = dy + r * cols;
    const T* yr = y + r * cols;
    T* dxr = dx + r * cols;
    const uint8_t* m = mask == nullptr ? nullptr : mask + r * cols;
    double sum = 0.0;
    for (int64_t j = 0; j < cols; ++j) {
      if (m == nullptr || m[j] != 0) sum += static_cast<double>(dyr[j]);
    }
    for (int64_t j = 0; j < cols; ++j) {
      bool kept = m == nullptr || m[j] != 0;
      dxr[j] = kept ? static_cast<T>(static_cast<double>(dyr[j]) - std::exp(static_cast<double>(yr[j])) * sum)
                    : T(0);
    }
  }
}

template <class T>
void attention_softmax_forward(T* probs, const T* scores, const uint8_t* mask, int64_t batch, int64_t heads,
                               int64_t queries, int64_t keys, const RunContext& ctx) {
  CHECK_GE(batch, 0);
  if (batch == 0 || queries == 0) return;
  softmax_rows_forward<T, false>(probs, scores, mask, batch * heads * queries, keys, heads, queries, ctx);
}

template <class T>
void attention_softmax_backward(T* dscores, const T* dprobs, const T* probs, int64_t batch, int64_t heads,
                                int64_t queries, int64_t keys, const RunContext& ctx) {
  softmax_backward(dscores, dprobs, probs, batch * heads * queries, keys, ctx);
}

template void softmax_forward<float>(float*, const float*, const uint8_t*, int64_t, int64_t,
                                     const RunContext&);
template void softmax_backward<float>(float*, const float*, const float*, int64_t, int64_t,
                                      const RunContext&);
template void log_softmax_forward<float>(float*, const float*, const uint8_t*, int64_t, int64_t,
                                         const RunContext&);
template void log_softmax_backward<float>(float*, const float*, const float*, const uint8_t*, int64_t,
                                          int64_t, const RunContext&);
template void attention_softmax_forward<float>(float*, const float*, const uint8_t*, int64_t, int64_t,
                                               int64_t, int64_t, const RunContext&);
template void attention_softmax_backward<float>(float*, const float*, const float*, int64_t, int64_t, int64_t,
                                                int64_t, const RunContext&);

template void softmax_forward<double>(double*, const double*, const uint8_t*, int64_t, int64_t,
                                      const RunContext&);
template void softmax_backward<double>(double*, const double*, const double*, int64_t, int64_t,
                                       const RunContext&);
template void log_softmax_forward<double>(double*, const double*, const uint8_t*, int64_t, int64_t,
                                          const RunContext&);
template void log_softmax_backward<double>(double*, const double*, const double*, const uint8_t*, int64_t,
                                           int64_t, const RunContext&);
template void attention_softmax_forward<double>(double*, const double*, const uint8_t*, int64_t, int64_t,
                                                int64_t, int64_t, const RunContext&);
template void attention_softmax_backward<double>(double*, const double*, const double*, int64_t, int64_t,
                                                 int64_t, int64_t, const RunContext&);

}  // namespace moeasr
