// tests/model/attention_gradcheck_test.cc — finite-difference gradients (double) of WeNet's
// MultiHeadedAttention and RelPositionMultiHeadedAttention (model/attention.h): every input (query,
// key, value, pos_emb) and every parameter, with key padding, a fully masked query row, Tk = 1, no
// mask, self-attention with summed input grads, attention dropout 0 and 0.3 in training mode, and the
// reference-kernel path. Also: parameter gradients accumulate.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/arena.h"
#include "model/attention.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::GradTarget;
using testing::random_doubles;

struct LinearBuf {
  std::vector<double> w, b, dw, db;
  int64_t d;
  LinearBuf(int64_t d_model, bool bias, uint64_t seed)
      : w(random_doubles(d_model * d_model, seed, -0.5, 0.5)),
        b(bias ? random_doubles(d_model, seed + 1000, -0.5, 0.5) : std::vector<double>()),
        dw(d_model * d_model, 0.0),
        db(bias ? d_model : 0, 0.0),
        d(d_model) {}
  LinearRef<double> ref() {
    LinearRef<double> r;
    r.weight = {w.data(), dw.data(), d * d};
    if (!b.empty()) r.bias = {b.data(), db.data(), d};
    r.in_features = d;
    r.out_features = d;
    return r;
  }
  void zero() {
    std::fill(dw.begin(), dw.end(), 0.0);
    std::fill(db.begin(), db.end(), 0.0);
  }
  void add_targets(const std::string& name, std::vector<GradTarget>* targets) {
    targets->push_back({name + ".weight", w.data(), dw.data(), d * d});
    if (!b.empty()) targets->push_back({name + ".bias", b.data(), db.data(), d});
  }
};

// Mask [B, Tq, Tk]: key j of utterance b is attended when j < key_lengths[b] (and j <= i + shift when
// causal); rows listed in `dead_rows` as b * Tq + i are fully masked.
std::vector<uint8_t> make_mask(int64_t batch, int64_t queries, int64_t keys,
                               const std::vector<int64_t>& key_lengths, bool causal,
                               const std::vector<int64_t>& dead_rows) {
  std::vector<uint8_t> mask(batch * queries * keys, 0);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t i = 0; i < queries; ++i) {
      for (int64_t j = 0; j < keys; ++j) {
        bool keep = j < key_lengths[b] && (!causal || j <= i + (keys - queries));
        mask[(b * queries + i) * keys + j] = keep ? 1 : 0;
      }
    }
  }
  for (int64_t row : dead_rows) {
    for (int64_t j = 0; j < keys; ++j) mask[row * keys + j] = 0;
  }
  return mask;
}

struct Case {
  int64_t batch = 2, queries = 4, keys = 5, d_model = 12, heads = 3;
  bool rel = false;
  bool self = false;  // query = key = value = x (queries == keys); checks the summed input gradient
  double rate = 0.0;
  bool training = true;
  bool reference = false;
  std::vector<uint8_t> mask;  // empty = null
};

