// tests/kernels/conv_test.cc — exact answers for conv2d_3x3s2 and depthwise_conv1d on hand-computed
// cases (both paths), the im2col + GEMM path against the direct reference loop on random odd sizes
// (float and double), float against double, thread-count invariance, and the output-size formula of
// WeNet's Conv2dSubsampling4.
#include "kernels/cpu/conv.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::random_doubles;
using testing::random_floats;

TEST(Conv2d3x3s2, OutputSizeMatchesConv2dSubsampling4) {
  EXPECT_EQ(conv2d_3x3s2_output_size(0), 0);
  EXPECT_EQ(conv2d_3x3s2_output_size(2), 0);
  EXPECT_EQ(conv2d_3x3s2_output_size(3), 1);
  EXPECT_EQ(conv2d_3x3s2_output_size(4), 1);
  EXPECT_EQ(conv2d_3x3s2_output_size(5), 2);
  // Two convs: F' = ((80 - 1) // 2 - 1) // 2 = 19 and T' = ((T - 1) // 2 - 1) // 2 (WeNet).
  EXPECT_EQ(conv2d_3x3s2_output_size(conv2d_3x3s2_output_size(80)), 19);
  for (int64_t t = 7; t < 200; ++t) {
    EXPECT_EQ(conv2d_3x3s2_output_size(conv2d_3x3s2_output_size(t)), ((t - 1) / 2 - 1) / 2) << "T=" << t;
  }
  EXPECT_EQ(conv2d_3x3s2_workspace_elems(4, 7, 9), 4 * 9 * 3 * 4);
}

TEST(Conv2d3x3s2, ExactHandComputedCase) {
  // x = 0..24 as a 5x5 image, two output channels: all-ones kernel + bias 1, and a kernel with a single
  // 1 at (2, 1) (picks x[2 oh + 2, 2 ow + 1]) without bias. Output 2x2.
  std::vector<float> x(25);
  for (int i = 0; i < 25; ++i) x[i] = static_cast<float>(i);
  std::vector<float> w(18, 0.0f);
  for (int i = 0; i < 9; ++i) w[i] = 1.0f;
  w[9 + 2 * 3 + 1] = 1.0f;
  std::vector<float> bias = {1.0f, 0.0f};
  // Channel 0: sums of 3x3 blocks at (0,0), (0,2), (2,0), (2,2) = 54, 72, 144, 162, plus 1.
  // Channel 1: x[2][1], x[2][3], x[4][1], x[4][3] = 11, 13, 21, 23.
  const std::vector<float> want = {55, 73, 145, 163, 11, 13, 21, 23};
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    std::vector<float> y(8, -1.0f), scratch(conv2d_3x3s2_workspace_elems(1, 5, 5));
    conv2d_3x3s2_forward(y.data(), scratch.data(), x.data(), w.data(), bias.data(), 1, 1, 2, 5, 5, ctx);
    for (int i = 0; i < 8; ++i) EXPECT_EQ(y[i], want[i]) << "i=" << i << " reference=" << reference;

    // Backward with dy = 1 everywhere: dbias = 4 per channel; dw[c][kh][kw] = sum of the four inputs
    // under tap (kh, kw) = x[kh][kw] + x[kh][kw+2] + x[kh+2][kw] + x[kh+2][kw+2] = 4 * (5 kh + kw) + 24.
    // dx[h][w] = sum over outputs covering (h, w) of w0 + w1 taps.
    std::vector<float> dy(8, 1.0f), dx(25, -1.0f), dw(18, 0.0f), db(2, 0.0f);
    conv2d_3x3s2_backward(dx.data(), dw.data(), db.data(), scratch.data(), dy.data(), x.data(), w.data(), 1,
                          1, 2, 5, 5, ctx);
    EXPECT_EQ(db[0], 4.0f);
    EXPECT_EQ(db[1], 4.0f);
    for (int c = 0; c < 2; ++c)
      for (int kh = 0; kh < 3; ++kh)
        for (int kw = 0; kw < 3; ++kw)
          EXPECT_EQ(dw[c * 9 + kh * 3 + kw], static_cast<float>(4 * (5 * kh + kw) + 24));
    // Coverage count along one axis: positions 0,1 -> 1 window, 2 -> 2 windows, 3,4 -> 1 window.
    const int cover[5] = {1, 1, 2, 1, 1};
    for (int h = 0; h < 5; ++h)
      for (int wc = 0; wc < 5; ++wc) {
        float want_dx = static_cast<float>(cover[h] * cover[wc]);  // all-ones kernel of channel 0
        if (h % 2 == 0 && h >= 2 && wc % 2 == 1) want_dx += 1.0f;  // tap (2, 1) of channel 1
        EXPECT_EQ(dx[h * 5 + wc], want_dx) << "h=" << h << " w=" << wc << " reference=" << reference;
      }
  }
}

