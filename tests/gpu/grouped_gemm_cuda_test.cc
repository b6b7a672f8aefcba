// tests/gpu/grouped_gemm_cuda_test.cc — the CUDA grouped expert GEMM (kernels/cuda/grouped_gemm_cuda.h)
// against the CPU Linear (kernels/cpu/linear.h, in double) applied expert by expert, on fresh random
// data: odd K / Nout (not multiples of the tiles or of 16-byte vectors), expert row counts 0, 1, 17,
// 130 and larger, E = 1, all experts empty (M = 0), all rows on one expert, with and without bias, and
// a row capacity m_max above M (rows [M, m_max) of Y and dX must stay untouched). dW and db are
// pre-filled with the same random values on both sides to check +=. fp32: max_scaled_error <=
// kFp32Tolerance; bf16 (on bf16-rounded inputs): relative_norm_error <= kBf16Tolerance, measured on
// the increments of dW and db. Outputs are poisoned DeviceBuffers. Skips without a GPU (label gpu).
#include "kernels/cuda/grouped_gemm_cuda.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/linear.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_util.h"

namespace moeasr {
namespace {

using testing::DeviceBuffer;

struct GemmCase {
  std::vector<int64_t> counts;  // rows per expert
  int64_t k, nout;
  bool bias;
};

const std::vector<GemmCase>& gemm_cases() {
  static const std::vector<GemmCase> cases = {
      {{0, 1, 17, 130}, 72, 200, true},       // the odd sizes of the brief
      {{5}, 16, 8, true},                     // E = 1
      {{0, 0, 0}, 32, 24, true},              // M = 0
      {{0, 300, 0}, 40, 64, false},           // every row on one expert, no bias
      {{3, 1, 2}, 5, 3, true},                // K, Nout not multiples of a vector
      {{129, 64}, 128, 128, true},            // tile multiples and one past
      {{700, 0, 1000, 129}, 256, 384, true},  // larger
      {{33, 250, 7, 0, 90}, 200, 72, true},   // Nout < K
  };
  return cases;
}

std::string case_name(const GemmCase& c) {
  std::string s = "counts={";
  for (int64_t r : c.counts) s += std::to_string(r) + ",";
  return s + "} K=" + std::to_string(c.k) + " Nout=" + std::to_string(c.nout) + (c.bias ? " bias" : "");
}

std::vector<double> to_double(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

std::vector<double> minus(const std::vector<float>& a, const std::vector<float>& b) {
  std::vector<double> out(a.size());
  for (size_t i = 0; i < a.size(); ++i) out[i] = double(a[i]) - double(b[i]);
  return out;
}

std::vector<double> minus(const std::vector<double>& a, const std::vector<float>& b) {
  std::vector<double> out(a.size());
  for (size_t i = 0; i < a.size(); ++i) out[i] = a[i] - double(b[i]);
  return out;
}

// True when every element of rows [first_row, end) of a poisoned buffer is still NaN.
template <class T>
bool rows_untouched(const std::vector<T>& buf, int64_t first_row, int64_t width) {
  std::vector<float> f = testing::to_f32(buf);
  for (size_t i = static_cast<size_t>(first_row * width); i < f.size(); ++i)
    if (!std::isnan(f[i])) return false;
  return true;
}

template <class T>
void run_case(const GemmCase& c, uint64_t seed) {
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  RunContext cpu = testing::cpu_test_context();
  RunContext gpu = testing::gpu_test_context();
  const int64_t e_count = static_cast<int64_t>(c.counts.size()), k = c.k, nout = c.nout;
  std::vector<int64_t> offsets(e_count + 1, 0);
  for (int64_t e = 0; e < e_count; ++e) offsets[e + 1] = offsets[e] + c.counts[e];
  const int64_t m = offsets[e_count], m_max = m + 37;  // capacity above M: the extra rows stay untouched

  auto input = [&](int64_t n, float lo = -1.0f, float hi = 1.0f) {
    std::vector<float> v = testing::random_floats(n, ++seed, lo, hi);
    return kBf16 ? testing::round_to_bf16(v) : v;
  };
  std::vector<float> x = input(m * k), w = input(e_count * nout * k), b = input(e_count * nout);
  std::vector<float> dy = input(m * nout);
  std::vector<float> dw0 = testing::random_floats(e_count * nout * k, ++seed);  // fp32 grads: not rounded
  std::vector<float> db0 = testing::random_floats(e_count * nout, ++seed);

  // CPU reference in double, expert by expert.
  std::vector<double> xd = to_double(x), wd = to_double(w), bd = to_double(b), dyd = to_double(dy);
  std::vector<double> want_y(m * nout), want_dx(m * k), want_dw = to_double(dw0), want_db = to_double(db0);
  for (int64_t e = 0; e < e_count; ++e) {
    const int64_t r0 = offsets[e], rows = c.counts[e];
    if (rows == 0) continue;
    linear_forward(want_y.data() + r0 * nout, xd.data() + r0 * k, wd.data() + e * nout * k,
                   c.bias ? bd.data() + e * nout : nullptr, rows, k, nout, cpu);
    linear_backward(want_dx.data() + r0 * k, want_dw.data() + e * nout * k, want_db.data() + e * nout,
                    dyd.data() + r0 * nout, xd.data() + r0 * k, wd.data() + e * nout * k, rows, k, nout, cpu);
  }

  // The x / dy buffers hold m_max rows (rows past M are never read, but give them values anyway).
  std::vector<float> x_cap = x, dy_cap = dy;
  x_cap.resize(m_max * k, 0.5f);
  dy_cap.resize(m_max * nout, 0.5f);
  DeviceBuffer<int64_t> d_offsets(offsets);
  DeviceBuffer<T> d_x(testing::to_storage<T>(x_cap)), d_w(testing::to_storage<T>(w)),
      d_b(testing::to_storage<T>(b));
  DeviceBuffer<T> d_dy(testing::to_storage<T>(dy_cap));
  DeviceBuffer<T> d_y(m_max * nout), d_dx(m_max * k);
  DeviceBuffer<float> d_dw(dw0), d_db(db0);

  grouped_gemm_forward_cuda<T>(d_y.get(), d_x.get(), d_w.get(), c.bias ? d_b.get() : nullptr, d_offsets.get(),
                               m_max, e_count, k, nout, gpu);
  // dX alone, then dW and db: also checks that null outputs are skipped.
  grouped_gemm_backward_cuda<T>(d_dx.get(), nullptr, nullptr, d_dy.get(), d_x.get(), d_w.get(),
                                d_offsets.get(), m_max, e_count, k, nout, gpu);
  grouped_gemm_backward_cuda<T>(nullptr, d_dw.get(), d_db.get(), d_dy.get(), d_x.get(), d_w.get(),
                                d_offsets.get(), m_max, e_count, k, nout, gpu);

  std::vector<T> y_raw = d_y.download(), dx_raw = d_dx.download();
  EXPECT_TRUE(rows_untouched(y_raw, m, nout)) << "Y rows past M were written";
  EXPECT_TRUE(rows_untouched(dx_raw, m, k)) << "dX rows past M were written";
  std::vector<float> got_y = testing::to_f32(y_raw), got_dx = testing::to_f32(dx_raw);
  got_y.resize(m * nout);
  got_dx.resize(m * k);
  std::vector<float> got_dw = d_dw.download(), got_db = d_db.download();
  if constexpr (kBf16) {
    EXPECT_LE(testing::relative_norm_error(got_y, want_y), testing::kBf16Tolerance);
    EXPECT_LE(testing::relative_norm_error(got_dx, want_dx), testing::kBf16Tolerance);
    EXPECT_LE(testing::relative_norm_error(minus(got_dw, dw0), minus(want_dw, dw0)), testing::kBf16Tolerance);
    EXPECT_LE(testing::relative_norm_error(minus(got_db, db0), minus(want_db, db0)), testing::kBf16Tolerance);
  } else {
    EXPECT_LE(testing::max_scaled_error(got_y, want_y), testing::kFp32Tolerance);
    EXPECT_LE(testing::max_scaled_error(got_dx, want_dx), testing::kFp32Tolerance);
    EXPECT_LE(testing::max_scaled_error(got_dw, want_dw), testing::kFp32Tolerance);
    EXPECT_LE(testing::max_scaled_error(got_db, want_db), testing::kFp32Tolerance);
  }
}

TEST(GroupedGemmCuda, Fp32MatchesCpuLinearPerExpert) {
  MOEASR_SKIP_WITHOUT_GPU();
  uint64_t seed = 7000;
  for (const GemmCase& c : gemm_cases()) {
    SCOPED_TRACE(case_name(c));
    run_case<float>(c, seed += 100);
  }
}

TEST(GroupedGemmCuda, Bf16MatchesCpuLinearPerExpert) {
  MOEASR_SKIP_WITHOUT_GPU();
  uint64_t seed = 8000;
  for (const GemmCase& c : gemm_cases()) {
    SCOPED_TRACE(case_name(c));
    run_case<__nv_bfloat16>(c, seed += 100);
  }
}

}  // namespace
}  // namespace moeasr
