// tests/gpu/layout_cuda_test.cc — kernels/cuda/layout_cuda.h against the CPU ops of kernels/cpu/layout.h
// (double instantiation, run on the values the device holds) on fresh random data, fp32 and bf16, every
// op and direction: odd sizes and zero-size cases (each dimension 0 in turn), masks with zeros and null
// masks, lpad 0 and > 0, the in-place calls layout.h allows (masked_crop_rows with lpad 0, cmvn and
// scale_add_table with out == x), the positional table read at an offset, and split_heads' dbias
// accumulated onto a nonzero starting value with either gradient skipped.
// Every output is a poisoned DeviceBuffer (NaN), so an element that is never written fails; fill and
// copy get one spare element that must stay poisoned. Rows that the masked row ops must not read (the
// dropped lpad rows, masked frames) hold NaN in the input, so reading one fails too.
// Comparisons: pure data movement (fill, copy, transpose, split_heads without bias, the masked row
// ops) must be exact, bit for bit in value. Arithmetic (split_heads with bias, cmvn, scale_add_table)
// uses the documented tolerances of tests/gpu/gpu_test_util.h: fp32 max_scaled_error <= 1e-5, bf16
// relative_norm_error <= 1e-2. split_heads' dbias is fp32 for both T and sums the exact values the
// device holds, so it is held to the fp32 tolerance for both (only the summation order differs).
#include "kernels/cuda/layout_cuda.h"

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/layout.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_util.h"

