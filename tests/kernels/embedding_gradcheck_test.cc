// tests/kernels/embedding_gradcheck_test.cc — finite-difference gradients (double) of the embedding
// table: repeated ids, unused rows (zero gradient), N = 1, N = 0, gradient accumulation (+=), both
// the column-blocked threaded backward and the reference loop.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "kernels/cpu/embedding.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::random_doubles;

void check_embedding(const std::vector<int32_t>& ids, int64_t vocab, int64_t dim, bool reference) {
  SCOPED_TRACE(::testing::Message() << "N=" << ids.size() << " V=" << vocab << " D=" << dim
                                    << " reference=" << reference);
  RunContext ctx = testing::cpu_test_context(reference);
  const int64_t n = static_cast<int64_t>(ids.size());
  auto table = random_doubles(vocab * dim, 71), dout = random_doubles(n * dim, 72);
  std::vector<double> out(n * dim), dtable(vocab * dim);
  auto loss = [&]() {
    embedding_forward(out.data(), ids.data(), table.data(), n, vocab, dim, ctx);
    return testing::weighted_sum(out, dout);
  };
  auto grads = [&]() {
    std::fill(dtable.begin(), dtable.end(), 0.0);
    embedding_forward(out.data(), ids.data(), table.data(), n, vocab, dim, ctx);
    embedding_backward(dtable.data(), dout.data(), ids.data(), n, vocab, dim, ctx);
  };
  if (n == 0) {
    grads();
    for (double g : dtable) EXPECT_EQ(g, 0.0);
    return;
  }
  testing::expect_gradients_match(loss, grads, {{"table", table.data(), dtable.data(), vocab * dim}});
}

TEST(EmbeddingGradcheck, RepeatedIdsAndUnusedRows) {
  for (bool reference : {false, true}) {
    check_embedding({2, 0, 2, 4, 2, 0, 1}, 6, 3, reference);  // row 5 unused, row 2 three times
    check_embedding({3}, 5, 7, reference);
    check_embedding({0, 0}, 1, 1, reference);
    check_embedding({1, 7, 1}, 9, 70, reference);  // D spans two column blocks
  }
}

TEST(EmbeddingGradcheck, EmptyBatch) {
  check_embedding({}, 4, 3, false);
  check_embedding({}, 4, 3, true);
}

TEST(EmbeddingGradcheck, TableGradientAccumulates) {
  RunContext ctx = testing::cpu_test_context();
  const std::vector<int32_t> ids = {1, 0, 1};
  const int64_t vocab = 3, dim = 4;
  auto dout = random_doubles(3 * dim, 73);
  std::vector<double> dtable(vocab * dim, 0.0);
  embedding_backward(dtable.data(), dout.data(), ids.data(), 3, vocab, dim, ctx);
  auto once = dtable;
  embedding_backward(dtable.data(), dout.data(), ids.data(), 3, vocab, dim, ctx);
  for (size_t i = 0; i < dtable.size(); ++i) EXPECT_DOUBLE_EQ(dtable[i], 2 * once[i]);
}

}  // namespace
}  // namespace moeasr
