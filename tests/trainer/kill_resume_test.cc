// tests/trainer/kill_resume_test.cc — exact resume of `moe-asr train` after a kill -9, end to end,
// as the built binary (build/cli/moe-asr, or $MOEASR_CLI) under `mpirun -np 2` on a tiny generated
// corpus (HDF5 shards written with ShardWriter from synthetic features; units.txt of 19 symbols):
//   - TinyCorpus: the corpus is written and loads (also the corpus writer of tests/trainer/slurm_test.sh:
//     with MOEASR_TINY_CORPUS_DIR set it is written there);
//   - KillResume.KilledRankResumesToBitIdenticalWeights: N steps straight (EP 2 over 2 ranks, dropout,
//     SpecAugment and dynamic chunks on) vs. the same run in which one rank is killed with SIGKILL at
//     a random step (read from its log), then restarted with --resume auto: the final weights are
//     bit-identical, tensor by tensor;
//   - KillResume.BpeUnitsInTheProgram: `tokenizer: bpe` (sentencepiece) inside the moe-asr binary, which
//     also links protobuf: two steps train with finite losses (it aborted in protobuf's version check
//     before proto/CMakeLists.txt hid libprotobuf.a's symbols from libsentencepiece.so);
//   - KillResume.ExpertParallelTwoToOneContinues: a checkpoint of the EP 2 × 2-rank run continues on
//     one rank with EP 1 (experts re-sliced by global id, data cursors remapped): the loss stays
//     finite, the step count reaches N, and the log says how it resumed.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sentencepiece_trainer.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/philox.h"
#include "data_pipeline/cmvn.h"
#include "data_pipeline/loader.h"
#include "data_pipeline/shard.h"
#include "data_pipeline/tokenizer.h"
#include "model/parameter_table.h"
#include "tests/common/synthetic_shards.h"
#include "trainer/model_weights.h"
#include "trainer/train_config.h"

namespace moeasr {
namespace {

namespace fs = std::filesystem;

// ------------------------------------------------------------------------------------------------
// The tiny corpus: every token has a fixed random 20-bin pattern; an utterance is its tokens'
// patterns, 8-12 frames each, plus noise, so that the model can learn something in a few steps.

constexpr int kBins = testing::kSyntheticBins;

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// <dir>/train.jsonl (8 shards x 6), <dir>/cv.jsonl (2 x 4), units.txt, global_cmvn, conf.yaml.
Status write_tiny_corpus(const std::string& dir) {
  fs::create_directories(dir);
  std::vector<std::string> units = {"<blank>", "<unk>"};
  for (const char* c = testing::kSyntheticLetters; *c; ++c) units.push_back(std::string(1, *c));
  units.push_back("<sos/eos>");
  RETURN_IF_ERROR(write_units(dir + "/units.txt", units));
  CmvnStats stats;
  RETURN_IF_ERROR(testing::write_synthetic_shard_set(dir, "train", 8, 6, 11, &stats));
  RETURN_IF_ERROR(testing::write_synthetic_shard_set(dir, "cv", 2, 4, 12, nullptr));
  RETURN_IF_ERROR(write_cmvn_json(dir + "/global_cmvn", stats));
  std::ofstream conf(dir + "/conf.yaml");
  conf
      << R"(# tiny U2++ MoE for the resume tests: d 16, 2 encoder layers, 1 + 1 decoder layers, 4 experts top-2
encoder: conformer
encoder_conf:
    output_size: 16
    attention_heads: 2
    linear_units: 32
    num_blocks: 2
    dropout_rate: 0.1
    positional_dropout_rate: 0.1
    attention_dropout_rate: 0.0
    cnn_module_kernel: 3
    causal: true
    use_dynamic_chunk: true
    use_dynamic_left_chunk: true
    cnn_module_norm: layer_norm
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
model_conf:
    ctc_weight: 0.3
    lsm_weight: 0.1
    reverse_weight: 0.3
input_dim: 20
output_dim: 19
tokenizer: char
tokenizer_conf:
    symbol_table_path: )"
      << dir << R"(/units.txt
cmvn: global_cmvn
cmvn_conf:
    cmvn_file: )"
      << dir << R"(/global_cmvn
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
    shuffle: true
    shuffle_conf:
        shuffle_size: 10
    sort: true
    sort_conf:
        sort_size: 5
    batch_conf:
        batch_type: static
        batch_size: 4
    prefetch: 2
grad_clip: 5
accum_grad: 1
max_epoch: 3
log_interval: 1
save_interval: 2
optim: adam
optim_conf:
    lr: 0.004
scheduler: warmuplr
scheduler_conf:
    warmup_steps: 10
parallel_conf:
    ep_size: 2
    collective_timeout_s: 60
train_conf:
    seed: 7
    keep_checkpoint_max: 3
    num_threads: 1
)";
  if (!conf) return io_error("cannot write " + dir + "/conf.yaml");
  return Status();
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/moeasr_kill_resume_XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    if (!::testing::Test::HasFailure()) fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string cli_path() {
  if (const char* env = std::getenv("MOEASR_CLI")) return env;
  char self[4096];
  ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return "moe-asr";
  self[n] = '\0';
  std::string dir(self);
  dir = dir.substr(0, dir.rfind('/'));  // build/tests
  dir = dir.substr(0, dir.rfind('/'));  // build
  return dir + "/cli/moe-asr";
}

