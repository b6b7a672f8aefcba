// model/u2pp_model.h — the U2++ (MoE) model of WeNet's ASRModel with a BiTransformerDecoder
// (u2pp_moe_wenet.md §5): the Conformer encoder, the CTC head (ctc_lo + log_softmax + CTC loss,
// blank 0, sum), the L2R and R2L attention decoders with label-smoothing loss, and the joint loss
//   total = ctc_weight * ctc + (1 - ctc_weight) * ((1 - reverse_weight) * l2r + reverse_weight * r2l),
// each part a sum divided by the batch size (WeNet, length_normalized_loss false) or by the token
// count (true). For data parallelism the caller gives the GLOBAL batch size (or token count) as the
// normaliser, so every rank's gradients add up to those of the whole batch on one process.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model/decoder.h"
#include "model/encoder.h"
#include "model/model_config.h"

namespace moeasr {

// One padded batch: the features in ctx.device memory (the caller uploads them on the GPU), the
// integer metadata on the host (the model mirrors what kernels read onto the device itself).
template <class T>
struct U2ppBatch {
  const T* feats = nullptr;               // [B, T, F] fbank, padded (ctx.device memory)
  const int32_t* feat_lengths = nullptr;  // [B] host
  const int32_t* text = nullptr;          // [B, Lt] host; token ids, padding ignored
  const int32_t* text_lengths = nullptr;  // [B] host
  int64_t batch = 0;                      // B
  int64_t frames = 0;                     // T
  int64_t max_text = 0;                   // Lt
};

struct U2ppForwardOptions {
  bool training = true;          // BatchNorm batch statistics, dropout
  int64_t chunk_size = -1;       // attention chunk in encoder frames; <= 0 or >= L: full context
  int64_t num_left_chunks = -1;  // < 0: all history
  double batch_normalizer = 0;   // > 0: divide sums by this (global batch size); else by B
  double token_normalizer = 0;   // length_normalized_loss: > 0: global token count; else local count
};

struct U2ppLoss {
  double total = 0, ctc = 0, att = 0, att_l2r = 0, att_r2l = 0;
  int64_t num_tokens = 0;   // L2R target tokens incl. eos (WeNet's accuracy denominator)
  int64_t num_correct = 0;  // L2R argmax hits
  double accuracy() const { return num_tokens > 0 ? double(num_correct) / double(num_tokens) : 0.0; }
};

// Called by U2ppModel::backward when the gradients of [begin, end) of a region are final for this
// backward (no later op adds to them), in this order: the decoders, the CTC head and the encoder's
// after_norm (at once, after after_norm's backward); each encoder layer from the last; the front end.
// Every trainable element of the dense and expert regions is in exactly one range. The trainer starts
// the range's all-reduce there, so it overlaps the rest of the backward.
using GradRangeReady = std::function<void(ParamRegion region, int64_t begin, int64_t end)>;

// What the trainer drives, whatever the model's storage type: U2ppModel<T> with Accum<T> = A (a float
// trainer runs U2ppModel<float>, or U2ppModel<bf16> on the GPU with --precision bf16).
template <class A>
class U2ppTrainable {
 public:
  virtual ~U2ppTrainable() = default;
  virtual U2ppLoss forward(const U2ppBatch<A>& batch, const U2ppForwardOptions& options, const StepRng& rng,
                           const RunContext& ctx) = 0;
  virtual void backward(double loss_scale, const StepRng& rng, const RunContext& ctx,
                        const GradRangeReady& on_ready = {}) = 0;
  virtual void place_tables(Arena* arena, const RunContext& ctx) = 0;
  virtual std::vector<std::vector<int64_t>> expert_load(const RunContext& ctx) const = 0;
};

// T is the storage type of the activations: float, double, or bf16 (for the GPU; on the CPU it runs
// through the slow reference path of kernels/ops.h). A bf16 model's parameters come from
// ParameterStore<bf16>: fp32 masters and gradients, bf16 copies for the matrix products. The
// features, the CTC log-probabilities, the losses and the normalisation statistics are Accum<T>.
template <class T>
class U2ppModel final : public U2ppTrainable<Accum<T>> {
 public:
  // `store` holds this rank's parameters (table from build_u2pp_parameter_table with `layout`);
  // `dispatcher` moves MoE rows (LocalExpertDispatcher on one process).
  U2ppModel(const ModelConfig& config, ParameterStore<T>* store, ExpertDispatcher<T>* dispatcher,
            const ExpertLayout& layout);

