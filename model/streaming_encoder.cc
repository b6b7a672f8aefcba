// model/streaming_encoder.cc — WeNet's BaseEncoder.forward_chunk / forward_chunk_by_chunk for
// inference (see streaming_encoder.h): lean forward-only Conformer layers with K/V and causal-conv
// caches, built from the ops (linear, batched GEMM, softmax, norms, depthwise conv) and the training
// model's front end and FFN/MoE forward. CPU only: the caches are host vectors moved with host loops
// (recognize refuses --simulate_streaming with --device cuda).
#include "model/streaming_encoder.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "core/check.h"
#include "core/logging.h"
#include "kernels/ops.h"

namespace moeasr {
namespace {

constexpr int64_t kSubsamplingRate = 4;     // Conv2dSubsampling4
constexpr int64_t kSubsamplingContext = 7;  // right_context 6 + the current frame

template <class T>
T* arena_alloc(const RunContext& ctx, int64_t n) {
  return activation_alloc<T>(ctx, n);
}

template <class T>
void layer_norm_rows(T* out, const T* x, const LayerNormRef<T>& ln, int64_t n, const RunContext& ctx) {
  T* mean = arena_alloc<T>(ctx, n);
  T* rstd = arena_alloc<T>(ctx, n);
  op::layer_norm_forward(out, mean, rstd, x, ln.weight.value, ln.bias.value, static_cast<T>(ln.eps), n,
                         ln.channels, ctx);
}

// RelPositionMultiHeadedAttention.forward with att_cache, eval mode (no dropout), batch 1.
// kv [H, Tk, 2 dk] receives the cached K/V rows followed by the new ones (Tk = t1 + Lq).
template <class T>
void rel_attention_with_cache(T* out,               // [Lq, d]
                              T* kv,                // [H, Tk, 2 dk] assigned
                              const T* a,           // [Lq, d] norm_mha output
                              const T* cache,       // [H, t1, 2 dk] or null when t1 == 0
                              const T* p_rows,      // [Tk, d] linear_pos of the keys' PE rows
                              const uint8_t* mask,  // [Lq, Tk] or null (attend everywhere)
                              const RelPositionAttentionParams<T>& p, int64_t lq, int64_t t1, int64_t d,
                              int64_t heads, const RunContext& ctx) {
  const int64_t dk = d / heads, tk = t1 + lq;
  T* q = arena_alloc<T>(ctx, lq * d);
  T* kn = arena_alloc<T>(ctx, lq * d);
  T* vn = arena_alloc<T>(ctx, lq * d);
  op::linear_forward(q, a, p.linear_q.weight.value, p.linear_q.bias.value, lq, d, d, ctx);
  op::linear_forward(kn, a, p.linear_k.weight.value, p.linear_k.bias.value, lq, d, d, ctx);
  op::linear_forward(vn, a, p.linear_v.weight.value, p.linear_v.bias.value, lq, d, d, ctx);
  for (int64_t h = 0; h < heads; ++h) {
    T* dst = kv + h * tk * 2 * dk;
    if (t1 > 0) std::memcpy(dst, cache + h * t1 * 2 * dk, sizeof(T) * static_cast<size_t>(t1 * 2 * dk));
    for (int64_t t = 0; t < lq; ++t) {
      T* row = dst + (t1 + t) * 2 * dk;
      std::memcpy(row, kn + t * d + h * dk, sizeof(T) * static_cast<size_t>(dk));
      std::memcpy(row + dk, vn + t * d + h * dk, sizeof(T) * static_cast<size_t>(dk));
    }
  }
  // q + pos_bias_u and q + pos_bias_v, split into heads [H, Lq, dk].
  T* q_u = arena_alloc<T>(ctx, lq * d);
  T* q_v = arena_alloc<T>(ctx, lq * d);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t t = 0; t < lq; ++t) {
      const T* src = q + t * d + h * dk;
      T* du = q_u + (h * lq + t) * dk;
      T* dv = q_v + (h * lq + t) * dk;
      for (int64_t j = 0; j < dk; ++j) {
        du[j] = src[j] + p.pos_bias_u.value[h * dk + j];
        dv[j] = src[j] + p.pos_bias_v.value[h * dk + j];
      }
    }
  }
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(dk)));
  T* scores = arena_alloc<T>(ctx, heads * lq * tk);
  // matrix_ac = (q + u) K^T, K rows at stride 2 dk inside kv.
  op::gemm_strided_batched(scores, q_u, kv, Transpose::kNo, Transpose::kYes, lq, tk, dk, scale, T(0), dk,
                           2 * dk, tk, lq * dk, tk * 2 * dk, lq * tk, heads, ctx);
  // matrix_bd = (q + v_b) P^T, head h of P = columns [h dk, (h+1) dk) of p_rows.
  op::gemm_strided_batched(scores, q_v, p_rows, Transpose::kNo, Transpose::kYes, lq, tk, dk, scale, T(1), dk,
                           d, tk, lq * dk, dk, lq * tk, heads, ctx);
  T* probs = arena_alloc<T>(ctx, heads * lq * tk);
  op::attention_softmax_forward(probs, scores, mask, 1, heads, lq, tk, ctx);
  // context [Lq, d] with head h in columns [h dk, (h+1) dk): V rows at offset dk, stride 2 dk.
  T* context = arena_alloc<T>(ctx, lq * d);
  op::gemm_strided_batched(context, probs, kv + dk, Transpose::kNo, Transpose::kNo, lq, dk, tk, T(1), T(0),
                           tk, 2 * dk, d, lq * tk, tk * 2 * dk, dk, heads, ctx);
  op::linear_forward(out, context, p.linear_out.weight.value, p.linear_out.bias.value, lq, d, d, ctx);
}

