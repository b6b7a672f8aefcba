// model/parameter_table.cc — the U2++ (MoE) parameter table with WeNet's state-dict names and shapes
// (u2pp_moe_wenet.md §2–§5), region layout, and name-keyed Philox initialisation.
#include "model/parameter_table.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/philox.h"
#include "kernels/ops.h"

namespace moeasr {

const char* param_region_name(ParamRegion region) {
  switch (region) {
    case ParamRegion::kDense: return "dense";
    case ParamRegion::kExpert: return "expert";
    case ParamRegion::kBuffer: return "buffer";
  }
  return "?";
}

const ParamEntry* ParameterTable::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

const ParamEntry& ParameterTable::at(const std::string& name) const {
  const ParamEntry* e = find(name);
  CHECK(e != nullptr) << "parameter '" << name << "' is not in the table";
  return *e;
}

void ParameterTable::add(const std::string& name, Shape shape, ParamRegion region, ParamInit init,
                         int64_t fan_in, int64_t fan_out, int32_t expert) {
  CHECK(index_.find(name) == index_.end()) << "parameter '" << name << "' added twice";
  ParamEntry e;
  e.name = name;
  e.shape = shape;
  e.region = region;
  e.numel = shape.numel();
  e.offset = region_numel_[static_cast<int>(region)];
  e.init = init;
  e.fan_in = fan_in;
  e.fan_out = fan_out;
  e.expert = expert;
  region_numel_[static_cast<int>(region)] += e.numel;
  index_[name] = entries_.size();
  entries_.push_back(e);
}

void ParameterTable::add_expert_block(const std::string& prefix, const std::string& suffix,
                                      Shape per_expert_shape, const ExpertLayout& layout,
                                      int64_t experts_total, ParamInit init, int64_t fan_in) {
  CHECK_EQ(experts_total % layout.ep_size, 0) << "n_expert must divide by the expert-parallel size";
  int64_t local = experts_total / layout.ep_size;
  for (int64_t e = 0; e < local; ++e) {
    int64_t global = layout.ep_rank * local + e;
    add(prefix + "." + std::to_string(global) + "." + suffix, per_expert_shape, ParamRegion::kExpert, init,
        fan_in, 0, static_cast<int32_t>(global));
  }
}

namespace {

// FNV-1a: a stable 64-bit hash of a tensor name (std::hash differs between standard libraries).
uint64_t fnv1a64(const std::string& text) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : text) {
    h ^= ch;
    h *= 0x100000001b3ull;
  }
  return h;
}

void add_linear(ParameterTable* t, const std::string& prefix, int64_t out, int64_t in, bool bias) {
  t->add(prefix + ".weight", Shape{out, in}, ParamRegion::kDense, ParamInit::kUniformFanIn, in);
  if (bias) t->add(prefix + ".bias", Shape{out}, ParamRegion::kDense, ParamInit::kUniformFanIn, in);
}

void add_layer_norm(ParameterTable* t, const std::string& prefix, int64_t d) {
  t->add(prefix + ".weight", Shape{d}, ParamRegion::kDense, ParamInit::kOnes, 0);
  t->add(prefix + ".bias", Shape{d}, ParamRegion::kDense, ParamInit::kZeros, 0);
}

void add_attention(ParameterTable* t, const std::string& prefix, int64_t d) {
  for (const char* name : {"linear_q", "linear_k", "linear_v", "linear_out"}) {
    add_linear(t, prefix + "." + name, d, d, true);
  }
}

void add_ffn(ParameterTable* t, const std::string& prefix, int64_t d, const FfnConfig& ffn,
             const ExpertLayout& layout) {
  int64_t f = ffn.linear_units;
  if (ffn.mlp_type == MlpType::kDense) {
    add_linear(t, prefix + ".w_1", f, d, ffn.mlp_bias);
    add_linear(t, prefix + ".w_2", d, f, ffn.mlp_bias);
    return;
  }
  t->add(prefix + ".gate.weight", Shape{ffn.n_expert, d}, ParamRegion::kDense, ParamInit::kUniformFanIn, d);
  std::string experts = prefix + ".experts";
  t->add_expert_block(experts, "w_1.weight", Shape{f, d}, layout, ffn.n_expert, ParamInit::kUniformFanIn, d);
  if (ffn.mlp_bias) {
    t->add_expert_block(experts, "w_1.bias", Shape{f}, layout, ffn.n_expert, ParamInit::kUniformFanIn, d);
  }
  t->add_expert_block(experts, "w_2.weight", Shape{d, f}, layout, ffn.n_expert, ParamInit::kUniformFanIn, f);
  if (ffn.mlp_bias) {
    t->add_expert_block(experts, "w_2.bias", Shape{d}, layout, ffn.n_expert, ParamInit::kUniformFanIn, f);
  }
}

