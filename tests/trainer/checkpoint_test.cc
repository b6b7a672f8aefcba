// tests/trainer/checkpoint_test.cc — checkpoints on one process (trainer/checkpoint.h):
//   - save → load round trip is bit-exact: every value, Adam moment, steps_taken and TrainingState
//     field (cursors, cv loss, seed, config), with the directory layout of DESIGN.md §5;
//   - refusals: a truncated dense.h5, a bit-flipped byte of a tensor (values and a moment), a missing
//     DONE, a missing experts file, a corrupt meta.pb — each refused with the file / tensor named,
//     and find_latest_checkpoint() falls back to the previous complete checkpoint (also past a
//     leftover step_<N>.tmp); NotFound with nothing usable;
//   - keep-K deletion (only complete ones; an incomplete directory is left alone); saving the same
//     step twice replaces it;
//   - experts by global id: an EP-1 checkpoint loads under EP 2 and EP 4 layouts;
//   - errors: another model shape, a bad cursor count, an unwritable model directory.
#include "trainer/checkpoint.h"

#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "model/parameter_table.h"
#include "parallel/single_process_communicator.h"

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
  c.encoder.cnn_module_norm = ConvNormType::kBatchNorm;  // running statistics: buffers
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

// A value that depends on the tensor name, the element and which buffer (values / moments) only, so
// the same expert has the same numbers under every expert-parallel layout.
float name_value(const std::string& name, int64_t i, int which, int64_t version) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : name) h = (h ^ ch) * 0x100000001b3ull;
  h ^=
      static_cast<uint64_t>(i) * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(which) * 0xbf58476d1ce4e5b9ull;
  h = (h ^ (h >> 31)) * 0x94d049bb133111ebull;
  float v = static_cast<float>(static_cast<int64_t>(h % 2001) - 1000) / 997.0f + static_cast<float>(version);
  return which == 2 ? v * v : v;  // exp_avg_sq >= 0
}

struct Model {
  ParameterTable table;
  std::unique_ptr<ParameterStore<float>> store;
  std::unique_ptr<AdamOptimizer<float>> adam;
};

std::unique_ptr<Model> make_model(const ExpertLayout& layout, int64_t version, int64_t linear_units = 12) {
  auto m = std::make_unique<Model>();
  m->table = build_u2pp_parameter_table(tiny_moe_config(linear_units), layout);
  m->store = std::make_unique<ParameterStore<float>>(m->table);
  m->adam = std::make_unique<AdamOptimizer<float>>(m->store.get(), AdamOptions{});
  if (version >= 0) {
    for (const ParamEntry& e : m->table.entries()) {
      for (int64_t i = 0; i < e.numel; ++i) {
        m->store->value(e)[i] = name_value(e.name, i, 0, version);
        if (e.region != ParamRegion::kBuffer) {
          m->adam->exp_avg(e.region)[static_cast<size_t>(e.offset + i)] = name_value(e.name, i, 1, version);
          m->adam->exp_avg_sq(e.region)[static_cast<size_t>(e.offset + i)] =
              name_value(e.name, i, 2, version);
        }
      }
    }
    m->adam->set_steps_taken(1000 + version);
  }
  return m;
}

// Every tensor of `got` equals the name-keyed values of `version`, bit for bit.
void expect_model_equals(const Model& got, int64_t version, bool moments = true) {
  int64_t mismatches = 0;
  for (const ParamEntry& e : got.table.entries()) {
    for (int64_t i = 0; i < e.numel; ++i) {
      if (got.store->value(e)[i] != name_value(e.name, i, 0, version)) ++mismatches;
      if (moments && e.region != ParamRegion::kBuffer) {
        const size_t k = static_cast<size_t>(e.offset + i);
        if (got.adam->exp_avg(e.region)[k] != name_value(e.name, i, 1, version)) ++mismatches;
        if (got.adam->exp_avg_sq(e.region)[k] != name_value(e.name, i, 2, version)) ++mismatches;
      }
    }
    if (mismatches > 0) {
      ADD_FAILURE() << "tensor " << e.name << " differs";
      return;
    }
  }
}

