// tests/parallel/u2pp_parallel_mpi_test.cc — the whole U2++ MoE model (model/u2pp_model.h) with
// expert parallelism inside data parallelism, under mpirun -np 2 and -np 4. Each rank builds the
// one-process reference (EP = 1, LocalExpertDispatcher) on the concatenated global batch itself and
// compares, for every layout the world allows (EP = world, EP = 2 × DP = 2 on 4 ranks, EP = 1 = pure
// DP; float, <= 1e-5 relative):
//   - the loss: the sum over ranks of each rank's loss normalised by the global batch size
//     (global_batch_size -> options.batch_normalizer) equals the reference loss;
//   - every gradient after sync_gradients (dense over the world, experts over the EDP group), by
//     WeNet name;
//   - the distributed gradient norm (unique parameters) equals the reference norm;
//   - one full update (distributed clipping + Adam) gives the same parameters, by name;
//   - the per-expert load statistics (reduce_expert_load) equal the reference's routed counts.
// Tiny shapes (d 16, 2 encoder layers, 1 + 1 decoder layers, 4 experts top-2), dropout 0 (the expert
// dropout mask follows the holder's row order), LayerNorm in the conv module (BatchNorm statistics
// are per rank in WeNet's DDP and would differ from one process's).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/cpu/optimizer.h"
#include "model/expert_dispatch.h"
#include "model/u2pp_model.h"
#include "parallel/expert_load.h"
#include "parallel/grad_sync.h"
#include "parallel/groups.h"
#include "parallel/mpi_expert_dispatcher.h"
#include "tests/common/gradcheck.h"
#include "tests/parallel/mpi_test_env.h"
#include "trainer/optimizer.h"

namespace moeasr {
namespace {

const bool kRegistered = testing::register_mpi_environment();

using testing::MpiTest;
using testing::world_rank;
using testing::world_size;

ModelConfig tiny_moe_config() {
  ModelConfig c;
  c.input_dim = 20;
  c.vocab_size = 12;
  c.encoder.output_size = 16;
  c.encoder.attention_heads = 2;
  c.encoder.num_blocks = 2;
  c.encoder.cnn_module_kernel = 3;
  c.encoder.causal = true;
  c.encoder.cnn_module_norm = ConvNormType::kLayerNorm;
  c.encoder.ffn.mlp_type = MlpType::kMoe;
  c.encoder.ffn.linear_units = 32;
  c.encoder.ffn.n_expert = 4;
  c.encoder.ffn.n_expert_activated = 2;
  c.encoder.dropout_rate = c.encoder.positional_dropout_rate = c.encoder.attention_dropout_rate = 0.0;
  c.decoder.attention_heads = 2;
  c.decoder.num_blocks = 1;
  c.decoder.r_num_blocks = 1;
  c.decoder.ffn = c.encoder.ffn;
  c.decoder.ffn.activation = ActivationType::kRelu;
  c.decoder.dropout_rate = c.decoder.positional_dropout_rate = 0.0;
  c.decoder.self_attention_dropout_rate = c.decoder.src_attention_dropout_rate = 0.0;
  return c;
}

struct HostBatch {
  std::vector<float> feats;
  std::vector<int32_t> feat_lengths, text, text_lengths;
  int64_t batch = 0, frames = 0, max_text = 0;
  U2ppBatch<float> view() const {
    return {feats.data(), feat_lengths.data(), text.data(), text_lengths.data(), batch, frames, max_text};
  }
  HostBatch slice(int64_t begin, int64_t end, int64_t input_dim) const {
    HostBatch s;
    s.batch = end - begin;
    s.frames = frames;
    s.max_text = max_text;
    s.feats.assign(feats.begin() + begin * frames * input_dim, feats.begin() + end * frames * input_dim);
    s.feat_lengths.assign(feat_lengths.begin() + begin, feat_lengths.begin() + end);
    s.text.assign(text.begin() + begin * max_text, text.begin() + end * max_text);
    s.text_lengths.assign(text_lengths.begin() + begin, text_lengths.begin() + end);
    return s;
  }
};

// 2 utterances per rank, varied lengths, identical on every rank.
HostBatch make_global_batch(int world, int64_t input_dim) {
  HostBatch h;
  h.batch = 2 * world;
  h.frames = 31;
  h.max_text = 4;
  h.feats = testing::random_floats(h.batch * h.frames * input_dim, 21, -1.5f, 1.5f);
  for (int64_t b = 0; b < h.batch; ++b) {
    h.feat_lengths.push_back(static_cast<int32_t>(31 - (5 * b) % 13));
    const int32_t len = static_cast<int32_t>(2 + b % 3);
    h.text_lengths.push_back(len);
    for (int64_t t = 0; t < h.max_text; ++t)
      h.text.push_back(t < len ? static_cast<int32_t>(1 + (3 * b + 5 * t) % 10) : 0);
  }
  return h;
}

// |a - b| / max(|b|, floor): relative error, except for tensors whose exact gradient is 0 (e.g. the
// key biases of attention: softmax is shift invariant), where float noise is compared with `floor`.
double rel_error(const float* a, const float* b, int64_t n, double floor) {
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    norm += double(b[i]) * b[i];
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), floor);
}

