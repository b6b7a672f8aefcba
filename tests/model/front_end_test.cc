// tests/model/front_end_test.cc — exact tests of the front end (model/front_end.h): sinusoid table
// values, Conv2dSubsampling4 output lengths against a brute-force simulation of WeNet's mask slicing
// x_mask[:, :, 2::2][:, :, 2::2], global CMVN values, the subsampling forward against a direct loop
// transcription (channel-major flattening), positional encodings without and with dropout, and float
// vs double.
#include "model/front_end.h"

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/arena.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::random_doubles;

TEST(SinusoidTableTest, KnownValues) {
  const int64_t d = 8, max_len = kPositionalEncodingMaxLen;
  std::vector<double> pe(max_len * d);
  sinusoid_position_table(pe.data(), max_len, d);
  for (int64_t j = 0; j < d; ++j) EXPECT_EQ(pe[j], j % 2 == 0 ? 0.0 : 1.0);  // position 0
  EXPECT_NEAR(pe[1 * d + 0], std::sin(1.0), 1e-15);
  EXPECT_NEAR(pe[1 * d + 1], std::cos(1.0), 1e-15);
  // i = 2: 10000^(4/8) = 100
  EXPECT_NEAR(pe[3 * d + 4], std::sin(0.03), 1e-15);
  EXPECT_NEAR(pe[3 * d + 5], std::cos(0.03), 1e-15);
  // i = 1: 10000^(2/8) = 10
  EXPECT_NEAR(pe[4999 * d + 2], std::sin(499.9), 1e-12);
  EXPECT_NEAR(pe[4999 * d + 3], std::cos(499.9), 1e-12);
  // i = 3: 10000^(6/8) = 1000
  EXPECT_NEAR(pe[250 * d + 6], std::sin(0.25), 1e-15);
  EXPECT_NEAR(pe[250 * d + 7], std::cos(0.25), 1e-15);
  // the float table is the double table cast
  std::vector<float> pef(max_len * d);
  sinusoid_position_table(pef.data(), max_len, d);
  for (size_t i = 0; i < pe.size(); ++i) ASSERT_EQ(pef[i], static_cast<float>(pe[i])) << i;
}

// Python's seq[2::2] on a list.
std::vector<uint8_t> slice_2_2(const std::vector<uint8_t>& v) {
  std::vector<uint8_t> out;
  for (size_t i = 2; i < v.size(); i += 2) out.push_back(v[i]);
  return out;
}

TEST(Conv2dSubsampling4LengthsTest, MatchMaskSlicing) {
  const int64_t padded = 20;
  std::vector<int32_t> lengths, got(21);
  for (int32_t len = 0; len <= padded; ++len) {
    std::vector<uint8_t> mask(padded, 0);
    for (int32_t t = 0; t < len; ++t) mask[t] = 1;
    auto sub = slice_2_2(slice_2_2(mask));
    ASSERT_EQ(static_cast<int64_t>(sub.size()), conv2d_subsampling4_output_size(padded));
    int64_t valid = 0;
    for (size_t i = 0; i < sub.size(); ++i) {
      if (sub[i]) {
        EXPECT_EQ(static_cast<int64_t>(i), valid) << "the valid frames stay a prefix";
        ++valid;
      }
    }
    EXPECT_EQ(conv2d_subsampling4_valid_length(len), valid) << "L = " << len;
    lengths.push_back(len);
  }
  conv2d_subsampling4_lengths(got.data(), lengths.data(), 21);
  for (int32_t len = 0; len <= padded; ++len) EXPECT_EQ(got[len], conv2d_subsampling4_valid_length(len));
  // spot values: 7 frames -> 1, 10 -> 1, 11 -> 2, 15 -> 3, 20 -> 4
  EXPECT_EQ(got[6], 0);
  EXPECT_EQ(got[7], 1);
  EXPECT_EQ(got[10], 1);
  EXPECT_EQ(got[11], 2);
  EXPECT_EQ(got[15], 3);
  EXPECT_EQ(got[20], 4);
}

