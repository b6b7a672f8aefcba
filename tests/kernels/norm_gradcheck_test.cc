// tests/kernels/norm_gradcheck_test.cc — finite-difference gradients (double) of LayerNorm and
// channels-last BatchNorm1d (training: full batch-statistics gradient; eval: affine only), for odd
// sizes, N = 1 (LayerNorm) / N = 2 (BatchNorm's smallest batch), without affine parameters, on both
// the threaded and the reference path; N = 0 leaves the accumulated parameter grads untouched, and
// parameter grads accumulate (+=).
#include <gtest/gtest.h>

#include <vector>

#include "kernels/cpu/norm.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::random_doubles;

constexpr double kEps = 1e-5;

void check_layer_norm(int64_t n, int64_t c, bool affine, bool reference) {
  RunContext ctx = testing::cpu_test_context(reference);
  auto x = random_doubles(n * c, 100 + n * 31 + c, -2.0, 2.0);
  auto w = random_doubles(c, 200 + c, 0.5, 1.5);
  auto b = random_doubles(c, 300 + c);
  auto dout = random_doubles(n * c, 400 + n + c);
  std::vector<double> out(n * c), mean(n), rstd(n), dx(n * c), dw(c), db(c);
  const double* weight = affine ? w.data() : nullptr;
  const double* bias = affine ? b.data() : nullptr;
  auto loss = [&]() {
    layer_norm_forward(out.data(), mean.data(), rstd.data(), x.data(), weight, bias, kEps, n, c, ctx);
    return testing::weighted_sum(out, dout);
  };
  auto grads = [&]() {
    std::fill(dw.begin(), dw.end(), 0.0);
    std::fill(db.begin(), db.end(), 0.0);
    layer_norm_forward(out.data(), mean.data(), rstd.data(), x.data(), weight, bias, kEps, n, c, ctx);
    layer_norm_backward(dx.data(), affine ? dw.data() : nullptr, affine ? db.data() : nullptr, dout.data(),
                        x.data(), mean.data(), rstd.data(), weight, n, c, ctx);
  };
  if (n == 0) {
    grads();
    for (double g : dw) EXPECT_EQ(g, 0.0);
    for (double g : db) EXPECT_EQ(g, 0.0);
    return;
  }
  std::vector<testing::GradTarget> targets = {{"x", x.data(), dx.data(), n * c}};
  if (affine) {
    targets.push_back({"weight", w.data(), dw.data(), c});
    targets.push_back({"bias", b.data(), db.data(), c});
  }
  testing::expect_gradients_match(loss, grads, targets);
}

TEST(LayerNormGradcheck, OddSizes) {
  for (bool reference : {false, true}) {
    check_layer_norm(1, 2, true, reference);
    check_layer_norm(1, 7, true, reference);
    check_layer_norm(3, 13, true, reference);
    check_layer_norm(5, 7, true, reference);
    check_layer_norm(70, 3, true, reference);  // many rows per column sum
  }
}

TEST(LayerNormGradcheck, WithoutAffine) {
  for (bool reference : {false, true}) check_layer_norm(3, 7, false, reference);
}

TEST(LayerNormGradcheck, ManyChannelsSpanBlocks) {
  check_layer_norm(2, 130, true, false);
}

TEST(LayerNormGradcheck, EmptyBatch) {
  for (bool reference : {false, true}) check_layer_norm(0, 7, true, reference);
}

TEST(LayerNormGradcheck, ParameterGradientsAccumulate) {
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    const int64_t n = 4, c = 5;
    auto x = random_doubles(n * c, 1), w = random_doubles(c, 2), b = random_doubles(c, 3),
         dout = random_doubles(n * c, 4);
    std::vector<double> out(n * c), mean(n), rstd(n), dx(n * c), dw(c, 0.0), db(c, 0.0);
    layer_norm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), kEps, n, c, ctx);
    layer_norm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), mean.data(), rstd.data(),
                        w.data(), n, c, ctx);
    auto dw_once = dw, db_once = db, dx_once = dx;
    layer_norm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), mean.data(), rstd.data(),
                        w.data(), n, c, ctx);
    for (int64_t j = 0; j < c; ++j) {
      EXPECT_DOUBLE_EQ(dw[j], 2 * dw_once[j]);
      EXPECT_DOUBLE_EQ(db[j], 2 * db_once[j]);
      EXPECT_NE(db_once[j], 0.0);
    }
    EXPECT_EQ(dx, dx_once);  // activation grads are assigned, not accumulated
  }
}

