// kernels/cuda/gemm_cuda.h — GEMM on the GPU through cuBLASLt: the CUDA twin of kernels/cpu/gemm.h
// (same row-major BLAS semantics C = alpha * op(A) @ op(B) + beta * C, same argument meaning; the
// row-major problem is handed to column-major cuBLASLt as C^T = op(B)^T op(A)^T, i.e. with A and B
// swapped).
//
// Dtype rules: T in {float, __nv_bfloat16} for A, B and C. Compute type CUBLAS_COMPUTE_32F with
// scale type fp32 in both cases: fp32 stays exact fp32 (no TF32), bf16 multiplies exactly and
// accumulates in fp32, rounding once to bf16 on output. alpha and beta are fp32 for both dtypes.
// gemm_ex_cuda also takes bf16 A/B with an fp32 C (parameter gradients of bf16 activations).
// As in BLAS, beta == 0 ignores C's old contents (NaN included).
//
// Workspace: the cuBLASLt workspace is an explicit argument (CudaContext::cublaslt_workspace(),
// 32 MiB); null / 0 is allowed (fewer algorithms). It may be shared by all ops on one stream.
// Handles: ctx.cublaslt_handle (required) and ctx.cuda_stream (null = default stream).
// Nothing is cached: each call builds its cuBLASLt descriptors and asks the heuristic (host-only
// calls; no host synchronisation). Results are deterministic run to run (cuBLASLt's split-K
// reductions are ordered; no atomics here).
// Dims as in gemm.h: M rows of C, N columns, K contracted; all pointers are device pointers.
#pragma once

#include <cuda_bf16.h>

#include <cstddef>
#include <cstdint>

#include "core/run_context.h"
#include "kernels/cpu/gemm.h"  // enum class Transpose

namespace moeasr {

// The most general form, used by the others and by linear_cuda:
//   for i in [0, batch): C_i = alpha * op(A_i) @ op(B_i) + beta * C_i (+ bias[j] on every row)
// TAB in {float, bf16} is the type of A and B; TC the type of C: (float, float), (bf16, bf16) or
// (bf16, float). bias (length N, type TC, or null) needs beta == 0 and batch <= 1; it is applied by
// the cuBLASLt epilogue CUBLASLT_EPILOGUE_BIAS when bias is 16-byte aligned and the heuristic has an
// algorithm for it, else C is pre-filled with the bias by a small kernel and the GEMM runs with beta 1.
// K == 0 gives C = beta * C (+ bias) through that kernel.
template <class TAB, class TC>
void gemm_ex_cuda(TC* c,  // [batch][M, N] row stride ldc, batch stride stride_c
                  void* workspace, size_t workspace_bytes,
                  const TAB* a,    // [batch][M, K] or [K, M] (trans_a), row stride lda
                  const TAB* b,    // [batch][K, N] or [N, K] (trans_b), row stride ldb
                  const TC* bias,  // [N] or null
                  Transpose trans_a, Transpose trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                  float beta, int64_t lda, int64_t ldb, int64_t ldc, int64_t stride_a, int64_t stride_b,
                  int64_t stride_c, int64_t batch, const RunContext& ctx);

template <class T>
void gemm_cuda(T* c,  // [M, N] with row stride ldc
               void* workspace, size_t workspace_bytes,
               const T* a,  // [M, K] or [K, M] (trans_a), row stride lda
               const T* b,  // [K, N] or [N, K] (trans_b), row stride ldb
               Transpose trans_a, Transpose trans_b, int64_t m, int64_t n, int64_t k, float alpha, float beta,
               int64_t lda, int64_t ldb, int64_t ldc, const RunContext& ctx);

// For i in [0, batch): C_i = alpha * op(A_i) @ op(B_i) + beta * C_i, with A_i = a + i * stride_a etc.
template <class T>
void gemm_strided_batched_cuda(T* c,  // [batch][M, N], batch stride stride_c
                               void* workspace, size_t workspace_bytes,
                               const T* a,  // [batch][M, K] or [K, M], batch stride stride_a
                               const T* b,  // [batch][K, N] or [N, K], batch stride stride_b
                               Transpose trans_a, Transpose trans_b, int64_t m, int64_t n, int64_t k,
                               float alpha, float beta, int64_t lda, int64_t ldb, int64_t ldc,
                               int64_t stride_a, int64_t stride_b, int64_t stride_c, int64_t batch,
                               const RunContext& ctx);

// out[g] = a[g] @ op(b[g]) for g in [0, G), contiguous tensors.
template <class T>
void batched_matmul_forward_cuda(T* out,  // [G, M, N]
                                 void* workspace, size_t workspace_bytes,
                                 const T* a,  // [G, M, K]
                                 const T* b,  // [G, K, N] (trans_b kNo) or [G, N, K] (kYes)
                                 Transpose trans_b, int64_t groups, int64_t m, int64_t n, int64_t k,
                                 const RunContext& ctx);

// da = dout @ op(b)^T, db = a^T @ dout (or its transpose for trans_b); both assigned, either may be null.
template <class T>
void batched_matmul_backward_cuda(T* da,  // [G, M, K] or null
                                  T* db,  // [G, K, N] or [G, N, K] (trans_b) or null
                                  void* workspace, size_t workspace_bytes,
                                  const T* dout,  // [G, M, N]
                                  const T* a,     // [G, M, K]
                                  const T* b,     // [G, K, N] or [G, N, K]
                                  Transpose trans_b, int64_t groups, int64_t m, int64_t n, int64_t k,
                                  const RunContext& ctx);

}  // namespace moeasr
