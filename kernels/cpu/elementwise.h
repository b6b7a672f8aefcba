// kernels/cpu/elementwise.h — elementwise ops of the Conformer: add, scale, the residual add
// x + alpha * y (WeNet's `x + 0.5 * ffn(x)`), an in-place accumulate for merging gradient paths, the
// activations ReLU, SiLU (Swish) and sigmoid as torch.nn.ReLU / SiLU / Sigmoid, and GLU over the last
// dimension as torch.nn.functional.glu(x, dim=-1).
// Dims: n elements (all dims flattened); GLU: N rows, C output columns (input has 2C).
// Gradient convention: activation grads are assigned (=); add_scaled_inplace accumulates (+=) where
// two gradient paths merge. An output may alias an input of the same shape (each element is read
// before it is written, by the same iteration); GLU's output and input must not alias.
#pragma once

#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

// out = a + b
template <class T>
void add_forward(T* out,      // [n]
                 const T* a,  // [n]
                 const T* b,  // [n]
                 int64_t n, const RunContext& ctx);

// da = dout, db = dout
template <class T>
void add_backward(T* da,          // [n] assigned; null to skip
                  T* db,          // [n] assigned; null to skip
                  const T* dout,  // [n]
                  int64_t n, const RunContext& ctx);

// out = alpha * x
template <class T>
void scale_forward(T* out,      // [n]
                   const T* x,  // [n]
                   T alpha, int64_t n, const RunContext& ctx);

// dx = alpha * dout
template <class T>
void scale_backward(T* dx,          // [n] assigned
                    const T* dout,  // [n]
                    T alpha, int64_t n, const RunContext& ctx);

// out = x + alpha * y
template <class T>
void residual_add_forward(T* out,      // [n]
                          const T* x,  // [n]
                          const T* y,  // [n]
                          T alpha, int64_t n, const RunContext& ctx);

// dx = dout, dy = alpha * dout
template <class T>
void residual_add_backward(T* dx,          // [n] assigned; null to skip
                           T* dy,          // [n] assigned; null to skip
                           const T* dout,  // [n]
                           T alpha, int64_t n, const RunContext& ctx);

// acc += alpha * x (merges two gradient paths into one buffer)
template <class T>
void add_scaled_inplace(T* acc,      // [n] accumulated
                        const T* x,  // [n]
                        T alpha, int64_t n, const RunContext& ctx);

// out = max(x, 0)
template <class T>
void relu_forward(T* out,      // [n]
                  const T* x,  // [n]
                  int64_t n, const RunContext& ctx);

// dx = dout where x > 0, else 0 (PyTorch's choice at x == 0)
template <class T>
void relu_backward(T* dx,          // [n] assigned
                   const T* dout,  // [n]
                   const T* x,     // [n] forward input
                   int64_t n, const RunContext& ctx);

// out = x * sigmoid(x)
template <class T>
void silu_forward(T* out,      // [n]
                  const T* x,  // [n]
                  int64_t n, const RunContext& ctx);

// dx = dout * s * (1 + x * (1 - s)), s = sigmoid(x)
template <class T>
void silu_backward(T* dx,          // [n] assigned
                   const T* dout,  // [n]
                   const T* x,     // [n] forward input
                   int64_t n, const RunContext& ctx);

// out = 1 / (1 + exp(-x)), evaluated without overflow for large |x|
template <class T>
void sigmoid_forward(T* out,      // [n]
                     const T* x,  // [n]
                     int64_t n, const RunContext& ctx);

// dx = dout * out * (1 - out); takes the forward OUTPUT, as torch's sigmoid_backward does
template <class T>
void sigmoid_backward(T* dx,          // [n] assigned
                      const T* dout,  // [n]
                      const T* out,   // [n] forward output
                      int64_t n, const RunContext& ctx);

// out[r, j] = x[r, j] * sigmoid(x[r, C + j]) for j < C
template <class T>
void glu_forward(T* out,      // [N, C]
                 const T* x,  // [N, 2C]
                 int64_t n, int64_t c, const RunContext& ctx);

// dx[r, j] = dout * sigmoid(b), dx[r, C + j] = dout * a * s * (1 - s), with a = x[r, j], b = x[r, C + j]
template <class T>
void glu_backward(T* dx,          // [N, 2C] assigned
                  const T* dout,  // [N, C]
                  const T* x,     // [N, 2C] forward input
                  int64_t n, int64_t c, const RunContext& ctx);

}  // namespace moeasr
