// tests/common/synthetic_shards.h — a tiny learnable corpus for trainer tests: HDF5 shards whose
// utterances are 2-5 letters of a 16-letter alphabet, each letter 8-12 frames of its own fixed 20-bin
// pattern plus noise (all drawn from Philox, so the corpus is a pure function of the seed).
#pragma once

#include <cstdint>
#include <string>

#include "core/status.h"
#include "data_pipeline/shard.h"

namespace moeasr {
namespace testing {

constexpr int kSyntheticBins = 20;
// 16 letters; with <blank> <unk> <sos/eos> a 19-unit vocabulary.
constexpr const char* kSyntheticLetters = "abcdefghijklmnop";

// Writes dir/name/shard_<i>.h5 (shards x utts_per_shard utterances) and the manifest dir/name.jsonl;
// adds the features to *stats when stats is not null.
Status write_synthetic_shard_set(const std::string& dir, const std::string& name, int shards,
                                 int utts_per_shard, uint64_t seed, CmvnStats* stats);

}  // namespace testing
}  // namespace moeasr
