// kernels/cuda/layout_cuda.h — the CUDA twin of kernels/cpu/layout.h: filling and copying buffers, the
// swap of two middle axes (WeNet's `transpose(1, 2).contiguous()`), the attention head split with an
// optional per-head bias (`q + pos_bias_u`), the padded / cropped time rows of the Conformer convolution
// module with pad-frame zeroing (`masked_fill(~mask, 0)`), the global CMVN and the scaled input plus
// positional-encoding table (`x * xscale + pe[:, offset:offset + T]`). Each op equals its CPU namesake
// (same argument order, same index formulas); see layout.h for the math.
// Dims as in layout.h: A/I/J/K the 4-D transpose axes, B batch, T time, H heads, dk head size, C
// channels, R rows, F features, D model dimension.
//
// Dtypes: T is float or __nv_bfloat16 (storage). Pure data movement (fill, copy, transpose, the head
// split without bias, the masked row ops) moves the bits unchanged. Ops with arithmetic load to fp32,
// compute in fp32 and round once to T (core/dtype.h's round to nearest even). Parameters, buffers and
// parameter grads are fp32 for both T, as in norm_cuda.h / linear_cuda.h:
//   split_heads bias      const float*  (the fp32 master of pos_bias_u / pos_bias_v; no bf16 copy needed)
//   split_heads dbias     float*        (fp32, accumulated +=, as linear_cuda's dbias)
//   cmvn mean / istd      const float*  (the global CMVN buffers)
//   scale_add_table table const float*  (the positional-encoding buffer)
//   scale (scale_add_table) float       (as elementwise_cuda.h's alpha)
// fill_constant's value is a T: it is the element written, bit for bit.
// All pointers are DEVICE pointers; every op launches on ctx.cuda_stream (null = the default stream),
// with no host synchronisation; nothing is launched when the output is empty. Sizes are CHECKed on the
// host as on the CPU.
//
// Gradient convention (as layout.h): activation grads are assigned (=), split_heads' dbias accumulates
// (+=). Outputs must not alias inputs except where an op says so; the aliasing layout.h allows holds here
// too (each element is read and written by the same thread): masked_crop_rows_* with lpad == 0,
// cmvn_normalize_forward_cuda and scale_add_table_*_cuda with out == x / dx == dout.
// Determinism: no atomics. split_heads' dbias is a fixed-order column sum (one block per 32 columns;
// row lane y sums rows (b, t) = y, y + 16, ... in order, then the 16 lane sums are added in lane order),
// so the result is bitwise reproducible run to run (its rounding order differs from the CPU's plain
// (b, t) loop).
// Masks are uint8 with 1 = valid, 0 = padding; a masked element is written as 0 whatever the input
// holds (NaN included), as on the CPU.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

// out[i] = value. A value whose bits are all zero (+0) is a cudaMemsetAsync, anything else a kernel.
template <class T>
void fill_constant_cuda(T* out,  // [n]
                        T value, int64_t n, const RunContext& ctx);

// dst[i] = src[i]  (non-overlapping; cudaMemcpyAsync device to device)
template <class T>
void copy_elements_cuda(T* dst,        // [n]
                        const T* src,  // [n]
                        int64_t n, const RunContext& ctx);

// dst[a, j, i, k] = src[a, i, j, k]: swaps the two middle axes of a 4-D tensor.
template <class T>
void transpose_middle_forward_cuda(T* dst,        // [A, J, I, K]
                                   const T* src,  // [A, I, J, K]
                                   int64_t outer, int64_t rows_i, int64_t cols_j, int64_t inner,
                                   const RunContext& ctx);

// dsrc[a, i, j, k] = ddst[a, j, i, k]  (assigned)
template <class T>
void transpose_middle_backward_cuda(T* dsrc,        // [A, I, J, K]
                                    const T* ddst,  // [A, J, I, K]
                                    int64_t outer, int64_t rows_i, int64_t cols_j, int64_t inner,
                                    const RunContext& ctx);

