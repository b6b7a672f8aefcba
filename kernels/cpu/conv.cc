// kernels/cpu/conv.cc — Conv2d 3x3/stride 2 (im2col + GEMM, and a direct reference loop) and
// channels-last depthwise Conv1d (see conv.h).
#include "kernels/cpu/conv.h"

#include <algorithm>
#include <vector>

#include "core/check.h"
#include "kernels/cpu/cpu_parallel.h"
#include "kernels/cpu/gemm.h"

namespace moeasr {
namespace {

constexpr int64_t kConv2dTaps = 9;  // 3 x 3 kernel

void check_conv2d_sizes(int64_t batch, int64_t in_channels, int64_t out_channels, int64_t height,
                        int64_t width) {
  CHECK(batch >= 0 && in_channels >= 0 && out_channels >= 0 && height >= 0 && width >= 0)
      << "conv2d_3x3s2 sizes B=" << batch << " Cin=" << in_channels << " Cout=" << out_channels
      << " H=" << height << " W=" << width;
}

// col[r, p] with r = ci * 9 + kh * 3 + kw and p = oh * Wo + ow holds x[ci, 2 oh + kh, 2 ow + kw].
template <class T>
void im2col_3x3s2(T* col,      // [Cin * 9, Ho * Wo]
                  const T* x,  // [Cin, H, W] (one batch item)
                  int64_t in_channels, int64_t height, int64_t width, int64_t out_h, int64_t out_w,
                  const RunContext& ctx) {
  const int64_t rows = in_channels * kConv2dTaps;
  const int64_t cols = out_h * out_w;
  int threads = cpu_threads_for(ctx, rows * cols);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t ci = r / kConv2dTaps;
    const int64_t kh = (r % kConv2dTaps) / 3;
    const int64_t kw = r % 3;
    const T* plane = x + ci * height * width;
    T* dst = col + r * cols;
    for (int64_t oh = 0; oh < out_h; ++oh) {
      const T* src = plane + (2 * oh + kh) * width + kw;
      for (int64_t ow = 0; ow < out_w; ++ow) dst[oh * out_w + ow] = src[2 * ow];
    }
  }
}

// dx[ci, 2 oh + kh, 2 ow + kw] += dcol[r, p], dx assigned (zeroed first). Parallel over input channels:
// every dx plane is owned by one thread and summed in a fixed (kh, kw, oh, ow) order.
template <class T>
void col2im_3x3s2(T* dx,          // [Cin, H, W] (one batch item), assigned
                  const T* dcol,  // [Cin * 9, Ho * Wo]
                  int64_t in_channels, int64_t height, int64_t width, int64_t out_h, int64_t out_w,
                  const RunContext& ctx) {
  const int64_t cols = out_h * out_w;
  int threads = cpu_threads_for(ctx, in_channels * kConv2dTaps * cols);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t ci = 0; ci < in_channels; ++ci) {
    T* plane = dx + ci * height * width;
    std::fill(plane, plane + height * width, T(0));
    for (int64_t tap = 0; tap < kConv2dTaps; ++tap) {
      const int64_t kh = tap / 3;
      const int64_t kw = tap % 3;
      const T* src = dcol + (ci * kConv2dTaps + tap) * cols;
      for (int64_t oh = 0; oh < out_h; ++oh) {
        T* dst = plane + (2 * oh + kh) * width + kw;
        for (int64_t ow = 0; ow < out_w; ++ow) dst[2 * ow] += src[oh * out_w + ow];
      }
    }
  }
}

template <class T>
void conv2d_3x3s2_forward_reference(T* y, const T* x, const T* weight, const T* bias, int64_t batch,
                                    int64_t in_channels, int64_t out_channels, int64_t height, int64_t width,
                                    int64_t out_h, int64_t out_w) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t co = 0; co < out_channels; ++co)
      for (int64_t oh = 0; oh < out_h; ++oh)
        for (int64_t ow = 0; ow < out_w; ++ow) {
          double acc = bias != nullptr ? static_cast<double>(bias[co]) : 0.0;
          for (int64_t ci = 0; ci < in_channels; ++ci)
            for (int64_t kh = 0; kh < 3; ++kh)
              for (int64_t kw = 0; kw < 3; ++kw) {
                const double wv = weight[((co * in_channels + ci) * 3 + kh) * 3 + kw];
                const double xv = x[((b * in_channels + ci) * height + 2 * oh + kh) * width + 2 * ow + kw];
                acc += wv * xv;
              }
          y[((b * out_channels + co) * out_h + oh) * out_w + ow] = static_cast<T>(acc);
        }
}

