// kernels/cuda/elementwise_cuda.cu — elementwise ops and GLU on the GPU (see elementwise_cuda.h).
// Every op is one grid-stride kernel over a functor: one element per thread per iteration, loaded to
// fp32, computed in fp32, stored once as T. Sigmoid uses the CPU's overflow-free form (exp only of a
// non-positive argument). Launches go on ctx.cuda_stream and are checked with cudaGetLastError.
#include <cuda_bf16.h>

#include <cstdint>

#include "core/check.h"
#include "kernels/cuda/bf16_device.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/elementwise_cuda.h"

namespace moeasr {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

// 1 / (1 + exp(-x)) without overflow, as kernels/cpu/elementwise.cc's stable_sigmoid.
__device__ __forceinline__ float stable_sigmoid(float x) {
  if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
  float e = expf(x);
  return e / (1.0f + e);
}

inline unsigned blocks_for(int64_t n) {
  int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

inline cudaStream_t stream_of(const RunContext& ctx) {
  return static_cast<cudaStream_t>(ctx.cuda_stream);
}

// ---- kernels ------------------------------------------------------------------------------------

// out[i] = f(a[i]) for unary ops, f(a[i], b[i]) for binary ones (b may be null for unary functors).
template <class T, class F>
__global__ void map_kernel(T* out, const T* a, const T* b, F f, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float av = load_f32(a[i]);
    float bv = b != nullptr ? load_f32(b[i]) : 0.0f;
    out[i] = store_as<T>(f(av, bv));
  }
}

struct AddOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct CopyOp {
  __device__ float operator()(float a, float) const { return a; }
};
struct ScaleOp {
  float alpha;
  __device__ float operator()(float a, float) const { return alpha * a; }
};
struct ResidualOp {  // a = x, b = y
  float alpha;
  __device__ float operator()(float a, float b) const { return a + alpha * b; }
};
struct ReluOp {
  __device__ float operator()(float a, float) const { return a > 0.0f ? a : 0.0f; }
};
struct ReluBackwardOp {  // a = dout, b = x
  __device__ float operator()(float a, float b) const { return b > 0.0f ? a : 0.0f; }
};
struct SiluOp {
  __device__ float operator()(float a, float) const { return a * stable_sigmoid(a); }
};
struct SiluBackwardOp {  // a = dout, b = x
  __device__ float operator()(float a, float b) const {
    float s = stable_sigmoid(b);
    return a * s * (1.0f + b * (1.0f - s));
  }
};
struct SigmoidOp {
  __device__ float operator()(float a, float) const { return stable_sigmoid(a); }
};
struct SigmoidBackwardOp {  // a = dout, b = out
  __device__ float operator()(float a, float b) const { return a * b * (1.0f - b); }
};

template <class T, class F>
void launch_map(T* out, const T* a, const T* b, F f, int64_t n, const RunContext& ctx) {
  CHECK_GE(n, 0);
  if (n == 0) return;
  map_kernel<T, F><<<blocks_for(n), kThreads, 0, stream_of(ctx)>>>(out, a, b, f, n);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
__global__ void add_scaled_inplace_kernel(T* acc, const T* x, float alpha, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    acc[i] = store_as<T>(load_f32(acc[i]) + alpha * load_f32(x[i]));
  }
}

// Element e of the [N, C] output: row r = e / C, column j = e % C.
template <class T>
__global__ void glu_forward_kernel(T* out, const T* x, int64_t n, int64_t c) {
  const int64_t total = n * c;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    int64_t r = e / c, j = e - r * c;
    const T* xr = x + r * 2 * c;
    out[e] = store_as<T>(load_f32(xr[j]) * stable_sigmoid(load_f32(xr[c + j])));
  }
}

