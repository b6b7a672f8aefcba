// kernels/cuda/norm_cuda.cu — LayerNorm and channels-last BatchNorm1d on the GPU (see norm_cuda.h).
//   LayerNorm forward/backward dx: one thread block per row (32..256 threads by C), two-pass
//     statistics accumulated in double with a fixed-shape block reduction (warp shuffles, then one
//     warp over the warp sums); the normalisation itself in fp32.
//   Per-channel sums over rows (LayerNorm dweight/dbias, BatchNorm statistics and grads): a (32, 8)
//     block covers 32 channels of one chunk of kRowsPerChunk rows; each thread sums its rows in order
//     (in double), the 8 partials of a column are added in order, and the chunk's result goes to the
//     workspace; a second kernel (one thread per channel) combines the chunks in order. No atomics:
//     bitwise reproducible.
//   BatchNorm statistics: each chunk gives (mean, M2) by two passes over its rows; chunks are merged
//     with Chan et al.'s pairwise formula in double, so a large common offset keeps its precision.
#include <cuda_bf16.h>

#include <cstdint>

#include "core/check.h"
#include "kernels/cuda/bf16_device.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/norm_cuda.h"

namespace moeasr {
namespace {

constexpr int64_t kRowsPerChunk = 256;  // rows per column-partial chunk
constexpr int kColTile = 32;            // channels per column-partial block (blockDim.x)
constexpr int kColRows = 8;             // row lanes per column-partial block (blockDim.y)
constexpr int kThreads = 256;           // elementwise kernels
constexpr int64_t kMaxBlocks = 65535;
constexpr int64_t kMaxGridY = 65535;

__device__ __forceinline__ double warp_sum(double v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the same
// bits. scratch: [32] shared doubles. Every thread of the block must call it.
__device__ double block_sum(double v, double* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  double total = lane < warps ? scratch[lane] : 0.0;
  total = warp_sum(total);
  __syncthreads();  // scratch may be reused by the next call
  return total;
}

inline int row_threads(int64_t c) {
  if (c <= 32) return 32;
  if (c <= 64) return 64;
  if (c <= 128) return 128;
  return 256;
}

inline unsigned blocks_for(int64_t n) {
  int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

inline int64_t chunks_for(int64_t n) {
  return (n + kRowsPerChunk - 1) / kRowsPerChunk;
}

inline cudaStream_t stream_of(const RunContext& ctx) {
  return static_cast<cudaStream_t>(ctx.cuda_stream);
}

// ---- LayerNorm ---------------------------------------------------------------------------------

template <class T>
__global__ void layer_norm_forward_kernel(T* out, float* mean, float* rstd, const T* x, const float* weight,
                                          const float* bias, float eps, int64_t c) {
  __shared__ double scratch[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * c;
  T* outr = out + row * c;
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) s += static_cast<double>(load_f32(xr[j]));
  const double mean_d = block_sum(s, scratch) / static_cast<double>(c);
  double q = 0.0;
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
    double d = static_cast<double>(load_f32(xr[j])) - mean_d;
    q += d * d;
  }
  const double var = block_sum(q, scratch) / static_cast<double>(c);
  const float m = static_cast<float>(mean_d);
  const float rs = static_cast<float>(1.0 / sqrt(var + static_cast<double>(eps)));
  if (threadIdx.x == 0) {
    mean[row] = m;
    rstd[row] = rs;
  }
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
    float xhat = (load_f32(xr[j]) - m) * rs;
    float w = weight != nullptr ? weight[j] : 1.0f;
    float b = bias != nullptr ? bias[j] : 0.0f;
    outr[j] = store_as<T>(xhat * w + b);
  }
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * weight.
template <class T>
__global__ void layer_norm_backward_dx_kernel(T* dx, const T* dout, const T* x, const float* mean,
                                              const float* rstd, const float* weight, int64_t c) {
  __shared__ double scratch[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * c;
  const T* dyr = dout + row * c;
  T* dxr = dx + row * c;
  const float m = mean[row], rs = rstd[row];
  double sg = 0.0, sgx = 0.0;
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
    float xhat = (load_f32(xr[j]) - m) * rs;
    float g = load_f32(dyr[j]) * (weight != nullptr ? weight[j] : 1.0f);
    sg += static_cast<double>(g);
    sgx += static_cast<double>(g * xhat);
  }
  const float mean_g = static_cast<float>(block_sum(sg, scratch) / static_cast<double>(c));
  const float mean_gx = static_cast<float>(block_sum(sgx, scratch) / static_cast<double>(c));
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
    float xhat = (load_f32(xr[j]) - m) * rs;
    float g = load_f32(dyr[j]) * (weight != nullptr ? weight[j] : 1.0f);
    dxr[j] = store_as<T>(rs * (g - mean_g - xhat * mean_gx));
  }
}

// ---- per-channel sums over rows ---------------------------------------------------------------------

// Where xhat's statistics come from in the column-partial kernel.
enum class StatsLayout {
  kPerRow,        // mean[row], rstd[row] (LayerNorm)
  kPerColumn,     // mean[col], rstd[col] (BatchNorm training: saved statistics)
  kPerColumnVar,  // mean[col], rstd = 1 / sqrt(var[col] + eps) (BatchNorm eval: running statistics)
};

// part_dy[chunk, col] = sum of dout, part_dyxhat[chunk, col] = sum of dout * xhat over the chunk's rows.
// Grid (ceil(C / 32), chunks), block (32, 8).
template <class T, StatsLayout kLayout>
__global__ void column_grad_partials_kernel(double* part_dy,      // [chunks, C]
                                            double* part_dyxhat,  // [chunks, C]
                                            const T* dout, const T* x, const float* mean,
                                            const float* stat,  // rstd (or var for kPerColumnVar)
                                            float eps, int64_t n, int64_t c) {
  __shared__ double s_dy[kColRows][kColTile];
  __shared__ double s_dyx[kColRows][kColTile];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kColTile + tx;
  const int64_t chunk = blockIdx.y;
  const int64_t r0 = chunk * kRowsPerChunk;
  const int64_t r1 = r0 + kRowsPerChunk < n ? r0 + kRowsPerChunk : n;
  double a = 0.0, b = 0.0;
  if (col < c) {
    float cm = 0.0f, crs = 0.0f;
    if (kLayout == StatsLayout::kPerColumn) {
      cm = mean[col];
      crs = stat[col];
    } else if (kLayout == StatsLayout::kPerColumnVar) {
      cm = mean[col];
      crs = 1.0f / sqrtf(stat[col] + eps);
    }
    for (int64_t r = r0 + ty; r < r1; r += kColRows) {
      const float m = kLayout == StatsLayout::kPerRow ? mean[r] : cm;
      const float rs = kLayout == StatsLayout::kPerRow ? stat[r] : crs;
      const float dy = load_f32(dout[r * c + col]);
      a += static_cast<double>(dy);
      b += static_cast<double>(dy * ((load_f32(x[r * c + col]) - m) * rs));
    }
  }
  s_dy[ty][tx] = a;
  s_dyx[ty][tx] = b;
  __syncthreads();
  if (ty == 0 && col < c) {
    double sa = 0.0, sb = 0.0;
    for (int k = 0; k < kColRows; ++k) {
      sa += s_dy[k][tx];
      sb += s_dyx[k][tx];
    }
    part_dy[chunk * c + col] = sa;
    part_dyxhat[chunk * c + col] = sb;
  }
}

// Combines the chunks in order (double): dbias += sum_dy, dweight += sum_dyxhat; optionally saves the
// sums for the BatchNorm dx kernel.
__global__ void column_grad_reduce_kernel(float* dweight, float* dbias, float* sum_dy, float* sum_dyxhat,
                                          const double* part_dy, const double* part_dyxhat, int64_t chunks,
                                          int64_t c) {
  for (int64_t col = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; col < c;
       col += int64_t(gridDim.x) * blockDim.x) {
    double a = 0.0, b = 0.0;
    for (int64_t k = 0; k < chunks; ++k) {
      a += part_dy[k * c + col];
      b += part_dyxhat[k * c + col];
    }
    if (dbias != nullptr) dbias[col] += static_cast<float>(a);
    if (dweight != nullptr) dweight[col] += static_cast<float>(b);
    if (sum_dy != nullptr) sum_dy[col] = static_cast<float>(a);
    if (sum_dyxhat != nullptr) sum_dyxhat[col] = static_cast<float>(b);
  }
}

// Both kernels of the per-channel grad sums; part_* live in the workspace.
template <class T, StatsLayout kLayout>
void launch_column_grad_sums(float* dweight, float* dbias, float* sum_dy, float* sum_dyxhat, double* part_dy,
                             double* part_dyxhat, const T* dout, const T* x, const float* mean,
                             const float* stat, float eps, int64_t n, int64_t c, cudaStream_t stream) {
  const int64_t chunks = chunks_for(n);
  CHECK_LE(chunks, kMaxGridY) << "too many rows (" << n << ") for the column reduction";
  dim3 grid(static_cast<unsigned>((c + kColTile - 1) / kColTile), static_cast<unsigned>(chunks));
  dim3 block(kColTile, kColRows);
  column_grad_partials_kernel<T, kLayout>
      <<<grid, block, 0, stream>>>(part_dy, part_dyxhat, dout, x, mean, stat, eps, n, c);
  CUDA_CHECK(cudaGetLastError());
  column_grad_reduce_kernel<<<blocks_for(c), kThreads, 0, stream>>>(dweight, dbias, sum_dy, sum_dyxhat,
                                                                    part_dy, part_dyxhat, chunks, c);
  CUDA_CHECK(cudaGetLastError());
}

// ---- BatchNorm -------------------------------------------------------------------------------------

// part_mean[chunk, col], part_m2[chunk, col]: mean and sum of squared deviations of the chunk's rows.
// Grid (ceil(C / 32), chunks), block (32, 8).
template <class T>
__global__ void batch_norm_stats_partials_kernel(double* part_mean, double* part_m2, const T* x, int64_t n,
                                                 int64_t c) {
  __shared__ double s[kColRows][kColTile];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kColTile + tx;
  const int64_t chunk = blockIdx.y;
  const int64_t r0 = chunk * kRowsPerChunk;
  const int64_t r1 = r0 + kRowsPerChunk < n ? r0 + kRowsPerChunk : n;
  double a = 0.0;
  if (col < c) {
    for (int64_t r = r0 + ty; r < r1; r += kColRows) a += static_cast<double>(load_f32(x[r * c + col]));
  }
  s[ty][tx] = a;
  __syncthreads();
  double sum = 0.0;
  for (int k = 0; k < kColRows; ++k) sum += s[k][tx];
  const double chunk_mean = sum / static_cast<double>(r1 - r0);
  __syncthreads();  // everyone has read s before it is overwritten
  double q = 0.0;
  if (col < c) {
    for (int64_t r = r0 + ty; r < r1; r += kColRows) {
      double d = static_cast<double>(load_f32(x[r * c + col])) - chunk_mean;
      q += d * d;
    }
  }
  s[ty][tx] = q;
  __syncthreads();
  if (ty == 0 && col < c) {
    double m2 = 0.0;
    for (int k = 0; k < kColRows; ++k) m2 += s[k][tx];
    part_mean[chunk * c + col] = chunk_mean;
    part_m2[chunk * c + col] = m2;
  }
}

// Merges the chunks in order (Chan et al., in double), saves mean and rstd, updates running stats.
__global__ void batch_norm_stats_reduce_kernel(float* save_mean, float* save_rstd, float* running_mean,
                                               float* running_var, const double* part_mean,
                                               const double* part_m2, float momentum, float eps, int64_t n,
                                               int64_t chunks, int64_t c) {
  for (int64_t col = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; col < c;
       col += int64_t(gridDim.x) * blockDim.x) {
    double count = 0.0, mean = 0.0, m2 = 0.0;
    for (int64_t k = 0; k < chunks; ++k) {
      const int64_t rows = n - k * kRowsPerChunk < kRowsPerChunk ? n - k * kRowsPerChunk : kRowsPerChunk;
      const double nb = static_cast<double>(rows);
      const double mb = part_mean[k * c + col];
      const double total = count + nb;
      const double delta = mb - mean;
      mean += delta * (nb / total);
      m2 += part_m2[k * c + col] + delta * delta * (count * nb / total);
      count = total;
    }
    const double var = m2 / static_cast<double>(n);
    save_mean[col] = static_cast<float>(mean);
    save_rstd[col] = static_cast<float>(1.0 / sqrt(var + static_cast<double>(eps)));
    if (running_mean != nullptr) {
      const double m = static_cast<double>(momentum);
      const double unbias = static_cast<double>(n) / static_cast<double>(n - 1);
      running_mean[col] = static_cast<float>((1.0 - m) * static_cast<double>(running_mean[col]) + m * mean);
      running_var[col] =
          static_cast<float>((1.0 - m) * static_cast<double>(running_var[col]) + m * var * unbias);
    }
  }
}

// out = (x - mean[col]) * rstd * w + b; rstd = stat[col], or 1 / sqrt(stat[col] + eps) with kFromVar.
template <class T, bool kFromVar>
__global__ void batch_norm_apply_kernel(T* out, const T* x, const float* mean, const float* stat,
                                        const float* weight, const float* bias, float eps, int64_t n,
                                        int64_t c) {
  const int64_t total = n * c;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t col = e % c;
    const float rs = kFromVar ? 1.0f / sqrtf(stat[col] + eps) : stat[col];
    const float xhat = (load_f32(x[e]) - mean[col]) * rs;
    const float w = weight != nullptr ? weight[col] : 1.0f;
    const float b = bias != nullptr ? bias[col] : 0.0f;
    out[e] = store_as<T>(xhat * w + b);
  }
}

// Training: dx = w * rstd * (dy - sum_dy / N - xhat * sum_dyxhat / N).
template <class T>
__global__ void batch_norm_train_dx_kernel(T* dx, const T* dout, const T* x, const float* mean,
                                           const float* rstd, const float* weight, const float* sum_dy,
                                           const float* sum_dyxhat, int64_t n, int64_t c) {
  const int64_t total = n * c;
  const float inv_n = 1.0f / static_cast<float>(n);
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t col = e % c;
    const float rs = rstd[col];
    const float xhat = (load_f32(x[e]) - mean[col]) * rs;
    const float w = weight != nullptr ? weight[col] : 1.0f;
    const float dy = load_f32(dout[e]) - (sum_dy[col] * inv_n + xhat * sum_dyxhat[col] * inv_n);
    dx[e] = store_as<T>(w * rs * dy);
  }
}

