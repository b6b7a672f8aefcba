// kernels/cpu/ctc_loss.h — connectionist temporal classification loss as
// torch.nn.CTCLoss(blank=0, reduction='sum', zero_infinity=True), the loss of WeNet's CTC branch
// (wenet/transformer/ctc.py; WeNet then divides the sum by the batch size, outside this op).
// Batch-first layout. Dims: B utterances, T frames (max over the batch), V vocabulary (blank = 0),
// L target labels (max over the batch), S = 2 * L + 1 positions of the blank-extended target.
//
// Forward: the log-space alpha recursion of Graves et al. (2006) over the extended target
// [blank, l1, blank, l2, ..., lL, blank]; loss[b] = -log p(target_b | x_b). zero_infinity: an
// utterance whose target is impossible (p = 0: too few frames for the labels and their repeats) gets
// loss 0 and gradient 0, as PyTorch does.
//
// Backward: the TRUE derivative of the loss with respect to log_probs,
//   dlog_probs[b, t, v] = -w_b * sum_{s : ext[s] = v} exp(log_alpha[t, s] + log_beta[t, s] + nll_b),
// i.e. minus the posterior occupancy of symbol v at frame t, for t < input_lengths[b] (0 after).
// Here beta excludes frame t's emission, so alpha * beta / p is the occupancy itself.
// Note: PyTorch's own CTC backward returns exp(log_probs) - occupancy, which is the gradient with
// respect to the logits *before* log_softmax (it assumes its input came out of a log_softmax). Both
// give the same logits gradient once ours is passed through log_softmax backward
// (dz = g - softmax(z) * sum_v g_v, and sum_v occupancy = 1 per valid frame); ours is the derivative
// of the function actually computed, so a finite-difference check on log_probs passes.
//
// Gradient convention: dlog_probs is assigned (=). Accumulation is in double; log_alpha is saved
// in T, as PyTorch saves it in the input's dtype. OpenMP over utterances: each utterance is done by
// one thread, and the total is summed in batch order afterwards, so results do not depend on the
// thread count.
#pragma once

#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

constexpr int32_t kCtcBlank = 0;

// Saved-for-backward size per utterance: T * (2 * L + 1) entries of log_alpha.
inline int64_t ctc_loss_alpha_size(int64_t max_time, int64_t max_target_length) {
  return max_time * (2 * max_target_length + 1);
}

template <class T>
void ctc_loss_forward(T* loss,                        // [B] -log p per utterance (0 when impossible)
                      T* total_loss,                  // [1] sum of loss over the batch; null to skip
                      T* log_alpha,                   // [B, T, 2L+1] saved for backward
                      const T* log_probs,             // [B, T, V] log_softmax output
                      const int32_t* input_lengths,   // [B] valid frames, 0 <= . <= T
                      const int32_t* targets,         // [B, L] labels in [1, V), padding ignored
                      const int32_t* target_lengths,  // [B] valid labels, 0 <= . <= L
                      int64_t batch, int64_t max_time, int64_t vocab, int64_t max_target_length,
                      const RunContext& ctx);

// Upstream gradient of utterance b: w_b = dtotal_loss + (dloss ? dloss[b] : 0), i.e. the gradients
// arriving at both forward outputs (per-utterance and summed) are added. For WeNet's
// loss_sum / B, pass dtotal_loss = 1 / B and dloss = null.
template <class T>
void ctc_loss_backward(T* dlog_probs,                  // [B, T, V] assigned
                       const T* dloss,                 // [B] upstream per utterance; null = 0
                       T dtotal_loss,                  // upstream gradient of total_loss
                       const T* log_alpha,             // [B, T, 2L+1] from forward
                       const T* log_probs,             // [B, T, V]
                       const int32_t* input_lengths,   // [B]
                       const int32_t* targets,         // [B, L]
                       const int32_t* target_lengths,  // [B]
                       int64_t batch, int64_t max_time, int64_t vocab, int64_t max_target_length,
                       const RunContext& ctx);

}  // namespace moeasr
