// cli/cmd_recognize.cc — `moe-asr recognize`: WeNet's wenet/bin/recognize.py flags over
// trainer/recognizer.h. Decodes a test set (shard manifest, Kaldi data dir or WeNet data.list) in one
// or more of the four modes, writes <result_dir>/<mode>/text, prints RTF/RTFx and, with
// --simulate_streaming, first/last-token latency (definitions: docs/recognition.md).
//
// Under mpirun (OMPI_COMM_WORLD_SIZE / PMI_SIZE / PMIX_RANK in the environment) MPI is started and the
// test set is split over the ranks (utterance i -> rank i % world); rank 0 merges and prints. Ranks
// finish their shares at different times, so the collectives that gather the results wait up to 24 h
// unless MOEASR_COLLECTIVE_TIMEOUT_S says otherwise (a rank that dies takes the job down with it).
// Without a launcher it is one process and MPI is never initialised.
// Exit codes: 0 done, 1 a bad input or a failure (message on stderr), 2 bad flags.
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
#include "parallel/mpi_communicator.h"
#include "trainer/recognizer.h"

namespace moeasr {
namespace {

namespace po = boost::program_options;

bool launched_by_mpirun() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"}) {
    if (std::getenv(v) != nullptr) return true;
  }
  return false;
}

int run(const RecognizeOptions& options, int* argc, char*** argv) {
  std::unique_ptr<MpiCommunicator> mpi;
  if (launched_by_mpirun()) {
    StatusOr<ProcessInfo> info = bootstrap_mpi(argc, argv);
    if (!info.ok()) {
      LOG(ERROR) << "recognize: MPI start-up failed: " << info.status().message();
      return 1;
    }
    StatusOr<CommunicatorOptions> copt = communicator_options_from_env();
    if (!copt.ok()) {
      LOG(ERROR) << "recognize: " << copt.status().message();
      return 1;
    }
    CommunicatorOptions co = copt.value();
    if (std::getenv("MOEASR_COLLECTIVE_TIMEOUT_S") == nullptr) co.timeout = std::chrono::hours(24);
    co.on_error = CollectiveErrorPolicy::kReturnStatus;
    StatusOr<std::unique_ptr<MpiCommunicator>> c = MpiCommunicator::create(MPI_COMM_WORLD, "world", co);
    if (!c.ok()) {
      LOG(ERROR) << "recognize: " << c.status().message();
      return 1;
    }
    mpi = std::move(c).value();
  }
  const int rank = mpi ? mpi->rank() : 0;
  StatusOr<RecognizeSummary> summary = recognize(options, mpi.get());
  int code = 0;
  if (!summary.ok()) {
    if (rank == 0) LOG(ERROR) << "recognize: " << summary.status().message();
    code = 1;
  } else if (rank == 0) {
    std::fputs(format_recognize_summary(summary.value(), options).c_str(), stdout);
    std::fflush(stdout);
  }
  mpi.reset();
  if (launched_by_mpirun()) finalize_mpi();
  return code;
}

}  // namespace

int run_recognize(int argc, char** argv) {
  RecognizeOptions o;
  std::string precision = "fp32";
  po::options_description desc(
      "moe-asr recognize: decode a test set in WeNet's modes, write <result_dir>/<mode>/text, print RTF");
  desc.add_options()("help,h", "show this help")(
      "config", po::value(&o.config), "train.yaml of the model (default: the checkpoint's config attribute)")(
      "checkpoint", po::value(&o.checkpoint),
      "moe-asr weights file (.h5: convert_wenet / average_model / train)")(
      "test_data", po::value(&o.test_data),
      "shard manifest (.jsonl from make_shards), Kaldi data dir (wav.scp, text[, segments]) or WeNet "
      "data.list")("dict", po::value(&o.dict), "units.txt the model was trained with")(
      "bpe_model", po::value(&o.bpe_model), "sentencepiece model (BPE units: '▁' -> space, stripped)")(
      "modes", po::value(&o.modes)->multitoken(),
      "one or more of ctc_greedy_search ctc_prefix_beam_search attention attention_rescoring")(
      "decoding_chunk_size", po::value(&o.encode.decoding_chunk_size)->default_value(-1),
      "-1 full context; > 0 chunk in encoder frames (16 = 640 ms); 0 is reserved for training")(
      "num_decoding_left_chunks", po::value(&o.encode.num_decoding_left_chunks)->default_value(-1),
      "left chunks of attention context (-1: all)")(
      "simulate_streaming", po::bool_switch(&o.encode.simulate_streaming),
      "run the encoder chunk by chunk with caches (and measure latency)")(
      "ctc_weight", po::value(&o.search.ctc_weight)->default_value(0.0), "CTC weight in attention_rescoring")(
      "reverse_weight", po::value(&o.search.reverse_weight)->default_value(0.0),
      "right-to-left decoder weight in attention_rescoring")(
      "beam_size", po::value(&o.search.beam_size)->default_value(10),
      "beam of the prefix and attention searches")("length_penalty",
                                                   po::value(&o.search.length_penalty)->default_value(0.0),
                                                   "attention beam length penalty")(
      "blank_penalty", po::value(&o.search.blank_penalty)->default_value(0.0),
      "subtracted from the blank's CTC logit (fewer deletions in the CTC searches and rescoring)")(
      "batch_size", po::value(&o.batch_size)->default_value(1),
      "utterances per encoder forward when not streaming (WeNet's default is 16)")(
      "result_dir", po::value(&o.result_dir), "output directory: <result_dir>/<mode>/text")(
      "num_threads", po::value(&o.num_threads)->default_value(1), "CPU threads per process")(
      "device", po::value(&o.device)->default_value("cpu"),
      "cpu, or cuda: the model on this rank's GPU (the CTC prefix beam search stays on the host; "
      "--simulate_streaming is CPU-only)")(
      "precision", po::value(&precision)->default_value("fp32"),
      "fp32, or bf16 (with --device cuda): matrix products on bf16 copies of the fp32 operands");
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::fprintf(stderr, "moe-asr recognize: %s\n", e.what());
    std::cerr << desc << "\n";
    return 2;
  }
  if (vm.count("help")) {
    std::cout << desc << "\n";
    return 0;
  }
  if (precision != "fp32" && precision != "bf16") {
    LOG(ERROR) << "recognize: --precision must be fp32 or bf16 (got '" << precision << "')";
    return 1;
  }
  o.bf16_matmul = precision == "bf16";
  if (Status s = validate_recognize_options(o); !s.ok()) {
    LOG(ERROR) << "recognize: " << s.message();
    return 1;
  }
  return run(o, &argc, &argv);
}

}  // namespace moeasr
