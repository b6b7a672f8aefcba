// kernels/cuda/optimizer_cuda.cu — Adam step, global gradient norm (two-pass, deterministic) and
// clipping on the GPU (the CUDA twin of kernels/cpu/optimizer.cc). See optimizer_cuda.h.
#include <cmath>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/optimizer_cuda.h"

namespace moeasr {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 20;
constexpr int kNormThreads = 256;        // first pass: one block per chunk
constexpr int kNormFinalThreads = 1024;  // second pass: one block

static_assert(kGradNormCudaChunk % kNormThreads == 0, "a chunk is whole rows of the block");

unsigned blocks_for(int64_t n) {
  int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

// Adam's scalars, computed on the host in double as PyTorch's Python code does, applied in fp32.
struct AdamScalars {
  float weight_decay;
  float lerp_weight;  // 1 - beta1
  float beta2;
  float one_minus_beta2;  // 1 - beta2
  float bc2_sqrt;         // sqrt(1 - beta2^step)
  float eps;
  float neg_step_size;  // -lr / (1 - beta1^step)
  bool decay;
};

// torch.lerp evaluated from the nearer end (optimizer.cc lerp), with explicit fp32 roundings.
__device__ inline float lerp_rn(float start, float end, float weight) {
  return weight < 0.5f ? __fadd_rn(start, __fmul_rn(weight, __fsub_rn(end, start)))
                       : __fsub_rn(end, __fmul_rn(__fsub_rn(end, start), __fsub_rn(1.0f, weight)));
}

__global__ void adam_kernel(float* param, float* exp_avg, float* exp_avg_sq, __nv_bfloat16* param_bf16,
                            const float* grad, AdamScalars s, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float p = param[i];
    float g = grad[i];
    if (s.decay) g = __fadd_rn(g, __fmul_rn(s.weight_decay, p));
    const float m = lerp_rn(exp_avg[i], g, s.lerp_weight);
    float v = __fmul_rn(exp_avg_sq[i], s.beta2);
    v = __fadd_rn(v, __fmul_rn(__fmul_rn(s.one_minus_beta2, g), g));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), s.bc2_sqrt), s.eps);
    const float new_p = __fadd_rn(p, __fdiv_rn(__fmul_rn(s.neg_step_size, m), denom));
    param[i] = new_p;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    if (param_bf16 != nullptr) param_bf16[i] = __float2bfloat16_rn(new_p);
  }
}