template <class T>
void conv2d_3x3s2_backward_reference(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* weight,
                                     int64_t batch, int64_t in_channels, int64_t out_channels, int64_t height,
                                     int64_t width, int64_t out_h, int64_t out_w) {
  auto dy_at = [&](int64_t b, int64_t co, int64_t oh, int64_t ow) {
    return dy[((b * out_channels + co) * out_h + oh) * out_w + ow];
  };
  auto x_index = [&](int64_t b, int64_t ci, int64_t h, int64_t w) {
    return ((b * in_channels + ci) * height + h) * width + w;
  };
  if (dx != nullptr) {
    std::fill(dx, dx + batch * in_channels * height * width, T(0));
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t co = 0; co < out_channels; ++co)
        for (int64_t oh = 0; oh < out_h; ++oh)
          for (int64_t ow = 0; ow < out_w; ++ow) {
            const T g = dy_at(b, co, oh, ow);
            for (int64_t ci = 0; ci < in_channels; ++ci)
              for (int64_t kh = 0; kh < 3; ++kh)
                for (int64_t kw = 0; kw < 3; ++kw)
                  dx[x_index(b, ci, 2 * oh + kh, 2 * ow + kw)] +=
                      weight[((co * in_channels + ci) * 3 + kh) * 3 + kw] * g;
          }
  }
  if (dweight != nullptr) {
    for (int64_t co = 0; co < out_channels; ++co)
      for (int64_t ci = 0; ci < in_channels; ++ci)
        for (int64_t kh = 0; kh < 3; ++kh)
          for (int64_t kw = 0; kw < 3; ++kw) {
            double acc = 0.0;
            for (int64_t b = 0; b < batch; ++b)
              for (int64_t oh = 0; oh < out_h; ++oh)
                for (int64_t ow = 0; ow < out_w; ++ow)
                  acc +=
                      static_cast<double>(dy_at(b, co, oh, ow)) * x[x_index(b, ci, 2 * oh + kh, 2 * ow + kw)];
            dweight[((co * in_channels + ci) * 3 + kh) * 3 + kw] += static_cast<T>(acc);
          }
  }
  if (dbias != nullptr) {
    for (int64_t co = 0; co < out_channels; ++co) {
      double acc = 0.0;
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t oh = 0; oh < out_h; ++oh)
          for (int64_t ow = 0; ow < out_w; ++ow) acc += dy_at(b, co, oh, ow);
      dbias[co] += static_cast<T>(acc);
    }
  }
}

int64_t conv1d_left_pad(Conv1dPadding padding, int64_t kernel_size) {
  CHECK_GE(kernel_size, 1) << "depthwise_conv1d kernel size";
  if (padding == Conv1dPadding::kSymmetric) {
    CHECK_EQ(kernel_size % 2, 1) << "depthwise_conv1d: symmetric padding needs an odd kernel size";
    return (kernel_size - 1) / 2;
  }
  return kernel_size - 1;
}

void check_conv1d_sizes(int64_t batch, int64_t time, int64_t channels) {
  CHECK(batch >= 0 && time >= 0 && channels >= 0)
      << "depthwise_conv1d sizes B=" << batch << " T=" << time << " C=" << channels;
}

// weight [C, K] -> [K, C], so the optimised loops read it contiguously along channels.
template <class T>
std::vector<T> transpose_weight(const T* weight, int64_t channels, int64_t kernel_size) {
  std::vector<T> wt(static_cast<size_t>(channels * kernel_size));
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t k = 0; k < kernel_size; ++k) wt[k * channels + c] = weight[c * kernel_size + k];
  return wt;
}

// Channel block of the parallel dweight/dbias reduction: each block is owned by one thread.
constexpr int64_t kConv1dChannelBlock = 64;

}  // namespace

int64_t conv2d_3x3s2_workspace_elems(int64_t in_channels, int64_t height, int64_t width) {
  return in_channels * kConv2dTaps * conv2d_3x3s2_output_size(height) * conv2d_3x3s2_output_size(width);
}