// ConvolutionModule.forward with cnn_cache, eval mode, batch 1 (all frames valid).
template <class T>
void conv_module_with_cache(T* out,          // [Lq, d]
                            T* new_cache,    // [d, K-1] assigned (causal only)
                            const T* a,      // [Lq, d] norm_conv output
                            const T* cache,  // [d, K-1] or null (first chunk: zeros)
                            const ConformerConvParams<T>& p, int64_t lq, const RunContext& ctx) {
  const int64_t d = p.channels, k = p.kernel_size;
  const int64_t kc = p.causal ? k - 1 : 0;
  const int64_t tp = kc + lq;
  // [cache; input] rows, the cache transposed from WeNet's channels-first layout.
  T* xp = arena_alloc<T>(ctx, tp * d);
  for (int64_t j = 0; j < kc; ++j) {
    for (int64_t c = 0; c < d; ++c) xp[j * d + c] = cache != nullptr ? cache[c * kc + j] : T(0);
  }
  std::memcpy(xp + kc * d, a, sizeof(T) * static_cast<size_t>(lq * d));
  for (int64_t j = 0; j < kc; ++j) {
    for (int64_t c = 0; c < d; ++c) new_cache[c * kc + j] = xp[(lq + j) * d + c];
  }
  T* h1 = arena_alloc<T>(ctx, tp * 2 * d);
  op::linear_forward(h1, xp, p.pointwise_conv1.weight.value, p.pointwise_conv1.bias.value, tp, d, 2 * d, ctx);
  T* g = arena_alloc<T>(ctx, tp * d);
  op::glu_forward(g, h1, tp, d, ctx);
  T* full = arena_alloc<T>(ctx, tp * d);
  op::depthwise_conv1d_forward(full, g, p.depthwise_weight.value, p.depthwise_bias.value,
                               p.causal ? Conv1dPadding::kCausal : Conv1dPadding::kSymmetric, 1, tp, d, k,
                               ctx);
  const T* c = full + kc * d;  // the last Lq frames: every tap inside [cache; input]
  T* n = arena_alloc<T>(ctx, lq * d);
  const T eps = static_cast<T>(p.norm.eps);
  if (p.norm_type == ConvNormType::kLayerNorm) {
    T* mean = arena_alloc<T>(ctx, lq);
    T* rstd = arena_alloc<T>(ctx, lq);
    op::layer_norm_forward(n, mean, rstd, c, p.norm.weight.value, p.norm.bias.value, eps, lq, d, ctx);
  } else {
    op::batch_norm_eval_forward(n, c, p.running_mean.value, p.running_var.value, p.norm.weight.value,
                                p.norm.bias.value, eps, lq, d, ctx);
  }
  op::silu_forward(n, n, lq * d, ctx);
  op::linear_forward(out, n, p.pointwise_conv2.weight.value, p.pointwise_conv2.bias.value, lq, d, d, ctx);
}

}  // namespace

