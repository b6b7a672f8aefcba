// tests/model/ffn_gradcheck_test.cc — finite-difference gradients (double) of the FFN layers of
// model/ffn.h, with parameters bound by WeNet name from a hand-built ParameterTable:
//   dense FFN (PositionwiseFeedForward): swish and relu, with and without biases, dropout 0 and 0.2 in
//     training, N = 1, the reference-kernel path; N = 0 leaves the gradients exactly zero;
//   MoE FFN (MoEFFNLayer): x, gate weight and every tensor of every expert, N=7, d=6, f=5, E=4 with
//     k = 2, 1 and E; biases on and off; relu experts; dropout 0.2 in training; a token mask.
// Inputs are drawn so that the top-k has no near-tie (gap between the k-th and (k+1)-th logit > 1e-3)
// and ReLU inputs stay away from 0, so the loss is smooth within the finite-difference step.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/arena.h"
#include "model/expert_dispatch.h"
#include "model/ffn.h"
#include "model/parameter_table.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::GradTarget;
using testing::random_doubles;

// Overwrites every value of the store with uniform draws (in place: bound pointers stay valid).
void fill_store(ParameterStore<double>* store, uint64_t seed, double lo, double hi) {
  for (int r = 0; r < kNumParamRegions; ++r) {
    auto v = random_doubles(static_cast<int64_t>(store->values[r].size()), seed + r, lo, hi);
    std::copy(v.begin(), v.end(), store->values[r].begin());
  }
}

StepRng make_rng(bool training) {
  StepRng rng;
  rng.base.seed = 1234;
  rng.base.step = 7;
  rng.training = training;
  return rng;
}

// ---------------------------------------------------------------------------------------------
// Dense FFN

ParameterTable dense_table(int64_t d, int64_t f, bool bias) {
  ParameterTable t;
  t.add("ffn.w_1.weight", Shape{f, d}, ParamRegion::kDense, ParamInit::kUniformFanIn, d);
  if (bias) t.add("ffn.w_1.bias", Shape{f}, ParamRegion::kDense, ParamInit::kUniformFanIn, d);
  t.add("ffn.w_2.weight", Shape{d, f}, ParamRegion::kDense, ParamInit::kUniformFanIn, f);
  if (bias) t.add("ffn.w_2.bias", Shape{d}, ParamRegion::kDense, ParamInit::kUniformFanIn, f);
  return t;
}

void check_dense(int64_t n, int64_t d, int64_t f, ActivationType act, bool bias, double dropout,
                 bool training, bool reference) {
  SCOPED_TRACE("dense n=" + std::to_string(n) + " act=" + std::to_string(static_cast<int>(act)) +
               " bias=" + std::to_string(bias) + " dropout=" + std::to_string(dropout) +
               " reference=" + std::to_string(reference));
  RunContext ctx = testing::cpu_test_context(reference);
  Arena arena("act", 1 << 20, Arena::Growth::kGrowable);
  ctx.activations = &arena;
  ParameterTable table = dense_table(d, f, bias);
  ParameterStore<double> store(table);
  fill_store(&store, 31, -0.6, 0.6);
  FfnParams<double> p = bind_ffn(&store, "ffn", act, dropout);
  StepRng rng = make_rng(training);
  auto x = random_doubles(n * d, 41);
  auto dout = random_doubles(n * d, 42);
  std::vector<double> out(n * d), dx(n * d);
  FfnSaved<double> saved;
  auto forward = [&]() {
    arena.reset();
    ffn_forward(&saved, out.data(), x.data(), p, n, /*layer_id=*/3, /*site_id=*/1, rng, ctx);
  };
  auto loss = [&]() {
    forward();
    return testing::weighted_sum(out, dout);
  };
  auto grads = [&]() {
    store.zero_grads();
    forward();
    ffn_backward(dx.data(), saved, dout.data(), p, n, 3, 1, rng, ctx);
  };
  if (n == 0) {
    grads();
    for (int r = 0; r < kNumParamRegions; ++r) {
      for (double g : store.grads[r]) EXPECT_EQ(g, 0.0);
    }
    return;
  }
  if (act == ActivationType::kRelu) {  // no ReLU input within the finite-difference reach of its kink
    forward();
    for (int64_t i = 0; i < n * f; ++i) ASSERT_GT(std::fabs(saved.hidden_pre[i]), 1e-4) << i;
  }
  if (dropout > 0 && training) {  // the mask really drops something, and the same thing each call
    forward();
    int64_t zeros = std::count(saved.hidden, saved.hidden + n * f, 0.0);
    EXPECT_GT(zeros, 0);
  }
  std::vector<GradTarget> targets = {{"x", x.data(), dx.data(), n * d}};
  for (const std::string name : {"ffn.w_1.weight", "ffn.w_1.bias", "ffn.w_2.weight", "ffn.w_2.bias"}) {
    const ParamEntry* e = table.find(name);
    if (e != nullptr) targets.push_back({name, store.value(*e), store.grad(*e), e->numel});
  }
  testing::expect_gradients_match(loss, grads, targets);
}

