// kernels/cpu/label_smoothing_loss.h — WeNet's LabelSmoothingLoss
// (wenet/transformer/label_smoothing_loss.py) on decoder logits, and WeNet's th_accuracy counts.
// Dims: N positions (B * L flattened), V vocabulary.
//
// For each kept row (targets[i] != ignore_id), with smoothing eps:
//   q_v = 1 - eps for v = target, eps / (V - 1) otherwise,
//   kl_i = sum_v q_v * (log q_v - log_softmax(x_i)_v)      (0 * log 0 = 0, as KLDivLoss does)
// loss = sum_i kl_i / normalizer. WeNet's normalizer is the batch size B, or the number of kept rows
// (tokens) when length_normalized_loss is true; the caller passes it. Ignored rows contribute 0.
// Also counts kept rows and rows whose argmax (first maximum, as torch.argmax) equals the target.
//
// Backward: dlogits[i, v] = (softmax(x_i)_v - q_v) * dloss / normalizer for kept rows, 0 for ignored
// ones. Gradient convention: dlogits is assigned (=).
// Accumulation in double; rows in parallel (OpenMP), each row by one thread, the loss summed over rows
// in row order afterwards, so results do not depend on the thread count.
#pragma once

#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

constexpr int32_t kIgnoreId = -1;  // WeNet's IGNORE_ID

template <class T>
void label_smoothing_loss_forward(T* loss,               // [1] sum of KL over kept rows / normalizer
                                  T* log_sum_exp,        // [N] per row, saved for backward
                                  int64_t* num_kept,     // [1] rows with target != ignore_id; null to skip
                                  int64_t* num_correct,  // [1] kept rows with argmax == target; null to skip
                                  const T* logits,       // [N, V]
                                  const int32_t* targets,  // [N] in [0, V) or ignore_id
                                  double smoothing,        // eps, e.g. 0.1 (lsm_weight)
                                  int32_t ignore_id,       // e.g. -1
                                  double normalizer,       // > 0, e.g. batch size
                                  int64_t n, int64_t vocab, const RunContext& ctx);

template <class T>
void label_smoothing_loss_backward(T* dlogits,              // [N, V] assigned
                                   T dloss,                 // upstream gradient of loss
                                   const T* logits,         // [N, V]
                                   const T* log_sum_exp,    // [N] from forward
                                   const int32_t* targets,  // [N]
                                   double smoothing, int32_t ignore_id, double normalizer, int64_t n,
                                   int64_t vocab, const RunContext& ctx);

}  // namespace moeasr
