// model/search.cc — WeNet's CTC greedy / prefix beam search, attention beam search and attention
// rescoring (see search.h), with a lean forward-only decoder (self-attention K/V cache, shared
// cross-attention K/V of the utterance).
#include "model/search.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <unordered_map>

#include "core/check.h"
#include "kernels/ops.h"
#include "model/feed_forward.h"
#include "model/front_end.h"

namespace moeasr {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Indices of the k largest values of x[0, n), largest first, ties -> lower index.
template <class T>
void top_k_indices(std::vector<int32_t>* out, const T* x, int64_t n, int64_t k) {
  out->resize(static_cast<size_t>(n));
  std::iota(out->begin(), out->end(), 0);
  auto better = [x](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); };
  std::partial_sort(out->begin(), out->begin() + k, out->end(), better);
  out->resize(static_cast<size_t>(k));
}

// ---- CTC prefix search bookkeeping (WeNet's PrefixScore) ------------------------------------------

struct PrefixScore {
  double s = kNegInf;    // blank-ending log-probability
  double ns = kNegInf;   // non-blank-ending log-probability
  double v_s = kNegInf;  // Viterbi blank-ending score
  double v_ns = kNegInf;
  double cur_token_prob = kNegInf;
  std::vector<int32_t> times_s, times_ns;
  double score() const { return log_add(s, ns); }
  double viterbi_score() const { return std::max(v_s, v_ns); }
  const std::vector<int32_t>& times() const { return v_s > v_ns ? times_s : times_ns; }
};

struct PrefixHash {
  size_t operator()(const std::vector<int32_t>& v) const {
    uint64_t h = 1469598103934665603ull;
    for (int32_t x : v) {
      h ^= static_cast<uint64_t>(static_cast<uint32_t>(x));
      h *= 1099511628211ull;
    }
    return static_cast<size_t>(h ^ (h >> 29));
  }
};

// Python's defaultdict(PrefixScore) with insertion order (sorted() later is stable).
class PrefixTable {
 public:
  size_t index(const std::vector<int32_t>& prefix) {
    auto it = index_.find(prefix);
    if (it != index_.end()) return it->second;
    const size_t i = entries_.size();
    entries_.emplace_back(prefix, PrefixScore());
    index_.emplace(prefix, i);
    return i;
  }
  PrefixScore& at(size_t i) { return entries_[i].second; }
  std::vector<std::pair<std::vector<int32_t>, PrefixScore>>& entries() { return entries_; }

 private:
  std::vector<std::pair<std::vector<int32_t>, PrefixScore>> entries_;
  std::unordered_map<std::vector<int32_t>, size_t, PrefixHash> index_;
};

// ---- Lean decoder -----------------------------------------------------------------------------------

template <class T>
void layer_norm_rows(T* out, const T* x, const LayerNormRef<T>& ln, int64_t n, const RunContext& ctx) {
  T* mean = activation_alloc<T>(ctx, n);
  T* rstd = activation_alloc<T>(ctx, n);
  op::layer_norm_forward(out, mean, rstd, x, ln.weight.value, ln.bias.value, static_cast<T>(ln.eps), n,
                         ln.channels, ctx);
}

// Self-attention K/V of positions [0, length) for N sequences and the utterance's cross-attention
// K/V, per layer.
// All buffers come from ctx.activations (device memory on the GPU); k/v are double-buffered so that a
// beam reorder copies into the spare set and swaps, without allocating per step.
template <class T>
struct DecoderCache {
  int64_t n = 0, capacity = 0, length = 0, frames = 0;
  std::vector<T*> k, v;              // per layer [N, capacity, d]
  std::vector<T*> k_spare, v_spare;  // per layer [N, capacity, d]
  std::vector<T*> mem_k, mem_v;      // per layer [L, d]
};

