// tests/model/moe_test.cc — exact and agreement tests of the MoE FFN (model/ffn.h, WeNet's
// MoEFFNLayer) and its dispatcher (model/expert_dispatch.h):
//   - k = E with identical experts equals the dense FFN (forward, dx and the summed expert grads);
//   - a gate that makes one expert dominate gives exactly that expert's FFN output with k = 1;
//   - an expert that gets no token gets exactly zero gradients; per-expert load counts;
//   - N = 0; padded tokens (mask 0): zero output, zero dx, and the gradients of the valid tokens alone;
//   - float vs double (forward, backward, routing) with dropout in training, dense and MoE;
//   - a dispatcher that copies rows instead of passing pointers gives bit-identical results;
//   - bind_moe_ffn on the model's parameter table with an expert-parallel layout binds this rank's
//     contiguous [E_local, ...] blocks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/arena.h"
#include "model/expert_dispatch.h"
#include "model/ffn.h"
#include "model/parameter_table.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::random_doubles;

constexpr int64_t kGrowArena = 1 << 20;

template <class T>
void fill_store(ParameterStore<T>* store, uint64_t seed, double lo, double hi) {
  for (int r = 0; r < kNumParamRegions; ++r) {
    auto v = random_doubles(static_cast<int64_t>(store->values[r].size()), seed + r, lo, hi);
    std::transform(v.begin(), v.end(), store->values[r].begin(), [](double a) { return static_cast<T>(a); });
  }
}

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

StepRng make_rng(bool training) {
  StepRng rng;
  rng.base.seed = 99;
  rng.base.step = 3;
  rng.training = training;
  return rng;
}

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

ParameterTable dense_table(int64_t d, int64_t f, bool bias) {
  ParameterTable t;
  t.add("ffn.w_1.weight", Shape{f, d}, ParamRegion::kDense, ParamInit::kUniformFanIn, d);
  if (bias) t.add("ffn.w_1.bias", Shape{f}, ParamRegion::kDense, ParamInit::kUniformFanIn, d);
  t.add("ffn.w_2.weight", Shape{d, f}, ParamRegion::kDense, ParamInit::kUniformFanIn, f);
  if (bias) t.add("ffn.w_2.bias", Shape{d}, ParamRegion::kDense, ParamInit::kUniformFanIn, f);
  return t;
}

double min_topk_gap(const std::vector<double>& x, const double* gate, int64_t n, int64_t d, int64_t n_experts,
                    int64_t k) {
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

// One MoE layer with its own table, store, arena and context.
template <class T>
struct Moe {
  int64_t d, f, n_experts, k;
  ParameterTable table;
  ParameterStore<T> store;
  MoeFfnParams<T> p;
  Arena arena{"act", kGrowArena, Arena::Growth::kGrowable};
  RunContext ctx = testing::cpu_test_context();
  LocalExpertDispatcher<T> local;
  ExpertDispatcher<T>* dispatcher = &local;
  StepRng rng = make_rng(false);
  MoeFfnSaved<T> saved;
  std::vector<T> out, dx;

  Moe(int64_t d_in, int64_t f_in, int64_t e_in, int64_t k_in, bool bias, ActivationType act, double dropout)
      : d(d_in), f(f_in), n_experts(e_in), k(k_in), table(moe_table(d_in, f_in, e_in, bias)), store(table) {
    p = bind_moe_ffn(&store, "moe", ExpertLayout{}, k, act, dropout);
    ctx.activations = &arena;
  }
  T* value(const std::string& name) { return store.value(name); }
  T* grad(const std::string& name) { return store.grad(name); }
  std::string expert(int64_t e, const char* suffix) {
    return "moe.experts." + std::to_string(e) + "." + suffix;
  }
  void forward(const std::vector<T>& x, const uint8_t* mask, int64_t n) {
    arena.reset();
    out.assign(n * d, T(-7));  // poison: every element must be written
    moe_ffn_forward(&saved, out.data(), x.data(), mask, p, dispatcher, n, 1, 0, rng, ctx);
  }
  void forward_backward(const std::vector<T>& x, const uint8_t* mask, const std::vector<T>& dout, int64_t n) {
    store.zero_grads();
    forward(x, mask, n);
    dx.assign(n * d, T(-7));
    moe_ffn_backward(dx.data(), saved, dout.data(), p, dispatcher, n, 1, 0, rng, ctx);
  }
};

double max_abs(const double* v, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(v[i]));
  return m;
}

