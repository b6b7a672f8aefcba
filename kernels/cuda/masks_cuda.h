// kernels/cuda/masks_cuda.h — the CUDA twin of kernels/cpu/masks.h: WeNet's attention masks
// (wenet/utils/mask.py) written as uint8 on the device (1 = attend / valid, 0 = masked), from lengths
// (or a validity mask) that live in device memory. Each function equals its CPU namesake element for element.
// Dims: B batch, T / L padded length. No backward. No host synchronisation.
//
// Difference from the CPU op: the CPU op CHECKs 0 <= lengths[b] <= T on the host; here the lengths are
// on the device and are not checked (that would need a host sync). A length above T behaves as T and a
// negative length as 0. Sizes and chunk_size are checked on the host as on the CPU.
#pragma once

#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

// mask[b, t] = t < lengths[b]  (WeNet: ~make_pad_mask(lengths, T)).
void make_valid_mask_cuda(uint8_t* mask,           // [B, T] device
                          const int32_t* lengths,  // [B] device
                          int64_t batch, int64_t max_len, const RunContext& ctx);

// mask[i, j] = j <= i  (WeNet subsequent_mask).
void make_causal_mask_cuda(uint8_t* mask,  // [L, L] device
                           int64_t length, const RunContext& ctx);

// WeNet subsequent_chunk_mask(L, chunk_size, num_left_chunks); see make_chunk_mask in masks.h.
// Requires chunk_size > 0.
void make_chunk_mask_cuda(uint8_t* mask,  // [L, L] device
                          int64_t chunk_size, int64_t num_left_chunks, int64_t length, const RunContext& ctx);

// Encoder self-attention mask: mask[b, i, j] = (j < lengths[b]) & chunk_mask[i, j].
void make_chunk_attention_mask_cuda(uint8_t* mask,           // [B, L, L] device
                                    const int32_t* lengths,  // [B] device
                                    int64_t chunk_size, int64_t num_left_chunks, int64_t batch,
                                    int64_t length, const RunContext& ctx);

// Decoder self-attention mask: mask[b, i, j] = (j < lengths[b]) & (j <= i).
void make_decoder_self_attention_mask_cuda(uint8_t* mask,           // [B, L, L] device
                                           const int32_t* lengths,  // [B] device
                                           int64_t batch, int64_t length, const RunContext& ctx);

// Decoder source-attention mask (memory_mask broadcast over the target steps):
// mask[b, u, t] = memory_valid[b, t] for every target step u (the byte is copied as is).
void make_cross_attention_mask_cuda(uint8_t* mask,                // [B, U, T] device
                                    const uint8_t* memory_valid,  // [B, T] device
                                    int64_t batch, int64_t steps, int64_t frames, const RunContext& ctx);

}  // namespace moeasr
