// kernels/cuda/ctc_loss_cuda.cu — CTC loss forward (alpha recursion) and backward (beta recursion and
// posterior occupancies) on the GPU, the CUDA twin of kernels/cpu/ctc_loss.cc (after PyTorch's
// LossCTC.cpp): one block per utterance, threads over the extended label positions, log space in
// double. See ctc_loss_cuda.h for semantics, dtypes and the differences from the CPU op.
#include <cmath>

#include "kernels/cuda/ctc_loss_cuda.h"
#include "kernels/cuda/cuda_check.h"

namespace moeasr {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 20;
constexpr size_t kDefaultSharedBytes = 48 * 1024;  // beyond this a kernel must opt in

__device__ inline double neg_inf() {
  return __longlong_as_double(0xfff0000000000000LL);
}
__device__ inline float neg_inf_f() {
  return __int_as_float(0xff800000);
}
__device__ inline float nan_f() {
  return __int_as_float(0x7fc00000);
}

// log(exp(a) + exp(b)) without overflow; -inf is the identity (ctc_loss.cc log_add).
__device__ inline double log_add(double a, double b) {
  if (a == neg_inf()) return b;
  if (b == neg_inf()) return a;
  double hi = a > b ? a : b;
  double lo = a > b ? b : a;
  return hi + log1p(exp(lo - hi));
}

// Label of extended position s: blanks at even positions, target labels at odd ones.
__device__ inline int32_t extended_label(const int32_t* lab, int64_t s) {
  return (s & 1) ? lab[s / 2] : kCtcBlank;
}

// A transition s-2 -> s skips the blank between two labels; allowed unless they are equal.
__device__ inline bool can_skip(const int32_t* lab, int64_t s) {
  return s >= 2 && (s & 1) && lab[s / 2] != lab[s / 2 - 1];
}

// Loads the utterance's labels into shared memory and checks lengths and labels; true when bad.
// Every thread of the block must call it (it ends in a block-wide vote).
__device__ bool load_and_check(int32_t* lab, const int32_t* targets, int64_t frames, int64_t labels,
                               int64_t max_time, int64_t vocab, int64_t max_target_length) {
  int bad = frames < 0 || frames > max_time || labels < 0 || labels > max_target_length;
  if (!bad) {
    for (int64_t i = threadIdx.x; i < labels; i += blockDim.x) {
      int32_t label = targets[i];
      if (label <= kCtcBlank || label >= vocab) bad = 1;
      lab[i] = label;
    }
  }
  return __syncthreads_or(bad) != 0;
}

// One block per utterance. Shared: prev[S], cur[S] (double), lab[L] (int32).
__global__ void __launch_bounds__(1024)
    ctc_forward_kernel(float* loss, float* log_alpha, const float* log_probs, const int32_t* input_lengths,
                       const int32_t* targets, const int32_t* target_lengths, int64_t max_time, int64_t vocab,
                       int64_t max_target_length) {
  extern __shared__ double shared[];
  const int64_t b = blockIdx.x;
  const int64_t stride = 2 * max_target_length + 1;
  double* prev = shared;
  double* cur = shared + stride;
  int32_t* lab = reinterpret_cast<int32_t*>(shared + 2 * stride);
  float* alpha = log_alpha + b * max_time * stride;
  const float* lp_b = log_probs + b * max_time * vocab;
  const int64_t frames = input_lengths[b];
  const int64_t labels = target_lengths[b];
  if (load_and_check(lab, targets + b * max_target_length, frames, labels, max_time, vocab,
                     max_target_length)) {
    for (int64_t i = threadIdx.x; i < max_time * stride; i += blockDim.x) alpha[i] = nan_f();
    if (threadIdx.x == 0) loss[b] = nan_f();
    return;
  }
  const int64_t positions = 2 * labels + 1;
  for (int64_t t = 0; t < frames; ++t) {
    const float* lp = lp_b + t * vocab;
    for (int64_t s = threadIdx.x; s < stride; s += blockDim.x) {
      if (s >= positions) {
        alpha[t * stride + s] = neg_inf_f();
        continue;
      }
      double a;
      if (t == 0) {
        a = s < 2 ? 0.0 : neg_inf();
      } else {
        a = prev[s];
        if (s >= 1) a = log_add(a, prev[s - 1]);
        if (can_skip(lab, s)) a = log_add(a, prev[s - 2]);
      }
      const double c = a == neg_inf() ? neg_inf() : a + static_cast<double>(lp[extended_label(lab, s)]);
      cur[s] = c;
      alpha[t * stride + s] = static_cast<float>(c);
    }
    __syncthreads();  // cur complete before it is read as prev; prev no longer read before it is written
    double* swap = prev;
    prev = cur;
    cur = swap;
  }
  for (int64_t i = threadIdx.x; i < (max_time - frames) * stride; i += blockDim.x) {
    alpha[frames * stride + i] = neg_inf_f();
  }
  if (threadIdx.x == 0) {
    double log_p;
    if (frames == 0) {
      log_p = positions == 1 ? 0.0 : neg_inf();
    } else {
      log_p = positions >= 2 ? log_add(prev[positions - 1], prev[positions - 2]) : prev[positions - 1];
    }
    loss[b] = log_p == neg_inf() ? 0.0f : static_cast<float>(-log_p);  // zero_infinity
  }
}

// total = sum of loss[b] in batch order, in double (as the CPU op).
__global__ void ctc_total_kernel(float* total_loss, const float* loss, int64_t batch) {
  double sum = 0.0;
  for (int64_t b = 0; b < batch; ++b) sum += static_cast<double>(loss[b]);
  *total_loss = static_cast<float>(sum);
}

__global__ void fill_kernel(float* data, float value, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    data[i] = value;
  }
}