// ---------------------------------------------------------------------------------------------

TEST(MoeFfn, IdenticalExpertsWithAllSelectedEqualDenseFfn) {
  const int64_t n = 9, d = 6, f = 5, n_experts = 4;
  for (ActivationType act : {ActivationType::kSwish, ActivationType::kRelu}) {
    Moe<double> moe(d, f, n_experts, /*k=*/n_experts, true, act, 0.0);
    fill_store(&moe.store, 5, -0.7, 0.7);
    ParameterTable dt = dense_table(d, f, true);
    ParameterStore<double> dense_store(dt);
    fill_store(&dense_store, 6, -0.7, 0.7);
    for (int64_t e = 0; e < n_experts; ++e) {  // every expert = the dense FFN
      for (const char* s : {"w_1.weight", "w_1.bias", "w_2.weight", "w_2.bias"}) {
        const ParamEntry& src = dt.at(std::string("ffn.") + s);
        std::copy(dense_store.value(src), dense_store.value(src) + src.numel, moe.value(moe.expert(e, s)));
      }
    }
    FfnParams<double> dense = bind_ffn(&dense_store, "ffn", act, 0.0);
    auto x = random_doubles(n * d, 7), dout = random_doubles(n * d, 8);
    moe.forward_backward(x, nullptr, dout, n);

    Arena arena("dense", kGrowArena, Arena::Growth::kGrowable);
    RunContext ctx = testing::cpu_test_context();
    ctx.activations = &arena;
    FfnSaved<double> saved;
    std::vector<double> out(n * d), dx(n * d);
    dense_store.zero_grads();
    ffn_forward(&saved, out.data(), x.data(), dense, n, 1, 0, moe.rng, ctx);
    ffn_backward(dx.data(), saved, dout.data(), dense, n, 1, 0, moe.rng, ctx);

    ASSERT_GT(max_abs(out.data(), n * d), 1e-3);
    for (int64_t i = 0; i < n * d; ++i) {
      EXPECT_NEAR(moe.out[i], out[i], 1e-13) << i;  // sum_j w_j * y with sum_j w_j = 1
      EXPECT_NEAR(moe.dx[i], dx[i], 1e-13) << i;    // the router path contributes ~0
    }
    // The routing weights cannot change the output, so the gate's gradient vanishes (up to rounding).
    EXPECT_LT(max_abs(moe.grad("moe.gate.weight"), n_experts * d), 1e-13);
    // Each expert saw every token with weight w_j: the expert grads sum to the dense grads.
    for (const char* s : {"w_1.weight", "w_1.bias", "w_2.weight", "w_2.bias"}) {
      const ParamEntry& dense_entry = dt.at(std::string("ffn.") + s);
      for (int64_t i = 0; i < dense_entry.numel; ++i) {
        double sum = 0;
        for (int64_t e = 0; e < n_experts; ++e) sum += moe.grad(moe.expert(e, s))[i];
        EXPECT_NEAR(sum, dense_store.grad(dense_entry)[i], 1e-12) << s << " " << i;
      }
    }
  }
}