template <class T>
void conv2d_3x3s2_forward(T* y, T* workspace, const T* x, const T* weight, const T* bias, int64_t batch,
                          int64_t in_channels, int64_t out_channels, int64_t height, int64_t width,
                          const RunContext& ctx) {
  check_conv2d_sizes(batch, in_channels, out_channels, height, width);
  const int64_t out_h = conv2d_3x3s2_output_size(height);
  const int64_t out_w = conv2d_3x3s2_output_size(width);
  if (batch == 0 || out_channels == 0 || out_h == 0 || out_w == 0) return;
  if (ctx.use_reference_kernels) {
    conv2d_3x3s2_forward_reference(y, x, weight, bias, batch, in_channels, out_channels, height, width, out_h,
                                   out_w);
    return;
  }
  const int64_t kdim = in_channels * kConv2dTaps;
  const int64_t positions = out_h * out_w;
  CHECK(workspace != nullptr || kdim == 0) << "conv2d_3x3s2_forward needs a workspace of "
                                           << conv2d_3x3s2_workspace_elems(in_channels, height, width);
  for (int64_t b = 0; b < batch; ++b) {
    T* yb = y + b * out_channels * positions;
    T beta = T(0);
    if (bias != nullptr) {
      int threads = cpu_threads_for(ctx, out_channels * positions);
#pragma omp parallel for num_threads(threads) schedule(static)
      for (int64_t co = 0; co < out_channels; ++co)
        std::fill(yb + co * positions, yb + (co + 1) * positions, bias[co]);
      beta = T(1);
    }
    if (kdim == 0) {
      if (bias == nullptr) std::fill(yb, yb + out_channels * positions, T(0));
      continue;
    }
    im2col_3x3s2(workspace, x + b * in_channels * height * width, in_channels, height, width, out_h, out_w,
                 ctx);
    // y_b[Cout, P] = W[Cout, Cin*9] @ col[Cin*9, P] (+ bias)
    gemm(yb, weight, workspace, Transpose::kNo, Transpose::kNo, out_channels, positions, kdim, T(1), beta,
         kdim, positions, positions, ctx);
  }
}

template <class T>
void conv2d_3x3s2_backward(T* dx, T* dweight, T* dbias, T* workspace, const T* dy, const T* x,
                           const T* weight, int64_t batch, int64_t in_channels, int64_t out_channels,
                           int64_t height, int64_t width, const RunContext& ctx) {
  check_conv2d_sizes(batch, in_channels, out_channels, height, width);
  const int64_t out_h = conv2d_3x3s2_output_size(height);
  const int64_t out_w = conv2d_3x3s2_output_size(width);
  if (batch == 0) return;
  if (out_channels == 0 || out_h == 0 || out_w == 0) {
    // No output element depends on x: the input gradient is zero, the parameter gradients get nothing.
    if (dx != nullptr) std::fill(dx, dx + batch * in_channels * height * width, T(0));
    return;
  }
  if (ctx.use_reference_kernels) {
    conv2d_3x3s2_backward_reference(dx, dweight, dbias, dy, x, weight, batch, in_channels, out_channels,
                                    height, width, out_h, out_w);
    return;
  }
  const int64_t kdim = in_channels * kConv2dTaps;
  const int64_t positions = out_h * out_w;
  if (dbias != nullptr) {
    // Sums over (b, position) in a fixed order; parallel over output channels.
    int threads = cpu_threads_for(ctx, batch * out_channels * positions);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t co = 0; co < out_channels; ++co) {
      T acc = T(0);
      for (int64_t b = 0; b < batch; ++b) {
        const T* row = dy + (b * out_channels + co) * positions;
        for (int64_t p = 0; p < positions; ++p) acc += row[p];
      }
      dbias[co] += acc;
    }
  }
  if (kdim == 0) return;  // no input channels: dx and dweight are empty
  CHECK(workspace != nullptr) << "conv2d_3x3s2_backward needs a workspace of "
                              << conv2d_3x3s2_workspace_elems(in_channels, height, width);
  for (int64_t b = 0; b < batch; ++b) {
    const T* dyb = dy + b * out_channels * positions;
    const T* xb = x + b * in_channels * height * width;
    if (dweight != nullptr) {
      im2col_3x3s2(workspace, xb, in_channels, height, width, out_h, out_w, ctx);
      // dW[Cout, Cin*9] += dy_b[Cout, P] @ col[Cin*9, P]^T, batch items added in order b = 0, 1, ...
      gemm(dweight, dyb, workspace, Transpose::kNo, Transpose::kYes, out_channels, kdim, positions, T(1),
           T(1), positions, positions, kdim, ctx);
    }
    if (dx != nullptr) {
      // dcol[Cin*9, P] = W[Cout, Cin*9]^T @ dy_b[Cout, P], then scattered back (col2im).
      gemm(workspace, weight, dyb, Transpose::kYes, Transpose::kNo, kdim, positions, out_channels, T(1), T(0),
           kdim, positions, positions, ctx);
      col2im_3x3s2(dx + b * in_channels * height * width, workspace, in_channels, height, width, out_h, out_w,
                   ctx);
    }
  }
}

