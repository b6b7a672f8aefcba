// kernels/cuda/moe_dispatch_cuda.cu — top-k routing, routing softmax, permute plan, permute and
// weighted un-permute on the GPU (see moe_dispatch_cuda.h). Row kernels give one warp to one token or
// one (token, slot) pair and move 16-byte vectors when D and the pointers allow it. Every output element
// is written by exactly one thread and every sum runs in a fixed order: results are deterministic.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "kernels/cuda/bf16_device.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/moe_dispatch_cuda.h"

namespace moeasr {
namespace {

constexpr int kPlanThreads = 128;  // 4 warps
constexpr int kPlanWarps = kPlanThreads / 32;
constexpr int64_t kPlanChunk = 2048;  // (token, slot) pairs per block in the count and rank passes
constexpr int64_t kMaxPlanExperts = 2048;
constexpr int kRowThreads = 128;  // 4 warps, one token or pair per warp
constexpr int64_t kMaxBlocks = int64_t{1} << 20;

// V consecutive elements of T, moved as one load/store (16 bytes when V = 16 / sizeof(T)).
template <class T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

int64_t blocks_for(int64_t work_items, int64_t per_block) {
  int64_t blocks = (work_items + per_block - 1) / per_block;
  return blocks < kMaxBlocks ? blocks : kMaxBlocks;
}

bool aligned16(const void* p) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// The vector width for rows of d elements of T at these pointers: 16 bytes when possible, else 1.
template <class T>
bool can_vectorize(int64_t d, const void* a, const void* b, const void* c = nullptr) {
  constexpr int64_t v = 16 / sizeof(T);
  return d % v == 0 && aligned16(a) && aligned16(b) && aligned16(c);
}

void check_row_sizes(int64_t n, int64_t m_max, int64_t k, int64_t d) {
  CHECK(n >= 0 && m_max >= 0 && k >= 1 && d >= 0)
      << "moe permute (cuda) sizes N=" << n << " M_max=" << m_max << " k=" << k << " D=" << d;
}

// ---- top-k and routing softmax: one thread per token ----

__global__ void topk_forward_kernel(float* values, int32_t* indices, const float* logits, int64_t n,
                                    int64_t n_experts, int64_t k) {
  for (int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; row < n;
       row += int64_t(gridDim.x) * blockDim.x) {
    const float* l = logits + row * n_experts;
    float* v = values + row * k;
    int32_t* idx = indices + row * k;
    // Same selection as the CPU op: slot j takes the largest logit not taken yet; strict '>' keeps
    // the lowest expert index among equal logits.
    for (int64_t j = 0; j < k; ++j) {
      int64_t best = -1;
      for (int64_t e = 0; e < n_experts; ++e) {
        bool taken = false;
        for (int64_t p = 0; p < j; ++p) taken = taken || idx[p] == e;
        if (taken) continue;
        if (best < 0 || l[e] > l[best]) best = e;
      }
      idx[j] = static_cast<int32_t>(best);
      v[j] = l[best];
    }
  }
}

__global__ void topk_backward_kernel(float* dlogits, const float* dvalues, const int32_t* indices, int64_t n,
                                     int64_t n_experts, int64_t k) {
  const int64_t total = n * n_experts;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / n_experts, e = i % n_experts;
    float acc = 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      if (indices[row * k + j] == e) acc += dvalues[row * k + j];
    }
    dlogits[i] = acc;
  }
}

__global__ void routing_softmax_forward_kernel(float* weights, const float* values, int64_t n, int64_t k) {
  for (int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; row < n;
       row += int64_t(gridDim.x) * blockDim.x) {
    const float* v = values + row * k;
    float* w = weights + row * k;
    float max_v = v[0];
    for (int64_t j = 1; j < k; ++j) max_v = fmaxf(max_v, v[j]);
    float sum = 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      w[j] = expf(v[j] - max_v);
      sum += w[j];
    }
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < k; ++j) w[j] *= inv;
  }
}

