// kernels/cuda/cuda_check.h — CUDA_CHECK: wraps a CUDA runtime call; on error prints the call, the
// CUDA error string, file:line, rank and host (through core/check.h) and aborts the job.
#pragma once

#include <cuda_runtime.h>

#include "core/check.h"

#define CUDA_CHECK(call)                                                                                 \
  do {                                                                                                   \
    cudaError_t moeasr_cuda_err_ = (call);                                                               \
    CHECK(moeasr_cuda_err_ == cudaSuccess) << #call << " failed: " << cudaGetErrorName(moeasr_cuda_err_) \
                                           << " (" << cudaGetErrorString(moeasr_cuda_err_) << ")";       \
  } while (0)