Status validate_encode_options(const EncodeOptions& options) {
  if (options.decoding_chunk_size == 0) {
    return invalid_argument_error(
        "--decoding_chunk_size 0 is reserved for training (dynamic chunk sampling); use -1 for full "
        "context or a positive chunk size in encoder frames (e.g. 16 = 640 ms)");
  }
  return Status();
}

template <class T>
StreamingEncoder<T>::StreamingEncoder(const ModelConfig& config, ParameterStore<T>* store,
                                      ExpertDispatcher<T>* dispatcher, const ExpertLayout& layout)
    : config_(config), dispatcher_(dispatcher) {
  Status valid = validate_model_config(config);
  CHECK(valid.ok()) << valid.to_string();
  CHECK(dispatcher != nullptr);
  const int64_t d = config.encoder.output_size;
  pe_table_.resize(static_cast<size_t>(kPositionalEncodingMaxLen * d));
  sinusoid_position_table(pe_table_.data(), kPositionalEncodingMaxLen, d);
  params_ = bind_encoder(store, config, layout, pe_table_.data());
  conv_cache_frames_ = config.encoder.causal ? config.encoder.cnn_module_kernel - 1 : 0;
  pos_proj_.resize(params_.layers.size());
  arena_ = std::make_unique<Arena>("streaming_encoder", int64_t(1) << 20, Arena::Growth::kGrowable);
}

template <class T>
void StreamingEncoder<T>::ensure_pos_proj(int64_t positions, const RunContext& ctx) {
  CHECK_LE(positions, kPositionalEncodingMaxLen)
      << "encoder positions up to " << positions << " exceed the positional table's max_len "
      << kPositionalEncodingMaxLen << " (200 s of audio)";
  if (positions <= pos_proj_rows_) return;
  const int64_t d = params_.d_model;
  const int64_t rows = std::min<int64_t>(kPositionalEncodingMaxLen, (positions + 63) / 64 * 64);
  for (size_t i = 0; i < params_.layers.size(); ++i) {
    const LinearRef<T>& lin = params_.layers[i].self_attn.linear_pos;
    std::vector<T>& table = pos_proj_[i];
    table.resize(static_cast<size_t>(rows * d));
    op::linear_forward(table.data() + pos_proj_rows_ * d, pe_table_.data() + pos_proj_rows_ * d,
                       lin.weight.value, static_cast<const T*>(nullptr), rows - pos_proj_rows_, d, d, ctx);
  }
  pos_proj_rows_ = rows;
}

template <class T>
T* StreamingEncoder<T>::embed(int64_t* length, const T* xs, int64_t frames, const RunContext& ctx) {
  const int64_t f = params_.input_dim, d = params_.d_model;
  const int64_t l = conv2d_subsampling4_output_size(frames);
  CHECK_GT(l, 0) << "a chunk of " << frames << " input frames is too short for Conv2dSubsampling4 (needs 7)";
  T* normalized = arena_alloc<T>(ctx, frames * f);
  global_cmvn_forward(normalized, xs, params_.cmvn, frames, f, ctx);
  Conv2dSubsampling4Saved<T> saved;
  T* x = arena_alloc<T>(ctx, l * d);
  conv2d_subsampling4_forward(&saved, x, normalized, params_.embed, 1, frames, f, ctx);
  op::scale_forward(x, x, static_cast<T>(std::sqrt(static_cast<double>(d))), l * d, ctx);
  *length = l;
  return x;
}

