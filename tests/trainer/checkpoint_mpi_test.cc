// tests/trainer/checkpoint_mpi_test.cc — collective checkpoints under mpirun -np 2 and -np 4
// (trainer/checkpoint.h), tiny MoE model (4 experts per MoE FFN):
//   - saved with expert parallelism (EP 2, and EP = world): one experts_ep<r>.h5 per EP rank, every
//     rank's data cursor gathered; then every rank loads it under EP 1, EP 2 and EP 4 layouts (also
//     one that differs from its own) and gets every expert's values and Adam moments bit-exact, the
//     saved layout and all cursors;
//   - a truncated experts file written by another rank is refused naming the file, and every rank's
//     find_latest_checkpoint() returns the previous complete checkpoint;
//   - average_model over two EP-2 checkpoints gathers every expert from every experts file: the
//     weights file holds all experts with the exact mean;
//   - a bad argument on one rank is an error on every rank (naming that rank), not a hang.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "model/parameter_table.h"
#include "parallel/groups.h"
#include "tests/parallel/mpi_test_env.h"
#include "trainer/average_model.h"
#include "trainer/checkpoint.h"
#include "trainer/model_weights.h"

namespace moeasr {
namespace {

namespace fs = std::filesystem;

const bool kRegistered = testing::register_mpi_environment();

using testing::MpiTest;
using testing::world_rank;
using testing::world_size;

ModelConfig tiny_moe_config() {
  ModelConfig c;
  c.input_dim = 8;
  c.vocab_size = 7;
  c.encoder.output_size = 8;
  c.encoder.attention_heads = 2;
  c.encoder.num_blocks = 2;
  c.encoder.cnn_module_kernel = 3;
  c.encoder.ffn.mlp_type = MlpType::kMoe;
  c.encoder.ffn.linear_units = 12;
  c.encoder.ffn.n_expert = 4;
  c.encoder.ffn.n_expert_activated = 2;
  c.decoder.attention_heads = 2;
  c.decoder.num_blocks = 1;
  c.decoder.r_num_blocks = 1;
  c.decoder.ffn = c.encoder.ffn;
  return c;
}

// A multiple of 1/8 that depends on the name, element, buffer (values / moments) and version only:
// the same expert has the same numbers under every layout, and means of versions are exact.
float name_value(const std::string& name, int64_t i, int which, int64_t version) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : name) h = (h ^ ch) * 0x100000001b3ull;
  h = (h ^ static_cast<uint64_t>(i * 3 + which)) * 0x9e3779b97f4a7c15ull;
  h ^= h >> 29;
  const float v =
      static_cast<float>(static_cast<int64_t>(h % 257) - 128) / 8.0f + static_cast<float>(version);
  return which == 2 ? std::abs(v) : v;
}

struct Model {
  ParameterTable table;
  std::unique_ptr<ParameterStore<float>> store;
  std::unique_ptr<AdamOptimizer<float>> adam;
};

std::unique_ptr<Model> make_model(const ExpertLayout& layout, int64_t version) {
  auto m = std::make_unique<Model>();
  m->table = build_u2pp_parameter_table(tiny_moe_config(), layout);
  m->store = std::make_unique<ParameterStore<float>>(m->table);
  m->adam = std::make_unique<AdamOptimizer<float>>(m->store.get(), AdamOptions{});
  if (version < 0) return m;
  for (const ParamEntry& e : m->table.entries()) {
    for (int64_t i = 0; i < e.numel; ++i) {
      m->store->value(e)[i] = name_value(e.name, i, 0, version);
      if (e.region != ParamRegion::kBuffer) {
        m->adam->exp_avg(e.region)[static_cast<size_t>(e.offset + i)] = name_value(e.name, i, 1, version);
        m->adam->exp_avg_sq(e.region)[static_cast<size_t>(e.offset + i)] = name_value(e.name, i, 2, version);
      }
    }
  }
  m->adam->set_steps_taken(500 + version);
  return m;
}

// Number of elements of `m` (values and moments) that differ from `version`'s.
int64_t mismatches(const Model& m, int64_t version, std::string* first) {
  int64_t bad = 0;
  for (const ParamEntry& e : m.table.entries()) {
    for (int64_t i = 0; i < e.numel; ++i) {
      bool ok = m.store->value(e)[i] == name_value(e.name, i, 0, version);
      if (e.region != ParamRegion::kBuffer) {
        const size_t k = static_cast<size_t>(e.offset + i);
        ok = ok && m.adam->exp_avg(e.region)[k] == name_value(e.name, i, 1, version) &&
             m.adam->exp_avg_sq(e.region)[k] == name_value(e.name, i, 2, version);
      }
      if (!ok && bad++ == 0) *first = e.name;
    }
  }
  return bad;
}

