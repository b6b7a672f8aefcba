// tests/common/test_main.cc — main() of every moe-asr GoogleTest binary. Besides running the tests
// it turns a skipped test into a failure, except in gpu binaries (MOEASR_TEST_ALLOW_SKIP): on the CPU
// no test may be silently skipped, and a test whose body no backend executed must not pass.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/run_context.h"
#include "kernels/cpu/cpu_parallel.h"

namespace {

class SkipCounter : public ::testing::EmptyTestEventListener {
 public:
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Skipped()) skipped.push_back(std::string(info.test_suite_name()) + "." + info.name());
  }
  std::vector<std::string> skipped;
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  moeasr::set_process_identity(0, 1);
  moeasr::cpu_backend_init(moeasr::RunContext{});  // single-threaded OpenBLAS, as in the programs
  auto* counter = new SkipCounter;                 // owned by gtest's listener list
  ::testing::UnitTest::GetInstance()->listeners().Append(counter);
  int result = RUN_ALL_TESTS();
#ifndef MOEASR_TEST_ALLOW_SKIP
  if (!counter->skipped.empty()) {
    for (const std::string& name : counter->skipped) {
      std::fprintf(stderr, "FAILED: %s was skipped; CPU tests may not skip (a test no backend runs fails)\n",
                   name.c_str());
    }
    return 1;
  }
#endif
  return result;
}
