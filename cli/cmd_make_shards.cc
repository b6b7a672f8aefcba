// cli/cmd_make_shards.cc — `moe-asr make_shards`: not built yet (its issue is open); says so and fails.
#include <cstdio>

#include "cli/commands.h"

namespace moeasr {

int run_make_shards(int, char**) {
  std::fprintf(stderr, "moe-asr make_shards: not implemented yet in this build\n");
  return 2;
}

}  // namespace moeasr