// Starts `mpirun -np <np> moe-asr train <args>` with output to `log`; returns its pid.
pid_t start_train(int np, const std::vector<std::string>& args, const std::string& log) {
  ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
  ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  ::setenv("OMPI_MCA_btl_vader_single_copy_mechanism", "none", 1);
  ::setenv("OMPI_MCA_rmaps_base_oversubscribe", "1", 1);
  const std::string cli = cli_path();
  std::vector<std::string> argv = {"mpirun", "--oversubscribe",  "--bind-to", "none",
                                   "-np",    std::to_string(np), cli,         "train"};
  argv.insert(argv.end(), args.begin(), args.end());
  pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) ::_exit(127);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    std::vector<char*> c;
    for (std::string& a : argv) c.push_back(a.data());
    c.push_back(nullptr);
    ::execvp("mpirun", c.data());
    ::_exit(127);
  }
  return pid;
}

// Waits up to `seconds`; returns the exit code (128 + signal when killed, -1 on timeout: then the
// process group is killed).
int wait_for(pid_t pid, double seconds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return -1;
}

int run_train(int np, const std::vector<std::string>& args, const std::string& log, double seconds = 120) {
  return wait_for(start_train(np, args, log), seconds);
}

std::vector<std::string> train_args(const std::string& corpus, const std::string& model_dir) {
  return {"--config",  corpus + "/conf.yaml", "--train_data", corpus + "/train.jsonl",
          "--cv_data", corpus + "/cv.jsonl",  "--model_dir",  model_dir};
}

// Every tensor of a weights file, by name (EP 1 table of the corpus config).
StatusOr<std::vector<std::pair<std::string, std::vector<float>>>> read_weights(const std::string& corpus,
                                                                               const std::string& path) {
  ASSIGN_OR_RETURN(proto::TrainConfig config, load_train_config(corpus + "/conf.yaml", {}));
  ParameterTable table = build_u2pp_parameter_table(model_config_from_train_config(config), ExpertLayout{});
  ParameterStore<float> store(table);
  RETURN_IF_ERROR(load_model_weights(path, &store));
  std::vector<std::pair<std::string, std::vector<float>>> out;
  for (const ParamEntry& e : table.entries()) {
    out.emplace_back(e.name, std::vector<float>(store.value(e), store.value(e) + e.numel));
  }
  return out;
}

// The steps of the "TRAIN | epoch E step S" lines of a log, in order.
std::vector<int64_t> logged_steps(const std::string& text) {
  std::vector<int64_t> steps;
  std::regex re("TRAIN \\| epoch [0-9]+ step ([0-9]+) \\| loss ([-+0-9.eEnaif]+)");
  for (std::sregex_iterator it(text.begin(), text.end(), re), end; it != end; ++it) {
    steps.push_back(std::stoll((*it)[1].str()));
  }
  return steps;
}
std::vector<double> logged_losses(const std::string& text) {
  std::vector<double> losses;
  std::regex re("TRAIN \\| epoch [0-9]+ step [0-9]+ \\| loss ([-+0-9.eEnaif]+)");
  for (std::sregex_iterator it(text.begin(), text.end(), re), end; it != end; ++it) {
    losses.push_back(std::strtod((*it)[1].str().c_str(), nullptr));
  }
  return losses;
}