// dst[b, h, t, j] = src[b, t, h * dk + j] (+ bias[h * dk + j] in fp32 when bias is not null).
// Requires H >= 1 (both directions), as on the CPU.
template <class T>
void split_heads_forward_cuda(T* dst,             // [B, H, T, dk]
                              const T* src,       // [B, T, H * dk]
                              const float* bias,  // [H * dk] fp32, or null
                              int64_t batch, int64_t steps, int64_t heads, int64_t d_k,
                              const RunContext& ctx);

// dsrc[b, t, h * dk + j] = dout[b, h, t, j] (assigned; null to skip);
// dbias[h * dk + j] += sum over (b, t) of dout[b, h, t, j] (fp32 sum, fixed order; null to skip).
template <class T>
void split_heads_backward_cuda(T* dsrc,        // [B, T, H * dk] or null
                               float* dbias,   // [H * dk] fp32, accumulated; or null
                               const T* dout,  // [B, H, T, dk]
                               int64_t batch, int64_t steps, int64_t heads, int64_t d_k,
                               const RunContext& ctx);

// dst[b, lpad + t] = mask[b, t] ? src[b, t] : 0 (mask null = all valid), dst[b, 0 .. lpad) = 0.
template <class T>
void masked_pad_rows_forward_cuda(T* dst,               // [B, lpad + T, C]
                                  const T* src,         // [B, T, C]
                                  const uint8_t* mask,  // [B, T] or null
                                  int64_t batch, int64_t time, int64_t lpad, int64_t channels,
                                  const RunContext& ctx);

// dsrc[b, t] = mask[b, t] ? ddst[b, lpad + t] : 0  (assigned)
template <class T>
void masked_pad_rows_backward_cuda(T* dsrc,              // [B, T, C]
                                   const T* ddst,        // [B, lpad + T, C]
                                   const uint8_t* mask,  // [B, T] or null
                                   int64_t batch, int64_t time, int64_t lpad, int64_t channels,
                                   const RunContext& ctx);

// dst[b, t] = mask[b, t] ? src[b, lpad + t] : 0. With lpad == 0 dst may alias src.
template <class T>
void masked_crop_rows_forward_cuda(T* dst,               // [B, T, C]
                                   const T* src,         // [B, lpad + T, C]
                                   const uint8_t* mask,  // [B, T] or null
                                   int64_t batch, int64_t time, int64_t lpad, int64_t channels,
                                   const RunContext& ctx);

// dsrc[b, lpad + t] = mask[b, t] ? ddst[b, t] : 0, dsrc[b, 0 .. lpad) = 0  (assigned). With lpad == 0
// dsrc may alias ddst.
template <class T>
void masked_crop_rows_backward_cuda(T* dsrc,              // [B, lpad + T, C]
                                    const T* ddst,        // [B, T, C]
                                    const uint8_t* mask,  // [B, T] or null
                                    int64_t batch, int64_t time, int64_t lpad, int64_t channels,
                                    const RunContext& ctx);

// Global CMVN: out[r, f] = (x[r, f] - mean[f]) * istd[f], in fp32. No backward. out may alias x.
template <class T>
void cmvn_normalize_forward_cuda(T* out,             // [R, F]
                                 const T* x,         // [R, F]
                                 const float* mean,  // [F] fp32
                                 const float* istd,  // [F] fp32
                                 int64_t rows, int64_t feat, const RunContext& ctx);

// out[b, t, j] = x[b, t, j] * scale + table[t, j], in fp32 (the caller passes table + offset * D).
// out may alias x.
template <class T>
void scale_add_table_forward_cuda(T* out,              // [B, T, D]
                                  const T* x,          // [B, T, D]
                                  const float* table,  // [T, D] fp32
                                  float scale, int64_t batch, int64_t time, int64_t d, const RunContext& ctx);

// dx = scale * dout  (assigned; the table is a constant buffer). dx may alias dout.
template <class T>
void scale_add_table_backward_cuda(T* dx,          // [B, T, D]
                                   const T* dout,  // [B, T, D]
                                   float scale, int64_t batch, int64_t time, int64_t d,
                                   const RunContext& ctx);

}  // namespace moeasr
