// core/tensor.h — Tensor: a non-owning view (data pointer, dtype, device, shape). Row-major with
// the last dimension contiguous, dimensions in PyTorch order: a batch of features is [B, T, F].
// Memory is owned elsewhere (an Arena, a parameter buffer, a loader's batch); a Tensor never frees.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/check.h"
#include "core/dtype.h"

namespace moeasr {

constexpr int kMaxTensorDims = 6;

// Up to kMaxTensorDims extents, each >= 0. numel() of a 0-d shape is 1.
class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);

  int ndim() const { return ndim_; }
  int64_t operator[](int axis) const;  // negative axes count from the end
  int64_t numel() const;
  bool operator==(const Shape& other) const;
  bool operator!=(const Shape& other) const { return !(*this == other); }
  std::string to_string() const;  // "[4, 500, 80]"

 private:
  int64_t dims_[kMaxTensorDims] = {0, 0, 0, 0, 0, 0};
  int ndim_ = 0;
};

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::f32;
  Device device = Device::cpu;
  Shape shape;

  Tensor() = default;
  Tensor(void* data_in, DType dtype_in, Device device_in, Shape shape_in)
      : data(data_in), dtype(dtype_in), device(device_in), shape(shape_in) {}

  int64_t numel() const { return shape.numel(); }
  int64_t nbytes() const { return numel() * dtype_size(dtype); }
  int ndim() const { return shape.ndim(); }
  int64_t dim(int axis) const { return shape[axis]; }
  bool empty() const { return numel() == 0; }

  // Typed pointer; CHECKs that T matches the dtype (use raw `data` for bf16/f16 bits).
  template <class T>
  T* as() const {
    CHECK(dtype == DTypeOf<T>::value)
        << "tensor holds " << dtype_name(dtype) << ", asked for " << dtype_name(DTypeOf<T>::value);
    return static_cast<T*>(data);
  }

  // Same memory, another shape with the same element count.
  Tensor reshaped(Shape new_shape) const;
  // Rows [begin, end) of dimension 0; contiguous by construction.
  Tensor rows(int64_t begin, int64_t end) const;
  std::string to_string() const;  // "f32 cpu [4, 500, 80]"
};

// A Tensor over memory of type T held by the caller (tests, small host buffers).
template <class T>
Tensor tensor_view(T* data, Shape shape, Device device = Device::cpu) {
  return Tensor(static_cast<void*>(data), DTypeOf<T>::value, device, shape);
}

}  // namespace moeasr
