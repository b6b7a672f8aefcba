// kernels/cpu/gemm.h — GEMM on the CPU via OpenBLAS (cblas_sgemm / cblas_dgemm), in BLAS semantics
// on row-major storage: C = alpha * op(A) @ op(B) + beta * C. Also strided-batched GEMM and the
// batched matmul used by attention, with backward. A naive double-accumulating loop stays reachable
// through ctx.use_reference_kernels.
//
// Dims: M rows of C, N columns of C, K the contracted extent. op(A) is [M, K]; A itself is [M, K]
// (lda >= K) or, with Transpose::kYes, [K, M] (lda >= M). Same for B: op(B) is [K, N].
// Gradient convention (all files in kernels/): parameter grads +=, activation grads = .
#pragma once

#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

enum class Transpose { kNo, kYes };

template <class T>
void gemm(T* c,        // [M, N] with row stride ldc
          const T* a,  // [M, K] or [K, M] (trans_a), row stride lda
          const T* b,  // [K, N] or [N, K] (trans_b), row stride ldb
          Transpose trans_a, Transpose trans_b, int64_t m, int64_t n, int64_t k, T alpha, T beta, int64_t lda,
          int64_t ldb, int64_t ldc, const RunContext& ctx);

// The plain triple loop (accumulates in double); gemm() calls it under use_reference_kernels.
template <class T>
void gemm_reference(T* c, const T* a, const T* b, Transpose trans_a, Transpose trans_b, int64_t m, int64_t n,
                    int64_t k, T alpha, T beta, int64_t lda, int64_t ldb, int64_t ldc);

// For i in [0, batch): C_i = alpha * op(A_i) @ op(B_i) + beta * C_i, with A_i = a + i * stride_a etc.
template <class T>
void gemm_strided_batched(T* c, const T* a, const T* b, Transpose trans_a, Transpose trans_b, int64_t m,
                          int64_t n, int64_t k, T alpha, T beta, int64_t lda, int64_t ldb, int64_t ldc,
                          int64_t stride_a, int64_t stride_b, int64_t stride_c, int64_t batch,
                          const RunContext& ctx);

// Batched matmul on contiguous tensors: out[g] = a[g] @ op(b[g]) for g in [0, G).
//   a: [G, M, K];  b: [G, K, N] (trans_b kNo) or [G, N, K] (trans_b kYes);  out: [G, M, N]
template <class T>
void batched_matmul_forward(T* out, const T* a, const T* b, Transpose trans_b, int64_t groups, int64_t m,
                            int64_t n, int64_t k, const RunContext& ctx);
// da = dout @ op(b)^T  [G, M, K];  db = a^T @ dout (or its transpose for trans_b)  — both assigned.
// Either of da, db may be null when that gradient is not needed.
template <class T>
void batched_matmul_backward(T* da, T* db, const T* dout, const T* a, const T* b, Transpose trans_b,
                             int64_t groups, int64_t m, int64_t n, int64_t k, const RunContext& ctx);

}  // namespace moeasr
