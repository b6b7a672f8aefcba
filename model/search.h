// model/search.h — the four decoding modes of WeNet's U2++ (wenet/models/transformer/search.py,
// ASRModel.decode; u2pp_moe_wenet.md §6), for one utterance at a time:
//
//  * ctc_greedy_search: per-frame argmax (ties -> lower id), collapse repeats, drop blanks.
//  * ctc_prefix_beam_search: the standard CTC prefix search with blank-ending (s) and
//    non-blank-ending (ns) log-probabilities combined by WeNet's log_add, per frame:
//      first prune  — only the top-`beam` tokens of the frame are expanded (min(beam, V); WeNet's
//                     torch.topk would raise for beam > V);
//      expansions   — blank: prefix.s  = log_add(prefix.s, score(prefix) + p);
//                     u == last token: prefix.ns = log_add(prefix.ns, prefix_old.ns + p) and
//                                      prefix+u.ns = log_add(., prefix_old.s + p);
//                     other u: prefix+u.ns = log_add(., score(prefix) + p);
//      second prune — keep the top-`beam` prefixes by log_add(s, ns) (a stable sort: ties keep
//                     WeNet's insertion order, tokens visited in descending probability).
//    n-best scores are log(p_b + p_nb). Token times follow WeNet's PrefixScore Viterbi bookkeeping
//    (v_s, v_ns, cur_token_prob, times_s, times_ns), including its quirks. No context graph.
//  * attention_beam_search: autoregressive beam search over the L2R decoder with a self-attention
//    key/value cache (and the encoder output's cross-attention K/V computed once per layer), WeNet's
//    loop for batch 1: beams start as [sos] with scores [0, -inf, ...]; each step takes the top-beam
//    tokens of every beam (finished beams contribute only eos with log-prob 0), then the top-beam of
//    the beam*beam candidates; stops when every beam ended in eos or after L (encoder frames) steps;
//    best = argmax of score / (non-eos length)^length_penalty (length_penalty 0: the raw score).
//  * attention_rescoring: each CTC n-best hypothesis y (possibly empty) is scored by the decoders
//    against the WHOLE utterance's encoder output (also when it was encoded chunk by chunk, issue
//    #2553): L2R input [sos, y] and R2L input [sos, reversed y] (WeNet's forward_attention_decoder,
//    eos-padded), and
//      score = (1 - rw) * (sum_j log P_l2r(y_j) + log P_l2r(eos))
//              + rw * (sum_j log P_r2l(y_(n+1-j)) + log P_r2l(eos)) + ctc_weight * ctc_score.
//    The R2L decoder runs only when reverse_weight > 0 and the model has one (WeNet: without a
//    BiTransformerDecoder the R2L term and the (1 - rw) factor are skipped). The first best wins ties.
//
// The decoders run on lean forward-only code (decoder_forward's math without saved activations:
// embedding * sqrt(d) + PE, pre-LN self-attention with the cache, cross-attention, FFN/MoE,
// after_norm, output_layer, log_softmax); tests/model/search_test.cc checks it against
// decoder_forward. Scratch comes from ctx.activations (CHECK-fails when unset); the caller resets
// that arena between utterances.
//
// Dims: L encoder frames, d model dim, V vocabulary, N hypotheses / beams.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/run_context.h"
#include "core/status.h"
#include "model/decoder.h"
#include "model/expert_dispatch.h"
#include "model/model_config.h"

namespace moeasr {

struct DecodeResult {
  std::vector<int32_t> tokens;  // without sos/eos/blank
  double score = 0.0;           // the mode's score (see each search)
  std::vector<int32_t> times;   // CTC searches: encoder frame of each token; else empty
};

// ---- CTC searches on one utterance's CTC log-probabilities ----------------------------------------

// score = the sum over frames of the best log-prob (the best path's log-probability);
// times = first frame of each emitted token.
template <class T>
DecodeResult ctc_greedy_search(const T* log_probs,  // [L, V]
                               int64_t frames, int64_t vocab, int32_t blank_id = 0);

// The n-best (at most beam_size, best first); for L = 0 one empty hypothesis with score 0.
template <class T>
std::vector<DecodeResult> ctc_prefix_beam_search(const T* log_probs,  // [L, V]
                                                 int64_t frames, int64_t vocab, int64_t beam_size,
                                                 int32_t blank_id = 0);

// WeNet's log_add over two log values (-inf + -inf = -inf), in double.
double log_add(double a, double b);

// ---- The model's decoding heads ------------------------------------------------------------------

// The CTC head and the attention decoders of a U2++ model, bound from the ParameterStore by WeNet
// name (the same table the training model uses).
template <class T>
class SearchModel {
 public:
  SearchModel(const ModelConfig& config, ParameterStore<T>* store, ExpertDispatcher<T>* dispatcher,
              const ExpertLayout& layout = ExpertLayout{});

