// kernels/cuda/cuda_context.cc — CudaContext (see cuda_context.h). Every failure names the device
// and the call.
#include "kernels/cuda/cuda_context.h"

// Inside CudaContext's members: the device is device_, whichever device is current.
#define MOEASR_CTX_CUDA(call)                                                                         \
  do {                                                                                                \
    cudaError_t moeasr_ctx_err_ = (call);                                                             \
    CHECK(moeasr_ctx_err_ == cudaSuccess) << "CudaContext(device " << device_ << "): " << #call       \
                                          << " failed: " << cudaGetErrorName(moeasr_ctx_err_) << " (" \
                                          << cudaGetErrorString(moeasr_ctx_err_) << ")";              \
  } while (0)

#define MOEASR_CTX_LT(call)                                             \
  do {                                                                  \
    cublasStatus_t moeasr_ctx_lt_ = (call);                             \
    CHECK(moeasr_ctx_lt_ == CUBLAS_STATUS_SUCCESS)                      \
        << "CudaContext(device " << device_ << "): " << #call           \
        << " failed: " << cublasLtGetStatusName(moeasr_ctx_lt_) << " (" \
        << cublasLtGetStatusString(moeasr_ctx_lt_) << ")";              \
  } while (0)

#define MOEASR_CTX_CUDNN(call)                                                                             \
  do {                                                                                                     \
    cudnnStatus_t moeasr_ctx_dnn_ = (call);                                                                \
    CHECK(moeasr_ctx_dnn_ == CUDNN_STATUS_SUCCESS) << "CudaContext(device " << device_ << "): " << #call   \
                                                   << " failed: " << cudnnGetErrorString(moeasr_ctx_dnn_); \
  } while (0)

namespace moeasr {

int current_cuda_device_for_errors() {
  int device = -1;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();  // do not leave a sticky error behind in an error path
    return -1;
  }
  return device;
}

CudaContext::CudaContext(int device) : device_(device) {
  int count = 0;
  MOEASR_CTX_CUDA(cudaGetDeviceCount(&count));
  CHECK(device >= 0 && device < count)
      << "CudaContext(device " << device << "): this process sees " << count << " CUDA device(s)";
  MOEASR_CTX_CUDA(cudaSetDevice(device));
  MOEASR_CTX_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  MOEASR_CTX_LT(cublasLtCreate(&cublaslt_));
  MOEASR_CTX_CUDNN(cudnnCreate(&cudnn_));
  MOEASR_CTX_CUDNN(cudnnSetStream(cudnn_, stream_));
  MOEASR_CTX_CUDA(cudaMalloc(&workspace_, kCublasLtWorkspaceBytes));
}

CudaContext::~CudaContext() {
  // Best effort: a destructor must not abort. Drain the stream so no kernel still uses the workspace.
  cudaSetDevice(device_);
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  if (workspace_ != nullptr) cudaFree(workspace_);
  if (cudnn_ != nullptr) cudnnDestroy(cudnn_);
  if (cublaslt_ != nullptr) cublasLtDestroy(cublaslt_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
  cudaGetLastError();
}

void CudaContext::fill(RunContext* ctx) const {
  CHECK(ctx != nullptr);
  ctx->device = Device::cuda;
  ctx->cuda_stream = stream_;
  ctx->cublaslt_handle = cublaslt_;
  ctx->cudnn_handle = cudnn_;
}

void CudaContext::synchronize() const {
  MOEASR_CTX_CUDA(cudaStreamSynchronize(stream_));
}

}  // namespace moeasr