// One block per utterance, after dlog_probs has been zeroed. Shared: next[S], cur[S], term[S]
// (double), lab[L], first[L] (int32).
__global__ void __launch_bounds__(1024)
    ctc_backward_kernel(float* dlog_probs, const float* dloss, float dtotal_loss, const float* log_alpha,
                        const float* log_probs, const int32_t* input_lengths, const int32_t* targets,
                        const int32_t* target_lengths, int64_t max_time, int64_t vocab,
                        int64_t max_target_length) {
  extern __shared__ double shared[];
  __shared__ double log_p_shared;
  const int64_t b = blockIdx.x;
  const int64_t stride = 2 * max_target_length + 1;
  double* next = shared;
  double* cur = shared + stride;
  double* term = shared + 2 * stride;
  int32_t* lab = reinterpret_cast<int32_t*>(shared + 3 * stride);
  int32_t* first = lab + max_target_length;
  const float* alpha = log_alpha + b * max_time * stride;
  const float* lp_b = log_probs + b * max_time * vocab;
  float* d_b = dlog_probs + b * max_time * vocab;
  const int64_t frames = input_lengths[b];
  const int64_t labels = target_lengths[b];
  if (load_and_check(lab, targets + b * max_target_length, frames, labels, max_time, vocab,
                     max_target_length)) {
    for (int64_t i = threadIdx.x; i < max_time * vocab; i += blockDim.x) d_b[i] = nan_f();
    return;
  }
  if (frames == 0) return;  // nothing to learn; the rows are already 0
  const int64_t positions = 2 * labels + 1;
  const double weight =
      static_cast<double>(dtotal_loss) + (dloss != nullptr ? static_cast<double>(dloss[b]) : 0.0);
  // first[i]: label i is the first occurrence of its symbol, so it owns that symbol's occupancy sum.
  for (int64_t i = threadIdx.x; i < labels; i += blockDim.x) {
    int32_t is_first = 1;
    for (int64_t j = 0; j < i; ++j) {
      if (lab[j] == lab[i]) {
        is_first = 0;
        break;
      }
    }
    first[i] = is_first;
  }
  if (threadIdx.x == 0) {  // log p from the saved (fp32) alpha, as the CPU op's log_likelihood
    const float* last = alpha + (frames - 1) * stride;
    double lp = static_cast<double>(last[positions - 1]);
    if (positions >= 2) lp = log_add(lp, static_cast<double>(last[positions - 2]));
    log_p_shared = lp;
  }
  __syncthreads();
  const double log_p = log_p_shared;
  if (!isfinite(log_p)) return;  // zero_infinity (impossible target): gradient 0
  for (int64_t t = frames - 1; t >= 0; --t) {
    const float* lp_next = lp_b + (t + 1) * vocab;  // read only when t + 1 < frames
    const float* alpha_t = alpha + t * stride;
    for (int64_t s = threadIdx.x; s < positions; s += blockDim.x) {
      double beta;
      if (t == frames - 1) {
        beta = s >= positions - 2 ? 0.0 : neg_inf();
      } else {
        beta = neg_inf();
        for (int64_t step = 0; step <= 2; ++step) {
          const int64_t to = s + step;
          if (to >= positions) break;
          if (step == 2 && !can_skip(lab, to)) continue;
          if (next[to] == neg_inf()) continue;
          beta = log_add(beta, next[to] + static_cast<double>(lp_next[extended_label(lab, to)]));
        }
      }
      cur[s] = beta;
      const double a = static_cast<double>(alpha_t[s]);
      term[s] = (a == neg_inf() || beta == neg_inf()) ? 0.0 : exp(a + beta - log_p);
    }
    __syncthreads();  // term and cur complete
    float* d = d_b + t * vocab;
    if (threadIdx.x == 0) {  // the blank: every even position, in increasing s as the CPU op
      double occupancy = 0.0;
      for (int64_t s = 0; s < positions; s += 2) occupancy += term[s];
      d[kCtcBlank] = static_cast<float>(-weight * occupancy);
    }
    for (int64_t i = threadIdx.x; i < labels; i += blockDim.x) {
      if (!first[i]) continue;
      double occupancy = 0.0;
      for (int64_t j = i; j < labels; ++j) {
        if (lab[j] == lab[i]) occupancy += term[2 * j + 1];
      }
      d[lab[i]] = static_cast<float>(-weight * occupancy);
    }
    __syncthreads();  // term and next no longer read before they are rewritten
    double* swap = next;
    next = cur;
    cur = swap;
  }
}

