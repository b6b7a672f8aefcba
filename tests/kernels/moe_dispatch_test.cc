// tests/kernels/moe_dispatch_test.cc — exact answers of the MoE dispatch ops on hand-made routings:
// top-k values/indices and tie order, routing softmax values, per-expert counts/offsets and destination
// rows (mixed routing, one expert takes every token, an expert with no tokens, masked tokens, all
// tokens masked, N = 0, k = 1, k = E), permuted row contents, un-permute forward/backward, the
// permute -> identity experts -> un-permute round trip, and thread-count invariance.
#include "kernels/cpu/moe_dispatch.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::random_doubles;

struct Plan {
  std::vector<int64_t> counts, offsets;
  std::vector<int32_t> dest;
  int64_t m = 0;
};

Plan make_plan(const std::vector<int32_t>& indices, const std::vector<uint8_t>* mask, int64_t n, int64_t e,
               int64_t k) {
  RunContext ctx = testing::cpu_test_context();
  Plan p;
  p.counts.assign(e, -7);
  p.offsets.assign(e + 1, -7);
  p.dest.assign(n * k, -7);
  p.m = moe_permute_plan(p.counts.data(), p.offsets.data(), p.dest.data(), indices.data(),
                         mask != nullptr ? mask->data() : nullptr, n, e, k, ctx);
  return p;
}

TEST(MoeTopk, ExactValuesIndicesAndTieOrder) {
  RunContext ctx = testing::cpu_test_context();
  // Row 0: descending pick; row 1: a tie between experts 1 and 2 -> lower index first;
  // row 2: all equal -> 0, 1; row 3: negative logits.
  const std::vector<float> logits = {0.5f,  -1.0f, 2.0f,  1.0f,   //
                                     1.0f,  3.0f,  3.0f,  2.0f,   //
                                     -1.0f, -1.0f, -1.0f, -1.0f,  //
                                     -4.0f, -3.0f, -2.0f, -5.0f};
  std::vector<float> values(8);
  std::vector<int32_t> indices(8);
  moe_topk_forward(values.data(), indices.data(), logits.data(), 4, 4, 2, ctx);
  EXPECT_EQ(indices, (std::vector<int32_t>{2, 3, 1, 2, 0, 1, 2, 1}));
  EXPECT_EQ(values, (std::vector<float>{2.0f, 1.0f, 3.0f, 3.0f, -1.0f, -1.0f, -2.0f, -3.0f}));
  // k = E sorts the whole row (stable for ties); k = 1 is the argmax (first of equals).
  std::vector<float> all(16);
  std::vector<int32_t> all_idx(16);
  moe_topk_forward(all.data(), all_idx.data(), logits.data(), 4, 4, 4, ctx);
  EXPECT_EQ(all_idx, (std::vector<int32_t>{2, 3, 0, 1, 1, 2, 3, 0, 0, 1, 2, 3, 2, 1, 0, 3}));
  std::vector<float> top1(4);
  std::vector<int32_t> top1_idx(4);
  moe_topk_forward(top1.data(), top1_idx.data(), logits.data(), 4, 4, 1, ctx);
  EXPECT_EQ(top1_idx, (std::vector<int32_t>{2, 1, 0, 2}));
  EXPECT_EQ(top1, (std::vector<float>{2.0f, 3.0f, -1.0f, -2.0f}));
  // N = 0 touches nothing.
  moe_topk_forward<float>(nullptr, nullptr, nullptr, 0, 4, 2, ctx);
}

TEST(MoeTopk, BackwardScattersIntoSelectedPositions) {
  RunContext ctx = testing::cpu_test_context();
  const std::vector<int32_t> indices = {2, 0, 1, 3};
  const std::vector<double> dvalues = {10, 20, 30, 40};
  std::vector<double> dlogits(8, -1.0);
  moe_topk_backward(dlogits.data(), dvalues.data(), indices.data(), 2, 4, 2, ctx);
  EXPECT_EQ(dlogits, (std::vector<double>{20, 0, 10, 0, 0, 30, 0, 40}));
}

