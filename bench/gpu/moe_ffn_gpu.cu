// bench/gpu/moe_ffn_gpu.cu — issue 9 benchmark (a): one MoE FFN layer, forward + backward, on one GPU,
// against one dense FFN over the same k·N rows (same GEMM FLOPs), in the same run.
//   MoE:   router GEMM (cuBLASLt, bf16 -> fp32 logits), top-2, routing softmax, permute plan, permute,
//          grouped GEMM w1 (+b1), SiLU, grouped GEMM w2 (+b2), weighted un-permute, and every backward
//          (un-permute, w2, SiLU, w1, permute, routing softmax, top-k, router GEMMs, the residual add of
//          the two dx paths). Expert GEMMs: kernels/cuda/grouped_gemm_cuda.h (bf16 WMMA).
//   dense: two bf16 cuBLASLt GEMMs + the same SiLU forward; backward dgrad/wgrad GEMMs (fp32 dW,
//          beta = 1) + SiLU backward. No biases on the dense side (the MoE side carries b1, b2 and
//          their gradients): the dense number is the "ideal dense" of /work/shared/reference/anchors.md.
// Shapes: d512/ffn2048/8 experts/top-2 at 16384 and 65536 tokens, d1024/ffn4096 at 65536 tokens.
// Timing: CUDA events around a whole forward+backward, 3 warm-up runs, median of 20.
// Prints one markdown table with the MoE/dense ratio, the target (<= 1.25) and WeNet's own ratio
// (its per-expert loop against the same ideal dense, anchors.md: 10.0, 3.25, 1.8).
// Exits 0 with a message when there is no usable GPU.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/run_context.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/grouped_gemm_cuda.h"
#include "kernels/cuda/moe_dispatch_cuda.h"

#define LT_CHECK(call)                                                                \
  do {                                                                                \
    cublasStatus_t moeasr_lt_status_ = (call);                                        \
    CHECK(moeasr_lt_status_ == CUBLAS_STATUS_SUCCESS)                                 \
        << #call << " failed: cuBLAS status " << static_cast<int>(moeasr_lt_status_); \
  } while (0)

namespace moeasr {
namespace {

using bf16 = __nv_bfloat16;

// ---- small device helpers local to the bench ----

template <class T>
struct DevBuf {
  T* p = nullptr;
  explicit DevBuf(int64_t n) {
    CUDA_CHECK(cudaMalloc(&p, static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T)));
  }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
};

__device__ __forceinline__ float hash_uniform(uint64_t i, uint64_t seed) {
  uint64_t z = i * 0x9E3779B97F4A7C15ull + seed * 0xD1B54A32D192ED03ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f;  // [-1, 1)
}

__global__ void fill_bf16_kernel(bf16* p, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    p[i] = __float2bfloat16_rn(scale * hash_uniform(i, seed));
}

__global__ void fill_f32_kernel(float* p, int64_t n, float value) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    p[i] = value;
}

// SiLU over the first min(*rows, row_cap) rows of [row_cap, width] (width even): rows stay on the device.
__global__ void silu_forward_kernel(bf16* a, const bf16* h, const int64_t* rows, int64_t row_cap,
                                    int64_t width) {
  const int64_t pairs = (*rows < row_cap ? *rows : row_cap) * width / 2;
  const __nv_bfloat162* h2 = reinterpret_cast<const __nv_bfloat162*>(h);
  __nv_bfloat162* a2 = reinterpret_cast<__nv_bfloat162*>(a);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < pairs;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float2 v = __bfloat1622float2(h2[i]);
    a2[i] = __floats2bfloat162_rn(v.x / (1.0f + __expf(-v.x)), v.y / (1.0f + __expf(-v.y)));
  }
}

// dh = da * silu'(h), silu'(h) = s * (1 + h * (1 - s)), s = sigmoid(h).
__global__ void silu_backward_kernel(bf16* dh, const bf16* da, const bf16* h, const int64_t* rows,
                                     int64_t row_cap, int64_t width) {
  const int64_t pairs = (*rows < row_cap ? *rows : row_cap) * width / 2;
  const __nv_bfloat162* h2 = reinterpret_cast<const __nv_bfloat162*>(h);
  const __nv_bfloat162* da2 = reinterpret_cast<const __nv_bfloat162*>(da);
  __nv_bfloat162* dh2 = reinterpret_cast<__nv_bfloat162*>(dh);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < pairs;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float2 v = __bfloat1622float2(h2[i]);
    const float2 g = __bfloat1622float2(da2[i]);
    const float sx = 1.0f / (1.0f + __expf(-v.x)), sy = 1.0f / (1.0f + __expf(-v.y));
    dh2[i] =
        __floats2bfloat162_rn(g.x * sx * (1.0f + v.x * (1.0f - sx)), g.y * sy * (1.0f + v.y * (1.0f - sy)));
  }
}

