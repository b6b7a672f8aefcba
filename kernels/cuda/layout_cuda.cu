// kernels/cuda/layout_cuda.cu — the data-movement ops of kernels/cpu/layout.h on the GPU (see
// layout_cuda.h). Every op but split_heads' dbias is one grid-stride kernel with one thread per OUTPUT
// element (coalesced writes; the thread computes the source index from the output index), so an
// output that aliases its input in the ways layout.h allows is read and written by the same thread.
// fill with +0 and copy are cudaMemsetAsync / cudaMemcpyAsync; the backward ops that are the mirror of
// a forward one (transpose, the padded / cropped rows, the scaled table) launch that forward kernel.
// split_heads' dbias is a deterministic column sum over the strided [B, H, T, dk] layout, after
// linear_cuda.cu's column_sum_accumulate_kernel (no atomics). Launches go on ctx.cuda_stream and are
// checked with cudaGetLastError.
#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>

#include "core/check.h"
#include "kernels/cuda/bf16_device.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/elementwise_cuda.h"  // scale_forward_cuda (scale_add_table's backward)
#include "kernels/cuda/layout_cuda.h"

namespace moeasr {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;  // grid-stride beyond this
constexpr int kColumnTile = 32;        // dbias: columns per block (threadIdx.x)
constexpr int kRowLanes = 16;          // dbias: row lanes per block (threadIdx.y)

inline unsigned blocks_for(int64_t n) {
  int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

inline cudaStream_t stream_of(const RunContext& ctx) {
  return static_cast<cudaStream_t>(ctx.cuda_stream);
}

// ---- kernels ------------------------------------------------------------------------------------

template <class T>
__global__ void fill_kernel(T* out, T value, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    out[i] = value;
  }
}

// dst[a, j, i, k] = src[a, i, j, k]; e runs over dst [A, J, I, K].
template <class T>
__global__ void transpose_middle_kernel(T* dst, const T* src, int64_t rows_i, int64_t cols_j, int64_t inner,
                                        int64_t total) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = e % inner;
    int64_t r = e / inner;
    const int64_t i = r % rows_i;
    r /= rows_i;
    const int64_t j = r % cols_j;
    const int64_t a = r / cols_j;
    dst[e] = src[((a * rows_i + i) * cols_j + j) * inner + k];
  }
}

// dst[b, h, t, j] = src[b, t, h * dk + j] (+ bias[h * dk + j] in fp32); e runs over dst [B, H, T, dk].
template <class T>
__global__ void split_heads_forward_kernel(T* dst, const T* src, const float* bias, int64_t steps,
                                           int64_t heads, int64_t d_k, int64_t total) {
  const int64_t width = heads * d_k;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = e % d_k;
    int64_t r = e / d_k;
    const int64_t t = r % steps;
    r /= steps;
    const int64_t h = r % heads;
    const int64_t b = r / heads;
    const int64_t col = h * d_k + j;
    const T v = src[(b * steps + t) * width + col];
    dst[e] = bias != nullptr ? store_as<T>(load_f32(v) + bias[col]) : v;
  }
}

// dsrc[b, t, h * dk + j] = dout[b, h, t, j]; e runs over dsrc [B, T, H * dk].
template <class T>
__global__ void merge_heads_kernel(T* dsrc, const T* dout, int64_t steps, int64_t heads, int64_t d_k,
                                   int64_t total) {
  const int64_t width = heads * d_k;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t col = e % width;
    const int64_t r = e / width;  // b * T + t
    const int64_t t = r % steps, b = r / steps;
    const int64_t h = col / d_k, j = col % d_k;
    dsrc[e] = dout[((b * heads + h) * steps + t) * d_k + j];
  }
}

// dbias[h * dk + j] += sum over rows (b, t) of dout[b, h, t, j]. Each block owns kColumnTile columns;
// lane y sums rows y, y + kRowLanes, ... in order (fp32), then the lane sums are added in lane order:
// a fixed order, so the result is the same on every run.
template <class T>
__global__ void split_heads_dbias_kernel(float* dbias, const T* dout, int64_t batch, int64_t steps,
                                         int64_t heads, int64_t d_k) {
  __shared__ float partial[kRowLanes][kColumnTile];
  const int64_t width = heads * d_k;
  const int64_t rows = batch * steps;
  const int64_t col = blockIdx.x * int64_t(kColumnTile) + threadIdx.x;
  float acc = 0.0f;
  if (col < width) {
    const int64_t h = col / d_k, j = col % d_k;
    const T* column = dout + h * steps * d_k + j;  // dout[0, h, 0, j]
    for (int64_t row = threadIdx.y; row < rows; row += kRowLanes) {
      const int64_t b = row / steps, t = row % steps;
      acc += load_f32(column[(b * heads * steps + t) * d_k]);
    }
  }
  partial[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < width) {
    float total = 0.0f;
    for (int lane = 0; lane < kRowLanes; ++lane) total += partial[lane][threadIdx.x];
    dbias[col] += total;
  }
}

