// tests/gpu/elementwise_cuda_test.cc — the CUDA residual add against the CPU op on fresh random data
// (odd sizes, n = 0 and 1). Output is poisoned with NaN before each run so an unwritten element fails.
// Skips with the reason when this machine has no usable GPU (label gpu).
#include "kernels/cuda/elementwise_cuda.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cpu/elementwise.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

TEST(ElementwiseCuda, ResidualAddMatchesCpu) {
  std::string why;
  if (cuda_usable_device_count(&why) == 0) GTEST_SKIP() << "no usable CUDA device (" << why << ")";
  RunContext cpu = testing::cpu_test_context();
  RunContext gpu = cpu;
  gpu.device = Device::cuda;
  for (int64_t n : {int64_t(0), int64_t(1), int64_t(1000003)}) {
    auto x = testing::random_floats(n, 100 + n), y = testing::random_floats(n, 200 + n);
    std::vector<float> want(n);
    residual_add_forward(want.data(), x.data(), y.data(), 0.5f, n, cpu);
    float *dx = nullptr, *dy = nullptr, *dout = nullptr;
    size_t bytes = std::max<int64_t>(n, 1) * sizeof(float);
    CUDA_CHECK(cudaMalloc(&dx, bytes));
    CUDA_CHECK(cudaMalloc(&dy, bytes));
    CUDA_CHECK(cudaMalloc(&dout, bytes));
    std::vector<float> got(n, std::numeric_limits<float>::quiet_NaN());
    CUDA_CHECK(cudaMemcpy(dx, x.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(dy, y.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(dout, got.data(), n * sizeof(float), cudaMemcpyHostToDevice));  // poison
    residual_add_forward_cuda(dout, dx, dy, 0.5f, n, gpu);
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(got.data(), dout, n * sizeof(float), cudaMemcpyDeviceToHost));
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_FALSE(std::isnan(got[i])) << "element " << i << " not written";
      ASSERT_NEAR(got[i], want[i], 1e-6f * (1 + std::fabs(want[i]))) << i;
    }
    cudaFree(dx);
    cudaFree(dy);
    cudaFree(dout);
  }
}

}  // namespace
}  // namespace moeasr
