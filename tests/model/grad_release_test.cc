// tests/model/grad_release_test.cc — U2ppModel::backward's GradRangeReady (what the trainer overlaps
// the gradient all-reduce with): on a tiny MoE model (dense and MoE layers, both decoders), for the
// full loss and for the CTC-only and attention-only weights,
//   - the ranges tile each trainable region exactly once, and come from the back of the parameter
//     table to the front (decoders and CTC head first, the front end last);
//   - a range's gradients are final when it is released: a copy taken inside the callback equals the
//     gradients after the whole backward, bit for bit (so an all-reduce started there sums the right
//     numbers);
//   - passing the hook changes nothing in the gradients.
#include <gtest/gtest.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "core/arena.h"
#include "model/expert_dispatch.h"
#include "model/parameter_table.h"
#include "model/u2pp_model.h"
#include "tests/common/gradcheck.h"
#include "tests/common/tiny_models.h"

namespace moeasr {
namespace {

ModelConfig tiny_config(double ctc_weight) {
  ModelConfig c = testing::tiny_moe_model_config(3);
  c.ctc_weight = ctc_weight;
  return c;
}

struct Release {
  ParamRegion region;
  int64_t begin, end;
  std::vector<float> grads_then;  // the range's gradients when it was released
};

// One forward + backward; `releases` null: no hook.
std::vector<float> step(const ModelConfig& config, const ParameterTable& table,
                        std::vector<Release>* releases, std::vector<float>* expert_grads) {
  ParameterStore<float> store(table);
  initialize_parameters(&store, 3);
  LocalExpertDispatcher<float> dispatcher;
  U2ppModel<float> model(config, &store, &dispatcher, ExpertLayout{});
  Arena arena("activations", 1 << 20, Arena::Growth::kGrowable);
  RunContext ctx = testing::cpu_test_context();
  ctx.activations = &arena;
  std::vector<float> feats = testing::random_floats(3 * 40 * config.input_dim, 8, -1.5f, 1.5f);
  std::vector<int32_t> feat_lengths = {40, 33, 21}, text = {1, 2, 3, 4, 5, 0, 6, 7, 0},
                       text_lengths = {3, 2, 2};
  U2ppBatch<float> batch{feats.data(), feat_lengths.data(), text.data(), text_lengths.data(), 3, 40, 3};
  StepRng rng;
  rng.training = true;
  rng.base.seed = 5;
  model.forward(batch, U2ppForwardOptions{}, rng, ctx);
  GradRangeReady hook;
  if (releases != nullptr) {
    hook = [&](ParamRegion region, int64_t begin, int64_t end) {
      const std::vector<float>& g = store.grads[static_cast<int>(region)];
      releases->push_back(
          Release{region, begin, end, std::vector<float>(g.begin() + begin, g.begin() + end)});
    };
  }
  model.backward(1.0, rng, ctx, hook);
  *expert_grads = store.grads[static_cast<int>(ParamRegion::kExpert)];
  return store.grads[static_cast<int>(ParamRegion::kDense)];
}

TEST(GradRelease, RangesTileTheRegionsBackToFrontAndAreFinalWhenReleased) {
  for (double ctc_weight : {0.3, 1.0, 0.0}) {
    SCOPED_TRACE(::testing::Message() << "ctc_weight " << ctc_weight);
    const ModelConfig config = tiny_config(ctc_weight);
    const ParameterTable table = build_u2pp_parameter_table(config, ExpertLayout{});
    std::vector<Release> releases;
    std::vector<float> expert_hooked, expert_plain;
    const std::vector<float> dense_hooked = step(config, table, &releases, &expert_hooked);
    const std::vector<float> dense_plain = step(config, table, nullptr, &expert_plain);
    EXPECT_EQ(dense_hooked, dense_plain);
    EXPECT_EQ(expert_hooked, expert_plain);
    // 3 layers + the front end + the back: 5 groups, each with dense tensors; MoE layers have experts.
    for (ParamRegion region : {ParamRegion::kDense, ParamRegion::kExpert}) {
      const std::vector<float>& final_grads = region == ParamRegion::kDense ? dense_hooked : expert_hooked;
      std::vector<std::pair<int64_t, int64_t>> ranges;
      for (const Release& r : releases) {
        if (r.region != region) continue;
        EXPECT_LT(r.begin, r.end);
        if (!ranges.empty()) {
          EXPECT_EQ(r.end, ranges.back().first) << "released out of back-to-front order";
        }
        ranges.emplace_back(r.begin, r.end);
        const std::vector<float> now(final_grads.begin() + r.begin, final_grads.begin() + r.end);
        EXPECT_EQ(r.grads_then, now) << param_region_name(region) << " [" << r.begin << ", " << r.end
                                     << ") changed after its release";
      }
      ASSERT_FALSE(ranges.empty());
      EXPECT_EQ(ranges.front().second, table.region_numel(region));
      EXPECT_EQ(ranges.back().first, 0);
      if (region == ParamRegion::kDense) {
        EXPECT_EQ(ranges.size(), 5u);
      }
      // The released gradients are not all zero (the comparison above is not vacuous).
      double norm = 0;
      for (float g : final_grads) norm += double(g) * g;
      EXPECT_GT(norm, 0.0);
    }
  }
}

}  // namespace
}  // namespace moeasr
