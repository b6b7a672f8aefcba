// kernels/cuda/conv_cuda.cu — Conv2d 3x3/stride 2 through cuDNN (fp32, explicit deterministic
// algorithms) and channels-last depthwise Conv1d with own kernels (see conv_cuda.h).
#include <cuda_bf16.h>
#include <cudnn.h>

#include <algorithm>
#include <climits>
#include <type_traits>

#include "kernels/cuda/bf16_device.cuh"
#include "kernels/cuda/conv_cuda.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/cuda_context.h"

namespace moeasr {
namespace {

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n elements (n > 0).
unsigned grid_for(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535));
}

// ---- small element-wise kernels ----------------------------------------------------------------------

template <class TIn, class TOut>
__global__ void convert_kernel(TOut* out, const TIn* in, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = store_as<TOut>(load_f32(in[i]));
}

template <class TIn, class TOut>
void convert(TOut* out, const TIn* in, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  convert_kernel<TIn, TOut><<<grid_for(n), kThreads, 0, stream>>>(out, in, n);
  CUDA_CHECK(cudaGetLastError());
}

// y[b, co, p] = (conv ? conv[b, co, p] : 0) + (bias ? bias[co] : 0), rounded once to T. conv may alias y
// (T = float): each element is read and written by the same thread.
template <class T>
__global__ void conv2d_finish_kernel(T* y, const float* conv, const T* bias, int64_t batch, int64_t channels,
                                     int64_t positions) {
  const int64_t n = batch * channels * positions;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float v = conv != nullptr ? conv[i] : 0.0f;
    if (bias != nullptr) v += load_f32(bias[(i / positions) % channels]);
    y[i] = store_as<T>(v);
  }
}

