// cli/cmd_train.cc — `moe-asr train`, WeNet's wenet/bin/train.py flags over the trainer of
// trainer/trainer.h:
//   mpirun -np 8 moe-asr train --config conf/train_u2++_conformer_moe.yaml
//       --train_data data/train/manifest.jsonl --cv_data data/dev/manifest.jsonl --model_dir exp/moe
//       [--checkpoint exp/x/avg_10.h5] [--resume auto]
//       [--override_config "dataset_conf.batch_conf.max_frames_in_batch 36000"]...
// Order of start-up: flags -> config (errors name the key and line) -> MPI (parallel/bootstrap.h) ->
// the parallel layout check -> per-rank log file -> signal handlers -> process groups -> TensorBoard
// (rank 0) -> Trainer. Exit codes: 0 done, 1 error, 2 usage, 75 preempted (checkpoint written; the
// Slurm template requeues on it). Kebab-case flags (--model-dir) are accepted as aliases.
#include <unistd.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/logging.h"
#include "parallel/bootstrap.h"
#include "parallel/groups.h"
#include "trainer/train_config.h"
#include "trainer/trainer.h"

namespace moeasr {
namespace {

namespace po = boost::program_options;

// "--model-dir" -> "--model_dir" (icefall / Kaldi habits); values are left alone.
std::vector<std::string> normalise_flags(int argc, char** argv) {
  std::vector<std::string> args;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (i > 0 && a.size() > 2 && a.compare(0, 2, "--") == 0) {
      const size_t eq = a.find('=');
      for (size_t j = 2; j < (eq == std::string::npos ? a.size() : eq); ++j) {
        if (a[j] == '-') a[j] = '_';
      }
    }
    args.push_back(a);
  }
  return args;
}

// Every rank agrees on a fatal error? Not when it is local (a file one node cannot read): take the
// whole job down so that no rank waits in a collective.
int fail(const Status& status, int world) {
  LOG(ERROR) << "train: " << status.message();
  if (world > 1) mpi_abort_handler(kTrainExitError);
  finalize_mpi();
  return kTrainExitError;
}

}  // namespace

