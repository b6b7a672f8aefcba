// tests/kernels/layout_test.cc — the data-movement ops of kernels/cpu/layout.h against plain index
// loops written from their definitions: every output element checked (outputs pre-filled with a
// sentinel so an unwritten element fails), masks with zeros, lpad 0 and > 0, empty sizes, the in-place
// forms the header allows, split_heads' bias gradient accumulating onto a non-zero start, and threaded vs
// reference paths bitwise equal.
#include "kernels/cpu/layout.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::random_floats;

constexpr float kSentinel = -12345.0f;

std::vector<uint8_t> random_mask(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> m(static_cast<size_t>(n));
  for (auto& v : m) v = static_cast<uint8_t>(rng() % 3 != 0);
  if (n > 0) m[0] = 0;
  return m;
}

TEST(Layout, FillAndCopy) {
  RunContext ctx = testing::cpu_test_context();
  for (int64_t n : {0, 1, 7, 70000}) {
    std::vector<float> out(static_cast<size_t>(n) + 1, kSentinel);
    fill_constant(out.data(), 2.5f, n, ctx);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(out[i], 2.5f) << i;
    EXPECT_EQ(out[n], kSentinel) << "wrote past n";
    auto src = random_floats(n, 3 + n);
    std::vector<float> dst(static_cast<size_t>(n) + 1, kSentinel);
    copy_elements(dst.data(), src.data(), n, ctx);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(dst[i], src[i]) << i;
    EXPECT_EQ(dst[n], kSentinel) << "wrote past n";
  }
}

TEST(Layout, TransposeMiddleMatchesIndexLoops) {
  struct Case {
    int64_t a, i, j, k;
  };
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    for (Case c :
         {Case{0, 3, 4, 5}, Case{2, 0, 3, 4}, Case{1, 1, 1, 1}, Case{3, 5, 7, 2}, Case{2, 33, 17, 29}}) {
      const int64_t n = c.a * c.i * c.j * c.k;
      auto src = random_floats(n, 11 + n);
      std::vector<float> dst(n, kSentinel), back(n, kSentinel);
      transpose_middle_forward(dst.data(), src.data(), c.a, c.i, c.j, c.k, ctx);
      for (int64_t a = 0; a < c.a; ++a)
        for (int64_t i = 0; i < c.i; ++i)
          for (int64_t j = 0; j < c.j; ++j)
            for (int64_t k = 0; k < c.k; ++k)
              ASSERT_EQ(dst[((a * c.j + j) * c.i + i) * c.k + k], src[((a * c.i + i) * c.j + j) * c.k + k]);
      transpose_middle_backward(back.data(), dst.data(), c.a, c.i, c.j, c.k, ctx);
      EXPECT_EQ(back, src) << "backward is the inverse permutation";
    }
  }
}

