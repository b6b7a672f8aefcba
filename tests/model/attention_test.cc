// tests/model/attention_test.cc — unit tests of model/attention.h: exact answers (one attended key
// per query gives linear_out(value of that key); a fully masked row gives linear_out's bias), the
// forward against a plain loop written from WeNet's attention.py formulas (head split h*dk + j, rel-pos
// without rel_shift), eval-mode dropout, float vs double, and binding by WeNet name.
#include "model/attention.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/arena.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::random_doubles;

template <class T>
std::vector<T> cast(const std::vector<double>& x) {
  return std::vector<T>(x.begin(), x.end());
}

// All tensors of one attention layer in T, from double seeds (so float and double see the same data).
template <class T>
struct Layer {
  int64_t d;
  std::vector<T> w[5], b[4], dw[5], db[4], u, v, du, dv;  // q, k, v, out, pos
  explicit Layer(int64_t d_model) : d(d_model) {
    for (int i = 0; i < 5; ++i) {
      w[i] = cast<T>(random_doubles(d * d, 100 + i, -0.5, 0.5));
      dw[i].assign(d * d, T(0));
    }
    for (int i = 0; i < 4; ++i) {
      b[i] = cast<T>(random_doubles(d, 200 + i, -0.5, 0.5));
      db[i].assign(d, T(0));
    }
    u = cast<T>(random_doubles(d, 300, -0.5, 0.5));
    v = cast<T>(random_doubles(d, 301, -0.5, 0.5));
    du.assign(d, T(0));
    dv.assign(d, T(0));
  }
  LinearRef<T> lin(int i) {
    LinearRef<T> r;
    r.weight = {w[i].data(), dw[i].data(), d * d};
    if (i < 4) r.bias = {b[i].data(), db[i].data(), d};
    r.in_features = d;
    r.out_features = d;
    return r;
  }
  MultiHeadAttentionParams<T> mha() { return {lin(0), lin(1), lin(2), lin(3)}; }
  RelPositionAttentionParams<T> rel() {
    return {lin(0), lin(1), lin(2), lin(3), lin(4), {u.data(), du.data(), d}, {v.data(), dv.data(), d}};
  }
};

// y[n, o] = sum_i W[o, i] x[n, i] + b[o]
std::vector<double> ref_linear(const std::vector<double>& x, const std::vector<double>& w, const double* b,
                               int64_t n, int64_t d) {
  std::vector<double> y(n * d);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t o = 0; o < d; ++o) {
      double acc = b != nullptr ? b[o] : 0.0;
      for (int64_t i = 0; i < d; ++i) acc += w[o * d + i] * x[r * d + i];
      y[r * d + o] = acc;
    }
  }
  return y;
}

