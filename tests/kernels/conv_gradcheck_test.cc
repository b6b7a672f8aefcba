// tests/kernels/conv_gradcheck_test.cc — finite-difference gradients (double) of conv2d_3x3s2 (im2col
// path and reference loop) and depthwise_conv1d (symmetric and causal padding), including odd sizes,
// length 1, kernel longer than the sequence, no bias, empty outputs and gradient accumulation (+=).
#include <gtest/gtest.h>

#include <vector>

#include "kernels/cpu/conv.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::random_doubles;

void check_conv2d(int64_t batch, int64_t cin, int64_t cout, int64_t height, int64_t width, bool with_bias,
                  bool reference) {
  SCOPED_TRACE(::testing::Message() << "B=" << batch << " Cin=" << cin << " Cout=" << cout << " H=" << height
                                    << " W=" << width << " bias=" << with_bias << " reference=" << reference);
  RunContext ctx = testing::cpu_test_context(reference);
  const int64_t ho = conv2d_3x3s2_output_size(height), wo = conv2d_3x3s2_output_size(width);
  const int64_t nx = batch * cin * height * width, nw = cout * cin * 9, ny = batch * cout * ho * wo;
  auto x = random_doubles(nx, 31);
  auto w = random_doubles(nw, 32);
  auto b = random_doubles(cout, 33);
  auto dy = random_doubles(ny, 34);
  std::vector<double> y(ny), dx(nx), dw(nw), db(cout);
  std::vector<double> scratch(conv2d_3x3s2_workspace_elems(cin, height, width));
  const double* bias = with_bias ? b.data() : nullptr;
  auto loss = [&]() {
    conv2d_3x3s2_forward(y.data(), scratch.data(), x.data(), w.data(), bias, batch, cin, cout, height, width,
                         ctx);
    return testing::weighted_sum(y, dy);
  };
  auto grads = [&]() {
    std::fill(dw.begin(), dw.end(), 0.0);
    std::fill(db.begin(), db.end(), 0.0);
    conv2d_3x3s2_backward(dx.data(), dw.data(), with_bias ? db.data() : nullptr, scratch.data(), dy.data(),
                          x.data(), w.data(), batch, cin, cout, height, width, ctx);
  };
  std::vector<testing::GradTarget> targets = {{"x", x.data(), dx.data(), nx}, {"w", w.data(), dw.data(), nw}};
  if (with_bias) targets.push_back({"b", b.data(), db.data(), cout});
  testing::expect_gradients_match(loss, grads, targets);
}

TEST(Conv2d3x3s2Gradcheck, OddSizesBothPaths) {
  for (bool reference : {false, true}) {
    check_conv2d(2, 2, 3, 7, 8, true, reference);
    check_conv2d(1, 3, 2, 5, 9, false, reference);
    check_conv2d(1, 1, 1, 3, 3, true, reference);   // a single output position
    check_conv2d(2, 1, 4, 10, 6, true, reference);  // Cin = 1 as in the first subsampling conv
  }
}

TEST(Conv2d3x3s2Gradcheck, EmptyOutputGivesZeroInputGradient) {
  // H < 3: no output; dx must be assigned zeros and the parameter gradients must not move.
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    const int64_t batch = 2, cin = 2, cout = 3, height = 2, width = 7;
    auto x = random_doubles(batch * cin * height * width, 1);
    auto w = random_doubles(cout * cin * 9, 2);
    std::vector<double> dx(x.size(), 7.0), dw(w.size(), 0.5), db(cout, 0.25);
    std::vector<double> scratch(conv2d_3x3s2_workspace_elems(cin, height, width) + 1);
    EXPECT_EQ(conv2d_3x3s2_output_size(height), 0);
    conv2d_3x3s2_backward<double>(dx.data(), dw.data(), db.data(), scratch.data(), nullptr, x.data(),
                                  w.data(), batch, cin, cout, height, width, ctx);
    for (double g : dx) EXPECT_EQ(g, 0.0);
    for (double g : dw) EXPECT_EQ(g, 0.5);
    for (double g : db) EXPECT_EQ(g, 0.25);
  }
}

TEST(Conv2d3x3s2Gradcheck, ParameterGradientsAccumulate) {
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    const int64_t batch = 2, cin = 2, cout = 3, height = 7, width = 5;
    const int64_t ny = batch * cout * conv2d_3x3s2_output_size(height) * conv2d_3x3s2_output_size(width);
    auto x = random_doubles(batch * cin * height * width, 1), w = random_doubles(cout * cin * 9, 2);
    auto dy = random_doubles(ny, 3);
    std::vector<double> dx(x.size()), dw(w.size(), 0.0), db(cout, 0.0);
    std::vector<double> scratch(conv2d_3x3s2_workspace_elems(cin, height, width));
    conv2d_3x3s2_backward(dx.data(), dw.data(), db.data(), scratch.data(), dy.data(), x.data(), w.data(),
                          batch, cin, cout, height, width, ctx);
    auto dw_once = dw, db_once = db, dx_once = dx;
    conv2d_3x3s2_backward(dx.data(), dw.data(), db.data(), scratch.data(), dy.data(), x.data(), w.data(),
                          batch, cin, cout, height, width, ctx);
    for (size_t i = 0; i < dw.size(); ++i) EXPECT_DOUBLE_EQ(dw[i], 2 * dw_once[i]);
    for (size_t i = 0; i < db.size(); ++i) EXPECT_DOUBLE_EQ(db[i], 2 * db_once[i]);
    for (size_t i = 0; i < dx.size(); ++i) EXPECT_EQ(dx[i], dx_once[i]);  // assigned, not accumulated
  }
}

