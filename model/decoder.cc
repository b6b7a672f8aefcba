// model/decoder.cc — Transformer decoder forward and backward (see decoder.h).
#include "model/decoder.h"

#include "kernels/ops.h"
#include "model/layer_helpers.h"

namespace moeasr {
namespace {

// Dropout sites inside one decoder layer (attention-probability dropouts use kSelfAttentionDropoutSite
// and kSrcAttentionDropoutSite from attention.h).
constexpr uint64_t kSiteAfterSelfAttn = 0;
constexpr uint64_t kSiteAfterSrcAttn = 1;
constexpr uint64_t kSiteAfterFf = 2;
constexpr uint64_t kSiteInsideFf = 3;

}  // namespace

template <class T>
DecoderParams<T> bind_decoder(ParameterStore<T>* store, const std::string& prefix, int64_t num_blocks,
                              const ModelConfig& config, const ExpertLayout& layout, const Accum<T>* pe_table,
                              uint64_t layer_id_base) {
  DecoderParams<T> p;
  p.config = config.decoder;
  p.d_model = config.encoder.output_size;
  p.vocab = config.vocab_size;
  p.layer_id_base = layer_id_base;
  p.embed = bind_param(store, prefix + ".embed.0.weight");
  p.pos_enc.table = pe_table;
  p.pos_enc.d_model = p.d_model;
  p.pos_enc.dropout_rate = config.decoder.positional_dropout_rate;
  for (int64_t i = 0; i < num_blocks; ++i) {
    std::string lp = prefix + ".decoders." + std::to_string(i);
    DecoderLayerParams<T> l;
    l.self_attn = bind_multi_head_attention(store, lp + ".self_attn");
    l.src_attn = bind_multi_head_attention(store, lp + ".src_attn");
    l.feed_forward = bind_feed_forward(store, lp + ".feed_forward", config.decoder.ffn, layout,
                                       config.decoder.dropout_rate);
    l.norm1 = bind_layer_norm(store, lp + ".norm1");
    l.norm2 = bind_layer_norm(store, lp + ".norm2");
    l.norm3 = bind_layer_norm(store, lp + ".norm3");
    p.layers.push_back(l);
  }
  p.after_norm = bind_layer_norm(store, prefix + ".after_norm");
  p.output_layer = bind_linear(store, prefix + ".output_layer");
  return p;
}

template <class T>
void decoder_forward(DecoderSaved<T>* s, const int32_t* tokens, const int32_t* token_lengths, const T* memory,
                     const uint8_t* memory_valid, const DecoderParams<T>& p, ExpertDispatcher<T>* dispatcher,
                     int64_t batch, int64_t steps, int64_t frames, const StepRng& rng,
                     const RunContext& ctx) {
  const int64_t d = p.d_model, n = batch * steps, nd = n * d;
  const DecoderConfig& cfg = p.config;
  s->batch = batch;
  s->steps = steps;
  s->frames = frames;
  s->tokens = tokens;
  s->memory = memory;

  s->embedded = activation_alloc<T>(ctx, nd);
  op::embedding_forward(s->embedded, tokens, p.embed.value, n, p.vocab, d, ctx);
  s->x = activation_alloc<T>(ctx, nd);
  positional_encoding_forward(s->x, s->embedded, p.pos_enc, 0, batch, steps, p.layer_id_base - 1, rng, ctx);

  s->valid = activation_alloc<uint8_t>(ctx, n);
  op::make_valid_mask(s->valid, token_lengths, batch, steps, ctx);
  s->self_mask = activation_alloc<uint8_t>(ctx, batch * steps * steps);
  op::make_decoder_self_attention_mask(s->self_mask, token_lengths, batch, steps, ctx);
  s->src_mask = activation_alloc<uint8_t>(ctx, batch * steps * frames);
  op::make_cross_attention_mask(s->src_mask, memory_valid, batch, steps, frames, ctx);

  s->layers.assign(p.layers.size(), DecoderLayerSaved<T>{});
  const T* x = s->x;
  for (size_t i = 0; i < p.layers.size(); ++i) {
    const DecoderLayerParams<T>& l = p.layers[i];
    DecoderLayerSaved<T>& ls = s->layers[i];
    const uint64_t layer_id = p.layer_id_base + i;
    auto alloc = [&] { return activation_alloc<T>(ctx, nd); };
    ls.x0 = x;
    ls.stats = activation_alloc<Accum<T>>(ctx, 6 * n);
    ls.a1 = alloc();
    layer_norm_ref_forward(ls.a1, ls.stats, ls.stats + n, x, l.norm1, n, ctx);
    ls.s = alloc();
    multi_head_attention_forward(&ls.self_attn, ls.s, ls.a1, ls.a1, ls.a1, s->self_mask, l.self_attn, batch,
                                 steps, steps, d, cfg.attention_heads, cfg.self_attention_dropout_rate,
                                 layer_id, kSelfAttentionDropoutSite, rng, ctx);
    branch_dropout_forward(ls.s, nd, rng.site(cfg.dropout_rate, layer_id, kSiteAfterSelfAttn), ctx);
    ls.x1 = alloc();
    op::residual_add_forward(ls.x1, x, ls.s, Accum<T>(1), nd, ctx);

    ls.a2 = alloc();
    layer_norm_ref_forward(ls.a2, ls.stats + 2 * n, ls.stats + 3 * n, ls.x1, l.norm2, n, ctx);
    ls.c = alloc();
    multi_head_attention_forward(&ls.src_attn, ls.c, ls.a2, memory, memory, s->src_mask, l.src_attn, batch,
                                 steps, frames, d, cfg.attention_heads, cfg.src_attention_dropout_rate,
                                 layer_id, kSrcAttentionDropoutSite, rng, ctx);
    branch_dropout_forward(ls.c, nd, rng.site(cfg.dropout_rate, layer_id, kSiteAfterSrcAttn), ctx);
    ls.x2 = alloc();
    op::residual_add_forward(ls.x2, ls.x1, ls.c, Accum<T>(1), nd, ctx);

    ls.a3 = alloc();
    layer_norm_ref_forward(ls.a3, ls.stats + 4 * n, ls.stats + 5 * n, ls.x2, l.norm3, n, ctx);
    ls.f = alloc();
    feed_forward_forward(&ls.ff, ls.f, ls.a3, s->valid, l.feed_forward, dispatcher, n, layer_id,
                         kSiteInsideFf, rng, ctx);
    branch_dropout_forward(ls.f, nd, rng.site(cfg.dropout_rate, layer_id, kSiteAfterFf), ctx);
    ls.x3 = alloc();
    op::residual_add_forward(ls.x3, ls.x2, ls.f, Accum<T>(1), nd, ctx);
    x = ls.x3;
  }
  s->before_norm = const_cast<T*>(x);
  s->norm_stats = activation_alloc<Accum<T>>(ctx, 2 * n);
  s->normed = activation_alloc<T>(ctx, nd);
  layer_norm_ref_forward(s->normed, s->norm_stats, s->norm_stats + n, x, p.after_norm, n, ctx);
  s->logits = activation_alloc<T>(ctx, n * p.vocab);
  op::linear_forward(s->logits, s->normed, p.output_layer.weight.value, p.output_layer.bias.value, n, d,
                     p.vocab, ctx);
}

template <class T>
void decoder_backward(T* dmemory, const DecoderSaved<T>& s, const T* dlogits, const DecoderParams<T>& p,
                      ExpertDispatcher<T>* dispatcher, const StepRng& rng, const RunContext& ctx) {
  const int64_t d = p.d_model, n = s.batch * s.steps, nd = n * d, md = s.batch * s.frames * d;
  const DecoderConfig& cfg = p.config;
  T* dnormed = activation_alloc<T>(ctx, nd);
  op::linear_backward(dnormed, p.output_layer.weight.grad, p.output_layer.bias.grad, dlogits, s.normed,
                      p.output_layer.weight.value, n, d, p.vocab, ctx);
  T* dx = activation_alloc<T>(ctx, nd);
  op::layer_norm_backward(dx, p.after_norm.weight.grad, p.after_norm.bias.grad, dnormed, s.before_norm,
                          s.norm_stats, s.norm_stats + n, p.after_norm.weight.master, n, d, ctx);
  T* dbranch = activation_alloc<T>(ctx, nd);
  T* da = activation_alloc<T>(ctx, nd);
  T* dk = activation_alloc<T>(ctx, nd);
  T* dv = activation_alloc<T>(ctx, nd);
  T* dmem_k = activation_alloc<T>(ctx, md);
  T* dmem_v = activation_alloc<T>(ctx, md);
  for (size_t i = p.layers.size(); i-- > 0;) {
    const DecoderLayerParams<T>& l = p.layers[i];
    const DecoderLayerSaved<T>& ls = s.layers[i];
    const uint64_t layer_id = p.layer_id_base + i;
    // x3 = x2 + drop(ffn(norm3(x2)))
    branch_dropout_backward(dbranch, dx, Accum<T>(1), nd, rng.site(cfg.dropout_rate, layer_id, kSiteAfterFf),
                            ctx);
    feed_forward_backward(da, ls.ff, dbranch, l.feed_forward, dispatcher, n, layer_id, kSiteInsideFf, rng,
                          ctx);
    layer_norm_ref_backward_add(dx, da, ls.x2, ls.stats + 4 * n, ls.stats + 5 * n, l.norm3, n, ctx);
    // x2 = x1 + drop(src_attn(norm2(x1), memory, memory))
    branch_dropout_backward(dbranch, dx, Accum<T>(1), nd,
                            rng.site(cfg.dropout_rate, layer_id, kSiteAfterSrcAttn), ctx);
    multi_head_attention_backward(da, dmem_k, dmem_v, ls.src_attn, dbranch, l.src_attn, s.batch, s.steps,
                                  s.frames, d, cfg.attention_heads, ctx);
    op::add_scaled_inplace(dmemory, dmem_k, Accum<T>(1), md, ctx);
    op::add_scaled_inplace(dmemory, dmem_v, Accum<T>(1), md, ctx);
    layer_norm_ref_backward_add(dx, da, ls.x1, ls.stats + 2 * n, ls.stats + 3 * n, l.norm2, n, ctx);
    // x1 = x0 + drop(self_attn(norm1(x0)))
    branch_dropout_backward(dbranch, dx, Accum<T>(1), nd,
                            rng.site(cfg.dropout_rate, layer_id, kSiteAfterSelfAttn), ctx);
    multi_head_attention_backward(da, dk, dv, ls.self_attn, dbranch, l.self_attn, s.batch, s.steps, s.steps,
                                  d, cfg.attention_heads, ctx);
    op::add_scaled_inplace(da, dk, Accum<T>(1), nd, ctx);
    op::add_scaled_inplace(da, dv, Accum<T>(1), nd, ctx);
    layer_norm_ref_backward_add(dx, da, ls.x0, ls.stats, ls.stats + n, l.norm1, n, ctx);
  }
  T* demb = activation_alloc<T>(ctx, nd);
  positional_encoding_backward(demb, dx, p.pos_enc, s.batch, s.steps, p.layer_id_base - 1, rng, ctx);
  op::embedding_backward(p.embed.grad, demb, s.tokens, n, p.vocab, d, ctx);
}

#define MOEASR_INSTANTIATE_DECODER(T)                                                                      \
  template DecoderParams<T> bind_decoder<T>(ParameterStore<T>*, const std::string&, int64_t,               \
                                            const ModelConfig&, const ExpertLayout&, const Accum<T>*,      \
                                            uint64_t);                                                     \
  template void decoder_forward<T>(DecoderSaved<T>*, const int32_t*, const int32_t*, const T*,             \
                                   const uint8_t*, const DecoderParams<T>&, ExpertDispatcher<T>*, int64_t, \
                                   int64_t, int64_t, const StepRng&, const RunContext&);                   \
  template void decoder_backward<T>(T*, const DecoderSaved<T>&, const T*, const DecoderParams<T>&,         \
                                    ExpertDispatcher<T>*, const StepRng&, const RunContext&);
MOEASR_INSTANTIATE_DECODER(float)
MOEASR_INSTANTIATE_DECODER(double)
MOEASR_INSTANTIATE_DECODER(bf16)

}  // namespace moeasr
