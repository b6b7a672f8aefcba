// tests/kernels/norm_test.cc — exact answers of LayerNorm and channels-last BatchNorm1d on
// hand-computed cases (PyTorch's LayerNorm of [1, 2, 3]; BatchNorm's running statistics after one
// step by PyTorch's formula with the unbiased variance), BatchNorm's N = 1 error, eval against train
// with the same statistics, float against double on random data with a large common offset (a
// one-pass float variance would fail it), and the threaded path against the reference loops.
#include "kernels/cpu/norm.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::random_doubles;

std::vector<float> to_float(const std::vector<double>& v) {
  return std::vector<float>(v.begin(), v.end());
}

std::vector<double> to_double(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// |got - want| <= rtol * max(|want|, 1) element by element; the reference must not be all ~0.
template <class T>
void expect_close(const std::vector<T>& got, const std::vector<double>& want, double rtol, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double max_abs = 0.0;
  int reported = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    max_abs = std::max(max_abs, std::fabs(want[i]));
    double tol = rtol * std::max(std::fabs(want[i]), 1.0);
    if (!(std::fabs(static_cast<double>(got[i]) - want[i]) <= tol) && reported++ < 10) {
      ADD_FAILURE() << what << "[" << i << "]: " << static_cast<double>(got[i]) << " vs " << want[i];
    }
  }
  if (!want.empty()) {
    EXPECT_GT(max_abs, 1e-3) << what << ": all ~0, the comparison proves nothing";
  }
}

// ---------------------------------------------------------------------------------------------------
// LayerNorm

TEST(LayerNorm, OneTwoThreeAsPyTorch) {
  // torch.nn.LayerNorm(3)(torch.tensor([1., 2., 3.])) = [-1.2247, 0, 1.2247]; var = 2/3 (biased).
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    std::vector<double> x = {1, 2, 3}, w = {1, 1, 1}, b = {0, 0, 0}, out(3), mean(1), rstd(1);
    layer_norm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), 1e-5, 1, 3, ctx);
    double r = 1.0 / std::sqrt(2.0 / 3.0 + 1e-5);
    EXPECT_EQ(mean[0], 2.0);
    EXPECT_DOUBLE_EQ(rstd[0], r);
    EXPECT_DOUBLE_EQ(out[0], -r);
    EXPECT_EQ(out[1], 0.0);
    EXPECT_DOUBLE_EQ(out[2], r);
    EXPECT_NEAR(out[2], 1.2247357, 1e-7);
    // eps = 0: exactly +-sqrt(3/2); float, with affine weight and bias.
    std::vector<float> xf = {1, 2, 3}, wf = {2, 3, -1}, bf = {0.5f, -1, 4}, of(3), mf(1), rf(1);
    layer_norm_forward(of.data(), mf.data(), rf.data(), xf.data(), wf.data(), bf.data(), 0.0f, 1, 3, ctx);
    float s = std::sqrt(1.5f);
    EXPECT_FLOAT_EQ(of[0], -2 * s + 0.5f);
    EXPECT_FLOAT_EQ(of[1], -1.0f);
    EXPECT_FLOAT_EQ(of[2], -s + 4);
    EXPECT_FLOAT_EQ(rf[0], s);
  }
}

TEST(LayerNorm, SingleChannelGivesBiasAndZeroGradient) {
  // C = 1 is degenerate (x - mean = 0): out = bias, dx = 0, dweight += 0, dbias += dout.
  RunContext ctx = testing::cpu_test_context();
  std::vector<double> x = {5, -3}, w = {2}, b = {0.25}, out(2), mean(2), rstd(2), dx(2, 9.0), dw(1, 0.0),
                      db(1, 0.0), dout = {1, 2};
  layer_norm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), 1e-5, 2, 1, ctx);
  EXPECT_EQ(out, (std::vector<double>{0.25, 0.25}));
  layer_norm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), mean.data(), rstd.data(),
                      w.data(), 2, 1, ctx);
  EXPECT_EQ(dx, (std::vector<double>{0.0, 0.0}));
  EXPECT_EQ(dw[0], 0.0);
  EXPECT_EQ(db[0], 3.0);
}

