// bench/gpu/rtf_gpu.cc — issue 9 benchmark (c): real-time factor of U2++ recognition on the GPU, batch
// 1, one 10 s utterance (1000 fbank frames, random values), random weights (the default init), at the
// Dense-225M and MoE-1B shapes (configs/dense_225m.yaml, moe_1b.yaml; vocabulary 5000): encoder (full
// context, or chunk 16 through the chunk mask in one pass, as WeNet's recognize.py with
// decoding_chunk_size 16), CTC head, prefix beam search (beam 10, on the host) and attention rescoring
// (ctc_weight 0.3, reverse_weight 0.5: both decoders). RTF = seconds / 10 s, the median of --runs warm
// runs. Prints the MoE-1B / Dense-225M RTF ratio (target <= 1.2; WeNet on the H200: 1.75 full context,
// 1.91 chunk 16) and ours against WeNet's RTF (anchors.md: 0.0448 / 0.0435 Dense-225M, 0.0784 / 0.0833
// MoE-1B). --precision bf16 (default, as WeNet's bf16 autocast): the matrix products on bf16 copies of
// the fp32 operands. Asserts nothing; exits 0 with a message when no GPU is usable.
//
//   build-gpu/bench/bench_gpu_rtf_gpu [--runs 5] [--precision bf16|fp32]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/philox.h"
#include "kernels/cuda/cuda_context.h"
#include "kernels/cuda/device.h"
#include "kernels/ops.h"
#include "model/encoder.h"
#include "model/expert_dispatch.h"
#include "model/search.h"
#include "trainer/train_config.h"

