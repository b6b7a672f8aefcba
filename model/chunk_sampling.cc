// model/chunk_sampling.cc — WeNet's dynamic/static chunk choice (see chunk_sampling.h).
#include "model/chunk_sampling.h"

#include "core/check.h"

namespace moeasr {

ChunkChoice sample_training_chunk(const EncoderConfig& encoder, int64_t length, const PhiloxStream& stream) {
  ChunkChoice choice;
  choice.chunk_size = length;
  if (encoder.use_dynamic_chunk) {
    // WeNet: torch.randint(1, L) needs L >= 2; with L <= 1 there is nothing to chunk.
    if (length <= 1) return choice;
    int64_t r = 1 + static_cast<int64_t>(philox_below(stream, 0, static_cast<uint64_t>(length - 1)));
    if (r > length / 2) return choice;  // full context
    choice.full_context = false;
    choice.chunk_size = r % encoder.max_chunk_size + 1;
    if (encoder.use_dynamic_left_chunk) {
      int64_t max_left = (length - 1) / choice.chunk_size;
      choice.num_left_chunks =
          max_left > 0 ? static_cast<int64_t>(philox_below(stream, 1, static_cast<uint64_t>(max_left))) : 0;
    }
    return choice;
  }
  if (encoder.static_chunk_size > 0) {
    choice.full_context = false;
    choice.chunk_size = encoder.static_chunk_size;
    choice.num_left_chunks = -1;
  }
  return choice;
}

ChunkChoice decoding_chunk(int64_t decoding_chunk_size, int64_t num_decoding_left_chunks, int64_t length) {
  CHECK_NE(decoding_chunk_size, 0) << "decoding_chunk_size 0 is reserved for training";
  ChunkChoice choice;
  if (decoding_chunk_size < 0) {
    choice.chunk_size = length;
    return choice;
  }
  choice.full_context = false;
  choice.chunk_size = decoding_chunk_size;
  choice.num_left_chunks = num_decoding_left_chunks;
  return choice;
}

}  // namespace moeasr