template <class T>
void decoder_cache_init(DecoderCache<T>* c, const DecoderParams<T>& p, const T* memory, int64_t n,
                        int64_t capacity, int64_t frames, const RunContext& ctx) {
  const int64_t d = p.d_model, layers = static_cast<int64_t>(p.layers.size());
  c->n = n;
  c->capacity = capacity;
  c->length = 0;
  c->frames = frames;
  for (std::vector<T*>* set : {&c->k, &c->v, &c->k_spare, &c->v_spare, &c->mem_k, &c->mem_v}) {
    set->assign(static_cast<size_t>(layers), nullptr);
  }
  for (int64_t l = 0; l < layers; ++l) {
    for (std::vector<T*>* set : {&c->k, &c->v, &c->k_spare, &c->v_spare}) {
      (*set)[l] = activation_alloc<T>(ctx, n * capacity * d);
    }
    c->mem_k[l] = activation_alloc<T>(ctx, frames * d);
    c->mem_v[l] = activation_alloc<T>(ctx, frames * d);
    const MultiHeadAttentionParams<T>& a = p.layers[static_cast<size_t>(l)].src_attn;
    op::linear_forward(c->mem_k[l], memory, a.linear_k.weight.value, a.linear_k.bias.value, frames, d, d,
                       ctx);
    op::linear_forward(c->mem_v[l], memory, a.linear_v.weight.value, a.linear_v.bias.value, frames, d, d,
                       ctx);
  }
}

// Sequence i takes the cached positions of sequence parent[i].
template <class T>
void decoder_cache_reorder(DecoderCache<T>* c, const std::vector<int64_t>& parent, int64_t d,
                           const RunContext& ctx) {
  const int64_t row = c->capacity * d, used = c->length * d;
  for (size_t l = 0; l < c->k.size(); ++l) {
    for (int64_t i = 0; i < c->n; ++i) {
      const int64_t from = parent[static_cast<size_t>(i)] * row;
      op::copy_elements(c->k_spare[l] + i * row, static_cast<const T*>(c->k[l] + from), used, ctx);
      op::copy_elements(c->v_spare[l] + i * row, static_cast<const T*>(c->v[l] + from), used, ctx);
    }
    std::swap(c->k[l], c->k_spare[l]);
    std::swap(c->v[l], c->v_spare[l]);
  }
}

