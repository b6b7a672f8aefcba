// parallel/mpi_expert_dispatcher.h — expert parallelism for the MoE layer: an ExpertDispatcher
// (model/expert_dispatch.h) that moves rows over an EP-group Communicator with a dropless, exact-count
// all-to-all (after Megatron-Core's alltoall token dispatcher and MegaBlocks' parallel_forward_once,
// moe_systems.md §3; count discipline after PyTorch PR #32361, habit 15):
//   1. counts first: an all-to-all of the per-expert row counts, [ep_size, E_local] int64 per rank;
//   2. verify that what arrived is the transpose of what was sent, before any payload moves:
//      kSums (default): one all-reduce of [2E] (rows sent to each global expert by everybody | rows its
//      holder says it receives) — every rank sees the same numbers, so all fail together;
//      kFullMatrix (debug): all-gather every rank's [E] send counts and compare entry by entry with the
//      received matrix, then agree on the verdict with an all-reduce;
//   3. the payload: an all-to-all-v of rows in the owner's expert-major order (rows for one holder are
//      contiguous because a holder's global expert ids are consecutive), described per (peer, local
//      expert) block on both sides;
//   4. the received rows land in local-expert-major blocks [e][q] (every (source, local expert) block
//      is received straight into its place: Communicator::all_to_all_blocks, MPI derived datatypes),
//      as the grouped expert GEMMs need them; combine sends them back from there.
// Backward runs the same exchanges with send and receive swapped, reusing the counts cached in the
// layer's ExpertDispatchCounts (no second count exchange). Every member calls every exchange, also
// with zero rows to send or receive. The buffers it returns come from ctx.activations.
//
// Dims: E global experts, E_local = E / ep_size, D row width, M rows this rank routed, R rows its
// local experts process, q source rank, e local expert.
#pragma once

#include <cstdint>
#include <vector>

#include "core/run_context.h"
#include "core/status.h"
#include "model/expert_dispatch.h"
#include "parallel/communicator.h"

namespace moeasr {

enum class CountVerification : uint8_t { kSums, kFullMatrix };

// Steps 1 and 2: fills `counts` (arrays from ctx.activations) from this rank's `send_counts` over
// `comm` (the EP group; comm->size() = ep_size). Collective. A Status when a count is negative, E is
// not divisible by the group size, or the received counts are not the transpose of the sent ones
// (the message names the expert and both totals and prints this rank's received matrix); every
// member returns the same verdict.
Status exchange_expert_counts(ExpertDispatchCounts* counts,  // filled
                              const int64_t* send_counts,    // [E] rows this rank sends per global expert
                              Communicator* comm, CountVerification verification, int64_t n_experts,
                              const RunContext& ctx);

// Where block (q, e) of the received rows starts in local-expert-major order (blocks [e][q]), in
// rows: offsets[q * E_local + e]. The exchange receives straight into these places and sends back
// from them, so no reorder pass is needed (FastMoE's layout, moe_systems.md §5.1 item 1).
std::vector<int64_t> expert_major_offsets(const int64_t* recv_counts,  // [ep_size, E_local]
                                          int64_t ep_size, int64_t n_local);

template <class T>
class MpiExpertDispatcher final : public ExpertDispatcher<T> {
 public:
  // `ep_group` is this rank's EP group over host buffers (the counts go through it); `rows_group` the
  // same ranks over the rows' memory (NCCL for device rows; null: ep_group). Both must outlive the
  // dispatcher. Row exchanges are ordered after the compute stream's work (ctx.cuda_stream) and the
  // compute stream after them (Communicator::after_compute / before_compute).
  explicit MpiExpertDispatcher(Communicator* ep_group,
                               CountVerification verification = CountVerification::kSums,
                               Communicator* rows_group = nullptr);

  ExpertLayout layout() const override;
  void dispatch_forward(ExpertDispatchCounts* counts, const T** local_rows, const T* permuted_rows,
                        const int64_t* send_counts, int64_t n_experts, int64_t d,
                        const RunContext& ctx) override;
  void combine_forward(const T** permuted_out, const T* local_out, const ExpertDispatchCounts& counts,
                       int64_t d, const RunContext& ctx) override;
  void combine_backward(const T** dlocal_out, const T* dpermuted_out, const ExpertDispatchCounts& counts,
                        int64_t d, const RunContext& ctx) override;
  void dispatch_backward(const T** dpermuted_rows, const T* dlocal_rows, const ExpertDispatchCounts& counts,
                         int64_t d, const RunContext& ctx) override;

 private:
  // Owner -> holder (a, c): [M, D] permuted order -> [R, D] local-expert-major.
  void to_holders(const T** out, const T* in, const ExpertDispatchCounts& counts, int64_t d,
                  const RunContext& ctx);
  // Holder -> owner (b, d): [R, D] local-expert-major -> [M, D] permuted order.
  void to_owners(const T** out, const T* in, const ExpertDispatchCounts& counts, int64_t d,
                 const RunContext& ctx);

  Communicator* comm_;       // counts (host)
  Communicator* rows_comm_;  // rows (host or device)
  CountVerification verification_;
};

}  // namespace moeasr
