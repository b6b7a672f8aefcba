// parallel/grad_sync.h — gradient synchronisation of expert parallelism inside data parallelism
// (DESIGN.md §3 step 6-7; Megatron's DDP with expert-data-parallel groups, flashlight's
// CoalescingReducer buckets and its all-reduced batch size, moe_systems.md §5.1 item 4):
//   - dense region: summed over the world; expert region: summed over the EDP group (the ranks that
//     hold the same experts; every EP group's holder has already summed its group's tokens);
//   - in buckets of at most `bucket_bytes` (offset ranges of the flat region buffers, no copies);
//   - sums, not means: the loss is normalised by the GLOBAL batch size (U2ppForwardOptions::
//     batch_normalizer = global_batch_size(...)), so the summed gradients are exactly those of the
//     whole global batch on one process, however it is split over ranks;
//   - the global gradient norm over unique parameters: the dense region counted once (identical on
//     every rank after the sync) plus the expert regions summed over the EP group (each EP rank holds
//     other experts; EDP replicas are identical and not counted twice). Clipping with it gives every
//     rank the same coefficient, as torch.nn.utils.clip_grad_norm_ on one process.
// Usage per step: forward/backward with batch_normalizer; sync_gradients; clip_grad_norm_distributed;
// AdamOptimizer::step with AdamOptions::grad_clip = 0 (the optimizer's own norm is local only).
#pragma once

#include <cstdint>

#include "core/run_context.h"
#include "core/status.h"
#include "model/parameter_table.h"
#include "parallel/communicator.h"

namespace moeasr {

struct GradSyncOptions {
  int64_t bucket_bytes = int64_t{32} << 20;  // flashlight uses 20 MB, PyTorch DDP 25 MB
};

// Sum over the world of this rank's batch size: the normaliser of the loss.
StatusOr<int64_t> global_batch_size(int64_t local_batch, Communicator* world);

// Sums the dense gradients over `world` and the expert gradients over `edp`. Collective over both.
template <class T>
Status sync_gradients(ParameterStore<T>* store,  // grads summed in place
                      Communicator* world, Communicator* edp, const GradSyncOptions& options);

// The same sum for grads [begin, end) of one region only, over `comm` (the world for dense, the EDP
// group for experts), in buckets of at most options.bucket_bytes. For a range whose gradients are
// final while the backward still runs (U2ppModel::backward's GradRangeReady): the trainer overlaps
// the all-reduce with the rest of the backward this way. Collective over `comm`; every member must
// pass the same range.
template <class T>
Status sync_gradient_range(ParameterStore<T>* store, ParamRegion region, int64_t begin, int64_t end,
                           Communicator* comm, const GradSyncOptions& options);

// sqrt(|dense grads|^2 + sum over the EP group of |expert grads|^2). Call after sync_gradients.
// Collective over `ep`.
template <class T>
StatusOr<double> global_grad_norm_distributed(const ParameterStore<T>& store, Communicator* ep,
                                              const RunContext& ctx);

// As clip_grad_norm (kernels/cpu/optimizer.h) with the distributed norm: when max_norm / (norm +
// 1e-6) < 1 every gradient (both regions) is scaled by it. Returns the norm before clipping; a
// non-finite norm leaves the gradients untouched (the caller skips the update, as WeNet does).
template <class T>
StatusOr<double> clip_grad_norm_distributed(ParameterStore<T>* store,  // grads scaled in place
                                            double max_norm,           // > 0, e.g. 5
                                            Communicator* ep, const RunContext& ctx);

}  // namespace moeasr
