// core/arena.cc — bump allocation with alignment and a high-water mark.
#include "core/arena.h"

#include <cstdlib>
#include <cstring>
#include <utility>

namespace moeasr {

namespace {

int64_t round_up(int64_t bytes, int64_t alignment) {
  return (bytes + alignment - 1) / alignment * alignment;
}

char* allocate_host_block(const std::string& name, int64_t bytes) {
  if (bytes == 0) return nullptr;
  void* block = std::aligned_alloc(Arena::kAlignment, static_cast<size_t>(bytes));
  CHECK(block != nullptr) << "arena '" << name << "': cannot allocate " << bytes << " bytes of host memory";
  return static_cast<char*>(block);
}

}  // namespace

Arena::Arena(std::string name, int64_t capacity_bytes, Growth growth)
    : name_(std::move(name)), device_(Device::cpu), owns_(true), growth_(growth) {
  CHECK_GE(capacity_bytes, 0);
  capacity_ = round_up(capacity_bytes, kAlignment);
  base_ = allocate_host_block(name_, capacity_);
}

Arena::Arena(std::string name, void* base, int64_t capacity_bytes, Device device)
    : name_(std::move(name)), base_(static_cast<char*>(base)), capacity_(capacity_bytes), device_(device) {
  CHECK(base != nullptr || capacity_bytes == 0);
  CHECK_EQ(reinterpret_cast<uintptr_t>(base) % kAlignment, 0u) << "arena '" << name_ << "' base not aligned";
}

Arena::~Arena() {
  for (char* block : extra_blocks_) std::free(block);
  if (owns_) std::free(base_);
}

void Arena::reset() {
  if (!extra_blocks_.empty()) {
    for (char* block : extra_blocks_) std::free(block);
    extra_blocks_.clear();
    std::free(base_);
    // Headroom: per-step sizes vary (MoE routing changes how many rows each expert gets), and every
    // re-plan costs fresh pages.
    capacity_ = round_up(high_water_ + high_water_ / 4, kAlignment);
    base_ = allocate_host_block(name_, capacity_);
  }
  used_ = 0;
  extra_used_ = 0;
}

void* Arena::allocate_bytes(int64_t bytes) {
  CHECK_GE(bytes, 0);
  int64_t rounded = round_up(bytes, kAlignment);
  if (growth_ == Growth::kGrowable && used_ + rounded > capacity_) {
    // Overflow block of exactly this request; the step's total is remembered for reset().
    char* block = allocate_host_block(name_, rounded > 0 ? rounded : kAlignment);
    extra_blocks_.push_back(block);
    extra_used_ += rounded;
    if (used_ + extra_used_ > high_water_) high_water_ = used_ + extra_used_;
    return block;
  }
  CHECK_LE(used_ + rounded, capacity_)
      << "arena '" << name_ << "' is too small: needed " << used_ + rounded << " bytes, available "
      << capacity_ << " (plan a larger arena from the config)";
  void* result = base_ + used_;
  used_ += rounded;
  if (used_ + extra_used_ > high_water_) high_water_ = used_ + extra_used_;
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