TEST(Conv2dSubsampling4LengthsTest, PaddedLengthMatchesWeNetFormula) {
  for (int64_t t = 0; t <= 60; ++t) {
    std::vector<uint8_t> mask(t, 1);
    const int64_t sliced = static_cast<int64_t>(slice_2_2(slice_2_2(mask)).size());
    EXPECT_EQ(conv2d_subsampling4_output_size(t), sliced) << "T = " << t;
    if (t >= 3) {
      EXPECT_EQ(conv2d_subsampling4_output_size(t), ((t - 1) / 2 - 1) / 2) << "T = " << t;
    }
    EXPECT_EQ(conv2d_subsampling4_valid_length(t), sliced) << "a full utterance is all valid";
  }
  EXPECT_EQ(conv2d_subsampling4_output_size(80), 19);  // F' of 80 mel bins
}

TEST(GlobalCmvnTest, ExactValues) {
  ParameterTable table;
  table.add("encoder.global_cmvn.mean", Shape{3}, ParamRegion::kBuffer, ParamInit::kZeros, 0);
  table.add("encoder.global_cmvn.istd", Shape{3}, ParamRegion::kBuffer, ParamInit::kOnes, 0);
  ParameterStore<double> store(table);
  const double mean[3] = {0.5, -1.0, 2.0}, istd[3] = {2.0, 0.25, 1.0};
  std::copy(mean, mean + 3, store.value("encoder.global_cmvn.mean"));
  std::copy(istd, istd + 3, store.value("encoder.global_cmvn.istd"));
  auto p = bind_global_cmvn(&store, "encoder.global_cmvn");
  EXPECT_EQ(p.dim, 3);
  RunContext ctx = testing::cpu_test_context();
  std::vector<double> x = {1.5, 3.0, 2.0, 0.0, 0.0, -4.0};
  std::vector<double> out(6);
  global_cmvn_forward(out.data(), x.data(), p, 2, 3, ctx);
  const std::vector<double> expected = {2.0, 1.0, 0.0, -1.0, 0.25, -6.0};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(out[i], expected[i]) << i;
  // in place, float
  ParameterStore<float> fstore(table);
  for (int i = 0; i < 3; ++i) {
    fstore.value("encoder.global_cmvn.mean")[i] = static_cast<float>(mean[i]);
    fstore.value("encoder.global_cmvn.istd")[i] = static_cast<float>(istd[i]);
  }
  auto fp = bind_global_cmvn(&fstore, "encoder.global_cmvn");
  std::vector<float> fx(x.begin(), x.end());
  global_cmvn_forward(fx.data(), fx.data(), fp, 2, 3, ctx);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(fx[i], static_cast<float>(expected[i])) << i;
}

struct Subsampling {
  std::unique_ptr<ParameterTable> table;
  std::unique_ptr<ParameterStore<double>> store;
  Conv2dSubsampling4Params<double> p;
  int64_t d, sub_freq;

  Subsampling(int64_t d_model, int64_t feat) : d(d_model), sub_freq(conv2d_subsampling4_output_size(feat)) {
    table = std::make_unique<ParameterTable>();
    table->add("encoder.embed.conv.0.weight", Shape{d, 1, 3, 3}, ParamRegion::kDense, ParamInit::kZeros, 9);
    table->add("encoder.embed.conv.0.bias", Shape{d}, ParamRegion::kDense, ParamInit::kZeros, 9);
    table->add("encoder.embed.conv.2.weight", Shape{d, d, 3, 3}, ParamRegion::kDense, ParamInit::kZeros,
               9 * d);
    table->add("encoder.embed.conv.2.bias", Shape{d}, ParamRegion::kDense, ParamInit::kZeros, 9 * d);
    table->add("encoder.embed.out.0.weight", Shape{d, d * sub_freq}, ParamRegion::kDense, ParamInit::kZeros,
               1);
    table->add("encoder.embed.out.0.bias", Shape{d}, ParamRegion::kDense, ParamInit::kZeros, 1);
    store = std::make_unique<ParameterStore<double>>(*table);
    uint64_t s = 40;
    for (const ParamEntry& e : table->entries()) {
      auto v = random_doubles(e.numel, ++s, -0.6, 0.6);
      std::copy(v.begin(), v.end(), store->value(e));
    }
    p = bind_conv2d_subsampling4(store.get(), "encoder.embed");
  }
  const double* v(const std::string& name) const { return store->value("encoder.embed." + name); }
};

