// trainer/trainer.h — the training loop of `moe-asr train` (DESIGN.md §3, after WeNet's
// wenet/bin/train.py + wenet/utils/executor.py, with icefall's per-rank logs and NeMo's preemption):
//
// One optimizer step (train_step):
//   for each of accum_grad micro-batches:
//     all ranks agree (one all-reduce) whether every rank still has a batch (the loader's lock-step
//     protocol, data_pipeline/loader.h) and, at the first micro-batch, whether a preemption signal
//     arrived anywhere; the epoch ends for all at the same step;
//     the global batch size is all-reduced and is the loss normaliser (U2ppForwardOptions::
//     batch_normalizer), the chunk is sampled from a Philox stream keyed by (seed, epoch, micro-batch
//     counter), forward, then backward of loss / accum_grad (gradients accumulate);
//   the loss parts are all-reduced; gradients synchronised (dense over the world, experts over the EDP
//   group: parallel/grad_sync.h); clipped by the global norm (grad_clip); Adam + WarmupLR;
//   a non-finite loss or gradient norm skips the update on every rank (counted, the utterance keys
//   logged); more than train_conf.max_consecutive_nonfinite skips in a row stop the run with an error.
//   An epoch that ends inside an accumulation group updates with the micro-batches it has (each still
//   scaled by 1/accum_grad, as WeNet scales them).
//
// The loop (run): epochs until max_epoch (or --max_steps updates); one log line every log_interval
// steps (asr_toolkits.md §5.6):
//   TRAIN | epoch 1 step 200 | loss 45.61 loss_att 40.12 loss_ctc 58.03 acc 0.912 | lr 1.0e-03
//   grad_norm 3.2 | steps/s 1.52 frames/s 2.1e+06 | fwd 210ms bwd 360ms opt 40ms data 3ms (1%) |
//   moe max/mean 1.42 dead 0 | skipped 0 | ETA 2d04h
// (one line; the rank prefix "(0/64)" comes from core/logging.h); a CV line at each epoch end and every
// cv_interval steps ("CV | epoch 1 step 200 | cv_loss 50.12 acc 0.80 | utts 300"); checkpoints
// (trainer/checkpoint.h) every save_interval steps and at each epoch end, the last keep_checkpoint_max
// kept; TensorBoard scalars through a ScalarSink (train/loss, train/loss_ctc, train/loss_att,
// train/lr, train/grad_norm, cv/loss, moe/expert_load_max_over_mean, moe/expert_load_dead, ...);
// <model_dir>/final.h5 (trainer/model_weights.h, every expert by global id) when training ends.
//
// Resume (--resume auto): the newest complete checkpoint (find_latest_checkpoint) restores weights,
// Adam moments, step, epoch and every rank's data cursor; nothing else carries state (every random
// draw is keyed by seed, epoch and step), so the continuation is bit-identical to an uninterrupted
// run of the same layout. With another world size the cursors are remapped at shard granularity
// (remap_cursors: shards in flight are read again from their start); with another EP size experts are
// re-sliced by global id. --checkpoint X initialises the weights only (WeNet semantics): a
// checkpoint directory or a weights file (final.h5, avg_N.h5, a converted WeNet model).
//
// Preemption: SIGUSR1 or SIGTERM sets a flag (async-signal-safe); the step in progress finishes, the
// ranks agree at the next step boundary, a checkpoint is written and run() returns kPreempted; the
// program exits with kTrainExitPreempted (75, sysexits' EX_TEMPFAIL) and the Slurm template requeues
// the job on it. A second SIGTERM kills the process at once.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "data_pipeline/loader.h"
#include "model/model_config.h"
#include "model/parameter_table.h"
#include "parallel/groups.h"
#include "proto/config.pb.h"
#include "trainer/checkpoint.h"
#include "trainer/optimizer.h"

