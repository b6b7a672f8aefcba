// kernels/cuda/masks_cuda.cu — WeNet's attention masks on the GPU (the CUDA twin of
// kernels/cpu/masks.cc): one grid-stride kernel per mask, one thread per output byte, each byte a pure
// function of its index, the sizes and lengths[b] (or memory_valid[b, t]). See masks_cuda.h.
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/masks_cuda.h"

namespace moeasr {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride beyond this

unsigned blocks_for(int64_t n) {
  int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

// The [start, end) key window of query row i in subsequent_chunk_mask (masks.cc chunk_window).
__device__ inline void chunk_window(int64_t i, int64_t chunk_size, int64_t num_left_chunks, int64_t length,
                                    int64_t* start, int64_t* end) {
  int64_t chunk = i / chunk_size;
  int64_t s = (chunk - num_left_chunks) * chunk_size;
  *start = num_left_chunks < 0 ? 0 : (s > 0 ? s : 0);
  int64_t e = (chunk + 1) * chunk_size;
  *end = e < length ? e : length;
}

__global__ void valid_mask_kernel(uint8_t* mask, const int32_t* lengths, int64_t max_len, int64_t total) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = idx / max_len, t = idx % max_len;
    mask[idx] = t < lengths[b] ? 1 : 0;
  }
}

__global__ void causal_mask_kernel(uint8_t* mask, int64_t length, int64_t total) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = idx / length, j = idx % length;
    mask[idx] = j <= i ? 1 : 0;
  }
}

// lengths == nullptr: no key padding (make_chunk_mask); else mask[b, i, j] also needs j < lengths[b].
__global__ void chunk_mask_kernel(uint8_t* mask, const int32_t* lengths, int64_t chunk_size,
                                  int64_t num_left_chunks, int64_t length, int64_t total) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = idx / length, j = idx % length;
    const int64_t b = row / length, i = row % length;
    int64_t start = 0, end = 0;
    chunk_window(i, chunk_size, num_left_chunks, length, &start, &end);
    if (lengths != nullptr && end > lengths[b]) end = lengths[b];
    mask[idx] = (j >= start && j < end) ? 1 : 0;
  }
}

__global__ void decoder_mask_kernel(uint8_t* mask, const int32_t* lengths, int64_t length, int64_t total) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = idx / length, j = idx % length;
    const int64_t b = row / length, i = row % length;
    mask[idx] = (j <= i && j < lengths[b]) ? 1 : 0;
  }
}

// mask[b, u, t] = memory_valid[b, t]; idx runs over [B, U, T].
__global__ void cross_mask_kernel(uint8_t* mask, const uint8_t* memory_valid, int64_t steps, int64_t frames,
                                  int64_t total) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = idx % frames, b = idx / (steps * frames);
    mask[idx] = memory_valid[b * frames + t];
  }
}

}  // namespace

void make_valid_mask_cuda(uint8_t* mask, const int32_t* lengths, int64_t batch, int64_t max_len,
                          const RunContext& ctx) {
  CHECK_GE(batch, 0);
  CHECK_GE(max_len, 0);
  const int64_t total = batch * max_len;
  if (total == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  valid_mask_kernel<<<blocks_for(total), kThreads, 0, stream>>>(mask, lengths, max_len, total);
  CUDA_CHECK(cudaGetLastError());
}

void make_causal_mask_cuda(uint8_t* mask, int64_t length, const RunContext& ctx) {
  CHECK_GE(length, 0);
  const int64_t total = length * length;
  if (total == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  causal_mask_kernel<<<blocks_for(total), kThreads, 0, stream>>>(mask, length, total);
  CUDA_CHECK(cudaGetLastError());
}

void make_chunk_mask_cuda(uint8_t* mask, int64_t chunk_size, int64_t num_left_chunks, int64_t length,
                          const RunContext& ctx) {
  CHECK_GT(chunk_size, 0);
  CHECK_GE(length, 0);
  const int64_t total = length * length;
  if (total == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  chunk_mask_kernel<<<blocks_for(total), kThreads, 0, stream>>>(mask, nullptr, chunk_size, num_left_chunks,
                                                                length, total);
  CUDA_CHECK(cudaGetLastError());
}

void make_chunk_attention_mask_cuda(uint8_t* mask, const int32_t* lengths, int64_t chunk_size,
                                    int64_t num_left_chunks, int64_t batch, int64_t length,
                                    const RunContext& ctx) {
  CHECK_GT(chunk_size, 0);
  CHECK_GE(batch, 0);
  CHECK_GE(length, 0);
  const int64_t total = batch * length * length;
  if (total == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  chunk_mask_kernel<<<blocks_for(total), kThreads, 0, stream>>>(mask, lengths, chunk_size, num_left_chunks,
                                                                length, total);
  CUDA_CHECK(cudaGetLastError());
}

void make_decoder_self_attention_mask_cuda(uint8_t* mask, const int32_t* lengths, int64_t batch,
                                           int64_t length, const RunContext& ctx) {
  CHECK_GE(batch, 0);
  CHECK_GE(length, 0);
  const int64_t total = batch * length * length;
  if (total == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  decoder_mask_kernel<<<blocks_for(total), kThreads, 0, stream>>>(mask, lengths, length, total);
  CUDA_CHECK(cudaGetLastError());
}

void make_cross_attention_mask_cuda(uint8_t* mask, const uint8_t* memory_valid, int64_t batch, int64_t steps,
                                    int64_t frames, const RunContext& ctx) {
  CHECK_GE(batch, 0);
  CHECK_GE(steps, 0);
  CHECK_GE(frames, 0);
  const int64_t total = batch * steps * frames;
  if (total == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  cross_mask_kernel<<<blocks_for(total), kThreads, 0, stream>>>(mask, memory_valid, steps, frames, total);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace moeasr
