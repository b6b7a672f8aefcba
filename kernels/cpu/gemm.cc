// kernels/cpu/gemm.cc — OpenBLAS-backed GEMM and its reference loop (see gemm.h).
#include "kernels/cpu/gemm.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <climits>

#include "core/check.h"
#include "kernels/cpu/cpu_parallel.h"

namespace moeasr {
namespace {

// Below this many multiply-adds one thread does the whole GEMM.
constexpr int64_t kGemmSplitMinWork = int64_t(1) << 20;

CBLAS_TRANSPOSE to_cblas(Transpose t) {
  return t == Transpose::kYes ? CblasTrans : CblasNoTrans;
}

void check_blas_extent(int64_t value, const char* what) {
  CHECK(value >= 0 && value <= INT_MAX)
      << "GEMM " << what << " = " << value << " exceeds the 32-bit BLAS interface";
}

void blas_gemm(float* c, const float* a, const float* b, Transpose ta, Transpose tb, int64_t m, int64_t n,
               int64_t k, float alpha, float beta, int64_t lda, int64_t ldb, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, to_cblas(ta), to_cblas(tb), static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta, c,
              static_cast<int>(ldc));
}

void blas_gemm(double* c, const double* a, const double* b, Transpose ta, Transpose tb, int64_t m, int64_t n,
               int64_t k, double alpha, double beta, int64_t lda, int64_t ldb, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, to_cblas(ta), to_cblas(tb), static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta, c,
              static_cast<int>(ldc));
}

}  // namespace

void cpu_backend_init(const RunContext&) {
  // One thread pool for the whole CPU backend: OpenBLAS runs single-threaded and gemm() splits C
  // over the OpenMP threads itself. Two pools (OpenBLAS's pthreads and OpenMP's) spin against each
  // other on a small machine; measured on 2 cores, that cost a third of a training step.
  openblas_set_num_threads(1);
}

template <class T>
void gemm_reference(T* c, const T* a, const T* b, Transpose trans_a, Transpose trans_b, int64_t m, int64_t n,
                    int64_t k, T alpha, T beta, int64_t lda, int64_t ldb, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0.0;
      for (int64_t p = 0; p < k; ++p) {
        double av = trans_a == Transpose::kYes ? a[p * lda + i] : a[i * lda + p];
        double bv = trans_b == Transpose::kYes ? b[j * ldb + p] : b[p * ldb + j];
        acc += av * bv;
      }
      // beta == 0 ignores C's old contents (which may be uninitialised), as BLAS does.
      double old = beta == T(0) ? 0.0 : static_cast<double>(beta) * c[i * ldc + j];
      c[i * ldc + j] = static_cast<T>(static_cast<double>(alpha) * acc + old);
    }
  }
}

template <class T>
void gemm(T* c, const T* a, const T* b, Transpose trans_a, Transpose trans_b, int64_t m, int64_t n, int64_t k,
          T alpha, T beta, int64_t lda, int64_t ldb, int64_t ldc, const RunContext& ctx) {
  CHECK(m >= 0 && n >= 0 && k >= 0) << "gemm sizes m=" << m << " n=" << n << " k=" << k;
  CHECK_GE(lda, trans_a == Transpose::kYes ? m : k);
  CHECK_GE(ldb, trans_b == Transpose::kYes ? k : n);
  CHECK_GE(ldc, n);
  if (m == 0 || n == 0) return;
  if (ctx.use_reference_kernels) {
    gemm_reference(c, a, b, trans_a, trans_b, m, n, k, alpha, beta, lda, ldb, ldc);
    return;
  }
  check_blas_extent(m, "M");
  check_blas_extent(n, "N");
  check_blas_extent(k, "K");
  // BLAS needs lda >= 1 even for empty operands.
  lda = lda > 0 ? lda : 1;
  ldb = ldb > 0 ? ldb : 1;
  int threads = m * n * k >= kGemmSplitMinWork && !omp_in_parallel() ? cpu_threads_for(ctx, m * n * k) : 1;
  if (threads <= 1) {
    blas_gemm(c, a, b, trans_a, trans_b, m, n, k, alpha, beta, lda, ldb, ldc);
    return;
  }
  // Split C into row blocks (or column blocks when it is wide), 16-aligned, one per thread; every
  // element of C is computed by one single-threaded BLAS call over the full K.
  const bool split_rows = m >= n;
  const int64_t extent = split_rows ? m : n;
  const int64_t block = ((extent + threads - 1) / threads + 15) / 16 * 16;
#pragma omp parallel num_threads(threads)
  {
    const int64_t begin = std::min<int64_t>(extent, block * omp_get_thread_num());
    const int64_t end = std::min<int64_t>(extent, begin + block);
    if (end > begin && split_rows) {
      const T* a_part = trans_a == Transpose::kYes ? a + begin : a + begin * lda;
      blas_gemm(c + begin * ldc, a_part, b, trans_a, trans_b, end - begin, n, k, alpha, beta, lda, ldb, ldc);
    } else if (end > begin) {
      const T* b_part = trans_b == Transpose::kYes ? b + begin * ldb : b + begin;
      blas_gemm(c + begin, a, b_part, trans_a, trans_b, m, end - begin, k, alpha, beta, lda, ldb, ldc);
    }
  }
}

