// tests/kernels/embedding_test.cc — embedding exactness: the forward copies rows bit for bit, the
// backward on integer values is exact, the threaded column-blocked backward equals the reference loop
// bit for bit on random data with many repeated ids, float matches double, and bad ids abort.
#include "kernels/cpu/embedding.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

TEST(Embedding, ForwardCopiesRows) {
  RunContext ctx = testing::cpu_test_context();
  std::vector<float> table = {0, 1, 10, 11, 20, 21};  // [3, 2]
  std::vector<int32_t> ids = {2, 0, 2, 1};
  std::vector<float> out(8, -1.0f);
  embedding_forward(out.data(), ids.data(), table.data(), 4, 3, 2, ctx);
  EXPECT_EQ(out, (std::vector<float>{20, 21, 0, 1, 20, 21, 10, 11}));
}

TEST(Embedding, BackwardScatterAddsExactly) {
  RunContext ctx = testing::cpu_test_context();
  std::vector<int32_t> ids = {2, 0, 2, 2};
  std::vector<float> dout = {1, 2, 3, 4, 5, 6, 7, 8};  // [4, 2]
  std::vector<float> dtable(6, 100.0f);                // [3, 2], accumulated into
  embedding_backward(dtable.data(), dout.data(), ids.data(), 4, 3, 2, ctx);
  EXPECT_EQ(dtable, (std::vector<float>{103, 104, 100, 100, 113, 116}));
}

TEST(Embedding, ThreadedMatchesReferenceBitwise) {
  const int64_t n = 600, vocab = 37, dim = 203;  // dim not a multiple of the column block
  std::mt19937_64 engine(5);
  std::uniform_int_distribution<int32_t> pick(0, vocab - 1);
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) id = pick(engine);
  auto table = testing::random_floats(vocab * dim, 81);
  auto dout = testing::random_floats(n * dim, 82);
  std::vector<float> out[2], dtable[2];
  for (int reference = 0; reference < 2; ++reference) {
    RunContext ctx = testing::cpu_test_context(reference == 1);
    out[reference].resize(n * dim);
    dtable[reference] = testing::random_floats(vocab * dim, 83);
    embedding_forward(out[reference].data(), ids.data(), table.data(), n, vocab, dim, ctx);
    embedding_backward(dtable[reference].data(), dout.data(), ids.data(), n, vocab, dim, ctx);
  }
  EXPECT_EQ(out[0], out[1]);
  EXPECT_EQ(dtable[0], dtable[1]);
}

TEST(Embedding, FloatMatchesDouble) {
  RunContext ctx = testing::cpu_test_context();
  const int64_t n = 50, vocab = 11, dim = 9;
  std::vector<int32_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>((i * 7) % vocab);
  auto dout_f = testing::random_floats(n * dim, 84);
  std::vector<double> dout_d(dout_f.begin(), dout_f.end());
  std::vector<float> df(vocab * dim, 0.0f);
  std::vector<double> dd(vocab * dim, 0.0);
  embedding_backward(df.data(), dout_f.data(), ids.data(), n, vocab, dim, ctx);
  embedding_backward(dd.data(), dout_d.data(), ids.data(), n, vocab, dim, ctx);
  double max_abs = 0;
  for (int64_t i = 0; i < vocab * dim; ++i) {
    ASSERT_NEAR(df[i], dd[i], 1e-5) << i;
    max_abs = std::max(max_abs, std::fabs(dd[i]));
  }
  EXPECT_GT(max_abs, 0.1);
}

TEST(EmbeddingDeathTest, OutOfRangeIdsAbort) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  RunContext ctx = testing::cpu_test_context();
  std::vector<float> table(6), out(4), dout(4);
  std::vector<int32_t> too_big = {0, 3}, negative = {-1, 0};
  EXPECT_DEATH(embedding_forward(out.data(), too_big.data(), table.data(), 2, 3, 2, ctx),
               "embedding id 3 at 1 outside \\[0, 3\\)");
  EXPECT_DEATH(embedding_forward(out.data(), negative.data(), table.data(), 2, 3, 2, ctx),
               "embedding id -1 at 0 outside");
  EXPECT_DEATH(embedding_backward(table.data(), dout.data(), too_big.data(), 2, 3, 2, ctx), "embedding id 3");
}

}  // namespace
}  // namespace moeasr