TEST(MoeFfn, DominantExpertGivesItsOwnOutputAndOthersGetNoGradient) {
  const int64_t n = 8, d = 5, f = 7, n_experts = 4, chosen = 2;
  Moe<double> moe(d, f, n_experts, /*k=*/1, true, ActivationType::kSwish, 0.0);
  fill_store(&moe.store, 9, -0.5, 0.5);
  auto x = random_doubles(n * d, 10, -1.0, 1.0);
  for (int64_t row = 0; row < n; ++row) x[row * d] = 1.0;  // a constant feature the gate keys on
  double* gate = moe.value("moe.gate.weight");
  gate[chosen * d] = 50.0;  // logit of `chosen` exceeds the others by > 45 for every token
  auto dout = random_doubles(n * d, 11);
  moe.forward_backward(x, nullptr, dout, n);

  for (int64_t e = 0; e < n_experts; ++e) EXPECT_EQ(moe.saved.expert_counts[e], e == chosen ? n : 0);
  for (int64_t row = 0; row < n; ++row) {
    EXPECT_EQ(moe.saved.selected[row], chosen);
    EXPECT_EQ(moe.saved.routing_weights[row], 1.0);
  }
  // The chosen expert as a dense FFN: same rows in the same order, so the same GEMMs, bit for bit.
  ParameterTable dt = dense_table(d, f, true);
  ParameterStore<double> dense_store(dt);
  for (const char* s : {"w_1.weight", "w_1.bias", "w_2.weight", "w_2.bias"}) {
    const ParamEntry& dst = dt.at(std::string("ffn.") + s);
    std::copy(moe.value(moe.expert(chosen, s)), moe.value(moe.expert(chosen, s)) + dst.numel,
              dense_store.value(dst));
  }
  FfnParams<double> dense = bind_ffn(&dense_store, "ffn", ActivationType::kSwish, 0.0);
  Arena arena("dense", kGrowArena, Arena::Growth::kGrowable);
  RunContext ctx = testing::cpu_test_context();
  ctx.activations = &arena;
  FfnSaved<double> saved;
  std::vector<double> out(n * d), dx(n * d);
  dense_store.zero_grads();
  ffn_forward(&saved, out.data(), x.data(), dense, n, 1, 0, moe.rng, ctx);
  ffn_backward(dx.data(), saved, dout.data(), dense, n, 1, 0, moe.rng, ctx);
  for (int64_t i = 0; i < n * d; ++i) {
    EXPECT_EQ(moe.out[i], out[i]) << i;
    EXPECT_EQ(moe.dx[i], dx[i]) << i;  // k = 1: the router path adds exactly 0
  }
  for (const char* s : {"w_1.weight", "w_1.bias", "w_2.weight", "w_2.bias"}) {
    const ParamEntry& dst = dt.at(std::string("ffn.") + s);
    for (int64_t i = 0; i < dst.numel; ++i)
      EXPECT_EQ(moe.grad(moe.expert(chosen, s))[i], dense_store.grad(dst)[i]);
    for (int64_t e = 0; e < n_experts; ++e) {
      if (e == chosen) continue;
      for (int64_t i = 0; i < dst.numel; ++i) EXPECT_EQ(moe.grad(moe.expert(e, s))[i], 0.0) << e << s << i;
    }
  }
  EXPECT_EQ(max_abs(moe.grad("moe.gate.weight"), n_experts * d), 0.0);
}

