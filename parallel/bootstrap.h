// parallel/bootstrap.h — process start-up for mpirun and Slurm (DESIGN.md §6, habit 17): MPI
// initialisation, this process's rank / world and local rank (which GPU it drives), the process
// identity that CHECK and LOG print, an abort handler that takes the whole job down with MPI_Abort
// (so a CHECK on one rank never leaves the others hanging), and the rank map logged at start:
//   I ... bootstrap.cc:.. (0/4)] rank map (world 4): rank 0 host n1 local 0/2 [OMPI_COMM_WORLD_LOCAL_RANK]
//   ...
// Local rank: OMPI_COMM_WORLD_LOCAL_RANK (Open MPI's mpirun), else SLURM_LOCALID (srun), else the rank
// inside MPI_COMM_TYPE_SHARED (any launcher). MPI is the bootstrap only; NCCL ids travel over it
// (parallel/nccl/nccl_communicator.h).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/status.h"

namespace moeasr {

struct ProcessInfo {
  int rank = 0;
  int world = 1;
  int local_rank = 0;   // among the ranks of this host: the device index on GPU nodes
  int local_world = 1;  // ranks on this host
  std::string host;
  std::string
      local_rank_source;  // "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID" or "MPI shared-memory split"
};

// Looks an environment variable up (nullptr when unset); tests pass a fake.
using EnvLookup = std::function<const char*(const char*)>;
EnvLookup process_env();

// The local rank from the launcher's variables; sets *source to the variable used. NotFound when
// neither is set; InvalidArgument (naming the variable) when the value is not a non-negative integer.
StatusOr<int> local_rank_from_env(const EnvLookup& env, std::string* source);

// Initialises MPI (MPI_THREAD_FUNNELED) unless already done, fills ProcessInfo, sets the process
// identity and the MPI_Abort handler, and logs the rank map on rank 0. Collective over the world.
// A local rank from the environment that disagrees with the shared-memory split is reported as an
// error (a wrong launcher setup would put two ranks on one GPU).
StatusOr<ProcessInfo> bootstrap_mpi(int* argc, char*** argv);

// "rank map (world 2): rank 0 host a local 0/2 [OMPI_COMM_WORLD_LOCAL_RANK]; rank 1 host a local 1/2 [...]"
std::string format_rank_map(const std::vector<ProcessInfo>& ranks);

// How long a failing rank of a multi-rank job waits before MPI_Abort, so that the other ranks that
// meet the same failure (a collective check fails on every member) print their own report.
constexpr int kAbortGraceMilliseconds = 2000;

// The abort handler bootstrap_mpi installs (core/check.h set_abort_handler): MPI_Abort on the world
// when MPI is up (after kAbortGraceMilliseconds when there are other ranks), else _Exit. Never returns.
[[noreturn]] void mpi_abort_handler(int exit_code);

// MPI_Finalize when initialised and not yet finalised.
void finalize_mpi();

}  // namespace moeasr
