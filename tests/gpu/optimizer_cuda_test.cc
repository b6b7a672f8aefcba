// tests/gpu/optimizer_cuda_test.cc — the CUDA Adam step, global gradient norm and clipping against
// kernels/cpu/optimizer.h on fresh random data: several Adam steps (fresh gradients and a changing lr
// each step) with weight decay off and on, beta1 on both sides of torch.lerp's 0.5 switch, n = 0, 1
// and odd sizes, states compared after every step, with and without the bf16 param copy; the norm over
// several buffers (empty ones included, one spanning many chunks), run twice for bit-equality; clipping
// above and below max_norm, from a norm left in device memory, and with NaN / inf gradients (norm
// non-finite, gradients untouched). Outputs are poisoned before the run where the op writes them.
//
// Tolerances: kFp32Tolerance for params, moments, clipped grads and the norm (the norm is fp32 on the
// device, double on the CPU, with the same squares summed in a different order in double); the bf16
// param copy is checked with kBf16Tolerance against the CPU params rounded to bf16.
#include "kernels/cuda/optimizer_cuda.h"

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "kernels/cpu/optimizer.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_util.h"

namespace moeasr {
namespace {

using testing::DeviceBuffer;

struct AdamCase {
  int64_t n;
  double beta1, beta2, eps, weight_decay;
  bool bf16_copy;
};

TEST(OptimizerCuda, AdamMatchesCpuStepByStep) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext cpu = testing::cpu_test_context(), gpu = testing::gpu_test_context();
  const AdamCase cases[] = {{0, 0.9, 0.999, 1e-8, 0.0, true},      {1, 0.9, 0.999, 1e-8, 0.0, false},
                            {1023, 0.9, 0.999, 1e-8, 0.0, true},   {1023, 0.9, 0.999, 1e-8, 1e-2, false},
                            {100003, 0.9, 0.98, 1e-8, 1e-6, true}, {4097, 0.3, 0.999, 1e-6, 0.0, true},
                            {4097, 0.3, 0.5, 1e-6, 0.1, false},    {257, 0.0, 0.0, 1e-8, 0.0, true}};
  for (const AdamCase& c : cases) {
    SCOPED_TRACE(::testing::Message() << "n=" << c.n << " beta1=" << c.beta1 << " beta2=" << c.beta2
                                      << " wd=" << c.weight_decay << " bf16 copy=" << c.bf16_copy);
    std::vector<float> param = testing::random_floats(c.n, 10 + c.n);
    std::vector<float> exp_avg(static_cast<size_t>(c.n), 0.0f), exp_avg_sq(static_cast<size_t>(c.n), 0.0f);
    DeviceBuffer<float> d_param(param), d_exp_avg(exp_avg), d_exp_avg_sq(exp_avg_sq);
    DeviceBuffer<__nv_bfloat16> d_param_bf16(c.n);
    for (int64_t step = 1; step <= 5; ++step) {
      SCOPED_TRACE(::testing::Message() << "step " << step);
      const double lr = 1e-3 * (1.0 + 0.5 * static_cast<double>(step));  // as a warmup scheduler would
      // Gradients of varying scale, including exact zeros in the first elements.
      std::vector<float> grad = testing::random_floats(c.n, 100 * step + c.n, -2.0f, 2.0f);
      for (int64_t i = 0; i < c.n && i < 3; ++i) grad[i] = 0.0f;
      DeviceBuffer<float> d_grad(grad);
      adam_update(param.data(), exp_avg.data(), exp_avg_sq.data(), grad.data(), lr, c.beta1, c.beta2, c.eps,
                  c.weight_decay, step, c.n, cpu);
      d_param_bf16.poison();
      adam_update_cuda(d_param.get(), d_exp_avg.get(), d_exp_avg_sq.get(),
                       c.bf16_copy ? d_param_bf16.get() : nullptr, d_grad.get(), lr, c.beta1, c.beta2, c.eps,
                       c.weight_decay, step, c.n, gpu);
      EXPECT_LE(testing::max_scaled_error(d_param.download(), param), testing::kFp32Tolerance) << "param";
      EXPECT_LE(testing::max_scaled_error(d_exp_avg.download(), exp_avg), testing::kFp32Tolerance)
          << "exp_avg";
      EXPECT_LE(testing::max_scaled_error(d_exp_avg_sq.download(), exp_avg_sq), testing::kFp32Tolerance)
          << "exp_avg_sq";
      if (c.bf16_copy) {
        auto copy = testing::from_bf16(d_param_bf16.download());
        auto want = testing::round_to_bf16(param);
        if (c.n > 0) {
          EXPECT_LE(testing::relative_norm_error(copy, want), testing::kBf16Tolerance) << "param_bf16";
        }
      }
    }
  }
}

// Device buffers of random gradients, their GradBuffer list (device pointers) and host copies.
struct Grads {
  std::vector<std::unique_ptr<DeviceBuffer<float>>> device;
  std::vector<std::vector<float>> host;
  std::vector<GradBuffer<float>> gpu_list, cpu_list;

