// tests/kernels/moe_dispatch_gradcheck_test.cc — finite-difference gradients (double) of the MoE
// dispatch ops: top-k values w.r.t. the logits, routing softmax, permute, weighted un-permute (w.r.t.
// expert outputs and weights), with masked tokens, k = 1, k = E and N = 1; and the whole chain
// logits/x -> top-k -> softmax -> permute -> per-expert linear -> un-permute, as in WeNet's MoEFFNLayer.
// Top-k inputs are built with gaps between logits far larger than the finite-difference step, so no
// perturbation changes the selection (top-k is only piecewise differentiable).
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cpu/moe_dispatch.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::random_doubles;

// Logits whose values in each row are a random permutation of {0, 0.1, ..., 0.1 (E-1)} plus noise
// below 0.01: distinct, at least 0.08 apart, so a step of 1e-6 never reorders them.
std::vector<double> separated_logits(int64_t n, int64_t e, uint64_t seed) {
  std::mt19937_64 engine(seed);
  auto noise = random_doubles(n * e, seed + 1, 0.0, 0.01);
  std::vector<double> logits(n * e);
  std::vector<int> order(e);
  for (int64_t t = 0; t < n; ++t) {
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), engine);
    for (int64_t i = 0; i < e; ++i) logits[t * e + i] = 0.1 * order[i] - 0.3 + noise[t * e + i];
  }
  return logits;
}

struct Routing {
  std::vector<int32_t> indices, dest;
  std::vector<int64_t> counts, offsets;
  int64_t m = 0;
};

Routing route(const std::vector<double>& logits, const std::vector<uint8_t>* mask, int64_t n, int64_t e,
              int64_t k, const RunContext& ctx) {
  Routing r;
  std::vector<double> values(n * k);
  r.indices.resize(n * k);
  r.dest.resize(n * k);
  r.counts.resize(e);
  r.offsets.resize(e + 1);
  moe_topk_forward(values.data(), r.indices.data(), logits.data(), n, e, k, ctx);
  r.m = moe_permute_plan(r.counts.data(), r.offsets.data(), r.dest.data(), r.indices.data(),
                         mask != nullptr ? mask->data() : nullptr, n, e, k, ctx);
  return r;
}

void check_topk(int64_t n, int64_t e, int64_t k) {
  SCOPED_TRACE(::testing::Message() << "N=" << n << " E=" << e << " k=" << k);
  RunContext ctx = testing::cpu_test_context();
  auto logits = separated_logits(n, e, 3);
  auto dvalues = random_doubles(n * k, 4);
  std::vector<double> values(n * k), dlogits(n * e);
  std::vector<int32_t> indices(n * k);
  auto loss = [&]() {
    moe_topk_forward(values.data(), indices.data(), logits.data(), n, e, k, ctx);
    return testing::weighted_sum(values, dvalues);
  };
  auto grads = [&]() {
    moe_topk_forward(values.data(), indices.data(), logits.data(), n, e, k, ctx);
    moe_topk_backward(dlogits.data(), dvalues.data(), indices.data(), n, e, k, ctx);
  };
  testing::expect_gradients_match(loss, grads, {{"logits", logits.data(), dlogits.data(), n * e}});
}

TEST(MoeTopkGradcheck, ValuesWithRespectToLogits) {
  check_topk(7, 5, 2);
  check_topk(1, 4, 1);  // N = 1, k = 1
  check_topk(6, 3, 3);  // k = E
}

void check_routing_softmax(int64_t n, int64_t k) {
  SCOPED_TRACE(::testing::Message() << "N=" << n << " k=" << k);
  RunContext ctx = testing::cpu_test_context();
  auto values = random_doubles(n * k, 5, -3.0, 3.0);
  auto dw = random_doubles(n * k, 6);
  std::vector<double> w(n * k), dvalues(n * k);
  auto loss = [&]() {
    moe_routing_softmax_forward(w.data(), values.data(), n, k, ctx);
    return testing::weighted_sum(w, dw);
  };
  auto grads = [&]() {
    moe_routing_softmax_forward(w.data(), values.data(), n, k, ctx);
    moe_routing_softmax_backward(dvalues.data(), dw.data(), w.data(), n, k, ctx);
  };
  testing::expect_gradients_match(loss, grads, {{"values", values.data(), dvalues.data(), n * k}});
}

