// cli/commands.h — the commands of `moe-asr`, WeNet's verbs. Each lives in cli/cmd_<name>.cc, parses
// its own flags (Boost.Program_options, WeNet's flag names) and returns the process exit code.
#pragma once

namespace moeasr {

int run_make_shards(int argc, char** argv);
int run_compute_cmvn(int argc, char** argv);
int run_train(int argc, char** argv);
int run_average_model(int argc, char** argv);
int run_recognize(int argc, char** argv);
int run_compute_wer(int argc, char** argv);

}  // namespace moeasr
