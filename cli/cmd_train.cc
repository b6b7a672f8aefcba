// cli/cmd_train.cc — `moe-asr train`: not built yet (its issue is open); says so and fails.
#include <cstdio>

#include "cli/commands.h"

namespace moeasr {

int run_train(int, char**) {
  std::fprintf(stderr, "moe-asr train: not implemented yet in this build\n");
  return 2;
}

}  // namespace moeasr
