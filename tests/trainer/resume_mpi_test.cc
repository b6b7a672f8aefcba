// tests/trainer/resume_mpi_test.cc — exact resume of the training loop under mpirun -np 2 (EP 2) and
// -np 4 (EP 2 x DP 2), with dropout, SpecAugment and dynamic chunks on, on a tiny generated corpus
// (rank 0 writes it, the path is broadcast):
//   - straight: 2 epochs in one Trainer;
//   - interrupted: a Trainer stops at --max_steps k (mid-epoch checkpoint); a new Trainer resumes from
//     it and is preempted by a signal seen on rank 0 only (request_preemption(): every rank must stop
//     at the same step and checkpoint); a third resumes and finishes.
//   The final parameters of every rank (its experts and the dense copy) are bit-identical to the
//   straight run's, and the step counts and outcomes agree on every rank.
// And the gradient sums started inside the backward (overlap_grad_sync) against one sum after it.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/philox.h"
#include "data_pipeline/cmvn.h"
#include "data_pipeline/shard.h"
#include "data_pipeline/tokenizer.h"
#include "tests/common/synthetic_shards.h"
#include "tests/parallel/mpi_test_env.h"
#include "trainer/train_config.h"
#include "trainer/trainer.h"

namespace moeasr {
namespace {

const bool kRegistered = testing::register_mpi_environment();

namespace fs = std::filesystem;
using testing::MpiTest;
using testing::world_rank;
using testing::world_size;

Status write_corpus(const std::string& dir) {
  fs::create_directories(dir);
  std::vector<std::string> units = {"<blank>", "<unk>"};
  for (const char* c = testing::kSyntheticLetters; *c; ++c) units.push_back(std::string(1, *c));
  units.push_back("<sos/eos>");
  RETURN_IF_ERROR(write_units(dir + "/units.txt", units));
  RETURN_IF_ERROR(testing::write_synthetic_shard_set(dir, "train", 8, 6, 11, nullptr));
  RETURN_IF_ERROR(testing::write_synthetic_shard_set(dir, "cv", 4, 3, 12, nullptr));
  std::ofstream(dir + "/conf.yaml") << R"(encoder: conformer
encoder_conf:
    output_size: 16
    attention_heads: 2
    linear_units: 32
    num_blocks: 2
    dropout_rate: 0.1
    positional_dropout_rate: 0.1
    cnn_module_kernel: 3
    causal: true
    use_dynamic_chunk: true
    use_dynamic_left_chunk: true
    cnn_module_norm: batch_norm
    mlp_type: moe
    n_expert: 4
    n_expert_activated: 2
decoder: bitransformer
decoder_conf:
    attention_heads: 2
    linear_units: 32
    num_blocks: 1
    r_num_blocks: 1
    dropout_rate: 0.1
    positional_dropout_rate: 0.1
    mlp_type: moe
    n_expert: 4
    n_expert_activated: 2
input_dim: 20
output_dim: 19
tokenizer: char
tokenizer_conf:
    symbol_table_path: )" << dir << R"(/units.txt
dataset_conf:
    filter_conf:
        max_length: 2000
        min_length: 10
    spec_aug: true
    spec_aug_conf:
        num_t_mask: 1
        num_f_mask: 1
        max_t: 5
        max_f: 3
    shuffle_conf:
        shuffle_size: 10
    sort_conf:
        sort_size: 5
    batch_conf:
        batch_type: static
        batch_size: 3
    prefetch: 2
accum_grad: 2
max_epoch: 2
log_interval: 2
save_interval: 3
optim_conf:
    lr: 0.004
scheduler_conf:
    warmup_steps: 10
parallel_conf:
    ep_size: 2
    collective_timeout_s: 60
train_conf:
    seed: 5
    cv_interval: 4
    keep_checkpoint_max: 3
    num_threads: 1
)";
  return Status();
}

class ResumeMpiTest : public MpiTest {
 protected:
  void SetUp() override {
    char path[256] = {0};
    if (world_rank() == 0) {
      char tmpl[] = "/tmp/moeasr_resume_mpi_XXXXXX";
      std::snprintf(path, sizeof(path), "%s", ::mkdtemp(tmpl));
      Status s = write_corpus(std::string(path) + "/corpus");
      if (!s.ok()) std::fprintf(stderr, "corpus: %s\n", s.to_string().c_str());
    }
    MPI_Bcast(path, sizeof(path), MPI_CHAR, 0, MPI_COMM_WORLD);
    root_ = path;
    MPI_Barrier(MPI_COMM_WORLD);
    auto config = load_train_config(root_ + "/corpus/conf.yaml", {});
    ASSERT_TRUE(config.ok()) << config.status().to_string();
    config_ = config.value();
    CommunicatorOptions o;
    o.timeout = std::chrono::milliseconds(60000);
    o.on_error = CollectiveErrorPolicy::kReturnStatus;
    auto groups = create_mpi_process_groups(2, moe_expert_counts(model_config_from_train_config(config_)), o);
    ASSERT_TRUE(groups.ok()) << groups.status().to_string();
    groups_ = std::move(groups).value();
  }
  void TearDown() override {
    MpiTest::TearDown();
    MPI_Barrier(MPI_COMM_WORLD);
    std::error_code ec;
    if (world_rank() == 0 && !HasFailure()) fs::remove_all(root_, ec);
  }

  TrainerOptions options(const std::string& name) {
    TrainerOptions o;
    o.config = config_;
    o.train_data = root_ + "/corpus/train.jsonl";
    o.cv_data = root_ + "/corpus/cv.jsonl";
    o.model_dir = root_ + "/" + name;
    o.num_threads = 1;
    return o;
  }