namespace moeasr {
namespace {

using bf16 = __nv_bfloat16;
using testing::DeviceBuffer;
using testing::dtype_label;
using testing::to_storage;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// The values a T tensor holds after uploading x, in double (the CPU reference runs on these).
template <class T>
std::vector<double> held(const std::vector<float>& x) {
  std::vector<float> r = testing::representable<T>(x);
  return std::vector<double>(r.begin(), r.end());
}

std::vector<double> to_double(const std::vector<float>& x) {
  return std::vector<double>(x.begin(), x.end());
}

template <class T>
std::vector<float> downloaded(const DeviceBuffer<T>& buf) {
  return testing::to_f32(buf.download());
}

// Arithmetic ops: the documented tolerances.
template <class T>
void expect_close(const std::vector<float>& got, const std::vector<double>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  if constexpr (std::is_same<T, float>::value) {
    EXPECT_LE(testing::max_scaled_error(got, want), testing::kFp32Tolerance) << what << " [f32]";
  } else {
    EXPECT_LE(testing::relative_norm_error(got, want), testing::kBf16Tolerance) << what << " [bf16]";
  }
}

// Data movement: every element equal (a NaN never is), the first mismatch reported. Implies both
// tolerances.
void expect_exact(const std::vector<float>& got, const std::vector<double>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(static_cast<double>(got[i]), want[i]) << what << ": first mismatch at element " << i;
  }
}

// A [n] validity mask with zeros and ones (element 0 is 0, element 1 is 1, the rest ~70% ones).
std::vector<uint8_t> random_mask(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution valid(0.7);
  std::vector<uint8_t> mask(static_cast<size_t>(n));
  for (auto& m : mask) m = valid(rng) ? 1 : 0;
  if (n >= 1) mask[0] = 0;
  if (n >= 2) mask[1] = 1;
  return mask;
}

std::string dims(std::initializer_list<int64_t> sizes) {
  std::string s;
  for (int64_t v : sizes) s += (s.empty() ? "" : "x") + std::to_string(v);
  return s;
}

// ---- fill / copy --------------------------------------------------------------------------------------

const int64_t kFlatSizes[] = {0, 1, 37, 4099, 300001};

template <class T>
void check_fill() {
  const RunContext cpu = testing::cpu_test_context(), gpu = testing::gpu_test_context();
  for (int64_t n : kFlatSizes) {
    // +0 takes the memset path; -0 (sign bit set) and the others the kernel.
    for (float value : {0.0f, -0.0f, 1.5f, -3.25f}) {
      const std::string what =
          "fill_constant n=" + std::to_string(n) + " value=" + std::to_string(value) + " " + dtype_label<T>();
      std::vector<double> want(static_cast<size_t>(n));
      fill_constant<double>(want.data(), static_cast<double>(value), n, cpu);
      DeviceBuffer<T> out(n + 1);  // one spare element that must stay poisoned
      fill_constant_cuda<T>(out.get(), to_storage<T>({value})[0], n, gpu);
      std::vector<float> got = downloaded(out);
      EXPECT_TRUE(std::isnan(got[n])) << what << ": wrote past n";
      got.pop_back();
      expect_exact(got, want, what);
      if (n > 0) {
        EXPECT_EQ(std::signbit(got[0]), std::signbit(value)) << what << ": sign of zero";
      }
    }
  }
}

template <class T>
void check_copy() {
  const RunContext cpu = testing::cpu_test_context(), gpu = testing::gpu_test_context();
  for (int64_t n : kFlatSizes) {
    const std::string what = "copy_elements n=" + std::to_string(n) + " " + dtype_label<T>();
    const auto src = testing::random_floats(n, 10 + n, -4.0f, 4.0f);
    const auto src_ref = held<T>(src);
    std::vector<double> want(static_cast<size_t>(n));
    copy_elements<double>(want.data(), src_ref.data(), n, cpu);
    DeviceBuffer<T> d_src(to_storage<T>(src)), d_dst(n + 1);
    copy_elements_cuda<T>(d_dst.get(), d_src.get(), n, gpu);
    std::vector<float> got = downloaded(d_dst);
    EXPECT_TRUE(std::isnan(got[n])) << what << ": wrote past n";
    got.pop_back();
    expect_exact(got, want, what);
  }
}

TEST(LayoutCuda, FillConstantMatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_fill<float>();
  check_fill<bf16>();
}

TEST(LayoutCuda, CopyElementsMatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_copy<float>();
  check_copy<bf16>();
}

// ---- transpose_middle -----------------------------------------------------------------------------

template <class T>
void check_transpose_middle() {
  const RunContext cpu = testing::cpu_test_context(), gpu = testing::gpu_test_context();
  struct Shape {
    int64_t a, i, j, k;
  };
  // [B, T, H, dk] and Conv2dSubsampling4's [B, C, T', F'] among odd and empty shapes.
  const Shape shapes[] = {{0, 3, 4, 5}, {2, 0, 3, 4},   {2, 3, 0, 4},   {2, 3, 4, 0}, {1, 1, 1, 1},
                          {3, 5, 7, 2}, {2, 17, 4, 64}, {4, 3, 33, 19}, {2, 1, 9, 1}, {3, 8, 37, 1}};
  uint64_t seed = 1000;
  for (const Shape& s : shapes) {
    const int64_t n = s.a * s.i * s.j * s.k;
    const std::string shape = dims({s.a, s.i, s.j, s.k}) + " " + dtype_label<T>();

    const auto src = testing::random_floats(n, ++seed, -3.0f, 3.0f);
    const auto src_ref = held<T>(src);
    std::vector<double> want(static_cast<size_t>(n));
    transpose_middle_forward<double>(want.data(), src_ref.data(), s.a, s.i, s.j, s.k, cpu);
    DeviceBuffer<T> d_src(to_storage<T>(src)), d_dst(n);
    transpose_middle_forward_cuda<T>(d_dst.get(), d_src.get(), s.a, s.i, s.j, s.k, gpu);
    expect_exact(downloaded(d_dst), want, "transpose_middle_forward " + shape);

    const auto ddst = testing::random_floats(n, ++seed, -3.0f, 3.0f);
    const auto ddst_ref = held<T>(ddst);
    std::vector<double> want_dsrc(static_cast<size_t>(n));
    transpose_middle_backward<double>(want_dsrc.data(), ddst_ref.data(), s.a, s.i, s.j, s.k, cpu);
    DeviceBuffer<T> d_ddst(to_storage<T>(ddst)), d_dsrc(n);
    transpose_middle_backward_cuda<T>(d_dsrc.get(), d_ddst.get(), s.a, s.i, s.j, s.k, gpu);
    expect_exact(downloaded(d_dsrc), want_dsrc, "transpose_middle_backward " + shape);
  }
}

TEST(LayoutCuda, TransposeMiddleMatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_transpose_middle<float>();
  check_transpose_middle<bf16>();
}

// ---- split_heads --------------------------------------------------------------------------------

struct HeadsShape {
  int64_t b, t, h, dk;
};
const HeadsShape kHeadsShapes[] = {{0, 3, 2, 4},    {2, 0, 2, 4},   {2, 3, 2, 0},
                                   {1, 1, 1, 1},    {3, 7, 4, 5},   {2, 33, 4, 16},
                                   {5, 129, 8, 64}, {3, 11, 3, 13}, {4, 1500, 4, 64}};

template <class T>
void check_split_heads_forward() {
  const RunContext cpu = testing::cpu_test_context(), gpu = testing::gpu_test_context();
  uint64_t seed = 2000;
  for (const HeadsShape& s : kHeadsShapes) {
    const int64_t n = s.b * s.t * s.h * s.dk, width = s.h * s.dk;
    for (bool with_bias : {false, true}) {
      const std::string what = "split_heads_forward " + dims({s.b, s.t, s.h, s.dk}) +
                               (with_bias ? " bias " : " no-bias ") + dtype_label<T>();
      const auto src = testing::random_floats(n, ++seed, -2.0f, 2.0f);
      const auto bias = testing::random_floats(width, ++seed, -1.0f, 1.0f);  // fp32 on both sides
      const auto src_ref = held<T>(src);
      const auto bias_ref = to_double(bias);
      std::vector<double> want(static_cast<size_t>(n));
      split_heads_forward<double>(want.data(), src_ref.data(), with_bias ? bias_ref.data() : nullptr, s.b,
                                  s.t, s.h, s.dk, cpu);
      DeviceBuffer<T> d_src(to_storage<T>(src)), d_dst(n);
      DeviceBuffer<float> d_bias(bias);
      split_heads_forward_cuda<T>(d_dst.get(), d_src.get(), with_bias ? d_bias.get() : nullptr, s.b, s.t, s.h,
                                  s.dk, gpu);
      if (with_bias) {
        expect_close<T>(downloaded(d_dst), want, what);
      } else {
        expect_exact(downloaded(d_dst), want, what);
      }
    }
  }
}

template <class T>
void check_split_heads_backward() {
  const RunContext cpu = testing::cpu_test_context(), gpu = testing::gpu_test_context();
  uint64_t seed = 3000;
  for (const HeadsShape& s : kHeadsShapes) {
    const int64_t n = s.b * s.t * s.h * s.dk, width = s.h * s.dk;
    // 0: both grads, 1: dsrc only, 2: dbias only.
    for (int mode = 0; mode < 3; ++mode) {
      const bool want_dsrc = mode != 2, want_dbias = mode != 1;
      const std::string what = "split_heads_backward " + dims({s.b, s.t, s.h, s.dk}) +
                               " mode=" + std::to_string(mode) + " " + dtype_label<T>();
      const auto dout = testing::random_floats(n, ++seed, -1.0f, 1.0f);
      const auto dbias0 = testing::random_floats(width, ++seed, -2.0f, 2.0f);  // nonzero start: checks +=
      const auto dout_ref = held<T>(dout);
      std::vector<double> dsrc_ref(static_cast<size_t>(n)), dbias_ref = to_double(dbias0);
      split_heads_backward<double>(want_dsrc ? dsrc_ref.data() : nullptr,
                                   want_dbias ? dbias_ref.data() : nullptr, dout_ref.data(), s.b, s.t, s.h,
                                   s.dk, cpu);
      DeviceBuffer<T> d_dout(to_storage<T>(dout)), d_dsrc(n);
      DeviceBuffer<float> d_dbias(dbias0);
      split_heads_backward_cuda<T>(want_dsrc ? d_dsrc.get() : nullptr, want_dbias ? d_dbias.get() : nullptr,
                                   d_dout.get(), s.b, s.t, s.h, s.dk, gpu);
      if (want_dsrc) expect_exact(downloaded(d_dsrc), dsrc_ref, what + " dsrc");
      // Skipped: the buffer keeps its starting value (dbias_ref still holds dbias0).
      EXPECT_LE(testing::max_scaled_error(d_dbias.download(), dbias_ref), testing::kFp32Tolerance)
          << what << " dbias (+=)";
    }
  }
}

TEST(LayoutCuda, SplitHeadsForwardMatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_split_heads_forward<float>();
  check_split_heads_forward<bf16>();
}

TEST(LayoutCuda, SplitHeadsBackwardMatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_split_heads_backward<float>();
  check_split_heads_backward<bf16>();
}

// The fixed-order dbias sum gives the same bits on every run.
TEST(LayoutCuda, SplitHeadsDbiasIsDeterministic) {
  MOEASR_SKIP_WITHOUT_GPU();
  const RunContext gpu = testing::gpu_test_context();
  const int64_t b = 7, t = 601, h = 4, dk = 48;
  const auto dout = testing::random_floats(b * t * h * dk, 77, -1.0f, 1.0f);
  const auto dbias0 = testing::random_floats(h * dk, 78, -1.0f, 1.0f);
  DeviceBuffer<float> d_dout(dout);
  std::vector<float> first;
  for (int run = 0; run < 3; ++run) {
    DeviceBuffer<float> d_dbias(dbias0);
    split_heads_backward_cuda<float>(nullptr, d_dbias.get(), d_dout.get(), b, t, h, dk, gpu);
    std::vector<float> got = d_dbias.download();
    if (run == 0) {
      first = got;
    } else {
      ASSERT_EQ(0, std::memcmp(got.data(), first.data(), got.size() * sizeof(float))) << "run " << run;
    }
  }
}

// ---- masked pad / crop rows -----------------------------------------------------------------------

// x is [B, lead + T, C]: rows s < lead and masked frames (mask[b, s - lead] == 0) are set to NaN, the
// rows the ops must not read.
std::vector<float> nan_in_unread_rows(std::vector<float> x, const uint8_t* mask, int64_t batch, int64_t time,
                                      int64_t lead, int64_t channels) {
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t s = 0; s < lead + time; ++s) {
      const int64_t t = s - lead;
      const bool unread = t < 0 || (mask != nullptr && mask[b * time + t] == 0);
      if (!unread) continue;
      for (int64_t c = 0; c < channels; ++c) x[(b * (lead + time) + s) * channels + c] = kNaN;
    }
  }
  return x;
}