__global__ void routing_softmax_backward_kernel(float* dvalues, const float* dweights, const float* weights,
                                                int64_t n, int64_t k) {
  for (int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; row < n;
       row += int64_t(gridDim.x) * blockDim.x) {
    const float* w = weights + row * k;
    const float* dw = dweights + row * k;
    float dot = 0.0f;
    for (int64_t j = 0; j < k; ++j) dot += w[j] * dw[j];
    for (int64_t j = 0; j < k; ++j) dvalues[row * k + j] = w[j] * (dw[j] - dot);
  }
}

// ---- permute plan ----

// The expert of pair p, or -1 when its token is masked out (or its id is out of range).
__device__ __forceinline__ int pair_expert(const int32_t* indices, const uint8_t* token_mask, int64_t p,
                                           int64_t k, int64_t n_experts) {
  if (token_mask != nullptr && token_mask[p / k] == 0) return -1;
  const int32_t e = indices[p];
  return (e >= 0 && e < n_experts) ? e : -1;
}

// block_counts[b, e] = routed pairs of expert e in chunk b.
__global__ void plan_count_kernel(int32_t* block_counts, const int32_t* indices, const uint8_t* token_mask,
                                  int64_t pairs, int64_t k, int64_t n_experts) {
  extern __shared__ int32_t s_count[];  // [E]
  for (int64_t e = threadIdx.x; e < n_experts; e += blockDim.x) s_count[e] = 0;
  __syncthreads();
  const int64_t begin = blockIdx.x * kPlanChunk;
  const int64_t end = min(begin + kPlanChunk, pairs);
  for (int64_t p = begin + threadIdx.x; p < end; p += blockDim.x) {
    const int e = pair_expert(indices, token_mask, p, k, n_experts);
    if (e >= 0) atomicAdd(&s_count[e], 1);
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < n_experts; e += blockDim.x)
    block_counts[blockIdx.x * n_experts + e] = s_count[e];
}

// One block: counts[e] = sum over chunks, offsets = exclusive prefix sums, and block_counts[b, e] is
// replaced by the first row of chunk b's pairs of expert e.
__global__ void plan_scan_kernel(int64_t* counts, int64_t* offsets, int32_t* block_counts, int64_t blocks,
                                 int64_t n_experts) {
  for (int64_t e = threadIdx.x; e < n_experts; e += blockDim.x) {
    int64_t total = 0;
    for (int64_t b = 0; b < blocks; ++b) total += block_counts[b * n_experts + e];
    counts[e] = total;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t run = 0;
    offsets[0] = 0;
    for (int64_t e = 0; e < n_experts; ++e) {
      run += counts[e];
      offsets[e + 1] = run;
    }
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < n_experts; e += blockDim.x) {
    int64_t base = offsets[e];
    for (int64_t b = 0; b < blocks; ++b) {
      const int32_t c = block_counts[b * n_experts + e];
      block_counts[b * n_experts + e] = static_cast<int32_t>(base);
      base += c;
    }
  }
}