void add_decoder(ParameterTable* t, const std::string& prefix, int64_t num_blocks, int64_t d, int64_t vocab,
                 const DecoderConfig& dec, const ExpertLayout& layout) {
  t->add(prefix + ".embed.0.weight", Shape{vocab, d}, ParamRegion::kDense, ParamInit::kNormal, 0);
  for (int64_t i = 0; i < num_blocks; ++i) {
    std::string p = prefix + ".decoders." + std::to_string(i);
    add_attention(t, p + ".self_attn", d);
    add_attention(t, p + ".src_attn", d);
    add_ffn(t, p + ".feed_forward", d, dec.ffn, layout);
    add_layer_norm(t, p + ".norm1", d);
    add_layer_norm(t, p + ".norm2", d);
    add_layer_norm(t, p + ".norm3", d);
  }
  add_layer_norm(t, prefix + ".after_norm", d);
  add_linear(t, prefix + ".output_layer", vocab, d, true);
}

}  // namespace

Status validate_model_config(const ModelConfig& c) {
  const EncoderConfig& enc = c.encoder;
  if (c.input_dim < 7) return invalid_argument_error("input_dim must be >= 7 for Conv2dSubsampling4");
  if (c.vocab_size < 3) return invalid_argument_error("vocab_size must be >= 3 (<blank>, a unit, <sos/eos>)");
  if (enc.output_size <= 0 || enc.attention_heads <= 0 || enc.output_size % enc.attention_heads != 0) {
    return invalid_argument_error(
        "encoder_conf.output_size must be a positive multiple of encoder_conf.attention_heads");
  }
  if (c.decoder.attention_heads <= 0 || enc.output_size % c.decoder.attention_heads != 0) {
    return invalid_argument_error(
        "encoder_conf.output_size must be a multiple of decoder_conf.attention_heads");
  }
  if (enc.cnn_module_kernel < 1) return invalid_argument_error("encoder_conf.cnn_module_kernel must be >= 1");
  if (!enc.causal && enc.cnn_module_kernel % 2 == 0) {
    return invalid_argument_error(
        "encoder_conf.cnn_module_kernel must be odd unless encoder_conf.causal is true");
  }
  for (const FfnConfig* ffn : {&enc.ffn, &c.decoder.ffn}) {
    if (ffn->linear_units <= 0) return invalid_argument_error("linear_units must be positive");
    if (ffn->mlp_type == MlpType::kMoe &&
        (ffn->n_expert < 1 || ffn->n_expert_activated < 1 || ffn->n_expert_activated > ffn->n_expert)) {
      return invalid_argument_error("n_expert_activated must be in [1, n_expert] for mlp_type: moe");
    }
  }
  if (c.ctc_weight < 0 || c.ctc_weight > 1)
    return invalid_argument_error("model_conf.ctc_weight must be in [0, 1]");
  if (c.reverse_weight < 0 || c.reverse_weight > 1) {
    return invalid_argument_error("model_conf.reverse_weight must be in [0, 1]");
  }
  if (c.reverse_weight > 0 && c.decoder.r_num_blocks <= 0) {
    return invalid_argument_error("model_conf.reverse_weight > 0 needs decoder_conf.r_num_blocks > 0");
  }
  if (c.lsm_weight < 0 || c.lsm_weight >= 1)
    return invalid_argument_error("model_conf.lsm_weight must be in [0, 1)");
  return Status();
}