struct RowsShape {
  int64_t b, t, c;
};
const RowsShape kRowsShapes[] = {{0, 5, 3}, {3, 0, 4},   {2, 5, 0},    {1, 1, 1},
                                 {3, 7, 5}, {4, 33, 19}, {8, 257, 144}};
const int64_t kLpads[] = {0, 1, 14};

template <class T>
void check_masked_rows() {
  const RunContext cpu = testing::cpu_test_context(), gpu = testing::gpu_test_context();
  uint64_t seed = 4000;
  for (const RowsShape& s : kRowsShapes) {
    for (int64_t lpad : kLpads) {
      for (bool with_mask : {false, true}) {
        const std::string what = dims({s.b, s.t, s.c}) + " lpad=" + std::to_string(lpad) +
                                 (with_mask ? " mask " : " no-mask ") + dtype_label<T>();
        const auto mask = random_mask(s.b * s.t, ++seed);
        const uint8_t* mask_ref = with_mask ? mask.data() : nullptr;
        DeviceBuffer<uint8_t> d_mask(mask);
        const uint8_t* mask_dev = with_mask ? d_mask.get() : nullptr;
        const int64_t short_n = s.b * s.t * s.c, long_n = s.b * (lpad + s.t) * s.c;

        // [B, T, C] inputs (pad forward, crop backward) and [B, lpad + T, C] ones (pad backward, crop
        // forward), NaN where the op must not read.
        const auto short_in = nan_in_unread_rows(testing::random_floats(short_n, ++seed, -2.0f, 2.0f),
                                                 mask_ref, s.b, s.t, 0, s.c);
        const auto long_in = nan_in_unread_rows(testing::random_floats(long_n, ++seed, -2.0f, 2.0f), mask_ref,
                                                s.b, s.t, lpad, s.c);
        const auto short_ref = held<T>(short_in), long_ref = held<T>(long_in);
        DeviceBuffer<T> d_short(to_storage<T>(short_in)), d_long(to_storage<T>(long_in));

        {
          std::vector<double> want(static_cast<size_t>(long_n));
          masked_pad_rows_forward<double>(want.data(), short_ref.data(), mask_ref, s.b, s.t, lpad, s.c, cpu);
          DeviceBuffer<T> out(long_n);
          masked_pad_rows_forward_cuda<T>(out.get(), d_short.get(), mask_dev, s.b, s.t, lpad, s.c, gpu);
          expect_exact(downloaded(out), want, "masked_pad_rows_forward " + what);
        }
        {
          std::vector<double> want(static_cast<size_t>(short_n));
          masked_pad_rows_backward<double>(want.data(), long_ref.data(), mask_ref, s.b, s.t, lpad, s.c, cpu);
          DeviceBuffer<T> out(short_n);
          masked_pad_rows_backward_cuda<T>(out.get(), d_long.get(), mask_dev, s.b, s.t, lpad, s.c, gpu);
          expect_exact(downloaded(out), want, "masked_pad_rows_backward " + what);
        }
        {
          std::vector<double> want(static_cast<size_t>(short_n));
          masked_crop_rows_forward<double>(want.data(), long_ref.data(), mask_ref, s.b, s.t, lpad, s.c, cpu);
          DeviceBuffer<T> out(short_n);
          masked_crop_rows_forward_cuda<T>(out.get(), d_long.get(), mask_dev, s.b, s.t, lpad, s.c, gpu);
          expect_exact(downloaded(out), want, "masked_crop_rows_forward " + what);
        }
        {
          std::vector<double> want(static_cast<size_t>(long_n));
          masked_crop_rows_backward<double>(want.data(), short_ref.data(), mask_ref, s.b, s.t, lpad, s.c,
                                            cpu);
          DeviceBuffer<T> out(long_n);
          masked_crop_rows_backward_cuda<T>(out.get(), d_short.get(), mask_dev, s.b, s.t, lpad, s.c, gpu);
          expect_exact(downloaded(out), want, "masked_crop_rows_backward " + what);
        }
      }
    }
  }
}

