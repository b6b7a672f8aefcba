// kernels/cpu/dropout.cc — Philox inverted dropout (torch.nn.Dropout semantics, counter-based mask).
// Every element depends only on (stream, i, p), so any thread split gives the same output.
#include "kernels/cpu/dropout.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "kernels/cpu/cpu_parallel.h"

namespace moeasr {
namespace {

// Philox draws cost about 10 rounds per 4 words; count them as work when deciding on threads.
constexpr int64_t kDropoutWorkPerElement = 16;
// Elements per Philox batch (philox_block_batch: 4 words per block).
constexpr int64_t kBatchElements = 4 * kPhiloxBatchBlocks;

// The keep rule u >= p with u = (word >> 8) / 2^24 (philox_word_to_uniform), as an integer compare:
// keep iff (word >> 8) >= ceil(p * 2^24). p * 2^24 is exact in double, so the two rules are the same.
uint32_t keep_threshold(double p) {
  return static_cast<uint32_t>(std::ceil(p * 16777216.0));
}

// Calls body(first, count, words) for each batch of kBatchElements elements (count fewer in the last),
// words[j] being element first + j's Philox word; batches are split over threads.
template <class Body>
void for_each_philox_batch(const PhiloxStream& stream, int64_t n, const RunContext& ctx, Body body) {
  const int64_t batches = (n + kBatchElements - 1) / kBatchElements;
  int threads = cpu_threads_for(ctx, n * kDropoutWorkPerElement);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t batch = 0; batch < batches; ++batch) {
    uint32_t words[kBatchElements];
    philox_block_batch(stream, static_cast<uint64_t>(batch) * kPhiloxBatchBlocks, words);
    const int64_t first = batch * kBatchElements;
    body(first, std::min(kBatchElements, n - first), words);
  }
}

void check_dropout_args(double p, int64_t n) {
  CHECK(p >= 0.0 && p < 1.0) << "dropout probability " << p << " must be in [0, 1)";
  CHECK_GE(n, 0);
}

// out[i] = kept ? in[i] * scale : 0, shared by forward and backward.
template <class T>
void dropout_apply(T* out, const T* in, const PhiloxStream& stream, double p, int64_t n,
                   const RunContext& ctx) {
  check_dropout_args(p, n);
  const T scale = static_cast<T>(1.0 / (1.0 - p));
  if (p == 0.0) {
    if (out != in) {
      for (int64_t i = 0; i < n; ++i) out[i] = in[i];
    }
    return;
  }
  const uint32_t threshold = keep_threshold(p);
  for_each_philox_batch(stream, n, ctx, [&](int64_t first, int64_t count, const uint32_t* words) {
    for (int64_t j = 0; j < count; ++j) {
      out[first + j] = (words[j] >> 8) >= threshold ? in[first + j] * scale : T(0);
    }
  });
}

}  // namespace

template <class T>
void dropout_forward(T* y, const T* x, const PhiloxStream& stream, double p, int64_t n,
                     const RunContext& ctx) {
  dropout_apply(y, x, stream, p, n, ctx);
}

template <class T>
void dropout_backward(T* dx, const T* dy, const PhiloxStream& stream, double p, int64_t n,
                      const RunContext& ctx) {
  dropout_apply(dx, dy, stream, p, n, ctx);
}

void dropout_keep_mask(uint8_t* mask, const PhiloxStream& stream, double p, int64_t n,
                       const RunContext& ctx) {
  check_dropout_args(p, n);
  const uint32_t threshold = keep_threshold(p);
  for_each_philox_batch(stream, n, ctx, [&](int64_t first, int64_t count, const uint32_t* words) {
    for (int64_t j = 0; j < count; ++j) mask[first + j] = (words[j] >> 8) >= threshold ? 1 : 0;
  });
}

template void dropout_forward<float>(float*, const float*, const PhiloxStream&, double, int64_t,
                                     const RunContext&);
template void dropout_forward<double>(double*, const double*, const PhiloxStream&, double, int64_t,
                                      const RunContext&);
template void dropout_backward<float>(float*, const float*, const PhiloxStream&, double, int64_t,
                                      const RunContext&);
template void dropout_backward<double>(double*, const double*, const PhiloxStream&, double, int64_t,
                                       const RunContext&);

}  // namespace moeasr