// Eval: dx = w * rstd * dy with rstd = 1 / sqrt(running_var + eps).
template <class T>
__global__ void batch_norm_eval_dx_kernel(T* dx, const T* dout, const float* running_var, const float* weight,
                                          float eps, int64_t n, int64_t c) {
  const int64_t total = n * c;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t col = e % c;
    const float rs = 1.0f / sqrtf(running_var[col] + eps);
    const float w = weight != nullptr ? weight[col] : 1.0f;
    dx[e] = store_as<T>(w * rs * load_f32(dout[e]));
  }
}

void check_workspace(void* workspace, size_t workspace_bytes, size_t needed, const char* op) {
  CHECK_GE(workspace_bytes, needed) << op << ": workspace too small";
  CHECK(needed == 0 || workspace != nullptr) << op << ": null workspace";
  CHECK_EQ(reinterpret_cast<uintptr_t>(workspace) % 16, 0u) << op << ": workspace not 16-byte aligned";
}

// Workspace layout of the column sums: [part_a: chunks*C][part_b: chunks*C] doubles, then
// [sum_a: C][sum_b: C] floats.
struct ColumnWorkspace {
  double* part_a;
  double* part_b;
  float* sum_a;
  float* sum_b;
};

ColumnWorkspace split_workspace(void* workspace, int64_t n, int64_t c) {
  double* base = static_cast<double*>(workspace);
  const int64_t part = chunks_for(n) * c;
  float* sums = reinterpret_cast<float*>(base + 2 * part);
  return {base, base + part, sums, sums + c};
}

