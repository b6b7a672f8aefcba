// tests/model/streaming_test.cc — the streaming (chunk-by-chunk) encoder of model/streaming_encoder.h
// against the training encoder's whole-utterance forward under WeNet's chunk mask:
//   - Conv2dSubsampling4 of WeNet's overlapping input windows gives the whole utterance's subsampled
//     frames (to double rounding: the same sums, GEMMs of other sizes);
//   - forward_chunk_by_chunk == encoder_forward(chunk_size c, num_left_chunks l) within 1e-5 (float)
//     and 1e-10 (double) for c in {16, 8, 4}, l in {-1, 2} (and 0), on tiny causal dense and MoE
//     models (d 16, 2 layers, kernel 5) with random weights and an utterance of several chunks;
//   - full context and the one-pass masked forward equal encoder_forward too;
//   - incremental streaming in uneven packets equals forward_chunk_by_chunk; the att cache keeps
//     chunk * left frames;
//   - bad input: decoding_chunk_size 0 is an error; a chunk size the model was not trained for runs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "model/encoder.h"
#include "model/expert_dispatch.h"
#include "model/front_end.h"
#include "model/parameter_table.h"
#include "model/streaming_encoder.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

ModelConfig tiny_causal_config(bool moe) {
  ModelConfig c;
  c.input_dim = 20;
  c.vocab_size = 11;
  c.encoder.output_size = 16;
  c.encoder.attention_heads = 2;
  c.encoder.num_blocks = 2;
  c.encoder.cnn_module_kernel = 5;
  c.encoder.causal = true;
  c.encoder.cnn_module_norm = ConvNormType::kLayerNorm;
  c.encoder.use_dynamic_chunk = true;
  c.encoder.ffn.mlp_type = moe ? MlpType::kMoe : MlpType::kDense;
  c.encoder.ffn.linear_units = 24;
  c.encoder.ffn.n_expert = 4;
  c.encoder.ffn.n_expert_activated = 2;
  c.decoder.attention_heads = 2;
  c.decoder.num_blocks = 1;
  c.decoder.r_num_blocks = 1;
  c.decoder.ffn = c.encoder.ffn;
  c.decoder.ffn.activation = ActivationType::kRelu;
  return c;
}

// Parameters from the default init plus random CMVN statistics and perturbed norms (so that no
// tensor is trivially the identity).
template <class T>
void randomize(ParameterStore<T>* store, uint64_t seed) {
  initialize_parameters(store, seed);
  const ParameterTable& table = *store->table;
  uint64_t s = seed * 1000;
  for (const ParamEntry& e : table.entries()) {
    const bool cmvn_mean = e.name == "encoder.global_cmvn.mean";
    const bool cmvn_istd = e.name == "encoder.global_cmvn.istd";
    const bool norm = e.name.find("norm") != std::string::npos;
    if (!cmvn_mean && !cmvn_istd && !norm) continue;
    std::vector<double> r = testing::random_doubles(e.numel, ++s, -0.3, 0.3);
    T* v = store->value(e);
    for (int64_t i = 0; i < e.numel; ++i) {
      if (cmvn_istd) {
        v[i] = static_cast<T>(1.0 + r[i]);
      } else {
        v[i] = static_cast<T>(static_cast<double>(v[i]) + r[i]);
      }
    }
  }
}

template <class T>
struct TinyEncoder {
  ModelConfig config;
  ParameterTable table;
  ParameterStore<T> store;
  LocalExpertDispatcher<T> dispatcher;
  std::vector<T> pe;
  EncoderParams<T> params;
  StreamingEncoder<T> streaming;
  explicit TinyEncoder(const ModelConfig& c, uint64_t seed = 5)
      : config(c),
        table(build_u2pp_parameter_table(c, ExpertLayout{})),
        store(table),
        streaming(c, &store, &dispatcher) {
    randomize(&store, seed);
    pe.resize(static_cast<size_t>(kPositionalEncodingMaxLen * c.encoder.output_size));
    sinusoid_position_table(pe.data(), kPositionalEncodingMaxLen, c.encoder.output_size);
    params = bind_encoder(&store, c, ExpertLayout{}, pe.data());
  }

