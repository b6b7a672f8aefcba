// kernels/cuda/softmax_cuda.h — the CUDA twin of kernels/cpu/softmax.h: softmax and log_softmax over
// the last dimension with an optional uint8 keep-mask (WeNet's masked_fill(-inf) -> softmax ->
// masked_fill(0)), and the attention softmax whose [B, Tq, Tk] mask is broadcast over the H heads.
// Dims: R rows, C columns; attention: B batch, H heads, Tq queries, Tk keys.
// Mask semantics exactly as the CPU op: 1 = keep, 0 = masked, null = all kept; a masked entry's output
// (and gradient) is exactly 0; a fully masked row (or C = 0) gives an all-zero output and gradient.
// Dtypes: T = float or __nv_bfloat16 storage; row max, exp, sums and outputs in fp32, one rounding to
// T at the store.
// Kernels: one thread block per row (32..256 threads by C), any C (a 5000-entry vocabulary row is
// strided over the block); block reductions have a fixed shape, so results are reproducible.
// All pointers are DEVICE pointers; launches on ctx.cuda_stream, no host synchronisation; nothing is
// launched when there are no rows. Gradient convention: dx is assigned.
#pragma once

#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

template <class T>
void softmax_forward_cuda(T* y,                 // [R, C]
                          const T* x,           // [R, C]
                          const uint8_t* mask,  // [R, C] 1 = keep, or null
                          int64_t rows, int64_t cols, const RunContext& ctx);

// dx = y * (dy - sum_j dy_j * y_j), per row.
template <class T>
void softmax_backward_cuda(T* dx,        // [R, C] assigned
                           const T* dy,  // [R, C]
                           const T* y,   // [R, C] softmax_forward_cuda's output
                           int64_t rows, int64_t cols, const RunContext& ctx);

template <class T>
void log_softmax_forward_cuda(T* y,                 // [R, C]
                              const T* x,           // [R, C]
                              const uint8_t* mask,  // [R, C] 1 = keep, or null
                              int64_t rows, int64_t cols, const RunContext& ctx);

// dx = dy - exp(y) * sum_j dy_j over kept entries; dx = 0 at masked entries.
template <class T>
void log_softmax_backward_cuda(T* dx,                // [R, C] assigned
                               const T* dy,          // [R, C]
                               const T* y,           // [R, C] log_softmax_forward_cuda's output
                               const uint8_t* mask,  // [R, C] the forward's mask, or null
                               int64_t rows, int64_t cols, const RunContext& ctx);

// Score row (b, h, q) uses mask row (b, q); otherwise softmax_forward_cuda with R = B*H*Tq, C = Tk.
template <class T>
void attention_softmax_forward_cuda(T* probs,             // [B, H, Tq, Tk]
                                    const T* scores,      // [B, H, Tq, Tk]
                                    const uint8_t* mask,  // [B, Tq, Tk] 1 = attend, or null
                                    int64_t batch, int64_t heads, int64_t queries, int64_t keys,
                                    const RunContext& ctx);

// softmax_backward_cuda over R = B*H*Tq rows (no mask needed: probs = 0 at masked entries).
template <class T>
void attention_softmax_backward_cuda(
    T* dscores,       // [B, H, Tq, Tk] assigned
    const T* dprobs,  // [B, H, Tq, Tk]
    const T* probs,   // [B, H, Tq, Tk] attention_softmax_forward_cuda's output
    int64_t batch, int64_t heads, int64_t queries, int64_t keys, const RunContext& ctx);

}  // namespace moeasr
