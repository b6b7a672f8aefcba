// kernels/cpu/moe_dispatch.cc — top-k routing, routing softmax, permute / weighted un-permute of
// WeNet's MoEFFNLayer (see moe_dispatch.h). Every output row is written by exactly one thread and every
// sum runs in a fixed order, so results do not depend on the thread count.
#include "kernels/cpu/moe_dispatch.h"

#include <algorithm>
#include <climits>
#include <cmath>

#include "core/check.h"
#include "kernels/cpu/cpu_parallel.h"

namespace moeasr {
namespace {

void check_topk_sizes(int64_t n, int64_t n_experts, int64_t k) {
  CHECK_GE(n, 0) << "moe top-k: token count";
  CHECK(k >= 1 && k <= n_experts) << "moe top-k: need 1 <= k <= E, got k=" << k << " E=" << n_experts;
  CHECK_LE(n_experts, static_cast<int64_t>(INT32_MAX)) << "moe top-k: expert ids are int32";
}

void check_dest_sizes(int64_t n, int64_t m, int64_t k, int64_t d) {
  CHECK(n >= 0 && m >= 0 && k >= 1 && d >= 0)
      << "moe permute sizes N=" << n << " M=" << m << " k=" << k << " D=" << d;
}

// A routed pair's row must lie in [0, M); -1 marks an unrouted pair.
inline void check_dest(int32_t row, int64_t m) {
  CHECK(row >= -1 && row < m) << "moe dispatch: destination row " << row << " outside [-1, " << m << ")";
}

}  // namespace

template <class T>
void moe_topk_forward(T* values, int32_t* indices, const T* logits, int64_t n, int64_t n_experts, int64_t k,
                      const RunContext& ctx) {
  check_topk_sizes(n, n_experts, k);
  int threads = cpu_threads_for(ctx, n * n_experts * k);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < n; ++row) {
    const T* l = logits + row * n_experts;
    T* v = values + row * k;
    int32_t* idx = indices + row * k;
    // Selection by repeated scans (k and E are small): slot j takes the largest logit not taken yet;
    // the strict '>' keeps the lowest expert index among equal logits.
    for (int64_t j = 0; j < k; ++j) {
      int64_t best = -1;
      for (int64_t e = 0; e < n_experts; ++e) {
        bool taken = false;
        for (int64_t p = 0; p < j; ++p) taken = taken || idx[p] == e;
        if (taken) continue;
        if (best < 0 || l[e] > l[best]) best = e;
      }
      idx[j] = static_cast<int32_t>(best);
      v[j] = l[best];
    }
  }
}

template <class T>
void moe_topk_backward(T* dlogits, const T* dvalues, const int32_t* indices, int64_t n, int64_t n_experts,
                       int64_t k, const RunContext& ctx) {
  check_topk_sizes(n, n_experts, k);
  int threads = cpu_threads_for(ctx, n * n_experts);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < n; ++row) {
    T* dl = dlogits + row * n_experts;
    std::fill(dl, dl + n_experts, T(0));
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = indices[row * k + j];
      CHECK(e >= 0 && e < n_experts) << "moe top-k backward: expert id " << e << " of token " << row;
      dl[e] += dvalues[row * k + j];
    }
  }
}

template <class T>
void moe_routing_softmax_forward(T* weights, const T* values, int64_t n, int64_t k, const RunContext& ctx) {
  CHECK(n >= 0 && k >= 1) << "moe routing softmax sizes N=" << n << " k=" << k;
  int threads = cpu_threads_for(ctx, n * k * 8);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < n; ++row) {
    const T* v = values + row * k;
    T* w = weights + row * k;
    T max_v = v[0];
    for (int64_t j = 1; j < k; ++j) max_v = std::max(max_v, v[j]);
    T sum = T(0);
    for (int64_t j = 0; j < k; ++j) {
      w[j] = std::exp(v[j] - max_v);
      sum += w[j];
    }
    const T inv = T(1) / sum;
    for (int64_t j = 0; j < k; ++j) w[j] *= inv;
  }
}

