// data_pipeline/cmvn.cc — WeNet global CMVN JSON and mean/istd (see cmvn.h), after
// wenet/tools/compute_cmvn_stats.py and wenet/utils/cmvn.py.
#include "data_pipeline/cmvn.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace moeasr {

Status add_cmvn_stats(CmvnStats* total, const CmvnStats& part) {
  if (part.sum.size() != part.sum_sq.size()) {
    return invalid_argument_error("CMVN stats with " + std::to_string(part.sum.size()) + " sums but " +
                                  std::to_string(part.sum_sq.size()) + " squared sums");
  }
  if (total->sum.empty() && total->frames == 0) {
    total->sum.assign(part.sum.size(), 0.0);
    total->sum_sq.assign(part.sum.size(), 0.0);
  }
  if (total->sum.size() != part.sum.size()) {
    return invalid_argument_error("CMVN stats of dimension " + std::to_string(part.sum.size()) +
                                  " cannot be added to dimension " + std::to_string(total->sum.size()));
  }
  for (size_t i = 0; i < part.sum.size(); ++i) {
    total->sum[i] += part.sum[i];
    total->sum_sq[i] += part.sum_sq[i];
  }
  total->frames += part.frames;
  return Status();
}

Status write_cmvn_json(const std::string& path, const CmvnStats& stats) {
  if (stats.sum.size() != stats.sum_sq.size()) {
    return invalid_argument_error(path + ": CMVN mean_stat and var_stat sizes differ");
  }
  nlohmann::ordered_json j;
  j["mean_stat"] = stats.sum;
  j["var_stat"] = stats.sum_sq;
  j["frame_num"] = stats.frames;
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) return io_error("cannot write " + tmp + " (" + std::strerror(errno) + ")");
    out << j.dump() << '\n';
    out.flush();
    if (!out) return io_error("error writing " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return io_error("cannot rename " + tmp + " to " + path + ": " + std::strerror(errno));
  }
  return Status();
}

StatusOr<CmvnStats> read_cmvn_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) return not_found_error("cannot open CMVN file " + path + " (" + std::strerror(errno) + ")");
  std::stringstream buffer;
  buffer << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(buffer.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return invalid_argument_error(path +
                                  ": not a JSON object (expected WeNet's {\"mean_stat\", \"var_stat\", "
                                  "\"frame_num\"}; Kaldi-format CMVN is not read here)");
  }
  CmvnStats stats;
  auto array = [&](const char* name, std::vector<double>* out) -> Status {
    auto it = j.find(name);
    if (it == j.end() || !it->is_array() || it->empty()) {
      return invalid_argument_error(path + ": missing or empty array \"" + name + "\"");
    }
    for (const auto& v : *it) {
      if (!v.is_number()) return invalid_argument_error(path + ": \"" + name + "\" holds a non-number");
      out->push_back(v.get<double>());
    }
    return Status();
  };
  RETURN_IF_ERROR(array("mean_stat", &stats.sum));
  RETURN_IF_ERROR(array("var_stat", &stats.sum_sq));
  if (stats.sum.size() != stats.sum_sq.size()) {
    return invalid_argument_error(path + ": mean_stat has " + std::to_string(stats.sum.size()) +
                                  " values but var_stat has " + std::to_string(stats.sum_sq.size()));
  }
  auto it = j.find("frame_num");
  if (it == j.end() || !it->is_number())
    return invalid_argument_error(path + ": missing number \"frame_num\"");
  const double frames = it->get<double>();  // WeNet may write it as a float
  if (!(frames > 0) || frames != std::floor(frames) || frames > 9.0e18) {
    return invalid_argument_error(path + ": \"frame_num\" must be a positive integer");
  }
  stats.frames = it->is_number_integer() ? it->get<int64_t>() : static_cast<int64_t>(frames);
  return stats;
}

Status cmvn_mean_istd(std::vector<float>* mean, std::vector<float>* istd, const CmvnStats& stats) {
  if (stats.frames <= 0) return invalid_argument_error("CMVN stats over zero frames");
  if (stats.sum.size() != stats.sum_sq.size()) return invalid_argument_error("CMVN stats sizes differ");
  const double n = static_cast<double>(stats.frames);
  mean->resize(stats.sum.size());
  istd->resize(stats.sum.size());
  for (size_t i = 0; i < stats.sum.size(); ++i) {
    const double m = stats.sum[i] / n;
    double var = stats.sum_sq[i] / n - m * m;
    if (var < kCmvnVarianceFloor) var = kCmvnVarianceFloor;
    (*mean)[i] = static_cast<float>(m);
    (*istd)[i] = static_cast<float>(1.0 / std::sqrt(var));
  }
  return Status();
}

}  // namespace moeasr
