// tests/gpu/linear_cuda_test.cc — kernels/cuda/linear_cuda.h against the CPU op (kernels/cpu/linear.h,
// double instantiation) on fresh random data: odd sizes (N, I, O = 1, 7, 13, ...), N = 0, I = 0,
// O = 0, a large-ish shape; bias null, 16-byte aligned (cuBLASLt epilogue) and misaligned by one
// element (the pre-fill fallback); y and dx NaN-poisoned (every element must be written); dW and db
// pre-filled with the same random values on both sides (checks +=), and runs with some grads null.
// Tolerances: fp32 max_scaled_error <= 1e-5; bf16 y, dx relative_norm_error <= 1e-2 on bf16-rounded
// inputs; the fp32 dW / db of the bf16 path relative_norm_error <= 2e-4 (bf16 products are exact,
// the tensor cores accumulate in fp32 in their own order).
#include "kernels/cuda/linear_cuda.h"

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/linear.h"
#include "kernels/cuda/cuda_context.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_util.h"

namespace moeasr {
namespace {

using testing::DeviceBuffer;

constexpr double kFp32FromBf16Tolerance = 2e-4;

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
// fp32 parameter gradients: exact fp32 math for T = float, bf16 inputs with fp32 accumulation otherwise.
template <class T>
void expect_grad_close(const std::vector<float>& got, const std::vector<double>& want,
                       const std::string& what) {
  if constexpr (std::is_same<T, float>::value) {
    EXPECT_LE(testing::max_scaled_error(got, want), testing::kFp32Tolerance) << what;
  } else {
    EXPECT_LE(testing::relative_norm_error(got, want), kFp32FromBf16Tolerance) << what;
  }
}

enum class BiasMode { kNone, kAligned, kMisaligned };

template <class T>
void run_linear_case(int64_t n, int64_t in, int64_t out, BiasMode bias_mode, bool all_grads, uint64_t seed,
                     CudaContext& cuda, const RunContext& ctx) {
  SCOPED_TRACE("N=" + std::to_string(n) + " I=" + std::to_string(in) + " O=" + std::to_string(out) +
               " bias=" + std::to_string(static_cast<int>(bias_mode)) +
               " all_grads=" + std::to_string(all_grads));
  const auto x = testing::random_floats(n * in, seed);
  const auto w = testing::random_floats(out * in, seed + 1);
  const auto b = testing::random_floats(out + 1, seed + 2);  // one spare element for the misaligned bias
  const auto dy = testing::random_floats(n * out, seed + 3);
  const auto dw0 = testing::random_floats(out * in, seed + 4);
  const auto db0 = testing::random_floats(out, seed + 5);

  DeviceBuffer<T> x_dev(testing::to_storage<T>(x)), w_dev(testing::to_storage<T>(w)),
      b_dev(testing::to_storage<T>(b));
  DeviceBuffer<T> dy_dev(testing::to_storage<T>(dy));
  DeviceBuffer<T> y_dev(n * out), dx_dev(n * in);  // poisoned
  DeviceBuffer<float> dw_dev(dw0), db_dev(db0);
  const T* bias_ptr = bias_mode == BiasMode::kNone      ? nullptr
                      : bias_mode == BiasMode::kAligned ? b_dev.get()
                                                        : b_dev.get() + 1;

  // Reference in double on the values the device holds.
  const RunContext cpu = testing::cpu_test_context();
  const auto x_ref = held_values<T>(x), w_ref = held_values<T>(w), b_ref = held_values<T>(b),
             dy_ref = held_values<T>(dy);
  const double* bias_ref = bias_mode == BiasMode::kNone      ? nullptr
                           : bias_mode == BiasMode::kAligned ? b_ref.data()
                                                             : b_ref.data() + 1;
  std::vector<double> y_ref(n * out), dx_ref(n * in), dw_ref(dw0.begin(), dw0.end()),
      db_ref(db0.begin(), db0.end());
  linear_forward<double>(y_ref.data(), x_ref.data(), w_ref.data(), bias_ref, n, in, out, cpu);
  linear_backward<double>(dx_ref.data(), dw_ref.data(), all_grads ? db_ref.data() : nullptr, dy_ref.data(),
                          x_ref.data(), w_ref.data(), n, in, out, cpu);

  CUDA_CHECK(cudaDeviceSynchronize());
  void* ws = cuda.cublaslt_workspace();
  const size_t wsb = cuda.cublaslt_workspace_bytes();
  linear_forward_cuda<T>(y_dev.get(), ws, wsb, x_dev.get(), w_dev.get(), bias_ptr, n, in, out, ctx);
  linear_backward_cuda<T>(dx_dev.get(), dw_dev.get(), all_grads ? db_dev.get() : nullptr, ws, wsb,
                          dy_dev.get(), x_dev.get(), w_dev.get(), n, in, out, ctx);

  expect_close<T>(testing::to_f32(y_dev.download()), y_ref, "y");
  expect_close<T>(testing::to_f32(dx_dev.download()), dx_ref, "dx");
  expect_grad_close<T>(dw_dev.download(), dw_ref, "dweight (+=)");
  expect_grad_close<T>(db_dev.download(), db_ref, "dbias (+=)");
}

template <class T>
void run_linear_cases() {
  CudaContext cuda(0);
  RunContext ctx = testing::gpu_test_context();
  cuda.fill(&ctx);
  const int64_t shapes[][3] = {{1, 7, 13}, {13, 7, 1}, {1, 1, 1},    {5, 1, 9},      {0, 4, 3},
                               {4, 0, 3},  {4, 3, 0},  {37, 65, 33}, {256, 144, 96}, {300, 256, 1024}};
  uint64_t seed = 100;
  for (const auto& s : shapes)
    for (BiasMode mode : {BiasMode::kNone, BiasMode::kAligned, BiasMode::kMisaligned})
      run_linear_case<T>(s[0], s[1], s[2], mode, /*all_grads=*/true, seed += 10, cuda, ctx);
  run_linear_case<T>(9, 5, 7, BiasMode::kAligned, /*all_grads=*/false, seed += 10, cuda, ctx);
}

TEST(LinearCuda, Fp32MatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  run_linear_cases<float>();
}

TEST(LinearCuda, Bf16MatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  run_linear_cases<__nv_bfloat16>();
}

// Null gradients are skipped: dx null leaves nothing written, dW / db null untouched by the others.
TEST(LinearCuda, NullGradientsAreSkipped) {
  MOEASR_SKIP_WITHOUT_GPU();
  CudaContext cuda(0);
  RunContext ctx = testing::gpu_test_context();
  cuda.fill(&ctx);
  const int64_t n = 6, in = 5, out = 4;
  const auto x = testing::random_floats(n * in, 1), w = testing::random_floats(out * in, 2),
             dy = testing::random_floats(n * out, 3), db0 = testing::random_floats(out, 4);
  DeviceBuffer<float> x_dev(x), w_dev(w), dy_dev(dy), db_dev(db0);
  const RunContext cpu = testing::cpu_test_context();
  std::vector<double> db_ref(db0.begin(), db0.end());
  const std::vector<double> xd(x.begin(), x.end()), wd(w.begin(), w.end()), dyd(dy.begin(), dy.end());
  linear_backward<double>(nullptr, nullptr, db_ref.data(), dyd.data(), xd.data(), wd.data(), n, in, out, cpu);
  CUDA_CHECK(cudaDeviceSynchronize());
  linear_backward_cuda<float>(nullptr, nullptr, db_dev.get(), nullptr, 0, dy_dev.get(), x_dev.get(),
                              w_dev.get(), n, in, out, ctx);
  EXPECT_LE(testing::max_scaled_error(db_dev.download(), db_ref), testing::kFp32Tolerance);
}

}  // namespace
}  // namespace moeasr
