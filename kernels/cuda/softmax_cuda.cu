// kernels/cuda/softmax_cuda.cu — masked softmax / log_softmax rows on the GPU (see softmax_cuda.h).
// One thread block per row: pass 1 finds the max of the kept entries (and whether any is kept, with
// __syncthreads_or), pass 2 sums exp(x - max) in fp32, pass 3 writes. Reductions: warp shuffles, then
// one warp over the per-warp results; every thread of the block gets the same bits.
#include <cuda_bf16.h>

#include <cstdint>

#include "core/check.h"
#include "kernels/cuda/bf16_device.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/softmax_cuda.h"

namespace moeasr {
namespace {

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Block-wide sum / max (blockDim.x a multiple of 32); all threads get the same value and must call.
// scratch: [32] shared floats.
__device__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = lane < warps ? scratch[lane] : 0.0f;
  total = warp_sum(total);
  __syncthreads();
  return total;
}

__device__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = lane < warps ? scratch[lane] : -INFINITY;
  total = warp_max(total);
  __syncthreads();
  return total;
}

inline int row_threads(int64_t c) {
  if (c <= 32) return 32;
  if (c <= 64) return 64;
  if (c <= 128) return 128;
  return 256;
}

inline cudaStream_t stream_of(const RunContext& ctx) {
  return static_cast<cudaStream_t>(ctx.cuda_stream);
}

// Rows are viewed as [G, heads, q] and the mask as [G, q, C]: row (g, h, i) uses mask row (g, i);
// heads = q = 1 is a plain [R, C] mask (kernels/cpu/softmax.cc's mask_row).
template <class T, bool kLog>
__global__ void softmax_rows_forward_kernel(T* y, const T* x, const uint8_t* mask, int64_t cols,
                                            int64_t heads, int64_t q) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * cols;
  T* yr = y + row * cols;
  const uint8_t* m = mask == nullptr ? nullptr : mask + ((row / (heads * q)) * q + row % q) * cols;
  float mx = -INFINITY;
  int any = 0;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    if (m != nullptr && m[j] == 0) continue;
    any = 1;
    float v = load_f32(xr[j]);
    if (v > mx) mx = v;
  }
  if (!__syncthreads_or(any)) {  // fully masked: all zeros (block-uniform branch)
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) yr[j] = store_as<T>(0.0f);
    return;
  }
  mx = block_max(mx, scratch);
  float s = 0.0f;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    if (m != nullptr && m[j] == 0) continue;
    s += expf(load_f32(xr[j]) - mx);
  }
  s = block_sum(s, scratch);
  if (kLog) {
    const float log_sum = logf(s);
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const bool kept = m == nullptr || m[j] != 0;
      yr[j] = store_as<T>(kept ? (load_f32(xr[j]) - mx) - log_sum : 0.0f);
    }
  } else {
    const float inv_sum = 1.0f / s;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
      const bool kept = m == nullptr || m[j] != 0;
      yr[j] = store_as<T>(kept ? expf(load_f32(xr[j]) - mx) * inv_sum : 0.0f);
    }
  }
}

template <class T>
__global__ void softmax_backward_kernel(T* dx, const T* dy, const T* y, int64_t cols) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* dyr = dy + row * cols;
  const T* yr = y + row * cols;
  T* dxr = dx + row * cols;
  float dot = 0.0f;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) dot += load_f32(dyr[j]) * load_f32(yr[j]);
  dot = block_sum(dot, scratch);
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    dxr[j] = store_as<T>(load_f32(yr[j]) * (load_f32(dyr[j]) - dot));
  }
}

template <class T>
__global__ void log_softmax_backward_kernel(T* dx, const T* dy, const T* y, const uint8_t* mask,
                                            int64_t cols) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* dyr = dy + row * cols;
  const T* yr = y + row * cols;
  T* dxr = dx + row * cols;
  const uint8_t* m = mask == nullptr ? nullptr : mask + row * cols;
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    if (m == nullptr || m[j] != 0) sum += load_f32(dyr[j]);
  }
  sum = block_sum(sum, scratch);
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    const bool kept = m == nullptr || m[j] != 0;
    dxr[j] = store_as<T>(kept ? load_f32(dyr[j]) - expf(load_f32(yr[j])) * sum : 0.0f);
  }
}

