// kernels/cuda/linear_cuda.cu — linear layer forward/backward on the GPU (see linear_cuda.h): three
// cuBLASLt GEMMs and a deterministic column-sum kernel for dbias.
#include <cuda_bf16.h>

#include <algorithm>

#include "kernels/cuda/bf16_device.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/gemm_cuda.h"
#include "kernels/cuda/linear_cuda.h"

namespace moeasr {
namespace {

constexpr int kColumnTile = 32;  // columns per block (threadIdx.x)
constexpr int kRowLanes = 16;    // row lanes per block (threadIdx.y)

// dbias[o] += sum over rows of dy[row, o]. Each block owns kColumnTile columns; lane y sums rows
// y, y + kRowLanes, ... in order, then lane sums are added in lane order: a fixed order, so the
// result is the same on every run.
template <class T>
__global__ void column_sum_accumulate_kernel(float* dbias, const T* dy, int64_t n, int64_t cols) {
  __shared__ float partial[kRowLanes][kColumnTile];
  const int64_t col = blockIdx.x * int64_t(kColumnTile) + threadIdx.x;
  float acc = 0.0f;
  if (col < cols) {
    for (int64_t row = threadIdx.y; row < n; row += kRowLanes) acc += load_f32(dy[row * cols + col]);
  }
  partial[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    float total = 0.0f;
    for (int lane = 0; lane < kRowLanes; ++lane) total += partial[lane][threadIdx.x];
    dbias[col] += total;
  }
}

}  // namespace

template <class T>
void linear_forward_cuda(T* y, void* workspace, size_t workspace_bytes, const T* x, const T* weight,
                         const T* bias, int64_t n, int64_t in_features, int64_t out_features,
                         const RunContext& ctx) {
  CHECK(n >= 0 && in_features >= 0 && out_features >= 0)
      << "linear_forward_cuda sizes N=" << n << " I=" << in_features << " O=" << out_features;
  if (n == 0 || out_features == 0) return;
  // y[N,O] = x[N,I] @ W[O,I]^T (+ b)
  gemm_ex_cuda<T, T>(y, workspace, workspace_bytes, x, weight, bias, Transpose::kNo, Transpose::kYes, n,
                     out_features, in_features, 1.0f, 0.0f, in_features, in_features, out_features, 0, 0, 0,
                     1, ctx);
}

template <class T>
void linear_backward_cuda(T* dx, float* dweight, float* dbias, void* workspace, size_t workspace_bytes,
                          const T* dy, const T* x, const T* weight, int64_t n, int64_t in_features,
                          int64_t out_features, const RunContext& ctx) {
  CHECK(n >= 0 && in_features >= 0 && out_features >= 0)
      << "linear_backward_cuda sizes N=" << n << " I=" << in_features << " O=" << out_features;
  if (dx != nullptr) {
    // dx[N,I] = dy[N,O] @ W[O,I]  (O == 0 gives dx = 0 through gemm_ex_cuda's K == 0 path)
    gemm_ex_cuda<T, T>(dx, workspace, workspace_bytes, dy, weight, nullptr, Transpose::kNo, Transpose::kNo, n,
                       in_features, out_features, 1.0f, 0.0f, out_features, in_features, in_features, 0, 0, 0,
                       1, ctx);
  }
  if (dweight != nullptr && n > 0) {
    // dW[O,I] += dy^T[O,N] @ x[N,I], written in fp32
    gemm_ex_cuda<T, float>(dweight, workspace, workspace_bytes, dy, x, nullptr, Transpose::kYes,
                           Transpose::kNo, out_features, in_features, n, 1.0f, 1.0f, out_features,
                           in_features, in_features, 0, 0, 0, 1, ctx);
  }
  if (dbias != nullptr && n > 0 && out_features > 0) {
    cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
    const int64_t blocks = (out_features + kColumnTile - 1) / kColumnTile;
    CHECK_LE(blocks, int64_t(2147483647));
    column_sum_accumulate_kernel<T>
        <<<static_cast<unsigned>(blocks), dim3(kColumnTile, kRowLanes), 0, stream>>>(dbias, dy, n,
                                                                                     out_features);
    CUDA_CHECK(cudaGetLastError());
  }
}

#define MOEASR_INSTANTIATE_LINEAR_CUDA(T)                                                                 \
  template void linear_forward_cuda<T>(T*, void*, size_t, const T*, const T*, const T*, int64_t, int64_t, \
                                       int64_t, const RunContext&);                                       \
  template void linear_backward_cuda<T>(T*, float*, float*, void*, size_t, const T*, const T*, const T*,  \
                                        int64_t, int64_t, int64_t, const RunContext&);
MOEASR_INSTANTIATE_LINEAR_CUDA(float)
MOEASR_INSTANTIATE_LINEAR_CUDA(__nv_bfloat16)

}  // namespace moeasr
