// data_pipeline/augment.cc — WeNet's spec_aug / spec_sub / spec_trim with Philox draws (augment.h).
#include "data_pipeline/augment.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"

namespace moeasr {
namespace {

constexpr uint64_t kTimeMaskBase = 0;
constexpr uint64_t kFreqMaskBase = 1024;
constexpr uint64_t kSubBase = 2048;
constexpr uint64_t kTrimIndex = 3072;
constexpr int kMaxDrawsPerKind = 256;

// Python's random.randint(lo, hi): uniform on [lo, hi], from element `index` of the stream.
int64_t randint(const PhiloxStream& stream, uint64_t index, int64_t lo, int64_t hi) {
  CHECK(hi >= lo) << "randint(" << lo << ", " << hi << ")";
  return lo + static_cast<int64_t>(philox_below(stream, index, static_cast<uint64_t>(hi - lo + 1)));
}

}  // namespace

uint64_t utterance_key_hash(const std::string& key) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (unsigned char c : key) {
    hash ^= c;
    hash *= 0x100000001b3ull;
  }
  return hash;
}

PhiloxStream augment_stream(uint64_t seed, int64_t epoch, const std::string& key) {
  RngKey rng_key;
  rng_key.seed = seed;
  rng_key.purpose = RngPurpose::kSpecAugment;
  rng_key.epoch = static_cast<uint64_t>(epoch);
  rng_key.stream = utterance_key_hash(key);
  return philox_stream(rng_key);
}

int64_t spec_trim_frames(const SpecTrimOptions& options, const PhiloxStream& stream, int64_t frames) {
  CHECK(options.max_t >= 1) << "spec_trim max_t " << options.max_t;
  int64_t width = randint(stream, kTrimIndex, 1, options.max_t);
  // WeNet: `if length < max_frames / 2` with true division.
  return 2 * width < frames ? frames - width : frames;
}

void spec_augment_forward(float* feats, const SpecAugmentOptions& options, const PhiloxStream& stream,
                          int64_t frames, int64_t bins) {
  CHECK(options.num_t_mask >= 0 && options.num_t_mask <= kMaxDrawsPerKind)
      << "num_t_mask " << options.num_t_mask;
  CHECK(options.num_f_mask >= 0 && options.num_f_mask <= kMaxDrawsPerKind)
      << "num_f_mask " << options.num_f_mask;
  CHECK(options.max_t >= 1 && options.max_f >= 1)
      << "spec_aug max_t " << options.max_t << " max_f " << options.max_f;
  if (frames <= 0 || bins <= 0) return;
  for (int i = 0; i < options.num_t_mask; ++i) {
    int64_t start = randint(stream, kTimeMaskBase + 2 * i, 0, frames - 1);
    int64_t width = randint(stream, kTimeMaskBase + 2 * i + 1, 1, options.max_t);
    int64_t end = std::min(frames, start + width);
    std::memset(feats + start * bins, 0, sizeof(float) * (end - start) * bins);
  }
  for (int i = 0; i < options.num_f_mask; ++i) {
    int64_t start = randint(stream, kFreqMaskBase + 2 * i, 0, bins - 1);
    int64_t width = randint(stream, kFreqMaskBase + 2 * i + 1, 1, options.max_f);
    int64_t end = std::min(bins, start + width);
    for (int64_t t = 0; t < frames; ++t) {
      std::fill(feats + t * bins + start, feats + t * bins + end, 0.0f);
    }
  }
}

void spec_sub_forward(float* y, const float* x, const SpecSubOptions& options, const PhiloxStream& stream,
                      int64_t frames, int64_t out_frames, int64_t bins) {
  CHECK(options.num_t_sub >= 0 && options.num_t_sub <= kMaxDrawsPerKind) << "num_t_sub " << options.num_t_sub;
  CHECK(options.max_t >= 1) << "spec_sub max_t " << options.max_t;
  CHECK(out_frames >= 0 && out_frames <= frames) << "out_frames " << out_frames << " frames " << frames;
  if (out_frames > 0) std::memcpy(y, x, sizeof(float) * out_frames * bins);
  if (frames <= 0) return;
  for (int i = 0; i < options.num_t_sub; ++i) {
    int64_t start = randint(stream, kSubBase + 3 * i, 0, frames - 1);
    int64_t width = randint(stream, kSubBase + 3 * i + 1, 1, options.max_t);
    int64_t end = std::min(frames, start + width);
    int64_t pos = randint(stream, kSubBase + 3 * i + 2, 0, start);
    // Rows at or past out_frames are trimmed away afterwards: only the kept rows are written.
    int64_t kept_end = std::min(end, out_frames);
    if (kept_end > start) {
      std::memcpy(y + start * bins, x + (start - pos) * bins, sizeof(float) * (kept_end - start) * bins);
    }
  }
}

int64_t augmented_frames(const AugmentOptions& options, const PhiloxStream& stream, int64_t frames) {
  return options.spec_trim ? spec_trim_frames(options.spec_trim_conf, stream, frames) : frames;
}

int64_t augment_utterance(float* out, float* feats, const AugmentOptions& options, const PhiloxStream& stream,
                          int64_t frames, int64_t bins) {
  if (options.spec_aug) spec_augment_forward(feats, options.spec_aug_conf, stream, frames, bins);
  int64_t out_frames = augmented_frames(options, stream, frames);
  if (options.spec_sub) {
    spec_sub_forward(out, feats, options.spec_sub_conf, stream, frames, out_frames, bins);
  } else if (out_frames > 0) {
    std::memcpy(out, feats, sizeof(float) * out_frames * bins);
  }
  return out_frames;
}

}  // namespace moeasr