// conv2d 3x3 stride 2 (no padding) + ReLU, direct loops, NCHW.
std::vector<double> conv_relu(const std::vector<double>& x, const double* w, const double* b, int64_t batch,
                              int64_t cin, int64_t cout, int64_t h, int64_t wd) {
  const int64_t ho = (h - 3) / 2 + 1, wo = (wd - 3) / 2 + 1;
  std::vector<double> y(batch * cout * ho * wo);
  for (int64_t n = 0; n < batch; ++n)
    for (int64_t co = 0; co < cout; ++co)
      for (int64_t i = 0; i < ho; ++i)
        for (int64_t j = 0; j < wo; ++j) {
          double acc = b[co];
          for (int64_t ci = 0; ci < cin; ++ci)
            for (int64_t kh = 0; kh < 3; ++kh)
              for (int64_t kw = 0; kw < 3; ++kw)
                acc += w[((co * cin + ci) * 3 + kh) * 3 + kw] *
                       x[((n * cin + ci) * h + 2 * i + kh) * wd + 2 * j + kw];
          y[((n * cout + co) * ho + i) * wo + j] = std::max(acc, 0.0);
        }
  return y;
}

TEST(Conv2dSubsampling4Test, ForwardMatchesDirectTranscription) {
  const int64_t batch = 2, time = 17, feat = 13, d = 5;
  Subsampling s(d, feat);
  EXPECT_EQ(s.p.d_model, d);
  EXPECT_EQ(s.p.sub_freq, 2);
  auto x = random_doubles(batch * time * feat, 8, -2.0, 2.0);
  const int64_t t1 = (time - 1) / 2, f1 = (feat - 1) / 2, t2 = (t1 - 1) / 2, f2 = (f1 - 1) / 2;
  ASSERT_EQ(t2, 3);
  auto r0 = conv_relu(x, s.v("conv.0.weight"), s.v("conv.0.bias"), batch, 1, d, time, feat);
  auto r1 = conv_relu(r0, s.v("conv.2.weight"), s.v("conv.2.bias"), batch, d, d, t1, f1);
  // transpose(1, 2).view(B, T', d * F'): column c * F' + f
  std::vector<double> expected(batch * t2 * d);
  const double* w = s.v("out.0.weight");
  const double* bias = s.v("out.0.bias");
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < t2; ++t)
      for (int64_t o = 0; o < d; ++o) {
        double acc = bias[o];
        for (int64_t c = 0; c < d; ++c)
          for (int64_t f = 0; f < f2; ++f)
            acc += w[o * d * f2 + c * f2 + f] * r1[((b * d + c) * t2 + t) * f2 + f];
        expected[(b * t2 + t) * d + o] = acc;
      }
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    Arena arena("act", 1 << 20, Arena::Growth::kGrowable);
    ctx.activations = &arena;
    std::vector<double> out(expected.size());
    Conv2dSubsampling4Saved<double> saved;
    conv2d_subsampling4_forward(&saved, out.data(), x.data(), s.p, batch, time, feat, ctx);
    for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], expected[i], 1e-12) << i;
  }
}