// lpad == 0: dst may alias src (WeNet's in-place masked_fill of pad frames), both directions.
template <class T>
void check_masked_crop_in_place() {
  const RunContext cpu = testing::cpu_test_context(), gpu = testing::gpu_test_context();
  uint64_t seed = 5000;
  for (const RowsShape& s : kRowsShapes) {
    for (bool with_mask : {false, true}) {
      const std::string what =
          dims({s.b, s.t, s.c}) + (with_mask ? " mask " : " no-mask ") + dtype_label<T>();
      const auto mask = random_mask(s.b * s.t, ++seed);
      const uint8_t* mask_ref = with_mask ? mask.data() : nullptr;
      DeviceBuffer<uint8_t> d_mask(mask);
      const uint8_t* mask_dev = with_mask ? d_mask.get() : nullptr;
      const int64_t n = s.b * s.t * s.c;
      // Masked frames hold finite values here: in place they are overwritten with 0.
      const auto x = testing::random_floats(n, ++seed, -2.0f, 2.0f);
      const auto x_ref = held<T>(x);

      std::vector<double> want(static_cast<size_t>(n));
      masked_crop_rows_forward<double>(want.data(), x_ref.data(), mask_ref, s.b, s.t, 0, s.c, cpu);
      DeviceBuffer<T> buf(to_storage<T>(x));
      masked_crop_rows_forward_cuda<T>(buf.get(), buf.get(), mask_dev, s.b, s.t, 0, s.c, gpu);
      expect_exact(downloaded(buf), want, "masked_crop_rows_forward in place " + what);

      std::vector<double> want_back(static_cast<size_t>(n));
      masked_crop_rows_backward<double>(want_back.data(), x_ref.data(), mask_ref, s.b, s.t, 0, s.c, cpu);
      DeviceBuffer<T> buf_back(to_storage<T>(x));
      masked_crop_rows_backward_cuda<T>(buf_back.get(), buf_back.get(), mask_dev, s.b, s.t, 0, s.c, gpu);
      expect_exact(downloaded(buf_back), want_back, "masked_crop_rows_backward in place " + what);
    }
  }
}