TEST(TinyCorpus, IsWrittenAndLoads) {
  TempDir tmp;
  const char* env = std::getenv("MOEASR_TINY_CORPUS_DIR");
  const std::string dir = env != nullptr ? std::string(env) : tmp.path() + "/corpus";
  ASSERT_TRUE(write_tiny_corpus(dir).ok());
  auto tok = Tokenizer::create_char(dir + "/units.txt");
  ASSERT_TRUE(tok.ok()) << tok.status().to_string();
  EXPECT_EQ(tok.value()->vocab_size(), 19);
  LoaderOptions o;
  o.prefetch_batches = 0;
  o.batch_type = BatchType::kStatic;
  o.batch_size = 4;
  auto loader = Loader::from_manifest(dir + "/train.jsonl", tok.value().get(), o, 0, 1);
  ASSERT_TRUE(loader.ok()) << loader.status().to_string();
  ASSERT_TRUE(loader.value()->start_epoch(0).ok());
  int64_t utts = 0;
  while (loader.value()->has_next()) {
    Batch b;
    ASSERT_TRUE(loader.value()->next(&b).ok());
    EXPECT_EQ(b.num_mel_bins, kBins);
    utts += b.size();
  }
  EXPECT_EQ(utts, 48);
  auto config = load_train_config(dir + "/conf.yaml", {});
  ASSERT_TRUE(config.ok()) << config.status().to_string();
}

class KillResume : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(cli_path()))
        << "the moe-asr binary " << cli_path() << " is missing: build the moe-asr target (or set MOEASR_CLI)";
    corpus_ = tmp_.path() + "/corpus";
    ASSERT_TRUE(write_tiny_corpus(corpus_).ok());
  }
  TempDir tmp_;
  std::string corpus_;
};

// 8 shards of 6 utterances over 2 ranks, batches of 4: 6 steps per epoch, 3 epochs.
constexpr int64_t kSteps = 18;

// --max_minutes (and --overlap_grad_sync) through the program: a bad value is a usage error naming the flag;
// a limit that has passed before the first step ends the run at once, normally (exit 0, final weights
// written).
TEST_F(KillResume, MaxMinutesFlag) {
  std::vector<std::string> bad = train_args(corpus_, tmp_.path() + "/bad");
  bad.insert(bad.end(), {"--max_minutes", "-1"});
  const std::string bad_out = tmp_.path() + "/bad.out";
  EXPECT_EQ(run_train(1, bad, bad_out), 2) << slurp(bad_out);
  EXPECT_NE(slurp(bad_out).find("--max_minutes"), std::string::npos) << slurp(bad_out);
  // --overlap_grad_sync takes true or false only.
  std::vector<std::string> bad_overlap = train_args(corpus_, tmp_.path() + "/bad_overlap");
  bad_overlap.insert(bad_overlap.end(), {"--overlap_grad_sync", "yes"});
  const std::string bad_overlap_out = tmp_.path() + "/bad_overlap.out";
  EXPECT_EQ(run_train(1, bad_overlap, bad_overlap_out), 2) << slurp(bad_overlap_out);
  EXPECT_NE(slurp(bad_overlap_out).find("--overlap_grad_sync must be true or false (got 'yes')"),
            std::string::npos)
      << slurp(bad_overlap_out);

  const std::string dir = tmp_.path() + "/limited";
  std::vector<std::string> args = train_args(corpus_, dir);
  args.insert(args.end(), {"--max_minutes", "0.000001"});
  const std::string out = tmp_.path() + "/limited.out";
  ASSERT_EQ(run_train(2, args, out), 0) << slurp(out) << slurp(dir + "/log/train.rank000.log");
  EXPECT_TRUE(fs::exists(dir + "/final.h5"));
  EXPECT_NE(slurp(dir + "/log/train.rank000.log").find("--max_minutes 1e-06 reached at step 0"),
            std::string::npos)
      << slurp(dir + "/log/train.rank000.log");
}

