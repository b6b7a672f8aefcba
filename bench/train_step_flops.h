// bench/train_step_flops.h — the analytic FLOP count of one U2++ forward pass that the training-step
// benchmarks (bench/train_step_cpu.cc, bench/gpu/train_step_gpu.cc) turn into GFLOP/s and MFU: the
// matrix products only (2 FLOPs per multiply-add), elementwise work ignored; training = 3x forward.
// The decoder's FFN is counted with the encoder's width (true of every shipped config).
#pragma once

#include <cstdint>

#include "model/model_config.h"

namespace moeasr {

// Forward FLOPs of the matrix products (2 per multiply-add); elementwise work is ignored.
inline double u2pp_forward_matmul_flops(const ModelConfig& c, int64_t b, int64_t t, int64_t text) {
  const double d = double(c.encoder.output_size), f = double(c.encoder.ffn.linear_units),
               v = double(c.vocab_size);
  const double t1 = double((t - 3) / 2 + 1), f1 = double((c.input_dim - 3) / 2 + 1);
  const double l = double(((t - 1) / 2 - 1) / 2), f2 = double(((c.input_dim - 1) / 2 - 1) / 2);
  const double n = double(b) * l, u = double(text + 1), nu = double(b) * u,
               k = double(c.encoder.cnn_module_kernel);
  const bool moe = c.encoder.ffn.mlp_type == MlpType::kMoe;
  const double topk = moe ? double(c.encoder.ffn.n_expert_activated) : 1.0;
  const double gate = moe ? double(c.encoder.ffn.n_expert) : 0.0;
  auto ffn = [&](double rows) { return 4.0 * rows * d * f * topk + 2.0 * rows * d * gate; };
  double flops = 2.0 * b * d * t1 * f1 * 9 + 2.0 * b * d * l * f2 * d * 9 + 2.0 * n * d * f2 * d;
  double layer = 2 * ffn(n) + 8.0 * n * d * d + 2.0 * l * d * d + 6.0 * b * l * l * d + 4.0 * n * d * d +
                 2.0 * n * d * k + 2.0 * n * d * d;
  flops += double(c.encoder.num_blocks) * layer;
  double dec_layer = 8.0 * nu * d * d + 4.0 * b * u * u * d + 4.0 * nu * d * d + 4.0 * n * d * d +
                     4.0 * b * u * l * d + ffn(nu);
  flops += double(c.decoder.num_blocks + c.decoder.r_num_blocks) * dec_layer + 2.0 * 2.0 * nu * d * v;
  flops += 2.0 * n * d * v;  // CTC head
  return flops;
}

}  // namespace moeasr
