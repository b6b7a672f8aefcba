// model/encoder.cc — the Conformer encoder's forward and backward (see encoder.h). Backward walks the
// forward in exact reverse; residual branches add their gradient into the trunk with
// add_scaled_inplace, every other activation gradient is assigned.
#include "model/encoder.h"

#include <cmath>
#include <cstring>
#include <string>

#include "kernels/ops.h"
#include "model/layer_helpers.h"

namespace moeasr {
namespace {

// Dropout sites inside one Conformer layer (attention-probability dropout uses
// kSelfAttentionDropoutSite from attention.h).
constexpr uint64_t kSiteAfterFfMacaron = 0;
constexpr uint64_t kSiteAfterAttention = 1;
constexpr uint64_t kSiteAfterConv = 2;
constexpr uint64_t kSiteAfterFf = 3;
constexpr uint64_t kSiteInsideFfMacaron = 4;
constexpr uint64_t kSiteInsideFf = 5;

template <class T>
ConformerLayerParams<T> bind_conformer_layer(ParameterStore<T>* store, const std::string& p,
                                             const EncoderConfig& enc, const ExpertLayout& layout) {
  ConformerLayerParams<T> l;
  l.feed_forward_macaron =
      bind_feed_forward(store, p + ".feed_forward_macaron", enc.ffn, layout, enc.dropout_rate);
  l.self_attn = bind_rel_position_attention(store, p + ".self_attn");
  l.conv_module = bind_conformer_conv(store, p + ".conv_module", enc.cnn_module_norm, enc.causal);
  l.feed_forward = bind_feed_forward(store, p + ".feed_forward", enc.ffn, layout, enc.dropout_rate);
  l.norm_ff_macaron = bind_layer_norm(store, p + ".norm_ff_macaron");
  l.norm_mha = bind_layer_norm(store, p + ".norm_mha");
  l.norm_conv = bind_layer_norm(store, p + ".norm_conv");
  l.norm_ff = bind_layer_norm(store, p + ".norm_ff");
  l.norm_final = bind_layer_norm(store, p + ".norm_final");
  return l;
}

template <class T>
void conformer_layer_forward(ConformerLayerSaved<T>* s, T* out, const T* x0, const uint8_t* valid,
                             const uint8_t* attn_mask, const T* pos_emb, const ConformerLayerParams<T>& p,
                             const EncoderConfig& enc, ExpertDispatcher<T>* dispatcher, bool training,
                             int64_t batch, int64_t length, int64_t d, uint64_t layer_id, const StepRng& rng,
                             const RunContext& ctx) {
  const int64_t n = batch * length, nd = n * d;
  s->x0 = x0;
  s->stats = activation_alloc<Accum<T>>(ctx, 10 * n);
  Accum<T>* st = s->stats;
  auto alloc = [&] { return activation_alloc<T>(ctx, nd); };

  // Macaron FFN, half step.
  s->a1 = alloc();
  layer_norm_ref_forward(s->a1, st + 0 * n, st + 1 * n, x0, p.norm_ff_macaron, n, ctx);
  s->f1 = alloc();
  feed_forward_forward(&s->ff_macaron, s->f1, s->a1, valid, p.feed_forward_macaron, dispatcher, n, layer_id,
                       kSiteInsideFfMacaron, rng, ctx);
  branch_dropout_forward(s->f1, nd, rng.site(enc.dropout_rate, layer_id, kSiteAfterFfMacaron), ctx);
  s->x1 = alloc();
  op::residual_add_forward(s->x1, x0, s->f1, Accum<T>(0.5), nd, ctx);

  // Relative-position self-attention.
  s->a2 = alloc();
  layer_norm_ref_forward(s->a2, st + 2 * n, st + 3 * n, s->x1, p.norm_mha, n, ctx);
  s->m = alloc();
  rel_position_attention_forward(&s->attn, s->m, s->a2, s->a2, s->a2, pos_emb, attn_mask, p.self_attn, batch,
                                 length, length, d, enc.attention_heads, enc.attention_dropout_rate, layer_id,
                                 kSelfAttentionDropoutSite, rng, ctx);
  branch_dropout_forward(s->m, nd, rng.site(enc.dropout_rate, layer_id, kSiteAfterAttention), ctx);
  s->x2 = alloc();
  op::residual_add_forward(s->x2, s->x1, s->m, Accum<T>(1), nd, ctx);

  // Convolution module.
  s->a3 = alloc();
  layer_norm_ref_forward(s->a3, st + 4 * n, st + 5 * n, s->x2, p.norm_conv, n, ctx);
  s->c = alloc();
  conformer_conv_forward(&s->conv, s->c, s->a3, valid, p.conv_module, batch, length, training, ctx);
  branch_dropout_forward(s->c, nd, rng.site(enc.dropout_rate, layer_id, kSiteAfterConv), ctx);
  s->x3 = alloc();
  op::residual_add_forward(s->x3, s->x2, s->c, Accum<T>(1), nd, ctx);

  // Second FFN, half step.
  s->a4 = alloc();
  layer_norm_ref_forward(s->a4, st + 6 * n, st + 7 * n, s->x3, p.norm_ff, n, ctx);
  s->f2 = alloc();
  feed_forward_forward(&s->ff, s->f2, s->a4, valid, p.feed_forward, dispatcher, n, layer_id, kSiteInsideFf,
                       rng, ctx);
  branch_dropout_forward(s->f2, nd, rng.site(enc.dropout_rate, layer_id, kSiteAfterFf), ctx);
  s->x4 = alloc();
  op::residual_add_forward(s->x4, s->x3, s->f2, Accum<T>(0.5), nd, ctx);

  layer_norm_ref_forward(out, st + 8 * n, st + 9 * n, s->x4, p.norm_final, n, ctx);
}

template <class T>
void conformer_layer_backward(T* dx0, const ConformerLayerSaved<T>& s, const T* dout,
                              const ConformerLayerParams<T>& p, const EncoderConfig& enc,
                              ExpertDispatcher<T>* dispatcher, int64_t batch, int64_t length, int64_t d,
                              uint64_t layer_id, const StepRng& rng, const RunContext& ctx) {
  const int64_t n = batch * length, nd = n * d;
  const Accum<T>* st = s.stats;
  auto alloc = [&] { return activation_alloc<T>(ctx, nd); };

  // The trunk gradient dx, updated in place from x4 back to x0.
  T* dx = dx0;
  op::layer_norm_backward(dx, p.norm_final.weight.grad, p.norm_final.bias.grad, dout, s.x4, st + 8 * n,
                          st + 9 * n, p.norm_final.weight.master, n, d, ctx);

  T* dbranch = alloc();
  T* da = alloc();
  // x4 = x3 + 0.5 * drop(f2)
  branch_dropout_backward(dbranch, dx, Accum<T>(0.5), nd, rng.site(enc.dropout_rate, layer_id, kSiteAfterFf),
                          ctx);
  feed_forward_backward(da, s.ff, dbranch, p.feed_forward, dispatcher, n, layer_id, kSiteInsideFf, rng, ctx);
  layer_norm_ref_backward_add(dx, da, s.x3, st + 6 * n, st + 7 * n, p.norm_ff, n, ctx);

  // x3 = x2 + drop(conv(LN(x2)))
  branch_dropout_backward(dbranch, dx, Accum<T>(1), nd, rng.site(enc.dropout_rate, layer_id, kSiteAfterConv),
                          ctx);
  conformer_conv_backward(da, s.conv, dbranch, p.conv_module, batch, length, ctx);
  layer_norm_ref_backward_add(dx, da, s.x2, st + 4 * n, st + 5 * n, p.norm_conv, n, ctx);

  // x2 = x1 + drop(mhsa(LN(x1)))
  branch_dropout_backward(dbranch, dx, Accum<T>(1), nd,
                          rng.site(enc.dropout_rate, layer_id, kSiteAfterAttention), ctx);
  T* dk = alloc();
  T* dv = alloc();
  rel_position_attention_backward(da, dk, dv, static_cast<T*>(nullptr), s.attn, dbranch, p.self_attn, batch,
                                  length, length, d, enc.attention_heads, ctx);
  op::add_scaled_inplace(da, dk, Accum<T>(1), nd, ctx);
  op::add_scaled_inplace(da, dv, Accum<T>(1), nd, ctx);
  layer_norm_ref_backward_add(dx, da, s.x1, st + 2 * n, st + 3 * n, p.norm_mha, n, ctx);

  // x1 = x0 + 0.5 * drop(ffn_mac(LN(x0)))
  branch_dropout_backward(dbranch, dx, Accum<T>(0.5), nd,
                          rng.site(enc.dropout_rate, layer_id, kSiteAfterFfMacaron), ctx);
  feed_forward_backward(da, s.ff_macaron, dbranch, p.feed_forward_macaron, dispatcher, n, layer_id,
                        kSiteInsideFfMacaron, rng, ctx);
  layer_norm_ref_backward_add(dx, da, s.x0, st + 0 * n, st + 1 * n, p.norm_ff_macaron, n, ctx);
}

}  // namespace

template <class T>
EncoderParams<T> bind_encoder(ParameterStore<T>* store, const ModelConfig& config, const ExpertLayout& layout,
                              const Accum<T>* pe_table) {
  EncoderParams<T> p;
  p.config = config.encoder;
  p.d_model = config.encoder.output_size;
  p.input_dim = config.input_dim;
  p.cmvn = bind_global_cmvn(store, "encoder.global_cmvn");
  p.embed = bind_conv2d_subsampling4(store, "encoder.embed");
  p.pos_enc.table = pe_table;
  p.pos_enc.d_model = p.d_model;
  p.pos_enc.dropout_rate = config.encoder.positional_dropout_rate;
  for (int64_t i = 0; i < config.encoder.num_blocks; ++i) {
    p.layers.push_back(
        bind_conformer_layer(store, "encoder.encoders." + std::to_string(i), config.encoder, layout));
  }
  p.after_norm = bind_layer_norm(store, "encoder.after_norm");
  return p;
}

template <class T>
void encoder_forward(EncoderSaved<T>* s, const Accum<T>* feats, const int32_t* feat_lengths,
                     const EncoderParams<T>& p, ExpertDispatcher<T>* dispatcher, int64_t chunk_size,
                     int64_t num_left_chunks, bool training, int64_t batch, int64_t frames,
                     const StepRng& rng, const RunContext& ctx) {
  const int64_t d = p.d_model, f = p.input_dim;
  const int64_t length = conv2d_subsampling4_output_size(frames);
  CHECK_GT(length, 0) << "the batch's padded length " << frames
                      << " frames is too short for Conv2dSubsampling4 (needs at least 7)";
  s->batch = batch;
  s->frames = frames;
  s->length = length;
  const int64_t n = batch * length, nd = n * d;

  s->normalized = activation_alloc<Accum<T>>(ctx, batch * frames * f);
  global_cmvn_forward<T>(s->normalized, feats, p.cmvn, batch * frames, f, ctx);
  s->embedded = activation_alloc<T>(ctx, nd);
  conv2d_subsampling4_forward(&s->embed, s->embedded, as_storage<T>(s->normalized, batch * frames * f, ctx),
                              p.embed, batch, frames, f, ctx);
  int32_t* lengths = host_alloc<int32_t>(ctx, batch);
  conv2d_subsampling4_lengths(lengths, feat_lengths, batch);  // feat_lengths: host
  s->lengths_host = lengths;
  s->lengths = device_mirror(ctx, static_cast<const int32_t*>(lengths), batch);

  s->pos_x = activation_alloc<T>(ctx, nd);
  s->pos_emb = activation_alloc<T>(ctx, length * d);
  rel_positional_encoding_forward(s->pos_x, s->pos_emb, s->embedded, p.pos_enc, 0, batch, length,
                                  kEncoderEmbedLayerId, rng, ctx);

  s->valid = activation_alloc<uint8_t>(ctx, n);
  op::make_valid_mask(s->valid, s->lengths, batch, length, ctx);
  s->attn_mask = activation_alloc<uint8_t>(ctx, batch * length * length);
  int64_t chunk = chunk_size <= 0 || chunk_size > length ? length : chunk_size;
  op::make_chunk_attention_mask(s->attn_mask, s->lengths, chunk, num_left_chunks, batch, length, ctx);

  s->layers.assign(p.layers.size(), ConformerLayerSaved<T>{});
  const T* x = s->pos_x;
  for (size_t i = 0; i < p.layers.size(); ++i) {
    T* out = activation_alloc<T>(ctx, nd);
    conformer_layer_forward(&s->layers[i], out, x, s->valid, s->attn_mask, s->pos_emb, p.layers[i], p.config,
                            dispatcher, training, batch, length, d, kEncoderLayerIdBase + i, rng, ctx);
    x = out;
  }
  s->before_norm = const_cast<T*>(x);
  s->after_norm_stats = activation_alloc<Accum<T>>(ctx, 2 * n);
  s->out = activation_alloc<T>(ctx, nd);
  layer_norm_ref_forward(s->out, s->after_norm_stats, s->after_norm_stats + n, x, p.after_norm, n, ctx);
}

template <class T>
void encoder_backward(const EncoderSaved<T>& s, const T* dout, const EncoderParams<T>& p,
                      ExpertDispatcher<T>* dispatcher, const StepRng& rng, const RunContext& ctx,
                      const std::function<void(int64_t)>& on_final) {
  const auto final_group = [&](int64_t group) {
    if (on_final) on_final(group);
  };
  const int64_t d = p.d_model, n = s.batch * s.length, nd = n * d;
  T* dcur = activation_alloc<T>(ctx, nd);
  op::layer_norm_backward(dcur, p.after_norm.weight.grad, p.after_norm.bias.grad, dout, s.before_norm,
                          s.after_norm_stats, s.after_norm_stats + n, p.after_norm.weight.master, n, d, ctx);
  final_group(static_cast<int64_t>(p.layers.size()));
  for (size_t k = p.layers.size(); k-- > 0;) {
    T* dprev = activation_alloc<T>(ctx, nd);
    conformer_layer_backward(dprev, s.layers[k], dcur, p.layers[k], p.config, dispatcher, s.batch, s.length,
                             d, kEncoderLayerIdBase + k, rng, ctx);
    dcur = dprev;
    final_group(static_cast<int64_t>(k));
  }
  T* dembed = activation_alloc<T>(ctx, nd);
  rel_positional_encoding_backward(dembed, dcur, p.pos_enc, s.batch, s.length, kEncoderEmbedLayerId, rng,
                                   ctx);
  conv2d_subsampling4_backward(static_cast<T*>(nullptr), s.embed, dembed, p.embed, s.batch, s.frames,
                               p.input_dim, ctx);
  final_group(-1);
}

#define MOEASR_INSTANTIATE_ENCODER(T)                                                                     \
  template EncoderParams<T> bind_encoder<T>(ParameterStore<T>*, const ModelConfig&, const ExpertLayout&,  \
                                            const Accum<T>*);                                             \
  template void encoder_forward<T>(EncoderSaved<T>*, const Accum<T>*, const int32_t*,                     \
                                   const EncoderParams<T>&, ExpertDispatcher<T>*, int64_t, int64_t, bool, \
                                   int64_t, int64_t, const StepRng&, const RunContext&);                  \
  template void encoder_backward<T>(const EncoderSaved<T>&, const T*, const EncoderParams<T>&,            \
                                    ExpertDispatcher<T>*, const StepRng&, const RunContext&,              \
                                    const std::function<void(int64_t)>&);
MOEASR_INSTANTIATE_ENCODER(float)
MOEASR_INSTANTIATE_ENCODER(double)
MOEASR_INSTANTIATE_ENCODER(bf16)

}  // namespace moeasr