TEST_F(KillResume, KilledRankResumesToBitIdenticalWeights) {
  const std::string straight = tmp_.path() + "/straight", killed = tmp_.path() + "/killed";
  ASSERT_EQ(run_train(2, train_args(corpus_, straight), tmp_.path() + "/straight.out"), 0)
      << slurp(tmp_.path() + "/straight.out") << slurp(straight + "/log/train.rank000.log");
  const std::string straight_log = slurp(straight + "/log/train.rank000.log");
  EXPECT_EQ(logged_steps(straight_log).back(), kSteps) << straight_log;

  // Kill rank 1 at a random step in [3, kSteps / 2 + 1] (checkpoints every 2 steps and at epoch ends;
  // the steps take milliseconds, so the kill lands a step or two later than asked).
  std::random_device device;
  const int64_t kill_step = 3 + static_cast<int64_t>(device() % static_cast<unsigned>(kSteps / 2 - 1));
  std::printf("[ kill ] SIGKILL to rank 1 after its step %lld line\n", (long long)kill_step);
  const std::string out = tmp_.path() + "/killed.out";
  const pid_t mpirun = start_train(2, train_args(corpus_, killed), out);
  const std::string rank1_log = killed + "/log/train.rank001.log";
  pid_t victim = -1;
  bool killed_it = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(90);
  while (std::chrono::steady_clock::now() < deadline && !killed_it) {
    const std::string text = slurp(rank1_log);
    std::smatch m;
    if (victim < 0 && std::regex_search(text, m, std::regex("\\] pid ([0-9]+)")))
      victim = std::stoi(m[1].str());
    const std::vector<int64_t> steps = logged_steps(text);
    if (victim > 0 && !steps.empty() && steps.back() >= kill_step) {
      ASSERT_EQ(::kill(victim, SIGKILL), 0);
      std::printf("[ kill ] rank 1 (pid %d) killed after its step %lld line\n", victim,
                  (long long)steps.back());
      killed_it = true;
      break;
    }
    int status = 0;
    if (::waitpid(mpirun, &status, WNOHANG) == mpirun) break;  // finished before we could kill it
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_TRUE(killed_it) << "never saw rank 1 reach step " << kill_step << ":\n"
                         << slurp(out) << slurp(rank1_log);
  const int rc = wait_for(mpirun, 60);
  EXPECT_NE(rc, 0) << "mpirun should fail when a rank is killed";
  EXPECT_FALSE(fs::exists(killed + "/final.h5")) << "the killed run must not have finished";

  // Restart with --resume auto and finish.
  std::vector<std::string> args = train_args(corpus_, killed);
  args.insert(args.end(), {"--resume", "auto"});
  ASSERT_EQ(run_train(2, args, tmp_.path() + "/resumed.out"), 0)
      << slurp(tmp_.path() + "/resumed.out") << slurp(killed + "/log/train.rank000.log");
  const std::string resumed_log = slurp(killed + "/log/train.rank000.log");
  EXPECT_NE(resumed_log.find("resumed from"), std::string::npos) << resumed_log;
  EXPECT_EQ(logged_steps(resumed_log).back(), kSteps);

  auto a = read_weights(corpus_, straight + "/final.h5");
  auto b = read_weights(corpus_, killed + "/final.h5");
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  ASSERT_EQ(a.value().size(), b.value().size());
  int64_t differing = 0;
  for (size_t i = 0; i < a.value().size(); ++i) {
    const auto& x = a.value()[i].second;
    const auto& y = b.value()[i].second;
    ASSERT_EQ(x.size(), y.size());
    if (std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) != 0) {
      ++differing;
      ADD_FAILURE() << "tensor " << a.value()[i].first << " differs after the kill and resume";
    }
  }
  std::printf("[ resume ] %zu tensors compared bit for bit, %lld differ\n", a.value().size(),
              (long long)differing);
  // The straight run moved away from the initial weights (the comparison is not vacuous).
  auto straight_losses = logged_losses(straight_log);
  ASSERT_GE(straight_losses.size(), 2u);
  EXPECT_LT(straight_losses.back(), straight_losses.front()) << straight_log;
}

