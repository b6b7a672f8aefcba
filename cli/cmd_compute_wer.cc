// cli/cmd_compute_wer.cc — `moe-asr compute_wer`: not built yet (its issue is open); says so and fails.
#include <cstdio>

#include "cli/commands.h"

namespace moeasr {

int run_compute_wer(int, char**) {
  std::fprintf(stderr, "moe-asr compute_wer: not implemented yet in this build\n");
  return 2;
}

}  // namespace moeasr
