// trainer/optimizer.cc — WarmupLR, clipping and Adam over the parameter regions (see optimizer.h).
#include "trainer/optimizer.h"

#include <cmath>

#include "core/check.h"
#include "kernels/ops.h"

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
      buffers.push_back(
          {store_->region_grads(static_cast<ParamRegion>(r)), static_cast<int64_t>(store_->grads[r].size())});
    }
  }
  if (options_.grad_clip > 0) {
    result.grad_norm =
        op::clip_grad_norm(buffers.data(), options_.grad_clip, static_cast<int64_t>(buffers.size()), ctx);
  } else {
    result.grad_norm = op::global_grad_norm(buffers.data(), static_cast<int64_t>(buffers.size()), ctx);
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
    for (int r = 0; r < kNumParamRegions; ++r) {
      T* g = store_->region_grads(static_cast<ParamRegion>(r));
      if (g != nullptr)
        op::scale_forward(g, g, static_cast<T>(coef), static_cast<int64_t>(store_->grads[r].size()), ctx);
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
    const ParamRegion region = static_cast<ParamRegion>(r);
    CHECK(ctx.device == store_->device() && device_ == store_->device())
        << "AdamOptimizer::step: context on " << device_name(ctx.device) << ", parameters on "
        << device_name(store_->device()) << ", moments on " << device_name(device_) << " (place_on both)";
    op::adam_update(store_->region_values(region), moment(exp_avg_, device_exp_avg_, r),
                    moment(exp_avg_sq_, device_exp_avg_sq_, r), store_->region_grads(region), result.lr,
                    options_.beta1, options_.beta2, options_.eps, options_.weight_decay, step_,
                    static_cast<int64_t>(store_->grads[r].size()), ctx);
  }
}

template <class T>
T* AdamOptimizer<T>::moment(std::vector<T>* host, T* const* device, int r) {
  return device_ == Device::cpu ? host[r].data() : device[r];
}

template <class T>
void AdamOptimizer<T>::place_on(Arena* arena, const RunContext& ctx) {
  CHECK(arena != nullptr && arena->device() == ctx.device)
      << "AdamOptimizer::place_on needs an arena in " << device_name(ctx.device) << " memory";
  CHECK(device_ == Device::cpu) << "AdamOptimizer::place_on called twice";
  if (ctx.device == Device::cpu) return;
  for (int r = 0; r < kNumParamRegions; ++r) {
    const int64_t n = static_cast<int64_t>(exp_avg_[r].size());
    const int64_t bytes = n * static_cast<int64_t>(sizeof(T));
    device_exp_avg_[r] = n > 0 ? arena->allocate_array<T>(n) : nullptr;
    device_exp_avg_sq_[r] = n > 0 ? arena->allocate_array<T>(n) : nullptr;
    op::copy_host_to_device(device_exp_avg_[r], exp_avg_[r].data(), bytes, ctx);
    op::copy_host_to_device(device_exp_avg_sq_[r], exp_avg_sq_[r].data(), bytes, ctx);
  }
  device_ = ctx.device;
}

template <class T>
void AdamOptimizer<T>::copy_to_host(const RunContext& ctx) {
  if (device_ == Device::cpu) return;
  for (int r = 0; r < kNumParamRegions; ++r) {
    const int64_t bytes = static_cast<int64_t>(exp_avg_[r].size() * sizeof(T));
    op::copy_device_to_host(exp_avg_[r].data(), device_exp_avg_[r], bytes, ctx);
    op::copy_device_to_host(exp_avg_sq_[r].data(), device_exp_avg_sq_[r], bytes, ctx);
  }
}

template class AdamOptimizer<float>;
template class AdamOptimizer<double>;

}  // namespace moeasr