TEST(LayerNorm, FloatMatchesDoubleWithLargeOffset) {
  RunContext ctx = testing::cpu_test_context();
  const int64_t n = 37, c = 256;
  // Forward: rows around 1000 with unit spread. E[x^2] - E[x]^2 in float would lose every digit.
  auto xd = to_double(to_float(random_doubles(n * c, 1, 999.0, 1001.0)));
  auto wd = to_double(to_float(random_doubles(c, 2, 0.5, 1.5)));
  auto bd = to_double(to_float(random_doubles(c, 3)));
  auto xf = to_float(xd), wf = to_float(wd), bf = to_float(bd);
  std::vector<double> od(n * c), md(n), rd(n);
  std::vector<float> of(n * c), mf(n), rf(n);
  layer_norm_forward(od.data(), md.data(), rd.data(), xd.data(), wd.data(), bd.data(), 1e-5, n, c, ctx);
  layer_norm_forward(of.data(), mf.data(), rf.data(), xf.data(), wf.data(), bf.data(), 1e-5f, n, c, ctx);
  expect_close(of, od, 1e-5, "layer_norm out");
  expect_close(rf, rd, 1e-5, "layer_norm rstd");

  // Backward on zero-centred data (the saved float mean is exact enough there).
  xd = to_double(to_float(random_doubles(n * c, 4, -3.0, 3.0)));
  xf = to_float(xd);
  auto doutd = to_double(to_float(random_doubles(n * c, 5)));
  auto doutf = to_float(doutd);
  layer_norm_forward(od.data(), md.data(), rd.data(), xd.data(), wd.data(), bd.data(), 1e-5, n, c, ctx);
  layer_norm_forward(of.data(), mf.data(), rf.data(), xf.data(), wf.data(), bf.data(), 1e-5f, n, c, ctx);
  std::vector<double> dxd(n * c), dwd(c, 0.0), dbd(c, 0.0);
  std::vector<float> dxf(n * c), dwf(c, 0.0f), dbf(c, 0.0f);
  layer_norm_backward(dxd.data(), dwd.data(), dbd.data(), doutd.data(), xd.data(), md.data(), rd.data(),
                      wd.data(), n, c, ctx);
  layer_norm_backward(dxf.data(), dwf.data(), dbf.data(), doutf.data(), xf.data(), mf.data(), rf.data(),
                      wf.data(), n, c, ctx);
  expect_close(dxf, dxd, 1e-5, "layer_norm dx");
  expect_close(dwf, dwd, 1e-5, "layer_norm dweight");
  expect_close(dbf, dbd, 1e-5, "layer_norm dbias");
}

TEST(LayerNorm, ThreadedMatchesReference) {
  RunContext fast = testing::cpu_test_context(false, 2), ref = testing::cpu_test_context(true);
  const int64_t n = 300, c = 129;  // enough work for several threads, three channel blocks
  auto x = random_doubles(n * c, 6, -2.0, 2.0), w = random_doubles(c, 7), b = random_doubles(c, 8),
       dout = random_doubles(n * c, 9);
  std::vector<double> out_f(n * c), out_r(n * c), m_f(n), m_r(n), r_f(n), r_r(n);
  layer_norm_forward(out_f.data(), m_f.data(), r_f.data(), x.data(), w.data(), b.data(), 1e-5, n, c, fast);
  layer_norm_forward(out_r.data(), m_r.data(), r_r.data(), x.data(), w.data(), b.data(), 1e-5, n, c, ref);
  EXPECT_EQ(out_f, out_r);  // one row, one thread: same bits
  EXPECT_EQ(r_f, r_r);
  std::vector<double> dx_f(n * c), dx_r(n * c), dw_f(c, 0.5), dw_r(c, 0.5), db_f(c, -0.5), db_r(c, -0.5);
  layer_norm_backward(dx_f.data(), dw_f.data(), db_f.data(), dout.data(), x.data(), m_f.data(), r_f.data(),
                      w.data(), n, c, fast);
  layer_norm_backward(dx_r.data(), dw_r.data(), db_r.data(), dout.data(), x.data(), m_r.data(), r_r.data(),
                      w.data(), n, c, ref);
  EXPECT_EQ(dx_f, dx_r);
  // Parameter grads: blocked double sums vs row-by-row accumulation; rounding differs only.
  expect_close(dw_f, dw_r, 1e-12, "dweight");
  expect_close(db_f, db_r, 1e-12, "dbias");
  // And the threaded result does not depend on the thread count.
  RunContext one = testing::cpu_test_context(false, 1);
  std::vector<double> dx_1(n * c), dw_1(c, 0.5), db_1(c, -0.5);
  layer_norm_backward(dx_1.data(), dw_1.data(), db_1.data(), dout.data(), x.data(), m_f.data(), r_f.data(),
                      w.data(), n, c, one);
  EXPECT_EQ(dx_1, dx_f);
  EXPECT_EQ(dw_1, dw_f);
  EXPECT_EQ(db_1, db_f);
}