TEST(MoeFfn, ExpertWithoutTokensGetsZeroGradientAndCountsAddUp) {
  const int64_t n = 10, d = 6, f = 5, n_experts = 5, k = 2, dead = 3;
  Moe<double> moe(d, f, n_experts, k, true, ActivationType::kSwish, 0.0);
  fill_store(&moe.store, 21, -0.5, 0.5);
  auto x = random_doubles(n * d, 22, -1.0, 1.0);
  for (int64_t row = 0; row < n; ++row) x[row * d] = 1.0;
  moe.value("moe.gate.weight")[dead * d] = -50.0;  // never in anyone's top 2
  auto dout = random_doubles(n * d, 23);
  // Nonzero grads to start with: expert grads must stay untouched (accumulate nothing) for `dead`.
  moe.forward_backward(x, nullptr, dout, n);
  int64_t total = 0;
  for (int64_t e = 0; e < n_experts; ++e) total += moe.saved.expert_counts[e];
  EXPECT_EQ(total, n * k);
  EXPECT_EQ(moe.saved.expert_counts[dead], 0);
  for (const char* s : {"w_1.weight", "w_1.bias", "w_2.weight", "w_2.bias"}) {
    const ParamEntry& entry = moe.table.at(moe.expert(dead, s));
    EXPECT_EQ(max_abs(moe.store.grad(entry), entry.numel), 0.0) << s;
  }
  // The gate row of the dead expert gets nothing either (gradient flows only to selected logits).
  EXPECT_EQ(max_abs(moe.grad("moe.gate.weight") + dead * d, d), 0.0);
  for (int64_t e = 0; e < n_experts; ++e) {
    if (moe.saved.expert_counts[e] == 0) continue;
    EXPECT_GT(max_abs(moe.grad(moe.expert(e, "w_1.weight")), f * d), 0.0) << e;
  }
}

TEST(MoeFfn, NoTokens) {
  Moe<double> moe(6, 5, 4, 2, true, ActivationType::kSwish, 0.2);
  moe.rng = make_rng(true);
  fill_store(&moe.store, 31, -0.5, 0.5);
  std::vector<double> x, dout;
  moe.forward_backward(x, nullptr, dout, 0);
  EXPECT_EQ(moe.saved.routed_rows, 0);
  for (int64_t e = 0; e < 4; ++e) EXPECT_EQ(moe.saved.expert_counts[e], 0);
  for (int r = 0; r < kNumParamRegions; ++r) {
    for (double g : moe.store.grads[r]) EXPECT_EQ(g, 0.0);
  }
}

TEST(MoeFfn, PaddedTokensMatchTheValidTokensAlone) {
  const int64_t n = 9, d = 6, f = 5, n_experts = 4, k = 2;
  std::vector<uint8_t> mask = {1, 0, 1, 1, 0, 0, 1, 1, 0};
  Moe<double> padded(d, f, n_experts, k, true, ActivationType::kSwish, 0.0);
  Moe<double> compact(d, f, n_experts, k, true, ActivationType::kSwish, 0.0);
  fill_store(&padded.store, 41, -0.6, 0.6);
  fill_store(&compact.store, 41, -0.6, 0.6);
  auto x = random_doubles(n * d, 42), dout = random_doubles(n * d, 43);
  std::vector<double> xv, doutv;
  for (int64_t row = 0; row < n; ++row) {
    if (mask[row] == 0) continue;
    xv.insert(xv.end(), x.begin() + row * d, x.begin() + (row + 1) * d);
    doutv.insert(doutv.end(), dout.begin() + row * d, dout.begin() + (row + 1) * d);
  }
  const int64_t nv = static_cast<int64_t>(xv.size()) / d;
  padded.forward_backward(x, mask.data(), dout, n);
  compact.forward_backward(xv, nullptr, doutv, nv);
  EXPECT_EQ(padded.saved.routed_rows, nv * k);
  for (int64_t e = 0; e < n_experts; ++e)
    EXPECT_EQ(padded.saved.expert_counts[e], compact.saved.expert_counts[e]);
  int64_t v = 0;
  for (int64_t row = 0; row < n; ++row) {
    for (int64_t j = 0; j < d; ++j) {
      if (mask[row] == 0) {
        EXPECT_EQ(padded.out[row * d + j], 0.0);
        EXPECT_EQ(padded.dx[row * d + j], 0.0);
      } else {
        EXPECT_NEAR(padded.out[row * d + j], compact.out[v * d + j], 1e-14);
        EXPECT_NEAR(padded.dx[row * d + j], compact.dx[v * d + j], 1e-14);
      }
    }
    v += mask[row];
  }
  for (int r = 0; r < kNumParamRegions; ++r) {
    ASSERT_EQ(padded.store.grads[r].size(), compact.store.grads[r].size());
    for (size_t i = 0; i < padded.store.grads[r].size(); ++i) {
      EXPECT_NEAR(padded.store.grads[r][i], compact.store.grads[r][i], 1e-13) << r << " " << i;
    }
  }
  EXPECT_GT(max_abs(padded.store.grads[static_cast<int>(ParamRegion::kExpert)].data(),
                    static_cast<int64_t>(padded.store.grads[static_cast<int>(ParamRegion::kExpert)].size())),
            1e-3);
}