// Shared argument checks; returns false when there is nothing to launch.
bool softmax_rows_to_launch(int64_t rows, int64_t cols) {
  CHECK_GE(rows, 0);
  CHECK_GE(cols, 0);
  CHECK_LE(rows, int64_t(2147483647)) << "softmax: one block per row";
  return rows > 0 && cols > 0;
}

template <class T, bool kLog>
void launch_softmax_rows_forward(T* y, const T* x, const uint8_t* mask, int64_t rows, int64_t cols,
                                 int64_t heads, int64_t q, const RunContext& ctx) {
  CHECK_GE(heads, 1);
  CHECK_GE(q, 1);
  CHECK_EQ(rows % (heads * q), 0) << "rows must be a whole number of [heads, q] mask groups";
  if (!softmax_rows_to_launch(rows, cols)) return;
  softmax_rows_forward_kernel<T, kLog>
      <<<static_cast<unsigned>(rows), row_threads(cols), 0, stream_of(ctx)>>>(y, x, mask, cols, heads, q);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace

template <class T>
void softmax_forward_cuda(T* y, const T* x, const uint8_t* mask, int64_t rows, int64_t cols,
                          const RunContext& ctx) {
  launch_softmax_rows_forward<T, false>(y, x, mask, rows, cols, 1, 1, ctx);
}

template <class T>
void softmax_backward_cuda(T* dx, const T* dy, const T* y, int64_t rows, int64_t cols,
                           const RunContext& ctx) {
  if (!softmax_rows_to_launch(rows, cols)) return;
  softmax_backward_kernel<T>
      <<<static_cast<unsigned>(rows), row_threads(cols), 0, stream_of(ctx)>>>(dx, dy, y, cols);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void log_softmax_forward_cuda(T* y, const T* x, const uint8_t* mask, int64_t rows, int64_t cols,
                              const RunContext& ctx) {
  launch_softmax_rows_forward<T, true>(y, x, mask, rows, cols, 1, 1, ctx);
}

template <class T>
void log_softmax_backward_cuda(T* dx, const T* dy, const T* y, const uint8_t* mask, int64_t rows,
                               int64_t cols, const RunContext& ctx) {
  if (!softmax_rows_to_launch(rows, cols)) return;
  log_softmax_backward_kernel<T>
      <<<static_cast<unsigned>(rows), row_threads(cols), 0, stream_of(ctx)>>>(dx, dy, y, mask, cols);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void attention_softmax_forward_cuda(T* probs, const T* scores, const uint8_t* mask, int64_t batch,
                                    int64_t heads, int64_t queries, int64_t keys, const RunContext& ctx) {
  CHECK_GE(batch, 0);
  CHECK_GE(queries, 0);
  if (batch == 0 || queries == 0) return;
  launch_softmax_rows_forward<T, false>(probs, scores, mask, batch * heads * queries, keys, heads, queries,
                                        ctx);
}

template <class T>
void attention_softmax_backward_cuda(T* dscores, const T* dprobs, const T* probs, int64_t batch,
                                     int64_t heads, int64_t queries, int64_t keys, const RunContext& ctx) {
  softmax_backward_cuda(dscores, dprobs, probs, batch * heads * queries, keys, ctx);
}

#define MOEASR_INSTANTIATE_SOFTMAX_CUDA(T)                                                                  \
  template void softmax_forward_cuda<T>(T*, const T*, const uint8_t*, int64_t, int64_t, const RunContext&); \
  template void softmax_backward_cuda<T>(T*, const T*, const T*, int64_t, int64_t, const RunContext&);      \
  template void log_softmax_forward_cuda<T>(T*, const T*, const uint8_t*, int64_t, int64_t,                 \
                                            const RunContext&);                                             \
  template void log_softmax_backward_cuda<T>(T*, const T*, const T*, const uint8_t*, int64_t, int64_t,      \
                                             const RunContext&);                                            \
  template void attention_softmax_forward_cuda<T>(T*, const T*, const uint8_t*, int64_t, int64_t, int64_t,  \
                                                  int64_t, const RunContext&);                              \
  template void attention_softmax_backward_cuda<T>(T*, const T*, const T*, int64_t, int64_t, int64_t,       \
                                                   int64_t, const RunContext&);

MOEASR_INSTANTIATE_SOFTMAX_CUDA(float)
MOEASR_INSTANTIATE_SOFTMAX_CUDA(__nv_bfloat16)

#undef MOEASR_INSTANTIATE_SOFTMAX_CUDA

}  // namespace moeasr
