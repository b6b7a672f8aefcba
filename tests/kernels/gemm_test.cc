// tests/kernels/gemm_test.cc — GEMM exactness: integer-valued inputs make every product and sum exact
// in fp32, so OpenBLAS, the reference loop and a hand-computed answer must agree bit for bit, for all
// transposes, odd sizes, padded leading dimensions, beta, empty K, and strided batches.
#include "kernels/cpu/gemm.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

std::vector<float> small_integers(int64_t n, uint64_t seed) {
  std::mt19937_64 engine(seed);
  std::uniform_int_distribution<int> dist(-4, 4);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = static_cast<float>(dist(engine));
  return v;
}

// C = alpha * op(A) op(B) + beta * C by definition, in double.
std::vector<double> expected_gemm(const std::vector<float>& a, const std::vector<float>& b,
                                  const std::vector<float>& c, Transpose ta, Transpose tb, int64_t m,
                                  int64_t n, int64_t k, double alpha, double beta, int64_t lda, int64_t ldb,
                                  int64_t ldc) {
  std::vector<double> out(c.begin(), c.end());
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0;
      for (int64_t p = 0; p < k; ++p) {
        double av = ta == Transpose::kYes ? a[p * lda + i] : a[i * lda + p];
        double bv = tb == Transpose::kYes ? b[j * ldb + p] : b[p * ldb + j];
        acc += av * bv;
      }
      out[i * ldc + j] = alpha * acc + beta * c[i * ldc + j];
    }
  return out;
}

TEST(Gemm, ExactOnIntegersAllTransposesOddSizesPaddedStrides) {
  const int64_t sizes[][3] = {{1, 1, 1}, {7, 5, 3}, {13, 17, 29}, {33, 1, 65}, {2, 64, 0}};
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    for (auto& s : sizes) {
      int64_t m = s[0], n = s[1], k = s[2];
      for (Transpose ta : {Transpose::kNo, Transpose::kYes})
        for (Transpose tb : {Transpose::kNo, Transpose::kYes}) {
          int64_t lda = (ta == Transpose::kYes ? m : k) + 3;
          int64_t ldb = (tb == Transpose::kYes ? k : n) + 1;
          int64_t ldc = n + 2;
          auto a = small_integers((ta == Transpose::kYes ? k : m) * lda, 1);
          auto b = small_integers((tb == Transpose::kYes ? n : k) * ldb, 2);
          auto c = small_integers(m * ldc, 3);
          auto want = expected_gemm(a, b, c, ta, tb, m, n, k, 2.0, -1.0, lda, ldb, ldc);
          gemm(c.data(), a.data(), b.data(), ta, tb, m, n, k, 2.0f, -1.0f, lda, ldb, ldc, ctx);
          for (int64_t i = 0; i < m * ldc; ++i) {
            ASSERT_EQ(static_cast<double>(c[i]), want[i])
                << "m=" << m << " n=" << n << " k=" << k << " ta=" << int(ta) << " tb=" << int(tb)
                << " reference=" << reference << " at " << i;
          }
        }
    }
  }
}

TEST(Gemm, BetaZeroIgnoresGarbageInC) {
  RunContext ctx = testing::cpu_test_context();
  std::vector<float> a = {1, 2, 3, 4}, b = {5, 6, 7, 8};
  std::vector<float> c(4, std::numeric_limits<float>::quiet_NaN());
  gemm(c.data(), a.data(), b.data(), Transpose::kNo, Transpose::kNo, 2, 2, 2, 1.0f, 0.0f, 2, 2, 2, ctx);
  EXPECT_EQ(c, (std::vector<float>{19, 22, 43, 50}));
}

TEST(Gemm, StridedBatchedMatchesPerBatchGemm) {
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    const int64_t batch = 5, m = 6, n = 7, k = 9;
    auto a = small_integers(batch * m * k, 4);
    auto b = small_integers(batch * n * k, 5);
    std::vector<float> c(batch * m * n, 0.0f);
    gemm_strided_batched(c.data(), a.data(), b.data(), Transpose::kNo, Transpose::kYes, m, n, k, 1.0f, 0.0f,
                         k, k, n, m * k, n * k, m * n, batch, ctx);
    for (int64_t g = 0; g < batch; ++g) {
      std::vector<float> ag(a.begin() + g * m * k, a.begin() + (g + 1) * m * k);
      std::vector<float> bg(b.begin() + g * n * k, b.begin() + (g + 1) * n * k);
      std::vector<float> zero(m * n, 0.0f);
      auto want = expected_gemm(ag, bg, zero, Transpose::kNo, Transpose::kYes, m, n, k, 1, 0, k, k, n);
      for (int64_t i = 0; i < m * n; ++i) ASSERT_EQ(double(c[g * m * n + i]), want[i]) << g << " " << i;
    }
  }
}

TEST(Gemm, LargeBatchOfSmallGemmsUsesThreadsAndStaysExact) {
  // Enough work to take the OpenMP path in gemm_strided_batched.
  RunContext ctx = testing::cpu_test_context(false, 2);
  const int64_t batch = 64, m = 16, n = 16, k = 16;
  auto a = small_integers(batch * m * k, 6);
  auto b = small_integers(batch * k * n, 7);
  std::vector<float> c(batch * m * n), c_ref(batch * m * n);
  batched_matmul_forward(c.data(), a.data(), b.data(), Transpose::kNo, batch, m, n, k, ctx);
  RunContext ref = testing::cpu_test_context(true);
  batched_matmul_forward(c_ref.data(), a.data(), b.data(), Transpose::kNo, batch, m, n, k, ref);
  EXPECT_EQ(c, c_ref);
}

}  // namespace
}  // namespace moeasr
