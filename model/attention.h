// model/attention.h — the attention layers of U2++, forward and backward, as WeNet's
// MultiHeadedAttention (decoder self- and cross-attention) and RelPositionMultiHeadedAttention
// (Conformer encoder self-attention) in wenet/models/transformer/attention.py.
//
// Dims: B batch, Tq queries, Tk keys, d model width, H heads, dk = d / H.
//
// MultiHeadedAttention:
//   q = linear_q(query), k = linear_k(key), v = linear_v(value)      (all with bias), [B, T, d]
//   split into heads (feature h*dk + j -> head h, column j): [B, H, T, dk]
//   scores = q kᵀ / sqrt(dk)                                                         [B, H, Tq, Tk]
//   probs  = masked_fill(softmax(masked_fill(scores, !mask, -inf)), !mask, 0)  (fully masked row -> 0)
//   context = dropout(probs) v, heads concatenated back (WeNet's transpose(1, 2).view)  [B, Tq, d]
//   out = linear_out(context)                                                          [B, Tq, d]
// RelPositionMultiHeadedAttention, exactly as WeNet (u2pp_moe_wenet.md §3, pitfall 1): rel_shift is
// NOT applied, so the positional term depends on the key's absolute position only:
//   p = linear_pos(pos_emb) (no bias), pos_emb [Tk, d] = PE rows of the keys' absolute positions,
//   viewed [H, Tk, dk] and shared by every batch element;
//   scores = ((q + pos_bias_u) kᵀ + (q + pos_bias_v) pᵀ) / sqrt(dk); the rest as above.
//
// Mask: [B, Tq, Tk] uint8, 1 = attend, or null = attend everywhere. (WeNet's cross-attention memory
// mask [B, 1, Tk] must be expanded over Tq by the caller.)
// Dropout on the probabilities: site rng.site(dropout_rate, layer_id, site_id); the caller picks
// site_id so that two attentions of one layer (decoder self- and cross-attention) draw different
// masks. kSelfAttentionDropoutSite / kSrcAttentionDropoutSite are the suggested ids.
//
// Saved: the forward records the caller's query/key/value (and pos_emb) pointers, which must stay
// valid until backward (they are activations of the same step), plus the buffers it allocates from
// ctx.activations. Backward assigns dquery, dkey, dvalue separately (self-attention callers, where
// query = key = value, sum the three) and accumulates every parameter gradient. Any of dquery, dkey,
// dvalue, dpos_emb may be null to skip it.
#pragma once

#include <cstdint>
#include <string>

#include "core/run_context.h"
#include "model/layer_common.h"
#include "model/parameter_table.h"

