// kernels/cuda/device.h — CUDA device discovery for the backend and the gpu tests (how many devices
// this process can use, and why none when there are none: no driver, no device), free device memory,
// and an owned device allocation for the arenas that adopt device memory (core/arena.h).
#pragma once

#include <cstdint>
#include <string>

namespace moeasr {

// Number of usable CUDA devices; 0 when there is no driver or no device, with the reason in *why.
int cuda_usable_device_count(std::string* why);

// Free bytes of the current device (cudaMemGetInfo).
int64_t cuda_free_bytes();

// `bytes` of device memory on the current device, freed on destruction. Running out CHECK-fails with
// the bytes asked for, the bytes free and what the block was for.
class DeviceMemoryBlock {
 public:
  DeviceMemoryBlock(std::string what, int64_t bytes);
  ~DeviceMemoryBlock();
  DeviceMemoryBlock(const DeviceMemoryBlock&) = delete;
  DeviceMemoryBlock& operator=(const DeviceMemoryBlock&) = delete;
  void* data() const { return data_; }
  int64_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  int64_t bytes_ = 0;
};

}  // namespace moeasr