TEST(MoeRoutingSoftmax, ExactValues) {
  RunContext ctx = testing::cpu_test_context();
  // Equal logits -> 1/2 each; k = 1 -> weight 1; ln 3 vs 0 -> 3/4, 1/4; large shift is stable.
  const std::vector<double> values = {0.7, 0.7, std::log(3.0), 0.0, 1000.0, 1000.0 - std::log(3.0)};
  std::vector<double> w(6);
  moe_routing_softmax_forward(w.data(), values.data(), 3, 2, ctx);
  EXPECT_EQ(w[0], 0.5);
  EXPECT_EQ(w[1], 0.5);
  EXPECT_NEAR(w[2], 0.75, 1e-15);
  EXPECT_NEAR(w[3], 0.25, 1e-15);
  EXPECT_NEAR(w[4], 0.75, 1e-12);
  EXPECT_NEAR(w[5], 0.25, 1e-12);
  std::vector<float> w1(3);
  const std::vector<float> v1 = {-3.0f, 0.0f, 88.0f};
  moe_routing_softmax_forward(w1.data(), v1.data(), 3, 1, ctx);
  EXPECT_EQ(w1, (std::vector<float>{1.0f, 1.0f, 1.0f}));
  // Float agrees with double.
  auto vd = random_doubles(7 * 3, 5, -4.0, 4.0);
  std::vector<float> vf(vd.begin(), vd.end());
  std::vector<double> wd(vd.size());
  std::vector<float> wf(vd.size());
  moe_routing_softmax_forward(wd.data(), vd.data(), 7, 3, ctx);
  moe_routing_softmax_forward(wf.data(), vf.data(), 7, 3, ctx);
  for (size_t i = 0; i < wd.size(); ++i) EXPECT_NEAR(wf[i], wd[i], 1e-6) << "i=" << i;
}

TEST(MoePermutePlan, MixedRoutingExact) {
  // N = 4, E = 3, k = 2. Expert 0 gets pairs (0,1), (1,0), (3,0); expert 1 gets (1,1), (2,1);
  // expert 2 gets (0,0), (2,0), (3,1) — in (token, slot) order.
  const std::vector<int32_t> indices = {2, 0, 0, 1, 2, 1, 0, 2};
  Plan p = make_plan(indices, nullptr, 4, 3, 2);
  EXPECT_EQ(p.m, 8);
  EXPECT_EQ(p.counts, (std::vector<int64_t>{3, 2, 3}));
  EXPECT_EQ(p.offsets, (std::vector<int64_t>{0, 3, 5, 8}));
  EXPECT_EQ(p.dest, (std::vector<int32_t>{5, 0, 1, 3, 6, 4, 2, 7}));

  // Token 2 masked (its indices may be anything, even out of range): expert 1 keeps only (1,1).
  const std::vector<int32_t> indices_masked = {2, 0, 0, 1, 99, -5, 0, 2};
  const std::vector<uint8_t> mask = {1, 1, 0, 1};
  Plan q = make_plan(indices_masked, &mask, 4, 3, 2);
  EXPECT_EQ(q.m, 6);
  EXPECT_EQ(q.counts, (std::vector<int64_t>{3, 1, 2}));
  EXPECT_EQ(q.offsets, (std::vector<int64_t>{0, 3, 4, 6}));
  EXPECT_EQ(q.dest, (std::vector<int32_t>{4, 0, 1, 3, -1, -1, 2, 5}));

  // Permuted rows are the token rows in that order; un-permute backward/forward use the same map.
  RunContext ctx = testing::cpu_test_context();
  const int64_t d = 2;
  const std::vector<double> x = {1, 2, 3, 4, 5, 6, 7, 8};  // token n = (2n+1, 2n+2)
  std::vector<double> permuted(q.m * d, -1.0);
  moe_permute_forward(permuted.data(), x.data(), q.dest.data(), 4, q.m, 2, d, ctx);
  // rows: e0: t0, t1, t3; e1: t1; e2: t0, t3
  EXPECT_EQ(permuted, (std::vector<double>{1, 2, 3, 4, 7, 8, 3, 4, 1, 2, 7, 8}));
  // Backward: dx[n] = sum of its rows' gradients; the masked token gets zero.
  std::vector<double> dperm = {1, 10, 2, 20, 3, 30, 4, 40, 5, 50, 6, 60}, dx(8, -1.0);
  moe_permute_backward(dx.data(), dperm.data(), q.dest.data(), 4, q.m, 2, d, ctx);
  EXPECT_EQ(dx, (std::vector<double>{5 + 1, 50 + 10, 2 + 4, 20 + 40, 0, 0, 3 + 6, 30 + 60}));
}

TEST(MoePermutePlan, OneExpertTakesEveryTokenOthersNone) {
  const int64_t n = 5, e = 4;
  const std::vector<int32_t> indices(n, 2);  // k = 1
  Plan p = make_plan(indices, nullptr, n, e, 1);
  EXPECT_EQ(p.m, n);
  EXPECT_EQ(p.counts, (std::vector<int64_t>{0, 0, 5, 0}));
  EXPECT_EQ(p.offsets, (std::vector<int64_t>{0, 0, 0, 5, 5}));
  EXPECT_EQ(p.dest, (std::vector<int32_t>{0, 1, 2, 3, 4}));
}

