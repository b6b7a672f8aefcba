// kernels/cuda/conv_cuda.h — the two convolutions of the WeNet Conformer encoder on the GPU: the
// CUDA twins of kernels/cpu/conv.h (same semantics, sizes and edge cases; read that header first).
//
//  * conv2d_3x3s2 (Conv2dSubsampling's Conv2d(Cin, Cout, 3, stride 2), NCHW, no padding): cuDNN's
//    legacy convolution API in fp32 (CUDNN_FMA_MATH, so no TF32) with explicit, deterministic
//    algorithms: the first of a fixed list whose workspace query succeeds for the shape —
//      forward:         IMPLICIT_GEMM, IMPLICIT_PRECOMP_GEMM, GEMM (all deterministic)
//      backward data:   ALGO_1, FFT_TILING, FFT, WINOGRAD_NONFUSED (never ALGO_0: atomics)
//      backward filter: ALGO_1, FFT, FFT_TILING, WINOGRAD_NONFUSED (never ALGO_0 / ALGO_3: atomics)
//    For stride 2 in practice ALGO_1 is the one used for both backward passes.
//    bf16 (T = __nv_bfloat16): x, weight and dy are widened to fp32 copies in the workspace (exact),
//    cuDNN runs in fp32, y / dx are rounded once to bf16. This keeps fp32 accumulation and lets the
//    filter gradient accumulate straight into the fp32 dweight (beta = 1).
//    Bias: y = conv + bias[co] by a small kernel (fp32 add, one rounding); dbias: a deterministic
//    per-channel sum (one block per channel, fixed-order tree reduction, no atomics).
//  * depthwise_conv1d (ConvolutionModule's Conv1d(C, C, K, groups=C), channels-last [B, T, C],
//    symmetric or causal padding exactly as the CPU op): own kernels. Forward and dx: one thread per
//    output element, taps in order k = 0..K-1 with fp32 accumulation (bias first, as on the CPU).
//    dweight / dbias: one block per (32-channel tile, tap) summing all B*T rows in a fixed order
//    (16 row lanes, then the lanes in order): deterministic, no atomics.
//
// Dtype rules: T in {float, __nv_bfloat16} for x, y, dx, dy, weight and bias (bf16 copies of the fp32
// master parameters when T is bf16). Parameter gradients dweight / dbias are fp32 and accumulate
// (+=); dx is assigned. Handles: ctx.cudnn_handle (conv2d only; the op binds it to ctx.cuda_stream
// with cudnnSetStream at every call), ctx.cuda_stream. No host synchronisation inside an op.
#pragma once

#include <cuda_bf16.h>

#include <cstddef>
#include <cstdint>

#include "core/run_context.h"
#include "kernels/cpu/conv.h"  // conv2d_3x3s2_output_size, Conv1dPadding

namespace moeasr {

// ---- Conv2d, 3x3 kernel, stride 2, no padding -------------------------------------------------------
// Dims: B batch, Cin/Cout channels, H x W input, Ho x Wo output (conv2d_3x3s2_output_size).

// Bytes of workspace that conv2d_3x3s2_forward_cuda and _backward_cuda need (the same for both):
// cuDNN's workspace for the chosen algorithms, plus for bf16 the fp32 copies of x, weight, y/dy and
// dx. Uses ctx.cudnn_handle for cuDNN's workspace queries (host only).
template <class T>
size_t conv2d_3x3s2_cuda_workspace_bytes(int64_t batch, int64_t in_channels, int64_t out_channels,
                                         int64_t height, int64_t width, const RunContext& ctx);

template <class T>
void conv2d_3x3s2_forward_cuda(T* y,  // [B, Cout, Ho, Wo]
                               void* workspace, size_t workspace_bytes,
                               const T* x,       // [B, Cin, H, W]
                               const T* weight,  // [Cout, Cin, 3, 3]
                               const T* bias,    // [Cout] or null
                               int64_t batch, int64_t in_channels, int64_t out_channels, int64_t height,
                               int64_t width, const RunContext& ctx);

template <class T>
void conv2d_3x3s2_backward_cuda(T* dx,           // [B, Cin, H, W] assigned; null to skip
                                float* dweight,  // [Cout, Cin, 3, 3] fp32, accumulated; null to skip
                                float* dbias,    // [Cout] fp32, accumulated; null to skip
                                void* workspace, size_t workspace_bytes,
                                const T* dy,      // [B, Cout, Ho, Wo]
                                const T* x,       // [B, Cin, H, W]
                                const T* weight,  // [Cout, Cin, 3, 3]
                                int64_t batch, int64_t in_channels, int64_t out_channels, int64_t height,
                                int64_t width, const RunContext& ctx);

// ---- Depthwise Conv1d on channels-last data ---------------------------------------------------------
// Dims: B batch, T time, C channels, K kernel size. Output length equals input length T. No workspace.

template <class T>
void depthwise_conv1d_forward_cuda(T* y,             // [B, T, C]
                                   const T* x,       // [B, T, C]
                                   const T* weight,  // [C, K] (PyTorch's [C, 1, K])
                                   const T* bias,    // [C] or null
                                   Conv1dPadding padding, int64_t batch, int64_t time, int64_t channels,
                                   int64_t kernel_size, const RunContext& ctx);

template <class T>
void depthwise_conv1d_backward_cuda(T* dx,            // [B, T, C] assigned; null to skip
                                    float* dweight,   // [C, K] fp32, accumulated; null to skip
                                    float* dbias,     // [C] fp32, accumulated; null to skip
                                    const T* dy,      // [B, T, C]
                                    const T* x,       // [B, T, C]
                                    const T* weight,  // [C, K]
                                    Conv1dPadding padding, int64_t batch, int64_t time, int64_t channels,
                                    int64_t kernel_size, const RunContext& ctx);

}  // namespace moeasr
