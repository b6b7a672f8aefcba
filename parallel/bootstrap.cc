// parallel/bootstrap.cc — MPI start-up, local rank, abort handler, rank map (see bootstrap.h).
#include "parallel/bootstrap.h"

#include <mpi.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <thread>

#include "core/check.h"
#include "core/logging.h"

namespace moeasr {
namespace {

constexpr int kHostChars = 64;

StatusOr<int> parse_rank(const char* name, const char* value) {
  char* end = nullptr;
  long v = std::strtol(value, &end, 10);
  if (end == value || *end != '\0' || v < 0 || v > (1 << 24)) {
    return invalid_argument_error(std::string(name) + "='" + value +
                                  "' is not a local rank (a non-negative integer); check the launcher");
  }
  return static_cast<int>(v);
}

}  // namespace

EnvLookup process_env() {
  return [](const char* name) -> const char* { return std::getenv(name); };
}

StatusOr<int> local_rank_from_env(const EnvLookup& env, std::string* source) {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"}) {
    if (const char* value = env(name)) {
      if (source != nullptr) *source = name;
      return parse_rank(name, value);
    }
  }
  return not_found_error("neither OMPI_COMM_WORLD_LOCAL_RANK nor SLURM_LOCALID is set");
}

void mpi_abort_handler(int exit_code) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  std::fflush(stdout);
  std::fflush(stderr);
  if (initialized && !finalized) {
    // MPI_Abort kills every rank at once. A collective check fails on every member together (each
    // compares the same fingerprints), so wait a moment: the other members print their own report
    // before the job is torn down (without this, the first rank to abort often silenced the rest).
    int world = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (world > 1) std::this_thread::sleep_for(std::chrono::milliseconds(kAbortGraceMilliseconds));
    MPI_Abort(MPI_COMM_WORLD, exit_code);
  }
  std::_Exit(exit_code);
}

std::string format_rank_map(const std::vector<ProcessInfo>& ranks) {
  std::ostringstream out;
  out << "rank map (world " << ranks.size() << "):";
  for (const ProcessInfo& r : ranks) {
    out << "\n  rank " << r.rank << " host " << r.host << " local " << r.local_rank << "/" << r.local_world
        << " [" << r.local_rank_source << "]";
  }
  return out.str();
}

StatusOr<ProcessInfo> bootstrap_mpi(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    int code = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    if (code != MPI_SUCCESS)
      return internal_error("MPI_Init_thread failed (code " + std::to_string(code) + ")");
    if (provided < MPI_THREAD_FUNNELED) {
      return failed_precondition_error("the MPI library gives thread level " + std::to_string(provided) +
                                       ", moe-asr needs MPI_THREAD_FUNNELED");
    }
  }
  ProcessInfo info;
  MPI_Comm_rank(MPI_COMM_WORLD, &info.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &info.world);
  set_process_identity(info.rank, info.world);
  set_abort_handler(&mpi_abort_handler);
  info.host = process_identity().host;

  // Ranks sharing this host, from MPI itself; the launcher's variable must agree with it.
  MPI_Comm local = MPI_COMM_NULL;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, info.rank, MPI_INFO_NULL, &local);
  int shared_rank = 0;
  MPI_Comm_rank(local, &shared_rank);
  MPI_Comm_size(local, &info.local_world);
  MPI_Comm_free(&local);
  std::string source;
  StatusOr<int> from_env = local_rank_from_env(process_env(), &source);
  Status verdict;
  if (from_env.ok()) {
    info.local_rank = from_env.value();
    info.local_rank_source = source;
    if (info.local_rank != shared_rank) {
      verdict = failed_precondition_error(source + "=" + std::to_string(info.local_rank) + " on rank " +
                                          std::to_string(info.rank) + " but MPI places it " +
                                          std::to_string(shared_rank) + " among the ranks of host " +
                                          info.host + ": fix the launcher's task layout");
    }
  } else if (from_env.status().code() == StatusCode::kNotFound) {
    info.local_rank = shared_rank;
    info.local_rank_source = "MPI shared-memory split";
  } else {
    verdict = from_env.status();
  }

  // The rank map, gathered to every rank (cheap, and any rank may need it in an error message).
  std::vector<char> hosts(static_cast<size_t>(kHostChars) * info.world, '\0');
  char mine[kHostChars] = {0};
  std::strncpy(mine, info.host.c_str(), kHostChars - 1);
  const char* kSources[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI shared-memory split"};
  int source_code = 2;
  for (int i = 0; i < 2; ++i) {
    if (info.local_rank_source == kSources[i]) source_code = i;
  }
  int local_mine[4] = {info.local_rank, info.local_world, verdict.ok() ? 0 : 1, source_code};
  std::vector<int> locals(4 * static_cast<size_t>(info.world));
  MPI_Allgather(mine, kHostChars, MPI_CHAR, hosts.data(), kHostChars, MPI_CHAR, MPI_COMM_WORLD);
  MPI_Allgather(local_mine, 4, MPI_INT, locals.data(), 4, MPI_INT, MPI_COMM_WORLD);
  std::vector<ProcessInfo> ranks(info.world);
  int bad = 0;
  for (int r = 0; r < info.world; ++r) {
    ranks[r].rank = r;
    ranks[r].world = info.world;
    ranks[r].host = std::string(hosts.data() + r * kHostChars);
    ranks[r].local_rank = locals[4 * r];
    ranks[r].local_world = locals[4 * r + 1];
    ranks[r].local_rank_source = kSources[locals[4 * r + 3]];
    bad += locals[4 * r + 2];
  }
  if (info.rank == 0) LOG(INFO) << format_rank_map(ranks);
  if (!verdict.ok()) return verdict;
  if (bad > 0) {
    return failed_precondition_error(std::to_string(bad) +
                                     " rank(s) reported a bad local rank (see their logs)");
  }
  return info;
}

void finalize_mpi() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Finalize();
}

}  // namespace moeasr
