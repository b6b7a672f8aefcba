// trainer/trainer.cc — the training loop of `moe-asr train` (see trainer.h): WeNet's executor step
// with gradient accumulation over expert parallelism inside data parallelism, lock-step epochs,
// cv, checkpoints with exact resume, preemption, logs, progress and TensorBoard scalars.
#include "trainer/trainer.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "core/arena.h"
#include "core/logging.h"
#include "core/philox.h"
#include "data_pipeline/cmvn.h"
#include "data_pipeline/shard.h"
#include "data_pipeline/tokenizer.h"
#include "model/chunk_sampling.h"
#include "model/expert_dispatch.h"
#include "model/front_end.h"
#include "model/u2pp_model.h"
#include "parallel/expert_load.h"
#include "parallel/grad_sync.h"
#include "parallel/mpi_expert_dispatcher.h"
#include "trainer/model_weights.h"
#include "trainer/rank_device.h"
#include "trainer/tensorboard.h"
#include "trainer/train_config.h"

#if MOEASR_WITH_CUDA
#include "kernels/cuda/cuda_context.h"
#include "kernels/cuda/device.h"
#include "parallel/mpi_communicator.h"
#include "parallel/nccl/nccl_communicator.h"
#endif

extern char** environ;

namespace moeasr {

// ---------------------------------------------------------------------------------------------------
// Preemption flag: the process-wide state a signal handler can reach (async-signal-safe: a lock-free
// atomic store, sigaction and raise only).

namespace {

std::atomic<int> g_preempt{0};
static_assert(std::atomic<int>::is_always_lock_free, "the preemption flag must be lock-free");

void preemption_handler(int sig) {
  if (sig == SIGTERM && g_preempt.load() != 0) {
    // Second SIGTERM: the default action now (the launcher insists).
    struct sigaction dfl;
    std::memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGTERM, &dfl, nullptr);
    raise(SIGTERM);
    return;
  }
  g_preempt.store(1);
}

}  // namespace

void install_preemption_handlers() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof(sa));
  sa.sa_handler = preemption_handler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR1, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}
bool preemption_requested() {
  return g_preempt.load() != 0;
}
void request_preemption() {
  g_preempt.store(1);
}
void clear_preemption_request() {
  g_preempt.store(0);
}

// ---------------------------------------------------------------------------------------------------
// Settings from the config.

namespace {

// A value of a resolved config: load_train_config (train_config.cc) fills every default, the only
// place defaults live; an unset key here means the config bypassed it (a programming error).
template <class V>
V resolved_value(bool has, V value, const char* key) {
  CHECK(has) << "config key " << key << " is unset: configs must come from load_train_config";
  return value;
}
#define MOEASR_RESOLVED(message, field) \
  resolved_value((message).has_##field(), (message).field(), #message "." #field)

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

StatusOr<TrainSettings> train_settings_from_config(const proto::TrainConfig& c) {
  TrainSettings s;
  s.accum_grad = MOEASR_RESOLVED(c, accum_grad);
  s.max_epoch = MOEASR_RESOLVED(c, max_epoch);
  s.log_interval = MOEASR_RESOLVED(c, log_interval);
  s.save_interval = MOEASR_RESOLVED(c, save_interval);
  const proto::TrainConf& t = c.train_conf();
  s.cv_interval = MOEASR_RESOLVED(t, cv_interval);
  s.keep_checkpoint_max = MOEASR_RESOLVED(t, keep_checkpoint_max);
  s.max_consecutive_nonfinite = MOEASR_RESOLVED(t, max_consecutive_nonfinite);
  s.seed = static_cast<uint64_t>(MOEASR_RESOLVED(t, seed));
  s.ep_size = MOEASR_RESOLVED(c.parallel_conf(), ep_size);
  const proto::OptimConf& o = c.optim_conf();
  s.adam.lr = MOEASR_RESOLVED(o, lr);
  if (o.betas_size() == 2) {
    s.adam.beta1 = o.betas(0);
    s.adam.beta2 = o.betas(1);
  }
  s.adam.eps = MOEASR_RESOLVED(o, eps);
  s.adam.weight_decay = MOEASR_RESOLVED(o, weight_decay);
  s.adam.warmup_steps = MOEASR_RESOLVED(c.scheduler_conf(), warmup_steps);
  s.adam.grad_clip = MOEASR_RESOLVED(c, grad_clip);
  if (s.accum_grad < 1)
    return invalid_argument_error("accum_grad must be >= 1 (got " + std::to_string(s.accum_grad) + ")");
  if (s.max_epoch < 1)
    return invalid_argument_error("max_epoch must be >= 1 (got " + std::to_string(s.max_epoch) + ")");
  if (s.log_interval < 1)
    return invalid_argument_error("log_interval must be >= 1 (got " + std::to_string(s.log_interval) + ")");
  if (s.save_interval < 0 || s.cv_interval < 0)
    return invalid_argument_error(
        "save_interval and train_conf.cv_interval must be >= 0 (0: at epoch ends only)");
  if (s.keep_checkpoint_max < 1)
    return invalid_argument_error("train_conf.keep_checkpoint_max must be >= 1 (got " +
                                  std::to_string(s.keep_checkpoint_max) + ")");
  if (s.max_consecutive_nonfinite < 0)
    return invalid_argument_error("train_conf.max_consecutive_nonfinite must be >= 0");
  if (c.has_optim() && c.optim() != "adam")
    return invalid_argument_error("optim: only 'adam' is implemented (got '" + c.optim() + "')");
  if (c.has_scheduler() && c.scheduler() != "warmuplr")
    return invalid_argument_error("scheduler: only 'warmuplr' is implemented (got '" + c.scheduler() + "')");
  return s;
}

LoaderOptions loader_options_from_config(const proto::TrainConfig& c, uint64_t seed, bool training) {
  LoaderOptions o;
  const proto::DatasetConf& d = c.dataset_conf();
  o.seed = seed;
  o.shuffle = training && MOEASR_RESOLVED(d, shuffle);
  o.shuffle_size = MOEASR_RESOLVED(d.shuffle_conf(), shuffle_size);
  o.sort = MOEASR_RESOLVED(d, sort);
  o.sort_size = MOEASR_RESOLVED(d.sort_conf(), sort_size);
  const proto::FilterConf& f = d.filter_conf();
  o.filter.max_frames = MOEASR_RESOLVED(f, max_length);
  o.filter.min_frames = MOEASR_RESOLVED(f, min_length);
  o.filter.max_tokens = MOEASR_RESOLVED(f, token_max_length);
  o.filter.min_tokens = MOEASR_RESOLVED(f, token_min_length);
  o.filter.max_token_frame_ratio = MOEASR_RESOLVED(f, max_output_input_ratio);
  o.filter.min_token_frame_ratio = MOEASR_RESOLVED(f, min_output_input_ratio);
  const proto::BatchConf& b = d.batch_conf();
  o.batch_type = MOEASR_RESOLVED(b, batch_type) == "static" ? BatchType::kStatic : BatchType::kDynamic;
  o.batch_size = MOEASR_RESOLVED(b, batch_size);
  o.max_frames_in_batch = MOEASR_RESOLVED(b, max_frames_in_batch);
  o.prefetch_batches = static_cast<int>(MOEASR_RESOLVED(d, prefetch));
  o.max_bad_fraction = MOEASR_RESOLVED(c.train_conf(), max_bad_data_fraction);
  if (training) {
    o.augment.spec_aug = MOEASR_RESOLVED(d, spec_aug);
    const proto::SpecAugConf& a = d.spec_aug_conf();
    o.augment.spec_aug_conf.num_t_mask = static_cast<int>(MOEASR_RESOLVED(a, num_t_mask));
    o.augment.spec_aug_conf.num_f_mask = static_cast<int>(MOEASR_RESOLVED(a, num_f_mask));
    o.augment.spec_aug_conf.max_t = static_cast<int>(MOEASR_RESOLVED(a, max_t));
    o.augment.spec_aug_conf.max_f = static_cast<int>(MOEASR_RESOLVED(a, max_f));
    o.augment.spec_sub = MOEASR_RESOLVED(d, spec_sub);
    o.augment.spec_sub_conf.num_t_sub = static_cast<int>(MOEASR_RESOLVED(d.spec_sub_conf(), num_t_sub));
    o.augment.spec_sub_conf.max_t = static_cast<int>(MOEASR_RESOLVED(d.spec_sub_conf(), max_t));
    o.augment.spec_trim = MOEASR_RESOLVED(d, spec_trim);
    o.augment.spec_trim_conf.max_t = static_cast<int>(MOEASR_RESOLVED(d.spec_trim_conf(), max_t));
  }
  return o;
}

Status check_parallel_layout(const proto::TrainConfig& config, int world_size) {
  const int64_t ep = MOEASR_RESOLVED(config.parallel_conf(), ep_size);
  if (ep < 1)
    return invalid_argument_error("parallel_conf.ep_size must be >= 1 (got " + std::to_string(ep) + ")");
  if (world_size % ep != 0) {
    return invalid_argument_error("impossible parallel layout: parallel_conf.ep_size " + std::to_string(ep) +
                                  " does not divide the world size " + std::to_string(world_size) +
                                  " (ranks); launch a multiple of " + std::to_string(ep) +
                                  " ranks or set parallel_conf.ep_size to a divisor of " +
                                  std::to_string(world_size));
  }
  const ModelConfig model = model_config_from_train_config(config);
  struct Kind {
    const char* key;
    const FfnConfig* ffn;
  };
  for (const Kind& k : {Kind{"encoder_conf.n_expert", &model.encoder.ffn},
                        Kind{"decoder_conf.n_expert", &model.decoder.ffn}}) {
    if (k.ffn->mlp_type != MlpType::kMoe) continue;
    if (k.ffn->n_expert % ep != 0) {
      return invalid_argument_error("impossible parallel layout: " + std::string(k.key) + " " +
                                    std::to_string(k.ffn->n_expert) +
                                    " is not divisible by parallel_conf.ep_size " + std::to_string(ep) +
                                    "; every EP rank must hold the same number of experts");
    }
  }
  if (ep > 1 && moe_expert_counts(model).empty()) {
    return invalid_argument_error(
        "parallel_conf.ep_size " + std::to_string(ep) +
        " > 1 but the model has no MoE layers (encoder_conf.mlp_type / decoder_conf.mlp_type)");
  }
  return Status();
}

std::string format_eta(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 86400)
    std::snprintf(buf, sizeof(buf), "%lldd%02lldh", (long long)(s / 86400), (long long)(s % 86400 / 3600));
  else if (s >= 3600)
    std::snprintf(buf, sizeof(buf), "%lldh%02lldm", (long long)(s / 3600), (long long)(s % 3600 / 60));
  else if (s >= 60)
    std::snprintf(buf, sizeof(buf), "%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
  else
    std::snprintf(buf, sizeof(buf), "%llds", (long long)s);
  return buf;
}

namespace {

class TensorBoardSink final : public ScalarSink {
 public:
  explicit TensorBoardSink(std::unique_ptr<EventWriter> writer) : writer_(std::move(writer)) {}
  void scalar(const std::string& tag, double value, int64_t step) override {
    if (failed_) return;
    Status s = writer_->add_scalar(tag, value, step);
    if (!s.ok()) fail(s);
  }
  void flush() override {
    if (failed_) return;
    Status s = writer_->flush();
    if (!s.ok()) fail(s);
  }

 private:
  void fail(const Status& s) {
    failed_ = true;
    LOG(WARNING) << "TensorBoard: " << s.message() << "; no more scalars are written (training goes on)";
  }
  std::unique_ptr<EventWriter> writer_;
  bool failed_ = false;
};

}  // namespace

StatusOr<std::unique_ptr<ScalarSink>> open_tensorboard_sink(const std::string& dir) {
  ASSIGN_OR_RETURN(std::unique_ptr<EventWriter> writer, EventWriter::open(dir));
  return std::unique_ptr<ScalarSink>(new TensorBoardSink(std::move(writer)));
}

StatusOr<int> redirect_stderr_to_rank_log(const std::string& model_dir, int rank) {
  std::error_code ec;
  const std::filesystem::path dir = std::filesystem::path(model_dir) / "log";
  std::filesystem::create_directories(dir, ec);
  if (ec) return io_error("cannot create the log directory " + dir.string() + ": " + ec.message());
  char name[64];
  std::snprintf(name, sizeof(name), "train.rank%03d.log", rank);
  const std::string path = (dir / name).string();
  const int console = dup(STDERR_FILENO);
  if (console < 0) return io_error("dup(stderr) failed: " + std::string(std::strerror(errno)));
  fcntl(console, F_SETFD, FD_CLOEXEC);
  // A console that went away must not kill the trainer (its writes just fail).
  signal(SIGPIPE, SIG_IGN);
  if (rank != 0) {
    const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return io_error("cannot open the log file " + path + ": " + std::strerror(errno));
    dup2(fd, STDERR_FILENO);
    close(fd);
    return console;
  }
  // Rank 0: stderr -> pipe -> `tee -a file` -> console. tee is a child process, so whatever the
  // trainer wrote reaches both even when it is killed; it blocks the launcher's signals so that it
  // outlives the trainer's own checkpoint-and-exit on SIGTERM/SIGUSR1, and ends at EOF.
  int fds[2];
  if (pipe(fds) != 0) return io_error("pipe() failed: " + std::string(std::strerror(errno)));
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[0], STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, console, STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, console, STDERR_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[1]);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t blocked;
  sigemptyset(&blocked);
  for (int s : {SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGHUP, SIGQUIT}) sigaddset(&blocked, s);
  posix_spawnattr_setsigmask(&attr, &blocked);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  std::string tee = "tee", append = "-a", file = path;
  char* argv[] = {tee.data(), append.data(), file.data(), nullptr};
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, "tee", &actions, &attr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  close(fds[0]);
  if (rc != 0) {
    close(fds[1]);
    // Without tee: the console keeps stderr; the file gets nothing but this note.
    std::ofstream note(path, std::ios::app);
    note << "could not start tee (" << std::strerror(rc) << "): rank 0's log is on the console only\n";
    return console;
  }
  dup2(fds[1], STDERR_FILENO);
  close(fds[1]);
  return console;
}

// ---------------------------------------------------------------------------------------------------
// The trainer.

namespace {

// All-reduce of a few doubles (sum).
Status all_reduce_sum(Communicator* comm, double* values, int64_t n) {
  return comm->all_reduce(values, n, DType::f64, ReduceOp::kSum);
}

std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), format, v);
  return buf;
}

