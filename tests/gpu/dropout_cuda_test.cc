// tests/gpu/dropout_cuda_test.cc — the CUDA Philox dropout (kernels/cuda/dropout_cuda.h) against the CPU
// op of kernels/cpu/dropout.h: for the same RngKey and p the GPU keep-mask equals the CPU keep-mask bit
// for bit, fp32 forward and backward outputs equal the CPU's exactly, bf16 outputs equal the CPU's fp32
// result rounded once to bf16 (bit for bit). n = 0, 1, sizes around the 4-element Philox block, and a
// million-element vector (whose kept fraction must be ~1 - p, so an all-kept or all-dropped bug cannot
// pass); several keys (seed, step, stream); p = 0 (exact copy), 0.1, 0.5, 0.9; in-place calls.
// Outputs are poisoned DeviceBuffers (NaN / 0xFF): an unwritten element fails.
#include "kernels/cuda/dropout_cuda.h"

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/philox.h"
#include "kernels/cpu/dropout.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_util.h"

namespace moeasr {
namespace {

using bf16 = __nv_bfloat16;
using testing::DeviceBuffer;

const std::vector<int64_t>& sizes() {
  static const std::vector<int64_t> kSizes = {0, 1, 3, 4, 5, 7, 1023, 1000003};
  return kSizes;
}

std::vector<RngKey> keys() {
  RngKey a;
  a.seed = 1234;
  a.purpose = RngPurpose::kDropout;
  a.step = 7;
  a.stream = 3;
  RngKey b = a;
  b.seed = 0xDEADBEEFCAFEull;
  b.epoch = 2;
  b.step = 123456;
  b.rank = 5;
  b.stream = 41;
  return {a, b};
}

uint32_t bits_of(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof(b));
  return b;
}

// Bitwise equality of two float vectors, first mismatches reported.
void expect_same_bits(const std::vector<float>& got, const std::vector<float>& want,
                      const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int64_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (bits_of(got[i]) != bits_of(want[i]) && bad++ < 5)
      ADD_FAILURE() << what << ": element " << i << " got " << got[i] << " want " << want[i];
  }
  EXPECT_EQ(bad, 0) << what;
}

TEST(DropoutCuda, KeepMaskMatchesCpuBitForBit) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext cpu = testing::cpu_test_context();
  RunContext g = testing::gpu_test_context();
  for (const RngKey& key : keys()) {
    PhiloxStream stream = philox_stream(key);
    for (double p : {0.0, 0.1, 0.5, 0.9}) {
      for (int64_t n : sizes()) {
        const std::string what =
            "mask n=" + std::to_string(n) + " p=" + std::to_string(p) + " seed=" + std::to_string(key.seed);
        std::vector<uint8_t> want(n);
        dropout_keep_mask(want.data(), stream, p, n, cpu);
        DeviceBuffer<uint8_t> got(n);
        dropout_keep_mask_cuda(got.get(), stream, p, n, g);
        std::vector<uint8_t> got_host = got.download();
        int64_t bad = 0;
        for (int64_t i = 0; i < n; ++i) {
          if (got_host[i] != want[i] && bad++ < 5)
            ADD_FAILURE() << what << ": element " << i << " got " << int(got_host[i]) << " want "
                          << int(want[i]);
        }
        EXPECT_EQ(bad, 0) << what;
        if (n == 1000003) {
          int64_t kept = 0;
          for (uint8_t m : got_host) kept += m;
          EXPECT_NEAR(static_cast<double>(kept) / n, 1.0 - p, 0.005) << what << ": kept fraction";
        }
      }
    }
  }
}

TEST(DropoutCuda, F32ForwardBackwardEqualCpuExactly) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext cpu = testing::cpu_test_context();
  RunContext g = testing::gpu_test_context();
  uint64_t seed = 70000;
  for (const RngKey& key : keys()) {
    PhiloxStream stream = philox_stream(key);
    for (double p : {0.0, 0.1, 0.5, 0.9}) {
      for (int64_t n : sizes()) {
        seed += 2;
        const std::string what = "f32 n=" + std::to_string(n) + " p=" + std::to_string(p);
        std::vector<float> x = testing::random_floats(n, seed, -2.0f, 2.0f);
        std::vector<float> dy = testing::random_floats(n, seed + 1, -2.0f, 2.0f);
        std::vector<float> y(n), dx(n);
        std::vector<uint8_t> mask(n);
        dropout_forward(y.data(), x.data(), stream, p, n, cpu);
        dropout_backward(dx.data(), dy.data(), stream, p, n, cpu);
        dropout_keep_mask(mask.data(), stream, p, n, cpu);
        DeviceBuffer<float> gx(x), gdy(dy), gy(n), gdx(n);
        dropout_forward_cuda(gy.get(), gx.get(), stream, p, n, g);
        dropout_backward_cuda(gdx.get(), gdy.get(), stream, p, n, g);
        std::vector<float> got_y = gy.download();
        expect_same_bits(got_y, y, what + " forward");
        expect_same_bits(gdx.download(), dx, what + " backward");
        // Dropped elements are exactly 0.
        for (int64_t i = 0; i < n && i < 4096; ++i) {
          if (mask[i] == 0) {
            ASSERT_EQ(got_y[i], 0.0f) << what << " element " << i;
          }
        }
        // In place: y aliases x, dx aliases dy.
        dropout_forward_cuda(gx.get(), gx.get(), stream, p, n, g);
        dropout_backward_cuda(gdy.get(), gdy.get(), stream, p, n, g);
        expect_same_bits(gx.download(), y, what + " forward in place");
        expect_same_bits(gdy.download(), dx, what + " backward in place");
      }
    }
  }
}

TEST(DropoutCuda, Bf16EqualsCpuRoundedOnce) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext cpu = testing::cpu_test_context();
  RunContext g = testing::gpu_test_context();
  uint64_t seed = 80000;
  for (const RngKey& key : keys()) {
    PhiloxStream stream = philox_stream(key);
    for (double p : {0.0, 0.1, 0.5, 0.9}) {
      for (int64_t n : sizes()) {
        seed += 2;
        const std::string what = "bf16 n=" + std::to_string(n) + " p=" + std::to_string(p);
        std::vector<float> x = testing::round_to_bf16(testing::random_floats(n, seed, -2.0f, 2.0f));
        std::vector<float> dy = testing::round_to_bf16(testing::random_floats(n, seed + 1, -2.0f, 2.0f));
        std::vector<float> y(n), dx(n);
        dropout_forward(y.data(), x.data(), stream, p, n, cpu);
        dropout_backward(dx.data(), dy.data(), stream, p, n, cpu);
        DeviceBuffer<bf16> gx(testing::to_bf16(x)), gdy(testing::to_bf16(dy)), gy(n), gdx(n);
        dropout_forward_cuda(gy.get(), gx.get(), stream, p, n, g);
        dropout_backward_cuda(gdx.get(), gdy.get(), stream, p, n, g);
        expect_same_bits(testing::from_bf16(gy.download()), testing::round_to_bf16(y), what + " forward");
        expect_same_bits(testing::from_bf16(gdx.download()), testing::round_to_bf16(dx), what + " backward");
      }
    }
  }
}

}  // namespace
}  // namespace moeasr
