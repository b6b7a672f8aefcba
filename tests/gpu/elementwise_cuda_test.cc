// tests/gpu/elementwise_cuda_test.cc — the CUDA elementwise ops (kernels/cuda/elementwise_cuda.h)
// against the CPU ops of kernels/cpu/elementwise.h on fresh random data, fp32 and bf16, every op and
// direction, n = 0, 1, odd sizes and a ~300k vector; GLU with 0 and 1 rows and odd C; in-place
// (aliased) calls; the fp32 <-> bf16 casts bit for bit against core/dtype.h (every bf16 pattern, random
// fp32 patterns and the rounding ties, NaN, infinities, overflow to inf).
// Every output is a poisoned DeviceBuffer (NaN), so an element that is never written fails.
// Tolerances (tests/gpu/gpu_test_util.h): fp32 max_scaled_error <= 1e-5; bf16 relative_norm_error <=
// 1e-2 plus a per-element max_scaled_error <= 3e-2 (one bf16 rounding of the output is <= 2^-9
// relative; the CPU reference runs in fp32 on the bf16-rounded inputs, so the two see the same values).
#include "kernels/cuda/elementwise_cuda.h"

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "core/dtype.h"
#include "kernels/cpu/elementwise.h"
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

RunContext cpu_ctx() {
  return testing::cpu_test_context();
}

const std::vector<int64_t>& sizes() {
  static const std::vector<int64_t> kSizes = {0, 1, 3, 37, 4099, 300001};
  return kSizes;
}

// ---- unary / binary maps ------------------------------------------------------------------------------

// One output from one or two inputs. cpu(out, in0, in1, n) on fp32 representable inputs; gpu(out, in0,
// in1, n) on device T buffers (in1 null for unary ops).
template <class T, class Cpu, class Gpu>
void check_map(const std::string& name, int num_inputs, float lo, float hi, uint64_t seed, Cpu cpu, Gpu gpu) {
  RunContext ctx = cpu_ctx();
  for (int64_t n : sizes()) {
    std::string what = name + " n=" + std::to_string(n) + " " + dtype_label<T>();
    std::vector<float> in0 = representable<T>(testing::random_floats(n, seed + 11 * n, lo, hi));
    std::vector<float> in1 = representable<T>(testing::random_floats(n, seed + 13 * n + 1, lo, hi));
    std::vector<float> want(n);
    cpu(want.data(), in0.data(), num_inputs > 1 ? in1.data() : nullptr, n, ctx);
    DeviceBuffer<T> d0(to_storage<T>(in0)), d1(to_storage<T>(in1)), dout(n);
    gpu(dout.get(), d0.get(), num_inputs > 1 ? d1.get() : nullptr, n);
    expect_matches<T>(to_f32(dout.download()), want, what);
  }
}