// Copies every exchanged row into a fresh arena buffer (as an all-to-all implementation would) and
// records the calls: the layer must only use the returned pointers and the recorded counts.
template <class T>
class CopyingDispatcher final : public ExpertDispatcher<T> {
 public:
  int calls[4] = {0, 0, 0, 0};
  ExpertLayout layout() const override { return ExpertLayout{}; }
  void dispatch_forward(ExpertDispatchCounts* counts, const T** local_rows, const T* permuted_rows,
                        const int64_t* send_counts, int64_t n_experts, int64_t d,
                        const RunContext& ctx) override {
    ++calls[0];
    inner_.dispatch_forward(counts, local_rows, permuted_rows, send_counts, n_experts, d, ctx);
    *local_rows = copy(*local_rows, counts->received_rows * d, ctx);
  }
  void combine_forward(const T** permuted_out, const T* local_out, const ExpertDispatchCounts& counts,
                       int64_t d, const RunContext& ctx) override {
    ++calls[1];
    *permuted_out = copy(local_out, counts.sent_rows * d, ctx);
  }
  void combine_backward(const T** dlocal_out, const T* dpermuted_out, const ExpertDispatchCounts& counts,
                        int64_t d, const RunContext& ctx) override {
    ++calls[2];
    *dlocal_out = copy(dpermuted_out, counts.received_rows * d, ctx);
  }
  void dispatch_backward(const T** dpermuted_rows, const T* dlocal_rows, const ExpertDispatchCounts& counts,
                         int64_t d, const RunContext& ctx) override {
    ++calls[3];
    *dpermuted_rows = copy(dlocal_rows, counts.sent_rows * d, ctx);
  }

 private:
  static const T* copy(const T* src, int64_t n, const RunContext& ctx) {
    T* dst = activation_alloc<T>(ctx, n);
    if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(T));
    return dst;
  }
  LocalExpertDispatcher<T> inner_;
};

TEST(MoeFfn, CopyingDispatcherGivesIdenticalResults) {
  const int64_t n = 11, d = 6, f = 5, n_experts = 4, k = 2;
  for (int64_t rows : {n, int64_t{0}}) {
    Moe<double> a(d, f, n_experts, k, true, ActivationType::kSwish, 0.2);
    Moe<double> b(d, f, n_experts, k, true, ActivationType::kSwish, 0.2);
    a.rng = b.rng = make_rng(true);
    CopyingDispatcher<double> copying;
    b.dispatcher = &copying;
    fill_store(&a.store, 51, -0.6, 0.6);
    fill_store(&b.store, 51, -0.6, 0.6);
    auto x = random_doubles(rows * d, 52), dout = random_doubles(rows * d, 53);
    a.forward_backward(x, nullptr, dout, rows);
    b.forward_backward(x, nullptr, dout, rows);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(copying.calls[i], 1) << "exchange " << i << " with N=" << rows;
    EXPECT_EQ(a.out, b.out);
    EXPECT_EQ(a.dx, b.dx);
    for (int r = 0; r < kNumParamRegions; ++r) EXPECT_EQ(a.store.grads[r], b.store.grads[r]);
  }
}