TEST(MoePermutePlan, AllTokensMaskedAndEmptyBatch) {
  RunContext ctx = testing::cpu_test_context();
  const std::vector<int32_t> indices = {0, 1, 1, 0, 1, 2};
  const std::vector<uint8_t> mask = {0, 0, 0};
  Plan p = make_plan(indices, &mask, 3, 3, 2);
  EXPECT_EQ(p.m, 0);
  EXPECT_EQ(p.counts, (std::vector<int64_t>{0, 0, 0}));
  EXPECT_EQ(p.offsets, (std::vector<int64_t>{0, 0, 0, 0}));
  EXPECT_EQ(p.dest, (std::vector<int32_t>(6, -1)));
  // With M = 0 nothing is read from the (empty) expert buffers; outputs and gradients are zero.
  const int64_t d = 3;
  auto x = random_doubles(3 * d, 1);
  const std::vector<double> w = {0.5, 0.5, 0.5, 0.5, 0.5, 0.5};
  std::vector<double> out(3 * d, -1.0), dx(3 * d, -1.0), dw(6, -1.0);
  moe_permute_forward<double>(nullptr, x.data(), p.dest.data(), 3, 0, 2, d, ctx);
  moe_unpermute_forward<double>(out.data(), nullptr, w.data(), p.dest.data(), 3, 0, 2, d, ctx);
  moe_permute_backward<double>(dx.data(), nullptr, p.dest.data(), 3, 0, 2, d, ctx);
  moe_unpermute_backward<double>(nullptr, dw.data(), x.data(), nullptr, w.data(), p.dest.data(), 3, 0, 2, d,
                                 ctx);
  EXPECT_EQ(out, std::vector<double>(3 * d, 0.0));
  EXPECT_EQ(dx, std::vector<double>(3 * d, 0.0));
  EXPECT_EQ(dw, std::vector<double>(6, 0.0));

  // N = 0.
  std::vector<int64_t> counts(3, -1), offsets(4, -1);
  EXPECT_EQ(moe_permute_plan(counts.data(), offsets.data(), nullptr, nullptr, nullptr, 0, 3, 2, ctx), 0);
  EXPECT_EQ(counts, (std::vector<int64_t>{0, 0, 0}));
  EXPECT_EQ(offsets, (std::vector<int64_t>{0, 0, 0, 0}));
}

TEST(MoePermutePlan, EveryTokenToEveryExpert) {
  // k = E = 3: each expert gets every token once; expert e's rows are tokens 0..N-1 in order.
  const int64_t n = 4, e = 3;
  const std::vector<int32_t> indices = {0, 1, 2, 2, 1, 0, 1, 0, 2, 0, 2, 1};
  Plan p = make_plan(indices, nullptr, n, e, e);
  EXPECT_EQ(p.m, n * e);
  EXPECT_EQ(p.counts, (std::vector<int64_t>{4, 4, 4}));
  EXPECT_EQ(p.offsets, (std::vector<int64_t>{0, 4, 8, 12}));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < e; ++j) EXPECT_EQ(p.dest[t * e + j], p.offsets[indices[t * e + j]] + t);
}

TEST(MoeUnpermute, ExactForwardAndBackward) {
  RunContext ctx = testing::cpu_test_context();
  // Use the masked plan of MixedRoutingExact: dest = {4,0, 1,3, -1,-1, 2,5}, M = 6, D = 2.
  const std::vector<int32_t> dest = {4, 0, 1, 3, -1, -1, 2, 5};
  const std::vector<double> y = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};  // row r = (2r+1, 2r+2)
  const std::vector<double> w = {0.25, 0.75, 0.5, 0.5, 9.0, 9.0, 1.0, 2.0};
  std::vector<double> out(8, -1.0);
  moe_unpermute_forward(out.data(), y.data(), w.data(), dest.data(), 4, 6, 2, 2, ctx);
  EXPECT_EQ(out, (std::vector<double>{0.25 * 9 + 0.75 * 1, 0.25 * 10 + 0.75 * 2,  //
                                      0.5 * 3 + 0.5 * 7, 0.5 * 4 + 0.5 * 8,       //
                                      0, 0,                                       //
                                      1.0 * 5 + 2.0 * 11, 1.0 * 6 + 2.0 * 12}));
  const std::vector<double> dout = {1, -1, 2, 0, 5, 5, 0, 3};
  std::vector<double> dy(12, -1.0), dw(8, -1.0);
  moe_unpermute_backward(dy.data(), dw.data(), dout.data(), y.data(), w.data(), dest.data(), 4, 6, 2, 2, ctx);
  EXPECT_EQ(dy, (std::vector<double>{0.75, -0.75, 1, 0, 0, 3, 1, 0, 0.25, -0.25, 0, 6}));
  EXPECT_EQ(dw, (std::vector<double>{9 - 10, 1 - 2, 2 * 3, 2 * 7, 0, 0, 3 * 6, 3 * 12}));
}