TEST_F(KillResume, ExpertParallelTwoToOneContinues) {
  const std::string dir = tmp_.path() + "/ep";
  std::vector<std::string> args = train_args(corpus_, dir);
  args.insert(args.end(), {"--max_steps", "5"});
  ASSERT_EQ(run_train(2, args, tmp_.path() + "/ep2.out"), 0) << slurp(tmp_.path() + "/ep2.out");
  ASSERT_TRUE(fs::exists(dir + "/step_5")) << "a mid-epoch checkpoint at the last step";

  args = train_args(corpus_, dir);
  args.insert(args.end(), {"--resume", "auto", "--override_config", "parallel_conf.ep_size 1"});
  ASSERT_EQ(run_train(1, args, tmp_.path() + "/ep1.out"), 0)
      << slurp(tmp_.path() + "/ep1.out") << slurp(dir + "/log/train.rank000.log");
  const std::string log = slurp(dir + "/log/train.rank000.log");
  EXPECT_NE(log.find("written by 2 ranks with EP 2; now 1 ranks with EP 1"), std::string::npos) << log;
  EXPECT_NE(log.find("remapped at shard granularity"), std::string::npos) << log;
  const std::vector<int64_t> steps = logged_steps(log);
  ASSERT_FALSE(steps.empty());
  const std::vector<double> losses = logged_losses(log);
  for (double l : losses) EXPECT_TRUE(std::isfinite(l)) << log;
  // One rank, batches of 4: epoch 1 continues from the remapped shards, epochs 2 and 3 have 12 steps.
  EXPECT_GT(steps.back(), 5 + 2 * 12) << log;
  EXPECT_TRUE(fs::exists(dir + "/final.h5"));
  auto w = read_weights(corpus_, dir + "/final.h5");
  ASSERT_TRUE(w.ok()) << w.status().to_string();
  for (const auto& [name, values] : w.value()) {
    for (float v : values) ASSERT_TRUE(std::isfinite(v)) << name;
  }
}

TEST_F(KillResume, BpeUnitsInTheProgram) {
  // A sentencepiece model over the corpus alphabet (upper case: BPE mode upper-cases the text).
  const std::string text = tmp_.path() + "/bpe_text.txt";
  {
    std::ofstream out(text);
    std::mt19937 rng(5);
    for (int line = 0; line < 300; ++line) {
      const int words = 1 + static_cast<int>(rng() % 3);
      for (int w = 0; w < words; ++w) {
        const int letters = 2 + static_cast<int>(rng() % 4);
        for (int l = 0; l < letters; ++l) out << static_cast<char>('A' + rng() % 16);
        out << (w + 1 < words ? " " : "\n");
      }
    }
  }
  const std::string prefix = tmp_.path() + "/bpe";
  auto trained = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + text + " --model_prefix=" + prefix +
      " --vocab_size=40 --model_type=unigram --character_coverage=1.0 --hard_vocab_limit=false "
      "--minloglevel=2");
  ASSERT_TRUE(trained.ok()) << trained.ToString();
  auto units = build_bpe_units(prefix + ".model");
  ASSERT_TRUE(units.ok()) << units.status().to_string();
  ASSERT_TRUE(write_units(tmp_.path() + "/bpe_units.txt", units.value()).ok());

  const std::string dir = tmp_.path() + "/bpe_run";
  std::vector<std::string> args = train_args(corpus_, dir);
  args.insert(args.end(),
              {"--symbol_table", tmp_.path() + "/bpe_units.txt", "--override_config", "tokenizer bpe",
               "--override_config", "tokenizer_conf.bpe_path " + prefix + ".model", "--override_config",
               "output_dim " + std::to_string(units.value().size()), "--max_steps", "2"});
  const std::string out = tmp_.path() + "/bpe_run.out";
  ASSERT_EQ(run_train(2, args, out), 0) << slurp(out);
  const std::string log = slurp(dir + "/log/train.rank000.log");
  EXPECT_EQ(logged_steps(log), (std::vector<int64_t>{1, 2})) << log;
  for (double l : logged_losses(log)) EXPECT_TRUE(std::isfinite(l)) << log;
}

}  // namespace
}  // namespace moeasr
