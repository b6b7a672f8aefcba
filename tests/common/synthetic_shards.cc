// tests/common/synthetic_shards.cc — see synthetic_shards.h.
#include "tests/common/synthetic_shards.h"

#include <filesystem>
#include <memory>
#include <vector>

#include "core/philox.h"

namespace moeasr {
namespace testing {

Status write_synthetic_shard_set(const std::string& dir, const std::string& name, int shards,
                                 int utts_per_shard, uint64_t seed, CmvnStats* stats) {
  namespace fs = std::filesystem;
  constexpr int kBins = kSyntheticBins;
  fs::create_directories(dir + "/" + name);
  const PhiloxStream pattern = philox_stream(RngKey{1234, RngPurpose::kTest, 0, 0, 0, 0});
  const PhiloxStream s = philox_stream(RngKey{seed, RngPurpose::kTest, 1, 0, 0, 0});
  uint64_t draw = 0;
  std::vector<ManifestEntry> entries;
  for (int sh = 0; sh < shards; ++sh) {
    const std::string rel = name + "/shard_" + std::to_string(sh) + ".h5";
    ASSIGN_OR_RETURN(std::unique_ptr<ShardWriter> w,
                     ShardWriter::create(dir + "/" + rel, kBins, "{\"num_mel_bins\": 20}"));
    ManifestEntry e;
    e.path = rel;
    for (int u = 0; u < utts_per_shard; ++u) {
      const int len = 2 + static_cast<int>(philox_below(s, draw++, 4));  // 2..5 tokens
      std::string text;
      std::vector<float> feats;
      for (int t = 0; t < len; ++t) {
        const int tok = static_cast<int>(philox_below(s, draw++, 16));
        text += kSyntheticLetters[tok];
        const int frames = 8 + static_cast<int>(philox_below(s, draw++, 5));
        for (int f = 0; f < frames; ++f) {
          for (int b = 0; b < kBins; ++b) {
            const float mean = 2.0f * philox_uniform(pattern, static_cast<uint64_t>(tok * kBins + b)) - 1.0f;
            feats.push_back(mean + 0.3f * (2.0f * philox_uniform(s, draw++) - 1.0f));
          }
        }
      }
      const int64_t frames = static_cast<int64_t>(feats.size()) / kBins;
      const std::string key = name + "_" + std::to_string(sh) + "_" + std::to_string(u);
      RETURN_IF_ERROR(w->add(key, text, feats.data(), frames, static_cast<float>(frames) * 0.01f));
      e.num_frames += frames;
      if (stats != nullptr) {
        if (stats->sum.empty()) {
          stats->sum.assign(kBins, 0.0);
          stats->sum_sq.assign(kBins, 0.0);
        }
        for (int64_t i = 0; i < frames; ++i) {
          for (int b = 0; b < kBins; ++b) {
            const double x = feats[static_cast<size_t>(i * kBins + b)];
            stats->sum[b] += x;
            stats->sum_sq[b] += x * x;
          }
        }
        stats->frames += frames;
      }
    }
    RETURN_IF_ERROR(w->finish());
    e.num_utts = utts_per_shard;
    e.bytes = static_cast<int64_t>(fs::file_size(dir + "/" + rel));
    ASSIGN_OR_RETURN(e.sha256, sha256_file(dir + "/" + rel));
    entries.push_back(e);
  }
  return write_manifest(dir + "/" + name + ".jsonl", entries);
}

}  // namespace testing
}  // namespace moeasr
