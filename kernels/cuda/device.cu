// kernels/cuda/device.cu — CUDA device discovery (see device.h).
#include <cuda_runtime.h>

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

}  // namespace moeasr