// dbias[co] += sum over (b, p) of dy[b, co, p]: one block per channel; thread i sums elements
// i, i + 256, ... in order, then a fixed tree over the threads. Deterministic.
template <class T>
__global__ void channel_sum_accumulate_kernel(float* dbias, const T* dy, int64_t batch, int64_t channels,
                                              int64_t positions) {
  __shared__ float partial[kThreads];
  const int64_t co = blockIdx.x;
  const int64_t count = batch * positions;
  float acc = 0.0f;
  for (int64_t e = threadIdx.x; e < count; e += kThreads) {
    const int64_t b = e / positions;
    const int64_t p = e % positions;
    acc += load_f32(dy[(b * channels + co) * positions + p]);
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (static_cast<int>(threadIdx.x) < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) dbias[co] += partial[0];
}

// ---- cuDNN plan for one conv2d_3x3s2 shape -------------------------------------------------------------

struct TensorDesc {
  cudnnTensorDescriptor_t d = nullptr;
  ~TensorDesc() {
    if (d) cudnnDestroyTensorDescriptor(d);
  }
};
struct FilterDesc {
  cudnnFilterDescriptor_t d = nullptr;
  ~FilterDesc() {
    if (d) cudnnDestroyFilterDescriptor(d);
  }
};
struct ConvDesc {
  cudnnConvolutionDescriptor_t d = nullptr;
  ~ConvDesc() {
    if (d) cudnnDestroyConvolutionDescriptor(d);
  }
};

struct Conv2dPlan {
  TensorDesc x, y;  // [B, Cin, H, W], [B, Cout, Ho, Wo], fp32 NCHW
  FilterDesc w;     // [Cout, Cin, 3, 3] fp32
  ConvDesc conv;    // no padding, stride 2, dilation 1, cross-correlation, fp32 compute, FMA math
  cudnnConvolutionFwdAlgo_t fwd = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
  cudnnConvolutionBwdDataAlgo_t bwd_data = CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;
  cudnnConvolutionBwdFilterAlgo_t bwd_filter = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1;
  size_t fwd_bytes = 0, bwd_data_bytes = 0, bwd_filter_bytes = 0;
  size_t cudnn_bytes() const { return std::max(fwd_bytes, std::max(bwd_data_bytes, bwd_filter_bytes)); }
};

int to_int(int64_t v, const char* what) {
  CHECK(v >= 0 && v <= INT_MAX) << "conv2d_3x3s2_cuda: " << what << " = " << v
                                << " exceeds cuDNN's int range";
  return static_cast<int>(v);
}

// Builds the descriptors and picks, for each pass, the first algorithm of a fixed deterministic list
// whose workspace query succeeds (see conv_cuda.h). Host-only cuDNN calls.
void make_conv2d_plan(Conv2dPlan* plan, cudnnHandle_t handle, int64_t batch, int64_t in_channels,
                      int64_t out_channels, int64_t height, int64_t width, int64_t out_h, int64_t out_w) {
  to_int(batch * in_channels * height * width, "B*Cin*H*W");
  to_int(batch * out_channels * out_h * out_w, "B*Cout*Ho*Wo");
  to_int(out_channels * in_channels * 9, "Cout*Cin*9");
  const int b = to_int(batch, "B"), ci = to_int(in_channels, "Cin"), co = to_int(out_channels, "Cout");
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&plan->x.d));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(plan->x.d, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, b, ci,
                                         to_int(height, "H"), to_int(width, "W")));
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&plan->y.d));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(plan->y.d, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, b, co,
                                         to_int(out_h, "Ho"), to_int(out_w, "Wo")));
  CUDNN_CHECK(cudnnCreateFilterDescriptor(&plan->w.d));
  CUDNN_CHECK(cudnnSetFilter4dDescriptor(plan->w.d, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, co, ci, 3, 3));
  CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&plan->conv.d));
  CUDNN_CHECK(cudnnSetConvolution2dDescriptor(plan->conv.d, 0, 0, 2, 2, 1, 1, CUDNN_CROSS_CORRELATION,
                                              CUDNN_DATA_FLOAT));
  CUDNN_CHECK(cudnnSetConvolutionMathType(plan->conv.d, CUDNN_FMA_MATH));  // fp32 FMA only: no TF32

  int on = 0, oc = 0, oh = 0, ow = 0;
  CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(plan->conv.d, plan->x.d, plan->w.d, &on, &oc, &oh, &ow));
  CHECK(on == b && oc == co && oh == out_h && ow == out_w)
      << "conv2d_3x3s2_cuda: cuDNN output dims " << on << "x" << oc << "x" << oh << "x" << ow << ", expected "
      << b << "x" << co << "x" << out_h << "x" << out_w;

  const cudnnConvolutionFwdAlgo_t fwd_list[] = {CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                                                CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
                                                CUDNN_CONVOLUTION_FWD_ALGO_GEMM};
  bool found = false;
  for (cudnnConvolutionFwdAlgo_t algo : fwd_list) {
    size_t bytes = 0;
    if (cudnnGetConvolutionForwardWorkspaceSize(handle, plan->x.d, plan->w.d, plan->conv.d, plan->y.d, algo,
                                                &bytes) == CUDNN_STATUS_SUCCESS) {
      plan->fwd = algo;
      plan->fwd_bytes = bytes;
      found = true;
      break;
    }
  }
  CHECK(found) << "CUDA device " << current_cuda_device_for_errors()
               << ": conv2d_3x3s2_cuda: no deterministic cuDNN forward algorithm for B=" << b << " Cin=" << ci
               << " Cout=" << co << " H=" << height << " W=" << width;

  const cudnnConvolutionBwdDataAlgo_t data_list[] = {
      CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING,
      CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT, CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED};
  found = false;
  for (cudnnConvolutionBwdDataAlgo_t algo : data_list) {
    size_t bytes = 0;
    if (cudnnGetConvolutionBackwardDataWorkspaceSize(handle, plan->w.d, plan->y.d, plan->conv.d, plan->x.d,
                                                     algo, &bytes) == CUDNN_STATUS_SUCCESS) {
      plan->bwd_data = algo;
      plan->bwd_data_bytes = bytes;
      found = true;
      break;
    }
  }
  CHECK(found) << "CUDA device " << current_cuda_device_for_errors()
               << ": conv2d_3x3s2_cuda: no deterministic cuDNN backward-data algorithm for B=" << b
               << " Cin=" << ci << " Cout=" << co << " H=" << height << " W=" << width;

  const cudnnConvolutionBwdFilterAlgo_t filter_list[] = {
      CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT,
      CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED};
  found = false;
  for (cudnnConvolutionBwdFilterAlgo_t algo : filter_list) {
    size_t bytes = 0;
    if (cudnnGetConvolutionBackwardFilterWorkspaceSize(handle, plan->x.d, plan->y.d, plan->conv.d, plan->w.d,
                                                       algo, &bytes) == CUDNN_STATUS_SUCCESS) {
      plan->bwd_filter = algo;
      plan->bwd_filter_bytes = bytes;
      found = true;
      break;
    }
  }
  CHECK(found) << "CUDA device " << current_cuda_device_for_errors()
               << ": conv2d_3x3s2_cuda: no deterministic cuDNN backward-filter algorithm for B=" << b
               << " Cin=" << ci << " Cout=" << co << " H=" << height << " W=" << width;
}