void check_batch_norm_train(int64_t n, int64_t c, bool affine, bool reference) {
  RunContext ctx = testing::cpu_test_context(reference);
  auto x = random_doubles(n * c, 500 + n * 31 + c, -2.0, 2.0);
  auto w = random_doubles(c, 600 + c, 0.5, 1.5);
  auto b = random_doubles(c, 700 + c);
  auto dout = random_doubles(n * c, 800 + n + c);
  std::vector<double> out(n * c), mean(c), rstd(c), running_mean(c, 0.0), running_var(c, 1.0), dx(n * c),
      dw(c), db(c);
  const double* weight = affine ? w.data() : nullptr;
  const double* bias = affine ? b.data() : nullptr;
  auto forward = [&]() {
    batch_norm_train_forward(out.data(), mean.data(), rstd.data(), running_mean.data(), running_var.data(),
                             x.data(), weight, bias, 0.1, kEps, n, c, ctx);
  };
  auto loss = [&]() {
    forward();
    return testing::weighted_sum(out, dout);
  };
  auto grads = [&]() {
    std::fill(dw.begin(), dw.end(), 0.0);
    std::fill(db.begin(), db.end(), 0.0);
    forward();
    batch_norm_train_backward(dx.data(), affine ? dw.data() : nullptr, affine ? db.data() : nullptr,
                              dout.data(), x.data(), mean.data(), rstd.data(), weight, n, c, ctx);
  };
  if (n == 0) {
    grads();
    for (double g : dw) EXPECT_EQ(g, 0.0);
    for (double g : db) EXPECT_EQ(g, 0.0);
    for (double v : running_mean) EXPECT_EQ(v, 0.0);
    for (double v : running_var) EXPECT_EQ(v, 1.0);
    return;
  }
  std::vector<testing::GradTarget> targets = {{"x", x.data(), dx.data(), n * c}};
  if (affine) {
    targets.push_back({"weight", w.data(), dw.data(), c});
    targets.push_back({"bias", b.data(), db.data(), c});
  }
  testing::expect_gradients_match(loss, grads, targets);
}

TEST(BatchNormGradcheck, TrainOddSizes) {
  for (bool reference : {false, true}) {
    check_batch_norm_train(2, 3, true, reference);
    check_batch_norm_train(5, 7, true, reference);
    check_batch_norm_train(13, 1, true, reference);
    check_batch_norm_train(3, 13, true, reference);
    check_batch_norm_train(4, 67, true, reference);  // two channel blocks
  }
}

TEST(BatchNormGradcheck, TrainWithoutAffine) {
  for (bool reference : {false, true}) check_batch_norm_train(6, 5, false, reference);
}

TEST(BatchNormGradcheck, TrainEmptyBatch) {
  for (bool reference : {false, true}) check_batch_norm_train(0, 7, true, reference);
}

