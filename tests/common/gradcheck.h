// tests/common/gradcheck.h — finite-difference gradient checks in double (after flashlight's
// jacobianTestImpl and llm.c's random-dout trick: loss = sum(out * dout) with a fixed random dout,
// so one scalar exercises every output element). Also seeded random buffers and a CPU RunContext.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/run_context.h"

namespace moeasr::testing {

// Uniform values in [lo, hi) from a seeded std::mt19937_64: the same seed gives the same buffer.
std::vector<double> random_doubles(int64_t n, uint64_t seed, double lo = -1.0, double hi = 1.0);
std::vector<float> random_floats(int64_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f);

// sum_i out[i] * dout[i]
double weighted_sum(const std::vector<double>& out, const std::vector<double>& dout);
double weighted_sum(const double* out, const double* dout, int64_t n);

// One input whose gradient is checked: `values` is perturbed in place (and restored);
// `grad` is where compute_grads() leaves the analytic gradient of the loss w.r.t. values.
struct GradTarget {
  std::string name;
  double* values;
  const double* grad;
  int64_t size;
};

struct GradCheckOptions {
  double eps = 1e-6;   // central-difference step
  double rtol = 1e-6;  // |num - ana| <= atol + rtol * max(|num|, |ana|)
  double atol = 1e-8;
  bool require_nonzero_gradient = true;  // a check where every gradient is ~0 proves nothing
};

// loss():          recomputes the forward from the current target values, returns the scalar.
// compute_grads(): recomputes forward + backward, writing each target's grad (zeroed by it).
// Every element of every target is checked; failures name target and index (first 10 printed).
void expect_gradients_match(const std::function<double()>& loss, const std::function<void()>& compute_grads,
                            const std::vector<GradTarget>& targets, GradCheckOptions options = {});

// A CPU context for tests: 2 threads, optional reference kernels.
RunContext cpu_test_context(bool use_reference_kernels = false, int num_threads = 2);

// ||got - want|| / max(||want||, 1e-30); +inf on a size mismatch or any non-finite `got`.
template <class A, class B>
double relative_norm_error(const std::vector<A>& got, const std::vector<B>& want) {
  if (got.size() != want.size()) return std::numeric_limits<double>::infinity();
  double diff = 0, norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    double g = static_cast<double>(got[i]), w = static_cast<double>(want[i]);
    if (!std::isfinite(g)) return std::numeric_limits<double>::infinity();
    diff += (g - w) * (g - w);
    norm += w * w;
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), 1e-30);
}

}  // namespace moeasr::testing