template <class T>
void moe_routing_softmax_backward(T* dvalues, const T* dweights, const T* weights, int64_t n, int64_t k,
                                  const RunContext& ctx) {
  CHECK(n >= 0 && k >= 1) << "moe routing softmax sizes N=" << n << " k=" << k;
  int threads = cpu_threads_for(ctx, n * k * 4);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < n; ++row) {
    const T* w = weights + row * k;
    const T* dw = dweights + row * k;
    T dot = T(0);
    for (int64_t j = 0; j < k; ++j) dot += w[j] * dw[j];
    for (int64_t j = 0; j < k; ++j) dvalues[row * k + j] = w[j] * (dw[j] - dot);
  }
}

int64_t moe_permute_plan(int64_t* expert_counts, int64_t* expert_offsets, int32_t* dest,
                         const int32_t* indices, const uint8_t* token_mask, int64_t n, int64_t n_experts,
                         int64_t k, const RunContext& /*ctx*/) {
  CHECK(n >= 0 && n_experts >= 1 && k >= 1)
      << "moe permute plan sizes N=" << n << " E=" << n_experts << " k=" << k;
  CHECK_LE(n * k, static_cast<int64_t>(INT32_MAX)) << "moe permute plan: destination rows are int32";
  // Sequential on purpose: O(N*k) integer work, and the running cursors define the deterministic
  // (expert, token, slot) order.
  std::fill(expert_counts, expert_counts + n_experts, int64_t{0});
  for (int64_t row = 0; row < n; ++row) {
    if (token_mask != nullptr && token_mask[row] == 0) continue;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = indices[row * k + j];
      CHECK(e >= 0 && e < n_experts) << "moe permute plan: expert id " << e << " of token " << row << " slot "
                                     << j << " outside [0, " << n_experts << ")";
      ++expert_counts[e];
    }
  }
  expert_offsets[0] = 0;
  for (int64_t e = 0; e < n_experts; ++e) expert_offsets[e + 1] = expert_offsets[e] + expert_counts[e];
  // Hand out rows with offsets[e] as expert e's cursor: pairs visited in (token, slot) order get
  // consecutive rows inside their expert's range. Afterwards offsets[e] holds the end of expert e,
  // i.e. the start of expert e + 1, so shifting the array right by one restores the start offsets
  // (and offsets[E] = end of expert E - 1 = M).
  for (int64_t row = 0; row < n; ++row) {
    const bool routed = token_mask == nullptr || token_mask[row] != 0;
    for (int64_t j = 0; j < k; ++j) {
      if (!routed) {
        dest[row * k + j] = -1;
        continue;
      }
      const int32_t e = indices[row * k + j];
      dest[row * k + j] = static_cast<int32_t>(expert_offsets[e]++);
    }
  }
  for (int64_t e = n_experts; e > 0; --e) expert_offsets[e] = expert_offsets[e - 1];
  expert_offsets[0] = 0;
  return expert_offsets[n_experts];
}

template <class T>
void moe_permute_forward(T* permuted, const T* x, const int32_t* dest, int64_t n, int64_t m, int64_t k,
                         int64_t d, const RunContext& ctx) {
  check_dest_sizes(n, m, k, d);
  int threads = cpu_threads_for(ctx, n * k * d);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < n; ++row) {
    for (int64_t j = 0; j < k; ++j) {
      const int32_t r = dest[row * k + j];
      check_dest(r, m);
      if (r < 0) continue;
      std::copy(x + row * d, x + (row + 1) * d, permuted + r * d);
    }
  }
}

template <class T>
void moe_permute_backward(T* dx, const T* dpermuted, const int32_t* dest, int64_t n, int64_t m, int64_t k,
                          int64_t d, const RunContext& ctx) {
  check_dest_sizes(n, m, k, d);
  int threads = cpu_threads_for(ctx, n * k * d);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < n; ++row) {
    T* dxr = dx + row * d;
    std::fill(dxr, dxr + d, T(0));
    for (int64_t j = 0; j < k; ++j) {
      const int32_t r = dest[row * k + j];
      check_dest(r, m);
      if (r < 0) continue;
      const T* src = dpermuted + r * d;
      for (int64_t i = 0; i < d; ++i) dxr[i] += src[i];
    }
  }
}

