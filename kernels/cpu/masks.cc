// kernels/cpu/masks.cc — WeNet's attention masks (wenet/utils/mask.py) as uint8 1 = attend. Each
// output row is written by one thread; the masks are pure functions of their arguments.
#include "kernels/cpu/masks.h"

#include <algorithm>

#include "core/check.h"
#include "kernels/cpu/cpu_parallel.h"

namespace moeasr {
namespace {

// The [start, end) key window of query row i in subsequent_chunk_mask.
inline void chunk_window(int64_t i, int64_t chunk_size, int64_t num_left_chunks, int64_t length,
                         int64_t* start, int64_t* end) {
  int64_t chunk = i / chunk_size;
  *start = num_left_chunks < 0 ? 0 : std::max<int64_t>((chunk - num_left_chunks) * chunk_size, 0);
  *end = std::min<int64_t>((chunk + 1) * chunk_size, length);
}

void check_lengths(const int32_t* lengths, int64_t batch, int64_t max_len) {
  for (int64_t b = 0; b < batch; ++b) {
    CHECK(lengths[b] >= 0 && lengths[b] <= max_len)
        << "length " << lengths[b] << " of sequence " << b << " outside [0, " << max_len << "]";
  }
}

}  // namespace

void make_valid_mask(uint8_t* mask, const int32_t* lengths, int64_t batch, int64_t max_len,
                     const RunContext& ctx) {
  CHECK_GE(batch, 0);
  CHECK_GE(max_len, 0);
  check_lengths(lengths, batch, max_len);
  int threads = cpu_threads_for(ctx, batch * max_len);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < max_len; ++t) mask[b * max_len + t] = t < lengths[b] ? 1 : 0;
  }
}

void make_causal_mask(uint8_t* mask, int64_t length, const RunContext& ctx) {
  CHECK_GE(length, 0);
  int threads = cpu_threads_for(ctx, length * length);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < length; ++i) {
    for (int64_t j = 0; j < length; ++j) mask[i * length + j] = j <= i ? 1 : 0;
  }
}

void make_chunk_mask(uint8_t* mask, int64_t chunk_size, int64_t num_left_chunks, int64_t length,
                     const RunContext& ctx) {
  CHECK_GT(chunk_size, 0);
  CHECK_GE(length, 0);
  int threads = cpu_threads_for(ctx, length * length);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < length; ++i) {
    int64_t start = 0, end = 0;
    chunk_window(i, chunk_size, num_left_chunks, length, &start, &end);
    for (int64_t j = 0; j < length; ++j) mask[i * length + j] = (j >= start && j < end) ? 1 : 0;
  }
}

void make_chunk_attention_mask(uint8_t* mask, const int32_t* lengths, int64_t chunk_size,
                               int64_t num_left_chunks, int64_t batch, int64_t length,
                               const RunContext& ctx) {
  CHECK_GT(chunk_size, 0);
  CHECK_GE(batch, 0);
  CHECK_GE(length, 0);
  check_lengths(lengths, batch, length);
  int threads = cpu_threads_for(ctx, batch * length * length);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < batch * length; ++row) {
    const int64_t b = row / length, i = row % length;
    int64_t start = 0, end = 0;
    chunk_window(i, chunk_size, num_left_chunks, length, &start, &end);
    end = std::min<int64_t>(end, lengths[b]);
    uint8_t* m = mask + row * length;
    for (int64_t j = 0; j < length; ++j) m[j] = (j >= start && j < end) ? 1 : 0;
  }
}

void make_decoder_self_attention_mask(uint8_t* mask, const int32_t* lengths, int64_t batch, int64_t length,
                                      const RunContext& ctx) {
  CHECK_GE(batch, 0);
  CHECK_GE(length, 0);
  check_lengths(lengths, batch, length);
  int threads = cpu_threads_for(ctx, batch * length * length);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < batch * length; ++row) {
    const int64_t b = row / length, i = row % length;
    uint8_t* m = mask + row * length;
    for (int64_t j = 0; j < length; ++j) m[j] = (j <= i && j < lengths[b]) ? 1 : 0;
  }
}

void make_cross_attention_mask(uint8_t* mask, const uint8_t* memory_valid, int64_t batch, int64_t steps,
                               int64_t frames, const RunContext& ctx) {
  CHECK_GE(batch, 0);
  CHECK_GE(steps, 0);
  CHECK_GE(frames, 0);
  int threads = cpu_threads_for(ctx, batch * steps * frames);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < batch * steps; ++row) {
    const uint8_t* valid = memory_valid + (row / steps) * frames;
    std::copy(valid, valid + frames, mask + row * frames);
  }
}

}  // namespace moeasr
