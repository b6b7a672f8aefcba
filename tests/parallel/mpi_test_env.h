// tests/parallel/mpi_test_env.h — what every *_mpi_test.cc binary shares: MPI start-up and shut-down
// around the GoogleTest run (a global Environment: parallel/bootstrap.h, so a CHECK on any rank
// aborts the whole job instead of hanging it), a fixture that makes every rank fail a test when any
// rank failed it (so rank 0's output tells the truth), and gtest output on rank 0 only (other ranks
// print their failures prefixed with their rank).
#pragma once

#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <cstdlib>

#include "core/check.h"
#include "parallel/bootstrap.h"

// Open MPI keeps its internal allocations until exit; LeakSanitizer (scripts/test.sh --sanitize) would
// report them as leaks of this binary. Our own code is still checked. (A weak hook: unused without ASan.)
extern "C" const char* __lsan_default_suppressions() {
  return "leak:libmpi\nleak:libopen-pal\nleak:libopen-rte\nleak:libpmix\nleak:libhwloc\nleak:libevent\nleak:"
         "mca_\n";
}

namespace moeasr::testing {

class MpiEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    int argc = 0;
    char** argv = nullptr;
    StatusOr<ProcessInfo> info = bootstrap_mpi(&argc, &argv);
    CHECK(info.ok()) << info.status().to_string();
  }
  void TearDown() override { finalize_mpi(); }
};

// On ranks other than 0: only failures, prefixed with the rank.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(), result.summary());
  }

 private:
  int rank_;
};

// Registered at static-initialisation time (before main's RUN_ALL_TESTS). The rank comes from the
// launcher's environment because MPI is not initialised yet.
inline bool register_mpi_environment() {
  ::testing::AddGlobalTestEnvironment(new MpiEnvironment);
  const char* rank = std::getenv("OMPI_COMM_WORLD_RANK");
  if (rank == nullptr) rank = std::getenv("PMI_RANK");
  if (rank != nullptr && std::atoi(rank) != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(std::atoi(rank)));
  }
  return true;
}

inline int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
inline int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

// Every rank fails a test that failed on any rank.
class MpiTest : public ::testing::Test {
 protected:
  void TearDown() override {
    int mine = HasFailure() ? 1 : 0, any = 0;
    MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (any && !mine) ADD_FAILURE() << "the test failed on another rank (see its [rank N] lines)";
  }
};

}  // namespace moeasr::testing
