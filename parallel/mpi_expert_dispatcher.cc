// parallel/mpi_expert_dispatcher.cc — counts exchange and verification, and the row exchange straight
// into (and back from) local-expert-major order, of the expert-parallel MoE layer (see the header).
#include "parallel/mpi_expert_dispatcher.h"

#include <cstring>
#include <sstream>
#include <vector>

#include "core/check.h"
#include "model/layer_common.h"

namespace moeasr {
namespace {

std::string format_matrix(const int64_t* m, int64_t rows, int64_t cols) {
  std::ostringstream out;
  for (int64_t r = 0; r < rows; ++r) {
    out << "\n    from rank " << r << ":";
    for (int64_t c = 0; c < cols; ++c) out << " " << m[r * cols + c];
  }
  return out.str();
}

}  // namespace

std::vector<int64_t> expert_major_offsets(const int64_t* recv_counts, int64_t ep_size, int64_t n_local) {
  std::vector<int64_t> offsets(ep_size * n_local);
  int64_t at = 0;
  for (int64_t e = 0; e < n_local; ++e) {
    for (int64_t q = 0; q < ep_size; ++q) {
      offsets[q * n_local + e] = at;
      at += recv_counts[q * n_local + e];
    }
  }
  return offsets;
}

Status exchange_expert_counts(ExpertDispatchCounts* counts, const int64_t* send_counts, Communicator* comm,
                              CountVerification verification, int64_t n_experts, const RunContext& ctx) {
  CHECK(counts != nullptr && comm != nullptr);
  const int64_t ep = comm->size();
  const int64_t me = comm->rank();
  if (n_experts < 1 || n_experts % ep != 0) {
    return invalid_argument_error(std::to_string(n_experts) +
                                  " experts cannot be split over an expert-parallel group of " +
                                  std::to_string(ep) + " (" + comm->name() + ")");
  }
  const int64_t n_local = n_experts / ep;
  int64_t* sent = host_alloc<int64_t>(ctx, n_experts);
  int64_t* recv = host_alloc<int64_t>(ctx, ep * n_local);
  int64_t* local = host_alloc<int64_t>(ctx, n_local);
  int64_t negative = -1;
  for (int64_t e = 0; e < n_experts; ++e) {
    sent[e] = send_counts[e];
    if (sent[e] < 0 && negative < 0) negative = e;
  }
  // 1. Counts: block s of `sent` (global experts of rank s) goes to rank s.
  RETURN_IF_ERROR(comm->all_to_all(recv, sent, n_local, DType::i64));

  // 2. Verification. The verdict must be the same on every member (all return, or none).
  int64_t sent_rows = 0, received_rows = 0;
  for (int64_t e = 0; e < n_experts; ++e) sent_rows += sent[e];
  for (int64_t e = 0; e < n_local; ++e) {
    local[e] = 0;
    for (int64_t q = 0; q < ep; ++q) local[e] += recv[q * n_local + e];
    received_rows += local[e];
  }
  std::ostringstream problem;
  if (verification == CountVerification::kSums) {
    // [0, E): rows sent to each expert by this rank; [E, 2E): rows this rank's experts receive;
    // [2E]: 1 when a count is negative. Summed over the group both halves must agree.
    std::vector<int64_t> sums(2 * n_experts + 1, 0);
    for (int64_t e = 0; e < n_experts; ++e) sums[e] = sent[e];
    for (int64_t e = 0; e < n_local; ++e) sums[n_experts + me * n_local + e] = local[e];
    sums[2 * n_experts] = negative >= 0 ? 1 : 0;
    RETURN_IF_ERROR(comm->all_reduce(sums.data(), 2 * n_experts + 1, DType::i64, ReduceOp::kSum));
    if (sums[2 * n_experts] > 0) {
      problem << sums[2 * n_experts] << " rank(s) have a negative row count";
      if (negative >= 0) problem << " (this rank: expert " << negative << " = " << sent[negative] << ")";
    }
    for (int64_t e = 0; e < n_experts && problem.tellp() == 0; ++e) {
      if (sums[e] != sums[n_experts + e]) {
        problem << "expert " << e << " (held by rank " << e / n_local << "): the group sends it " << sums[e]
                << " rows but its holder counts " << sums[n_experts + e] << " arriving";
      }
    }
  } else {
    // Every rank's send counts, then entry-by-entry: recv[q][e] == gathered[q][me * n_local + e].
    std::vector<int64_t> gathered(ep * n_experts);
    RETURN_IF_ERROR(comm->all_gather(gathered.data(), sent, n_experts, DType::i64));
    int64_t bad = negative >= 0 ? 1 : 0;
    std::ostringstream mine;
    for (int64_t q = 0; q < ep && bad == 0; ++q) {
      for (int64_t e = 0; e < n_local; ++e) {
        const int64_t expected = gathered[q * n_experts + me * n_local + e];
        if (recv[q * n_local + e] != expected) {
          mine << "rank " << me << " received count " << recv[q * n_local + e] << " from rank " << q
               << " for its local expert " << e << " (global " << me * n_local + e << ") but rank " << q
               << " sends " << expected;
          bad = 1;
          break;
        }
      }
    }
    int64_t verdict = bad;
    RETURN_IF_ERROR(comm->all_reduce(&verdict, 1, DType::i64, ReduceOp::kSum));
    if (verdict > 0) {
      problem << verdict << " rank(s) received counts that are not the transpose of what was sent";
      if (bad) problem << "; " << (negative >= 0 ? "this rank has a negative count" : mine.str());
      problem << "\n  send counts of every rank:" << format_matrix(gathered.data(), ep, n_experts);
    }
  }
  if (problem.tellp() != 0) {
    std::ostringstream m;
    m << "expert count exchange on group " << comm->name() << " (rank " << me << "/" << ep
      << ", group sequence " << comm->sequence_number() << "): " << problem.str()
      << "\n  this rank sends per global expert:";
    for (int64_t e = 0; e < n_experts; ++e) m << " " << sent[e];
    m << "\n  this rank received per (source rank, local expert):" << format_matrix(recv, ep, n_local);
    return data_loss_error(m.str());
  }
  counts->n_experts = n_experts;
  counts->n_local_experts = n_local;
  counts->ep_size = ep;
  counts->sent_rows = sent_rows;
  counts->received_rows = received_rows;
  counts->send_counts = sent;
  counts->recv_counts = recv;
  counts->local_counts = local;
  return Status();
}

template <class T>
MpiExpertDispatcher<T>::MpiExpertDispatcher(Communicator* ep_group, CountVerification verification,
                                            Communicator* rows_group)
    : comm_(ep_group),
      rows_comm_(rows_group != nullptr ? rows_group : ep_group),
      verification_(verification) {
  CHECK(comm_ != nullptr);
  CHECK(comm_->device() == Device::cpu) << "MpiExpertDispatcher exchanges the counts on the host; group "
                                        << comm_->name() << " is on " << device_name(comm_->device());
  CHECK_EQ(rows_comm_->size(), comm_->size())
      << "rows group " << rows_comm_->name() << " vs " << comm_->name();
  CHECK_EQ(rows_comm_->rank(), comm_->rank())
      << "rows group " << rows_comm_->name() << " vs " << comm_->name();
}

template <class T>
ExpertLayout MpiExpertDispatcher<T>::layout() const {
  return ExpertLayout{comm_->rank(), comm_->size()};
}

template <class T>
void MpiExpertDispatcher<T>::dispatch_forward(ExpertDispatchCounts* counts, const T** local_rows,
                                              const T* permuted_rows, const int64_t* send_counts,
                                              int64_t n_experts, int64_t d, const RunContext& ctx) {
  CHECK(counts != nullptr && local_rows != nullptr);
  Status s = exchange_expert_counts(counts, send_counts, comm_, verification_, n_experts, ctx);
  CHECK(s.ok()) << s.to_string();
  to_holders(local_rows, permuted_rows, *counts, d, ctx);
}

template <class T>
void MpiExpertDispatcher<T>::combine_forward(const T** permuted_out, const T* local_out,
                                             const ExpertDispatchCounts& counts, int64_t d,
                                             const RunContext& ctx) {
  to_owners(permuted_out, local_out, counts, d, ctx);
}

template <class T>
void MpiExpertDispatcher<T>::combine_backward(const T** dlocal_out, const T* dpermuted_out,
                                              const ExpertDispatchCounts& counts, int64_t d,
                                              const RunContext& ctx) {
  to_holders(dlocal_out, dpermuted_out, counts, d, ctx);
}

template <class T>
void MpiExpertDispatcher<T>::dispatch_backward(const T** dpermuted_rows, const T* dlocal_rows,
                                               const ExpertDispatchCounts& counts, int64_t d,
                                               const RunContext& ctx) {
  to_owners(dpermuted_rows, dlocal_rows, counts, d, ctx);
}

namespace {

// The two sides of one exchange, per (peer, local expert) block, in elements: the owner side is the
// permuted order (contiguous, peer-major then local expert), the holder side local-expert-major.
struct ExchangeBlocks {
  std::vector<int64_t> owner_offset, owner_count, holder_offset, holder_count;
};

ExchangeBlocks exchange_blocks(const ExpertDispatchCounts& counts, int64_t d) {
  const int64_t ep = counts.ep_size, n_local = counts.n_local_experts, blocks = ep * n_local;
  ExchangeBlocks x;
  x.owner_offset.resize(blocks);
  x.owner_count.resize(blocks);
  x.holder_count.resize(blocks);
  x.holder_offset = expert_major_offsets(counts.recv_counts, ep, n_local);
  int64_t at = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    x.owner_offset[b] = at * d;
    x.owner_count[b] = counts.send_counts[b] * d;
    at += counts.send_counts[b];
    x.holder_offset[b] *= d;
    x.holder_count[b] = counts.recv_counts[b] * d;
  }
  return x;
}

}  // namespace