// Positions [length, length + S) of the N sequences: tokens [N, S] (host) -> log_probs [N, S, V]
// (ctx.device memory).
template <class T>
void decoder_advance(T* log_probs, DecoderCache<T>* c, const int32_t* host_tokens, const DecoderParams<T>& p,
                     ExpertDispatcher<T>* dispatcher, int64_t steps, const RunContext& ctx) {
  const int64_t n = c->n, pos0 = c->length, rows = n * steps, tk = pos0 + steps, frames = c->frames;
  const int64_t d = p.d_model, heads = p.config.attention_heads, dk = d / heads, vocab = p.vocab;
  CHECK_LE(tk, c->capacity) << "decoder cache capacity";
  CHECK_GT(frames, 0) << "the decoder needs at least one encoder frame";
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(dk)));
  const StepRng rng;  // eval: no dropout

  T* x = activation_alloc<T>(ctx, rows * d);
  op::embedding_forward(x, device_mirror(ctx, host_tokens, rows), p.embed.value, rows, vocab, d, ctx);
  positional_encoding_forward(x, x, p.pos_enc, pos0, n, steps, p.layer_id_base - 1, rng, ctx);
  // Causal mask of the new positions over all keys: key j visible to position pos0 + s iff j <= pos0 + s.
  uint8_t* host_mask = host_alloc<uint8_t>(ctx, steps * tk);
  for (int64_t s = 0; s < steps; ++s) {
    for (int64_t j = 0; j < tk; ++j) host_mask[s * tk + j] = j <= pos0 + s ? 1 : 0;
  }
  const uint8_t* mask = device_mirror(ctx, static_cast<const uint8_t*>(host_mask), steps * tk);
  T* a = activation_alloc<T>(ctx, rows * d);
  T* q = activation_alloc<T>(ctx, rows * d);
  T* kn = activation_alloc<T>(ctx, rows * d);
  T* vn = activation_alloc<T>(ctx, rows * d);
  T* context = activation_alloc<T>(ctx, rows * d);
  T* branch = activation_alloc<T>(ctx, rows * d);
  T* y = activation_alloc<T>(ctx, rows * d);
  T* scores = activation_alloc<T>(ctx, std::max(steps * tk, rows * frames));
  T* probs = activation_alloc<T>(ctx, std::max(steps * tk, rows * frames));
  for (size_t l = 0; l < p.layers.size(); ++l) {
    const DecoderLayerParams<T>& lp = p.layers[l];
    // x = x + SelfAttn(norm1(x)) with the cache.
    layer_norm_rows(a, x, lp.norm1, rows, ctx);
    const MultiHeadAttentionParams<T>& sa = lp.self_attn;
    op::linear_forward(q, a, sa.linear_q.weight.value, sa.linear_q.bias.value, rows, d, d, ctx);
    op::linear_forward(kn, a, sa.linear_k.weight.value, sa.linear_k.bias.value, rows, d, d, ctx);
    op::linear_forward(vn, a, sa.linear_v.weight.value, sa.linear_v.bias.value, rows, d, d, ctx);
    T* kc = c->k[l];
    T* vc = c->v[l];
    for (int64_t i = 0; i < n; ++i) {
      op::copy_elements(kc + (i * c->capacity + pos0) * d, static_cast<const T*>(kn + i * steps * d),
                        steps * d, ctx);
      op::copy_elements(vc + (i * c->capacity + pos0) * d, static_cast<const T*>(vn + i * steps * d),
                        steps * d, ctx);
    }
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t h = 0; h < heads; ++h) {
        const T* qh = q + i * steps * d + h * dk;
        const T* kh = kc + i * c->capacity * d + h * dk;
        const T* vh = vc + i * c->capacity * d + h * dk;
        op::gemm_strided_batched(scores, qh, kh, Transpose::kNo, Transpose::kYes, steps, tk, dk, scale, T(0),
                                 d, d, tk, 0, 0, 0, 1, ctx);
        op::softmax_forward(probs, scores, mask, steps, tk, ctx);
        op::gemm_strided_batched(context + i * steps * d + h * dk, probs, vh, Transpose::kNo, Transpose::kNo,
                                 steps, dk, tk, T(1), T(0), tk, d, d, 0, 0, 0, 1, ctx);
      }
    }
    op::linear_forward(branch, context, sa.linear_out.weight.value, sa.linear_out.bias.value, rows, d, d,
                       ctx);
    op::residual_add_forward(y, x, branch, T(1), rows * d, ctx);
    std::swap(x, y);
    // x = x + CrossAttn(norm2(x), memory): all frames valid.
    layer_norm_rows(a, x, lp.norm2, rows, ctx);
    const MultiHeadAttentionParams<T>& ca = lp.src_attn;
    op::linear_forward(q, a, ca.linear_q.weight.value, ca.linear_q.bias.value, rows, d, d, ctx);
    for (int64_t h = 0; h < heads; ++h) {
      op::gemm_strided_batched(scores, q + h * dk, static_cast<const T*>(c->mem_k[l] + h * dk),
                               Transpose::kNo, Transpose::kYes, rows, frames, dk, scale, T(0), d, d, frames,
                               0, 0, 0, 1, ctx);
      op::softmax_forward(probs, scores, static_cast<const uint8_t*>(nullptr), rows, frames, ctx);
      op::gemm_strided_batched(context + h * dk, probs, static_cast<const T*>(c->mem_v[l] + h * dk),
                               Transpose::kNo, Transpose::kNo, rows, dk, frames, T(1), T(0), frames, d, d, 0,
                               0, 0, 1, ctx);
    }
    op::linear_forward(branch, context, ca.linear_out.weight.value, ca.linear_out.bias.value, rows, d, d,
                       ctx);
    op::residual_add_forward(y, x, branch, T(1), rows * d, ctx);
    std::swap(x, y);
    // x = x + FFN(norm3(x)).
    layer_norm_rows(a, x, lp.norm3, rows, ctx);
    FeedForwardSaved<T> ff_saved;
    feed_forward_forward(&ff_saved, branch, a, static_cast<const uint8_t*>(nullptr), lp.feed_forward,
                         dispatcher, rows, p.layer_id_base + l, 3, rng, ctx);
    op::residual_add_forward(y, x, branch, T(1), rows * d, ctx);
    std::swap(x, y);
  }
  layer_norm_rows(a, x, p.after_norm, rows, ctx);
  T* logits = activation_alloc<T>(ctx, rows * vocab);
  op::linear_forward(logits, a, p.output_layer.weight.value, p.output_layer.bias.value, rows, d, vocab, ctx);
  op::log_softmax_forward(log_probs, logits, static_cast<const uint8_t*>(nullptr), rows, vocab, ctx);
  c->length = tk;
}

}  // namespace

double log_add(double a, double b) {
  if (a == kNegInf && b == kNegInf) return kNegInf;
  const double m = std::max(a, b);
  return m + std::log(std::exp(a - m) + std::exp(b - m));
}