template <class T>
void check_all_maps() {
  RunContext g = testing::gpu_test_context();
  const float alpha = 0.37f;
  check_map<T>(
      "add_forward", 2, -2.0f, 2.0f, 100,
      [](float* o, const float* a, const float* b, int64_t n, const RunContext& c) {
        add_forward(o, a, b, n, c);
      },
      [&](T* o, const T* a, const T* b, int64_t n) { add_forward_cuda(o, a, b, n, g); });
  check_map<T>(
      "scale_forward", 1, -2.0f, 2.0f, 200,
      [&](float* o, const float* a, const float*, int64_t n, const RunContext& c) {
        scale_forward(o, a, alpha, n, c);
      },
      [&](T* o, const T* a, const T*, int64_t n) { scale_forward_cuda(o, a, alpha, n, g); });
  check_map<T>(
      "scale_backward", 1, -2.0f, 2.0f, 300,
      [&](float* o, const float* a, const float*, int64_t n, const RunContext& c) {
        scale_backward(o, a, alpha, n, c);
      },
      [&](T* o, const T* a, const T*, int64_t n) { scale_backward_cuda(o, a, alpha, n, g); });
  check_map<T>(
      "residual_add_forward", 2, -2.0f, 2.0f, 400,
      [&](float* o, const float* a, const float* b, int64_t n, const RunContext& c) {
        residual_add_forward(o, a, b, alpha, n, c);
      },
      [&](T* o, const T* a, const T* b, int64_t n) { residual_add_forward_cuda(o, a, b, alpha, n, g); });
  check_map<T>(
      "relu_forward", 1, -2.0f, 2.0f, 500,
      [](float* o, const float* a, const float*, int64_t n, const RunContext& c) {
        relu_forward(o, a, n, c);
      },
      [&](T* o, const T* a, const T*, int64_t n) { relu_forward_cuda(o, a, n, g); });
  check_map<T>(  // in0 = dout, in1 = x
      "relu_backward", 2, -2.0f, 2.0f, 600,
      [](float* o, const float* dy, const float* x, int64_t n, const RunContext& c) {
        relu_backward(o, dy, x, n, c);
      },
      [&](T* o, const T* dy, const T* x, int64_t n) { relu_backward_cuda(o, dy, x, n, g); });
  check_map<T>(
      "silu_forward", 1, -12.0f, 12.0f, 700,
      [](float* o, const float* a, const float*, int64_t n, const RunContext& c) {
        silu_forward(o, a, n, c);
      },
      [&](T* o, const T* a, const T*, int64_t n) { silu_forward_cuda(o, a, n, g); });
  check_map<T>(
      "silu_backward", 2, -12.0f, 12.0f, 800,
      [](float* o, const float* dy, const float* x, int64_t n, const RunContext& c) {
        silu_backward(o, dy, x, n, c);
      },
      [&](T* o, const T* dy, const T* x, int64_t n) { silu_backward_cuda(o, dy, x, n, g); });
  check_map<T>(
      "sigmoid_forward", 1, -40.0f, 40.0f, 900,
      [](float* o, const float* a, const float*, int64_t n, const RunContext& c) {
        sigmoid_forward(o, a, n, c);
      },
      [&](T* o, const T* a, const T*, int64_t n) { sigmoid_forward_cuda(o, a, n, g); });
  check_map<T>(  // in0 = dout, in1 = forward output (any value in (0, 1) is fine for the formula)
      "sigmoid_backward", 2, 0.0f, 1.0f, 1000,
      [](float* o, const float* dy, const float* y, int64_t n, const RunContext& c) {
        sigmoid_backward(o, dy, y, n, c);
      },
      [&](T* o, const T* dy, const T* y, int64_t n) { sigmoid_backward_cuda(o, dy, y, n, g); });
}

TEST(ElementwiseCuda, MapsMatchCpuF32) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_all_maps<float>();
}

TEST(ElementwiseCuda, MapsMatchCpuBf16) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_all_maps<bf16>();
}

// The original plumbing test: the float residual add (non-template call site).
TEST(ElementwiseCuda, ResidualAddMatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext cpu = cpu_ctx();
  RunContext gpu = testing::gpu_test_context();
  for (int64_t n : {int64_t(0), int64_t(1), int64_t(1000003)}) {
    auto x = testing::random_floats(n, 100 + n), y = testing::random_floats(n, 200 + n);
    std::vector<float> want(n);
    residual_add_forward(want.data(), x.data(), y.data(), 0.5f, n, cpu);
    DeviceBuffer<float> dx(x), dy(y), dout(n);
    residual_add_forward_cuda(dout.get(), dx.get(), dy.get(), 0.5f, n, gpu);
    EXPECT_LE(testing::max_scaled_error(dout.download(), want), testing::kFp32Tolerance) << "n=" << n;
  }
}

// ---- two-output backward ops, accumulate, in place --------------------------------------------------

