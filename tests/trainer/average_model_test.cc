// tests/trainer/average_model_test.cc — checkpoint averaging (trainer/average_model.h) and the
// `moe-asr average_model` command. Checkpoint k stores q(name, i) + offset_k in every tensor (buffers
// such as BatchNorm running statistics included), with q a multiple of 1/8, so every mean is exact:
//   - the last N by step: the mean equals q + mean(offsets) exactly, for every tensor and every
//     expert; the file loads under EP 1 and EP 2 layouts and carries the newest checkpoint's config;
//   - --val_best picks the N lowest cv losses from the sidecars (checkpoints without one skipped);
//   - step windows, --mode epoch, too few checkpoints, bad --num / --mode, incomplete checkpoints
//     ignored, different models refused naming the tensor, a corrupt tensor refused naming it;
//   - the CLI with WeNet's flags (exit code, output file, "best val" line) and a missing flag.
#include "trainer/average_model.h"

#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "model/parameter_table.h"
#include "parallel/single_process_communicator.h"
#include "trainer/checkpoint.h"
#include "trainer/model_weights.h"

namespace moeasr {
namespace {

namespace fs = std::filesystem;

ModelConfig tiny_moe_config(int64_t linear_units = 12) {
  ModelConfig c;
  c.input_dim = 8;
  c.vocab_size = 7;
  c.encoder.output_size = 8;
  c.encoder.attention_heads = 2;
  c.encoder.num_blocks = 2;
  c.encoder.cnn_module_kernel = 3;
  c.encoder.cnn_module_norm = ConvNormType::kBatchNorm;  // running statistics are averaged too
  c.encoder.ffn.mlp_type = MlpType::kMoe;
  c.encoder.ffn.linear_units = linear_units;
  c.encoder.ffn.n_expert = 4;
  c.encoder.ffn.n_expert_activated = 2;
  c.decoder.attention_heads = 2;
  c.decoder.num_blocks = 1;
  c.decoder.r_num_blocks = 1;
  c.decoder.ffn = c.encoder.ffn;
  return c;
}

// A multiple of 1/8 in [-16, 16] that depends on the name and element only.
float q(const std::string& name, int64_t i) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : name) h = (h ^ ch) * 0x100000001b3ull;
  h = (h ^ static_cast<uint64_t>(i)) * 0x9e3779b97f4a7c15ull;
  h ^= h >> 29;
  return static_cast<float>(static_cast<int64_t>(h % 257) - 128) / 8.0f;
}

struct CkptSpec {
  int64_t step = 0;
  float offset = 0;
  bool has_cv_loss = false;
  double cv_loss = 0;
  int64_t batches_in_epoch = 5;
  int64_t linear_units = 12;
};

class AverageModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/average_model_test_" + std::to_string(getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  void save(const CkptSpec& spec) {
    ParameterTable table = build_u2pp_parameter_table(tiny_moe_config(spec.linear_units), ExpertLayout{0, 1});
    ParameterStore<float> store(table);
    AdamOptimizer<float> adam(&store, AdamOptions{});
    for (const ParamEntry& e : table.entries()) {
      for (int64_t i = 0; i < e.numel; ++i) store.value(e)[i] = q(e.name, i) + spec.offset;
    }
    TrainingState state;
    state.step = spec.step;
    state.epoch = spec.step / 100;
    state.batches_in_epoch = spec.batches_in_epoch;
    state.config_yaml = "# config of step " + std::to_string(spec.step) + "\n";
    state.has_cv_loss = spec.has_cv_loss;
    state.cv_loss = spec.cv_loss;
    SingleProcessCommunicator world("world"), ep("ep0"), edp("edp0");
    StatusOr<std::string> r = save_checkpoint(dir_, state, store, adam, &world, &ep, &edp, 0);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
  }

  // The weights file holds q + mean_offset in every tensor, loaded under `layout`.
  void expect_average(const std::string& path, float mean_offset, ExpertLayout layout = ExpertLayout{0, 1}) {
    ParameterTable table = build_u2pp_parameter_table(tiny_moe_config(), layout);
    ParameterStore<float> store(table);
    Status s = load_model_weights(path, &store);
    ASSERT_TRUE(s.ok()) << s.to_string();
    for (const ParamEntry& e : table.entries()) {
      for (int64_t i = 0; i < e.numel; ++i) {
        ASSERT_EQ(store.value(e)[i], q(e.name, i) + mean_offset) << e.name << "[" << i << "]";
      }
    }
  }

  std::vector<int64_t> steps_of(const std::vector<CheckpointScore>& chosen) {
    std::vector<int64_t> steps;
    for (const CheckpointScore& c : chosen) steps.push_back(c.step);
    return steps;
  }

  AverageModelOptions options(int64_t num) const {
    AverageModelOptions o;
    o.src_path = dir_;
    o.dst_model = dir_ + "/avg.h5";
    o.num = num;
    return o;
  }

  std::string dir_;
};

