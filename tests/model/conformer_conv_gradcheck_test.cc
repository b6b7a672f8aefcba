// tests/model/conformer_conv_gradcheck_test.cc — WeNet's ConvolutionModule (model/conformer_conv.h):
// finite-difference gradients (double) of the input and every parameter in causal and symmetric mode,
// with layer_norm and batch_norm (training and eval), K = 3 and 5, masked frames and T = 1; the forward
// against a direct loop transcription of WeNet's forward (causal left pad = zero INPUT frames before
// pointwise_conv1; symmetric pad = zeros of the GLU output), the BatchNorm running-statistics update,
// exact zeros at padded frames, causality, and float vs double.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/arena.h"
#include "model/conformer_conv.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::random_doubles;

const char kPrefix[] = "encoder.encoders.0.conv_module";

struct Case {
  int64_t batch = 2;
  int64_t time = 6;
  int64_t d = 6;
  int64_t k = 3;
  bool causal = true;
  ConvNormType norm = ConvNormType::kLayerNorm;
  std::vector<int32_t> lengths = {6, 3};
};

std::string describe(const Case& c) {
  return std::string(c.causal ? "causal" : "symmetric") +
         (c.norm == ConvNormType::kLayerNorm ? " LN" : " BN") + " K=" + std::to_string(c.k) +
         " T=" + std::to_string(c.time);
}

// The module's tensors with random values (positive norm weights and running variances).
struct Fixture {
  Case c;
  std::unique_ptr<ParameterTable> table;
  std::unique_ptr<ParameterStore<double>> store;
  ConformerConvParams<double> p;
  std::vector<double> x, dout;
  std::vector<uint8_t> mask;

  explicit Fixture(const Case& cs, uint64_t seed = 1) : c(cs) {
    const int64_t d = c.d;
    const std::string pre = kPrefix;
    table = std::make_unique<ParameterTable>();
    auto add = [&](const std::string& name, Shape shape, ParamRegion region = ParamRegion::kDense) {
      table->add(pre + name, shape, region, ParamInit::kZeros, 1);
    };
    add(".pointwise_conv1.weight", Shape{2 * d, d, 1});
    add(".pointwise_conv1.bias", Shape{2 * d});
    add(".depthwise_conv.weight", Shape{d, 1, c.k});
    add(".depthwise_conv.bias", Shape{d});
    add(".norm.weight", Shape{d});
    add(".norm.bias", Shape{d});
    if (c.norm == ConvNormType::kBatchNorm) {
      add(".norm.running_mean", Shape{d}, ParamRegion::kBuffer);
      add(".norm.running_var", Shape{d}, ParamRegion::kBuffer);
    }
    add(".pointwise_conv2.weight", Shape{d, d, 1});
    add(".pointwise_conv2.bias", Shape{d});
    store = std::make_unique<ParameterStore<double>>(*table);
    uint64_t s = seed * 100;
    for (const ParamEntry& e : table->entries()) {
      const bool positive =
          e.name.find("norm.weight") != std::string::npos || e.name.find("running_var") != std::string::npos;
      auto v = positive ? random_doubles(e.numel, ++s, 0.5, 1.5) : random_doubles(e.numel, ++s, -0.8, 0.8);
      std::copy(v.begin(), v.end(), store->value(e));
    }
    p = bind_conformer_conv(store.get(), pre, c.norm, c.causal);
    x = random_doubles(c.batch * c.time * d, seed * 7 + 1, -1.5, 1.5);
    dout = random_doubles(c.batch * c.time * d, seed * 7 + 2);
    mask.assign(c.batch * c.time, 0);
    for (int64_t b = 0; b < c.batch; ++b)
      for (int64_t t = 0; t < c.lengths[b]; ++t) mask[b * c.time + t] = 1;
  }

  std::vector<double> value(const std::string& suffix) const {
    const ParamEntry& e = table->at(kPrefix + suffix);
    const double* v = store->value(e);
    return std::vector<double>(v, v + e.numel);
  }
};

double sigmoid(double v) {
  return 1.0 / (1.0 + std::exp(-v));
}

