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

// counter[0..3] = Philox4x32-`rounds`(counter, key {key0, key1}), in place.
MOEASR_HOST_DEVICE inline void philox4x32_rounds(uint32_t* counter,  // [4]
                                                 uint32_t key0, uint32_t key1, int rounds) {
  for (int round = 0; round < rounds; ++round) {
    if (round > 0) {
      key0 += kPhiloxW0;
      key1 += kPhiloxW1;
    }
    const uint64_t product0 = static_cast<uint64_t>(kPhiloxM0) * counter[0];
    const uint64_t product1 = static_cast<uint64_t>(kPhiloxM1) * counter[2];
    const uint32_t next0 = static_cast<uint32_t>(product1 >> 32) ^ counter[1] ^ key0;
    const uint32_t next2 = static_cast<uint32_t>(product0 >> 32) ^ counter[3] ^ key1;
    counter[0] = next0;
    counter[1] = static_cast<uint32_t>(product1);
    counter[2] = next2;
    counter[3] = static_cast<uint32_t>(product0);
  }
}

}  // namespace moeasr
