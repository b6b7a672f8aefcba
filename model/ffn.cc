// model/ffn.cc — WeNet's PositionwiseFeedForward and MoEFFNLayer (u2pp_moe_wenet.md §2), forward and
// backward, on the routed ops of kernels/ops.h (linear, grouped_linear for the experts, elementwise
// activations, dropout, moe_dispatch), so on either backend.
#include "model/ffn.h"

#include "core/check.h"
#include "kernels/ops.h"

namespace moeasr {
namespace {

// act(x) over n elements: ReLU (decoder) or Swish/SiLU (encoder).
template <class T>
void activation_forward(T* out, const T* x, ActivationType activation, int64_t n, const RunContext& ctx) {
  if (activation == ActivationType::kRelu) {
    op::relu_forward(out, x, n, ctx);
  } else {
    op::silu_forward(out, x, n, ctx);
  }
}

// dx = act'(x) * dout (dx may alias dout).
template <class T>
void activation_backward(T* dx, const T* dout, const T* x, ActivationType activation, int64_t n,
                         const RunContext& ctx) {
  if (activation == ActivationType::kRelu) {
    op::relu_backward(dx, dout, x, n, ctx);
  } else {
    op::silu_backward(dx, dout, x, n, ctx);
  }
}

// Binds the [E_local, ...] block of "<prefix>.experts.<global id>.<suffix>" for the local experts and
// CHECKs that it is one contiguous block in local expert order. Empty ref when the tensor is absent
// (bias with mlp_bias false) — then it must be absent for every local expert.
template <class T>
ParamRef<T> bind_expert_block(ParameterStore<T>* store, const std::string& prefix, const std::string& suffix,
                              int64_t first, int64_t n_local) {
  auto name = [&](int64_t e) { return prefix + ".experts." + std::to_string(first + e) + "." + suffix; };
  const ParameterTable& table = *store->table;
  const ParamEntry* e0 = table.find(name(0));
  if (e0 == nullptr) {
    for (int64_t e = 1; e < n_local; ++e) {
      CHECK(table.find(name(e)) == nullptr) << "'" << name(e) << "' present but '" << name(0) << "' absent";
    }
    return ParamRef<T>{};
  }
  for (int64_t e = 0; e < n_local; ++e) {
    const ParamEntry& entry = table.at(name(e));
    CHECK(entry.region == ParamRegion::kExpert) << "'" << entry.name << "' is not in the expert region";
    CHECK(entry.shape == e0->shape) << "'" << entry.name << "' has shape " << entry.shape.to_string()
                                    << ", expert " << first << " has " << e0->shape.to_string();
    CHECK_EQ(entry.offset, e0->offset + e * e0->numel)
        << "'" << entry.name << "' is not contiguous with the block of expert " << first;
    CHECK_EQ(entry.expert, static_cast<int32_t>(first + e)) << "'" << entry.name << "' global id";
  }
  ParamRef<T> ref;
  ref.value = store->value(*e0);
  ref.master = store->master(*e0);
  ref.grad = store->grad(*e0);
  ref.numel = n_local * e0->numel;
  return ref;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Dense FFN

template <class T>
FfnParams<T> bind_ffn(ParameterStore<T>* store, const std::string& prefix, ActivationType activation,
                      double dropout_rate) {
  FfnParams<T> p;
  p.w_1 = bind_linear(store, prefix + ".w_1");
  p.w_2 = bind_linear(store, prefix + ".w_2");
  CHECK_EQ(p.w_2.in_features, p.w_1.out_features) << prefix << ": w_2 input vs w_1 output width";
  CHECK_EQ(p.w_2.out_features, p.w_1.in_features) << prefix << ": w_2 output vs w_1 input width";
  p.activation = activation;
  p.dropout_rate = dropout_rate;
  return p;
}

template <class T>
void ffn_forward(FfnSaved<T>* saved, T* out, const T* x, const FfnParams<T>& p, int64_t n, uint64_t layer_id,
                 uint64_t site_id, const StepRng& rng, const RunContext& ctx) {
  CHECK_GE(n, 0);
  const int64_t d = p.w_1.in_features;
  const int64_t f = p.w_1.out_features;
  saved->x = x;
  saved->n = n;
  saved->hidden_pre = activation_alloc<T>(ctx, n * f);
  saved->hidden = activation_alloc<T>(ctx, n * f);
  // [N, F] = x [N, D] @ W1^T + b1
  op::linear_forward(saved->hidden_pre, x, p.w_1.weight.value, p.w_1.bias.value, n, d, f, ctx);
  activation_forward(saved->hidden, saved->hidden_pre, p.activation, n * f, ctx);
  DropoutSite site = rng.site(p.dropout_rate, layer_id, site_id);
  if (site.active()) op::dropout_forward(saved->hidden, saved->hidden, site.stream, site.rate, n * f, ctx);
  // [N, D] = hidden [N, F] @ W2^T + b2
  op::linear_forward(out, saved->hidden, p.w_2.weight.value, p.w_2.bias.value, n, f, d, ctx);
}

template <class T>
void ffn_backward(T* dx, const FfnSaved<T>& saved, const T* dout, const FfnParams<T>& p, int64_t n,
                  uint64_t layer_id, uint64_t site_id, const StepRng& rng, const RunContext& ctx) {
  CHECK_EQ(saved.n, n) << "ffn_backward: token count differs from the forward's";
  const int64_t d = p.w_1.in_features;
  const int64_t f = p.w_1.out_features;
  T* dhidden = activation_alloc<T>(ctx, n * f);  // [N, F]
  op::linear_backward(dhidden, p.w_2.weight.grad, p.w_2.bias.grad, dout, saved.hidden, p.w_2.weight.value, n,
                      f, d, ctx);
  DropoutSite site = rng.site(p.dropout_rate, layer_id, site_id);
  if (site.active()) op::dropout_backward(dhidden, dhidden, site.stream, site.rate, n * f, ctx);
  activation_backward(dhidden, dhidden, saved.hidden_pre, p.activation, n * f, ctx);
  op::linear_backward(dx, p.w_1.weight.grad, p.w_1.bias.grad, dhidden, saved.x, p.w_1.weight.value, n, d, f,
                      ctx);
}

// ---------------------------------------------------------------------------------------------
// MoE FFN

template <class T>
MoeFfnParams<T> bind_moe_ffn(ParameterStore<T>* store, const std::string& prefix, const ExpertLayout& layout,
                             int64_t top_k, ActivationType activation, double dropout_rate) {
  MoeFfnParams<T> p;
  p.gate = bind_linear(store, prefix + ".gate");
  CHECK(p.gate.bias.value == nullptr) << prefix << ".gate has a bias; WeNet's gate is Linear(bias=False)";
  p.n_experts = p.gate.out_features;
  p.d_model = p.gate.in_features;
  CHECK(layout.ep_size >= 1 && layout.ep_rank >= 0 && layout.ep_rank < layout.ep_size)
      << "expert layout rank " << layout.ep_rank << " of " << layout.ep_size;
  CHECK_EQ(p.n_experts % layout.ep_size, 0) << prefix << ": n_expert must divide by the expert-parallel size";
  p.n_local_experts = p.n_experts / layout.ep_size;
  p.first_local_expert = layout.ep_rank * p.n_local_experts;
  CHECK(top_k >= 1 && top_k <= p.n_experts)
      << prefix << ": top-k " << top_k << " with " << p.n_experts << " experts";
  p.top_k = top_k;
  p.activation = activation;
  p.dropout_rate = dropout_rate;

  const int64_t first = p.first_local_expert, n_local = p.n_local_experts;
  const ParamEntry& w1 = store->table->at(prefix + ".experts." + std::to_string(first) + ".w_1.weight");
  CHECK_EQ(w1.shape.ndim(), 2);
  CHECK_EQ(w1.shape[1], p.d_model) << w1.name;
  p.hidden = w1.shape[0];
  p.w_1_weight = bind_expert_block(store, prefix, "w_1.weight", first, n_local);
  p.w_1_bias = bind_expert_block(store, prefix, "w_1.bias", first, n_local);
  p.w_2_weight = bind_expert_block(store, prefix, "w_2.weight", first, n_local);
  p.w_2_bias = bind_expert_block(store, prefix, "w_2.bias", first, n_local);
  CHECK(p.w_2_weight.value != nullptr) << prefix << ": experts have no w_2.weight";
  CHECK_EQ(p.w_2_weight.numel, n_local * p.d_model * p.hidden) << prefix << ": w_2.weight shape";
  CHECK(p.w_1_bias.value == nullptr || p.w_1_bias.numel == n_local * p.hidden)
      << prefix << ": w_1.bias shape";
  CHECK(p.w_2_bias.value == nullptr || p.w_2_bias.numel == n_local * p.d_model)
      << prefix << ": w_2.bias shape";
  return p;
}

template <class T>
void moe_ffn_forward(MoeFfnSaved<T>* saved, T* out, const T* x, const uint8_t* token_mask,
                     const MoeFfnParams<T>& p, ExpertDispatcher<T>* dispatcher, int64_t n, uint64_t layer_id,
                     uint64_t site_id, const StepRng& rng, const RunContext& ctx) {
  CHECK_GE(n, 0);
  CHECK(dispatcher != nullptr);
  const int64_t d = p.d_model, f = p.hidden, n_experts = p.n_experts, k = p.top_k;
  const ExpertLayout layout = dispatcher->layout();
  CHECK_EQ(p.n_local_experts * layout.ep_size, n_experts) << "dispatcher layout vs bound experts";
  CHECK_EQ(p.first_local_expert, layout.ep_rank * p.n_local_experts) << "dispatcher layout vs bound experts";
  saved->x = x;
  saved->token_mask = token_mask;
  saved->n = n;

  // Router: logits [N, E] = x @ gate^T; top-k on the raw logits; softmax over the k selected.
  // The gate's product is in T; top-k and the routing softmax run in Accum<T> (fp32 for a bf16 model).
  T* logits = activation_alloc<T>(ctx, n * n_experts);
  op::linear_forward(logits, x, p.gate.weight.value, static_cast<const T*>(nullptr), n, d, n_experts, ctx);
  Accum<T>* top_logits = activation_alloc<Accum<T>>(ctx, n * k);  // [N, K]
  saved->selected = activation_alloc<int32_t>(ctx, n * k);
  op::moe_topk_forward(top_logits, saved->selected, as_accum(logits, n * n_experts, ctx), n, n_experts, k,
                       ctx);
  saved->routing_weights = activation_alloc<Accum<T>>(ctx, n * k);
  op::moe_routing_softmax_forward(saved->routing_weights, top_logits, n, k, ctx);

  // Permute the routed (token, slot) pairs expert-major: [M, D], then hand this rank's experts their
  // rows, local-expert-major: [R, D].
  int64_t* expert_counts = activation_alloc<int64_t>(ctx, n_experts);
  int64_t* offsets = activation_alloc<int64_t>(ctx, n_experts + 1);
  saved->dest = activation_alloc<int32_t>(ctx, n * k);
  int64_t r = 0;
  saved->sizes_on_device = layout.ep_size == 1 && (ctx.device != Device::cpu || ctx.force_moe_device_sizes);
  if (saved->sizes_on_device) {
    // GPU, every expert local: no host synchronisation. M stays on the device (offsets[E]); the row
    // buffers take its bound N*k and the grouped Linears walk the device offsets, so rows [M, N*k)
    // never reach a result (the row ops skip them, the grouped GEMMs never touch them). No exchange:
    // the dispatcher is not called. The counts stay on the device for expert_load().
    op::moe_permute_plan_on_device(expert_counts, offsets, saved->dest, saved->selected, token_mask, n,
                                   n_experts, k, ctx);
    const int64_t m_max = n * k;
    saved->expert_counts = expert_counts;
    saved->routed_rows = m_max;
    T* permuted = activation_alloc<T>(ctx, m_max * d);
    op::moe_permute_forward(permuted, x, saved->dest, n, m_max, k, d, ctx);
    saved->local_x = permuted;
    saved->dispatch = ExpertDispatchCounts{};
    saved->dispatch.n_experts = n_experts;
    saved->dispatch.n_local_experts = n_experts;
    saved->dispatch.ep_size = 1;
    saved->dispatch.sent_rows = m_max;
    saved->dispatch.received_rows = m_max;
    saved->local_offsets = offsets;
    r = m_max;
  } else {
    // The per-expert counts go to the host: the exchange and the grouped Linears' row ranges are
    // planned there (a host synchronisation on the GPU, ops.h).
    const int64_t m = op::moe_permute_plan(expert_counts, offsets, saved->dest, saved->selected, token_mask,
                                           n, n_experts, k, ctx);
    saved->expert_counts = host_mirror(ctx, static_cast<const int64_t*>(expert_counts), n_experts);
    saved->routed_rows = m;
    T* permuted = activation_alloc<T>(ctx, m * d);
    op::moe_permute_forward(permuted, x, saved->dest, n, m, k, d, ctx);
    dispatcher->dispatch_forward(&saved->dispatch, &saved->local_x, permuted, saved->expert_counts, n_experts,
                                 d, ctx);
    const ExpertDispatchCounts& counts = saved->dispatch;
    CHECK_EQ(counts.n_local_experts, p.n_local_experts) << "dispatcher's local expert count";
    CHECK_EQ(counts.sent_rows, m) << "dispatcher's sent row count";
    r = counts.received_rows;
    // The local experts' row blocks for the grouped Linears.
    int64_t* local_offsets = host_alloc<int64_t>(ctx, p.n_local_experts + 1);
    local_offsets[0] = 0;
    for (int64_t e = 0; e < p.n_local_experts; ++e) {
      CHECK_GE(counts.local_counts[e], 0);
      local_offsets[e + 1] = local_offsets[e] + counts.local_counts[e];
    }
    CHECK_EQ(local_offsets[p.n_local_experts], r) << "per-local-expert counts vs received rows";
    saved->local_offsets =
        device_mirror(ctx, static_cast<const int64_t*>(local_offsets), p.n_local_experts + 1);
  }
  const ExpertDispatchCounts& counts = saved->dispatch;

  // Experts: w_1 as one grouped Linear over the local experts' row blocks, activation and dropout
  // over all R rows at once, w_2 as one grouped Linear.
  saved->hidden_pre = activation_alloc<T>(ctx, r * f);
  saved->hidden = activation_alloc<T>(ctx, r * f);
  T* local_out = activation_alloc<T>(ctx, r * d);  // [R, D]
  op::grouped_linear_forward(saved->hidden_pre, saved->local_x, p.w_1_weight.value,
                             static_cast<const T*>(p.w_1_bias.value), saved->local_offsets, r,
                             p.n_local_experts, d, f, ctx);
  activation_forward(saved->hidden, saved->hidden_pre, p.activation, r * f, ctx);
  DropoutSite site = rng.site(p.dropout_rate, layer_id, site_id);
  if (site.active()) op::dropout_forward(saved->hidden, saved->hidden, site.stream, site.rate, r * f, ctx);
  op::grouped_linear_forward(local_out, static_cast<const T*>(saved->hidden), p.w_2_weight.value,
                             static_cast<const T*>(p.w_2_bias.value), saved->local_offsets, r,
                             p.n_local_experts, f, d, ctx);

  // Back to this rank's permuted order, then out[n] = sum_j w[n, j] * y[dest[n, j]] in slot order.
  if (saved->sizes_on_device) {
    saved->permuted_out = local_out;
  } else {
    dispatcher->combine_forward(&saved->permuted_out, local_out, counts, d, ctx);
  }
  op::moe_unpermute_forward(out, saved->permuted_out, saved->routing_weights, saved->dest, n,
                            saved->routed_rows, k, d, ctx);
}

template <class T>
void moe_ffn_backward(T* dx, const MoeFfnSaved<T>& saved, const T* dout, const MoeFfnParams<T>& p,
                      ExpertDispatcher<T>* dispatcher, int64_t n, uint64_t layer_id, uint64_t site_id,
                      const StepRng& rng, const RunContext& ctx) {
  CHECK_EQ(saved.n, n) << "moe_ffn_backward: token count differs from the forward's";
  CHECK(dispatcher != nullptr);
  const int64_t d = p.d_model, f = p.hidden, n_experts = p.n_experts, k = p.top_k;
  const int64_t m = saved.routed_rows;
  const ExpertDispatchCounts& counts = saved.dispatch;
  const int64_t r = counts.received_rows;

  // Combine: dy [M, D] = w * dout per pair; dweights [N, K] = dout . y.
  T* dpermuted_out = activation_alloc<T>(ctx, m * d);
  Accum<T>* dweights = activation_alloc<Accum<T>>(ctx, n * k);
  op::moe_unpermute_backward(dpermuted_out, dweights, dout, saved.permuted_out, saved.routing_weights,
                             saved.dest, n, m, k, d, ctx);

  // Experts, in reverse.
  const T* dlocal_out = dpermuted_out;  // [R, D] (no exchange on the device-sized path)
  if (!saved.sizes_on_device) dispatcher->combine_backward(&dlocal_out, dpermuted_out, counts, d, ctx);
  T* dhidden = activation_alloc<T>(ctx, r * f);  // [R, F]
  op::grouped_linear_backward(dhidden, p.w_2_weight.grad, p.w_2_bias.grad, dlocal_out,
                              static_cast<const T*>(saved.hidden), p.w_2_weight.value, saved.local_offsets, r,
                              p.n_local_experts, f, d, ctx);
  DropoutSite site = rng.site(p.dropout_rate, layer_id, site_id);
  if (site.active()) op::dropout_backward(dhidden, dhidden, site.stream, site.rate, r * f, ctx);
  activation_backward(dhidden, dhidden, saved.hidden_pre, p.activation, r * f, ctx);
  T* dlocal_x = activation_alloc<T>(ctx, r * d);  // [R, D]
  op::grouped_linear_backward(dlocal_x, p.w_1_weight.grad, p.w_1_bias.grad, static_cast<const T*>(dhidden),
                              saved.local_x, p.w_1_weight.value, saved.local_offsets, r, p.n_local_experts, d,
                              f, ctx);
  const T* dpermuted = dlocal_x;  // [M, D]
  if (!saved.sizes_on_device) dispatcher->dispatch_backward(&dpermuted, dlocal_x, counts, d, ctx);

  // dx through the experts: sum over each token's slots (zero for unrouted tokens).
  op::moe_permute_backward(dx, dpermuted, saved.dest, n, m, k, d, ctx);

  // dx through the router: routing softmax -> top-k scatter -> gate.
  Accum<T>* dtop_logits = activation_alloc<Accum<T>>(ctx, n * k);
  op::moe_routing_softmax_backward(dtop_logits, static_cast<const Accum<T>*>(dweights), saved.routing_weights,
                                   n, k, ctx);
  Accum<T>* dlogits = activation_alloc<Accum<T>>(ctx, n * n_experts);
  op::moe_topk_backward(dlogits, static_cast<const Accum<T>*>(dtop_logits), saved.selected, n, n_experts, k,
                        ctx);
  T* dx_router = activation_alloc<T>(ctx, n * d);
  op::linear_backward(dx_router, p.gate.weight.grad, static_cast<Accum<T>*>(nullptr),
                      as_storage<T>(dlogits, n * n_experts, ctx), saved.x, p.gate.weight.value, n, d,
                      n_experts, ctx);
  op::add_scaled_inplace(dx, static_cast<const T*>(dx_router), Accum<T>(1), n * d, ctx);
}

#define MOEASR_INSTANTIATE_FFN(T)                                                                            \
  template FfnParams<T> bind_ffn<T>(ParameterStore<T>*, const std::string&, ActivationType, double);         \
  template void ffn_forward<T>(FfnSaved<T>*, T*, const T*, const FfnParams<T>&, int64_t, uint64_t, uint64_t, \
                               const StepRng&, const RunContext&);                                           \
  template void ffn_backward<T>(T*, const FfnSaved<T>&, const T*, const FfnParams<T>&, int64_t, uint64_t,    \
                                uint64_t, const StepRng&, const RunContext&);                                \
  template MoeFfnParams<T> bind_moe_ffn<T>(ParameterStore<T>*, const std::string&, const ExpertLayout&,      \
                                           int64_t, ActivationType, double);                                 \
  template void moe_ffn_forward<T>(MoeFfnSaved<T>*, T*, const T*, const uint8_t*, const MoeFfnParams<T>&,    \
                                   ExpertDispatcher<T>*, int64_t, uint64_t, uint64_t, const StepRng&,        \
                                   const RunContext&);                                                       \
  template void moe_ffn_backward<T>(T*, const MoeFfnSaved<T>&, const T*, const MoeFfnParams<T>&,             \
                                    ExpertDispatcher<T>*, int64_t, uint64_t, uint64_t, const StepRng&,       \
                                    const RunContext&);

MOEASR_INSTANTIATE_FFN(float)
MOEASR_INSTANTIATE_FFN(double)
MOEASR_INSTANTIATE_FFN(bf16)

#undef MOEASR_INSTANTIATE_FFN

}  // namespace moeasr
