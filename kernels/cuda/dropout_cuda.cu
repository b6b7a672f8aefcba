// kernels/cuda/dropout_cuda.cu — Philox inverted dropout on the GPU (see dropout_cuda.h).
// One thread per Philox block (4 consecutive elements), grid-stride; the Philox4x32-10 rounds are
// core/philox_rounds.h's, the CPU's own code, with core/philox.cc's word order (counter = {block low,
// block high, stream.counter_hi[0], stream.counter_hi[1]}, key = stream.key), so the words are identical.
#include <cuda_bf16.h>

#include <cstdint>

#include "core/check.h"
#include "core/philox_rounds.h"
#include "kernels/cuda/bf16_device.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dropout_cuda.h"

namespace moeasr {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

// The stream's key and upper counter words, passed to kernels by value.
struct PhiloxStreamWords {
  uint32_t key0, key1, hi0, hi1;
};

PhiloxStreamWords stream_words(const PhiloxStream& stream) {
  return {stream.key[0], stream.key[1], stream.counter_hi[0], stream.counter_hi[1]};
}

// The 4 words of Philox4x32-10 block `block` of the stream (core/philox.h's philox_block).
__device__ __forceinline__ uint4 philox_block_device(const PhiloxStreamWords& s, uint64_t block) {
  uint32_t c[4] = {static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), s.hi0, s.hi1};
  philox4x32_rounds(c, s.key0, s.key1, 10);
  return make_uint4(c[0], c[1], c[2], c[3]);
}

// Word j (0..3) of a block: element 4 * block + j (no dynamically indexed local array).
__device__ __forceinline__ uint32_t word_of(const uint4& w, int j) {
  return j == 0 ? w.x : j == 1 ? w.y : j == 2 ? w.z : w.w;
}

// core/philox.h's philox_word_to_uniform, compared with p in double as kernels/cpu/dropout.cc does.
__device__ __forceinline__ bool keeps(uint32_t word, double p) {
  const float u = static_cast<float>(word >> 8) * (1.0f / 16777216.0f);
  return static_cast<double>(u) >= p;
}

// out[i] = kept ? in[i] * scale : 0 for the 4 elements of each Philox block.
template <class T>
__global__ void dropout_apply_kernel(T* out, const T* in, PhiloxStreamWords s, double p, float scale,
                                     int64_t n) {
  const int64_t blocks = (n + 3) / 4;
  for (int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; b < blocks;
       b += int64_t(gridDim.x) * blockDim.x) {
    const uint4 w = philox_block_device(s, static_cast<uint64_t>(b));
    const int64_t first = 4 * b;
    const int count = n - first < 4 ? static_cast<int>(n - first) : 4;
    for (int j = 0; j < count; ++j) {
      const float v = load_f32(in[first + j]);
      out[first + j] = store_as<T>(keeps(word_of(w, j), p) ? v * scale : 0.0f);
    }
  }
}

__global__ void dropout_keep_mask_kernel(uint8_t* mask, PhiloxStreamWords s, double p, int64_t n) {
  const int64_t blocks = (n + 3) / 4;
  for (int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; b < blocks;
       b += int64_t(gridDim.x) * blockDim.x) {
    const uint4 w = philox_block_device(s, static_cast<uint64_t>(b));
    const int64_t first = 4 * b;
    const int count = n - first < 4 ? static_cast<int>(n - first) : 4;
    for (int j = 0; j < count; ++j) mask[first + j] = keeps(word_of(w, j), p) ? 1 : 0;
  }
}

void check_dropout_args(double p, int64_t n) {
  CHECK(p >= 0.0 && p < 1.0) << "dropout probability " << p << " must be in [0, 1)";
  CHECK_GE(n, 0);
}

unsigned blocks_for_philox(int64_t n) {
  const int64_t philox_blocks = (n + 3) / 4;
  const int64_t blocks = (philox_blocks + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

template <class T>
void dropout_apply(T* out, const T* in, const PhiloxStream& stream, double p, int64_t n,
                   const RunContext& ctx) {
  check_dropout_args(p, n);
  if (n == 0) return;
  cudaStream_t cuda_stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  if (p == 0.0) {  // keeps everything: y = x exactly
    if (out != in) {
      CUDA_CHECK(cudaMemcpyAsync(out, in, static_cast<size_t>(n) * sizeof(T), cudaMemcpyDeviceToDevice,
                                 cuda_stream));
    }
    return;
  }
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  dropout_apply_kernel<T>
      <<<blocks_for_philox(n), kThreads, 0, cuda_stream>>>(out, in, stream_words(stream), p, scale, n);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace

template <class T>
void dropout_forward_cuda(T* y, const T* x, const PhiloxStream& stream, double p, int64_t n,
                          const RunContext& ctx) {
  dropout_apply(y, x, stream, p, n, ctx);
}

template <class T>
void dropout_backward_cuda(T* dx, const T* dy, const PhiloxStream& stream, double p, int64_t n,
                           const RunContext& ctx) {
  dropout_apply(dx, dy, stream, p, n, ctx);
}

void dropout_keep_mask_cuda(uint8_t* mask, const PhiloxStream& stream, double p, int64_t n,
                            const RunContext& ctx) {
  check_dropout_args(p, n);
  if (n == 0) return;
  dropout_keep_mask_kernel<<<blocks_for_philox(n), kThreads, 0, static_cast<cudaStream_t>(ctx.cuda_stream)>>>(
      mask, stream_words(stream), p, n);
  CUDA_CHECK(cudaGetLastError());
}

template void dropout_forward_cuda<float>(float*, const float*, const PhiloxStream&, double, int64_t,
                                          const RunContext&);
template void dropout_forward_cuda<__nv_bfloat16>(__nv_bfloat16*, const __nv_bfloat16*, const PhiloxStream&,
                                                  double, int64_t, const RunContext&);
template void dropout_backward_cuda<float>(float*, const float*, const PhiloxStream&, double, int64_t,
                                           const RunContext&);
template void dropout_backward_cuda<__nv_bfloat16>(__nv_bfloat16*, const __nv_bfloat16*, const PhiloxStream&,
                                                   double, int64_t, const RunContext&);

}  // namespace moeasr
