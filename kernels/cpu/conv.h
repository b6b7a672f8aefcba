// kernels/cpu/conv.h — the two convolutions of the WeNet Conformer encoder:
//  * conv2d_3x3s2: torch.nn.Conv2d(Cin, Cout, kernel_size=3, stride=2) (no padding, no dilation) in
//    NCHW, as used twice by WeNet's Conv2dSubsampling4 (H = time, W = mel bins). Optimised path:
//    im2col per batch item + gemm.h; a direct loop stays reachable through ctx.use_reference_kernels.
//  * depthwise_conv1d: torch.nn.Conv1d(C, C, K, groups=C) of WeNet's ConvolutionModule, on
//    channels-last data [B, T, C] (PyTorch applies it to the [B, C, T] transpose). Padding is either
//    symmetric ((K-1)/2 zeros each side, K odd; WeNet's non-causal mode) or causal (K-1 zeros on the
//    left only; WeNet's causal mode, where the left pad is F.pad(x, (K-1, 0)) before the conv).
//    Like PyTorch, both are cross-correlations: y[t] = bias + sum_k w[k] * x[t + k - left_pad].
// Gradient convention: parameter grads (dweight, dbias) accumulate (+=); dinput is assigned (=).
#pragma once

#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

// ---- Conv2d, 3x3 kernel, stride 2, no padding -------------------------------------------------------
// Dims: B batch, Cin/Cout channels, H x W input, Ho x Wo output with Ho = (H - 3) / 2 + 1 (0 if H < 3),
// same for Wo. An input smaller than 3 in either dim gives an empty output.

// Output extent of a 3x3 stride-2 unpadded convolution along one dimension.
inline int64_t conv2d_3x3s2_output_size(int64_t input_size) {
  return input_size < 3 ? 0 : (input_size - 3) / 2 + 1;
}

// Elements of the scratch buffer that conv2d_3x3s2_forward / _backward need: one im2col matrix
// [Cin * 9, Ho * Wo] for one batch item (forward and backward use the same size). The reference path
// (ctx.use_reference_kernels) does not touch the scratch, which may then be null.
int64_t conv2d_3x3s2_workspace_elems(int64_t in_channels, int64_t height, int64_t width);

template <class T>
void conv2d_3x3s2_forward(T* y,             // [B, Cout, Ho, Wo]
                          T* workspace,     // [conv2d_3x3s2_workspace_elems(Cin, H, W)] scratch
                          const T* x,       // [B, Cin, H, W]
                          const T* weight,  // [Cout, Cin, 3, 3]
                          const T* bias,    // [Cout] or null
                          int64_t batch, int64_t in_channels, int64_t out_channels, int64_t height,
                          int64_t width, const RunContext& ctx);

template <class T>
void conv2d_3x3s2_backward(T* dx,            // [B, Cin, H, W] assigned; null to skip
                           T* dweight,       // [Cout, Cin, 3, 3] accumulated; null to skip
                           T* dbias,         // [Cout] accumulated; null to skip
                           T* workspace,     // [conv2d_3x3s2_workspace_elems(Cin, H, W)] scratch
                           const T* dy,      // [B, Cout, Ho, Wo]
                           const T* x,       // [B, Cin, H, W]
                           const T* weight,  // [Cout, Cin, 3, 3]
                           int64_t batch, int64_t in_channels, int64_t out_channels, int64_t height,
                           int64_t width, const RunContext& ctx);

// ---- Depthwise Conv1d on channels-last data ---------------------------------------------------------
// Dims: B batch, T time, C channels, K kernel size. Output length equals input length T.

enum class Conv1dPadding {
  kSymmetric,  // (K-1)/2 zeros on each side; K must be odd (WeNet non-causal ConvolutionModule)
  kCausal,     // K-1 zeros on the left, none on the right (WeNet causal ConvolutionModule)
};

template <class T>
void depthwise_conv1d_forward(T* y,             // [B, T, C]
                              const T* x,       // [B, T, C]
                              const T* weight,  // [C, K] (PyTorch's [C, 1, K])
                              const T* bias,    // [C] or null
                              Conv1dPadding padding, int64_t batch, int64_t time, int64_t channels,
                              int64_t kernel_size, const RunContext& ctx);

template <class T>
void depthwise_conv1d_backward(T* dx,            // [B, T, C] assigned; null to skip
                               T* dweight,       // [C, K] accumulated; null to skip
                               T* dbias,         // [C] accumulated; null to skip
                               const T* dy,      // [B, T, C]
                               const T* x,       // [B, T, C]
                               const T* weight,  // [C, K]
                               Conv1dPadding padding, int64_t batch, int64_t time, int64_t channels,
                               int64_t kernel_size, const RunContext& ctx);

}  // namespace moeasr
