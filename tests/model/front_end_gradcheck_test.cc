// tests/model/front_end_gradcheck_test.cc — finite-difference gradients (double) of the front end
// (model/front_end.h): Conv2dSubsampling4 for every parameter and the input (T = 15, F = 11, d = 4, and
// a length that leaves one output frame), and both positional encodings with dropout active.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "core/arena.h"
#include "model/front_end.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::random_doubles;

struct SubsamplingFixture {
  std::unique_ptr<ParameterTable> table;
  std::unique_ptr<ParameterStore<double>> store;
  Conv2dSubsampling4Params<double> p;

  SubsamplingFixture(int64_t d, int64_t feat, uint64_t seed) {
    const int64_t sub_freq = conv2d_subsampling4_output_size(feat);
    table = std::make_unique<ParameterTable>();
    table->add("encoder.embed.conv.0.weight", Shape{d, 1, 3, 3}, ParamRegion::kDense, ParamInit::kZeros, 9);
    table->add("encoder.embed.conv.0.bias", Shape{d}, ParamRegion::kDense, ParamInit::kZeros, 9);
    table->add("encoder.embed.conv.2.weight", Shape{d, d, 3, 3}, ParamRegion::kDense, ParamInit::kZeros,
               9 * d);
    table->add("encoder.embed.conv.2.bias", Shape{d}, ParamRegion::kDense, ParamInit::kZeros, 9 * d);
    table->add("encoder.embed.out.0.weight", Shape{d, d * sub_freq}, ParamRegion::kDense, ParamInit::kZeros,
               d * sub_freq);
    table->add("encoder.embed.out.0.bias", Shape{d}, ParamRegion::kDense, ParamInit::kZeros, d * sub_freq);
    store = std::make_unique<ParameterStore<double>>(*table);
    uint64_t s = seed * 10;
    for (const ParamEntry& e : table->entries()) {
      auto v = random_doubles(e.numel, ++s, -0.6, 0.6);
      std::copy(v.begin(), v.end(), store->value(e));
    }
    p = bind_conv2d_subsampling4(store.get(), "encoder.embed");
  }
};

void check_subsampling(int64_t batch, int64_t time, int64_t feat, int64_t d, bool reference_kernels) {
  SCOPED_TRACE("T=" + std::to_string(time) + " F=" + std::to_string(feat) +
               (reference_kernels ? " ref" : ""));
  SubsamplingFixture f(d, feat, 3);
  RunContext ctx = testing::cpu_test_context(reference_kernels);
  Arena arena("act", 1 << 20, Arena::Growth::kGrowable);
  ctx.activations = &arena;
  const int64_t t_out = conv2d_subsampling4_output_size(time);
  auto x = random_doubles(batch * time * feat, 5, -2.0, 2.0);
  auto dout = random_doubles(batch * t_out * d, 6);
  std::vector<double> out(batch * t_out * d), dx(x.size());
  Conv2dSubsampling4Saved<double> saved;
  auto loss = [&]() {
    arena.reset();
    conv2d_subsampling4_forward(&saved, out.data(), x.data(), f.p, batch, time, feat, ctx);
    return testing::weighted_sum(out, dout);
  };
  auto grads = [&]() {
    f.store->zero_grads();
    loss();
    conv2d_subsampling4_backward(dx.data(), saved, dout.data(), f.p, batch, time, feat, ctx);
  };
  std::vector<testing::GradTarget> targets = {{"x", x.data(), dx.data(), static_cast<int64_t>(x.size())}};
  for (const ParamEntry& e : f.table->entries())
    targets.push_back({e.name, f.store->value(e), f.store->grad(e), e.numel});
  testing::GradCheckOptions options;
  options.rtol = 1e-5;
  options.atol = 1e-7;
  testing::expect_gradients_match(loss, grads, targets, options);

  // dx = null (the input is data) gives the same parameter gradients.
  grads();
  std::vector<std::vector<double>> with_dx;
  for (const ParamEntry& e : f.table->entries())
    with_dx.emplace_back(f.store->grad(e), f.store->grad(e) + e.numel);
  f.store->zero_grads();
  arena.reset();
  conv2d_subsampling4_forward(&saved, out.data(), x.data(), f.p, batch, time, feat, ctx);
  conv2d_subsampling4_backward<double>(nullptr, saved, dout.data(), f.p, batch, time, feat, ctx);
  size_t i = 0;
  for (const ParamEntry& e : f.table->entries()) {
    for (int64_t j = 0; j < e.numel; ++j) EXPECT_EQ(f.store->grad(e)[j], with_dx[i][j]) << e.name;
    ++i;
  }
}

