// model/chunk_sampling.h — the attention chunk of one training batch, as WeNet's
// add_optional_chunk_mask samples it (u2pp_moe_wenet.md §4), drawn from Philox instead of torch's
// global RNG so that a resumed run draws the same chunks:
//   dynamic: r uniform on {1 .. L-1}; r > L/2 → full context (about half the batches); otherwise
//            chunk = r % max_chunk_size + 1 in [1, 25], and with dynamic left chunks
//            num_left uniform on {0 .. (L-1)/chunk - 1} (else all history);
//   static:  chunk = static_chunk_size, left chunks = num_decoding_left_chunks;
//   neither: full context.
#pragma once

#include <cstdint>

#include "core/philox.h"
#include "model/model_config.h"

namespace moeasr {

struct ChunkChoice {
  int64_t chunk_size = 0;        // attention chunk in subsampled frames; >= L means full context
  int64_t num_left_chunks = -1;  // < 0: all history
  bool full_context = true;
};

// `length` is the padded subsampled length L of the batch; `stream` is the step's kChunkSize stream.
ChunkChoice sample_training_chunk(const EncoderConfig& encoder, int64_t length, const PhiloxStream& stream);

// Decoding: decoding_chunk_size < 0 → full context; > 0 → that chunk with the given left chunks;
// 0 is reserved for training (an error in the caller's flags).
ChunkChoice decoding_chunk(int64_t decoding_chunk_size, int64_t num_decoding_left_chunks, int64_t length);

}  // namespace moeasr