// ---- CTC searches ----------------------------------------------------------------------------------

template <class T>
DecodeResult ctc_greedy_search(const T* log_probs, int64_t frames, int64_t vocab, int32_t blank_id) {
  CHECK(frames >= 0 && vocab > 0) << "ctc_greedy_search L=" << frames << " V=" << vocab;
  CHECK(blank_id >= 0 && blank_id < vocab) << "blank id " << blank_id;
  DecodeResult r;
  int32_t prev = -1;
  for (int64_t t = 0; t < frames; ++t) {
    const T* row = log_probs + t * vocab;
    int32_t best = 0;
    for (int32_t v = 1; v < vocab; ++v) {
      if (row[v] > row[best]) best = v;
    }
    r.score += static_cast<double>(row[best]);
    if (best != prev && best != blank_id) {
      r.tokens.push_back(best);
      r.times.push_back(static_cast<int32_t>(t));
    }
    prev = best;
  }
  return r;
}

template <class T>
std::vector<DecodeResult> ctc_prefix_beam_search(const T* log_probs, int64_t frames, int64_t vocab,
                                                 int64_t beam_size, int32_t blank_id) {
  CHECK(frames >= 0 && vocab > 0) << "ctc_prefix_beam_search L=" << frames << " V=" << vocab;
  CHECK_GE(beam_size, 1) << "beam size";
  CHECK(blank_id >= 0 && blank_id < vocab) << "blank id " << blank_id;
  std::vector<std::pair<std::vector<int32_t>, PrefixScore>> cur(1);
  cur[0].second.s = 0.0;
  cur[0].second.v_s = 0.0;
  cur[0].second.v_ns = 0.0;
  std::vector<int32_t> top;
  const int64_t first_beam = std::min(beam_size, vocab);
  for (int64_t t = 0; t < frames; ++t) {
    const T* logp = log_probs + t * vocab;
    top_k_indices(&top, logp, vocab, first_beam);
    PrefixTable next;
    const int32_t tt = static_cast<int32_t>(t);
    for (int32_t u : top) {
      const double prob = static_cast<double>(logp[u]);
      for (const auto& [prefix, ps] : cur) {
        if (u == blank_id) {
          PrefixScore& n = next.at(next.index(prefix));
          n.s = log_add(n.s, ps.score() + prob);
          n.v_s = ps.viterbi_score() + prob;
          n.times_s = ps.times();
        } else if (!prefix.empty() && u == prefix.back()) {
          {  // *uu -> *u
            PrefixScore& n1 = next.at(next.index(prefix));
            n1.ns = log_add(n1.ns, ps.ns + prob);
            if (n1.v_ns < ps.v_ns + prob) {
              n1.v_ns = ps.v_ns + prob;
              if (n1.cur_token_prob < prob) {
                n1.cur_token_prob = prob;
                n1.times_ns = ps.times_ns;
                if (n1.times_ns.empty()) {
                  n1.times_ns.push_back(tt);
                } else {
                  n1.times_ns.back() = tt;
                }
              }
            }
          }
          {  // *u-u -> *uu (- is blank)
            std::vector<int32_t> extended = prefix;
            extended.push_back(u);
            PrefixScore& n2 = next.at(next.index(extended));
            n2.ns = log_add(n2.ns, ps.s + prob);
            if (n2.v_ns < ps.v_s + prob) {
              n2.v_ns = ps.v_s + prob;
              n2.cur_token_prob = prob;
              n2.times_ns = ps.times_s;
              n2.times_ns.push_back(tt);
            }
          }
        } else {
          std::vector<int32_t> extended = prefix;
          extended.push_back(u);
          PrefixScore& n = next.at(next.index(extended));
          n.ns = log_add(n.ns, ps.score() + prob);
          if (n.v_ns < ps.viterbi_score() + prob) {
            n.v_ns = ps.viterbi_score() + prob;
            n.cur_token_prob = prob;
            n.times_ns = ps.times();
            n.times_ns.push_back(tt);
          }
        }
      }
    }
    std::vector<std::pair<std::vector<int32_t>, PrefixScore>>& all = next.entries();
    std::stable_sort(all.begin(), all.end(),
                     [](const auto& a, const auto& b) { return a.second.score() > b.second.score(); });
    if (static_cast<int64_t>(all.size()) > beam_size) all.resize(static_cast<size_t>(beam_size));
    cur = std::move(all);
  }
  std::vector<DecodeResult> nbest;
  nbest.reserve(cur.size());
  for (const auto& [prefix, ps] : cur) {
    DecodeResult r;
    r.tokens = prefix;
    r.score = ps.score();
    r.times = ps.times();
    nbest.push_back(std::move(r));
  }
  return nbest;
}