  // Same value on every rank?
  static bool agreed(int64_t v) {
    int64_t lo = v, hi = v;
    MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_INT64_T, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
    return lo == hi;
  }

  std::string root_;
  proto::TrainConfig config_;
  ProcessGroups groups_;
};

// The gradient sums started inside the last backward of each step (TrainerOptions::overlap_grad_sync,
// the default: range by range as the layers finish, interleaved with the backward's expert exchanges)
// train exactly what one sum after the backward trains: the same losses and, after 2 steps of 2
// micro-batches, bit-identical parameters on every rank (every element is summed over the same ranks
// in both; only the messages are cut differently).
TEST_F(ResumeMpiTest, GradientSumsInsideTheBackwardTrainWhatOneSumAfterItTrains) {
  SCOPED_TRACE("world " + std::to_string(world_size()));
  TrainerOptions overlapped = options("overlap_on");
  overlapped.max_steps = 2;
  TrainerOptions after = options("overlap_off");
  after.max_steps = 2;
  after.overlap_grad_sync = false;
  auto a = Trainer::create(overlapped, &groups_);
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  auto b = Trainer::create(after, &groups_);
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  ASSERT_TRUE(a.value()->begin_epoch().ok());
  ASSERT_TRUE(b.value()->begin_epoch().ok());
  for (int step = 0; step < 2; ++step) {  // 4 ranks: 2 steps per epoch
    auto ra = a.value()->train_step();
    auto rb = b.value()->train_step();
    ASSERT_TRUE(ra.ok() && rb.ok());
    ASSERT_EQ(ra.value().outcome, StepOutcome::kUpdated);
    ASSERT_EQ(rb.value().outcome, StepOutcome::kUpdated);
    EXPECT_EQ(ra.value().loss, rb.value().loss) << "step " << step;
    EXPECT_EQ(ra.value().grad_norm, rb.value().grad_norm) << "step " << step;
  }
  for (int reg = 0; reg < 2; ++reg) {
    const auto& x = a.value()->store().values[reg];
    const auto& y = b.value()->store().values[reg];
    ASSERT_EQ(x.size(), y.size());
    EXPECT_EQ(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)), 0)
        << param_region_name(ParamRegion(reg)) << " differs on rank " << world_rank();
  }
}

TEST_F(ResumeMpiTest, StopResumePreemptResumeIsBitIdenticalToAStraightRun) {
  const int world = world_size();
  SCOPED_TRACE("world " + std::to_string(world) + ", EP 2 x DP " + std::to_string(world / 2));
  auto straight = Trainer::create(options("straight"), &groups_);
  ASSERT_TRUE(straight.ok()) << straight.status().to_string();
  auto done = straight.value()->run();
  ASSERT_TRUE(done.ok()) << done.status().to_string();
  const int64_t total = done.value().steps;
  // 48 utterances over `world` ranks in micro-batches of 3, 2 per step: ceil(48 / world / 6) per epoch.
  const int64_t per_epoch = (48 / world + 5) / 6;
  EXPECT_EQ(total, 2 * per_epoch);
  EXPECT_TRUE(agreed(total));
  ASSERT_GE(total, 4);

  // Stop at k = 3 (mid-epoch 1 on 2 ranks; epoch 2 on 4 ranks).
  const int64_t k = 3;
  {
    TrainerOptions o = options("interrupted");
    o.max_steps = k;
    auto t = Trainer::create(o, &groups_);
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    auto r = t.value()->run();
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_EQ(r.value().outcome, TrainOutcome::kFinished);
    EXPECT_EQ(r.value().steps, k);
  }
  // Resume; rank 0 alone sees a preemption signal during the next step.
  int64_t preempted_at = -1;
  {
    TrainerOptions o = options("interrupted");
    o.resume = true;
    if (world_rank() == 0) {
      o.batch_hook = [](int64_t micro, Batch*) {
        if (micro == 2 * 3) request_preemption();  // the 4th step's first micro-batch
      };
    }
    auto t = Trainer::create(o, &groups_);
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    EXPECT_EQ(t.value()->state().step, k);
    auto r = t.value()->run();
    clear_preemption_request();
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_EQ(r.value().outcome, TrainOutcome::kPreempted);
    preempted_at = r.value().steps;
    EXPECT_EQ(preempted_at, k + 1);
    EXPECT_TRUE(agreed(preempted_at));
    EXPECT_EQ(checkpoint_step_from_path(r.value().last_checkpoint), k + 1);
  }
  TrainerOptions o = options("interrupted");
  o.resume = true;
  auto t = Trainer::create(o, &groups_);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(t.value()->state().step, preempted_at);
  auto r = t.value()->run();
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r.value().steps, total);
  int64_t differing = 0;
  for (int reg = 0; reg < kNumParamRegions; ++reg) {
    if (reg == static_cast<int>(ParamRegion::kBuffer)) continue;  // BatchNorm statistics: rank 0's are saved
    const auto& x = straight.value()->store().values[reg];
    const auto& y = t.value()->store().values[reg];
    ASSERT_EQ(x.size(), y.size());
    if (std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) != 0) {
      ++differing;
      ADD_FAILURE() << "region " << param_region_name(ParamRegion(reg)) << " differs on rank "
                    << world_rank();
    }
  }
  // Rank 0 also matches in the buffers (its BatchNorm statistics are the ones checkpointed).
  if (world_rank() == 0) {
    const auto& x = straight.value()->store().values[static_cast<int>(ParamRegion::kBuffer)];
    const auto& y = t.value()->store().values[static_cast<int>(ParamRegion::kBuffer)];
    EXPECT_EQ(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)), 0) << "rank 0's buffers";
  }
  EXPECT_EQ(differing, 0);
}

}  // namespace
}  // namespace moeasr