  // The training encoder's eval forward over the whole utterance with chunk mask (chunk, left).
  std::vector<T> full(const std::vector<T>& feats, int64_t frames, int64_t chunk, int64_t left) {
    Arena arena("test", 1 << 20, Arena::Growth::kGrowable);
    RunContext ctx = testing::cpu_test_context();
    ctx.activations = &arena;
    EncoderSaved<T> saved;
    int32_t len = static_cast<int32_t>(frames);
    encoder_forward(&saved, feats.data(), &len, params, &dispatcher, chunk, left, false, 1, frames, StepRng{},
                    ctx);
    return std::vector<T>(saved.out, saved.out + saved.length * config.encoder.output_size);
  }
};

template <class T>
double max_abs_diff(const std::vector<T>& a, const std::vector<T>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    m = std::max(m, std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  }
  return m;
}

template <class T>
std::vector<T> random_feats(int64_t frames, int64_t dim, uint64_t seed) {
  std::vector<double> r = testing::random_doubles(frames * dim, seed, -2.0, 2.0);
  return std::vector<T>(r.begin(), r.end());
}

// 53 encoder frames (3 chunks of 16 + 5, 6 of 8 + 5, 13 of 4 + 1) plus 2 trailing input frames that
// no window uses (WeNet drops them too).
constexpr int64_t kFrames = 4 * 53 + 3 + 2;

TEST(Streaming, SubsamplingOfOverlappingWindowsEqualsWholeUtterance) {
  TinyEncoder<double> m(tiny_causal_config(false));
  const int64_t f = m.config.input_dim, d = m.config.encoder.output_size;
  std::vector<double> feats = random_feats<double>(kFrames, f, 1);
  RunContext ctx = testing::cpu_test_context();
  Arena arena("test", 1 << 20, Arena::Growth::kGrowable);
  ctx.activations = &arena;
  const int64_t length = conv2d_subsampling4_output_size(kFrames);
  ASSERT_EQ(length, 53);
  std::vector<double> whole(static_cast<size_t>(length * d));
  Conv2dSubsampling4Saved<double> saved;
  conv2d_subsampling4_forward(&saved, whole.data(), feats.data(), m.params.embed, 1, kFrames, f, ctx);
  for (int64_t chunk : {16, 8, 4, 1}) {
    const int64_t stride = 4 * chunk, window = (chunk - 1) * 4 + 7;
    int64_t emitted = 0;
    for (int64_t cur = 0; cur < kFrames - 7 + 1; cur += stride) {
      const int64_t end = std::min(cur + window, kFrames);
      const int64_t l = conv2d_subsampling4_output_size(end - cur);
      std::vector<double> part(static_cast<size_t>(l * d));
      conv2d_subsampling4_forward(&saved, part.data(), feats.data() + cur * f, m.params.embed, 1, end - cur,
                                  f, ctx);
      EXPECT_EQ(l, std::min(chunk, length - emitted)) << "chunk " << chunk << " window at " << cur;
      for (int64_t i = 0; i < l * d; ++i) {
        // Equal up to the GEMM's summation order for a different row count.
        ASSERT_NEAR(part[i], whole[emitted * d + i], 1e-13)
            << "chunk " << chunk << " frame " << emitted + i / d;
      }
      emitted += l;
    }
    EXPECT_EQ(emitted, length) << "chunk " << chunk;
  }
}

