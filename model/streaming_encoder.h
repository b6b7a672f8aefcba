// model/streaming_encoder.h — the inference-only Conformer encoder of U2++ for recognition, as WeNet's
// BaseEncoder.forward_chunk / forward_chunk_by_chunk and ASRModel._forward_encoder
// (u2pp_moe_wenet.md §3, §4, §6; wenet/models/transformer/encoder.py). Forward only, batch 1, lean
// inference layers over an arena that is reset per call (no saved activations); the same parameters
// as the training model (bound from the ParameterStore by WeNet name).
//
// forward_chunk(xs, offset, required_cache_size, att_cache, cnn_cache), as WeNet:
//   1. GlobalCMVN, Conv2dSubsampling4 over the chunk's input frames xs [Tin, F] -> [L', d]
//      (L' = ((Tin-1)/2 - 1)/2), x * sqrt(d).
//   2. The keys are the cache_t1 cached frames followed by the L' new ones; pos_emb = PE rows of the
//      keys' ABSOLUTE positions [offset - cache_t1, offset + L') (rel_pos without rel_shift: the
//      positional term depends on the key position only, so cached keys keep their positions).
//   3. Per layer: the layer's K/V cache [H, cache_t1, 2 dk] (K and V concatenated on the last axis,
//      WeNet's att_cache[i]) is extended by the new frames' K/V; the new frames attend to all keys
//      (cache + chunk) without a mask; the causal conv module prepends its cnn_cache (the last K-1
//      frames of the module's INPUT, i.e. the norm_conv output, BEFORE pointwise_conv1 — the frames
//      that model/conformer_conv.cc zero-pads at the start of the utterance; the first chunk has no
//      cache and gets those zeros) and its new cache is the last K-1 frames of [cache; input].
//   4. The new att cache keeps frames from next_cache_start = max(cache_t1 + L' - required, 0)
//      (required_cache_size < 0: keep all; 0: keep none).
//   5. after_norm. Returns ys [L', d] and the new caches.
// Non-causal conv modules (encoder_conf causal false) have no conv cache: each chunk's conv sees only
// the chunk, zero-padded (K-1)/2 on both sides — WeNet does the same; such a model was not trained
// for streaming and its chunked output differs from the full forward.
//
// forward_chunk_by_chunk(xs, decoding_chunk_size c, num_decoding_left_chunks l): WeNet's windowing:
// windows of decoding_window = (c - 1) * 4 + 7 input frames, stride c * 4, starts
// range(0, T - 7 + 1, stride); the last window may be shorter (>= 7 frames); offset grows by each
// window's output length; required_cache_size = c * l. The windows overlap by 3 frames and start at
// multiples of 4, so each window's subsampling gives exactly the frames the whole-utterance
// subsampling gives at those positions (output j reads input frames [4j, 4j + 6]).
// Equivalence (tests/model/streaming_test.cc): for a causal model, the chunk-by-chunk output equals
// the whole-utterance forward under WeNet's chunk mask subsequent_chunk_mask(L, c, l): chunk k
// attends to chunks k - l .. k (the cache holds exactly c * l frames) and the conv's left context
// is the previous frames whatever l is (the mask never applies to the conv).
//
// encode(): WeNet's _forward_encoder for one utterance:
//   decoding_chunk_size < 0: full context (one forward_chunk over the whole utterance);
//   > 0 and simulate_streaming: forward_chunk_by_chunk;
//   > 0 otherwise: the whole utterance under the chunk mask (as the training forward does);
//   == 0: an error (0 is reserved for training's dynamic chunk sampling).
// A positive chunk size the model was not trained with (e.g. larger than max_chunk_size, or a model
// trained without dynamic/static chunks) is ACCEPTED, as in WeNet's recognize.py: the encoder just
// runs, with whatever accuracy the model has for that context. (WeNet's forward_chunk_by_chunk
// asserts static_chunk_size > 0 or use_dynamic_chunk; we do not, and say so in the log once per
// StreamingEncoder.)
//
// Dims: Tin input frames, F fbank bins, L' encoder frames of the call, d model dim, H heads,
// dk = d / H, K conv kernel, N layers.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/arena.h"
#include "core/status.h"
#include "model/encoder.h"
#include "model/expert_dispatch.h"
#include "model/model_config.h"

