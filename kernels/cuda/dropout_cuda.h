// kernels/cuda/dropout_cuda.h — the CUDA twin of kernels/cpu/dropout.h: inverted dropout
// (torch.nn.Dropout in training mode) with the keep mask drawn from the counter-based Philox stream of
// core/philox.h. A __device__ Philox4x32-10 reproduces core/philox.cc word for word, so for the same
// PhiloxStream and p the GPU keeps exactly the elements the CPU op keeps:
//   keep element i  iff  philox_uniform(stream, i) >= p    (compared in double; u has 24 bits)
//   y[i] = kept ? x[i] * scale : 0,  scale = float(1 / (1 - p)) computed in double on the host
// so fp32 outputs equal the CPU op's bit for bit; bf16 rounds float(x) * scale once to bf16.
// Dims: N elements (all dims flattened; element i's Philox counter is i, 4 elements per block).
// Dtypes: T = float or __nv_bfloat16. p must lie in [0, 1); p = 0 copies (y = x exactly).
// Backward recomputes the mask from the stream (nothing saved): pass the forward's stream and p.
// All pointers are DEVICE pointers; launches on ctx.cuda_stream, no host synchronisation, nothing
// launched for N = 0. Gradient convention: dx is assigned. y may alias x, dx may alias dy.
#pragma once

#include <cstdint>

#include "core/philox.h"
#include "core/run_context.h"

namespace moeasr {

template <class T>
void dropout_forward_cuda(T* y,        // [N]
                          const T* x,  // [N]
                          const PhiloxStream& stream, double p, int64_t n, const RunContext& ctx);

// dx[i] = kept ? dy[i] * scale : 0
template <class T>
void dropout_backward_cuda(T* dx,        // [N] assigned
                           const T* dy,  // [N]
                           const PhiloxStream& stream, double p, int64_t n, const RunContext& ctx);

// mask[i] = 1 if element i is kept, else 0 (tests, debugging; the same mask as dropout_keep_mask).
void dropout_keep_mask_cuda(uint8_t* mask,  // [N]
                            const PhiloxStream& stream, double p, int64_t n, const RunContext& ctx);

}  // namespace moeasr