// dst[b, lpad + t] = mask[b, t] ? src[b, t] : 0, dst[b, 0 .. lpad) = 0; e runs over dst
// [B, lpad + T, C]. (masked_pad_rows forward, masked_crop_rows backward.)
template <class T>
__global__ void pad_rows_kernel(T* dst, const T* src, const uint8_t* mask, int64_t time, int64_t lpad,
                                int64_t channels, int64_t total) {
  const int64_t padded = lpad + time;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = e % channels;
    const int64_t r = e / channels;
    const int64_t s = r % padded, b = r / padded;
    T v = store_as<T>(0.0f);
    if (s >= lpad) {
      const int64_t row = b * time + (s - lpad);  // (b, t) in [B, T]
      if (mask == nullptr || mask[row] != 0) v = src[row * channels + c];
    }
    dst[e] = v;
  }
}

// dst[b, t] = mask[b, t] ? src[b, lpad + t] : 0; e runs over dst [B, T, C]. With lpad == 0 the source
// element is e itself, so dst may alias src. (masked_crop_rows forward, masked_pad_rows backward.)
template <class T>
__global__ void crop_rows_kernel(T* dst, const T* src, const uint8_t* mask, int64_t time, int64_t lpad,
                                 int64_t channels, int64_t total) {
  const int64_t padded = lpad + time;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = e % channels;
    const int64_t row = e / channels;  // (b, t) in [B, T]
    const int64_t t = row % time, b = row / time;
    T v = store_as<T>(0.0f);
    if (mask == nullptr || mask[row] != 0) v = src[(b * padded + lpad + t) * channels + c];
    dst[e] = v;
  }
}

// out[r, f] = (x[r, f] - mean[f]) * istd[f]; e runs over [R, F].
template <class T>
__global__ void cmvn_kernel(T* out, const T* x, const float* mean, const float* istd, int64_t feat,
                            int64_t total) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t f = e % feat;
    out[e] = store_as<T>((load_f32(x[e]) - mean[f]) * istd[f]);
  }
}

// out[b, t, j] = x[b, t, j] * scale + table[t, j]; e runs over [B, T, D], table_size = T * D.
template <class T>
__global__ void scale_add_table_kernel(T* out, const T* x, const float* table, float scale,
                                       int64_t table_size, int64_t total) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    out[e] = store_as<T>(load_f32(x[e]) * scale + table[e % table_size]);
  }
}

// ---- launchers shared by forward and backward ---------------------------------------------------

template <class T>
void launch_transpose_middle(T* dst, const T* src, int64_t outer, int64_t rows_i, int64_t cols_j,
                             int64_t inner, const RunContext& ctx) {
  CHECK(outer >= 0 && rows_i >= 0 && cols_j >= 0 && inner >= 0)
      << "transpose_middle sizes A=" << outer << " I=" << rows_i << " J=" << cols_j << " K=" << inner;
  const int64_t total = outer * rows_i * cols_j * inner;
  if (total == 0) return;
  transpose_middle_kernel<T>
      <<<blocks_for(total), kThreads, 0, stream_of(ctx)>>>(dst, src, rows_i, cols_j, inner, total);
  CUDA_CHECK(cudaGetLastError());
}

void check_row_sizes(const char* op, int64_t batch, int64_t time, int64_t lpad, int64_t channels) {
  CHECK(batch >= 0 && time >= 0 && lpad >= 0 && channels >= 0)
      << op << " sizes B=" << batch << " T=" << time << " lpad=" << lpad << " C=" << channels;
}

