// kernels/cuda/ctc_loss_cuda.h — the CUDA twin of kernels/cpu/ctc_loss.h: CTC loss as
// torch.nn.CTCLoss(blank=0, reduction='sum', zero_infinity=True), WeNet's CTC branch, forward (alpha
// recursion) and backward (beta recursion and posterior occupancies), batch-first.
// Dims: B utterances, T frames (max), V vocabulary (blank = 0), L labels (max), S = 2L + 1.
//
// Semantics are the CPU op's (read ctc_loss.h): loss[b] = -log p(target_b | x_b), 0 when impossible
// (zero_infinity); total_loss = sum in batch order; dlog_probs is the TRUE derivative with respect to
// log_probs (minus the occupancy, weighted by w_b = dtotal_loss + dloss[b]), assigned, 0 on frames
// t >= input_lengths[b] and for impossible utterances.
//
// Dtypes: fp32 only (log_probs is the fp32 log_softmax output; the CPU op's double instantiation
// exists for gradient checks). The recursions run in DOUBLE in shared memory, as the CPU op does, and
// log_alpha is saved in fp32 as the CPU op saves it in T; occupancies are summed in double in the CPU's
// order (increasing extended position s). So the GPU agrees with the CPU to the last bits of double
// exp/log1p, i.e. fp32 outputs agree to ~1 ulp.
// Layout: one CUDA block per utterance, threads over the extended positions s, one __syncthreads per
// time step in the forward and two in the backward. Dynamic shared memory: 16 S + 4 L bytes (forward),
// 24 S + 8 L bytes (backward); L up to ~9000 labels fits an H100/H200's 227 KiB (CHECKed).
//
// Differences from the CPU op:
//  - log_alpha entries the CPU op leaves unwritten (frames t >= input_lengths[b], positions
//    s >= 2 * target_lengths[b] + 1) are written here as -inf, so the whole buffer is defined.
//  - Lengths and labels live on the device and are not CHECKed on the host (that needs a host sync).
//    An utterance with a length outside [0, T] / [0, L] or a label outside [1, V) gets loss NaN (and
//    NaN log_alpha and NaN dlog_probs rows), so the trainer's non-finite check fires.
// No atomics; deterministic. No host synchronisation (when a kernel needs more than 48 KiB of shared
// memory the launcher calls cudaFuncSetAttribute, a host-side setting that does not synchronise).
#pragma once

#include <cstdint>

#include "core/run_context.h"
#include "kernels/cpu/ctc_loss.h"  // kCtcBlank, ctc_loss_alpha_size

namespace moeasr {

void ctc_loss_forward_cuda(float* loss,             // [B] device, -log p per utterance (0 when impossible)
                           float* total_loss,       // [1] device, sum of loss over the batch; null to skip
                           float* log_alpha,        // [B, T, 2L+1] device, saved for backward
                           const float* log_probs,  // [B, T, V] device, log_softmax output
                           const int32_t* input_lengths,   // [B] device, valid frames, 0 <= . <= T
                           const int32_t* targets,         // [B, L] device, labels in [1, V), padding ignored
                           const int32_t* target_lengths,  // [B] device, valid labels, 0 <= . <= L
                           int64_t batch, int64_t max_time, int64_t vocab, int64_t max_target_length,
                           const RunContext& ctx);

// w_b = dtotal_loss + (dloss ? dloss[b] : 0); for WeNet's loss_sum / B pass dtotal_loss = 1 / B and
// dloss = null.
void ctc_loss_backward_cuda(float* dlog_probs,              // [B, T, V] device, assigned
                            const float* dloss,             // [B] device, upstream per utterance; null = 0
                            float dtotal_loss,              // upstream gradient of total_loss (host scalar)
                            const float* log_alpha,         // [B, T, 2L+1] device, from forward
                            const float* log_probs,         // [B, T, V] device
                            const int32_t* input_lengths,   // [B] device
                            const int32_t* targets,         // [B, L] device
                            const int32_t* target_lengths,  // [B] device
                            int64_t batch, int64_t max_time, int64_t vocab, int64_t max_target_length,
                            const RunContext& ctx);

}  // namespace moeasr
