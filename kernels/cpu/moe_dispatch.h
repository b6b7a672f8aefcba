// kernels/cpu/moe_dispatch.h — token dispatch of WeNet's MoEFFNLayer (U2++ MoE), single-process path:
//   logits, sel = topk(gate(x), k)                       -> moe_topk_forward
//   w = softmax(logits, dim=1, dtype=float32)            -> moe_routing_softmax_forward
//   group the (token, slot) pairs by expert              -> moe_permute_plan + moe_permute_forward
//   [expert FFNs over contiguous rows: not here]
//   out[tok] += w[tok, slot] * expert(x[tok])            -> moe_unpermute_forward
// The steps stay separate so that the expert-parallel path can put an all-to-all between the permute
// and the experts (and its reverse before the un-permute).
//
// Dims: N tokens (B*L flattened), E experts, k experts per token (top-k), D model dim, M routed pairs
// (= sum of the per-expert counts; M = N*k when no token is masked).
// Layout of the permuted rows [M, D]: expert-major (expert 0's rows first), and inside one expert by
// (token, slot) ascending — a deterministic order independent of thread count.
// dest[n, j] is the permuted row of pair (token n, slot j), or -1 when the token is not routed.
// Gradient convention: every gradient here is an activation gradient and is assigned (=).
#pragma once

#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

// Top-k over the last dim of the router logits (torch.topk(logits, k), largest, sorted): values in
// descending order. Ties are broken by the lower expert index (torch leaves tie order unspecified).
// NaN logits are not supported (their selection order is unspecified).
template <class T>
void moe_topk_forward(T* values,         // [N, k]
                      int32_t* indices,  // [N, k] expert ids in [0, E)
                      const T* logits,   // [N, E]
                      int64_t n, int64_t n_experts, int64_t k, const RunContext& ctx);

// dlogits = dvalues scattered into the selected positions, zero elsewhere (assigned).
template <class T>
void moe_topk_backward(T* dlogits,              // [N, E] assigned
                       const T* dvalues,        // [N, k]
                       const int32_t* indices,  // [N, k]
                       int64_t n, int64_t n_experts, int64_t k, const RunContext& ctx);

// Routing weights: softmax over the k selected logits of each row (max-subtracted). Computed in T,
// i.e. fp32 for float (WeNet's softmax(dtype=float32)) and fp64 for double.
template <class T>
void moe_routing_softmax_forward(T* weights,       // [N, k]
                                 const T* values,  // [N, k] top-k logits
                                 int64_t n, int64_t k, const RunContext& ctx);

// dvalues[n, j] = w[n, j] * (dweights[n, j] - sum_m w[n, m] * dweights[n, m])  (assigned)
template <class T>
void moe_routing_softmax_backward(T* dvalues,         // [N, k] assigned
                                  const T* dweights,  // [N, k]
                                  const T* weights,   // [N, k] forward output
                                  int64_t n, int64_t k, const RunContext& ctx);

// The routing plan (integers only): per-expert counts, offsets (exclusive prefix sums, offsets[E] = M)
// and the destination row of every (token, slot) pair. Tokens with token_mask[n] == 0 are not routed
// (dest -1, their indices are not read); token_mask null routes every token. Returns M.
// Indices of routed tokens must lie in [0, E) (CHECK). A token may name the same expert twice (top-k
// never does); each pair then gets its own row.
int64_t moe_permute_plan(int64_t* expert_counts,     // [E]
                         int64_t* expert_offsets,    // [E + 1]
                         int32_t* dest,              // [N, k] row in [0, M) or -1
                         const int32_t* indices,     // [N, k]
                         const uint8_t* token_mask,  // [N] 1 = routed, 0 = not; or null (all routed)
                         int64_t n, int64_t n_experts, int64_t k, const RunContext& ctx);

// permuted[dest[n, j]] = x[n] for every routed pair.
template <class T>
void moe_permute_forward(T* permuted,          // [M, D]
                         const T* x,           // [N, D]
                         const int32_t* dest,  // [N, k]
                         int64_t n, int64_t m, int64_t k, int64_t d, const RunContext& ctx);

// dx[n] = sum over slots j = 0..k-1 (in that order) of dpermuted[dest[n, j]]; zero for unrouted tokens.
template <class T>
void moe_permute_backward(T* dx,                // [N, D] assigned
                          const T* dpermuted,   // [M, D]
                          const int32_t* dest,  // [N, k]
                          int64_t n, int64_t m, int64_t k, int64_t d, const RunContext& ctx);

// out[n] = sum over j = 0..k-1 (in that order, skipping unrouted pairs) of w[n, j] * y[dest[n, j]];
// zero for unrouted tokens. (WeNet adds the experts' contributions in expert order; for k = 2 the two
// orders give identical results, for k > 2 they may differ in the last bit.)
template <class T>
void moe_unpermute_forward(T* out,               // [N, D]
                           const T* y,           // [M, D] expert outputs, permuted order
                           const T* weights,     // [N, k] routing weights
                           const int32_t* dest,  // [N, k]
                           int64_t n, int64_t m, int64_t k, int64_t d, const RunContext& ctx);

// dy[dest[n, j]] = w[n, j] * dout[n] (every row of dy is some pair's, so all of dy is assigned);
// dweights[n, j] = dot(dout[n], y[dest[n, j]]), zero for unrouted pairs (assigned).
template <class T>
void moe_unpermute_backward(T* dy,                // [M, D] assigned; null to skip
                            T* dweights,          // [N, k] assigned; null to skip
                            const T* dout,        // [N, D]
                            const T* y,           // [M, D]
                            const T* weights,     // [N, k]
                            const int32_t* dest,  // [N, k]
                            int64_t n, int64_t m, int64_t k, int64_t d, const RunContext& ctx);

}  // namespace moeasr