template <class T>
std::vector<T> random_values(int64_t n, uint64_t seed);
template <>
std::vector<float> random_values<float>(int64_t n, uint64_t seed) {
  return random_floats(n, seed);
}
template <>
std::vector<double> random_values<double>(int64_t n, uint64_t seed) {
  return random_doubles(n, seed);
}

template <class T>
void expect_close(const std::vector<T>& got, const std::vector<T>& want, double tol, const char* what) {
  ASSERT_EQ(got.size(), want.size());
  double norm = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    norm += std::fabs(static_cast<double>(want[i]));
    ASSERT_NEAR(got[i], want[i], tol * (1.0 + std::fabs(static_cast<double>(want[i]))))
        << what << "[" << i << "]";
  }
  if (!got.empty()) {
    EXPECT_GT(norm, 0.0) << what << " is all zeros: the comparison proves nothing";
  }
}

template <class T>
void conv2d_im2col_vs_reference(int64_t batch, int64_t cin, int64_t cout, int64_t height, int64_t width,
                                double tol) {
  SCOPED_TRACE(::testing::Message() << "B=" << batch << " Cin=" << cin << " Cout=" << cout << " H=" << height
                                    << " W=" << width);
  const int64_t ny = batch * cout * conv2d_3x3s2_output_size(height) * conv2d_3x3s2_output_size(width);
  auto x = random_values<T>(batch * cin * height * width, 1);
  auto w = random_values<T>(cout * cin * 9, 2);
  auto b = random_values<T>(cout, 3);
  auto dy = random_values<T>(ny, 4);
  std::vector<T> scratch(conv2d_3x3s2_workspace_elems(cin, height, width));
  std::vector<std::vector<T>> y(2, std::vector<T>(ny)), dx(2, std::vector<T>(x.size())),
      dw(2, std::vector<T>(w.size(), T(0.5))), db(2, std::vector<T>(cout, T(0.5)));
  for (int path = 0; path < 2; ++path) {
    RunContext ctx = testing::cpu_test_context(path == 1);
    conv2d_3x3s2_forward(y[path].data(), scratch.data(), x.data(), w.data(), b.data(), batch, cin, cout,
                         height, width, ctx);
    conv2d_3x3s2_backward(dx[path].data(), dw[path].data(), db[path].data(), scratch.data(), dy.data(),
                          x.data(), w.data(), batch, cin, cout, height, width, ctx);
  }
  expect_close(y[0], y[1], tol, "y");
  expect_close(dx[0], dx[1], tol, "dx");
  expect_close(dw[0], dw[1], tol, "dw");
  expect_close(db[0], db[1], tol, "db");
}

TEST(Conv2d3x3s2, Im2colMatchesReferenceLoopOnRandomOddSizes) {
  conv2d_im2col_vs_reference<double>(2, 3, 5, 11, 9, 1e-12);
  conv2d_im2col_vs_reference<double>(3, 1, 7, 13, 21, 1e-12);
  conv2d_im2col_vs_reference<double>(1, 5, 3, 4, 3, 1e-12);
  conv2d_im2col_vs_reference<float>(2, 3, 5, 11, 9, 1e-5);
  conv2d_im2col_vs_reference<float>(2, 7, 9, 27, 17, 1e-5);  // enough work for the parallel im2col/col2im
  conv2d_im2col_vs_reference<float>(1, 1, 4, 41, 80, 1e-5);  // first subsampling conv, 80 mel bins
}

