// tests/kernels/masks_test.cc — attention masks against hand-worked matrices (WeNet
// subsequent_chunk_mask for L = 5, chunk 2, left -1 / 0 / 1; subsequent_mask; valid masks with
// lengths 0 and 1; the combined encoder and decoder masks), chunk >= L is full context, chunk 1 is
// causal, empty sizes, a brute-force sweep of WeNet's loop, threaded vs reference, and CHECKs.
#include "kernels/cpu/masks.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

// "11000|11000" -> {1,1,0,0,0,1,1,0,0,0}; '|' separates rows for readability.
std::vector<uint8_t> bits(const std::string& s) {
  std::vector<uint8_t> out;
  for (char c : s)
    if (c == '0' || c == '1') out.push_back(static_cast<uint8_t>(c - '0'));
  return out;
}

std::vector<uint8_t> chunk_mask(int64_t length, int64_t chunk, int64_t left, bool reference = false) {
  RunContext ctx = testing::cpu_test_context(reference);
  std::vector<uint8_t> m(length * length, 7);
  make_chunk_mask(m.data(), chunk, left, length, ctx);
  return m;
}

TEST(Masks, ChunkMaskHandWorkedL5Chunk2) {
  EXPECT_EQ(chunk_mask(5, 2, -1), bits("11000|11000|11110|11110|11111"));
  EXPECT_EQ(chunk_mask(5, 2, 0), bits("11000|11000|00110|00110|00001"));
  EXPECT_EQ(chunk_mask(5, 2, 1), bits("11000|11000|11110|11110|00111"));
  EXPECT_EQ(chunk_mask(5, 2, 5), chunk_mask(5, 2, -1));  // more left chunks than exist = all history
}

TEST(Masks, ChunkMaskHandWorkedL7Chunk3) {
  EXPECT_EQ(chunk_mask(7, 3, -1), bits("1110000|1110000|1110000|1111110|1111110|1111110|1111111"));
  EXPECT_EQ(chunk_mask(7, 3, 0), bits("1110000|1110000|1110000|0001110|0001110|0001110|0000001"));
}

TEST(Masks, ChunkAtLeastLengthIsFullContextAndChunkOneIsCausal) {
  for (int64_t length : {1, 4, 5}) {
    std::vector<uint8_t> ones(length * length, 1);
    EXPECT_EQ(chunk_mask(length, length, -1), ones);
    EXPECT_EQ(chunk_mask(length, length + 3, -1), ones);
    EXPECT_EQ(chunk_mask(length, length + 3, 0), ones);
    std::vector<uint8_t> causal(length * length, 7);
    make_causal_mask(causal.data(), length, testing::cpu_test_context());
    EXPECT_EQ(chunk_mask(length, 1, -1), causal);
  }
}

TEST(Masks, CausalHandWorked) {
  RunContext ctx = testing::cpu_test_context();
  std::vector<uint8_t> m(16, 7);
  make_causal_mask(m.data(), 4, ctx);
  EXPECT_EQ(m, bits("1000|1100|1110|1111"));
  std::vector<uint8_t> one(1, 7);
  make_causal_mask(one.data(), 1, ctx);
  EXPECT_EQ(one, bits("1"));
}

TEST(Masks, ValidMaskWithLengthsZeroAndOne) {
  RunContext ctx = testing::cpu_test_context();
  const int32_t lengths[4] = {3, 0, 1, 5};
  std::vector<uint8_t> m(20, 7);
  make_valid_mask(m.data(), lengths, 4, 5, ctx);
  EXPECT_EQ(m, bits("11100|00000|10000|11111"));
}

TEST(Masks, EmptySizesWriteNothing) {
  RunContext ctx = testing::cpu_test_context();
  std::vector<uint8_t> m(1, 7);
  const int32_t zero_length[1] = {0};
  make_valid_mask(m.data(), zero_length, 0, 5, ctx);
  make_valid_mask(m.data(), zero_length, 1, 0, ctx);
  make_causal_mask(m.data(), 0, ctx);
  make_chunk_mask(m.data(), 2, -1, 0, ctx);
  make_chunk_attention_mask(m.data(), zero_length, 2, -1, 1, 0, ctx);
  make_decoder_self_attention_mask(m.data(), zero_length, 1, 0, ctx);
  EXPECT_EQ(m[0], 7);
}

// add_optional_chunk_mask: pad_mask (B, 1, L) & chunk_mask (1, L, L). Only keys are pad-masked.
TEST(Masks, ChunkAttentionMaskHandWorked) {
  RunContext ctx = testing::cpu_test_context();
  const int32_t lengths[3] = {3, 0, 1};
  std::vector<uint8_t> m(3 * 25, 7);
  make_chunk_attention_mask(m.data(), lengths, 2, 1, 3, 5, ctx);
  EXPECT_EQ(m, bits("11000|11000|11100|11100|00100"     // length 3
                    "00000|00000|00000|00000|00000"     // length 0
                    "10000|10000|10000|10000|00000"));  // length 1
  // Full context (chunk = L) is the valid mask broadcast over queries.
  make_chunk_attention_mask(m.data(), lengths, 5, -1, 3, 5, ctx);
  EXPECT_EQ(m, bits("11100|11100|11100|11100|11100"
                    "00000|00000|00000|00000|00000"
                    "10000|10000|10000|10000|10000"));
}