TEST(Conv2dSubsampling4Test, TooShortGivesEmptyOutputAndZeroGradients) {
  const int64_t batch = 2, time = 6, feat = 11, d = 3;  // T' = 0
  Subsampling s(d, feat);
  RunContext ctx = testing::cpu_test_context();
  Arena arena("act", 1 << 20, Arena::Growth::kGrowable);
  ctx.activations = &arena;
  auto x = random_doubles(batch * time * feat, 9);
  std::vector<double> dx(x.size(), 5.0);
  Conv2dSubsampling4Saved<double> saved;
  double dummy = 0.0;
  conv2d_subsampling4_forward(&saved, &dummy, x.data(), s.p, batch, time, feat, ctx);
  s.store->zero_grads();
  conv2d_subsampling4_backward(dx.data(), saved, &dummy, s.p, batch, time, feat, ctx);
  for (double g : dx) EXPECT_EQ(g, 0.0);
  for (const ParamEntry& e : s.table->entries())
    for (int64_t j = 0; j < e.numel; ++j) EXPECT_EQ(s.store->grad(e)[j], 0.0) << e.name;
}

TEST(Conv2dSubsampling4Test, FloatMatchesDouble) {
  const int64_t batch = 2, time = 23, feat = 19, d = 6;
  Subsampling s(d, feat);
  ParameterStore<float> fstore(*s.table);
  for (int r = 0; r < kNumParamRegions; ++r)
    for (size_t i = 0; i < s.store->values[r].size(); ++i)
      fstore.values[r][i] = static_cast<float>(s.store->values[r][i]);
  auto fp = bind_conv2d_subsampling4(&fstore, "encoder.embed");
  const int64_t t_out = conv2d_subsampling4_output_size(time);
  auto x = random_doubles(batch * time * feat, 10, -2.0, 2.0);
  auto dout = random_doubles(batch * t_out * d, 11);
  std::vector<float> fx(x.begin(), x.end()), fdout(dout.begin(), dout.end()), fout(dout.size()),
      fdx(x.size());
  std::vector<double> out(dout.size()), dx(x.size());
  RunContext ctx = testing::cpu_test_context();
  Arena arena("act", 1 << 20, Arena::Growth::kGrowable);
  ctx.activations = &arena;
  Conv2dSubsampling4Saved<double> saved;
  Conv2dSubsampling4Saved<float> fsaved;
  conv2d_subsampling4_forward(&saved, out.data(), x.data(), s.p, batch, time, feat, ctx);
  conv2d_subsampling4_backward(dx.data(), saved, dout.data(), s.p, batch, time, feat, ctx);
  conv2d_subsampling4_forward(&fsaved, fout.data(), fx.data(), fp, batch, time, feat, ctx);
  conv2d_subsampling4_backward(fdx.data(), fsaved, fdout.data(), fp, batch, time, feat, ctx);
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(fout[i], out[i], 1e-4 * (1 + std::fabs(out[i])));
  for (size_t i = 0; i < dx.size(); ++i) EXPECT_NEAR(fdx[i], dx[i], 1e-4 * (1 + std::fabs(dx[i])));
  for (const ParamEntry& e : s.table->entries())
    for (int64_t j = 0; j < e.numel; ++j)
      EXPECT_NEAR(fstore.grad(e)[j], s.store->grad(e)[j], 2e-4 * (1 + std::fabs(s.store->grad(e)[j])))
          << e.name;
}