TEST(Conv2d3x3s2, FloatMatchesDouble) {
  const int64_t batch = 2, cin = 3, cout = 4, height = 9, width = 11;
  const int64_t ny = batch * cout * conv2d_3x3s2_output_size(height) * conv2d_3x3s2_output_size(width);
  auto xd = random_doubles(batch * cin * height * width, 5), wd = random_doubles(cout * cin * 9, 6);
  auto bd = random_doubles(cout, 7);
  std::vector<float> xf(xd.begin(), xd.end()), wf(wd.begin(), wd.end()), bf(bd.begin(), bd.end());
  std::vector<double> yd(ny), sd(conv2d_3x3s2_workspace_elems(cin, height, width));
  std::vector<float> yf(ny), sf(sd.size());
  RunContext ctx = testing::cpu_test_context();
  conv2d_3x3s2_forward(yd.data(), sd.data(), xd.data(), wd.data(), bd.data(), batch, cin, cout, height, width,
                       ctx);
  conv2d_3x3s2_forward(yf.data(), sf.data(), xf.data(), wf.data(), bf.data(), batch, cin, cout, height, width,
                       ctx);
  for (int64_t i = 0; i < ny; ++i) EXPECT_NEAR(yf[i], yd[i], 1e-5) << "i=" << i;
}

TEST(Conv2d3x3s2, NoBiasAndNoInputChannels) {
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    // Cin = 0: the output is the bias (or zero), dbias still gets the dy sums.
    std::vector<double> y(2 * 2 * 2 * 3, -1.0), bias = {0.5, -2.0}, dy(y.size(), 1.0), db(2, 0.0);
    conv2d_3x3s2_forward<double>(y.data(), nullptr, nullptr, nullptr, bias.data(), 2, 0, 2, 5, 7, ctx);
    for (size_t i = 0; i < y.size(); ++i) EXPECT_EQ(y[i], i % 12 < 6 ? 0.5 : -2.0) << "i=" << i;
    conv2d_3x3s2_forward<double>(y.data(), nullptr, nullptr, nullptr, nullptr, 2, 0, 2, 5, 7, ctx);
    for (double v : y) EXPECT_EQ(v, 0.0);
    conv2d_3x3s2_backward<double>(nullptr, nullptr, db.data(), nullptr, dy.data(), nullptr, nullptr, 2, 0, 2,
                                  5, 7, ctx);
    EXPECT_EQ(db[0], 12.0);
    EXPECT_EQ(db[1], 12.0);
  }
}

// ---- depthwise conv1d --------------------------------------------------------------------------------

// One channel, x = [1, 2, 3, 4], w = [1, 10, 100]: the digits show which neighbour each tap reads.
TEST(DepthwiseConv1d, ExactSymmetricAndCausal) {
  const std::vector<double> x = {1, 2, 3, 4}, w = {1, 10, 100};
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    std::vector<double> y(4);
    // Symmetric: y[t] = x[t-1] + 10 x[t] + 100 x[t+1].
    depthwise_conv1d_forward<double>(y.data(), x.data(), w.data(), nullptr, Conv1dPadding::kSymmetric, 1, 4,
                                     1, 3, ctx);
    EXPECT_EQ(y, (std::vector<double>{210, 321, 432, 43}));
    // Causal: y[t] = x[t-2] + 10 x[t-1] + 100 x[t].
    depthwise_conv1d_forward<double>(y.data(), x.data(), w.data(), nullptr, Conv1dPadding::kCausal, 1, 4, 1,
                                     3, ctx);
    EXPECT_EQ(y, (std::vector<double>{100, 210, 321, 432}));
    // Backward with dy = [1, 0, 0, 0] (symmetric): y[0] reads x[0] (w=10), x[1] (w=100); dw taps read
    // x[-1] = 0, x[0] = 1, x[1] = 2.
    std::vector<double> dy = {1, 0, 0, 0}, dx(4), dw(3, 0.0), db(1, 0.0);
    depthwise_conv1d_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(),
                              Conv1dPadding::kSymmetric, 1, 4, 1, 3, ctx);
    EXPECT_EQ(dx, (std::vector<double>{10, 100, 0, 0}));
    EXPECT_EQ(dw, (std::vector<double>{0, 1, 2}));
    EXPECT_EQ(db[0], 1.0);
    // Causal, dy = [0, 0, 0, 1]: y[3] reads x[1] (w=1), x[2] (w=10), x[3] (w=100).
    dy = {0, 0, 0, 1};
    std::fill(dw.begin(), dw.end(), 0.0);
    depthwise_conv1d_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(),
                              Conv1dPadding::kCausal, 1, 4, 1, 3, ctx);
    EXPECT_EQ(dx, (std::vector<double>{0, 1, 10, 100}));
    EXPECT_EQ(dw, (std::vector<double>{2, 3, 4}));
    EXPECT_EQ(db[0], 2.0);
  }
}