TEST(Layout, SplitHeadsWithAndWithoutBias) {
  const int64_t b_ = 3, t_ = 5, h_ = 4, dk = 6, d = h_ * dk;
  RunContext ctx = testing::cpu_test_context();
  auto src = random_floats(b_ * t_ * d, 21);
  auto bias = random_floats(d, 22);
  for (bool with_bias : {false, true}) {
    std::vector<float> dst(b_ * t_ * d, kSentinel);
    split_heads_forward(dst.data(), src.data(), with_bias ? bias.data() : nullptr, b_, t_, h_, dk, ctx);
    for (int64_t b = 0; b < b_; ++b)
      for (int64_t h = 0; h < h_; ++h)
        for (int64_t t = 0; t < t_; ++t)
          for (int64_t j = 0; j < dk; ++j) {
            float want = src[(b * t_ + t) * d + h * dk + j] + (with_bias ? bias[h * dk + j] : 0.0f);
            ASSERT_EQ(dst[((b * h_ + h) * t_ + t) * dk + j], want);
          }
  }
  // Backward: dsrc is the inverse layout; dbias accumulates the (b, t) sums onto its start value.
  auto dout = random_floats(b_ * t_ * d, 23);
  std::vector<float> dsrc(b_ * t_ * d, kSentinel);
  std::vector<float> dbias(d, 0.5f);
  split_heads_backward(dsrc.data(), dbias.data(), dout.data(), b_, t_, h_, dk, ctx);
  for (int64_t h = 0; h < h_; ++h)
    for (int64_t j = 0; j < dk; ++j) {
      float acc = 0.0f;
      for (int64_t b = 0; b < b_; ++b)
        for (int64_t t = 0; t < t_; ++t) {
          const float g = dout[((b * h_ + h) * t_ + t) * dk + j];
          acc += g;
          ASSERT_EQ(dsrc[(b * t_ + t) * d + h * dk + j], g);
        }
      EXPECT_EQ(dbias[h * dk + j], 0.5f + acc) << "h " << h << " j " << j;
    }
  // Either output may be skipped.
  std::vector<float> only_bias(d, 0.0f);
  split_heads_backward(static_cast<float*>(nullptr), only_bias.data(), dout.data(), b_, t_, h_, dk, ctx);
  for (int64_t i = 0; i < d; ++i) EXPECT_EQ(only_bias[i] + 0.5f, dbias[i]);
}

TEST(Layout, MaskedPadAndCropRows) {
  struct Case {
    int64_t batch, time, lpad, channels;
    bool masked;
  };
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    for (Case c : {Case{2, 5, 0, 3, true}, Case{2, 5, 3, 3, true}, Case{3, 4, 2, 1, false},
                   Case{0, 4, 2, 3, true}, Case{2, 0, 3, 4, true}, Case{4, 37, 14, 33, true}}) {
      const int64_t padded = c.time + c.lpad;
      auto mask = random_mask(c.batch * c.time, 31 + c.time);
      const uint8_t* m = c.masked ? mask.data() : nullptr;
      auto valid = [&](int64_t b, int64_t t) { return m == nullptr || m[b * c.time + t] != 0; };
      auto x = random_floats(c.batch * c.time * c.channels, 32);
      auto xp = random_floats(c.batch * padded * c.channels, 33);
      std::vector<float> pad(c.batch * padded * c.channels, kSentinel);
      std::vector<float> crop(c.batch * c.time * c.channels, kSentinel);
      std::vector<float> pad_b(c.batch * c.time * c.channels, kSentinel);
      std::vector<float> crop_b(c.batch * padded * c.channels, kSentinel);
      masked_pad_rows_forward(pad.data(), x.data(), m, c.batch, c.time, c.lpad, c.channels, ctx);
      masked_crop_rows_forward(crop.data(), xp.data(), m, c.batch, c.time, c.lpad, c.channels, ctx);
      masked_pad_rows_backward(pad_b.data(), xp.data(), m, c.batch, c.time, c.lpad, c.channels, ctx);
      masked_crop_rows_backward(crop_b.data(), x.data(), m, c.batch, c.time, c.lpad, c.channels, ctx);
      for (int64_t b = 0; b < c.batch; ++b)
        for (int64_t tp = 0; tp < padded; ++tp)
          for (int64_t ch = 0; ch < c.channels; ++ch) {
            const int64_t t = tp - c.lpad;
            const float want = (t >= 0 && valid(b, t)) ? x[(b * c.time + t) * c.channels + ch] : 0.0f;
            ASSERT_EQ(pad[(b * padded + tp) * c.channels + ch], want) << "pad b" << b << " t'" << tp;
            ASSERT_EQ(crop_b[(b * padded + tp) * c.channels + ch], want) << "crop backward b" << b;
          }
      for (int64_t b = 0; b < c.batch; ++b)
        for (int64_t t = 0; t < c.time; ++t)
          for (int64_t ch = 0; ch < c.channels; ++ch) {
            const float want = valid(b, t) ? xp[(b * padded + c.lpad + t) * c.channels + ch] : 0.0f;
            ASSERT_EQ(crop[(b * c.time + t) * c.channels + ch], want) << "crop b" << b << " t" << t;
            ASSERT_EQ(pad_b[(b * c.time + t) * c.channels + ch], want) << "pad backward b" << b;
          }
    }
  }
}