namespace moeasr {

// Exit codes of `moe-asr train` (documented in docs/usage.md; launch/slurm/train.sbatch requeues on
// kTrainExitPreempted).
constexpr int kTrainExitOk = 0;
constexpr int kTrainExitError = 1;       // a bad flag/config/data, too many non-finite steps, I/O
constexpr int kTrainExitUsage = 2;       // bad command line
constexpr int kTrainExitPreempted = 75;  // EX_TEMPFAIL: checkpoint written; rerun with --resume auto

// Preemption signals. The flag is the one process-wide state of the trainer: a signal handler can only
// reach a global. install_preemption_handlers() routes SIGUSR1 and SIGTERM to it (sigaction,
// SA_RESTART); a second SIGTERM restores the default action and re-raises it.
void install_preemption_handlers();
bool preemption_requested();
void request_preemption();  // what the handler does (tests call it directly)
void clear_preemption_request();

// Where scalars go (TensorBoard on rank 0; tests capture them).
class ScalarSink {
 public:
  virtual ~ScalarSink() = default;
  virtual void scalar(const std::string& tag, double value, int64_t step) = 0;
  virtual void flush() {}
};
// TensorBoard event files in `dir` (trainer/tensorboard.h); a failed write is logged once and
// further scalars are dropped (training goes on).
StatusOr<std::unique_ptr<ScalarSink>> open_tensorboard_sink(const std::string& dir);

// The resolved value of each training knob (the config's value, or WeNet's default when unset).
struct TrainSettings {
  int64_t accum_grad = 1;
  int64_t max_epoch = 100;
  int64_t log_interval = 100;
  int64_t save_interval = 0;  // steps; 0: epoch ends only
  int64_t cv_interval = 0;    // steps; 0: epoch ends only
  int64_t keep_checkpoint_max = 5;
  int64_t max_consecutive_nonfinite = 10;
  uint64_t seed = 777;
  int64_t ep_size = 1;
  AdamOptions adam;
};
StatusOr<TrainSettings> train_settings_from_config(const proto::TrainConfig& config);
// The loader options of the training (augmentation as configured) or cv (no shuffle, no augmentation,
// the same batching) stream.
LoaderOptions loader_options_from_config(const proto::TrainConfig& config, uint64_t seed, bool training);

// Checks world % ep_size and n_expert % ep_size before any group is made; the message names the
// config keys (parallel_conf.ep_size, encoder_conf.n_expert, decoder_conf.n_expert) and the numbers.
Status check_parallel_layout(const proto::TrainConfig& config, int world_size);

struct TrainerOptions {
  proto::TrainConfig config;  // resolved (load_train_config)
  std::string train_data;     // manifest of the training shards
  std::string cv_data;        // manifest of the cv shards ("" : no cv)
  std::string model_dir;      // exp/<name>
  std::string checkpoint;     // initialise the weights from this checkpoint dir / weights file
  bool resume = false;        // --resume auto
  int num_threads = 1;        // OpenMP threads per rank
  // "cpu", or "cuda": the model, its gradients and Adam moments in GPU memory (the rank's local index
  // picks the device). Several ranks: gradients and expert rows over NCCL, counts over MPI.
  std::string device = "cpu";
  // --precision bf16: the model stores its activations in bf16 (U2ppModel<bf16>): the matrix products
  // run (on tensor cores, with --device cuda) from a bf16 copy of the weights with fp32 accumulation;
  // the master weights, gradients, Adam, norm statistics, routing weights and losses stay fp32. On the
  // CPU it runs the slow reference path (kernels/ops.h), for checking bf16 numerics.
  bool bf16 = false;
  // Sum each range of gradients over the ranks as soon as the step's last backward has finished it
  // (layer by layer, from the decoders to the front end), so that the all-reduce overlaps the rest
  // of the backward (on GPUs: NCCL on its own stream). false: one sum after the backward.
  bool overlap_grad_sync = true;
  int64_t max_steps = 0;          // stop after this many updates (0: max_epoch decides)
  double max_minutes = 0;         // stop after this many minutes of run(): cv, checkpoint, final.h5
  std::string symbol_table;       // overrides tokenizer_conf.symbol_table_path when set
  std::string cmvn;               // overrides cmvn_conf.cmvn_file when set
  ScalarSink* scalars = nullptr;  // rank 0's TensorBoard (nullptr: none)
  int progress_fd = -1;           // rank 0: a TTY gets one updating progress line (-1: none)
  // Tests: called with each micro-batch before it is used (e.g. to inject a NaN).
  std::function<void(int64_t micro_index, Batch* batch)> batch_hook;
};

// kTimeLimit: some rank's clock passed max_minutes (agreed by all ranks at the step boundary).
enum class StepOutcome { kUpdated, kSkipped, kEndOfEpoch, kPreempted, kTimeLimit };

struct StepResult {
  StepOutcome outcome = StepOutcome::kEndOfEpoch;
  int micro_batches = 0;     // used in this step
  bool epoch_ended = false;  // the loader ran dry inside this step (a partial accumulation group)
  double loss = 0, loss_ctc = 0, loss_att = 0;  // per utterance, averaged over micro-batches and ranks
  double accuracy = 0;
  double grad_norm = 0;
  double lr = 0;
  int64_t utts = 0, frames = 0;  // over the world
};

enum class TrainOutcome { kFinished, kPreempted };

struct TrainResult {
  TrainOutcome outcome = TrainOutcome::kFinished;
  int64_t steps = 0;  // updates taken in total (resumed runs included)
  int64_t epoch = 0;
  int64_t skipped_steps = 0;
  double last_loss = 0;
  double last_cv_loss = 0;
  std::string last_checkpoint;  // "" when none was written
};

class Trainer {
 public:
  // Builds tokenizer, loaders, model, optimizer; initialises or restores (resume / --checkpoint);
  // writes <model_dir>/train.yaml (rank 0). Collective over the groups.
  static StatusOr<std::unique_ptr<Trainer>> create(TrainerOptions options, ProcessGroups* groups);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // The epoch loop (see the top comment). Errors are returned on every rank.
  StatusOr<TrainResult> run();

  // One step from the current epoch's stream (the loader must be started: begin_epoch()).
  StatusOr<StepResult> train_step();
  // Starts (or, right after a mid-epoch resume, continues) the current epoch.
  Status begin_epoch();
  // Mean cv loss per utterance over the cv set (every rank gets the same value); NotFound without cv.
  StatusOr<double> evaluate_cv();
  // Collective: checkpoint of the current state. `epoch_done`: the current epoch is finished (the
  // checkpoint then resumes at the start of the next one).
  StatusOr<std::string> save(bool epoch_done);
  // Collective: every parameter (experts gathered from the EP group) into one weights file, written
  // by world rank 0.
  Status write_weights(const std::string& path);

  const TrainingState& state() const;
  const ParameterStore<float>& store() const;
  const TrainSettings& settings() const;
  const ModelConfig& model_config() const;
  const ParallelLayout& layout() const;

 private:
  struct Impl;
  explicit Trainer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Per-rank log file <model_dir>/log/train.rankNNN.log: stderr of every rank goes there. Rank 0's stderr
// also stays on the console (through a `tee` child process, so nothing is lost when the process is
// killed or aborts); other ranks' stderr goes to the file only. Returns a duplicate of the original
// stderr (for the progress display), or an error naming the file.
StatusOr<int> redirect_stderr_to_rank_log(const std::string& model_dir, int rank);

// "2d04h", "3h12m", "5m07s", "42s".
std::string format_eta(double seconds);

}  // namespace moeasr
