// kernels/cuda/moe_dispatch_cuda.h — the CUDA twin of kernels/cpu/moe_dispatch.h: top-k routing,
// routing softmax, the permute plan, permute and weighted un-permute of WeNet's MoEFFNLayer, forward
// and backward, on device pointers and ctx.cuda_stream. Results equal the CPU ops: the same top-k tie
// rule (lower expert index wins), the same permuted-row layout (expert-major, inside one expert by
// (token, slot) ascending), dest = -1 for unrouted pairs, sums over slots in slot order.
//
// Dtypes: router logits, top-k values, routing weights and their gradients are fp32; the row data
// (x, permuted rows, expert outputs and their gradients) is T in {float, __nv_bfloat16}, with fp32
// arithmetic inside (sums and dot products accumulate in fp32, one rounding to T at the store).
//
// No host synchronisation anywhere. The number of routed rows M stays on the device (offsets[E] of
// the plan); the ops that take a row count take `m_max`, a host-side upper bound of M (the capacity
// of the permuted buffers, N*k when every token may be routed). The kernels walk the (token, slot)
// pairs, so they never need M itself; m_max only guards the writes (a dest >= m_max is skipped).
//
// Differences from the CPU ops (which CHECK and abort): an expert id outside [0, E) of a routed token
// is not detected on the device; the plan treats such a pair as unrouted (dest -1), top-k backward
// ignores it. No atomics on floats; the plan uses integer shared-memory atomics for per-block counts
// (exact, order-independent). All results are deterministic.
#pragma once

#include <cuda_bf16.h>

#include <cstddef>
#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

// Top-k over the last dim (torch.topk(logits, k), sorted, ties to the lower expert index).
void moe_topk_forward_cuda(float* values,        // [N, k]
                           int32_t* indices,     // [N, k] expert ids in [0, E)
                           const float* logits,  // [N, E]
                           int64_t n, int64_t n_experts, int64_t k, const RunContext& ctx);

// dlogits = dvalues scattered into the selected positions, zero elsewhere (assigned).
void moe_topk_backward_cuda(float* dlogits,          // [N, E] assigned
                            const float* dvalues,    // [N, k]
                            const int32_t* indices,  // [N, k]
                            int64_t n, int64_t n_experts, int64_t k, const RunContext& ctx);

// weights = softmax over the k selected logits of each row (max-subtracted, fp32).
void moe_routing_softmax_forward_cuda(float* weights,       // [N, k]
                                      const float* values,  // [N, k]
                                      int64_t n, int64_t k, const RunContext& ctx);

// dvalues[n, j] = w[n, j] * (dweights[n, j] - sum_m w[n, m] * dweights[n, m])  (assigned)
void moe_routing_softmax_backward_cuda(float* dvalues,         // [N, k] assigned
                                       const float* dweights,  // [N, k]
                                       const float* weights,   // [N, k]
                                       int64_t n, int64_t k, const RunContext& ctx);

// Device bytes of scratch moe_permute_plan_cuda needs (per-block expert counts); may be 0.
size_t moe_permute_plan_workspace_bytes(int64_t n, int64_t n_experts, int64_t k);

// The routing plan of moe_permute_plan, on the device, without returning M (M = offsets[E] on the
// device). Three kernels: per-block expert counts over chunks of 2048 (token, slot) pairs, one block
// that sums them into counts/offsets and turns them into per-(block, expert) start rows, and a stable
// ranking pass (warp match + per-warp counts) that hands out rows in (token, slot) order.
// Limits: N*k <= INT32_MAX, 1 <= E <= 2048 (CHECKed). workspace: moe_permute_plan_workspace_bytes.
void moe_permute_plan_cuda(int64_t* expert_counts,     // [E]
                           int64_t* expert_offsets,    // [E + 1]; offsets[E] = M
                           int32_t* dest,              // [N, k] row in [0, M) or -1
                           const int32_t* indices,     // [N, k]
                           const uint8_t* token_mask,  // [N] 1 = routed, 0 = not; or null (all routed)
                           int64_t n, int64_t n_experts, int64_t k, void* workspace, size_t workspace_bytes,
                           const RunContext& ctx);

// permuted[dest[n, j]] = x[n] for every routed pair (rows of permuted that no pair names are untouched).
template <class T>
void moe_permute_forward_cuda(T* permuted,          // [M, D] (capacity m_max rows)
                              const T* x,           // [N, D]
                              const int32_t* dest,  // [N, k]
                              int64_t n, int64_t m_max, int64_t k, int64_t d, const RunContext& ctx);

// dx[n] = sum over j = 0..k-1 (in order) of dpermuted[dest[n, j]]; zero for unrouted tokens (assigned).
template <class T>
void moe_permute_backward_cuda(T* dx,                // [N, D] assigned
                               const T* dpermuted,   // [M, D]
                               const int32_t* dest,  // [N, k]
                               int64_t n, int64_t m_max, int64_t k, int64_t d, const RunContext& ctx);

// out[n] = sum over j = 0..k-1 (in order, skipping unrouted pairs) of w[n, j] * y[dest[n, j]] (assigned).
template <class T>
void moe_unpermute_forward_cuda(T* out,                // [N, D]
                                const T* y,            // [M, D] expert outputs, permuted order
                                const float* weights,  // [N, k]
                                const int32_t* dest,   // [N, k]
                                int64_t n, int64_t m_max, int64_t k, int64_t d, const RunContext& ctx);

// dy[dest[n, j]] = w[n, j] * dout[n] (all rows [0, M) assigned); dweights[n, j] = dot(dout[n],
// y[dest[n, j]]) in fp32, zero for unrouted pairs (assigned). Either output may be null.
template <class T>
void moe_unpermute_backward_cuda(T* dy,                 // [M, D] assigned; null to skip
                                 float* dweights,       // [N, k] assigned; null to skip
                                 const T* dout,         // [N, D]
                                 const T* y,            // [M, D]
                                 const float* weights,  // [N, k]
                                 const int32_t* dest,   // [N, k]
                                 int64_t n, int64_t m_max, int64_t k, int64_t d, const RunContext& ctx);

}  // namespace moeasr
