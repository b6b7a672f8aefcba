// tests/model/search_test.cc — WeNet's four decoding modes (model/search.h):
//   - ctc_greedy_search on hand-made log-probs (tokens, times, best-path score), exactly;
//   - ctc_prefix_beam_search against brute-force enumeration of every CTC path of tiny T/V (each
//     prefix's probability = the sum over the paths that collapse to it): the top hypothesis and every
//     n-best score with an unpruned beam, the top hypothesis with a pruned one; a hand-worked case;
//     WeNet's token times on a traced example;
//   - the lean decoder (K/V cache) against decoder_forward + log_softmax;
//   - attention beam search with beam 1 == greedy decoding step by step with the full
//     decoder_forward; with beam 4 the returned score is the decoder_forward score of its tokens;
//   - attention_rescoring picks the hypothesis with the best combined score computed independently
//     with decoder_forward (L2R [sos, y], R2L [sos, reversed y]); with reverse_weight 0 the R2L
//     decoder is not used (its weights are NaN there); empty hypotheses and an empty n-best;
//   - decode_utterance runs all four modes; bad mode names and options are errors.
#include "model/search.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <vector>

#include "kernels/cpu/softmax.h"
#include "model/decoder.h"
#include "model/expert_dispatch.h"
#include "model/parameter_table.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Rows of random log-probabilities (log_softmax of random logits times `sharpness`).
std::vector<double> random_log_probs(int64_t frames, int64_t vocab, uint64_t seed, double sharpness = 1.0) {
  std::vector<double> x = testing::random_doubles(frames * vocab, seed, -2.0, 2.0);
  for (int64_t t = 0; t < frames; ++t) {
    double m = -kInf, s = 0;
    for (int64_t v = 0; v < vocab; ++v) m = std::max(m, sharpness * x[t * vocab + v]);
    for (int64_t v = 0; v < vocab; ++v) s += std::exp(sharpness * x[t * vocab + v] - m);
    for (int64_t v = 0; v < vocab; ++v) x[t * vocab + v] = sharpness * x[t * vocab + v] - m - std::log(s);
  }
  return x;
}

// log P(prefix) for every collapsed prefix, by enumerating all V^T paths.
std::map<std::vector<int32_t>, double> brute_force_prefixes(const std::vector<double>& lp, int64_t frames,
                                                            int64_t vocab) {
  std::map<std::vector<int32_t>, double> out;
  std::vector<int32_t> path(static_cast<size_t>(frames), 0);
  int64_t total = 1;
  for (int64_t t = 0; t < frames; ++t) total *= vocab;
  for (int64_t code = 0; code < total; ++code) {
    int64_t c = code;
    double logp = 0;
    for (int64_t t = 0; t < frames; ++t) {
      path[t] = static_cast<int32_t>(c % vocab);
      c /= vocab;
      logp += lp[t * vocab + path[t]];
    }
    std::vector<int32_t> prefix;
    int32_t prev = -1;
    for (int32_t p : path) {
      if (p != prev && p != 0) prefix.push_back(p);
      prev = p;
    }
    auto it = out.find(prefix);
    out[prefix] = it == out.end() ? logp : log_add(it->second, logp);
  }
  return out;
}

TEST(CtcSearch, LogAdd) {
  EXPECT_EQ(log_add(-kInf, -kInf), -kInf);
  EXPECT_DOUBLE_EQ(log_add(-kInf, -1.5), -1.5);
  EXPECT_NEAR(log_add(std::log(0.25), std::log(0.5)), std::log(0.75), 1e-15);
}