size_t column_workspace_bytes(int64_t n, int64_t c) {
  return static_cast<size_t>(2 * chunks_for(n) * c) * sizeof(double) +
         static_cast<size_t>(2 * c) * sizeof(float);
}

}  // namespace

size_t layer_norm_workspace_bytes(int64_t n, int64_t c) {
  CHECK_GE(n, 0);
  CHECK_GE(c, 0);
  return column_workspace_bytes(n, c);
}

size_t batch_norm_workspace_bytes(int64_t n, int64_t c) {
  CHECK_GE(n, 0);
  CHECK_GE(c, 0);
  return column_workspace_bytes(n, c);
}

template <class T>
void layer_norm_forward_cuda(T* out, float* mean, float* rstd, const T* x, const float* weight,
                             const float* bias, float eps, int64_t n, int64_t c, const RunContext& ctx) {
  CHECK_GE(n, 0);
  if (n == 0) return;
  CHECK_GT(c, 0) << "LayerNorm over an empty last dimension";
  CHECK_LE(n, int64_t(2147483647)) << "LayerNorm: one block per row";
  layer_norm_forward_kernel<T><<<static_cast<unsigned>(n), row_threads(c), 0, stream_of(ctx)>>>(
      out, mean, rstd, x, weight, bias, eps, c);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void layer_norm_backward_cuda(T* dx, float* dweight, float* dbias, const T* dout, const T* x,
                              const float* mean, const float* rstd, const float* weight, int64_t n, int64_t c,
                              void* workspace, size_t workspace_bytes, const RunContext& ctx) {
  CHECK_GE(n, 0);
  if (n == 0) return;
  CHECK_GT(c, 0) << "LayerNorm over an empty last dimension";
  CHECK_LE(n, int64_t(2147483647)) << "LayerNorm: one block per row";
  cudaStream_t stream = stream_of(ctx);
  if (dx != nullptr) {
    layer_norm_backward_dx_kernel<T>
        <<<static_cast<unsigned>(n), row_threads(c), 0, stream>>>(dx, dout, x, mean, rstd, weight, c);
    CUDA_CHECK(cudaGetLastError());
  }
  if (dweight != nullptr || dbias != nullptr) {
    check_workspace(workspace, workspace_bytes, layer_norm_workspace_bytes(n, c), "layer_norm_backward_cuda");
    ColumnWorkspace ws = split_workspace(workspace, n, c);
    launch_column_grad_sums<T, StatsLayout::kPerRow>(dweight, dbias, nullptr, nullptr, ws.part_a, ws.part_b,
                                                     dout, x, mean, rstd, 0.0f, n, c, stream);
  }
}

template <class T>
void batch_norm_train_forward_cuda(T* out, float* save_mean, float* save_rstd, float* running_mean,
                                   float* running_var, const T* x, const float* weight, const float* bias,
                                   float momentum, float eps, int64_t n, int64_t c, void* workspace,
                                   size_t workspace_bytes, const RunContext& ctx) {
  CHECK_GE(n, 0);
  CHECK_GE(c, 0);
  CHECK(n != 1) << "BatchNorm training needs more than 1 value per channel (got N = 1, C = " << c
                << "), as torch.nn.BatchNorm1d";
  if (n == 0 || c == 0) return;
  CHECK((running_mean == nullptr) == (running_var == nullptr)) << "running_mean and running_var go together";
  check_workspace(workspace, workspace_bytes, batch_norm_workspace_bytes(n, c),
                  "batch_norm_train_forward_cuda");
  cudaStream_t stream = stream_of(ctx);
  ColumnWorkspace ws = split_workspace(workspace, n, c);
  const int64_t chunks = chunks_for(n);
  CHECK_LE(chunks, kMaxGridY) << "too many rows (" << n << ") for the column reduction";
  dim3 grid(static_cast<unsigned>((c + kColTile - 1) / kColTile), static_cast<unsigned>(chunks));
  dim3 block(kColTile, kColRows);
  batch_norm_stats_partials_kernel<T><<<grid, block, 0, stream>>>(ws.part_a, ws.part_b, x, n, c);
  CUDA_CHECK(cudaGetLastError());
  batch_norm_stats_reduce_kernel<<<blocks_for(c), kThreads, 0, stream>>>(
      save_mean, save_rstd, running_mean, running_var, ws.part_a, ws.part_b, momentum, eps, n, chunks, c);
  CUDA_CHECK(cudaGetLastError());
  batch_norm_apply_kernel<T, false>
      <<<blocks_for(n * c), kThreads, 0, stream>>>(out, x, save_mean, save_rstd, weight, bias, eps, n, c);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void batch_norm_train_backward_cuda(T* dx, float* dweight, float* dbias, const T* dout, const T* x,
                                    const float* save_mean, const float* save_rstd, const float* weight,
                                    int64_t n, int64_t c, void* workspace, size_t workspace_bytes,
                                    const RunContext& ctx) {
  CHECK_GE(n, 0);
  CHECK_GE(c, 0);
  CHECK(n != 1) << "BatchNorm training needs more than 1 value per channel";
  if (n == 0 || c == 0) return;
  if (dx == nullptr && dweight == nullptr && dbias == nullptr) return;
  check_workspace(workspace, workspace_bytes, batch_norm_workspace_bytes(n, c),
                  "batch_norm_train_backward_cuda");
  cudaStream_t stream = stream_of(ctx);
  ColumnWorkspace ws = split_workspace(workspace, n, c);
  launch_column_grad_sums<T, StatsLayout::kPerColumn>(dweight, dbias, ws.sum_a, ws.sum_b, ws.part_a,
                                                      ws.part_b, dout, x, save_mean, save_rstd, 0.0f, n, c,
                                                      stream);
  if (dx != nullptr) {
    batch_norm_train_dx_kernel<T><<<blocks_for(n * c), kThreads, 0, stream>>>(
        dx, dout, x, save_mean, save_rstd, weight, ws.sum_a, ws.sum_b, n, c);
    CUDA_CHECK(cudaGetLastError());
  }
}

template <class T>
void batch_norm_eval_forward_cuda(T* out, const T* x, const float* running_mean, const float* running_var,
                                  const float* weight, const float* bias, float eps, int64_t n, int64_t c,
                                  const RunContext& ctx) {
  CHECK_GE(n, 0);
  CHECK_GE(c, 0);
  if (n == 0 || c == 0) return;
  batch_norm_apply_kernel<T, true><<<blocks_for(n * c), kThreads, 0, stream_of(ctx)>>>(
      out, x, running_mean, running_var, weight, bias, eps, n, c);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void batch_norm_eval_backward_cuda(T* dx, float* dweight, float* dbias, const T* dout, const T* x,
                                   const float* running_mean, const float* running_var, const float* weight,
                                   float eps, int64_t n, int64_t c, void* workspace, size_t workspace_bytes,
                                   const RunContext& ctx) {
  CHECK_GE(n, 0);
  CHECK_GE(c, 0);
  if (n == 0 || c == 0) return;
  cudaStream_t stream = stream_of(ctx);
  if (dweight != nullptr || dbias != nullptr) {
    check_workspace(workspace, workspace_bytes, batch_norm_workspace_bytes(n, c),
                    "batch_norm_eval_backward_cuda");
    ColumnWorkspace ws = split_workspace(workspace, n, c);
    launch_column_grad_sums<T, StatsLayout::kPerColumnVar>(dweight, dbias, nullptr, nullptr, ws.part_a,
                                                           ws.part_b, dout, x, running_mean, running_var, eps,
                                                           n, c, stream);
  }
  if (dx != nullptr) {
    batch_norm_eval_dx_kernel<T>
        <<<blocks_for(n * c), kThreads, 0, stream>>>(dx, dout, running_var, weight, eps, n, c);
    CUDA_CHECK(cudaGetLastError());
  }
}

#define MOEASR_INSTANTIATE_NORM_CUDA(T)                                                                      \
  template void layer_norm_forward_cuda<T>(T*, float*, float*, const T*, const float*, const float*, float,  \
                                           int64_t, int64_t, const RunContext&);                             \
  template void layer_norm_backward_cuda<T>(T*, float*, float*, const T*, const T*, const float*,            \
                                            const float*, const float*, int64_t, int64_t, void*, size_t,     \
                                            const RunContext&);                                              \
  template void batch_norm_train_forward_cuda<T>(T*, float*, float*, float*, float*, const T*, const float*, \
                                                 const float*, float, float, int64_t, int64_t, void*,        \
                                                 size_t, const RunContext&);                                 \
  template void batch_norm_train_backward_cuda<T>(T*, float*, float*, const T*, const T*, const float*,      \
                                                  const float*, const float*, int64_t, int64_t, void*,       \
                                                  size_t, const RunContext&);                                \
  template void batch_norm_eval_forward_cuda<T>(T*, const T*, const float*, const float*, const float*,      \
                                                const float*, float, int64_t, int64_t, const RunContext&);   \
  template void batch_norm_eval_backward_cuda<T>(T*, float*, float*, const T*, const T*, const float*,       \
                                                 const float*, const float*, float, int64_t, int64_t, void*, \
                                                 size_t, const RunContext&);

MOEASR_INSTANTIATE_NORM_CUDA(float)
MOEASR_INSTANTIATE_NORM_CUDA(__nv_bfloat16)

#undef MOEASR_INSTANTIATE_NORM_CUDA

}  // namespace moeasr
