// cli/main.cc — `moe-asr <command> [flags]`: dispatches to the command (cli/commands.h).
#include <cstdio>
#include <cstring>

#include "cli/commands.h"
#include "core/run_context.h"
#include "kernels/cpu/cpu_parallel.h"

namespace {

struct Command {
  const char* name;
  int (*run)(int, char**);
  const char* summary;
};

constexpr Command kCommands[] = {
    {"make_shards", moeasr::run_make_shards, "wav.scp/text or data.list -> HDF5 feature shards + manifest"},
    {"compute_cmvn", moeasr::run_compute_cmvn, "global CMVN (WeNet JSON) from the shards' sums"},
    {"train", moeasr::run_train, "train a U2++ (MoE) model (mpirun / Slurm)"},
    {"average_model", moeasr::run_average_model, "average the last N or N best checkpoints"},
    {"recognize", moeasr::run_recognize, "decode a test set in WeNet's four modes, print RTF"},
    {"compute_wer", moeasr::run_compute_wer, "score hypotheses against references (WeNet and Kaldi formats)"},
};

void print_usage(FILE* out) {
  std::fprintf(out,
               "usage: moe-asr <command> [flags]   (moe-asr <command> --help for its flags)\n\ncommands:\n");
  for (const Command& c : kCommands) std::fprintf(out, "  %-14s %s\n", c.name, c.summary);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    print_usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  // Single-threaded OpenBLAS under our own OpenMP split, for every command: left at its default,
  // OpenBLAS starts a pthread per core that spins beside the OpenMP threads (and beside the other
  // ranks on the node).
  moeasr::cpu_backend_init(moeasr::RunContext{});
  for (const Command& c : kCommands) {
    if (!std::strcmp(argv[1], c.name)) return c.run(argc - 1, argv + 1);
  }
  std::fprintf(stderr, "moe-asr: unknown command '%s'\n\n", argv[1]);
  print_usage(stderr);
  return 2;
}