CommunicatorOptions test_options() {
  CommunicatorOptions o;
  o.timeout = std::chrono::milliseconds(20000);
  o.on_error = CollectiveErrorPolicy::kReturnStatus;
  return o;
}

ProcessGroups make_groups(int64_t ep_size) {
  StatusOr<ProcessGroups> g =
      create_mpi_process_groups(ep_size, moe_expert_counts(tiny_moe_config()), test_options());
  CHECK(g.ok()) << g.status().to_string();
  return std::move(g).value();
}

// A directory every rank agrees on (rank 0's temp dir + pid), empty.
std::string shared_dir(const std::string& tag) {
  char buf[1024] = {0};
  if (world_rank() == 0) {
    const std::string d =
        ::testing::TempDir() + "/checkpoint_mpi_test_" + std::to_string(getpid()) + "_" + tag;
    fs::remove_all(d);
    std::snprintf(buf, sizeof(buf), "%s", d.c_str());
  }
  MPI_Bcast(buf, sizeof(buf), MPI_CHAR, 0, MPI_COMM_WORLD);
  return buf;
}

void remove_shared(const std::string& dir) {
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) fs::remove_all(dir);
}

std::string cursor_of(int rank) {
  return "cursor-of-rank-" + std::to_string(rank);
}

// Collective: saves `version`'s values at `step` under EP `ep_size`, every rank passing its own cursor.
StatusOr<std::string> save_version(const std::string& dir, int64_t ep_size, int64_t step, int64_t version) {
  ProcessGroups g = make_groups(ep_size);
  auto m = make_model(g.layout.expert_layout(), version);
  TrainingState state;
  state.step = step;
  state.epoch = 1;
  state.seed = 42;
  state.config_yaml = "# tiny moe\n";
  state.data_cursors = {cursor_of(world_rank())};
  return save_checkpoint(dir, state, *m->store, *m->adam, g.world.get(), g.ep.get(), g.edp.get(), 0);
}

class CheckpointMpiTest : public MpiTest {};

TEST_F(CheckpointMpiTest, SavedWithExpertParallelismLoadsUnderAnyLayout) {
  const int n = world_size(), rank = world_rank();
  std::vector<int64_t> ep_sizes = {2, n};
  ep_sizes.erase(std::unique(ep_sizes.begin(), ep_sizes.end()), ep_sizes.end());
  const std::string dir = shared_dir("layouts");
  for (int64_t ep : ep_sizes) {
    SCOPED_TRACE("saved with EP " + std::to_string(ep) + " on " + std::to_string(n) + " ranks");
    StatusOr<std::string> path = save_version(dir, ep, 10 * ep, ep);
    ASSERT_TRUE(path.ok()) << path.status().to_string();
    EXPECT_EQ(path.value(), dir + "/step_" + std::to_string(10 * ep));
    for (int64_t r = 0; r < ep; ++r)
      EXPECT_TRUE(fs::exists(path.value() + "/experts_ep" + std::to_string(r) + ".h5"));
    EXPECT_FALSE(fs::exists(path.value() + "/experts_ep" + std::to_string(ep) + ".h5"));
    // Every rank, under EP 1, under EP 2 and EP 4 layouts other than the one it saved with.
    for (ExpertLayout layout :
         {ExpertLayout{0, 1}, ExpertLayout{(rank + 1) % 2, 2}, ExpertLayout{(rank + 1) % 4, 4}}) {
      SCOPED_TRACE("loaded as EP rank " + std::to_string(layout.ep_rank) + " of " +
                   std::to_string(layout.ep_size));
      auto m = make_model(layout, -1);
      TrainingState state;
      Status s = load_checkpoint(path.value(), &state, m->store.get(), m->adam.get());
      ASSERT_TRUE(s.ok()) << s.to_string();
      std::string first;
      EXPECT_EQ(mismatches(*m, ep, &first), 0) << "first differing tensor " << first;
      EXPECT_EQ(m->adam->steps_taken(), 500 + ep);
      EXPECT_EQ(state.step, 10 * ep);
      EXPECT_EQ(state.world_size, n);
      EXPECT_EQ(state.ep_size, ep);
      ASSERT_EQ(static_cast<int>(state.data_cursors.size()), n);
      for (int r = 0; r < n; ++r) EXPECT_EQ(state.data_cursors[static_cast<size_t>(r)], cursor_of(r));
    }
  }
  remove_shared(dir);
}