template <class T>
void moe_unpermute_forward(T* out, const T* y, const T* weights, const int32_t* dest, int64_t n, int64_t m,
                           int64_t k, int64_t d, const RunContext& ctx) {
  check_dest_sizes(n, m, k, d);
  int threads = cpu_threads_for(ctx, n * k * d);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < n; ++row) {
    T* o = out + row * d;
    std::fill(o, o + d, T(0));
    for (int64_t j = 0; j < k; ++j) {
      const int32_t r = dest[row * k + j];
      check_dest(r, m);
      if (r < 0) continue;
      const T w = weights[row * k + j];
      const T* src = y + r * d;
      for (int64_t i = 0; i < d; ++i) o[i] += w * src[i];
    }
  }
}

template <class T>
void moe_unpermute_backward(T* dy, T* dweights, const T* dout, const T* y, const T* weights,
                            const int32_t* dest, int64_t n, int64_t m, int64_t k, int64_t d,
                            const RunContext& ctx) {
  check_dest_sizes(n, m, k, d);
  int threads = cpu_threads_for(ctx, n * k * d);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < n; ++row) {
    const T* g = dout + row * d;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t r = dest[row * k + j];
      check_dest(r, m);
      if (r < 0) {
        if (dweights != nullptr) dweights[row * k + j] = T(0);
        continue;
      }
      if (dy != nullptr) {
        const T w = weights[row * k + j];
        T* dyr = dy + r * d;
        for (int64_t i = 0; i < d; ++i) dyr[i] = w * g[i];
      }
      if (dweights != nullptr) {
        const T* yr = y + r * d;
        T acc = T(0);
        for (int64_t i = 0; i < d; ++i) acc += g[i] * yr[i];
        dweights[row * k + j] = acc;
      }
    }
  }
}

template void moe_topk_forward<float>(float*, int32_t*, const float*, int64_t, int64_t, int64_t,
                                      const RunContext&);
template void moe_topk_forward<double>(double*, int32_t*, const double*, int64_t, int64_t, int64_t,
                                       const RunContext&);
template void moe_topk_backward<float>(float*, const float*, const int32_t*, int64_t, int64_t, int64_t,
                                       const RunContext&);
template void moe_topk_backward<double>(double*, const double*, const int32_t*, int64_t, int64_t, int64_t,
                                        const RunContext&);
template void moe_routing_softmax_forward<float>(float*, const float*, int64_t, int64_t, const RunContext&);
template void moe_routing_softmax_forward<double>(double*, const double*, int64_t, int64_t,
                                                  const RunContext&);
template void moe_routing_softmax_backward<float>(float*, const float*, const float*, int64_t, int64_t,
                                                  const RunContext&);
template void moe_routing_softmax_backward<double>(double*, const double*, const double*, int64_t, int64_t,
                                                   const RunContext&);
template void moe_permute_forward<float>(float*, const float*, const int32_t*, int64_t, int64_t, int64_t,
                                         int64_t, const RunContext&);
template void moe_permute_forward<double>(double*, const double*, const int32_t*, int64_t, int64_t, int64_t,
                                          int64_t, const RunContext&);
template void moe_permute_backward<float>(float*, const float*, const int32_t*, int64_t, int64_t, int64_t,
                                          int64_t, const RunContext&);
template void moe_permute_backward<double>(double*, const double*, const int32_t*, int64_t, int64_t, int64_t,
                                           int64_t, const RunContext&);
template void moe_unpermute_forward<float>(float*, const float*, const float*, const int32_t*, int64_t,
                                           int64_t, int64_t, int64_t, const RunContext&);
template void moe_unpermute_forward<double>(double*, const double*, const double*, const int32_t*, int64_t,
                                            int64_t, int64_t, int64_t, const RunContext&);
template void moe_unpermute_backward<float>(float*, float*, const float*, const float*, const float*,
                                            const int32_t*, int64_t, int64_t, int64_t, int64_t,
                                            const RunContext&);
template void moe_unpermute_backward<double>(double*, double*, const double*, const double*, const double*,
                                             const int32_t*, int64_t, int64_t, int64_t, int64_t,
                                             const RunContext&);

}  // namespace moeasr