TrainingState make_state(int64_t step) {
  TrainingState s;
  s.step = step;
  s.epoch = step / 10;
  s.batches_in_epoch = step % 10 + 3;
  s.seed = 0xfeedbeefcafe1234ull;
  s.config_yaml = "encoder: conformer\nencoder_conf:\n  output_size: 8\n";
  s.data_cursors = {std::string("cursor\0bytes-", 13) + std::to_string(step)};
  s.lr = 1.25e-3 + static_cast<double>(step) * 1e-9;
  s.cv_loss = 3.5 + static_cast<double>(step) / 7.0;
  s.has_cv_loss = true;
  s.skipped_steps = 2;
  return s;
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/checkpoint_test_" + std::to_string(getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  StatusOr<std::string> save(int64_t step, int keep = 10, int64_t version = -1) {
    auto m = make_model(ExpertLayout{0, 1}, version < 0 ? step : version);
    m->adam->set_steps_taken(step);
    return save_checkpoint(dir_, make_state(step), *m->store, *m->adam, &world_, &ep_, &edp_, keep);
  }
  std::string step_dir(int64_t step) const { return dir_ + "/step_" + std::to_string(step); }

  std::string dir_;
  SingleProcessCommunicator world_{"world"}, ep_{"ep0"}, edp_{"edp0"};
};

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void truncate_file(const std::string& path, int64_t drop) {
  const auto size = static_cast<int64_t>(fs::file_size(path));
  fs::resize_file(path, static_cast<uintmax_t>(size - drop));
}

void flip_byte(const std::string& path, int64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f.good()) << path;
  f.seekg(offset);
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x10);
  f.seekp(offset);
  f.write(&c, 1);
}

// File offset of a dataset's raw data (contiguous layout).
int64_t dataset_offset(const std::string& path, const std::string& dataset) {
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  EXPECT_GE(f, 0) << path;
  hid_t d = H5Dopen2(f, dataset.c_str(), H5P_DEFAULT);
  EXPECT_GE(d, 0) << dataset;
  haddr_t offset = H5Dget_offset(d);
  H5Dclose(d);
  H5Fclose(f);
  return static_cast<int64_t>(offset);
}

const char* kExpertTensor = "encoder.encoders.1.feed_forward.experts.2.w_1.weight";
const char* kDenseTensor = "decoder.left_decoder.output_layer.weight";

TEST_F(CheckpointTest, RoundTripIsBitExact) {
  auto saved = make_model(ExpertLayout{0, 1}, 7);
  TrainingState state = make_state(120);
  state.data_cursors = {std::string("rank0\0cursor", 12)};
  StatusOr<std::string> path =
      save_checkpoint(dir_, state, *saved->store, *saved->adam, &world_, &ep_, &edp_, 3);
  ASSERT_TRUE(path.ok()) << path.status().to_string();
  EXPECT_EQ(path.value(), step_dir(120));
  for (const char* f : {"meta.pb", "DONE", "dense.h5", "experts_ep0.h5", "step_120.yaml"}) {
    EXPECT_TRUE(fs::exists(step_dir(120) + "/" + f)) << f;
  }
  EXPECT_FALSE(fs::exists(step_dir(120) + ".tmp"));
  EXPECT_EQ(read_text(dir_ + "/latest"), "step_120\n");
  const std::string sidecar = read_text(step_dir(120) + "/step_120.yaml");
  EXPECT_NE(sidecar.find("step: 120"), std::string::npos) << sidecar;
  EXPECT_NE(sidecar.find("loss_dict:\n  loss: "), std::string::npos) << sidecar;

  auto loaded = make_model(ExpertLayout{0, 1}, -1);  // zeros
  TrainingState got;
  Status s = load_checkpoint(path.value(), &got, loaded->store.get(), loaded->adam.get());
  ASSERT_TRUE(s.ok()) << s.to_string();
  for (int r = 0; r < kNumParamRegions; ++r) {
    const auto region = static_cast<ParamRegion>(r);
    ASSERT_EQ(loaded->store->values[r].size(), saved->store->values[r].size());
    EXPECT_EQ(std::memcmp(loaded->store->values[r].data(), saved->store->values[r].data(),
                          saved->store->values[r].size() * sizeof(float)),
              0)
        << param_region_name(region);
    EXPECT_EQ(loaded->adam->exp_avg(region), saved->adam->exp_avg(region));
    EXPECT_EQ(loaded->adam->exp_avg_sq(region), saved->adam->exp_avg_sq(region));
  }
  expect_model_equals(*loaded, 7);
  EXPECT_EQ(loaded->adam->steps_taken(), saved->adam->steps_taken());
  EXPECT_EQ(got.step, 120);
  EXPECT_EQ(got.epoch, state.epoch);
  EXPECT_EQ(got.batches_in_epoch, state.batches_in_epoch);
  EXPECT_EQ(got.seed, state.seed);
  EXPECT_EQ(got.config_yaml, state.config_yaml);
  EXPECT_EQ(got.world_size, 1);
  EXPECT_EQ(got.ep_size, 1);
  ASSERT_EQ(got.data_cursors.size(), 1u);
  EXPECT_EQ(got.data_cursors[0], state.data_cursors[0]);  // binary-safe
  EXPECT_EQ(got.lr, state.lr);
  EXPECT_EQ(got.cv_loss, state.cv_loss);
  EXPECT_TRUE(got.has_cv_loss);
  EXPECT_EQ(got.skipped_steps, 2);

  // Weights and state only (no optimizer).
  auto weights_only = make_model(ExpertLayout{0, 1}, -1);
  ASSERT_TRUE(load_checkpoint(path.value(), &got, weights_only->store.get(), nullptr).ok());
  expect_model_equals(*weights_only, 7, /*moments=*/false);

  StatusOr<std::string> latest = find_latest_checkpoint(dir_);
  ASSERT_TRUE(latest.ok()) << latest.status().to_string();
  EXPECT_EQ(latest.value(), step_dir(120));
}