TEST(CtcSearch, GreedyOnHandMadeLogProbs) {
  // V = 4 (blank 0); per-frame argmax 1 1 0 1 2 2 3 0 -> tokens 1 1 2 3 at frames 0 3 4 6.
  const int64_t v = 4;
  const std::vector<int32_t> best = {1, 1, 0, 1, 2, 2, 3, 0};
  std::vector<float> lp(best.size() * v, std::log(0.1f));
  double expected_score = 0;
  for (size_t t = 0; t < best.size(); ++t) {
    lp[t * v + best[t]] = std::log(0.7f);
    expected_score += static_cast<double>(std::log(0.7f));
  }
  DecodeResult r = ctc_greedy_search(lp.data(), static_cast<int64_t>(best.size()), v, 0);
  EXPECT_EQ(r.tokens, (std::vector<int32_t>{1, 1, 2, 3}));
  EXPECT_EQ(r.times, (std::vector<int32_t>{0, 3, 4, 6}));
  EXPECT_DOUBLE_EQ(r.score, expected_score);
  // Another blank id; and no frames.
  r = ctc_greedy_search(lp.data(), static_cast<int64_t>(best.size()), v, 1);
  EXPECT_EQ(r.tokens, (std::vector<int32_t>{0, 2, 3, 0}));
  r = ctc_greedy_search(lp.data(), 0, v, 0);
  EXPECT_TRUE(r.tokens.empty());
}

TEST(CtcSearch, PrefixBeamHandWorkedTwoFrames) {
  // V = 2: paths -- -> [], -a a- aa -> [a]. P([]) = 0.6 * 0.3, P([a]) = 1 - 0.18.
  std::vector<double> lp = {std::log(0.6), std::log(0.4), std::log(0.3), std::log(0.7)};
  std::vector<DecodeResult> nbest = ctc_prefix_beam_search(lp.data(), 2, 2, 10, 0);
  ASSERT_EQ(nbest.size(), 3u);
  EXPECT_EQ(nbest[0].tokens, (std::vector<int32_t>{1}));
  EXPECT_NEAR(nbest[0].score, std::log(0.82), 1e-14);
  EXPECT_TRUE(nbest[1].tokens.empty());
  EXPECT_NEAR(nbest[1].score, std::log(0.18), 1e-14);
  // As in WeNet (its defaultdict entry is created before the log_add), the impossible prefix "aa"
  // (a needs a blank between two a's) is kept with log-probability -inf, last.
  EXPECT_EQ(nbest[2].tokens, (std::vector<int32_t>{1, 1}));
  EXPECT_EQ(nbest[2].score, -kInf);
  // No frames: one empty hypothesis with log-probability 0.
  nbest = ctc_prefix_beam_search(lp.data(), 0, 2, 10, 0);
  ASSERT_EQ(nbest.size(), 1u);
  EXPECT_TRUE(nbest[0].tokens.empty());
  EXPECT_EQ(nbest[0].score, 0.0);
}

TEST(CtcSearch, PrefixBeamEqualsBruteForceEnumeration) {
  for (auto [frames, vocab, seed] :
       {std::tuple<int64_t, int64_t, uint64_t>{5, 3, 1}, {4, 4, 2}, {6, 3, 3}, {3, 5, 4}, {7, 2, 5}}) {
    std::vector<double> lp = random_log_probs(frames, vocab, seed);
    std::map<std::vector<int32_t>, double> exact = brute_force_prefixes(lp, frames, vocab);
    // Unpruned: a beam larger than the number of prefixes and than V.
    std::vector<DecodeResult> nbest = ctc_prefix_beam_search(lp.data(), frames, vocab, 100000, 0);
    // Zero-probability prefixes (-inf, WeNet keeps them) come last; the others are exactly the
    // brute-force set.
    while (!nbest.empty() && nbest.back().score == -kInf) {
      EXPECT_EQ(exact.count(nbest.back().tokens), 0u);
      nbest.pop_back();
    }
    ASSERT_EQ(nbest.size(), exact.size()) << "T=" << frames << " V=" << vocab;
    auto best = std::max_element(exact.begin(), exact.end(),
                                 [](const auto& a, const auto& b) { return a.second < b.second; });
    EXPECT_EQ(nbest[0].tokens, best->first) << "T=" << frames << " V=" << vocab;
    EXPECT_NEAR(nbest[0].score, best->second, 1e-12);
    for (size_t i = 0; i < nbest.size(); ++i) {
      ASSERT_TRUE(exact.count(nbest[i].tokens));
      EXPECT_NEAR(nbest[i].score, exact[nbest[i].tokens], 1e-12);
      if (i > 0) {
        EXPECT_GE(nbest[i - 1].score, nbest[i].score);
      }
    }
    // Pruned (both prunes active): on peaked posteriors the best prefix survives, and no pruned
    // score exceeds the exact one.
    std::vector<double> peaked = random_log_probs(frames, vocab, seed + 100, 10.0);
    std::map<std::vector<int32_t>, double> exact_peaked = brute_force_prefixes(peaked, frames, vocab);
    auto best_peaked = std::max_element(exact_peaked.begin(), exact_peaked.end(),
                                        [](const auto& a, const auto& b) { return a.second < b.second; });
    nbest = ctc_prefix_beam_search(peaked.data(), frames, vocab, 2, 0);
    ASSERT_LE(nbest.size(), 2u);
    EXPECT_EQ(nbest[0].tokens, best_peaked->first) << "pruned, T=" << frames << " V=" << vocab;
    for (const DecodeResult& r : nbest) EXPECT_LE(r.score, exact_peaked[r.tokens] + 1e-12);
  }
}

