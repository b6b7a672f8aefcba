// kernels/cuda/device.cu — CUDA device discovery (see device.h).
#include <cuda_runtime.h>

#include "core/check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"

namespace moeasr {

int cuda_usable_device_count(std::string* why) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    if (why) *why = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky error so later calls are not poisoned
    return 0;
  }
  if (count == 0 && why) *why = "cudaGetDeviceCount returned 0 devices";
  return count;
}

int64_t cuda_free_bytes() {
  size_t free_bytes = 0, total_bytes = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  return static_cast<int64_t>(free_bytes);
}

DeviceMemoryBlock::DeviceMemoryBlock(std::string what, int64_t bytes) : bytes_(bytes) {
  CHECK_GE(bytes, 0) << what;
  if (bytes == 0) return;
  cudaError_t err = cudaMalloc(&data_, static_cast<size_t>(bytes));
  if (err != cudaSuccess) {
    cudaGetLastError();
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    CHECK(false)
        << "cannot allocate " << bytes << " bytes of device memory for " << what << " ("
        << cudaGetErrorString(err) << "; " << free_bytes << " of " << total_bytes
        << " bytes free): use a smaller model or batch (dataset_conf.batch_conf), or fewer ranks per GPU";
  }
}

DeviceMemoryBlock::~DeviceMemoryBlock() {
  if (data_ != nullptr) cudaFree(data_);
}

}  // namespace moeasr