TEST(MoeRoutingSoftmaxGradcheck, SoftmaxOverSelectedLogits) {
  check_routing_softmax(9, 2);
  check_routing_softmax(1, 3);
  check_routing_softmax(4, 8);
}

TEST(MoeRoutingSoftmaxGradcheck, SingleExpertHasZeroGradient) {
  // k = 1: the weight is 1 whatever the logit, so the gradient is exactly zero.
  RunContext ctx = testing::cpu_test_context();
  const std::vector<double> values = {0.3, -2.0}, w = {1.0, 1.0}, dw = {0.7, -5.0};
  std::vector<double> dvalues(2, -1.0);
  moe_routing_softmax_backward(dvalues.data(), dw.data(), w.data(), 2, 1, ctx);
  EXPECT_EQ(dvalues, (std::vector<double>{0.0, 0.0}));
}

void check_permute_and_unpermute(int64_t n, int64_t e, int64_t k, int64_t d, bool with_mask) {
  SCOPED_TRACE(::testing::Message() << "N=" << n << " E=" << e << " k=" << k << " D=" << d
                                    << " mask=" << with_mask);
  RunContext ctx = testing::cpu_test_context();
  std::vector<uint8_t> mask(n, 1);
  if (with_mask) {
    for (int64_t t = 1; t < n; t += 3) mask[t] = 0;
  }
  Routing r = route(separated_logits(n, e, 7), with_mask ? &mask : nullptr, n, e, k, ctx);
  ASSERT_GT(r.m, 0);

  // permute: loss = sum(permuted * dpermuted), gradient w.r.t. x.
  auto x = random_doubles(n * d, 8);
  auto dperm = random_doubles(r.m * d, 9);
  std::vector<double> permuted(r.m * d), dx(n * d);
  auto loss_p = [&]() {
    moe_permute_forward(permuted.data(), x.data(), r.dest.data(), n, r.m, k, d, ctx);
    return testing::weighted_sum(permuted, dperm);
  };
  auto grads_p = [&]() { moe_permute_backward(dx.data(), dperm.data(), r.dest.data(), n, r.m, k, d, ctx); };
  testing::expect_gradients_match(loss_p, grads_p, {{"x", x.data(), dx.data(), n * d}});
  for (int64_t t = 0; t < n; ++t) {
    if (mask[t]) continue;
    for (int64_t i = 0; i < d; ++i) {
      EXPECT_EQ(dx[t * d + i], 0.0) << "masked token " << t;
    }
  }

  // un-permute: loss = sum(out * dout), gradients w.r.t. expert outputs y and routing weights.
  auto y = random_doubles(r.m * d, 10);
  auto w = random_doubles(n * k, 11, 0.0, 1.0);
  auto dout = random_doubles(n * d, 12);
  std::vector<double> out(n * d), dy(r.m * d), dw(n * k);
  auto loss_u = [&]() {
    moe_unpermute_forward(out.data(), y.data(), w.data(), r.dest.data(), n, r.m, k, d, ctx);
    return testing::weighted_sum(out, dout);
  };
  auto grads_u = [&]() {
    moe_unpermute_backward(dy.data(), dw.data(), dout.data(), y.data(), w.data(), r.dest.data(), n, r.m, k, d,
                           ctx);
  };
  testing::expect_gradients_match(loss_u, grads_u,
                                  {{"y", y.data(), dy.data(), r.m * d}, {"w", w.data(), dw.data(), n * k}});
}

