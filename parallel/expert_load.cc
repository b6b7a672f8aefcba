// parallel/expert_load.cc — per-expert load statistics (see expert_load.h).
#include "parallel/expert_load.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

namespace moeasr {

ExpertLoadStats summarize_expert_load(const std::vector<int64_t>& tokens_per_expert,
                                      const std::vector<int64_t>& rows_per_ep_rank) {
  ExpertLoadStats s;
  s.tokens_per_expert = tokens_per_expert;
  s.rows_per_ep_rank = rows_per_ep_rank;
  for (int64_t t : tokens_per_expert) {
    s.total += t;
    s.max = std::max(s.max, t);
    if (t == 0) ++s.dead_experts;
  }
  if (!tokens_per_expert.empty()) s.mean = static_cast<double>(s.total) / tokens_per_expert.size();
  s.max_over_mean = s.mean > 0 ? s.max / s.mean : 0.0;
  int64_t rank_total = 0, rank_max = 0;
  for (int64_t r : rows_per_ep_rank) {
    rank_total += r;
    rank_max = std::max(rank_max, r);
  }
  const double rank_mean =
      rows_per_ep_rank.empty() ? 0.0 : static_cast<double>(rank_total) / rows_per_ep_rank.size();
  s.rank_max_over_mean = rank_mean > 0 ? rank_max / rank_mean : 0.0;
  return s;
}

StatusOr<std::vector<ExpertLoadStats>> reduce_expert_load(const std::vector<std::vector<int64_t>>& local_load,
                                                          Communicator* ep, Communicator* edp) {
  const int64_t layers = static_cast<int64_t>(local_load.size());
  const int64_t n_experts = layers > 0 ? static_cast<int64_t>(local_load[0].size()) : 0;
  for (const auto& layer : local_load) {
    if (static_cast<int64_t>(layer.size()) != n_experts) {
      return invalid_argument_error("expert load layers have different expert counts (" +
                                    std::to_string(layer.size()) + " vs " + std::to_string(n_experts) + ")");
    }
  }
  const int64_t ep_size = ep->size();
  if (n_experts % ep_size != 0) {
    return invalid_argument_error(std::to_string(n_experts) + " experts over an EP group of " +
                                  std::to_string(ep_size));
  }
  std::vector<int64_t> flat(layers * n_experts);
  for (int64_t l = 0; l < layers; ++l)
    std::copy(local_load[l].begin(), local_load[l].end(), flat.begin() + l * n_experts);
  // Tokens per expert of this EP group, then the rows each of its ranks processes.
  RETURN_IF_ERROR(ep->all_reduce(flat.data(), layers * n_experts, DType::i64, ReduceOp::kSum));
  const int64_t n_local = n_experts / ep_size;
  std::vector<int64_t> rows(layers * ep_size, 0);
  for (int64_t l = 0; l < layers; ++l) {
    for (int64_t e = 0; e < n_experts; ++e) rows[l * ep_size + e / n_local] += flat[l * n_experts + e];
  }
  RETURN_IF_ERROR(edp->all_reduce(flat.data(), layers * n_experts, DType::i64, ReduceOp::kSum));
  RETURN_IF_ERROR(edp->all_reduce(rows.data(), layers * ep_size, DType::i64, ReduceOp::kMax));
  std::vector<ExpertLoadStats> stats;
  for (int64_t l = 0; l < layers; ++l) {
    stats.push_back(summarize_expert_load(
        std::vector<int64_t>(flat.begin() + l * n_experts, flat.begin() + (l + 1) * n_experts),
        std::vector<int64_t>(rows.begin() + l * ep_size, rows.begin() + (l + 1) * ep_size)));
  }
  return stats;
}

std::string format_expert_load(const std::vector<ExpertLoadStats>& stats) {
  std::ostringstream out;
  char buffer[64];
  for (size_t l = 0; l < stats.size(); ++l) {
    const ExpertLoadStats& s = stats[l];
    if (l > 0) out << "\n";
    out << "moe " << l << ": tokens/expert [";
    for (size_t e = 0; e < s.tokens_per_expert.size(); ++e) out << (e ? " " : "") << s.tokens_per_expert[e];
    std::snprintf(buffer, sizeof(buffer), "%.2f", s.max_over_mean);
    out << "] max/mean " << buffer << " dead " << s.dead_experts << " | rows/EP rank [";
    for (size_t r = 0; r < s.rows_per_ep_rank.size(); ++r) out << (r ? " " : "") << s.rows_per_ep_rank[r];
    std::snprintf(buffer, sizeof(buffer), "%.2f", s.rank_max_over_mean);
    out << "] max/mean " << buffer;
  }
  return out.str();
}

}  // namespace moeasr
