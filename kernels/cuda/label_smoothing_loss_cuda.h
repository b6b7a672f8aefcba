// kernels/cuda/label_smoothing_loss_cuda.h — the CUDA twin of kernels/cpu/label_smoothing_loss.h:
// WeNet's LabelSmoothingLoss (KL divergence to the smoothed target, ignore_id rows skipped, loss
// divided by the caller's normalizer: the batch size, or the kept-token count when
// length_normalized_loss) and th_accuracy's counts, on decoder logits.
// Dims: N positions (B * L flattened), V vocabulary (e.g. 5000).
//
// Dtypes: logits and dlogits T in {float, __nv_bfloat16}; all loss and gradient math in fp32
// (one CUDA block per row: max / first argmax, sum of exp, log-sum-exp and the cross term, each a
// fixed-shape block reduction); log_sum_exp saved in fp32; each row's KL is finished in double.
// Determinism: no atomics. The forward writes per-row partials (KL, correct flag) into the caller's
// workspace, then one block adds them in a fixed order (thread t takes rows t, t + 256, ..., then a
// fixed tree, in double), so the loss is the same on every run.
// Difference from the CPU op: the CPU accumulates each row in double, here in fp32, so the two agree
// to fp32 rounding (~1e-6 relative), not bit for bit.
//
// Targets live on the device and are not CHECKed on the host (that needs a host sync): a kept row
// whose target is outside [0, V) gets a NaN log_sum_exp and KL, so the loss is NaN and the trainer's
// non-finite check fires. No host synchronisation.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

// Bytes of the workspace label_smoothing_loss_forward_cuda needs for N rows.
size_t label_smoothing_loss_workspace_bytes(int64_t n);

template <class T>
void label_smoothing_loss_forward_cuda(
    float* loss,             // [1] device: sum of KL over kept rows / normalizer
    float* log_sum_exp,      // [N] device, saved for backward (0 on ignored rows)
    int64_t* num_kept,       // [1] device, rows with target != ignore_id; null to skip
    int64_t* num_correct,    // [1] device, kept rows with argmax == target; null to skip
    const T* logits,         // [N, V] device
    const int32_t* targets,  // [N] device, in [0, V) or ignore_id
    double smoothing,        // eps, e.g. 0.1 (lsm_weight)
    int32_t ignore_id,       // e.g. -1
    double normalizer,       // > 0, e.g. batch size
    int64_t n, int64_t vocab,
    void* workspace,  // device, >= label_smoothing_loss_workspace_bytes(n)
    size_t workspace_bytes, const RunContext& ctx);

// dlogits[i, v] = (softmax(x_i)_v - q_v) * dloss / normalizer on kept rows, 0 on ignored rows (assigned).
template <class T>
void label_smoothing_loss_backward_cuda(T* dlogits,                // [N, V] device, assigned
                                        float dloss,               // upstream gradient of loss (host scalar)
                                        const T* logits,           // [N, V] device
                                        const float* log_sum_exp,  // [N] device, from forward
                                        const int32_t* targets,    // [N] device
                                        double smoothing, int32_t ignore_id, double normalizer, int64_t n,
                                        int64_t vocab, const RunContext& ctx);

}  // namespace moeasr