// ---- Model heads -----------------------------------------------------------------------------------

template <class T>
SearchModel<T>::SearchModel(const ModelConfig& config, ParameterStore<T>* store,
                            ExpertDispatcher<T>* dispatcher, const ExpertLayout& layout)
    : config_(config), dispatcher_(dispatcher) {
  Status valid = validate_model_config(config);
  CHECK(valid.ok()) << valid.to_string();
  CHECK(dispatcher != nullptr);
  const int64_t d = config.encoder.output_size;
  pe_table_.resize(static_cast<size_t>(kPositionalEncodingMaxLen * d));
  sinusoid_position_table(pe_table_.data(), kPositionalEncodingMaxLen, d);
  table_ = pe_table_.data();
  left_ = bind_decoder(store, "decoder.left_decoder", config.decoder.num_blocks, config, layout,
                       pe_table_.data(), kLeftDecoderLayerIdBase);
  if (config.decoder.r_num_blocks > 0) {
    right_ = bind_decoder(store, "decoder.right_decoder", config.decoder.r_num_blocks, config, layout,
                          pe_table_.data(), kRightDecoderLayerIdBase);
  }
  ctc_lo_ = bind_linear(store, "ctc.ctc_lo");
}

template <class T>
const T* SearchModel<T>::place_tables(Arena* arena, const RunContext& ctx) {
  CHECK(arena != nullptr && arena->device() == ctx.device)
      << "SearchModel::place_tables needs an arena in " << device_name(ctx.device) << " memory";
  if (ctx.device == Device::cpu) return table_;
  const int64_t n = static_cast<int64_t>(pe_table_.size());
  T* table = arena->allocate_array<T>(n);
  op::copy_host_to_device(table, pe_table_.data(), n * static_cast<int64_t>(sizeof(T)), ctx);
  table_ = table;
  left_.pos_enc.table = table;
  right_.pos_enc.table = table;
  return table_;
}

template <class T>
void SearchModel<T>::ctc_log_probs(T* log_probs, const T* encoder_out, int64_t frames, const RunContext& ctx,
                                   double blank_penalty, int32_t blank_id) const {
  const int64_t d = config_.encoder.output_size, v = config_.vocab_size;
  CHECK(blank_id >= 0 && blank_id < v) << "blank id " << blank_id << " outside the vocabulary of " << v;
  T* logits = activation_alloc<T>(ctx, frames * v);
  op::linear_forward(logits, encoder_out, ctc_lo_.weight.value, ctc_lo_.bias.value, frames, d, v, ctx);
  if (blank_penalty != 0.0) {
    // logits[t, :] += row, row = -blank_penalty at the blank and 0 elsewhere (x + 0 is x exactly).
    T* row = host_alloc<T>(ctx, v);
    std::fill(row, row + v, T(0));
    row[blank_id] = static_cast<T>(-blank_penalty);
    op::scale_add_table_forward(logits, static_cast<const T*>(logits),
                                device_mirror(ctx, static_cast<const T*>(row), v), T(1), frames, 1, v, ctx);
  }
  op::log_softmax_forward(log_probs, logits, static_cast<const uint8_t*>(nullptr), frames, v, ctx);
}

template <class T>
void decoder_log_probs(T* log_probs, const int32_t* tokens, const T* encoder_out,
                       const DecoderParams<T>& decoder, ExpertDispatcher<T>* dispatcher, int64_t n,
                       int64_t steps, int64_t frames, const RunContext& ctx) {
  DecoderCache<T> cache;
  decoder_cache_init(&cache, decoder, encoder_out, n, steps, frames, ctx);
  decoder_advance(log_probs, &cache, tokens, decoder, dispatcher, steps, ctx);
}

// ---- Attention searches ------------------------------------------------------------------------------