int run_train(int argc, char** argv) {
  std::string config_path, train_data, cv_data, model_dir, checkpoint, resume = "none", tensorboard_dir;
  std::string symbol_table, cmvn, device = "cpu", precision = "fp32", overlap_grad_sync = "true";
  std::vector<std::string> overrides;
  int num_threads = 0;
  int64_t seed = -1, max_steps = 0;
  double max_minutes = 0;
  po::options_description desc(
      "moe-asr train: train a U2++ (MoE) model; launch with mpirun or srun (one process per rank)");
  desc.add_options()("help,h", "show this help")("config", po::value(&config_path),
                                                 "training config YAML (WeNet keys), e.g. conf/train.yaml")(
      "train_data", po::value(&train_data), "training shard manifest (manifest.jsonl from make_shards)")(
      "cv_data", po::value(&cv_data),
      "cv shard manifest (cv loss at epoch ends and every cv_interval steps)")(
      "model_dir", po::value(&model_dir), "experiment directory exp/<name>: checkpoints, logs, train.yaml")(
      "checkpoint", po::value(&checkpoint),
      "initialise the weights from a checkpoint directory or weights file (WeNet semantics: optimizer, "
      "step and data position start fresh)")(
      "resume", po::value(&resume)->default_value("none"),
      "auto: continue from the newest complete checkpoint in --model_dir (weights, Adam, step, data "
      "position); none: start as the other flags say")(
      "override_config", po::value(&overrides)->composing(),
      "change one config value, \"a.b value\" or \"a.b=value\" (repeatable)")(
      "num_threads", po::value(&num_threads)->default_value(0),
      "CPU threads per rank (OpenMP; 0: train_conf.num_threads)")(
      "device", po::value(&device)->default_value("cpu"),
      "cpu, or cuda: parameters, gradients, Adam moments and activations on this rank's GPU; several "
      "ranks exchange gradients and expert rows over NCCL")(
      "precision", po::value(&precision)->default_value("fp32"),
      "fp32, or bf16: activations stored in bf16, matrix products (tensor cores with --device cuda) "
      "from a bf16 copy of the weights, fp32 accumulation; master weights, gradients, Adam, norm "
      "statistics and losses stay fp32. On the CPU bf16 is a slow reference path for checking numerics")(
      "seed", po::value(&seed)->default_value(-1), "overrides train_conf.seed (data order, dropout, chunks)")(
      "overlap_grad_sync", po::value(&overlap_grad_sync)->default_value("true"),
      "true: sum each layer's gradients over the ranks as soon as the backward has finished it "
      "(overlapping the backward on GPUs); false: one sum after the backward")(
      "max_steps", po::value(&max_steps)->default_value(0),
      "stop after this many optimizer steps in total (0: max_epoch decides)")(
      "max_minutes", po::value(&max_minutes)->default_value(0),
      "stop after this many minutes of this run: cv, checkpoint and final weights, exit 0 (0: no limit; "
      "for a scheduler's hard limit use SIGUSR1/SIGTERM, which checkpoint and exit 75)")(
      "symbol_table", po::value(&symbol_table), "units.txt (overrides tokenizer_conf.symbol_table_path)")(
      "cmvn", po::value(&cmvn), "global CMVN JSON (overrides cmvn_conf.cmvn_file)")(
      "tensorboard_dir", po::value(&tensorboard_dir),
      "TensorBoard event files (default <model_dir>/tensorboard)");
  po::variables_map vm;
  const std::vector<std::string> args = normalise_flags(argc, argv);
  try {
    std::vector<std::string> rest(args.begin() + 1, args.end());
    po::store(po::command_line_parser(rest).options(desc).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::fprintf(stderr, "moe-asr train: %s\n", e.what());
    std::cerr << desc << "\n";
    return kTrainExitUsage;
  }
  if (vm.count("help")) {
    std::cout << desc << "\nexit codes: 0 finished, 1 error, 2 usage, " << kTrainExitPreempted
              << " preempted (a checkpoint was written; rerun with --resume auto)\n";
    return kTrainExitOk;
  }
  if (config_path.empty() || train_data.empty() || model_dir.empty()) {
    std::fprintf(stderr, "moe-asr train: --config, --train_data and --model_dir are required (see --help)\n");
    return kTrainExitUsage;
  }
  if (device != "cpu" && device != "cuda") {
    std::fprintf(stderr, "moe-asr train: --device must be cpu or cuda (got '%s')\n", device.c_str());
    return kTrainExitUsage;
  }
  if (overlap_grad_sync != "true" && overlap_grad_sync != "false") {
    std::fprintf(stderr, "moe-asr train: --overlap_grad_sync must be true or false (got '%s')\n",
                 overlap_grad_sync.c_str());
    return kTrainExitUsage;
  }
  if (precision != "fp32" && precision != "bf16") {
    std::fprintf(stderr, "moe-asr train: --precision must be fp32 or bf16 (got '%s')\n", precision.c_str());
    return kTrainExitUsage;
  }
  if (resume != "auto" && resume != "none") {
    std::fprintf(stderr, "moe-asr train: --resume must be auto or none (got '%s')\n", resume.c_str());
    return kTrainExitUsage;
  }
  if (num_threads < 0 || max_steps < 0 || !(max_minutes >= 0)) {
    std::fprintf(stderr, "moe-asr train: --num_threads, --max_steps and --max_minutes must be >= 0\n");
    return kTrainExitUsage;
  }
  if (seed >= 0) overrides.push_back("train_conf.seed " + std::to_string(seed));

  StatusOr<proto::TrainConfig> config = load_train_config(config_path, overrides);
  if (!config.ok()) {
    std::fprintf(stderr, "moe-asr train: %s\n", config.status().message().c_str());
    return kTrainExitError;
  }

  StatusOr<ProcessInfo> info = bootstrap_mpi(&argc, &argv);
  if (!info.ok()) {
    std::fprintf(stderr, "moe-asr train: %s\n", info.status().message().c_str());
    return kTrainExitError;
  }
  const int rank = info.value().rank, world = info.value().world;
  if (Status s = check_parallel_layout(config.value(), world); !s.ok()) {
    // The same verdict on every rank: rank 0 says it, all leave.
    if (rank == 0) std::fprintf(stderr, "moe-asr train: %s\n", s.message().c_str());
    finalize_mpi();
    return kTrainExitError;
  }
  StatusOr<int> console = redirect_stderr_to_rank_log(model_dir, rank);
  if (!console.ok()) return fail(console.status(), world);
  {
    std::string command = "moe-asr";
    for (int i = 0; i < argc; ++i) command += std::string(" ") + argv[i];
    LOG(INFO) << "command: " << command;
    LOG(INFO) << "rank " << rank << "/" << world << " host " << info.value().host << " local rank "
              << info.value().local_rank << "/" << info.value().local_world << " ["
              << info.value().local_rank_source << "] pid " << ::getpid();
  }
  install_preemption_handlers();

  StatusOr<CommunicatorOptions> comm_options = communicator_options_from_env();
  if (!comm_options.ok()) return fail(comm_options.status(), world);
  const proto::ParallelConf& pc = config.value().parallel_conf();
  if (pc.has_collective_timeout_s() && std::getenv("MOEASR_COLLECTIVE_TIMEOUT_S") == nullptr) {
    comm_options.value().timeout = std::chrono::seconds(pc.collective_timeout_s());
  }
  if (pc.debug_collectives()) comm_options.value().debug = true;
  const int64_t ep_size = pc.has_ep_size() ? pc.ep_size() : 1;
  StatusOr<ProcessGroups> groups = create_mpi_process_groups(
      ep_size, moe_expert_counts(model_config_from_train_config(config.value())), comm_options.value());
  if (!groups.ok()) return fail(groups.status(), world);

  std::unique_ptr<ScalarSink> tensorboard;
  if (rank == 0) {
    StatusOr<std::unique_ptr<ScalarSink>> tb =
        open_tensorboard_sink(tensorboard_dir.empty() ? model_dir + "/tensorboard" : tensorboard_dir);
    if (tb.ok()) {
      tensorboard = std::move(tb).value();
    } else {
      LOG(WARNING) << "TensorBoard: " << tb.status().message() << " (training goes on without it)";
    }
  }

  TrainerOptions options;
  options.config = config.value();
  options.train_data = train_data;
  options.cv_data = cv_data;
  options.model_dir = model_dir;
  options.checkpoint = checkpoint;
  options.resume = resume == "auto";
  options.device = device;
  options.bf16 = precision == "bf16";
  options.overlap_grad_sync = overlap_grad_sync == "true";
  options.num_threads =
      num_threads > 0 ? num_threads
                      : static_cast<int>(std::max<int64_t>(1, config.value().train_conf().num_threads()));
  options.max_steps = max_steps;
  options.max_minutes = max_minutes;
  options.symbol_table = symbol_table;
  options.cmvn = cmvn;
  options.scalars = tensorboard.get();
  options.progress_fd = rank == 0 ? console.value() : -1;
  StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::create(std::move(options), &groups.value());
  if (!trainer.ok()) return fail(trainer.status(), world);
  StatusOr<TrainResult> result = trainer.value()->run();
  if (!result.ok()) return fail(result.status(), world);
  trainer.value().reset();
  tensorboard.reset();
  groups.value() = ProcessGroups{};
  finalize_mpi();
  return result.value().outcome == TrainOutcome::kPreempted ? kTrainExitPreempted : kTrainExitOk;
}

}  // namespace moeasr
