// model/front_end.h — the encoder front end of WeNet's U2++ Conformer (u2pp_moe_wenet.md §3) and the
// sinusoidal positional encodings of the encoder and decoder:
//  * GlobalCMVN (wenet/models/transformer/cmvn.py): x' = (x - mean) * istd per feature bin. Forward
//    only: its input is data (fbank features), so nothing upstream needs a gradient.
//  * Conv2dSubsampling4 (wenet/models/transformer/subsampling.py): x [B, T, F] -> [B, 1, T, F] ->
//    Conv2d(1, d, 3, stride 2) -> ReLU -> Conv2d(d, d, 3, stride 2) -> ReLU -> [B, d, T', F'] ->
//    transpose(1, 2) -> view [B, T', d * F'] (channel-major: column c * F' + f) -> Linear(d F', d).
//    No padding, no dropout. T' = ((T-1)/2 - 1)/2, F' likewise. Output lengths follow WeNet's mask
//    slicing x_mask[:, :, 2::2][:, :, 2::2] (conv2d_subsampling4_valid_length).
//    Parameters "encoder.embed.conv.0", "encoder.embed.conv.2", "encoder.embed.out.0".
//  * The sinusoid table of WeNet's PositionalEncoding (embedding.py): PE[p, 2i] = sin(p / 10000^(2i/d)),
//    PE[p, 2i+1] = cos(p / 10000^(2i/d)), max_len 5000. We compute it in double and cast to T (WeNet
//    computes it in float32; the two agree to float rounding).
//  * RelPositionalEncoding (encoder, pos_enc_layer_type rel_pos): out = dropout(x * sqrt(d)) and,
//    returned separately, pos_emb = dropout(PE[offset : offset + T]) — the PE is NOT added to x.
//  * PositionalEncoding (decoder, abs_pos): out = dropout(x * sqrt(d) + PE[offset : offset + T]).
//    Both dropouts use positional_dropout_rate; sites (layer_id, 0) for x, (layer_id, 1) for pos_emb.
//    Nothing is saved: backward re-derives the dropout masks from the same StepRng.
// Gradient convention: parameter grads accumulate (+=); activation grads are assigned.
#pragma once

#include <cstdint>
#include <string>

#include "core/run_context.h"
#include "kernels/cpu/conv.h"
#include "model/layer_common.h"