constexpr size_t kWorkspaceAlign = 256;
size_t align_up(size_t v) {
  return (v + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
}

// Byte offsets inside the caller's workspace: cuDNN's scratch first, then (bf16 only) fp32 copies.
struct Conv2dWorkspace {
  size_t cudnn = 0, x32 = 0, w32 = 0, y32 = 0, dx32 = 0, total = 0;
};

Conv2dWorkspace conv2d_workspace_layout(size_t cudnn_bytes, bool widen, int64_t x_elems, int64_t w_elems,
                                        int64_t y_elems) {
  Conv2dWorkspace ws;
  size_t offset = align_up(cudnn_bytes);
  if (widen) {
    ws.x32 = offset;
    offset += align_up(static_cast<size_t>(x_elems) * sizeof(float));
    ws.w32 = offset;
    offset += align_up(static_cast<size_t>(w_elems) * sizeof(float));
    ws.y32 = offset;
    offset += align_up(static_cast<size_t>(y_elems) * sizeof(float));
    ws.dx32 = offset;
    offset += align_up(static_cast<size_t>(x_elems) * sizeof(float));
  }
  ws.total = offset;
  return ws;
}

void check_conv2d_sizes(int64_t batch, int64_t in_channels, int64_t out_channels, int64_t height,
                        int64_t width) {
  CHECK(batch >= 0 && in_channels >= 0 && out_channels >= 0 && height >= 0 && width >= 0)
      << "conv2d_3x3s2_cuda sizes B=" << batch << " Cin=" << in_channels << " Cout=" << out_channels
      << " H=" << height << " W=" << width;
}

cudnnHandle_t cudnn_handle_for(const RunContext& ctx, const char* op) {
  CHECK(ctx.cudnn_handle != nullptr) << op
                                     << ": ctx.cudnn_handle is null; fill the RunContext from a "
                                        "CudaContext (kernels/cuda/cuda_context.h)";
  cudnnHandle_t handle = static_cast<cudnnHandle_t>(ctx.cudnn_handle);
  CUDNN_CHECK(cudnnSetStream(handle, static_cast<cudaStream_t>(ctx.cuda_stream)));
  return handle;
}

char* workspace_at(void* workspace, size_t offset) {
  return static_cast<char*>(workspace) + offset;
}

// ---- depthwise conv1d kernels -------------------------------------------------------------------------

constexpr int kChannelTile = 32;  // channels per block (threadIdx.x) in the parameter-gradient kernel
constexpr int kRowLanes = 16;     // row lanes per block (threadIdx.y)

int64_t conv1d_left_pad(Conv1dPadding padding, int64_t kernel_size) {
  CHECK_GE(kernel_size, 1) << "depthwise_conv1d_cuda kernel size";
  if (padding == Conv1dPadding::kSymmetric) {
    CHECK_EQ(kernel_size % 2, 1) << "depthwise_conv1d_cuda: symmetric padding needs an odd kernel size";
    return (kernel_size - 1) / 2;
  }
  return kernel_size - 1;
}

void check_conv1d_sizes(int64_t batch, int64_t time, int64_t channels) {
  CHECK(batch >= 0 && time >= 0 && channels >= 0)
      << "depthwise_conv1d_cuda sizes B=" << batch << " T=" << time << " C=" << channels;
}

// y[b, t, c] = bias[c] + sum_k w[c, k] * x[b, t + k - left, c] (zeros outside [0, T)).
template <class T>
__global__ void depthwise_forward_kernel(T* y, const T* x, const T* weight, const T* bias, int64_t batch,
                                         int64_t time, int64_t channels, int64_t kernel_size, int64_t left) {
  const int64_t n = batch * time * channels;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % channels;
    const int64_t row = i / channels;  // b * T + t
    const int64_t t = row % time;
    float acc = bias != nullptr ? load_f32(bias[c]) : 0.0f;
    for (int64_t k = 0; k < kernel_size; ++k) {
      const int64_t s = t + k - left;
      if (s >= 0 && s < time)
        acc += load_f32(weight[c * kernel_size + k]) * load_f32(x[(row + k - left) * channels + c]);
    }
    y[i] = store_as<T>(acc);
  }
}