// ---------------------------------------------------------------------------------------------------
// BatchNorm1d, channels last

TEST(BatchNorm, RunningStatisticsAfterOneStepAsPyTorch) {
  // x as (B=1, C=2, T=4) in WeNet's layout is our [N=4, C=2]: channel 0 = 1,2,3,4; channel 1 = 2,2,2,2.
  // PyTorch: running_mean = 0.9 * rm + 0.1 * mean; running_var = 0.9 * rv + 0.1 * var_unbiased.
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    std::vector<double> x = {1, 2, 2, 2, 3, 2, 4, 2}, w = {2, 3}, b = {0.5, -1};
    std::vector<double> rm = {0.5, -1}, rv = {1, 2}, out(8), mean(2), rstd(2);
    batch_norm_train_forward(out.data(), mean.data(), rstd.data(), rm.data(), rv.data(), x.data(), w.data(),
                             b.data(), 0.1, 1e-5, 4, 2, ctx);
    EXPECT_EQ(mean[0], 2.5);
    EXPECT_EQ(mean[1], 2.0);
    EXPECT_DOUBLE_EQ(rstd[0], 1.0 / std::sqrt(1.25 + 1e-5));  // biased var 1.25 normalises
    EXPECT_DOUBLE_EQ(rstd[1], 1.0 / std::sqrt(1e-5));
    EXPECT_DOUBLE_EQ(rm[0], 0.9 * 0.5 + 0.1 * 2.5);
    EXPECT_DOUBLE_EQ(rm[1], 0.9 * -1 + 0.1 * 2);
    EXPECT_DOUBLE_EQ(rv[0], 0.9 * 1 + 0.1 * (5.0 / 3.0));  // unbiased: 5/3, not 1.25
    EXPECT_DOUBLE_EQ(rv[1], 0.9 * 2);
    for (int64_t row = 0; row < 4; ++row) {
      EXPECT_DOUBLE_EQ(out[row * 2], (x[row * 2] - 2.5) / std::sqrt(1.25 + 1e-5) * 2 + 0.5);
      EXPECT_EQ(out[row * 2 + 1], -1.0);  // constant channel: bias exactly
    }
  }
}

TEST(BatchNorm, TrainingWithOneValuePerChannelFails) {
  // Earlier tests have started OpenMP threads: re-exec the binary for the death test instead of fork.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  RunContext ctx = testing::cpu_test_context();
  std::vector<double> x = {1, 2, 3}, out(3), mean(3), rstd(3), rm(3, 0.0), rv(3, 1.0);
  EXPECT_DEATH(batch_norm_train_forward(out.data(), mean.data(), rstd.data(), rm.data(), rv.data(), x.data(),
                                        static_cast<const double*>(nullptr),
                                        static_cast<const double*>(nullptr), 0.1, 1e-5, 1, 3, ctx),
               "more than 1 value per channel");
}

TEST(BatchNorm, EvalUsesRunningStatistics) {
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    // eps = 0 and var 4 / 0.25 make every value exact in float.
    std::vector<float> x = {3, 0, 5, 1}, rm = {1, -1}, rv = {4, 0.25f}, w = {1, 2}, b = {0, 1}, out(4);
    batch_norm_eval_forward(out.data(), x.data(), rm.data(), rv.data(), w.data(), b.data(), 0.0f, 2, 2, ctx);
    EXPECT_EQ(out, (std::vector<float>{1, 5, 2, 9}));
    std::vector<float> dout = {1, 1, 2, -1}, dx(4), dw(2, 0.0f), db(2, 0.0f);
    batch_norm_eval_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), rm.data(), rv.data(),
                             w.data(), 0.0f, 2, 2, ctx);
    EXPECT_EQ(dx, (std::vector<float>{0.5f, 4, 1, -4}));  // dout * w / sqrt(rv)
    EXPECT_EQ(dw, (std::vector<float>{1 * 1 + 2 * 2, 1 * 2 - 1 * 4}));
    EXPECT_EQ(db, (std::vector<float>{3, 0}));
  }
}