void check_attention(const Case& c) {
  SCOPED_TRACE(::testing::Message() << "rel=" << c.rel << " self=" << c.self << " B=" << c.batch
                                    << " Tq=" << c.queries << " Tk=" << c.keys << " rate=" << c.rate
                                    << " reference=" << c.reference);
  if (c.self) {
    ASSERT_EQ(c.queries, c.keys);
  }
  const int64_t B = c.batch, Tq = c.queries, Tk = c.keys, d = c.d_model;
  RunContext ctx = testing::cpu_test_context(c.reference);
  Arena arena("act", 1 << 20, Arena::Growth::kGrowable);
  ctx.activations = &arena;
  StepRng rng;
  rng.base.seed = 7;
  rng.base.step = 3;
  rng.training = c.training;

  auto query = random_doubles(B * Tq * d, 1), key = random_doubles(B * Tk * d, 2),
       value = random_doubles(B * Tk * d, 3), pos_emb = random_doubles(Tk * d, 4),
       u = random_doubles(d, 5, -0.5, 0.5), vb = random_doubles(d, 6, -0.5, 0.5),
       dout = random_doubles(B * Tq * d, 9);
  std::vector<double> du(d), dvb(d), out(B * Tq * d), dquery(B * Tq * d), dkey(B * Tk * d),
      dvalue(B * Tk * d), dpos(Tk * d), dx(B * Tq * d);
  LinearBuf lq(d, true, 11), lk(d, true, 12), lv(d, true, 13), lo(d, true, 14), lp(d, false, 15);
  const uint8_t* mask = c.mask.empty() ? nullptr : c.mask.data();
  const double* q_in = query.data();
  const double* k_in = c.self ? query.data() : key.data();
  const double* v_in = c.self ? query.data() : value.data();

  MultiHeadAttentionParams<double> mp{lq.ref(), lk.ref(), lv.ref(), lo.ref()};
  RelPositionAttentionParams<double> rp{
      lq.ref(), lk.ref(), lv.ref(), lo.ref(), lp.ref(), {u.data(), du.data(), d}, {vb.data(), dvb.data(), d}};
  MultiHeadAttentionSaved<double> ms;
  RelPositionAttentionSaved<double> rs;
  const uint64_t layer = 2;
  auto forward = [&]() {
    arena.reset();
    if (c.rel) {
      rel_position_attention_forward(&rs, out.data(), q_in, k_in, v_in, pos_emb.data(), mask, rp, B, Tq, Tk,
                                     d, c.heads, c.rate, layer, kSelfAttentionDropoutSite, rng, ctx);
    } else {
      multi_head_attention_forward(&ms, out.data(), q_in, k_in, v_in, mask, mp, B, Tq, Tk, d, c.heads, c.rate,
                                   layer, kSrcAttentionDropoutSite, rng, ctx);
    }
  };
  auto loss = [&]() {
    forward();
    return testing::weighted_sum(out, dout);
  };
  auto grads = [&]() {
    for (LinearBuf* l : {&lq, &lk, &lv, &lo, &lp}) l->zero();
    std::fill(du.begin(), du.end(), 0.0);
    std::fill(dvb.begin(), dvb.end(), 0.0);
    forward();
    if (c.rel) {
      rel_position_attention_backward(dquery.data(), dkey.data(), dvalue.data(), dpos.data(), rs, dout.data(),
                                      rp, B, Tq, Tk, d, c.heads, ctx);
    } else {
      multi_head_attention_backward(dquery.data(), dkey.data(), dvalue.data(), ms, dout.data(), mp, B, Tq, Tk,
                                    d, c.heads, ctx);
    }
    if (c.self) {
      for (size_t i = 0; i < dx.size(); ++i) dx[i] = dquery[i] + dkey[i] + dvalue[i];
    }
  };
  std::vector<GradTarget> targets;
  if (c.self) {
    targets.push_back({"x", query.data(), dx.data(), B * Tq * d});
  } else {
    targets.push_back({"query", query.data(), dquery.data(), B * Tq * d});
    targets.push_back({"key", key.data(), dkey.data(), B * Tk * d});
    targets.push_back({"value", value.data(), dvalue.data(), B * Tk * d});
  }
  lq.add_targets("linear_q", &targets);
  lk.add_targets("linear_k", &targets);
  lv.add_targets("linear_v", &targets);
  lo.add_targets("linear_out", &targets);
  if (c.rel) {
    lp.add_targets("linear_pos", &targets);
    targets.push_back({"pos_bias_u", u.data(), du.data(), d});
    targets.push_back({"pos_bias_v", vb.data(), dvb.data(), d});
    targets.push_back({"pos_emb", pos_emb.data(), dpos.data(), Tk * d});
  }
  testing::GradCheckOptions options;
  options.rtol = 1e-5;
  options.atol = 1e-8;
  testing::expect_gradients_match(loss, grads, targets, options);
  if (c.rate > 0.0 && c.training) {
    // The check above must have run with dropout really active.
    const double* probs = c.rel ? rs.probs : ms.probs;
    const double* dropped = c.rel ? rs.probs_dropped : ms.probs_dropped;
    int64_t zeroed = 0;
    for (int64_t i = 0; i < B * c.heads * Tq * Tk; ++i) zeroed += probs[i] > 0.0 && dropped[i] == 0.0;
    EXPECT_GT(zeroed, 0);
  }
}

TEST(AttentionGradcheck, CrossAttentionPaddedKeysAndDeadRow) {
  for (double rate : {0.0, 0.3}) {
    Case c;
    c.rate = rate;
    c.mask = make_mask(2, 4, 5, {5, 3}, false, {1 * 4 + 2});
    check_attention(c);
  }
}

