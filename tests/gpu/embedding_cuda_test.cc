// tests/gpu/embedding_cuda_test.cc — the CUDA embedding gather / scatter-add against
// kernels/cpu/embedding.h on fresh random data: odd sizes, N = 0 and 1, D above one column slice
// (128), N above one id tile (1024) with heavy repeats, and a decoder-sized table (V = 5000).
// The gather is a copy and the scatter-add adds in the CPU's order in fp32, so both are expected to
// be exact (max_scaled_error reported against kFp32Tolerance for the backward, 0 for the forward).
// dtable is pre-filled with the same random values on both sides (checks +=). Outputs are poisoned.
#include "kernels/cuda/embedding_cuda.h"

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/cpu/embedding.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_util.h"

namespace moeasr {
namespace {

using testing::DeviceBuffer;

struct Shape {
  int64_t n, vocab, dim;
};
const Shape kShapes[] = {{0, 5, 3}, {1, 1, 1}, {7, 11, 5}, {300, 37, 129}, {2500, 3, 17}, {1031, 5000, 256}};

std::vector<int32_t> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> dist(0, vocab - 1);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = static_cast<int32_t>(dist(rng));
  if (n >= 3) ids[2] = ids[0];  // a repeat for sure
  return ids;
}

template <class T>
std::vector<T> to_storage(const std::vector<float>& x);
template <>
std::vector<float> to_storage<float>(const std::vector<float>& x) {
  return x;
}
template <>
std::vector<__nv_bfloat16> to_storage<__nv_bfloat16>(const std::vector<float>& x) {
  return testing::to_bf16(x);
}
std::vector<float> to_float(const std::vector<float>& x) {
  return x;
}
std::vector<float> to_float(const std::vector<__nv_bfloat16>& x) {
  return testing::from_bf16(x);
}

// The values the device sees: x itself for fp32, x rounded to bf16 for bf16.
template <class T>
std::vector<float> as_stored(const std::vector<float>& x) {
  return to_float(to_storage<T>(x));
}

template <class T>
void check_forward() {
  RunContext cpu = testing::cpu_test_context(), gpu = testing::gpu_test_context();
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.n << " V=" << s.vocab << " D=" << s.dim);
    auto ids = random_ids(s.n, s.vocab, 3 + s.n * 7 + s.vocab);
    auto table = as_stored<T>(testing::random_floats(s.vocab * s.dim, 17 + s.vocab + s.dim));
    std::vector<float> want(static_cast<size_t>(s.n * s.dim));
    embedding_forward(want.data(), ids.data(), table.data(), s.n, s.vocab, s.dim, cpu);
    DeviceBuffer<int32_t> d_ids(ids);
    DeviceBuffer<T> d_table(to_storage<T>(table));
    DeviceBuffer<T> d_out(s.n * s.dim);
    embedding_forward_cuda<T>(d_out.get(), d_ids.get(), d_table.get(), s.n, s.vocab, s.dim, gpu);
    EXPECT_EQ(testing::max_scaled_error(to_float(d_out.download()), want), 0.0) << "a gather is a copy";
  }
}

template <class T>
void check_backward() {
  RunContext cpu = testing::cpu_test_context(), gpu = testing::gpu_test_context();
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.n << " V=" << s.vocab << " D=" << s.dim);
    auto ids = random_ids(s.n, s.vocab, 5 + s.n * 3 + s.dim);
    auto dout = as_stored<T>(testing::random_floats(s.n * s.dim, 23 + s.n + s.dim));
    auto dtable_init = testing::random_floats(s.vocab * s.dim, 29 + s.vocab, -2.0f, 2.0f);
    std::vector<float> want = dtable_init;
    embedding_backward(want.data(), dout.data(), ids.data(), s.n, s.vocab, s.dim, cpu);
    DeviceBuffer<int32_t> d_ids(ids);
    DeviceBuffer<T> d_dout(to_storage<T>(dout));
    DeviceBuffer<float> d_dtable(dtable_init);
    embedding_backward_cuda<T>(d_dtable.get(), d_dout.get(), d_ids.get(), s.n, s.vocab, s.dim, gpu);
    // Same additions in the same order in fp32: expected exact; kFp32Tolerance is the contract.
    EXPECT_LE(testing::max_scaled_error(d_dtable.download(), want), testing::kFp32Tolerance);
  }
}

TEST(EmbeddingCuda, ForwardFp32MatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_forward<float>();
}

TEST(EmbeddingCuda, ForwardBf16MatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_forward<__nv_bfloat16>();
}

TEST(EmbeddingCuda, BackwardFp32AccumulatesLikeCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_backward<float>();
}

TEST(EmbeddingCuda, BackwardBf16AccumulatesLikeCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_backward<__nv_bfloat16>();
}

// Device-side behaviour the CPU op cannot show (it CHECK-fails): an id outside [0, V) gives a NaN
// row in the forward and is skipped by the backward.
TEST(EmbeddingCuda, OutOfRangeIdsGiveNanRowsAndNoGradient) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext gpu = testing::gpu_test_context();
  const int64_t vocab = 4, dim = 3;
  std::vector<int32_t> ids = {1, -1, 4, 1};
  auto table = testing::random_floats(vocab * dim, 41);
  DeviceBuffer<int32_t> d_ids(ids);
  DeviceBuffer<float> d_table(table);
  DeviceBuffer<float> d_out(4 * dim);
  embedding_forward_cuda<float>(d_out.get(), d_ids.get(), d_table.get(), 4, vocab, dim, gpu);
  auto out = d_out.download();
  for (int64_t d = 0; d < dim; ++d) {
    EXPECT_EQ(out[0 * dim + d], table[1 * dim + d]);
    EXPECT_TRUE(std::isnan(out[1 * dim + d]));
    EXPECT_TRUE(std::isnan(out[2 * dim + d]));
    EXPECT_EQ(out[3 * dim + d], table[1 * dim + d]);
  }
  auto dout = testing::random_floats(4 * dim, 43);
  std::vector<float> dtable(static_cast<size_t>(vocab * dim), 0.5f);
  DeviceBuffer<float> d_dout(dout), d_dtable(dtable);
  embedding_backward_cuda<float>(d_dtable.get(), d_dout.get(), d_ids.get(), 4, vocab, dim, gpu);
  auto got = d_dtable.download();
  for (int64_t v = 0; v < vocab; ++v) {
    for (int64_t d = 0; d < dim; ++d) {
      float want = v == 1 ? (0.5f + dout[0 * dim + d]) + dout[3 * dim + d] : 0.5f;
      EXPECT_EQ(got[v * dim + d], want) << "v=" << v << " d=" << d;
    }
  }
}

}  // namespace
}  // namespace moeasr
