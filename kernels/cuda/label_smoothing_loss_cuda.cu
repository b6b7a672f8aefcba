// kernels/cuda/label_smoothing_loss_cuda.cu — label-smoothing KL loss and its logits gradient on the
// GPU (the CUDA twin of kernels/cpu/label_smoothing_loss.cc): a block-per-row forward writing per-row
// partials, a one-block fixed-order reduction, and an elementwise backward. See the header.
#include <cuda_bf16.h>

#include <cmath>

#include "kernels/cuda/bf16_device.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/label_smoothing_loss_cuda.h"

namespace moeasr {
namespace {

constexpr int kRowThreads = 256;     // one block per row
constexpr int kReduceThreads = 256;  // the final one-block reduction
constexpr int kThreads = 256;        // elementwise backward
constexpr int64_t kMaxBlocks = 1 << 20;

// Smoothed target q: q_target on the label, q_other elsewhere (label_smoothing_loss.cc).
struct SmoothedTarget {
  double q_target;
  double q_other;
};

SmoothedTarget smoothed_target(double smoothing, int64_t vocab) {
  CHECK(smoothing >= 0.0 && smoothing <= 1.0) << "label smoothing " << smoothing << " outside [0, 1]";
  CHECK(vocab >= 2 || smoothing == 0.0) << "label smoothing needs at least 2 symbols, got " << vocab;
  return {1.0 - smoothing, vocab >= 2 ? smoothing / static_cast<double>(vocab - 1) : 0.0};
}

double xlogx(double q) {
  return q > 0.0 ? q * std::log(q) : 0.0;
}

// Block-wide fp32 sum in a fixed tree; every thread gets the result.
__device__ float block_sum(float x, float* shared) {
  __syncthreads();  // shared may still be read from a previous reduction
  shared[threadIdx.x] = x;
  __syncthreads();
  for (int stride = kRowThreads / 2; stride > 0; stride /= 2) {
    if (int(threadIdx.x) < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  return shared[0];
}

// Block-wide (max, first index of the max); every thread gets the result. A pair wins when its value
// is larger, or equal with a smaller index: the first maximum, as torch.argmax and the CPU op.
__device__ void block_argmax(float* value, int64_t* index, float* shared_value, int64_t* shared_index) {
  __syncthreads();
  shared_value[threadIdx.x] = *value;
  shared_index[threadIdx.x] = *index;
  __syncthreads();
  for (int stride = kRowThreads / 2; stride > 0; stride /= 2) {
    if (int(threadIdx.x) < stride) {
      float v = shared_value[threadIdx.x + stride];
      int64_t i = shared_index[threadIdx.x + stride];
      float mine = shared_value[threadIdx.x];
      int64_t mine_i = shared_index[threadIdx.x];
      bool take = i >= 0 && (mine_i < 0 || v > mine || (v == mine && i < mine_i));
      if (take) {
        shared_value[threadIdx.x] = v;
        shared_index[threadIdx.x] = i;
      }
    }
    __syncthreads();
  }
  *value = shared_value[0];
  *index = shared_index[0];
}

// One block per row: log_sum_exp[i], row_kl[i] (double) and row_correct[i].
template <class T>
__global__ void row_forward_kernel(float* log_sum_exp, double* row_kl, int32_t* row_correct, const T* logits,
                                   const int32_t* targets, float q_target, float q_other, double neg_entropy,
                                   int32_t ignore_id, int64_t vocab) {
  __shared__ float shared[kRowThreads];
  __shared__ float shared_value[kRowThreads];
  __shared__ int64_t shared_index[kRowThreads];
  const int64_t row = blockIdx.x;
  const int32_t target = targets[row];
  if (target == ignore_id) {  // uniform over the block
    if (threadIdx.x == 0) {
      log_sum_exp[row] = 0.0f;
      row_kl[row] = 0.0;
      row_correct[row] = 0;
    }
    return;
  }
  if (target < 0 || target >= vocab) {  // the CPU op CHECK-fails here; we poison the loss instead
    if (threadIdx.x == 0) {
      log_sum_exp[row] = __int_as_float(0x7fc00000);
      row_kl[row] = __longlong_as_double(0x7ff8000000000000LL);
      row_correct[row] = 0;
    }
    return;
  }
  const T* x = logits + row * vocab;
  // Max and first argmax: each thread scans v = tid, tid + blockDim, ... keeping its first maximum.
  float best = 0.0f;
  int64_t best_index = -1;
  for (int64_t v = threadIdx.x; v < vocab; v += kRowThreads) {
    float value = load_f32(x[v]);
    if (best_index < 0 || value > best) {
      best = value;
      best_index = v;
    }
  }
  block_argmax(&best, &best_index, shared_value, shared_index);
  const float max_value = best;
  float sum = 0.0f;
  for (int64_t v = threadIdx.x; v < vocab; v += kRowThreads) sum += expf(load_f32(x[v]) - max_value);
  sum = block_sum(sum, shared);
  const float lse = max_value + logf(sum);
  // cross = sum_v q_v (x_v - lse), skipping q_v = 0 as the CPU op does.
  float cross = 0.0f;
  for (int64_t v = threadIdx.x; v < vocab; v += kRowThreads) {
    float q = v == target ? q_target : q_other;
    if (q > 0.0f) cross += q * (load_f32(x[v]) - lse);
  }
  cross = block_sum(cross, shared);
  if (threadIdx.x == 0) {
    log_sum_exp[row] = lse;
    row_kl[row] = neg_entropy - static_cast<double>(cross);
    row_correct[row] = best_index == target ? 1 : 0;
  }
}

// One block: loss = sum of row_kl over kept rows / normalizer, and the counts, in a fixed order.
__global__ void reduce_kernel(float* loss, int64_t* num_kept, int64_t* num_correct, const double* row_kl,
                              const int32_t* row_correct, const int32_t* targets, int32_t ignore_id,
                              double normalizer, int64_t n) {
  __shared__ double shared_kl[kReduceThreads];
  __shared__ long long shared_kept[kReduceThreads];
  __shared__ long long shared_correct[kReduceThreads];
  double kl = 0.0;
  long long kept = 0, correct = 0;
  for (int64_t i = threadIdx.x; i < n; i += kReduceThreads) {
    if (targets[i] == ignore_id) continue;
    kl += row_kl[i];
    ++kept;
    correct += row_correct[i];
  }
  shared_kl[threadIdx.x] = kl;
  shared_kept[threadIdx.x] = kept;
  shared_correct[threadIdx.x] = correct;
  __syncthreads();
  for (int stride = kReduceThreads / 2; stride > 0; stride /= 2) {
    if (int(threadIdx.x) < stride) {
      shared_kl[threadIdx.x] += shared_kl[threadIdx.x + stride];
      shared_kept[threadIdx.x] += shared_kept[threadIdx.x + stride];
      shared_correct[threadIdx.x] += shared_correct[threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    *loss = static_cast<float>(shared_kl[0] / normalizer);
    if (num_kept != nullptr) *num_kept = shared_kept[0];
    if (num_correct != nullptr) *num_correct = shared_correct[0];
  }
}

template <class T>
__global__ void backward_kernel(T* dlogits, const T* logits, const float* log_sum_exp, const int32_t* targets,
                                float q_target, float q_other, float scale, int32_t ignore_id, int64_t vocab,
                                int64_t total) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = idx / vocab, v = idx % vocab;
    const int32_t target = targets[row];
    float d = 0.0f;
    if (target != ignore_id) {
      const float q = v == target ? q_target : q_other;
      d = (expf(load_f32(logits[idx]) - log_sum_exp[row]) - q) * scale;
    }
    dlogits[idx] = store_as<T>(d);
  }
}

size_t align_up(size_t bytes) {
  return (bytes + 255) / 256 * 256;
}

}  // namespace

size_t label_smoothing_loss_workspace_bytes(int64_t n) {
  CHECK_GE(n, 0);
  return align_up(static_cast<size_t>(n) * sizeof(double)) +
         align_up(static_cast<size_t>(n) * sizeof(int32_t));
}

template <class T>
void label_smoothing_loss_forward_cuda(float* loss, float* log_sum_exp, int64_t* num_kept,
                                       int64_t* num_correct, const T* logits, const int32_t* targets,
                                       double smoothing, int32_t ignore_id, double normalizer, int64_t n,
                                       int64_t vocab, void* workspace, size_t workspace_bytes,
                                       const RunContext& ctx) {
  CHECK_GE(n, 0);
  CHECK_GE(vocab, 1);
  CHECK(normalizer > 0.0) << "label smoothing loss normalizer " << normalizer << " must be > 0";
  CHECK_LE(n, int64_t(0x7fffffff)) << "one block per row";
  const size_t needed = label_smoothing_loss_workspace_bytes(n);
  CHECK(workspace_bytes >= needed) << "label smoothing workspace of " << workspace_bytes << " bytes, need "
                                   << needed;
  CHECK(needed == 0 || workspace != nullptr) << "label smoothing workspace is null";
  const SmoothedTarget q = smoothed_target(smoothing, vocab);
  const double neg_entropy = xlogx(q.q_target) + static_cast<double>(vocab - 1) * xlogx(q.q_other);
  double* row_kl = static_cast<double*>(workspace);
  int32_t* row_correct = reinterpret_cast<int32_t*>(static_cast<char*>(workspace) +
                                                    align_up(static_cast<size_t>(n) * sizeof(double)));
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  if (n > 0) {
    row_forward_kernel<T><<<static_cast<unsigned>(n), kRowThreads, 0, stream>>>(
        log_sum_exp, row_kl, row_correct, logits, targets, static_cast<float>(q.q_target),
        static_cast<float>(q.q_other), neg_entropy, ignore_id, vocab);
    CUDA_CHECK(cudaGetLastError());
  }
  // Always launched: with N = 0 it writes loss 0 and counts 0, as the CPU op does.
  reduce_kernel<<<1, kReduceThreads, 0, stream>>>(loss, num_kept, num_correct, row_kl, row_correct, targets,
                                                  ignore_id, normalizer, n);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void label_smoothing_loss_backward_cuda(T* dlogits, float dloss, const T* logits, const float* log_sum_exp,
                                        const int32_t* targets, double smoothing, int32_t ignore_id,
                                        double normalizer, int64_t n, int64_t vocab, const RunContext& ctx) {
  CHECK_GE(n, 0);
  CHECK_GE(vocab, 1);
  CHECK(normalizer > 0.0) << "label smoothing loss normalizer " << normalizer << " must be > 0";
  const SmoothedTarget q = smoothed_target(smoothing, vocab);
  const double scale = static_cast<double>(dloss) / normalizer;
  const int64_t total = n * vocab;
  if (total == 0) return;
  int64_t blocks = (total + kThreads - 1) / kThreads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  backward_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      dlogits, logits, log_sum_exp, targets, static_cast<float>(q.q_target), static_cast<float>(q.q_other),
      static_cast<float>(scale), ignore_id, vocab, total);
  CUDA_CHECK(cudaGetLastError());
}

template void label_smoothing_loss_forward_cuda<float>(float*, float*, int64_t*, int64_t*, const float*,
                                                       const int32_t*, double, int32_t, double, int64_t,
                                                       int64_t, void*, size_t, const RunContext&);
template void label_smoothing_loss_forward_cuda<__nv_bfloat16>(float*, float*, int64_t*, int64_t*,
                                                               const __nv_bfloat16*, const int32_t*, double,
                                                               int32_t, double, int64_t, int64_t, void*,
                                                               size_t, const RunContext&);
template void label_smoothing_loss_backward_cuda<float>(float*, float, const float*, const float*,
                                                        const int32_t*, double, int32_t, double, int64_t,
                                                        int64_t, const RunContext&);
template void label_smoothing_loss_backward_cuda<__nv_bfloat16>(__nv_bfloat16*, float, const __nv_bfloat16*,
                                                                const float*, const int32_t*, double, int32_t,
                                                                double, int64_t, int64_t, const RunContext&);

}  // namespace moeasr