template <class T>
DecodeResult attention_beam_search(const SearchModel<T>& model, const T* encoder_out, int64_t frames,
                                   int64_t beam_size, double length_penalty, const RunContext& ctx) {
  const int64_t vocab = model.config().vocab_size, d = model.config().encoder.output_size;
  CHECK(beam_size >= 1 && beam_size <= vocab)
      << "attention beam size " << beam_size << " with vocabulary " << vocab;
  const int32_t sos = model.sos(), eos = model.eos();
  const int64_t beam = beam_size;
  std::vector<std::vector<int32_t>> hyps(static_cast<size_t>(beam), std::vector<int32_t>{sos});
  std::vector<double> scores(static_cast<size_t>(beam), kNegInf);
  scores[0] = 0.0;
  std::vector<uint8_t> ended(static_cast<size_t>(beam), 0);
  DecoderCache<T> cache;
  if (frames > 0) decoder_cache_init(&cache, model.left(), encoder_out, beam, frames + 1, frames, ctx);
  std::vector<int32_t> tokens(static_cast<size_t>(beam));
  std::vector<int32_t> top;
  std::vector<double> cand_score(static_cast<size_t>(beam * beam));
  std::vector<int32_t> cand_token(static_cast<size_t>(beam * beam));
  std::vector<int64_t> parent(static_cast<size_t>(beam));
  T* logp = frames > 0 ? activation_alloc<T>(ctx, beam * vocab) : nullptr;
  for (int64_t i = 1; i <= frames; ++i) {
    if (std::all_of(ended.begin(), ended.end(), [](uint8_t e) { return e != 0; })) break;
    for (int64_t b = 0; b < beam; ++b) tokens[b] = hyps[b].back();
    decoder_advance(logp, &cache, tokens.data(), model.left(), model.dispatcher(), 1, ctx);
    const T* host_logp = host_mirror(ctx, static_cast<const T*>(logp), beam * vocab);
    // First prune: top-beam tokens per beam; finished beams offer only eos at log-prob 0.
    for (int64_t b = 0; b < beam; ++b) {
      top_k_indices(&top, host_logp + b * vocab, vocab, beam);
      for (int64_t j = 0; j < beam; ++j) {
        double lp = static_cast<double>(host_logp[b * vocab + top[j]]);
        int32_t tok = top[j];
        if (ended[b]) {
          lp = j == 0 ? 0.0 : kNegInf;
          tok = eos;
        }
        cand_score[b * beam + j] = scores[b] + lp;
        cand_token[b * beam + j] = tok;
      }
    }
    // Second prune over the beam * beam candidates.
    top_k_indices(&top, cand_score.data(), beam * beam, beam);
    std::vector<std::vector<int32_t>> next_hyps(static_cast<size_t>(beam));
    for (int64_t b = 0; b < beam; ++b) {
      const int64_t off = top[b];
      parent[b] = off / beam;
      next_hyps[b] = hyps[parent[b]];
      next_hyps[b].push_back(cand_token[off]);
      scores[b] = cand_score[off];
      ended[b] = cand_token[off] == eos ? 1 : 0;
    }
    hyps.swap(next_hyps);
    decoder_cache_reorder(&cache, parent, d, ctx);
  }
  int64_t best = 0;
  double best_score = kNegInf;
  for (int64_t b = 0; b < beam; ++b) {
    const int64_t length =
        std::count_if(hyps[b].begin(), hyps[b].end(), [eos](int32_t t) { return t != eos; });
    const double s = scores[b] / std::pow(static_cast<double>(length), length_penalty);
    if (b == 0 || s > best_score) {
      best = b;
      best_score = s;
    }
  }
  DecodeResult r;
  for (size_t j = 1; j < hyps[best].size(); ++j) {
    if (hyps[best][j] != eos) r.tokens.push_back(hyps[best][j]);
  }
  r.score = best_score;
  return r;
}

