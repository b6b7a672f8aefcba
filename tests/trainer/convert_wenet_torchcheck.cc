// tests/trainer/convert_wenet_torchcheck.cc — the converter end to end (label torch, built with
// -DMOEASR_TORCH_TESTS=ON, i.e. `scripts/test.sh --with-torch`): a WeNet-named PyTorch checkpoint and
// its train.yaml, converted by tools/convert_wenet.py, load into moe-asr and give the PyTorch model's
// loss parts on the same batch (1e-5 relative).
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "model/expert_dispatch.h"
#include "model/u2pp_model.h"
#include "tests/common/gradcheck.h"
#include "tests/common/h5_reader.h"
#include "trainer/model_weights.h"
#include "trainer/wenet_yaml.h"

namespace moeasr {
namespace {

TEST(ConvertWenet, ConvertedCheckpointGivesTheSameLoss) {
  const std::string dir = MOEASR_CONVERT_CASE_DIR;
  StatusOr<ModelConfig> config = model_config_from_wenet_yaml(dir + "/train.yaml");
  ASSERT_TRUE(config.ok()) << config.status().to_string();
  ParameterTable table = build_u2pp_parameter_table(config.value(), ExpertLayout{});
  ParameterStore<float> store(table);
  Status loaded = load_model_weights(dir + "/model.h5", &store);
  ASSERT_TRUE(loaded.ok()) << loaded.to_string();

  testing::H5Reader h5(dir + "/case.h5");
  std::vector<int64_t> shape = h5.shape("/feats");
  std::vector<double> feats64 = h5.read_doubles("/feats");
  std::vector<float> feats(feats64.begin(), feats64.end());
  std::vector<int32_t> feat_lengths = h5.read_ints("/feats_lengths"), text = h5.read_ints("/text"),
                       text_lengths = h5.read_ints("/text_lengths");
  U2ppBatch<float> batch{feats.data(), feat_lengths.data(), text.data(), text_lengths.data(), shape[0],
                         shape[1],     h5.shape("/text")[1]};
  LocalExpertDispatcher<float> dispatcher;
  U2ppModel<float> model(config.value(), &store, &dispatcher, ExpertLayout{});
  Arena arena("activations", 1 << 20, Arena::Growth::kGrowable);
  RunContext ctx = testing::cpu_test_context();
  ctx.activations = &arena;
  U2ppForwardOptions options;
  options.training = false;
  options.chunk_size =
      config.value().encoder.static_chunk_size > 0 ? config.value().encoder.static_chunk_size : -1;
  U2ppLoss loss = model.forward(batch, options, StepRng{}, ctx);
  for (auto [name, ours] : {std::pair<const char*, double>{"total", loss.total},
                            {"ctc", loss.ctc},
                            {"att_l2r", loss.att_l2r},
                            {"att_r2l", loss.att_r2l}}) {
    double want = h5.read_scalar(std::string("/loss/") + name);
    EXPECT_LT(std::fabs(ours - want) / std::fabs(want), 1e-5)
        << name << ": " << ours << " vs PyTorch " << want;
  }
}

}  // namespace
}  // namespace moeasr
