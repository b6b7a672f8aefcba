// kernels/cuda/gemm_cuda.cu — cuBLASLt GEMMs (see gemm_cuda.h): descriptors built per call, the
// heuristic's first algorithm, row-major mapped to column-major by swapping A and B. A small kernel
// handles K == 0 (C = beta * C) and the bias pre-fill when the bias epilogue is not available.
#include <cublasLt.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <string>

#include "kernels/cuda/bf16_device.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_context.h"
#include "kernels/cuda/gemm_cuda.h"

namespace moeasr {
namespace {

// cuBLASLt's batch count is an int32; larger batches are issued in pieces of this many.
constexpr int64_t kMaxBatchPerCall = 65535;

template <class T>
cudaDataType_t cuda_data_type();
template <>
cudaDataType_t cuda_data_type<float>() {
  return CUDA_R_32F;
}
template <>
cudaDataType_t cuda_data_type<__nv_bfloat16>() {
  return CUDA_R_16BF;
}

// c[i, j] = (beta == 0 ? 0 : beta * c[i, j]) + (bias ? bias[j] : 0) for every batch item.
template <class TC>
__global__ void scale_add_bias_kernel(TC* c, const TC* bias, float beta, int64_t m, int64_t n, int64_t ldc,
                                      int64_t stride_c, int64_t batch) {
  const int64_t total = batch * m * n;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = idx % n;
    const int64_t i = (idx / n) % m;
    const int64_t g = idx / (n * m);
    TC* p = c + g * stride_c + i * ldc + j;
    float v = beta == 0.0f ? 0.0f : beta * load_f32(*p);
    if (bias != nullptr) v += load_f32(bias[j]);
    *p = store_as<TC>(v);
  }
}

template <class TC>
void launch_scale_add_bias(TC* c, const TC* bias, float beta, int64_t m, int64_t n, int64_t ldc,
                           int64_t stride_c, int64_t batch, cudaStream_t stream) {
  const int64_t total = batch * m * n;
  if (total == 0) return;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535);
  scale_add_bias_kernel<TC>
      <<<static_cast<unsigned>(blocks), threads, 0, stream>>>(c, bias, beta, m, n, ldc, stride_c, batch);
  CUDA_CHECK(cudaGetLastError());
}

// Largest power of two <= 256 dividing the address and (for batches) the batch stride in bytes: the
// alignment cuBLASLt may assume for every A_i (its heuristic default is 256).
uint32_t alignment_of(const void* ptr, int64_t stride_bytes, int64_t batch) {
  uint64_t bits = reinterpret_cast<uintptr_t>(ptr) | uint64_t(256);
  if (batch > 1 && stride_bytes != 0)
    bits |= static_cast<uint64_t>(stride_bytes < 0 ? -stride_bytes : stride_bytes);
  return static_cast<uint32_t>(bits & (~bits + 1));  // lowest set bit
}

cublasOperation_t to_op(Transpose t) {
  return t == Transpose::kYes ? CUBLAS_OP_T : CUBLAS_OP_N;
}

// RAII holders so that the "no algorithm" return path frees its descriptors.
struct MatmulDesc {
  cublasLtMatmulDesc_t desc = nullptr;
  ~MatmulDesc() {
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};
struct Layout {
  cublasLtMatrixLayout_t layout = nullptr;
  ~Layout() {
    if (layout) cublasLtMatrixLayoutDestroy(layout);
  }
};
struct Preference {
  cublasLtMatmulPreference_t pref = nullptr;
  ~Preference() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
  }
};

void make_layout(Layout* out, cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld, int64_t batch,
                 int64_t stride) {
  CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&out->layout, type, static_cast<uint64_t>(rows),
                                            static_cast<uint64_t>(cols), ld > 0 ? ld : 1));
  if (batch > 1) {
    const int32_t count = static_cast<int32_t>(batch);
    CUBLASLT_CHECK(cublasLtMatrixLayoutSetAttribute(out->layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                                    sizeof(count)));
    CUBLASLT_CHECK(cublasLtMatrixLayoutSetAttribute(out->layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                    &stride, sizeof(stride)));
  }
}

std::string describe(Transpose ta, Transpose tb, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb,
                     int64_t ldc, int64_t batch, cudaDataType_t ab, cudaDataType_t c, bool with_bias) {
  std::ostringstream s;
  s << "gemm M=" << m << " N=" << n << " K=" << k << " trans_a=" << (ta == Transpose::kYes)
    << " trans_b=" << (tb == Transpose::kYes) << " lda=" << lda << " ldb=" << ldb << " ldc=" << ldc
    << " batch=" << batch << " ab_type=" << int(ab) << " c_type=" << int(c) << " bias_epilogue=" << with_bias;
  return s.str();
}