void check_sizes(int64_t batch, int64_t max_time, int64_t vocab, int64_t max_target_length) {
  CHECK_GE(batch, 0);
  CHECK_GE(max_time, 0);
  CHECK_GE(vocab, 1) << "the vocabulary must hold at least the blank";
  CHECK_GE(max_target_length, 0);
  CHECK_LE(batch, int64_t(0x7fffffff)) << "one block per utterance";
}

int threads_for_positions(int64_t stride) {
  int64_t threads = (stride + 31) / 32 * 32;
  if (threads > 1024) threads = 1024;
  return static_cast<int>(threads);
}

// Opts a kernel in to more than 48 KiB of dynamic shared memory when it needs it; CHECKs the limit.
void allow_shared_bytes(const void* kernel, size_t bytes, int64_t max_target_length) {
  if (bytes <= kDefaultSharedBytes) return;
  int device = 0, limit = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  CHECK(bytes <= static_cast<size_t>(limit))
      << "CTC with max_target_length " << max_target_length << " needs " << bytes
      << " bytes of shared memory per block; this device allows " << limit;
  CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

}  // namespace

void ctc_loss_forward_cuda(float* loss, float* total_loss, float* log_alpha, const float* log_probs,
                           const int32_t* input_lengths, const int32_t* targets,
                           const int32_t* target_lengths, int64_t batch, int64_t max_time, int64_t vocab,
                           int64_t max_target_length, const RunContext& ctx) {
  check_sizes(batch, max_time, vocab, max_target_length);
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  const int64_t stride = 2 * max_target_length + 1;
  if (batch > 0) {
    const size_t bytes = 2 * stride * sizeof(double) + max_target_length * sizeof(int32_t);
    allow_shared_bytes(reinterpret_cast<const void*>(&ctc_forward_kernel), bytes, max_target_length);
    ctc_forward_kernel<<<static_cast<unsigned>(batch), threads_for_positions(stride), bytes, stream>>>(
        loss, log_alpha, log_probs, input_lengths, targets, target_lengths, max_time, vocab,
        max_target_length);
    CUDA_CHECK(cudaGetLastError());
  }
  if (total_loss != nullptr) {  // also with B = 0: total 0, as the CPU op
    ctc_total_kernel<<<1, 1, 0, stream>>>(total_loss, loss, batch);
    CUDA_CHECK(cudaGetLastError());
  }
}

void ctc_loss_backward_cuda(float* dlog_probs, const float* dloss, float dtotal_loss, const float* log_alpha,
                            const float* log_probs, const int32_t* input_lengths, const int32_t* targets,
                            const int32_t* target_lengths, int64_t batch, int64_t max_time, int64_t vocab,
                            int64_t max_target_length, const RunContext& ctx) {
  check_sizes(batch, max_time, vocab, max_target_length);
  const int64_t total = batch * max_time * vocab;
  if (total == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  int64_t blocks = (total + kThreads - 1) / kThreads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  fill_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(dlog_probs, 0.0f, total);
  CUDA_CHECK(cudaGetLastError());
  const int64_t stride = 2 * max_target_length + 1;
  const size_t bytes = 3 * stride * sizeof(double) + 2 * max_target_length * sizeof(int32_t);
  allow_shared_bytes(reinterpret_cast<const void*>(&ctc_backward_kernel), bytes, max_target_length);
  ctc_backward_kernel<<<static_cast<unsigned>(batch), threads_for_positions(stride), bytes, stream>>>(
      dlog_probs, dloss, dtotal_loss, log_alpha, log_probs, input_lengths, targets, target_lengths, max_time,
      vocab, max_target_length);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace moeasr