TEST(CtcSearch, PrefixBeamTimesFollowWenetsViterbiBookkeeping) {
  // Peaked frames a a - b (V = 3, a = 1, b = 2): WeNet's times are [1, 3] (the n1 update moves the
  // repeated token's time to the later frame); greedy gives the first frames [0, 3].
  std::vector<double> lp(4 * 3, std::log(0.05));
  const int32_t best[4] = {1, 1, 0, 2};
  for (int t = 0; t < 4; ++t) lp[t * 3 + best[t]] = std::log(0.9);
  std::vector<DecodeResult> nbest = ctc_prefix_beam_search(lp.data(), 4, 3, 3, 0);
  EXPECT_EQ(nbest[0].tokens, (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(nbest[0].times, (std::vector<int32_t>{1, 3}));
  EXPECT_EQ(ctc_greedy_search(lp.data(), 4, 3, 0).times, (std::vector<int32_t>{0, 3}));
}

// ---- Attention searches on a tiny model ------------------------------------------------------------

ModelConfig tiny_config(bool moe) {
  ModelConfig c;
  c.input_dim = 20;
  c.vocab_size = 9;  // sos = eos = 8
  c.encoder.output_size = 16;
  c.encoder.attention_heads = 2;
  c.encoder.num_blocks = 1;
  c.encoder.cnn_module_kernel = 3;
  c.encoder.causal = true;
  c.encoder.cnn_module_norm = ConvNormType::kLayerNorm;
  c.encoder.ffn.mlp_type = moe ? MlpType::kMoe : MlpType::kDense;
  c.encoder.ffn.linear_units = 24;
  c.encoder.ffn.n_expert = 4;
  c.encoder.ffn.n_expert_activated = 2;
  c.decoder.attention_heads = 2;
  c.decoder.num_blocks = 2;
  c.decoder.r_num_blocks = 1;
  c.decoder.ffn = c.encoder.ffn;
  c.decoder.ffn.activation = ActivationType::kRelu;
  return c;
}

template <class T>
struct TinyModel {
  ModelConfig config;
  ParameterTable table;
  ParameterStore<T> store;
  LocalExpertDispatcher<T> dispatcher;
  SearchModel<T> model;
  Arena arena{"search_test", 1 << 20, Arena::Growth::kGrowable};
  RunContext ctx = testing::cpu_test_context();
  explicit TinyModel(const ModelConfig& c, uint64_t seed = 11)
      : config(c),
        table(build_u2pp_parameter_table(c, ExpertLayout{})),
        store(table),
        model(c, &store, &dispatcher) {
    initialize_parameters(&store, seed);
    // Sharper output distributions than the default init, so that searches have clear winners.
    for (const char* name :
         {"decoder.left_decoder.output_layer.weight", "decoder.right_decoder.output_layer.weight"}) {
      const ParamEntry& e = table.at(name);
      T* w = store.value(e);
      for (int64_t i = 0; i < e.numel; ++i) w[i] *= T(6);
    }
    // And a likelier eos, so that some greedy decodes stop before the L-step limit.
    for (const char* name :
         {"decoder.left_decoder.output_layer.bias", "decoder.right_decoder.output_layer.bias"}) {
      store.value(name)[c.eos()] += T(1.5);
    }
    ctx.activations = &arena;
  }

  // log_softmax(decoder_forward(tokens)) for one sequence [U] against memory [L, d].
  std::vector<double> full_log_probs(const DecoderParams<T>& p, const std::vector<int32_t>& tokens,
                                     const std::vector<T>& memory, int64_t frames) {
    const int64_t u = static_cast<int64_t>(tokens.size()), v = config.vocab_size;
    std::vector<uint8_t> valid(static_cast<size_t>(frames), 1);
    int32_t len = static_cast<int32_t>(u);
    DecoderSaved<T> saved;
    decoder_forward(&saved, tokens.data(), &len, memory.data(), valid.data(), p, &dispatcher, 1, u, frames,
                    StepRng{}, ctx);
    std::vector<T> lp(static_cast<size_t>(u * v));
    log_softmax_forward(lp.data(), saved.logits, static_cast<const uint8_t*>(nullptr), u, v, ctx);
    return std::vector<double>(lp.begin(), lp.end());
  }

  // The independent WeNet rescoring score of hypothesis y.
  double rescoring_score(const std::vector<int32_t>& y, double ctc_score, const std::vector<T>& memory,
                         int64_t frames, double ctc_weight, double reverse_weight) {
    const int32_t sos = model.sos(), eos = model.eos();
    const int64_t v = config.vocab_size, n = static_cast<int64_t>(y.size());
    std::vector<int32_t> in = {sos};
    in.insert(in.end(), y.begin(), y.end());
    std::vector<double> lp = full_log_probs(model.left(), in, memory, frames);
    double score = 0;
    for (int64_t j = 0; j < n; ++j) score += lp[j * v + y[j]];
    score += lp[n * v + eos];
    if (reverse_weight > 0) {
      std::vector<int32_t> rin = {sos};
      rin.insert(rin.end(), y.rbegin(), y.rend());
      std::vector<double> rlp = full_log_probs(model.right(), rin, memory, frames);
      double r = 0;
      for (int64_t j = 0; j < n; ++j) r += rlp[j * v + y[n - 1 - j]];
      r += rlp[n * v + eos];
      score = (1 - reverse_weight) * score + reverse_weight * r;
    }
    return score + ctc_weight * ctc_score;
  }
};

template <class T>
std::vector<T> random_memory(int64_t frames, int64_t d, uint64_t seed) {
  std::vector<double> r = testing::random_doubles(frames * d, seed, -1.5, 1.5);
  return std::vector<T>(r.begin(), r.end());
}

template <class T>
void check_lean_decoder(bool moe, double tol) {
  TinyModel<T> m(tiny_config(moe));
  const int64_t frames = 7, d = m.config.encoder.output_size, v = m.config.vocab_size;
  std::vector<T> memory = random_memory<T>(frames, d, 3);
  const int32_t sos = m.model.sos(), eos = m.model.eos();
  // Three sequences of steps 5, eos-padded after their true lengths.
  std::vector<std::vector<int32_t>> seqs = {{sos, 1, 2, 3, 4}, {sos, 5, eos, eos, eos}, {sos, 7, 7, 0, eos}};
  const int64_t steps = 5, n = 3;
  std::vector<int32_t> tokens;
  for (auto& s : seqs) tokens.insert(tokens.end(), s.begin(), s.end());
  for (const DecoderParams<T>* p : {&m.model.left(), &m.model.right()}) {
    std::vector<T> lp(static_cast<size_t>(n * steps * v));
    decoder_log_probs(lp.data(), tokens.data(), memory.data(), *p, &m.dispatcher, n, steps, frames, m.ctx);
    for (int64_t i = 0; i < n; ++i) {
      std::vector<double> full = m.full_log_probs(*p, seqs[i], memory, frames);
      double diff = 0;
      for (int64_t k = 0; k < steps * v; ++k) {
        diff = std::max(diff, std::fabs(static_cast<double>(lp[i * steps * v + k]) - full[k]));
      }
      EXPECT_LT(diff, tol) << "sequence " << i;
    }
  }
}

TEST(AttentionSearch, LeanDecoderEqualsDecoderForwardDenseFloat) {
  check_lean_decoder<float>(false, 1e-5);
}
TEST(AttentionSearch, LeanDecoderEqualsDecoderForwardMoeDouble) {
  check_lean_decoder<double>(true, 1e-11);
}

template <class T>
void check_beam_search(bool moe, double tol) {
  TinyModel<T> m(tiny_config(moe));
  const int64_t d = m.config.encoder.output_size, v = m.config.vocab_size;
  const int32_t sos = m.model.sos(), eos = m.model.eos();
  int ended_with_eos = 0, ran_to_max = 0;
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    const int64_t frames = 4 + static_cast<int64_t>(seed);
    std::vector<T> memory = random_memory<T>(frames, d, seed);
    // Greedy with the full decoder_forward, step by step.
    std::vector<int32_t> hyp = {sos};
    double greedy_score = 0;
    for (int64_t i = 1; i <= frames; ++i) {
      std::vector<double> lp = m.full_log_probs(m.model.left(), hyp, memory, frames);
      const double* last = lp.data() + (i - 1) * v;
      const int32_t best = static_cast<int32_t>(std::max_element(last, last + v) - last);
      greedy_score += last[best];
      hyp.push_back(best);
      if (best == eos) break;
    }
    std::vector<int32_t> greedy(hyp.begin() + 1, hyp.end());
    if (!greedy.empty() && greedy.back() == eos) {
      greedy.pop_back();
      ++ended_with_eos;
    } else {
      ++ran_to_max;
    }
    m.arena.reset();
    DecodeResult r = attention_beam_search(m.model, memory.data(), frames, 1, 0.0, m.ctx);
    EXPECT_EQ(r.tokens, greedy) << "seed " << seed;
    EXPECT_NEAR(r.score, greedy_score, tol) << "seed " << seed;

    // Beam 4: the score it reports is its tokens' decoder_forward score (+ eos when it ended), which
    // exercises the cache reordering between beams.
    m.arena.reset();
    DecodeResult b = attention_beam_search(m.model, memory.data(), frames, 4, 0.0, m.ctx);
    std::vector<int32_t> in = {sos};
    in.insert(in.end(), b.tokens.begin(), b.tokens.end());
    const bool ended = static_cast<int64_t>(b.tokens.size()) < frames;
    if (ended) in.push_back(eos);
    std::vector<double> lp = m.full_log_probs(m.model.left(), in, memory, frames);
    double s = 0;
    for (size_t j = 1; j < in.size(); ++j) s += lp[(j - 1) * v + in[j]];
    EXPECT_NEAR(b.score, s, tol) << "beam 4, seed " << seed;
  }
  std::printf("[ greedy ] %d decodes ended with eos, %d ran to L steps\n", ended_with_eos, ran_to_max);
  // The eos stopping rule was exercised (the other one, L steps, may or may not be).
  EXPECT_GT(ended_with_eos, 0) << ran_to_max << " of 6 greedy decodes ran to the maximum length";
}

TEST(AttentionSearch, BeamOneEqualsStepwiseGreedyWithDecoderForwardDense) {
  check_beam_search<float>(false, 1e-4);
}
TEST(AttentionSearch, BeamOneEqualsStepwiseGreedyWithDecoderForwardMoe) {
  check_beam_search<double>(true, 1e-9);
}

TEST(AttentionSearch, NoEncoderFrames) {
  TinyModel<float> m(tiny_config(false));
  DecodeResult r = attention_beam_search(m.model, static_cast<const float*>(nullptr), 0, 3, 0.0, m.ctx);
  EXPECT_TRUE(r.tokens.empty());
  EXPECT_EQ(r.score, 0.0);
}

template <class T>
void check_rescoring(bool moe, double tol) {
  TinyModel<T> m(tiny_config(moe));
  const int64_t frames = 9, d = m.config.encoder.output_size;
  std::vector<T> memory = random_memory<T>(frames, d, 21);
  std::vector<DecodeResult> nbest(5);
  nbest[0].tokens = {1, 2, 3};
  nbest[0].score = -1.0;
  nbest[1].tokens = {};
  nbest[1].score = -6.0;
  nbest[2].tokens = {4};
  nbest[2].score = -1.2;
  nbest[3].tokens = {5, 5, 6, 0, 7};
  nbest[3].score = -3.0;
  nbest[4].tokens = {2, 3};
  nbest[4].score = -1.1;
  for (auto [ctc_weight, reverse_weight] :
       {std::pair<double, double>{0.3, 0.5}, {0.0, 0.3}, {0.5, 0.0}, {3.0, 1.0}, {1.0, 0.7}}) {
    int64_t expected = 0;
    double best = -kInf;
    for (size_t i = 0; i < nbest.size(); ++i) {
      const double s =
          m.rescoring_score(nbest[i].tokens, nbest[i].score, memory, frames, ctc_weight, reverse_weight);
      if (s > best) {
        best = s;
        expected = static_cast<int64_t>(i);
      }
    }
    std::printf("[ rescoring ] ctc_weight %.1f reverse_weight %.1f: best hypothesis %lld\n", ctc_weight,
                reverse_weight, static_cast<long long>(expected));
    m.arena.reset();
    DecodeResult r =
        attention_rescoring(m.model, nbest, memory.data(), frames, ctc_weight, reverse_weight, m.ctx);
    EXPECT_EQ(r.tokens, nbest[expected].tokens)
        << "ctc_weight " << ctc_weight << " reverse_weight " << reverse_weight;
    EXPECT_NEAR(r.score, best, tol) << "ctc_weight " << ctc_weight << " reverse_weight " << reverse_weight;
    // Each hypothesis alone is its own best, with its own score (covers the empty hypothesis).
    for (size_t i = 0; i < nbest.size(); ++i) {
      m.arena.reset();
      DecodeResult one = attention_rescoring(m.model, std::vector<DecodeResult>{nbest[i]}, memory.data(),
                                             frames, ctc_weight, reverse_weight, m.ctx);
      EXPECT_EQ(one.tokens, nbest[i].tokens);
      EXPECT_NEAR(
          one.score,
          m.rescoring_score(nbest[i].tokens, nbest[i].score, memory, frames, ctc_weight, reverse_weight),
          tol);
    }
  }
}

TEST(AttentionRescoring, ChoosesTheBestCombinedScoreDenseFloat) {
  check_rescoring<float>(false, 1e-4);
}
TEST(AttentionRescoring, ChoosesTheBestCombinedScoreMoeDouble) {
  check_rescoring<double>(true, 1e-9);
}

TEST(AttentionRescoring, ReverseWeightZeroDoesNotRunTheRightDecoder) {
  TinyModel<double> m(tiny_config(false));
  const int64_t frames = 6, d = m.config.encoder.output_size;
  std::vector<double> memory = random_memory<double>(frames, d, 5);
  std::vector<DecodeResult> nbest(2);
  nbest[0].tokens = {1, 2};
  nbest[0].score = -0.5;
  nbest[1].tokens = {3};
  nbest[1].score = -0.7;
  const double s0 = m.rescoring_score(nbest[0].tokens, nbest[0].score, memory, frames, 0.3, 0.0);
  const double s1 = m.rescoring_score(nbest[1].tokens, nbest[1].score, memory, frames, 0.3, 0.0);
  // Poison the right decoder: any use of it would make the score NaN.
  for (const ParamEntry& e : m.table.entries()) {
    if (e.name.rfind("decoder.right_decoder.", 0) != 0) continue;
    double* w = m.store.value(e);
    for (int64_t i = 0; i < e.numel; ++i) w[i] = std::numeric_limits<double>::quiet_NaN();
  }
  DecodeResult r = attention_rescoring(m.model, nbest, memory.data(), frames, 0.3, 0.0, m.ctx);
  ASSERT_TRUE(std::isfinite(r.score));
  EXPECT_NEAR(r.score, std::max(s0, s1), 1e-10);
  EXPECT_EQ(r.tokens, s0 >= s1 ? nbest[0].tokens : nbest[1].tokens);
  r = attention_rescoring(m.model, nbest, memory.data(), frames, 0.3, 0.5, m.ctx);
  EXPECT_FALSE(std::isfinite(r.score)) << "the poisoned R2L decoder must show with reverse_weight 0.5";
}

TEST(AttentionRescoring, EmptyNbestAndNoFrames) {
  TinyModel<float> m(tiny_config(false));
  std::vector<float> memory = random_memory<float>(4, m.config.encoder.output_size, 2);
  DecodeResult r = attention_rescoring(m.model, {}, memory.data(), 4, 0.3, 0.5, m.ctx);
  EXPECT_TRUE(r.tokens.empty());
  EXPECT_EQ(r.score, -kInf);
  std::vector<DecodeResult> nbest(1);
  nbest[0].score = 0.0;
  r = attention_rescoring(m.model, nbest, memory.data(), 0, 0.3, 0.5, m.ctx);
  EXPECT_TRUE(r.tokens.empty());
  EXPECT_EQ(r.score, 0.0);
}

TEST(DecodeModes, AllFourModesAndBadOptions) {
  TinyModel<float> m(tiny_config(true));
  const int64_t frames = 12, d = m.config.encoder.output_size, v = m.config.vocab_size;
  std::vector<float> memory = random_memory<float>(frames, d, 8);
  std::vector<DecodeMode> modes;
  for (const char* name :
       {"ctc_greedy_search", "ctc_prefix_beam_search", "attention", "attention_rescoring"}) {
    DecodeMode mode;
    ASSERT_TRUE(parse_decode_mode(name, &mode).ok()) << name;
    EXPECT_STREQ(decode_mode_name(mode), name);
    modes.push_back(mode);
  }
  SearchOptions options;
  options.beam_size = 4;
  options.ctc_weight = 0.3;
  options.reverse_weight = 0.5;
  ASSERT_TRUE(validate_search_options(options).ok());
  std::vector<DecodeResult> results = decode_utterance(m.model, modes, memory.data(), frames, options, m.ctx);
  ASSERT_EQ(results.size(), 4u);
  // Each result equals its search run on its own.
  std::vector<float> lp(static_cast<size_t>(frames * v));
  m.model.ctc_log_probs(lp.data(), memory.data(), frames, m.ctx);
  EXPECT_EQ(results[0].tokens, ctc_greedy_search(lp.data(), frames, v, 0).tokens);
  std::vector<DecodeResult> nbest = ctc_prefix_beam_search(lp.data(), frames, v, 4, 0);
  EXPECT_EQ(results[1].tokens, nbest[0].tokens);
  EXPECT_EQ(results[2].tokens, attention_beam_search(m.model, memory.data(), frames, 4, 0.0, m.ctx).tokens);
  EXPECT_EQ(results[3].tokens,
            attention_rescoring(m.model, nbest, memory.data(), frames, 0.3, 0.5, m.ctx).tokens);
  for (const DecodeResult& r : results) {
    for (int32_t t : r.tokens) EXPECT_TRUE(t >= 0 && t < v);
  }

  DecodeMode mode;
  Status s = parse_decode_mode("beam_search", &mode);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("--modes"), std::string::npos);
  SearchOptions bad = options;
  bad.beam_size = 0;
  EXPECT_FALSE(validate_search_options(bad).ok());
  bad = options;
  bad.reverse_weight = 1.5;
  EXPECT_FALSE(validate_search_options(bad).ok());
  bad = options;
  bad.ctc_weight = -1;
  EXPECT_FALSE(validate_search_options(bad).ok());
  bad = options;
  bad.blank_penalty = -0.5;
  Status penalty_status = validate_search_options(bad);
  EXPECT_FALSE(penalty_status.ok());
  EXPECT_NE(penalty_status.message().find("--blank_penalty"), std::string::npos);
}

