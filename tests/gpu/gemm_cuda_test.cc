// tests/gpu/gemm_cuda_test.cc — the cuBLASLt GEMMs of kernels/cuda/gemm_cuda.h against the CPU op
// (kernels/cpu/gemm.h, double instantiation, reference loop) on fresh random data: odd sizes (M, N
// or K = 1, 7, 13, ...), K = 0, M or N = 0, all four transpose combinations, alpha/beta (beta = 0 on
// a NaN-poisoned C, which must be ignored), padded leading dimensions, pointers offset by one
// element (unaligned for cuBLASLt's default 256-byte assumption), strided batches with gaps (batch
// 0, 1, 3, 5), batched matmul forward/backward, and the bf16-in/fp32-out accumulate form.
// Elements outside the written matrices (padding, batch gaps) must keep their bytes.
// Tolerances: fp32 max_scaled_error <= 1e-5 against the double reference; bf16 outputs
// relative_norm_error <= 1e-2 on bf16-rounded inputs; fp32 outputs of bf16 inputs (tensor cores,
// fp32 accumulation in the hardware's order) relative_norm_error <= 2e-4.
#include "kernels/cuda/gemm_cuda.h"

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/gemm.h"
#include "kernels/cuda/cuda_context.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_util.h"

namespace moeasr {
namespace {

using testing::DeviceBuffer;

constexpr double kFp32FromBf16Tolerance = 2e-4;

// The values a T tensor holds after uploading v.
template <class T>
std::vector<double> held_values(const std::vector<float>& v) {
  std::vector<float> r = std::is_same<T, float>::value ? v : testing::round_to_bf16(v);
  return std::vector<double>(r.begin(), r.end());
}

template <class T>
void expect_close(const std::vector<float>& got, const std::vector<double>& want, const std::string& what) {
  if constexpr (std::is_same<T, float>::value) {
    EXPECT_LE(testing::max_scaled_error(got, want), testing::kFp32Tolerance) << what;
  } else {
    EXPECT_LE(testing::relative_norm_error(got, want), testing::kBf16Tolerance) << what;
  }
}

template <class T>
bool same_bytes(const T& x, const T& y) {
  return std::memcmp(&x, &y, sizeof(T)) == 0;
}

template <class T>
T poison_value() {
  T v{};
  unsigned char* bytes = reinterpret_cast<unsigned char*>(&v);
  for (size_t i = 0; i < sizeof(T); ++i) bytes[i] = 0xFF;  // as DeviceBuffer::poison()
  return v;
}

struct GemmCase {
  Transpose ta, tb;
  int64_t m, n, k;
  float alpha, beta;
  int64_t pad_a = 0, pad_b = 0, pad_c = 0;  // extra columns in the leading dimensions
  int64_t batch = 1;
  int64_t gap = 0;     // extra elements between batch items
  int64_t offset = 0;  // all pointers start this many elements into their buffers
  bool batched_api = false;
  bool use_workspace = true;
};

std::string describe(const GemmCase& c) {
  return "ta=" + std::to_string(c.ta == Transpose::kYes) + " tb=" + std::to_string(c.tb == Transpose::kYes) +
         " m=" + std::to_string(c.m) + " n=" + std::to_string(c.n) + " k=" + std::to_string(c.k) +
         " alpha=" + std::to_string(c.alpha) + " beta=" + std::to_string(c.beta) +
         " pads=" + std::to_string(c.pad_a) + "," + std::to_string(c.pad_b) + "," + std::to_string(c.pad_c) +
         " batch=" + std::to_string(c.batch) + " gap=" + std::to_string(c.gap) +
         " offset=" + std::to_string(c.offset) + " batched_api=" + std::to_string(c.batched_api);
}

// Runs one case through gemm_ex_cuda<TAB, TC> (or the gemm_cuda / gemm_strided_batched_cuda wrappers
// when TAB == TC) and compares with the double CPU reference; checks untouched bytes outside C_i.
template <class TAB, class TC>
void run_gemm_case(const GemmCase& cs, uint64_t seed, CudaContext& cuda, const RunContext& ctx) {
  SCOPED_TRACE(describe(cs));
  const int64_t a_rows = cs.ta == Transpose::kNo ? cs.m : cs.k;
  const int64_t a_cols = cs.ta == Transpose::kNo ? cs.k : cs.m;
  const int64_t b_rows = cs.tb == Transpose::kNo ? cs.k : cs.n;
  const int64_t b_cols = cs.tb == Transpose::kNo ? cs.n : cs.k;
  const int64_t lda = a_cols + cs.pad_a, ldb = b_cols + cs.pad_b, ldc = cs.n + cs.pad_c;
  const int64_t stride_a = a_rows * lda + cs.gap, stride_b = b_rows * ldb + cs.gap,
                stride_c = cs.m * ldc + cs.gap;
  const int64_t items = cs.batch > 0 ? cs.batch : 1;
  const int64_t size_a = cs.offset + items * stride_a, size_b = cs.offset + items * stride_b,
                size_c = cs.offset + items * stride_c;

  const std::vector<float> a = testing::random_floats(size_a, seed);
  const std::vector<float> b = testing::random_floats(size_b, seed + 1);
  const std::vector<float> c0 = testing::random_floats(size_c, seed + 2);
  DeviceBuffer<TAB> a_dev(testing::to_storage<TAB>(a)), b_dev(testing::to_storage<TAB>(b));
  DeviceBuffer<TC> c_dev(size_c);  // poisoned
  std::vector<TC> c_before(static_cast<size_t>(size_c), poison_value<TC>());
  if (cs.beta != 0.0f) {
    c_before = testing::to_storage<TC>(c0);
    c_dev.upload(c_before);
  }

  // Reference: the CPU op in double on the values the device buffers hold.
  const std::vector<double> a_ref = held_values<TAB>(a), b_ref = held_values<TAB>(b);
  std::vector<double> c_ref = cs.beta != 0.0f ? held_values<TC>(c0) : std::vector<double>(size_c, 0.0);
  const RunContext cpu = testing::cpu_test_context(/*use_reference_kernels=*/true);
  for (int64_t i = 0; i < cs.batch; ++i) {
    gemm<double>(c_ref.data() + cs.offset + i * stride_c, a_ref.data() + cs.offset + i * stride_a,
                 b_ref.data() + cs.offset + i * stride_b, cs.ta, cs.tb, cs.m, cs.n, cs.k, cs.alpha, cs.beta,
                 lda, ldb, ldc, cpu);
  }

  void* ws = cs.use_workspace ? cuda.cublaslt_workspace() : nullptr;
  const size_t ws_bytes = cs.use_workspace ? cuda.cublaslt_workspace_bytes() : 0;
  CUDA_CHECK(cudaDeviceSynchronize());  // uploads ran on the legacy stream; the op runs on cuda.stream()
  TC* c_ptr = c_dev.get() + cs.offset;
  const TAB* a_ptr = a_dev.get() + cs.offset;
  const TAB* b_ptr = b_dev.get() + cs.offset;
  if constexpr (std::is_same<TAB, TC>::value) {
    if (cs.batched_api) {
      gemm_strided_batched_cuda<TC>(c_ptr, ws, ws_bytes, a_ptr, b_ptr, cs.ta, cs.tb, cs.m, cs.n, cs.k,
                                    cs.alpha, cs.beta, lda, ldb, ldc, stride_a, stride_b, stride_c, cs.batch,
                                    ctx);
    } else {
      ASSERT_EQ(cs.batch, 1);
      gemm_cuda<TC>(c_ptr, ws, ws_bytes, a_ptr, b_ptr, cs.ta, cs.tb, cs.m, cs.n, cs.k, cs.alpha, cs.beta, lda,
                    ldb, ldc, ctx);
    }
  } else {
    gemm_ex_cuda<TAB, TC>(c_ptr, ws, ws_bytes, a_ptr, b_ptr, nullptr, cs.ta, cs.tb, cs.m, cs.n, cs.k,
                          cs.alpha, cs.beta, lda, ldb, ldc, stride_a, stride_b, stride_c, cs.batch, ctx);
  }
  const std::vector<TC> got = c_dev.download();

  std::vector<bool> inside(static_cast<size_t>(size_c), false);
  std::vector<float> got_region;
  std::vector<double> want_region;
  for (int64_t g = 0; g < cs.batch; ++g)
    for (int64_t i = 0; i < cs.m; ++i)
      for (int64_t j = 0; j < cs.n; ++j) {
        const int64_t idx = cs.offset + g * stride_c + i * ldc + j;
        inside[idx] = true;
        got_region.push_back(testing::to_f32(std::vector<TC>{got[idx]})[0]);
        want_region.push_back(c_ref[idx]);
      }
  if constexpr (std::is_same<TAB, TC>::value) {
    expect_close<TC>(got_region, want_region, "C");
  } else {
    EXPECT_LE(testing::relative_norm_error(got_region, want_region), kFp32FromBf16Tolerance)
        << "C (fp32 of bf16)";
  }
  int64_t clobbered = 0;
  for (int64_t idx = 0; idx < size_c; ++idx)
    if (!inside[idx] && !same_bytes(got[idx], c_before[idx])) ++clobbered;
  EXPECT_EQ(clobbered, 0) << "elements outside C_i were written";
}

struct GpuFixture {
  CudaContext cuda{0};
  RunContext ctx = testing::gpu_test_context();
  GpuFixture() { cuda.fill(&ctx); }
};

std::vector<GemmCase> single_cases() {
  std::vector<GemmCase> cases;
  const Transpose ts[] = {Transpose::kNo, Transpose::kYes};
  const int64_t shapes[][3] = {{1, 13, 7}, {13, 1, 7},  {1, 1, 1},     {7, 13, 1}, {5, 3, 0},   {0, 5, 3},
                               {5, 0, 3},  {17, 9, 33}, {64, 33, 129}, {2, 2, 2},  {31, 64, 16}};
  for (Transpose ta : ts)
    for (Transpose tb : ts)
      for (const auto& s : shapes) {
        cases.push_back({ta, tb, s[0], s[1], s[2], 1.0f, 0.0f});
        cases.push_back({ta, tb, s[0], s[1], s[2], 0.75f, -0.5f, 3, 1, 2});
      }
  // Unaligned pointers (offset one element) with and without padding; no workspace.
  cases.push_back({Transpose::kNo, Transpose::kYes, 9, 11, 13, 1.0f, 0.0f, 0, 0, 0, 1, 0, 1});
  cases.push_back({Transpose::kYes, Transpose::kNo, 9, 11, 13, -1.25f, 2.0f, 1, 2, 3, 1, 0, 1});
  cases.push_back({Transpose::kNo, Transpose::kNo, 33, 17, 65, 1.0f, 1.0f, 0, 0, 0, 1, 0, 0, false, false});
  // Large-ish.
  cases.push_back({Transpose::kNo, Transpose::kYes, 300, 257, 515, 1.0f, 0.0f});
  cases.push_back({Transpose::kYes, Transpose::kNo, 256, 512, 384, 0.5f, 1.0f});
  return cases;
}

template <class T>
void run_single_cases() {
  GpuFixture f;
  uint64_t seed = 1000;
  for (const GemmCase& cs : single_cases()) run_gemm_case<T, T>(cs, seed += 7, f.cuda, f.ctx);
}

TEST(GemmCuda, Fp32MatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  run_single_cases<float>();
}

TEST(GemmCuda, Bf16MatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  run_single_cases<__nv_bfloat16>();
}

std::vector<GemmCase> batched_cases() {
  std::vector<GemmCase> cases;
  const Transpose ts[] = {Transpose::kNo, Transpose::kYes};
  for (Transpose ta : ts)
    for (Transpose tb : ts)
      for (int64_t batch : {0, 1, 3, 5}) {
        GemmCase plain{ta, tb, 7, 13, 5, 1.0f, 0.0f};
        plain.batch = batch;
        plain.batched_api = true;
        cases.push_back(plain);
        GemmCase padded{ta, tb, 1, 9, 7, 0.5f, 1.5f, 2, 1, 3};
        padded.batch = batch;
        padded.gap = 5;  // odd gaps: every C_i has another alignment
        padded.batched_api = true;
        cases.push_back(padded);
      }
  GemmCase big{Transpose::kNo, Transpose::kYes, 64, 64, 48, 1.0f, 0.0f};
  big.batch = 32;
  big.batched_api = true;
  cases.push_back(big);
  GemmCase k0{Transpose::kNo, Transpose::kNo, 3, 4, 0, 1.0f, 0.5f};
  k0.batch = 3;
  k0.gap = 2;
  k0.batched_api = true;
  cases.push_back(k0);
  return cases;
}

template <class T>
void run_batched_cases() {
  GpuFixture f;
  uint64_t seed = 5000;
  for (const GemmCase& cs : batched_cases()) run_gemm_case<T, T>(cs, seed += 7, f.cuda, f.ctx);
}

TEST(GemmCuda, StridedBatchedFp32MatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  run_batched_cases<float>();
}

TEST(GemmCuda, StridedBatchedBf16MatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  run_batched_cases<__nv_bfloat16>();
}

// bf16 A/B, fp32 C accumulated with beta = 1: the parameter-gradient form (dW += dy^T x).
TEST(GemmCuda, Bf16InputsFp32AccumulateMatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  GpuFixture f;
  uint64_t seed = 9000;
  const int64_t shapes[][3] = {{13, 7, 1}, {1, 1, 5}, {33, 17, 100}, {96, 144, 256}, {5, 3, 0}};
  for (const auto& s : shapes) {
    GemmCase cs{Transpose::kYes, Transpose::kNo, s[0], s[1], s[2], 1.0f, 1.0f};
    run_gemm_case<__nv_bfloat16, float>(cs, seed += 7, f.cuda, f.ctx);
    GemmCase cs2{Transpose::kNo, Transpose::kYes, s[0], s[1], s[2], 1.0f, 0.0f, 1, 2, 3};
    run_gemm_case<__nv_bfloat16, float>(cs2, seed += 7, f.cuda, f.ctx);
  }
}

template <class T>
void run_batched_matmul() {
  GpuFixture f;
  const RunContext cpu = testing::cpu_test_context(/*use_reference_kernels=*/true);
  uint64_t seed = 7000;
  const int64_t shapes[][4] = {{0, 3, 5, 7}, {1, 1, 13, 7}, {3, 7, 13, 5}, {4, 33, 17, 64}, {2, 5, 1, 1}};
  for (Transpose tb : {Transpose::kNo, Transpose::kYes})
    for (const auto& s : shapes) {
      const int64_t g = s[0], m = s[1], n = s[2], k = s[3];
      SCOPED_TRACE("G=" + std::to_string(g) + " M=" + std::to_string(m) + " N=" + std::to_string(n) +
                   " K=" + std::to_string(k) + " trans_b=" + std::to_string(tb == Transpose::kYes));
      const auto a = testing::random_floats(g * m * k, seed += 3);
      const auto b = testing::random_floats(g * k * n, seed += 3);
      const auto dout = testing::random_floats(g * m * n, seed += 3);
      DeviceBuffer<T> a_dev(testing::to_storage<T>(a)), b_dev(testing::to_storage<T>(b)),
          dout_dev(testing::to_storage<T>(dout));
      DeviceBuffer<T> out_dev(g * m * n), da_dev(g * m * k), db_dev(g * k * n), db_only(g * k * n);
      const auto a_ref = held_values<T>(a), b_ref = held_values<T>(b), dout_ref = held_values<T>(dout);
      std::vector<double> out_ref(g * m * n), da_ref(g * m * k), db_ref(g * k * n);
      batched_matmul_forward<double>(out_ref.data(), a_ref.data(), b_ref.data(), tb, g, m, n, k, cpu);
      batched_matmul_backward<double>(da_ref.data(), db_ref.data(), dout_ref.data(), a_ref.data(),
                                      b_ref.data(), tb, g, m, n, k, cpu);
      CUDA_CHECK(cudaDeviceSynchronize());
      void* ws = f.cuda.cublaslt_workspace();
      const size_t wsb = f.cuda.cublaslt_workspace_bytes();
      batched_matmul_forward_cuda<T>(out_dev.get(), ws, wsb, a_dev.get(), b_dev.get(), tb, g, m, n, k, f.ctx);
      batched_matmul_backward_cuda<T>(da_dev.get(), db_dev.get(), ws, wsb, dout_dev.get(), a_dev.get(),
                                      b_dev.get(), tb, g, m, n, k, f.ctx);
      batched_matmul_backward_cuda<T>(nullptr, db_only.get(), ws, wsb, dout_dev.get(), a_dev.get(),
                                      b_dev.get(), tb, g, m, n, k, f.ctx);
      expect_close<T>(testing::to_f32(out_dev.download()), out_ref, "out");
      expect_close<T>(testing::to_f32(da_dev.download()), da_ref, "da");
      expect_close<T>(testing::to_f32(db_dev.download()), db_ref, "db");
      expect_close<T>(testing::to_f32(db_only.download()), db_ref, "db (da null)");
    }
}

TEST(GemmCuda, BatchedMatmulFp32MatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  run_batched_matmul<float>();
}

TEST(GemmCuda, BatchedMatmulBf16MatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  run_batched_matmul<__nv_bfloat16>();
}

// The same GEMM twice gives the same bits (no atomics, fixed algorithm for a fixed problem).
TEST(GemmCuda, Deterministic) {
  MOEASR_SKIP_WITHOUT_GPU();
  GpuFixture f;
  const int64_t m = 128, n = 96, k = 4096;  // long K: where split-K reductions would show
  const auto a = testing::random_floats(m * k, 11), b = testing::random_floats(k * n, 12);
  DeviceBuffer<float> a_dev(a), b_dev(b), c1(m * n), c2(m * n);
  CUDA_CHECK(cudaDeviceSynchronize());
  for (DeviceBuffer<float>* c : {&c1, &c2})
    gemm_cuda<float>(c->get(), f.cuda.cublaslt_workspace(), f.cuda.cublaslt_workspace_bytes(), a_dev.get(),
                     b_dev.get(), Transpose::kNo, Transpose::kNo, m, n, k, 1.0f, 0.0f, k, n, n, f.ctx);
  const auto g1 = c1.download(), g2 = c2.download();
  ASSERT_EQ(g1.size(), g2.size());
  EXPECT_EQ(std::memcmp(g1.data(), g2.data(), g1.size() * sizeof(float)), 0);
}

}  // namespace
}  // namespace moeasr
