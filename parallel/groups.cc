// parallel/groups.cc — world / EP / EDP groups (see groups.h).
#include "parallel/groups.h"

#include <mpi.h>

#include <sstream>
#include <utility>

#include "parallel/mpi_communicator.h"
#include "parallel/single_process_communicator.h"

namespace moeasr {

std::vector<int64_t> moe_expert_counts(const ModelConfig& config) {
  std::vector<int64_t> counts;
  if (config.encoder.ffn.mlp_type == MlpType::kMoe) counts.push_back(config.encoder.ffn.n_expert);
  if (config.decoder.ffn.mlp_type == MlpType::kMoe) counts.push_back(config.decoder.ffn.n_expert);
  return counts;
}

StatusOr<ParallelLayout> make_parallel_layout(int world_size, int world_rank, int64_t ep_size,
                                              const std::vector<int64_t>& expert_counts) {
  if (world_size < 1 || world_rank < 0 || world_rank >= world_size) {
    return invalid_argument_error("rank " + std::to_string(world_rank) + " of a world of " +
                                  std::to_string(world_size));
  }
  if (ep_size < 1) {
    return invalid_argument_error("expert_parallel_size " + std::to_string(ep_size) + " must be >= 1");
  }
  if (world_size % ep_size != 0) {
    std::ostringstream m;
    m << "expert_parallel_size " << ep_size << " does not divide the world size " << world_size
      << ": launch a multiple of " << ep_size << " ranks or pick an expert_parallel_size that divides "
      << world_size;
    return invalid_argument_error(m.str());
  }
  for (int64_t experts : expert_counts) {
    if (experts % ep_size != 0) {
      std::ostringstream m;
      m << "expert_parallel_size " << ep_size << " does not divide n_expert " << experts
        << ": every rank of an expert-parallel group must hold the same number of experts; pick an "
           "expert_parallel_size that divides "
        << experts;
      return invalid_argument_error(m.str());
    }
  }
  ParallelLayout l;
  l.world_size = world_size;
  l.world_rank = world_rank;
  l.ep_size = static_cast<int>(ep_size);
  l.ep_rank = world_rank % l.ep_size;
  l.ep_group = world_rank / l.ep_size;
  l.edp_size = world_size / l.ep_size;
  l.edp_rank = l.ep_group;
  return l;
}

std::vector<int> ep_group_members(const ParallelLayout& layout) {
  std::vector<int> members;
  for (int i = 0; i < layout.ep_size; ++i) members.push_back(layout.ep_group * layout.ep_size + i);
  return members;
}

std::vector<int> edp_group_members(const ParallelLayout& layout) {
  std::vector<int> members;
  for (int i = 0; i < layout.edp_size; ++i) members.push_back(i * layout.ep_size + layout.ep_rank);
  return members;
}

StatusOr<ProcessGroups> create_mpi_process_groups(int64_t ep_size, const std::vector<int64_t>& expert_counts,
                                                  const CommunicatorOptions& options) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) return failed_precondition_error("create_mpi_process_groups: MPI is not initialised");
  int world_size = 1, world_rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  // Every rank computes the same verdict from the same numbers, so all return the error together.
  ASSIGN_OR_RETURN(ParallelLayout layout,
                   make_parallel_layout(world_size, world_rank, ep_size, expert_counts));
  ProcessGroups groups;
  groups.layout = layout;
  ASSIGN_OR_RETURN(auto world, MpiCommunicator::create(MPI_COMM_WORLD, "world", options));
  groups.world = std::move(world);
  // MPI_Comm_split is blocking; the world communicator's barrier first turns a missing rank into a
  // timeout instead of a hang.
  RETURN_IF_ERROR(groups.world->barrier());
  MPI_Comm ep_comm = MPI_COMM_NULL, edp_comm = MPI_COMM_NULL;
  int code = MPI_Comm_split(MPI_COMM_WORLD, layout.ep_group, layout.ep_rank, &ep_comm);
  if (code != MPI_SUCCESS) return internal_error("MPI_Comm_split (EP groups): " + mpi_error_string(code));
  code = MPI_Comm_split(MPI_COMM_WORLD, layout.ep_rank, layout.edp_rank, &edp_comm);
  if (code != MPI_SUCCESS) return internal_error("MPI_Comm_split (EDP groups): " + mpi_error_string(code));
  auto ep = MpiCommunicator::create(ep_comm, "ep" + std::to_string(layout.ep_group), options);
  auto edp = MpiCommunicator::create(edp_comm, "edp" + std::to_string(layout.ep_rank), options);
  MPI_Comm_free(&ep_comm);
  MPI_Comm_free(&edp_comm);
  if (!ep.ok()) return ep.status();
  if (!edp.ok()) return edp.status();
  groups.ep = std::move(ep).value();
  groups.edp = std::move(edp).value();
  return groups;
}

StatusOr<ProcessGroups> create_single_process_groups(const std::vector<int64_t>& expert_counts,
                                                     const CommunicatorOptions& options) {
  ASSIGN_OR_RETURN(ParallelLayout layout, make_parallel_layout(1, 0, 1, expert_counts));
  ProcessGroups groups;
  groups.layout = layout;
  groups.world = std::make_unique<SingleProcessCommunicator>("world", options);
  groups.ep = std::make_unique<SingleProcessCommunicator>("ep0", options);
  groups.edp = std::make_unique<SingleProcessCommunicator>("edp0", options);
  return groups;
}

}  // namespace moeasr