template <class T>
void check_chunk_by_chunk(bool moe, double tol) {
  TinyEncoder<T> m(tiny_causal_config(moe));
  std::vector<T> feats = random_feats<T>(kFrames, m.config.input_dim, 2);
  RunContext ctx = testing::cpu_test_context();
  for (int64_t chunk : {16, 8, 4}) {
    for (int64_t left : {-1, 2, 0}) {
      std::vector<T> expected = m.full(feats, kFrames, chunk, left);
      std::vector<T> got;
      m.streaming.forward_chunk_by_chunk(&got, feats.data(), kFrames, chunk, left, ctx);
      ASSERT_EQ(got.size(), expected.size()) << "chunk " << chunk << " left " << left;
      EXPECT_LT(max_abs_diff(got, expected), tol)
          << (moe ? "MoE" : "dense") << " chunk " << chunk << " left " << left;
      // The one-pass masked forward is the same function.
      std::vector<T> masked;
      m.streaming.forward_masked(&masked, feats.data(), kFrames, chunk, left, ctx);
      EXPECT_LT(max_abs_diff(masked, expected), tol) << "masked, chunk " << chunk << " left " << left;
    }
  }
  // Full context: one forward_chunk over the whole utterance == encoder_forward without a mask.
  std::vector<T> expected = m.full(feats, kFrames, -1, -1);
  std::vector<T> got;
  ASSERT_TRUE(m.streaming.encode(&got, feats.data(), kFrames, EncodeOptions{}, ctx).ok());
  EXPECT_LT(max_abs_diff(got, expected), tol) << "full context";
}

TEST(Streaming, ChunkByChunkEqualsChunkMaskedFullForwardDenseFloat) {
  check_chunk_by_chunk<float>(false, 1e-5);
}
TEST(Streaming, ChunkByChunkEqualsChunkMaskedFullForwardMoeFloat) {
  check_chunk_by_chunk<float>(true, 1e-5);
}
TEST(Streaming, ChunkByChunkEqualsChunkMaskedFullForwardDenseDouble) {
  check_chunk_by_chunk<double>(false, 1e-10);
}
TEST(Streaming, ChunkByChunkEqualsChunkMaskedFullForwardMoeDouble) {
  check_chunk_by_chunk<double>(true, 1e-10);
}

TEST(Streaming, StreamingDiffersFromFullContextSoTheCheckHasTeeth) {
  TinyEncoder<double> m(tiny_causal_config(true));
  std::vector<double> feats = random_feats<double>(kFrames, m.config.input_dim, 3);
  RunContext ctx = testing::cpu_test_context();
  std::vector<double> chunked;
  m.streaming.forward_chunk_by_chunk(&chunked, feats.data(), kFrames, 4, 2, ctx);
  EXPECT_GT(max_abs_diff(chunked, m.full(feats, kFrames, -1, -1)), 1e-3);
  EXPECT_GT(max_abs_diff(chunked, m.full(feats, kFrames, 4, -1)), 1e-3);
}

TEST(Streaming, IncrementalPacketsEqualChunkByChunkAndCacheKeepsLeftChunks) {
  TinyEncoder<double> m(tiny_causal_config(false));
  const int64_t f = m.config.input_dim, d = m.config.encoder.output_size;
  std::vector<double> feats = random_feats<double>(kFrames, f, 4);
  RunContext ctx = testing::cpu_test_context();
  for (int64_t left : {-1, 2}) {
    std::vector<double> expected;
    m.streaming.forward_chunk_by_chunk(&expected, feats.data(), kFrames, 8, left, ctx);
    StreamingState<double> state;
    ASSERT_TRUE(m.streaming.start_stream(&state, 8, left).ok());
    std::vector<double> got;
    int64_t pos = 0, packet = 1;
    while (pos < kFrames) {
      const int64_t n = std::min(packet, kFrames - pos);
      m.streaming.accept_frames(&got, &state, feats.data() + pos * f, n, ctx);
      pos += n;
      packet = packet * 3 % 37 + 1;  // uneven packet sizes
      const int64_t emitted = static_cast<int64_t>(got.size()) / d;
      EXPECT_EQ(state.offset, emitted);
      EXPECT_EQ(state.cache.frames, left < 0 ? emitted : std::min<int64_t>(emitted, 8 * left));
      EXPECT_EQ(static_cast<int64_t>(state.cache.att.size()),
                m.config.encoder.num_blocks * state.cache.frames * d * 2);
      if (emitted > 0) {
        EXPECT_EQ(static_cast<int64_t>(state.cache.cnn.size()),
                  m.config.encoder.num_blocks * d * (m.config.encoder.cnn_module_kernel - 1));
      }
    }
    m.streaming.finish_stream(&got, &state, ctx);
    ASSERT_EQ(got.size(), expected.size());
    EXPECT_LT(max_abs_diff(got, expected), 1e-12) << "left " << left;
  }
}