// Sum of a double over the block in a fixed tree (deterministic); the result is valid in thread 0.
template <int kBlock>
__device__ double block_sum(double x, double* shared) {
  shared[threadIdx.x] = x;
  __syncthreads();
  for (int stride = kBlock / 2; stride > 0; stride /= 2) {
    if (int(threadIdx.x) < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  return shared[0];
}

// Pass 1: block j sums the squares of elements [j * chunk, (j + 1) * chunk) of one buffer.
__global__ void sum_of_squares_kernel(double* partial, const float* data, int64_t count) {
  __shared__ double shared[kNormThreads];
  const int64_t begin = int64_t(blockIdx.x) * kGradNormCudaChunk;
  const int64_t end = begin + kGradNormCudaChunk < count ? begin + kGradNormCudaChunk : count;
  double acc = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kNormThreads) {
    const double x = static_cast<double>(data[i]);
    acc += x * x;
  }
  const double total = block_sum<kNormThreads>(acc, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// Pass 2: one block adds the partials (thread t takes t, t + 1024, ...), then the fixed tree.
__global__ void __launch_bounds__(kNormFinalThreads)
    norm_from_partials_kernel(float* norm, const double* partial, int64_t num_partials) {
  __shared__ double shared[kNormFinalThreads];
  double acc = 0.0;
  for (int64_t j = threadIdx.x; j < num_partials; j += kNormFinalThreads) acc += partial[j];
  const double total = block_sum<kNormFinalThreads>(acc, shared);
  if (threadIdx.x == 0) *norm = static_cast<float>(sqrt(total));
}

__global__ void clip_kernel(float* data, const float* norm, double max_norm, int64_t count) {
  const double total_norm = static_cast<double>(*norm);
  if (!isfinite(total_norm)) return;  // the caller skips the step
  const double clip_coef = max_norm / (total_norm + 1e-6);
  if (clip_coef >= 1.0) return;
  const float coef = static_cast<float>(clip_coef);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    data[i] = __fmul_rn(data[i], coef);
  }
}

int64_t num_chunks(int64_t count) {
  return (count + kGradNormCudaChunk - 1) / kGradNormCudaChunk;
}

void check_buffers(const GradBuffer<float>* buffers, int64_t num_buffers) {
  CHECK_GE(num_buffers, 0);
  CHECK(num_buffers == 0 || buffers != nullptr);
  for (int64_t k = 0; k < num_buffers; ++k) {
    CHECK_GE(buffers[k].count, 0) << "buffer " << k;
    CHECK(buffers[k].count == 0 || buffers[k].data != nullptr) << "buffer " << k << " is null";
  }
}

}  // namespace

void adam_update_cuda(float* param, float* exp_avg, float* exp_avg_sq, __nv_bfloat16* param_bf16,
                      const float* grad, double lr, double beta1, double beta2, double eps,
                      double weight_decay, int64_t step, int64_t n, const RunContext& ctx) {
  CHECK_GE(step, 1) << "Adam steps are 1-based";
  CHECK_GE(n, 0);
  CHECK(beta1 >= 0.0 && beta1 < 1.0) << "beta1 " << beta1;
  CHECK(beta2 >= 0.0 && beta2 < 1.0) << "beta2 " << beta2;
  if (n == 0) return;
  const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bias_correction2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  const double step_size = lr / bias_correction1;
  AdamScalars s;
  s.weight_decay = static_cast<float>(weight_decay);
  s.lerp_weight = static_cast<float>(1.0 - beta1);
  s.beta2 = static_cast<float>(beta2);
  s.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  s.bc2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  s.eps = static_cast<float>(eps);
  s.neg_step_size = static_cast<float>(-step_size);
  s.decay = weight_decay != 0.0;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  adam_kernel<<<blocks_for(n), kThreads, 0, stream>>>(param, exp_avg, exp_avg_sq, param_bf16, grad, s, n);
  CUDA_CHECK(cudaGetLastError());
}

size_t global_grad_norm_workspace_bytes(const GradBuffer<float>* buffers, int64_t num_buffers) {
  check_buffers(buffers, num_buffers);
  int64_t chunks = 0;
  for (int64_t k = 0; k < num_buffers; ++k) chunks += num_chunks(buffers[k].count);
  return static_cast<size_t>(chunks) * sizeof(double);
}

void global_grad_norm_cuda(float* norm, const GradBuffer<float>* buffers, int64_t num_buffers,
                           void* workspace, size_t workspace_bytes, const RunContext& ctx) {
  const size_t needed = global_grad_norm_workspace_bytes(buffers, num_buffers);
  CHECK(workspace_bytes >= needed) << "grad-norm workspace of " << workspace_bytes << " bytes, need "
                                   << needed;
  CHECK(needed == 0 || workspace != nullptr) << "grad-norm workspace is null";
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  double* partial = static_cast<double*>(workspace);
  int64_t offset = 0;  // buffers in list order, chunks in element order
  for (int64_t k = 0; k < num_buffers; ++k) {
    const int64_t chunks = num_chunks(buffers[k].count);
    if (chunks == 0) continue;
    CHECK_LE(chunks, int64_t(0x7fffffff)) << "buffer " << k << " too large";
    sum_of_squares_kernel<<<static_cast<unsigned>(chunks), kNormThreads, 0, stream>>>(
        partial + offset, buffers[k].data, buffers[k].count);
    CUDA_CHECK(cudaGetLastError());
    offset += chunks;
  }
  // Always launched: with no elements it writes a norm of 0, as the CPU op returns.
  norm_from_partials_kernel<<<1, kNormFinalThreads, 0, stream>>>(norm, partial, offset);
  CUDA_CHECK(cudaGetLastError());
}

void clip_grads_by_norm_cuda(const GradBuffer<float>* buffers, const float* norm, double max_norm,
                             int64_t num_buffers, const RunContext& ctx) {
  CHECK(max_norm > 0.0) << "max_norm " << max_norm;
  check_buffers(buffers, num_buffers);
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  for (int64_t k = 0; k < num_buffers; ++k) {
    if (buffers[k].count == 0) continue;
    clip_kernel<<<blocks_for(buffers[k].count), kThreads, 0, stream>>>(buffers[k].data, norm, max_norm,
                                                                       buffers[k].count);
    CUDA_CHECK(cudaGetLastError());
  }
}

void clip_grad_norm_cuda(float* norm, const GradBuffer<float>* buffers, double max_norm, int64_t num_buffers,
                         void* workspace, size_t workspace_bytes, const RunContext& ctx) {
  CHECK(max_norm > 0.0) << "max_norm " << max_norm;
  global_grad_norm_cuda(norm, buffers, num_buffers, workspace, workspace_bytes, ctx);
  clip_grads_by_norm_cuda(buffers, norm, max_norm, num_buffers, ctx);
}

}  // namespace moeasr
