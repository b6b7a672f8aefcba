// model/layer_helpers.h — small pieces the Conformer encoder and the Transformer decoder share: a
// residual branch's dropout (mask recomputed from its site in backward), and a LayerNorm bound by
// LayerNormRef whose backward adds into the trunk gradient where paths merge.
#pragma once

#include <cstdint>

#include "kernels/ops.h"
#include "model/layer_common.h"

namespace moeasr {

// x = dropout(x) in place; the identity when the site is inactive.
template <class T>
void branch_dropout_forward(T* x,  // [n]
                            int64_t n, const DropoutSite& site, const RunContext& ctx) {
  if (site.active()) op::dropout_forward(x, x, site.stream, site.rate, n, ctx);
}

// dx = scale * dropout_backward(dy) (dx may alias dy); scale is 0.5 for the macaron half steps.
template <class T>
void branch_dropout_backward(T* dx,        // [n] assigned
                             const T* dy,  // [n]
                             Accum<T> scale, int64_t n, const DropoutSite& site, const RunContext& ctx) {
  if (site.active()) {
    op::dropout_backward(dx, dy, site.stream, site.rate, n, ctx);
    if (scale != Accum<T>(1)) op::scale_forward(dx, dx, scale, n, ctx);
  } else {
    op::scale_forward(dx, dy, scale, n, ctx);
  }
}

template <class T>
void layer_norm_ref_forward(T* out,          // [n, C]
                            Accum<T>* mean,  // [n] saved
                            Accum<T>* rstd,  // [n] saved
                            const T* x,      // [n, C]
                            const LayerNormRef<T>& ln, int64_t n, const RunContext& ctx) {
  op::layer_norm_forward(out, mean, rstd, x, ln.weight.master, ln.bias.master, static_cast<Accum<T>>(ln.eps),
                         n, ln.channels, ctx);
}

// acc += dx of the LayerNorm whose input was x; its parameter grads accumulate.
template <class T>
void layer_norm_ref_backward_add(T* acc,         // [n, C] accumulated
                                 const T* dout,  // [n, C]
                                 const T* x,     // [n, C] the LayerNorm's input
                                 const Accum<T>* mean, const Accum<T>* rstd, const LayerNormRef<T>& ln,
                                 int64_t n, const RunContext& ctx) {
  T* dx = activation_alloc<T>(ctx, n * ln.channels);
  op::layer_norm_backward(dx, ln.weight.grad, ln.bias.grad, dout, x, mean, rstd, ln.weight.master, n,
                          ln.channels, ctx);
  op::add_scaled_inplace(acc, dx, Accum<T>(1), n * ln.channels, ctx);
}

}  // namespace moeasr
