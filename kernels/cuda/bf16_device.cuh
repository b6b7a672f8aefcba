// kernels/cuda/bf16_device.cuh — the fp32 <-> storage-type conversions every CUDA kernel file uses:
// load_f32 widens float or bf16 to fp32, store_as<T> narrows fp32 to T with core/dtype.h's
// float_to_bf16_bits rounding (round to nearest even; a NaN stays a quiet NaN with its sign), so a
// bf16 written on the GPU has the bits the CPU would write.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace moeasr {

__device__ __forceinline__ uint16_t float_to_bf16_bits_device(float value) {
  uint32_t bits = __float_as_uint(value);
  if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0) {
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  }
  uint32_t rounding_bias = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding_bias) >> 16);
}

__device__ __forceinline__ float load_f32(float v) {
  return v;
}
__device__ __forceinline__ float load_f32(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <class T>
__device__ __forceinline__ T store_as(float v);
template <>
__device__ __forceinline__ float store_as<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 store_as<__nv_bfloat16>(float v) {
  return __ushort_as_bfloat16(float_to_bf16_bits_device(v));
}

}  // namespace moeasr
