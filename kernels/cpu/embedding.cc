// kernels/cpu/embedding.cc — torch.nn.Embedding forward (row gather) and backward (deterministic
// scatter-add). The backward's optimised path gives each thread a block of columns and walks all N
// lookups in order; the reference loop (ctx.use_reference_kernels) walks lookups then columns. Both
// add into each element in increasing n, so they agree bit for bit.
#include "kernels/cpu/embedding.h"

#include <algorithm>

#include "core/check.h"
#include "kernels/cpu/cpu_parallel.h"

namespace moeasr {
namespace {

// Columns per parallel block of the backward: wide enough that two threads rarely share a cache line.
constexpr int64_t kEmbeddingColumnBlock = 64;

void check_ids(const int32_t* ids, int64_t n, int64_t vocab) {
  for (int64_t i = 0; i < n; ++i) {
    CHECK(ids[i] >= 0 && ids[i] < vocab)
        << "embedding id " << ids[i] << " at " << i << " outside [0, " << vocab << ")";
  }
}

}  // namespace

template <class T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int64_t n, int64_t vocab, int64_t dim,
                       const RunContext& ctx) {
  CHECK_GE(n, 0);
  CHECK_GE(vocab, 0);
  CHECK_GE(dim, 0);
  check_ids(ids, n, vocab);
  int threads = cpu_threads_for(ctx, n * dim);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T* src = table + static_cast<int64_t>(ids[i]) * dim;
    std::copy(src, src + dim, out + i * dim);
  }
}

template <class T>
void embedding_backward(T* dtable, const T* dout, const int32_t* ids, int64_t n, int64_t vocab, int64_t dim,
                        const RunContext& ctx) {
  CHECK_GE(n, 0);
  CHECK_GE(vocab, 0);
  CHECK_GE(dim, 0);
  check_ids(ids, n, vocab);
  if (ctx.use_reference_kernels) {
    for (int64_t i = 0; i < n; ++i) {
      T* dst = dtable + static_cast<int64_t>(ids[i]) * dim;
      for (int64_t d = 0; d < dim; ++d) dst[d] += dout[i * dim + d];
    }
    return;
  }
  const int64_t blocks = (dim + kEmbeddingColumnBlock - 1) / kEmbeddingColumnBlock;
  int threads = cpu_threads_for(ctx, n * dim);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t begin = block * kEmbeddingColumnBlock;
    const int64_t end = std::min(begin + kEmbeddingColumnBlock, dim);
    for (int64_t i = 0; i < n; ++i) {
      T* dst = dtable + static_cast<int64_t>(ids[i]) * dim;
      const T* src = dout + i * dim;
      for (int64_t d = begin; d < end; ++d) dst[d] += src[d];
    }
  }
}

template void embedding_forward<float>(float*, const int32_t*, const float*, int64_t, int64_t, int64_t,
                                       const RunContext&);
template void embedding_forward<double>(double*, const int32_t*, const double*, int64_t, int64_t, int64_t,
                                        const RunContext&);
template void embedding_backward<float>(float*, const float*, const int32_t*, int64_t, int64_t, int64_t,
                                        const RunContext&);
template void embedding_backward<double>(double*, const double*, const int32_t*, int64_t, int64_t, int64_t,
                                         const RunContext&);

}  // namespace moeasr
