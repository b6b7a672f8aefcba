// model/decoder.h — WeNet's TransformerDecoder (one direction) and the BiTransformerDecoder pair
// (u2pp_moe_wenet.md §5): embedding -> x * sqrt(d) + absolute PE -> N pre-LN DecoderLayers
//   x = x + drop(SelfAttn(norm1(x), causal & target-padding mask))
//   x = x + drop(CrossAttn(norm2(x), encoder_out, encoder-padding mask))
//   x = x + drop(FFN(norm3(x)))          (MoE when decoder_conf.mlp_type is moe; ReLU)
// -> after_norm -> output_layer (Linear d -> V). The right-to-left decoder has its own weights and
// reads the reversed targets (model/targets.h).
// Dims: B batch, U decoder steps (max target length + 1), L encoder frames, d model dim, V vocabulary.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/attention.h"
#include "model/feed_forward.h"
#include "model/front_end.h"
#include "model/model_config.h"

namespace moeasr {

template <class T>
struct DecoderLayerParams {
  MultiHeadAttentionParams<T> self_attn;
  MultiHeadAttentionParams<T> src_attn;
  FeedForwardRef<T> feed_forward;
  LayerNormRef<T> norm1, norm2, norm3;
};

template <class T>
struct DecoderParams {
  ParamRef<T> embed;  // [V, d]
  PositionalEncodingParams<T> pos_enc;
  std::vector<DecoderLayerParams<T>> layers;
  LayerNormRef<T> after_norm;
  LinearRef<T> output_layer;  // [V, d]
  DecoderConfig config;
  int64_t d_model = 0;
  int64_t vocab = 0;
  uint64_t layer_id_base = 0;  // dropout keys / load statistics: base + i; embed at base - 1
};

// prefix "decoder.left_decoder" or "decoder.right_decoder".
template <class T>
DecoderParams<T> bind_decoder(ParameterStore<T>* store, const std::string& prefix, int64_t num_blocks,
                              const ModelConfig& config, const ExpertLayout& layout, const Accum<T>* pe_table,
                              uint64_t layer_id_base);

template <class T>
struct DecoderLayerSaved {
  const T* x0 = nullptr;
  T *a1 = nullptr, *s = nullptr, *x1 = nullptr;
  T *a2 = nullptr, *c = nullptr, *x2 = nullptr;
  T *a3 = nullptr, *f = nullptr, *x3 = nullptr;
  Accum<T>* stats = nullptr;  // [3, 2, B*U]
  MultiHeadAttentionSaved<T> self_attn, src_attn;
  FeedForwardSaved<T> ff;
};

template <class T>
struct DecoderSaved {
  int64_t batch = 0, steps = 0, frames = 0;  // B, U, L
  const int32_t* tokens = nullptr;           // [B, U] decoder input ids
  T* embedded = nullptr;                     // [B, U, d] after embedding
  T* x = nullptr;                            // [B, U, d] after positional encoding
  uint8_t* valid = nullptr;                  // [B, U] valid decoder steps
  uint8_t* self_mask = nullptr;              // [B, U, U]
  uint8_t* src_mask = nullptr;               // [B, U, L]
  const T* memory = nullptr;                 // [B, L, d] encoder output
  std::vector<DecoderLayerSaved<T>> layers;
  T* before_norm = nullptr;        // [B, U, d]
  Accum<T>* norm_stats = nullptr;  // [2, B*U]
  T* normed = nullptr;             // [B, U, d]
  T* logits = nullptr;             // [B, U, V]
};

// tokens [B, U] (sos-prefixed, eos-padded), token_lengths [B]; memory [B, L, d] with memory_valid [B, L].
template <class T>
void decoder_forward(DecoderSaved<T>* saved, const int32_t* tokens, const int32_t* token_lengths,
                     const T* memory, const uint8_t* memory_valid, const DecoderParams<T>& p,
                     ExpertDispatcher<T>* dispatcher, int64_t batch, int64_t steps, int64_t frames,
                     const StepRng& rng, const RunContext& ctx);

// dlogits [B, U, V]; dmemory [B, L, d] is ACCUMULATED (both decoders and the CTC head add into it).
template <class T>
void decoder_backward(T* dmemory, const DecoderSaved<T>& saved, const T* dlogits, const DecoderParams<T>& p,
                      ExpertDispatcher<T>* dispatcher, const StepRng& rng, const RunContext& ctx);

constexpr uint64_t kLeftDecoderLayerIdBase = 1000;
constexpr uint64_t kRightDecoderLayerIdBase = 2000;

}  // namespace moeasr