TEST(FfnGradcheck, SwishAndReluWithAndWithoutBias) {
  for (ActivationType act : {ActivationType::kSwish, ActivationType::kRelu}) {
    for (bool bias : {true, false}) check_dense(5, 6, 7, act, bias, 0.0, false, false);
  }
}

TEST(FfnGradcheck, DropoutInTraining) {
  for (ActivationType act : {ActivationType::kSwish, ActivationType::kRelu}) {
    for (bool bias : {true, false}) check_dense(6, 5, 9, act, bias, 0.2, true, false);
  }
  check_dense(5, 6, 7, ActivationType::kSwish, true, 0.2, false, false);  // eval: identity
}

TEST(FfnGradcheck, OneRowAndReferenceKernels) {
  check_dense(1, 3, 4, ActivationType::kSwish, true, 0.0, false, false);
  check_dense(5, 6, 7, ActivationType::kSwish, true, 0.2, true, true);
  check_dense(5, 6, 7, ActivationType::kRelu, false, 0.0, false, true);
}

TEST(FfnGradcheck, NoRows) {
  check_dense(0, 6, 7, ActivationType::kSwish, true, 0.2, true, false);
}

// ---------------------------------------------------------------------------------------------
// MoE FFN

ParameterTable moe_table(int64_t d, int64_t f, int64_t n_experts, bool bias) {
  ParameterTable t;
  t.add("moe.gate.weight", Shape{n_experts, d}, ParamRegion::kDense, ParamInit::kUniformFanIn, d);
  ExpertLayout layout;
  t.add_expert_block("moe.experts", "w_1.weight", Shape{f, d}, layout, n_experts, ParamInit::kUniformFanIn,
                     d);
  if (bias)
    t.add_expert_block("moe.experts", "w_1.bias", Shape{f}, layout, n_experts, ParamInit::kUniformFanIn, d);
  t.add_expert_block("moe.experts", "w_2.weight", Shape{d, f}, layout, n_experts, ParamInit::kUniformFanIn,
                     f);
  if (bias)
    t.add_expert_block("moe.experts", "w_2.bias", Shape{d}, layout, n_experts, ParamInit::kUniformFanIn, f);
  return t;
}

// Smallest gap between the k-th and (k+1)-th largest logit over the rows (infinity when k = E).
double min_topk_gap(const double* x, const double* gate, int64_t n, int64_t d, int64_t n_experts, int64_t k) {
  double gap = INFINITY;
  if (k == n_experts) return gap;
  for (int64_t row = 0; row < n; ++row) {
    std::vector<double> logits(n_experts, 0.0);
    for (int64_t e = 0; e < n_experts; ++e) {
      for (int64_t j = 0; j < d; ++j) logits[e] += x[row * d + j] * gate[e * d + j];
    }
    std::sort(logits.begin(), logits.end(), std::greater<double>());
    gap = std::min(gap, logits[k - 1] - logits[k]);
  }
  return gap;
}

struct MoeCase {
  int64_t n = 7, d = 6, f = 5, n_experts = 4, k = 2;
  bool bias = true;
  ActivationType act = ActivationType::kSwish;
  double dropout = 0.0;
  bool training = false;
  bool reference = false;     // ctx.use_reference_kernels
  std::vector<uint8_t> mask;  // empty: no mask
};