template <class T>
void gemm_strided_batched(T* c, const T* a, const T* b, Transpose trans_a, Transpose trans_b, int64_t m,
                          int64_t n, int64_t k, T alpha, T beta, int64_t lda, int64_t ldb, int64_t ldc,
                          int64_t stride_a, int64_t stride_b, int64_t stride_c, int64_t batch,
                          const RunContext& ctx) {
  CHECK_GE(batch, 0);
  // Small GEMMs (attention heads) are spread over threads one whole GEMM each; large ones let
  // OpenBLAS thread inside. Either way each C_i is written by exactly one thread.
  int threads = cpu_threads_for(ctx, batch * m * n * k);
  bool small = m * n * k < (1 << 18);
  if (threads > 1 && small && batch > 1) {
    RunContext single = ctx;
    single.num_threads = 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < batch; ++i) {
      gemm(c + i * stride_c, a + i * stride_a, b + i * stride_b, trans_a, trans_b, m, n, k, alpha, beta, lda,
           ldb, ldc, single);
    }
    return;
  }
  for (int64_t i = 0; i < batch; ++i) {
    gemm(c + i * stride_c, a + i * stride_a, b + i * stride_b, trans_a, trans_b, m, n, k, alpha, beta, lda,
         ldb, ldc, ctx);
  }
}

template <class T>
void batched_matmul_forward(T* out, const T* a, const T* b, Transpose trans_b, int64_t groups, int64_t m,
                            int64_t n, int64_t k, const RunContext& ctx) {
  int64_t ldb = trans_b == Transpose::kYes ? k : n;
  gemm_strided_batched(out, a, b, Transpose::kNo, trans_b, m, n, k, T(1), T(0), k, ldb, n, m * k, k * n,
                       m * n, groups, ctx);
}

template <class T>
void batched_matmul_backward(T* da, T* db, const T* dout, const T* a, const T* b, Transpose trans_b,
                             int64_t groups, int64_t m, int64_t n, int64_t k, const RunContext& ctx) {
  if (da != nullptr) {
    // da[M,K] = dout[M,N] @ op(b)^T: op(b)^T is b^T ([N,K] stored [K,N]) or b itself ([N,K]).
    Transpose tb = trans_b == Transpose::kYes ? Transpose::kNo : Transpose::kYes;
    int64_t ldb = trans_b == Transpose::kYes ? k : n;
    gemm_strided_batched(da, dout, b, Transpose::kNo, tb, m, k, n, T(1), T(0), n, ldb, k, m * n, k * n, m * k,
                         groups, ctx);
  }
  if (db != nullptr) {
    if (trans_b == Transpose::kNo) {
      // db[K,N] = a^T[K,M] @ dout[M,N]
      gemm_strided_batched(db, a, dout, Transpose::kYes, Transpose::kNo, k, n, m, T(1), T(0), k, n, n, m * k,
                           m * n, k * n, groups, ctx);
    } else {
      // db[N,K] = dout^T[N,M] @ a[M,K]
      gemm_strided_batched(db, dout, a, Transpose::kYes, Transpose::kNo, n, k, m, T(1), T(0), n, k, k, m * n,
                           m * k, n * k, groups, ctx);
    }
  }
}

#define MOEASR_INSTANTIATE_GEMM(T)                                                                           \
  template void gemm<T>(T*, const T*, const T*, Transpose, Transpose, int64_t, int64_t, int64_t, T, T,       \
                        int64_t, int64_t, int64_t, const RunContext&);                                       \
  template void gemm_reference<T>(T*, const T*, const T*, Transpose, Transpose, int64_t, int64_t, int64_t,   \
                                  T, T, int64_t, int64_t, int64_t);                                          \
  template void gemm_strided_batched<T>(T*, const T*, const T*, Transpose, Transpose, int64_t, int64_t,      \
                                        int64_t, T, T, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, \
                                        int64_t, const RunContext&);                                         \
  template void batched_matmul_forward<T>(T*, const T*, const T*, Transpose, int64_t, int64_t, int64_t,      \
                                          int64_t, const RunContext&);                                       \
  template void batched_matmul_backward<T>(T*, T*, const T*, const T*, const T*, Transpose, int64_t,         \
                                           int64_t, int64_t, int64_t, const RunContext&);
MOEASR_INSTANTIATE_GEMM(float)
MOEASR_INSTANTIATE_GEMM(double)

}  // namespace moeasr