template <class T>
void StreamingEncoder<T>::run_layers(T* out, T* x, int64_t lq, EncoderChunkCache<T>* cache, int64_t offset,
                                     int64_t required_cache_size, const uint8_t* mask,
                                     const RunContext& ctx) {
  const int64_t d = params_.d_model, heads = params_.config.attention_heads, dk = d / heads;
  const int64_t layers = num_layers(), kc = conv_cache_frames_;
  const int64_t t1 = cache->frames, tk = t1 + lq, n = lq * d;
  CHECK_GE(offset - t1, 0) << "offset " << offset << " with " << t1 << " cached frames";
  CHECK_EQ(static_cast<int64_t>(cache->att.size()), t1 > 0 ? layers * heads * t1 * 2 * dk : int64_t(0))
      << "att_cache size";
  CHECK(cache->cnn.empty() || static_cast<int64_t>(cache->cnn.size()) == layers * d * kc) << "cnn_cache size";
  ensure_pos_proj(offset + lq, ctx);
  int64_t next_start = 0;
  if (required_cache_size == 0) {
    next_start = tk;
  } else if (required_cache_size > 0) {
    next_start = std::max<int64_t>(tk - required_cache_size, 0);
  }
  const int64_t keep = tk - next_start;
  std::vector<T> new_att(static_cast<size_t>(layers * heads * keep * 2 * dk));
  std::vector<T> new_cnn(static_cast<size_t>(layers * d * kc));

  T* a = arena_alloc<T>(ctx, n);
  T* branch = arena_alloc<T>(ctx, n);
  T* y = arena_alloc<T>(ctx, n);
  T* kv = arena_alloc<T>(ctx, heads * tk * 2 * dk);
  const StepRng rng;  // eval: every dropout is the identity
  for (int64_t i = 0; i < layers; ++i) {
    const ConformerLayerParams<T>& p = params_.layers[static_cast<size_t>(i)];
    const uint64_t layer_id = kEncoderLayerIdBase + static_cast<uint64_t>(i);
    FeedForwardSaved<T> ff_saved;
    // x = x + 0.5 * FFN_mac(LN(x))
    layer_norm_rows(a, x, p.norm_ff_macaron, lq, ctx);
    feed_forward_forward(&ff_saved, branch, a, static_cast<const uint8_t*>(nullptr), p.feed_forward_macaron,
                         dispatcher_, lq, layer_id, 4, rng, ctx);
    op::residual_add_forward(y, x, branch, T(0.5), n, ctx);
    std::swap(x, y);
    // x = x + MHSA_rel(LN(x)) over cache + chunk.
    layer_norm_rows(a, x, p.norm_mha, lq, ctx);
    const T* layer_cache = t1 > 0 ? cache->att.data() + i * heads * t1 * 2 * dk : nullptr;
    const T* p_rows = pos_proj_[static_cast<size_t>(i)].data() + (offset - t1) * d;
    rel_attention_with_cache(branch, kv, a, layer_cache, p_rows, mask, p.self_attn, lq, t1, d, heads, ctx);
    for (int64_t h = 0; keep > 0 && h < heads; ++h) {  // keep 0: the new cache is empty (no pointer)
      std::memcpy(new_att.data() + (i * heads + h) * keep * 2 * dk, kv + (h * tk + next_start) * 2 * dk,
                  sizeof(T) * static_cast<size_t>(keep * 2 * dk));
    }
    op::residual_add_forward(y, x, branch, T(1), n, ctx);
    std::swap(x, y);
    // x = x + Conv(LN(x)) with the causal conv cache.
    layer_norm_rows(a, x, p.norm_conv, lq, ctx);
    const T* conv_cache = cache->cnn.empty() ? nullptr : cache->cnn.data() + i * d * kc;
    conv_module_with_cache(branch, new_cnn.data() + i * d * kc, a, conv_cache, p.conv_module, lq, ctx);
    op::residual_add_forward(y, x, branch, T(1), n, ctx);
    std::swap(x, y);
    // x = x + 0.5 * FFN(LN(x)); LN_final.
    layer_norm_rows(a, x, p.norm_ff, lq, ctx);
    feed_forward_forward(&ff_saved, branch, a, static_cast<const uint8_t*>(nullptr), p.feed_forward,
                         dispatcher_, lq, layer_id, 5, rng, ctx);
    op::residual_add_forward(y, x, branch, T(0.5), n, ctx);
    layer_norm_rows(x, y, p.norm_final, lq, ctx);
  }
  layer_norm_rows(out, x, params_.after_norm, lq, ctx);
  cache->frames = keep;
  cache->att.swap(new_att);
  if (kc > 0) {
    cache->cnn.swap(new_cnn);
  } else {
    cache->cnn.clear();
  }
  if (keep == 0) cache->att.clear();
}