// The GPU's path for every expert local (RunContext::force_moe_device_sizes here): the row buffers
// take the bound N*k, the plan's M and counts are never read back in the layer, no dispatcher call,
// the grouped Linears walk the plan's offsets. It must give exactly the counted path's results, with
// padded tokens (so M < N*k and rows [M, N*k) hold whatever the arena had) and dropout active.
TEST(MoeFfn, DeviceSizedPathEqualsTheCountedPath) {
  const int64_t n = 11, d = 6, f = 5, n_experts = 4, k = 2;
  std::vector<uint8_t> mask = {1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 0};
  for (const uint8_t* token_mask :
       {static_cast<const uint8_t*>(nullptr), static_cast<const uint8_t*>(mask.data())}) {
    Moe<double> counted(d, f, n_experts, k, true, ActivationType::kSwish, 0.2);
    Moe<double> sized(d, f, n_experts, k, true, ActivationType::kSwish, 0.2);
    counted.rng = sized.rng = make_rng(true);
    CopyingDispatcher<double> never_called;
    sized.dispatcher = &never_called;
    sized.ctx.force_moe_device_sizes = true;
    // NaN in the memory the row buffers come from (forward resets the arena and allocates from its
    // start): rows [M, N*k) keep it, and it must not reach any result.
    double* poison = sized.arena.allocate_array<double>(int64_t{1} << 16);
    std::fill_n(poison, int64_t{1} << 16, std::numeric_limits<double>::quiet_NaN());
    fill_store(&counted.store, 61, -0.6, 0.6);
    fill_store(&sized.store, 61, -0.6, 0.6);
    auto x = random_doubles(n * d, 62), dout = random_doubles(n * d, 63);
    counted.forward_backward(x, token_mask, dout, n);
    sized.forward_backward(x, token_mask, dout, n);
    EXPECT_FALSE(counted.saved.sizes_on_device);
    EXPECT_TRUE(sized.saved.sizes_on_device);
    EXPECT_EQ(sized.saved.routed_rows, n * k);  // the bound, not M
    for (int i = 0; i < 4; ++i) EXPECT_EQ(never_called.calls[i], 0) << "exchange " << i;
    for (int64_t e = 0; e < n_experts; ++e) {
      EXPECT_EQ(sized.saved.expert_counts[e], counted.saved.expert_counts[e]) << "expert " << e;
    }
    EXPECT_EQ(sized.out, counted.out);
    EXPECT_EQ(sized.dx, counted.dx);
    for (int r = 0; r < kNumParamRegions; ++r) EXPECT_EQ(sized.store.grads[r], counted.store.grads[r]);
  }
}

TEST(MoeFfn, LocalDispatcherPassesRowsThrough) {
  Arena arena("act", kGrowArena, Arena::Growth::kGrowable);
  RunContext ctx = testing::cpu_test_context();
  ctx.activations = &arena;
  LocalExpertDispatcher<float> dispatcher;
  std::vector<int64_t> counts = {2, 0, 3};
  std::vector<float> rows(5 * 4, 1.5f);
  ExpertDispatchCounts c;
  const float* local = nullptr;
  dispatcher.dispatch_forward(&c, &local, rows.data(), counts.data(), 3, 4, ctx);
  EXPECT_EQ(local, rows.data());
  EXPECT_EQ(c.sent_rows, 5);
  EXPECT_EQ(c.received_rows, 5);
  EXPECT_EQ(c.n_local_experts, 3);
  EXPECT_EQ(c.ep_size, 1);
  counts[0] = 99;  // the recorded counts are a copy
  for (int64_t e = 0; e < 3; ++e) {
    EXPECT_EQ(c.local_counts[e], e == 0 ? 2 : (e == 1 ? 0 : 3));
    EXPECT_EQ(c.recv_counts[e], c.local_counts[e]);
  }
  const float* back = nullptr;
  dispatcher.combine_forward(&back, rows.data() + 4, c, 4, ctx);
  EXPECT_EQ(back, rows.data() + 4);
  dispatcher.combine_backward(&back, rows.data() + 8, c, 4, ctx);
  EXPECT_EQ(back, rows.data() + 8);
  dispatcher.dispatch_backward(&back, rows.data() + 12, c, 4, ctx);
  EXPECT_EQ(back, rows.data() + 12);
}