  Grads(const std::vector<int64_t>& counts, uint64_t seed, float scale) {
    for (size_t k = 0; k < counts.size(); ++k) {
      host.push_back(testing::random_floats(counts[k], seed + k, -scale, scale));
    }
    for (size_t k = 0; k < counts.size(); ++k) {
      device.push_back(std::make_unique<DeviceBuffer<float>>(host[k]));
      gpu_list.push_back({device[k]->get(), counts[k]});
      cpu_list.push_back({host[k].data(), counts[k]});
    }
  }
  int64_t size() const { return static_cast<int64_t>(host.size()); }
};

const std::vector<int64_t> kCounts = {0, 1, 4097, 100003, 3, 0, 65536 * 2 + 5};

TEST(OptimizerCuda, GlobalGradNormMatchesCpuAndIsDeterministic) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext cpu = testing::cpu_test_context(), gpu = testing::gpu_test_context();
  for (const std::vector<int64_t>& counts :
       {kCounts, std::vector<int64_t>{}, std::vector<int64_t>{0, 0}, std::vector<int64_t>{7}}) {
    SCOPED_TRACE(::testing::Message() << counts.size() << " buffers");
    Grads grads(counts, 300 + counts.size(), 1.5f);
    const double want = global_grad_norm(grads.cpu_list.data(), grads.size(), cpu);
    const size_t bytes = global_grad_norm_workspace_bytes(grads.gpu_list.data(), grads.size());
    DeviceBuffer<char> workspace(static_cast<int64_t>(bytes));
    DeviceBuffer<float> norm(1);
    global_grad_norm_cuda(norm.get(), grads.gpu_list.data(), grads.size(), workspace.get(), bytes, gpu);
    const std::vector<float> got = norm.download();
    EXPECT_LE(testing::max_scaled_error(got, std::vector<double>{want}), testing::kFp32Tolerance)
        << got[0] << " vs " << want;
    norm.poison();
    global_grad_norm_cuda(norm.get(), grads.gpu_list.data(), grads.size(), workspace.get(), bytes, gpu);
    const std::vector<float> again = norm.download();
    EXPECT_EQ(std::memcmp(got.data(), again.data(), sizeof(float)), 0) << "norm not bit-identical on rerun";
    // The gradients are read only.
    for (int64_t k = 0; k < grads.size(); ++k) EXPECT_EQ(grads.device[k]->download(), grads.host[k]);
  }
}

TEST(OptimizerCuda, ClipGradNormMatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext cpu = testing::cpu_test_context(), gpu = testing::gpu_test_context();
  // The norm of kCounts' gradients in [-1.5, 1.5) is about 1.5 * sqrt(235,000 / 3) ~ 420: max_norm 5 clips,
  // max_norm 1e4 does not.
  for (double max_norm : {5.0, 1e4}) {
    SCOPED_TRACE(::testing::Message() << "max_norm " << max_norm);
    Grads grads(kCounts, 700, 1.5f);
    const double want_norm = clip_grad_norm(grads.cpu_list.data(), max_norm, grads.size(), cpu);
    const size_t bytes = global_grad_norm_workspace_bytes(grads.gpu_list.data(), grads.size());
    DeviceBuffer<char> workspace(static_cast<int64_t>(bytes));
    DeviceBuffer<float> norm(1);
    clip_grad_norm_cuda(norm.get(), grads.gpu_list.data(), max_norm, grads.size(), workspace.get(), bytes,
                        gpu);
    EXPECT_LE(testing::max_scaled_error(norm.download(), std::vector<double>{want_norm}),
              testing::kFp32Tolerance);
    for (int64_t k = 0; k < grads.size(); ++k) {
      auto got = grads.device[k]->download();
      if (max_norm > want_norm) {
        EXPECT_EQ(got, grads.host[k]) << "buffer " << k << " must be untouched";
      } else {
        EXPECT_LE(testing::max_scaled_error(got, grads.host[k]), testing::kFp32Tolerance) << "buffer " << k;
      }
    }
  }
}

TEST(OptimizerCuda, ClipReadsTheNormFromDeviceMemory) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext gpu = testing::gpu_test_context();
  Grads grads({5, 0, 1001}, 900, 1.0f);
  DeviceBuffer<float> norm(std::vector<float>{10.0f});  // as if all-reduced by the caller
  clip_grads_by_norm_cuda(grads.gpu_list.data(), norm.get(), 5.0, grads.size(), gpu);
  const float coef = static_cast<float>(5.0 / (10.0 + 1e-6));
  for (int64_t k = 0; k < grads.size(); ++k) {
    std::vector<float> want = grads.host[k];
    for (float& x : want) x *= coef;
    EXPECT_EQ(grads.device[k]->download(), want) << "buffer " << k;
  }
}

TEST(OptimizerCuda, NonFiniteGradientsGiveNonFiniteNormAndAreLeftAlone) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext gpu = testing::gpu_test_context();
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    SCOPED_TRACE(::testing::Message() << "bad value " << bad);
    Grads grads({100, 7}, 1100, 1.0f);
    grads.host[1][3] = bad;
    grads.device[1]->upload(grads.host[1]);
    const size_t bytes = global_grad_norm_workspace_bytes(grads.gpu_list.data(), grads.size());
    DeviceBuffer<char> workspace(static_cast<int64_t>(bytes));
    DeviceBuffer<float> norm(1);
    clip_grad_norm_cuda(norm.get(), grads.gpu_list.data(), 0.5, grads.size(), workspace.get(), bytes, gpu);
    const float got = norm.download()[0];
    if (std::isnan(bad)) {
      EXPECT_TRUE(std::isnan(got)) << got;
    } else {
      EXPECT_TRUE(std::isinf(got)) << got;
    }
    EXPECT_EQ(grads.device[0]->download(), grads.host[0]);
    auto second = grads.device[1]->download();
    for (size_t i = 0; i < second.size(); ++i) {
      if (i == 3) continue;
      EXPECT_EQ(second[i], grads.host[1][i]) << i;
    }
  }
}

}  // namespace
}  // namespace moeasr