template <class T>
void check_two_output_backwards() {
  RunContext cpu = cpu_ctx();
  RunContext g = testing::gpu_test_context();
  const float alpha = -1.25f;
  for (int64_t n : sizes()) {
    std::string what = "n=" + std::to_string(n) + " " + dtype_label<T>();
    std::vector<float> dout = representable<T>(testing::random_floats(n, 2000 + n, -3.0f, 3.0f));
    DeviceBuffer<T> d_dout(to_storage<T>(dout));
    // add_backward: both, then each alone (the skipped one must stay untouched: still poisoned).
    {
      std::vector<float> da(n), db(n);
      add_backward(da.data(), db.data(), dout.data(), n, cpu);
      DeviceBuffer<T> gda(n), gdb(n);
      add_backward_cuda(gda.get(), gdb.get(), d_dout.get(), n, g);
      expect_matches<T>(to_f32(gda.download()), da, "add_backward da " + what);
      expect_matches<T>(to_f32(gdb.download()), db, "add_backward db " + what);
      DeviceBuffer<T> only_a(n), only_b(n);
      add_backward_cuda(only_a.get(), static_cast<T*>(nullptr), d_dout.get(), n, g);
      expect_matches<T>(to_f32(only_a.download()), da, "add_backward da alone " + what);
      add_backward_cuda(static_cast<T*>(nullptr), only_b.get(), d_dout.get(), n, g);
      expect_matches<T>(to_f32(only_b.download()), db, "add_backward db alone " + what);
    }
    {
      std::vector<float> dx(n), dy(n);
      residual_add_backward(dx.data(), dy.data(), dout.data(), alpha, n, cpu);
      DeviceBuffer<T> gdx(n), gdy(n);
      residual_add_backward_cuda(gdx.get(), gdy.get(), d_dout.get(), alpha, n, g);
      expect_matches<T>(to_f32(gdx.download()), dx, "residual_add_backward dx " + what);
      expect_matches<T>(to_f32(gdy.download()), dy, "residual_add_backward dy " + what);
      DeviceBuffer<T> only_dy(n);
      residual_add_backward_cuda(static_cast<T*>(nullptr), only_dy.get(), d_dout.get(), alpha, n, g);
      expect_matches<T>(to_f32(only_dy.download()), dy, "residual_add_backward dy alone " + what);
    }
    {  // acc += alpha * x, acc pre-filled with a known random value on both sides
      std::vector<float> acc = representable<T>(testing::random_floats(n, 3000 + n, -1.0f, 1.0f));
      std::vector<float> x = representable<T>(testing::random_floats(n, 4000 + n, -1.0f, 1.0f));
      DeviceBuffer<T> gacc(to_storage<T>(acc)), gx(to_storage<T>(x));
      add_scaled_inplace(acc.data(), x.data(), alpha, n, cpu);
      add_scaled_inplace_cuda(gacc.get(), gx.get(), alpha, n, g);
      expect_matches<T>(to_f32(gacc.download()), acc, "add_scaled_inplace " + what);
    }
    {  // in place: out aliases x (SiLU) and dx aliases dout (ReLU backward)
      std::vector<float> x = representable<T>(testing::random_floats(n, 5000 + n, -6.0f, 6.0f));
      std::vector<float> want(n), want_dx(n);
      silu_forward(want.data(), x.data(), n, cpu);
      relu_backward(want_dx.data(), dout.data(), x.data(), n, cpu);
      DeviceBuffer<T> gx(to_storage<T>(x)), gdy(to_storage<T>(dout));
      relu_backward_cuda(gdy.get(), gdy.get(), gx.get(), n, g);
      silu_forward_cuda(gx.get(), gx.get(), n, g);
      expect_matches<T>(to_f32(gx.download()), want, "silu_forward in place " + what);
      expect_matches<T>(to_f32(gdy.download()), want_dx, "relu_backward in place " + what);
    }
  }
}

TEST(ElementwiseCuda, BackwardsAccumulateAndInPlaceF32) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_two_output_backwards<float>();
}

TEST(ElementwiseCuda, BackwardsAccumulateAndInPlaceBf16) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_two_output_backwards<bf16>();
}

// ---- GLU ------------------------------------------------------------------------------------------------

template <class T>
void check_glu() {
  RunContext cpu = cpu_ctx();
  RunContext g = testing::gpu_test_context();
  struct Shape {
    int64_t n, c;
  };
  for (Shape s :
       {Shape{0, 5}, Shape{1, 1}, Shape{1, 7}, Shape{3, 0}, Shape{13, 33}, Shape{257, 256}, Shape{2, 5003}}) {
    std::string what = "glu N=" + std::to_string(s.n) + " C=" + std::to_string(s.c) + " " + dtype_label<T>();
    std::vector<float> x =
        representable<T>(testing::random_floats(s.n * 2 * s.c, 6000 + s.n + s.c, -8.0f, 8.0f));
    std::vector<float> dout =
        representable<T>(testing::random_floats(s.n * s.c, 7000 + s.n + s.c, -1.0f, 1.0f));
    std::vector<float> out(s.n * s.c), dx(s.n * 2 * s.c);
    glu_forward(out.data(), x.data(), s.n, s.c, cpu);
    glu_backward(dx.data(), dout.data(), x.data(), s.n, s.c, cpu);
    DeviceBuffer<T> gx(to_storage<T>(x)), gdout(to_storage<T>(dout)), gout(s.n * s.c), gdx(s.n * 2 * s.c);
    glu_forward_cuda(gout.get(), gx.get(), s.n, s.c, g);
    glu_backward_cuda(gdx.get(), gdout.get(), gx.get(), s.n, s.c, g);
    expect_matches<T>(to_f32(gout.download()), out, what + " forward");
    expect_matches<T>(to_f32(gdx.download()), dx, what + " backward");
  }
}