// A direct transcription of WeNet's ConvolutionModule.forward on the [B, T, d] layout (doubles).
// Updates rm / rv like BatchNorm1d in training.
std::vector<double> reference_forward(const Fixture& f, bool training, std::vector<double>* rm,
                                      std::vector<double>* rv) {
  const Case& c = f.c;
  const int64_t B = c.batch, T = c.time, d = c.d, K = c.k;
  auto w1 = f.value(".pointwise_conv1.weight"), b1 = f.value(".pointwise_conv1.bias");
  auto wd = f.value(".depthwise_conv.weight"), bd = f.value(".depthwise_conv.bias");
  auto nw = f.value(".norm.weight"), nb = f.value(".norm.bias");
  auto w2 = f.value(".pointwise_conv2.weight"), b2 = f.value(".pointwise_conv2.bias");
  const int64_t lpad = c.causal ? K - 1 : 0;
  const int64_t Tp = T + lpad;
  // masked_fill, then F.pad(x, (lorder, 0)) in causal mode
  std::vector<double> seq(B * Tp * d, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t ch = 0; ch < d; ++ch)
        seq[(b * Tp + t + lpad) * d + ch] = f.mask[b * T + t] ? f.x[(b * T + t) * d + ch] : 0.0;
  // pointwise_conv1 + GLU(dim=channels)
  std::vector<double> g(B * Tp * d);
  for (int64_t r = 0; r < B * Tp; ++r) {
    std::vector<double> h(2 * d);
    for (int64_t o = 0; o < 2 * d; ++o) {
      h[o] = b1[o];
      for (int64_t ch = 0; ch < d; ++ch) h[o] += w1[o * d + ch] * seq[r * d + ch];
    }
    for (int64_t ch = 0; ch < d; ++ch) g[r * d + ch] = h[ch] * sigmoid(h[d + ch]);
  }
  // depthwise Conv1d: padding 0 (causal, on the pre-padded sequence) or (K-1)/2 zeros of g.
  const int64_t conv_pad = c.causal ? 0 : (K - 1) / 2;
  std::vector<double> cv(B * T * d);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t ch = 0; ch < d; ++ch) {
        double acc = bd[ch];
        for (int64_t k = 0; k < K; ++k) {
          const int64_t src = t + k - conv_pad;
          if (src >= 0 && src < Tp) acc += wd[ch * K + k] * g[(b * Tp + src) * d + ch];
        }
        cv[(b * T + t) * d + ch] = acc;
      }
  // norm
  std::vector<double> n(B * T * d);
  const double eps = 1e-5;
  if (c.norm == ConvNormType::kLayerNorm) {
    for (int64_t r = 0; r < B * T; ++r) {
      double mean = 0, var = 0;
      for (int64_t ch = 0; ch < d; ++ch) mean += cv[r * d + ch];
      mean /= d;
      for (int64_t ch = 0; ch < d; ++ch) var += (cv[r * d + ch] - mean) * (cv[r * d + ch] - mean);
      var /= d;
      for (int64_t ch = 0; ch < d; ++ch)
        n[r * d + ch] = (cv[r * d + ch] - mean) / std::sqrt(var + eps) * nw[ch] + nb[ch];
    }
  } else {
    const int64_t N = B * T;
    for (int64_t ch = 0; ch < d; ++ch) {
      double mean, var;
      if (training) {  // statistics over every (b, t), padded frames included
        mean = 0;
        var = 0;
        for (int64_t r = 0; r < N; ++r) mean += cv[r * d + ch];
        mean /= N;
        for (int64_t r = 0; r < N; ++r) var += (cv[r * d + ch] - mean) * (cv[r * d + ch] - mean);
        var /= N;
        (*rm)[ch] = 0.9 * (*rm)[ch] + 0.1 * mean;
        (*rv)[ch] = 0.9 * (*rv)[ch] + 0.1 * var * N / (N - 1);
      } else {
        mean = (*rm)[ch];
        var = (*rv)[ch];
      }
      for (int64_t r = 0; r < N; ++r)
        n[r * d + ch] = (cv[r * d + ch] - mean) / std::sqrt(var + eps) * nw[ch] + nb[ch];
    }
  }
  // Swish, pointwise_conv2, masked_fill
  std::vector<double> out(B * T * d);
  for (int64_t r = 0; r < B * T; ++r) {
    for (int64_t o = 0; o < d; ++o) {
      double acc = b2[o];
      for (int64_t ch = 0; ch < d; ++ch) {
        const double v = n[r * d + ch];
        acc += w2[o * d + ch] * v * sigmoid(v);
      }
      out[r * d + o] = f.mask[r] ? acc : 0.0;
    }
  }
  return out;
}