TEST(MoePermuteGradcheck, PermuteAndUnpermute) {
  check_permute_and_unpermute(8, 4, 2, 5, false);
  check_permute_and_unpermute(10, 4, 2, 3, true);  // masked tokens
  check_permute_and_unpermute(1, 3, 1, 4, false);  // N = 1, k = 1
  check_permute_and_unpermute(5, 3, 3, 2, true);   // k = E
}

// The whole MoE dispatch with a per-expert linear map as the "expert" (y_r = A_e x_r for the rows
// r of expert e), checked end to end: gradients w.r.t. the router logits and the token features.
TEST(MoeDispatchGradcheck, FullChainThroughRouterAndTokens) {
  RunContext ctx = testing::cpu_test_context();
  const int64_t n = 9, e = 4, k = 2, d = 3;
  auto logits = separated_logits(n, e, 21);
  auto x = random_doubles(n * d, 22);
  auto experts = random_doubles(e * d * d, 23);  // [E, D, D]
  auto dout = random_doubles(n * d, 24);
  std::vector<uint8_t> mask(n, 1);
  mask[4] = 0;
  std::vector<double> values(n * k), w(n * k), out(n * d), dlogits(n * e), dx(n * d);
  std::vector<int32_t> indices(n * k), dest(n * k);
  std::vector<int64_t> counts(e), offsets(e + 1);
  std::vector<double> permuted, yexp, dy, dperm;
  // y rows of expert ee = A_ee @ permuted rows (the test's stand-in for the expert FFN).
  auto run_experts = [&](std::vector<double>& dst, const std::vector<double>& src, bool transpose) {
    for (int64_t ee = 0; ee < e; ++ee)
      for (int64_t r = offsets[ee]; r < offsets[ee + 1]; ++r)
        for (int64_t i = 0; i < d; ++i) {
          double acc = 0.0;
          for (int64_t jj = 0; jj < d; ++jj) {
            const double a = transpose ? experts[(ee * d + jj) * d + i] : experts[(ee * d + i) * d + jj];
            acc += a * src[r * d + jj];
          }
          dst[r * d + i] = acc;
        }
  };
  auto forward = [&]() {
    moe_topk_forward(values.data(), indices.data(), logits.data(), n, e, k, ctx);
    moe_routing_softmax_forward(w.data(), values.data(), n, k, ctx);
    int64_t m = moe_permute_plan(counts.data(), offsets.data(), dest.data(), indices.data(), mask.data(), n,
                                 e, k, ctx);
    permuted.assign(m * d, 0.0);
    yexp.assign(m * d, 0.0);
    moe_permute_forward(permuted.data(), x.data(), dest.data(), n, m, k, d, ctx);
    run_experts(yexp, permuted, false);
    moe_unpermute_forward(out.data(), yexp.data(), w.data(), dest.data(), n, m, k, d, ctx);
    return m;
  };
  auto loss = [&]() {
    forward();
    return testing::weighted_sum(out, dout);
  };
  auto grads = [&]() {
    const int64_t m = forward();
    std::vector<double> dw(n * k), dvalues(n * k);
    dy.assign(m * d, 0.0);
    dperm.assign(m * d, 0.0);
    moe_unpermute_backward(dy.data(), dw.data(), dout.data(), yexp.data(), w.data(), dest.data(), n, m, k, d,
                           ctx);
    run_experts(dperm, dy, true);  // d(permuted) = A_e^T dy
    moe_permute_backward(dx.data(), dperm.data(), dest.data(), n, m, k, d, ctx);
    moe_routing_softmax_backward(dvalues.data(), dw.data(), w.data(), n, k, ctx);
    moe_topk_backward(dlogits.data(), dvalues.data(), indices.data(), n, e, k, ctx);
  };
  testing::expect_gradients_match(
      loss, grads, {{"logits", logits.data(), dlogits.data(), n * e}, {"x", x.data(), dx.data(), n * d}});
}

}  // namespace
}  // namespace moeasr