TEST(LayoutCuda, MaskedRowsMatchCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_masked_rows<float>();
  check_masked_rows<bf16>();
}

TEST(LayoutCuda, MaskedCropRowsInPlaceMatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_masked_crop_in_place<float>();
  check_masked_crop_in_place<bf16>();
}

// ---- cmvn ---------------------------------------------------------------------------------------

template <class T>
void check_cmvn() {
  const RunContext cpu = testing::cpu_test_context(), gpu = testing::gpu_test_context();
  struct Shape {
    int64_t rows, feat;
  };
  uint64_t seed = 6000;
  for (Shape s : {Shape{0, 80}, Shape{5, 0}, Shape{1, 1}, Shape{37, 80}, Shape{1001, 83}}) {
    for (bool in_place : {false, true}) {
      const std::string what = "cmvn_normalize_forward " + dims({s.rows, s.feat}) +
                               (in_place ? " in place " : " ") + dtype_label<T>();
      const int64_t n = s.rows * s.feat;
      // Fbank-like magnitudes: features and means around +-15, inverse stddevs in [0.1, 2].
      const auto x = testing::random_floats(n, ++seed, -20.0f, 20.0f);
      const auto mean = testing::random_floats(s.feat, ++seed, -15.0f, 15.0f);
      const auto istd = testing::random_floats(s.feat, ++seed, 0.1f, 2.0f);
      const auto x_ref = held<T>(x), mean_ref = to_double(mean), istd_ref = to_double(istd);
      std::vector<double> want(static_cast<size_t>(n));
      cmvn_normalize_forward<double>(want.data(), x_ref.data(), mean_ref.data(), istd_ref.data(), s.rows,
                                     s.feat, cpu);
      DeviceBuffer<T> d_x(to_storage<T>(x)), d_out(n);
      DeviceBuffer<float> d_mean(mean), d_istd(istd);
      T* out = in_place ? d_x.get() : d_out.get();
      cmvn_normalize_forward_cuda<T>(out, d_x.get(), d_mean.get(), d_istd.get(), s.rows, s.feat, gpu);
      expect_close<T>(downloaded(in_place ? d_x : d_out), want, what);
    }
  }
}