TEST(Streaming, ForwardChunkPositionsAndCachesMatchWenetSemantics) {
  // Two explicit forward_chunk calls: chunk 2's output equals the masked full forward's frames of
  // chunk 2, and required_cache_size 0 keeps no att cache.
  TinyEncoder<double> m(tiny_causal_config(false));
  const int64_t f = m.config.input_dim, d = m.config.encoder.output_size;
  const int64_t frames = (8 - 1) * 4 + 7 + 32;  // two windows of chunk 8
  std::vector<double> feats = random_feats<double>(frames, f, 6);
  RunContext ctx = testing::cpu_test_context();
  EncoderChunkCache<double> cache;
  std::vector<double> y0, y1;
  m.streaming.forward_chunk(&y0, &cache, feats.data(), 35, 0, 0, ctx);
  EXPECT_EQ(cache.frames, 0);
  EXPECT_TRUE(cache.att.empty());
  m.streaming.forward_chunk(&y1, &cache, feats.data() + 32 * f, 35, 8, 0, ctx);
  std::vector<double> expected = m.full(feats, frames, 8, 0);
  ASSERT_EQ(static_cast<int64_t>(expected.size()), 16 * d);
  std::vector<double> got = y0;
  got.insert(got.end(), y1.begin(), y1.end());
  EXPECT_LT(max_abs_diff(got, expected), 1e-10);
}

TEST(Streaming, BadAndUnusualChunkSizes) {
  TinyEncoder<float> m(tiny_causal_config(false));
  std::vector<float> feats = random_feats<float>(kFrames, m.config.input_dim, 7);
  RunContext ctx = testing::cpu_test_context();
  std::vector<float> ys;
  EncodeOptions zero;
  zero.decoding_chunk_size = 0;
  Status s = m.streaming.encode(&ys, feats.data(), kFrames, zero, ctx);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("--decoding_chunk_size 0"), std::string::npos) << s.message();
  StreamingState<float> state;
  EXPECT_FALSE(m.streaming.start_stream(&state, 0, -1).ok());
  // 37 > max_chunk_size 25 was never sampled in training; WeNet runs it, and so do we.
  EncodeOptions odd;
  odd.decoding_chunk_size = 37;
  odd.simulate_streaming = true;
  ASSERT_TRUE(m.streaming.encode(&ys, feats.data(), kFrames, odd, ctx).ok());
  EXPECT_LT(max_abs_diff(ys, m.full(feats, kFrames, 37, -1)), 1e-5);
  // Too short for one window: no frames, no error.
  ASSERT_TRUE(m.streaming.encode(&ys, feats.data(), 6, EncodeOptions{}, ctx).ok());
  EXPECT_TRUE(ys.empty());
  // Longer than the positional table: an error naming the limit.
  std::vector<float> long_feats(static_cast<size_t>((4 * 5001 + 3) * m.config.input_dim), 0.f);
  s = m.streaming.encode(&ys, long_feats.data(), 4 * 5001 + 3, EncodeOptions{}, ctx);
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange);
}

}  // namespace
}  // namespace moeasr