template <class T>
void StreamingEncoder<T>::forward_chunk(std::vector<T>* ys, EncoderChunkCache<T>* cache, const T* xs,
                                        int64_t frames, int64_t offset, int64_t required_cache_size,
                                        const RunContext& ctx) {
  CHECK(ys != nullptr && cache != nullptr);
  arena_->reset();
  RunContext c = ctx;
  c.activations = arena_.get();
  int64_t l = 0;
  T* x = embed(&l, xs, frames, c);
  T* out = arena_alloc<T>(c, l * params_.d_model);
  run_layers(out, x, l, cache, offset, required_cache_size, static_cast<const uint8_t*>(nullptr), c);
  ys->assign(out, out + l * params_.d_model);
}

template <class T>
void StreamingEncoder<T>::forward_chunk_by_chunk(std::vector<T>* ys, const T* xs, int64_t frames,
                                                 int64_t decoding_chunk_size,
                                                 int64_t num_decoding_left_chunks, const RunContext& ctx) {
  CHECK_GT(decoding_chunk_size, 0) << "forward_chunk_by_chunk needs a positive decoding_chunk_size";
  const int64_t f = params_.input_dim, d = params_.d_model;
  const int64_t stride = kSubsamplingRate * decoding_chunk_size;
  const int64_t window = (decoding_chunk_size - 1) * kSubsamplingRate + kSubsamplingContext;
  const int64_t required = decoding_chunk_size * num_decoding_left_chunks;
  EncoderChunkCache<T> cache;
  std::vector<T> y;
  ys->clear();
  int64_t offset = 0;
  for (int64_t cur = 0; cur < frames - kSubsamplingContext + 1; cur += stride) {
    const int64_t end = std::min(cur + window, frames);
    forward_chunk(&y, &cache, xs + cur * f, end - cur, offset, required, ctx);
    ys->insert(ys->end(), y.begin(), y.end());
    offset += static_cast<int64_t>(y.size()) / d;
  }
}

template <class T>
void StreamingEncoder<T>::forward_masked(std::vector<T>* ys, const T* xs, int64_t frames, int64_t chunk_size,
                                         int64_t num_left_chunks, const RunContext& ctx) {
  CHECK(ys != nullptr);
  arena_->reset();
  RunContext c = ctx;
  c.activations = arena_.get();
  int64_t l = 0;
  T* x = embed(&l, xs, frames, c);
  const uint8_t* mask = nullptr;
  if (chunk_size > 0 && chunk_size < l) {
    uint8_t* m = arena_alloc<uint8_t>(c, l * l);
    op::make_chunk_mask(m, chunk_size, num_left_chunks, l, c);
    mask = m;
  }
  EncoderChunkCache<T> cache;
  T* out = arena_alloc<T>(c, l * params_.d_model);
  run_layers(out, x, l, &cache, 0, -1, mask, c);
  ys->assign(out, out + l * params_.d_model);
}