// ---------------------------------------------------------------------------------------------
// float vs double

TEST(MoeFfn, FloatMatchesDouble) {
  const int64_t n = 13, d = 8, f = 12, n_experts = 4, k = 2;
  Moe<double> md(d, f, n_experts, k, true, ActivationType::kSwish, 0.2);
  Moe<float> mf(d, f, n_experts, k, true, ActivationType::kSwish, 0.2);
  md.rng = mf.rng = make_rng(true);
  std::vector<double> x;
  for (uint64_t seed = 60;; ++seed) {  // no near-ties, so float and double route alike
    ASSERT_LT(seed, 160u);
    fill_store(&md.store, seed, -0.6, 0.6);
    x = random_doubles(n * d, seed + 500);
    if (min_topk_gap(x, md.value("moe.gate.weight"), n, d, n_experts, k) > 1e-3) {
      fill_store(&mf.store, seed, -0.6, 0.6);
      break;
    }
  }
  auto dout = random_doubles(n * d, 61);
  md.forward_backward(x, nullptr, dout, n);
  mf.forward_backward(cast<float>(x), nullptr, cast<float>(dout), n);
  for (int64_t i = 0; i < n * k; ++i) {
    EXPECT_EQ(mf.saved.selected[i], md.saved.selected[i]);
    EXPECT_NEAR(mf.saved.routing_weights[i], md.saved.routing_weights[i], 1e-6);
  }
  ASSERT_GT(max_abs(md.out.data(), n * d), 1e-2);
  for (int64_t i = 0; i < n * d; ++i) {
    EXPECT_NEAR(mf.out[i], md.out[i], 1e-5 + 1e-5 * std::fabs(md.out[i])) << i;
    EXPECT_NEAR(mf.dx[i], md.dx[i], 1e-5 + 1e-5 * std::fabs(md.dx[i])) << i;
  }
  for (int r = 0; r < kNumParamRegions; ++r) {
    for (size_t i = 0; i < md.store.grads[r].size(); ++i) {
      double ref = md.store.grads[r][i];
      EXPECT_NEAR(mf.store.grads[r][i], ref, 1e-5 + 1e-5 * std::fabs(ref)) << r << " " << i;
    }
  }
}