TEST(MoeDispatch, IdentityExpertsRoundTripReturnsInput) {
  // permute -> identity experts -> weighted un-permute with weights summing to 1 gives x back;
  // binary-fraction weights make it exact, softmax weights make it exact to rounding.
  RunContext ctx = testing::cpu_test_context();
  const int64_t n = 37, e = 5, k = 3, d = 11;
  auto logits = random_doubles(n * e, 7);
  auto x = random_doubles(n * d, 8);
  for (double& v : x) v = std::round(v * 64.0) / 64.0;  // dyadic values: every weighted sum below is exact
  std::vector<double> values(n * k), w(n * k), out(n * d);
  std::vector<int32_t> indices(n * k);
  moe_topk_forward(values.data(), indices.data(), logits.data(), n, e, k, ctx);
  std::vector<uint8_t> mask(n, 1);
  mask[3] = 0;
  mask[20] = 0;
  Plan p = make_plan(indices, &mask, n, e, k);
  EXPECT_EQ(p.m, (n - 2) * k);
  std::vector<double> permuted(p.m * d);
  moe_permute_forward(permuted.data(), x.data(), p.dest.data(), n, p.m, k, d, ctx);
  for (int64_t t = 0; t < n; ++t) {
    w[t * k] = 0.5;
    w[t * k + 1] = 0.25;
    w[t * k + 2] = 0.25;
  }
  moe_unpermute_forward(out.data(), permuted.data(), w.data(), p.dest.data(), n, p.m, k, d, ctx);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < d; ++i) EXPECT_EQ(out[t * d + i], mask[t] ? x[t * d + i] : 0.0) << t << "," << i;
  moe_routing_softmax_forward(w.data(), values.data(), n, k, ctx);
  moe_unpermute_forward(out.data(), permuted.data(), w.data(), p.dest.data(), n, p.m, k, d, ctx);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < d; ++i) EXPECT_NEAR(out[t * d + i], mask[t] ? x[t * d + i] : 0.0, 1e-14);
}

TEST(MoeDispatch, ThreadCountInvariantAndFloatMatchesDouble) {
  // Big enough that the OpenMP loops run on 2 threads (work >= kCpuParallelMinWork).
  const int64_t n = 600, e = 8, k = 2, d = 64;
  auto logits = random_doubles(n * e, 9);
  auto x = random_doubles(n * d, 10);
  auto dout = random_doubles(n * d, 11);
  std::vector<std::vector<double>> outs;
  for (int threads : {1, 2}) {
    RunContext ctx = testing::cpu_test_context(false, threads);
    std::vector<double> values(n * k), w(n * k), out(n * d), dw(n * k), dx(n * d);
    std::vector<int32_t> indices(n * k), dest(n * k);
    std::vector<int64_t> counts(e), offsets(e + 1);
    moe_topk_forward(values.data(), indices.data(), logits.data(), n, e, k, ctx);
    moe_routing_softmax_forward(w.data(), values.data(), n, k, ctx);
    int64_t m =
        moe_permute_plan(counts.data(), offsets.data(), dest.data(), indices.data(), nullptr, n, e, k, ctx);
    std::vector<double> permuted(m * d), dy(m * d);
    moe_permute_forward(permuted.data(), x.data(), dest.data(), n, m, k, d, ctx);
    moe_unpermute_forward(out.data(), permuted.data(), w.data(), dest.data(), n, m, k, d, ctx);
    moe_unpermute_backward(dy.data(), dw.data(), dout.data(), permuted.data(), w.data(), dest.data(), n, m, k,
                           d, ctx);
    moe_permute_backward(dx.data(), dy.data(), dest.data(), n, m, k, d, ctx);
    outs.push_back(out);
    outs.push_back(dw);
    outs.push_back(dx);

    if (threads == 2) {
      // Float path of the un-permute against double.
      std::vector<float> pf(permuted.begin(), permuted.end()), wf(w.begin(), w.end()), of(n * d);
      moe_unpermute_forward(of.data(), pf.data(), wf.data(), dest.data(), n, m, k, d, ctx);
      for (int64_t i = 0; i < n * d; ++i) ASSERT_NEAR(of[i], out[i], 1e-6) << "i=" << i;
    }
  }
  EXPECT_EQ(outs[0], outs[3]);
  EXPECT_EQ(outs[1], outs[4]);
  EXPECT_EQ(outs[2], outs[5]);
}

TEST(MoeDispatchDeathTest, ExpertIdOutOfRange) {
  RunContext ctx = testing::cpu_test_context();
  const std::vector<int32_t> indices = {0, 3};
  std::vector<int64_t> counts(3), offsets(4);
  std::vector<int32_t> dest(2);
  EXPECT_DEATH(
      moe_permute_plan(counts.data(), offsets.data(), dest.data(), indices.data(), nullptr, 1, 3, 2, ctx),
      "expert id 3");
}

}  // namespace
}  // namespace moeasr
