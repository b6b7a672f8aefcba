// tests/gpu/softmax_cuda_test.cc — the CUDA softmax, log_softmax and attention softmax
// (kernels/cuda/softmax_cuda.h) against the CPU ops of kernels/cpu/softmax.h on fresh random data, fp32
// and bf16, forward and backward: 0 and 1 rows, C = 0, 1 and odd widths, a 5003-wide (vocabulary) row;
// no mask, a random keep-mask with fully masked rows and single-entry rows; attention masks with padded
// keys and fully masked (padded) queries, broadcast over heads. Masked outputs and gradients must be
// exactly 0. Outputs are poisoned DeviceBuffers (NaN): an unwritten element fails.
// Tolerances: fp32 max_scaled_error <= 1e-5; bf16 relative_norm_error <= 1e-2 plus a per-element
// max_scaled_error <= 3e-2 (the CPU reference runs in fp32 on the bf16-rounded inputs).
#include "kernels/cuda/softmax_cuda.h"

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/softmax.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_util.h"

namespace moeasr {
namespace {

using bf16 = __nv_bfloat16;
using testing::DeviceBuffer;

constexpr double kBf16ElementTolerance = 3e-2;

using testing::dtype_label;
using testing::representable;
using testing::to_f32;
using testing::to_storage;

template <class T>
void expect_matches(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  if (std::is_same<T, float>::value) {
    EXPECT_LE(testing::max_scaled_error(got, want), testing::kFp32Tolerance) << what << " [f32]";
  } else {
    EXPECT_LE(testing::relative_norm_error(got, want), testing::kBf16Tolerance) << what << " [bf16]";
    EXPECT_LE(testing::max_scaled_error(got, want), kBf16ElementTolerance) << what << " [bf16 per element]";
  }
}

// Where the CPU output is exactly 0 because the entry is masked (or its row is), the GPU's must be too.
void expect_zero_where(const std::vector<float>& got, const std::vector<uint8_t>& zero,
                       const std::string& what) {
  ASSERT_EQ(got.size(), zero.size()) << what;
  int64_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (zero[i] != 0 && got[i] != 0.0f && bad++ < 5)
      ADD_FAILURE() << what << ": element " << i << " = " << got[i];
  }
  EXPECT_EQ(bad, 0) << what << ": masked entries not exactly 0";
}

// A [rows, cols] keep-mask: ~25% masked at random, every 5th row fully masked, every 7th row keeps only
// its last entry.
std::vector<uint8_t> random_mask(int64_t rows, int64_t cols, uint64_t seed) {
  std::vector<float> u = testing::random_floats(rows * cols, seed, 0.0f, 1.0f);
  std::vector<uint8_t> mask(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < cols; ++j) {
      uint8_t keep = u[r * cols + j] >= 0.25f ? 1 : 0;
      if (r % 5 == 4) keep = 0;
      if (r % 7 == 3) keep = j == cols - 1 ? 1 : 0;
      mask[r * cols + j] = keep;
    }
  }
  return mask;
}

struct Shape {
  int64_t rows, cols;
};

// ---- softmax and log_softmax -----------------------------------------------------------------------------

