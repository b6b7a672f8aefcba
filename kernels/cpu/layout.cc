// kernels/cpu/layout.cc — the data-movement ops of kernels/cpu/layout.h on the CPU: OpenMP over rows
// (one thread when ctx.use_reference_kernels or the work is small), row blocks moved with std::copy.
#include "kernels/cpu/layout.h"

#include <algorithm>

#include "core/check.h"
#include "kernels/cpu/cpu_parallel.h"

namespace moeasr {
namespace {

void check_rows_args(int64_t batch, int64_t time, int64_t lpad, int64_t channels) {
  CHECK_GE(batch, 0);
  CHECK_GE(time, 0);
  CHECK_GE(lpad, 0);
  CHECK_GE(channels, 0);
}

// dst[b, lpad + t] = mask[b, t] ? src[b, t] : 0, dst[b, 0 .. lpad) = 0 (both pad directions).
template <class T>
void pad_rows(T* dst, const T* src, const uint8_t* mask, int64_t batch, int64_t time, int64_t lpad,
              int64_t channels, const RunContext& ctx) {
  check_rows_args(batch, time, lpad, channels);
  const int64_t padded = time + lpad;
  const int threads = cpu_threads_for(ctx, batch * padded * channels);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < batch * padded; ++r) {
    const int64_t b = r / padded;
    const int64_t t = r % padded - lpad;
    T* out = dst + r * channels;
    if (t < 0 || (mask != nullptr && mask[b * time + t] == 0)) {
      std::fill(out, out + channels, T(0));
    } else {
      const T* in = src + (b * time + t) * channels;
      if (in != out) std::copy(in, in + channels, out);
    }
  }
}

// dst[b, t] = mask[b, t] ? src[b, lpad + t] : 0 (both crop directions).
template <class T>
void crop_rows(T* dst, const T* src, const uint8_t* mask, int64_t batch, int64_t time, int64_t lpad,
               int64_t channels, const RunContext& ctx) {
  check_rows_args(batch, time, lpad, channels);
  const int64_t padded = time + lpad;
  const int threads = cpu_threads_for(ctx, batch * time * channels);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < batch * time; ++r) {
    const int64_t b = r / time;
    const int64_t t = r % time;
    T* out = dst + r * channels;
    if (mask != nullptr && mask[r] == 0) {
      std::fill(out, out + channels, T(0));
    } else {
      const T* in = src + (b * padded + lpad + t) * channels;
      if (in != out) std::copy(in, in + channels, out);
    }
  }
}

// dst[a, j, i, k] = src[a, i, j, k]
template <class T>
void swap_middle_axes(T* dst, const T* src, int64_t outer, int64_t rows_i, int64_t cols_j, int64_t inner,
                      const RunContext& ctx) {
  CHECK(outer >= 0 && rows_i >= 0 && cols_j >= 0 && inner >= 0);
  const int threads = cpu_threads_for(ctx, outer * rows_i * cols_j * inner);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t aj = 0; aj < outer * cols_j; ++aj) {
    const int64_t a = aj / cols_j;
    const int64_t j = aj % cols_j;
    for (int64_t i = 0; i < rows_i; ++i) {
      const T* in = src + ((a * rows_i + i) * cols_j + j) * inner;
      std::copy(in, in + inner, dst + (aj * rows_i + i) * inner);
    }
  }
}

}  // namespace

template <class T>
void fill_constant(T* out, T value, int64_t n, const RunContext& ctx) {
  CHECK_GE(n, 0);
  const int threads = cpu_threads_for(ctx, n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = value;
}

template <class T>
void copy_elements(T* dst, const T* src, int64_t n, const RunContext& ctx) {
  CHECK_GE(n, 0);
  (void)ctx;
  if (n > 0) std::copy(src, src + n, dst);
}

template <class T>
void transpose_middle_forward(T* dst, const T* src, int64_t outer, int64_t rows_i, int64_t cols_j,
                              int64_t inner, const RunContext& ctx) {
  swap_middle_axes(dst, src, outer, rows_i, cols_j, inner, ctx);
}

template <class T>
void transpose_middle_backward(T* dsrc, const T* ddst, int64_t outer, int64_t rows_i, int64_t cols_j,
                               int64_t inner, const RunContext& ctx) {
  swap_middle_axes(dsrc, ddst, outer, cols_j, rows_i, inner, ctx);
}

template <class T>
void split_heads_forward(T* dst, const T* src, const T* bias, int64_t batch, int64_t steps, int64_t heads,
                         int64_t d_k, const RunContext& ctx) {
  CHECK(batch >= 0 && steps >= 0 && heads >= 1 && d_k >= 0);
  if (bias == nullptr) {
    swap_middle_axes(dst, src, batch, steps, heads, d_k, ctx);
    return;
  }
  const int64_t d = heads * d_k;
  const int threads = cpu_threads_for(ctx, batch * steps * d);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t bt = 0; bt < batch * steps; ++bt) {
    const int64_t b = bt / steps, t = bt % steps;
    const T* s = src + bt * d;
    for (int64_t h = 0; h < heads; ++h) {
      T* o = dst + ((b * heads + h) * steps + t) * d_k;
      for (int64_t j = 0; j < d_k; ++j) o[j] = s[h * d_k + j] + bias[h * d_k + j];
    }
  }
}