CommunicatorOptions test_options() {
  CommunicatorOptions o;
  o.timeout = std::chrono::milliseconds(30000);
  o.on_error = CollectiveErrorPolicy::kReturnStatus;
  return o;
}

class U2ppParallelMpiTest : public MpiTest {};

TEST_F(U2ppParallelMpiTest, EveryLayoutMatchesOneProcessLossGradientsNormUpdateAndLoad) {
  const int world = world_size(), me = world_rank();
  const ModelConfig config = tiny_moe_config();
  const HostBatch global = make_global_batch(world, config.input_dim);
  U2ppForwardOptions options;
  options.chunk_size = 4;
  StepRng rng;
  AdamOptions adam_options;
  adam_options.lr = 1e-3;
  adam_options.warmup_steps = 10;
  adam_options.grad_clip = 1.0;  // below the initial norm: clipping is active
  // Adam's first step is lr * g / (|g| + eps): with PyTorch's eps 1e-8 a gradient that is exactly 0
  // in exact arithmetic (attention key biases) moves by float noise / 1e-8; 1e-6 keeps that below
  // the tolerance without changing the update of every other element.
  adam_options.eps = 1e-6;

  // Reference: one process, EP = 1, the whole batch (normalised by its own batch size = global).
  ParameterTable ref_table = build_u2pp_parameter_table(config, ExpertLayout{});
  ParameterStore<float> ref_store(ref_table);
  initialize_parameters(&ref_store, 3);
  const ParameterTable& initial_table = ref_table;
  ParameterStore<float> initial(ref_table);
  initialize_parameters(&initial, 3);
  LocalExpertDispatcher<float> local;
  U2ppModel<float> ref_model(config, &ref_store, &local, ExpertLayout{});
  Arena ref_arena("ref", 1 << 22, Arena::Growth::kGrowable);
  RunContext ctx = testing::cpu_test_context();
  ctx.activations = &ref_arena;
  const U2ppLoss ref_loss = ref_model.forward(global.view(), options, rng, ctx);
  ref_model.backward(1.0, rng, ctx);
  const std::vector<std::vector<int64_t>> ref_load = ref_model.expert_load(ctx);
  std::vector<GradBuffer<float>> ref_buffers;
  for (int r : {0, 1}) ref_buffers.push_back({ref_store.grads[r].data(), int64_t(ref_store.grads[r].size())});
  const double ref_norm = global_grad_norm(ref_buffers.data(), 2, ctx);
  ASSERT_GT(ref_norm, adam_options.grad_clip) << "the test wants clipping to be active";
  AdamOptimizer<float> ref_adam(&ref_store, adam_options);
  ASSERT_FALSE(ref_adam.step(ctx).skipped);

  for (int64_t ep = 1; ep <= world; ++ep) {
    if (world % ep != 0 || config.encoder.ffn.n_expert % ep != 0) continue;
    SCOPED_TRACE("EP " + std::to_string(ep) + " x DP " + std::to_string(world / ep));
    auto groups = create_mpi_process_groups(ep, moe_expert_counts(config), test_options());
    ASSERT_TRUE(groups.ok()) << groups.status().to_string();
    ProcessGroups& g = groups.value();
    const ExpertLayout layout = g.layout.expert_layout();
    ParameterTable table = build_u2pp_parameter_table(config, layout);
    ParameterStore<float> store(table);
    initialize_parameters(&store, 3);
    MpiExpertDispatcher<float> dispatcher(g.ep.get());
    U2ppModel<float> model(config, &store, &dispatcher, layout);
    Arena arena("act", 1 << 22, Arena::Growth::kGrowable);
    RunContext pctx = testing::cpu_test_context();
    pctx.activations = &arena;

    const HostBatch mine = global.slice(2 * me, 2 * me + 2, config.input_dim);
    auto global_batch = global_batch_size(mine.batch, g.world.get());
    ASSERT_TRUE(global_batch.ok());
    ASSERT_EQ(global_batch.value(), global.batch);
    U2ppForwardOptions popt = options;
    popt.batch_normalizer = static_cast<double>(global_batch.value());
    const U2ppLoss loss = model.forward(mine.view(), popt, rng, pctx);
    model.backward(1.0, rng, pctx);

    // Loss parts summed over the world.
    double parts[4] = {loss.total, loss.ctc, loss.att_l2r, loss.att_r2l};
    ASSERT_TRUE(g.world->all_reduce(parts, 4, DType::f64, ReduceOp::kSum).ok());
    EXPECT_NEAR(parts[0], ref_loss.total, 1e-5 * std::fabs(ref_loss.total));
    EXPECT_NEAR(parts[1], ref_loss.ctc, 1e-5 * std::fabs(ref_loss.ctc));
    EXPECT_NEAR(parts[2], ref_loss.att_l2r, 1e-5 * std::fabs(ref_loss.att_l2r));
    EXPECT_NEAR(parts[3], ref_loss.att_r2l, 1e-5 * std::fabs(ref_loss.att_r2l));

    // Load statistics: the world's routed rows per expert are the reference's.
    auto stats = reduce_expert_load(model.expert_load(pctx), g.ep.get(), g.edp.get());
    ASSERT_TRUE(stats.ok()) << stats.status().to_string();
    ASSERT_EQ(stats.value().size(), ref_load.size());
    for (size_t l = 0; l < ref_load.size(); ++l) {
      EXPECT_EQ(stats.value()[l].tokens_per_expert, ref_load[l]) << "MoE layer " << l;
      int64_t rows = 0;
      for (int64_t r : stats.value()[l].rows_per_ep_rank) rows += r;
      EXPECT_LE(rows, stats.value()[l].total);
      EXPECT_GT(stats.value()[l].total, 0);
    }
    if (me == 0 && ep == world)
      std::printf("[ load ] EP %lld\n%s\n", (long long)ep, format_expert_load(stats.value()).c_str());

    // Gradients after the sync, by name.
    GradSyncOptions sync_options;
    sync_options.bucket_bytes = 4096;  // several buckets per region
    ASSERT_TRUE(sync_gradients(&store, g.world.get(), g.edp.get(), sync_options).ok());
    int checked = 0;
    for (const ParamEntry& e : table.entries()) {
      if (e.region == ParamRegion::kBuffer) continue;
      const ParamEntry& r = ref_table.at(e.name);
      // Expert grads against the reference before its update: ref_store grads are still there
      // (Adam does not zero them), scaled by the clipping coefficient.
      std::vector<float> want(ref_store.grad(r), ref_store.grad(r) + r.numel);
      const float clip = static_cast<float>(adam_options.grad_clip / (ref_norm + 1e-6));
      for (float& w : want) w /= clip;
      EXPECT_LE(rel_error(store.grad(e), want.data(), e.numel, 1e-4 * ref_norm), 2e-5) << e.name;
      ++checked;
    }
    EXPECT_GT(checked, 50);

    // Norm over unique parameters, then clip and update.
    auto norm = clip_grad_norm_distributed(&store, adam_options.grad_clip, g.ep.get(), pctx);
    ASSERT_TRUE(norm.ok());
    EXPECT_NEAR(norm.value(), ref_norm, 1e-5 * ref_norm);
    AdamOptions local_adam = adam_options;
    local_adam.grad_clip = 0;  // clipped above with the global norm
    AdamOptimizer<float> adam(&store, local_adam);
    ASSERT_FALSE(adam.step(pctx).skipped);
    // The updated parameters, tensor by tensor, and the update itself against the reference's.
    double worst = 0, worst_update = 0;
    std::string worst_name, worst_update_name;
    for (const ParamEntry& e : table.entries()) {
      if (e.region == ParamRegion::kBuffer) continue;
      const ParamEntry& r = ref_table.at(e.name);
      const double err = rel_error(store.value(e), ref_store.value(r), e.numel, 0.0);
      if (err > worst) {
        worst = err;
        worst_name = e.name;
      }
      std::vector<float> step(e.numel), ref_step(e.numel);
      for (int64_t i = 0; i < e.numel; ++i) {
        step[i] = store.value(e)[i] - initial.value(initial_table.at(e.name))[i];
        ref_step[i] = ref_store.value(r)[i] - initial.value(initial_table.at(e.name))[i];
      }
      // Floor: a tensor whose exact gradient is 0 moves by noise / eps only.
      const double update_err = rel_error(step.data(), ref_step.data(), e.numel, 0.1 * adam_options.lr);
      if (update_err > worst_update) {
        worst_update = update_err;
        worst_update_name = e.name;
      }
    }
    if (me == 0) {
      std::printf("[ update ] EP %lld: worst parameter error %.2e (%s), worst update error %.2e (%s)\n",
                  (long long)ep, worst, worst_name.c_str(), worst_update, worst_update_name.c_str());
    }
    EXPECT_LE(worst, 1e-5) << "worst parameter " << worst_name;
    EXPECT_LE(worst_update, 1e-3) << "worst update " << worst_update_name;
  }
}

}  // namespace
}  // namespace moeasr
