// kernels/cpu/elementwise.cc — elementwise ops and GLU (see elementwise.h). Every output element is
// written by exactly one iteration, so the OpenMP loops give the same bits as one thread; with
// ctx.use_reference_kernels cpu_threads_for() returns 1 and the same loop runs plainly.
#include "kernels/cpu/elementwise.h"

#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/check.h"
#include "kernels/cpu/cpu_parallel.h"

namespace moeasr {
namespace {

// exp(a) for a <= 0. double: std::exp. float: Cephes' expf scheme (a = n ln2 + r, |r| <= ln2 / 2, a
// degree-6 polynomial for e^r, 2^n put into the exponent bits), within 2 ulp of std::exp (tested in
// elementwise_test) and made of plain arithmetic and selects, so that loops calling it vectorize
// (std::exp(float) is a scalar libm call: SiLU and sigmoid spent most of their time there).
inline double exp_nonpositive(double a) {
  return std::exp(a);
}
inline float exp_nonpositive(float a) {
  const float kLowest = -87.33f;  // e^-87.33 ~ 1.18e-38, just above FLT_MIN; below it the result is 0
  // NaN goes through the arithmetic as 0 (so that n converts to int defined) and is returned at the end.
  const float clamped = a < kLowest ? kLowest : (a == a ? a : 0.0f);
  // n = round(a / ln2) by the 1.5 * 2^23 trick (round to nearest even under the default mode).
  const float kShifter = 12582912.0f;
  const float n = (clamped * 1.44269504088896341f + kShifter) - kShifter;
  const float r = (clamped - n * 0.693359375f) - n * -2.12194440e-4f;  // ln2 in two parts
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  const float e_r = poly * r * r + r + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;  // 2^n, n >= -126
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  const float value = a == a ? e_r * two_n : a;
  return a < kLowest ? 0.0f : value;
}

// 1 / (1 + exp(-x)) without overflow: exp is only taken of -|x| <= 0. Branch-free (selects) so that
// the loops over it vectorize.
template <class T>
inline T stable_sigmoid(T x) {
  const bool nonnegative = x >= T(0);
  const T e = exp_nonpositive(nonnegative ? -x : x);
  const T s = T(1) / (T(1) + e);
  return nonnegative ? s : e * s;
}

}  // namespace

template <class T>
void add_forward(T* out, const T* a, const T* b, int64_t n, const RunContext& ctx) {
  CHECK_GE(n, 0);
  int threads = cpu_threads_for(ctx, n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

template <class T>
void add_backward(T* da, T* db, const T* dout, int64_t n, const RunContext& ctx) {
  CHECK_GE(n, 0);
  int threads = cpu_threads_for(ctx, n);
  if (da != nullptr) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; ++i) da[i] = dout[i];
  }
  if (db != nullptr) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; ++i) db[i] = dout[i];
  }
}

