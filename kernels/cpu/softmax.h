// kernels/cpu/softmax.h — softmax and log_softmax over the last dimension (as torch.softmax /
// torch.log_softmax with dim=-1), with an optional keep-mask in WeNet's attention style:
// masked_fill(-inf) -> softmax -> masked_fill(0) (wenet/models/transformer/attention.py).
// Dims: R rows, C columns; attention: B batch, H heads, Tq queries, Tk keys.
//
// Mask: uint8, 1 = keep, 0 = masked; null = every entry kept.
//   - softmax: a masked entry acts as -inf in the forward and its output is exactly 0.
//   - log_softmax: a masked entry's output is defined as 0 (not -inf) and its gradient is 0.
//   - A fully masked row gives an all-zero output (both ops) and a zero gradient, where PyTorch's
//     masked softmax would give NaN before WeNet's second masked_fill.
// Numerics: the row max of the kept entries is subtracted before exp; the exp sum is accumulated in
// double in a fixed order, so results do not depend on the thread count. Rows run in parallel.
// Gradient convention: dx is assigned. softmax_backward needs no mask: y = 0 at masked entries makes
// their dx exactly 0.
#pragma once

#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

template <class T>
void softmax_forward(T* y,                 // [R, C]
                     const T* x,           // [R, C]
                     const uint8_t* mask,  // [R, C] 1 = keep, or null
                     int64_t rows, int64_t cols, const RunContext& ctx);

// dx = y * (dy - sum_j dy_j * y_j), per row.
template <class T>
void softmax_backward(T* dx,        // [R, C] assigned
                      const T* dy,  // [R, C]
                      const T* y,   // [R, C] softmax_forward's output
                      int64_t rows, int64_t cols, const RunContext& ctx);

template <class T>
void log_softmax_forward(T* y,                 // [R, C]
                         const T* x,           // [R, C]
                         const uint8_t* mask,  // [R, C] 1 = keep, or null
                         int64_t rows, int64_t cols, const RunContext& ctx);

// dx = dy - exp(y) * sum_j dy_j over kept entries; dx = 0 at masked entries.
template <class T>
void log_softmax_backward(T* dx,                // [R, C] assigned
                          const T* dy,          // [R, C]
                          const T* y,           // [R, C] log_softmax_forward's output
                          const uint8_t* mask,  // [R, C] the forward's mask, or null
                          int64_t rows, int64_t cols, const RunContext& ctx);

// Attention softmax: the [B, Tq, Tk] mask is broadcast over the H heads without copying; score row
// (b, h, q) uses mask row (b, q). Otherwise identical to softmax_forward with R = B*H*Tq, C = Tk.
template <class T>
void attention_softmax_forward(T* probs,             // [B, H, Tq, Tk]
                               const T* scores,      // [B, H, Tq, Tk]
                               const uint8_t* mask,  // [B, Tq, Tk] 1 = attend, or null
                               int64_t batch, int64_t heads, int64_t queries, int64_t keys,
                               const RunContext& ctx);

// softmax_backward over R = B*H*Tq rows (the mask is not needed, see above).
template <class T>
void attention_softmax_backward(T* dscores,       // [B, H, Tq, Tk] assigned
                                const T* dprobs,  // [B, H, Tq, Tk]
                                const T* probs,   // [B, H, Tq, Tk] attention_softmax_forward's output
                                int64_t batch, int64_t heads, int64_t queries, int64_t keys,
                                const RunContext& ctx);

}  // namespace moeasr
