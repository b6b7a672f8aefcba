// trainer/optimizer.h — the update step of U2++ training over a model's ParameterStore, as WeNet's
// update_parameter_and_lr (u2pp_moe_wenet.md §7): WarmupLR (Noam: peak = base_lr at warmup_steps,
// then inverse square root), clip_grad_norm over every trainable parameter, skip the update when the
// norm is not finite, then torch.optim.Adam on fp32 master weights. Adam moments live in buffers laid
// out like the parameter regions, so they are checkpointed and reduced region by region.
#pragma once

#include <cstdint>
#include <vector>

#include "core/arena.h"
#include "core/run_context.h"
#include "model/parameter_table.h"

namespace moeasr {

// WeNet WarmupLR: lr(n) = base_lr * w^0.5 * min(n^-0.5, n * w^-1.5), n = update index from 1.
// warmup_steps 0 gives base_lr * n^-0.5.
double warmup_lr(double base_lr, int64_t warmup_steps, int64_t step);

struct AdamOptions {
  double lr = 1e-3;  // base learning rate (the schedule scales it)
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  int64_t warmup_steps = 25000;
  double grad_clip = 5.0;  // <= 0: no clipping
};

struct UpdateResult {
  double grad_norm = 0.0;  // before clipping
  double lr = 0.0;         // used for this update (0 when skipped)
  bool skipped = false;    // non-finite gradient norm: parameters and moments untouched
};

template <class T>
class AdamOptimizer {
 public:
  AdamOptimizer(ParameterStore<T>* store, AdamOptions options);

  // One update from the accumulated gradients (already divided by accum_grad by the caller's loss
  // scaling). Increments the step counter unless skipped. Does not zero the gradients.
  UpdateResult step(const RunContext& ctx);
  // The same with the gradient norm computed by the caller — with expert parallelism the norm must
  // be global (parallel/grad_sync.h global_grad_norm_distributed), which this process cannot see.
  // Clips by options().grad_clip against that norm, skips when it is not finite.
  UpdateResult step_with_norm(double grad_norm, const RunContext& ctx);

  int64_t steps_taken() const { return step_; }
  void set_steps_taken(int64_t step) { step_ = step; }  // for resume
  // Moves the moments into `arena` (memory of ctx.device, e.g. next to a ParameterStore placed with
  // place_on); the host vectors below are then a staging copy that copy_to_host() refreshes (for
  // checkpoints). Call after loading a checkpoint's moments.
  void place_on(Arena* arena, const RunContext& ctx);
  void copy_to_host(const RunContext& ctx);

  std::vector<T>& exp_avg(ParamRegion region) { return exp_avg_[static_cast<int>(region)]; }
  std::vector<T>& exp_avg_sq(ParamRegion region) { return exp_avg_sq_[static_cast<int>(region)]; }
  const AdamOptions& options() const { return options_; }

 private:
  void apply_update(UpdateResult* result, const RunContext& ctx);  // step count, lr, Adam on every region

  ParameterStore<T>* store_;
  AdamOptions options_;
  int64_t step_ = 0;
  std::vector<T> exp_avg_[kNumParamRegions];
  std::vector<T> exp_avg_sq_[kNumParamRegions];
  // The moments' working copy after place_on (else the host vectors).
  Device device_ = Device::cpu;
  T* device_exp_avg_[kNumParamRegions] = {nullptr, nullptr, nullptr};
  T* device_exp_avg_sq_[kNumParamRegions] = {nullptr, nullptr, nullptr};
  T* moment(std::vector<T>* host, T* const* device, int r);
};

}  // namespace moeasr
