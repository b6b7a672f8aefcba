// core/tensor.cc — Shape arithmetic and Tensor views.
#include "core/tensor.h"

#include <sstream>

namespace moeasr {

Shape::Shape(std::initializer_list<int64_t> dims) {
  CHECK_LE(static_cast<int>(dims.size()), kMaxTensorDims) << "too many dimensions";
  for (int64_t d : dims) {
    CHECK_GE(d, 0) << "negative extent in shape";
    dims_[ndim_++] = d;
  }
}

int64_t Shape::operator[](int axis) const {
  int resolved = axis < 0 ? axis + ndim_ : axis;
  CHECK(resolved >= 0 && resolved < ndim_) << "axis " << axis << " out of range for " << to_string();
  return dims_[resolved];
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim_; ++i) n *= dims_[i];
  return n;
}

bool Shape::operator==(const Shape& other) const {
  if (ndim_ != other.ndim_) return false;
  for (int i = 0; i < ndim_; ++i) {
    if (dims_[i] != other.dims_[i]) return false;
  }
  return true;
}

std::string Shape::to_string() const {
  std::ostringstream out;
  out << "[";
  for (int i = 0; i < ndim_; ++i) out << (i ? ", " : "") << dims_[i];
  out << "]";
  return out.str();
}

Tensor Tensor::reshaped(Shape new_shape) const {
  CHECK_EQ(new_shape.numel(), numel())
      << "cannot reshape " << shape.to_string() << " to " << new_shape.to_string();
  return Tensor(data, dtype, device, new_shape);
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  CHECK_GE(ndim(), 1);
  CHECK(0 <= begin && begin <= end && end <= dim(0))
      << "rows [" << begin << ", " << end << ") of " << shape.to_string();
  int64_t row_elems = dim(0) == 0 ? 0 : numel() / dim(0);
  Shape sliced;
  switch (ndim()) {
    case 1: sliced = Shape{end - begin}; break;
    case 2: sliced = Shape{end - begin, dim(1)}; break;
    case 3: sliced = Shape{end - begin, dim(1), dim(2)}; break;
    case 4: sliced = Shape{end - begin, dim(1), dim(2), dim(3)}; break;
    case 5: sliced = Shape{end - begin, dim(1), dim(2), dim(3), dim(4)}; break;
    default: sliced = Shape{end - begin, dim(1), dim(2), dim(3), dim(4), dim(5)}; break;
  }
  char* base = static_cast<char*>(data) + begin * row_elems * dtype_size(dtype);
  return Tensor(base, dtype, device, sliced);
}

std::string Tensor::to_string() const {
  return std::string(dtype_name(dtype)) + " " + device_name(device) + " " + shape.to_string();
}

}  // namespace moeasr
