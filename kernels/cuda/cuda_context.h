// kernels/cuda/cuda_context.h — CudaContext: the CUDA execution context of one process (one device),
// RAII. It selects the device, creates a non-blocking stream, a cuBLASLt handle, a cuDNN handle bound
// to that stream and the cuBLASLt workspace (32 MiB, NVIDIA's recommendation for Hopper), and fills
// the opaque handles of a RunContext (core/run_context.h: cuda_stream, cublaslt_handle, cudnn_handle).
//
// The cuBLASLt workspace is not in RunContext (core stays CUDA-free): the GEMM-type ops take it as an
// explicit `void* workspace, size_t workspace_bytes` argument (kernels/cuda/gemm_cuda.h); callers pass
// cublaslt_workspace() / cublaslt_workspace_bytes(). One workspace serves every op issued on this
// context's stream (they run one after the other); ops on another stream need their own.
//
// Also CUBLASLT_CHECK / CUDNN_CHECK: like CUDA_CHECK (kernels/cuda/cuda_check.h), they name the call,
// the library's status and the current CUDA device, and abort through core/check.h.
// Nothing here synchronises the host except the destructor (which drains the stream before freeing).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <cstddef>

#include "core/check.h"
#include "core/run_context.h"
#include "kernels/cuda/cuda_check.h"

namespace moeasr {

// The CUDA device current on this host thread (-1 when even that query fails); for error messages.
int current_cuda_device_for_errors();

class CudaContext {
 public:
  static constexpr size_t kCublasLtWorkspaceBytes = size_t(32) << 20;  // 32 MiB

  // Makes `device` current on this thread and creates stream, handles and workspace. Any failure
  // aborts with the device number, the call and the library's error.
  explicit CudaContext(int device = 0);
  ~CudaContext();
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;
  CudaContext(CudaContext&&) = delete;
  CudaContext& operator=(CudaContext&&) = delete;

  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  cublasLtHandle_t cublaslt() const { return cublaslt_; }
  cudnnHandle_t cudnn() const { return cudnn_; }
  void* cublaslt_workspace() const { return workspace_; }
  size_t cublaslt_workspace_bytes() const { return kCublasLtWorkspaceBytes; }

  // Sets ctx->device = Device::cuda and the three opaque handles; leaves everything else alone.
  void fill(RunContext* ctx) const;
  // Waits until all work issued on stream() has finished (for tests and step boundaries, not ops).
  void synchronize() const;

 private:
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasLtHandle_t cublaslt_ = nullptr;
  cudnnHandle_t cudnn_ = nullptr;
  void* workspace_ = nullptr;
};

}  // namespace moeasr

#define CUBLASLT_CHECK(call)                                                             \
  do {                                                                                   \
    cublasStatus_t moeasr_lt_status_ = (call);                                           \
    CHECK(moeasr_lt_status_ == CUBLAS_STATUS_SUCCESS)                                    \
        << "CUDA device " << ::moeasr::current_cuda_device_for_errors() << ": " << #call \
        << " failed: " << cublasLtGetStatusName(moeasr_lt_status_) << " ("               \
        << cublasLtGetStatusString(moeasr_lt_status_) << ")";                            \
  } while (0)

#define CUDNN_CHECK(call)                                                                \
  do {                                                                                   \
    cudnnStatus_t moeasr_cudnn_status_ = (call);                                         \
    CHECK(moeasr_cudnn_status_ == CUDNN_STATUS_SUCCESS)                                  \
        << "CUDA device " << ::moeasr::current_cuda_device_for_errors() << ": " << #call \
        << " failed: " << cudnnGetErrorString(moeasr_cudnn_status_);                     \
  } while (0)
