// model/front_end.cc — GlobalCMVN, Conv2dSubsampling4 and the sinusoidal positional encodings (see
// front_end.h).
#include "model/front_end.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "kernels/ops.h"

namespace moeasr {

// ---- GlobalCMVN ---------------------------------------------------------------------------------------

template <class T>
GlobalCmvnParams<T> bind_global_cmvn(ParameterStore<T>* store, const std::string& prefix) {
  GlobalCmvnParams<T> p;
  p.mean = bind_param(store, prefix + ".mean");
  p.istd = bind_param(store, prefix + ".istd");
  CHECK_EQ(p.mean.numel, p.istd.numel) << prefix;
  p.dim = p.mean.numel;
  return p;
}

template <class T>
void global_cmvn_forward(Accum<T>* out, const Accum<T>* x, const GlobalCmvnParams<T>& p, int64_t rows,
                         int64_t feat, const RunContext& ctx) {
  CHECK_GE(rows, 0);
  CHECK_EQ(feat, p.dim) << "global CMVN has " << p.dim << " bins, features have " << feat;
  op::cmvn_normalize_forward(out, x, static_cast<const Accum<T>*>(p.mean.master),
                             static_cast<const Accum<T>*>(p.istd.master), rows, feat, ctx);
}

// ---- Conv2dSubsampling4 -------------------------------------------------------------------------------

void conv2d_subsampling4_lengths(int32_t* out_lengths, const int32_t* lengths, int64_t batch) {
  for (int64_t b = 0; b < batch; ++b) {
    CHECK_GE(lengths[b], 0) << "utterance " << b;
    out_lengths[b] = static_cast<int32_t>(conv2d_subsampling4_valid_length(lengths[b]));
  }
}

template <class T>
Conv2dSubsampling4Params<T> bind_conv2d_subsampling4(ParameterStore<T>* store, const std::string& prefix) {
  Conv2dSubsampling4Params<T> p;
  const ParamEntry& w0 = store->table->at(prefix + ".conv.0.weight");
  CHECK(w0.shape.ndim() == 4 && w0.shape[1] == 1 && w0.shape[2] == 3 && w0.shape[3] == 3)
      << prefix << ".conv.0.weight must be [d, 1, 3, 3], got " << w0.shape.to_string();
  p.d_model = w0.shape[0];
  const int64_t d = p.d_model;
  p.conv0_weight = bind_param(store, prefix + ".conv.0.weight");
  p.conv0_bias = bind_param(store, prefix + ".conv.0.bias");
  p.conv2_weight = bind_param(store, prefix + ".conv.2.weight");
  p.conv2_bias = bind_param(store, prefix + ".conv.2.bias");
  CHECK_EQ(p.conv0_bias.numel, d) << prefix;
  CHECK_EQ(p.conv2_weight.numel, d * d * 9) << prefix;
  CHECK_EQ(p.conv2_bias.numel, d) << prefix;
  p.out = bind_linear(store, prefix + ".out.0");
  CHECK_EQ(p.out.out_features, d) << prefix;
  CHECK_EQ(p.out.in_features % d, 0) << prefix;
  p.sub_freq = p.out.in_features / d;
  return p;
}

template <class T>
void conv2d_subsampling4_forward(Conv2dSubsampling4Saved<T>* saved, T* out, const T* x,
                                 const Conv2dSubsampling4Params<T>& p, int64_t batch, int64_t time,
                                 int64_t feat, const RunContext& ctx) {
  const int64_t d = p.d_model;
  const int64_t t1 = conv2d_3x3s2_output_size(time);
  const int64_t f1 = conv2d_3x3s2_output_size(feat);
  const int64_t t2 = conv2d_3x3s2_output_size(t1);
  const int64_t f2 = conv2d_3x3s2_output_size(f1);
  CHECK_EQ(f2, p.sub_freq) << "Conv2dSubsampling4: " << feat << " input bins give F' = " << f2
                           << ", encoder.embed.out.0 expects " << p.sub_freq;
  *saved = Conv2dSubsampling4Saved<T>();
  saved->x = x;
  // conv.0 + ReLU, conv.2 + ReLU (ReLU in place: the backward's x > 0 test holds on the output too).
  saved->r0 = activation_alloc<T>(ctx, batch * d * t1 * f1);
  op::conv2d_3x3s2_forward(saved->r0, x, p.conv0_weight.value, p.conv0_bias.value, batch, 1, d, time, feat,
                           ctx);
  op::relu_forward(saved->r0, saved->r0, batch * d * t1 * f1, ctx);
  saved->r1 = activation_alloc<T>(ctx, batch * d * t2 * f2);
  op::conv2d_3x3s2_forward(saved->r1, saved->r0, p.conv2_weight.value, p.conv2_bias.value, batch, d, d, t1,
                           f1, ctx);
  op::relu_forward(saved->r1, saved->r1, batch * d * t2 * f2, ctx);
  // [B, d, T', F'] -> [B, T', d, F'] = [B, T', d * F'] (channel-major columns).
  saved->z = activation_alloc<T>(ctx, batch * t2 * d * f2);
  op::transpose_middle_forward(saved->z, saved->r1, batch, d, t2, f2, ctx);
  op::linear_forward(out, saved->z, p.out.weight.value, p.out.bias.value, batch * t2, d * f2, d, ctx);
}

template <class T>
void conv2d_subsampling4_backward(T* dx, const Conv2dSubsampling4Saved<T>& saved, const T* dout,
                                  const Conv2dSubsampling4Params<T>& p, int64_t batch, int64_t time,
                                  int64_t feat, const RunContext& ctx) {
  const int64_t d = p.d_model;
  const int64_t t1 = conv2d_3x3s2_output_size(time);
  const int64_t f1 = conv2d_3x3s2_output_size(feat);
  const int64_t t2 = conv2d_3x3s2_output_size(t1);
  const int64_t f2 = conv2d_3x3s2_output_size(f1);
  CHECK_EQ(f2, p.sub_freq);
  // out.0
  T* dz = activation_alloc<T>(ctx, batch * t2 * d * f2);
  op::linear_backward(dz, p.out.weight.grad, p.out.bias.grad, dout, saved.z, p.out.weight.value, batch * t2,
                      d * f2, d, ctx);
  // [B, T', d, F'] -> [B, d, T', F'], then ReLU.
  T* dr1 = activation_alloc<T>(ctx, batch * d * t2 * f2);
  op::transpose_middle_backward(dr1, dz, batch, d, t2, f2, ctx);
  op::relu_backward(dr1, dr1, saved.r1, batch * d * t2 * f2, ctx);
  // conv.2, then ReLU.
  T* dr0 = activation_alloc<T>(ctx, batch * d * t1 * f1);
  op::conv2d_3x3s2_backward(dr0, p.conv2_weight.grad, p.conv2_bias.grad, dr1, saved.r0, p.conv2_weight.value,
                            batch, d, d, t1, f1, ctx);
  op::relu_backward(dr0, dr0, saved.r0, batch * d * t1 * f1, ctx);
  // conv.0 (dx only when asked: the input is normally data).
  op::conv2d_3x3s2_backward(dx, p.conv0_weight.grad, p.conv0_bias.grad, dr0, saved.x, p.conv0_weight.value,
                            batch, 1, d, time, feat, ctx);
}

// ---- Positional encodings -----------------------------------------------------------------------------

template <class T>
void sinusoid_position_table(T* pe, int64_t max_len, int64_t d_model) {
  CHECK_GE(max_len, 0);
  CHECK(d_model > 0 && d_model % 2 == 0) << "the sinusoid table needs an even d_model, got " << d_model;
  for (int64_t i = 0; i < d_model / 2; ++i) {
    const double inv_freq = std::pow(10000.0, -static_cast<double>(2 * i) / static_cast<double>(d_model));
    for (int64_t pos = 0; pos < max_len; ++pos) {
      const double angle = static_cast<double>(pos) * inv_freq;
      pe[pos * d_model + 2 * i] = static_cast<T>(std::sin(angle));
      pe[pos * d_model + 2 * i + 1] = static_cast<T>(std::cos(angle));
    }
  }
}

namespace {

template <class T>
void check_positional_sizes(const PositionalEncodingParams<T>& p, int64_t offset, int64_t batch,
                            int64_t time) {
  CHECK(p.table != nullptr) << "positional encoding table not set";
  CHECK(batch >= 0 && time >= 0 && p.d_model > 0) << "B=" << batch << " T=" << time << " d=" << p.d_model;
  CHECK(offset >= 0 && offset + time <= p.max_len)
      << "positions [" << offset << ", " << offset + time << ") exceed the table's max_len " << p.max_len;
  CHECK(p.dropout_rate >= 0.0 && p.dropout_rate < 1.0) << "positional dropout rate " << p.dropout_rate;
}

// y = dropout(y) in place at `site` (identity when inactive).
template <class T>
void dropout_inplace(T* y, const DropoutSite& site, int64_t n, const RunContext& ctx) {
  if (site.active()) op::dropout_forward(y, y, site.stream, site.rate, n, ctx);
}

// dx = sqrt(d) * dropout_backward(dout), shared by both encodings.
template <class T>
void scaled_dropout_backward(T* dx, const T* dout, const PositionalEncodingParams<T>& p, int64_t n,
                             uint64_t layer_id, const StepRng& rng, const RunContext& ctx) {
  const auto xscale = static_cast<Accum<T>>(std::sqrt(static_cast<double>(p.d_model)));
  DropoutSite site = rng.site(p.dropout_rate, layer_id, kPosEncSiteX);
  if (site.active()) {
    op::dropout_backward(dx, dout, site.stream, site.rate, n, ctx);
    op::scale_forward(dx, dx, xscale, n, ctx);
  } else {
    op::scale_forward(dx, dout, xscale, n, ctx);
  }
}

}  // namespace

template <class T>
void rel_positional_encoding_forward(T* out, T* pos_emb, const T* x, const PositionalEncodingParams<T>& p,
                                     int64_t offset, int64_t batch, int64_t time, uint64_t layer_id,
                                     const StepRng& rng, const RunContext& ctx) {
  check_positional_sizes(p, offset, batch, time);
  const int64_t d = p.d_model;
  const int64_t n = batch * time * d;
  const auto xscale = static_cast<Accum<T>>(std::sqrt(static_cast<double>(d)));
  op::scale_forward(out, x, xscale, n, ctx);
  dropout_inplace(out, rng.site(p.dropout_rate, layer_id, kPosEncSiteX), n, ctx);
  op::convert_elements(pos_emb, p.table + offset * d, time * d, ctx);
  dropout_inplace(pos_emb, rng.site(p.dropout_rate, layer_id, kPosEncSitePosEmb), time * d, ctx);
}

template <class T>
void rel_positional_encoding_backward(T* dx, const T* dout, const PositionalEncodingParams<T>& p,
                                      int64_t batch, int64_t time, uint64_t layer_id, const StepRng& rng,
                                      const RunContext& ctx) {
  check_positional_sizes(p, 0, batch, time);
  scaled_dropout_backward(dx, dout, p, batch * time * p.d_model, layer_id, rng, ctx);
}

template <class T>
void positional_encoding_forward(T* out, const T* x, const PositionalEncodingParams<T>& p, int64_t offset,
                                 int64_t batch, int64_t time, uint64_t layer_id, const StepRng& rng,
                                 const RunContext& ctx) {
  check_positional_sizes(p, offset, batch, time);
  const int64_t d = p.d_model;
  const auto xscale = static_cast<Accum<T>>(std::sqrt(static_cast<double>(d)));
  op::scale_add_table_forward(out, x, p.table + offset * d, xscale, batch, time, d, ctx);
  dropout_inplace(out, rng.site(p.dropout_rate, layer_id, kPosEncSiteX), batch * time * d, ctx);
}

template <class T>
void positional_encoding_backward(T* dx, const T* dout, const PositionalEncodingParams<T>& p, int64_t batch,
                                  int64_t time, uint64_t layer_id, const StepRng& rng,
                                  const RunContext& ctx) {
  check_positional_sizes(p, 0, batch, time);
  scaled_dropout_backward(dx, dout, p, batch * time * p.d_model, layer_id, rng, ctx);
}

#define MOEASR_FRONT_END_INSTANTIATE(T)                                                                     \
  template GlobalCmvnParams<T> bind_global_cmvn(ParameterStore<T>*, const std::string&);                    \
  template void global_cmvn_forward(Accum<T>*, const Accum<T>*, const GlobalCmvnParams<T>&, int64_t,        \
                                    int64_t, const RunContext&);                                            \
  template Conv2dSubsampling4Params<T> bind_conv2d_subsampling4(ParameterStore<T>*, const std::string&);    \
  template void conv2d_subsampling4_forward(Conv2dSubsampling4Saved<T>*, T*, const T*,                      \
                                            const Conv2dSubsampling4Params<T>&, int64_t, int64_t, int64_t,  \
                                            const RunContext&);                                             \
  template void conv2d_subsampling4_backward(T*, const Conv2dSubsampling4Saved<T>&, const T*,               \
                                             const Conv2dSubsampling4Params<T>&, int64_t, int64_t, int64_t, \
                                             const RunContext&);                                            \
  template void rel_positional_encoding_forward(T*, T*, const T*, const PositionalEncodingParams<T>&,       \
                                                int64_t, int64_t, int64_t, uint64_t, const StepRng&,        \
                                                const RunContext&);                                         \
  template void rel_positional_encoding_backward(T*, const T*, const PositionalEncodingParams<T>&, int64_t, \
                                                 int64_t, uint64_t, const StepRng&, const RunContext&);     \
  template void positional_encoding_forward(T*, const T*, const PositionalEncodingParams<T>&, int64_t,      \
                                            int64_t, int64_t, uint64_t, const StepRng&, const RunContext&); \
  template void positional_encoding_backward(T*, const T*, const PositionalEncodingParams<T>&, int64_t,     \
                                             int64_t, uint64_t, const StepRng&, const RunContext&);

MOEASR_FRONT_END_INSTANTIATE(float)
MOEASR_FRONT_END_INSTANTIATE(double)
MOEASR_FRONT_END_INSTANTIATE(bf16)
template void sinusoid_position_table(float*, int64_t, int64_t);
template void sinusoid_position_table(double*, int64_t, int64_t);
#undef MOEASR_FRONT_END_INSTANTIATE

}  // namespace moeasr