// A batch of one short utterance of zeros: what a rank without cv data forwards so that the EP
// collectives of its group still meet (its loss is not counted).
Batch padding_batch(int64_t bins) {
  Batch b;
  b.num_mel_bins = bins;
  b.max_frames = 16;
  b.max_tokens = 1;
  b.keys = {"<padding>"};
  b.feats.assign(static_cast<size_t>(16 * bins), 0.0f);
  b.feat_lengths = {16};
  b.tokens = {1};
  b.token_lengths = {1};
  return b;
}

U2ppBatch<float> model_batch(const Batch& b) {
  U2ppBatch<float> m;
  m.feats = b.feats.data();
  m.feat_lengths = b.feat_lengths.data();
  m.text = b.tokens.data();
  m.text_lengths = b.token_lengths.data();
  m.batch = b.size();
  m.frames = b.max_frames;
  m.max_text = b.max_tokens;
  return m;
}

// Running sums of one log interval.
struct IntervalStats {
  int64_t steps = 0;    // attempted
  int64_t updated = 0;  // of which updated (the loss averages are over these)
  double loss = 0, loss_ctc = 0, loss_att = 0, acc = 0, grad_norm = 0;
  int64_t frames = 0;
  double fwd = 0, bwd = 0, opt = 0, data = 0, wall = 0;
  std::vector<std::vector<int64_t>> load;  // per MoE FFN, per global expert (this rank's routing)
};

}  // namespace

// What a --device cuda run holds on top of the CPU trainer's state.
#if MOEASR_WITH_CUDA
struct GpuState {
  std::unique_ptr<CudaContext> cuda;
  std::unique_ptr<DeviceMemoryBlock> params_block, activations_block;
  std::unique_ptr<Arena> params;  // parameters, gradients, Adam moments, the positional table
  // Several GPUs: NCCL over the same ranks as the MPI groups, for device buffers only (the dense
  // gradients over the world, the expert gradients over the EDP group, the expert rows over the EP
  // group); everything the ranks agree on through host values stays on MPI. Null for a one-member
  // group (with EP 1 the EDP group is the world, so world_nccl serves both).
  std::unique_ptr<NcclCommunicator> world_nccl, ep_nccl, edp_nccl;
};
#else
struct GpuState {};
#endif

struct Trainer::Impl {
  TrainerOptions options;
  TrainSettings settings;
  ModelConfig model_config;
  ProcessGroups* groups = nullptr;
  std::string config_yaml;

  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Loader> train_loader;
  std::unique_ptr<Loader> cv_loader;
  std::vector<ManifestEntry> train_manifest;

