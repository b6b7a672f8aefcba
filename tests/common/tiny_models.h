// tests/common/tiny_models.h — the tiny U2++ MoE model the model-level tests share: 20 fbank bins, a
// vocabulary of 12, d 16 with 2 heads, conv kernel 3, every FFN 4 experts of width 32 with top-2
// routing (ReLU in the decoders), both decoders with one block, reverse_weight 0.3. Each test then
// sets what it varies (encoder blocks, norm, causality, dropout, top-k, loss weights).
#pragma once

#include <cstdint>

#include "model/model_config.h"

namespace moeasr::testing {

inline ModelConfig tiny_moe_model_config(int64_t encoder_blocks) {
  ModelConfig c;
  c.input_dim = 20;
  c.vocab_size = 12;
  c.encoder.output_size = 16;
  c.encoder.attention_heads = 2;
  c.encoder.num_blocks = encoder_blocks;
  c.encoder.cnn_module_kernel = 3;
  c.encoder.ffn.mlp_type = MlpType::kMoe;
  c.encoder.ffn.linear_units = 32;
  c.encoder.ffn.n_expert = 4;
  c.encoder.ffn.n_expert_activated = 2;
  c.decoder.attention_heads = 2;
  c.decoder.num_blocks = 1;
  c.decoder.r_num_blocks = 1;
  c.decoder.ffn = c.encoder.ffn;
  c.decoder.ffn.activation = ActivationType::kRelu;
  c.reverse_weight = 0.3;
  return c;
}

}  // namespace moeasr::testing