template <class T>
__global__ void glu_backward_kernel(T* dx, const T* dout, const T* x, int64_t n, int64_t c) {
  const int64_t total = n * c;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    int64_t r = e / c, j = e - r * c;
    const T* xr = x + r * 2 * c;
    T* dxr = dx + r * 2 * c;
    float a = load_f32(xr[j]), s = stable_sigmoid(load_f32(xr[c + j])), g = load_f32(dout[e]);
    dxr[j] = store_as<T>(g * s);
    dxr[c + j] = store_as<T>(g * a * s * (1.0f - s));
  }
}

__global__ void cast_f32_to_bf16_kernel(__nv_bfloat16* out, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    out[i] = __ushort_as_bfloat16(float_to_bf16_bits_device(x[i]));
  }
}

__global__ void cast_bf16_to_f32_kernel(float* out, const __nv_bfloat16* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    out[i] = __uint_as_float(static_cast<uint32_t>(__bfloat16_as_ushort(x[i])) << 16);
  }
}

}  // namespace

template <class T>
void add_forward_cuda(T* out, const T* a, const T* b, int64_t n, const RunContext& ctx) {
  launch_map(out, a, b, AddOp{}, n, ctx);
}

template <class T>
void add_backward_cuda(T* da, T* db, const T* dout, int64_t n, const RunContext& ctx) {
  if (da != nullptr) launch_map(da, dout, static_cast<const T*>(nullptr), CopyOp{}, n, ctx);
  if (db != nullptr) launch_map(db, dout, static_cast<const T*>(nullptr), CopyOp{}, n, ctx);
}

template <class T>
void scale_forward_cuda(T* out, const T* x, float alpha, int64_t n, const RunContext& ctx) {
  launch_map(out, x, static_cast<const T*>(nullptr), ScaleOp{alpha}, n, ctx);
}

template <class T>
void scale_backward_cuda(T* dx, const T* dout, float alpha, int64_t n, const RunContext& ctx) {
  scale_forward_cuda(dx, dout, alpha, n, ctx);
}

template <class T>
void residual_add_forward_cuda(T* out, const T* x, const T* y, float alpha, int64_t n,
                               const RunContext& ctx) {
  launch_map(out, x, y, ResidualOp{alpha}, n, ctx);
}

template <class T>
void residual_add_backward_cuda(T* dx, T* dy, const T* dout, float alpha, int64_t n, const RunContext& ctx) {
  if (dx != nullptr) launch_map(dx, dout, static_cast<const T*>(nullptr), CopyOp{}, n, ctx);
  if (dy != nullptr) scale_forward_cuda(dy, dout, alpha, n, ctx);
}

