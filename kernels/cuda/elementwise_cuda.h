// kernels/cuda/elementwise_cuda.h — the CUDA twin of kernels/cpu/elementwise.h: add, scale, the
// residual add x + alpha * y, the in-place accumulate, ReLU, SiLU (Swish), sigmoid and GLU over the last
// dimension, forward and backward; plus the fp32 <-> bf16 casts of the mixed-precision path.
// Dims: n elements (all dims flattened); GLU: N rows, C output columns (input has 2C).
// Dtypes: T is float or __nv_bfloat16 (storage); every element is computed in fp32 and rounded once
// to T (bf16: round to nearest even, exactly as core/dtype.h's float_to_bf16_bits). Scalars (alpha)
// are fp32 for both T.
// All pointers are DEVICE pointers; each op is one grid-stride kernel on ctx.cuda_stream (null = the
// default stream), no host synchronisation, nothing launched when the size is 0.
// Gradient convention as on the CPU: activation grads are assigned (=); add_scaled_inplace_cuda
// accumulates (+=) where two gradient paths merge. An output may alias an input of the same shape
// (each element is read before it is written, by the same thread); GLU's output and input must not.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

// out = a + b
template <class T>
void add_forward_cuda(T* out,      // [n]
                      const T* a,  // [n]
                      const T* b,  // [n]
                      int64_t n, const RunContext& ctx);

// da = dout, db = dout
template <class T>
void add_backward_cuda(T* da,          // [n] assigned; null to skip
                       T* db,          // [n] assigned; null to skip
                       const T* dout,  // [n]
                       int64_t n, const RunContext& ctx);

// out = alpha * x
template <class T>
void scale_forward_cuda(T* out,      // [n]
                        const T* x,  // [n]
                        float alpha, int64_t n, const RunContext& ctx);

// dx = alpha * dout
template <class T>
void scale_backward_cuda(T* dx,          // [n] assigned
                         const T* dout,  // [n]
                         float alpha, int64_t n, const RunContext& ctx);

// out = x + alpha * y
template <class T>
void residual_add_forward_cuda(T* out,      // [n]
                               const T* x,  // [n]
                               const T* y,  // [n]
                               float alpha, int64_t n, const RunContext& ctx);

// dx = dout, dy = alpha * dout
template <class T>
void residual_add_backward_cuda(T* dx,          // [n] assigned; null to skip
                                T* dy,          // [n] assigned; null to skip
                                const T* dout,  // [n]
                                float alpha, int64_t n, const RunContext& ctx);

// acc += alpha * x (merges two gradient paths into one buffer)
template <class T>
void add_scaled_inplace_cuda(T* acc,      // [n] accumulated
                             const T* x,  // [n]
                             float alpha, int64_t n, const RunContext& ctx);

// out = max(x, 0)
template <class T>
void relu_forward_cuda(T* out,      // [n]
                       const T* x,  // [n]
                       int64_t n, const RunContext& ctx);

// dx = dout where x > 0, else 0
template <class T>
void relu_backward_cuda(T* dx,          // [n] assigned
                        const T* dout,  // [n]
                        const T* x,     // [n] forward input
                        int64_t n, const RunContext& ctx);

// out = x * sigmoid(x)
template <class T>
void silu_forward_cuda(T* out,      // [n]
                       const T* x,  // [n]
                       int64_t n, const RunContext& ctx);

// dx = dout * s * (1 + x * (1 - s)), s = sigmoid(x)
template <class T>
void silu_backward_cuda(T* dx,          // [n] assigned
                        const T* dout,  // [n]
                        const T* x,     // [n] forward input
                        int64_t n, const RunContext& ctx);

// out = 1 / (1 + exp(-x)), without overflow for large |x|
template <class T>
void sigmoid_forward_cuda(T* out,      // [n]
                          const T* x,  // [n]
                          int64_t n, const RunContext& ctx);

// dx = dout * out * (1 - out); takes the forward OUTPUT
template <class T>
void sigmoid_backward_cuda(T* dx,          // [n] assigned
                           const T* dout,  // [n]
                           const T* out,   // [n] forward output
                           int64_t n, const RunContext& ctx);

// out[r, j] = x[r, j] * sigmoid(x[r, C + j]) for j < C
template <class T>
void glu_forward_cuda(T* out,      // [N, C]
                      const T* x,  // [N, 2C]
                      int64_t n, int64_t c, const RunContext& ctx);

// dx[r, j] = dout * sigmoid(b), dx[r, C + j] = dout * a * s * (1 - s), a = x[r, j], b = x[r, C + j]
template <class T>
void glu_backward_cuda(T* dx,          // [N, 2C] assigned
                       const T* dout,  // [N, C]
                       const T* x,     // [N, 2C] forward input
                       int64_t n, int64_t c, const RunContext& ctx);

// out = bf16(x), round to nearest even; NaN stays a quiet NaN with its sign (core/dtype.h bit for bit).
void cast_f32_to_bf16_cuda(__nv_bfloat16* out,  // [n]
                           const float* x,      // [n]
                           int64_t n, const RunContext& ctx);

// out = float(x) (exact).
void cast_bf16_to_f32_cuda(float* out,              // [n]
                           const __nv_bfloat16* x,  // [n]
                           int64_t n, const RunContext& ctx);

}  // namespace moeasr
