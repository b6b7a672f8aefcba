// model/conformer_conv.cc — WeNet's ConvolutionModule forward/backward (see conformer_conv.h).
#include "model/conformer_conv.h"

#include "core/check.h"
#include "kernels/ops.h"

namespace moeasr {

template <class T>
ConformerConvParams<T> bind_conformer_conv(ParameterStore<T>* store, const std::string& prefix,
                                           ConvNormType norm_type, bool causal) {
  ConformerConvParams<T> p;
  p.pointwise_conv1 = bind_linear(store, prefix + ".pointwise_conv1");
  p.pointwise_conv2 = bind_linear(store, prefix + ".pointwise_conv2");
  const ParamEntry& dw = store->table->at(prefix + ".depthwise_conv.weight");
  CHECK_EQ(dw.shape.ndim(), 3) << prefix << ".depthwise_conv.weight must be [d, 1, K], got "
                               << dw.shape.to_string();
  CHECK_EQ(dw.shape[1], 1);
  p.channels = dw.shape[0];
  p.kernel_size = dw.shape[2];
  p.depthwise_weight = bind_param(store, prefix + ".depthwise_conv.weight");
  p.depthwise_bias = bind_param(store, prefix + ".depthwise_conv.bias");
  p.norm = bind_layer_norm(store, prefix + ".norm");
  p.norm_type = norm_type;
  p.causal = causal;
  if (norm_type == ConvNormType::kBatchNorm) {
    p.running_mean = bind_param(store, prefix + ".norm.running_mean");
    p.running_var = bind_param(store, prefix + ".norm.running_var");
  }
  const int64_t d = p.channels;
  CHECK_EQ(p.pointwise_conv1.in_features, d) << prefix;
  CHECK_EQ(p.pointwise_conv1.out_features, 2 * d) << prefix;
  CHECK_EQ(p.pointwise_conv2.in_features, d) << prefix;
  CHECK_EQ(p.pointwise_conv2.out_features, d) << prefix;
  CHECK_EQ(p.norm.channels, d) << prefix;
  CHECK(causal || p.kernel_size % 2 == 1)
      << prefix << ": symmetric padding needs an odd kernel, got K = " << p.kernel_size;
  return p;
}

template <class T>
void conformer_conv_forward(ConformerConvSaved<T>* saved, T* out, const T* x, const uint8_t* mask,
                            const ConformerConvParams<T>& p, int64_t batch, int64_t time, bool training,
                            const RunContext& ctx) {
  const int64_t d = p.channels;
  const int64_t k = p.kernel_size;
  CHECK(batch >= 0 && time >= 0 && d > 0 && k > 0)
      << "conformer_conv B=" << batch << " T=" << time << " d=" << d << " K=" << k;
  CHECK(p.causal || k % 2 == 1) << "symmetric ConvolutionModule needs an odd kernel, got " << k;
  const int64_t lpad = p.causal ? k - 1 : 0;
  const int64_t padded = time + lpad;
  const int64_t rows = batch * time;
  const int64_t prows = batch * padded;
  *saved = ConformerConvSaved<T>();
  saved->mask = mask;
  saved->training = training;
  if (rows == 0) return;

  // 1-2. Zero the padded frames; causal: K-1 zero frames of the input on the left.
  saved->xp = activation_alloc<T>(ctx, prows * d);
  op::masked_pad_rows_forward(saved->xp, x, mask, batch, time, lpad, d, ctx);
  // 3-4. pointwise_conv1 and GLU over the (padded) length.
  saved->h1 = activation_alloc<T>(ctx, prows * 2 * d);
  op::linear_forward(saved->h1, saved->xp, p.pointwise_conv1.weight.value, p.pointwise_conv1.bias.value,
                     prows, d, 2 * d, ctx);
  saved->g = activation_alloc<T>(ctx, prows * d);
  op::glu_forward(saved->g, saved->h1, prows, d, ctx);
  // 5. Depthwise conv: causal = 'valid' over the pre-padded sequence. The causal op on the padded
  // sequence computes y[tp] = sum_j w[j] g[tp + j - (K-1)]; for tp >= K-1 every tap is inside, so
  // its last T frames are exactly the valid convolution. Symmetric: the op's own zero padding.
  saved->c = activation_alloc<T>(ctx, rows * d);
  if (p.causal) {
    T* full = activation_alloc<T>(ctx, prows * d);
    op::depthwise_conv1d_forward(full, saved->g, p.depthwise_weight.value, p.depthwise_bias.value,
                                 Conv1dPadding::kCausal, batch, padded, d, k, ctx);
    op::masked_crop_rows_forward(saved->c, full, static_cast<const uint8_t*>(nullptr), batch, time, lpad, d,
                                 ctx);
  } else {
    op::depthwise_conv1d_forward(saved->c, saved->g, p.depthwise_weight.value, p.depthwise_bias.value,
                                 Conv1dPadding::kSymmetric, batch, time, d, k, ctx);
  }
  // 6. Norm.
  saved->n = activation_alloc<T>(ctx, rows * d);
  const auto eps = static_cast<Accum<T>>(p.norm.eps);
  if (p.norm_type == ConvNormType::kLayerNorm) {
    saved->stat_a = activation_alloc<Accum<T>>(ctx, rows);
    saved->stat_b = activation_alloc<Accum<T>>(ctx, rows);
    op::layer_norm_forward(saved->n, saved->stat_a, saved->stat_b, saved->c, p.norm.weight.master,
                           p.norm.bias.master, eps, rows, d, ctx);
  } else if (training) {
    saved->stat_a = activation_alloc<Accum<T>>(ctx, d);
    saved->stat_b = activation_alloc<Accum<T>>(ctx, d);
    op::batch_norm_train_forward(saved->n, saved->stat_a, saved->stat_b, p.running_mean.master,
                                 p.running_var.master, saved->c, p.norm.weight.master, p.norm.bias.master,
                                 static_cast<Accum<T>>(p.bn_momentum), eps, rows, d, ctx);
  } else {
    CHECK(p.running_mean.master != nullptr && p.running_var.master != nullptr)
        << "BatchNorm eval needs running statistics";
    op::batch_norm_eval_forward(saved->n, saved->c, p.running_mean.master, p.running_var.master,
                                p.norm.weight.master, p.norm.bias.master, eps, rows, d, ctx);
  }
  // 7. Swish.
  saved->s = activation_alloc<T>(ctx, rows * d);
  op::silu_forward(saved->s, saved->n, rows * d, ctx);
  // 8-9. pointwise_conv2, then zero the padded frames.
  op::linear_forward(out, saved->s, p.pointwise_conv2.weight.value, p.pointwise_conv2.bias.value, rows, d, d,
                     ctx);
  if (mask != nullptr) op::masked_crop_rows_forward(out, out, mask, batch, time, 0, d, ctx);  // in place
}

template <class T>
void conformer_conv_backward(T* dx, const ConformerConvSaved<T>& saved, const T* dout,
                             const ConformerConvParams<T>& p, int64_t batch, int64_t time,
                             const RunContext& ctx) {
  const int64_t d = p.channels;
  const int64_t k = p.kernel_size;
  const int64_t lpad = p.causal ? k - 1 : 0;
  const int64_t padded = time + lpad;
  const int64_t rows = batch * time;
  const int64_t prows = batch * padded;
  if (rows == 0) return;
  const uint8_t* mask = saved.mask;

  // 9. Padded output frames were overwritten with 0: no gradient flows through them.
  T* dpre = activation_alloc<T>(ctx, rows * d);
  op::masked_crop_rows_backward(dpre, dout, mask, batch, time, 0, d, ctx);
  // 8. pointwise_conv2.
  T* ds = activation_alloc<T>(ctx, rows * d);
  op::linear_backward(ds, p.pointwise_conv2.weight.grad, p.pointwise_conv2.bias.grad, dpre, saved.s,
                      p.pointwise_conv2.weight.value, rows, d, d, ctx);
  // 7. Swish (in place: dn in ds).
  op::silu_backward(ds, ds, saved.n, rows * d, ctx);
  // 6. Norm.
  T* dc = dpre;  // dpre is dead; reuse it for dc
  if (p.norm_type == ConvNormType::kLayerNorm) {
    op::layer_norm_backward(dc, p.norm.weight.grad, p.norm.bias.grad, ds, saved.c, saved.stat_a, saved.stat_b,
                            p.norm.weight.master, rows, d, ctx);
  } else if (saved.training) {
    op::batch_norm_train_backward(dc, p.norm.weight.grad, p.norm.bias.grad, ds, saved.c, saved.stat_a,
                                  saved.stat_b, p.norm.weight.master, rows, d, ctx);
  } else {
    op::batch_norm_eval_backward(dc, p.norm.weight.grad, p.norm.bias.grad, ds, saved.c, p.running_mean.master,
                                 p.running_var.master, p.norm.weight.master,
                                 static_cast<Accum<T>>(p.norm.eps), rows, d, ctx);
  }
  // 5. Depthwise conv (causal: the gradient of the K-1 discarded leading outputs is 0).
  T* dg = activation_alloc<T>(ctx, prows * d);
  if (p.causal) {
    T* dfull = activation_alloc<T>(ctx, prows * d);
    op::masked_crop_rows_backward(dfull, dc, static_cast<const uint8_t*>(nullptr), batch, time, lpad, d, ctx);
    op::depthwise_conv1d_backward(dg, p.depthwise_weight.grad, p.depthwise_bias.grad, dfull, saved.g,
                                  p.depthwise_weight.value, Conv1dPadding::kCausal, batch, padded, d, k, ctx);
  } else {
    op::depthwise_conv1d_backward(dg, p.depthwise_weight.grad, p.depthwise_bias.grad, dc, saved.g,
                                  p.depthwise_weight.value, Conv1dPadding::kSymmetric, batch, time, d, k,
                                  ctx);
  }
  // 4. GLU.
  T* dh1 = activation_alloc<T>(ctx, prows * 2 * d);
  op::glu_backward(dh1, dg, saved.h1, prows, d, ctx);
  // 3. pointwise_conv1 over the padded length (the pad frames feed the bias gradient too).
  T* dxp = dg;  // dg is dead; same size [B, Tp, d]
  op::linear_backward(dxp, p.pointwise_conv1.weight.grad, p.pointwise_conv1.bias.grad, dh1, saved.xp,
                      p.pointwise_conv1.weight.value, prows, d, 2 * d, ctx);
  // 1-2. Drop the left pad; padded input frames were zeroed, so their gradient is 0.
  if (dx != nullptr) op::masked_pad_rows_backward(dx, dxp, mask, batch, time, lpad, d, ctx);
}

#define MOEASR_INSTANTIATE_CONFORMER_CONV(T)                                                                \
  template ConformerConvParams<T> bind_conformer_conv(ParameterStore<T>*, const std::string&, ConvNormType, \
                                                      bool);                                                \
  template void conformer_conv_forward(ConformerConvSaved<T>*, T*, const T*, const uint8_t*,                \
                                       const ConformerConvParams<T>&, int64_t, int64_t, bool,               \
                                       const RunContext&);                                                  \
  template void conformer_conv_backward(T*, const ConformerConvSaved<T>&, const T*,                         \
                                        const ConformerConvParams<T>&, int64_t, int64_t, const RunContext&);

MOEASR_INSTANTIATE_CONFORMER_CONV(float)
MOEASR_INSTANTIATE_CONFORMER_CONV(double)
MOEASR_INSTANTIATE_CONFORMER_CONV(bf16)
#undef MOEASR_INSTANTIATE_CONFORMER_CONV

}  // namespace moeasr