template <class T>
DecodeResult attention_rescoring(const SearchModel<T>& model, const std::vector<DecodeResult>& ctc_nbest,
                                 const T* encoder_out, int64_t frames, double ctc_weight,
                                 double reverse_weight, const RunContext& ctx) {
  DecodeResult best;
  best.score = kNegInf;
  if (ctc_nbest.empty()) return best;
  if (frames <= 0) {
    best = ctc_nbest[0];
    best.score = ctc_weight * ctc_nbest[0].score;
    return best;
  }
  const int32_t sos = model.sos(), eos = model.eos();
  const int64_t n = static_cast<int64_t>(ctc_nbest.size()), vocab = model.config().vocab_size;
  size_t max_len = 0;
  for (const DecodeResult& h : ctc_nbest) max_len = std::max(max_len, h.tokens.size());
  const int64_t steps = static_cast<int64_t>(max_len) + 1;
  // L2R [sos, y, eos...] and R2L [sos, reversed y, eos...].
  std::vector<int32_t> l2r(static_cast<size_t>(n * steps), eos), r2l(static_cast<size_t>(n * steps), eos);
  for (int64_t i = 0; i < n; ++i) {
    const std::vector<int32_t>& y = ctc_nbest[static_cast<size_t>(i)].tokens;
    l2r[i * steps] = sos;
    r2l[i * steps] = sos;
    for (size_t j = 0; j < y.size(); ++j) {
      CHECK(y[j] >= 0 && y[j] < vocab) << "hypothesis token " << y[j] << " outside the vocabulary";
      l2r[i * steps + 1 + static_cast<int64_t>(j)] = y[j];
      r2l[i * steps + 1 + static_cast<int64_t>(j)] = y[y.size() - 1 - j];
    }
  }
  T* lp = activation_alloc<T>(ctx, n * steps * vocab);
  decoder_log_probs(lp, l2r.data(), encoder_out, model.left(), model.dispatcher(), n, steps, frames, ctx);
  const bool use_r2l = reverse_weight > 0.0 && model.has_right_decoder();
  T* rlp = nullptr;
  if (use_r2l) {
    rlp = activation_alloc<T>(ctx, n * steps * vocab);
    decoder_log_probs(rlp, r2l.data(), encoder_out, model.right(), model.dispatcher(), n, steps, frames, ctx);
  }
  const T* host_lp = host_mirror(ctx, static_cast<const T*>(lp), n * steps * vocab);
  const T* host_rlp = use_r2l ? host_mirror(ctx, static_cast<const T*>(rlp), n * steps * vocab) : nullptr;
  int64_t best_index = 0;
  double best_score = kNegInf;
  for (int64_t i = 0; i < n; ++i) {
    const std::vector<int32_t>& y = ctc_nbest[static_cast<size_t>(i)].tokens;
    const int64_t len = static_cast<int64_t>(y.size());
    const T* row = host_lp + i * steps * vocab;
    double score = 0.0;
    for (int64_t j = 0; j < len; ++j) score += static_cast<double>(row[j * vocab + y[j]]);
    score += static_cast<double>(row[len * vocab + eos]);
    if (use_r2l) {
      const T* rrow = host_rlp + i * steps * vocab;
      double r_score = 0.0;
      for (int64_t j = 0; j < len; ++j) r_score += static_cast<double>(rrow[(len - j - 1) * vocab + y[j]]);
      r_score += static_cast<double>(rrow[len * vocab + eos]);
      score = score * (1.0 - reverse_weight) + r_score * reverse_weight;
    }
    score += ctc_nbest[static_cast<size_t>(i)].score * ctc_weight;
    if (score > best_score) {
      best_score = score;
      best_index = i;
    }
  }
  best = ctc_nbest[static_cast<size_t>(best_index)];
  best.score = best_score;
  return best;
}

// ---- Modes -------------------------------------------------------------------------------------------

Status parse_decode_mode(const std::string& name, DecodeMode* mode) {
  if (name == "ctc_greedy_search") {
    *mode = DecodeMode::kCtcGreedySearch;
  } else if (name == "ctc_prefix_beam_search") {
    *mode = DecodeMode::kCtcPrefixBeamSearch;
  } else if (name == "attention") {
    *mode = DecodeMode::kAttention;
  } else if (name == "attention_rescoring") {
    *mode = DecodeMode::kAttentionRescoring;
  } else {
    return invalid_argument_error("--modes: unknown decoding mode '" + name +
                                  "'; use ctc_greedy_search, ctc_prefix_beam_search, attention or "
                                  "attention_rescoring");
  }
  return Status();
}

const char* decode_mode_name(DecodeMode mode) {
  switch (mode) {
    case DecodeMode::kCtcGreedySearch: return "ctc_greedy_search";
    case DecodeMode::kCtcPrefixBeamSearch: return "ctc_prefix_beam_search";
    case DecodeMode::kAttention: return "attention";
    case DecodeMode::kAttentionRescoring: return "attention_rescoring";
  }
  return "unknown";
}