template <class T>
void depthwise_conv1d_forward(T* y, const T* x, const T* weight, const T* bias, Conv1dPadding padding,
                              int64_t batch, int64_t time, int64_t channels, int64_t kernel_size,
                              const RunContext& ctx) {
  check_conv1d_sizes(batch, time, channels);
  const int64_t left = conv1d_left_pad(padding, kernel_size);
  if (batch == 0 || time == 0 || channels == 0) return;
  if (ctx.use_reference_kernels) {
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t c = 0; c < channels; ++c)
        for (int64_t t = 0; t < time; ++t) {
          T acc = bias != nullptr ? bias[c] : T(0);
          for (int64_t k = 0; k < kernel_size; ++k) {
            const int64_t s = t + k - left;
            if (s >= 0 && s < time) acc += weight[c * kernel_size + k] * x[(b * time + s) * channels + c];
          }
          y[(b * time + t) * channels + c] = acc;
        }
    return;
  }
  // Same per-element summation order as the reference loop (bias, then taps k = 0..K-1); the loops
  // are reordered so the innermost one runs over contiguous channels.
  const std::vector<T> wt = transpose_weight(weight, channels, kernel_size);
  int threads = cpu_threads_for(ctx, batch * time * channels * kernel_size);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < batch * time; ++row) {
    const int64_t b = row / time;
    const int64_t t = row % time;
    T* yr = y + row * channels;
    for (int64_t c = 0; c < channels; ++c) yr[c] = bias != nullptr ? bias[c] : T(0);
    for (int64_t k = 0; k < kernel_size; ++k) {
      const int64_t s = t + k - left;
      if (s < 0 || s >= time) continue;
      const T* xr = x + (b * time + s) * channels;
      const T* wk = wt.data() + k * channels;
      for (int64_t c = 0; c < channels; ++c) yr[c] += wk[c] * xr[c];
    }
  }
}

