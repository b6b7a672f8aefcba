// kernels/cuda/embedding_cuda.cu — embedding gather and deterministic scatter-add on the GPU (the CUDA
// twin of kernels/cpu/embedding.cc). See embedding_cuda.h for the dtype and determinism rules.
#include <cuda_bf16.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/embedding_cuda.h"

namespace moeasr {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 20;
constexpr int kBackwardColumns = 128;  // threads (= columns) per backward block
constexpr int kIdTile = 1024;          // ids staged in shared memory per pass

__device__ inline float to_float(float x) {
  return x;
}
__device__ inline float to_float(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <class T>
__device__ inline T nan_value();
template <>
__device__ inline float nan_value<float>() {
  return __int_as_float(0x7fc00000);
}
template <>
__device__ inline __nv_bfloat16 nan_value<__nv_bfloat16>() {
  return __float2bfloat16(__int_as_float(0x7fc00000));
}

template <class T>
__global__ void embedding_forward_kernel(T* out, const int32_t* ids, const T* table, int64_t vocab,
                                         int64_t dim, int64_t total) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = idx / dim, d = idx % dim;
    const int64_t id = ids[i];
    out[idx] = (id >= 0 && id < vocab) ? table[id * dim + d] : nan_value<T>();
  }
}

// Block (blockIdx.x = table row v, blockIdx.y = column slice); thread = one column. Walks the ids in
// increasing n (staged through shared memory); the branch on ids[k] == v is uniform over the block.
template <class T>
__global__ void embedding_backward_kernel(float* dtable, const T* dout, const int32_t* ids, int64_t n,
                                          int64_t dim) {
  __shared__ int32_t tile[kIdTile];
  const int64_t v = blockIdx.x;
  const int64_t d = int64_t(blockIdx.y) * kBackwardColumns + threadIdx.x;
  const bool active = d < dim;
  float acc = active ? dtable[v * dim + d] : 0.0f;
  bool touched = false;
  for (int64_t base = 0; base < n; base += kIdTile) {
    const int64_t count = n - base < kIdTile ? n - base : kIdTile;
    __syncthreads();  // the previous tile is no longer read
    for (int64_t k = threadIdx.x; k < count; k += blockDim.x) tile[k] = ids[base + k];
    __syncthreads();
    for (int64_t k = 0; k < count; ++k) {
      if (tile[k] == v) {
        touched = true;
        if (active) acc += to_float(dout[(base + k) * dim + d]);
      }
    }
  }
  if (active && touched) dtable[v * dim + d] = acc;
}

}  // namespace

template <class T>
void embedding_forward_cuda(T* out, const int32_t* ids, const T* table, int64_t n, int64_t vocab, int64_t dim,
                            const RunContext& ctx) {
  CHECK_GE(n, 0);
  CHECK_GE(vocab, 0);
  CHECK_GE(dim, 0);
  const int64_t total = n * dim;
  if (total == 0) return;
  int64_t blocks = (total + kThreads - 1) / kThreads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  embedding_forward_kernel<T>
      <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(out, ids, table, vocab, dim, total);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void embedding_backward_cuda(float* dtable, const T* dout, const int32_t* ids, int64_t n, int64_t vocab,
                             int64_t dim, const RunContext& ctx) {
  CHECK_GE(n, 0);
  CHECK_GE(vocab, 0);
  CHECK_GE(dim, 0);
  if (n == 0 || vocab == 0 || dim == 0) return;
  const int64_t column_slices = (dim + kBackwardColumns - 1) / kBackwardColumns;
  CHECK_LE(vocab, int64_t(0x7fffffff)) << "embedding backward: one block per table row";
  CHECK_LE(column_slices, int64_t(65535)) << "embedding dim " << dim << " too large for the grid";
  dim3 grid(static_cast<unsigned>(vocab), static_cast<unsigned>(column_slices));
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  embedding_backward_kernel<T><<<grid, kBackwardColumns, 0, stream>>>(dtable, dout, ids, n, dim);
  CUDA_CHECK(cudaGetLastError());
}

template void embedding_forward_cuda<float>(float*, const int32_t*, const float*, int64_t, int64_t, int64_t,
                                            const RunContext&);
template void embedding_forward_cuda<__nv_bfloat16>(__nv_bfloat16*, const int32_t*, const __nv_bfloat16*,
                                                    int64_t, int64_t, int64_t, const RunContext&);
template void embedding_backward_cuda<float>(float*, const float*, const int32_t*, int64_t, int64_t, int64_t,
                                             const RunContext&);
template void embedding_backward_cuda<__nv_bfloat16>(float*, const __nv_bfloat16*, const int32_t*, int64_t,
                                                     int64_t, int64_t, const RunContext&);

}  // namespace moeasr
