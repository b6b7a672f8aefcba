// kernels/cpu/grouped_linear.h — the expert Linears of the MoE FFN over expert-major rows, the CPU
// twin of kernels/cuda/grouped_gemm_cuda.h: for every expert e its rows [off[e], off[e+1]) go through
// its own torch.nn.Linear (weight [O, I] per expert, as kernels/cpu/linear.h expert by expert):
//   forward   Y[off[e]:off[e+1]] = X[off[e]:off[e+1]] · W_e^T + b_e
//   backward  dX_e = dY_e · W_e (assigned),  dW_e += dY_e^T · X_e,  db_e += column sums of dY_e
// The row ranges come from an offsets[E + 1] array (the MoE permute plan's prefix sums: host memory
// here, device memory on the GPU), so the MoE layer passes the same arguments to both backends.
// `m_max` is the capacity of the row buffers (rows [offsets[E], m_max) are not touched); offsets must
// be non-decreasing from 0 with offsets[E] <= m_max (CHECKed). An expert with no rows gets no
// gradient (nothing is added). Dims: E experts, I in_features, O out_features.
#pragma once

#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

template <class T>
void grouped_linear_forward(T* y,                           // [M, O] (capacity m_max rows)
                            const T* x,                     // [M, I]
                            const T* weight,                // [E, O, I]
                            const T* bias,                  // [E, O] or null
                            const int64_t* expert_offsets,  // [E + 1], offsets[E] = M <= m_max
                            int64_t m_max, int64_t n_experts, int64_t in_features, int64_t out_features,
                            const RunContext& ctx);

template <class T>
void grouped_linear_backward(T* dx,                          // [M, I] assigned; null to skip
                             T* dweight,                     // [E, O, I] accumulated; null to skip
                             T* dbias,                       // [E, O] accumulated; null to skip
                             const T* dy,                    // [M, O]
                             const T* x,                     // [M, I]
                             const T* weight,                // [E, O, I]
                             const int64_t* expert_offsets,  // [E + 1]
                             int64_t m_max, int64_t n_experts, int64_t in_features, int64_t out_features,
                             const RunContext& ctx);

}  // namespace moeasr