template <class T>
void depthwise_conv1d_backward(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* weight,
                               Conv1dPadding padding, int64_t batch, int64_t time, int64_t channels,
                               int64_t kernel_size, const RunContext& ctx) {
  check_conv1d_sizes(batch, time, channels);
  const int64_t left = conv1d_left_pad(padding, kernel_size);
  if (batch == 0 || time == 0 || channels == 0) return;
  if (ctx.use_reference_kernels) {
    for (int64_t c = 0; c < channels; ++c) {
      if (dx != nullptr) {
        // dx[s] = sum_k w[k] * dy[s - k + left]
        for (int64_t b = 0; b < batch; ++b)
          for (int64_t s = 0; s < time; ++s) {
            T acc = T(0);
            for (int64_t k = 0; k < kernel_size; ++k) {
              const int64_t t = s - k + left;
              if (t >= 0 && t < time) acc += weight[c * kernel_size + k] * dy[(b * time + t) * channels + c];
            }
            dx[(b * time + s) * channels + c] = acc;
          }
      }
      if (dweight != nullptr) {
        for (int64_t k = 0; k < kernel_size; ++k) {
          T acc = T(0);
          for (int64_t b = 0; b < batch; ++b)
            for (int64_t t = 0; t < time; ++t) {
              const int64_t s = t + k - left;
              if (s >= 0 && s < time)
                acc += dy[(b * time + t) * channels + c] * x[(b * time + s) * channels + c];
            }
          dweight[c * kernel_size + k] += acc;
        }
      }
      if (dbias != nullptr) {
        T acc = T(0);
        for (int64_t b = 0; b < batch; ++b)
          for (int64_t t = 0; t < time; ++t) acc += dy[(b * time + t) * channels + c];
        dbias[c] += acc;
      }
    }
    return;
  }
  const int64_t work = batch * time * channels * kernel_size;
  if (dx != nullptr) {
    const std::vector<T> wt = transpose_weight(weight, channels, kernel_size);
    int threads = cpu_threads_for(ctx, work);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < batch * time; ++row) {
      const int64_t b = row / time;
      const int64_t s = row % time;
      T* dxr = dx + row * channels;
      std::fill(dxr, dxr + channels, T(0));
      for (int64_t k = 0; k < kernel_size; ++k) {
        const int64_t t = s - k + left;
        if (t < 0 || t >= time) continue;
        const T* dyr = dy + (b * time + t) * channels;
        const T* wk = wt.data() + k * channels;
        for (int64_t c = 0; c < channels; ++c) dxr[c] += wk[c] * dyr[c];
      }
    }
  }
  if (dweight != nullptr || dbias != nullptr) {
    // Parallel over channel blocks: each dweight/dbias element is summed by one thread over (b, t)
    // in ascending order, the same order as the reference loop.
    const int64_t blocks = (channels + kConv1dChannelBlock - 1) / kConv1dChannelBlock;
    int threads = cpu_threads_for(ctx, work);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t c0 = blk * kConv1dChannelBlock;
      const int64_t width = std::min(kConv1dChannelBlock, channels - c0);
      std::vector<T> acc_w(static_cast<size_t>(kernel_size * width), T(0));  // [K, width]
      std::vector<T> acc_b(static_cast<size_t>(width), T(0));
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t t = 0; t < time; ++t) {
          const T* dyr = dy + (b * time + t) * channels + c0;
          for (int64_t c = 0; c < width; ++c) acc_b[c] += dyr[c];
          for (int64_t k = 0; k < kernel_size; ++k) {
            const int64_t s = t + k - left;
            if (s < 0 || s >= time) continue;
            const T* xr = x + (b * time + s) * channels + c0;
            T* aw = acc_w.data() + k * width;
            for (int64_t c = 0; c < width; ++c) aw[c] += dyr[c] * xr[c];
          }
        }
      for (int64_t c = 0; c < width; ++c) {
        if (dbias != nullptr) dbias[c0 + c] += acc_b[c];
        if (dweight != nullptr)
          for (int64_t k = 0; k < kernel_size; ++k)
            dweight[(c0 + c) * kernel_size + k] += acc_w[k * width + c];
      }
    }
  }
}

template void conv2d_3x3s2_forward<float>(float*, float*, const float*, const float*, const float*, int64_t,
                                          int64_t, int64_t, int64_t, int64_t, const RunContext&);
template void conv2d_3x3s2_forward<double>(double*, double*, const double*, const double*, const double*,
                                           int64_t, int64_t, int64_t, int64_t, int64_t, const RunContext&);
template void conv2d_3x3s2_backward<float>(float*, float*, float*, float*, const float*, const float*,
                                           const float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                           const RunContext&);
template void conv2d_3x3s2_backward<double>(double*, double*, double*, double*, const double*, const double*,
                                            const double*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                            const RunContext&);
template void depthwise_conv1d_forward<float>(float*, const float*, const float*, const float*, Conv1dPadding,
                                              int64_t, int64_t, int64_t, int64_t, const RunContext&);
template void depthwise_conv1d_forward<double>(double*, const double*, const double*, const double*,
                                               Conv1dPadding, int64_t, int64_t, int64_t, int64_t,
                                               const RunContext&);
template void depthwise_conv1d_backward<float>(float*, float*, float*, const float*, const float*,
                                               const float*, Conv1dPadding, int64_t, int64_t, int64_t,
                                               int64_t, const RunContext&);
template void depthwise_conv1d_backward<double>(double*, double*, double*, const double*, const double*,
                                                const double*, Conv1dPadding, int64_t, int64_t, int64_t,
                                                int64_t, const RunContext&);

}  // namespace moeasr