// WeNet attention.py, written out per (b, h, i, j) on [B, T, d] tensors (feature h*dk + c of head h).
std::vector<double> ref_attention(Layer<double>& L, bool rel, const std::vector<double>& query,
                                  const std::vector<double>& key, const std::vector<double>& value,
                                  const std::vector<double>& pos_emb, const std::vector<uint8_t>& mask,
                                  int64_t B, int64_t Tq, int64_t Tk, int64_t d, int64_t H) {
  const int64_t dk = d / H;
  auto q = ref_linear(query, L.w[0], L.b[0].data(), B * Tq, d);
  auto k = ref_linear(key, L.w[1], L.b[1].data(), B * Tk, d);
  auto v = ref_linear(value, L.w[2], L.b[2].data(), B * Tk, d);
  std::vector<double> p = rel ? ref_linear(pos_emb, L.w[4], nullptr, Tk, d) : std::vector<double>();
  std::vector<double> context(B * Tq * d, 0.0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < Tq; ++i) {
        std::vector<double> s(Tk);
        bool any = false;
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < Tk; ++j) {
          double ac = 0.0, bd = 0.0;
          for (int64_t c = 0; c < dk; ++c) {
            const double qc = q[(b * Tq + i) * d + h * dk + c];
            const double kc = k[(b * Tk + j) * d + h * dk + c];
            if (rel) {
              ac += (qc + L.u[h * dk + c]) * kc;
              bd += (qc + L.v[h * dk + c]) * p[j * d + h * dk + c];  // key position j only: no rel_shift
            } else {
              ac += qc * kc;
            }
          }
          s[j] = (ac + bd) / std::sqrt(static_cast<double>(dk));
          if (mask.empty() || mask[(b * Tq + i) * Tk + j]) {
            any = true;
            mx = std::max(mx, s[j]);
          }
        }
        if (!any) continue;  // masked_fill(0) after softmax: the row contributes zeros
        double sum = 0.0;
        for (int64_t j = 0; j < Tk; ++j) {
          s[j] = (mask.empty() || mask[(b * Tq + i) * Tk + j]) ? std::exp(s[j] - mx) : 0.0;
          sum += s[j];
        }
        for (int64_t j = 0; j < Tk; ++j) {
          for (int64_t c = 0; c < dk; ++c) {
            context[(b * Tq + i) * d + h * dk + c] += s[j] / sum * v[(b * Tk + j) * d + h * dk + c];
          }
        }
      }
    }
  }
  return ref_linear(context, L.w[3], L.b[3].data(), B * Tq, d);
}

template <class T>
void run_forward(std::vector<T>* out, Layer<T>& L, bool rel, const std::vector<T>& query,
                 const std::vector<T>& key, const std::vector<T>& value, const std::vector<T>& pos_emb,
                 const std::vector<uint8_t>& mask, int64_t B, int64_t Tq, int64_t Tk, int64_t d, int64_t H,
                 double rate, const StepRng& rng, const RunContext& ctx) {
  out->assign(B * Tq * d, T(0));
  const uint8_t* m = mask.empty() ? nullptr : mask.data();
  if (rel) {
    RelPositionAttentionSaved<T> saved;
    rel_position_attention_forward(&saved, out->data(), query.data(), key.data(), value.data(),
                                   pos_emb.data(), m, L.rel(), B, Tq, Tk, d, H, rate, 1,
                                   kSelfAttentionDropoutSite, rng, ctx);
  } else {
    MultiHeadAttentionSaved<T> saved;
    multi_head_attention_forward(&saved, out->data(), query.data(), key.data(), value.data(), m, L.mha(), B,
                                 Tq, Tk, d, H, rate, 1, kSrcAttentionDropoutSite, rng, ctx);
  }
}

TEST(Attention, OneKeyPerQueryGivesLinearOutOfThatValue) {
  // H = 1, linear_v = identity without bias, integer values and linear_out: every sum is exact.
  const int64_t B = 2, Tq = 3, Tk = 4, d = 4;
  for (bool rel : {false, true}) {
    RunContext ctx = testing::cpu_test_context();
    Arena arena("act", 1 << 20, Arena::Growth::kGrowable);
    ctx.activations = &arena;
    Layer<double> L(d);
    for (int64_t o = 0; o < d; ++o) {
      for (int64_t i = 0; i < d; ++i) {
        L.w[2][o * d + i] = o == i ? 1.0 : 0.0;
        L.w[3][o * d + i] = static_cast<double>((o * 3 + i * 5) % 7 - 3);
      }
      L.b[2][o] = 0.0;
      L.b[3][o] = static_cast<double>(o - 2);
    }
    std::vector<double> value(B * Tk * d);
    for (int64_t i = 0; i < B * Tk * d; ++i) value[i] = static_cast<double>((i * 7) % 11 - 5);
    auto query = random_doubles(B * Tq * d, 1), key = random_doubles(B * Tk * d, 2),
         pos = random_doubles(Tk * d, 3);
    // Query i of utterance b attends key (i + b) % Tk only; row (b = 1, i = 2) attends nothing.
    std::vector<uint8_t> mask(B * Tq * Tk, 0);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t i = 0; i < Tq; ++i) mask[(b * Tq + i) * Tk + (i + b) % Tk] = 1;
    }
    for (int64_t j = 0; j < Tk; ++j) mask[(1 * Tq + 2) * Tk + j] = 0;
    std::vector<double> out;
    StepRng rng;
    run_forward(&out, L, rel, query, key, value, pos, mask, B, Tq, Tk, d, 1, 0.0, rng, ctx);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t i = 0; i < Tq; ++i) {
        const bool dead = b == 1 && i == 2;
        const double* v = value.data() + (b * Tk + (i + b) % Tk) * d;
        for (int64_t o = 0; o < d; ++o) {
          double expected = L.b[3][o];
          if (!dead) {
            for (int64_t c = 0; c < d; ++c) expected += L.w[3][o * d + c] * v[c];
          }
          EXPECT_EQ(out[(b * Tq + i) * d + o], expected)
              << "rel=" << rel << " b=" << b << " i=" << i << " o=" << o;
        }
      }
    }
  }
}