// dx[b, s, c] = sum_k w[c, k] * dy[b, s - k + left, c] (assigned).
template <class T>
__global__ void depthwise_backward_data_kernel(T* dx, const T* dy, const T* weight, int64_t batch,
                                               int64_t time, int64_t channels, int64_t kernel_size,
                                               int64_t left) {
  const int64_t n = batch * time * channels;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % channels;
    const int64_t row = i / channels;  // b * T + s
    const int64_t s = row % time;
    float acc = 0.0f;
    for (int64_t k = 0; k < kernel_size; ++k) {
      const int64_t t = s - k + left;
      if (t >= 0 && t < time)
        acc += load_f32(weight[c * kernel_size + k]) * load_f32(dy[(row - k + left) * channels + c]);
    }
    dx[i] = store_as<T>(acc);
  }
}

// Block (channel tile, tap): tap < K accumulates dweight[c, tap] += sum_{b,t} dy[b,t,c] x[b,t+tap-left,c];
// tap == K accumulates dbias[c] += sum_{b,t} dy[b,t,c]. Lane y sums rows y, y + 16, ... in order; the
// lanes are then added in order 0..15. Deterministic.
template <class T>
__global__ void depthwise_param_grad_kernel(float* dweight, float* dbias, const T* dy, const T* x,
                                            int64_t batch, int64_t time, int64_t channels,
                                            int64_t kernel_size, int64_t left, int64_t tap_offset) {
  __shared__ float partial[kRowLanes][kChannelTile];
  const int64_t tap = blockIdx.y + tap_offset;
  const int64_t c = blockIdx.x * int64_t(kChannelTile) + threadIdx.x;
  const int64_t rows = batch * time;
  float acc = 0.0f;
  if (c < channels) {
    for (int64_t row = threadIdx.y; row < rows; row += kRowLanes) {
      const float g = load_f32(dy[row * channels + c]);
      if (tap == kernel_size) {
        acc += g;
      } else {
        const int64_t s = row % time + tap - left;
        if (s >= 0 && s < time) acc += g * load_f32(x[(row + tap - left) * channels + c]);
      }
    }
  }
  partial[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < channels) {
    float total = 0.0f;
    for (int lane = 0; lane < kRowLanes; ++lane) total += partial[lane][threadIdx.x];
    if (tap == kernel_size)
      dbias[c] += total;
    else
      dweight[c * kernel_size + tap] += total;
  }
}

}  // namespace

// ---- conv2d_3x3s2 ---------------------------------------------------------------------------------------

