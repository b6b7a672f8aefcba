// tests/common/gradcheck.cc — central differences against analytic gradients (see gradcheck.h).
#include "tests/common/gradcheck.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

namespace moeasr::testing {

std::vector<double> random_doubles(int64_t n, uint64_t seed, double lo, double hi) {
  std::mt19937_64 engine(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> values(static_cast<size_t>(n));
  for (double& v : values) v = dist(engine);
  return values;
}

std::vector<float> random_floats(int64_t n, uint64_t seed, float lo, float hi) {
  std::mt19937_64 engine(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> values(static_cast<size_t>(n));
  for (float& v : values) v = dist(engine);
  return values;
}

double weighted_sum(const double* out, const double* dout, int64_t n) {
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) total += out[i] * dout[i];
  return total;
}

double weighted_sum(const std::vector<double>& out, const std::vector<double>& dout) {
  EXPECT_EQ(out.size(), dout.size());
  return weighted_sum(out.data(), dout.data(), static_cast<int64_t>(std::min(out.size(), dout.size())));
}

void expect_gradients_match(const std::function<double()>& loss, const std::function<void()>& compute_grads,
                            const std::vector<GradTarget>& targets, GradCheckOptions options) {
  ASSERT_FALSE(targets.empty()) << "gradient check with no targets";
  compute_grads();
  // Copy the analytic gradients: loss() may reuse the buffers compute_grads() wrote.
  std::vector<std::vector<double>> analytic;
  for (const GradTarget& t : targets) analytic.emplace_back(t.grad, t.grad + t.size);

  double max_abs_grad = 0.0;
  int reported = 0;
  int64_t mismatches = 0;
  for (size_t k = 0; k < targets.size(); ++k) {
    const GradTarget& t = targets[k];
    for (int64_t i = 0; i < t.size; ++i) {
      double saved = t.values[i];
      t.values[i] = saved + options.eps;
      double plus = loss();
      t.values[i] = saved - options.eps;
      double minus = loss();
      t.values[i] = saved;
      double numeric = (plus - minus) / (2.0 * options.eps);
      double ana = analytic[k][static_cast<size_t>(i)];
      ASSERT_TRUE(std::isfinite(numeric)) << t.name << "[" << i << "]: non-finite loss";
      ASSERT_TRUE(std::isfinite(ana)) << t.name << "[" << i << "]: non-finite analytic gradient";
      max_abs_grad = std::max(max_abs_grad, std::fabs(ana));
      double tol = options.atol + options.rtol * std::max(std::fabs(numeric), std::fabs(ana));
      if (std::fabs(numeric - ana) > tol) {
        ++mismatches;
        if (reported++ < 10) {
          ADD_FAILURE() << "gradient of " << t.name << "[" << i << "]: analytic " << ana << ", numeric "
                        << numeric << ", |diff| " << std::fabs(numeric - ana) << " > tol " << tol;
        }
      }
    }
  }
  EXPECT_EQ(mismatches, 0) << "gradient mismatches in total";
  if (options.require_nonzero_gradient) {
    EXPECT_GT(max_abs_grad, 1e-6) << "all analytic gradients are ~0: the check would pass vacuously";
  }
}

RunContext cpu_test_context(bool use_reference_kernels, int num_threads) {
  RunContext ctx;
  ctx.device = Device::cpu;
  ctx.num_threads = num_threads;
  ctx.use_reference_kernels = use_reference_kernels;
  return ctx;
}

}  // namespace moeasr::testing
