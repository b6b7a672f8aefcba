// tests/model/targets_test.cc — U2++ decoder targets (add_sos_eos, R2L reversal) and WeNet's chunk
// sampling: exact hand-worked cases and the sampling distribution.
#include "model/targets.h"

#include <gtest/gtest.h>

#include <map>
#include <vector>

#include "model/chunk_sampling.h"
#include "model/parameter_table.h"

namespace moeasr {
namespace {

TEST(DecoderTargets, L2RAndR2LMatchWeNet) {
  // Two utterances, L = 4: [5, 6, 7] and [8]; sos = eos = 9.
  std::vector<int32_t> ys = {5, 6, 7, -1, 8, -1, -1, -1};
  std::vector<int32_t> lengths = {3, 1};
  std::vector<int32_t> in(10), out(10), in_len(2);
  make_decoder_targets(in.data(), out.data(), in_len.data(), ys.data(), lengths.data(), false, 9, 9, -1, 2,
                       4);
  EXPECT_EQ(in, (std::vector<int32_t>{9, 5, 6, 7, 9, 9, 8, 9, 9, 9}));
  EXPECT_EQ(out, (std::vector<int32_t>{5, 6, 7, 9, -1, 8, 9, -1, -1, -1}));
  EXPECT_EQ(in_len, (std::vector<int32_t>{4, 2}));
  make_decoder_targets(in.data(), out.data(), in_len.data(), ys.data(), lengths.data(), true, 9, 9, -1, 2, 4);
  EXPECT_EQ(in, (std::vector<int32_t>{9, 7, 6, 5, 9, 9, 8, 9, 9, 9}));
  EXPECT_EQ(out, (std::vector<int32_t>{7, 6, 5, 9, -1, 8, 9, -1, -1, -1}));
}

TEST(DecoderTargets, EmptyTranscript) {
  std::vector<int32_t> ys = {0, 0}, lengths = {0}, in(3), out(3), in_len(1);
  make_decoder_targets(in.data(), out.data(), in_len.data(), ys.data(), lengths.data(), true, 4, 4, -1, 1, 2);
  EXPECT_EQ(in, (std::vector<int32_t>{4, 4, 4}));
  EXPECT_EQ(out, (std::vector<int32_t>{4, -1, -1}));
  EXPECT_EQ(in_len[0], 1);
}

TEST(ChunkSampling, DynamicDrawsFollowWeNetDistribution) {
  EncoderConfig enc;
  enc.use_dynamic_chunk = true;
  const int64_t length = 100;
  int full = 0;
  std::map<int64_t, int> chunks;
  const int draws = 20000;
  for (int i = 0; i < draws; ++i) {
    RngKey key;
    key.seed = 7;
    key.purpose = RngPurpose::kChunkSize;
    key.step = static_cast<uint64_t>(i);
    ChunkChoice c = sample_training_chunk(enc, length, philox_stream(key));
    if (c.full_context) {
      ++full;
      EXPECT_EQ(c.chunk_size, length);
    } else {
      ASSERT_GE(c.chunk_size, 1);
      ASSERT_LE(c.chunk_size, 25);
      EXPECT_EQ(c.num_left_chunks, -1);
      ++chunks[c.chunk_size];
    }
  }
  // r uniform on {1..99}; full when r > 50: 49/99 of the draws.
  EXPECT_NEAR(static_cast<double>(full) / draws, 49.0 / 99.0, 0.015);
  // r in {1..50} → chunk = r % 25 + 1: every chunk in [1, 25] reachable, each twice.
  EXPECT_EQ(chunks.size(), 25u);
  // Same key, same draw (resume replays it).
  RngKey key;
  key.seed = 7;
  key.purpose = RngPurpose::kChunkSize;
  key.step = 3;
  ChunkChoice a = sample_training_chunk(enc, length, philox_stream(key));
  ChunkChoice b = sample_training_chunk(enc, length, philox_stream(key));
  EXPECT_EQ(a.chunk_size, b.chunk_size);
}

TEST(ChunkSampling, DynamicLeftChunksStayInRange) {
  EncoderConfig enc;
  enc.use_dynamic_chunk = true;
  enc.use_dynamic_left_chunk = true;
  for (int i = 0; i < 2000; ++i) {
    RngKey key;
    key.step = static_cast<uint64_t>(i);
    ChunkChoice c = sample_training_chunk(enc, 60, philox_stream(key));
    if (c.full_context) continue;
    int64_t max_left = (60 - 1) / c.chunk_size;
    ASSERT_GE(c.num_left_chunks, 0);
    ASSERT_LT(c.num_left_chunks, std::max<int64_t>(max_left, 1));
  }
}

TEST(ChunkSampling, StaticFullAndDecoding) {
  EncoderConfig enc;
  PhiloxStream s = philox_stream(RngKey{});
  EXPECT_TRUE(sample_training_chunk(enc, 10, s).full_context);
  enc.static_chunk_size = 4;
  ChunkChoice c = sample_training_chunk(enc, 10, s);
  EXPECT_FALSE(c.full_context);
  EXPECT_EQ(c.chunk_size, 4);
  enc.use_dynamic_chunk = true;
  EXPECT_TRUE(sample_training_chunk(enc, 1, s).full_context);  // L = 1: nothing to chunk
  EXPECT_TRUE(decoding_chunk(-1, -1, 30).full_context);
  ChunkChoice d = decoding_chunk(16, 2, 30);
  EXPECT_EQ(d.chunk_size, 16);
  EXPECT_EQ(d.num_left_chunks, 2);
}

TEST(ParameterTable, WeNetNamesRegionsAndExpertBlocks) {
  ModelConfig c;
  c.input_dim = 80;
  c.vocab_size = 40;
  c.encoder.output_size = 32;
  c.encoder.attention_heads = 4;
  c.encoder.num_blocks = 2;
  c.encoder.cnn_module_kernel = 5;
  c.encoder.causal = true;
  c.encoder.cnn_module_norm = ConvNormType::kLayerNorm;
  c.encoder.ffn.mlp_type = MlpType::kMoe;
  c.encoder.ffn.linear_units = 64;
  c.encoder.ffn.n_expert = 4;
  c.decoder.num_blocks = 1;
  c.decoder.r_num_blocks = 1;
  c.decoder.ffn = c.encoder.ffn;
  c.decoder.ffn.activation = ActivationType::kRelu;
  ParameterTable full = build_u2pp_parameter_table(c, ExpertLayout{0, 1});
  ASSERT_NE(full.find("encoder.embed.out.0.weight"), nullptr);
  EXPECT_EQ(full.at("encoder.embed.out.0.weight").shape, (Shape{32, 32 * 19}));
  EXPECT_EQ(full.at("encoder.encoders.1.self_attn.pos_bias_u").shape, (Shape{4, 8}));
  EXPECT_EQ(full.at("encoder.encoders.0.conv_module.depthwise_conv.weight").shape, (Shape{32, 1, 5}));
  EXPECT_EQ(full.at("encoder.encoders.0.feed_forward.gate.weight").region, ParamRegion::kDense);
  const ParamEntry& e0 = full.at("encoder.encoders.0.feed_forward.experts.0.w_1.weight");
  const ParamEntry& e3 = full.at("encoder.encoders.0.feed_forward.experts.3.w_1.weight");
  EXPECT_EQ(e0.region, ParamRegion::kExpert);
  EXPECT_EQ(e3.offset, e0.offset + 3 * 64 * 32);  // [E_local, f, d] block
  EXPECT_EQ(full.at("encoder.global_cmvn.istd").region, ParamRegion::kBuffer);
  ASSERT_NE(full.find("decoder.right_decoder.decoders.0.feed_forward.experts.2.w_2.bias"), nullptr);
  ASSERT_NE(full.find("ctc.ctc_lo.bias"), nullptr);

  // EP = 2: each rank holds half of every MoE FFN's experts, named by global id.
  ParameterTable half1 = build_u2pp_parameter_table(c, ExpertLayout{1, 2});
  EXPECT_EQ(half1.find("encoder.encoders.0.feed_forward.experts.0.w_1.weight"), nullptr);
  ASSERT_NE(half1.find("encoder.encoders.0.feed_forward.experts.3.w_1.weight"), nullptr);
  EXPECT_EQ(2 * half1.region_numel(ParamRegion::kExpert), full.region_numel(ParamRegion::kExpert));
  EXPECT_EQ(half1.region_numel(ParamRegion::kDense), full.region_numel(ParamRegion::kDense));

  // Initialisation depends on the name only: expert 3 is the same under EP = 1 and EP = 2.
  ParameterStore<float> a(full), b(half1);
  initialize_parameters(&a, 11);
  initialize_parameters(&b, 11);
  const std::string name = "encoder.encoders.1.feed_forward_macaron.experts.3.w_2.weight";
  const float* va = a.value(name);
  const float* vb = b.value(name);
  for (int64_t i = 0; i < full.at(name).numel; ++i) ASSERT_EQ(va[i], vb[i]);
  EXPECT_NE(va[0], 0.0f);
  EXPECT_EQ(a.value("encoder.after_norm.weight")[0], 1.0f);
}

}  // namespace
}  // namespace moeasr