template <class T>
void check_rows(bool log) {
  RunContext cpu = testing::cpu_test_context();
  RunContext g = testing::gpu_test_context();
  const std::vector<Shape> shapes = {{0, 5},   {1, 1},    {1, 7},    {5, 0},
                                     {37, 33}, {64, 256}, {3, 5003}, {1000, 17}};
  uint64_t seed = log ? 50000 : 40000;
  for (Shape s : shapes) {
    for (bool masked : {false, true}) {
      seed += 10;
      const int64_t n = s.rows * s.cols;
      const std::string what = std::string(log ? "log_softmax" : "softmax") + " R=" + std::to_string(s.rows) +
                               " C=" + std::to_string(s.cols) + (masked ? " masked " : " unmasked ") +
                               dtype_label<T>();
      std::vector<float> x = representable<T>(testing::random_floats(n, seed, -8.0f, 8.0f));
      std::vector<float> dy = representable<T>(testing::random_floats(n, seed + 1, -1.0f, 1.0f));
      std::vector<uint8_t> mask = masked ? random_mask(s.rows, s.cols, seed + 2) : std::vector<uint8_t>(n, 1);
      const uint8_t* mp = masked ? mask.data() : nullptr;
      std::vector<float> y(n), dx(n);
      if (log) {
        log_softmax_forward(y.data(), x.data(), mp, s.rows, s.cols, cpu);
      } else {
        softmax_forward(y.data(), x.data(), mp, s.rows, s.cols, cpu);
      }
      // The backward consumes the forward output as T holds it.
      std::vector<float> y_in = representable<T>(y);
      if (log) {
        log_softmax_backward(dx.data(), dy.data(), y_in.data(), mp, s.rows, s.cols, cpu);
      } else {
        softmax_backward(dx.data(), dy.data(), y_in.data(), s.rows, s.cols, cpu);
      }
      // Entries the CPU zeroes through the mask: masked ones, and whole fully masked rows.
      std::vector<uint8_t> zero(n, 0);
      for (int64_t r = 0; r < s.rows; ++r) {
        bool any = false;
        for (int64_t j = 0; j < s.cols; ++j) any = any || mask[r * s.cols + j] != 0;
        for (int64_t j = 0; j < s.cols; ++j)
          zero[r * s.cols + j] = (!any || mask[r * s.cols + j] == 0) ? 1 : 0;
      }

      DeviceBuffer<T> gx(to_storage<T>(x)), gdy(to_storage<T>(dy)), gyin(to_storage<T>(y_in)), gy(n), gdx(n);
      DeviceBuffer<uint8_t> gmask(mask);
      const uint8_t* gmp = masked ? gmask.get() : nullptr;
      if (log) {
        log_softmax_forward_cuda(gy.get(), gx.get(), gmp, s.rows, s.cols, g);
        log_softmax_backward_cuda(gdx.get(), gdy.get(), gyin.get(), gmp, s.rows, s.cols, g);
      } else {
        softmax_forward_cuda(gy.get(), gx.get(), gmp, s.rows, s.cols, g);
        softmax_backward_cuda(gdx.get(), gdy.get(), gyin.get(), s.rows, s.cols, g);
      }
      std::vector<float> got_y = to_f32(gy.download()), got_dx = to_f32(gdx.download());
      expect_matches<T>(got_y, y, what + " forward");
      expect_matches<T>(got_dx, dx, what + " backward");
      expect_zero_where(got_y, zero, what + " forward");
      expect_zero_where(got_dx, zero, what + " backward");
    }
  }
}

TEST(SoftmaxCuda, SoftmaxMatchesCpuF32) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_rows<float>(false);
}

TEST(SoftmaxCuda, SoftmaxMatchesCpuBf16) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_rows<bf16>(false);
}

TEST(SoftmaxCuda, LogSoftmaxMatchesCpuF32) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_rows<float>(true);
}

TEST(SoftmaxCuda, LogSoftmaxMatchesCpuBf16) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_rows<bf16>(true);
}

// Large logits (|x| up to 80): the max subtraction keeps exp finite, as on the CPU.
TEST(SoftmaxCuda, LargeLogitsStayFinite) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext cpu = testing::cpu_test_context();
  RunContext g = testing::gpu_test_context();
  const int64_t rows = 9, cols = 5003;
  std::vector<float> x = testing::random_floats(rows * cols, 77, -80.0f, 80.0f);
  std::vector<float> y(rows * cols), ly(rows * cols);
  softmax_forward(y.data(), x.data(), nullptr, rows, cols, cpu);
  log_softmax_forward(ly.data(), x.data(), nullptr, rows, cols, cpu);
  DeviceBuffer<float> gx(x), gy(rows * cols), gly(rows * cols);
  softmax_forward_cuda(gy.get(), gx.get(), nullptr, rows, cols, g);
  log_softmax_forward_cuda(gly.get(), gx.get(), nullptr, rows, cols, g);
  EXPECT_LE(testing::max_scaled_error(gy.download(), y), testing::kFp32Tolerance);
  EXPECT_LE(testing::max_scaled_error(gly.download(), ly), testing::kFp32Tolerance);
}

// ---- attention softmax
// -------------------------------------------------------------------------------------

struct AttentionShape {
  int64_t b, h, q, k;
};