ParameterTable build_u2pp_parameter_table(const ModelConfig& c, const ExpertLayout& layout) {
  Status valid = validate_model_config(c);
  CHECK(valid.ok()) << valid.to_string();
  CHECK(layout.ep_size >= 1 && layout.ep_rank >= 0 && layout.ep_rank < layout.ep_size);
  ParameterTable t;
  const int64_t d = c.encoder.output_size;
  const int64_t heads = c.encoder.attention_heads;
  const int64_t k = c.encoder.cnn_module_kernel;
  const int64_t sub_freq = ((c.input_dim - 1) / 2 - 1) / 2;

  t.add("encoder.global_cmvn.mean", Shape{c.input_dim}, ParamRegion::kBuffer, ParamInit::kZeros, 0);
  t.add("encoder.global_cmvn.istd", Shape{c.input_dim}, ParamRegion::kBuffer, ParamInit::kOnes, 0);
  t.add("encoder.embed.conv.0.weight", Shape{d, 1, 3, 3}, ParamRegion::kDense, ParamInit::kUniformFanIn, 9);
  t.add("encoder.embed.conv.0.bias", Shape{d}, ParamRegion::kDense, ParamInit::kUniformFanIn, 9);
  t.add("encoder.embed.conv.2.weight", Shape{d, d, 3, 3}, ParamRegion::kDense, ParamInit::kUniformFanIn,
        9 * d);
  t.add("encoder.embed.conv.2.bias", Shape{d}, ParamRegion::kDense, ParamInit::kUniformFanIn, 9 * d);
  add_linear(&t, "encoder.embed.out.0", d, d * sub_freq, true);

  for (int64_t i = 0; i < c.encoder.num_blocks; ++i) {
    std::string p = "encoder.encoders." + std::to_string(i);
    add_attention(&t, p + ".self_attn", d);
    t.add(p + ".self_attn.linear_pos.weight", Shape{d, d}, ParamRegion::kDense, ParamInit::kUniformFanIn, d);
    t.add(p + ".self_attn.pos_bias_u", Shape{heads, d / heads}, ParamRegion::kDense,
          ParamInit::kXavierUniform, d / heads, heads);
    t.add(p + ".self_attn.pos_bias_v", Shape{heads, d / heads}, ParamRegion::kDense,
          ParamInit::kXavierUniform, d / heads, heads);
    add_ffn(&t, p + ".feed_forward", d, c.encoder.ffn, layout);
    add_ffn(&t, p + ".feed_forward_macaron", d, c.encoder.ffn, layout);
    std::string conv = p + ".conv_module";
    t.add(conv + ".pointwise_conv1.weight", Shape{2 * d, d, 1}, ParamRegion::kDense, ParamInit::kUniformFanIn,
          d);
    t.add(conv + ".pointwise_conv1.bias", Shape{2 * d}, ParamRegion::kDense, ParamInit::kUniformFanIn, d);
    t.add(conv + ".depthwise_conv.weight", Shape{d, 1, k}, ParamRegion::kDense, ParamInit::kUniformFanIn, k);
    t.add(conv + ".depthwise_conv.bias", Shape{d}, ParamRegion::kDense, ParamInit::kUniformFanIn, k);
    add_layer_norm(&t, conv + ".norm", d);
    if (c.encoder.cnn_module_norm == ConvNormType::kBatchNorm) {
      t.add(conv + ".norm.running_mean", Shape{d}, ParamRegion::kBuffer, ParamInit::kZeros, 0);
      t.add(conv + ".norm.running_var", Shape{d}, ParamRegion::kBuffer, ParamInit::kOnes, 0);
    }
    t.add(conv + ".pointwise_conv2.weight", Shape{d, d, 1}, ParamRegion::kDense, ParamInit::kUniformFanIn, d);
    t.add(conv + ".pointwise_conv2.bias", Shape{d}, ParamRegion::kDense, ParamInit::kUniformFanIn, d);
    for (const char* norm : {"norm_ff", "norm_mha", "norm_ff_macaron", "norm_conv", "norm_final"}) {
      add_layer_norm(&t, p + "." + norm, d);
    }
  }
  add_layer_norm(&t, "encoder.after_norm", d);

  add_decoder(&t, "decoder.left_decoder", c.decoder.num_blocks, d, c.vocab_size, c.decoder, layout);
  if (c.decoder.r_num_blocks > 0) {
    add_decoder(&t, "decoder.right_decoder", c.decoder.r_num_blocks, d, c.vocab_size, c.decoder, layout);
  }
  add_linear(&t, "ctc.ctc_lo", c.vocab_size, d, true);
  return t;
}

template <class T>
ParameterStore<T>::ParameterStore(const ParameterTable& t) : table(&t) {
  for (int r = 0; r < kNumParamRegions; ++r) {
    values[r].assign(static_cast<size_t>(t.region_numel(static_cast<ParamRegion>(r))), T(0));
    if (static_cast<ParamRegion>(r) != ParamRegion::kBuffer) grads[r].assign(values[r].size(), T(0));
  }
}

template <class T>
T* ParameterStore<T>::grad(const ParamEntry& e) {
  CHECK(e.region != ParamRegion::kBuffer) << "'" << e.name << "' is a buffer and has no gradient";
  return region_grads(e.region) + e.offset;
}

template <class T>
T* ParameterStore<T>::region_values(ParamRegion region) {
  const int r = static_cast<int>(region);
  return device_ == Device::cpu ? values[r].data() : device_values_[r];
}

template <class T>
T* ParameterStore<T>::region_grads(ParamRegion region) {
  const int r = static_cast<int>(region);
  return device_ == Device::cpu ? grads[r].data() : device_grads_[r];
}

