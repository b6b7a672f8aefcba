// data_pipeline/cmvn.h — global CMVN as WeNet does it: summed statistics (CmvnStats, shard.h) written
// as WeNet's JSON {"mean_stat": [Σx], "var_stat": [Σx²], "frame_num": N} (tools/compute_cmvn_stats.py)
// and turned into mean/istd as wenet/utils/cmvn.py load_cmvn: mean = Σx/N, var = Σx²/N − mean²
// floored at 1e-20, istd = 1/sqrt(var). Sums are kept in double (as Kaldi does; WeNet sums in float32).
#pragma once

#include <string>
#include <vector>

#include "core/status.h"
#include "data_pipeline/shard.h"

namespace moeasr {

constexpr double kCmvnVarianceFloor = 1e-20;

// total += part (element-wise sums, frames added). An empty total takes part's dimension; a
// dimension mismatch is an error naming both sizes.
Status add_cmvn_stats(CmvnStats* total, const CmvnStats& part);

// Writes WeNet's JSON (doubles printed to round-trip exactly), atomically ("<path>.tmp" + rename).
Status write_cmvn_json(const std::string& path, const CmvnStats& stats);
// Reads WeNet's JSON; errors name the file: bad JSON, missing/mistyped field, size mismatch, frame_num<=0.
StatusOr<CmvnStats> read_cmvn_json(const std::string& path);

// mean and istd (as float, like WeNet's GlobalCMVN buffers), computed in double. Needs frames > 0.
Status cmvn_mean_istd(std::vector<float>* mean, std::vector<float>* istd, const CmvnStats& stats);

}  // namespace moeasr