TEST(Attention, MatchesWenetFormulaLoop) {
  const int64_t B = 2, Tq = 4, Tk = 5, d = 12, H = 3;
  auto query = random_doubles(B * Tq * d, 1), key = random_doubles(B * Tk * d, 2),
       value = random_doubles(B * Tk * d, 3), pos = random_doubles(Tk * d, 4);
  std::vector<uint8_t> mask(B * Tq * Tk, 1);
  for (int64_t i = 0; i < Tq; ++i) {
    for (int64_t j = 3; j < Tk; ++j) mask[(1 * Tq + i) * Tk + j] = 0;  // utterance 1 has 3 keys
  }
  for (int64_t j = 0; j < Tk; ++j) mask[(0 * Tq + 2) * Tk + j] = 0;  // a dead row
  for (bool rel : {false, true}) {
    for (bool with_mask : {true, false}) {
      for (bool reference : {false, true}) {
        RunContext ctx = testing::cpu_test_context(reference);
        Arena arena("act", 1 << 20, Arena::Growth::kGrowable);
        ctx.activations = &arena;
        Layer<double> L(d);
        const std::vector<uint8_t> m = with_mask ? mask : std::vector<uint8_t>();
        std::vector<double> out;
        StepRng rng;
        rng.training = true;  // rate 0: dropout is still the identity
        run_forward(&out, L, rel, query, key, value, pos, m, B, Tq, Tk, d, H, 0.0, rng, ctx);
        auto expected = ref_attention(L, rel, query, key, value, pos, m, B, Tq, Tk, d, H);
        double norm = 0.0;
        for (size_t i = 0; i < out.size(); ++i) {
          EXPECT_NEAR(out[i], expected[i], 1e-12) << "rel=" << rel << " mask=" << with_mask << " i=" << i;
          norm += std::fabs(out[i]);
        }
        EXPECT_GT(norm, 1.0);
      }
    }
  }
}

TEST(Attention, DropoutOnlyInTraining) {
  const int64_t B = 2, Tq = 4, Tk = 5, d = 12, H = 3;
  auto query = random_doubles(B * Tq * d, 1), key = random_doubles(B * Tk * d, 2),
       value = random_doubles(B * Tk * d, 3), pos = random_doubles(Tk * d, 4);
  for (bool rel : {false, true}) {
    RunContext ctx = testing::cpu_test_context();
    Arena arena("act", 1 << 20, Arena::Growth::kGrowable);
    ctx.activations = &arena;
    Layer<double> L(d);
    StepRng eval, train;
    eval.base.seed = train.base.seed = 5;
    train.training = true;
    std::vector<double> plain, eval_out, train_out, train_again;
    run_forward(&plain, L, rel, query, key, value, pos, {}, B, Tq, Tk, d, H, 0.0, train, ctx);
    run_forward(&eval_out, L, rel, query, key, value, pos, {}, B, Tq, Tk, d, H, 0.3, eval, ctx);
    run_forward(&train_out, L, rel, query, key, value, pos, {}, B, Tq, Tk, d, H, 0.3, train, ctx);
    run_forward(&train_again, L, rel, query, key, value, pos, {}, B, Tq, Tk, d, H, 0.3, train, ctx);
    EXPECT_EQ(eval_out, plain);
    EXPECT_EQ(train_out, train_again);  // the mask is a function of the key alone
    double diff = 0.0;
    for (size_t i = 0; i < plain.size(); ++i) diff += std::fabs(train_out[i] - plain[i]);
    EXPECT_GT(diff, 1e-3);
  }
}