TEST_F(CheckpointTest, ExpertsLoadUnderAnotherExpertParallelLayout) {
  ASSERT_TRUE(save(50).ok());
  for (ExpertLayout layout : {ExpertLayout{0, 2}, ExpertLayout{1, 2}, ExpertLayout{3, 4}}) {
    auto m = make_model(layout, -1);
    TrainingState got;
    Status s = load_checkpoint(step_dir(50), &got, m->store.get(), m->adam.get());
    ASSERT_TRUE(s.ok()) << s.to_string();
    expect_model_equals(*m, 50);
    bool has_expert = false;
    for (const ParamEntry& e : m->table.entries())
      has_expert |= e.expert == layout.ep_rank * (4 / layout.ep_size);
    EXPECT_TRUE(has_expert);  // the layout holds other experts than expert 0
  }
}

TEST_F(CheckpointTest, TruncatedDenseFileIsRefusedAndThePreviousUsed) {
  ASSERT_TRUE(save(10).ok());
  ASSERT_TRUE(save(20).ok());
  truncate_file(step_dir(20) + "/dense.h5", 100);
  auto m = make_model(ExpertLayout{0, 1}, -1);
  TrainingState got;
  Status s = load_checkpoint(step_dir(20), &got, m->store.get(), m->adam.get());
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.to_string();
  EXPECT_NE(s.message().find("dense.h5"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("truncated"), std::string::npos) << s.message();
  StatusOr<std::string> latest = find_latest_checkpoint(dir_);
  ASSERT_TRUE(latest.ok()) << latest.status().to_string();
  EXPECT_EQ(latest.value(), step_dir(10));
  ASSERT_TRUE(load_checkpoint(latest.value(), &got, m->store.get(), m->adam.get()).ok());
  expect_model_equals(*m, 10);
  EXPECT_EQ(got.step, 10);
}

TEST_F(CheckpointTest, BitFlippedExpertTensorIsRefusedNamingTheTensor) {
  ASSERT_TRUE(save(10).ok());
  ASSERT_TRUE(save(20).ok());
  const std::string file = step_dir(20) + "/experts_ep0.h5";
  flip_byte(file, dataset_offset(file, kExpertTensor) + 13);
  auto m = make_model(ExpertLayout{0, 1}, -1);
  TrainingState got;
  Status s = load_checkpoint(step_dir(20), &got, m->store.get(), m->adam.get());
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.to_string();
  EXPECT_NE(s.message().find("experts_ep0.h5"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(kExpertTensor), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("CRC32"), std::string::npos) << s.message();
  // A layout that does not hold expert 2 (EP rank 0 of 2: experts 0, 1) does not read it: it loads.
  auto other = make_model(ExpertLayout{0, 2}, -1);
  EXPECT_TRUE(load_checkpoint(step_dir(20), &got, other->store.get(), other->adam.get()).ok());
  StatusOr<std::string> latest = find_latest_checkpoint(dir_);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(latest.value(), step_dir(10));
}

TEST_F(CheckpointTest, BitFlippedAdamMomentIsRefusedNamingTheTensor) {
  ASSERT_TRUE(save(10).ok());
  ASSERT_TRUE(save(20).ok());
  const std::string file = step_dir(20) + "/dense.h5";
  flip_byte(file, dataset_offset(file, std::string(kDenseTensor) + ".exp_avg_sq") + 4);
  auto m = make_model(ExpertLayout{0, 1}, -1);
  TrainingState got;
  Status s = load_checkpoint(step_dir(20), &got, m->store.get(), m->adam.get());
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.to_string();
  EXPECT_NE(s.message().find(kDenseTensor), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("exp_avg_sq"), std::string::npos) << s.message();
  StatusOr<std::string> latest = find_latest_checkpoint(dir_);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(latest.value(), step_dir(10));
}

TEST_F(CheckpointTest, MissingDoneIsAnIncompleteCheckpoint) {
  ASSERT_TRUE(save(10).ok());
  ASSERT_TRUE(save(20).ok());
  fs::remove(step_dir(20) + "/DONE");
  auto m = make_model(ExpertLayout{0, 1}, -1);
  TrainingState got;
  Status s = load_checkpoint(step_dir(20), &got, m->store.get(), m->adam.get());
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("DONE"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("step_20"), std::string::npos) << s.message();
  StatusOr<std::string> latest = find_latest_checkpoint(dir_);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(latest.value(), step_dir(10));
}

TEST_F(CheckpointTest, MissingExpertsFileIsRefused) {
  ASSERT_TRUE(save(10).ok());
  ASSERT_TRUE(save(20).ok());
  fs::remove(step_dir(20) + "/experts_ep0.h5");
  auto m = make_model(ExpertLayout{0, 1}, -1);
  TrainingState got;
  Status s = load_checkpoint(step_dir(20), &got, m->store.get(), m->adam.get());
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("experts_ep0.h5"), std::string::npos) << s.message();
  StatusOr<std::string> latest = find_latest_checkpoint(dir_);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(latest.value(), step_dir(10));
}

TEST_F(CheckpointTest, CorruptMetaAndInterruptedSavesAreSkipped) {
  ASSERT_TRUE(save(10).ok());
  ASSERT_TRUE(save(20).ok());
  ASSERT_TRUE(save(30).ok());
  flip_byte(step_dir(30) + "/meta.pb", 5);
  // An interrupted later save: only the .tmp directory with a partial file.
  fs::create_directories(step_dir(40) + ".tmp");
  std::ofstream(step_dir(40) + ".tmp/dense.h5") << "partial";
  // An incomplete directory without DONE.
  fs::create_directories(step_dir(35));
  auto m = make_model(ExpertLayout{0, 1}, -1);
  TrainingState got;
  Status s = load_checkpoint(step_dir(30), &got, m->store.get(), m->adam.get());
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("meta.pb"), std::string::npos) << s.message();
  StatusOr<std::string> latest = find_latest_checkpoint(dir_);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(latest.value(), step_dir(20));
  EXPECT_EQ(list_complete_checkpoints(dir_, true), (std::vector<std::string>{step_dir(10), step_dir(20)}));
}

