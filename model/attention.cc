// model/attention.cc — WeNet's MultiHeadedAttention and RelPositionMultiHeadedAttention (without
// rel_shift), forward and backward, from linear, batched GEMM, attention softmax and dropout ops.
// The score and context products are strided-batched GEMMs over (batch, head); the [B, T, H, dk] <->
// [B, H, T, dk] reorganisations are the split_heads / transpose_middle ops of kernels/cpu/layout.h (all
// called through kernels/ops.h, so on either backend).
#include "model/attention.h"

#include <cmath>

#include "core/check.h"
#include "kernels/ops.h"

namespace moeasr {
namespace {

struct AttentionDims {
  int64_t batch, queries, keys, d_model, heads, d_k;
};

AttentionDims make_dims(int64_t batch, int64_t queries, int64_t keys, int64_t d_model, int64_t heads) {
  CHECK_GE(batch, 0);
  CHECK_GE(queries, 0);
  CHECK_GE(keys, 0);
  CHECK_GE(heads, 1);
  CHECK_GE(d_model, 1);
  CHECK_EQ(d_model % heads, 0) << "attention heads must divide d_model";
  return AttentionDims{batch, queries, keys, d_model, heads, d_model / heads};
}

void check_linear_dims(const char* name, int64_t in, int64_t out, int64_t d_model) {
  CHECK_EQ(in, d_model) << name << ".in_features";
  CHECK_EQ(out, d_model) << name << ".out_features";
}

// y = linear(x) split into heads: [N=B*T, d] -> [B, H, T, dk], optionally plus a per-head bias.
template <class T>
void project_to_heads(T* heads_out,  // [B, H, T, dk]
                      const T* x,    // [B, T, d]
                      const LinearRef<T>& lin, const Accum<T>* head_bias, const AttentionDims& dims,
                      int64_t steps, const RunContext& ctx) {
  T* flat = activation_alloc<T>(ctx, dims.batch * steps * dims.d_model);
  op::linear_forward(flat, x, lin.weight.value, lin.bias.value, dims.batch * steps, dims.d_model,
                     dims.d_model, ctx);
  op::split_heads_forward(heads_out, flat, head_bias, dims.batch, steps, dims.heads, dims.d_k, ctx);
}

// Backward of project_to_heads (without the head bias, whose gradient the caller reduces).
template <class T>
void project_to_heads_backward(T* dx,            // [B, T, d] assigned, or null
                               const T* dheads,  // [B, H, T, dk]
                               const T* x,       // [B, T, d]
                               const LinearRef<T>& lin, const AttentionDims& dims, int64_t steps,
                               const RunContext& ctx) {
  T* dflat = activation_alloc<T>(ctx, dims.batch * steps * dims.d_model);
  op::split_heads_backward(dflat, static_cast<Accum<T>*>(nullptr), dheads, dims.batch, steps, dims.heads,
                           dims.d_k, ctx);
  op::linear_backward(dx, lin.weight.grad, lin.bias.grad, dflat, x, lin.weight.value, dims.batch * steps,
                      dims.d_model, dims.d_model, ctx);
}

// scores [B, H, Tq, Tk] -> probs -> dropout -> context = probs v -> out = linear_out(context).
// `scores` becomes the dropped-probability buffer when dropout is active.
template <class T>
void attend_forward(T* out, T** probs_out, T** probs_dropped_out, T** context_out, T* scores,
                    const T* v_heads, const uint8_t* mask, const LinearRef<T>& linear_out,
                    const DropoutSite& site, const AttentionDims& dims, const RunContext& ctx) {
  const int64_t groups = dims.batch * dims.heads;
  const int64_t n_scores = groups * dims.queries * dims.keys;
  T* probs = activation_alloc<T>(ctx, n_scores);
  op::attention_softmax_forward(probs, scores, mask, dims.batch, dims.heads, dims.queries, dims.keys, ctx);
  T* probs_dropped = probs;
  if (site.active()) {
    probs_dropped = scores;  // the scores are dead now; reuse their buffer
    op::dropout_forward(probs_dropped, probs, site.stream, site.rate, n_scores, ctx);
  }
  T* context_heads = activation_alloc<T>(ctx, groups * dims.queries * dims.d_k);
  op::batched_matmul_forward(context_heads, probs_dropped, v_heads, Transpose::kNo, groups, dims.queries,
                             dims.d_k, dims.keys, ctx);
  T* context = activation_alloc<T>(ctx, dims.batch * dims.queries * dims.d_model);
  // [B, H, Tq, dk] -> [B, Tq, H, dk]
  op::transpose_middle_forward(context, context_heads, dims.batch, dims.heads, dims.queries, dims.d_k, ctx);
  op::linear_forward(out, context, linear_out.weight.value, linear_out.bias.value, dims.batch * dims.queries,
                     dims.d_model, dims.d_model, ctx);
  *probs_out = probs;
  *probs_dropped_out = probs_dropped;
  *context_out = context;
}

// Backward of attend_forward: accumulates linear_out's grads, returns dscores [B, H, Tq, Tk] and
// dv [B, H, Tk, dk] (both newly allocated from the arena).
template <class T>
void attend_backward(T** dscores_out, T** dv_heads_out, const T* dout, const T* probs, const T* probs_dropped,
                     const T* context, const T* v_heads, const LinearRef<T>& linear_out,
                     const DropoutSite& site, const AttentionDims& dims, const RunContext& ctx) {
  const int64_t groups = dims.batch * dims.heads;
  const int64_t n_scores = groups * dims.queries * dims.keys;
  T* dcontext = activation_alloc<T>(ctx, dims.batch * dims.queries * dims.d_model);
  op::linear_backward(dcontext, linear_out.weight.grad, linear_out.bias.grad, dout, context,
                      linear_out.weight.value, dims.batch * dims.queries, dims.d_model, dims.d_model, ctx);
  T* dcontext_heads = activation_alloc<T>(ctx, groups * dims.queries * dims.d_k);
  op::transpose_middle_backward(dcontext_heads, dcontext, dims.batch, dims.heads, dims.queries, dims.d_k,
                                ctx);
  T* dprobs = activation_alloc<T>(ctx, n_scores);
  T* dv_heads = activation_alloc<T>(ctx, groups * dims.keys * dims.d_k);
  op::batched_matmul_backward(dprobs, dv_heads, dcontext_heads, probs_dropped, v_heads, Transpose::kNo,
                              groups, dims.queries, dims.d_k, dims.keys, ctx);
  if (site.active()) op::dropout_backward(dprobs, dprobs, site.stream, site.rate, n_scores, ctx);
  T* dscores = activation_alloc<T>(ctx, n_scores);
  op::attention_softmax_backward(dscores, dprobs, probs, dims.batch, dims.heads, dims.queries, dims.keys,
                                 ctx);
  *dscores_out = dscores;
  *dv_heads_out = dv_heads;
}

// c[g] = scale * a[g] @ b[g]^T over g in [0, B*H): a [G, Tq, dk], b [G, Tk, dk], c [G, Tq, Tk].
template <class T>
void scores_product(T* c, const T* a, const T* b, Accum<T> scale, const AttentionDims& dims,
                    const RunContext& ctx) {
  op::gemm_strided_batched(c, a, b, Transpose::kNo, Transpose::kYes, dims.queries, dims.keys, dims.d_k, scale,
                           Accum<T>(0), dims.d_k, dims.d_k, dims.keys, dims.queries * dims.d_k,
                           dims.keys * dims.d_k, dims.queries * dims.keys, dims.batch * dims.heads, ctx);
}

// da[g] = scale * dscores[g] @ b[g]: [Tq, Tk] @ [Tk, dk].
template <class T>
void scores_backward_query(T* da, const T* dscores, const T* b, Accum<T> scale, const AttentionDims& dims,
                           const RunContext& ctx) {
  op::gemm_strided_batched(da, dscores, b, Transpose::kNo, Transpose::kNo, dims.queries, dims.d_k, dims.keys,
                           scale, Accum<T>(0), dims.keys, dims.d_k, dims.d_k, dims.queries * dims.keys,
                           dims.keys * dims.d_k, dims.queries * dims.d_k, dims.batch * dims.heads, ctx);
}

// db[g] = scale * dscores[g]^T @ a[g]: [Tk, Tq] @ [Tq, dk].
template <class T>
void scores_backward_key(T* db, const T* dscores, const T* a, Accum<T> scale, const AttentionDims& dims,
                         const RunContext& ctx) {
  op::gemm_strided_batched(db, dscores, a, Transpose::kYes, Transpose::kNo, dims.keys, dims.d_k, dims.queries,
                           scale, Accum<T>(0), dims.keys, dims.d_k, dims.d_k, dims.queries * dims.keys,
                           dims.queries * dims.d_k, dims.keys * dims.d_k, dims.batch * dims.heads, ctx);
}

template <class T>
Accum<T> score_scale(const AttentionDims& dims) {
  return static_cast<Accum<T>>(1.0 / std::sqrt(static_cast<double>(dims.d_k)));
}

}  // namespace

template <class T>
MultiHeadAttentionParams<T> bind_multi_head_attention(ParameterStore<T>* store, const std::string& prefix) {
  MultiHeadAttentionParams<T> p;
  p.linear_q = bind_linear(store, prefix + ".linear_q");
  p.linear_k = bind_linear(store, prefix + ".linear_k");
  p.linear_v = bind_linear(store, prefix + ".linear_v");
  p.linear_out = bind_linear(store, prefix + ".linear_out");
  return p;
}

template <class T>
RelPositionAttentionParams<T> bind_rel_position_attention(ParameterStore<T>* store,
                                                          const std::string& prefix) {
  RelPositionAttentionParams<T> p;
  p.linear_q = bind_linear(store, prefix + ".linear_q");
  p.linear_k = bind_linear(store, prefix + ".linear_k");
  p.linear_v = bind_linear(store, prefix + ".linear_v");
  p.linear_out = bind_linear(store, prefix + ".linear_out");
  p.linear_pos = bind_linear(store, prefix + ".linear_pos");
  p.pos_bias_u = bind_param(store, prefix + ".pos_bias_u");
  p.pos_bias_v = bind_param(store, prefix + ".pos_bias_v");
  return p;
}

template <class T>
void multi_head_attention_forward(MultiHeadAttentionSaved<T>* saved, T* out, const T* query, const T* key,
                                  const T* value, const uint8_t* mask, const MultiHeadAttentionParams<T>& p,
                                  int64_t batch, int64_t queries, int64_t keys, int64_t d_model,
                                  int64_t heads, double dropout_rate, uint64_t layer_id, uint64_t site_id,
                                  const StepRng& rng, const RunContext& ctx) {
  CHECK(saved != nullptr);
  const AttentionDims dims = make_dims(batch, queries, keys, d_model, heads);
  check_linear_dims("linear_q", p.linear_q.in_features, p.linear_q.out_features, d_model);
  check_linear_dims("linear_k", p.linear_k.in_features, p.linear_k.out_features, d_model);
  check_linear_dims("linear_v", p.linear_v.in_features, p.linear_v.out_features, d_model);
  check_linear_dims("linear_out", p.linear_out.in_features, p.linear_out.out_features, d_model);
  const int64_t groups = batch * heads;
  saved->query = query;
  saved->key = key;
  saved->value = value;
  saved->dropout = rng.site(dropout_rate, layer_id, site_id);
  saved->q = activation_alloc<T>(ctx, groups * queries * dims.d_k);
  saved->k = activation_alloc<T>(ctx, groups * keys * dims.d_k);
  saved->v = activation_alloc<T>(ctx, groups * keys * dims.d_k);
  project_to_heads(saved->q, query, p.linear_q, static_cast<const Accum<T>*>(nullptr), dims, queries, ctx);
  project_to_heads(saved->k, key, p.linear_k, static_cast<const Accum<T>*>(nullptr), dims, keys, ctx);
  project_to_heads(saved->v, value, p.linear_v, static_cast<const Accum<T>*>(nullptr), dims, keys, ctx);
  T* scores = activation_alloc<T>(ctx, groups * queries * keys);
  scores_product(scores, saved->q, saved->k, score_scale<T>(dims), dims, ctx);
  attend_forward(out, &saved->probs, &saved->probs_dropped, &saved->context, scores, saved->v, mask,
                 p.linear_out, saved->dropout, dims, ctx);
}

template <class T>
void multi_head_attention_backward(T* dquery, T* dkey, T* dvalue, const MultiHeadAttentionSaved<T>& saved,
                                   const T* dout, const MultiHeadAttentionParams<T>& p, int64_t batch,
                                   int64_t queries, int64_t keys, int64_t d_model, int64_t heads,
                                   const RunContext& ctx) {
  const AttentionDims dims = make_dims(batch, queries, keys, d_model, heads);
  const int64_t groups = batch * heads;
  T* dscores = nullptr;
  T* dv_heads = nullptr;
  attend_backward(&dscores, &dv_heads, dout, saved.probs, saved.probs_dropped, saved.context, saved.v,
                  p.linear_out, saved.dropout, dims, ctx);
  const Accum<T> scale = score_scale<T>(dims);
  T* dq_heads = activation_alloc<T>(ctx, groups * queries * dims.d_k);
  T* dk_heads = activation_alloc<T>(ctx, groups * keys * dims.d_k);
  scores_backward_query(dq_heads, dscores, saved.k, scale, dims, ctx);
  scores_backward_key(dk_heads, dscores, saved.q, scale, dims, ctx);
  project_to_heads_backward(dquery, dq_heads, saved.query, p.linear_q, dims, queries, ctx);
  project_to_heads_backward(dkey, dk_heads, saved.key, p.linear_k, dims, keys, ctx);
  project_to_heads_backward(dvalue, dv_heads, saved.value, p.linear_v, dims, keys, ctx);
}

template <class T>
void rel_position_attention_forward(RelPositionAttentionSaved<T>* saved, T* out, const T* query, const T* key,
                                    const T* value, const T* pos_emb, const uint8_t* mask,
                                    const RelPositionAttentionParams<T>& p, int64_t batch, int64_t queries,
                                    int64_t keys, int64_t d_model, int64_t heads, double dropout_rate,
                                    uint64_t layer_id, uint64_t site_id, const StepRng& rng,
                                    const RunContext& ctx) {
  CHECK(saved != nullptr);
  const AttentionDims dims = make_dims(batch, queries, keys, d_model, heads);
  check_linear_dims("linear_q", p.linear_q.in_features, p.linear_q.out_features, d_model);
  check_linear_dims("linear_k", p.linear_k.in_features, p.linear_k.out_features, d_model);
  check_linear_dims("linear_v", p.linear_v.in_features, p.linear_v.out_features, d_model);
  check_linear_dims("linear_out", p.linear_out.in_features, p.linear_out.out_features, d_model);
  check_linear_dims("linear_pos", p.linear_pos.in_features, p.linear_pos.out_features, d_model);
  CHECK(p.linear_pos.bias.value == nullptr) << "WeNet's linear_pos has no bias";
  CHECK_EQ(p.pos_bias_u.numel, d_model);
  CHECK_EQ(p.pos_bias_v.numel, d_model);
  const int64_t groups = batch * heads;
  saved->query = query;
  saved->key = key;
  saved->value = value;
  saved->pos_emb = pos_emb;
  saved->dropout = rng.site(dropout_rate, layer_id, site_id);
  // q + u and q + v_b straight from the projected query ([H, dk] flattened is the feature index).
  T* q_flat = activation_alloc<T>(ctx, batch * queries * d_model);
  op::linear_forward(q_flat, query, p.linear_q.weight.value, p.linear_q.bias.value, batch * queries, d_model,
                     d_model, ctx);
  saved->q_u = activation_alloc<T>(ctx, groups * queries * dims.d_k);
  saved->q_v = activation_alloc<T>(ctx, groups * queries * dims.d_k);
  op::split_heads_forward(saved->q_u, q_flat, static_cast<const Accum<T>*>(p.pos_bias_u.master), batch,
                          queries, heads, dims.d_k, ctx);
  op::split_heads_forward(saved->q_v, q_flat, static_cast<const Accum<T>*>(p.pos_bias_v.master), batch,
                          queries, heads, dims.d_k, ctx);
  saved->k = activation_alloc<T>(ctx, groups * keys * dims.d_k);
  saved->v = activation_alloc<T>(ctx, groups * keys * dims.d_k);
  project_to_heads(saved->k, key, p.linear_k, static_cast<const Accum<T>*>(nullptr), dims, keys, ctx);
  project_to_heads(saved->v, value, p.linear_v, static_cast<const Accum<T>*>(nullptr), dims, keys, ctx);
  // p = linear_pos(pos_emb) as [H, Tk, dk]: a batch of one.
  T* p_flat = activation_alloc<T>(ctx, keys * d_model);
  op::linear_forward(p_flat, pos_emb, p.linear_pos.weight.value, static_cast<const T*>(nullptr), keys,
                     d_model, d_model, ctx);
  saved->p = activation_alloc<T>(ctx, heads * keys * dims.d_k);
  op::split_heads_forward(saved->p, p_flat, static_cast<const Accum<T>*>(nullptr), 1, keys, heads, dims.d_k,
                          ctx);

  const Accum<T> scale = score_scale<T>(dims);
  T* scores = activation_alloc<T>(ctx, groups * queries * keys);
  scores_product(scores, saved->q_u, saved->k, scale, dims, ctx);  // matrix_ac
  // matrix_bd: the same p for every batch element, so one batch-of-heads GEMM per utterance.
  for (int64_t b = 0; b < batch; ++b) {
    op::gemm_strided_batched(scores + b * heads * queries * keys, saved->q_v + b * heads * queries * dims.d_k,
                             saved->p, Transpose::kNo, Transpose::kYes, queries, keys, dims.d_k, scale,
                             Accum<T>(1), dims.d_k, dims.d_k, keys, queries * dims.d_k, keys * dims.d_k,
                             queries * keys, heads, ctx);
  }
  attend_forward(out, &saved->probs, &saved->probs_dropped, &saved->context, scores, saved->v, mask,
                 p.linear_out, saved->dropout, dims, ctx);
}

template <class T>
void rel_position_attention_backward(T* dquery, T* dkey, T* dvalue, T* dpos_emb,
                                     const RelPositionAttentionSaved<T>& saved, const T* dout,
                                     const RelPositionAttentionParams<T>& p, int64_t batch, int64_t queries,
                                     int64_t keys, int64_t d_model, int64_t heads, const RunContext& ctx) {
  const AttentionDims dims = make_dims(batch, queries, keys, d_model, heads);
  const int64_t groups = batch * heads;
  T* dscores = nullptr;
  T* dv_heads = nullptr;
  attend_backward(&dscores, &dv_heads, dout, saved.probs, saved.probs_dropped, saved.context, saved.v,
                  p.linear_out, saved.dropout, dims, ctx);
  const Accum<T> scale = score_scale<T>(dims);
  const int64_t n_q = groups * queries * dims.d_k;
  // Through matrix_ac: d(q + u) and dk.
  T* dq_u = activation_alloc<T>(ctx, n_q);
  T* dk_heads = activation_alloc<T>(ctx, groups * keys * dims.d_k);
  scores_backward_query(dq_u, dscores, saved.k, scale, dims, ctx);
  scores_backward_key(dk_heads, dscores, saved.q_u, scale, dims, ctx);
  // Through matrix_bd: d(q + v_b) per utterance, dp summed over the batch in order b = 0, 1, ...
  T* dq_v = activation_alloc<T>(ctx, n_q);
  T* dp_heads = activation_alloc<T>(ctx, heads * keys * dims.d_k);
  for (int64_t b = 0; b < batch; ++b) {
    const T* ds = dscores + b * heads * queries * keys;
    op::gemm_strided_batched(dq_v + b * heads * queries * dims.d_k, ds, saved.p, Transpose::kNo,
                             Transpose::kNo, queries, dims.d_k, keys, scale, Accum<T>(0), keys, dims.d_k,
                             dims.d_k, queries * keys, keys * dims.d_k, queries * dims.d_k, heads, ctx);
    op::gemm_strided_batched(dp_heads, ds, saved.q_v + b * heads * queries * dims.d_k, Transpose::kYes,
                             Transpose::kNo, keys, dims.d_k, queries, scale,
                             b == 0 ? Accum<T>(0) : Accum<T>(1), keys, dims.d_k, dims.d_k, queries * keys,
                             queries * dims.d_k, keys * dims.d_k, heads, ctx);
  }
  if (batch == 0) op::fill_constant(dp_heads, Accum<T>(0), heads * keys * dims.d_k, ctx);
  if (p.pos_bias_u.grad != nullptr) {
    op::split_heads_backward(static_cast<T*>(nullptr), p.pos_bias_u.grad, dq_u, batch, queries, heads,
                             dims.d_k, ctx);
  }
  if (p.pos_bias_v.grad != nullptr) {
    op::split_heads_backward(static_cast<T*>(nullptr), p.pos_bias_v.grad, dq_v, batch, queries, heads,
                             dims.d_k, ctx);
  }
  // dq = d(q + u) + d(q + v_b), into dq_u.
  op::add_scaled_inplace(dq_u, dq_v, Accum<T>(1), n_q, ctx);
  project_to_heads_backward(dquery, dq_u, saved.query, p.linear_q, dims, queries, ctx);
  project_to_heads_backward(dkey, dk_heads, saved.key, p.linear_k, dims, keys, ctx);
  project_to_heads_backward(dvalue, dv_heads, saved.value, p.linear_v, dims, keys, ctx);
  // linear_pos: a batch of one over the Tk rows of pos_emb.
  T* dp_flat = activation_alloc<T>(ctx, keys * d_model);
  op::split_heads_backward(dp_flat, static_cast<Accum<T>*>(nullptr), dp_heads, 1, keys, heads, dims.d_k, ctx);
  op::linear_backward(dpos_emb, p.linear_pos.weight.grad, static_cast<Accum<T>*>(nullptr), dp_flat,
                      saved.pos_emb, p.linear_pos.weight.value, keys, d_model, d_model, ctx);
}

#define MOEASR_INSTANTIATE_ATTENTION(T)                                                                      \
  template MultiHeadAttentionParams<T> bind_multi_head_attention<T>(ParameterStore<T>*, const std::string&); \
  template RelPositionAttentionParams<T> bind_rel_position_attention<T>(ParameterStore<T>*,                  \
                                                                        const std::string&);                 \
  template void multi_head_attention_forward<T>(                                                             \
      MultiHeadAttentionSaved<T>*, T*, const T*, const T*, const T*, const uint8_t*,                         \
      const MultiHeadAttentionParams<T>&, int64_t, int64_t, int64_t, int64_t, int64_t, double, uint64_t,     \
      uint64_t, const StepRng&, const RunContext&);                                                          \
  template void multi_head_attention_backward<T>(T*, T*, T*, const MultiHeadAttentionSaved<T>&, const T*,    \
                                                 const MultiHeadAttentionParams<T>&, int64_t, int64_t,       \
                                                 int64_t, int64_t, int64_t, const RunContext&);              \
  template void rel_position_attention_forward<T>(                                                           \
      RelPositionAttentionSaved<T>*, T*, const T*, const T*, const T*, const T*, const uint8_t*,             \
      const RelPositionAttentionParams<T>&, int64_t, int64_t, int64_t, int64_t, int64_t, double, uint64_t,   \
      uint64_t, const StepRng&, const RunContext&);                                                          \
  template void rel_position_attention_backward<T>(T*, T*, T*, T*, const RelPositionAttentionSaved<T>&,      \
                                                   const T*, const RelPositionAttentionParams<T>&, int64_t,  \
                                                   int64_t, int64_t, int64_t, int64_t, const RunContext&);

MOEASR_INSTANTIATE_ATTENTION(float)
MOEASR_INSTANTIATE_ATTENTION(double)
MOEASR_INSTANTIATE_ATTENTION(bf16)

#undef MOEASR_INSTANTIATE_ATTENTION

}  // namespace moeasr