template <class T>
void ParameterStore<T>::zero_grads() {
  CHECK(device_ == Device::cpu) << "ParameterStore::zero_grads() on a device store: pass the RunContext";
  for (auto& g : grads) std::fill(g.begin(), g.end(), T(0));
}

template <class T>
void ParameterStore<T>::zero_grads(const RunContext& ctx) {
  if (device_ == Device::cpu) return zero_grads();
  for (int r = 0; r < kNumParamRegions; ++r) {
    op::fill_constant(device_grads_[r], T(0), static_cast<int64_t>(grads[r].size()), ctx);
  }
}

template <class T>
void ParameterStore<T>::place_on(Arena* arena, const RunContext& ctx) {
  CHECK(arena != nullptr && arena->device() == ctx.device)
      << "ParameterStore::place_on needs an arena in " << device_name(ctx.device) << " memory";
  CHECK(device_ == Device::cpu) << "ParameterStore::place_on called twice";
  if (ctx.device == Device::cpu) return;  // the host vectors are the working copy
  for (int r = 0; r < kNumParamRegions; ++r) {
    const int64_t n = static_cast<int64_t>(values[r].size());
    device_values_[r] = arena->allocate_array<T>(n);
    op::copy_host_to_device(device_values_[r], values[r].data(), n * static_cast<int64_t>(sizeof(T)), ctx);
    const int64_t ng = static_cast<int64_t>(grads[r].size());
    device_grads_[r] = ng > 0 ? arena->allocate_array<T>(ng) : nullptr;
    op::fill_constant(device_grads_[r], T(0), ng, ctx);
  }
  device_ = ctx.device;
}

template <class T>
void ParameterStore<T>::copy_to_host(const RunContext& ctx) {
  if (device_ == Device::cpu) return;
  CHECK(ctx.device == device_) << "ParameterStore::copy_to_host with a context of another device";
  for (int r = 0; r < kNumParamRegions; ++r) {
    op::copy_device_to_host(values[r].data(), device_values_[r],
                            static_cast<int64_t>(values[r].size() * sizeof(T)), ctx);
    op::copy_device_to_host(grads[r].data(), device_grads_[r],
                            static_cast<int64_t>(grads[r].size() * sizeof(T)), ctx);
  }
}

template <class T>
void initialize_parameters(ParameterStore<T>* store, uint64_t seed) {
  for (const ParamEntry& e : store->table->entries()) {
    T* v = store->value(e);
    RngKey key;
    key.seed = seed;
    key.purpose = RngPurpose::kInit;
    key.stream = fnv1a64(e.name);
    PhiloxStream s = philox_stream(key);
    for (int64_t i = 0; i < e.numel; ++i) {
      double x = 0.0;
      switch (e.init) {
        case ParamInit::kZeros: x = 0.0; break;
        case ParamInit::kOnes: x = 1.0; break;
        case ParamInit::kUniformFanIn: {
          double bound = 1.0 / std::sqrt(static_cast<double>(e.fan_in));
          x = (2.0 * philox_uniform_double(s, i) - 1.0) * bound;
          break;
        }
        case ParamInit::kXavierUniform: {
          double bound = std::sqrt(6.0 / static_cast<double>(e.fan_in + e.fan_out));
          x = (2.0 * philox_uniform_double(s, i) - 1.0) * bound;
          break;
        }
        case ParamInit::kNormal: x = philox_normal(s, i); break;
      }
      v[i] = static_cast<T>(x);
    }
  }
}

ParameterStore<bf16>::ParameterStore(ParameterStore<float>* master_store, Arena* arena, const RunContext& ctx)
    : table(master_store->table), masters(master_store) {
  CHECK(arena != nullptr && arena->device() == ctx.device)
      << "ParameterStore<bf16> needs an arena in " << device_name(ctx.device) << " memory";
  CHECK(master_store->device() == ctx.device)
      << "ParameterStore<bf16>: place the fp32 store on " << device_name(ctx.device) << " first";
  for (int r = 0; r < kNumParamRegions; ++r) {
    copies_[r] = arena->allocate_array<bf16>(table->region_numel(static_cast<ParamRegion>(r)));
  }
  refresh_copy(ctx);
}

void ParameterStore<bf16>::refresh_copy(const RunContext& ctx) {
  for (int r = 0; r < kNumParamRegions; ++r) {
    const auto region = static_cast<ParamRegion>(r);
    op::convert_elements(copies_[r], masters->region_values(region), table->region_numel(region), ctx);
  }
}

template struct ParameterStore<float>;
template struct ParameterStore<double>;
template void initialize_parameters<float>(ParameterStore<float>*, uint64_t);
template void initialize_parameters<double>(ParameterStore<double>*, uint64_t);

}  // namespace moeasr