template <class T>
Status StreamingEncoder<T>::encode(std::vector<T>* ys, const T* xs, int64_t frames,
                                   const EncodeOptions& options, const RunContext& ctx) {
  Status valid = validate_encode_options(options);
  if (!valid.ok()) return valid;
  const int64_t l = frames >= kSubsamplingContext ? conv2d_subsampling4_output_size(frames) : 0;
  ys->clear();
  if (l <= 0) return Status();
  if (l > kPositionalEncodingMaxLen) {
    return out_of_range_error("an utterance of " + std::to_string(frames) + " frames gives " +
                              std::to_string(l) + " encoder frames, more than the positional table's " +
                              std::to_string(kPositionalEncodingMaxLen) +
                              " (200 s at 40 ms); split the audio into shorter segments");
  }
  const EncoderConfig& enc = config_.encoder;
  if (options.decoding_chunk_size > 0 && !enc.use_dynamic_chunk && enc.static_chunk_size <= 0 &&
      !warned_untrained_chunk_) {
    warned_untrained_chunk_ = true;
    LOG(WARNING) << "decoding with --decoding_chunk_size " << options.decoding_chunk_size
                 << " on a model trained without chunk masks (use_dynamic_chunk false, static_chunk_size 0): "
                    "it runs, as in WeNet, but expect worse accuracy than full context";
  }
  if (options.decoding_chunk_size < 0) {
    EncoderChunkCache<T> cache;
    forward_chunk(ys, &cache, xs, frames, 0, -1, ctx);
  } else if (options.simulate_streaming) {
    forward_chunk_by_chunk(ys, xs, frames, options.decoding_chunk_size, options.num_decoding_left_chunks,
                           ctx);
  } else {
    forward_masked(ys, xs, frames, options.decoding_chunk_size, options.num_decoding_left_chunks, ctx);
  }
  return Status();
}

template <class T>
Status StreamingEncoder<T>::start_stream(StreamingState<T>* state, int64_t decoding_chunk_size,
                                         int64_t num_decoding_left_chunks) {
  if (decoding_chunk_size <= 0) {
    return invalid_argument_error("streaming needs a positive --decoding_chunk_size, got " +
                                  std::to_string(decoding_chunk_size));
  }
  *state = StreamingState<T>();
  state->chunk_size = decoding_chunk_size;
  state->left_chunks = num_decoding_left_chunks;
  return Status();
}

template <class T>
void StreamingEncoder<T>::accept_frames(std::vector<T>* ys, StreamingState<T>* state, const T* xs, int64_t n,
                                        const RunContext& ctx) {
  CHECK_GT(state->chunk_size, 0) << "accept_frames before start_stream";
  const int64_t f = params_.input_dim, d = params_.d_model;
  state->pending.insert(state->pending.end(), xs, xs + n * f);
  const int64_t stride = kSubsamplingRate * state->chunk_size;
  const int64_t window = (state->chunk_size - 1) * kSubsamplingRate + kSubsamplingContext;
  std::vector<T> y;
  while (static_cast<int64_t>(state->pending.size()) >= window * f) {
    forward_chunk(&y, &state->cache, state->pending.data(), window, state->offset,
                  state->chunk_size * state->left_chunks, ctx);
    ys->insert(ys->end(), y.begin(), y.end());
    state->offset += static_cast<int64_t>(y.size()) / d;
    state->pending.erase(state->pending.begin(), state->pending.begin() + stride * f);
  }
}

template <class T>
void StreamingEncoder<T>::finish_stream(std::vector<T>* ys, StreamingState<T>* state, const RunContext& ctx) {
  const int64_t f = params_.input_dim, d = params_.d_model;
  const int64_t rest = static_cast<int64_t>(state->pending.size()) / f;
  if (rest >= kSubsamplingContext) {
    std::vector<T> y;
    forward_chunk(&y, &state->cache, state->pending.data(), rest, state->offset,
                  state->chunk_size * state->left_chunks, ctx);
    ys->insert(ys->end(), y.begin(), y.end());
    state->offset += static_cast<int64_t>(y.size()) / d;
  }
  state->pending.clear();
}

template class StreamingEncoder<float>;
template class StreamingEncoder<double>;

}  // namespace moeasr
