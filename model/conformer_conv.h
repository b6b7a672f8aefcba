// model/conformer_conv.h — the convolution module of a Conformer block, as WeNet's ConvolutionModule
// (wenet/models/transformer/convolution.py; u2pp_moe_wenet.md §3), on channels-last data.
//
// Input x [B, T, d] is the norm_conv LayerNorm output; mask [B, T] (u8, 1 = valid frame) is WeNet's
// mask_pad. Forward, in WeNet's order:
//   1. xm = x with the padded frames zeroed (masked_fill(~mask_pad, 0)).
//   2. Causal mode (streaming, lorder = K-1): F.pad(xm, (K-1, 0)) — K-1 ZERO FRAMES OF THE INPUT on
//      the left, before pointwise_conv1. pointwise_conv1 maps a zero frame to its bias, so the
//      depthwise conv's left context is GLU(pw1.bias) (not zero): we run pw1 + GLU over the padded
//      length T + K-1 and then a 'valid' depthwise conv (no further padding) back to length T.
//      (In streaming, WeNet prepends cnn_cache instead of the zeros: see model/streaming_encoder.h.)
//      Symmetric mode (non-causal, K odd): no padding of the input; pw1 + GLU over T frames, then the
//      depthwise Conv1d's own padding=(K-1)/2, i.e. ZEROS OF THE GLU OUTPUT on both sides.
//   3. pointwise_conv1: Conv1d(d, 2d, 1) = linear d -> 2d per frame (weight [2d, d, 1], bias [2d]).
//   4. GLU over channels: a * sigmoid(b), a = the first d channels.
//   5. depthwise_conv: Conv1d(d, d, K, groups=d) (weight [d, 1, K], bias [d]).
//   6. norm: LayerNorm over channels (eps 1e-5), or BatchNorm1d over the [B, d, T] tensor: in
//      training, batch statistics over all B*T positions INCLUDING padded ones (as PyTorch does on the
//      padded tensor) and a running-statistics update (momentum 0.1, unbiased variance); in eval, the
//      running statistics.
//   7. Swish (SiLU).
//   8. pointwise_conv2: Conv1d(d, d, 1) = linear d -> d.
//   9. zero the padded frames of the output.
// Parameters are bound from "<prefix>.pointwise_conv1", ".depthwise_conv", ".norm" (weight, bias, and
// running_mean / running_var buffers for batch_norm), ".pointwise_conv2" (prefix e.g.
// "encoder.encoders.3.conv_module"). Gradient convention: parameter grads accumulate (+=), dx is
// assigned; padded frames of dx are 0.
#pragma once

#include <cstdint>
#include <string>

#include "core/run_context.h"
#include "model/layer_common.h"
#include "model/model_config.h"

namespace moeasr {

template <class T>
struct ConformerConvParams {
  LinearRef<T> pointwise_conv1;  // [2d, d(, 1)], bias [2d]
  ParamRef<T> depthwise_weight;  // [d, 1, K]
  ParamRef<T> depthwise_bias;    // [d]
  LayerNormRef<T> norm;          // weight/bias [d]; eps 1e-5 (LayerNorm and BatchNorm1d)
  ParamRef<T> running_mean;      // [d] buffer (batch_norm only)
  ParamRef<T> running_var;       // [d] buffer (batch_norm only)
  LinearRef<T> pointwise_conv2;  // [d, d(, 1)], bias [d]
  int64_t channels = 0;          // d
  int64_t kernel_size = 0;       // K
  bool causal = false;
  ConvNormType norm_type = ConvNormType::kLayerNorm;
  double bn_momentum = 0.1;  // torch.nn.BatchNorm1d default
};

// Binds the module's tensors under `prefix`; K and d come from the depthwise weight's shape.
// CHECK-fails when a tensor is missing (running stats for batch_norm) or K is even in symmetric mode.
template <class T>
ConformerConvParams<T> bind_conformer_conv(ParameterStore<T>* store, const std::string& prefix,
                                           ConvNormType norm_type, bool causal);

// What the backward needs; every buffer lives in ctx.activations. Tp = T + K - 1 (causal) or T.
template <class T>
struct ConformerConvSaved {
  T* xp = nullptr;                // [B, Tp, d] masked (and, causal, left-zero-padded) pw1 input
  T* h1 = nullptr;                // [B, Tp, 2d] pw1 output (GLU input)
  T* g = nullptr;                 // [B, Tp, d] GLU output (depthwise input)
  T* c = nullptr;                 // [B, T, d] depthwise output (norm input)
  T* n = nullptr;                 // [B, T, d] norm output (Swish input)
  T* s = nullptr;                 // [B, T, d] Swish output (pw2 input)
  Accum<T>* stat_a = nullptr;     // LayerNorm: mean [B*T]; BatchNorm training: batch mean [d]
  Accum<T>* stat_b = nullptr;     // LayerNorm: rstd [B*T]; BatchNorm training: batch rstd [d]
  const uint8_t* mask = nullptr;  // [B, T]
  bool training = false;          // BatchNorm mode of the forward
};

// `training` selects BatchNorm batch statistics (and updates running_mean / running_var in place);
// it does not matter for layer_norm. BatchNorm training needs B*T > 1.
template <class T>
void conformer_conv_forward(ConformerConvSaved<T>* saved,
                            T* out,               // [B, T, d]
                            const T* x,           // [B, T, d]
                            const uint8_t* mask,  // [B, T] 1 = valid frame
                            const ConformerConvParams<T>& p, int64_t batch, int64_t time, bool training,
                            const RunContext& ctx);

template <class T>
void conformer_conv_backward(T* dx,  // [B, T, d] assigned (0 at padded frames)
                             const ConformerConvSaved<T>& saved,
                             const T* dout,  // [B, T, d]
                             const ConformerConvParams<T>& p, int64_t batch, int64_t time,
                             const RunContext& ctx);

}  // namespace moeasr