Status validate_search_options(const SearchOptions& options) {
  if (options.beam_size < 1) {
    return invalid_argument_error("--beam_size must be at least 1, got " + std::to_string(options.beam_size));
  }
  if (options.reverse_weight < 0.0 || options.reverse_weight > 1.0) {
    return invalid_argument_error("--reverse_weight must lie in [0, 1], got " +
                                  std::to_string(options.reverse_weight));
  }
  if (options.ctc_weight < 0.0) {
    return invalid_argument_error("--ctc_weight must be >= 0, got " + std::to_string(options.ctc_weight));
  }
  if (!(options.blank_penalty >= 0.0)) {
    return invalid_argument_error("--blank_penalty must be >= 0, got " +
                                  std::to_string(options.blank_penalty));
  }
  if (options.length_penalty < 0.0) {
    return invalid_argument_error("--length_penalty must be >= 0, got " +
                                  std::to_string(options.length_penalty));
  }
  return Status();
}

template <class T>
std::vector<DecodeResult> decode_utterance(const SearchModel<T>& model, const std::vector<DecodeMode>& modes,
                                           const T* encoder_out, int64_t frames, const SearchOptions& options,
                                           const RunContext& ctx) {
  const int64_t vocab = model.config().vocab_size;
  T* device_lp = activation_alloc<T>(ctx, std::max<int64_t>(frames, 1) * vocab);
  if (frames > 0) {
    model.ctc_log_probs(device_lp, encoder_out, frames, ctx, options.blank_penalty, options.blank_id);
  }
  // The CTC searches run on the host.
  const T* lp = frames > 0 ? host_mirror(ctx, static_cast<const T*>(device_lp), frames * vocab) : device_lp;
  std::vector<DecodeResult> nbest;
  bool have_nbest = false;
  std::vector<DecodeResult> results;
  for (DecodeMode mode : modes) {
    if ((mode == DecodeMode::kCtcPrefixBeamSearch || mode == DecodeMode::kAttentionRescoring) &&
        !have_nbest) {
      nbest = ctc_prefix_beam_search(lp, frames, vocab, options.beam_size, options.blank_id);
      have_nbest = true;
    }
    switch (mode) {
      case DecodeMode::kCtcGreedySearch:
        results.push_back(ctc_greedy_search(lp, frames, vocab, options.blank_id));
        break;
      case DecodeMode::kCtcPrefixBeamSearch: results.push_back(nbest[0]); break;
      case DecodeMode::kAttention:
        results.push_back(attention_beam_search(model, encoder_out, frames, options.beam_size,
                                                options.length_penalty, ctx));
        break;
      case DecodeMode::kAttentionRescoring:
        results.push_back(attention_rescoring(model, nbest, encoder_out, frames, options.ctc_weight,
                                              options.reverse_weight, ctx));
        break;
    }
  }
  return results;
}

#define MOEASR_INSTANTIATE_SEARCH(T)                                                                        \
  template DecodeResult ctc_greedy_search<T>(const T*, int64_t, int64_t, int32_t);                          \
  template std::vector<DecodeResult> ctc_prefix_beam_search<T>(const T*, int64_t, int64_t, int64_t,         \
                                                               int32_t);                                    \
  template class SearchModel<T>;                                                                            \
  template void decoder_log_probs<T>(T*, const int32_t*, const T*, const DecoderParams<T>&,                 \
                                     ExpertDispatcher<T>*, int64_t, int64_t, int64_t, const RunContext&);   \
  template DecodeResult attention_beam_search<T>(const SearchModel<T>&, const T*, int64_t, int64_t, double, \
                                                 const RunContext&);                                        \
  template DecodeResult attention_rescoring<T>(const SearchModel<T>&, const std::vector<DecodeResult>&,     \
                                               const T*, int64_t, double, double, const RunContext&);       \
  template std::vector<DecodeResult> decode_utterance<T>(const SearchModel<T>&,                             \
                                                         const std::vector<DecodeMode>&, const T*, int64_t, \
                                                         const SearchOptions&, const RunContext&);
MOEASR_INSTANTIATE_SEARCH(float)
MOEASR_INSTANTIATE_SEARCH(double)
#undef MOEASR_INSTANTIATE_SEARCH

}  // namespace moeasr