__global__ void f32_to_bf16_kernel(bf16* out, const float* in, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16_rn(in[i]);
}

__global__ void add_bf16_kernel(bf16* out, const bf16* a, const bf16* b, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16_rn(__bfloat162float(a[i]) + __bfloat162float(b[i]));
}

unsigned grid_for(int64_t n) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + 255) / 256, 1, 132 * 32));
}

void fill_bf16(bf16* p, int64_t n, uint64_t seed, float scale, cudaStream_t s) {
  fill_bf16_kernel<<<grid_for(n), 256, 0, s>>>(p, n, seed, scale);
  CUDA_CHECK(cudaGetLastError());
}
void fill_f32(float* p, int64_t n, float v, cudaStream_t s) {
  fill_f32_kernel<<<grid_for(n), 256, 0, s>>>(p, n, v);
  CUDA_CHECK(cudaGetLastError());
}
void silu_forward(bf16* a, const bf16* h, const int64_t* rows, int64_t cap, int64_t width, cudaStream_t s) {
  silu_forward_kernel<<<grid_for(cap * width / 2), 256, 0, s>>>(a, h, rows, cap, width);
  CUDA_CHECK(cudaGetLastError());
}
void silu_backward(bf16* dh, const bf16* da, const bf16* h, const int64_t* rows, int64_t cap, int64_t width,
                   cudaStream_t s) {
  silu_backward_kernel<<<grid_for(cap * width / 2), 256, 0, s>>>(dh, da, h, rows, cap, width);
  CUDA_CHECK(cudaGetLastError());
}