TEST_F(CheckpointTest, NothingUsableIsNotFound) {
  StatusOr<std::string> none = find_latest_checkpoint(dir_);  // no directory
  EXPECT_EQ(none.status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(save(10).ok());
  truncate_file(step_dir(10) + "/experts_ep0.h5", 1);
  none = find_latest_checkpoint(dir_);
  EXPECT_EQ(none.status().code(), StatusCode::kNotFound);
  EXPECT_NE(none.status().message().find("1 incomplete or corrupt"), std::string::npos)
      << none.status().message();
}

TEST_F(CheckpointTest, KeepsTheLastKCompleteCheckpoints) {
  fs::create_directories(step_dir(2));  // incomplete (no DONE): never deleted by pruning
  for (int64_t step : {1, 3, 4, 5}) ASSERT_TRUE(save(step, /*keep=*/2).ok());
  std::vector<std::string> left;
  for (const auto& entry : fs::directory_iterator(dir_)) left.push_back(entry.path().filename().string());
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"latest", "step_2", "step_4", "step_5"}));
  EXPECT_EQ(read_text(dir_ + "/latest"), "step_5\n");
  // The same step saved again (an epoch end on an interval step) replaces it.
  ASSERT_TRUE(save(5, 2, /*version=*/9).ok());
  auto m = make_model(ExpertLayout{0, 1}, -1);
  TrainingState got;
  ASSERT_TRUE(load_checkpoint(step_dir(5), &got, m->store.get(), m->adam.get()).ok());
  expect_model_equals(*m, 9);
  EXPECT_TRUE(fs::exists(step_dir(4)));
  EXPECT_FALSE(fs::exists(step_dir(5) + ".old"));
}

TEST_F(CheckpointTest, AnotherModelShapeIsRefusedNamingTheTensor) {
  ASSERT_TRUE(save(10).ok());
  auto m = make_model(ExpertLayout{0, 1}, -1, /*linear_units=*/16);
  TrainingState got;
  Status s = load_checkpoint(step_dir(10), &got, m->store.get(), m->adam.get());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("w_1.weight"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("[16, 8]"), std::string::npos) << s.message();
}

TEST_F(CheckpointTest, BadArgumentsAndUnwritableDirectoriesAreErrors) {
  auto m = make_model(ExpertLayout{0, 1}, 1);
  TrainingState state = make_state(10);
  state.data_cursors = {"a", "b", "c"};
  StatusOr<std::string> r = save_checkpoint(dir_, state, *m->store, *m->adam, &world_, &ep_, &edp_, 2);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("data_cursors"), std::string::npos) << r.status().message();

  fs::create_directories(dir_);
  std::ofstream(dir_ + "/a_file") << "x";
  r = save_checkpoint(dir_ + "/a_file/sub", make_state(10), *m->store, *m->adam, &world_, &ep_, &edp_, 2);
  EXPECT_EQ(r.status().code(), StatusCode::kIoError);
  EXPECT_NE(r.status().message().find("a_file"), std::string::npos) << r.status().message();
}

}  // namespace
}  // namespace moeasr
