// kernels/cpu/linear.cc — linear layer forward/backward as GEMMs plus a bias broadcast/reduction.
#include "kernels/cpu/linear.h"

#include "kernels/cpu/cpu_parallel.h"
#include "kernels/cpu/gemm.h"

namespace moeasr {

template <class T>
void linear_forward(T* y, const T* x, const T* weight, const T* bias, int64_t n, int64_t in_features,
                    int64_t out_features, const RunContext& ctx) {
  if (n == 0 || out_features == 0) return;
  T beta = T(0);
  if (bias != nullptr) {
    int threads = cpu_threads_for(ctx, n * out_features);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < n; ++row) {
      for (int64_t o = 0; o < out_features; ++o) y[row * out_features + o] = bias[o];
    }
    beta = T(1);
  }
  gemm(y, x, weight, Transpose::kNo, Transpose::kYes, n, out_features, in_features, T(1), beta, in_features,
       in_features, out_features, ctx);
}

template <class T>
void linear_backward(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* weight, int64_t n,
                     int64_t in_features, int64_t out_features, const RunContext& ctx) {
  if (dx != nullptr) {
    // dx[N,I] = dy[N,O] @ W[O,I]
    gemm(dx, dy, weight, Transpose::kNo, Transpose::kNo, n, in_features, out_features, T(1), T(0),
         out_features, in_features, in_features, ctx);
  }
  if (dweight != nullptr && n > 0) {
    // dW[O,I] += dy^T[O,N] @ x[N,I]
    gemm(dweight, dy, x, Transpose::kYes, Transpose::kNo, out_features, in_features, n, T(1), T(1),
         out_features, in_features, in_features, ctx);
  }
  if (dbias != nullptr) {
    // Column sums in a fixed order (deterministic); parallel over output features.
    int threads = cpu_threads_for(ctx, n * out_features);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t o = 0; o < out_features; ++o) {
      T acc = T(0);
      for (int64_t row = 0; row < n; ++row) acc += dy[row * out_features + o];
      dbias[o] += acc;
    }
  }
}

template void linear_forward<float>(float*, const float*, const float*, const float*, int64_t, int64_t,
                                    int64_t, const RunContext&);
template void linear_forward<double>(double*, const double*, const double*, const double*, int64_t, int64_t,
                                     int64_t, const RunContext&);
template void linear_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                     int64_t, int64_t, int64_t, const RunContext&);
template void linear_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                      int64_t, int64_t, int64_t, const RunContext&);

}  // namespace moeasr