  std::unique_ptr<ParameterTable> table;
  std::unique_ptr<ParameterStore<float>> store;
  std::unique_ptr<ExpertDispatcher<float>> dispatcher;      // the fp32 model's
  std::unique_ptr<ParameterStore<bf16>> bf16_params;        // --precision bf16: the weights' bf16 copy
  std::unique_ptr<Arena> bf16_copy_memory;                  // --precision bf16 on the CPU: holds that copy
  std::unique_ptr<ExpertDispatcher<bf16>> bf16_dispatcher;  // --precision bf16
  std::unique_ptr<U2ppTrainable<float>> model;              // U2ppModel<float>, or <bf16> (--precision bf16)
  std::unique_ptr<AdamOptimizer<float>> adam;
  std::unique_ptr<Arena> activations;    // ctx.device memory
  std::unique_ptr<Arena> host_metadata;  // GPU runs: the step's host-side metadata (ctx.host_metadata)
  GpuState gpu;                          // --device cuda
  RunContext ctx;

  TrainingState state;
  bool continue_epoch = false;  // a mid-epoch cursor was restored: begin_epoch() must not restart
  int64_t consecutive_nonfinite = 0;
  bool is_moe = false;
  int64_t last_saved_step = -1;
  int64_t last_cv_step = -1;
  std::string last_checkpoint;
  double last_cv_loss = 0;

  IntervalStats interval;
  Clock::time_point interval_start = Clock::now();
  Clock::time_point epoch_start = Clock::now();
  Clock::time_point run_start = Clock::now();  // --max_minutes counts from run()
  int64_t epoch_start_step = 0;
  double planned_epoch_frames = 0;  // this rank's share of the manifest's frames (ETA)
  double seconds_per_step = 0;      // smoothed
  Clock::time_point last_progress = Clock::now() - std::chrono::hours(1);
  bool progress_tty = false;
  bool progress_shown = false;

  int rank() const { return groups->layout.world_rank; }
  int world() const { return groups->layout.world_size; }

  // Micro-batches attempted before this step (the RNG counter): updates and skips, times accum_grad.
  int64_t attempts() const { return state.step + state.skipped_steps; }

  void progress_clear() {
    if (!progress_shown) return;
    const char clear[] = "\r\033[K";
    [[maybe_unused]] ssize_t n = write(options.progress_fd, clear, sizeof(clear) - 1);
    progress_shown = false;
  }
  void progress_update(const StepResult& r, double eta) {
    if (!progress_tty) return;
    if (seconds_since(last_progress) < 0.25) return;
    last_progress = Clock::now();
    const double fraction = epoch_fraction();
    const int width = 20;
    const int filled = std::clamp(static_cast<int>(fraction * width + 0.5), 0, width);
    std::string bar(static_cast<size_t>(filled), '#');
    bar.append(static_cast<size_t>(width - filled), '-');
    char line[256];
    std::snprintf(line, sizeof(line),
                  "\r\033[Kepoch %lld/%lld [%s] %3.0f%% | step %lld | loss %.3f | %.2f steps/s | ETA %s",
                  (long long)state.epoch + 1, (long long)settings.max_epoch, bar.c_str(), 100.0 * fraction,
                  (long long)state.step, r.loss, seconds_per_step > 0 ? 1.0 / seconds_per_step : 0.0,
                  format_eta(eta).c_str());
    [[maybe_unused]] ssize_t n = write(options.progress_fd, line, std::strlen(line));
    progress_shown = true;
  }

  double epoch_fraction() const {
    if (planned_epoch_frames <= 0 || !train_loader) return 0;
    return std::min(1.0, static_cast<double>(train_loader->stats().frames) / planned_epoch_frames);
  }

  // Seconds until the end of training: by steps or epochs left, capped by --max_minutes.
  double eta_seconds() const {
    const double time_left =
        options.max_minutes > 0 ? std::max(0.0, 60.0 * options.max_minutes - seconds_since(run_start)) : -1;
    const double by_work = work_eta_seconds();
    if (time_left < 0) return by_work;
    return by_work < 0 ? time_left : std::min(by_work, time_left);
  }

  double work_eta_seconds() const {
    if (seconds_per_step <= 0) return -1;
    if (options.max_steps > 0) return static_cast<double>(options.max_steps - state.step) * seconds_per_step;
    const double fraction = epoch_fraction();
    const int64_t steps_in_epoch = state.step - epoch_start_step;
    if (fraction < 0.01 || steps_in_epoch <= 0) return -1;
    const double steps_per_epoch = static_cast<double>(steps_in_epoch) / fraction;
    const double epochs_left = static_cast<double>(settings.max_epoch - state.epoch) - fraction;
    return std::max(0.0, epochs_left) * steps_per_epoch * seconds_per_step;
  }

  bool time_limit_reached() const {
    return options.max_minutes > 0 && seconds_since(run_start) >= 60.0 * options.max_minutes;
  }

  void plan_epoch_frames() {
    const LoaderOptions o = loader_options_from_config(options.config, state.seed, true);
    planned_epoch_frames = 0;
    for (int32_t s : rank_shards(static_cast<int64_t>(train_manifest.size()), state.seed, state.epoch,
                                 o.shuffle, rank(), world())) {
      planned_epoch_frames += static_cast<double>(train_manifest[static_cast<size_t>(s)].num_frames);
    }
  }

  void scalar(const std::string& tag, double value) {
    if (options.scalars != nullptr) options.scalars->scalar(tag, value, state.step);
  }

  bool on_gpu() const { return ctx.device != Device::cpu; }

  // Both step arenas, at the start of every micro-batch and cv batch.
  void reset_step_arenas() {
    activations->reset();
    if (host_metadata) host_metadata->reset();
  }

  // The batch as the model takes it: on the GPU the features are uploaded into the activation arena
  // (call after reset_step_arenas); the integer metadata stays on the host.
  U2ppBatch<float> device_batch(const Batch& b) {
    U2ppBatch<float> view = model_batch(b);
    if (!on_gpu()) return view;
    float* feats = activations->allocate_array<float>(static_cast<int64_t>(b.feats.size()));
    op::copy_host_to_device(feats, b.feats.data(), static_cast<int64_t>(b.feats.size() * sizeof(float)), ctx);
    view.feats = feats;
    return view;
  }

  // GPU runs: refresh the host copies of the parameters, gradients and Adam moments (checkpoints and
  // the final weights read those).
  void sync_host_copies() {
    if (!on_gpu()) return;
    store->copy_to_host(ctx);
    adam->copy_to_host(ctx);
  }

  // --device cuda: a CUDA context on this rank's local device, the store and Adam moments moved into
  // one device block, the rest of the free memory (less a reserve for cuBLASLt/cuDNN) for activations.
  // Called after the weights are final on the host (initialised, CMVN, resumed) and before the model
  // binds them.
  Status place_on_gpu();
  // The gradient all-reduce of a step: over NCCL, ordered after the backward on the compute stream
  // and before the optimizer (GPU runs with several ranks); over the MPI groups otherwise.
  Status sync_step_gradients();
  // The communicators of the gradient sums: the dense gradients over the world, the experts' over the
  // EDP group (their NCCL twins on GPU runs with several ranks).
  void gradient_groups(Communicator** dense, Communicator** experts);
  // options.overlap_grad_sync: the hook for the step's last backward, which sums each range of final
  // gradients as the backward releases it (GradRangeReady); the first error lands in *status.
  // finish_overlapped_sync() then orders the optimizer after the device communicators' work.
  // The host time spent in the sums accumulates in *seconds (the log counts it under "opt", with the
  // optimizer, as when the sum follows the backward).
  GradRangeReady overlapped_sync(Status* status, double* seconds);
  Status finish_overlapped_sync();
  template <class T>
  std::unique_ptr<ExpertDispatcher<T>> make_dispatcher();
  // The model for the precision: U2ppModel<float>, or U2ppModel<bf16> over a bf16 copy of the weights.
  void make_model(const ExpertLayout& layout);
  // The positional table into device memory next to the parameters (GPU runs; after the model exists).
  void place_model_tables();

  Status load_cmvn(const std::string& path) {
    ASSIGN_OR_RETURN(CmvnStats stats, read_cmvn_json(path));
    std::vector<float> mean, istd;
    RETURN_IF_ERROR(cmvn_mean_istd(&mean, &istd, stats));
    const ParamEntry* m = table->find("encoder.global_cmvn.mean");
    const ParamEntry* s = table->find("encoder.global_cmvn.istd");
    if (m == nullptr || s == nullptr) return internal_error("the model has no encoder.global_cmvn buffers");
    if (static_cast<int64_t>(mean.size()) != m->numel) {
      return invalid_argument_error("cmvn file " + path + " has " + std::to_string(mean.size()) +
                                    " dims but input_dim is " + std::to_string(m->numel));
    }
    // Into the host vectors: called before the store moves to a device.
    std::copy(mean.begin(), mean.end(), store->values[static_cast<int>(m->region)].data() + m->offset);
    std::copy(istd.begin(), istd.end(), store->values[static_cast<int>(s->region)].data() + s->offset);
    return Status();
  }

