// model/model_config.h — the hyper-parameters of a U2++ (MoE) model, with WeNet's yaml key names in
// the comments, so the trainer's config front end maps `encoder_conf.output_size` etc. one to one.
// Defaults are WeNet's class defaults unless a comment says otherwise.
#pragma once

#include <cstdint>
#include <string>

#include "core/status.h"

namespace moeasr {

enum class MlpType { kDense, kMoe };  // encoder_conf.mlp_type: position_wise_feed_forward | moe
enum class ConvNormType { kBatchNorm, kLayerNorm };  // encoder_conf.cnn_module_norm
enum class ActivationType { kRelu, kSwish };         // *_conf.activation_type

struct FfnConfig {
  MlpType mlp_type = MlpType::kDense;
  int64_t linear_units = 2048;     // hidden width f of each FFN / expert
  int64_t n_expert = 8;            // mlp_type moe only
  int64_t n_expert_activated = 2;  // top-k
  bool mlp_bias = true;            // experts/FFN linears carry biases (WeNet passes mlp_bias=True)
  ActivationType activation = ActivationType::kSwish;
};

struct EncoderConfig {
  int64_t output_size = 256;  // d_model
  int64_t attention_heads = 4;
  int64_t num_blocks = 12;
  int64_t cnn_module_kernel = 15;
  bool causal = false;  // causal depthwise convolution (streaming)
  ConvNormType cnn_module_norm = ConvNormType::kBatchNorm;
  FfnConfig ffn;  // activation swish
  double dropout_rate = 0.1;
  double positional_dropout_rate = 0.1;
  double attention_dropout_rate = 0.0;
  // Chunk training (WeNet add_optional_chunk_mask).
  bool use_dynamic_chunk = false;
  bool use_dynamic_left_chunk = false;
  int64_t static_chunk_size = 0;  // > 0 and not dynamic: fixed chunk
  int64_t max_chunk_size = 25;    // dynamic draws are in [1, max_chunk_size]
};

struct DecoderConfig {
  int64_t attention_heads = 4;
  int64_t num_blocks = 6;    // L2R layers
  int64_t r_num_blocks = 0;  // R2L layers (BiTransformerDecoder when > 0)
  FfnConfig ffn;             // activation relu
  double dropout_rate = 0.1;
  double positional_dropout_rate = 0.1;
  double self_attention_dropout_rate = 0.0;
  double src_attention_dropout_rate = 0.0;
};

struct ModelConfig {
  int64_t input_dim = 80;  // fbank bins
  int64_t vocab_size = 5000;
  EncoderConfig encoder;
  DecoderConfig decoder;
  double ctc_weight = 0.3;      // model_conf.ctc_weight
  double lsm_weight = 0.1;      // model_conf.lsm_weight
  double reverse_weight = 0.3;  // model_conf.reverse_weight
  bool length_normalized_loss = false;

  int64_t sos() const { return vocab_size - 1; }  // sos = eos = vocab_size - 1
  int64_t eos() const { return vocab_size - 1; }
  static constexpr int32_t kIgnoreId = -1;
};

// Checks the combinations the model cannot run (heads dividing d, odd kernels in symmetric mode,
// top-k <= experts, ...). Messages name the yaml key.
Status validate_model_config(const ModelConfig& config);

}  // namespace moeasr
