// tests/gpu/moe_dispatch_cuda_test.cc — the CUDA MoE dispatch ops (kernels/cuda/moe_dispatch_cuda.h)
// against the CPU ops (kernels/cpu/moe_dispatch.h) on fresh random data: top-k (with forced ties),
// routing softmax, the permute plan (N = 0 and 1, E = 1, k = 1, skewed routing, an expert without rows,
// masked tokens, repeated experts in a token, several blocks' worth of pairs, E = 2048), permute and
// un-permute forward and backward in fp32 and bf16 (odd D, D = 0, the vectorised and scalar paths).
// Integer outputs and fp32 copies must be equal; fp32 sums within kFp32Tolerance of the CPU op in
// double; bf16 paths within kBf16Tolerance of the CPU op on the bf16-rounded inputs.
// Every output is a poisoned DeviceBuffer. Skips with the reason when there is no GPU (label gpu).
#include "kernels/cuda/moe_dispatch_cuda.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/moe_dispatch.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_util.h"

namespace moeasr {
namespace {

using testing::DeviceBuffer;

std::vector<double> to_double(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// Logits rounded to multiples of 0.5 in [-2, 2]: many exact ties, so the tie rule is exercised.
std::vector<float> tied_logits(int64_t count, uint64_t seed) {
  std::vector<float> v = testing::random_floats(count, seed, -2.0f, 2.0f);
  for (float& x : v) x = std::round(x * 2.0f) / 2.0f;
  return v;
}

struct TopkCase {
  int64_t n, e, k;
  bool ties;
};

TEST(MoeDispatchCuda, TopkForwardBackwardMatchCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext cpu = testing::cpu_test_context();
  RunContext gpu = testing::gpu_test_context();
  const std::vector<TopkCase> cases = {{0, 8, 2, false},  {1, 8, 2, false},    {1, 1, 1, false},
                                       {37, 8, 2, true},  {1000, 8, 2, false}, {513, 16, 4, true},
                                       {100, 5, 5, true}, {64, 3, 1, true},    {4099, 8, 2, true}};
  uint64_t seed = 1000;
  for (const TopkCase& c : cases) {
    SCOPED_TRACE("N=" + std::to_string(c.n) + " E=" + std::to_string(c.e) + " k=" + std::to_string(c.k));
    std::vector<float> logits =
        c.ties ? tied_logits(c.n * c.e, ++seed) : testing::random_floats(c.n * c.e, ++seed);
    std::vector<float> want_v(c.n * c.k), dvalues = testing::random_floats(c.n * c.k, ++seed);
    std::vector<int32_t> want_i(c.n * c.k);
    moe_topk_forward(want_v.data(), want_i.data(), logits.data(), c.n, c.e, c.k, cpu);
    std::vector<float> want_dl(c.n * c.e);
    moe_topk_backward(want_dl.data(), dvalues.data(), want_i.data(), c.n, c.e, c.k, cpu);

    DeviceBuffer<float> d_logits(logits), d_values(c.n * c.k), d_dvalues(dvalues), d_dlogits(c.n * c.e);
    DeviceBuffer<int32_t> d_indices(c.n * c.k);
    moe_topk_forward_cuda(d_values.get(), d_indices.get(), d_logits.get(), c.n, c.e, c.k, gpu);
    moe_topk_backward_cuda(d_dlogits.get(), d_dvalues.get(), d_indices.get(), c.n, c.e, c.k, gpu);
    EXPECT_EQ(d_indices.download(), want_i);
    EXPECT_EQ(d_values.download(), want_v);
    EXPECT_EQ(d_dlogits.download(), want_dl);
  }
}

TEST(MoeDispatchCuda, RoutingSoftmaxForwardBackwardMatchCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext cpu = testing::cpu_test_context();
  RunContext gpu = testing::gpu_test_context();
  uint64_t seed = 2000;
  for (auto [n, k] :
       std::vector<std::pair<int64_t, int64_t>>{{0, 2}, {1, 1}, {1, 2}, {77, 2}, {1000, 4}, {33, 7}}) {
    SCOPED_TRACE("N=" + std::to_string(n) + " k=" + std::to_string(k));
    std::vector<float> values = testing::random_floats(n * k, ++seed, -4.0f, 4.0f);
    std::vector<float> dweights = testing::random_floats(n * k, ++seed);
    std::vector<double> want_w(n * k), want_dv(n * k);
    moe_routing_softmax_forward(want_w.data(), to_double(values).data(), n, k, cpu);
    DeviceBuffer<float> d_values(values), d_weights(n * k), d_dweights(dweights), d_dvalues(n * k);
    moe_routing_softmax_forward_cuda(d_weights.get(), d_values.get(), n, k, gpu);
    std::vector<float> got_w = d_weights.download();
    EXPECT_LE(testing::max_scaled_error(got_w, want_w), testing::kFp32Tolerance);
    // Backward from the GPU's own forward weights (the CPU op in double on the same inputs).
    moe_routing_softmax_backward(want_dv.data(), to_double(dweights).data(), to_double(got_w).data(), n, k,
                                 cpu);
    moe_routing_softmax_backward_cuda(d_dvalues.get(), d_dweights.get(), d_weights.get(), n, k, gpu);
    EXPECT_LE(testing::max_scaled_error(d_dvalues.download(), want_dv), testing::kFp32Tolerance);
  }
}

// How the expert ids of a case are drawn.
enum class Routing { kTopk, kUniform, kSkewed, kSkipOne };

struct PlanCase {
  int64_t n, e, k;
  Routing routing;
  bool masked;  // about 30% of the tokens masked out
  const char* name;
};

struct Plan {
  std::vector<int32_t> indices;
  std::vector<uint8_t> mask;  // empty: all routed
  std::vector<int64_t> counts, offsets;
  std::vector<int32_t> dest;
  int64_t m = 0;
};

Plan make_plan(const PlanCase& c, uint64_t seed) {
  Plan p;
  std::mt19937_64 rng(seed);
  p.indices.resize(c.n * c.k);
  if (c.routing == Routing::kTopk) {
    std::vector<float> logits = testing::random_floats(c.n * c.e, seed + 1), values(c.n * c.k);
    moe_topk_forward(values.data(), p.indices.data(), logits.data(), c.n, c.e, c.k,
                     testing::cpu_test_context());
  } else {
    for (int32_t& id : p.indices) {
      switch (c.routing) {
        case Routing::kSkewed: id = static_cast<int32_t>(c.e - 1); break;
        case Routing::kSkipOne: {
          // Never expert 1 (the cases using this have E >= 3).
          int32_t v = static_cast<int32_t>(rng() % (c.e - 1));
          id = v >= 1 ? v + 1 : v;
          break;
        }
        default: id = static_cast<int32_t>(rng() % c.e);
      }
    }
  }
  if (c.masked) {
    p.mask.resize(c.n);
    for (uint8_t& m : p.mask) m = (rng() % 10) < 7 ? 1 : 0;
    // Poison the ids of masked tokens: the plan must not read them.
    for (int64_t t = 0; t < c.n; ++t)
      if (p.mask[t] == 0)
        for (int64_t j = 0; j < c.k; ++j) p.indices[t * c.k + j] = -7;
  }
  p.counts.resize(c.e);
  p.offsets.resize(c.e + 1);
  p.dest.resize(c.n * c.k);
  p.m = moe_permute_plan(p.counts.data(), p.offsets.data(), p.dest.data(), p.indices.data(),
                         c.masked ? p.mask.data() : nullptr, c.n, c.e, c.k, testing::cpu_test_context());
  return p;
}

const std::vector<PlanCase>& plan_cases() {
  static const std::vector<PlanCase> cases = {
      {0, 8, 2, Routing::kUniform, false, "N=0"},
      {1, 8, 2, Routing::kTopk, false, "N=1"},
      {1, 1, 1, Routing::kTopk, false, "N=1 E=1 k=1"},
      {37, 1, 1, Routing::kUniform, false, "E=1 k=1"},
      {100, 8, 1, Routing::kUniform, false, "k=1"},
      {5000, 8, 2, Routing::kTopk, true, "top-2 masked, 5 blocks"},
      {3000, 8, 2, Routing::kSkewed, false, "all tokens to one expert"},
      {2500, 6, 2, Routing::kSkipOne, false, "expert 1 without rows"},
      {4097, 64, 4, Routing::kUniform, true, "E=64 k=4 masked, repeated ids"},
      {700, 2048, 2, Routing::kUniform, false, "E=2048"},
      {20000, 8, 2, Routing::kTopk, false, "20 blocks"},
      {333, 4, 2, Routing::kUniform, true, "masked"},
  };
  return cases;
}

TEST(MoeDispatchCuda, PermutePlanMatchesCpuExactly) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext gpu = testing::gpu_test_context();
  uint64_t seed = 3000;
  for (const PlanCase& c : plan_cases()) {
    SCOPED_TRACE(c.name);
    Plan p = make_plan(c, seed += 10);
    DeviceBuffer<int32_t> d_indices(p.indices), d_dest(c.n * c.k);
    DeviceBuffer<uint8_t> d_mask(c.masked ? p.mask : std::vector<uint8_t>(0));
    DeviceBuffer<int64_t> d_counts(c.e), d_offsets(c.e + 1);
    const size_t ws = moe_permute_plan_workspace_bytes(c.n, c.e, c.k);
    DeviceBuffer<uint8_t> d_ws(static_cast<int64_t>(ws));
    moe_permute_plan_cuda(d_counts.get(), d_offsets.get(), d_dest.get(), d_indices.get(),
                          c.masked ? d_mask.get() : nullptr, c.n, c.e, c.k, d_ws.get(), ws, gpu);
    EXPECT_EQ(d_counts.download(), p.counts);
    EXPECT_EQ(d_offsets.download(), p.offsets);
    EXPECT_EQ(d_dest.download(), p.dest);
    // Run twice on the same (now dirty) workspace: same result (deterministic, no stale state).
    d_dest.poison();
    moe_permute_plan_cuda(d_counts.get(), d_offsets.get(), d_dest.get(), d_indices.get(),
                          c.masked ? d_mask.get() : nullptr, c.n, c.e, c.k, d_ws.get(), ws, gpu);
    EXPECT_EQ(d_dest.download(), p.dest);
  }
}

struct RowCase {
  int64_t n, e, k, d;
  Routing routing;
  bool masked;
};

const std::vector<RowCase>& row_cases() {
  static const std::vector<RowCase> cases = {
      {0, 4, 2, 8, Routing::kUniform, false},    {1, 4, 2, 1, Routing::kTopk, false},
      {1, 1, 1, 7, Routing::kTopk, false},       {37, 8, 2, 64, Routing::kTopk, false},
      {300, 8, 2, 130, Routing::kTopk, true},    {257, 5, 3, 96, Routing::kUniform, true},
      {200, 4, 2, 24, Routing::kSkewed, false},  {150, 6, 2, 40, Routing::kSkipOne, true},
      {64, 4, 2, 0, Routing::kUniform, false},   {4096, 8, 2, 512, Routing::kTopk, false},
      {513, 8, 1, 33, Routing::kUniform, false},
  };
  return cases;
}

std::string row_case_name(const RowCase& c) {
  return "N=" + std::to_string(c.n) + " E=" + std::to_string(c.e) + " k=" + std::to_string(c.k) +
         " D=" + std::to_string(c.d) + (c.masked ? " masked" : "");
}

TEST(MoeDispatchCuda, PermuteUnpermuteFp32MatchCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext cpu = testing::cpu_test_context();
  RunContext gpu = testing::gpu_test_context();
  uint64_t seed = 4000;
  for (const RowCase& c : row_cases()) {
    SCOPED_TRACE(row_case_name(c));
    Plan p = make_plan({c.n, c.e, c.k, c.routing, c.masked, ""}, seed += 10);
    const int64_t n = c.n, k = c.k, d = c.d, m = p.m, m_max = n * k;
    std::vector<float> x = testing::random_floats(n * d, ++seed), y = testing::random_floats(m * d, ++seed);
    std::vector<float> dperm = testing::random_floats(m * d, ++seed),
                       dout = testing::random_floats(n * d, ++seed);
    std::vector<float> w = testing::random_floats(n * k, ++seed, 0.0f, 1.0f);

    std::vector<float> want_perm(m * d), want_dx(n * d), want_out(n * d), want_dy(m * d), want_dw_f(n * k);
    moe_permute_forward(want_perm.data(), x.data(), p.dest.data(), n, m, k, d, cpu);
    moe_permute_backward(want_dx.data(), dperm.data(), p.dest.data(), n, m, k, d, cpu);
    moe_unpermute_forward(want_out.data(), y.data(), w.data(), p.dest.data(), n, m, k, d, cpu);
    moe_unpermute_backward(want_dy.data(), want_dw_f.data(), dout.data(), y.data(), w.data(), p.dest.data(),
                           n, m, k, d, cpu);
    std::vector<double> want_dw(n * k), unused(m * d);
    moe_unpermute_backward(unused.data(), want_dw.data(), to_double(dout).data(), to_double(y).data(),
                           to_double(w).data(), p.dest.data(), n, m, k, d, cpu);

    DeviceBuffer<int32_t> d_dest(p.dest);
    DeviceBuffer<float> d_x(x), d_y(y), d_dperm(dperm), d_dout(dout), d_w(w);
    DeviceBuffer<float> d_perm(m * d), d_dx(n * d), d_out(n * d), d_dy(m * d), d_dw(n * k);
    moe_permute_forward_cuda(d_perm.get(), d_x.get(), d_dest.get(), n, m_max, k, d, gpu);
    moe_permute_backward_cuda(d_dx.get(), d_dperm.get(), d_dest.get(), n, m_max, k, d, gpu);
    moe_unpermute_forward_cuda(d_out.get(), d_y.get(), d_w.get(), d_dest.get(), n, m_max, k, d, gpu);
    moe_unpermute_backward_cuda(d_dy.get(), d_dw.get(), d_dout.get(), d_y.get(), d_w.get(), d_dest.get(), n,
                                m_max, k, d, gpu);
    EXPECT_EQ(d_perm.download(), want_perm);  // copies
    EXPECT_EQ(d_dx.download(), want_dx);      // 0 + a + b in slot order, as on the CPU
    EXPECT_EQ(d_dy.download(), want_dy);      // one product per element
    EXPECT_LE(testing::max_scaled_error(d_out.download(), want_out), testing::kFp32Tolerance);
    EXPECT_LE(testing::max_scaled_error(d_dw.download(), want_dw), testing::kFp32Tolerance);

    // Each output alone (the other null) gives the same values.
    DeviceBuffer<float> d_dy2(m * d), d_dw2(n * k);
    moe_unpermute_backward_cuda<float>(d_dy2.get(), nullptr, d_dout.get(), d_y.get(), d_w.get(), d_dest.get(),
                                       n, m_max, k, d, gpu);
    moe_unpermute_backward_cuda<float>(nullptr, d_dw2.get(), d_dout.get(), d_y.get(), d_w.get(), d_dest.get(),
                                       n, m_max, k, d, gpu);
    EXPECT_EQ(d_dy2.download(), want_dy);
    EXPECT_LE(testing::max_scaled_error(d_dw2.download(), want_dw), testing::kFp32Tolerance);
  }
}

TEST(MoeDispatchCuda, PermuteUnpermuteBf16MatchCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext cpu = testing::cpu_test_context();
  RunContext gpu = testing::gpu_test_context();
  uint64_t seed = 5000;
  for (const RowCase& c : row_cases()) {
    SCOPED_TRACE(row_case_name(c));
    Plan p = make_plan({c.n, c.e, c.k, c.routing, c.masked, ""}, seed += 10);
    const int64_t n = c.n, k = c.k, d = c.d, m = p.m, m_max = n * k;
    // The values the bf16 buffers hold; the CPU reference runs on exactly these.
    std::vector<float> x = testing::round_to_bf16(testing::random_floats(n * d, ++seed));
    std::vector<float> y = testing::round_to_bf16(testing::random_floats(m * d, ++seed));
    std::vector<float> dperm = testing::round_to_bf16(testing::random_floats(m * d, ++seed));
    std::vector<float> dout = testing::round_to_bf16(testing::random_floats(n * d, ++seed));
    std::vector<float> w = testing::random_floats(n * k, ++seed, 0.0f, 1.0f);  // fp32 weights

    std::vector<float> want_perm(m * d), want_dx(n * d), want_out(n * d), want_dy(m * d), want_dw(n * k);
    moe_permute_forward(want_perm.data(), x.data(), p.dest.data(), n, m, k, d, cpu);
    moe_permute_backward(want_dx.data(), dperm.data(), p.dest.data(), n, m, k, d, cpu);
    moe_unpermute_forward(want_out.data(), y.data(), w.data(), p.dest.data(), n, m, k, d, cpu);
    moe_unpermute_backward(want_dy.data(), want_dw.data(), dout.data(), y.data(), w.data(), p.dest.data(), n,
                           m, k, d, cpu);

    DeviceBuffer<int32_t> d_dest(p.dest);
    DeviceBuffer<__nv_bfloat16> d_x(testing::to_bf16(x)), d_y(testing::to_bf16(y));
    DeviceBuffer<__nv_bfloat16> d_dperm(testing::to_bf16(dperm)), d_dout(testing::to_bf16(dout));
    DeviceBuffer<float> d_w(w), d_dw(n * k);
    DeviceBuffer<__nv_bfloat16> d_perm(m * d), d_dx(n * d), d_out(n * d), d_dy(m * d);
    moe_permute_forward_cuda(d_perm.get(), d_x.get(), d_dest.get(), n, m_max, k, d, gpu);
    moe_permute_backward_cuda(d_dx.get(), d_dperm.get(), d_dest.get(), n, m_max, k, d, gpu);
    moe_unpermute_forward_cuda(d_out.get(), d_y.get(), d_w.get(), d_dest.get(), n, m_max, k, d, gpu);
    moe_unpermute_backward_cuda(d_dy.get(), d_dw.get(), d_dout.get(), d_y.get(), d_w.get(), d_dest.get(), n,
                                m_max, k, d, gpu);
    EXPECT_EQ(testing::from_bf16(d_perm.download()), want_perm);  // copies are exact
    EXPECT_LE(testing::relative_norm_error(testing::from_bf16(d_dx.download()), want_dx),
              testing::kBf16Tolerance);
    EXPECT_LE(testing::relative_norm_error(testing::from_bf16(d_out.download()), want_out),
              testing::kBf16Tolerance);
    EXPECT_LE(testing::relative_norm_error(testing::from_bf16(d_dy.download()), want_dy),
              testing::kBf16Tolerance);
    EXPECT_LE(testing::relative_norm_error(d_dw.download(), want_dw), testing::kBf16Tolerance);
  }
}

}  // namespace
}  // namespace moeasr
