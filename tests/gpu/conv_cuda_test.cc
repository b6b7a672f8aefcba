// tests/gpu/conv_cuda_test.cc — kernels/cuda/conv_cuda.h against the CPU ops (kernels/cpu/conv.h,
// double instantiation, reference loops) on fresh random data.
//  * conv2d_3x3s2: odd and even H / W (even sizes leave the last input row/column unused by the
//    forward, so dx must still be written there), H or W < 3 (empty output, dx = 0), B = 0, Cin = 0,
//    Cout = 0, Cin = 1 (the first subsampling conv), a large-ish shape; bias null or not.
//  * depthwise_conv1d: symmetric and causal padding, K = 1, K > T, even K (causal), C = 1, C > 32
//    (several channel tiles), B = 0, T = 0, C = 0, a large-ish shape; bias null or not; some
//    gradients null.
// y / dx are NaN-poisoned, dweight / dbias pre-filled with the same random values on both sides (+=).
// Tolerances: fp32 max_scaled_error <= 1e-5; bf16 y, dx relative_norm_error <= 1e-2 on bf16-rounded
// inputs. The fp32 dweight / dbias of the bf16 path are computed in fp32 from exactly widened inputs
// (conv2d: cuDNN in fp32; depthwise: fp32 accumulation), so they are held to max_scaled_error 1e-5 too.
#include "kernels/cuda/conv_cuda.h"

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/conv.h"
#include "kernels/cuda/cuda_context.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_util.h"