template <class T>
void check_attention() {
  RunContext cpu = testing::cpu_test_context();
  RunContext g = testing::gpu_test_context();
  const std::vector<AttentionShape> shapes = {{0, 2, 3, 4},    {1, 1, 1, 1},  {2, 3, 5, 7},
                                              {2, 4, 33, 250}, {3, 2, 1, 17}, {1, 2, 3, 5003}};
  uint64_t seed = 60000;
  for (AttentionShape s : shapes) {
    for (bool masked : {false, true}) {
      seed += 10;
      const int64_t n = s.b * s.h * s.q * s.k;
      const std::string what = "attention B=" + std::to_string(s.b) + " H=" + std::to_string(s.h) +
                               " Tq=" + std::to_string(s.q) + " Tk=" + std::to_string(s.k) +
                               (masked ? " masked " : " unmasked ") + dtype_label<T>();
      std::vector<float> scores = representable<T>(testing::random_floats(n, seed, -6.0f, 6.0f));
      std::vector<float> dprobs = representable<T>(testing::random_floats(n, seed + 1, -1.0f, 1.0f));
      // WeNet-style mask [B, Tq, Tk]: batch b has its first len_b keys and queries; padded query rows
      // are fully masked; plus a few random holes among the valid keys.
      std::vector<uint8_t> mask(s.b * s.q * s.k, 1);
      std::vector<float> u = testing::random_floats(s.b * s.q * s.k, seed + 2, 0.0f, 1.0f);
      for (int64_t b = 0; b < s.b; ++b) {
        const int64_t len_k = s.k - (b * s.k) / 3, len_q = s.q - (b * s.q) / 3;
        for (int64_t i = 0; i < s.q; ++i) {
          for (int64_t j = 0; j < s.k; ++j) {
            const int64_t at = (b * s.q + i) * s.k + j;
            mask[at] = (i < len_q && j < len_k && (u[at] >= 0.1f || j == 0)) ? 1 : 0;
          }
        }
      }
      const uint8_t* mp = masked ? mask.data() : nullptr;
      std::vector<float> probs(n), dscores(n);
      attention_softmax_forward(probs.data(), scores.data(), mp, s.b, s.h, s.q, s.k, cpu);
      std::vector<float> probs_in = representable<T>(probs);
      attention_softmax_backward(dscores.data(), dprobs.data(), probs_in.data(), s.b, s.h, s.q, s.k, cpu);
      std::vector<uint8_t> zero(n, 0);
      if (masked) {
        for (int64_t b = 0; b < s.b; ++b)
          for (int64_t h = 0; h < s.h; ++h)
            for (int64_t i = 0; i < s.q; ++i) {
              const uint8_t* m = mask.data() + (b * s.q + i) * s.k;
              bool any = false;
              for (int64_t j = 0; j < s.k; ++j) any = any || m[j] != 0;
              for (int64_t j = 0; j < s.k; ++j)
                zero[((b * s.h + h) * s.q + i) * s.k + j] = (!any || m[j] == 0) ? 1 : 0;
            }
      }

      DeviceBuffer<T> gscores(to_storage<T>(scores)), gdprobs(to_storage<T>(dprobs));
      DeviceBuffer<T> gprobs_in(to_storage<T>(probs_in)), gprobs(n), gdscores(n);
      DeviceBuffer<uint8_t> gmask(mask);
      attention_softmax_forward_cuda(gprobs.get(), gscores.get(), masked ? gmask.get() : nullptr, s.b, s.h,
                                     s.q, s.k, g);
      attention_softmax_backward_cuda(gdscores.get(), gdprobs.get(), gprobs_in.get(), s.b, s.h, s.q, s.k, g);
      std::vector<float> got_p = to_f32(gprobs.download()), got_d = to_f32(gdscores.download());
      expect_matches<T>(got_p, probs, what + " forward");
      expect_matches<T>(got_d, dscores, what + " backward");
      expect_zero_where(got_p, zero, what + " forward");
      expect_zero_where(got_d, zero, what + " backward");
    }
  }
}

TEST(SoftmaxCuda, AttentionSoftmaxMatchesCpuF32) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_attention<float>();
}

TEST(SoftmaxCuda, AttentionSoftmaxMatchesCpuBf16) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_attention<bf16>();
}

}  // namespace
}  // namespace moeasr
