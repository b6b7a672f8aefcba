// core/arena.h — Arena: a bump allocator over one aligned block. moe-asr keeps three kinds
// (DESIGN.md §4): the parameter arena (flat buffers per region, for the life of the model), the
// per-step activation arena (reset every step) and a workspace (scratch inside one op).
// A fixed arena's size is planned from the config; running out is a planning bug, reported with
// needed vs available bytes. A growable host arena (for activations whose size depends on the batch)
// chains extra blocks during a step and, at reset(), replaces them with one block of 1.25x the
// high-water size, so from the second step of a given shape on it allocates nothing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"

namespace moeasr {

class Arena {
 public:
  static constexpr int64_t kAlignment = 256;  // bytes; covers AVX-512 and CUDA's 256-byte rule

  enum class Growth { kFixed, kGrowable };
  // Owns `capacity_bytes` of host memory (device memory arenas use the adopting constructor).
  Arena(std::string name, int64_t capacity_bytes, Growth growth = Growth::kFixed);
  // Adopts memory owned by someone else (e.g. a cudaMalloc'd block); never frees it.
  Arena(std::string name, void* base, int64_t capacity_bytes, Device device);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // Aligned, uninitialised. CHECK-fails with both numbers when the block is too small.
  void* allocate_bytes(int64_t bytes);
  Tensor allocate(DType dtype, Shape shape);
  // Same, zero-filled (host arenas only).
  Tensor allocate_zeroed(DType dtype, Shape shape);
  // Typed convenience for kernels and layers: n uninitialised elements of T.
  template <class T>
  T* allocate_array(int64_t n) {
    return static_cast<T*>(allocate_bytes(n * static_cast<int64_t>(sizeof(T))));
  }

  // Every Tensor handed out before is invalid afterwards. A growable arena that chained extra
  // blocks re-plans itself as one block of the high-water size.
  void reset();
  int64_t used_bytes() const { return used_; }
  int64_t high_water_bytes() const { return high_water_; }
  int64_t capacity_bytes() const { return capacity_; }
  int64_t extra_block_count() const { return static_cast<int64_t>(extra_blocks_.size()); }
  Device device() const { return device_; }
  const std::string& name() const { return name_; }

 private:
  std::string name_;
  char* base_ = nullptr;
  int64_t capacity_ = 0;
  int64_t used_ = 0;
  int64_t high_water_ = 0;
  Device device_ = Device::cpu;
  bool owns_ = false;
  Growth growth_ = Growth::kFixed;
  std::vector<char*> extra_blocks_;  // growable only: overflow blocks of the current step
  int64_t extra_used_ = 0;           // bytes handed out from extra blocks this step
};

}  // namespace moeasr
