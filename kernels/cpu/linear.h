// kernels/cpu/linear.h — the fully connected layer of torch.nn.Linear: y = x @ W^T + b, with W
// stored [out_features, in_features] as in PyTorch state dicts. Forward and backward via gemm.h.
// Dims: N rows (all leading dims flattened), I in_features, O out_features.
// Gradient convention: dW, db accumulate (+=); dx is assigned.
#pragma once

#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

template <class T>
void linear_forward(T* y,             // [N, O]
                    const T* x,       // [N, I]
                    const T* weight,  // [O, I]
                    const T* bias,    // [O] or null
                    int64_t n, int64_t in_features, int64_t out_features, const RunContext& ctx);

template <class T>
void linear_backward(T* dx,            // [N, I] assigned; null to skip
                     T* dweight,       // [O, I] accumulated; null to skip
                     T* dbias,         // [O] accumulated; null to skip
                     const T* dy,      // [N, O]
                     const T* x,       // [N, I]
                     const T* weight,  // [O, I]
                     int64_t n, int64_t in_features, int64_t out_features, const RunContext& ctx);

}  // namespace moeasr