TEST(AttentionGradcheck, DecoderSelfAttentionCausalSummedInputGrad) {
  for (double rate : {0.0, 0.3}) {
    Case c;
    c.self = true;
    c.queries = c.keys = 5;
    c.rate = rate;
    c.mask = make_mask(2, 5, 5, {5, 3}, true, {});
    check_attention(c);
  }
}

TEST(AttentionGradcheck, RelPositionCrossShapedPaddedKeysAndDeadRow) {
  for (double rate : {0.0, 0.3}) {
    Case c;
    c.rel = true;
    c.rate = rate;
    c.mask = make_mask(2, 4, 5, {5, 3}, false, {0 * 4 + 1});
    check_attention(c);
  }
}

TEST(AttentionGradcheck, RelPositionSelfAttention) {
  for (double rate : {0.0, 0.3}) {
    Case c;
    c.rel = true;
    c.self = true;
    c.queries = c.keys = 5;
    c.rate = rate;
    c.mask = make_mask(2, 5, 5, {5, 3}, false, {});
    check_attention(c);
  }
}

TEST(AttentionGradcheck, SingleKey) {
  for (bool rel : {false, true}) {
    Case c;
    c.rel = rel;
    c.queries = 3;
    c.keys = 1;
    c.mask = make_mask(2, 3, 1, {1, 1}, false, {1 * 3 + 0});
    check_attention(c);
  }
}

TEST(AttentionGradcheck, NullMaskEvalModeAndOneHead) {
  for (bool rel : {false, true}) {
    Case c;
    c.rel = rel;
    c.rate = 0.3;
    c.training = false;  // eval: dropout is the identity
    check_attention(c);
    Case one;
    one.rel = rel;
    one.heads = 1;
    one.batch = 1;
    one.queries = 2;
    one.keys = 3;
    one.d_model = 5;
    check_attention(one);
  }
}

TEST(AttentionGradcheck, ReferenceKernels) {
  for (bool rel : {false, true}) {
    Case c;
    c.rel = rel;
    c.rate = 0.3;
    c.reference = true;
    c.mask = make_mask(2, 4, 5, {4, 2}, false, {3});
    check_attention(c);
  }
}

TEST(AttentionGradcheck, ParameterGradientsAccumulate) {
  const int64_t B = 2, T = 3, d = 6, H = 2;
  RunContext ctx = testing::cpu_test_context();
  Arena arena("act", 1 << 20, Arena::Growth::kGrowable);
  ctx.activations = &arena;
  StepRng rng;
  auto x = random_doubles(B * T * d, 1), pos = random_doubles(T * d, 2), dout = random_doubles(B * T * d, 3);
  auto u = random_doubles(d, 4), vb = random_doubles(d, 5);
  std::vector<double> du(d, 0.0), dvb(d, 0.0), out(B * T * d), dq(B * T * d), dk(B * T * d), dv(B * T * d);
  LinearBuf lq(d, true, 11), lk(d, true, 12), lv(d, true, 13), lo(d, true, 14), lp(d, false, 15);
  RelPositionAttentionParams<double> rp{
      lq.ref(), lk.ref(), lv.ref(), lo.ref(), lp.ref(), {u.data(), du.data(), d}, {vb.data(), dvb.data(), d}};
  RelPositionAttentionSaved<double> rs;
  std::vector<std::vector<double>> once;
  for (int pass = 0; pass < 2; ++pass) {
    arena.reset();
    rel_position_attention_forward(&rs, out.data(), x.data(), x.data(), x.data(), pos.data(),
                                   static_cast<const uint8_t*>(nullptr), rp, B, T, T, d, H, 0.0, 0, 0, rng,
                                   ctx);
    rel_position_attention_backward(dq.data(), dk.data(), dv.data(), static_cast<double*>(nullptr), rs,
                                    dout.data(), rp, B, T, T, d, H, ctx);
    std::vector<const std::vector<double>*> all = {&lq.dw, &lq.db, &lk.dw, &lk.db, &lv.dw, &lv.db,
                                                   &lo.dw, &lo.db, &lp.dw, &du,    &dvb};
    if (pass == 0) {
      for (auto* g : all) once.push_back(*g);
    } else {
      for (size_t t = 0; t < all.size(); ++t) {
        for (size_t i = 0; i < all[t]->size(); ++i)
          EXPECT_DOUBLE_EQ((*all[t])[i], 2 * once[t][i]) << t << " " << i;
      }
    }
  }
}

}  // namespace
}  // namespace moeasr
