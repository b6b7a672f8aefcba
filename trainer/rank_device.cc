// trainer/rank_device.cc — rank_cuda_device (see rank_device.h).
#include "trainer/rank_device.h"

#include "parallel/bootstrap.h"

#if MOEASR_WITH_CUDA
#include "kernels/cuda/device.h"
#endif

namespace moeasr {

StatusOr<int> rank_cuda_device(std::string* how) {
#if MOEASR_WITH_CUDA
  std::string why;
  const int devices = cuda_usable_device_count(&why);
  if (devices == 0) return failed_precondition_error("--device cuda: no usable CUDA device (" + why + ")");
  std::string source;
  StatusOr<int> local = local_rank_from_env(process_env(), &source);
  const int device = (local.ok() ? local.value() : 0) % devices;
  if (how != nullptr) {
    *how = "CUDA device " + std::to_string(device) + " of " + std::to_string(devices) + " (local rank from " +
           (local.ok() ? source : std::string("nowhere: device 0")) + ")";
  }
  return device;
#else
  (void)how;
  return invalid_argument_error(
      "--device cuda: this build has no CUDA backend (rebuild with nvcc on PATH, or -DMOEASR_CUDA=ON)");
#endif
}

}  // namespace moeasr