TEST(PositionalEncodingTest, ExactWithoutDropout) {
  const int64_t batch = 2, time = 3, d = 4, offset = 5, max_len = 16;
  std::vector<float> table(max_len * d);
  sinusoid_position_table(table.data(), max_len, d);
  PositionalEncodingParams<float> p;
  p.table = table.data();
  p.max_len = max_len;
  p.d_model = d;
  p.dropout_rate = 0.1;  // inactive: not training
  StepRng rng;
  RunContext ctx = testing::cpu_test_context();
  std::vector<float> x(batch * time * d);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.25f * static_cast<float>(i) - 2.0f;
  std::vector<float> out(x.size()), pos(time * d), abs_out(x.size());
  rel_positional_encoding_forward(out.data(), pos.data(), x.data(), p, offset, batch, time, 0, rng, ctx);
  positional_encoding_forward(abs_out.data(), x.data(), p, offset, batch, time, 0, rng, ctx);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < time; ++t)
      for (int64_t j = 0; j < d; ++j) {
        const int64_t i = (b * time + t) * d + j;
        EXPECT_EQ(out[i], x[i] * 2.0f);  // sqrt(4) = 2: PE not added
        EXPECT_EQ(abs_out[i], x[i] * 2.0f + table[(offset + t) * d + j]);
      }
  for (int64_t i = 0; i < time * d; ++i) EXPECT_EQ(pos[i], table[offset * d + i]);
  // backward: dx = sqrt(d) * dout
  std::vector<float> dx(x.size());
  rel_positional_encoding_backward(dx.data(), x.data(), p, batch, time, 0, rng, ctx);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(dx[i], 2.0f * x[i]);
  positional_encoding_backward(dx.data(), x.data(), p, batch, time, 0, rng, ctx);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(dx[i], 2.0f * x[i]);
}

TEST(PositionalEncodingTest, DropoutOnOutputAndPositions) {
  const int64_t batch = 3, time = 20, d = 16, offset = 2;
  const double rate = 0.25;
  std::vector<double> table(kPositionalEncodingMaxLen * d);
  sinusoid_position_table(table.data(), kPositionalEncodingMaxLen, d);
  PositionalEncodingParams<double> p;
  p.table = table.data();
  p.d_model = d;
  p.dropout_rate = rate;
  StepRng rng;
  rng.base.seed = 77;
  rng.training = true;
  RunContext ctx = testing::cpu_test_context();
  auto x = random_doubles(batch * time * d, 12, 0.5, 1.5);  // nonzero, so a 0 output means dropped
  std::vector<double> out(x.size()), pos(time * d), again(x.size()), pos_again(time * d);
  rel_positional_encoding_forward(out.data(), pos.data(), x.data(), p, offset, batch, time, 3, rng, ctx);
  int64_t dropped_x = 0, dropped_pos = 0, pos_zero_table = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    if (out[i] == 0.0) {
      ++dropped_x;
    } else {
      EXPECT_NEAR(out[i], x[i] * 4.0 / (1.0 - rate), 1e-12);
    }
  }
  for (int64_t i = 0; i < time * d; ++i) {
    const double pe = table[offset * d + i];
    if (pe == 0.0) ++pos_zero_table;
    if (pos[i] == 0.0 && pe != 0.0) {
      ++dropped_pos;
    } else {
      EXPECT_NEAR(pos[i], pe / (1.0 - rate), 1e-12);
    }
  }
  EXPECT_EQ(pos_zero_table, 0);
  EXPECT_GT(dropped_x, 0);
  EXPECT_LT(dropped_x, static_cast<int64_t>(x.size()) / 2);
  EXPECT_GT(dropped_pos, 0);
  // Deterministic: the same StepRng and layer id give the same masks; another layer id does not.
  rel_positional_encoding_forward(again.data(), pos_again.data(), x.data(), p, offset, batch, time, 3, rng,
                                  ctx);
  EXPECT_EQ(out, again);
  EXPECT_EQ(pos, pos_again);
  rel_positional_encoding_forward(again.data(), pos_again.data(), x.data(), p, offset, batch, time, 4, rng,
                                  ctx);
  EXPECT_NE(out, again);
  // backward drops the same elements
  std::vector<double> dx(x.size());
  std::vector<double> ones(x.size(), 1.0);
  rel_positional_encoding_backward(dx.data(), ones.data(), p, batch, time, 3, rng, ctx);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(dx[i] == 0.0, out[i] == 0.0) << i;
}

}  // namespace
}  // namespace moeasr