TEST(DepthwiseConv1d, ExactKernelLongerThanSequenceAndLengthOne) {
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    // K = 5 > T = 2, symmetric: y[t] = sum_k w[k] x[t + k - 2].
    const std::vector<double> x = {1, 2}, w = {1, 10, 100, 1000, 10000}, bias = {0.5};
    std::vector<double> y(2);
    depthwise_conv1d_forward(y.data(), x.data(), w.data(), bias.data(), Conv1dPadding::kSymmetric, 1, 2, 1, 5,
                             ctx);
    EXPECT_EQ(y, (std::vector<double>{100 * 1 + 1000 * 2 + 0.5, 10 * 1 + 100 * 2 + 0.5}));
    // Causal: y[t] = sum_k w[k] x[t + k - 4].
    depthwise_conv1d_forward(y.data(), x.data(), w.data(), bias.data(), Conv1dPadding::kCausal, 1, 2, 1, 5,
                             ctx);
    EXPECT_EQ(y, (std::vector<double>{10000 * 1 + 0.5, 1000 * 1 + 10000 * 2 + 0.5}));
    // T = 1: only the centre tap (symmetric) or the last tap (causal) sees data. Two channels.
    const std::vector<double> x1 = {3, -2}, w1 = {1, 2, 4, 8, 16, 32};
    std::vector<double> y1(2);
    depthwise_conv1d_forward<double>(y1.data(), x1.data(), w1.data(), nullptr, Conv1dPadding::kSymmetric, 1,
                                     1, 2, 3, ctx);
    EXPECT_EQ(y1, (std::vector<double>{3 * 2, -2 * 16}));
    depthwise_conv1d_forward<double>(y1.data(), x1.data(), w1.data(), nullptr, Conv1dPadding::kCausal, 1, 1,
                                     2, 3, ctx);
    EXPECT_EQ(y1, (std::vector<double>{3 * 4, -2 * 32}));
    // K = 1: a per-channel scale plus bias, identical in both modes.
    const std::vector<double> x2 = {1, 2, 3, 4, 5, 6}, w2 = {2, -1}, b2 = {1, 1};  // [T=3, C=2]
    std::vector<double> y2(6);
    for (Conv1dPadding padding : {Conv1dPadding::kSymmetric, Conv1dPadding::kCausal}) {
      depthwise_conv1d_forward(y2.data(), x2.data(), w2.data(), b2.data(), padding, 1, 3, 2, 1, ctx);
      EXPECT_EQ(y2, (std::vector<double>{3, -1, 7, -3, 11, -5}));
    }
  }
}

TEST(DepthwiseConv1d, EmptySequenceWritesNothing) {
  RunContext ctx = testing::cpu_test_context();
  const std::vector<double> w = {1, 2, 3};
  depthwise_conv1d_forward<double>(nullptr, nullptr, w.data(), nullptr, Conv1dPadding::kSymmetric, 3, 0, 1, 3,
                                   ctx);
  std::vector<double> dw(3, 0.0);
  depthwise_conv1d_backward<double>(nullptr, dw.data(), nullptr, nullptr, nullptr, w.data(),
                                    Conv1dPadding::kCausal, 3, 0, 1, 3, ctx);
  EXPECT_EQ(dw, (std::vector<double>{0, 0, 0}));
}