// One cuBLASLt call for up to kMaxBatchPerCall batch items. Returns false only when a bias epilogue
// was asked for and the heuristic has no algorithm for it (the caller then falls back); any other
// failure aborts with the problem's description.
bool lt_matmul(cublasLtHandle_t handle, cudaStream_t stream, void* workspace, size_t workspace_bytes,
               cudaDataType_t ab_type, size_t ab_size, cudaDataType_t c_type, size_t c_size, const void* a,
               const void* b, void* c, const void* bias, Transpose ta, Transpose tb, int64_t m, int64_t n,
               int64_t k, float alpha, float beta, int64_t lda, int64_t ldb, int64_t ldc, int64_t stride_a,
               int64_t stride_b, int64_t stride_c, int64_t batch) {
  MatmulDesc desc;
  CUBLASLT_CHECK(cublasLtMatmulDescCreate(&desc.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // Column-major view: D^T[N, M] = op(B)^T[N, K] @ op(A)^T[K, M]; cuBLASLt's "A" is our b, its "B" our a.
  const int32_t op_a = to_op(tb), op_b = to_op(ta);
  CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(desc.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(desc.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  if (bias != nullptr) {
    const uint32_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(desc.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                                  sizeof(epilogue)));
    CUBLASLT_CHECK(
        cublasLtMatmulDescSetAttribute(desc.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  }
  Layout la, lb, lc;
  // Our b as stored: [K, N] row-major = column-major rows N, cols K (op N), or [N, K] = rows K, cols N (op
  // T).
  make_layout(&la, ab_type, tb == Transpose::kNo ? n : k, tb == Transpose::kNo ? k : n, ldb, batch, stride_b);
  // Our a: [M, K] row-major = column-major rows K, cols M (op N), or [K, M] = rows M, cols K (op T).
  make_layout(&lb, ab_type, ta == Transpose::kNo ? k : m, ta == Transpose::kNo ? m : k, lda, batch, stride_a);
  make_layout(&lc, c_type, n, m, ldc, batch, stride_c);

  Preference pref;
  CUBLASLT_CHECK(cublasLtMatmulPreferenceCreate(&pref.pref));
  const uint64_t max_ws = workspace != nullptr ? static_cast<uint64_t>(workspace_bytes) : 0;
  CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                      &max_ws, sizeof(max_ws)));
  const uint32_t align_a = alignment_of(b, stride_b * int64_t(ab_size), batch);
  const uint32_t align_b = alignment_of(a, stride_a * int64_t(ab_size), batch);
  const uint32_t align_c = alignment_of(c, stride_c * int64_t(c_size), batch);
  CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                      &align_a, sizeof(align_a)));
  CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                      &align_b, sizeof(align_b)));
  CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                      &align_c, sizeof(align_c)));
  CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                      &align_c, sizeof(align_c)));

  cublasLtMatmulHeuristicResult_t heuristic = {};
  int found = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
      handle, desc.desc, la.layout, lb.layout, lc.layout, lc.layout, pref.pref, 1, &heuristic, &found);
  if (status != CUBLAS_STATUS_SUCCESS || found == 0) {
    if (bias != nullptr) return false;
    CHECK(false) << "CUDA device " << current_cuda_device_for_errors()
                 << ": cublasLtMatmulAlgoGetHeuristic found no algorithm (" << cublasLtGetStatusName(status)
                 << ") for " << describe(ta, tb, m, n, k, lda, ldb, ldc, batch, ab_type, c_type, false)
                 << " alignments " << align_a << "/" << align_b << "/" << align_c << " workspace " << max_ws;
  }
  CUBLASLT_CHECK(cublasLtMatmul(handle, desc.desc, &alpha, b, la.layout, a, lb.layout, &beta, c, lc.layout, c,
                                lc.layout, &heuristic.algo, workspace, max_ws, stream));
  return true;
}

void check_gemm_args(Transpose ta, Transpose tb, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb,
                     int64_t ldc, int64_t batch) {
  CHECK(m >= 0 && n >= 0 && k >= 0 && batch >= 0)
      << "gemm_cuda sizes m=" << m << " n=" << n << " k=" << k << " batch=" << batch;
  CHECK_GE(lda, ta == Transpose::kYes ? m : k);
  CHECK_GE(ldb, tb == Transpose::kYes ? k : n);
  CHECK_GE(ldc, n);
}

}  // namespace