TEST(BatchNorm, EvalWithBatchStatisticsMatchesTrain) {
  RunContext ctx = testing::cpu_test_context();
  const int64_t n = 9, c = 11;
  const double eps = 1e-5;
  auto x = random_doubles(n * c, 10, -2.0, 3.0), w = random_doubles(c, 11), b = random_doubles(c, 12),
       dout = random_doubles(n * c, 13);
  std::vector<double> out_t(n * c), out_e(n * c), mean(c), rstd(c), rm(c, 0.0), rv(c, 1.0);
  batch_norm_train_forward(out_t.data(), mean.data(), rstd.data(), rm.data(), rv.data(), x.data(), w.data(),
                           b.data(), 0.1, eps, n, c, ctx);
  std::vector<double> batch_var(c);
  for (int64_t j = 0; j < c; ++j) batch_var[j] = 1.0 / (rstd[j] * rstd[j]) - eps;
  batch_norm_eval_forward(out_e.data(), x.data(), mean.data(), batch_var.data(), w.data(), b.data(), eps, n,
                          c, ctx);
  expect_close(out_e, out_t, 1e-10, "eval vs train out");
  // Parameter grads are sum(dout * xhat) and sum(dout) in both modes.
  std::vector<double> dx(n * c), dw_t(c, 0.0), db_t(c, 0.0), dw_e(c, 0.0), db_e(c, 0.0);
  batch_norm_train_backward(dx.data(), dw_t.data(), db_t.data(), dout.data(), x.data(), mean.data(),
                            rstd.data(), w.data(), n, c, ctx);
  batch_norm_eval_backward(dx.data(), dw_e.data(), db_e.data(), dout.data(), x.data(), mean.data(),
                           batch_var.data(), w.data(), eps, n, c, ctx);
  expect_close(dw_e, dw_t, 1e-10, "dweight");
  expect_close(db_e, db_t, 1e-12, "dbias");
}

TEST(BatchNorm, FloatMatchesDoubleWithLargeOffset) {
  RunContext ctx = testing::cpu_test_context();
  const int64_t n = 200, c = 70;
  auto xd = to_double(to_float(random_doubles(n * c, 14, 499.0, 501.0)));
  auto wd = to_double(to_float(random_doubles(c, 15, 0.5, 1.5)));
  auto bd = to_double(to_float(random_doubles(c, 16)));
  auto xf = to_float(xd), wf = to_float(wd), bf = to_float(bd);
  std::vector<double> od(n * c), md(c), rd(c), rmd(c, 0.0), rvd(c, 1.0);
  std::vector<float> of(n * c), mf(c), rf(c), rmf(c, 0.0f), rvf(c, 1.0f);
  batch_norm_train_forward(od.data(), md.data(), rd.data(), rmd.data(), rvd.data(), xd.data(), wd.data(),
                           bd.data(), 0.1, 1e-5, n, c, ctx);
  batch_norm_train_forward(of.data(), mf.data(), rf.data(), rmf.data(), rvf.data(), xf.data(), wf.data(),
                           bf.data(), 0.1f, 1e-5f, n, c, ctx);
  expect_close(of, od, 1e-5, "batch_norm out");
  expect_close(rf, rd, 1e-5, "batch_norm rstd");
  expect_close(rmf, rmd, 1e-5, "running_mean");
  expect_close(rvf, rvd, 1e-5, "running_var");

  // Backward on zero-centred data.
  xd = to_double(to_float(random_doubles(n * c, 17, -3.0, 3.0)));
  xf = to_float(xd);
  auto doutd = to_double(to_float(random_doubles(n * c, 18)));
  auto doutf = to_float(doutd);
  batch_norm_train_forward(od.data(), md.data(), rd.data(), rmd.data(), rvd.data(), xd.data(), wd.data(),
                           bd.data(), 0.1, 1e-5, n, c, ctx);
  batch_norm_train_forward(of.data(), mf.data(), rf.data(), rmf.data(), rvf.data(), xf.data(), wf.data(),
                           bf.data(), 0.1f, 1e-5f, n, c, ctx);
  std::vector<double> dxd(n * c), dwd(c, 0.0), dbd(c, 0.0);
  std::vector<float> dxf(n * c), dwf(c, 0.0f), dbf(c, 0.0f);
  batch_norm_train_backward(dxd.data(), dwd.data(), dbd.data(), doutd.data(), xd.data(), md.data(), rd.data(),
                            wd.data(), n, c, ctx);
  batch_norm_train_backward(dxf.data(), dwf.data(), dbf.data(), doutf.data(), xf.data(), mf.data(), rf.data(),
                            wf.data(), n, c, ctx);
  expect_close(dxf, dxd, 1e-5, "batch_norm dx");
  expect_close(dwf, dwd, 1e-5, "batch_norm dweight");
  expect_close(dbf, dbd, 1e-5, "batch_norm dbias");
}

