// kernels/cpu/layout.h — data-movement ops of the Conformer that used to be loops inside model/:
// filling and copying buffers, the swap of two middle axes (WeNet's `transpose(1, 2).contiguous()` on
// [B, T, H, dk] and on Conv2dSubsampling4's [B, C, T', F']), the head split of the attention
// projections with an optional per-head bias (WeNet's `q + pos_bias_u`), the padded / cropped time
// rows of the Conformer convolution module with pad-frame zeroing (WeNet's `masked_fill(~mask, 0)`),
// the global CMVN normalisation, and the scaled input plus positional-encoding table
// (`x * xscale + pe[:, offset:offset + T]`). Each has a CUDA twin in kernels/cuda/layout_cuda.h, so the
// layers above call ops only and the same layer code runs on both backends.
//
// Gradient convention (as elementwise.h): activation grads are assigned (=), parameter grads
// (split_heads' dbias) accumulate (+=). Outputs must not alias inputs unless an op says otherwise.
// Masks are uint8 with 1 = valid, 0 = padding (kernels/cpu/masks.h).
#pragma once

#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

// out[i] = value
template <class T>
void fill_constant(T* out,  // [n]
                   T value, int64_t n, const RunContext& ctx);

// dst[i] = src[i]  (non-overlapping)
template <class T>
void copy_elements(T* dst,        // [n]
                   const T* src,  // [n]
                   int64_t n, const RunContext& ctx);

// dst[a, j, i, k] = src[a, i, j, k]: swaps the two middle axes of a 4-D tensor, the innermost
// axis (k, contiguous) moved as a block. src is [A, I, J, K], dst [A, J, I, K].
template <class T>
void transpose_middle_forward(T* dst,        // [A, J, I, K]
                              const T* src,  // [A, I, J, K]
                              int64_t outer, int64_t rows_i, int64_t cols_j, int64_t inner,
                              const RunContext& ctx);

// dsrc[a, i, j, k] = ddst[a, j, i, k]  (assigned)
template <class T>
void transpose_middle_backward(T* dsrc,        // [A, I, J, K]
                               const T* ddst,  // [A, J, I, K]
                               int64_t outer, int64_t rows_i, int64_t cols_j, int64_t inner,
                               const RunContext& ctx);

// dst[b, h, t, j] = src[b, t, h * dk + j] (+ bias[h * dk + j] when bias is not null).
template <class T>
void split_heads_forward(T* dst,         // [B, H, T, dk]
                         const T* src,   // [B, T, H * dk]
                         const T* bias,  // [H * dk] or null
                         int64_t batch, int64_t steps, int64_t heads, int64_t d_k, const RunContext& ctx);

// dsrc[b, t, h * dk + j] = dout[b, h, t, j] (assigned; null to skip);
// dbias[h * dk + j] += sum over (b, t) of dout[b, h, t, j], summed in (b, t) order (null to skip).
template <class T>
void split_heads_backward(T* dsrc,        // [B, T, H * dk] or null
                          T* dbias,       // [H * dk] or null
                          const T* dout,  // [B, H, T, dk]
                          int64_t batch, int64_t steps, int64_t heads, int64_t d_k, const RunContext& ctx);

// Left-pads every sequence with `lpad` zero rows and zeroes its padding frames:
//   dst[b, lpad + t] = mask[b, t] ? src[b, t] : 0 (mask null = all valid), dst[b, 0 .. lpad) = 0.
template <class T>
void masked_pad_rows_forward(T* dst,               // [B, lpad + T, C]
                             const T* src,         // [B, T, C]
                             const uint8_t* mask,  // [B, T] or null
                             int64_t batch, int64_t time, int64_t lpad, int64_t channels,
                             const RunContext& ctx);

// dsrc[b, t] = mask[b, t] ? ddst[b, lpad + t] : 0  (assigned)
template <class T>
void masked_pad_rows_backward(T* dsrc,              // [B, T, C]
                              const T* ddst,        // [B, lpad + T, C]
                              const uint8_t* mask,  // [B, T] or null
                              int64_t batch, int64_t time, int64_t lpad, int64_t channels,
                              const RunContext& ctx);

// Drops the first `lpad` rows of every sequence and zeroes its padding frames:
//   dst[b, t] = mask[b, t] ? src[b, lpad + t] : 0. With lpad == 0 dst may alias src (WeNet's
//   masked_fill of pad frames, in place).
template <class T>
void masked_crop_rows_forward(T* dst,               // [B, T, C]
                              const T* src,         // [B, lpad + T, C]
                              const uint8_t* mask,  // [B, T] or null
                              int64_t batch, int64_t time, int64_t lpad, int64_t channels,
                              const RunContext& ctx);

// dsrc[b, lpad + t] = mask[b, t] ? ddst[b, t] : 0, dsrc[b, 0 .. lpad) = 0  (assigned). With
// lpad == 0 dsrc may alias ddst.
template <class T>
void masked_crop_rows_backward(T* dsrc,              // [B, lpad + T, C]
                               const T* ddst,        // [B, T, C]
                               const uint8_t* mask,  // [B, T] or null
                               int64_t batch, int64_t time, int64_t lpad, int64_t channels,
                               const RunContext& ctx);

// Global CMVN: out[r, f] = (x[r, f] - mean[f]) * istd[f]. Applied to input features: no backward.
// out may alias x.
template <class T>
void cmvn_normalize_forward(T* out,         // [R, F]
                            const T* x,     // [R, F]
                            const T* mean,  // [F]
                            const T* istd,  // [F]
                            int64_t rows, int64_t feat, const RunContext& ctx);

// out[b, t, j] = x[b, t, j] * scale + table[t, j]  (the caller passes table + offset * D). out may
// alias x.
template <class T>
void scale_add_table_forward(T* out,          // [B, T, D]
                             const T* x,      // [B, T, D]
                             const T* table,  // [T, D]
                             T scale, int64_t batch, int64_t time, int64_t d, const RunContext& ctx);

// dx = scale * dout  (assigned; the table is a constant buffer). dx may alias dout.
template <class T>
void scale_add_table_backward(T* dx,          // [B, T, D]
                              const T* dout,  // [B, T, D]
                              T scale, int64_t batch, int64_t time, int64_t d, const RunContext& ctx);

}  // namespace moeasr