TEST(DepthwiseConv1dDeathTest, SymmetricNeedsOddKernel) {
  RunContext ctx = testing::cpu_test_context();
  std::vector<double> x(4), y(4), w(4);
  EXPECT_DEATH(depthwise_conv1d_forward<double>(y.data(), x.data(), w.data(), nullptr,
                                                Conv1dPadding::kSymmetric, 1, 4, 1, 4, ctx),
               "odd kernel");
}

template <class T>
void depthwise_paths_agree(int64_t batch, int64_t time, int64_t channels, int64_t kernel,
                           Conv1dPadding padding, double tol) {
  SCOPED_TRACE(::testing::Message() << "B=" << batch << " T=" << time << " C=" << channels
                                    << " K=" << kernel);
  auto x = random_values<T>(batch * time * channels, 11), w = random_values<T>(channels * kernel, 12);
  auto b = random_values<T>(channels, 13), dy = random_values<T>(x.size(), 14);
  // Paths: optimised on 1 thread, optimised on 2 threads, reference loop.
  std::vector<std::vector<T>> y(3, std::vector<T>(x.size())), dx(3, std::vector<T>(x.size())),
      dw(3, std::vector<T>(w.size(), T(0))), db(3, std::vector<T>(channels, T(0)));
  for (int path = 0; path < 3; ++path) {
    RunContext ctx = testing::cpu_test_context(path == 2, path == 0 ? 1 : 2);
    depthwise_conv1d_forward(y[path].data(), x.data(), w.data(), b.data(), padding, batch, time, channels,
                             kernel, ctx);
    depthwise_conv1d_backward(dx[path].data(), dw[path].data(), db[path].data(), dy.data(), x.data(),
                              w.data(), padding, batch, time, channels, kernel, ctx);
  }
  // The thread count must not change a single bit.
  EXPECT_EQ(y[0], y[1]);
  EXPECT_EQ(dx[0], dx[1]);
  EXPECT_EQ(dw[0], dw[1]);
  EXPECT_EQ(db[0], db[1]);
  expect_close(y[1], y[2], tol, "y");
  expect_close(dx[1], dx[2], tol, "dx");
  expect_close(dw[1], dw[2], tol, "dw");
  expect_close(db[1], db[2], tol, "db");
}

TEST(DepthwiseConv1d, OptimisedMatchesReferenceAndIsThreadCountInvariant) {
  for (Conv1dPadding padding : {Conv1dPadding::kSymmetric, Conv1dPadding::kCausal}) {
    depthwise_paths_agree<double>(2, 9, 5, 3, padding, 1e-12);
    depthwise_paths_agree<double>(3, 50, 70, 15, padding, 1e-12);  // > kCpuParallelMinWork: 2 threads run
    depthwise_paths_agree<float>(3, 50, 70, 15, padding, 1e-5);
    depthwise_paths_agree<float>(1, 3, 130, 7, padding, 1e-5);  // K > T, three channel blocks
  }
  depthwise_paths_agree<float>(2, 40, 256, 8, Conv1dPadding::kCausal, 1e-5);
}

TEST(DepthwiseConv1d, FloatMatchesDouble) {
  const int64_t batch = 2, time = 13, channels = 6, kernel = 5;
  auto xd = random_doubles(batch * time * channels, 21), wd = random_doubles(channels * kernel, 22);
  auto bd = random_doubles(channels, 23);
  std::vector<float> xf(xd.begin(), xd.end()), wf(wd.begin(), wd.end()), bf(bd.begin(), bd.end());
  std::vector<double> yd(xd.size());
  std::vector<float> yf(xd.size());
  RunContext ctx = testing::cpu_test_context();
  for (Conv1dPadding padding : {Conv1dPadding::kSymmetric, Conv1dPadding::kCausal}) {
    depthwise_conv1d_forward(yd.data(), xd.data(), wd.data(), bd.data(), padding, batch, time, channels,
                             kernel, ctx);
    depthwise_conv1d_forward(yf.data(), xf.data(), wf.data(), bf.data(), padding, batch, time, channels,
                             kernel, ctx);
    for (size_t i = 0; i < yd.size(); ++i) EXPECT_NEAR(yf[i], yd[i], 1e-5) << "i=" << i;
  }
}

}  // namespace
}  // namespace moeasr