// ---- cuBLASLt: row-major C[M, N] = op(A) · op(B) (+ beta C), A [M, K] or [K, M] (ta), B [K, N] or
// [N, K] (tb); bf16 inputs, fp32 compute, C bf16 or fp32. Row-major C is column-major C^T = op(B)^T ·
// op(A)^T, so cuBLAS's "A" is our B and its "B" is our A. Descriptors and algorithm chosen once.
class LtGemm {
 public:
  LtGemm(cublasLtHandle_t handle, size_t ws_bytes, cudaDataType_t c_type, bool ta, bool tb, int64_t m,
         int64_t n, int64_t k, float beta)
      : handle_(handle), beta_(beta) {
    LT_CHECK(cublasLtMatmulDescCreate(&op_, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t op_a = tb ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLAS A = our B
    cublasOperation_t op_b = ta ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLAS B = our A
    LT_CHECK(cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
    LT_CHECK(cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
    if (tb) {
      LT_CHECK(cublasLtMatrixLayoutCreate(&a_, CUDA_R_16BF, k, n, k));
    } else {
      LT_CHECK(cublasLtMatrixLayoutCreate(&a_, CUDA_R_16BF, n, k, n));
    }
    if (ta) {
      LT_CHECK(cublasLtMatrixLayoutCreate(&b_, CUDA_R_16BF, m, k, m));
    } else {
      LT_CHECK(cublasLtMatrixLayoutCreate(&b_, CUDA_R_16BF, k, m, k));
    }
    LT_CHECK(cublasLtMatrixLayoutCreate(&c_, c_type, n, m, n));
    cublasLtMatmulPreference_t pref;
    LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                                  sizeof(ws_bytes)));
    int found = 0;
    LT_CHECK(cublasLtMatmulAlgoGetHeuristic(handle_, op_, a_, b_, c_, c_, pref, 1, &algo_, &found));
    CHECK_GT(found, 0) << "cuBLASLt has no algorithm for a " << m << "x" << n << "x" << k << " GEMM";
    LT_CHECK(cublasLtMatmulPreferenceDestroy(pref));
  }
  ~LtGemm() {
    cublasLtMatrixLayoutDestroy(a_);
    cublasLtMatrixLayoutDestroy(b_);
    cublasLtMatrixLayoutDestroy(c_);
    cublasLtMatmulDescDestroy(op_);
  }
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  void run(void* c, const bf16* a, const bf16* b, void* ws, size_t ws_bytes, cudaStream_t s) const {
    const float alpha = 1.0f;
    LT_CHECK(cublasLtMatmul(handle_, op_, &alpha, b, a_, a, b_, &beta_, c, c_, c, c_, &algo_.algo, ws,
                            ws_bytes, s));
  }

 private:
  cublasLtHandle_t handle_;
  float beta_;
  cublasLtMatmulDesc_t op_ = nullptr;
  cublasLtMatrixLayout_t a_ = nullptr, b_ = nullptr, c_ = nullptr;
  cublasLtMatmulHeuristicResult_t algo_{};
};

struct FfnShape {
  int64_t d, f, tokens;
  double wenet_ratio;
};

constexpr int64_t kExperts = 8, kTopK = 2;
constexpr int kWarmup = 3, kRuns = 20;

template <class Fn>
double median_ms(Fn&& fn, cudaStream_t s) {
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < kWarmup; ++i) fn();
  CUDA_CHECK(cudaStreamSynchronize(s));
  std::vector<float> ms(kRuns);
  for (int i = 0; i < kRuns; ++i) {
    CUDA_CHECK(cudaEventRecord(start, s));
    fn();
    CUDA_CHECK(cudaEventRecord(stop, s));
    CUDA_CHECK(cudaEventSynchronize(stop));
    CUDA_CHECK(cudaEventElapsedTime(&ms[i], start, stop));
  }
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  return 0.5 * (ms[kRuns / 2 - 1] + ms[kRuns / 2]);
}

struct Timing {
  double moe_ms, dense_ms;
};

Timing run_shape(const FfnShape& sh, cublasLtHandle_t lt, void* ws, size_t ws_bytes, cudaStream_t s) {
  const int64_t n = sh.tokens, d = sh.d, f = sh.f, e = kExperts, k = kTopK, rows = n * k;
  CHECK(f % 2 == 0 && d % 8 == 0) << "bench shapes must have even ffn and d % 8 == 0";
  RunContext ctx;
  ctx.device = Device::cuda;
  ctx.cuda_stream = s;
  const float sd = 1.0f / std::sqrt(static_cast<float>(d)), sf = 1.0f / std::sqrt(static_cast<float>(f));

  // ---- MoE buffers ----
  DevBuf<bf16> x(n * d), wg(e * d), w1(e * f * d), b1(e * f), w2(e * d * f), b2(e * d), dout(n * d);
  DevBuf<float> dwg(e * d), dw1(e * f * d), db1(e * f), dw2(e * d * f), db2(e * d);
  DevBuf<float> logits(n * e), vals(n * k), wts(n * k), dwts(n * k), dvals(n * k), dlogits(n * e);
  DevBuf<int32_t> idx(n * k), dest(n * k);
  DevBuf<int64_t> counts(e), offsets(e + 1);
  const size_t plan_ws_bytes = moe_permute_plan_workspace_bytes(n, e, k);
  DevBuf<uint8_t> plan_ws(static_cast<int64_t>(plan_ws_bytes));
  DevBuf<bf16> xp(rows * d), h(rows * f), a(rows * f), yp(rows * d), out(n * d);
  DevBuf<bf16> dyp(rows * d), da(rows * f), dh(rows * f), dxp(rows * d), dx_moe(n * d), dlogits_bf(n * e),
      dx_router(n * d), dx(n * d);
  fill_bf16(x.p, n * d, 1, 1.0f, s);
  fill_bf16(wg.p, e * d, 2, sd, s);
  fill_bf16(w1.p, e * f * d, 3, sd, s);
  fill_bf16(b1.p, e * f, 4, 0.1f, s);
  fill_bf16(w2.p, e * d * f, 5, sf, s);
  fill_bf16(b2.p, e * d, 6, 0.1f, s);
  fill_bf16(dout.p, n * d, 7, 1.0f, s);
  fill_f32(dwg.p, e * d, 0.0f, s);
  fill_f32(dw1.p, e * f * d, 0.0f, s);
  fill_f32(db1.p, e * f, 0.0f, s);
  fill_f32(dw2.p, e * d * f, 0.0f, s);
  fill_f32(db2.p, e * d, 0.0f, s);

  LtGemm router_fwd(lt, ws_bytes, CUDA_R_32F, false, true, n, e, d, 0.0f);   // logits = x · Wg^T
  LtGemm router_dx(lt, ws_bytes, CUDA_R_16BF, false, false, n, d, e, 0.0f);  // dx_r = dlogits · Wg
  LtGemm router_dw(lt, ws_bytes, CUDA_R_32F, true, false, e, d, n, 1.0f);    // dWg += dlogits^T · x

  auto moe_step = [&]() {
    // forward
    router_fwd.run(logits.p, x.p, wg.p, ws, ws_bytes, s);
    moe_topk_forward_cuda(vals.p, idx.p, logits.p, n, e, k, ctx);
    moe_routing_softmax_forward_cuda(wts.p, vals.p, n, k, ctx);
    moe_permute_plan_cuda(counts.p, offsets.p, dest.p, idx.p, nullptr, n, e, k, plan_ws.p, plan_ws_bytes,
                          ctx);
    moe_permute_forward_cuda(xp.p, x.p, dest.p, n, rows, k, d, ctx);
    grouped_gemm_forward_cuda(h.p, xp.p, w1.p, b1.p, offsets.p, rows, e, d, f, ctx);
    silu_forward(a.p, h.p, offsets.p + e, rows, f, s);
    grouped_gemm_forward_cuda(yp.p, a.p, w2.p, b2.p, offsets.p, rows, e, f, d, ctx);
    moe_unpermute_forward_cuda(out.p, yp.p, wts.p, dest.p, n, rows, k, d, ctx);
    // backward
    moe_unpermute_backward_cuda(dyp.p, dwts.p, dout.p, yp.p, wts.p, dest.p, n, rows, k, d, ctx);
    grouped_gemm_backward_cuda(da.p, dw2.p, db2.p, dyp.p, a.p, w2.p, offsets.p, rows, e, f, d, ctx);
    silu_backward(dh.p, da.p, h.p, offsets.p + e, rows, f, s);
    grouped_gemm_backward_cuda(dxp.p, dw1.p, db1.p, dh.p, xp.p, w1.p, offsets.p, rows, e, d, f, ctx);
    moe_permute_backward_cuda(dx_moe.p, dxp.p, dest.p, n, rows, k, d, ctx);
    moe_routing_softmax_backward_cuda(dvals.p, dwts.p, wts.p, n, k, ctx);
    moe_topk_backward_cuda(dlogits.p, dvals.p, idx.p, n, e, k, ctx);
    f32_to_bf16_kernel<<<grid_for(n * e), 256, 0, s>>>(dlogits_bf.p, dlogits.p, n * e);
    CUDA_CHECK(cudaGetLastError());
    router_dx.run(dx_router.p, dlogits_bf.p, wg.p, ws, ws_bytes, s);
    router_dw.run(dwg.p, dlogits_bf.p, x.p, ws, ws_bytes, s);
    add_bf16_kernel<<<grid_for(n * d), 256, 0, s>>>(dx.p, dx_moe.p, dx_router.p, n * d);
    CUDA_CHECK(cudaGetLastError());
  };
  const double moe_ms = median_ms(moe_step, s);

  // ---- dense FFN over the same k·N rows ----
  DevBuf<bf16> dw1d(f * d), dw2d(d * f);
  DevBuf<float> gdw1(f * d), gdw2(d * f);
  DevBuf<int64_t> dense_rows(1);
  fill_bf16(dw1d.p, f * d, 13, sd, s);
  fill_bf16(dw2d.p, d * f, 15, sf, s);
  fill_f32(gdw1.p, f * d, 0.0f, s);
  fill_f32(gdw2.p, d * f, 0.0f, s);
  CUDA_CHECK(cudaMemcpyAsync(dense_rows.p, &rows, sizeof(int64_t), cudaMemcpyHostToDevice, s));
  // Reuse the MoE activation buffers (same sizes): xp as the dense input, dyp as its output gradient.
  LtGemm fc1(lt, ws_bytes, CUDA_R_16BF, false, true, rows, f, d, 0.0f);      // h = x · W1^T
  LtGemm fc2(lt, ws_bytes, CUDA_R_16BF, false, true, rows, d, f, 0.0f);      // y = a · W2^T
  LtGemm fc2_dx(lt, ws_bytes, CUDA_R_16BF, false, false, rows, f, d, 0.0f);  // da = dy · W2
  LtGemm fc2_dw(lt, ws_bytes, CUDA_R_32F, true, false, d, f, rows, 1.0f);    // dW2 += dy^T · a
  LtGemm fc1_dx(lt, ws_bytes, CUDA_R_16BF, false, false, rows, d, f, 0.0f);  // dx = dh · W1
  LtGemm fc1_dw(lt, ws_bytes, CUDA_R_32F, true, false, f, d, rows, 1.0f);    // dW1 += dh^T · x
  auto dense_step = [&]() {
    fc1.run(h.p, xp.p, dw1d.p, ws, ws_bytes, s);
    silu_forward(a.p, h.p, dense_rows.p, rows, f, s);
    fc2.run(yp.p, a.p, dw2d.p, ws, ws_bytes, s);
    fc2_dx.run(da.p, dyp.p, dw2d.p, ws, ws_bytes, s);
    fc2_dw.run(gdw2.p, dyp.p, a.p, ws, ws_bytes, s);
    silu_backward(dh.p, da.p, h.p, dense_rows.p, rows, f, s);
    fc1_dx.run(dxp.p, dh.p, dw1d.p, ws, ws_bytes, s);
    fc1_dw.run(gdw1.p, dh.p, xp.p, ws, ws_bytes, s);
  };
  const double dense_ms = median_ms(dense_step, s);
  CUDA_CHECK(cudaStreamSynchronize(s));
  return {moe_ms, dense_ms};
}

}  // namespace
}  // namespace moeasr