template <class T>
void scale_forward(T* out, const T* x, T alpha, int64_t n, const RunContext& ctx) {
  CHECK_GE(n, 0);
  int threads = cpu_threads_for(ctx, n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = alpha * x[i];
}

template <class T>
void scale_backward(T* dx, const T* dout, T alpha, int64_t n, const RunContext& ctx) {
  scale_forward(dx, dout, alpha, n, ctx);
}

template <class T>
void residual_add_forward(T* out, const T* x, const T* y, T alpha, int64_t n, const RunContext& ctx) {
  CHECK_GE(n, 0);
  int threads = cpu_threads_for(ctx, 2 * n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] + alpha * y[i];
}

template <class T>
void residual_add_backward(T* dx, T* dy, const T* dout, T alpha, int64_t n, const RunContext& ctx) {
  CHECK_GE(n, 0);
  if (dx != nullptr) add_backward(dx, static_cast<T*>(nullptr), dout, n, ctx);
  if (dy != nullptr) scale_forward(dy, dout, alpha, n, ctx);
}

template <class T>
void add_scaled_inplace(T* acc, const T* x, T alpha, int64_t n, const RunContext& ctx) {
  CHECK_GE(n, 0);
  int threads = cpu_threads_for(ctx, 2 * n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) acc[i] += alpha * x[i];
}

template <class T>
void relu_forward(T* out, const T* x, int64_t n, const RunContext& ctx) {
  CHECK_GE(n, 0);
  int threads = cpu_threads_for(ctx, n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] > T(0) ? x[i] : T(0);
}

template <class T>
void relu_backward(T* dx, const T* dout, const T* x, int64_t n, const RunContext& ctx) {
  CHECK_GE(n, 0);
  int threads = cpu_threads_for(ctx, n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) dx[i] = x[i] > T(0) ? dout[i] : T(0);
}

template <class T>
void silu_forward(T* out, const T* x, int64_t n, const RunContext& ctx) {
  CHECK_GE(n, 0);
  // exp costs ~10-20 flops: count it so that short vectors stay on one thread.
  int threads = cpu_threads_for(ctx, 16 * n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * stable_sigmoid(x[i]);
}

template <class T>
void silu_backward(T* dx, const T* dout, const T* x, int64_t n, const RunContext& ctx) {
  CHECK_GE(n, 0);
  int threads = cpu_threads_for(ctx, 16 * n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    T s = stable_sigmoid(x[i]);
    dx[i] = dout[i] * s * (T(1) + x[i] * (T(1) - s));
  }
}

template <class T>
void sigmoid_forward(T* out, const T* x, int64_t n, const RunContext& ctx) {
  CHECK_GE(n, 0);
  int threads = cpu_threads_for(ctx, 16 * n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = stable_sigmoid(x[i]);
}

template <class T>
void sigmoid_backward(T* dx, const T* dout, const T* out, int64_t n, const RunContext& ctx) {
  CHECK_GE(n, 0);
  int threads = cpu_threads_for(ctx, 3 * n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) dx[i] = dout[i] * out[i] * (T(1) - out[i]);
}

template <class T>
void glu_forward(T* out, const T* x, int64_t n, int64_t c, const RunContext& ctx) {
  CHECK_GE(n, 0);
  CHECK_GE(c, 0);
  int threads = cpu_threads_for(ctx, 16 * n * c);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < n; ++row) {
    const T* a = x + row * 2 * c;  // [C] first half
    const T* b = a + c;            // [C] second half (the gate)
    T* o = out + row * c;          // [C]
    for (int64_t j = 0; j < c; ++j) o[j] = a[j] * stable_sigmoid(b[j]);
  }
}

template <class T>
void glu_backward(T* dx, const T* dout, const T* x, int64_t n, int64_t c, const RunContext& ctx) {
  CHECK_GE(n, 0);
  CHECK_GE(c, 0);
  int threads = cpu_threads_for(ctx, 16 * n * c);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < n; ++row) {
    const T* a = x + row * 2 * c;  // [C]
    const T* b = a + c;            // [C]
    const T* g = dout + row * c;   // [C]
    T* da = dx + row * 2 * c;      // [C]
    T* db = da + c;                // [C]
    for (int64_t j = 0; j < c; ++j) {
      T s = stable_sigmoid(b[j]);
      da[j] = g[j] * s;
      db[j] = g[j] * a[j] * s * (T(1) - s);
    }
  }
}

#define MOEASR_INSTANTIATE_ELEMENTWISE(T)                                                       \
  template void add_forward<T>(T*, const T*, const T*, int64_t, const RunContext&);             \
  template void add_backward<T>(T*, T*, const T*, int64_t, const RunContext&);                  \
  template void scale_forward<T>(T*, const T*, T, int64_t, const RunContext&);                  \
  template void scale_backward<T>(T*, const T*, T, int64_t, const RunContext&);                 \
  template void residual_add_forward<T>(T*, const T*, const T*, T, int64_t, const RunContext&); \
  template void residual_add_backward<T>(T*, T*, const T*, T, int64_t, const RunContext&);      \
  template void add_scaled_inplace<T>(T*, const T*, T, int64_t, const RunContext&);             \
  template void relu_forward<T>(T*, const T*, int64_t, const RunContext&);                      \
  template void relu_backward<T>(T*, const T*, const T*, int64_t, const RunContext&);           \
  template void silu_forward<T>(T*, const T*, int64_t, const RunContext&);                      \
  template void silu_backward<T>(T*, const T*, const T*, int64_t, const RunContext&);           \
  template void sigmoid_forward<T>(T*, const T*, int64_t, const RunContext&);                   \
  template void sigmoid_backward<T>(T*, const T*, const T*, int64_t, const RunContext&);        \
  template void glu_forward<T>(T*, const T*, int64_t, int64_t, const RunContext&);              \
  template void glu_backward<T>(T*, const T*, const T*, int64_t, int64_t, const RunContext&);

MOEASR_INSTANTIATE_ELEMENTWISE(float)
MOEASR_INSTANTIATE_ELEMENTWISE(double)

#undef MOEASR_INSTANTIATE_ELEMENTWISE

}  // namespace moeasr