namespace moeasr {

// ---- GlobalCMVN ---------------------------------------------------------------------------------------

template <class T>
struct GlobalCmvnParams {
  ParamRef<T> mean;  // [F] buffer
  ParamRef<T> istd;  // [F] buffer
  int64_t dim = 0;   // F
};

// Binds "<prefix>.mean" and "<prefix>.istd" (prefix "encoder.global_cmvn").
template <class T>
GlobalCmvnParams<T> bind_global_cmvn(ParameterStore<T>* store, const std::string& prefix);

// out = (x - mean) * istd per bin; out may alias x. Forward only (the input is data). In Accum<T>: the
// features come in fp32 whatever the model's storage type.
template <class T>
void global_cmvn_forward(Accum<T>* out,      // [N, F]
                         const Accum<T>* x,  // [N, F]
                         const GlobalCmvnParams<T>& p, int64_t rows, int64_t feat, const RunContext& ctx);

// ---- Conv2dSubsampling4 -------------------------------------------------------------------------------

// Padded output length T' (and F' for the feature axis): two 3x3 stride-2 unpadded convolutions.
inline int64_t conv2d_subsampling4_output_size(int64_t input_size) {
  return conv2d_3x3s2_output_size(conv2d_3x3s2_output_size(input_size));
}

// Valid output frames of an utterance with `length` valid input frames (a valid prefix), as WeNet's
// x_mask[:, :, 2::2][:, :, 2::2]: one slice keeps positions 2, 4, 6, ..., of which those < n are
// valid, i.e. n >= 1 ? (n - 1) / 2 : 0; applied twice.
inline int64_t conv2d_subsampling4_valid_length(int64_t length) {
  const int64_t once = length >= 1 ? (length - 1) / 2 : 0;
  return once >= 1 ? (once - 1) / 2 : 0;
}

// out_lengths[b] = conv2d_subsampling4_valid_length(lengths[b]).
void conv2d_subsampling4_lengths(int32_t* out_lengths,    // [B]
                                 const int32_t* lengths,  // [B]
                                 int64_t batch);

template <class T>
struct Conv2dSubsampling4Params {
  ParamRef<T> conv0_weight;  // [d, 1, 3, 3]
  ParamRef<T> conv0_bias;    // [d]
  ParamRef<T> conv2_weight;  // [d, d, 3, 3]
  ParamRef<T> conv2_bias;    // [d]
  LinearRef<T> out;          // [d, d * F'], bias [d]
  int64_t d_model = 0;
  int64_t sub_freq = 0;  // F'
};

// Binds "<prefix>.conv.0", "<prefix>.conv.2", "<prefix>.out.0" (prefix "encoder.embed").
template <class T>
Conv2dSubsampling4Params<T> bind_conv2d_subsampling4(ParameterStore<T>* store, const std::string& prefix);

template <class T>
struct Conv2dSubsampling4Saved {
  const T* x = nullptr;  // [B, T, F] the caller's input; must stay valid until backward (conv.0 dweight)
  T* r0 = nullptr;       // [B, d, T1, F1] first ReLU output
  T* r1 = nullptr;       // [B, d, T', F'] second ReLU output
  T* z = nullptr;        // [B, T', d * F'] flattened (Linear input)
};

template <class T>
void conv2d_subsampling4_forward(Conv2dSubsampling4Saved<T>* saved,
                                 T* out,      // [B, T', d]
                                 const T* x,  // [B, T, F]
                                 const Conv2dSubsampling4Params<T>& p, int64_t batch, int64_t time,
                                 int64_t feat, const RunContext& ctx);

template <class T>
void conv2d_subsampling4_backward(T* dx,  // [B, T, F] assigned; null to skip (the input is data)
                                  const Conv2dSubsampling4Saved<T>& saved,
                                  const T* dout,  // [B, T', d]
                                  const Conv2dSubsampling4Params<T>& p, int64_t batch, int64_t time,
                                  int64_t feat, const RunContext& ctx);

// ---- Positional encodings -----------------------------------------------------------------------------

constexpr int64_t kPositionalEncodingMaxLen = 5000;  // WeNet's max_len

// pe[p, 2i] = sin(p * 10000^(-2i/d)), pe[p, 2i+1] = cos(p * 10000^(-2i/d)), in double, cast to T.
// d must be even (WeNet's table needs it too).
template <class T>
void sinusoid_position_table(T* pe,  // [max_len, d]
                             int64_t max_len, int64_t d_model);

template <class T>
struct PositionalEncodingParams {
  const Accum<T>* table = nullptr;  // [max_len, d] from sinusoid_position_table<Accum<T>>
  int64_t max_len = kPositionalEncodingMaxLen;
  int64_t d_model = 0;
  double dropout_rate = 0.0;  // positional_dropout_rate
};

// Dropout sites of the positional encodings (with the caller's layer id).
constexpr uint64_t kPosEncSiteX = 0;
constexpr uint64_t kPosEncSitePosEmb = 1;

// Encoder (rel_pos): out = dropout(x * sqrt(d)), pos_emb = dropout(PE[offset : offset + T]).
// CHECK-fails when offset + T > max_len.
template <class T>
void rel_positional_encoding_forward(T* out,      // [B, T, d] (may alias x)
                                     T* pos_emb,  // [T, d]
                                     const T* x,  // [B, T, d]
                                     const PositionalEncodingParams<T>& p, int64_t offset, int64_t batch,
                                     int64_t time, uint64_t layer_id, const StepRng& rng,
                                     const RunContext& ctx);

// dx = sqrt(d) * dropout_backward(dout) (pos_emb is a constant: no gradient).
template <class T>
void rel_positional_encoding_backward(T* dx,          // [B, T, d] assigned (may alias dout)
                                      const T* dout,  // [B, T, d]
                                      const PositionalEncodingParams<T>& p, int64_t batch, int64_t time,
                                      uint64_t layer_id, const StepRng& rng, const RunContext& ctx);

// Decoder (abs_pos): out = dropout(x * sqrt(d) + PE[offset + t]) for every batch item.
template <class T>
void positional_encoding_forward(T* out,      // [B, T, d] (may alias x)
                                 const T* x,  // [B, T, d]
                                 const PositionalEncodingParams<T>& p, int64_t offset, int64_t batch,
                                 int64_t time, uint64_t layer_id, const StepRng& rng, const RunContext& ctx);

// dx = sqrt(d) * dropout_backward(dout).
template <class T>
void positional_encoding_backward(T* dx,          // [B, T, d] assigned (may alias dout)
                                  const T* dout,  // [B, T, d]
                                  const PositionalEncodingParams<T>& p, int64_t batch, int64_t time,
                                  uint64_t layer_id, const StepRng& rng, const RunContext& ctx);

}  // namespace moeasr
