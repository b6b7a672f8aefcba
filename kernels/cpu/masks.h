// kernels/cpu/masks.h — attention masks after wenet/utils/mask.py: make_pad_mask (inverted),
// subsequent_mask, subsequent_chunk_mask and the combined masks built by add_optional_chunk_mask
// (encoder) and the transformer decoder. Dims: B batch, T / L padded length.
//
// Every mask here is uint8 with 1 = attend / valid and 0 = masked, the convention of softmax.h.
// Note: WeNet's make_pad_mask is the inverse (True = padding); ours is its logical NOT, hence the
// name make_valid_mask. These ops have no backward.
#pragma once

#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

// mask[b, t] = t < lengths[b]  (WeNet: ~make_pad_mask(lengths, T)). Requires 0 <= lengths[b] <= T.
void make_valid_mask(uint8_t* mask,           // [B, T]
                     const int32_t* lengths,  // [B]
                     int64_t batch, int64_t max_len, const RunContext& ctx);

// mask[i, j] = j <= i  (WeNet subsequent_mask).
void make_causal_mask(uint8_t* mask,  // [L, L]
                      int64_t length, const RunContext& ctx);

// WeNet subsequent_chunk_mask(L, chunk_size, num_left_chunks): row i is 1 on [start, end) with
//   start = 0 if num_left_chunks < 0 else max((i / chunk_size - num_left_chunks) * chunk_size, 0),
//   end   = min((i / chunk_size + 1) * chunk_size, L).
// chunk_size >= L (with num_left_chunks < 0) is full context. Requires chunk_size > 0.
void make_chunk_mask(uint8_t* mask,  // [L, L]
                     int64_t chunk_size, int64_t num_left_chunks, int64_t length, const RunContext& ctx);

// Encoder self-attention mask (add_optional_chunk_mask's pad_mask & chunk_mask):
//   mask[b, i, j] = (j < lengths[b]) & chunk_mask[i, j]. Only keys are pad-masked, so padded query
//   rows still see the valid keys of their chunk window; a sequence of length 0 gives all-zero rows.
// For full context pass chunk_size = L (or larger) and num_left_chunks = -1.
void make_chunk_attention_mask(uint8_t* mask,           // [B, L, L]
                               const int32_t* lengths,  // [B]
                               int64_t chunk_size, int64_t num_left_chunks, int64_t batch, int64_t length,
                               const RunContext& ctx);

// Decoder self-attention mask (WeNet TransformerDecoder: tgt_mask & subsequent_mask):
//   mask[b, i, j] = (j < lengths[b]) & (j <= i).
void make_decoder_self_attention_mask(uint8_t* mask,           // [B, L, L]
                                      const int32_t* lengths,  // [B]
                                      int64_t batch, int64_t length, const RunContext& ctx);

// Decoder source-attention mask (WeNet TransformerDecoder's memory_mask broadcast over the target
// steps): mask[b, u, t] = memory_valid[b, t] for every target step u.
void make_cross_attention_mask(uint8_t* mask,                // [B, U, T]
                               const uint8_t* memory_valid,  // [B, T]
                               int64_t batch, int64_t steps, int64_t frames, const RunContext& ctx);

}  // namespace moeasr