// --blank_penalty: the CTC log-probs are the log-softmax of the logits with the penalty taken off the
// blank (checked in double against the unpenalised log-probs, which differ from the logits by a
// per-frame constant); the CTC modes decode from them, and a large penalty leaves no blank frame.
TEST(DecodeModes, BlankPenaltyLowersTheBlankLogit) {
  TinyModel<double> m(tiny_config(true));
  const int64_t frames = 12, d = m.config.encoder.output_size, v = m.config.vocab_size;
  std::vector<double> memory = random_memory<double>(frames, d, 9);
  std::vector<double> plain(static_cast<size_t>(frames * v)), penalised(plain.size());
  m.model.ctc_log_probs(plain.data(), memory.data(), frames, m.ctx);
  const double penalty = 1.75;
  m.model.ctc_log_probs(penalised.data(), memory.data(), frames, m.ctx, penalty, 0);
  for (int64_t t = 0; t < frames; ++t) {
    double norm = 0.0;
    for (int64_t k = 0; k < v; ++k) norm += std::exp(plain[t * v + k] - (k == 0 ? penalty : 0.0));
    for (int64_t k = 0; k < v; ++k) {
      const double want = plain[t * v + k] - (k == 0 ? penalty : 0.0) - std::log(norm);
      EXPECT_NEAR(penalised[t * v + k], want, 1e-12) << t << " " << k;
    }
  }
  SearchOptions options;
  options.beam_size = 4;
  options.blank_penalty = penalty;
  std::vector<DecodeMode> modes = {DecodeMode::kCtcGreedySearch, DecodeMode::kCtcPrefixBeamSearch};
  std::vector<DecodeResult> results = decode_utterance(m.model, modes, memory.data(), frames, options, m.ctx);
  EXPECT_EQ(results[0].tokens, ctc_greedy_search(penalised.data(), frames, v, 0).tokens);
  EXPECT_EQ(results[1].tokens, ctc_prefix_beam_search(penalised.data(), frames, v, 4, 0)[0].tokens);
  // A penalty far above every logit gap: no frame's best label is the blank, so greedy emits one label
  // per run of equal labels.
  options.blank_penalty = 1e3;
  std::vector<double> huge(plain.size());
  m.model.ctc_log_probs(huge.data(), memory.data(), frames, m.ctx, 1e3, 0);
  DecodeResult greedy =
      decode_utterance(m.model, {DecodeMode::kCtcGreedySearch}, memory.data(), frames, options, m.ctx)[0];
  int64_t runs = 0;
  int64_t previous = -1;
  for (int64_t t = 0; t < frames; ++t) {
    const double* row = huge.data() + t * v;
    const int64_t best = std::max_element(row, row + v) - row;
    EXPECT_NE(best, 0) << "frame " << t;
    if (best != previous) ++runs;
    previous = best;
  }
  EXPECT_EQ(static_cast<int64_t>(greedy.tokens.size()), runs);
}

}  // namespace
}  // namespace moeasr