TEST(Attention, DropoutScalesKeptProbabilities) {
  const int64_t B = 2, Tq = 3, Tk = 5, d = 6, H = 2;
  RunContext ctx = testing::cpu_test_context();
  Arena arena("act", 1 << 20, Arena::Growth::kGrowable);
  ctx.activations = &arena;
  Layer<double> L(d);
  auto query = random_doubles(B * Tq * d, 1), key = random_doubles(B * Tk * d, 2);
  StepRng rng;
  rng.training = true;
  std::vector<double> out(B * Tq * d);
  MultiHeadAttentionSaved<double> saved;
  multi_head_attention_forward(&saved, out.data(), query.data(), key.data(), key.data(),
                               static_cast<const uint8_t*>(nullptr), L.mha(), B, Tq, Tk, d, H, 0.3, 4,
                               kSrcAttentionDropoutSite, rng, ctx);
  int64_t kept = 0, dropped = 0;
  for (int64_t i = 0; i < B * H * Tq * Tk; ++i) {
    if (saved.probs_dropped[i] == 0.0) {
      ++dropped;
    } else {
      ++kept;
      EXPECT_NEAR(saved.probs_dropped[i], saved.probs[i] / 0.7, 1e-15);
    }
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(dropped, 0);
}

// Forward and backward in float agree with double on random data, with dropout active.
TEST(Attention, FloatMatchesDouble) {
  const int64_t B = 2, Tq = 4, Tk = 5, d = 12, H = 3;
  auto query = random_doubles(B * Tq * d, 1), key = random_doubles(B * Tk * d, 2),
       value = random_doubles(B * Tk * d, 3), pos = random_doubles(Tk * d, 4),
       dout = random_doubles(B * Tq * d, 5);
  std::vector<uint8_t> mask(B * Tq * Tk, 1);
  for (int64_t i = 0; i < Tq; ++i) mask[(1 * Tq + i) * Tk + 4] = 0;
  for (bool rel : {false, true}) {
    StepRng rng;
    rng.base.seed = 9;
    rng.training = true;
    // Runs forward + backward in T and returns out followed by every gradient, widened to double.
    auto run = [&](auto zero) {
      using T = decltype(zero);
      RunContext ctx = testing::cpu_test_context();
      Arena arena("act", 1 << 20, Arena::Growth::kGrowable);
      ctx.activations = &arena;
      Layer<T> L(d);
      auto q = cast<T>(query), k = cast<T>(key), v = cast<T>(value), p = cast<T>(pos), g = cast<T>(dout);
      std::vector<T> out(B * Tq * d), dq(B * Tq * d), dk(B * Tk * d), dv(B * Tk * d), dp(Tk * d);
      if (rel) {
        RelPositionAttentionSaved<T> s;
        auto params = L.rel();
        rel_position_attention_forward(&s, out.data(), q.data(), k.data(), v.data(), p.data(), mask.data(),
                                       params, B, Tq, Tk, d, H, 0.3, 0, kSelfAttentionDropoutSite, rng, ctx);
        rel_position_attention_backward(dq.data(), dk.data(), dv.data(), dp.data(), s, g.data(), params, B,
                                        Tq, Tk, d, H, ctx);
      } else {
        MultiHeadAttentionSaved<T> s;
        auto params = L.mha();
        multi_head_attention_forward(&s, out.data(), q.data(), k.data(), v.data(), mask.data(), params, B, Tq,
                                     Tk, d, H, 0.3, 0, kSrcAttentionDropoutSite, rng, ctx);
        multi_head_attention_backward(dq.data(), dk.data(), dv.data(), s, g.data(), params, B, Tq, Tk, d, H,
                                      ctx);
      }
      std::vector<std::vector<double>> all;
      for (const auto* x : {&out, &dq, &dk, &dv}) all.emplace_back(x->begin(), x->end());
      for (int i = 0; i < 5; ++i) all.emplace_back(L.dw[i].begin(), L.dw[i].end());
      for (int i = 0; i < 4; ++i) all.emplace_back(L.db[i].begin(), L.db[i].end());
      if (rel) {
        for (const auto* x : {&dp, &L.du, &L.dv}) all.emplace_back(x->begin(), x->end());
      }
      return all;
    };
    auto f = run(0.0f);
    auto g = run(0.0);
    ASSERT_EQ(f.size(), g.size());
    for (size_t t = 0; t < f.size(); ++t) {
      double scale = 0.0;
      for (double x : g[t]) scale = std::max(scale, std::fabs(x));
      if (!rel && t == 8) {
        EXPECT_EQ(scale, 0.0);  // linear_pos is unused by MultiHeadedAttention
        continue;
      }
      // linear_k's bias adds q . b_k, the same to every key of a row: softmax cancels it (grad ~0).
      if (t == 10) {
        EXPECT_LT(scale, 1e-12);
      } else {
        EXPECT_GT(scale, 1e-3) << "tensor " << t;
      }
      for (size_t i = 0; i < f[t].size(); ++i) {
        EXPECT_NEAR(f[t][i], g[t][i], 1e-5 * scale + 1e-6) << "rel=" << rel << " tensor " << t << " i=" << i;
      }
    }
  }
}

TEST(Attention, BindsWenetNames) {
  const int64_t d = 8, H = 2;
  ParameterTable table;
  const std::string prefix = "encoder.encoders.0.self_attn";
  for (const char* lin : {"linear_q", "linear_k", "linear_v", "linear_out"}) {
    table.add(prefix + "." + lin + ".weight", Shape({d, d}), ParamRegion::kDense, ParamInit::kUniformFanIn,
              d);
    table.add(prefix + "." + lin + ".bias", Shape({d}), ParamRegion::kDense, ParamInit::kUniformFanIn, d);
  }
  table.add(prefix + ".linear_pos.weight", Shape({d, d}), ParamRegion::kDense, ParamInit::kUniformFanIn, d);
  table.add(prefix + ".pos_bias_u", Shape({H, d / H}), ParamRegion::kDense, ParamInit::kXavierUniform, d / H,
            H);
  table.add(prefix + ".pos_bias_v", Shape({H, d / H}), ParamRegion::kDense, ParamInit::kXavierUniform, d / H,
            H);
  ParameterStore<double> store(table);
  auto rel = bind_rel_position_attention(&store, prefix);
  EXPECT_EQ(rel.linear_q.weight.value, store.value(prefix + ".linear_q.weight"));
  EXPECT_EQ(rel.linear_out.bias.grad, store.grad(prefix + ".linear_out.bias"));
  EXPECT_EQ(rel.linear_pos.weight.value, store.value(prefix + ".linear_pos.weight"));
  EXPECT_EQ(rel.linear_pos.bias.value, nullptr);
  EXPECT_EQ(rel.pos_bias_u.value, store.value(prefix + ".pos_bias_u"));
  EXPECT_EQ(rel.pos_bias_v.grad, store.grad(prefix + ".pos_bias_v"));
  EXPECT_EQ(rel.pos_bias_v.numel, d);
  auto mha = bind_multi_head_attention(&store, prefix);
  EXPECT_EQ(mha.linear_k.bias.value, store.value(prefix + ".linear_k.bias"));
  EXPECT_EQ(mha.linear_v.in_features, d);
  EXPECT_EQ(mha.linear_v.out_features, d);
}

}  // namespace
}  // namespace moeasr