  // Forward and loss. Activations come from ctx.activations and stay valid until its reset; the
  // next backward() uses them.
  U2ppLoss forward(const U2ppBatch<Accum<T>>& batch, const U2ppForwardOptions& options, const StepRng& rng,
                   const RunContext& ctx) override;
  // Gradients of loss_scale * total (loss_scale = 1 / accum_grad for gradient accumulation),
  // accumulated into the store's grads.
  // on_ready (optional): see GradRangeReady.
  void backward(double loss_scale, const StepRng& rng, const RunContext& ctx,
                const GradRangeReady& on_ready = {}) override;

  // For a run on ctx.device != cpu: copies the model's constant tables (the sinusoid positional
  // encoding) into `arena` (memory of ctx.device that lives as long as the model) and points the
  // layers at the copy. The parameters themselves live wherever the ParameterStore put them.
  void place_tables(Arena* arena, const RunContext& ctx) override;

  const ModelConfig& config() const { return config_; }
  const EncoderSaved<T>& encoder_state() const { return encoder_saved_; }
  const Accum<T>* ctc_log_probs() const { return ctc_log_probs_; }  // [B, L, V] of the last forward
  // Routed rows per global expert of the last forward, one vector per MoE FFN in model order
  // (encoder macaron, encoder ff, ..., left decoder, right decoder).
  // On the GPU with every expert local the counts are read from the device here (ctx's stream).
  std::vector<std::vector<int64_t>> expert_load(const RunContext& ctx) const override;

 private:
  ModelConfig config_;
  ParameterStore<T>* store_;
  ExpertDispatcher<T>* dispatcher_;
  std::vector<Accum<T>> pe_table_;  // [max_len, d]
  EncoderParams<T> encoder_;
  DecoderParams<T> left_;
  DecoderParams<T> right_;
  LinearRef<T> ctc_lo_;

  // State of the last forward (arena pointers).
  U2ppBatch<Accum<T>> batch_;
  U2ppForwardOptions options_;
  EncoderSaved<T> encoder_saved_;
  DecoderSaved<T> left_saved_, right_saved_;
  bool run_ctc_ = false, run_att_ = false, run_r2l_ = false;
  double ctc_normalizer_ = 1, att_normalizer_ = 1;
  Accum<T>* ctc_log_probs_ = nullptr;
  Accum<T>* ctc_log_alpha_ = nullptr;
  // Token arrays in ctx.device memory (host mirrors on the CPU are the arrays themselves).
  const int32_t *text_ = nullptr, *text_lengths_ = nullptr;
  const int32_t *ys_in_ = nullptr, *ys_out_ = nullptr, *ys_in_lengths_ = nullptr;
  const int32_t *r_in_ = nullptr, *r_out_ = nullptr;
  Accum<T>*l2r_lse_ = nullptr, *r2l_lse_ = nullptr;
  bool has_forward_ = false;
  // The gradient ranges of GradRangeReady, per release group g in [-1, N] (index g + 1): the front
  // end, encoder layer g, and (g = N) after_norm, the decoders and the CTC head; [begin, end) in the
  // dense (0) and expert (1) regions, empty where the group has no tensor there.
  struct GradGroupRange {
    int64_t begin[2] = {0, 0};
    int64_t end[2] = {0, 0};
  };
  std::vector<GradGroupRange> grad_groups_;
  static std::vector<GradGroupRange> gradient_release_groups(const ParameterTable& table, int64_t num_layers);
};

}  // namespace moeasr
