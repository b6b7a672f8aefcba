// core/dtype.h — element types and devices of moe-asr tensors, and the scalar conversions between
// fp32 and the 16-bit storage types (bf16 as in Google Brain float, f16 as IEEE 754 binary16).
// Conversions round to nearest even and keep NaN/inf, as PyTorch's .to(dtype) does.
#pragma once

#include <cstdint>

namespace moeasr {

enum class DType : uint8_t { f32, f64, bf16, f16, i32, i64, u8 };
enum class Device : uint8_t { cpu, cuda };

int64_t dtype_size(DType dtype);      // bytes per element
const char* dtype_name(DType dtype);  // "f32", "bf16", ...
const char* device_name(Device device);

// bf16: the upper 16 bits of an fp32, rounded to nearest even.
uint16_t float_to_bf16_bits(float value);
float bf16_bits_to_float(uint16_t bits);

// A bf16 element as host code holds it: its 16 bits, the layout of CUDA's __nv_bfloat16. Host code does
// not compute in it (the CUDA kernels widen to fp32); the conversions are explicit.
struct bf16 {
  uint16_t bits = 0;
  bf16() = default;
  explicit bf16(float value) : bits(float_to_bf16_bits(value)) {}
  explicit operator float() const { return bf16_bits_to_float(bits); }
};

// Accum<T>: the type that tensors stored as T accumulate in, and the type of what a model storing its
// activations in T keeps wider: parameter masters and gradients, normalisation statistics, routing
// weights, the CTC log-probabilities, losses and op scalars. float for bf16; T itself otherwise (so
// the float and double paths have one type throughout).
template <class T>
struct AccumOf {
  using type = T;
};
template <>
struct AccumOf<bf16> {
  using type = float;
};
template <class T>
using Accum = typename AccumOf<T>::type;

template <class T>
struct DTypeOf;
template <>
struct DTypeOf<float> {
  static constexpr DType value = DType::f32;
};
template <>
struct DTypeOf<bf16> {
  static constexpr DType value = DType::bf16;
};
template <>
struct DTypeOf<double> {
  static constexpr DType value = DType::f64;
};
template <>
struct DTypeOf<int32_t> {
  static constexpr DType value = DType::i32;
};
template <>
struct DTypeOf<int64_t> {
  static constexpr DType value = DType::i64;
};
template <>
struct DTypeOf<uint8_t> {
  static constexpr DType value = DType::u8;
};

// f16: IEEE 754 binary16 with subnormals, rounded to nearest even; overflow gives inf.
uint16_t float_to_f16_bits(float value);
float f16_bits_to_float(uint16_t bits);

}  // namespace moeasr
