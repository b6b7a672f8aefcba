// tests/gpu/masks_cuda_test.cc — the CUDA mask builders against kernels/cpu/masks.h: exact equality,
// byte for byte, over odd sizes, lengths 0 and full, L = 0 and 1, full-context and limited-left chunk
// windows; the cross-attention mask from prefix (length) and arbitrary memory-validity patterns. Outputs are
// poisoned (0xFF) so an unwritten byte fails. Skips without a GPU (label gpu).
#include "kernels/cuda/masks_cuda.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "kernels/cpu/masks.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_util.h"

namespace moeasr {
namespace {

using testing::DeviceBuffer;

// Lengths in [0, max_len], with 0 and max_len among them when batch >= 2.
std::vector<int32_t> random_lengths(int64_t batch, int64_t max_len, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> dist(0, max_len);
  std::vector<int32_t> lengths(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) lengths[b] = static_cast<int32_t>(dist(rng));
  if (batch >= 1) lengths[0] = 0;
  if (batch >= 2) lengths[1] = static_cast<int32_t>(max_len);
  return lengths;
}

// Exact equality, with the first mismatch reported.
void expect_equal_masks(const std::vector<uint8_t>& got, const std::vector<uint8_t>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(int(got[i]), int(want[i])) << what << ": first mismatch at element " << i;
  }
}

TEST(MasksCuda, ValidMaskMatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext cpu = testing::cpu_test_context(), gpu = testing::gpu_test_context();
  struct Case {
    int64_t batch, max_len;
  };
  for (Case c : {Case{0, 5}, Case{3, 0}, Case{1, 1}, Case{5, 7}, Case{13, 517}}) {
    auto lengths = random_lengths(c.batch, c.max_len, 11 + c.batch * 31 + c.max_len);
    std::vector<uint8_t> want(static_cast<size_t>(c.batch * c.max_len));
    make_valid_mask(want.data(), lengths.data(), c.batch, c.max_len, cpu);
    DeviceBuffer<int32_t> d_lengths(lengths);
    DeviceBuffer<uint8_t> d_mask(c.batch * c.max_len);
    make_valid_mask_cuda(d_mask.get(), d_lengths.get(), c.batch, c.max_len, gpu);
    SCOPED_TRACE(::testing::Message() << "B=" << c.batch << " T=" << c.max_len);
    expect_equal_masks(d_mask.download(), want, "valid mask");
  }
}

TEST(MasksCuda, CausalMaskMatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext cpu = testing::cpu_test_context(), gpu = testing::gpu_test_context();
  for (int64_t length : {0, 1, 2, 9, 301}) {
    std::vector<uint8_t> want(static_cast<size_t>(length * length));
    make_causal_mask(want.data(), length, cpu);
    DeviceBuffer<uint8_t> d_mask(length * length);
    make_causal_mask_cuda(d_mask.get(), length, gpu);
    SCOPED_TRACE(::testing::Message() << "L=" << length);
    expect_equal_masks(d_mask.download(), want, "causal mask");
  }
}

struct ChunkCase {
  int64_t length, chunk_size, num_left_chunks;
};
const ChunkCase kChunkCases[] = {{0, 3, -1},  {1, 1, -1},   {17, 4, -1},   {17, 4, 0},
                                 {17, 4, 2},  {17, 17, -1}, {17, 100, -1}, {17, 1, 3},
                                 {64, 16, 1}, {301, 25, 3}, {300, 7, -1}};

TEST(MasksCuda, ChunkMaskMatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext cpu = testing::cpu_test_context(), gpu = testing::gpu_test_context();
  for (const ChunkCase& c : kChunkCases) {
    std::vector<uint8_t> want(static_cast<size_t>(c.length * c.length));
    make_chunk_mask(want.data(), c.chunk_size, c.num_left_chunks, c.length, cpu);
    DeviceBuffer<uint8_t> d_mask(c.length * c.length);
    make_chunk_mask_cuda(d_mask.get(), c.chunk_size, c.num_left_chunks, c.length, gpu);
    SCOPED_TRACE(::testing::Message()
                 << "L=" << c.length << " chunk=" << c.chunk_size << " left=" << c.num_left_chunks);
    expect_equal_masks(d_mask.download(), want, "chunk mask");
  }
}

TEST(MasksCuda, ChunkAttentionMaskMatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext cpu = testing::cpu_test_context(), gpu = testing::gpu_test_context();
  for (int64_t batch : {0, 1, 5}) {
    for (const ChunkCase& c : kChunkCases) {
      auto lengths = random_lengths(batch, c.length, 7 + batch * 1000 + c.length * 10 + c.chunk_size);
      const int64_t size = batch * c.length * c.length;
      std::vector<uint8_t> want(static_cast<size_t>(size));
      make_chunk_attention_mask(want.data(), lengths.data(), c.chunk_size, c.num_left_chunks, batch, c.length,
                                cpu);
      DeviceBuffer<int32_t> d_lengths(lengths);
      DeviceBuffer<uint8_t> d_mask(size);
      make_chunk_attention_mask_cuda(d_mask.get(), d_lengths.get(), c.chunk_size, c.num_left_chunks, batch,
                                     c.length, gpu);
      SCOPED_TRACE(::testing::Message() << "B=" << batch << " L=" << c.length << " chunk=" << c.chunk_size
                                        << " left=" << c.num_left_chunks);
      expect_equal_masks(d_mask.download(), want, "chunk attention mask");
    }
  }
}

TEST(MasksCuda, DecoderSelfAttentionMaskMatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext cpu = testing::cpu_test_context(), gpu = testing::gpu_test_context();
  struct Case {
    int64_t batch, length;
  };
  for (Case c : {Case{0, 4}, Case{2, 0}, Case{1, 1}, Case{4, 1}, Case{6, 13}, Case{9, 131}}) {
    auto lengths = random_lengths(c.batch, c.length, 5 + c.batch * 77 + c.length);
    const int64_t size = c.batch * c.length * c.length;
    std::vector<uint8_t> want(static_cast<size_t>(size));
    make_decoder_self_attention_mask(want.data(), lengths.data(), c.batch, c.length, cpu);
    DeviceBuffer<int32_t> d_lengths(lengths);
    DeviceBuffer<uint8_t> d_mask(size);
    make_decoder_self_attention_mask_cuda(d_mask.get(), d_lengths.get(), c.batch, c.length, gpu);
    SCOPED_TRACE(::testing::Message() << "B=" << c.batch << " L=" << c.length);
    expect_equal_masks(d_mask.download(), want, "decoder self-attention mask");
  }
}

TEST(MasksCuda, CrossAttentionMaskMatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext cpu = testing::cpu_test_context(), gpu = testing::gpu_test_context();
  struct Case {
    int64_t batch, steps, frames;
  };
  for (Case c :
       {Case{0, 3, 4}, Case{2, 0, 5}, Case{2, 3, 0}, Case{1, 1, 1}, Case{3, 7, 13}, Case{5, 31, 257}}) {
    // memory_valid as the encoder gives it (a length prefix per sequence), then an arbitrary 0/1 pattern
    // (the mask is copied byte for byte, not rebuilt from a length).
    auto lengths = random_lengths(c.batch, c.frames, 3 + c.batch * 101 + c.steps * 7 + c.frames);
    std::vector<uint8_t> prefix(static_cast<size_t>(c.batch * c.frames));
    make_valid_mask(prefix.data(), lengths.data(), c.batch, c.frames, cpu);
    std::vector<uint8_t> scattered(prefix.size());
    std::mt19937_64 rng(17 + c.frames);
    for (auto& v : scattered) v = static_cast<uint8_t>(rng() & 1u);
    for (const auto* memory_valid : {&prefix, &scattered}) {
      const int64_t size = c.batch * c.steps * c.frames;
      std::vector<uint8_t> want(static_cast<size_t>(size));
      make_cross_attention_mask(want.data(), memory_valid->data(), c.batch, c.steps, c.frames, cpu);
      DeviceBuffer<uint8_t> d_valid(*memory_valid);
      DeviceBuffer<uint8_t> d_mask(size);
      make_cross_attention_mask_cuda(d_mask.get(), d_valid.get(), c.batch, c.steps, c.frames, gpu);
      SCOPED_TRACE(::testing::Message() << "B=" << c.batch << " U=" << c.steps << " T=" << c.frames
                                        << (memory_valid == &prefix ? " prefix" : " scattered"));
      expect_equal_masks(d_mask.download(), want, "cross-attention mask");
    }
  }
}

}  // namespace
}  // namespace moeasr