  Status restore_data_position() {
    continue_epoch = false;
    // An epoch-end checkpoint saves no cursor (or empty ones): the next epoch from its start.
    size_t empty = 0;
    for (const std::string& c : state.data_cursors) empty += c.empty() ? 1 : 0;
    if (empty == state.data_cursors.size()) return Status();
    if (empty != 0) {
      return data_loss_error("the checkpoint holds data cursors for only " +
                             std::to_string(state.data_cursors.size() - empty) + " of " +
                             std::to_string(state.data_cursors.size()) +
                             " ranks; resume from another checkpoint (move this one away)");
    }
    std::vector<LoaderCursor> cursors;
    for (size_t i = 0; i < state.data_cursors.size(); ++i) {
      StatusOr<LoaderCursor> c = LoaderCursor::parse(state.data_cursors[i]);
      if (!c.ok()) return c.status().with_context("checkpoint data cursor of rank " + std::to_string(i));
      cursors.push_back(std::move(c).value());
    }
    LoaderCursor mine;
    if (static_cast<int>(cursors.size()) == world()) {
      mine = cursors[static_cast<size_t>(rank())];
    } else {
      LOG(WARNING) << "resume: the checkpoint was written by " << cursors.size() << " ranks, this run has "
                   << world() << "; the data position is remapped at shard granularity (shards in flight "
                   << "are read again from their start)";
      ASSIGN_OR_RETURN(std::vector<LoaderCursor> remapped, remap_cursors(cursors, world()));
      mine = remapped[static_cast<size_t>(rank())];
    }
    RETURN_IF_ERROR(train_loader->restore(mine));
    continue_epoch = true;
    return Status();
  }

  Status initialise_from(const std::string& path) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) {
      TrainingState ignored;
      RETURN_IF_ERROR(load_checkpoint(path, &ignored, store.get(), nullptr));
    } else {
      RETURN_IF_ERROR(load_model_weights(path, store.get()));
    }
    LOG(INFO) << "initialised the weights from " << path
              << " (optimizer, step and data position start fresh)";
    return Status();
  }
};

Status Trainer::Impl::place_on_gpu() {
#if MOEASR_WITH_CUDA
  std::string how;
  ASSIGN_OR_RETURN(const int device, rank_cuda_device(&how));
  gpu.cuda = std::make_unique<CudaContext>(device);
  gpu.cuda->fill(&ctx);
  // NCCL communicators over the MPI groups (collective: every rank creates them in the same order).
  auto nccl_over = [&](Communicator* group, std::unique_ptr<NcclCommunicator>* out) -> Status {
    if (group->size() <= 1) return Status();
    auto* mpi = dynamic_cast<MpiCommunicator*>(group);
    if (mpi == nullptr) {
      return failed_precondition_error("--device cuda with " + std::to_string(world()) +
                                       " ranks needs the MPI process groups (launch with mpirun or srun)");
    }
    ASSIGN_OR_RETURN(*out, NcclCommunicator::create(mpi, device, mpi->options()));
    return Status();
  };
  RETURN_IF_ERROR(nccl_over(groups->world.get(), &gpu.world_nccl));
  if (groups->layout.ep_size > 1) {
    RETURN_IF_ERROR(nccl_over(groups->ep.get(), &gpu.ep_nccl));
    RETURN_IF_ERROR(nccl_over(groups->edp.get(), &gpu.edp_nccl));
  }
  int64_t elems = 0;
  for (int r = 0; r < kNumParamRegions; ++r) {
    elems += static_cast<int64_t>(store->values[r].size() + 3 * store->grads[r].size());
  }
  const int64_t table_bytes = static_cast<int64_t>(kPositionalEncodingMaxLen) *
                              model_config.encoder.output_size * static_cast<int64_t>(sizeof(float));
  int64_t copy_bytes = 0;  // --precision bf16: the bf16 copy of the weights (make_model)
  if (options.bf16) {
    for (int r = 0; r < kNumParamRegions; ++r) {
      copy_bytes += static_cast<int64_t>(store->values[r].size() * sizeof(bf16)) + 256;
    }
  }
  const int64_t param_bytes =
      elems * static_cast<int64_t>(sizeof(float)) + copy_bytes + table_bytes + (int64_t{16} << 20);
  gpu.params_block =
      std::make_unique<DeviceMemoryBlock>("parameters, gradients and Adam moments", param_bytes);
  gpu.params =
      std::make_unique<Arena>("device parameters", gpu.params_block->data(), param_bytes, Device::cuda);
  store->place_on(gpu.params.get(), ctx);
  adam->place_on(gpu.params.get(), ctx);
  const int64_t reserve = int64_t{2} << 30;  // cuBLASLt/cuDNN workspaces, the CUDA context's own use
  const int64_t activation_bytes = cuda_free_bytes() - reserve;
  if (activation_bytes <= 0) {
    return failed_precondition_error("--device cuda: no device memory left for activations after the " +
                                     std::to_string(param_bytes) + " bytes of parameters and moments");
  }
  gpu.activations_block = std::make_unique<DeviceMemoryBlock>("activations", activation_bytes);
  activations = std::make_unique<Arena>("device activations", gpu.activations_block->data(), activation_bytes,
                                        Device::cuda);
  ctx.activations = activations.get();
  host_metadata = std::make_unique<Arena>("host metadata", int64_t{1} << 20, Arena::Growth::kGrowable);
  ctx.host_metadata = host_metadata.get();
  LOG(INFO) << "device: " << how << "; " << param_bytes << " bytes for parameters, gradients and moments, "
            << activation_bytes << " for activations";
  return Status();
#else
  return rank_cuda_device(nullptr).status();  // this build has no CUDA backend: says so
#endif
}

void Trainer::Impl::gradient_groups(Communicator** dense, Communicator** experts) {
  *dense = groups->world.get();
  *experts = groups->edp.get();
#if MOEASR_WITH_CUDA
  if (gpu.world_nccl) *dense = gpu.world_nccl.get();
  if (gpu.edp_nccl) {
    *experts = gpu.edp_nccl.get();
  } else if (groups->layout.ep_size == 1 && gpu.world_nccl) {
    *experts = gpu.world_nccl.get();  // EP 1: the EDP group is the world
  }
#endif
}

GradRangeReady Trainer::Impl::overlapped_sync(Status* status, double* seconds) {
  Communicator *dense = nullptr, *experts = nullptr;
  gradient_groups(&dense, &experts);
  return [this, dense, experts, status, seconds](ParamRegion region, int64_t begin, int64_t end) {
    if (!status->ok()) return;  // the first error is reported after the backward
    const Clock::time_point start = Clock::now();
    Communicator* comm = region == ParamRegion::kDense ? dense : experts;
    // A device communicator's all-reduce runs on its own stream, after the backward so far.
    *status = comm->after_compute(ctx.cuda_stream);
    if (status->ok()) *status = sync_gradient_range(store.get(), region, begin, end, comm, GradSyncOptions{});
    *seconds += seconds_since(start);
  };
}

Status Trainer::Impl::finish_overlapped_sync() {
  Communicator *dense = nullptr, *experts = nullptr;
  gradient_groups(&dense, &experts);
  RETURN_IF_ERROR(dense->before_compute(ctx.cuda_stream));
  if (experts != dense) RETURN_IF_ERROR(experts->before_compute(ctx.cuda_stream));
  return Status();
}

Status Trainer::Impl::sync_step_gradients() {
  Communicator *dense = nullptr, *experts = nullptr;
  gradient_groups(&dense, &experts);
  // Device communicators enqueue on their own streams: after the backward, before the optimizer.
  RETURN_IF_ERROR(dense->after_compute(ctx.cuda_stream));
  if (experts != dense) RETURN_IF_ERROR(experts->after_compute(ctx.cuda_stream));
  RETURN_IF_ERROR(sync_gradients(store.get(), dense, experts, GradSyncOptions{}));
  RETURN_IF_ERROR(dense->before_compute(ctx.cuda_stream));
  if (experts != dense) RETURN_IF_ERROR(experts->before_compute(ctx.cuda_stream));
  return Status();
}

// The expert dispatcher: local with EP 1; with EP > 1 the counts over the MPI EP group and, on GPUs,
// the rows over its NCCL twin.
template <class T>
std::unique_ptr<ExpertDispatcher<T>> Trainer::Impl::make_dispatcher() {
  if (groups->layout.ep_size <= 1) return std::make_unique<LocalExpertDispatcher<T>>();
  Communicator* rows = nullptr;
#if MOEASR_WITH_CUDA
  rows = gpu.ep_nccl.get();
#endif
  return std::make_unique<MpiExpertDispatcher<T>>(groups->ep.get(), CountVerification::kSums, rows);
}