template <class T>
size_t conv2d_3x3s2_cuda_workspace_bytes(int64_t batch, int64_t in_channels, int64_t out_channels,
                                         int64_t height, int64_t width, const RunContext& ctx) {
  check_conv2d_sizes(batch, in_channels, out_channels, height, width);
  const int64_t out_h = conv2d_3x3s2_output_size(height);
  const int64_t out_w = conv2d_3x3s2_output_size(width);
  if (batch == 0 || in_channels == 0 || out_channels == 0 || out_h == 0 || out_w == 0) return 0;
  CHECK(ctx.cudnn_handle != nullptr)
      << "conv2d_3x3s2_cuda_workspace_bytes: ctx.cudnn_handle is null; fill the "
         "RunContext from a CudaContext (kernels/cuda/cuda_context.h)";
  Conv2dPlan plan;
  make_conv2d_plan(&plan, static_cast<cudnnHandle_t>(ctx.cudnn_handle), batch, in_channels, out_channels,
                   height, width, out_h, out_w);
  return conv2d_workspace_layout(plan.cudnn_bytes(), !std::is_same<T, float>::value,
                                 batch * in_channels * height * width, out_channels * in_channels * 9,
                                 batch * out_channels * out_h * out_w)
      .total;
}

template <class T>
void conv2d_3x3s2_forward_cuda(T* y, void* workspace, size_t workspace_bytes, const T* x, const T* weight,
                               const T* bias, int64_t batch, int64_t in_channels, int64_t out_channels,
                               int64_t height, int64_t width, const RunContext& ctx) {
  check_conv2d_sizes(batch, in_channels, out_channels, height, width);
  const int64_t out_h = conv2d_3x3s2_output_size(height);
  const int64_t out_w = conv2d_3x3s2_output_size(width);
  if (batch == 0 || out_channels == 0 || out_h == 0 || out_w == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  const int64_t positions = out_h * out_w;
  const int64_t y_elems = batch * out_channels * positions;
  if (in_channels == 0) {  // no input channels: y = bias (or 0)
    conv2d_finish_kernel<T>
        <<<grid_for(y_elems), kThreads, 0, stream>>>(y, nullptr, bias, batch, out_channels, positions);
    CUDA_CHECK(cudaGetLastError());
    return;
  }
  cudnnHandle_t handle = cudnn_handle_for(ctx, "conv2d_3x3s2_forward_cuda");
  Conv2dPlan plan;
  make_conv2d_plan(&plan, handle, batch, in_channels, out_channels, height, width, out_h, out_w);
  constexpr bool widen = !std::is_same<T, float>::value;
  const int64_t x_elems = batch * in_channels * height * width;
  const int64_t w_elems = out_channels * in_channels * 9;
  const Conv2dWorkspace ws = conv2d_workspace_layout(plan.cudnn_bytes(), widen, x_elems, w_elems, y_elems);
  CHECK(workspace_bytes >= ws.total && (workspace != nullptr || ws.total == 0))
      << "conv2d_3x3s2_forward_cuda needs a workspace of " << ws.total
      << " bytes (conv2d_3x3s2_cuda_workspace_bytes), got " << workspace_bytes;

  const float* x32 = nullptr;
  const float* w32 = nullptr;
  float* y32 = nullptr;
  if constexpr (widen) {
    float* xw = reinterpret_cast<float*>(workspace_at(workspace, ws.x32));
    float* ww = reinterpret_cast<float*>(workspace_at(workspace, ws.w32));
    convert<T, float>(xw, x, x_elems, stream);
    convert<T, float>(ww, weight, w_elems, stream);
    x32 = xw;
    w32 = ww;
    y32 = reinterpret_cast<float*>(workspace_at(workspace, ws.y32));
  } else {
    x32 = x;
    w32 = weight;
    y32 = y;
  }
  const float one = 1.0f, zero = 0.0f;
  CUDNN_CHECK(cudnnConvolutionForward(handle, &one, plan.x.d, x32, plan.w.d, w32, plan.conv.d, plan.fwd,
                                      plan.fwd_bytes > 0 ? workspace : nullptr, plan.fwd_bytes, &zero,
                                      plan.y.d, y32));
  if (widen || bias != nullptr) {
    conv2d_finish_kernel<T>
        <<<grid_for(y_elems), kThreads, 0, stream>>>(y, y32, bias, batch, out_channels, positions);
    CUDA_CHECK(cudaGetLastError());
  }
}

template <class T>
void conv2d_3x3s2_backward_cuda(T* dx, float* dweight, float* dbias, void* workspace, size_t workspace_bytes,
                                const T* dy, const T* x, const T* weight, int64_t batch, int64_t in_channels,
                                int64_t out_channels, int64_t height, int64_t width, const RunContext& ctx) {
  check_conv2d_sizes(batch, in_channels, out_channels, height, width);
  const int64_t out_h = conv2d_3x3s2_output_size(height);
  const int64_t out_w = conv2d_3x3s2_output_size(width);
  if (batch == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  const int64_t x_elems = batch * in_channels * height * width;
  if (out_channels == 0 || out_h == 0 || out_w == 0) {
    // No output element depends on x: the input gradient is zero, the parameter gradients get nothing.
    if (dx != nullptr && x_elems > 0)
      CUDA_CHECK(cudaMemsetAsync(dx, 0, static_cast<size_t>(x_elems) * sizeof(T), stream));
    return;
  }
  const int64_t positions = out_h * out_w;
  if (dbias != nullptr) {
    CHECK_LE(out_channels, int64_t(INT_MAX));
    channel_sum_accumulate_kernel<T><<<static_cast<unsigned>(out_channels), kThreads, 0, stream>>>(
        dbias, dy, batch, out_channels, positions);
    CUDA_CHECK(cudaGetLastError());
  }
  if (in_channels == 0 || (dx == nullptr && dweight == nullptr))
    return;  // dx and dweight are empty / unwanted

  cudnnHandle_t handle = cudnn_handle_for(ctx, "conv2d_3x3s2_backward_cuda");
  Conv2dPlan plan;
  make_conv2d_plan(&plan, handle, batch, in_channels, out_channels, height, width, out_h, out_w);
  constexpr bool widen = !std::is_same<T, float>::value;
  const int64_t w_elems = out_channels * in_channels * 9;
  const int64_t y_elems = batch * out_channels * positions;
  const Conv2dWorkspace ws = conv2d_workspace_layout(plan.cudnn_bytes(), widen, x_elems, w_elems, y_elems);
  CHECK(workspace_bytes >= ws.total && (workspace != nullptr || ws.total == 0))
      << "conv2d_3x3s2_backward_cuda needs a workspace of " << ws.total
      << " bytes (conv2d_3x3s2_cuda_workspace_bytes), got " << workspace_bytes;

  const float* x32 = nullptr;
  const float* w32 = nullptr;
  const float* dy32 = nullptr;
  float* dx32 = nullptr;
  if constexpr (widen) {
    float* dyw = reinterpret_cast<float*>(workspace_at(workspace, ws.y32));
    convert<T, float>(dyw, dy, y_elems, stream);
    dy32 = dyw;
    if (dweight != nullptr) {
      float* xw = reinterpret_cast<float*>(workspace_at(workspace, ws.x32));
      convert<T, float>(xw, x, x_elems, stream);
      x32 = xw;
    }
    if (dx != nullptr) {
      float* ww = reinterpret_cast<float*>(workspace_at(workspace, ws.w32));
      convert<T, float>(ww, weight, w_elems, stream);
      w32 = ww;
      dx32 = reinterpret_cast<float*>(workspace_at(workspace, ws.dx32));
    }
  } else {
    dy32 = dy;
    x32 = x;
    w32 = weight;
    dx32 = dx;
  }
  const float one = 1.0f, zero = 0.0f;
  if (dweight != nullptr) {
    // dweight += dW: beta = 1 accumulates into the fp32 gradient.
    CUDNN_CHECK(cudnnConvolutionBackwardFilter(
        handle, &one, plan.x.d, x32, plan.y.d, dy32, plan.conv.d, plan.bwd_filter,
        plan.bwd_filter_bytes > 0 ? workspace : nullptr, plan.bwd_filter_bytes, &one, plan.w.d, dweight));
  }
  if (dx != nullptr) {
    CUDNN_CHECK(cudnnConvolutionBackwardData(handle, &one, plan.w.d, w32, plan.y.d, dy32, plan.conv.d,
                                             plan.bwd_data, plan.bwd_data_bytes > 0 ? workspace : nullptr,
                                             plan.bwd_data_bytes, &zero, plan.x.d, dx32));
    if constexpr (widen) convert<float, T>(dx, dx32, x_elems, stream);
  }
}

// ---- depthwise conv1d -----------------------------------------------------------------------------------

template <class T>
void depthwise_conv1d_forward_cuda(T* y, const T* x, const T* weight, const T* bias, Conv1dPadding padding,
                                   int64_t batch, int64_t time, int64_t channels, int64_t kernel_size,
                                   const RunContext& ctx) {
  check_conv1d_sizes(batch, time, channels);
  const int64_t left = conv1d_left_pad(padding, kernel_size);
  const int64_t n = batch * time * channels;
  if (n == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  depthwise_forward_kernel<T>
      <<<grid_for(n), kThreads, 0, stream>>>(y, x, weight, bias, batch, time, channels, kernel_size, left);
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
void depthwise_conv1d_backward_cuda(T* dx, float* dweight, float* dbias, const T* dy, const T* x,
                                    const T* weight, Conv1dPadding padding, int64_t batch, int64_t time,
                                    int64_t channels, int64_t kernel_size, const RunContext& ctx) {
  check_conv1d_sizes(batch, time, channels);
  const int64_t left = conv1d_left_pad(padding, kernel_size);
  const int64_t n = batch * time * channels;
  if (n == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  if (dx != nullptr) {
    depthwise_backward_data_kernel<T>
        <<<grid_for(n), kThreads, 0, stream>>>(dx, dy, weight, batch, time, channels, kernel_size, left);
    CUDA_CHECK(cudaGetLastError());
  }
  const int64_t taps = (dweight != nullptr ? kernel_size : 0) + (dbias != nullptr ? 1 : 0);
  if (taps > 0) {
    CHECK_LE(taps, int64_t(65535)) << "depthwise_conv1d_backward_cuda: kernel size " << kernel_size;
    const int64_t tiles = (channels + kChannelTile - 1) / kChannelTile;
    CHECK_LE(tiles, int64_t(INT_MAX));
    const int64_t tap_offset = dweight != nullptr ? 0 : kernel_size;
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(taps));
    depthwise_param_grad_kernel<T><<<grid, dim3(kChannelTile, kRowLanes), 0, stream>>>(
        dweight, dbias, dy, x, batch, time, channels, kernel_size, left, tap_offset);
    CUDA_CHECK(cudaGetLastError());
  }
}

#define MOEASR_INSTANTIATE_CONV_CUDA(T)                                                                    \
  template size_t conv2d_3x3s2_cuda_workspace_bytes<T>(int64_t, int64_t, int64_t, int64_t, int64_t,        \
                                                       const RunContext&);                                 \
  template void conv2d_3x3s2_forward_cuda<T>(T*, void*, size_t, const T*, const T*, const T*, int64_t,     \
                                             int64_t, int64_t, int64_t, int64_t, const RunContext&);       \
  template void conv2d_3x3s2_backward_cuda<T>(T*, float*, float*, void*, size_t, const T*, const T*,       \
                                              const T*, int64_t, int64_t, int64_t, int64_t, int64_t,       \
                                              const RunContext&);                                          \
  template void depthwise_conv1d_forward_cuda<T>(T*, const T*, const T*, const T*, Conv1dPadding, int64_t, \
                                                 int64_t, int64_t, int64_t, const RunContext&);            \
  template void depthwise_conv1d_backward_cuda<T>(T*, float*, float*, const T*, const T*, const T*,        \
                                                  Conv1dPadding, int64_t, int64_t, int64_t, int64_t,       \
                                                  const RunContext&);
MOEASR_INSTANTIATE_CONV_CUDA(float)
MOEASR_INSTANTIATE_CONV_CUDA(__nv_bfloat16)

}  // namespace moeasr