// TransformerDecoder: ~make_pad_mask(ys_in_lens).unsqueeze(1) & subsequent_mask.
TEST(Masks, DecoderSelfAttentionMaskHandWorked) {
  RunContext ctx = testing::cpu_test_context();
  const int32_t lengths[3] = {3, 0, 1};
  std::vector<uint8_t> m(3 * 16, 7);
  make_decoder_self_attention_mask(m.data(), lengths, 3, 4, ctx);
  EXPECT_EQ(m, bits("1000|1100|1110|1110"
                    "0000|0000|0000|0000"
                    "1000|1000|1000|1000"));
}

// WeNet's loop (ret[i, start:ending] = True) written out directly, over a grid of sizes, and the
// combined mask against valid & chunk; both on the threaded and the reference path.
TEST(Masks, SweepMatchesWenetLoopAndCombination) {
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    for (int64_t length : {1, 2, 3, 8, 13}) {
      for (int64_t chunk : {1, 2, 3, 4, 25}) {
        for (int64_t left : {-1, 0, 1, 2}) {
          std::vector<uint8_t> want(length * length, 0);
          for (int64_t i = 0; i < length; ++i) {
            int64_t start = left < 0 ? 0 : std::max<int64_t>((i / chunk - left) * chunk, 0);
            int64_t ending = std::min<int64_t>((i / chunk + 1) * chunk, length);
            for (int64_t j = start; j < ending; ++j) want[i * length + j] = 1;
          }
          auto got = chunk_mask(length, chunk, left, reference);
          ASSERT_EQ(got, want) << "L=" << length << " chunk=" << chunk << " left=" << left;
          const int32_t lengths[3] = {static_cast<int32_t>(length), 0,
                                      static_cast<int32_t>((length + 1) / 2)};
          std::vector<uint8_t> valid(3 * length), combined(3 * length * length);
          make_valid_mask(valid.data(), lengths, 3, length, ctx);
          make_chunk_attention_mask(combined.data(), lengths, chunk, left, 3, length, ctx);
          for (int64_t b = 0; b < 3; ++b)
            for (int64_t i = 0; i < length; ++i)
              for (int64_t j = 0; j < length; ++j)
                ASSERT_EQ(combined[(b * length + i) * length + j],
                          valid[b * length + j] & want[i * length + j]);
        }
      }
    }
  }
}

// Large enough for two threads: threaded and reference loops agree exactly.
TEST(Masks, ThreadedMatchesReference) {
  const int64_t batch = 4, length = 211;
  const int32_t lengths[batch] = {211, 0, 1, 150};
  std::vector<uint8_t> out[2][3];
  for (int reference = 0; reference < 2; ++reference) {
    RunContext ctx = testing::cpu_test_context(reference == 1);
    for (auto& v : out[reference]) v.assign(batch * length * length, 7);
    make_chunk_attention_mask(out[reference][0].data(), lengths, 16, 2, batch, length, ctx);
    make_decoder_self_attention_mask(out[reference][1].data(), lengths, batch, length, ctx);
    make_chunk_mask(out[reference][2].data(), 16, -1, length, ctx);
  }
  for (int k = 0; k < 3; ++k) EXPECT_EQ(out[0][k], out[1][k]) << k;
  EXPECT_EQ(out[0][0][0], 1);
}

TEST(MasksDeathTest, BadArgumentsAbort) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  RunContext ctx = testing::cpu_test_context();
  std::vector<uint8_t> m(100);
  const int32_t too_long[1] = {6};
  const int32_t negative[1] = {-1};
  EXPECT_DEATH(make_valid_mask(m.data(), too_long, 1, 5, ctx), "length 6 of sequence 0 outside");
  EXPECT_DEATH(make_valid_mask(m.data(), negative, 1, 5, ctx), "length -1 of sequence 0 outside");
  EXPECT_DEATH(make_chunk_mask(m.data(), 0, -1, 5, ctx), "chunk_size > 0");
  EXPECT_DEATH(make_chunk_attention_mask(m.data(), too_long, 2, -1, 1, 5, ctx), "outside");
}

TEST(Masks, CrossAttentionMaskBroadcastsMemoryValid) {
  RunContext ctx = testing::cpu_test_context();
  const int64_t batch = 3, steps = 4, frames = 6;
  std::vector<uint8_t> valid(batch * frames);
  for (int64_t i = 0; i < batch * frames; ++i) valid[i] = static_cast<uint8_t>((i * 7 + i / 5) % 3 != 0);
  std::vector<uint8_t> mask(batch * steps * frames, 7);
  make_cross_attention_mask(mask.data(), valid.data(), batch, steps, frames, ctx);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t u = 0; u < steps; ++u)
      for (int64_t f = 0; f < frames; ++f)
        ASSERT_EQ(mask[(b * steps + u) * frames + f], valid[b * frames + f]) << b << " " << u << " " << f;
  make_cross_attention_mask(mask.data(), valid.data(), batch, 0, frames, ctx);  // no steps: nothing to do
  make_cross_attention_mask(mask.data(), valid.data(), 0, steps, frames, ctx);
}

}  // namespace
}  // namespace moeasr
