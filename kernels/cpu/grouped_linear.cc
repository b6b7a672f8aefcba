// kernels/cpu/grouped_linear.cc — grouped_linear_forward/backward on the CPU: one linear op per expert
// with rows (kernels/cpu/linear.h, BLAS underneath), experts in order.
#include "kernels/cpu/grouped_linear.h"

#include "core/check.h"
#include "kernels/cpu/linear.h"

namespace moeasr {
namespace {

void check_offsets(const int64_t* offsets, int64_t m_max, int64_t n_experts) {
  CHECK_GE(n_experts, 1);
  CHECK(offsets != nullptr) << "grouped_linear: expert offsets are null";
  CHECK_EQ(offsets[0], 0) << "grouped_linear: offsets[0]";
  for (int64_t e = 0; e < n_experts; ++e) {
    CHECK_LE(offsets[e], offsets[e + 1]) << "grouped_linear: offsets of expert " << e << " decrease";
  }
  CHECK_LE(offsets[n_experts], m_max) << "grouped_linear: routed rows exceed the buffers' capacity";
}

}  // namespace

template <class T>
void grouped_linear_forward(T* y, const T* x, const T* weight, const T* bias, const int64_t* expert_offsets,
                            int64_t m_max, int64_t n_experts, int64_t in_features, int64_t out_features,
                            const RunContext& ctx) {
  check_offsets(expert_offsets, m_max, n_experts);
  const int64_t i = in_features, o = out_features;
  for (int64_t e = 0; e < n_experts; ++e) {
    const int64_t first = expert_offsets[e], rows = expert_offsets[e + 1] - first;
    if (rows == 0) continue;
    linear_forward(y + first * o, x + first * i, weight + e * o * i, bias != nullptr ? bias + e * o : nullptr,
                   rows, i, o, ctx);
  }
}

template <class T>
void grouped_linear_backward(T* dx, T* dweight, T* dbias, const T* dy, const T* x, const T* weight,
                             const int64_t* expert_offsets, int64_t m_max, int64_t n_experts,
                             int64_t in_features, int64_t out_features, const RunContext& ctx) {
  check_offsets(expert_offsets, m_max, n_experts);
  const int64_t i = in_features, o = out_features;
  for (int64_t e = 0; e < n_experts; ++e) {
    const int64_t first = expert_offsets[e], rows = expert_offsets[e + 1] - first;
    if (rows == 0) continue;
    linear_backward(dx != nullptr ? dx + first * i : nullptr,
                    dweight != nullptr ? dweight + e * o * i : nullptr,
                    dbias != nullptr ? dbias + e * o : nullptr, dy + first * o, x + first * i,
                    weight + e * o * i, rows, i, o, ctx);
  }
}

#define MOEASR_INSTANTIATE_GROUPED_LINEAR(T)                                                         \
  template void grouped_linear_forward<T>(T*, const T*, const T*, const T*, const int64_t*, int64_t, \
                                          int64_t, int64_t, int64_t, const RunContext&);             \
  template void grouped_linear_backward<T>(T*, T*, T*, const T*, const T*, const T*, const int64_t*, \
                                           int64_t, int64_t, int64_t, int64_t, const RunContext&);

MOEASR_INSTANTIATE_GROUPED_LINEAR(float)
MOEASR_INSTANTIATE_GROUPED_LINEAR(double)
#undef MOEASR_INSTANTIATE_GROUPED_LINEAR

}  // namespace moeasr