TEST(ElementwiseCuda, GluMatchesCpuF32) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_glu<float>();
}

TEST(ElementwiseCuda, GluMatchesCpuBf16) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_glu<bf16>();
}

// ---- casts -----------------------------------------------------------------------------------------------

uint16_t bits_of(bf16 v) {
  uint16_t b;
  std::memcpy(&b, &v, sizeof(b));
  return b;
}

uint32_t bits_of(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof(b));
  return b;
}

float float_from_bits(uint32_t b) {
  float v;
  std::memcpy(&v, &b, sizeof(v));
  return v;
}

TEST(ElementwiseCuda, CastF32ToBf16IsBitExact) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext g = testing::gpu_test_context();
  std::vector<float> x = {0.0f,
                          -0.0f,
                          1.0f,
                          -1.0f,
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN(),
                          -std::numeric_limits<float>::quiet_NaN(),
                          float_from_bits(0x7f800001u),  // signalling NaN payload
                          float_from_bits(0xff812345u),
                          std::numeric_limits<float>::max(),  // rounds up to inf
                          -std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::denorm_min(),
                          std::numeric_limits<float>::min(),
                          float_from_bits(0x3f808000u),   // tie, even below: rounds down
                          float_from_bits(0x3f818000u),   // tie, odd below: rounds up
                          float_from_bits(0x3f808001u),   // just above a tie
                          float_from_bits(0x3f807fffu),   // just below a tie
                          float_from_bits(0x7f7f8000u)};  // tie at the top: rounds to inf
  std::mt19937 rng(12345);
  for (int i = 0; i < 1000003; ++i) x.push_back(float_from_bits(static_cast<uint32_t>(rng())));
  for (int64_t n : {int64_t(0), int64_t(1), static_cast<int64_t>(x.size())}) {
    std::vector<float> in(x.begin(), x.begin() + n);
    DeviceBuffer<float> gin(in);
    DeviceBuffer<bf16> gout(n);
    cast_f32_to_bf16_cuda(gout.get(), gin.get(), n, g);
    std::vector<bf16> got = gout.download();
    int64_t bad = 0;
    for (int64_t i = 0; i < n; ++i) {
      uint16_t want = float_to_bf16_bits(in[i]);
      if (bits_of(got[i]) != want && bad++ < 10) {
        ADD_FAILURE() << "element " << i << " f32 bits 0x" << std::hex << bits_of(in[i]) << ": got 0x"
                      << bits_of(got[i]) << " want 0x" << want;
      }
    }
    EXPECT_EQ(bad, 0) << "n=" << n;
  }
}

TEST(ElementwiseCuda, CastBf16ToF32IsBitExact) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext g = testing::gpu_test_context();
  std::vector<bf16> all(65536 + 3);
  for (size_t i = 0; i < all.size(); ++i) {
    uint16_t b = static_cast<uint16_t>(i * 40503u);  // every pattern (odd multiplier), then 3 more
    std::memcpy(static_cast<void*>(&all[i]), &b, sizeof(b));
  }
  for (int64_t n : {int64_t(0), int64_t(1), static_cast<int64_t>(all.size())}) {
    std::vector<bf16> in(all.begin(), all.begin() + n);
    DeviceBuffer<bf16> gin(in);
    DeviceBuffer<float> gout(n);
    cast_bf16_to_f32_cuda(gout.get(), gin.get(), n, g);
    std::vector<float> got = gout.download();
    int64_t bad = 0;
    for (int64_t i = 0; i < n; ++i) {
      uint32_t want = bits_of(bf16_bits_to_float(bits_of(in[i])));
      if (bits_of(got[i]) != want && bad++ < 10) {
        ADD_FAILURE() << "element " << i << ": got 0x" << std::hex << bits_of(got[i]) << " want 0x" << want;
      }
    }
    EXPECT_EQ(bad, 0) << "n=" << n;
  }
}

}  // namespace
}  // namespace moeasr