template <class T>
void MpiExpertDispatcher<T>::to_holders(const T** out, const T* in, const ExpertDispatchCounts& counts,
                                        int64_t d, const RunContext& ctx) {
  CHECK_EQ(counts.ep_size, comm_->size()) << "counts from another group than " << comm_->name();
  ExchangeBlocks x = exchange_blocks(counts, d);
  const int64_t n_local = counts.n_local_experts;
  T* rows = activation_alloc<T>(ctx, counts.received_rows * d);  // [R, D] local-expert-major
  Status st = rows_comm_->after_compute(ctx.cuda_stream);
  if (st.ok()) {
    st = rows_comm_->all_to_all_blocks(
        rows, AllToAllBlocks{n_local, x.holder_offset.data(), x.holder_count.data()}, in,
        AllToAllBlocks{n_local, x.owner_offset.data(), x.owner_count.data()}, DTypeOf<T>::value);
  }
  if (st.ok()) st = rows_comm_->before_compute(ctx.cuda_stream);
  CHECK(st.ok()) << st.to_string();
  *out = rows;
}

template <class T>
void MpiExpertDispatcher<T>::to_owners(const T** out, const T* in, const ExpertDispatchCounts& counts,
                                       int64_t d, const RunContext& ctx) {
  CHECK_EQ(counts.ep_size, comm_->size()) << "counts from another group than " << comm_->name();
  ExchangeBlocks x = exchange_blocks(counts, d);
  const int64_t n_local = counts.n_local_experts;
  T* rows = activation_alloc<T>(ctx, counts.sent_rows * d);  // [M, D] this rank's permuted order
  Status st = rows_comm_->after_compute(ctx.cuda_stream);
  if (st.ok()) {
    st = rows_comm_->all_to_all_blocks(
        rows, AllToAllBlocks{n_local, x.owner_offset.data(), x.owner_count.data()}, in,
        AllToAllBlocks{n_local, x.holder_offset.data(), x.holder_count.data()}, DTypeOf<T>::value);
  }
  if (st.ok()) st = rows_comm_->before_compute(ctx.cuda_stream);
  CHECK(st.ok()) << st.to_string();
  *out = rows;
}

template class MpiExpertDispatcher<float>;
template class MpiExpertDispatcher<double>;
template class MpiExpertDispatcher<bf16>;  // the GPU trainer with --precision bf16

}  // namespace moeasr