void check_moe(const MoeCase& c) {
  SCOPED_TRACE("moe k=" + std::to_string(c.k) + " bias=" + std::to_string(c.bias) +
               " act=" + std::to_string(static_cast<int>(c.act)) + " dropout=" + std::to_string(c.dropout) +
               " mask=" + std::to_string(!c.mask.empty()) + " reference=" + std::to_string(c.reference));
  const int64_t n = c.n, d = c.d, f = c.f, k = c.k;
  RunContext ctx = testing::cpu_test_context(c.reference);
  Arena arena("act", 1 << 20, Arena::Growth::kGrowable);
  ctx.activations = &arena;
  ParameterTable table = moe_table(d, f, c.n_experts, c.bias);
  ParameterStore<double> store(table);
  MoeFfnParams<double> p = bind_moe_ffn(&store, "moe", ExpertLayout{}, k, c.act, c.dropout);
  LocalExpertDispatcher<double> dispatcher;
  StepRng rng = make_rng(c.training);
  const uint8_t* mask = c.mask.empty() ? nullptr : c.mask.data();
  std::vector<double> x, out(n * d), dx(n * d);
  auto dout = random_doubles(n * d, 52);
  MoeFfnSaved<double> saved;
  auto forward = [&]() {
    arena.reset();
    moe_ffn_forward(&saved, out.data(), x.data(), mask, p, &dispatcher, n, /*layer_id=*/5, /*site_id=*/2, rng,
                    ctx);
  };
  // Re-draw parameters and x until the top-k has no near-tie, every expert gets rows, and no ReLU input
  // is near its kink.
  bool ok = false;
  for (uint64_t seed = 100; seed < 200 && !ok; ++seed) {
    fill_store(&store, seed, -0.8, 0.8);
    x = random_doubles(n * d, seed + 1000, -1.0, 1.0);
    if (min_topk_gap(x.data(), p.gate.weight.value, n, d, c.n_experts, k) <= 1e-3) continue;
    forward();
    ok = true;
    for (int64_t e = 0; e < c.n_experts; ++e) ok = ok && saved.expert_counts[e] > 0;  // no vacuous expert
    if (c.act == ActivationType::kRelu) {
      for (int64_t i = 0; i < saved.dispatch.received_rows * f; ++i)
        ok = ok && std::fabs(saved.hidden_pre[i]) > 1e-4;
    }
  }
  ASSERT_TRUE(ok) << "no suitable draw";

  auto loss = [&]() {
    forward();
    return testing::weighted_sum(out, dout);
  };
  auto grads = [&]() {
    store.zero_grads();
    forward();
    moe_ffn_backward(dx.data(), saved, dout.data(), p, &dispatcher, n, 5, 2, rng, ctx);
  };
  std::vector<GradTarget> targets = {{"x", x.data(), dx.data(), n * d}};
  const ParamEntry& gate = table.at("moe.gate.weight");
  if (k > 1) {
    targets.push_back({gate.name, store.value(gate), store.grad(gate), gate.numel});
  } else {
    // k = 1: the routing weight is softmax of one logit = 1, so the gate gets no gradient at all.
    grads();
    for (int64_t i = 0; i < gate.numel; ++i) EXPECT_EQ(store.grad(gate)[i], 0.0) << i;
  }
  for (int64_t e = 0; e < c.n_experts; ++e) {
    for (const char* suffix : {"w_1.weight", "w_1.bias", "w_2.weight", "w_2.bias"}) {
      const ParamEntry* entry = table.find("moe.experts." + std::to_string(e) + "." + suffix);
      if (entry != nullptr)
        targets.push_back({entry->name, store.value(*entry), store.grad(*entry), entry->numel});
    }
  }
  // Every expert must have rows here, or its check would be vacuous.
  forward();
  for (int64_t e = 0; e < c.n_experts; ++e) EXPECT_GT(saved.expert_counts[e], 0) << "expert " << e;
  testing::expect_gradients_match(loss, grads, targets);
  if (mask != nullptr) {  // padded tokens: zero output and zero input gradient
    grads();
    for (int64_t row = 0; row < n; ++row) {
      if (mask[row] != 0) continue;
      for (int64_t j = 0; j < d; ++j) {
        EXPECT_EQ(out[row * d + j], 0.0);
        EXPECT_EQ(dx[row * d + j], 0.0);
      }
    }
  }
}

TEST(MoeFfnGradcheck, TopTwo) {
  MoeCase c;
  check_moe(c);
  c.bias = false;
  check_moe(c);
  c.bias = true;
  c.reference = true;
  check_moe(c);
}

TEST(MoeFfnGradcheck, TopOneAndTopAll) {
  MoeCase c;
  c.k = 1;
  c.n = 11;  // enough tokens that every expert is someone's first choice
  check_moe(c);
  c = MoeCase();
  c.k = c.n_experts;
  check_moe(c);
}

TEST(MoeFfnGradcheck, ReluExpertsWithDropoutInTraining) {
  MoeCase c;
  c.act = ActivationType::kRelu;
  c.dropout = 0.2;
  c.training = true;
  check_moe(c);
  c.act = ActivationType::kSwish;
  c.k = 3;
  check_moe(c);
}

TEST(MoeFfnGradcheck, PaddedTokensAreNotRouted) {
  MoeCase c;
  c.n = 9;
  c.mask = {1, 1, 0, 1, 1, 1, 0, 1, 0};
  check_moe(c);
}

}  // namespace
}  // namespace moeasr