// dest of every pair of chunk b: its expert's start row for this chunk plus the number of earlier
// pairs of the chunk with the same expert. The chunk is walked in tiles of kPlanThreads pairs; inside
// a tile, lanes of a warp with equal experts are found with __match_any_sync and ranked by lane, and
// warps are ranked through per-warp counts in shared memory.
__global__ void plan_rank_kernel(int32_t* dest, const int32_t* block_bases, const int32_t* indices,
                                 const uint8_t* token_mask, int64_t pairs, int64_t k, int64_t n_experts) {
  extern __shared__ int32_t s_mem[];
  int32_t* cursor = s_mem;                   // [E]
  int32_t* warp_counts = s_mem + n_experts;  // [kPlanWarps, E]
  for (int64_t e = threadIdx.x; e < n_experts; e += blockDim.x)
    cursor[e] = block_bases[blockIdx.x * n_experts + e];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t begin = blockIdx.x * kPlanChunk;
  const int64_t end = min(begin + kPlanChunk, pairs);
  for (int64_t tile = begin; tile < end; tile += kPlanThreads) {
    for (int64_t i = threadIdx.x; i < kPlanWarps * n_experts; i += blockDim.x) warp_counts[i] = 0;
    __syncthreads();
    const int64_t p = tile + threadIdx.x;
    const int e = p < end ? pair_expert(indices, token_mask, p, k, n_experts) : -1;
    const unsigned same = __match_any_sync(0xffffffffu, e);
    const int rank_in_warp = __popc(same & ((1u << lane) - 1u));
    if (e >= 0 && rank_in_warp == 0) warp_counts[warp * n_experts + e] = __popc(same);
    __syncthreads();
    if (p < end) {
      if (e >= 0) {
        int32_t row = cursor[e] + rank_in_warp;
        for (int w = 0; w < warp; ++w) row += warp_counts[w * n_experts + e];
        dest[p] = row;
      } else {
        dest[p] = -1;
      }
    }
    __syncthreads();
    for (int64_t ex = threadIdx.x; ex < n_experts; ex += blockDim.x) {
      int32_t add = 0;
      for (int w = 0; w < kPlanWarps; ++w) add += warp_counts[w * n_experts + ex];
      cursor[ex] += add;
    }
    __syncthreads();
  }
}

// ---- row kernels: one warp per token or pair, lanes stride over the row in packs of V ----

template <class T, int V>
__global__ void permute_forward_kernel(T* permuted, const T* x, const int32_t* dest, int64_t pairs,
                                       int64_t m_max, int64_t k, int64_t d) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  const int64_t packs = d / V;
  for (int64_t p = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32; p < pairs; p += warps) {
    const int32_t r = dest[p];
    if (r < 0 || r >= m_max) continue;
    const Pack<T, V>* src = reinterpret_cast<const Pack<T, V>*>(x + (p / k) * d);
    Pack<T, V>* dst = reinterpret_cast<Pack<T, V>*>(permuted + int64_t(r) * d);
    for (int64_t i = lane; i < packs; i += 32) dst[i] = src[i];
  }
}

template <class T, int V>
__global__ void permute_backward_kernel(T* dx, const T* dpermuted, const int32_t* dest, int64_t n,
                                        int64_t m_max, int64_t k, int64_t d) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  const int64_t packs = d / V;
  for (int64_t row = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32; row < n; row += warps) {
    for (int64_t i = lane; i < packs; i += 32) {
      float acc[V];
#pragma unroll
      for (int v = 0; v < V; ++v) acc[v] = 0.0f;
      for (int64_t j = 0; j < k; ++j) {
        const int32_t r = dest[row * k + j];
        if (r < 0 || r >= m_max) continue;
        const Pack<T, V> src = reinterpret_cast<const Pack<T, V>*>(dpermuted + int64_t(r) * d)[i];
#pragma unroll
        for (int v = 0; v < V; ++v) acc[v] += load_f32(src.v[v]);
      }
      Pack<T, V> out;
#pragma unroll
      for (int v = 0; v < V; ++v) out.v[v] = store_as<T>(acc[v]);
      reinterpret_cast<Pack<T, V>*>(dx + row * d)[i] = out;
    }
  }
}

template <class T, int V>
__global__ void unpermute_forward_kernel(T* out, const T* y, const float* weights, const int32_t* dest,
                                         int64_t n, int64_t m_max, int64_t k, int64_t d) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  const int64_t packs = d / V;
  for (int64_t row = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32; row < n; row += warps) {
    for (int64_t i = lane; i < packs; i += 32) {
      float acc[V];
#pragma unroll
      for (int v = 0; v < V; ++v) acc[v] = 0.0f;
      for (int64_t j = 0; j < k; ++j) {
        const int32_t r = dest[row * k + j];
        if (r < 0 || r >= m_max) continue;
        const float w = weights[row * k + j];
        const Pack<T, V> src = reinterpret_cast<const Pack<T, V>*>(y + int64_t(r) * d)[i];
        // Product and sum rounded separately (no FMA), as the CPU loop computes them.
#pragma unroll
        for (int v = 0; v < V; ++v) acc[v] = __fadd_rn(acc[v], __fmul_rn(w, load_f32(src.v[v])));
      }
      Pack<T, V> o;
#pragma unroll
      for (int v = 0; v < V; ++v) o.v[v] = store_as<T>(acc[v]);
      reinterpret_cast<Pack<T, V>*>(out + row * d)[i] = o;
    }
  }
}

