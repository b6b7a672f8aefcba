// kernels/cpu/optimizer.cc — Adam step (as torch.optim.Adam's _single_tensor_adam), global gradient
// norm and clipping (as torch.nn.utils.clip_grad_norm_). See optimizer.h.
#include "kernels/cpu/optimizer.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/check.h"
#include "kernels/cpu/cpu_parallel.h"

namespace moeasr {
namespace {

// torch.lerp: start + weight * (end - start), evaluated from the nearer end as ATen does.
template <class T>
inline T lerp(T start, T end, T weight) {
  return weight < T(0.5) ? start + weight * (end - start) : end - (end - start) * (T(1) - weight);
}

// Sum of x^2 in double over 8 interleaved partial sums (element i goes to sum i % 8), added in a fixed
// order at the end: the same result for any thread count, and the 8 independent chains vectorize
// instead of waiting on one add's latency per element.
template <class T>
double sum_of_squares(const T* data, int64_t count) {
  constexpr int64_t kLanes = 8;
  double lane_sums[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) {
    for (int64_t lane = 0; lane < kLanes; ++lane) {
      const double x = static_cast<double>(data[i + lane]);
      lane_sums[lane] += x * x;
    }
  }
  for (; i < count; ++i) {
    const double x = static_cast<double>(data[i]);
    lane_sums[i % kLanes] += x * x;
  }
  return ((lane_sums[0] + lane_sums[1]) + (lane_sums[2] + lane_sums[3])) +
         ((lane_sums[4] + lane_sums[5]) + (lane_sums[6] + lane_sums[7]));
}

}  // namespace

template <class T>
void adam_update(T* param, T* exp_avg, T* exp_avg_sq, const T* grad, double lr, double beta1, double beta2,
                 double eps, double weight_decay, int64_t step, int64_t n, const RunContext& ctx) {
  CHECK_GE(step, 1) << "Adam steps are 1-based";
  CHECK_GE(n, 0);
  CHECK(beta1 >= 0.0 && beta1 < 1.0) << "beta1 " << beta1;
  CHECK(beta2 >= 0.0 && beta2 < 1.0) << "beta2 " << beta2;
  // Python-side scalars of PyTorch's implementation, in double.
  const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bias_correction2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  const double step_size = lr / bias_correction1;
  const double bias_correction2_sqrt = std::sqrt(bias_correction2);
  // ... applied to the tensors in T.
  const T t_weight_decay = static_cast<T>(weight_decay);
  const T t_lerp_weight = static_cast<T>(1.0 - beta1);
  const T t_beta2 = static_cast<T>(beta2);
  const T t_one_minus_beta2 = static_cast<T>(1.0 - beta2);
  const T t_bc2_sqrt = static_cast<T>(bias_correction2_sqrt);
  const T t_eps = static_cast<T>(eps);
  const T t_neg_step_size = static_cast<T>(-step_size);
  const bool decay = weight_decay != 0.0;
  int threads = cpu_threads_for(ctx, 10 * n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    T g = grad[i];
    if (decay) g = g + t_weight_decay * param[i];
    T m = lerp(exp_avg[i], g, t_lerp_weight);
    T v = exp_avg_sq[i] * t_beta2;
    v = v + t_one_minus_beta2 * g * g;
    T denom = std::sqrt(v) / t_bc2_sqrt + t_eps;
    param[i] = param[i] + t_neg_step_size * m / denom;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
  }
}

template <class T>
double global_grad_norm(const GradBuffer<T>* buffers, int64_t num_buffers, const RunContext& ctx) {
  CHECK_GE(num_buffers, 0);
  int64_t total = 0;
  for (int64_t k = 0; k < num_buffers; ++k) {
    CHECK_GE(buffers[k].count, 0) << "buffer " << k;
    CHECK(buffers[k].count == 0 || buffers[k].data != nullptr) << "buffer " << k << " is null";
    total += buffers[k].count;
  }
  if (ctx.use_reference_kernels) {
    double acc = 0.0;
    for (int64_t k = 0; k < num_buffers; ++k) {
      for (int64_t i = 0; i < buffers[k].count; ++i) {
        double x = static_cast<double>(buffers[k].data[i]);
        acc += x * x;
      }
    }
    return std::sqrt(acc);
  }
  // Fixed blocks: (buffer, first element) per block, independent of the thread count.
  std::vector<int64_t> block_buffer, block_begin;
  for (int64_t k = 0; k < num_buffers; ++k) {
    for (int64_t begin = 0; begin < buffers[k].count; begin += kGradNormBlock) {
      block_buffer.push_back(k);
      block_begin.push_back(begin);
    }
  }
  const int64_t num_blocks = static_cast<int64_t>(block_buffer.size());
  std::vector<double> partial(static_cast<size_t>(num_blocks), 0.0);
  int threads = cpu_threads_for(ctx, total);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t j = 0; j < num_blocks; ++j) {
    const GradBuffer<T>& buffer = buffers[block_buffer[j]];
    int64_t begin = block_begin[j];
    int64_t count = std::min(kGradNormBlock, buffer.count - begin);
    partial[j] = sum_of_squares(buffer.data + begin, count);
  }
  double acc = 0.0;
  for (int64_t j = 0; j < num_blocks; ++j) acc += partial[j];
  return std::sqrt(acc);
}

template <class T>
double clip_grad_norm(const GradBuffer<T>* buffers, double max_norm, int64_t num_buffers,
                      const RunContext& ctx) {
  CHECK(max_norm > 0.0) << "max_norm " << max_norm;
  const double total_norm = global_grad_norm(buffers, num_buffers, ctx);
  if (!std::isfinite(total_norm)) return total_norm;  // caller skips the step; see optimizer.h
  const double clip_coef = max_norm / (total_norm + 1e-6);
  if (clip_coef >= 1.0) return total_norm;
  const T coef = static_cast<T>(clip_coef);
  for (int64_t k = 0; k < num_buffers; ++k) {
    T* data = buffers[k].data;
    int threads = cpu_threads_for(ctx, buffers[k].count);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < buffers[k].count; ++i) data[i] = data[i] * coef;
  }
  return total_norm;
}

template void adam_update<float>(float*, float*, float*, const float*, double, double, double, double, double,
                                 int64_t, int64_t, const RunContext&);
template void adam_update<double>(double*, double*, double*, const double*, double, double, double, double,
                                  double, int64_t, int64_t, const RunContext&);
template double global_grad_norm<float>(const GradBuffer<float>*, int64_t, const RunContext&);
template double global_grad_norm<double>(const GradBuffer<double>*, int64_t, const RunContext&);
template double clip_grad_norm<float>(const GradBuffer<float>*, double, int64_t, const RunContext&);
template double clip_grad_norm<double>(const GradBuffer<double>*, double, int64_t, const RunContext&);

}  // namespace moeasr