namespace moeasr {

// WeNet's att_cache and cnn_cache for one utterance.
template <class T>
struct EncoderChunkCache {
  int64_t frames = 0;  // cache_t1: cached key frames per layer
  std::vector<T> att;  // [N, H, cache_t1, 2 dk]: K in [..., :dk], V in [..., dk:]
  std::vector<T> cnn;  // [N, d, K-1] (WeNet's layout, channels first); empty before the first chunk
                       // and for non-causal conv modules
  void clear() {
    frames = 0;
    att.clear();
    cnn.clear();
  }
};

// Incremental streaming of one utterance (what a runtime keeps between audio packets).
template <class T>
struct StreamingState {
  EncoderChunkCache<T> cache;
  int64_t offset = 0;        // encoder frames emitted so far
  std::vector<T> pending;    // [P, F] input frames not consumed by a full window yet
  int64_t chunk_size = 0;    // decoding_chunk_size (> 0)
  int64_t left_chunks = -1;  // num_decoding_left_chunks
};

struct EncodeOptions {
  int64_t decoding_chunk_size = -1;       // < 0 full context; > 0 chunk in encoder frames; 0 invalid
  int64_t num_decoding_left_chunks = -1;  // < 0 all history
  bool simulate_streaming = false;        // > 0 chunk: run chunk by chunk with caches
};

// Rejects decoding_chunk_size == 0 (and nothing else: see the header comment); names the flag.
Status validate_encode_options(const EncodeOptions& options);

template <class T>
class StreamingEncoder {
 public:
  // Binds the encoder of `config` from `store` (the same table the training model uses);
  // `dispatcher` runs the MoE experts (LocalExpertDispatcher on one process).
  StreamingEncoder(const ModelConfig& config, ParameterStore<T>* store, ExpertDispatcher<T>* dispatcher,
                   const ExpertLayout& layout = ExpertLayout{});

  const ModelConfig& config() const { return config_; }
  int64_t num_layers() const { return static_cast<int64_t>(params_.layers.size()); }
  int64_t cache_kernel() const { return conv_cache_frames_; }  // K-1 (0 when not causal)

  // WeNet forward_chunk. ys gets [L', d]; `cache` is read and replaced by the new cache.
  // CHECK-fails when Tin < 7 or the key positions exceed the positional table (5000 frames).
  void forward_chunk(std::vector<T>* ys,           // [L', d] assigned
                     EncoderChunkCache<T>* cache,  // in: att/cnn cache; out: the new ones
                     const T* xs,                  // [Tin, F] fbank (before CMVN)
                     int64_t frames, int64_t offset, int64_t required_cache_size, const RunContext& ctx);

  // WeNet forward_chunk_by_chunk over a whole utterance; ys gets [L, d]. chunk > 0 (CHECK).
  void forward_chunk_by_chunk(std::vector<T>* ys,  // [L, d] assigned
                              const T* xs,         // [T, F]
                              int64_t frames, int64_t decoding_chunk_size, int64_t num_decoding_left_chunks,
                              const RunContext& ctx);

  // The whole utterance in one pass under subsequent_chunk_mask(L, chunk, left) (chunk <= 0 or
  // >= L: full context). Equals forward_chunk over the whole utterance when the mask is full.
  void forward_masked(std::vector<T>* ys,  // [L, d] assigned
                      const T* xs,         // [T, F]
                      int64_t frames, int64_t chunk_size, int64_t num_left_chunks, const RunContext& ctx);

  // _forward_encoder for one utterance (see the header comment). An utterance shorter than 7 frames
  // gives L = 0 and an empty ys (OK). Errors: chunk 0, an utterance longer than the positional table.
  Status encode(std::vector<T>* ys,  // [L, d] assigned
                const T* xs,         // [T, F]
                int64_t frames, const EncodeOptions& options, const RunContext& ctx);

  // Incremental streaming: start, then feed frames as they arrive; each call appends to ys the
  // encoder frames of every complete window (chunk frames each); finish() runs the last, shorter
  // window (>= 7 frames) if any. Feeding a whole utterance and finishing equals
  // forward_chunk_by_chunk.
  Status start_stream(StreamingState<T>* state, int64_t decoding_chunk_size,
                      int64_t num_decoding_left_chunks);
  void accept_frames(std::vector<T>* ys,  // [L_new, d] appended
                     StreamingState<T>* state,
                     const T* xs,  // [n, F]
                     int64_t n, const RunContext& ctx);
  void finish_stream(std::vector<T>* ys,  // [L_last, d] appended
                     StreamingState<T>* state, const RunContext& ctx);

 private:
  // The N layers and after_norm over x [Lq, d] (scaled embedding), keys = cache + new frames.
  void run_layers(T* out, T* x, int64_t lq, EncoderChunkCache<T>* cache, int64_t offset,
                  int64_t required_cache_size, const uint8_t* mask, const RunContext& ctx);
  // Rows [0, positions) of linear_pos(PE) for every layer are in pos_proj_ (a model constant,
  // computed on demand and kept).
  void ensure_pos_proj(int64_t positions, const RunContext& ctx);
  // CMVN + subsampling + x * sqrt(d): returns [L', d] in the arena.
  T* embed(int64_t* length, const T* xs, int64_t frames, const RunContext& ctx);

  ModelConfig config_;
  ExpertDispatcher<T>* dispatcher_;
  std::vector<T> pe_table_;  // [max_len, d]
  EncoderParams<T> params_;
  int64_t conv_cache_frames_ = 0;
  std::vector<std::vector<T>> pos_proj_;  // per layer [computed, d]
  int64_t pos_proj_rows_ = 0;
  std::unique_ptr<Arena> arena_;
  bool warned_untrained_chunk_ = false;
};

}  // namespace moeasr