template <class TAB, class TC>
void gemm_ex_cuda(TC* c, void* workspace, size_t workspace_bytes, const TAB* a, const TAB* b, const TC* bias,
                  Transpose trans_a, Transpose trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                  float beta, int64_t lda, int64_t ldb, int64_t ldc, int64_t stride_a, int64_t stride_b,
                  int64_t stride_c, int64_t batch, const RunContext& ctx) {
  check_gemm_args(trans_a, trans_b, m, n, k, lda, ldb, ldc, batch);
  if (bias != nullptr) {
    CHECK(beta == 0.0f && batch <= 1)
        << "gemm_ex_cuda: a bias needs beta == 0 and batch <= 1 (beta=" << beta << " batch=" << batch << ")";
  }
  if (m == 0 || n == 0 || batch == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  if (k == 0) {
    launch_scale_add_bias<TC>(c, bias, beta, m, n, ldc, stride_c, batch, stream);
    return;
  }
  CHECK(ctx.cublaslt_handle != nullptr) << "gemm_cuda: ctx.cublaslt_handle is null; fill the RunContext "
                                           "from a CudaContext (kernels/cuda/cuda_context.h)";
  cublasLtHandle_t handle = static_cast<cublasLtHandle_t>(ctx.cublaslt_handle);
  const cudaDataType_t ab_type = cuda_data_type<TAB>();
  const cudaDataType_t c_type = cuda_data_type<TC>();
  if (bias != nullptr) {
    const bool aligned = reinterpret_cast<uintptr_t>(bias) % 16 == 0;
    if (aligned && lt_matmul(handle, stream, workspace, workspace_bytes, ab_type, sizeof(TAB), c_type,
                             sizeof(TC), a, b, c, bias, trans_a, trans_b, m, n, k, alpha, 0.0f, lda, ldb, ldc,
                             stride_a, stride_b, stride_c, 1)) {
      return;
    }
    // Fallback: C = bias on every row, then C = alpha * op(A) op(B) + 1 * C.
    launch_scale_add_bias<TC>(c, bias, 0.0f, m, n, ldc, stride_c, 1, stream);
    lt_matmul(handle, stream, workspace, workspace_bytes, ab_type, sizeof(TAB), c_type, sizeof(TC), a, b, c,
              nullptr, trans_a, trans_b, m, n, k, alpha, 1.0f, lda, ldb, ldc, stride_a, stride_b, stride_c,
              1);
    return;
  }
  for (int64_t first = 0; first < batch; first += kMaxBatchPerCall) {
    const int64_t count = std::min(kMaxBatchPerCall, batch - first);
    lt_matmul(handle, stream, workspace, workspace_bytes, ab_type, sizeof(TAB), c_type, sizeof(TC),
              a + first * stride_a, b + first * stride_b, c + first * stride_c, nullptr, trans_a, trans_b, m,
              n, k, alpha, beta, lda, ldb, ldc, stride_a, stride_b, stride_c, count);
  }
}

template <class T>
void gemm_cuda(T* c, void* workspace, size_t workspace_bytes, const T* a, const T* b, Transpose trans_a,
               Transpose trans_b, int64_t m, int64_t n, int64_t k, float alpha, float beta, int64_t lda,
               int64_t ldb, int64_t ldc, const RunContext& ctx) {
  gemm_ex_cuda<T, T>(c, workspace, workspace_bytes, a, b, nullptr, trans_a, trans_b, m, n, k, alpha, beta,
                     lda, ldb, ldc, 0, 0, 0, 1, ctx);
}

template <class T>
void gemm_strided_batched_cuda(T* c, void* workspace, size_t workspace_bytes, const T* a, const T* b,
                               Transpose trans_a, Transpose trans_b, int64_t m, int64_t n, int64_t k,
                               float alpha, float beta, int64_t lda, int64_t ldb, int64_t ldc,
                               int64_t stride_a, int64_t stride_b, int64_t stride_c, int64_t batch,
                               const RunContext& ctx) {
  gemm_ex_cuda<T, T>(c, workspace, workspace_bytes, a, b, nullptr, trans_a, trans_b, m, n, k, alpha, beta,
                     lda, ldb, ldc, stride_a, stride_b, stride_c, batch, ctx);
}

template <class T>
void batched_matmul_forward_cuda(T* out, void* workspace, size_t workspace_bytes, const T* a, const T* b,
                                 Transpose trans_b, int64_t groups, int64_t m, int64_t n, int64_t k,
                                 const RunContext& ctx) {
  const int64_t ldb = trans_b == Transpose::kYes ? k : n;
  gemm_strided_batched_cuda(out, workspace, workspace_bytes, a, b, Transpose::kNo, trans_b, m, n, k, 1.0f,
                            0.0f, k, ldb, n, m * k, k * n, m * n, groups, ctx);
}

template <class T>
void batched_matmul_backward_cuda(T* da, T* db, void* workspace, size_t workspace_bytes, const T* dout,
                                  const T* a, const T* b, Transpose trans_b, int64_t groups, int64_t m,
                                  int64_t n, int64_t k, const RunContext& ctx) {
  if (da != nullptr) {
    // da[M,K] = dout[M,N] @ op(b)^T: op(b)^T is b^T ([N,K] stored [K,N]) or b itself ([N,K]).
    const Transpose tb = trans_b == Transpose::kYes ? Transpose::kNo : Transpose::kYes;
    const int64_t ldb = trans_b == Transpose::kYes ? k : n;
    gemm_strided_batched_cuda(da, workspace, workspace_bytes, dout, b, Transpose::kNo, tb, m, k, n, 1.0f,
                              0.0f, n, ldb, k, m * n, k * n, m * k, groups, ctx);
  }
  if (db != nullptr) {
    if (trans_b == Transpose::kNo) {
      // db[K,N] = a^T[K,M] @ dout[M,N]
      gemm_strided_batched_cuda(db, workspace, workspace_bytes, a, dout, Transpose::kYes, Transpose::kNo, k,
                                n, m, 1.0f, 0.0f, k, n, n, m * k, m * n, k * n, groups, ctx);
    } else {
      // db[N,K] = dout^T[N,M] @ a[M,K]
      gemm_strided_batched_cuda(db, workspace, workspace_bytes, dout, a, Transpose::kYes, Transpose::kNo, n,
                                k, m, 1.0f, 0.0f, n, k, k, m * n, m * k, n * k, groups, ctx);
    }
  }
}

template void gemm_ex_cuda<float, float>(float*, void*, size_t, const float*, const float*, const float*,
                                         Transpose, Transpose, int64_t, int64_t, int64_t, float, float,
                                         int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                         const RunContext&);
template void gemm_ex_cuda<__nv_bfloat16, __nv_bfloat16>(__nv_bfloat16*, void*, size_t, const __nv_bfloat16*,
                                                         const __nv_bfloat16*, const __nv_bfloat16*,
                                                         Transpose, Transpose, int64_t, int64_t, int64_t,
                                                         float, float, int64_t, int64_t, int64_t, int64_t,
                                                         int64_t, int64_t, int64_t, const RunContext&);
template void gemm_ex_cuda<__nv_bfloat16, float>(float*, void*, size_t, const __nv_bfloat16*,
                                                 const __nv_bfloat16*, const float*, Transpose, Transpose,
                                                 int64_t, int64_t, int64_t, float, float, int64_t, int64_t,
                                                 int64_t, int64_t, int64_t, int64_t, int64_t,
                                                 const RunContext&);

#define MOEASR_INSTANTIATE_GEMM_CUDA(T)                                                                     \
  template void gemm_cuda<T>(T*, void*, size_t, const T*, const T*, Transpose, Transpose, int64_t, int64_t, \
                             int64_t, float, float, int64_t, int64_t, int64_t, const RunContext&);          \
  template void gemm_strided_batched_cuda<T>(                                                               \
      T*, void*, size_t, const T*, const T*, Transpose, Transpose, int64_t, int64_t, int64_t, float, float, \
      int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const RunContext&);                    \
  template void batched_matmul_forward_cuda<T>(T*, void*, size_t, const T*, const T*, Transpose, int64_t,   \
                                               int64_t, int64_t, int64_t, const RunContext&);               \
  template void batched_matmul_backward_cuda<T>(T*, T*, void*, size_t, const T*, const T*, const T*,        \
                                                Transpose, int64_t, int64_t, int64_t, int64_t,              \
                                                const RunContext&);
MOEASR_INSTANTIATE_GEMM_CUDA(float)
MOEASR_INSTANTIATE_GEMM_CUDA(__nv_bfloat16)

}  // namespace moeasr