template <class T>
void split_heads_backward(T* dsrc, T* dbias, const T* dout, int64_t batch, int64_t steps, int64_t heads,
                          int64_t d_k, const RunContext& ctx) {
  CHECK(batch >= 0 && steps >= 0 && heads >= 1 && d_k >= 0);
  if (dsrc != nullptr) swap_middle_axes(dsrc, dout, batch, heads, steps, d_k, ctx);
  if (dbias == nullptr) return;
  const int threads = cpu_threads_for(ctx, batch * steps * heads * d_k);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t hj = 0; hj < heads * d_k; ++hj) {
    const int64_t h = hj / d_k, j = hj % d_k;
    T acc = T(0);
    for (int64_t b = 0; b < batch; ++b) {
      const T* s = dout + (b * heads + h) * steps * d_k + j;
      for (int64_t t = 0; t < steps; ++t) acc += s[t * d_k];
    }
    dbias[hj] += acc;
  }
}

template <class T>
void masked_pad_rows_forward(T* dst, const T* src, const uint8_t* mask, int64_t batch, int64_t time,
                             int64_t lpad, int64_t channels, const RunContext& ctx) {
  pad_rows(dst, src, mask, batch, time, lpad, channels, ctx);
}

template <class T>
void masked_pad_rows_backward(T* dsrc, const T* ddst, const uint8_t* mask, int64_t batch, int64_t time,
                              int64_t lpad, int64_t channels, const RunContext& ctx) {
  crop_rows(dsrc, ddst, mask, batch, time, lpad, channels, ctx);
}

template <class T>
void masked_crop_rows_forward(T* dst, const T* src, const uint8_t* mask, int64_t batch, int64_t time,
                              int64_t lpad, int64_t channels, const RunContext& ctx) {
  crop_rows(dst, src, mask, batch, time, lpad, channels, ctx);
}

template <class T>
void masked_crop_rows_backward(T* dsrc, const T* ddst, const uint8_t* mask, int64_t batch, int64_t time,
                               int64_t lpad, int64_t channels, const RunContext& ctx) {
  pad_rows(dsrc, ddst, mask, batch, time, lpad, channels, ctx);
}

template <class T>
void cmvn_normalize_forward(T* out, const T* x, const T* mean, const T* istd, int64_t rows, int64_t feat,
                            const RunContext& ctx) {
  CHECK(rows >= 0 && feat >= 0);
  const int threads = cpu_threads_for(ctx, rows * feat);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t f = 0; f < feat; ++f) out[r * feat + f] = (x[r * feat + f] - mean[f]) * istd[f];
  }
}

template <class T>
void scale_add_table_forward(T* out, const T* x, const T* table, T scale, int64_t batch, int64_t time,
                             int64_t d, const RunContext& ctx) {
  CHECK(batch >= 0 && time >= 0 && d >= 0);
  const int threads = cpu_threads_for(ctx, batch * time * d);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < batch * time; ++r) {
    const T* row_table = table + (r % time) * d;
    for (int64_t j = 0; j < d; ++j) out[r * d + j] = x[r * d + j] * scale + row_table[j];
  }
}

template <class T>
void scale_add_table_backward(T* dx, const T* dout, T scale, int64_t batch, int64_t time, int64_t d,
                              const RunContext& ctx) {
  CHECK(batch >= 0 && time >= 0 && d >= 0);
  const int64_t n = batch * time * d;
  const int threads = cpu_threads_for(ctx, n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) dx[i] = dout[i] * scale;
}

#define MOEASR_INSTANTIATE_LAYOUT(T)                                                                         \
  template void fill_constant<T>(T*, T, int64_t, const RunContext&);                                         \
  template void copy_elements<T>(T*, const T*, int64_t, const RunContext&);                                  \
  template void transpose_middle_forward<T>(T*, const T*, int64_t, int64_t, int64_t, int64_t,                \
                                            const RunContext&);                                              \
  template void transpose_middle_backward<T>(T*, const T*, int64_t, int64_t, int64_t, int64_t,               \
                                             const RunContext&);                                             \
  template void split_heads_forward<T>(T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t,           \
                                       const RunContext&);                                                   \
  template void split_heads_backward<T>(T*, T*, const T*, int64_t, int64_t, int64_t, int64_t,                \
                                        const RunContext&);                                                  \
  template void masked_pad_rows_forward<T>(T*, const T*, const uint8_t*, int64_t, int64_t, int64_t, int64_t, \
                                           const RunContext&);                                               \
  template void masked_pad_rows_backward<T>(T*, const T*, const uint8_t*, int64_t, int64_t, int64_t,         \
                                            int64_t, const RunContext&);                                     \
  template void masked_crop_rows_forward<T>(T*, const T*, const uint8_t*, int64_t, int64_t, int64_t,         \
                                            int64_t, const RunContext&);                                     \
  template void masked_crop_rows_backward<T>(T*, const T*, const uint8_t*, int64_t, int64_t, int64_t,        \
                                             int64_t, const RunContext&);                                    \
  template void cmvn_normalize_forward<T>(T*, const T*, const T*, const T*, int64_t, int64_t,                \
                                          const RunContext&);                                                \
  template void scale_add_table_forward<T>(T*, const T*, const T*, T, int64_t, int64_t, int64_t,             \
                                           const RunContext&);                                               \
  template void scale_add_table_backward<T>(T*, const T*, T, int64_t, int64_t, int64_t, const RunContext&);

MOEASR_INSTANTIATE_LAYOUT(float)
MOEASR_INSTANTIATE_LAYOUT(double)
#undef MOEASR_INSTANTIATE_LAYOUT

}  // namespace moeasr