TEST(BatchNorm, ThreadedMatchesReference) {
  RunContext fast = testing::cpu_test_context(false, 2), ref = testing::cpu_test_context(true);
  const int64_t n = 600, c = 130;  // three channel blocks, enough work for several threads
  auto x = random_doubles(n * c, 19, -2.0, 2.0), w = random_doubles(c, 20), b = random_doubles(c, 21),
       dout = random_doubles(n * c, 22), rm0 = random_doubles(c, 23), rv0 = random_doubles(c, 24, 0.5, 2.0);
  std::vector<double> out_f(n * c), out_r(n * c), m_f(c), m_r(c), r_f(c), r_r(c);
  auto rm_f = rm0, rm_r = rm0, rv_f = rv0, rv_r = rv0;
  batch_norm_train_forward(out_f.data(), m_f.data(), r_f.data(), rm_f.data(), rv_f.data(), x.data(), w.data(),
                           b.data(), 0.1, 1e-5, n, c, fast);
  batch_norm_train_forward(out_r.data(), m_r.data(), r_r.data(), rm_r.data(), rv_r.data(), x.data(), w.data(),
                           b.data(), 0.1, 1e-5, n, c, ref);
  expect_close(out_f, out_r, 1e-12, "out");
  expect_close(r_f, r_r, 1e-12, "rstd");
  expect_close(rm_f, rm_r, 1e-12, "running_mean");
  expect_close(rv_f, rv_r, 1e-12, "running_var");
  std::vector<double> dx_f(n * c), dx_r(n * c), dw_f(c, 0.5), dw_r(c, 0.5), db_f(c, -0.5), db_r(c, -0.5);
  batch_norm_train_backward(dx_f.data(), dw_f.data(), db_f.data(), dout.data(), x.data(), m_f.data(),
                            r_f.data(), w.data(), n, c, fast);
  batch_norm_train_backward(dx_r.data(), dw_r.data(), db_r.data(), dout.data(), x.data(), m_r.data(),
                            r_r.data(), w.data(), n, c, ref);
  expect_close(dx_f, dx_r, 1e-12, "dx");
  expect_close(dw_f, dw_r, 1e-12, "dweight");
  expect_close(db_f, db_r, 1e-12, "dbias");
  batch_norm_eval_forward(out_f.data(), x.data(), rm0.data(), rv0.data(), w.data(), b.data(), 1e-5, n, c,
                          fast);
  batch_norm_eval_forward(out_r.data(), x.data(), rm0.data(), rv0.data(), w.data(), b.data(), 1e-5, n, c,
                          ref);
  expect_close(out_f, out_r, 1e-12, "eval out");
  batch_norm_eval_backward(dx_f.data(), dw_f.data(), db_f.data(), dout.data(), x.data(), rm0.data(),
                           rv0.data(), w.data(), 1e-5, n, c, fast);
  batch_norm_eval_backward(dx_r.data(), dw_r.data(), db_r.data(), dout.data(), x.data(), rm0.data(),
                           rv0.data(), w.data(), 1e-5, n, c, ref);
  expect_close(dx_f, dx_r, 1e-12, "eval dx");
  expect_close(dw_f, dw_r, 1e-12, "eval dweight");
  expect_close(db_f, db_r, 1e-12, "eval dbias");
}

}  // namespace
}  // namespace moeasr