template <class T>
void launch_pad_rows(T* dst, const T* src, const uint8_t* mask, int64_t batch, int64_t time, int64_t lpad,
                     int64_t channels, const RunContext& ctx) {
  const int64_t total = batch * (lpad + time) * channels;
  if (total == 0) return;
  pad_rows_kernel<T>
      <<<blocks_for(total), kThreads, 0, stream_of(ctx)>>>(dst, src, mask, time, lpad, channels, total);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void launch_crop_rows(T* dst, const T* src, const uint8_t* mask, int64_t batch, int64_t time, int64_t lpad,
                      int64_t channels, const RunContext& ctx) {
  const int64_t total = batch * time * channels;
  if (total == 0) return;
  crop_rows_kernel<T>
      <<<blocks_for(total), kThreads, 0, stream_of(ctx)>>>(dst, src, mask, time, lpad, channels, total);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace

template <class T>
void fill_constant_cuda(T* out, T value, int64_t n, const RunContext& ctx) {
  CHECK_GE(n, 0);
  if (n == 0) return;
  unsigned char bytes[sizeof(T)];
  std::memcpy(bytes, static_cast<const void*>(&value), sizeof(T));
  bool all_zero = true;
  for (unsigned char byte : bytes) all_zero = all_zero && byte == 0;
  if (all_zero) {
    CUDA_CHECK(cudaMemsetAsync(out, 0, static_cast<size_t>(n) * sizeof(T), stream_of(ctx)));
    return;
  }
  fill_kernel<T><<<blocks_for(n), kThreads, 0, stream_of(ctx)>>>(out, value, n);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void copy_elements_cuda(T* dst, const T* src, int64_t n, const RunContext& ctx) {
  CHECK_GE(n, 0);
  if (n == 0) return;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(n) * sizeof(T), cudaMemcpyDeviceToDevice,
                             stream_of(ctx)));
}

template <class T>
void transpose_middle_forward_cuda(T* dst, const T* src, int64_t outer, int64_t rows_i, int64_t cols_j,
                                   int64_t inner, const RunContext& ctx) {
  launch_transpose_middle(dst, src, outer, rows_i, cols_j, inner, ctx);
}

template <class T>
void transpose_middle_backward_cuda(T* dsrc, const T* ddst, int64_t outer, int64_t rows_i, int64_t cols_j,
                                    int64_t inner, const RunContext& ctx) {
  // ddst is [A, J, I, K]: swapping its middle axes gives dsrc [A, I, J, K].
  launch_transpose_middle(dsrc, ddst, outer, cols_j, rows_i, inner, ctx);
}

template <class T>
void split_heads_forward_cuda(T* dst, const T* src, const float* bias, int64_t batch, int64_t steps,
                              int64_t heads, int64_t d_k, const RunContext& ctx) {
  CHECK(batch >= 0 && steps >= 0 && heads >= 1 && d_k >= 0)
      << "split_heads_forward_cuda sizes B=" << batch << " T=" << steps << " H=" << heads << " dk=" << d_k;
  const int64_t total = batch * heads * steps * d_k;
  if (total == 0) return;
  split_heads_forward_kernel<T>
      <<<blocks_for(total), kThreads, 0, stream_of(ctx)>>>(dst, src, bias, steps, heads, d_k, total);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void split_heads_backward_cuda(T* dsrc, float* dbias, const T* dout, int64_t batch, int64_t steps,
                               int64_t heads, int64_t d_k, const RunContext& ctx) {
  CHECK(batch >= 0 && steps >= 0 && heads >= 1 && d_k >= 0)
      << "split_heads_backward_cuda sizes B=" << batch << " T=" << steps << " H=" << heads << " dk=" << d_k;
  const int64_t total = batch * heads * steps * d_k;
  if (total == 0) return;  // dsrc is empty and every dbias sum is empty (+= 0)
  cudaStream_t stream = stream_of(ctx);
  if (dsrc != nullptr) {
    merge_heads_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(dsrc, dout, steps, heads, d_k, total);
    CUDA_CHECK(cudaGetLastError());
  }
  if (dbias != nullptr) {
    const int64_t blocks = (heads * d_k + kColumnTile - 1) / kColumnTile;
    CHECK_LE(blocks, int64_t(2147483647));
    split_heads_dbias_kernel<T><<<static_cast<unsigned>(blocks), dim3(kColumnTile, kRowLanes), 0, stream>>>(
        dbias, dout, batch, steps, heads, d_k);
    CUDA_CHECK(cudaGetLastError());
  }
}

template <class T>
void masked_pad_rows_forward_cuda(T* dst, const T* src, const uint8_t* mask, int64_t batch, int64_t time,
                                  int64_t lpad, int64_t channels, const RunContext& ctx) {
  check_row_sizes("masked_pad_rows_forward_cuda", batch, time, lpad, channels);
  launch_pad_rows(dst, src, mask, batch, time, lpad, channels, ctx);
}

template <class T>
void masked_pad_rows_backward_cuda(T* dsrc, const T* ddst, const uint8_t* mask, int64_t batch, int64_t time,
                                   int64_t lpad, int64_t channels, const RunContext& ctx) {
  check_row_sizes("masked_pad_rows_backward_cuda", batch, time, lpad, channels);
  launch_crop_rows(dsrc, ddst, mask, batch, time, lpad, channels, ctx);
}

template <class T>
void masked_crop_rows_forward_cuda(T* dst, const T* src, const uint8_t* mask, int64_t batch, int64_t time,
                                   int64_t lpad, int64_t channels, const RunContext& ctx) {
  check_row_sizes("masked_crop_rows_forward_cuda", batch, time, lpad, channels);
  launch_crop_rows(dst, src, mask, batch, time, lpad, channels, ctx);
}

template <class T>
void masked_crop_rows_backward_cuda(T* dsrc, const T* ddst, const uint8_t* mask, int64_t batch, int64_t time,
                                    int64_t lpad, int64_t channels, const RunContext& ctx) {
  check_row_sizes("masked_crop_rows_backward_cuda", batch, time, lpad, channels);
  launch_pad_rows(dsrc, ddst, mask, batch, time, lpad, channels, ctx);
}

template <class T>
void cmvn_normalize_forward_cuda(T* out, const T* x, const float* mean, const float* istd, int64_t rows,
                                 int64_t feat, const RunContext& ctx) {
  CHECK(rows >= 0 && feat >= 0) << "cmvn_normalize_forward_cuda sizes R=" << rows << " F=" << feat;
  const int64_t total = rows * feat;
  if (total == 0) return;
  cmvn_kernel<T><<<blocks_for(total), kThreads, 0, stream_of(ctx)>>>(out, x, mean, istd, feat, total);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void scale_add_table_forward_cuda(T* out, const T* x, const float* table, float scale, int64_t batch,
                                  int64_t time, int64_t d, const RunContext& ctx) {
  CHECK(batch >= 0 && time >= 0 && d >= 0)
      << "scale_add_table_forward_cuda sizes B=" << batch << " T=" << time << " D=" << d;
  const int64_t total = batch * time * d;
  if (total == 0) return;
  scale_add_table_kernel<T>
      <<<blocks_for(total), kThreads, 0, stream_of(ctx)>>>(out, x, table, scale, time * d, total);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void scale_add_table_backward_cuda(T* dx, const T* dout, float scale, int64_t batch, int64_t time, int64_t d,
                                   const RunContext& ctx) {
  CHECK(batch >= 0 && time >= 0 && d >= 0)
      << "scale_add_table_backward_cuda sizes B=" << batch << " T=" << time << " D=" << d;
  scale_forward_cuda(dx, dout, scale, batch * time * d, ctx);  // one thread per element: dx may alias dout
}

#define MOEASR_INSTANTIATE_LAYOUT_CUDA(T)                                                                   \
  template void fill_constant_cuda<T>(T*, T, int64_t, const RunContext&);                                   \
  template void copy_elements_cuda<T>(T*, const T*, int64_t, const RunContext&);                            \
  template void transpose_middle_forward_cuda<T>(T*, const T*, int64_t, int64_t, int64_t, int64_t,          \
                                                 const RunContext&);                                        \
  template void transpose_middle_backward_cuda<T>(T*, const T*, int64_t, int64_t, int64_t, int64_t,         \
                                                  const RunContext&);                                       \
  template void split_heads_forward_cuda<T>(T*, const T*, const float*, int64_t, int64_t, int64_t, int64_t, \
                                            const RunContext&);                                             \
  template void split_heads_backward_cuda<T>(T*, float*, const T*, int64_t, int64_t, int64_t, int64_t,      \
                                             const RunContext&);                                            \
  template void masked_pad_rows_forward_cuda<T>(T*, const T*, const uint8_t*, int64_t, int64_t, int64_t,    \
                                                int64_t, const RunContext&);                                \
  template void masked_pad_rows_backward_cuda<T>(T*, const T*, const uint8_t*, int64_t, int64_t, int64_t,   \
                                                 int64_t, const RunContext&);                               \
  template void masked_crop_rows_forward_cuda<T>(T*, const T*, const uint8_t*, int64_t, int64_t, int64_t,   \
                                                 int64_t, const RunContext&);                               \
  template void masked_crop_rows_backward_cuda<T>(T*, const T*, const uint8_t*, int64_t, int64_t, int64_t,  \
                                                  int64_t, const RunContext&);                              \
  template void cmvn_normalize_forward_cuda<T>(T*, const T*, const float*, const float*, int64_t, int64_t,  \
                                               const RunContext&);                                          \
  template void scale_add_table_forward_cuda<T>(T*, const T*, const float*, float, int64_t, int64_t,        \
                                                int64_t, const RunContext&);                                \
  template void scale_add_table_backward_cuda<T>(T*, const T*, float, int64_t, int64_t, int64_t,            \
                                                 const RunContext&);

MOEASR_INSTANTIATE_LAYOUT_CUDA(float)
MOEASR_INSTANTIATE_LAYOUT_CUDA(__nv_bfloat16)

#undef MOEASR_INSTANTIATE_LAYOUT_CUDA

}  // namespace moeasr
