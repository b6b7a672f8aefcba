// core/philox.cc — Philox4x32 blocks (the rounds are core/philox_rounds.h, shared with the CUDA
// kernels) and the moe-asr stream helpers on top.
#include "core/philox.h"

#include <cmath>

#include "core/check.h"
#include "core/philox_rounds.h"

namespace moeasr {
namespace {

// 128-bit product for the multiply-shift bound (GCC/Clang extension).
__extension__ typedef unsigned __int128 Uint128;

constexpr double kTwoPi = 6.283185307179586476925286766559;

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

PhiloxCounter philox4x32(PhiloxCounter counter, PhiloxKeyWords key, int rounds) {
  philox4x32_rounds(counter.data(), key[0], key[1], rounds);
  return counter;
}

PhiloxStream philox_stream(const RngKey& key) {
  uint64_t h = splitmix64(key.seed);
  h = splitmix64(h ^ static_cast<uint64_t>(key.purpose));
  uint64_t key_bits = h;
  h = splitmix64(h ^ key.epoch);
  h = splitmix64(h ^ key.step);
  h = splitmix64(h ^ key.rank);
  h = splitmix64(h ^ key.stream);
  PhiloxStream stream;
  stream.key = {static_cast<uint32_t>(key_bits), static_cast<uint32_t>(key_bits >> 32)};
  stream.counter_hi[0] = static_cast<uint32_t>(h);
  stream.counter_hi[1] = static_cast<uint32_t>(h >> 32);
  return stream;
}

PhiloxCounter philox_block(const PhiloxStream& stream, uint64_t block) {
  PhiloxCounter counter = {static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                           stream.counter_hi[0], stream.counter_hi[1]};
  return philox4x32(counter, stream.key);
}

void philox_block_batch(const PhiloxStream& stream, uint64_t first_block,
                        uint32_t* words) {  // [4 * kPhiloxBatchBlocks]
  constexpr int kLanes = kPhiloxBatchBlocks;
  uint32_t c0[kLanes], c1[kLanes], c2[kLanes], c3[kLanes];
  for (int lane = 0; lane < kLanes; ++lane) {
    const uint64_t block = first_block + static_cast<uint64_t>(lane);
    c0[lane] = static_cast<uint32_t>(block);
    c1[lane] = static_cast<uint32_t>(block >> 32);
    c2[lane] = stream.counter_hi[0];
    c3[lane] = stream.counter_hi[1];
  }
  uint32_t key0 = stream.key[0], key1 = stream.key[1];
  // The 10 rounds of philox4x32(), each over all lanes (the same round body, lane by lane).
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key0 += kPhiloxW0;
      key1 += kPhiloxW1;
    }
    for (int lane = 0; lane < kLanes; ++lane) {
      philox4x32_round(c0[lane], c1[lane], c2[lane], c3[lane], key0, key1);
    }
  }
  for (int lane = 0; lane < kLanes; ++lane) {
    words[4 * lane + 0] = c0[lane];
    words[4 * lane + 1] = c1[lane];
    words[4 * lane + 2] = c2[lane];
    words[4 * lane + 3] = c3[lane];
  }
}

uint32_t philox_u32(const PhiloxStream& stream, uint64_t index) {
  return philox_block(stream, index >> 2)[index & 3];
}

float philox_uniform(const PhiloxStream& stream, uint64_t index) {
  return philox_word_to_uniform(philox_u32(stream, index));
}

double philox_uniform_double(const PhiloxStream& stream, uint64_t index) {
  uint64_t hi = philox_u32(stream, 2 * index);
  uint64_t lo = philox_u32(stream, 2 * index + 1);
  uint64_t bits = ((hi << 32) | lo) >> 11;
  return static_cast<double>(bits) * (1.0 / 9007199254740992.0);
}

double philox_normal(const PhiloxStream& stream, uint64_t index) {
  double u1 = philox_uniform_double(stream, 2 * index);
  double u2 = philox_uniform_double(stream, 2 * index + 1);
  double radius = std::sqrt(-2.0 * std::log(1.0 - u1));  // 1-u1 in (0, 1]: log is finite
  return radius * std::cos(kTwoPi * u2);
}

uint64_t philox_below(const PhiloxStream& stream, uint64_t index, uint64_t bound) {
  CHECK_GT(bound, 0u);
  uint64_t hi = philox_u32(stream, 2 * index);
  uint64_t lo = philox_u32(stream, 2 * index + 1);
  Uint128 product = static_cast<Uint128>((hi << 32) | lo) * bound;
  return static_cast<uint64_t>(product >> 64);
}

}  // namespace moeasr