TEST_F(AverageModelTest, LastNIsTheArithmeticMeanOfEveryTensor) {
  save({100, 1.0f});
  save({200, 2.0f});
  save({300, 6.0f});
  StatusOr<std::vector<CheckpointScore>> used = average_model(options(3));
  ASSERT_TRUE(used.ok()) << used.status().to_string();
  EXPECT_EQ(steps_of(used.value()), (std::vector<int64_t>{100, 200, 300}));
  expect_average(dir_ + "/avg.h5", 3.0f);
  expect_average(dir_ + "/avg.h5", 3.0f, ExpertLayout{1, 2});  // experts by global id
  StatusOr<std::string> config = read_model_weights_config(dir_ + "/avg.h5");
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config.value(), "# config of step 300\n");
}

TEST_F(AverageModelTest, LastNPicksTheNewestStepsAndIgnoresIncompleteOnes) {
  for (int64_t k = 1; k <= 5; ++k) save({10 * k, static_cast<float>(k)});
  save({60, 60.0f});
  fs::remove(dir_ + "/step_60/DONE");  // an unfinished save is never averaged
  StatusOr<std::vector<CheckpointScore>> used = average_model(options(2));
  ASSERT_TRUE(used.ok()) << used.status().to_string();
  EXPECT_EQ(steps_of(used.value()), (std::vector<int64_t>{40, 50}));
  expect_average(dir_ + "/avg.h5", 4.5f);
}

