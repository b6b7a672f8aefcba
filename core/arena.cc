// core/arena.cc — bump allocation with alignment and a high-water mark.
#include "core/arena.h"

#include <cstdlib>
#include <cstring>
#include <utility>

namespace moeasr {

Arena::Arena(std::string name, int64_t capacity_bytes)
    : name_(std::move(name)), capacity_(capacity_bytes), device_(Device::cpu), owns_(true) {
  CHECK_GE(capacity_bytes, 0);
  int64_t rounded = (capacity_bytes + kAlignment - 1) / kAlignment * kAlignment;
  if (rounded > 0) {
    base_ = static_cast<char*>(std::aligned_alloc(kAlignment, static_cast<size_t>(rounded)));
    CHECK(base_ != nullptr) << "arena '" << name_ << "': cannot allocate " << rounded
                            << " bytes of host memory";
  }
}

Arena::Arena(std::string name, void* base, int64_t capacity_bytes, Device device)
    : name_(std::move(name)), base_(static_cast<char*>(base)), capacity_(capacity_bytes), device_(device) {
  CHECK(base != nullptr || capacity_bytes == 0);
  CHECK_EQ(reinterpret_cast<uintptr_t>(base) % kAlignment, 0u) << "arena '" << name_ << "' base not aligned";
}

Arena::~Arena() {
  if (owns_) std::free(base_);
}

void* Arena::allocate_bytes(int64_t bytes) {
  CHECK_GE(bytes, 0);
  int64_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  CHECK_LE(used_ + rounded, capacity_)
      << "arena '" << name_ << "' is too small: needed " << used_ + rounded << " bytes, available "
      << capacity_ << " (plan a larger arena from the config)";
  void* result = base_ + used_;
  used_ += rounded;
  if (used_ > high_water_) high_water_ = used_;
  return result;
}

Tensor Arena::allocate(DType dtype, Shape shape) {
  void* data = allocate_bytes(shape.numel() * dtype_size(dtype));
  return Tensor(data, dtype, device_, shape);
}

Tensor Arena::allocate_zeroed(DType dtype, Shape shape) {
  CHECK(device_ == Device::cpu) << "allocate_zeroed on device arena '" << name_ << "'";
  Tensor t = allocate(dtype, shape);
  if (t.nbytes() > 0) std::memset(t.data, 0, static_cast<size_t>(t.nbytes()));
  return t;
}

}  // namespace moeasr