template <class T>
void add_scaled_inplace_cuda(T* acc, const T* x, float alpha, int64_t n, const RunContext& ctx) {
  CHECK_GE(n, 0);
  if (n == 0) return;
  add_scaled_inplace_kernel<T><<<blocks_for(n), kThreads, 0, stream_of(ctx)>>>(acc, x, alpha, n);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void relu_forward_cuda(T* out, const T* x, int64_t n, const RunContext& ctx) {
  launch_map(out, x, static_cast<const T*>(nullptr), ReluOp{}, n, ctx);
}

template <class T>
void relu_backward_cuda(T* dx, const T* dout, const T* x, int64_t n, const RunContext& ctx) {
  launch_map(dx, dout, x, ReluBackwardOp{}, n, ctx);
}

template <class T>
void silu_forward_cuda(T* out, const T* x, int64_t n, const RunContext& ctx) {
  launch_map(out, x, static_cast<const T*>(nullptr), SiluOp{}, n, ctx);
}

template <class T>
void silu_backward_cuda(T* dx, const T* dout, const T* x, int64_t n, const RunContext& ctx) {
  launch_map(dx, dout, x, SiluBackwardOp{}, n, ctx);
}

template <class T>
void sigmoid_forward_cuda(T* out, const T* x, int64_t n, const RunContext& ctx) {
  launch_map(out, x, static_cast<const T*>(nullptr), SigmoidOp{}, n, ctx);
}

template <class T>
void sigmoid_backward_cuda(T* dx, const T* dout, const T* out, int64_t n, const RunContext& ctx) {
  launch_map(dx, dout, out, SigmoidBackwardOp{}, n, ctx);
}

template <class T>
void glu_forward_cuda(T* out, const T* x, int64_t n, int64_t c, const RunContext& ctx) {
  CHECK_GE(n, 0);
  CHECK_GE(c, 0);
  if (n == 0 || c == 0) return;
  glu_forward_kernel<T><<<blocks_for(n * c), kThreads, 0, stream_of(ctx)>>>(out, x, n, c);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void glu_backward_cuda(T* dx, const T* dout, const T* x, int64_t n, int64_t c, const RunContext& ctx) {
  CHECK_GE(n, 0);
  CHECK_GE(c, 0);
  if (n == 0 || c == 0) return;
  glu_backward_kernel<T><<<blocks_for(n * c), kThreads, 0, stream_of(ctx)>>>(dx, dout, x, n, c);
  CUDA_CHECK(cudaGetLastError());
}

void cast_f32_to_bf16_cuda(__nv_bfloat16* out, const float* x, int64_t n, const RunContext& ctx) {
  CHECK_GE(n, 0);
  if (n == 0) return;
  cast_f32_to_bf16_kernel<<<blocks_for(n), kThreads, 0, stream_of(ctx)>>>(out, x, n);
  CUDA_CHECK(cudaGetLastError());
}

void cast_bf16_to_f32_cuda(float* out, const __nv_bfloat16* x, int64_t n, const RunContext& ctx) {
  CHECK_GE(n, 0);
  if (n == 0) return;
  cast_bf16_to_f32_kernel<<<blocks_for(n), kThreads, 0, stream_of(ctx)>>>(out, x, n);
  CUDA_CHECK(cudaGetLastError());
}

#define MOEASR_INSTANTIATE_ELEMENTWISE_CUDA(T)                                                           \
  template void add_forward_cuda<T>(T*, const T*, const T*, int64_t, const RunContext&);                 \
  template void add_backward_cuda<T>(T*, T*, const T*, int64_t, const RunContext&);                      \
  template void scale_forward_cuda<T>(T*, const T*, float, int64_t, const RunContext&);                  \
  template void scale_backward_cuda<T>(T*, const T*, float, int64_t, const RunContext&);                 \
  template void residual_add_forward_cuda<T>(T*, const T*, const T*, float, int64_t, const RunContext&); \
  template void residual_add_backward_cuda<T>(T*, T*, const T*, float, int64_t, const RunContext&);      \
  template void add_scaled_inplace_cuda<T>(T*, const T*, float, int64_t, const RunContext&);             \
  template void relu_forward_cuda<T>(T*, const T*, int64_t, const RunContext&);                          \
  template void relu_backward_cuda<T>(T*, const T*, const T*, int64_t, const RunContext&);               \
  template void silu_forward_cuda<T>(T*, const T*, int64_t, const RunContext&);                          \
  template void silu_backward_cuda<T>(T*, const T*, const T*, int64_t, const RunContext&);               \
  template void sigmoid_forward_cuda<T>(T*, const T*, int64_t, const RunContext&);                       \
  template void sigmoid_backward_cuda<T>(T*, const T*, const T*, int64_t, const RunContext&);            \
  template void glu_forward_cuda<T>(T*, const T*, int64_t, int64_t, const RunContext&);                  \
  template void glu_backward_cuda<T>(T*, const T*, const T*, int64_t, int64_t, const RunContext&);

MOEASR_INSTANTIATE_ELEMENTWISE_CUDA(float)
MOEASR_INSTANTIATE_ELEMENTWISE_CUDA(__nv_bfloat16)

#undef MOEASR_INSTANTIATE_ELEMENTWISE_CUDA

}  // namespace moeasr
