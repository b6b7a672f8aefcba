// kernels/cpu/norm.h — normalisation layers of the Conformer: LayerNorm over the last dimension as
// torch.nn.LayerNorm (biased variance, elementwise affine), and BatchNorm1d on channels-last data as
// torch.nn.BatchNorm1d applied to WeNet's (B, C, T) conv-module tensor: our rows are the N = B*T
// positions, statistics are per channel over all N rows.
// Dims: N rows, C channels (the last, contiguous dimension).
// Statistics are computed in double accumulators with two passes (mean, then sum of squared
// deviations), so float inputs with a large common offset keep their precision.
// Gradient convention: dweight, dbias accumulate (+=); dx is assigned.
#pragma once

#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

// out = (x - mean) * rstd * weight + bias per row, rstd = 1 / sqrt(var + eps), var biased.
// weight/bias null mean 1/0 (elementwise_affine=False). mean/rstd are saved for the backward.
template <class T>
void layer_norm_forward(T* out,           // [N, C]
                        T* mean,          // [N] saved for backward
                        T* rstd,          // [N] saved for backward
                        const T* x,       // [N, C]
                        const T* weight,  // [C] or null
                        const T* bias,    // [C] or null
                        T eps, int64_t n, int64_t c, const RunContext& ctx);

template <class T>
void layer_norm_backward(T* dx,            // [N, C] assigned; null to skip
                         T* dweight,       // [C] accumulated; null to skip
                         T* dbias,         // [C] accumulated; null to skip
                         const T* dout,    // [N, C]
                         const T* x,       // [N, C] forward input
                         const T* mean,    // [N] from layer_norm_forward
                         const T* rstd,    // [N] from layer_norm_forward
                         const T* weight,  // [C] or null
                         int64_t n, int64_t c, const RunContext& ctx);

// Training mode: normalise with the batch mean and biased variance per channel, save them, and update
// the running statistics in place as PyTorch does:
//   running_mean = (1 - momentum) * running_mean + momentum * mean
//   running_var  = (1 - momentum) * running_var  + momentum * var * N / (N - 1)   (unbiased)
// N == 1 is an error, as in PyTorch ("Expected more than 1 value per channel when training");
// N == 0 writes nothing and leaves the running statistics alone (PyTorch's empty-input path).
// running_mean/running_var may be null (track_running_stats=False); weight/bias null mean 1/0.
template <class T>
void batch_norm_train_forward(T* out,           // [N, C]
                              T* save_mean,     // [C] batch mean, saved for backward
                              T* save_rstd,     // [C] 1 / sqrt(batch biased var + eps), saved
                              T* running_mean,  // [C] updated in place, or null
                              T* running_var,   // [C] updated in place, or null
                              const T* x,       // [N, C]
                              const T* weight,  // [C] or null
                              const T* bias,    // [C] or null
                              T momentum, T eps, int64_t n, int64_t c, const RunContext& ctx);

// Full batch-statistics gradient (the batch mean and variance depend on x).
template <class T>
void batch_norm_train_backward(T* dx,               // [N, C] assigned; null to skip
                               T* dweight,          // [C] accumulated; null to skip
                               T* dbias,            // [C] accumulated; null to skip
                               const T* dout,       // [N, C]
                               const T* x,          // [N, C] forward input
                               const T* save_mean,  // [C] from batch_norm_train_forward
                               const T* save_rstd,  // [C] from batch_norm_train_forward
                               const T* weight,     // [C] or null
                               int64_t n, int64_t c, const RunContext& ctx);

// Eval mode: out = (x - running_mean) / sqrt(running_var + eps) * weight + bias.
template <class T>
void batch_norm_eval_forward(T* out,                 // [N, C]
                             const T* x,             // [N, C]
                             const T* running_mean,  // [C]
                             const T* running_var,   // [C]
                             const T* weight,        // [C] or null
                             const T* bias,          // [C] or null
                             T eps, int64_t n, int64_t c, const RunContext& ctx);

// Eval-mode gradient: the statistics are constants, so dx is an affine map of dout.
template <class T>
void batch_norm_eval_backward(T* dx,                  // [N, C] assigned; null to skip
                              T* dweight,             // [C] accumulated; null to skip
                              T* dbias,               // [C] accumulated; null to skip
                              const T* dout,          // [N, C]
                              const T* x,             // [N, C] forward input
                              const T* running_mean,  // [C]
                              const T* running_var,   // [C]
                              const T* weight,        // [C] or null
                              T eps, int64_t n, int64_t c, const RunContext& ctx);

}  // namespace moeasr