TEST(Layout, MaskedCropRowsInPlaceWithoutPadding) {
  RunContext ctx = testing::cpu_test_context();
  const int64_t batch = 3, time = 9, channels = 5;
  auto mask = random_mask(batch * time, 41);
  auto x = random_floats(batch * time * channels, 42);
  std::vector<float> want(x.size(), kSentinel);
  masked_crop_rows_forward(want.data(), x.data(), mask.data(), batch, time, 0, channels, ctx);
  std::vector<float> y = x;
  masked_crop_rows_forward(y.data(), y.data(), mask.data(), batch, time, 0, channels, ctx);
  EXPECT_EQ(y, want);
  std::vector<float> z = x;
  masked_crop_rows_backward(z.data(), z.data(), mask.data(), batch, time, 0, channels, ctx);
  EXPECT_EQ(z, want);
  int zero_rows = 0;
  for (uint8_t v : mask) zero_rows += v == 0;
  EXPECT_GT(zero_rows, 0) << "the mask must exercise the zeroing";
}

TEST(Layout, CmvnAndScaleAddTable) {
  RunContext ctx = testing::cpu_test_context();
  const int64_t rows = 7, feat = 5;
  auto x = random_floats(rows * feat, 51);
  auto mean = random_floats(feat, 52);
  auto istd = random_floats(feat, 53, 0.5f, 2.0f);
  std::vector<float> out(rows * feat, kSentinel);
  cmvn_normalize_forward(out.data(), x.data(), mean.data(), istd.data(), rows, feat, ctx);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t f = 0; f < feat; ++f) ASSERT_EQ(out[r * feat + f], (x[r * feat + f] - mean[f]) * istd[f]);
  std::vector<float> in_place = x;
  cmvn_normalize_forward(in_place.data(), in_place.data(), mean.data(), istd.data(), rows, feat, ctx);
  EXPECT_EQ(in_place, out);

  const int64_t batch = 3, time = 4, d = 6;
  auto y = random_floats(batch * time * d, 54);
  auto table = random_floats(time * d, 55);
  std::vector<float> sum(batch * time * d, kSentinel), dx(batch * time * d, kSentinel);
  scale_add_table_forward(sum.data(), y.data(), table.data(), 1.5f, batch, time, d, ctx);
  scale_add_table_backward(dx.data(), y.data(), 1.5f, batch, time, d, ctx);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < time; ++t)
      for (int64_t j = 0; j < d; ++j) {
        const int64_t i = (b * time + t) * d + j;
        ASSERT_EQ(sum[i], y[i] * 1.5f + table[t * d + j]);
        ASSERT_EQ(dx[i], y[i] * 1.5f);
      }
}

TEST(Layout, ThreadedEqualsReferenceOnLargeInputs) {
  RunContext threaded = testing::cpu_test_context(false), reference = testing::cpu_test_context(true);
  const int64_t b = 4, t = 97, h = 4, dk = 64;
  auto src = random_floats(b * t * h * dk, 61);
  auto bias = random_floats(h * dk, 62);
  std::vector<float> x1(src.size()), x2(src.size()), g1(h * dk, 0.0f), g2(h * dk, 0.0f);
  split_heads_forward(x1.data(), src.data(), bias.data(), b, t, h, dk, threaded);
  split_heads_forward(x2.data(), src.data(), bias.data(), b, t, h, dk, reference);
  EXPECT_EQ(x1, x2);
  split_heads_backward(x1.data(), g1.data(), src.data(), b, t, h, dk, threaded);
  split_heads_backward(x2.data(), g2.data(), src.data(), b, t, h, dk, reference);
  EXPECT_EQ(x1, x2);
  EXPECT_EQ(g1, g2);
}

}  // namespace
}  // namespace moeasr