namespace moeasr {
namespace {

using testing::DeviceBuffer;

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
void expect_grad_close(const std::vector<float>& got, const std::vector<double>& want,
                       const std::string& what) {
  EXPECT_LE(testing::max_scaled_error(got, want), testing::kFp32Tolerance) << what;
}

// ---- conv2d_3x3s2 ---------------------------------------------------------------------------------------

template <class T>
void run_conv2d_case(int64_t batch, int64_t cin, int64_t cout, int64_t h, int64_t w, bool with_bias,
                     uint64_t seed, const RunContext& ctx) {
  SCOPED_TRACE("B=" + std::to_string(batch) + " Cin=" + std::to_string(cin) +
               " Cout=" + std::to_string(cout) + " H=" + std::to_string(h) + " W=" + std::to_string(w) +
               " bias=" + std::to_string(with_bias));
  const int64_t ho = conv2d_3x3s2_output_size(h), wo = conv2d_3x3s2_output_size(w);
  const int64_t nx = batch * cin * h * w, nw = cout * cin * 9, ny = batch * cout * ho * wo;
  const auto x = testing::random_floats(nx, seed);
  const auto wt = testing::random_floats(nw, seed + 1);
  const auto b = testing::random_floats(cout, seed + 2);
  const auto dy = testing::random_floats(ny, seed + 3);
  const auto dw0 = testing::random_floats(nw, seed + 4);
  const auto db0 = testing::random_floats(cout, seed + 5);

  DeviceBuffer<T> x_dev(testing::to_storage<T>(x)), w_dev(testing::to_storage<T>(wt)),
      b_dev(testing::to_storage<T>(b));
  DeviceBuffer<T> dy_dev(testing::to_storage<T>(dy)), y_dev(ny), dx_dev(nx);
  DeviceBuffer<float> dw_dev(dw0), db_dev(db0);
  const size_t ws_bytes = conv2d_3x3s2_cuda_workspace_bytes<T>(batch, cin, cout, h, w, ctx);
  DeviceBuffer<unsigned char> ws(static_cast<int64_t>(ws_bytes));

  const RunContext cpu = testing::cpu_test_context(/*use_reference_kernels=*/true);
  const auto x_ref = held_values<T>(x), w_ref = held_values<T>(wt), b_ref = held_values<T>(b),
             dy_ref = held_values<T>(dy);
  std::vector<double> y_ref(ny), dx_ref(nx), dw_ref(dw0.begin(), dw0.end()), db_ref(db0.begin(), db0.end());
  conv2d_3x3s2_forward<double>(y_ref.data(), nullptr, x_ref.data(), w_ref.data(),
                               with_bias ? b_ref.data() : nullptr, batch, cin, cout, h, w, cpu);
  conv2d_3x3s2_backward<double>(dx_ref.data(), dw_ref.data(), db_ref.data(), nullptr, dy_ref.data(),
                                x_ref.data(), w_ref.data(), batch, cin, cout, h, w, cpu);

  CUDA_CHECK(cudaDeviceSynchronize());
  conv2d_3x3s2_forward_cuda<T>(y_dev.get(), ws.get(), ws_bytes, x_dev.get(), w_dev.get(),
                               with_bias ? b_dev.get() : nullptr, batch, cin, cout, h, w, ctx);
  conv2d_3x3s2_backward_cuda<T>(dx_dev.get(), dw_dev.get(), db_dev.get(), ws.get(), ws_bytes, dy_dev.get(),
                                x_dev.get(), w_dev.get(), batch, cin, cout, h, w, ctx);

  expect_close<T>(testing::to_f32(y_dev.download()), y_ref, "y");
  expect_close<T>(testing::to_f32(dx_dev.download()), dx_ref, "dx");
  expect_grad_close(dw_dev.download(), dw_ref, "dweight (+=)");
  expect_grad_close(db_dev.download(), db_ref, "dbias (+=)");
}

template <class T>
void run_conv2d_cases() {
  CudaContext cuda(0);
  RunContext ctx = testing::gpu_test_context();
  cuda.fill(&ctx);
  // {B, Cin, Cout, H, W}
  const int64_t shapes[][5] = {{1, 1, 1, 3, 3},    {2, 1, 4, 9, 8},   {3, 2, 5, 7, 10}, {2, 3, 4, 2, 9},
                               {2, 3, 4, 9, 1},    {0, 2, 3, 7, 7},   {2, 0, 3, 7, 7},  {2, 3, 0, 7, 7},
                               {1, 1, 16, 51, 80}, {4, 8, 16, 41, 40}};
  uint64_t seed = 300;
  for (const auto& s : shapes)
    for (bool bias : {false, true}) run_conv2d_case<T>(s[0], s[1], s[2], s[3], s[4], bias, seed += 10, ctx);
}

TEST(ConvCuda, Conv2dFp32MatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  run_conv2d_cases<float>();
}

TEST(ConvCuda, Conv2dBf16MatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  run_conv2d_cases<__nv_bfloat16>();
}

// Only the filter gradient, then only the input gradient: each works without the other.
TEST(ConvCuda, Conv2dPartialGradients) {
  MOEASR_SKIP_WITHOUT_GPU();
  CudaContext cuda(0);
  RunContext ctx = testing::gpu_test_context();
  cuda.fill(&ctx);
  const int64_t batch = 2, cin = 3, cout = 4, h = 11, w = 9;
  const int64_t nx = batch * cin * h * w, nw = cout * cin * 9;
  const int64_t ny = batch * cout * conv2d_3x3s2_output_size(h) * conv2d_3x3s2_output_size(w);
  const auto x = testing::random_floats(nx, 1), wt = testing::random_floats(nw, 2),
             dy = testing::random_floats(ny, 3), dw0 = testing::random_floats(nw, 4);
  DeviceBuffer<float> x_dev(x), w_dev(wt), dy_dev(dy), dw_dev(dw0), dx_dev(nx);
  const size_t ws_bytes = conv2d_3x3s2_cuda_workspace_bytes<float>(batch, cin, cout, h, w, ctx);
  DeviceBuffer<unsigned char> ws(static_cast<int64_t>(ws_bytes));
  const RunContext cpu = testing::cpu_test_context(true);
  const std::vector<double> xd(x.begin(), x.end()), wd(wt.begin(), wt.end()), dyd(dy.begin(), dy.end());
  std::vector<double> dw_ref(dw0.begin(), dw0.end()), dx_ref(nx);
  conv2d_3x3s2_backward<double>(dx_ref.data(), dw_ref.data(), nullptr, nullptr, dyd.data(), xd.data(),
                                wd.data(), batch, cin, cout, h, w, cpu);
  CUDA_CHECK(cudaDeviceSynchronize());
  conv2d_3x3s2_backward_cuda<float>(nullptr, dw_dev.get(), nullptr, ws.get(), ws_bytes, dy_dev.get(),
                                    x_dev.get(), w_dev.get(), batch, cin, cout, h, w, ctx);
  conv2d_3x3s2_backward_cuda<float>(dx_dev.get(), nullptr, nullptr, ws.get(), ws_bytes, dy_dev.get(),
                                    x_dev.get(), w_dev.get(), batch, cin, cout, h, w, ctx);
  expect_grad_close(dw_dev.download(), dw_ref, "dweight only");
  expect_grad_close(dx_dev.download(), dx_ref, "dx only");
}

// ---- depthwise conv1d -----------------------------------------------------------------------------------

template <class T>
void run_depthwise_case(int64_t batch, int64_t time, int64_t channels, int64_t k, Conv1dPadding padding,
                        bool with_bias, bool all_grads, uint64_t seed, const RunContext& ctx) {
  SCOPED_TRACE("B=" + std::to_string(batch) + " T=" + std::to_string(time) +
               " C=" + std::to_string(channels) + " K=" + std::to_string(k) +
               " causal=" + std::to_string(padding == Conv1dPadding::kCausal) +
               " bias=" + std::to_string(with_bias) + " all_grads=" + std::to_string(all_grads));
  const int64_t n = batch * time * channels;
  const auto x = testing::random_floats(n, seed);
  const auto wt = testing::random_floats(channels * k, seed + 1);
  const auto b = testing::random_floats(channels, seed + 2);
  const auto dy = testing::random_floats(n, seed + 3);
  const auto dw0 = testing::random_floats(channels * k, seed + 4);
  const auto db0 = testing::random_floats(channels, seed + 5);
  DeviceBuffer<T> x_dev(testing::to_storage<T>(x)), w_dev(testing::to_storage<T>(wt)),
      b_dev(testing::to_storage<T>(b));
  DeviceBuffer<T> dy_dev(testing::to_storage<T>(dy)), y_dev(n), dx_dev(n);
  DeviceBuffer<float> dw_dev(dw0), db_dev(db0);

  const RunContext cpu = testing::cpu_test_context(/*use_reference_kernels=*/true);
  const auto x_ref = held_values<T>(x), w_ref = held_values<T>(wt), b_ref = held_values<T>(b),
             dy_ref = held_values<T>(dy);
  std::vector<double> y_ref(n), dx_ref(n), dw_ref(dw0.begin(), dw0.end()), db_ref(db0.begin(), db0.end());
  depthwise_conv1d_forward<double>(y_ref.data(), x_ref.data(), w_ref.data(),
                                   with_bias ? b_ref.data() : nullptr, padding, batch, time, channels, k,
                                   cpu);
  depthwise_conv1d_backward<double>(dx_ref.data(), all_grads ? dw_ref.data() : nullptr, db_ref.data(),
                                    dy_ref.data(), x_ref.data(), w_ref.data(), padding, batch, time, channels,
                                    k, cpu);

  CUDA_CHECK(cudaDeviceSynchronize());
  depthwise_conv1d_forward_cuda<T>(y_dev.get(), x_dev.get(), w_dev.get(), with_bias ? b_dev.get() : nullptr,
                                   padding, batch, time, channels, k, ctx);
  depthwise_conv1d_backward_cuda<T>(dx_dev.get(), all_grads ? dw_dev.get() : nullptr, db_dev.get(),
                                    dy_dev.get(), x_dev.get(), w_dev.get(), padding, batch, time, channels, k,
                                    ctx);

  expect_close<T>(testing::to_f32(y_dev.download()), y_ref, "y");
  expect_close<T>(testing::to_f32(dx_dev.download()), dx_ref, "dx");
  expect_grad_close(dw_dev.download(), dw_ref, "dweight (+=)");
  expect_grad_close(db_dev.download(), db_ref, "dbias (+=)");
}

template <class T>
void run_depthwise_cases() {
  CudaContext cuda(0);
  RunContext ctx = testing::gpu_test_context();
  cuda.fill(&ctx);
  // {B, T, C, K}; K odd so both paddings apply
  const int64_t shapes[][4] = {{1, 1, 1, 1}, {2, 7, 13, 3}, {3, 5, 4, 7},  {2, 9, 33, 15},   {0, 4, 3, 3},
                               {2, 0, 3, 3}, {2, 4, 0, 3},  {1, 13, 1, 5}, {4, 200, 256, 15}};
  uint64_t seed = 700;
  for (Conv1dPadding padding : {Conv1dPadding::kSymmetric, Conv1dPadding::kCausal})
    for (const auto& s : shapes)
      for (bool bias : {false, true})
        run_depthwise_case<T>(s[0], s[1], s[2], s[3], padding, bias, /*all_grads=*/true, seed += 10, ctx);
  // Causal with an even kernel, and a run without dweight.
  run_depthwise_case<T>(3, 11, 40, 4, Conv1dPadding::kCausal, true, true, seed += 10, ctx);
  run_depthwise_case<T>(2, 9, 35, 5, Conv1dPadding::kSymmetric, true, /*all_grads=*/false, seed += 10, ctx);
}

TEST(ConvCuda, DepthwiseConv1dFp32MatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  run_depthwise_cases<float>();
}

TEST(ConvCuda, DepthwiseConv1dBf16MatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  run_depthwise_cases<__nv_bfloat16>();
}

}  // namespace
}  // namespace moeasr
