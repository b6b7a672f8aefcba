// kernels/cuda/optimizer_cuda.h — the CUDA twin of kernels/cpu/optimizer.h: the Adam step
// (torch.optim.Adam, L2 weight decay added to the gradient, bias corrections), the global gradient
// norm and gradient-norm clipping (torch.nn.utils.clip_grad_norm_), on fp32 device buffers.
// Dims: n elements of one flat buffer (a parameter region; params, grads and both moments share one
// layout, DESIGN.md §4).
//
// Dtypes: params, grads and both moments fp32 (the master copies); adam_update_cuda can also write a
// bf16 copy of the updated params in the same pass (the copy the bf16 forward reads).
// Numerics: adam_update_cuda evaluates the CPU op's fp32 expressions in the same order with explicitly
// rounded intrinsics (__fmul_rn, __fadd_rn, __fdiv_rn, __fsqrt_rn: no FMA contraction), so it matches
// the CPU op bit for bit where the host compiler does not contract either. The norm's sum of squares is
// in double, deterministic (fixed chunks of kGradNormCudaChunk elements per block, then one block adds
// the chunk partials in a fixed tree); its summation order differs from the CPU op's, so the two agree
// to rounding, not bit for bit.
//
// Host synchronisation: none inside these ops. The norm is written to DEVICE memory and clipping reads
// it there, so norm + clip run without the host. The trainer's skip-on-non-finite decision (WeNet skips
// the optimizer step when the norm is not finite, see optimizer.h) needs the norm on the host: one
// 4-byte device-to-host copy of `norm` per step, the only host sync we expect in a step besides the
// MoE all-to-all counts. (With expert parallelism the sum of squares must also be all-reduced across
// ranks before the square root; these ops cover one rank's buffers.)
#pragma once

#include <cuda_bf16.h>

#include <cstddef>
#include <cstdint>

#include "core/run_context.h"
#include "kernels/cpu/optimizer.h"  // GradBuffer

namespace moeasr {

// One Adam step, in place, exactly as adam_update in optimizer.h (step is 1-based, >= 1); when
// param_bf16 is not null it receives the updated params rounded to bf16 (round to nearest even).
void adam_update_cuda(float* param,               // [n] device, updated in place
                      float* exp_avg,             // [n] device, updated in place (zeros before step 1)
                      float* exp_avg_sq,          // [n] device, updated in place (zeros before step 1)
                      __nv_bfloat16* param_bf16,  // [n] device, bf16 copy of the new param; null to skip
                      const float* grad,          // [n] device
                      double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step,
                      int64_t n, const RunContext& ctx);

// Elements per block of the norm's first pass (fixes its summation order).
constexpr int64_t kGradNormCudaChunk = 4096;

// Workspace of global_grad_norm_cuda / clip_grad_norm_cuda: one double per chunk of every buffer.
size_t global_grad_norm_workspace_bytes(const GradBuffer<float>* buffers,  // [num_buffers] host array
                                        int64_t num_buffers);

// *norm = sqrt(sum over every element of every buffer of x^2), squares summed in double, written to
// device memory. NaN or inf in any gradient gives a NaN or inf norm. The buffer list is a HOST array
// of (device pointer, count).
void global_grad_norm_cuda(float* norm,                       // [1] device
                           const GradBuffer<float>* buffers,  // [num_buffers] host array, device data
                           int64_t num_buffers,
                           void* workspace,  // device, >= global_grad_norm_workspace_bytes(...)
                           size_t workspace_bytes, const RunContext& ctx);

// Reads the norm from device memory; when it is finite and clip_coef = max_norm / (norm + 1e-6) < 1,
// multiplies every gradient by clip_coef (computed in double, applied in fp32), else leaves them
// untouched (non-finite norm: the caller skips the step, as clip_grad_norm in optimizer.h).
void clip_grads_by_norm_cuda(const GradBuffer<float>* buffers,  // [num_buffers] host array, scaled in place
                             const float* norm,                 // [1] device, from global_grad_norm_cuda
                             double max_norm,                   // > 0, e.g. 5 (grad_clip)
                             int64_t num_buffers, const RunContext& ctx);

// clip_grad_norm of optimizer.h: global_grad_norm_cuda then clip_grads_by_norm_cuda. The norm
// (before clipping) is left in *norm (device) instead of being returned.
void clip_grad_norm_cuda(float* norm,                       // [1] device
                         const GradBuffer<float>* buffers,  // [num_buffers] host array, scaled in place
                         double max_norm, int64_t num_buffers, void* workspace, size_t workspace_bytes,
                         const RunContext& ctx);

}  // namespace moeasr
