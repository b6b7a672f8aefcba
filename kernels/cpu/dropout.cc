// kernels/cpu/dropout.cc — Philox inverted dropout (torch.nn.Dropout semantics, counter-based mask).
// Every element depends only on (stream, i, p), so any thread split gives the same output.
#include "kernels/cpu/dropout.h"

#include "core/check.h"
#include "kernels/cpu/cpu_parallel.h"

namespace moeasr {
namespace {

// Philox draws cost about 10 rounds per 4 words; count them as work when deciding on threads.
constexpr int64_t kDropoutWorkPerElement = 16;

inline bool dropout_keeps(const PhiloxStream& stream, double p, int64_t i) {
  return static_cast<double>(philox_uniform(stream, static_cast<uint64_t>(i))) >= p;
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
  // One Philox block serves 4 consecutive elements (the same words dropout_keeps() reads).
  const int64_t blocks = (n + 3) / 4;
  int threads = cpu_threads_for(ctx, n * kDropoutWorkPerElement);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t block = 0; block < blocks; ++block) {
    PhiloxCounter words = philox_block(stream, static_cast<uint64_t>(block));
    const int64_t first = 4 * block, count = n - first < 4 ? n - first : 4;
    for (int64_t j = 0; j < count; ++j) {
      bool keep = static_cast<double>(philox_word_to_uniform(words[static_cast<size_t>(j)])) >= p;
      out[first + j] = keep ? in[first + j] * scale : T(0);
    }
  }
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
  int threads = cpu_threads_for(ctx, n * kDropoutWorkPerElement);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) mask[i] = dropout_keeps(stream, p, i) ? 1 : 0;
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
