// bench/rtf.cc — real-time factor of U2++ recognition on the CPU, one thread, batch 1, one 10 s
// utterance (1000 fbank frames, random values), random weights (the default init), at the tiny
// shapes of the peer table (d256, 4 heads, ffn 1024, 12 encoder layers, kernel 15 causal, 3+3 decoder
// layers, vocab 5000; MoE: 8 experts top-2 in every FFN). Measures, for full context and for chunk 16
// streaming (chunk by chunk with caches, all history):
//   encoder only            — StreamingEncoder::encode;
//   whole decode            — encoder + CTC head + prefix beam search (beam 10) + attention
//                             rescoring (ctc_weight 0.3, reverse_weight 0.5: both decoders);
// RTF = seconds / 10 s, the median of --runs warm runs (the first, cold run is printed too). Prints
// the MoE/dense ratios (target <= 1.2) and ours against WeNet's PyTorch numbers on this machine kind
// (shared/reference/anchors.md; target <= 0.5x). Asserts nothing.
//
//   build/bench/bench_rtf [--runs 3] [--threads 1] [--model dense|moe|both] [--clock cpu|wall]
// (--clock cpu, the default, times process CPU seconds: on a machine shared with other jobs, wall
// time measures the sharing; with one thread and an idle machine the two agree.)
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include "core/check.h"
#include "kernels/cpu/cpu_parallel.h"
#include "model/expert_dispatch.h"
#include "model/parameter_table.h"
#include "model/search.h"
#include "model/streaming_encoder.h"