namespace moeasr {

constexpr uint64_t kSelfAttentionDropoutSite = 32;  // attention-probability dropout of self-attention
constexpr uint64_t kSrcAttentionDropoutSite = 33;   // attention-probability dropout of cross-attention

// WeNet MultiHeadedAttention: "<prefix>.linear_q", ".linear_k", ".linear_v", ".linear_out".
template <class T>
struct MultiHeadAttentionParams {
  LinearRef<T> linear_q;    // weight [d, d], bias [d]
  LinearRef<T> linear_k;    // weight [d, d], bias [d]
  LinearRef<T> linear_v;    // weight [d, d], bias [d]
  LinearRef<T> linear_out;  // weight [d, d], bias [d]
};

// WeNet RelPositionMultiHeadedAttention: the above plus "<prefix>.linear_pos", ".pos_bias_u",
// ".pos_bias_v".
template <class T>
struct RelPositionAttentionParams {
  LinearRef<T> linear_q;    // weight [d, d], bias [d]
  LinearRef<T> linear_k;    // weight [d, d], bias [d]
  LinearRef<T> linear_v;    // weight [d, d], bias [d]
  LinearRef<T> linear_out;  // weight [d, d], bias [d]
  LinearRef<T> linear_pos;  // weight [d, d], no bias
  ParamRef<T> pos_bias_u;   // [H, dk]
  ParamRef<T> pos_bias_v;   // [H, dk]
};

template <class T>
MultiHeadAttentionParams<T> bind_multi_head_attention(ParameterStore<T>* store, const std::string& prefix);
template <class T>
RelPositionAttentionParams<T> bind_rel_position_attention(ParameterStore<T>* store,
                                                          const std::string& prefix);

template <class T>
struct MultiHeadAttentionSaved {
  const T* query = nullptr;    // [B, Tq, d] the caller's input
  const T* key = nullptr;      // [B, Tk, d] the caller's input
  const T* value = nullptr;    // [B, Tk, d] the caller's input
  T* q = nullptr;              // [B, H, Tq, dk]
  T* k = nullptr;              // [B, H, Tk, dk]
  T* v = nullptr;              // [B, H, Tk, dk]
  T* probs = nullptr;          // [B, H, Tq, Tk] softmax output
  T* probs_dropped = nullptr;  // [B, H, Tq, Tk] after dropout (== probs when dropout is inactive)
  T* context = nullptr;        // [B, Tq, d] input of linear_out
  DropoutSite dropout;
};

template <class T>
struct RelPositionAttentionSaved {
  const T* query = nullptr;    // [B, Tq, d]
  const T* key = nullptr;      // [B, Tk, d]
  const T* value = nullptr;    // [B, Tk, d]
  const T* pos_emb = nullptr;  // [Tk, d]
  T* q_u = nullptr;            // [B, H, Tq, dk] q + pos_bias_u
  T* q_v = nullptr;            // [B, H, Tq, dk] q + pos_bias_v
  T* k = nullptr;              // [B, H, Tk, dk]
  T* v = nullptr;              // [B, H, Tk, dk]
  T* p = nullptr;              // [H, Tk, dk] linear_pos(pos_emb) split into heads
  T* probs = nullptr;          // [B, H, Tq, Tk]
  T* probs_dropped = nullptr;  // [B, H, Tq, Tk]
  T* context = nullptr;        // [B, Tq, d]
  DropoutSite dropout;
};

template <class T>
void multi_head_attention_forward(MultiHeadAttentionSaved<T>* saved,
                                  T* out,               // [B, Tq, d]
                                  const T* query,       // [B, Tq, d]
                                  const T* key,         // [B, Tk, d]
                                  const T* value,       // [B, Tk, d]
                                  const uint8_t* mask,  // [B, Tq, Tk] 1 = attend, or null
                                  const MultiHeadAttentionParams<T>& p, int64_t batch, int64_t queries,
                                  int64_t keys, int64_t d_model, int64_t heads, double dropout_rate,
                                  uint64_t layer_id, uint64_t site_id, const StepRng& rng,
                                  const RunContext& ctx);

template <class T>
void multi_head_attention_backward(T* dquery,  // [B, Tq, d] assigned, or null
                                   T* dkey,    // [B, Tk, d] assigned, or null
                                   T* dvalue,  // [B, Tk, d] assigned, or null
                                   const MultiHeadAttentionSaved<T>& saved,
                                   const T* dout,  // [B, Tq, d]
                                   const MultiHeadAttentionParams<T>& p, int64_t batch, int64_t queries,
                                   int64_t keys, int64_t d_model, int64_t heads, const RunContext& ctx);

template <class T>
void rel_position_attention_forward(RelPositionAttentionSaved<T>* saved,
                                    T* out,               // [B, Tq, d]
                                    const T* query,       // [B, Tq, d]
                                    const T* key,         // [B, Tk, d]
                                    const T* value,       // [B, Tk, d]
                                    const T* pos_emb,     // [Tk, d]
                                    const uint8_t* mask,  // [B, Tq, Tk] 1 = attend, or null
                                    const RelPositionAttentionParams<T>& p, int64_t batch, int64_t queries,
                                    int64_t keys, int64_t d_model, int64_t heads, double dropout_rate,
                                    uint64_t layer_id, uint64_t site_id, const StepRng& rng,
                                    const RunContext& ctx);

template <class T>
void rel_position_attention_backward(T* dquery,    // [B, Tq, d] assigned, or null
                                     T* dkey,      // [B, Tk, d] assigned, or null
                                     T* dvalue,    // [B, Tk, d] assigned, or null
                                     T* dpos_emb,  // [Tk, d] assigned, or null (a constant table)
                                     const RelPositionAttentionSaved<T>& saved,
                                     const T* dout,  // [B, Tq, d]
                                     const RelPositionAttentionParams<T>& p, int64_t batch, int64_t queries,
                                     int64_t keys, int64_t d_model, int64_t heads, const RunContext& ctx);

}  // namespace moeasr