void check_gradients(const Case& c, bool training, bool reference_kernels) {
  SCOPED_TRACE(describe(c) + (training ? " train" : " eval") + (reference_kernels ? " ref" : ""));
  Fixture f(c);
  RunContext ctx = testing::cpu_test_context(reference_kernels);
  Arena arena("act", 1 << 20, Arena::Growth::kGrowable);
  ctx.activations = &arena;
  const int64_t n = c.batch * c.time * c.d;
  std::vector<double> out(n), dx(n);
  ConformerConvSaved<double> saved;
  auto loss = [&]() {
    arena.reset();
    conformer_conv_forward(&saved, out.data(), f.x.data(), f.mask.data(), f.p, c.batch, c.time, training,
                           ctx);
    return testing::weighted_sum(out, f.dout);
  };
  auto grads = [&]() {
    f.store->zero_grads();
    loss();
    conformer_conv_backward(dx.data(), saved, f.dout.data(), f.p, c.batch, c.time, ctx);
  };
  std::vector<testing::GradTarget> targets = {{"x", f.x.data(), dx.data(), n}};
  for (const ParamEntry& e : f.table->entries()) {
    if (e.region == ParamRegion::kBuffer) continue;
    targets.push_back({e.name, f.store->value(e), f.store->grad(e), e.numel});
  }
  testing::GradCheckOptions options;
  options.rtol = 1e-5;
  options.atol = 1e-7;
  testing::expect_gradients_match(loss, grads, targets, options);
  // Padded input frames are zeroed first: their gradient is exactly 0.
  grads();
  for (int64_t r = 0; r < c.batch * c.time; ++r) {
    if (f.mask[r]) continue;
    for (int64_t j = 0; j < c.d; ++j) EXPECT_EQ(dx[r * c.d + j], 0.0) << "row " << r;
  }
}

TEST(ConformerConvGradcheck, AllModes) {
  for (bool causal : {true, false}) {
    for (ConvNormType norm : {ConvNormType::kLayerNorm, ConvNormType::kBatchNorm}) {
      for (int64_t k : {3, 5}) {
        Case c;
        c.causal = causal;
        c.norm = norm;
        c.k = k;
        check_gradients(c, /*training=*/true, /*reference_kernels=*/false);
      }
    }
  }
}

TEST(ConformerConvGradcheck, ReferenceKernelsAndBatchNormEval) {
  for (bool causal : {true, false}) {
    Case c;
    c.causal = causal;
    c.k = 5;
    check_gradients(c, true, /*reference_kernels=*/true);
    c.norm = ConvNormType::kBatchNorm;
    check_gradients(c, /*training=*/false, false);
  }
}

TEST(ConformerConvGradcheck, LengthOne) {
  for (bool causal : {true, false}) {
    for (ConvNormType norm : {ConvNormType::kLayerNorm, ConvNormType::kBatchNorm}) {
      Case c;
      c.time = 1;
      c.lengths = {1, 1};
      c.causal = causal;
      c.norm = norm;
      c.k = 5;  // kernel wider than the sequence
      check_gradients(c, true, false);
      c.lengths = {1, 0};  // one fully padded utterance
      check_gradients(c, true, false);
    }
  }
}

TEST(ConformerConvTest, ForwardMatchesWeNetTranscription) {
  for (bool causal : {true, false}) {
    for (ConvNormType norm : {ConvNormType::kLayerNorm, ConvNormType::kBatchNorm}) {
      for (bool training : {true, false}) {
        for (int64_t k : {3, 5}) {
          Case c;
          c.causal = causal;
          c.norm = norm;
          c.k = k;
          c.time = 7;
          c.lengths = {7, 4};
          SCOPED_TRACE(describe(c) + (training ? " train" : " eval"));
          Fixture f(c, 3);
          std::vector<double> rm, rv;
          if (norm == ConvNormType::kBatchNorm) {
            rm = f.value(".norm.running_mean");
            rv = f.value(".norm.running_var");
          }
          auto expected = reference_forward(f, training, &rm, &rv);
          RunContext ctx = testing::cpu_test_context();
          Arena arena("act", 1 << 20, Arena::Growth::kGrowable);
          ctx.activations = &arena;
          std::vector<double> out(expected.size());
          ConformerConvSaved<double> saved;
          conformer_conv_forward(&saved, out.data(), f.x.data(), f.mask.data(), f.p, c.batch, c.time,
                                 training, ctx);
          for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], expected[i], 1e-12) << i;
          if (norm == ConvNormType::kBatchNorm) {
            auto rm_after = f.value(".norm.running_mean");
            auto rv_after = f.value(".norm.running_var");
            for (int64_t ch = 0; ch < c.d; ++ch) {
              EXPECT_NEAR(rm_after[ch], rm[ch], 1e-12);
              EXPECT_NEAR(rv_after[ch], rv[ch], 1e-12);
            }
          }
        }
      }
    }
  }
}

