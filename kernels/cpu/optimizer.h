// kernels/cpu/optimizer.h — the optimizer step of WeNet training: Adam as torch.optim.Adam
// (single-tensor implementation, L2 weight decay added to the gradient, not AdamW), and gradient-norm
// clipping as torch.nn.utils.clip_grad_norm_ (WeNet's grad_clip, 5 in the recipes).
// Dims: n elements of one flat buffer (a parameter region: params, grads and both Adam moments share
// one layout, DESIGN.md §4).
#pragma once

#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

// One Adam step on a flat buffer, in place, with `step` the 1-based count of steps taken including
// this one (PyTorch's state['step'] after its increment). Per element, as PyTorch computes it:
//   g = grad + weight_decay * param               (only when weight_decay != 0)
//   exp_avg = lerp(exp_avg, g, 1 - beta1)          (= beta1 * m + (1 - beta1) * g)
//   exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
//   denom = sqrt(exp_avg_sq) / sqrt(1 - beta2^step) + eps
//   param -= lr / (1 - beta1^step) * exp_avg / denom
// Scalars (bias corrections, step size) are computed in double and applied in T, as PyTorch applies
// Python floats to an fp32 tensor. Defaults: lr 1e-3, beta1 0.9, beta2 0.999, eps 1e-8, weight_decay 0.
// Elementwise, parallel with OpenMP; each element is written by one thread.
template <class T>
void adam_update(T* param,             // [n] updated in place (fp32 master weights in training)
                 T* exp_avg,           // [n] first moment, updated in place (zeros before step 1)
                 T* exp_avg_sq,        // [n] second moment, updated in place (zeros before step 1)
                 const T* grad,        // [n]
                 double lr,            // e.g. 1e-3 (after the scheduler)
                 double beta1,         // e.g. 0.9
                 double beta2,         // e.g. 0.999
                 double eps,           // e.g. 1e-8
                 double weight_decay,  // e.g. 0 (L2 added to the gradient)
                 int64_t step,         // >= 1
                 int64_t n, const RunContext& ctx);

// Block size of the parallel gradient-norm sum (fixes its summation order).
constexpr int64_t kGradNormBlock = 1 << 16;

// One buffer of a gradient list: `count` elements at `data`.
template <class T>
struct GradBuffer {
  T* data;        // [count]
  int64_t count;  // >= 0
};

// sqrt(sum over every element of every buffer of x^2), squares summed in double. The summation order
// is fixed: buffers in list order, each cut into fixed blocks of kGradNormBlock elements (each summed
// over 8 interleaved partial sums, added in a fixed order) summed in
// parallel and then added in block order, so the result does not depend on the thread count. With
// ctx.use_reference_kernels the squares are summed in one plain sequential loop instead (same value
// up to rounding; exactly equal on integer-valued data). PyTorch takes per-tensor norms first and
// then the norm of norms in the gradient's dtype, so it differs from us in the last bits.
// NaN or inf in any gradient gives a NaN or inf norm.

template <class T>
double global_grad_norm(const GradBuffer<T>* buffers,  // [num_buffers]
                        int64_t num_buffers, const RunContext& ctx);

// As torch.nn.utils.clip_grad_norm_(params, max_norm) with norm_type 2: total_norm =
// global_grad_norm(buffers); clip_coef = max_norm / (total_norm + 1e-6); when clip_coef < 1 every
// gradient is multiplied by clip_coef (in T). Returns total_norm (before clipping).
// A non-finite total_norm is returned and the gradients are left untouched: PyTorch (with
// error_if_nonfinite=False) would multiply them by 0 (inf norm) or NaN (NaN norm); WeNet's executor
// then skips the optimizer step when the norm is not finite, which is what callers here must do too.
template <class T>
double clip_grad_norm(const GradBuffer<T>* buffers,  // [num_buffers] gradients, scaled in place
                      double max_norm,               // > 0, e.g. 5 (grad_clip)
                      int64_t num_buffers, const RunContext& ctx);

}  // namespace moeasr