TEST(Conv2dSubsampling4Gradcheck, AllParameters) {
  check_subsampling(2, 15, 11, 4, false);
  check_subsampling(2, 15, 11, 4, true);
  check_subsampling(1, 7, 7, 3, false);  // T' = F' = 1
}

struct PosCase {
  int64_t batch = 2, time = 5, d = 6, offset = 3;
  double rate = 0.3;
  bool training = true;
};

StepRng make_rng(bool training) {
  StepRng rng;
  rng.base.seed = 1234;
  rng.base.step = 7;
  rng.training = training;
  return rng;
}

TEST(PositionalEncodingGradcheck, RelativeWithDropout) {
  for (bool training : {true, false}) {
    PosCase c;
    std::vector<double> table(kPositionalEncodingMaxLen * c.d);
    sinusoid_position_table(table.data(), kPositionalEncodingMaxLen, c.d);
    PositionalEncodingParams<double> p;
    p.table = table.data();
    p.d_model = c.d;
    p.dropout_rate = c.rate;
    StepRng rng = make_rng(training);
    RunContext ctx = testing::cpu_test_context();
    const int64_t n = c.batch * c.time * c.d;
    auto x = random_doubles(n, 1), dout = random_doubles(n, 2);
    std::vector<double> out(n), dx(n), pos(c.time * c.d);
    auto loss = [&]() {
      rel_positional_encoding_forward(out.data(), pos.data(), x.data(), p, c.offset, c.batch, c.time, 4, rng,
                                      ctx);
      return testing::weighted_sum(out, dout);
    };
    auto grads = [&]() {
      rel_positional_encoding_backward(dx.data(), dout.data(), p, c.batch, c.time, 4, rng, ctx);
    };
    testing::expect_gradients_match(loss, grads, {{"x", x.data(), dx.data(), n}});
    if (training) {
      int dropped = 0;
      for (double g : dx) dropped += g == 0.0;
      EXPECT_GT(dropped, 0) << "dropout at rate 0.3 dropped nothing";
    }
  }
}

TEST(PositionalEncodingGradcheck, AbsoluteWithDropout) {
  for (bool training : {true, false}) {
    PosCase c;
    c.d = 8;
    c.time = 4;
    c.batch = 3;
    std::vector<double> table(64 * c.d);
    sinusoid_position_table(table.data(), 64, c.d);
    PositionalEncodingParams<double> p;
    p.table = table.data();
    p.max_len = 64;
    p.d_model = c.d;
    p.dropout_rate = c.rate;
    StepRng rng = make_rng(training);
    RunContext ctx = testing::cpu_test_context();
    const int64_t n = c.batch * c.time * c.d;
    auto x = random_doubles(n, 3), dout = random_doubles(n, 4);
    std::vector<double> out(n), dx(n);
    auto loss = [&]() {
      positional_encoding_forward(out.data(), x.data(), p, c.offset, c.batch, c.time, 9, rng, ctx);
      return testing::weighted_sum(out, dout);
    };
    auto grads = [&]() {
      positional_encoding_backward(dx.data(), dout.data(), p, c.batch, c.time, 9, rng, ctx);
    };
    testing::expect_gradients_match(loss, grads, {{"x", x.data(), dx.data(), n}});
  }
}

}  // namespace
}  // namespace moeasr
