// model/expert_dispatch.h — the row exchange between the MoE layer's router and its experts
// (model/ffn.h MoeFfn), behind an interface so that expert parallelism (an all-to-all over the
// expert-parallel group, DESIGN.md §6; after DeepSpeed-MoE / Megatron's token dispatcher) can be put
// in without changing the layer. WeNet itself has no expert parallelism (u2pp_moe_wenet.md §2): the
// single-process LocalExpertDispatcher below reproduces it exactly.
//
// Division of work. The MoE layer owns routing (gate, top-k, routing softmax), the permutation of
// (token, slot) pairs into expert-major rows and back (kernels/cpu/moe_dispatch.h), and the GEMMs of
// this rank's local experts. The dispatcher owns only the movement of rows between the rank that
// routed a token ("owner") and the rank that holds the expert ("holder").
//
// Dims: E global experts, E_local = E / ep_size experts per rank (rank r holds the global ids
// [r * E_local, (r + 1) * E_local), ExpertLayout in model/parameter_table.h), D row width (d_model),
// M rows this rank routed (its permuted rows, expert-major over the GLOBAL experts),
// R rows this rank's local experts process (local-expert-major).
//
// The four exchanges of one MoE layer call, and the buffers on each side:
//   (a) dispatch_forward   owner -> holder: permuted x rows   [M, D] -> local expert input rows [R, D]
//   (b) combine_forward    holder -> owner: local output rows [R, D] -> permuted output rows   [M, D]
//   (c) combine_backward   owner -> holder: d(permuted out)   [M, D] -> d(local out)            [R, D]
//   (d) dispatch_backward  holder -> owner: d(local input)    [R, D] -> d(permuted x)           [M, D]
// (c) moves rows exactly as (a) does, and (d) as (b); the backward ones reuse the counts that (a)
// recorded in the ExpertDispatchCounts (held by the layer's Saved struct, so one dispatcher serves
// every MoE layer of the model and keeps no per-call state).
//
// Row orders. Owner side: expert-major over global experts, inside one expert the owner's
// (token, slot) order — exactly moe_permute_forward's output. Holder side: local-expert-major; inside
// one local expert the rows from source rank 0 first, then rank 1, ..., each in its owner order. So
// each local expert's rows are one contiguous block, as the layer's one-GEMM-per-expert needs.
//
// What an all-to-all implementation needs (and where it gets it):
//   - send split per destination rank s: sum of send_counts[s * E_local .. (s + 1) * E_local), and
//     send displacements = their prefix sums (the owner's permuted rows are already grouped by
//     destination rank because global ids of one rank are consecutive);
//   - receive split per source rank q: sum over e of recv_counts[q, e], learned by a counts
//     all-to-all of [ep_size, E_local] int64 first (verify: the received matrix is the transpose of what
//     the peers sent and its sum equals the payload size, DESIGN.md §6);
//   - the reorder of the received, source-major blocks [q][e] into local-expert-major blocks [e][q]
//     (and its inverse before (b)/(d)), from recv_counts alone.
// The layer calls all four exchanges on every rank and every step, also with N = 0 or M = 0 (an
// all-to-all is collective): implementations must handle empty sends and receives.
//
// Memory. Output rows are returned through a `const T**`: an implementation either passes its input
// pointer through (LocalExpertDispatcher: the exchange is the identity) or allocates the output from
// ctx.activations (valid until the step's arena reset, which is what backward needs). The counts
// arrays are allocated from ctx.activations by dispatch_forward.
#pragma once

#include <cstdint>

#include "core/run_context.h"
#include "model/parameter_table.h"

namespace moeasr {

// What dispatch_forward records for the other three exchanges of the same layer call.
struct ExpertDispatchCounts {
  int64_t n_experts = 0;        // E (global)
  int64_t n_local_experts = 0;  // E_local
  int64_t ep_size = 1;
  int64_t sent_rows = 0;                  // M: rows this rank routed
  int64_t received_rows = 0;              // R: rows this rank's local experts process
  const int64_t* send_counts = nullptr;   // [E] rows this rank sends to each global expert
  const int64_t* recv_counts = nullptr;   // [ep_size, E_local] rows from each source rank per local expert
  const int64_t* local_counts = nullptr;  // [E_local] rows per local expert (column sums of recv_counts)
};

template <class T>
class ExpertDispatcher {
 public:
  virtual ~ExpertDispatcher() = default;

  // Which experts this rank holds.
  virtual ExpertLayout layout() const = 0;

  // (a) Owner -> holder. `permuted_rows` are this rank's routed rows in expert-major order with
  // send_counts[e] rows for global expert e (sum M). On return *local_rows points at the R rows for
  // this rank's local experts, local-expert-major, and `counts` holds every count (arena-allocated).
  virtual void dispatch_forward(ExpertDispatchCounts* counts,  // filled
                                const T** local_rows,          // out: [R, D]
                                const T* permuted_rows,        // [M, D]
                                const int64_t* send_counts,    // [E]
                                int64_t n_experts, int64_t d, const RunContext& ctx) = 0;

  // (b) Holder -> owner: the local experts' output rows back to their owners, in the owner's
  // permuted order.
  virtual void combine_forward(const T** permuted_out,  // out: [M, D]
                               const T* local_out,      // [R, D]
                               const ExpertDispatchCounts& counts, int64_t d, const RunContext& ctx) = 0;

  // (c) Backward of (b), owner -> holder: gradients of the permuted output rows to the holders.
  virtual void combine_backward(const T** dlocal_out,    // out: [R, D]
                                const T* dpermuted_out,  // [M, D]
                                const ExpertDispatchCounts& counts, int64_t d, const RunContext& ctx) = 0;

  // (d) Backward of (a), holder -> owner: gradients of the local expert input rows to their owners.
  virtual void dispatch_backward(const T** dpermuted_rows,  // out: [M, D]
                                 const T* dlocal_rows,      // [R, D]
                                 const ExpertDispatchCounts& counts, int64_t d, const RunContext& ctx) = 0;
};

// One process holds every expert (WeNet's setting): each exchange is the identity, so the row
// pointers pass through and nothing is copied; recv_counts = local_counts = send_counts.
template <class T>
class LocalExpertDispatcher final : public ExpertDispatcher<T> {
 public:
  ExpertLayout layout() const override { return ExpertLayout{}; }
  void dispatch_forward(ExpertDispatchCounts* counts, const T** local_rows, const T* permuted_rows,
                        const int64_t* send_counts, int64_t n_experts, int64_t d,
                        const RunContext& ctx) override;
  void combine_forward(const T** permuted_out, const T* local_out, const ExpertDispatchCounts& counts,
                       int64_t d, const RunContext& ctx) override;
  void combine_backward(const T** dlocal_out, const T* dpermuted_out, const ExpertDispatchCounts& counts,
                        int64_t d, const RunContext& ctx) override;
  void dispatch_backward(const T** dpermuted_rows, const T* dlocal_rows, const ExpertDispatchCounts& counts,
                         int64_t d, const RunContext& ctx) override;
};

}  // namespace moeasr