namespace moeasr {
namespace {

struct Peer {
  const char* name;
  double wenet_rtf_full, wenet_rtf_chunk16;
};

const Peer kPeers[] = {{"dense_225m", 0.0448, 0.0435}, {"moe_1b", 0.0784, 0.0833}};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// RTF (full context, chunk 16) of one model, or negative on a config error (printed).
bool run(const std::string& name, int runs, bool bf16_matmul, CudaContext* cuda, double rtf[2]) {
  auto loaded = load_train_config("configs/" + name + ".yaml", {});
  if (!loaded.ok()) {
    std::printf("%s: %s\n", name.c_str(), loaded.status().to_string().c_str());
    return false;
  }
  const ModelConfig config = model_config_from_train_config(loaded.value());
  ParameterTable table = build_u2pp_parameter_table(config, ExpertLayout{});
  ParameterStore<float> store(table);
  initialize_parameters(&store, 1);
  int64_t param_elems = 0;
  for (int r = 0; r < kNumParamRegions; ++r)
    param_elems += int64_t(store.values[r].size() + store.grads[r].size());
  const int64_t param_bytes = param_elems * int64_t(sizeof(float)) + (int64_t(64) << 20);
  DeviceMemoryBlock param_block("parameters", param_bytes);
  const int64_t activation_bytes =
      std::min<int64_t>(cuda_free_bytes() - (int64_t(2) << 30), int64_t(32) << 30);
  DeviceMemoryBlock activation_block("activations", activation_bytes);
  Arena params("device parameters", param_block.data(), param_bytes, Device::cuda);
  Arena activations("device activations", activation_block.data(), activation_bytes, Device::cuda);
  Arena host("host metadata", 1 << 20, Arena::Growth::kGrowable);
  RunContext ctx;
  ctx.num_threads = 1;
  ctx.bf16_matmul = bf16_matmul;
  cuda->fill(&ctx);
  ctx.activations = &activations;
  ctx.host_metadata = &host;
  store.place_on(&params, ctx);
  LocalExpertDispatcher<float> dispatcher;
  SearchModel<float> search(config, &store, &dispatcher);
  const float* pe_table = search.place_tables(&params, ctx);
  EncoderParams<float> encoder = bind_encoder(&store, config, ExpertLayout{}, pe_table);

  const int32_t frames = 1000;
  RngKey key;
  key.seed = 9;
  PhiloxStream s = philox_stream(key);
  std::vector<float> feats(size_t(frames) * size_t(config.input_dim));
  for (size_t i = 0; i < feats.size(); ++i) feats[i] = 2.0f * philox_uniform(s, i) - 1.0f;
  const int32_t lengths[1] = {frames};
  SearchOptions options;
  options.beam_size = 10;
  options.ctc_weight = 0.3;
  options.reverse_weight = 0.5;
  const std::vector<DecodeMode> modes = {DecodeMode::kAttentionRescoring};
  using Clock = std::chrono::steady_clock;
  for (int c = 0; c < 2; ++c) {
    const int64_t chunk = c == 0 ? -1 : 16;
    std::vector<double> times;
    for (int r = 0; r <= runs; ++r) {  // run 0 warms up (cuBLASLt heuristics, cuDNN plans)
      cuda->synchronize();
      const auto start = Clock::now();
      activations.reset();
      host.reset();
      float* device_feats = activations.allocate_array<float>(int64_t(feats.size()));
      op::copy_host_to_device(device_feats, feats.data(), int64_t(feats.size() * sizeof(float)), ctx);
      EncoderSaved<float> saved;
      StepRng rng;
      encoder_forward(&saved, static_cast<const float*>(device_feats), lengths, encoder, &dispatcher, chunk,
                      -1, false, 1, frames, rng, ctx);
      decode_utterance(search, modes, static_cast<const float*>(saved.out), saved.length, options, ctx);
      cuda->synchronize();
      if (r > 0) times.push_back(std::chrono::duration<double>(Clock::now() - start).count());
    }
    rtf[c] = median(times) / 10.0;
  }
  return true;
}

int main_impl(int argc, char** argv) {
  int runs = 5;
  std::string precision = "bf16";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--runs") == 0) {
      runs = std::max(1, std::atoi(argv[i + 1]));
    } else if (std::strcmp(argv[i], "--precision") == 0 &&
               (std::strcmp(argv[i + 1], "bf16") == 0 || std::strcmp(argv[i + 1], "fp32") == 0)) {
      precision = argv[i + 1];
    } else {
      std::fprintf(stderr, "usage: %s [--runs N] [--precision bf16|fp32]\n", argv[0]);
      return 2;
    }
  }
  std::string why;
  if (cuda_usable_device_count(&why) == 0) {
    std::printf("bench_gpu_rtf_gpu: no usable CUDA device (%s); nothing measured\n", why.c_str());
    return 0;
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  CudaContext cuda(0);
  std::printf(
      "RTF on the GPU, batch 1, one 10 s utterance, attention rescoring (beam 10), fp32 activations, "
      "median of %d runs\n",
      runs);
  std::printf("%-11s %10s %10s %14s %14s\n", "model", "RTF_full", "RTF_chunk16", "vs_WeNet_full",
              "vs_WeNet_chunk16");
  double rtf[2][2] = {{0, 0}, {0, 0}};
  bool ok[2] = {false, false};
  for (int m = 0; m < 2; ++m) {
    ok[m] = run(kPeers[m].name, runs, precision == "bf16", &cuda, rtf[m]);
    if (!ok[m]) continue;
    std::printf("%-11s %10.4f %10.4f %13.2fx %13.2fx\n", kPeers[m].name, rtf[m][0], rtf[m][1],
                rtf[m][0] / kPeers[m].wenet_rtf_full, rtf[m][1] / kPeers[m].wenet_rtf_chunk16);
  }
  if (ok[0] && ok[1]) {
    std::printf("MoE-1B / Dense-225M RTF: full %.2fx, chunk 16 %.2fx (target <= 1.2x; WeNet 1.75x / 1.91x)\n",
                rtf[1][0] / rtf[0][0], rtf[1][1] / rtf[0][1]);
  }
  return 0;
}

}  // namespace
}  // namespace moeasr

int main(int argc, char** argv) {
  return moeasr::main_impl(argc, argv);
}
