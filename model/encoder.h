// model/encoder.h — WeNet's ConformerEncoder with U2++ settings (u2pp_moe_wenet.md §3, §4):
//   GlobalCMVN -> Conv2dSubsampling4 -> RelPositionalEncoding (x * sqrt(d); PE slice separate)
//   -> N ConformerEncoderLayers under the chunk mask -> after_norm.
// Each ConformerEncoderLayer (pre-LN, macaron, ff_scale 0.5, LayerNorm eps 1e-5):
//   x = x + 0.5 * drop(FFN_mac(LN_ff_macaron(x)))
//   x = x + drop(MHSA_rel(LN_mha(x), pos_emb, chunk_mask))
//   x = x + drop(ConvModule(LN_conv(x), valid_mask))
//   x = x + 0.5 * drop(FFN(LN_ff(x)))
//   x = LN_final(x)
// Both FFNs are MoE when encoder_conf.mlp_type is moe.
// Dims: B batch, T input frames, F fbank bins, L = T' subsampled frames, d model dim.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model/attention.h"
#include "model/conformer_conv.h"
#include "model/feed_forward.h"
#include "model/front_end.h"
#include "model/model_config.h"

namespace moeasr {

template <class T>
struct ConformerLayerParams {
  FeedForwardRef<T> feed_forward_macaron;
  RelPositionAttentionParams<T> self_attn;
  ConformerConvParams<T> conv_module;
  FeedForwardRef<T> feed_forward;
  LayerNormRef<T> norm_ff_macaron, norm_mha, norm_conv, norm_ff, norm_final;
};

template <class T>
struct ConformerLayerSaved {
  const T* x0 = nullptr;                          // [B, L, d] layer input
  T *a1 = nullptr, *f1 = nullptr, *x1 = nullptr;  // LN_ff_macaron out, FFN_mac out, after residual
  T *a2 = nullptr, *m = nullptr, *x2 = nullptr;   // LN_mha out, attention out, after residual
  T *a3 = nullptr, *c = nullptr, *x3 = nullptr;   // LN_conv out, conv module out, after residual
  T *a4 = nullptr, *f2 = nullptr, *x4 = nullptr;  // LN_ff out, FFN out, after residual
  Accum<T>* stats = nullptr;                      // [5, 2, B*L] mean/rstd of the five LayerNorms
  FeedForwardSaved<T> ff_macaron, ff;
  RelPositionAttentionSaved<T> attn;
  ConformerConvSaved<T> conv;
};

template <class T>
struct EncoderParams {
  GlobalCmvnParams<T> cmvn;
  Conv2dSubsampling4Params<T> embed;
  PositionalEncodingParams<T> pos_enc;  // table owned by the model
  std::vector<ConformerLayerParams<T>> layers;
  LayerNormRef<T> after_norm;
  EncoderConfig config;
  int64_t d_model = 0;
  int64_t input_dim = 0;
};

template <class T>
EncoderParams<T> bind_encoder(ParameterStore<T>* store, const ModelConfig& config, const ExpertLayout& layout,
                              const Accum<T>* pe_table);

// What the encoder's forward keeps for backward and hands to the decoders and the CTC head.
template <class T>
struct EncoderSaved {
  int64_t batch = 0, frames = 0, length = 0;  // B, T, L
  Accum<T>* normalized = nullptr;             // [B, T, F] after CMVN
  Conv2dSubsampling4Saved<T> embed;
  T* embedded = nullptr;                  // [B, L, d] subsampling output
  T* pos_x = nullptr;                     // [B, L, d] x * sqrt(d) (after dropout)
  T* pos_emb = nullptr;                   // [L, d]
  uint8_t* valid = nullptr;               // [B, L] 1 = valid frame
  uint8_t* attn_mask = nullptr;           // [B, L, L] chunk & key-padding mask
  const int32_t* lengths = nullptr;       // [B] subsampled valid lengths (ctx.device memory)
  const int32_t* lengths_host = nullptr;  // [B] the same on the host
  std::vector<ConformerLayerSaved<T>> layers;
  T* before_norm = nullptr;              // [B, L, d] last layer output
  Accum<T>* after_norm_stats = nullptr;  // [2, B*L]
  T* out = nullptr;                      // [B, L, d] encoder output
};

// feats [B, T, F] padded (ctx.device memory), feat_lengths [B] (host); chunk from sample_training_chunk /
// decoding_chunk.
template <class T>
void encoder_forward(EncoderSaved<T>* saved, const Accum<T>* feats, const int32_t* feat_lengths,
                     const EncoderParams<T>& p, ExpertDispatcher<T>* dispatcher, int64_t chunk_size,
                     int64_t num_left_chunks, bool training, int64_t batch, int64_t frames,
                     const StepRng& rng, const RunContext& ctx);

// dout [B, L, d]: gradient of the loss w.r.t. the encoder output. Accumulates parameter grads.
// on_final(g), when set, is called as soon as a group of parameter gradients is final: g = N (the
// number of layers) after after_norm's backward, g = i after layer i's, g = -1 after the front end's.
template <class T>
void encoder_backward(const EncoderSaved<T>& saved, const T* dout, const EncoderParams<T>& p,
                      ExpertDispatcher<T>* dispatcher, const StepRng& rng, const RunContext& ctx,
                      const std::function<void(int64_t)>& on_final = {});

// Layer ids for dropout keys and load statistics.
constexpr uint64_t kEncoderEmbedLayerId = 1;
constexpr uint64_t kEncoderLayerIdBase = 100;

}  // namespace moeasr
