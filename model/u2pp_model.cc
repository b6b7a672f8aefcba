// model/u2pp_model.cc — U2++ forward, joint loss and backward (see u2pp_model.h).
#include "model/u2pp_model.h"

#include <algorithm>
#include <string>
#include <type_traits>

#include "kernels/cpu/ctc_loss.h"  // ctc_loss_alpha_size
#include "kernels/ops.h"
#include "model/targets.h"

namespace moeasr {

namespace {

// The release group of a tensor (see GradGroupRange): the encoder layer it belongs to, -1 for the
// rest of the encoder's front (embed), num_layers for after_norm and everything after the encoder.
int64_t release_group(const std::string& name, int64_t num_layers) {
  const std::string layers = "encoder.encoders.";
  if (name.compare(0, layers.size(), layers) == 0) {
    return std::stoll(name.substr(layers.size(), name.find('.', layers.size()) - layers.size()));
  }
  if (name.compare(0, 18, "encoder.after_norm") == 0) return num_layers;
  if (name.compare(0, 8, "encoder.") == 0) return -1;
  return num_layers;
}

}  // namespace

// Per group and region the [begin, end) its tensors span; CHECKs that the groups tile each region in
// order (front end, layer 0, ..., layer N-1, the rest), which build_u2pp_parameter_table's layout gives.
template <class T>
std::vector<typename U2ppModel<T>::GradGroupRange> U2ppModel<T>::gradient_release_groups(
    const ParameterTable& table, int64_t num_layers) {
  std::vector<GradGroupRange> groups(static_cast<size_t>(num_layers + 2));
  std::vector<bool> seen[2] = {std::vector<bool>(groups.size()), std::vector<bool>(groups.size())};
  for (const ParamEntry& e : table.entries()) {
    if (e.region == ParamRegion::kBuffer) continue;
    const int r = e.region == ParamRegion::kDense ? 0 : 1;
    const int64_t g = release_group(e.name, num_layers);
    CHECK(g >= -1 && g <= num_layers) << "'" << e.name << "': no gradient release group";
    GradGroupRange& range = groups[static_cast<size_t>(g + 1)];
    if (!seen[r][static_cast<size_t>(g + 1)]) {
      range.begin[r] = e.offset;
      range.end[r] = e.offset + e.numel;
      seen[r][static_cast<size_t>(g + 1)] = true;
    } else {
      range.begin[r] = std::min(range.begin[r], e.offset);
      range.end[r] = std::max(range.end[r], e.offset + e.numel);
    }
  }
  for (int r = 0; r < 2; ++r) {
    int64_t at = 0;
    for (size_t i = 0; i < groups.size(); ++i) {
      GradGroupRange& range = groups[i];
      if (!seen[r][i]) {
        range.begin[r] = range.end[r] = at;
        continue;
      }
      CHECK_EQ(range.begin[r], at) << "the gradients of release group " << static_cast<int64_t>(i) - 1
                                   << " do not follow the previous group's in the "
                                   << (r == 0 ? "dense" : "expert") << " region";
      at = range.end[r];
    }
    CHECK_EQ(at, table.region_numel(r == 0 ? ParamRegion::kDense : ParamRegion::kExpert))
        << "the release groups do not cover the " << (r == 0 ? "dense" : "expert") << " region";
  }
  return groups;
}

template <class T>
U2ppModel<T>::U2ppModel(const ModelConfig& config, ParameterStore<T>* store, ExpertDispatcher<T>* dispatcher,
                        const ExpertLayout& layout)
    : config_(config), store_(store), dispatcher_(dispatcher) {
  Status valid = validate_model_config(config);
  CHECK(valid.ok()) << valid.to_string();
  const int64_t d = config.encoder.output_size;
  pe_table_.resize(static_cast<size_t>(kPositionalEncodingMaxLen * d));
  sinusoid_position_table(pe_table_.data(), kPositionalEncodingMaxLen, d);
  encoder_ = bind_encoder(store, config, layout, static_cast<const Accum<T>*>(pe_table_.data()));
  left_ = bind_decoder(store, "decoder.left_decoder", config.decoder.num_blocks, config, layout,
                       static_cast<const Accum<T>*>(pe_table_.data()), kLeftDecoderLayerIdBase);
  if (config.decoder.r_num_blocks > 0) {
    right_ = bind_decoder(store, "decoder.right_decoder", config.decoder.r_num_blocks, config, layout,
                          static_cast<const Accum<T>*>(pe_table_.data()), kRightDecoderLayerIdBase);
  }
  ctc_lo_ = bind_linear(store, "ctc.ctc_lo");
  grad_groups_ = gradient_release_groups(*store->table, config.encoder.num_blocks);
}

template <class T>
void U2ppModel<T>::place_tables(Arena* arena, const RunContext& ctx) {
  CHECK(arena != nullptr && arena->device() == ctx.device)
      << "U2ppModel::place_tables needs an arena in " << device_name(ctx.device) << " memory";
  const int64_t n = static_cast<int64_t>(pe_table_.size());
  Accum<T>* table = arena->allocate_array<Accum<T>>(n);
  op::copy_host_to_device(table, pe_table_.data(), n * static_cast<int64_t>(sizeof(Accum<T>)), ctx);
  encoder_.pos_enc.table = table;
  left_.pos_enc.table = table;
  right_.pos_enc.table = table;
}

template <class T>
U2ppLoss U2ppModel<T>::forward(const U2ppBatch<Accum<T>>& batch, const U2ppForwardOptions& options,
                               const StepRng& rng, const RunContext& ctx) {
  // A bf16 model's weights are the bf16 copy of the fp32 masters: re-round it from the masters the
  // optimizer updated (one conversion over the parameters per forward).
  if constexpr (std::is_same_v<T, bf16>) store_->refresh_copy(ctx);
  batch_ = batch;
  options_ = options;
  const int64_t b = batch.batch, v = config_.vocab_size, lt = batch.max_text;
  U2ppLoss loss;

  encoder_forward(&encoder_saved_, batch.feats, batch.feat_lengths, encoder_, dispatcher_, options.chunk_size,
                  options.num_left_chunks, options.training, b, batch.frames, rng, ctx);
  const int64_t l = encoder_saved_.length;
  const int64_t d = config_.encoder.output_size;
  ctc_normalizer_ = options.batch_normalizer > 0 ? options.batch_normalizer : static_cast<double>(b);

  run_ctc_ = config_.ctc_weight != 0.0;
  run_att_ = config_.ctc_weight != 1.0;
  run_r2l_ = run_att_ && config_.reverse_weight > 0.0;

  if (run_ctc_) {
    T* logits = activation_alloc<T>(ctx, b * l * v);
    op::linear_forward(logits, encoder_saved_.out, ctc_lo_.weight.value, ctc_lo_.bias.value, b * l, d, v,
                       ctx);
    // log_softmax and the CTC loss in Accum<T> (fp32 for a bf16 model).
    ctc_log_probs_ = activation_alloc<Accum<T>>(ctx, b * l * v);
    op::log_softmax_forward(ctc_log_probs_, as_accum(static_cast<const T*>(logits), b * l * v, ctx),
                            static_cast<const uint8_t*>(nullptr), b * l, v, ctx);
    ctc_log_alpha_ = activation_alloc<Accum<T>>(ctx, b * ctc_loss_alpha_size(l, lt));
    Accum<T>* per_utt = activation_alloc<Accum<T>>(ctx, b);
    Accum<T>* total = activation_alloc<Accum<T>>(ctx, 1);
    text_ = device_mirror(ctx, batch.text, b * lt);
    text_lengths_ = device_mirror(ctx, batch.text_lengths, b);
    op::ctc_loss_forward(per_utt, total, ctc_log_alpha_, ctc_log_probs_, encoder_saved_.lengths, text_,
                         text_lengths_, b, l, v, lt, ctx);
    loss.ctc =
        static_cast<double>(*host_mirror(ctx, static_cast<const Accum<T>*>(total), 1)) / ctc_normalizer_;
  }

  if (run_att_) {
    const int64_t u = lt + 1;
    const int32_t sos = static_cast<int32_t>(config_.sos()), eos = static_cast<int32_t>(config_.eos());
    int32_t* ys_in = host_alloc<int32_t>(ctx, b * u);
    int32_t* ys_out = host_alloc<int32_t>(ctx, b * u);
    int32_t* ys_in_lengths = host_alloc<int32_t>(ctx, b);
    make_decoder_targets(ys_in, ys_out, ys_in_lengths, batch.text, batch.text_lengths, false, sos, eos,
                         ModelConfig::kIgnoreId, b, lt);
    int64_t tokens = 0;
    for (int64_t i = 0; i < b; ++i) tokens += ys_in_lengths[i];
    ys_in_ = device_mirror(ctx, static_cast<const int32_t*>(ys_in), b * u);
    ys_out_ = device_mirror(ctx, static_cast<const int32_t*>(ys_out), b * u);
    ys_in_lengths_ = device_mirror(ctx, static_cast<const int32_t*>(ys_in_lengths), b);
    if (config_.length_normalized_loss) {
      att_normalizer_ = options.token_normalizer > 0 ? options.token_normalizer : static_cast<double>(tokens);
    } else {
      att_normalizer_ = ctc_normalizer_;
    }
    decoder_forward(&left_saved_, ys_in_, ys_in_lengths_, encoder_saved_.out, encoder_saved_.valid, left_,
                    dispatcher_, b, u, l, rng, ctx);
    l2r_lse_ = activation_alloc<Accum<T>>(ctx, b * u);
    Accum<T>* l2r = activation_alloc<Accum<T>>(ctx, 1);
    int64_t* kept_correct = activation_alloc<int64_t>(ctx, 2);
    op::label_smoothing_loss_forward(l2r, l2r_lse_, kept_correct, kept_correct + 1, left_saved_.logits,
                                     ys_out_, config_.lsm_weight, ModelConfig::kIgnoreId, att_normalizer_,
                                     b * u, v, ctx);
    loss.att_l2r = static_cast<double>(*host_mirror(ctx, static_cast<const Accum<T>*>(l2r), 1));
    const int64_t* host_kept_correct = host_mirror(ctx, static_cast<const int64_t*>(kept_correct), 2);
    loss.num_tokens = host_kept_correct[0];
    loss.num_correct = host_kept_correct[1];
    if (run_r2l_) {
      int32_t* r_in = host_alloc<int32_t>(ctx, b * u);
      int32_t* r_out = host_alloc<int32_t>(ctx, b * u);
      int32_t* r_lengths = host_alloc<int32_t>(ctx, b);
      make_decoder_targets(r_in, r_out, r_lengths, batch.text, batch.text_lengths, true, sos, eos,
                           ModelConfig::kIgnoreId, b, lt);
      r_in_ = device_mirror(ctx, static_cast<const int32_t*>(r_in), b * u);
      r_out_ = device_mirror(ctx, static_cast<const int32_t*>(r_out), b * u);
      decoder_forward(&right_saved_, r_in_, device_mirror(ctx, static_cast<const int32_t*>(r_lengths), b),
                      encoder_saved_.out, encoder_saved_.valid, right_, dispatcher_, b, u, l, rng, ctx);
      r2l_lse_ = activation_alloc<Accum<T>>(ctx, b * u);
      Accum<T>* r2l = activation_alloc<Accum<T>>(ctx, 1);
      op::label_smoothing_loss_forward(
          r2l, r2l_lse_, static_cast<int64_t*>(nullptr), static_cast<int64_t*>(nullptr), right_saved_.logits,
          r_out_, config_.lsm_weight, ModelConfig::kIgnoreId, att_normalizer_, b * u, v, ctx);
      loss.att_r2l = static_cast<double>(*host_mirror(ctx, static_cast<const Accum<T>*>(r2l), 1));
    }
    loss.att = (1.0 - config_.reverse_weight) * loss.att_l2r + config_.reverse_weight * loss.att_r2l;
  }

  const double w = config_.ctc_weight;
  loss.total = (run_ctc_ ? w * loss.ctc : 0.0) + (run_att_ ? (1.0 - w) * loss.att : 0.0);
  has_forward_ = true;
  return loss;
}

template <class T>
void U2ppModel<T>::backward(double loss_scale, const StepRng& rng, const RunContext& ctx,
                            const GradRangeReady& on_ready) {
  CHECK(has_forward_) << "U2ppModel::backward without a forward";
  const int64_t b = batch_.batch, v = config_.vocab_size, lt = batch_.max_text;
  const int64_t l = encoder_saved_.length, d = config_.encoder.output_size;
  const double w = config_.ctc_weight, rw = config_.reverse_weight;
  T* denc = activation_alloc<T>(ctx, b * l * d);
  op::fill_constant(denc, Accum<T>(0), b * l * d, ctx);

  if (run_att_) {
    const int64_t u = lt + 1;
    T* dlogits = activation_alloc<T>(ctx, b * u * v);
    op::label_smoothing_loss_backward(dlogits, static_cast<Accum<T>>(loss_scale * (1.0 - w) * (1.0 - rw)),
                                      left_saved_.logits, l2r_lse_, ys_out_, config_.lsm_weight,
                                      ModelConfig::kIgnoreId, att_normalizer_, b * u, v, ctx);
    decoder_backward(denc, left_saved_, dlogits, left_, dispatcher_, rng, ctx);
    if (run_r2l_) {
      op::label_smoothing_loss_backward(dlogits, static_cast<Accum<T>>(loss_scale * (1.0 - w) * rw),
                                        right_saved_.logits, r2l_lse_, r_out_, config_.lsm_weight,
                                        ModelConfig::kIgnoreId, att_normalizer_, b * u, v, ctx);
      decoder_backward(denc, right_saved_, dlogits, right_, dispatcher_, rng, ctx);
    }
  }
  if (run_ctc_) {
    Accum<T>* dlp = activation_alloc<Accum<T>>(ctx, b * l * v);
    op::ctc_loss_backward(
        dlp, static_cast<const Accum<T>*>(nullptr), static_cast<Accum<T>>(loss_scale * w / ctc_normalizer_),
        static_cast<const Accum<T>*>(ctc_log_alpha_), static_cast<const Accum<T>*>(ctc_log_probs_),
        encoder_saved_.lengths, text_, text_lengths_, b, l, v, lt, ctx);
    Accum<T>* dlogits = activation_alloc<Accum<T>>(ctx, b * l * v);
    op::log_softmax_backward(dlogits, static_cast<const Accum<T>*>(dlp),
                             static_cast<const Accum<T>*>(ctc_log_probs_),
                             static_cast<const uint8_t*>(nullptr), b * l, v, ctx);
    T* dx = activation_alloc<T>(ctx, b * l * d);
    op::linear_backward(dx, ctc_lo_.weight.grad, ctc_lo_.bias.grad, as_storage<T>(dlogits, b * l * v, ctx),
                        static_cast<const T*>(encoder_saved_.out), ctc_lo_.weight.value, b * l, d, v, ctx);
    op::add_scaled_inplace(denc, dx, Accum<T>(1), b * l * d, ctx);
  }
  std::function<void(int64_t)> on_final;
  if (on_ready) {
    on_final = [&](int64_t group) {
      const GradGroupRange& range = grad_groups_[static_cast<size_t>(group + 1)];
      for (ParamRegion region : {ParamRegion::kDense, ParamRegion::kExpert}) {
        const int r = region == ParamRegion::kDense ? 0 : 1;
        if (range.end[r] > range.begin[r]) on_ready(region, range.begin[r], range.end[r]);
      }
    };
  }
  encoder_backward(encoder_saved_, denc, encoder_, dispatcher_, rng, ctx, on_final);
}

template <class T>
std::vector<std::vector<int64_t>> U2ppModel<T>::expert_load(const RunContext& ctx) const {
  std::vector<std::vector<int64_t>> load;
  auto add = [&](const FeedForwardRef<T>& ref, const FeedForwardSaved<T>& saved) {
    const MoeFfnSaved<T>& moe = saved.experts;
    if (!ref.moe || moe.expert_counts == nullptr) return;
    const int64_t e = ref.experts.n_experts;
    if (moe.sizes_on_device) {  // one small read per MoE layer (waits for the stream)
      std::vector<int64_t> counts(static_cast<size_t>(e));
      op::copy_device_to_host(counts.data(), moe.expert_counts, e * static_cast<int64_t>(sizeof(int64_t)),
                              ctx);
      load.push_back(std::move(counts));
    } else {
      load.emplace_back(moe.expert_counts, moe.expert_counts + e);
    }
  };
  for (size_t i = 0; i < encoder_.layers.size() && i < encoder_saved_.layers.size(); ++i) {
    add(encoder_.layers[i].feed_forward_macaron, encoder_saved_.layers[i].ff_macaron);
    add(encoder_.layers[i].feed_forward, encoder_saved_.layers[i].ff);
  }
  for (size_t i = 0; i < left_.layers.size() && i < left_saved_.layers.size(); ++i) {
    add(left_.layers[i].feed_forward, left_saved_.layers[i].ff);
  }
  for (size_t i = 0; i < right_.layers.size() && i < right_saved_.layers.size(); ++i) {
    add(right_.layers[i].feed_forward, right_saved_.layers[i].ff);
  }
  return load;
}

template class U2ppModel<float>;
template class U2ppModel<double>;
template class U2ppModel<bf16>;

}  // namespace moeasr