TEST_F(AverageModelTest, ValBestPicksTheLowestCvLosses) {
  const std::array<double, 5> losses = {5.0, 3.0, 4.0, 1.0, 2.0};
  for (int64_t k = 1; k <= 5; ++k)
    save({10 * k, static_cast<float>(k), true, losses[static_cast<size_t>(k - 1)]});
  save({60, 60.0f, /*has_cv_loss=*/false});  // no cv run before it: not a candidate
  AverageModelOptions o = options(2);
  o.val_best = true;
  StatusOr<std::vector<CheckpointScore>> used = average_model(o);
  ASSERT_TRUE(used.ok()) << used.status().to_string();
  EXPECT_EQ(steps_of(used.value()), (std::vector<int64_t>{40, 50}));  // losses 1.0, 2.0 in that order
  EXPECT_EQ(used.value()[0].cv_loss, 1.0);
  expect_average(dir_ + "/avg.h5", 4.5f);

  o.num = 3;  // 1.0, 2.0, 3.0 → steps 40, 50, 20
  used = average_model(o);
  ASSERT_TRUE(used.ok()) << used.status().to_string();
  EXPECT_EQ(steps_of(used.value()), (std::vector<int64_t>{40, 50, 20}));

  o.num = 6;  // only 5 have a cv loss
  used = average_model(o);
  EXPECT_EQ(used.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(used.status().message().find("only 5"), std::string::npos) << used.status().message();
}

TEST_F(AverageModelTest, WindowsModesAndBadOptions) {
  for (int64_t k = 1; k <= 5; ++k) {
    CkptSpec spec{100 * k, static_cast<float>(k)};
    spec.batches_in_epoch = k % 2 == 0 ? 0 : 7;  // steps 200 and 400 saved at an epoch boundary
    save(spec);
  }
  AverageModelOptions o = options(3);
  o.min_step = 200;
  o.max_step = 400;
  StatusOr<std::vector<CheckpointScore>> used = select_checkpoints_to_average(o);
  ASSERT_TRUE(used.ok()) << used.status().to_string();
  EXPECT_EQ(steps_of(used.value()), (std::vector<int64_t>{200, 300, 400}));

  o = options(2);
  o.mode = "epoch";
  used = select_checkpoints_to_average(o);
  ASSERT_TRUE(used.ok()) << used.status().to_string();
  EXPECT_EQ(steps_of(used.value()), (std::vector<int64_t>{200, 400}));
  o.min_epoch = 3;  // epoch = step / 100
  EXPECT_EQ(select_checkpoints_to_average(o).status().code(), StatusCode::kInvalidArgument);

  o = options(6);
  used = select_checkpoints_to_average(o);
  EXPECT_EQ(used.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(used.status().message().find("only 5"), std::string::npos) << used.status().message();
  o = options(0);
  EXPECT_NE(select_checkpoints_to_average(o).status().message().find("--num"), std::string::npos);
  o = options(2);
  o.mode = "sometimes";
  EXPECT_NE(select_checkpoints_to_average(o).status().message().find("--mode"), std::string::npos);
  o = options(2);
  o.src_path = dir_ + "/nowhere";
  EXPECT_EQ(select_checkpoints_to_average(o).status().code(), StatusCode::kNotFound);
}

TEST_F(AverageModelTest, DifferentModelsAndCorruptTensorsAreRefused) {
  save({10, 1.0f});
  save({20, 2.0f, false, 0.0, 5, /*linear_units=*/16});
  Status s = average_checkpoints({dir_ + "/step_10", dir_ + "/step_20"}, dir_ + "/avg.h5");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("w_1.weight"), std::string::npos) << s.message();
  EXPECT_FALSE(fs::exists(dir_ + "/avg.h5"));

  save({30, 3.0f});
  const std::string file = dir_ + "/step_30/dense.h5";
  const std::string tensor = "encoder.encoders.0.conv_module.norm.running_var";
  hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t d = H5Dopen2(f, tensor.c_str(), H5P_DEFAULT);
  const auto offset = static_cast<std::streamoff>(H5Dget_offset(d));
  H5Dclose(d);
  H5Fclose(f);
  {
    std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(offset + 2);
    io.put('\x7f');
  }
  s = average_checkpoints({dir_ + "/step_10", dir_ + "/step_30"}, dir_ + "/avg.h5");
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find(tensor), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("step_30/dense.h5"), std::string::npos) << s.message();
}

std::string moe_asr_binary() {
  return (fs::read_symlink("/proc/self/exe").parent_path().parent_path() / "cli" / "moe-asr").string();
}

TEST_F(AverageModelTest, CommandLineWithWenetFlags) {
  const std::array<double, 3> losses = {2.0, 1.0, 3.0};
  for (int64_t k = 1; k <= 3; ++k)
    save({10 * k, static_cast<float>(2 * k), true, losses[static_cast<size_t>(k - 1)]});
  const std::string out = dir_ + "/stdout.txt";
  const std::string cmd = moe_asr_binary() + " average_model --src_path " + dir_ + " --dst_model " + dir_ +
                          "/avg_2.h5 --num 2 --val_best --mode step > " + out + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream in(out);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("best val (epoch, step, loss, tag) = [[0, 20, 1, 'step_20'], [0, 10, 2, 'step_10']]"),
            std::string::npos)
      << text;
  expect_average(dir_ + "/avg_2.h5", 3.0f);  // offsets 4 and 2

  const std::string bad = moe_asr_binary() + " average_model --src_path " + dir_ + " > " + out + " 2>&1";
  const int rc = std::system(bad.c_str());
  EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 1) << rc;
  std::ifstream in2(out);
  const std::string text2((std::istreambuf_iterator<char>(in2)), std::istreambuf_iterator<char>());
  EXPECT_NE(text2.find("--dst_model"), std::string::npos) << text2;
}

}  // namespace
}  // namespace moeasr
