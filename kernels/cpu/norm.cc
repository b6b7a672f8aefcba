// kernels/cpu/norm.cc — LayerNorm and channels-last BatchNorm1d (see norm.h).
// Determinism: LayerNorm rows are split across threads (one row, one thread); every per-channel sum
// (LayerNorm's dweight/dbias, all BatchNorm statistics) runs over rows 0..N-1 in order inside one
// thread that owns a block of channels, so results do not depend on the thread count.
// With ctx.use_reference_kernels the plain loops run instead: LayerNorm's parameter grads accumulate
// row by row into the output buffers, and BatchNorm walks one channel at a time.
#include "kernels/cpu/norm.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "kernels/cpu/cpu_parallel.h"

namespace moeasr {
namespace {

// Channels per block in the column-blocked loops (per-thread double accumulators on the stack).
constexpr int64_t kChannelBlock = 64;

inline int64_t channel_blocks(int64_t c) {
  return (c + kChannelBlock - 1) / kChannelBlock;
}

// dx for one LayerNorm row: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * weight.
template <class T>
void layer_norm_backward_row(T* dx,            // [C]
                             const T* dout,    // [C]
                             const T* x,       // [C]
                             const T* weight,  // [C] or null
                             double mean, double rstd, int64_t c) {
  double sum_g = 0.0, sum_g_xhat = 0.0;
  for (int64_t j = 0; j < c; ++j) {
    double xhat = (static_cast<double>(x[j]) - mean) * rstd;
    double g = static_cast<double>(dout[j]) * (weight != nullptr ? static_cast<double>(weight[j]) : 1.0);
    sum_g += g;
    sum_g_xhat += g * xhat;
  }
  double mean_g = sum_g / static_cast<double>(c);
  double mean_g_xhat = sum_g_xhat / static_cast<double>(c);
  for (int64_t j = 0; j < c; ++j) {
    double xhat = (static_cast<double>(x[j]) - mean) * rstd;
    double g = static_cast<double>(dout[j]) * (weight != nullptr ? static_cast<double>(weight[j]) : 1.0);
    dx[j] = static_cast<T>(rstd * (g - mean_g - xhat * mean_g_xhat));
  }
}

// Per-channel batch statistics of channels [c0, c1) over all N rows, two passes in double.
template <class T>
void channel_moments(double* mean,  // [c1 - c0]
                     double* var,   // [c1 - c0] biased
                     const T* x,    // [N, C]
                     int64_t n, int64_t c, int64_t c0, int64_t c1) {
  int64_t width = c1 - c0;
  for (int64_t k = 0; k < width; ++k) mean[k] = 0.0, var[k] = 0.0;
  for (int64_t row = 0; row < n; ++row) {
    const T* xr = x + row * c + c0;
    for (int64_t k = 0; k < width; ++k) mean[k] += static_cast<double>(xr[k]);
  }
  for (int64_t k = 0; k < width; ++k) mean[k] /= static_cast<double>(n);
  for (int64_t row = 0; row < n; ++row) {
    const T* xr = x + row * c + c0;
    for (int64_t k = 0; k < width; ++k) {
      double d = static_cast<double>(xr[k]) - mean[k];
      var[k] += d * d;
    }
  }
  for (int64_t k = 0; k < width; ++k) var[k] /= static_cast<double>(n);
}

// out = x * scale + shift for channels [c0, c1); scale/shift fold statistics and affine parameters.
template <class T>
void apply_channel_affine(T* out,              // [N, C]
                          const T* x,          // [N, C]
                          const double* mean,  // [c1 - c0]
                          const double* rstd,  // [c1 - c0]
                          const T* weight,     // [C] or null
                          const T* bias,       // [C] or null
                          int64_t n, int64_t c, int64_t c0, int64_t c1) {
  int64_t width = c1 - c0;
  for (int64_t row = 0; row < n; ++row) {
    const T* xr = x + row * c;
    T* outr = out + row * c;
    for (int64_t k = 0; k < width; ++k) {
      int64_t j = c0 + k;
      double xhat = (static_cast<double>(xr[j]) - mean[k]) * rstd[k];
      double w = weight != nullptr ? static_cast<double>(weight[j]) : 1.0;
      double b = bias != nullptr ? static_cast<double>(bias[j]) : 0.0;
      outr[j] = static_cast<T>(xhat * w + b);
    }
  }
}

// Channels [c0, c1) of the BatchNorm backward. With batch_stats the batch mean and variance depend
// on x (training): dx = w * rstd * (dout - mean(dout) - xhat * mean(dout * xhat)); otherwise they are
// constants (eval): dx = w * rstd * dout. dweight += sum(dout * xhat), dbias += sum(dout).
template <class T>
void batch_norm_backward_channels(T* dx,               // [N, C] or null
                                  T* dweight,          // [C] or null
                                  T* dbias,            // [C] or null
                                  const T* dout,       // [N, C]
                                  const T* x,          // [N, C]
                                  const double* mean,  // [c1 - c0]
                                  const double* rstd,  // [c1 - c0]
                                  const T* weight,     // [C] or null
                                  bool batch_stats, int64_t n, int64_t c, int64_t c0, int64_t c1) {
  int64_t width = c1 - c0;
  double sum_dy[kChannelBlock];
  double sum_dy_xhat[kChannelBlock];
  for (int64_t k = 0; k < width; ++k) sum_dy[k] = 0.0, sum_dy_xhat[k] = 0.0;
  for (int64_t row = 0; row < n; ++row) {
    const T* xr = x + row * c + c0;
    const T* dyr = dout + row * c + c0;
    for (int64_t k = 0; k < width; ++k) {
      double dy = static_cast<double>(dyr[k]);
      sum_dy[k] += dy;
      sum_dy_xhat[k] += dy * (static_cast<double>(xr[k]) - mean[k]) * rstd[k];
    }
  }
  for (int64_t k = 0; k < width; ++k) {
    if (dbias != nullptr) dbias[c0 + k] += static_cast<T>(sum_dy[k]);
    if (dweight != nullptr) dweight[c0 + k] += static_cast<T>(sum_dy_xhat[k]);
  }
  if (dx == nullptr) return;
  double inv_n = 1.0 / static_cast<double>(n);
  for (int64_t row = 0; row < n; ++row) {
    const T* xr = x + row * c + c0;
    const T* dyr = dout + row * c + c0;
    T* dxr = dx + row * c + c0;
    for (int64_t k = 0; k < width; ++k) {
      double w = weight != nullptr ? static_cast<double>(weight[c0 + k]) : 1.0;
      double dy = static_cast<double>(dyr[k]);
      if (batch_stats) {
        double xhat = (static_cast<double>(xr[k]) - mean[k]) * rstd[k];
        dy -= sum_dy[k] * inv_n + xhat * sum_dy_xhat[k] * inv_n;
      }
      dxr[k] = static_cast<T>(w * rstd[k] * dy);
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// LayerNorm

template <class T>
void layer_norm_forward(T* out, T* mean, T* rstd, const T* x, const T* weight, const T* bias, T eps,
                        int64_t n, int64_t c, const RunContext& ctx) {
  CHECK_GE(n, 0);
  if (n == 0) return;
  CHECK_GT(c, 0) << "LayerNorm over an empty last dimension";
  int threads = cpu_threads_for(ctx, 5 * n * c);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < n; ++row) {
    const T* xr = x + row * c;  // [C]
    T* outr = out + row * c;    // [C]
    double sum = 0.0;
    for (int64_t j = 0; j < c; ++j) sum += static_cast<double>(xr[j]);
    double m = sum / static_cast<double>(c);
    double sq = 0.0;
    for (int64_t j = 0; j < c; ++j) {
      double d = static_cast<double>(xr[j]) - m;
      sq += d * d;
    }
    double rs = 1.0 / std::sqrt(sq / static_cast<double>(c) + static_cast<double>(eps));
    mean[row] = static_cast<T>(m);
    rstd[row] = static_cast<T>(rs);
    for (int64_t j = 0; j < c; ++j) {
      double xhat = (static_cast<double>(xr[j]) - m) * rs;
      double w = weight != nullptr ? static_cast<double>(weight[j]) : 1.0;
      double b = bias != nullptr ? static_cast<double>(bias[j]) : 0.0;
      outr[j] = static_cast<T>(xhat * w + b);
    }
  }
}

template <class T>
void layer_norm_backward(T* dx, T* dweight, T* dbias, const T* dout, const T* x, const T* mean, const T* rstd,
                         const T* weight, int64_t n, int64_t c, const RunContext& ctx) {
  CHECK_GE(n, 0);
  if (n == 0) return;
  CHECK_GT(c, 0) << "LayerNorm over an empty last dimension";
  if (ctx.use_reference_kernels) {
    for (int64_t row = 0; row < n; ++row) {
      const T* xr = x + row * c;
      const T* dyr = dout + row * c;
      double m = static_cast<double>(mean[row]);
      double rs = static_cast<double>(rstd[row]);
      for (int64_t j = 0; j < c; ++j) {
        if (dbias != nullptr) dbias[j] += dyr[j];
        if (dweight != nullptr)
          dweight[j] += static_cast<T>(static_cast<double>(dyr[j]) * ((xr[j] - m) * rs));
      }
      if (dx != nullptr) layer_norm_backward_row(dx + row * c, dyr, xr, weight, m, rs, c);
    }
    return;
  }
  if (dx != nullptr) {
    int threads = cpu_threads_for(ctx, 8 * n * c);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < n; ++row) {
      layer_norm_backward_row(dx + row * c, dout + row * c, x + row * c, weight,
                              static_cast<double>(mean[row]), static_cast<double>(rstd[row]), c);
    }
  }
  if (dweight != nullptr || dbias != nullptr) {
    // Column sums over rows in a fixed order; each thread owns a block of channels.
    int threads = cpu_threads_for(ctx, 4 * n * c);
    int64_t blocks = channel_blocks(c);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t block = 0; block < blocks; ++block) {
      int64_t c0 = block * kChannelBlock;
      int64_t width = std::min(kChannelBlock, c - c0);
      double sum_dy[kChannelBlock];
      double sum_dy_xhat[kChannelBlock];
      for (int64_t k = 0; k < width; ++k) sum_dy[k] = 0.0, sum_dy_xhat[k] = 0.0;
      for (int64_t row = 0; row < n; ++row) {
        const T* xr = x + row * c + c0;
        const T* dyr = dout + row * c + c0;
        double m = static_cast<double>(mean[row]);
        double rs = static_cast<double>(rstd[row]);
        for (int64_t k = 0; k < width; ++k) {
          double dy = static_cast<double>(dyr[k]);
          sum_dy[k] += dy;
          sum_dy_xhat[k] += dy * ((static_cast<double>(xr[k]) - m) * rs);
        }
      }
      for (int64_t k = 0; k < width; ++k) {
        if (dbias != nullptr) dbias[c0 + k] += static_cast<T>(sum_dy[k]);
        if (dweight != nullptr) dweight[c0 + k] += static_cast<T>(sum_dy_xhat[k]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// BatchNorm1d, channels last

template <class T>
void batch_norm_train_forward(T* out, T* save_mean, T* save_rstd, T* running_mean, T* running_var, const T* x,
                              const T* weight, const T* bias, T momentum, T eps, int64_t n, int64_t c,
                              const RunContext& ctx) {
  CHECK_GE(n, 0);
  CHECK_GE(c, 0);
  CHECK(n != 1) << "BatchNorm training needs more than 1 value per channel (got N = 1, C = " << c
                << "), as torch.nn.BatchNorm1d";
  if (n == 0 || c == 0) return;
  CHECK((running_mean == nullptr) == (running_var == nullptr)) << "running_mean and running_var go together";
  const double m = static_cast<double>(momentum);
  const double unbias = static_cast<double>(n) / static_cast<double>(n - 1);
  // Statistics of one channel block, written to the saved and running buffers; returns via mean/rstd.
  auto block_stats = [&](double* mean, double* rstd, int64_t c0, int64_t c1) {
    double var[kChannelBlock];
    channel_moments(mean, var, x, n, c, c0, c1);
    for (int64_t k = 0; k < c1 - c0; ++k) {
      int64_t j = c0 + k;
      rstd[k] = 1.0 / std::sqrt(var[k] + static_cast<double>(eps));
      save_mean[j] = static_cast<T>(mean[k]);
      save_rstd[j] = static_cast<T>(rstd[k]);
      if (running_mean != nullptr) {
        running_mean[j] = static_cast<T>((1.0 - m) * static_cast<double>(running_mean[j]) + m * mean[k]);
        running_var[j] =
            static_cast<T>((1.0 - m) * static_cast<double>(running_var[j]) + m * var[k] * unbias);
      }
    }
  };
  if (ctx.use_reference_kernels) {
    for (int64_t j = 0; j < c; ++j) {
      double mean, rstd;
      block_stats(&mean, &rstd, j, j + 1);
      apply_channel_affine(out, x, &mean, &rstd, weight, bias, n, c, j, j + 1);
    }
    return;
  }
  int threads = cpu_threads_for(ctx, 6 * n * c);
  int64_t blocks = channel_blocks(c);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t block = 0; block < blocks; ++block) {
    int64_t c0 = block * kChannelBlock;
    int64_t c1 = std::min(c, c0 + kChannelBlock);
    double mean[kChannelBlock], rstd[kChannelBlock];
    block_stats(mean, rstd, c0, c1);
    apply_channel_affine(out, x, mean, rstd, weight, bias, n, c, c0, c1);
  }
}

template <class T>
void batch_norm_train_backward(T* dx, T* dweight, T* dbias, const T* dout, const T* x, const T* save_mean,
                               const T* save_rstd, const T* weight, int64_t n, int64_t c,
                               const RunContext& ctx) {
  CHECK_GE(n, 0);
  CHECK_GE(c, 0);
  CHECK(n != 1) << "BatchNorm training needs more than 1 value per channel";
  if (n == 0 || c == 0) return;
  int64_t step = ctx.use_reference_kernels ? 1 : kChannelBlock;
  int64_t blocks = (c + step - 1) / step;
  int threads = cpu_threads_for(ctx, 8 * n * c);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t block = 0; block < blocks; ++block) {
    int64_t c0 = block * step;
    int64_t c1 = std::min(c, c0 + step);
    double mean[kChannelBlock], rstd[kChannelBlock];
    for (int64_t k = 0; k < c1 - c0; ++k) {
      mean[k] = static_cast<double>(save_mean[c0 + k]);
      rstd[k] = static_cast<double>(save_rstd[c0 + k]);
    }
    batch_norm_backward_channels(dx, dweight, dbias, dout, x, mean, rstd, weight, true, n, c, c0, c1);
  }
}

template <class T>
void batch_norm_eval_forward(T* out, const T* x, const T* running_mean, const T* running_var, const T* weight,
                             const T* bias, T eps, int64_t n, int64_t c, const RunContext& ctx) {
  CHECK_GE(n, 0);
  CHECK_GE(c, 0);
  if (n == 0 || c == 0) return;
  int64_t step = ctx.use_reference_kernels ? 1 : kChannelBlock;
  int64_t blocks = (c + step - 1) / step;
  int threads = cpu_threads_for(ctx, 3 * n * c);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t block = 0; block < blocks; ++block) {
    int64_t c0 = block * step;
    int64_t c1 = std::min(c, c0 + step);
    double mean[kChannelBlock], rstd[kChannelBlock];
    for (int64_t k = 0; k < c1 - c0; ++k) {
      mean[k] = static_cast<double>(running_mean[c0 + k]);
      rstd[k] = 1.0 / std::sqrt(static_cast<double>(running_var[c0 + k]) + static_cast<double>(eps));
    }
    apply_channel_affine(out, x, mean, rstd, weight, bias, n, c, c0, c1);
  }
}

template <class T>
void batch_norm_eval_backward(T* dx, T* dweight, T* dbias, const T* dout, const T* x, const T* running_mean,
                              const T* running_var, const T* weight, T eps, int64_t n, int64_t c,
                              const RunContext& ctx) {
  CHECK_GE(n, 0);
  CHECK_GE(c, 0);
  if (n == 0 || c == 0) return;
  int64_t step = ctx.use_reference_kernels ? 1 : kChannelBlock;
  int64_t blocks = (c + step - 1) / step;
  int threads = cpu_threads_for(ctx, 6 * n * c);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t block = 0; block < blocks; ++block) {
    int64_t c0 = block * step;
    int64_t c1 = std::min(c, c0 + step);
    double mean[kChannelBlock], rstd[kChannelBlock];
    for (int64_t k = 0; k < c1 - c0; ++k) {
      mean[k] = static_cast<double>(running_mean[c0 + k]);
      rstd[k] = 1.0 / std::sqrt(static_cast<double>(running_var[c0 + k]) + static_cast<double>(eps));
    }
    batch_norm_backward_channels(dx, dweight, dbias, dout, x, mean, rstd, weight, false, n, c, c0, c1);
  }
}

template void layer_norm_forward<float>(float*, float*, float*, const float*, const float*, const float*,
                                        float, int64_t, int64_t, const RunContext&);
template void layer_norm_forward<double>(double*, double*, double*, const double*, const double*,
                                         const double*, double, int64_t, int64_t, const RunContext&);
template void layer_norm_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                         const float*, const float*, int64_t, int64_t, const RunContext&);
template void layer_norm_backward<double>(double*, double*, double*, const double*, const double*,
                                          const double*, const double*, const double*, int64_t, int64_t,
                                          const RunContext&);
template void batch_norm_train_forward<float>(float*, float*, float*, float*, float*, const float*,
                                              const float*, const float*, float, float, int64_t, int64_t,
                                              const RunContext&);
template void batch_norm_train_forward<double>(double*, double*, double*, double*, double*, const double*,
                                               const double*, const double*, double, double, int64_t, int64_t,
                                               const RunContext&);
template void batch_norm_train_backward<float>(float*, float*, float*, const float*, const float*,
                                               const float*, const float*, const float*, int64_t, int64_t,
                                               const RunContext&);
template void batch_norm_train_backward<double>(double*, double*, double*, const double*, const double*,
                                                const double*, const double*, const double*, int64_t, int64_t,
                                                const RunContext&);
template void batch_norm_eval_forward<float>(float*, const float*, const float*, const float*, const float*,
                                             const float*, float, int64_t, int64_t, const RunContext&);
template void batch_norm_eval_forward<double>(double*, const double*, const double*, const double*,
                                              const double*, const double*, double, int64_t, int64_t,
                                              const RunContext&);
template void batch_norm_eval_backward<float>(float*, float*, float*, const float*, const float*,
                                              const float*, const float*, const float*, float, int64_t,
                                              int64_t, const RunContext&);
template void batch_norm_eval_backward<double>(double*, double*, double*, const double*, const double*,
                                               const double*, const double*, const double*, double, int64_t,
                                               int64_t, const RunContext&);

}  // namespace moeasr