TEST(FfnDense, FloatMatchesDouble) {
  const int64_t n = 11, d = 8, f = 13;
  for (ActivationType act : {ActivationType::kSwish, ActivationType::kRelu}) {
    ParameterTable t = dense_table(d, f, true);
    ParameterStore<double> sd(t);
    ParameterStore<float> sf(t);
    fill_store(&sd, 70, -0.6, 0.6);
    fill_store(&sf, 70, -0.6, 0.6);
    FfnParams<double> pd = bind_ffn(&sd, "ffn", act, 0.2);
    FfnParams<float> pf = bind_ffn(&sf, "ffn", act, 0.2);
    StepRng rng = make_rng(true);
    Arena arena("act", kGrowArena, Arena::Growth::kGrowable);
    RunContext ctx = testing::cpu_test_context();
    ctx.activations = &arena;
    auto x = random_doubles(n * d, 71), dout = random_doubles(n * d, 72);
    std::vector<double> od(n * d), dxd(n * d);
    std::vector<float> of(n * d), dxf(n * d);
    FfnSaved<double> saved_d;
    FfnSaved<float> saved_f;
    sd.zero_grads();
    sf.zero_grads();
    ffn_forward(&saved_d, od.data(), x.data(), pd, n, 4, 1, rng, ctx);
    ffn_backward(dxd.data(), saved_d, dout.data(), pd, n, 4, 1, rng, ctx);
    auto xf = cast<float>(x), doutf = cast<float>(dout);
    ffn_forward(&saved_f, of.data(), xf.data(), pf, n, 4, 1, rng, ctx);
    ffn_backward(dxf.data(), saved_f, doutf.data(), pf, n, 4, 1, rng, ctx);
    ASSERT_GT(max_abs(od.data(), n * d), 1e-2);
    for (int64_t i = 0; i < n * d; ++i) {
      EXPECT_NEAR(of[i], od[i], 1e-5 + 1e-5 * std::fabs(od[i]));
      EXPECT_NEAR(dxf[i], dxd[i], 1e-5 + 1e-5 * std::fabs(dxd[i]));
    }
    for (size_t i = 0; i < sd.grads[0].size(); ++i) {
      EXPECT_NEAR(sf.grads[0][i], sd.grads[0][i], 1e-5 + 1e-5 * std::fabs(sd.grads[0][i]));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Binding from the model's table

TEST(MoeFfn, BindsThisRanksContiguousExpertBlocks) {
  ModelConfig config;
  config.vocab_size = 7;
  config.encoder.output_size = 8;
  config.encoder.attention_heads = 2;
  config.encoder.num_blocks = 1;
  config.encoder.cnn_module_kernel = 3;
  config.encoder.ffn.mlp_type = MlpType::kMoe;
  config.encoder.ffn.linear_units = 6;
  config.encoder.ffn.n_expert = 4;
  config.decoder.attention_heads = 2;
  config.decoder.num_blocks = 1;
  config.decoder.r_num_blocks = 1;
  config.decoder.ffn = config.encoder.ffn;
  config.decoder.ffn.activation = ActivationType::kRelu;
  ExpertLayout layout{1, 2};  // rank 1 of 2 holds experts 2 and 3
  ParameterTable table = build_u2pp_parameter_table(config, layout);
  ParameterStore<float> store(table);
  const std::string prefix = "encoder.encoders.0.feed_forward";
  MoeFfnParams<float> p = bind_moe_ffn(&store, prefix, layout, 2, ActivationType::kSwish, 0.1);
  EXPECT_EQ(p.n_experts, 4);
  EXPECT_EQ(p.n_local_experts, 2);
  EXPECT_EQ(p.first_local_expert, 2);
  EXPECT_EQ(p.d_model, 8);
  EXPECT_EQ(p.hidden, 6);
  EXPECT_EQ(p.top_k, 2);
  EXPECT_EQ(p.gate.weight.value, store.value(prefix + ".gate.weight"));
  for (int64_t e = 0; e < 2; ++e) {
    std::string ex = prefix + ".experts." + std::to_string(2 + e) + ".";
    EXPECT_EQ(p.w_1_weight.value + e * 6 * 8, store.value(ex + "w_1.weight"));
    EXPECT_EQ(p.w_1_weight.grad + e * 6 * 8, store.grad(ex + "w_1.weight"));
    EXPECT_EQ(p.w_1_bias.value + e * 6, store.value(ex + "w_1.bias"));
    EXPECT_EQ(p.w_2_weight.value + e * 8 * 6, store.value(ex + "w_2.weight"));
    EXPECT_EQ(p.w_2_bias.grad + e * 8, store.grad(ex + "w_2.bias"));
  }
  EXPECT_EQ(p.w_1_weight.numel, 2 * 6 * 8);
  EXPECT_EQ(table.find(prefix + ".experts.0.w_1.weight"), nullptr);  // not this rank's
  // A layer bound for rank 1 of 2 refuses the single-process dispatcher.
  Arena arena("act", kGrowArena, Arena::Growth::kGrowable);
  RunContext ctx = testing::cpu_test_context();
  ctx.activations = &arena;
  LocalExpertDispatcher<float> local;
  MoeFfnSaved<float> saved;
  std::vector<float> x(8, 0.5f), out(8);
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(moe_ffn_forward(&saved, out.data(), x.data(), nullptr, p, &local, 1, 0, 0, StepRng{}, ctx),
               "dispatcher layout");
}

}  // namespace
}  // namespace moeasr