TEST_F(CheckpointMpiTest, TruncatedExpertsFileOfAnotherRankFallsBackToThePrevious) {
  const std::string dir = shared_dir("corrupt");
  ASSERT_TRUE(save_version(dir, 2, 10, 1).ok());
  ASSERT_TRUE(save_version(dir, 2, 20, 2).ok());
  MPI_Barrier(MPI_COMM_WORLD);
  const std::string victim = dir + "/step_20/experts_ep1.h5";  // written by world rank 1
  if (world_rank() == 0) fs::resize_file(victim, fs::file_size(victim) - 64);
  MPI_Barrier(MPI_COMM_WORLD);
  auto m = make_model(ExpertLayout{0, 1}, -1);
  TrainingState state;
  Status s = load_checkpoint(dir + "/step_20", &state, m->store.get(), m->adam.get());
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.to_string();
  EXPECT_NE(s.message().find("experts_ep1.h5"), std::string::npos) << s.message();
  StatusOr<std::string> latest = find_latest_checkpoint(dir);
  ASSERT_TRUE(latest.ok()) << latest.status().to_string();
  EXPECT_EQ(latest.value(), dir + "/step_10");
  ASSERT_TRUE(load_checkpoint(latest.value(), &state, m->store.get(), m->adam.get()).ok());
  std::string first;
  EXPECT_EQ(mismatches(*m, 1, &first), 0) << first;
  remove_shared(dir);
}

TEST_F(CheckpointMpiTest, AverageModelGathersEveryExpertFile) {
  const std::string dir = shared_dir("average");
  ASSERT_TRUE(save_version(dir, 2, 10, 1).ok());
  ASSERT_TRUE(save_version(dir, 2, 20, 3).ok());
  if (world_rank() == 0) {
    AverageModelOptions o;
    o.src_path = dir;
    o.dst_model = dir + "/avg.h5";
    o.num = 2;
    StatusOr<std::vector<CheckpointScore>> used = average_model(o);
    ASSERT_TRUE(used.ok()) << used.status().to_string();
    ParameterTable table = build_u2pp_parameter_table(tiny_moe_config(), ExpertLayout{0, 1});  // all experts
    ParameterStore<float> store(table);
    Status s = load_model_weights(o.dst_model, &store);
    ASSERT_TRUE(s.ok()) << s.to_string();
    int64_t bad = 0;
    for (const ParamEntry& e : table.entries()) {
      for (int64_t i = 0; i < e.numel; ++i) bad += store.value(e)[i] != name_value(e.name, i, 0, 2);
    }
    EXPECT_EQ(bad, 0);
  }
  remove_shared(dir);
}

TEST_F(CheckpointMpiTest, AFailureOnOneRankIsAnErrorOnEveryRank) {
  const std::string dir = shared_dir("failure");
  ProcessGroups g = make_groups(2);
  auto m = make_model(g.layout.expert_layout(), 1);
  TrainingState state;
  state.step = 30;
  state.data_cursors = {cursor_of(world_rank())};
  if (world_rank() == 1) state.data_cursors = {"a", "b", "c", "d", "e"};  // neither 1 nor world
  StatusOr<std::string> r =
      save_checkpoint(dir, state, *m->store, *m->adam, g.world.get(), g.ep.get(), g.edp.get(), 0);
  EXPECT_FALSE(r.ok());
  if (world_rank() == 1) {
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().to_string();
  } else {
    EXPECT_NE(r.status().message().find("world rank(s) 1"), std::string::npos) << r.status().message();
  }
  EXPECT_FALSE(fs::exists(dir + "/step_30"));
  EXPECT_EQ(find_latest_checkpoint(dir).status().code(), StatusCode::kNotFound);
  // The groups still work: the next save succeeds.
  state.data_cursors = {cursor_of(world_rank())};
  r = save_checkpoint(dir, state, *m->store, *m->adam, g.world.get(), g.ep.get(), g.edp.get(), 0);
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  remove_shared(dir);
}

}  // namespace
}  // namespace moeasr
