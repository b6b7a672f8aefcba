// cli/cmd_recognize.cc — `moe-asr recognize`: not built yet (its issue is open); says so and fails.
#include <cstdio>

#include "cli/commands.h"

namespace moeasr {

int run_recognize(int, char**) {
  std::fprintf(stderr, "moe-asr recognize: not implemented yet in this build\n");
  return 2;
}

}  // namespace moeasr