int main() {
  using namespace moeasr;
  std::string why;
  if (cuda_usable_device_count(&why) == 0) {
    std::printf(
        "bench_gpu_moe_ffn_gpu: no usable CUDA device (%s); nothing measured. Run it on a machine with "
        "an NVIDIA GPU (scripts/gpu_check.sh).\n",
        why.c_str());
    return 0;
  }
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cublasLtHandle_t lt;
  LT_CHECK(cublasLtCreate(&lt));
  const size_t ws_bytes = size_t{32} << 20;
  void* ws = nullptr;
  CUDA_CHECK(cudaMalloc(&ws, ws_bytes));

  const std::vector<FfnShape> shapes = {
      {512, 2048, 16384, 10.0}, {512, 2048, 65536, 3.25}, {1024, 4096, 65536, 1.8}};
  std::printf("MoE FFN forward+backward vs one dense FFN over k*N rows (bf16, %d experts, top-%d), %s\n",
              static_cast<int>(kExperts), static_cast<int>(kTopK), prop.name);
  std::printf(
      "median of %d after %d warm-up runs; MoE expert GEMMs: grouped WMMA kernel; dense: cuBLASLt\n\n", kRuns,
      kWarmup);
  std::printf(
      "| shape | tokens | MoE ms | dense ms | ratio | target | meets | MoE expert TFLOP/s | WeNet ratio |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (const FfnShape& sh : shapes) {
    Timing r = run_shape(sh, lt, ws, ws_bytes, stream);
    const double ratio = r.moe_ms / r.dense_ms;
    // Expert GEMM FLOPs of forward + backward: 3 GEMMs per Linear direction pair, 2 Linears: 12 R d f.
    const double flops = 12.0 * static_cast<double>(sh.tokens * kTopK) * sh.d * sh.f;
    std::printf("| d%lld/ffn%lld/%lle/top-%lld | %lld | %.2f | %.2f | %.2f | <= 1.25 | %s | %.0f | %.2f |\n",
                static_cast<long long>(sh.d), static_cast<long long>(sh.f), static_cast<long long>(kExperts),
                static_cast<long long>(kTopK), static_cast<long long>(sh.tokens), r.moe_ms, r.dense_ms, ratio,
                ratio <= 1.25 ? "yes" : "no", flops / (r.moe_ms * 1e-3) / 1e12, sh.wenet_ratio);
  }
  CUDA_CHECK(cudaFree(ws));
  LT_CHECK(cublasLtDestroy(lt));
  CUDA_CHECK(cudaStreamDestroy(stream));
  return 0;
}
