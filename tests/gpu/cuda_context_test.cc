// tests/gpu/cuda_context_test.cc — CudaContext (kernels/cuda/cuda_context.h): the handles and the
// workspace exist, fill() puts them into a RunContext, the cuDNN handle is bound to the context's
// stream, and a GEMM issued through the RunContext runs on that stream: synchronising only that stream
// is enough to read its result, and capturing the stream into a CUDA graph records the GEMM (work
// on any other stream would not be captured, or would fail the capture).
#include "kernels/cuda/cuda_context.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <vector>

#include "kernels/cpu/gemm.h"
#include "kernels/cuda/gemm_cuda.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_util.h"

namespace moeasr {
namespace {

TEST(CudaContext, CreatesHandlesAndFillsRunContext) {
  MOEASR_SKIP_WITHOUT_GPU();
  CudaContext cuda(0);
  EXPECT_EQ(cuda.device(), 0);
  EXPECT_NE(cuda.stream(), nullptr);
  EXPECT_NE(cuda.cublaslt(), nullptr);
  EXPECT_NE(cuda.cudnn(), nullptr);
  EXPECT_NE(cuda.cublaslt_workspace(), nullptr);
  EXPECT_EQ(cuda.cublaslt_workspace_bytes(), size_t(32) << 20);

  unsigned int flags = 0;
  CUDA_CHECK(cudaStreamGetFlags(cuda.stream(), &flags));
  EXPECT_EQ(flags & cudaStreamNonBlocking, static_cast<unsigned>(cudaStreamNonBlocking));
  cudaStream_t cudnn_stream = nullptr;
  CUDNN_CHECK(cudnnGetStream(cuda.cudnn(), &cudnn_stream));
  EXPECT_EQ(cudnn_stream, cuda.stream());

  RunContext ctx;
  ctx.num_threads = 3;
  cuda.fill(&ctx);
  EXPECT_EQ(ctx.device, Device::cuda);
  EXPECT_EQ(ctx.cuda_stream, static_cast<void*>(cuda.stream()));
  EXPECT_EQ(ctx.cublaslt_handle, static_cast<void*>(cuda.cublaslt()));
  EXPECT_EQ(ctx.cudnn_handle, static_cast<void*>(cuda.cudnn()));
  EXPECT_EQ(ctx.num_threads, 3);  // everything else untouched
}

// C[M,N] = A[M,K] @ B[K,N] in double on the CPU.
std::vector<double> cpu_product(const std::vector<float>& a, const std::vector<float>& b, int64_t m,
                                int64_t n, int64_t k) {
  std::vector<double> ad(a.begin(), a.end()), bd(b.begin(), b.end()), c(m * n);
  gemm<double>(c.data(), ad.data(), bd.data(), Transpose::kNo, Transpose::kNo, m, n, k, 1.0, 0.0, k, n, n,
               testing::cpu_test_context(true));
  return c;
}

TEST(CudaContext, GemmRunsOnItsStream) {
  MOEASR_SKIP_WITHOUT_GPU();
  CudaContext cuda(0);
  RunContext ctx = testing::gpu_test_context();
  cuda.fill(&ctx);
  const int64_t m = 37, n = 13, k = 29;
  const auto a = testing::random_floats(m * k, 1), b = testing::random_floats(k * n, 2);
  float *a_dev = nullptr, *b_dev = nullptr, *c_dev = nullptr;
  CUDA_CHECK(cudaMalloc(&a_dev, a.size() * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&b_dev, b.size() * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&c_dev, m * n * sizeof(float)));
  CUDA_CHECK(cudaDeviceSynchronize());
  // Everything on the context's stream; only that stream is synchronised.
  CUDA_CHECK(
      cudaMemcpyAsync(a_dev, a.data(), a.size() * sizeof(float), cudaMemcpyHostToDevice, cuda.stream()));
  CUDA_CHECK(
      cudaMemcpyAsync(b_dev, b.data(), b.size() * sizeof(float), cudaMemcpyHostToDevice, cuda.stream()));
  CUDA_CHECK(cudaMemsetAsync(c_dev, 0xFF, m * n * sizeof(float), cuda.stream()));
  gemm_cuda<float>(c_dev, cuda.cublaslt_workspace(), cuda.cublaslt_workspace_bytes(), a_dev, b_dev,
                   Transpose::kNo, Transpose::kNo, m, n, k, 1.0f, 0.0f, k, n, n, ctx);
  std::vector<float> got(m * n);
  CUDA_CHECK(
      cudaMemcpyAsync(got.data(), c_dev, got.size() * sizeof(float), cudaMemcpyDeviceToHost, cuda.stream()));
  cuda.synchronize();
  EXPECT_LE(testing::max_scaled_error(got, cpu_product(a, b, m, n, k)), testing::kFp32Tolerance);
  cudaFree(a_dev);
  cudaFree(b_dev);
  cudaFree(c_dev);
}

TEST(CudaContext, GemmIsCapturedOnItsStream) {
  MOEASR_SKIP_WITHOUT_GPU();
  CudaContext cuda(0);
  RunContext ctx = testing::gpu_test_context();
  cuda.fill(&ctx);
  const int64_t m = 16, n = 24, k = 40;
  const auto a = testing::random_floats(m * k, 3), b = testing::random_floats(k * n, 4);
  testing::DeviceBuffer<float> a_dev(a), b_dev(b), c_dev(m * n);
  CUDA_CHECK(cudaDeviceSynchronize());
  // Warm-up outside the capture (loads the kernels lazily, as one does before capturing), then re-poison C.
  gemm_cuda<float>(c_dev.get(), cuda.cublaslt_workspace(), cuda.cublaslt_workspace_bytes(), a_dev.get(),
                   b_dev.get(), Transpose::kNo, Transpose::kNo, m, n, k, 1.0f, 0.0f, k, n, n, ctx);
  cuda.synchronize();
  c_dev.poison();
  CUDA_CHECK(cudaDeviceSynchronize());

  cudaGraph_t graph = nullptr;
  CUDA_CHECK(cudaStreamBeginCapture(cuda.stream(), cudaStreamCaptureModeThreadLocal));
  gemm_cuda<float>(c_dev.get(), cuda.cublaslt_workspace(), cuda.cublaslt_workspace_bytes(), a_dev.get(),
                   b_dev.get(), Transpose::kNo, Transpose::kNo, m, n, k, 1.0f, 0.0f, k, n, n, ctx);
  CUDA_CHECK(cudaStreamEndCapture(cuda.stream(), &graph));
  size_t nodes = 0;
  CUDA_CHECK(cudaGraphGetNodes(graph, nullptr, &nodes));
  EXPECT_GT(nodes, 0u) << "the GEMM was not issued on the context's stream";

  // Nothing ran yet: C is still poisoned. Then the graph computes it.
  const auto before = c_dev.download();
  for (float v : before) ASSERT_TRUE(std::isnan(v)) << "work escaped the capture";
  cudaGraphExec_t exec = nullptr;
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_CHECK(cudaGraphLaunch(exec, cuda.stream()));
  cuda.synchronize();
  EXPECT_LE(testing::max_scaled_error(c_dev.download(), cpu_product(a, b, m, n, k)), testing::kFp32Tolerance);
  CUDA_CHECK(cudaGraphExecDestroy(exec));
  CUDA_CHECK(cudaGraphDestroy(graph));
}

}  // namespace
}  // namespace moeasr