TEST(LayoutCuda, CmvnNormalizeMatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_cmvn<float>();
  check_cmvn<bf16>();
}

// ---- scale_add_table ------------------------------------------------------------------------------

template <class T>
void check_scale_add_table() {
  const RunContext cpu = testing::cpu_test_context(), gpu = testing::gpu_test_context();
  struct Shape {
    int64_t b, t, d;
  };
  const int64_t offset = 2;  // the table is read from row `offset` (streaming positional encoding)
  uint64_t seed = 7000;
  for (Shape s : {Shape{0, 4, 8}, Shape{2, 0, 8}, Shape{2, 3, 0}, Shape{1, 1, 1}, Shape{3, 17, 33},
                  Shape{4, 129, 256}}) {
    const float scale = s.d == 256 ? 16.0f : 0.37f;  // xscale = sqrt(D)
    const int64_t n = s.b * s.t * s.d;
    for (bool in_place : {false, true}) {
      const std::string what = dims({s.b, s.t, s.d}) + (in_place ? " in place " : " ") + dtype_label<T>();
      const auto x = testing::random_floats(n, ++seed, -2.0f, 2.0f);
      const auto table = testing::random_floats((s.t + offset) * s.d, ++seed, -1.0f, 1.0f);
      const auto x_ref = held<T>(x), table_ref = to_double(table);
      std::vector<double> want(static_cast<size_t>(n));
      scale_add_table_forward<double>(want.data(), x_ref.data(), table_ref.data() + offset * s.d,
                                      static_cast<double>(scale), s.b, s.t, s.d, cpu);
      DeviceBuffer<T> d_x(to_storage<T>(x)), d_out(n);
      DeviceBuffer<float> d_table(table);
      T* out = in_place ? d_x.get() : d_out.get();
      scale_add_table_forward_cuda<T>(out, d_x.get(), d_table.get() + offset * s.d, scale, s.b, s.t, s.d,
                                      gpu);
      expect_close<T>(downloaded(in_place ? d_x : d_out), want, "scale_add_table_forward " + what);

      const auto dout = testing::random_floats(n, ++seed, -2.0f, 2.0f);
      const auto dout_ref = held<T>(dout);
      std::vector<double> want_dx(static_cast<size_t>(n));
      scale_add_table_backward<double>(want_dx.data(), dout_ref.data(), static_cast<double>(scale), s.b, s.t,
                                       s.d, cpu);
      DeviceBuffer<T> d_dout(to_storage<T>(dout)), d_dx(n);
      T* dx = in_place ? d_dout.get() : d_dx.get();
      scale_add_table_backward_cuda<T>(dx, d_dout.get(), scale, s.b, s.t, s.d, gpu);
      expect_close<T>(downloaded(in_place ? d_dout : d_dx), want_dx, "scale_add_table_backward " + what);
    }
  }
}

TEST(LayoutCuda, ScaleAddTableMatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_scale_add_table<float>();
  check_scale_add_table<bf16>();
}

}  // namespace
}  // namespace moeasr