void Trainer::Impl::make_model(const ExpertLayout& layout) {
  if (!options.bf16) {
    dispatcher = make_dispatcher<float>();
    model = std::make_unique<U2ppModel<float>>(model_config, store.get(), dispatcher.get(), layout);
    return;
  }
  // The copy lives next to the masters: in the device block on GPUs, in a host arena on the CPU.
  Arena* copy_arena = nullptr;
#if MOEASR_WITH_CUDA
  if (on_gpu()) copy_arena = gpu.params.get();
#endif
  if (copy_arena == nullptr) {
    int64_t bytes = 0;
    for (int r = 0; r < kNumParamRegions; ++r) {
      bytes += table->region_numel(static_cast<ParamRegion>(r)) * static_cast<int64_t>(sizeof(bf16)) + 256;
    }
    bf16_copy_memory = std::make_unique<Arena>("bf16 weight copy", bytes, Arena::Growth::kFixed);
    copy_arena = bf16_copy_memory.get();
  }
  bf16_params = std::make_unique<ParameterStore<bf16>>(store.get(), copy_arena, ctx);
  bf16_dispatcher = make_dispatcher<bf16>();
  model = std::make_unique<U2ppModel<bf16>>(model_config, bf16_params.get(), bf16_dispatcher.get(), layout);
}

void Trainer::Impl::place_model_tables() {
#if MOEASR_WITH_CUDA
  if (on_gpu()) model->place_tables(gpu.params.get(), ctx);
#endif
}

Trainer::Trainer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Trainer::~Trainer() = default;

const TrainingState& Trainer::state() const {
  return impl_->state;
}
const ParameterStore<float>& Trainer::store() const {
  return *impl_->store;  // GPU runs: its host vectors are as of the last checkpoint / weights file
}
const TrainSettings& Trainer::settings() const {
  return impl_->settings;
}
const ModelConfig& Trainer::model_config() const {
  return impl_->model_config;
}
const ParallelLayout& Trainer::layout() const {
  return impl_->groups->layout;
}

StatusOr<std::unique_ptr<Trainer>> Trainer::create(TrainerOptions options, ProcessGroups* groups) {
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.groups = groups;
  ASSIGN_OR_RETURN(m.settings, train_settings_from_config(options.config));
  m.model_config = model_config_from_train_config(options.config);
  RETURN_IF_ERROR(validate_model_config(m.model_config));
  RETURN_IF_ERROR(check_parallel_layout(options.config, groups->layout.world_size));
  if (m.settings.ep_size != groups->layout.ep_size) {
    return invalid_argument_error("parallel_conf.ep_size " + std::to_string(m.settings.ep_size) +
                                  " differs from the process groups' EP size " +
                                  std::to_string(groups->layout.ep_size));
  }
  if (options.model_dir.empty()) return invalid_argument_error("--model_dir is required");
  if (options.train_data.empty())
    return invalid_argument_error("--train_data is required (a shard manifest)");
  m.is_moe = !moe_expert_counts(m.model_config).empty();
  m.config_yaml = train_config_to_yaml(options.config);
  m.options = std::move(options);
  const TrainerOptions& o = m.options;

  if (o.device != "cpu" && o.device != "cuda") {
    return invalid_argument_error("--device must be cpu or cuda (got '" + o.device + "')");
  }
  if (o.bf16 && o.device != "cuda" && m.rank() == 0) {
    LOG(WARNING) << "--precision bf16 on the CPU runs the bf16 model through its reference path (each op "
                    "on fp32 copies of its bf16 arrays, the results rounded to bf16): for checking bf16 "
                    "numerics, several times slower than fp32; the speed is the GPU's (--device cuda)";
  }
  m.ctx.device = Device::cpu;
  m.ctx.num_threads = std::max(1, o.num_threads);
  m.ctx.rank = groups->layout.world_rank;
  m.ctx.world = groups->layout.world_size;
  m.activations = std::make_unique<Arena>("activations", int64_t{1} << 24, Arena::Growth::kGrowable);
  m.ctx.activations = m.activations.get();
  m.state.seed = m.settings.seed;
  m.state.config_yaml = m.config_yaml;
  m.state.world_size = groups->layout.world_size;
  m.state.ep_size = groups->layout.ep_size;

  std::error_code ec;
  std::filesystem::create_directories(o.model_dir, ec);
  if (ec) return io_error("cannot create --model_dir " + o.model_dir + ": " + ec.message());

  // Tokenizer.
  std::string units = o.symbol_table.empty() ? o.config.tokenizer_conf().symbol_table_path() : o.symbol_table;
  if (units.empty()) {
    return invalid_argument_error(
        "no symbol table: set tokenizer_conf.symbol_table_path in the config or pass "
        "--symbol_table units.txt");
  }
  if (o.config.tokenizer() == "bpe") {
    ASSIGN_OR_RETURN(m.tokenizer, Tokenizer::create_bpe(units, o.config.tokenizer_conf().bpe_path()));
  } else {
    ASSIGN_OR_RETURN(m.tokenizer, Tokenizer::create_char(units));
  }
  if (m.tokenizer->vocab_size() != m.model_config.vocab_size) {
    return invalid_argument_error("the symbol table " + units + " has " +
                                  std::to_string(m.tokenizer->vocab_size()) + " units but output_dim is " +
                                  std::to_string(m.model_config.vocab_size) +
                                  "; set output_dim to the number of lines of units.txt");
  }

  // Model, optimizer.
  const ExpertLayout layout = groups->layout.expert_layout();
  m.table = std::make_unique<ParameterTable>(build_u2pp_parameter_table(m.model_config, layout));
  m.store = std::make_unique<ParameterStore<float>>(*m.table);
  initialize_parameters(m.store.get(), m.settings.seed);
  AdamOptions adam = m.settings.adam;
  adam.grad_clip = 0;  // clipped with the distributed norm before the update
  m.adam = std::make_unique<AdamOptimizer<float>>(m.store.get(), adam);
  const std::string cmvn = o.cmvn.empty() ? o.config.cmvn_conf().cmvn_file() : o.cmvn;
  if (!cmvn.empty()) RETURN_IF_ERROR(m.load_cmvn(cmvn));

  // Data.
  ASSIGN_OR_RETURN(m.train_manifest, read_manifest(o.train_data));
  if (static_cast<int>(m.train_manifest.size()) < m.world()) {
    // Shards are dealt to ranks and epochs end in lock-step: a rank without a shard would end every
    // epoch before its first step, and the run would never train.
    return invalid_argument_error(o.train_data + " lists " + std::to_string(m.train_manifest.size()) +
                                  " shard(s) for " + std::to_string(m.world()) +
                                  " ranks; every rank needs at least one: rerun make_shards with a smaller "
                                  "--num_utts_per_shard");
  }
  auto hdf5_mutex = std::make_shared<std::mutex>();

  // Resume or initialise. The seed of a resumed run is the checkpoint's (cursors are keyed by it).
  std::string resume_dir;
  if (o.resume) {
    StatusOr<std::string> latest = find_latest_checkpoint(o.model_dir);
    if (latest.ok()) {
      resume_dir = latest.value();
    } else if (latest.status().code() == StatusCode::kNotFound) {
      LOG(INFO) << "--resume auto: no complete checkpoint in " << o.model_dir << "; starting from scratch";
    } else {
      return latest.status();
    }
  }
  if (!resume_dir.empty()) {
    TrainingState loaded;
    RETURN_IF_ERROR(load_checkpoint(resume_dir, &loaded, m.store.get(), m.adam.get()));
    if (loaded.config_yaml != m.config_yaml) {
      LOG(WARNING) << "resume: the config differs from the one " << resume_dir
                   << " was trained with; continuing with the new one";
    }
    if (loaded.seed != m.settings.seed) {
      LOG(WARNING) << "resume: keeping the checkpoint's seed " << loaded.seed << " (the config says "
                   << m.settings.seed << "): the data order and every random draw are keyed by it";
    }
    m.state.step = loaded.step;
    m.state.epoch = loaded.epoch;
    m.state.batches_in_epoch = loaded.batches_in_epoch;
    m.state.seed = loaded.seed;
    m.state.data_cursors = loaded.data_cursors;
    m.state.lr = loaded.lr;
    m.state.cv_loss = loaded.cv_loss;
    m.state.has_cv_loss = loaded.has_cv_loss;
    m.state.skipped_steps = loaded.skipped_steps;
    m.last_saved_step = loaded.step;
    m.last_checkpoint = resume_dir;
    // The checkpoint's epoch is 0-based; the log counts from 1, as the TRAIN lines do.
    LOG(INFO) << "resumed from " << resume_dir << ": step " << loaded.step << ", epoch " << loaded.epoch + 1
              << (std::all_of(loaded.data_cursors.begin(), loaded.data_cursors.end(),
                              [](const std::string& c) { return c.empty(); })
                      ? " (from its start)"
                      : " (mid-epoch)")
              << ", written by " << loaded.world_size << " ranks with EP " << loaded.ep_size << "; now "
              << m.world() << " ranks with EP " << groups->layout.ep_size;
  } else if (!o.checkpoint.empty()) {
    RETURN_IF_ERROR(m.initialise_from(o.checkpoint));
  }

  // The weights are final on the host: move them to the device (GPU runs), then bind the model.
  if (o.device == "cuda") RETURN_IF_ERROR(m.place_on_gpu());
  m.make_model(layout);
  m.place_model_tables();

  LoaderOptions train_options = loader_options_from_config(o.config, m.state.seed, true);
  train_options.hdf5_mutex = hdf5_mutex;
  ASSIGN_OR_RETURN(m.train_loader, Loader::from_manifest(o.train_data, m.tokenizer.get(), train_options,
                                                         m.rank(), m.world()));
  if (!o.cv_data.empty()) {
    LoaderOptions cv_options = loader_options_from_config(o.config, m.state.seed, false);
    cv_options.hdf5_mutex = hdf5_mutex;
    ASSIGN_OR_RETURN(m.cv_loader,
                     Loader::from_manifest(o.cv_data, m.tokenizer.get(), cv_options, m.rank(), m.world()));
  }
  if (!resume_dir.empty()) RETURN_IF_ERROR(m.restore_data_position());

  // The resolved config, as WeNet writes it (rank 0).
  if (m.rank() == 0) {
    const std::string path = o.model_dir + "/train.yaml";
    const std::string tmp = path + ".tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << m.config_yaml;
      if (!out) return io_error("cannot write " + tmp);
    }
    std::filesystem::rename(tmp, path, ec);
    if (ec) return io_error("cannot rename " + tmp + " to " + path + ": " + ec.message());
  }
  m.progress_tty = m.rank() == 0 && o.progress_fd >= 0 && isatty(o.progress_fd);
  int64_t params = 0;
  for (int r = 0; r < 2; ++r) params += m.table->region_numel(static_cast<ParamRegion>(r));
  LOG(INFO) << "model: " << m.table->entries().size() << " tensors, " << params
            << " trainable parameters on this rank (dense " << m.table->region_numel(ParamRegion::kDense)
            << ", experts " << m.table->region_numel(ParamRegion::kExpert) << "); world " << m.world()
            << ", EP " << groups->layout.ep_size << " x EDP " << groups->layout.edp_size << "; accum_grad "
            << m.settings.accum_grad << ", " << m.ctx.num_threads << " threads";
  return std::unique_ptr<Trainer>(new Trainer(std::move(impl)));
}