// Causal mode: the K-1 pad frames of the GLU output (the depthwise conv's left context) are
// GLU(pointwise_conv1(0)) = GLU(pointwise_conv1.bias), not zero.
TEST(ConformerConvTest, CausalLeftContextIsGluOfBias) {
  Case c;
  c.causal = true;
  c.k = 3;
  c.lengths = {6, 3};
  Fixture f(c, 5);
  RunContext ctx = testing::cpu_test_context();
  Arena arena("act", 1 << 20, Arena::Growth::kGrowable);
  ctx.activations = &arena;
  const int64_t n = c.batch * c.time * c.d;
  std::vector<double> out(n);
  ConformerConvSaved<double> saved;
  conformer_conv_forward(&saved, out.data(), f.x.data(), f.mask.data(), f.p, c.batch, c.time, true, ctx);
  // The pad frames of the GLU output (saved->g rows 0 .. K-2 of each utterance) are GLU(bias) != 0.
  auto b1 = f.value(".pointwise_conv1.bias");
  const int64_t tp = c.time + c.k - 1;
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t t = 0; t < c.k - 1; ++t)
      for (int64_t ch = 0; ch < c.d; ++ch) {
        const double expected = b1[ch] * sigmoid(b1[c.d + ch]);
        EXPECT_NEAR(saved.g[(b * tp + t) * c.d + ch], expected, 1e-15);
        EXPECT_NE(expected, 0.0);
      }
}

TEST(ConformerConvTest, PaddedOutputRowsAreExactlyZero) {
  for (bool causal : {true, false}) {
    for (ConvNormType norm : {ConvNormType::kLayerNorm, ConvNormType::kBatchNorm}) {
      Case c;
      c.causal = causal;
      c.norm = norm;
      c.time = 9;
      c.lengths = {5, 1};
      Fixture f(c, 9);
      RunContext ctx = testing::cpu_test_context();
      Arena arena("act", 1 << 20, Arena::Growth::kGrowable);
      ctx.activations = &arena;
      std::vector<double> out(c.batch * c.time * c.d, 7.0);
      ConformerConvSaved<double> saved;
      conformer_conv_forward(&saved, out.data(), f.x.data(), f.mask.data(), f.p, c.batch, c.time, true, ctx);
      int zeros = 0;
      for (int64_t r = 0; r < c.batch * c.time; ++r) {
        for (int64_t j = 0; j < c.d; ++j) {
          if (!f.mask[r]) {
            EXPECT_EQ(out[r * c.d + j], 0.0) << describe(c) << " row " << r;
            ++zeros;
          } else {
            EXPECT_NE(out[r * c.d + j], 0.0);
          }
        }
      }
      EXPECT_EQ(zeros, (4 + 8) * c.d);
      // Changing padded input frames changes nothing (they are zeroed before pointwise_conv1).
      auto x2 = f.x;
      for (int64_t r = 0; r < c.batch * c.time; ++r)
        if (!f.mask[r])
          for (int64_t j = 0; j < c.d; ++j) x2[r * c.d + j] += 3.0;
      std::vector<double> out2(out.size());
      arena.reset();
      conformer_conv_forward(&saved, out2.data(), x2.data(), f.mask.data(), f.p, c.batch, c.time,
                             /*training=*/false, ctx);
      arena.reset();
      conformer_conv_forward(&saved, out.data(), f.x.data(), f.mask.data(), f.p, c.batch, c.time, false, ctx);
      for (size_t i = 0; i < out.size(); ++i) EXPECT_EQ(out[i], out2[i]);
    }
  }
}

