// kernels/cpu/dropout.h — inverted dropout as torch.nn.Dropout in training mode, with the keep mask
// drawn from a counter-based Philox stream (core/philox.h) instead of a stateful generator.
// Dims: N elements (all dims flattened; the element's flat index is its Philox counter).
//
// The rule, identical on every backend and for any parallel split:
//   keep element i  iff  philox_uniform(stream, i) >= p      (compared in double; u has 24 bits)
//   y[i] = kept ? x[i] * (1 / (1 - p)) : 0                    (scale computed in double, cast to T)
// p must lie in [0, 1); p = 0 keeps everything (y = x exactly). p is a double for both float and
// double kernels so that the two draw the same mask.
//
// Backward recomputes the mask from the stream (nothing is saved): pass the same stream and p as the
// forward. dropout_keep_mask materialises the mask (tests, debugging, CUDA comparisons).
// Gradient convention: dx is assigned. y may alias x, dx may alias dy.
#pragma once

#include <cstdint>

#include "core/philox.h"
#include "core/run_context.h"

namespace moeasr {

template <class T>
void dropout_forward(T* y,        // [N]
                     const T* x,  // [N]
                     const PhiloxStream& stream, double p, int64_t n, const RunContext& ctx);

// dx[i] = kept ? dy[i] / (1 - p) : 0
template <class T>
void dropout_backward(T* dx,        // [N] assigned
                      const T* dy,  // [N]
                      const PhiloxStream& stream, double p, int64_t n, const RunContext& ctx);

// mask[i] = 1 if element i is kept, else 0.
void dropout_keep_mask(uint8_t* mask,  // [N]
                       const PhiloxStream& stream, double p, int64_t n, const RunContext& ctx);

}  // namespace moeasr