void check_batch_norm_eval(int64_t n, int64_t c, bool affine, bool reference) {
  RunContext ctx = testing::cpu_test_context(reference);
  auto x = random_doubles(n * c, 900 + n * 31 + c, -2.0, 2.0);
  auto w = random_doubles(c, 910 + c, 0.5, 1.5);
  auto b = random_doubles(c, 920 + c);
  auto running_mean = random_doubles(c, 930 + c);
  auto running_var = random_doubles(c, 940 + c, 0.2, 2.0);
  auto dout = random_doubles(n * c, 950 + n + c);
  std::vector<double> out(n * c), dx(n * c), dw(c), db(c);
  const double* weight = affine ? w.data() : nullptr;
  const double* bias = affine ? b.data() : nullptr;
  auto loss = [&]() {
    batch_norm_eval_forward(out.data(), x.data(), running_mean.data(), running_var.data(), weight, bias, kEps,
                            n, c, ctx);
    return testing::weighted_sum(out, dout);
  };
  auto grads = [&]() {
    std::fill(dw.begin(), dw.end(), 0.0);
    std::fill(db.begin(), db.end(), 0.0);
    batch_norm_eval_backward(dx.data(), affine ? dw.data() : nullptr, affine ? db.data() : nullptr,
                             dout.data(), x.data(), running_mean.data(), running_var.data(), weight, kEps, n,
                             c, ctx);
  };
  if (n == 0) {
    grads();
    for (double g : dw) EXPECT_EQ(g, 0.0);
    for (double g : db) EXPECT_EQ(g, 0.0);
    return;
  }
  std::vector<testing::GradTarget> targets = {{"x", x.data(), dx.data(), n * c}};
  if (affine) {
    targets.push_back({"weight", w.data(), dw.data(), c});
    targets.push_back({"bias", b.data(), db.data(), c});
  }
  testing::expect_gradients_match(loss, grads, targets);
}

TEST(BatchNormGradcheck, EvalOddSizes) {
  for (bool reference : {false, true}) {
    check_batch_norm_eval(1, 7, true, reference);  // eval mode allows a single row
    check_batch_norm_eval(5, 13, true, reference);
    check_batch_norm_eval(3, 67, true, reference);
    check_batch_norm_eval(4, 3, false, reference);
    check_batch_norm_eval(0, 3, true, reference);
  }
}

TEST(BatchNormGradcheck, ParameterGradientsAccumulate) {
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    const int64_t n = 6, c = 5;
    auto x = random_doubles(n * c, 1), w = random_doubles(c, 2), b = random_doubles(c, 3),
         dout = random_doubles(n * c, 4);
    std::vector<double> out(n * c), mean(c), rstd(c), rm(c, 0.0), rv(c, 1.0), dx(n * c), dw(c, 0.0),
        db(c, 0.0);
    batch_norm_train_forward(out.data(), mean.data(), rstd.data(), rm.data(), rv.data(), x.data(), w.data(),
                             b.data(), 0.1, kEps, n, c, ctx);
    for (int pass = 0; pass < 2; ++pass) {
      batch_norm_train_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), mean.data(),
                                rstd.data(), w.data(), n, c, ctx);
    }
    auto dw_train = dw, db_train = db;
    std::fill(dw.begin(), dw.end(), 0.0);
    std::fill(db.begin(), db.end(), 0.0);
    batch_norm_train_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), mean.data(),
                              rstd.data(), w.data(), n, c, ctx);
    for (int64_t j = 0; j < c; ++j) {
      EXPECT_DOUBLE_EQ(dw_train[j], 2 * dw[j]);
      EXPECT_DOUBLE_EQ(db_train[j], 2 * db[j]);
      EXPECT_NE(db[j], 0.0);
    }
    std::fill(dw.begin(), dw.end(), 1.0);
    std::fill(db.begin(), db.end(), -1.0);
    std::vector<double> dw_eval(c, 0.0), db_eval(c, 0.0);
    batch_norm_eval_backward(dx.data(), dw_eval.data(), db_eval.data(), dout.data(), x.data(), rm.data(),
                             rv.data(), w.data(), kEps, n, c, ctx);
    batch_norm_eval_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), rm.data(), rv.data(),
                             w.data(), kEps, n, c, ctx);
    for (int64_t j = 0; j < c; ++j) {
      EXPECT_DOUBLE_EQ(dw[j], 1.0 + dw_eval[j]);
      EXPECT_DOUBLE_EQ(db[j], -1.0 + db_eval[j]);
    }
  }
}

}  // namespace
}  // namespace moeasr