// Causal mode: output frame t depends on input frames <= t only (LayerNorm, and BatchNorm in eval:
// BatchNorm's training statistics mix all frames, exactly as in WeNet).
TEST(ConformerConvTest, CausalOutputIgnoresFutureFrames) {
  for (ConvNormType norm : {ConvNormType::kLayerNorm, ConvNormType::kBatchNorm}) {
    for (int64_t k : {3, 5}) {
      Case c;
      c.causal = true;
      c.norm = norm;
      c.k = k;
      c.time = 8;
      c.lengths = {8, 8};
      Fixture f(c, 11);
      RunContext ctx = testing::cpu_test_context();
      Arena arena("act", 1 << 20, Arena::Growth::kGrowable);
      ctx.activations = &arena;
      const int64_t d = c.d;
      std::vector<double> base(c.batch * c.time * d), changed(base.size());
      ConformerConvSaved<double> saved;
      conformer_conv_forward(&saved, base.data(), f.x.data(), f.mask.data(), f.p, c.batch, c.time, false,
                             ctx);
      for (int64_t t = 0; t < c.time - 1; ++t) {
        auto x2 = f.x;
        for (int64_t b = 0; b < c.batch; ++b)
          for (int64_t u = t + 1; u < c.time; ++u)
            for (int64_t j = 0; j < d; ++j) x2[(b * c.time + u) * d + j] += 0.5 + 0.1 * j;
        arena.reset();
        conformer_conv_forward(&saved, changed.data(), x2.data(), f.mask.data(), f.p, c.batch, c.time, false,
                               ctx);
        for (int64_t b = 0; b < c.batch; ++b) {
          for (int64_t u = 0; u < c.time; ++u) {
            for (int64_t j = 0; j < d; ++j) {
              const int64_t i = (b * c.time + u) * d + j;
              if (u <= t) {
                EXPECT_EQ(changed[i], base[i]) << "k=" << k << " t=" << t << " frame " << u;
              }
            }
          }
          // and the frame right after does change
          EXPECT_NE(changed[(b * c.time + t + 1) * d], base[(b * c.time + t + 1) * d]);
        }
      }
    }
  }
}

TEST(ConformerConvTest, FloatMatchesDouble) {
  for (bool causal : {true, false}) {
    for (ConvNormType norm : {ConvNormType::kLayerNorm, ConvNormType::kBatchNorm}) {
      Case c;
      c.causal = causal;
      c.norm = norm;
      c.k = 5;
      c.d = 12;
      c.time = 11;
      c.batch = 3;
      c.lengths = {11, 6, 2};
      SCOPED_TRACE(describe(c));
      Fixture f(c, 13);
      ParameterStore<float> fstore(*f.table);
      for (int r = 0; r < kNumParamRegions; ++r)
        for (size_t i = 0; i < f.store->values[r].size(); ++i)
          fstore.values[r][i] = static_cast<float>(f.store->values[r][i]);
      auto fp = bind_conformer_conv(&fstore, kPrefix, norm, causal);
      const int64_t n = c.batch * c.time * c.d;
      std::vector<float> fx(f.x.begin(), f.x.end()), fdout(f.dout.begin(), f.dout.end()), fout(n), fdx(n);
      std::vector<double> out(n), dx(n);
      RunContext ctx = testing::cpu_test_context();
      Arena arena("act", 1 << 20, Arena::Growth::kGrowable);
      ctx.activations = &arena;
      ConformerConvSaved<double> saved;
      ConformerConvSaved<float> fsaved;
      conformer_conv_forward(&saved, out.data(), f.x.data(), f.mask.data(), f.p, c.batch, c.time, true, ctx);
      conformer_conv_backward(dx.data(), saved, f.dout.data(), f.p, c.batch, c.time, ctx);
      conformer_conv_forward(&fsaved, fout.data(), fx.data(), f.mask.data(), fp, c.batch, c.time, true, ctx);
      conformer_conv_backward(fdx.data(), fsaved, fdout.data(), fp, c.batch, c.time, ctx);
      for (int64_t i = 0; i < n; ++i) {
        EXPECT_NEAR(fout[i], out[i], 1e-4 * (1 + std::fabs(out[i])));
        EXPECT_NEAR(fdx[i], dx[i], 1e-4 * (1 + std::fabs(dx[i])));
      }
      for (const ParamEntry& e : f.table->entries()) {
        if (e.region == ParamRegion::kBuffer) continue;
        const double* g = f.store->grad(e);
        const float* fg = fstore.grad(e);
        for (int64_t i = 0; i < e.numel; ++i)
          EXPECT_NEAR(fg[i], g[i], 2e-4 * (1 + std::fabs(g[i]))) << e.name;
      }
    }
  }
}

}  // namespace
}  // namespace moeasr
