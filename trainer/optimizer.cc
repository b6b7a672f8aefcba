// trainer/optimizer.cc — WarmupLR, clipping and Adam over the parameter regions (see optimizer.h).
#include "trainer/optimizer.h"

#include <cmath>

#include "kernels/cpu/optimizer.h"

namespace moeasr {

double warmup_lr(double base_lr, int64_t warmup_steps, int64_t step) {
  double n = static_cast<double>(step < 1 ? 1 : step);
  if (warmup_steps <= 0) return base_lr / std::sqrt(n);
  double w = static_cast<double>(warmup_steps);
  return base_lr * std::sqrt(w) * std::min(1.0 / std::sqrt(n), n * std::pow(w, -1.5));
}

template <class T>
AdamOptimizer<T>::AdamOptimizer(ParameterStore<T>* store, AdamOptions options)
    : store_(store), options_(options) {
  for (int r = 0; r < kNumParamRegions; ++r) {
    exp_avg_[r].assign(store->grads[r].size(), T(0));
    exp_avg_sq_[r].assign(store->grads[r].size(), T(0));
  }
}

template <class T>
UpdateResult AdamOptimizer<T>::step(const RunContext& ctx) {
  UpdateResult result;
  std::vector<GradBuffer<T>> buffers;
  for (int r = 0; r < kNumParamRegions; ++r) {
    if (!store_->grads[r].empty()) {
      buffers.push_back({store_->grads[r].data(), static_cast<int64_t>(store_->grads[r].size())});
    }
  }
  if (options_.grad_clip > 0) {
    result.grad_norm =
        clip_grad_norm(buffers.data(), options_.grad_clip, static_cast<int64_t>(buffers.size()), ctx);
  } else {
    result.grad_norm = global_grad_norm(buffers.data(), static_cast<int64_t>(buffers.size()), ctx);
  }
  if (!std::isfinite(result.grad_norm)) {
    result.skipped = true;
    return result;
  }
  apply_update(&result, ctx);
  return result;
}

template <class T>
UpdateResult AdamOptimizer<T>::step_with_norm(double grad_norm, const RunContext& ctx) {
  UpdateResult result;
  result.grad_norm = grad_norm;
  if (!std::isfinite(grad_norm)) {
    result.skipped = true;
    return result;
  }
  // torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is below 1.
  double coef = options_.grad_clip > 0 ? options_.grad_clip / (grad_norm + 1e-6) : 1.0;
  if (coef < 1.0) {
    for (auto& g : store_->grads) {
      for (T& v : g) v = static_cast<T>(v * coef);
    }
  }
  apply_update(&result, ctx);
  return result;
}

template <class T>
void AdamOptimizer<T>::apply_update(UpdateResult* result_out, const RunContext& ctx) {
  UpdateResult& result = *result_out;
  ++step_;
  result.lr = warmup_lr(options_.lr, options_.warmup_steps, step_);
  for (int r = 0; r < kNumParamRegions; ++r) {
    if (store_->grads[r].empty()) continue;
    adam_update(store_->values[r].data(), exp_avg_[r].data(), exp_avg_sq_[r].data(), store_->grads[r].data(),
                result.lr, options_.beta1, options_.beta2, options_.eps, options_.weight_decay, step_,
                static_cast<int64_t>(store_->grads[r].size()), ctx);
  }
}

template class AdamOptimizer<float>;
template class AdamOptimizer<double>;

}  // namespace moeasr
