// core/philox.h — Philox4x32-10, the counter-based RNG of Salmon et al., "Parallel Random Numbers:
// As Easy as 1, 2, 3" (SC'11), as in Random123 and cuRAND. Counter-based means every random number is
// a pure function of (key, counter): dropout, SpecAugment, dither and chunk-size draws are recomputed
// from their key on resume or on another device, and no RNG state is ever saved.
//
// moe-asr derives the key from a RngKey (seed, purpose, epoch, step, rank, stream) and uses the
// element index as the counter, so element i of a draw is the same on CPU and GPU and under any
// parallel split of the loop.
#pragma once

#include <array>
#include <cstdint>

namespace moeasr {

using PhiloxCounter = std::array<uint32_t, 4>;
using PhiloxKeyWords = std::array<uint32_t, 2>;

// One Philox4x32 block: `rounds` is 10 for Philox4x32-10 (7 exists for the published vectors).
PhiloxCounter philox4x32(PhiloxCounter counter, PhiloxKeyWords key, int rounds = 10);

// What a random stream is for; part of the key so that two purposes never share numbers.
enum class RngPurpose : uint32_t {
  kInit = 1,         // parameter initialisation
  kDropout = 2,      // dropout masks
  kSpecAugment = 3,  // SpecAugment / SpecSub / SpecTrim
  kDither = 4,       // fbank dither
  kChunkSize = 5,    // dynamic chunk size draws
  kShuffle = 6,      // data order
  kTest = 99,
};

// The full address of a random stream. `stream` separates draws inside one step (layer id,
// utterance index, ...).
struct RngKey {
  uint64_t seed = 0;
  RngPurpose purpose = RngPurpose::kTest;
  uint64_t epoch = 0;
  uint64_t step = 0;
  uint32_t rank = 0;
  uint64_t stream = 0;
};

// A Philox key word pair plus the upper 64 bits of the counter, mixed from every RngKey field
// (splitmix64 finaliser), leaving the lower 64 counter bits for the element index.
struct PhiloxStream {
  PhiloxKeyWords key{};
  uint32_t counter_hi[2] = {0, 0};
};
PhiloxStream philox_stream(const RngKey& key);

// The 32-bit random word for element `index` of a stream (4 words per Philox block).
uint32_t philox_u32(const PhiloxStream& stream, uint64_t index);
// The 4 words of block `block`, i.e. elements 4*block .. 4*block+3 (what loops over many elements
// use, one Philox evaluation per 4 elements).
PhiloxCounter philox_block(const PhiloxStream& stream, uint64_t block);
// philox_block() for kPhiloxBatchBlocks consecutive blocks at once: block first_block + b's 4 words go to
// words[4 * b .. 4 * b + 3], the same words philox_block() returns. The lanes run the rounds side by side
// (structure of arrays): 16 independent multiply chains the core overlaps, and one call instead of 16
// (dropout draws one word per element). GCC 12 keeps the lanes scalar (no SIMD multiplies in its
// output at -march=native): the speed-up over philox_block() comes from the overlap alone.
constexpr int kPhiloxBatchBlocks = 16;
void philox_block_batch(const PhiloxStream& stream, uint64_t first_block,
                        uint32_t* words);  // [4 * kPhiloxBatchBlocks]
// The uniform in [0, 1) that philox_uniform() makes from a word (24 random bits).
inline float philox_word_to_uniform(uint32_t word) {
  return static_cast<float>(word >> 8) * (1.0f / 16777216.0f);
}
// Uniform in [0, 1) with 24 random bits (exactly representable in float).
float philox_uniform(const PhiloxStream& stream, uint64_t index);
// Uniform in [0, 1) with 53 random bits, from words 2*index and 2*index+1.
double philox_uniform_double(const PhiloxStream& stream, uint64_t index);
// Standard normal via Box-Muller on the uniform doubles at 2*index and 2*index+1.
double philox_normal(const PhiloxStream& stream, uint64_t index);
// Uniform integer in [0, bound), bound > 0 (Lemire's multiply-shift on a 64-bit draw; bias < 2^-32).
uint64_t philox_below(const PhiloxStream& stream, uint64_t index, uint64_t bound);

}  // namespace moeasr
