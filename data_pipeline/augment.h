// data_pipeline/augment.h — WeNet's feature augmentations (wenet/dataset/processor.py spec_aug,
// spec_sub, spec_trim; u2pp_moe_wenet.md §7), with every random draw taken from a Philox stream keyed
// by (seed, epoch, hash of the utterance key), so the same utterance gets the same augmentation in the
// same epoch on any rank, world size, thread or resume, and no RNG state is saved.
//
// Definitions (randint(a, b) is uniform on the closed range, as Python's random.randint):
//   SpecAugment: for each of num_t_mask time masks: start = randint(0, T-1), width = randint(1, max_t),
//     rows [start, min(T, start+width)) = 0; then for each of num_f_mask frequency masks:
//     start = randint(0, F-1), width = randint(1, max_f), columns [start, min(F, start+width)) = 0.
//   SpecSub (U2++ §3.2.3): y = x; for each of num_t_sub: start = randint(0, T-1),
//     width = randint(1, max_t), end = min(T, start+width), pos = randint(0, start),
//     y[start:end] = x[start-pos:end-pos] (copies from the input x, so substitutions do not chain).
//   SpecTrim (TrimTail): width = randint(1, max_t); if width < T/2 the last `width` frames are dropped.
// WeNet applies them in that order (spec_aug, spec_sub, spec_trim) on the full-length features; trimming
// last means the kept length is a pure function of (key, T) and is known from the shard index alone,
// which the loader uses to sort and batch by the trimmed length without reading features.
//
// Draw addresses inside an utterance's stream (element index of philox_below): time mask i uses 2i and
// 2i+1, frequency mask i uses 1024+2i and 1025+2i, substitution i uses 2048+3i..2050+3i, the trim
// width uses 3072. Counts are limited to 256 per kind.
#pragma once

#include <cstdint>
#include <string>

#include "core/philox.h"

namespace moeasr {

struct SpecAugmentOptions {
  int num_t_mask = 2;
  int max_t = 50;
  int num_f_mask = 2;
  int max_f = 10;  // 10 in aishell, 30 in the WenetSpeech recipe
};

struct SpecSubOptions {
  int num_t_sub = 3;
  int max_t = 30;
};

struct SpecTrimOptions {
  int max_t = 30;
};

struct AugmentOptions {
  bool spec_aug = false;
  SpecAugmentOptions spec_aug_conf;
  bool spec_sub = false;
  SpecSubOptions spec_sub_conf;
  bool spec_trim = false;
  SpecTrimOptions spec_trim_conf;
};

// FNV-1a 64-bit hash of an utterance key (the stream id of its augmentation draws).
uint64_t utterance_key_hash(const std::string& key);
// The stream of utterance `key` in `epoch`: RngKey{seed, kSpecAugment, epoch, step 0, rank 0,
// stream utterance_key_hash(key)}.
PhiloxStream augment_stream(uint64_t seed, int64_t epoch, const std::string& key);

// The number of frames SpecTrim keeps of a `frames`-long utterance.
int64_t spec_trim_frames(const SpecTrimOptions& options, const PhiloxStream& stream, int64_t frames);

// SpecAugment in place (zero fill).
void spec_augment_forward(float* feats,  // [T, F]
                          const SpecAugmentOptions& options, const PhiloxStream& stream, int64_t frames,
                          int64_t bins);

// SpecSub: y = the substituted x, truncated to its first `out_frames` rows (out_frames <= frames).
// y and x must not overlap.
void spec_sub_forward(float* y,        // [out_frames, F]
                      const float* x,  // [T, F]
                      const SpecSubOptions& options, const PhiloxStream& stream, int64_t frames,
                      int64_t out_frames, int64_t bins);

// The kept length of an utterance under `options` (frames when spec_trim is off).
int64_t augmented_frames(const AugmentOptions& options, const PhiloxStream& stream, int64_t frames);

// All enabled augmentations in WeNet's order: `feats` is modified in place by SpecAugment; `out`
// receives the first augmented_frames() rows of the result. Returns augmented_frames().
int64_t augment_utterance(float* out,    // [augmented_frames, F]
                          float* feats,  // [T, F] in: features; out: after SpecAugment
                          const AugmentOptions& options, const PhiloxStream& stream, int64_t frames,
                          int64_t bins);

}  // namespace moeasr
