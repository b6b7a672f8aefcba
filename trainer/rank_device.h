// trainer/rank_device.h — which CUDA device a rank uses for `--device cuda` (train and recognize): its
// local rank on the host (OMPI_COMM_WORLD_LOCAL_RANK under mpirun, SLURM_LOCALID under srun; device 0
// without either) modulo the usable devices, as DESIGN.md §6 says.
#pragma once

#include <string>

#include "core/status.h"

namespace moeasr {

// The device index, and in *how "CUDA device d of n (local rank from <variable>)". FailedPrecondition
// when no device is usable (the driver's reason in the message); InvalidArgument when this build has
// no CUDA backend. Both messages start with "--device cuda: ".
StatusOr<int> rank_cuda_device(std::string* how);

}  // namespace moeasr
