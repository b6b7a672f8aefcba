// model/feed_forward.h — one FFN slot of a layer, dense or MoE as the config says (mlp_type), so
// the encoder and decoder layers call one pair of functions whatever the FFN is.
#pragma once

#include <cstdint>
#include <string>

#include "model/ffn.h"

namespace moeasr {

template <class T>
struct FeedForwardRef {
  bool moe = false;
  FfnParams<T> dense;
  MoeFfnParams<T> experts;
};

template <class T>
struct FeedForwardSaved {
  FfnSaved<T> dense;
  MoeFfnSaved<T> experts;
};

template <class T>
FeedForwardRef<T> bind_feed_forward(ParameterStore<T>* store, const std::string& prefix, const FfnConfig& ffn,
                                    const ExpertLayout& layout, double dropout_rate) {
  FeedForwardRef<T> ref;
  ref.moe = ffn.mlp_type == MlpType::kMoe;
  if (ref.moe) {
    ref.experts = bind_moe_ffn(store, prefix, layout, ffn.n_expert_activated, ffn.activation, dropout_rate);
  } else {
    ref.dense = bind_ffn(store, prefix, ffn.activation, dropout_rate);
  }
  return ref;
}

// x, out: [N, D]; token_mask [N] (MoE: padded tokens are not routed) or null.
template <class T>
void feed_forward_forward(FeedForwardSaved<T>* saved, T* out, const T* x, const uint8_t* token_mask,
                          const FeedForwardRef<T>& p, ExpertDispatcher<T>* dispatcher, int64_t n,
                          uint64_t layer_id, uint64_t site_id, const StepRng& rng, const RunContext& ctx) {
  if (p.moe) {
    moe_ffn_forward(&saved->experts, out, x, token_mask, p.experts, dispatcher, n, layer_id, site_id, rng,
                    ctx);
  } else {
    ffn_forward(&saved->dense, out, x, p.dense, n, layer_id, site_id, rng, ctx);
  }
}

template <class T>
void feed_forward_backward(T* dx, const FeedForwardSaved<T>& saved, const T* dout, const FeedForwardRef<T>& p,
                           ExpertDispatcher<T>* dispatcher, int64_t n, uint64_t layer_id, uint64_t site_id,
                           const StepRng& rng, const RunContext& ctx) {
  if (p.moe) {
    moe_ffn_backward(dx, saved.experts, dout, p.experts, dispatcher, n, layer_id, site_id, rng, ctx);
  } else {
    ffn_backward(dx, saved.dense, dout, p.dense, n, layer_id, site_id, rng, ctx);
  }
}

}  // namespace moeasr
