// kernels/cuda/linear_cuda.h — the fully connected layer y = x @ W^T + b on the GPU: the CUDA twin
// of kernels/cpu/linear.h (W stored [out_features, in_features] as in PyTorch), through
// kernels/cuda/gemm_cuda.h (cuBLASLt).
// Dims: N rows (all leading dims flattened), I in_features, O out_features.
//
// Dtype rules: T in {float, __nv_bfloat16} for x, y, dx, dy and the weight/bias copies used in the
// math (for bf16 the caller passes bf16 copies of the fp32 master parameters). Parameter gradients
// dweight / dbias are always fp32 and accumulate (+=): for bf16 the dW GEMM reads bf16 dy and x and
// writes fp32 with beta = 1 (fp32 accumulation throughout). dx is assigned.
// Forward bias: the cuBLASLt epilogue CUBLASLT_EPILOGUE_BIAS (bias of type T), falling back to a bias
// pre-fill kernel + beta = 1 when the bias is not 16-byte aligned or no epilogue algorithm exists.
// dbias: a deterministic column sum (one block per column tile, fixed-order reduction; no atomics).
// Workspace: the cuBLASLt workspace (CudaContext::cublaslt_workspace()); null / 0 allowed.
// No host synchronisation.
#pragma once

#include <cuda_bf16.h>

#include <cstddef>
#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

template <class T>
void linear_forward_cuda(T* y,  // [N, O]
                         void* workspace, size_t workspace_bytes,
                         const T* x,       // [N, I]
                         const T* weight,  // [O, I]
                         const T* bias,    // [O] or null
                         int64_t n, int64_t in_features, int64_t out_features, const RunContext& ctx);

template <class T>
void linear_backward_cuda(T* dx,           // [N, I] assigned; null to skip
                          float* dweight,  // [O, I] fp32, accumulated; null to skip
                          float* dbias,    // [O] fp32, accumulated; null to skip
                          void* workspace, size_t workspace_bytes,
                          const T* dy,      // [N, O]
                          const T* x,       // [N, I]
                          const T* weight,  // [O, I]
                          int64_t n, int64_t in_features, int64_t out_features, const RunContext& ctx);

}  // namespace moeasr