  const ModelConfig& config() const { return config_; }
  int32_t sos() const { return static_cast<int32_t>(config_.sos()); }
  int32_t eos() const { return static_cast<int32_t>(config_.eos()); }
  bool has_right_decoder() const { return config_.decoder.r_num_blocks > 0; }
  const DecoderParams<T>& left() const { return left_; }
  const DecoderParams<T>& right() const { return right_; }
  ExpertDispatcher<T>* dispatcher() const { return dispatcher_; }
  // The positional table as ctx.device memory (GPU decoding; the model's memory is `arena`, which
  // outlives it). Returns the table, which the encoder may share (bind_encoder's pe_table).
  const T* place_tables(Arena* arena, const RunContext& ctx);
  const T* positional_table() const { return table_; }

  // log_softmax(ctc_lo(encoder_out)), with blank_penalty subtracted from the blank's logit first when
  // it is not 0 (WeNet's ctc_logprobs(encoder_out, blank_penalty, blank_id)).
  void ctc_log_probs(T* log_probs,          // [L, V]
                     const T* encoder_out,  // [L, d]
                     int64_t frames, const RunContext& ctx, double blank_penalty = 0.0,
                     int32_t blank_id = 0) const;

 private:
  ModelConfig config_;
  ExpertDispatcher<T>* dispatcher_;
  std::vector<T> pe_table_;   // [max_len, d] host
  const T* table_ = nullptr;  // the one the layers read: pe_table_, or its device copy
  DecoderParams<T> left_, right_;
  LinearRef<T> ctc_lo_;
};

// Log-probabilities of one decoder over N token sequences (teacher forcing), lean: out[n, u, :] =
// log_softmax of the decoder output at position u for the input tokens[n, 0..u]. Positions at or
// after a sequence's true length may be eos padding (their outputs are not used by the searches).
template <class T>
void decoder_log_probs(T* log_probs,           // [N, U, V] assigned
                       const int32_t* tokens,  // [N, U]
                       const T* encoder_out,   // [L, d] one utterance, shared by the N sequences
                       const DecoderParams<T>& decoder, ExpertDispatcher<T>* dispatcher, int64_t n,
                       int64_t steps, int64_t frames, const RunContext& ctx);

template <class T>
DecodeResult attention_beam_search(const SearchModel<T>& model,
                                   const T* encoder_out,  // [L, d]
                                   int64_t frames, int64_t beam_size, double length_penalty,
                                   const RunContext& ctx);

// The n-best from ctc_prefix_beam_search (its scores are the CTC scores). Returns the chosen
// hypothesis with its combined score; its times are the CTC ones. An empty n-best gives an empty
// result with score -inf; L = 0 (nothing to attend to) returns the CTC best with
// ctc_weight * its CTC score.
template <class T>
DecodeResult attention_rescoring(const SearchModel<T>& model, const std::vector<DecodeResult>& ctc_nbest,
                                 const T* encoder_out,  // [L, d] the whole utterance
                                 int64_t frames, double ctc_weight, double reverse_weight,
                                 const RunContext& ctx);

// ---- WeNet's decoding modes ----------------------------------------------------------------------

enum class DecodeMode { kCtcGreedySearch, kCtcPrefixBeamSearch, kAttention, kAttentionRescoring };

// WeNet's --modes names: ctc_greedy_search, ctc_prefix_beam_search, attention, attention_rescoring.
// An unknown name is an InvalidArgument naming the flag and the four valid names.
Status parse_decode_mode(const std::string& name, DecodeMode* mode);
const char* decode_mode_name(DecodeMode mode);

struct SearchOptions {  // WeNet recognize.py defaults
  int64_t beam_size = 10;
  double ctc_weight = 0.0;
  double reverse_weight = 0.0;
  double length_penalty = 0.0;
  // Subtracted from the blank's CTC logit before the log-softmax (WeNet's --blank_penalty): > 0 makes
  // the CTC searches (and the n-best attention_rescoring rescores) delete fewer labels.
  double blank_penalty = 0.0;
  int32_t blank_id = 0;
};

Status validate_search_options(const SearchOptions& options);

// ASRModel.decode for one utterance: the CTC log-probs once, the prefix beam search once (shared by
// ctc_prefix_beam_search and attention_rescoring), then each mode; results in the order of `modes`.
template <class T>
std::vector<DecodeResult> decode_utterance(const SearchModel<T>& model, const std::vector<DecodeMode>& modes,
                                           const T* encoder_out,  // [L, d]
                                           int64_t frames, const SearchOptions& options,
                                           const RunContext& ctx);

}  // namespace moeasr
