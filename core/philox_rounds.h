// core/philox_rounds.h — the Philox4x32 round function (Salmon et al., SC'11; multipliers
// 0xD2511F53/0xCD9E8D57, Weyl key increments 0x9E3779B9/0xBB67AE85, as published), header-only so that
// the CPU (core/philox.cc) and the CUDA kernels (kernels/cuda/dropout_cuda.cu) run the same code and
// draw the same words for the same (key, counter).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MOEASR_HOST_DEVICE __host__ __device__
#else
#define MOEASR_HOST_DEVICE
#endif

namespace moeasr {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

// One Philox4x32 round on the counter words (c0, c1, c2, c3) with the round's key (key0, key1), in
// place. Separate from the loop below so that the CPU's many-block form (philox_block_batch in
// core/philox.cc, one round over 16 counters at a time) runs this same body.
MOEASR_HOST_DEVICE inline void philox4x32_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3,
                                                uint32_t key0, uint32_t key1) {
  const uint64_t product0 = static_cast<uint64_t>(kPhiloxM0) * c0;
  const uint64_t product1 = static_cast<uint64_t>(kPhiloxM1) * c2;
  const uint32_t next0 = static_cast<uint32_t>(product1 >> 32) ^ c1 ^ key0;
  const uint32_t next2 = static_cast<uint32_t>(product0 >> 32) ^ c3 ^ key1;
  c0 = next0;
  c1 = static_cast<uint32_t>(product1);
  c2 = next2;
  c3 = static_cast<uint32_t>(product0);
}

// counter[0..3] = Philox4x32-`rounds`(counter, key {key0, key1}), in place. Round r > 0 uses the key
// bumped r times by the Weyl increments.
MOEASR_HOST_DEVICE inline void philox4x32_rounds(uint32_t* counter,  // [4]
                                                 uint32_t key0, uint32_t key1, int rounds) {
  for (int round = 0; round < rounds; ++round) {
    if (round > 0) {
      key0 += kPhiloxW0;
      key1 += kPhiloxW1;
    }
    philox4x32_round(counter[0], counter[1], counter[2], counter[3], key0, key1);
  }
}

}  // namespace moeasr