namespace moeasr {
namespace {

constexpr int64_t kFrames = 1000;  // 10 s at 10 ms
constexpr double kAudioSeconds = 10.0;

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
  c.decoder.attention_heads = 4;
  c.decoder.num_blocks = 3;
  c.decoder.r_num_blocks = 3;
  c.decoder.ffn = c.encoder.ffn;
  c.decoder.ffn.activation = ActivationType::kRelu;
  return c;
}

// Wall-clock or process CPU seconds (with one thread, CPU time is what an unshared core would take;
// the CI machine is often shared by parallel builds, which inflates wall time).
struct Clock {
  bool cpu = true;
  double now() const {
    if (cpu) {
      timespec ts;
      clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
      return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// RTF of [encoder full, encoder chunk 16, whole full, whole chunk 16], warm medians and cold runs.
struct Row {
  double warm[4];
  double cold[4];
  size_t nbest_len[2];  // mean CTC n-best length, full / chunk 16
  double params_total = 0;
};

Row run(bool moe, int runs, const Clock& clock, const RunContext& base) {
  const ModelConfig config = tiny_config(moe);
  ParameterTable table = build_u2pp_parameter_table(config, ExpertLayout{});
  ParameterStore<float> store(table);
  initialize_parameters(&store, 1);
  LocalExpertDispatcher<float> dispatcher;
  StreamingEncoder<float> encoder(config, &store, &dispatcher);
  SearchModel<float> heads(config, &store, &dispatcher);
  Arena arena("rtf", int64_t(64) << 20, Arena::Growth::kGrowable);
  RunContext ctx = base;
  ctx.activations = &arena;
  std::vector<float> feats(static_cast<size_t>(kFrames * config.input_dim));
  {  // fbank-like values: log-mel energies around 10 with some spread
    uint64_t s = 88172645463325252ull;
    for (float& x : feats) {
      s ^= s << 13;
      s ^= s >> 7;
      s ^= s << 17;
      x = 10.0f + 4.0f * (static_cast<float>(s % 10000) / 10000.0f - 0.5f);
    }
  }
  Row row;
  for (int r = 0; r < kNumParamRegions; ++r) row.params_total += double(table.region_numel(ParamRegion(r)));
  SearchOptions search;
  search.beam_size = 10;
  search.ctc_weight = 0.3;
  search.reverse_weight = 0.5;
  const std::vector<DecodeMode> modes = {DecodeMode::kAttentionRescoring};
  for (int variant = 0; variant < 2; ++variant) {
    EncodeOptions options;
    if (variant == 1) {
      options.decoding_chunk_size = 16;
      options.num_decoding_left_chunks = -1;
      options.simulate_streaming = true;
    }
    std::vector<double> enc_times, whole_times;
    std::vector<float> ys;
    size_t nbest_tokens = 0, nbest_count = 0;
    for (int i = 0; i <= runs; ++i) {
      double t0 = clock.now();
      Status s = encoder.encode(&ys, feats.data(), kFrames, options, ctx);
      CHECK(s.ok()) << s.to_string();
      enc_times.push_back(clock.now() - t0);
      arena.reset();
      const int64_t frames = static_cast<int64_t>(ys.size()) / config.encoder.output_size;
      t0 = clock.now();
      s = encoder.encode(&ys, feats.data(), kFrames, options, ctx);
      CHECK(s.ok()) << s.to_string();
      std::vector<DecodeResult> results = decode_utterance(heads, modes, ys.data(), frames, search, ctx);
      whole_times.push_back(clock.now() - t0);
      if (i == 0) {
        // The n-best lengths (what the rescoring decoders run over), from a separate search.
        std::vector<float> lp(static_cast<size_t>(frames * config.vocab_size));
        heads.ctc_log_probs(lp.data(), ys.data(), frames, ctx);
        for (const DecodeResult& h : ctc_prefix_beam_search(lp.data(), frames, config.vocab_size, 10, 0)) {
          nbest_tokens += h.tokens.size();
          ++nbest_count;
        }
      }
      arena.reset();
    }
    row.cold[variant] = enc_times[0] / kAudioSeconds;
    row.cold[2 + variant] = whole_times[0] / kAudioSeconds;
    enc_times.erase(enc_times.begin());
    whole_times.erase(whole_times.begin());
    row.warm[variant] = median(enc_times) / kAudioSeconds;
    row.warm[2 + variant] = median(whole_times) / kAudioSeconds;
    row.nbest_len[variant] = nbest_count > 0 ? nbest_tokens / nbest_count : 0;
  }
  return row;
}

int main_impl(int argc, char** argv) {
  int runs = 3, threads = 1;
  std::string which = "both";
  Clock clock;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--model")) which = argv[i + 1];
    if (!std::strcmp(argv[i], "--runs")) runs = std::max(1, std::atoi(argv[i + 1]));
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--clock")) clock.cpu = std::strcmp(argv[i + 1], "wall") != 0;
  }
  RunContext ctx;
  ctx.num_threads = threads;
  cpu_backend_init(ctx);
  double load[3] = {0, 0, 0};
  if (getloadavg(load, 3) < 1) load[0] = -1;
  std::printf(
      "# bench_rtf: batch 1, one 10 s utterance (1000 frames), %d thread(s), OpenBLAS core %s; %s time, "
      "median of %d warm runs (cold first run in brackets); load average %.2f\n",
      threads, openblas_get_corename(), clock.cpu ? "process CPU" : "wall-clock", runs, load[0]);
  std::printf(
      "# whole decode = encoder + CTC head + prefix beam (beam 10) + attention rescoring (ctc_weight 0.3, "
      "reverse_weight 0.5)\n");
  // WeNet, PyTorch on this CPU kind, one thread (shared/reference/anchors.md).
  const double wenet[2][4] = {{0.0160, 0.0353, 0.155, 0.184}, {0.0386, 0.0979, 0.128, 0.105}};
  const char* cols[4] = {"encoder, full", "encoder, chunk 16", "whole decode, full",
                         "whole decode, chunk 16"};
  Row rows[2];
  bool have[2] = {false, false};
  for (int m = 0; m < 2; ++m) {
    if (which != "both" && which != (m == 0 ? "dense" : "moe")) continue;
    rows[m] = run(m == 1, runs, clock, ctx);
    have[m] = true;
  }
  std::printf("\n| model | measure | RTF ours (cold) | RTF WeNet | ours / WeNet (target <= 0.5) |\n");
  std::printf("|---|---|---|---|---|\n");
  for (int m = 0; m < 2; ++m) {
    if (!have[m]) continue;
    for (int c = 0; c < 4; ++c) {
      std::printf("| tiny %s | %s | %.4f (%.4f) | %.4f | %.2fx |\n", m == 0 ? "dense" : "MoE", cols[c],
                  rows[m].warm[c], rows[m].cold[c], wenet[m][c], rows[m].warm[c] / wenet[m][c]);
    }
  }
  for (int m = 0; m < 2; ++m) {
    if (have[m]) {
      std::printf("# tiny %s: %.1fM parameters; mean CTC n-best length %zu (full) / %zu (chunk 16) tokens\n",
                  m == 0 ? "dense" : "MoE", rows[m].params_total / 1e6, rows[m].nbest_len[0],
                  rows[m].nbest_len[1]);
    }
  }
  if (have[0] && have[1]) {
    std::printf(
        "\n| measure | MoE / dense RTF ours (target <= 1.2) | MoE / dense RTF WeNet |\n|---|---|---|\n");
    for (int c = 0; c < 4; ++c) {
      std::printf("| %s | %.2f | %.2f |\n", cols[c], rows[1].warm[c] / rows[0].warm[c],
                  wenet[1][c] / wenet[0][c]);
    }
  }
  return 0;
}

}  // namespace
}  // namespace moeasr

int main(int argc, char** argv) {
  return moeasr::main_impl(argc, argv);
}
