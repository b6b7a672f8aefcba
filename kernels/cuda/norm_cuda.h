// kernels/cuda/norm_cuda.h — the CUDA twin of kernels/cpu/norm.h: LayerNorm over the last dimension
// (torch.nn.LayerNorm, biased variance) and channels-last BatchNorm1d (statistics per channel over all
// N rows, torch.nn.BatchNorm1d on WeNet's (B, C, T) conv-module tensor), forward and backward.
// Dims: N rows, C channels (the last, contiguous dimension).
// Dtypes: activations x/out/dout/dx are T = float or __nv_bfloat16; everything else is fp32: the saved
// statistics (mean/rstd), the parameters (weight, bias: their fp32 master copies), the parameter grads
// and the running statistics. Sums (row statistics, per-channel statistics and parameter grads, the
// dx row sums) accumulate in double, as the CPU's accumulators do, so that a common offset keeps its
// precision; statistics use two passes (mean, then squared deviations), and BatchNorm merges per-chunk
// (mean, M2) pairs with Chan's formula. Normalisation and dx are evaluated in fp32 from the fp32
// mean/rstd, so an input whose |mean| is much larger than its spread loses ~ulp(mean) * rstd there,
// as any fp32 LayerNorm does.
// All pointers are DEVICE pointers; launches on ctx.cuda_stream, no host synchronisation.
// Gradient convention: dweight, dbias accumulate (+=); dx is assigned.
// Determinism: no atomics anywhere. Per-channel sums (LayerNorm's dweight/dbias, every BatchNorm
// statistic and grad) are per-chunk partials over a fixed number of rows (written to the caller's
// workspace) reduced by a second kernel in chunk order; row reductions use a fixed block shape, so
// results are bitwise reproducible run to run.
// Workspace: the ops that need one take (void* workspace, size_t workspace_bytes), device memory of at
// least <op>_workspace_bytes(n, c) bytes, 16-byte aligned; its contents are scratch (not kept).
// BatchNorm training with N == 1 is an error (CHECK, on the host, no sync), as on the CPU and in
// PyTorch; N == 0 (or C == 0) writes nothing and leaves the running statistics alone.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

// Bytes of workspace that layer_norm_backward_cuda needs (0 when it needs none).
size_t layer_norm_workspace_bytes(int64_t n, int64_t c);

// Bytes of workspace that batch_norm_train_forward_cuda, batch_norm_train_backward_cuda and
// batch_norm_eval_backward_cuda need (one size serves all three).
size_t batch_norm_workspace_bytes(int64_t n, int64_t c);

// out = (x - mean) * rstd * weight + bias per row, rstd = 1 / sqrt(var + eps), var biased.
// weight/bias null mean 1/0. One thread block per row.
template <class T>
void layer_norm_forward_cuda(T* out,               // [N, C]
                             float* mean,          // [N] saved for backward
                             float* rstd,          // [N] saved for backward
                             const T* x,           // [N, C]
                             const float* weight,  // [C] or null
                             const float* bias,    // [C] or null
                             float eps, int64_t n, int64_t c, const RunContext& ctx);

// dx (one block per row) and dweight/dbias (column partials + reduction; needs the workspace when
// either is non-null).
template <class T>
void layer_norm_backward_cuda(T* dx,                // [N, C] assigned; null to skip
                              float* dweight,       // [C] accumulated; null to skip
                              float* dbias,         // [C] accumulated; null to skip
                              const T* dout,        // [N, C]
                              const T* x,           // [N, C] forward input
                              const float* mean,    // [N] from layer_norm_forward_cuda
                              const float* rstd,    // [N] from layer_norm_forward_cuda
                              const float* weight,  // [C] or null
                              int64_t n, int64_t c, void* workspace, size_t workspace_bytes,
                              const RunContext& ctx);

// Training mode: batch mean and biased variance per channel, saved; running statistics updated as
//   running_mean = (1 - momentum) * running_mean + momentum * mean
//   running_var  = (1 - momentum) * running_var  + momentum * var * N / (N - 1)
// (computed in double, stored fp32). running_mean/running_var may be null (together).
template <class T>
void batch_norm_train_forward_cuda(T* out,               // [N, C]
                                   float* save_mean,     // [C] batch mean, saved for backward
                                   float* save_rstd,     // [C] 1 / sqrt(batch biased var + eps), saved
                                   float* running_mean,  // [C] updated in place, or null
                                   float* running_var,   // [C] updated in place, or null
                                   const T* x,           // [N, C]
                                   const float* weight,  // [C] or null
                                   const float* bias,    // [C] or null
                                   float momentum, float eps, int64_t n, int64_t c, void* workspace,
                                   size_t workspace_bytes, const RunContext& ctx);

// Full batch-statistics gradient.
template <class T>
void batch_norm_train_backward_cuda(T* dx,                   // [N, C] assigned; null to skip
                                    float* dweight,          // [C] accumulated; null to skip
                                    float* dbias,            // [C] accumulated; null to skip
                                    const T* dout,           // [N, C]
                                    const T* x,              // [N, C] forward input
                                    const float* save_mean,  // [C] from batch_norm_train_forward_cuda
                                    const float* save_rstd,  // [C] from batch_norm_train_forward_cuda
                                    const float* weight,     // [C] or null
                                    int64_t n, int64_t c, void* workspace, size_t workspace_bytes,
                                    const RunContext& ctx);

// Eval mode: out = (x - running_mean) / sqrt(running_var + eps) * weight + bias.
template <class T>
void batch_norm_eval_forward_cuda(T* out,                     // [N, C]
                                  const T* x,                 // [N, C]
                                  const float* running_mean,  // [C]
                                  const float* running_var,   // [C]
                                  const float* weight,        // [C] or null
                                  const float* bias,          // [C] or null
                                  float eps, int64_t n, int64_t c, const RunContext& ctx);

// Eval-mode gradient: statistics are constants, dx = weight * rstd * dout (no workspace needed for
// dx alone; dweight/dbias need it).
template <class T>
void batch_norm_eval_backward_cuda(T* dx,                      // [N, C] assigned; null to skip
                                   float* dweight,             // [C] accumulated; null to skip
                                   float* dbias,               // [C] accumulated; null to skip
                                   const T* dout,              // [N, C]
                                   const T* x,                 // [N, C] forward input
                                   const float* running_mean,  // [C]
                                   const float* running_var,   // [C]
                                   const float* weight,        // [C] or null
                                   float eps, int64_t n, int64_t c, void* workspace, size_t workspace_bytes,
                                   const RunContext& ctx);

}  // namespace moeasr
