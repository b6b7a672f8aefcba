// cli/cmd_average_model.cc — `moe-asr average_model`: not built yet (its issue is open); says so and fails.
#include <cstdio>

#include "cli/commands.h"

namespace moeasr {

int run_average_model(int, char**) {
  std::fprintf(stderr, "moe-asr average_model: not implemented yet in this build\n");
  return 2;
}

}  // namespace moeasr
