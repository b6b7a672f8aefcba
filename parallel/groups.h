// parallel/groups.h — the process groups of expert parallelism inside data parallelism
// (DESIGN.md §6; Megatron's EP × EDP "parallel folding", DeepSpeed's expert-data-parallel groups):
//   world: every rank; dense gradients are all-reduced here;
//   EP group: ep_size consecutive ranks (inside one node on GPU clusters); the experts of every MoE
//             FFN are split over it and tokens move inside it by all-to-all. ep_rank = rank % ep_size;
//   EDP group: the world_size / ep_size ranks with the same ep_rank (they hold the same experts);
//             expert gradients are all-reduced here. edp_rank = rank / ep_size.
// Valid only when world % ep_size == 0 and every MoE FFN's expert count % ep_size == 0; anything else
// is an InvalidArgument that says which numbers to change.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "model/model_config.h"
#include "model/parameter_table.h"
#include "parallel/communicator.h"

namespace moeasr {

struct ParallelLayout {
  int world_size = 1;
  int world_rank = 0;
  int ep_size = 1;
  int ep_rank = 0;   // rank inside the EP group
  int ep_group = 0;  // which EP group (= edp_rank)
  int edp_size = 1;
  int edp_rank = 0;
  ExpertLayout expert_layout() const { return ExpertLayout{ep_rank, ep_size}; }
};

// The expert counts of every MoE FFN kind of the config (encoder, decoder); empty for a dense model.
std::vector<int64_t> moe_expert_counts(const ModelConfig& config);

// Ranks and sizes for `world_rank`; errors when ep_size < 1, world % ep_size != 0 or an expert count
// % ep_size != 0.
StatusOr<ParallelLayout> make_parallel_layout(int world_size, int world_rank, int64_t ep_size,
                                              const std::vector<int64_t>& expert_counts);

// World ranks of the EP group and of the EDP group of `layout`, in group rank order.
std::vector<int> ep_group_members(const ParallelLayout& layout);
std::vector<int> edp_group_members(const ParallelLayout& layout);

struct ProcessGroups {
  ParallelLayout layout;
  std::unique_ptr<Communicator> world;
  std::unique_ptr<Communicator> ep;   // named "ep<ep_group>"
  std::unique_ptr<Communicator> edp;  // named "edp<ep_rank>"
};

// Over MPI_COMM_WORLD (MPI must be initialised: parallel/bootstrap.h). Collective over the world.
StatusOr<ProcessGroups> create_mpi_process_groups(int64_t ep_size, const std::vector<int64_t>& expert_counts,
                                                  const CommunicatorOptions& options);
// One process: three SingleProcessCommunicators (ep_size must be 1).
StatusOr<ProcessGroups> create_single_process_groups(const std::vector<int64_t>& expert_counts,
                                                     const CommunicatorOptions& options);

}  // namespace moeasr