template <class T, int V>
__global__ void unpermute_backward_kernel(T* dy, float* dweights, const T* dout, const T* y,
                                          const float* weights, const int32_t* dest, int64_t pairs,
                                          int64_t m_max, int64_t k, int64_t d) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  const int64_t packs = d / V;
  for (int64_t p = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32; p < pairs; p += warps) {
    const int32_t r = dest[p];  // the same for the whole warp
    if (r < 0 || r >= m_max) {
      if (dweights != nullptr && lane == 0) dweights[p] = 0.0f;
      continue;
    }
    const float w = weights[p];
    const Pack<T, V>* g = reinterpret_cast<const Pack<T, V>*>(dout + (p / k) * d);
    float dot = 0.0f;
    for (int64_t i = lane; i < packs; i += 32) {
      const Pack<T, V> gv = g[i];
      if (dy != nullptr) {
        Pack<T, V> o;
#pragma unroll
        for (int v = 0; v < V; ++v) o.v[v] = store_as<T>(__fmul_rn(w, load_f32(gv.v[v])));
        reinterpret_cast<Pack<T, V>*>(dy + int64_t(r) * d)[i] = o;
      }
      if (dweights != nullptr) {
        const Pack<T, V> yv = reinterpret_cast<const Pack<T, V>*>(y + int64_t(r) * d)[i];
#pragma unroll
        for (int v = 0; v < V; ++v) dot += load_f32(gv.v[v]) * load_f32(yv.v[v]);
      }
    }
    if (dweights != nullptr) {
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
      if (lane == 0) dweights[p] = dot;
    }
  }
}

// Launches a row kernel over `items` warps' worth of work.
unsigned row_blocks(int64_t items) {
  return static_cast<unsigned>(blocks_for(items, kRowThreads / 32));
}

}  // namespace

