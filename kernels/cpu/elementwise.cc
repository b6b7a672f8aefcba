// kernels/cpu/elementwise.cc — elementwise ops and GLU (see elementwise.h). Every output element is
// written by exactly one iteration, so the OpenMP loops give the same bits as one thread; with
// ctx.use_reference_kernels cpu_threads_for() returns 1 and the same loop runs plainly.
#include "kernels/cpu/elementwise.h"

#include <cmath>

#include "core/check.h"
#include "kernels/cpu/cpu_parallel.h"

namespace moeasr {
namespace {

// 1 / (1 + exp(-x)) without overflow: exp is only taken of a non-positive argument.
template <class T>
inline T stable_sigmoid(T x) {
  if (x >= T(0)) return T(1) / (T(1) + std::exp(-x));
  T e = std::exp(x);
  return e / (T(1) + e);
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
