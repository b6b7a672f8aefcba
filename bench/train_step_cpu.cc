// bench/train_step_cpu.cc — one U2++ training step (forward, backward, Adam) on the CPU at the tiny
// shapes of the peer table (d256, 4 heads, ffn 1024, 12 encoder layers, kernel 15 causal, 3+3 decoder
// layers, vocab 5000; MoE: 8 experts top-2 in every FFN), batch 4 x 500 frames, 20 tokens each,
// dropout 0.1, dynamic chunk training. Prints step time, input frames/s, achieved GFLOP/s (from an
// analytic count of the matrix products, training = 3x forward) and the ratios against WeNet's
// PyTorch numbers measured on this machine kind (465 frames/s dense, 225 MoE; target >= 3x), and the
// MoE/dense step-time ratio against the FLOP ratio (target within 1.15x). Asserts nothing.
//
//   build/bench/bench_train_step_cpu [--steps 5] [--threads 2] [--model dense|moe|both]
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench/train_step_flops.h"
#include "core/philox.h"
#include "kernels/cpu/cpu_parallel.h"
#include "model/expert_dispatch.h"
#include "model/u2pp_model.h"
#include "trainer/optimizer.h"

namespace moeasr {
namespace {

ModelConfig tiny_config(bool moe) {
  ModelConfig c;
  c.input_dim = 80;
  c.vocab_size = 5000;
  c.encoder.output_size = 256;
  c.encoder.attention_heads = 4;
  c.encoder.num_blocks = 12;
  c.encoder.cnn_module_kernel = 15;
  c.encoder.causal = true;
  c.encoder.cnn_module_norm = ConvNormType::kLayerNorm;
  c.encoder.use_dynamic_chunk = true;
  c.encoder.ffn.mlp_type = moe ? MlpType::kMoe : MlpType::kDense;
  c.encoder.ffn.linear_units = 1024;
  c.encoder.ffn.n_expert = 8;
  c.encoder.ffn.n_expert_activated = 2;
  c.encoder.attention_dropout_rate = 0.1;
  c.decoder.attention_heads = 4;
  c.decoder.num_blocks = 3;
  c.decoder.r_num_blocks = 3;
  c.decoder.ffn = c.encoder.ffn;
  c.decoder.ffn.activation = ActivationType::kRelu;
  return c;
}

struct Result {
  double step_seconds;
  double forward_seconds, backward_seconds, update_seconds;
  double flops;
  double params;
};

Result run(bool moe, int steps, const RunContext& base_ctx) {
  ModelConfig config = tiny_config(moe);
  ParameterTable table = build_u2pp_parameter_table(config, ExpertLayout{});
  ParameterStore<float> store(table);
  initialize_parameters(&store, 1);
  LocalExpertDispatcher<float> dispatcher;
  U2ppModel<float> model(config, &store, &dispatcher, ExpertLayout{});
  AdamOptimizer<float> adam(&store, AdamOptions{});
  Arena arena("activations", 1 << 26, Arena::Growth::kGrowable);
  RunContext ctx = base_ctx;
  ctx.activations = &arena;

  const int64_t b = 4, t = 500, text = 20;
  RngKey key;
  key.seed = 5;
  PhiloxStream s = philox_stream(key);
  std::vector<float> feats(b * t * 80);
  for (size_t i = 0; i < feats.size(); ++i) feats[i] = 2.0f * philox_uniform(s, i) - 1.0f;
  std::vector<int32_t> feat_lengths(b, int32_t(t)), text_lengths(b, int32_t(text)), ids(b * text);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = 1 + int32_t(philox_below(s, 1000000 + i, 4998));
  U2ppBatch<float> batch{feats.data(), feat_lengths.data(), ids.data(), text_lengths.data(), b, t, text};

  std::vector<double> times, fwd, bwd, upd;
  using Clock = std::chrono::steady_clock;
  auto seconds = [](Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double>(b - a).count();
  };
  for (int step = 0; step <= steps; ++step) {  // step 0 warms up (arena planning, page faults)
    auto start = Clock::now();
    arena.reset();
    store.zero_grads();
    StepRng rng;
    rng.training = true;
    rng.base.seed = 1;
    rng.base.step = static_cast<uint64_t>(step);
    // Alternate full context and chunk 16 so both dynamic-chunk regimes are in the median.
    U2ppForwardOptions options;
    options.chunk_size = step % 2 ? 16 : -1;
    model.forward(batch, options, rng, ctx);
    auto after_forward = Clock::now();
    model.backward(1.0, rng, ctx);
    auto after_backward = Clock::now();
    adam.step(ctx);
    auto end = Clock::now();
    if (step > 0) {
      times.push_back(seconds(start, end));
      fwd.push_back(seconds(start, after_forward));
      bwd.push_back(seconds(after_forward, after_backward));
      upd.push_back(seconds(after_backward, end));
    }
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  double total_params = 0;
  for (int r = 0; r < 2; ++r) total_params += double(store.values[r].size());
  return {median(times),
          median(fwd),
          median(bwd),
          median(upd),
          3.0 * u2pp_forward_matmul_flops(config, b, t, text),
          total_params};
}

int main_impl(int argc, char** argv) {
  int steps = 5, threads = 2;
  std::string which = "both";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--model")) which = argv[i + 1];
    if (!std::strcmp(argv[i], "--steps")) steps = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
  }
  RunContext ctx;
  ctx.num_threads = threads;
  cpu_backend_init(ctx);
  std::printf("# bench_train_step_cpu: batch 4 x 500 frames, %d threads, median of %d steps (fwd+bwd+Adam)\n",
              threads, steps);
  if (which != "both") {  // one model alone, for profiling
    Result r = run(which == "moe", steps, ctx);
    std::printf("%s: step %.3f s (fwd %.3f, bwd %.3f, Adam %.3f)\n", which.c_str(), r.step_seconds,
                r.forward_seconds, r.backward_seconds, r.update_seconds);
    return 0;
  }
  Result dense = run(false, steps, ctx);
  Result moe = run(true, steps, ctx);
  const double frames = 4 * 500;
  const double wenet_dense = 465, wenet_moe = 225;
  std::printf("# OpenBLAS core: %s (WeNet's numbers were taken with OPENBLAS_CORETYPE=Haswell)\n",
              openblas_get_corename());
  std::printf(
      "| model | params | step s (fwd / bwd / Adam) | input frames/s | GFLOP/s | WeNet frames/s | ours / "
      "WeNet "
      "(target >= 3) |\n|---|---|---|---|---|---|---|\n");
  auto row = [&](const char* name, const Result& r, double wenet) {
    std::printf("| %s | %.1fM | %.3f (%.3f / %.3f / %.3f) | %.0f | %.1f | %.0f | %.2f |\n", name,
                r.params / 1e6, r.step_seconds, r.forward_seconds, r.backward_seconds, r.update_seconds,
                frames / r.step_seconds, r.flops / r.step_seconds / 1e9, wenet,
                frames / r.step_seconds / wenet);
  };
  row("tiny dense", dense, wenet_dense);
  row("tiny MoE", moe, wenet_moe);
  double time_ratio = moe.step_seconds / dense.step_seconds, flop_ratio = moe.flops / dense.flops;
  std::printf("\nMoE/dense step time %.2f, FLOP ratio %.2f, time/FLOP ratio %.2f (target <= 1.15)\n",
              time_ratio, flop_ratio, time_ratio / flop_ratio);
  return 0;
}

}  // namespace
}  // namespace moeasr

int main(int argc, char** argv) {
  return moeasr::main_impl(argc, argv);
}