void moe_topk_forward_cuda(float* values, int32_t* indices, const float* logits, int64_t n, int64_t n_experts,
                           int64_t k, const RunContext& ctx) {
  CHECK_GE(n, 0) << "moe top-k (cuda): token count";
  CHECK(k >= 1 && k <= n_experts) << "moe top-k (cuda): need 1 <= k <= E, got k=" << k << " E=" << n_experts;
  CHECK_LE(n_experts, static_cast<int64_t>(INT32_MAX)) << "moe top-k (cuda): expert ids are int32";
  if (n == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  topk_forward_kernel<<<static_cast<unsigned>(blocks_for(n, 128)), 128, 0, stream>>>(values, indices, logits,
                                                                                     n, n_experts, k);
  CUDA_CHECK(cudaGetLastError());
}

void moe_topk_backward_cuda(float* dlogits, const float* dvalues, const int32_t* indices, int64_t n,
                            int64_t n_experts, int64_t k, const RunContext& ctx) {
  CHECK_GE(n, 0) << "moe top-k backward (cuda): token count";
  CHECK(k >= 1 && k <= n_experts) << "moe top-k backward (cuda): need 1 <= k <= E, got k=" << k
                                  << " E=" << n_experts;
  if (n == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  topk_backward_kernel<<<static_cast<unsigned>(blocks_for(n * n_experts, 256)), 256, 0, stream>>>(
      dlogits, dvalues, indices, n, n_experts, k);
  CUDA_CHECK(cudaGetLastError());
}

void moe_routing_softmax_forward_cuda(float* weights, const float* values, int64_t n, int64_t k,
                                      const RunContext& ctx) {
  CHECK(n >= 0 && k >= 1) << "moe routing softmax (cuda) sizes N=" << n << " k=" << k;
  if (n == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  routing_softmax_forward_kernel<<<static_cast<unsigned>(blocks_for(n, 128)), 128, 0, stream>>>(weights,
                                                                                                values, n, k);
  CUDA_CHECK(cudaGetLastError());
}

void moe_routing_softmax_backward_cuda(float* dvalues, const float* dweights, const float* weights, int64_t n,
                                       int64_t k, const RunContext& ctx) {
  CHECK(n >= 0 && k >= 1) << "moe routing softmax backward (cuda) sizes N=" << n << " k=" << k;
  if (n == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  routing_softmax_backward_kernel<<<static_cast<unsigned>(blocks_for(n, 128)), 128, 0, stream>>>(
      dvalues, dweights, weights, n, k);
  CUDA_CHECK(cudaGetLastError());
}

size_t moe_permute_plan_workspace_bytes(int64_t n, int64_t n_experts, int64_t k) {
  const int64_t blocks = (n * k + kPlanChunk - 1) / kPlanChunk;
  return static_cast<size_t>(blocks * n_experts) * sizeof(int32_t);
}

void moe_permute_plan_cuda(int64_t* expert_counts, int64_t* expert_offsets, int32_t* dest,
                           const int32_t* indices, const uint8_t* token_mask, int64_t n, int64_t n_experts,
                           int64_t k, void* workspace, size_t workspace_bytes, const RunContext& ctx) {
  CHECK(n >= 0 && n_experts >= 1 && k >= 1)
      << "moe permute plan (cuda) sizes N=" << n << " E=" << n_experts << " k=" << k;
  CHECK_LE(n * k, static_cast<int64_t>(INT32_MAX)) << "moe permute plan (cuda): destination rows are int32";
  CHECK_LE(n_experts, kMaxPlanExperts) << "moe permute plan (cuda): shared-memory counters limit E";
  CHECK_GE(workspace_bytes, moe_permute_plan_workspace_bytes(n, n_experts, k))
      << "moe permute plan (cuda): workspace too small";
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  const int64_t pairs = n * k;
  const int64_t blocks = (pairs + kPlanChunk - 1) / kPlanChunk;
  int32_t* block_counts = static_cast<int32_t*>(workspace);
  if (blocks > 0) {
    plan_count_kernel<<<static_cast<unsigned>(blocks), kPlanThreads, n_experts * sizeof(int32_t), stream>>>(
        block_counts, indices, token_mask, pairs, k, n_experts);
    CUDA_CHECK(cudaGetLastError());
  }
  const int scan_threads = n_experts < 1024 ? static_cast<int>((n_experts + 31) / 32 * 32) : 1024;
  plan_scan_kernel<<<1, scan_threads, 0, stream>>>(expert_counts, expert_offsets, block_counts, blocks,
                                                   n_experts);
  CUDA_CHECK(cudaGetLastError());
  if (blocks > 0) {
    const size_t shared = static_cast<size_t>((1 + kPlanWarps) * n_experts) * sizeof(int32_t);
    plan_rank_kernel<<<static_cast<unsigned>(blocks), kPlanThreads, shared, stream>>>(
        dest, block_counts, indices, token_mask, pairs, k, n_experts);
    CUDA_CHECK(cudaGetLastError());
  }
}

template <class T>
void moe_permute_forward_cuda(T* permuted, const T* x, const int32_t* dest, int64_t n, int64_t m_max,
                              int64_t k, int64_t d, const RunContext& ctx) {
  check_row_sizes(n, m_max, k, d);
  if (n == 0 || d == 0 || m_max == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  const unsigned blocks = row_blocks(n * k);
  if (can_vectorize<T>(d, permuted, x)) {
    permute_forward_kernel<T, 16 / sizeof(T)>
        <<<blocks, kRowThreads, 0, stream>>>(permuted, x, dest, n * k, m_max, k, d);
  } else {
    permute_forward_kernel<T, 1><<<blocks, kRowThreads, 0, stream>>>(permuted, x, dest, n * k, m_max, k, d);
  }
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void moe_permute_backward_cuda(T* dx, const T* dpermuted, const int32_t* dest, int64_t n, int64_t m_max,
                               int64_t k, int64_t d, const RunContext& ctx) {
  check_row_sizes(n, m_max, k, d);
  if (n == 0 || d == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  const unsigned blocks = row_blocks(n);
  if (can_vectorize<T>(d, dx, dpermuted)) {
    permute_backward_kernel<T, 16 / sizeof(T)>
        <<<blocks, kRowThreads, 0, stream>>>(dx, dpermuted, dest, n, m_max, k, d);
  } else {
    permute_backward_kernel<T, 1><<<blocks, kRowThreads, 0, stream>>>(dx, dpermuted, dest, n, m_max, k, d);
  }
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void moe_unpermute_forward_cuda(T* out, const T* y, const float* weights, const int32_t* dest, int64_t n,
                                int64_t m_max, int64_t k, int64_t d, const RunContext& ctx) {
  check_row_sizes(n, m_max, k, d);
  if (n == 0 || d == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  const unsigned blocks = row_blocks(n);
  if (can_vectorize<T>(d, out, y)) {
    unpermute_forward_kernel<T, 16 / sizeof(T)>
        <<<blocks, kRowThreads, 0, stream>>>(out, y, weights, dest, n, m_max, k, d);
  } else {
    unpermute_forward_kernel<T, 1><<<blocks, kRowThreads, 0, stream>>>(out, y, weights, dest, n, m_max, k, d);
  }
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void moe_unpermute_backward_cuda(T* dy, float* dweights, const T* dout, const T* y, const float* weights,
                                 const int32_t* dest, int64_t n, int64_t m_max, int64_t k, int64_t d,
                                 const RunContext& ctx) {
  check_row_sizes(n, m_max, k, d);
  if (n == 0 || (dy == nullptr && dweights == nullptr)) return;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  const unsigned blocks = row_blocks(n * k);
  if (can_vectorize<T>(d, dy, dout, y)) {
    unpermute_backward_kernel<T, 16 / sizeof(T)>
        <<<blocks, kRowThreads, 0, stream>>>(dy, dweights, dout, y, weights, dest, n * k, m_max, k, d);
  } else {
    unpermute_backward_kernel<T, 1>
        <<<blocks, kRowThreads, 0, stream>>>(dy, dweights, dout, y, weights, dest, n * k, m_max, k, d);
  }
  CUDA_CHECK(cudaGetLastError());
}

#define MOEASR_INSTANTIATE_MOE_ROWS(T)                                                                       \
  template void moe_permute_forward_cuda<T>(T*, const T*, const int32_t*, int64_t, int64_t, int64_t,         \
                                            int64_t, const RunContext&);                                     \
  template void moe_permute_backward_cuda<T>(T*, const T*, const int32_t*, int64_t, int64_t, int64_t,        \
                                             int64_t, const RunContext&);                                    \
  template void moe_unpermute_forward_cuda<T>(T*, const T*, const float*, const int32_t*, int64_t, int64_t,  \
                                              int64_t, int64_t, const RunContext&);                          \
  template void moe_unpermute_backward_cuda<T>(T*, float*, const T*, const T*, const float*, const int32_t*, \
                                               int64_t, int64_t, int64_t, int64_t, const RunContext&);

MOEASR_INSTANTIATE_MOE_ROWS(float)
MOEASR_INSTANTIATE_MOE_ROWS(__nv_bfloat16)
#undef MOEASR_INSTANTIATE_MOE_ROWS

}  // namespace moeasr