Status Trainer::begin_epoch() {
  Impl& m = *impl_;
  if (m.continue_epoch) {
    m.continue_epoch = false;
  } else {
    RETURN_IF_ERROR(m.train_loader->start_epoch(m.state.epoch));
    m.state.batches_in_epoch = 0;
  }
  m.plan_epoch_frames();
  m.epoch_start = Clock::now();
  m.epoch_start_step = m.state.step;
  return Status();
}

StatusOr<StepResult> Trainer::train_step() {
  Impl& m = *impl_;
  Communicator* world = m.groups->world.get();
  StepResult result;
  m.store->zero_grads(m.ctx);
  const Clock::time_point step_start = Clock::now();
  // Local sums over micro-batches: loss parts (each normalised by its micro-batch's global size),
  // tokens, correct tokens, frames, utterances, non-finite micro-batches.
  double sums[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
  std::vector<std::string> bad_keys, step_keys;
  const int64_t accum = m.settings.accum_grad;
  Status overlap_status;            // the first error of a gradient sum started inside the backward
  bool synced_in_backward = false;  // the last backward summed every gradient range
  for (int64_t micro = 0; micro < accum; ++micro) {
    // Lock-step: does everybody have a batch? (and, before the first, did a preemption signal arrive
    // or did some rank's clock pass --max_minutes?)
    Clock::time_point t0 = Clock::now();
    const bool have = m.train_loader->has_next();
    m.interval.data += seconds_since(t0);
    int64_t flags[3] = {have ? 0 : 1, (micro == 0 && preemption_requested()) ? 1 : 0,
                        (micro == 0 && m.time_limit_reached()) ? 1 : 0};
    RETURN_IF_ERROR(world->all_reduce(flags, 3, DType::i64, ReduceOp::kSum));
    if (flags[1] > 0) {
      result.outcome = StepOutcome::kPreempted;
      return result;
    }
    if (flags[2] > 0) {
      result.outcome = StepOutcome::kTimeLimit;
      return result;
    }
    if (flags[0] > 0) {
      result.epoch_ended = true;
      break;
    }
    Batch batch;
    t0 = Clock::now();
    Status s = m.train_loader->next(&batch);
    m.interval.data += seconds_since(t0);
    if (!s.ok()) return s.with_context("training data (rank " + std::to_string(m.rank()) + ")");
    const int64_t micro_index = m.attempts() * accum + micro;
    if (m.options.batch_hook) m.options.batch_hook(micro_index, &batch);
    if (batch.num_mel_bins != m.model_config.input_dim) {
      return invalid_argument_error("the shards of " + m.options.train_data + " have " +
                                    std::to_string(batch.num_mel_bins) + " mel bins but input_dim is " +
                                    std::to_string(m.model_config.input_dim));
    }
    ++m.state.batches_in_epoch;
    ASSIGN_OR_RETURN(const int64_t global_batch, global_batch_size(batch.size(), world));

    U2ppForwardOptions fo;
    fo.training = true;
    fo.batch_normalizer = static_cast<double>(global_batch);
    const PhiloxStream chunk_stream =
        philox_stream(RngKey{m.state.seed, RngPurpose::kChunkSize, static_cast<uint64_t>(m.state.epoch),
                             static_cast<uint64_t>(micro_index), 0, 0});
    const ChunkChoice chunk = sample_training_chunk(
        m.model_config.encoder, conv2d_subsampling4_output_size(batch.max_frames), chunk_stream);
    fo.chunk_size = chunk.full_context ? -1 : chunk.chunk_size;
    fo.num_left_chunks = chunk.num_left_chunks;
    StepRng rng;
    rng.training = true;
    rng.base.seed = m.state.seed;
    rng.base.purpose = RngPurpose::kDropout;
    rng.base.epoch = static_cast<uint64_t>(m.state.epoch);
    rng.base.step = static_cast<uint64_t>(micro_index);
    rng.base.rank = static_cast<uint32_t>(m.rank());

    m.reset_step_arenas();
    t0 = Clock::now();
    const U2ppLoss loss = m.model->forward(m.device_batch(batch), fo, rng, m.ctx);
    m.interval.fwd += seconds_since(t0);
    t0 = Clock::now();
    // Always backward, also for a non-finite loss: the EP exchanges of every rank must meet. The
    // step's last backward sums the gradients as they become final (options.overlap_grad_sync).
    const bool sync_in_backward = m.options.overlap_grad_sync && micro + 1 == accum;
    double sync_seconds = 0;
    m.model->backward(
        1.0 / static_cast<double>(accum), rng, m.ctx,
        sync_in_backward ? m.overlapped_sync(&overlap_status, &sync_seconds) : GradRangeReady{});
    synced_in_backward = sync_in_backward;
    m.interval.bwd += seconds_since(t0) - sync_seconds;
    m.interval.opt += sync_seconds;
    RETURN_IF_ERROR(overlap_status);
    if (m.is_moe) {
      const std::vector<std::vector<int64_t>> load = m.model->expert_load(m.ctx);
      if (m.interval.load.empty()) {
        m.interval.load = load;
      } else {
        for (size_t l = 0; l < load.size(); ++l)
          for (size_t e = 0; e < load[l].size(); ++e) m.interval.load[l][e] += load[l][e];
      }
    }
    const bool finite = std::isfinite(loss.total);
    if (!finite) bad_keys.insert(bad_keys.end(), batch.keys.begin(), batch.keys.end());
    step_keys.insert(step_keys.end(), batch.keys.begin(), batch.keys.end());
    sums[0] += loss.total;
    sums[1] += loss.ctc;
    sums[2] += loss.att;
    sums[3] += static_cast<double>(loss.num_tokens);
    sums[4] += static_cast<double>(loss.num_correct);
    int64_t frames = 0;
    for (int32_t l : batch.feat_lengths) frames += l;
    sums[5] += static_cast<double>(frames);
    sums[6] += static_cast<double>(batch.size());
    sums[7] += finite ? 0.0 : 1.0;
    result.micro_batches = static_cast<int>(micro + 1);
  }
  m.reset_step_arenas();
  if (result.micro_batches == 0) {
    result.outcome = StepOutcome::kEndOfEpoch;
    return result;
  }

  // The step's metrics over the world: losses are sums of per-rank parts normalised by the global
  // micro-batch size, so their world sum is the per-utterance mean of each micro-batch.
  RETURN_IF_ERROR(all_reduce_sum(world, sums, 9));
  const double n_micro = static_cast<double>(result.micro_batches);
  result.loss = sums[0] / n_micro;
  result.loss_ctc = sums[1] / n_micro;
  result.loss_att = sums[2] / n_micro;
  result.accuracy = sums[3] > 0 ? sums[4] / sums[3] : 0.0;
  result.frames = static_cast<int64_t>(sums[5]);
  result.utts = static_cast<int64_t>(sums[6]);

  const Clock::time_point t_opt = Clock::now();
  // A step cut short by the end of the epoch had no last planned backward: sum everything now.
  RETURN_IF_ERROR(synced_in_backward ? m.finish_overlapped_sync() : m.sync_step_gradients());
  StatusOr<double> norm =
      m.settings.adam.grad_clip > 0
          ? clip_grad_norm_distributed(m.store.get(), m.settings.adam.grad_clip, m.groups->ep.get(), m.ctx)
          : global_grad_norm_distributed(*m.store, m.groups->ep.get(), m.ctx);
  if (!norm.ok()) return norm.status();
  result.grad_norm = norm.value();
  if (!std::isfinite(result.loss) || sums[7] > 0 || !std::isfinite(result.grad_norm)) {
    result.outcome = StepOutcome::kSkipped;
    ++m.state.skipped_steps;
    ++m.consecutive_nonfinite;
    m.store->zero_grads(m.ctx);
    std::string keys;
    const std::vector<std::string>& shown = bad_keys.empty() ? step_keys : bad_keys;
    for (size_t i = 0; i < shown.size(); ++i) keys += (i ? " " : "") + shown[i];
    m.progress_clear();
    LOG(WARNING) << "non-finite " << (std::isfinite(result.loss) && sums[7] == 0 ? "gradient norm" : "loss")
                 << " at epoch " << m.state.epoch + 1 << " step " << m.state.step + 1 << " (loss "
                 << result.loss << ", grad_norm " << result.grad_norm << "): update skipped ("
                 << m.state.skipped_steps << " so far, " << m.consecutive_nonfinite << " in a row); "
                 << (bad_keys.empty() ? "this rank's utterances of the step: "
                                      : "utterances with a non-finite loss on this rank: ")
                 << (keys.empty() ? "(none)" : keys);
    if (m.consecutive_nonfinite > m.settings.max_consecutive_nonfinite) {
      return failed_precondition_error(std::to_string(m.consecutive_nonfinite) +
                                       " consecutive steps had a non-finite loss or gradient norm "
                                       "(more than train_conf.max_consecutive_nonfinite = " +
                                       std::to_string(m.settings.max_consecutive_nonfinite) +
                                       "); stopping. Lower optim_conf.lr or raise "
                                       "scheduler_conf.warmup_steps, check the utterances logged "
                                       "above, then resume with --resume auto from the last checkpoint");
    }
  } else {
    const UpdateResult update = m.adam->step(m.ctx);
    if (update.skipped) {
      return internal_error("the local gradient norm is not finite although the global one is");
    }
    result.outcome = StepOutcome::kUpdated;
    m.state.step = m.adam->steps_taken();
    result.lr = update.lr;
    m.state.lr = update.lr;
    m.consecutive_nonfinite = 0;
  }
  m.interval.opt += seconds_since(t_opt);
  const double wall = seconds_since(step_start);
  m.interval.wall += wall;
  m.seconds_per_step = m.seconds_per_step <= 0 ? wall : 0.9 * m.seconds_per_step + 0.1 * wall;
  return result;
}

StatusOr<double> Trainer::evaluate_cv() {
  Impl& m = *impl_;
  if (!m.cv_loader) return not_found_error("no --cv_data");
  Communicator* world = m.groups->world.get();
  m.progress_clear();
  RETURN_IF_ERROR(m.cv_loader->start_epoch(0));
  double sums[5] = {0, 0, 0, 0, 0};  // loss * utts, utts, tokens, correct, batches
  const Clock::time_point t0 = Clock::now();
  while (true) {
    int64_t any = m.cv_loader->has_next() ? 1 : 0;
    const bool mine = any != 0;
    RETURN_IF_ERROR(world->all_reduce(&any, 1, DType::i64, ReduceOp::kMax));
    if (any == 0) break;
    Batch batch;
    if (mine) {
      Status s = m.cv_loader->next(&batch);
      if (!s.ok()) return s.with_context("cv data (rank " + std::to_string(m.rank()) + ")");
    } else if (m.groups->layout.ep_size > 1) {
      batch = padding_batch(m.model_config.input_dim);  // keeps the EP exchanges of the group meeting
    } else {
      continue;
    }
    U2ppForwardOptions fo;
    fo.training = false;
    fo.batch_normalizer = static_cast<double>(batch.size());
    StepRng rng;
    rng.training = false;
    m.reset_step_arenas();
    const U2ppLoss loss = m.model->forward(m.device_batch(batch), fo, rng, m.ctx);
    if (!mine) continue;
    sums[0] += loss.total * static_cast<double>(batch.size());
    sums[1] += static_cast<double>(batch.size());
    sums[2] += static_cast<double>(loss.num_tokens);
    sums[3] += static_cast<double>(loss.num_correct);
    sums[4] += 1;
  }
  m.reset_step_arenas();
  RETURN_IF_ERROR(all_reduce_sum(world, sums, 5));
  if (sums[1] <= 0)
    return failed_precondition_error("the cv set " + m.options.cv_data + " gave no utterances");
  const double cv_loss = sums[0] / sums[1];
  const double acc = sums[2] > 0 ? sums[3] / sums[2] : 0.0;
  m.state.cv_loss = cv_loss;
  m.state.has_cv_loss = true;
  m.last_cv_loss = cv_loss;
  m.last_cv_step = m.state.step;
  m.progress_clear();
  LOG(INFO) << "CV | epoch " << m.state.epoch + 1 << " step " << m.state.step << " | cv_loss "
            << fmt("%.4f", cv_loss) << " acc " << fmt("%.4f", acc) << " | utts "
            << static_cast<int64_t>(sums[1]) << " | " << fmt("%.1f", seconds_since(t0)) << " s";
  m.scalar("cv/loss", cv_loss);
  m.scalar("cv/acc", acc);
  return cv_loss;
}

StatusOr<std::string> Trainer::save(bool epoch_done) {
  Impl& m = *impl_;
  m.progress_clear();
  TrainingState s = m.state;
  s.step = m.adam->steps_taken();
  s.world_size = m.world();
  s.ep_size = m.groups->layout.ep_size;
  s.config_yaml = m.config_yaml;
  s.data_cursors.clear();
  if (epoch_done) {
    s.epoch = m.state.epoch + 1;
    s.batches_in_epoch = 0;
  } else {
    s.data_cursors.push_back(m.train_loader->cursor().serialize());  // gathered by save_checkpoint
  }
  const Clock::time_point t0 = Clock::now();
  m.sync_host_copies();
  ASSIGN_OR_RETURN(
      std::string dir,
      save_checkpoint(m.options.model_dir, s, *m.store, *m.adam, m.groups->world.get(), m.groups->ep.get(),
                      m.groups->edp.get(), static_cast<int>(m.settings.keep_checkpoint_max)));
  m.last_saved_step = s.step;
  m.last_checkpoint = dir;
  m.progress_clear();
  LOG(INFO) << "saved " << dir << " (step " << s.step << ", "
            << (epoch_done ? "end of epoch " + std::to_string(m.state.epoch + 1) : "mid-epoch") << ") in "
            << fmt("%.2f", seconds_since(t0)) << " s";
  return dir;
}

Status Trainer::write_weights(const std::string& path) {
  Impl& m = *impl_;
  const ParallelLayout& layout = m.groups->layout;
  m.sync_host_copies();
  if (layout.ep_size == 1) {
    if (layout.world_rank == 0) RETURN_IF_ERROR(save_model_weights(path, *m.store, m.config_yaml));
    return m.groups->world->barrier();
  }
  // Gather every EP rank's expert region (equal sizes: n_expert % ep_size == 0), then place each
  // expert by name into a one-process (EP = 1) store.
  const std::vector<float>& mine = m.store->values[static_cast<int>(ParamRegion::kExpert)];
  const int64_t n = static_cast<int64_t>(mine.size());
  std::vector<float> all(static_cast<size_t>(n * layout.ep_size));
  RETURN_IF_ERROR(m.groups->ep->all_gather(all.data(), mine.data(), n, DType::f32));
  if (layout.world_rank == 0) {
    ParameterTable full_table = build_u2pp_parameter_table(m.model_config, ExpertLayout{});
    ParameterStore<float> full(full_table);
    for (const ParamEntry& e : m.table->entries()) {
      if (e.region == ParamRegion::kExpert) continue;
      const float* host = m.store->values[static_cast<int>(e.region)].data() + e.offset;
      std::copy(host, host + e.numel, full.value(full_table.at(e.name)));
    }
    for (int r = 0; r < layout.ep_size; ++r) {
      ParameterTable t = build_u2pp_parameter_table(m.model_config, ExpertLayout{r, layout.ep_size});
      const float* base = all.data() + static_cast<int64_t>(r) * n;
      for (const ParamEntry& e : t.entries()) {
        if (e.region != ParamRegion::kExpert) continue;
        std::copy(base + e.offset, base + e.offset + e.numel, full.value(full_table.at(e.name)));
      }
    }
    RETURN_IF_ERROR(save_model_weights(path, full, m.config_yaml));
  }
  return m.groups->world->barrier();
}

StatusOr<TrainResult> Trainer::run() {
  Impl& m = *impl_;
  m.run_start = Clock::now();
  const TrainSettings& st = m.settings;
  TrainResult result;
  auto finish = [&](TrainOutcome outcome) {
    result.outcome = outcome;
    result.steps = m.state.step;
    result.epoch = m.state.epoch;
    result.skipped_steps = m.state.skipped_steps;
    result.last_cv_loss = m.last_cv_loss;
    result.last_checkpoint = m.last_checkpoint;
    if (m.options.scalars) m.options.scalars->flush();
    return result;
  };
  const bool steps_done_at_start = m.options.max_steps > 0 && m.state.step >= m.options.max_steps;
  if (m.rank() == 0) {
    LOG(INFO) << "training: epoch " << m.state.epoch + 1 << "/" << st.max_epoch << ", step " << m.state.step
              << (m.options.max_steps > 0 ? " of max " + std::to_string(m.options.max_steps) : std::string());
  }
  bool stop = steps_done_at_start;
  while (!stop && m.state.epoch < st.max_epoch) {
    RETURN_IF_ERROR(begin_epoch());
    m.interval = IntervalStats{};
    m.interval_start = Clock::now();
    bool epoch_over = false;
    while (!epoch_over) {
      if (m.options.max_steps > 0 && m.state.step >= m.options.max_steps) {
        stop = true;
        break;
      }
      ASSIGN_OR_RETURN(StepResult r, train_step());
      if (r.outcome == StepOutcome::kPreempted) {
        m.progress_clear();
        const bool saved = m.last_saved_step == m.state.step && !m.last_checkpoint.empty();
        LOG(WARNING) << "preemption signal: " << (saved ? "the checkpoint of" : "writing a checkpoint at")
                     << " step " << m.state.step << (saved ? " is already written" : "") << "; exiting with "
                     << kTrainExitPreempted << " (requeue and rerun with --resume auto)";
        if (!saved) {
          ASSIGN_OR_RETURN(std::string dir, save(false));
          (void)dir;
        }
        return finish(TrainOutcome::kPreempted);
      }
      if (r.outcome == StepOutcome::kTimeLimit) {
        m.progress_clear();
        LOG(INFO) << "--max_minutes " << m.options.max_minutes << " reached at step " << m.state.step
                  << ": finishing (cv, checkpoint, final weights)";
        stop = true;
        break;
      }
      if (r.outcome == StepOutcome::kEndOfEpoch) break;
      epoch_over = r.epoch_ended;
      result.last_loss = r.loss;
      // Per-step scalars and interval sums.
      IntervalStats& iv = m.interval;
      ++iv.steps;
      iv.frames += r.frames;
      if (r.outcome == StepOutcome::kUpdated) {
        ++iv.updated;
        iv.loss += r.loss;
        iv.loss_ctc += r.loss_ctc;
        iv.loss_att += r.loss_att;
        iv.acc += r.accuracy;
        iv.grad_norm += r.grad_norm;
        m.scalar("train/loss", r.loss);
        m.scalar("train/loss_ctc", r.loss_ctc);
        m.scalar("train/loss_att", r.loss_att);
        m.scalar("train/acc", r.accuracy);
        m.scalar("train/lr", r.lr);
        m.scalar("train/grad_norm", r.grad_norm);
      }
      const int64_t attempts = m.attempts();
      if (attempts % st.log_interval == 0) {
        const double k = static_cast<double>(std::max<int64_t>(1, iv.updated));
        const double ks = static_cast<double>(std::max<int64_t>(1, iv.steps));
        std::ostringstream line;
        line << "TRAIN | epoch " << m.state.epoch + 1 << " step " << m.state.step << " | loss "
             << fmt("%.4f", iv.loss / k) << " loss_att " << fmt("%.4f", iv.loss_att / k) << " loss_ctc "
             << fmt("%.4f", iv.loss_ctc / k) << " acc " << fmt("%.4f", iv.acc / k) << " | lr "
             << fmt("%.3e", m.state.lr) << " grad_norm " << fmt("%.3f", iv.grad_norm / k) << " | steps/s "
             << fmt("%.2f", iv.wall > 0 ? static_cast<double>(iv.steps) / iv.wall : 0.0) << " frames/s "
             << fmt("%.3g",
                    iv.wall > 0 ? static_cast<double>(iv.frames) / seconds_since(m.interval_start) : 0.0)
             << " | fwd " << fmt("%.0f", 1e3 * iv.fwd / ks) << "ms bwd " << fmt("%.0f", 1e3 * iv.bwd / ks)
             << "ms opt " << fmt("%.0f", 1e3 * iv.opt / ks) << "ms data " << fmt("%.0f", 1e3 * iv.data / ks)
             << "ms (" << fmt("%.0f", iv.wall > 0 ? 100.0 * iv.data / iv.wall : 0.0) << "%)";
        if (m.is_moe && !iv.load.empty()) {
          ASSIGN_OR_RETURN(std::vector<ExpertLoadStats> load,
                           reduce_expert_load(iv.load, m.groups->ep.get(), m.groups->edp.get()));
          double worst = 0, mean_ratio = 0;
          int64_t dead = 0;
          for (const ExpertLoadStats& l : load) {
            worst = std::max(worst, l.max_over_mean);
            mean_ratio += l.max_over_mean;
            dead += l.dead_experts;
          }
          mean_ratio /= static_cast<double>(std::max<size_t>(1, load.size()));
          line << " | moe max/mean " << fmt("%.2f", worst) << " (avg " << fmt("%.2f", mean_ratio) << ") dead "
               << dead;
          m.scalar("moe/expert_load_max_over_mean", worst);
          m.scalar("moe/expert_load_avg_max_over_mean", mean_ratio);
          m.scalar("moe/expert_load_dead", static_cast<double>(dead));
          for (size_t l = 0; l < load.size(); ++l) {
            m.scalar("moe/expert_load_layer" + std::to_string(l), load[l].max_over_mean);
          }
          LOG(DEBUG) << "expert load:\n" << format_expert_load(load);
        }
        line << " | skipped " << m.state.skipped_steps << " | ETA " << format_eta(m.eta_seconds());
        m.progress_clear();
        LOG(INFO) << line.str();
        m.interval = IntervalStats{};
        m.interval_start = Clock::now();
      }
      m.progress_update(r, m.eta_seconds());
      if (r.outcome != StepOutcome::kUpdated) continue;
      const bool at_end = epoch_over || (m.options.max_steps > 0 && m.state.step >= m.options.max_steps);
      if (m.cv_loader && st.cv_interval > 0 && m.state.step % st.cv_interval == 0 && !at_end) {
        ASSIGN_OR_RETURN(double cv, evaluate_cv());
        (void)cv;
      }
      if (st.save_interval > 0 && m.state.step % st.save_interval == 0 && !at_end) {
        ASSIGN_OR_RETURN(std::string dir, save(false));
        (void)dir;
      }
    }
    if (stop) break;
    // Epoch end: cv, then the epoch checkpoint (its sidecar carries the cv loss).
    m.progress_clear();
    LOG(INFO) << "epoch " << m.state.epoch + 1 << " done: step " << m.state.step << ", "
              << m.state.batches_in_epoch << " micro-batches on this rank, "
              << fmt("%.1f", seconds_since(m.epoch_start)) << " s";
    if (m.cv_loader) {
      ASSIGN_OR_RETURN(double cv, evaluate_cv());
      (void)cv;
    }
    ASSIGN_OR_RETURN(std::string dir, save(true));
    (void)dir;
    ++m.state.epoch;
    m.state.batches_in_epoch = 0;
  }
  if (stop && !steps_done_at_start && m.last_saved_step != m.state.step) {
    if (m.cv_loader && m.last_cv_step != m.state.step) {
      ASSIGN_OR_RETURN(double cv, evaluate_cv());
      (void)cv;
    }
    ASSIGN_OR_RETURN(std::string dir, save(false));
    (void)dir;
  }
  const std::string final_path = m.options.model_dir + "/final.h5";
  RETURN_IF_ERROR(write_weights(final_path));
  m.progress_clear();
  LOG(INFO) << "training finished: step " << m.state.step << ", " << m.state.skipped_steps
            << " skipped steps; weights in " << final_path;
  return finish(TrainOutcome::kFinished);
}

}  // namespace moeasr
