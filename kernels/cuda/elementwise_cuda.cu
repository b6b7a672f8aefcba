// kernels/cuda/elementwise_cuda.cu — residual add on the GPU: a grid-stride loop, one element per
// thread per iteration, launched on the context's stream and checked with cudaGetLastError.
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/elementwise_cuda.h"

namespace moeasr {
namespace {

__global__ void residual_add_kernel(float* out, const float* x, const float* y, float alpha, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    out[i] = x[i] + alpha * y[i];
  }
}

}  // namespace

void residual_add_forward_cuda(float* out, const float* x, const float* y, float alpha, int64_t n,
                               const RunContext& ctx) {
  if (n == 0) return;
  const int threads = 256;
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks > 65535) blocks = 65535;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  residual_add_kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(out, x, y, alpha, n);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace moeasr
