// parallel/expert_load.h — per-expert load statistics of the MoE layers, the only view of routing
// health when there is no auxiliary loss (DESIGN.md §6; moe_systems.md §5.1 item 6, after the
// per-layer load logging users ask of Megatron-Core, #2398, and DeepEP's per-expert receive stats).
// From U2ppModel::expert_load() (this rank's routed rows per global expert, per MoE FFN): per layer
//   tokens per expert summed over the world, their max and mean and max/mean, dead experts (no row
//   anywhere), and rows received per EP rank (the work of each holder; the max over EP groups, since
//   that rank sets the pace), with its max/mean.
// The counts are the ones the dispatcher already exchanged; this costs two small all-reduces.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "parallel/communicator.h"

namespace moeasr {

struct ExpertLoadStats {
  std::vector<int64_t> tokens_per_expert;  // [E] over the world
  int64_t total = 0;
  int64_t max = 0;
  double mean = 0;
  double max_over_mean = 0;  // 1 = perfectly balanced; 0 when no rows
  int64_t dead_experts = 0;
  std::vector<int64_t> rows_per_ep_rank;  // [ep_size] max over EP groups of the rows each EP rank processes
  double rank_max_over_mean = 0;
};

// Pure: the statistics of one layer from tokens per expert and rows per EP rank.
ExpertLoadStats summarize_expert_load(const std::vector<int64_t>& tokens_per_expert,
                                      const std::vector<int64_t>& rows_per_ep_rank);

// One entry per MoE FFN. Collective over `ep` and `edp`; every rank must pass the same number of
// layers and experts (the same model).
StatusOr<std::vector<ExpertLoadStats>> reduce_expert_load(const std::vector<std::vector<int64_t>>& local_load,
                                                          Communicator* ep, Communicator* edp);

// One line per layer for the training log:
//   "moe 3: tokens/expert [..] max/mean 1.42 dead 0 | rows/EP rank [..] max/mean 1.10"
std::string format_expert_load(const std::vector<ExpertLoadStats>& stats);

}  // namespace moeasr
