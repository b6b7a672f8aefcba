// tests/gpu/search_cuda_test.cc — recognition on the GPU against the CPU for a tiny U2++ MoE model
// (random weights, every FFN 4 experts top-2): the encoder output (full context and chunk 2), the CTC
// log-probs (with a blank penalty), the lean decoder's teacher-forced log-probs for both decoders, and
// the four WeNet searches' results (ctc_greedy_search, ctc_prefix_beam_search, attention,
// attention_rescoring with the right decoder). Tolerances: encoder output and log-probs 1e-4
// relative norm (fp32 on both sides, different reduction orders); the searches must give the same
// tokens (their top scores differ by far more than the numeric differences for this model; a failure
// there with passing log-probs would point at a near tie, to be checked before blaming a kernel).
// Skips without a GPU (label gpu).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <vector>

#include "kernels/cuda/cuda_context.h"
#include "kernels/ops.h"
#include "model/encoder.h"
#include "model/expert_dispatch.h"
#include "model/search.h"
#include "tests/common/gradcheck.h"
#include "tests/common/tiny_models.h"
#include "tests/gpu/gpu_test_util.h"

namespace moeasr {
namespace {

ModelConfig tiny_moe_config() {
  ModelConfig c = testing::tiny_moe_model_config(2);
  c.encoder.causal = true;
  c.reverse_weight = ModelConfig{}.reverse_weight;  // this test's model keeps the default
  return c;
}

struct DecodeOutputs {
  std::vector<float> encoder_out, ctc_log_probs, left_log_probs, right_log_probs;
  std::vector<DecodeResult> results;
};

const std::vector<DecodeMode> kModes = {DecodeMode::kCtcGreedySearch, DecodeMode::kCtcPrefixBeamSearch,
                                        DecodeMode::kAttention, DecodeMode::kAttentionRescoring};

// One utterance through the encoder and every search, on whatever ctx says; `place` moves the weights
// to the device first (GPU run).
DecodeOutputs decode(const ModelConfig& config, const ParameterTable& table, const std::vector<float>& feats,
                     int32_t frames, int64_t chunk, RunContext ctx, Arena* params) {
  ParameterStore<float> store(table);
  initialize_parameters(&store, 11);
  if (params != nullptr) store.place_on(params, ctx);
  LocalExpertDispatcher<float> dispatcher;
  SearchModel<float> search(config, &store, &dispatcher);
  const float* pe_table = params != nullptr ? search.place_tables(params, ctx) : search.positional_table();
  EncoderParams<float> encoder = bind_encoder(&store, config, ExpertLayout{}, pe_table);

  float* device_feats = activation_alloc<float>(ctx, static_cast<int64_t>(feats.size()));
  op::copy_host_to_device(device_feats, feats.data(), static_cast<int64_t>(feats.size() * sizeof(float)),
                          ctx);
  const int32_t lengths[1] = {frames};
  EncoderSaved<float> saved;
  StepRng rng;  // eval: no dropout
  encoder_forward(&saved, static_cast<const float*>(device_feats), lengths, encoder, &dispatcher, chunk, -1,
                  false, 1, frames, rng, ctx);
  const int64_t l = saved.length, d = config.encoder.output_size, v = config.vocab_size;
  DecodeOutputs out;
  const float* enc = host_mirror(ctx, static_cast<const float*>(saved.out), l * d);
  out.encoder_out.assign(enc, enc + l * d);

  float* lp = activation_alloc<float>(ctx, l * v);
  search.ctc_log_probs(lp, saved.out, l, ctx, /*blank_penalty=*/0.5, 0);
  const float* host_lp = host_mirror(ctx, static_cast<const float*>(lp), l * v);
  out.ctc_log_probs.assign(host_lp, host_lp + l * v);

  // Teacher forcing of two sequences through both decoders.
  const int64_t steps = 4;
  const std::vector<int32_t> tokens = {search.sos(), 3, 5, 7, search.sos(), 1, 2, search.eos()};
  for (bool right : {false, true}) {
    float* dlp = activation_alloc<float>(ctx, 2 * steps * v);
    decoder_log_probs(dlp, tokens.data(), static_cast<const float*>(saved.out),
                      right ? search.right() : search.left(), &dispatcher, 2, steps, l, ctx);
    const float* host = host_mirror(ctx, static_cast<const float*>(dlp), 2 * steps * v);
    (right ? out.right_log_probs : out.left_log_probs).assign(host, host + 2 * steps * v);
  }

  SearchOptions options;
  options.beam_size = 4;
  options.reverse_weight = 0.3;
  options.ctc_weight = 0.5;
  out.results = decode_utterance(search, kModes, static_cast<const float*>(saved.out), l, options, ctx);
  return out;
}

void expect_gpu_decoding_matches_cpu(int64_t chunk) {
  SCOPED_TRACE(::testing::Message() << "chunk " << chunk);
  ModelConfig config = tiny_moe_config();
  ParameterTable table = build_u2pp_parameter_table(config, ExpertLayout{});
  const int32_t frames = 63;
  std::vector<float> feats = testing::random_floats(int64_t(frames) * config.input_dim, 5, -1.5f, 1.5f);

  Arena cpu_arena("activations", 1 << 20, Arena::Growth::kGrowable);
  RunContext cpu = testing::cpu_test_context();
  cpu.activations = &cpu_arena;
  DecodeOutputs want = decode(config, table, feats, frames, chunk, cpu, nullptr);

  CudaContext cuda(0);
  RunContext gpu = testing::gpu_test_context();
  cuda.fill(&gpu);
  DecodeOutputs got;
  {
    testing::DeviceArenas arenas(int64_t(16) << 20, int64_t(256) << 20, &gpu);
    got = decode(config, table, feats, frames, chunk, gpu, arenas.params());
    cuda.synchronize();
  }

  EXPECT_LE(testing::relative_norm_error(got.encoder_out, want.encoder_out), 1e-4) << "encoder output";
  EXPECT_LE(testing::relative_norm_error(got.ctc_log_probs, want.ctc_log_probs), 1e-4) << "CTC log-probs";
  EXPECT_LE(testing::relative_norm_error(got.left_log_probs, want.left_log_probs), 1e-4) << "left decoder";
  EXPECT_LE(testing::relative_norm_error(got.right_log_probs, want.right_log_probs), 1e-4) << "right decoder";
  ASSERT_EQ(got.results.size(), want.results.size());
  for (size_t i = 0; i < kModes.size(); ++i) {
    EXPECT_EQ(got.results[i].tokens, want.results[i].tokens) << decode_mode_name(kModes[i]);
  }
}

TEST(SearchCuda, FullContextDecodingMatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  expect_gpu_decoding_matches_cpu(-1);
}

TEST(SearchCuda, ChunkMaskDecodingMatchesCpu) {
  MOEASR_SKIP_WITHOUT_GPU();
  expect_gpu_decoding_matches_cpu(2);
}

}  // namespace
}  // namespace moeasr
