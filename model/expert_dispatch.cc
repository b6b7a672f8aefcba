// model/expert_dispatch.cc — LocalExpertDispatcher: the single-process exchange of the MoE layer
// (every expert is local, as in WeNet), where each of the four exchanges is the identity.
#include "model/expert_dispatch.h"

#include "core/check.h"
#include "model/layer_common.h"

namespace moeasr {

template <class T>
void LocalExpertDispatcher<T>::dispatch_forward(ExpertDispatchCounts* counts, const T** local_rows,
                                                const T* permuted_rows, const int64_t* send_counts,
                                                int64_t n_experts, int64_t d, const RunContext& ctx) {
  CHECK(counts != nullptr && local_rows != nullptr);
  CHECK_GE(n_experts, 1);
  CHECK_GE(d, 0);
  // Copied into the step's host arena so that the counts outlive the caller's buffer until backward.
  int64_t* copy = host_alloc<int64_t>(ctx, n_experts);
  int64_t total = 0;
  for (int64_t e = 0; e < n_experts; ++e) {
    CHECK_GE(send_counts[e], 0) << "expert " << e;
    copy[e] = send_counts[e];
    total += send_counts[e];
  }
  counts->n_experts = n_experts;
  counts->n_local_experts = n_experts;
  counts->ep_size = 1;
  counts->sent_rows = total;
  counts->received_rows = total;
  counts->send_counts = copy;
  counts->recv_counts = copy;  // [1, E]
  counts->local_counts = copy;
  *local_rows = permuted_rows;
}

template <class T>
void LocalExpertDispatcher<T>::combine_forward(const T** permuted_out, const T* local_out,
                                               const ExpertDispatchCounts& counts, int64_t /*d*/,
                                               const RunContext& /*ctx*/) {
  CHECK_EQ(counts.ep_size, 1);
  *permuted_out = local_out;
}

template <class T>
void LocalExpertDispatcher<T>::combine_backward(const T** dlocal_out, const T* dpermuted_out,
                                                const ExpertDispatchCounts& counts, int64_t /*d*/,
                                                const RunContext& /*ctx*/) {
  CHECK_EQ(counts.ep_size, 1);
  *dlocal_out = dpermuted_out;
}

template <class T>
void LocalExpertDispatcher<T>::dispatch_backward(const T** dpermuted_rows, const T* dlocal_rows,
                                                 const ExpertDispatchCounts& counts, int64_t /*d*/,
                                                 const RunContext& /*ctx*/) {
  CHECK_EQ(counts.ep_size, 1);
  *dpermuted_rows = dlocal_rows;
}

template class LocalExpertDispatcher<float>;
template class LocalExpertDispatcher<double>;
template class LocalExpertDispatcher<bf16>;

}  // namespace moeasr