void check_depthwise(int64_t batch, int64_t time, int64_t channels, int64_t kernel, Conv1dPadding padding,
                     bool with_bias, bool reference) {
  SCOPED_TRACE(::testing::Message() << "B=" << batch << " T=" << time << " C=" << channels << " K=" << kernel
                                    << " causal=" << (padding == Conv1dPadding::kCausal)
                                    << " bias=" << with_bias << " reference=" << reference);
  RunContext ctx = testing::cpu_test_context(reference);
  const int64_t nx = batch * time * channels, nw = channels * kernel;
  auto x = random_doubles(nx, 41);
  auto w = random_doubles(nw, 42);
  auto b = random_doubles(channels, 43);
  auto dy = random_doubles(nx, 44);
  std::vector<double> y(nx), dx(nx), dw(nw), db(channels);
  const double* bias = with_bias ? b.data() : nullptr;
  auto loss = [&]() {
    depthwise_conv1d_forward(y.data(), x.data(), w.data(), bias, padding, batch, time, channels, kernel, ctx);
    return testing::weighted_sum(y, dy);
  };
  auto grads = [&]() {
    std::fill(dw.begin(), dw.end(), 0.0);
    std::fill(db.begin(), db.end(), 0.0);
    depthwise_conv1d_backward(dx.data(), dw.data(), with_bias ? db.data() : nullptr, dy.data(), x.data(),
                              w.data(), padding, batch, time, channels, kernel, ctx);
  };
  std::vector<testing::GradTarget> targets = {{"x", x.data(), dx.data(), nx}, {"w", w.data(), dw.data(), nw}};
  if (with_bias) targets.push_back({"b", b.data(), db.data(), channels});
  testing::expect_gradients_match(loss, grads, targets);
}

TEST(DepthwiseConv1dGradcheck, SymmetricAndCausal) {
  for (bool reference : {false, true}) {
    for (Conv1dPadding padding : {Conv1dPadding::kSymmetric, Conv1dPadding::kCausal}) {
      check_depthwise(2, 7, 3, 5, padding, true, reference);
      check_depthwise(1, 9, 5, 3, padding, false, reference);
      check_depthwise(2, 1, 3, 3, padding, true, reference);  // T = 1
      check_depthwise(2, 4, 2, 1, padding, true, reference);  // K = 1
      check_depthwise(1, 2, 3, 7, padding, true, reference);  // K > T
    }
    // Causal padding also takes even kernels (the aishell U2++ recipe uses K = 8).
    check_depthwise(2, 6, 3, 8, Conv1dPadding::kCausal, true, reference);
    check_depthwise(1, 5, 67, 4, Conv1dPadding::kCausal, true, reference);  // more than one channel block
  }
}

TEST(DepthwiseConv1dGradcheck, EmptySequenceLeavesParameterGradients) {
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    const int64_t channels = 3, kernel = 5;
    auto w = random_doubles(channels * kernel, 1);
    std::vector<double> dw(w.size(), 0.5), db(channels, 0.25);
    for (Conv1dPadding padding : {Conv1dPadding::kSymmetric, Conv1dPadding::kCausal}) {
      depthwise_conv1d_backward<double>(nullptr, dw.data(), db.data(), nullptr, nullptr, w.data(), padding, 2,
                                        0, channels, kernel, ctx);
    }
    for (double g : dw) EXPECT_EQ(g, 0.5);
    for (double g : db) EXPECT_EQ(g, 0.25);
  }
}

TEST(DepthwiseConv1dGradcheck, ParameterGradientsAccumulate) {
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    const int64_t batch = 2, time = 6, channels = 3, kernel = 3;
    auto x = random_doubles(batch * time * channels, 1), w = random_doubles(channels * kernel, 2);
    auto dy = random_doubles(x.size(), 3);
    std::vector<double> dx(x.size()), dw(w.size(), 0.0), db(channels, 0.0);
    depthwise_conv1d_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(),
                              Conv1dPadding::kSymmetric, batch, time, channels, kernel, ctx);
    auto dw_once = dw, db_once = db, dx_once = dx;
    depthwise_conv1d_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(),
                              Conv1dPadding::kSymmetric, batch, time, channels, kernel, ctx);
    for (size_t i = 0; i < dw.size(); ++i) EXPECT_DOUBLE_EQ(dw[i], 2 * dw_once[i]);
    for (size_t i = 0; i < db.size(); ++i) EXPECT_DOUBLE_EQ(db[i], 2 * db_once[i]);
    for (size_t i = 0; i < dx.size(); ++i) EXPECT_EQ(dx[i], dx_once[i]);
  }
}

}  // namespace
}  // namespace moeasr
