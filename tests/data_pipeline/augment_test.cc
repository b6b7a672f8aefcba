// tests/data_pipeline/augment_test.cc — SpecAugment, SpecSub and SpecTrim against WeNet's
// definitions: a hand-made case with fixed draws, then element-exact comparisons with a plain
// re-statement of processor.py (draws read from the same Philox addresses) over many keys and small
// shapes (T down to 1, F = 1), the ranges of the draws (start in [0, T-1], widths in [1, max]), the
// trim rule (width < T/2), reproducibility from (seed, epoch, key) and sensitivity to each.
#include "data_pipeline/augment.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

namespace moeasr {
namespace {

int64_t draw(const PhiloxStream& s, uint64_t index, int64_t lo, int64_t hi) {
  return lo + static_cast<int64_t>(philox_below(s, index, static_cast<uint64_t>(hi - lo + 1)));
}

std::vector<float> iota_feats(int64_t frames, int64_t bins) {
  std::vector<float> x(frames * bins);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 1.0f + static_cast<float>(i);
  return x;
}

// processor.spec_aug, written as in WeNet.
std::vector<float> reference_spec_aug(std::vector<float> y, const SpecAugmentOptions& o,
                                      const PhiloxStream& s, int64_t t_max, int64_t f_max) {
  for (int i = 0; i < o.num_t_mask; ++i) {
    int64_t start = draw(s, 2 * i, 0, t_max - 1);
    int64_t length = draw(s, 2 * i + 1, 1, o.max_t);
    int64_t end = std::min(t_max, start + length);
    for (int64_t t = start; t < end; ++t)
      for (int64_t f = 0; f < f_max; ++f) y[t * f_max + f] = 0;
  }
  for (int i = 0; i < o.num_f_mask; ++i) {
    int64_t start = draw(s, 1024 + 2 * i, 0, f_max - 1);
    int64_t length = draw(s, 1025 + 2 * i, 1, o.max_f);
    int64_t end = std::min(f_max, start + length);
    for (int64_t t = 0; t < t_max; ++t)
      for (int64_t f = start; f < end; ++f) y[t * f_max + f] = 0;
  }
  return y;
}

// processor.spec_sub.
std::vector<float> reference_spec_sub(const std::vector<float>& x, const SpecSubOptions& o,
                                      const PhiloxStream& s, int64_t t_max, int64_t f_max) {
  std::vector<float> y = x;
  for (int i = 0; i < o.num_t_sub; ++i) {
    int64_t start = draw(s, 2048 + 3 * i, 0, t_max - 1);
    int64_t length = draw(s, 2049 + 3 * i, 1, o.max_t);
    int64_t end = std::min(t_max, start + length);
    int64_t pos = draw(s, 2050 + 3 * i, 0, start);
    for (int64_t t = start; t < end; ++t)
      for (int64_t f = 0; f < f_max; ++f) y[t * f_max + f] = x[(t - pos) * f_max + f];
  }
  return y;
}

// processor.spec_trim.
int64_t reference_trim(const SpecTrimOptions& o, const PhiloxStream& s, int64_t t_max) {
  int64_t length = draw(s, 3072, 1, o.max_t);
  return length < t_max / 2.0 ? t_max - length : t_max;
}

TEST(AugmentTest, KeyHashIsFnv1a) {
  EXPECT_EQ(utterance_key_hash(""), 0xcbf29ce484222325ull);
  EXPECT_EQ(utterance_key_hash("a"), 0xaf63dc4c8601ec8cull);  // published FNV-1a 64 test vector
}

TEST(AugmentTest, HandCaseOneMaskOfEach) {
  // Find a key whose single time mask and single freq mask are both narrow and inside, then check
  // the exact zero pattern on a 6x4 input.
  SpecAugmentOptions o;
  o.num_t_mask = 1;
  o.max_t = 2;
  o.num_f_mask = 1;
  o.max_f = 1;
  PhiloxStream s = augment_stream(7, 0, "utt-hand");
  int64_t t0 = draw(s, 0, 0, 5), tw = draw(s, 1, 1, 2), f0 = draw(s, 1024, 0, 3);
  std::vector<float> x = iota_feats(6, 4);
  spec_augment_forward(x.data(), o, s, 6, 4);
  for (int64_t t = 0; t < 6; ++t) {
    for (int64_t f = 0; f < 4; ++f) {
      bool masked = (t >= t0 && t < std::min<int64_t>(6, t0 + tw)) || f == f0;
      EXPECT_EQ(x[t * 4 + f], masked ? 0.0f : 1.0f + t * 4 + f) << t << "," << f;
    }
  }
}

TEST(AugmentTest, SpecAugmentMatchesWenetDefinition) {
  SpecAugmentOptions o;  // 2 x t <= 50, 2 x f <= 10
  for (int64_t frames : {1, 2, 7, 60, 130}) {
    for (int64_t bins : {1, 3, 80}) {
      for (int k = 0; k < 8; ++k) {
        PhiloxStream s = augment_stream(11, 3, "spk1-utt" + std::to_string(k));
        std::vector<float> x = iota_feats(frames, bins);
        std::vector<float> expected = reference_spec_aug(x, o, s, frames, bins);
        spec_augment_forward(x.data(), o, s, frames, bins);
        ASSERT_EQ(x, expected) << frames << "x" << bins << " key " << k;
      }
    }
  }
}

TEST(AugmentTest, DrawRangesCoverWenetBounds) {
  std::set<int64_t> starts, widths, fwidths;
  for (int k = 0; k < 3000; ++k) {
    PhiloxStream s = augment_stream(1, 0, "k" + std::to_string(k));
    // Zero-fill a 10x1 input of ones with one time mask of width <= 3: the zeros are one run whose
    // start is uniform on [0, 9] and whose width (clipped at the end) is in [1, 3].
    SpecAugmentOptions o;
    o.num_t_mask = 1;
    o.max_t = 3;
    o.num_f_mask = 0;
    std::vector<float> x(10, 1.0f);
    spec_augment_forward(x.data(), o, s, 10, 1);
    auto first = std::find(x.begin(), x.end(), 0.0f);
    ASSERT_NE(first, x.end());
    auto last = std::find(first, x.end(), 1.0f);
    ASSERT_TRUE(std::find(last, x.end(), 0.0f) == x.end());
    starts.insert(first - x.begin());
    if (last != x.end()) widths.insert(last - first);
    fwidths.insert(draw(s, 1025, 1, 10));
  }
  EXPECT_EQ(starts.size(), 10u);
  EXPECT_EQ(*widths.begin(), 1);
  EXPECT_EQ(*widths.rbegin(), 3);
  EXPECT_EQ(fwidths.size(), 10u);
}

TEST(AugmentTest, SpecSubMatchesWenetDefinitionAndDoesNotChain) {
  SpecSubOptions o;  // 3 x <= 30
  for (int64_t frames : {1, 2, 5, 40, 200}) {
    for (int64_t bins : {1, 4}) {
      for (int k = 0; k < 10; ++k) {
        PhiloxStream s = augment_stream(5, 1, "u" + std::to_string(k));
        std::vector<float> x = iota_feats(frames, bins);
        std::vector<float> expected = reference_spec_sub(x, o, s, frames, bins);
        std::vector<float> y(frames * bins, -1.0f);
        spec_sub_forward(y.data(), x.data(), o, s, frames, frames, bins);
        ASSERT_EQ(y, expected) << frames << "x" << bins << " key " << k;
        // Truncated output = the first rows of the full one.
        int64_t out_frames = frames / 2;
        std::vector<float> y2(out_frames * bins);
        spec_sub_forward(y2.data(), x.data(), o, s, frames, out_frames, bins);
        ASSERT_TRUE(std::equal(y2.begin(), y2.end(), expected.begin()));
        // Every row of the result is some row of x at or before it.
        for (int64_t t = 0; t < frames; ++t) {
          float first = y[t * bins];
          int64_t source = static_cast<int64_t>(first - 1.0f) / bins;
          EXPECT_LE(source, t);
        }
      }
    }
  }
}

TEST(AugmentTest, SpecTrimRule) {
  SpecTrimOptions o;  // max 30
  int trimmed = 0;
  for (int64_t frames : {0, 1, 2, 3, 10, 59, 60, 61, 100, 1000}) {
    for (int k = 0; k < 50; ++k) {
      PhiloxStream s = augment_stream(9, 2, "t" + std::to_string(k));
      int64_t kept = spec_trim_frames(o, s, frames);
      ASSERT_EQ(kept, reference_trim(o, s, frames)) << frames;
      int64_t width = frames - kept;
      EXPECT_TRUE(width == 0 || (width >= 1 && width <= 30 && 2 * width < frames));
      if (frames <= 2) {
        EXPECT_EQ(kept, frames);
      }
      if (frames > 60) {
        EXPECT_LT(kept, frames);  // any width <= 30 is < T/2
      }
      trimmed += width > 0;
    }
  }
  EXPECT_GT(trimmed, 0);
}

TEST(AugmentTest, AugmentUtteranceIsTheCompositionAndReproducible) {
  AugmentOptions o;
  o.spec_aug = true;
  o.spec_aug_conf.max_f = 30;
  o.spec_sub = true;
  o.spec_trim = true;
  const int64_t frames = 120, bins = 16;
  PhiloxStream s = augment_stream(3, 4, "spk-7_utt-0001");
  std::vector<float> x = iota_feats(frames, bins);
  std::vector<float> masked = reference_spec_aug(x, o.spec_aug_conf, s, frames, bins);
  std::vector<float> subbed = reference_spec_sub(masked, o.spec_sub_conf, s, frames, bins);
  int64_t kept = reference_trim(o.spec_trim_conf, s, frames);
  ASSERT_EQ(augmented_frames(o, s, frames), kept);
  std::vector<float> out(frames * bins, -5.0f);
  std::vector<float> work = x;
  EXPECT_EQ(augment_utterance(out.data(), work.data(), o, s, frames, bins), kept);
  EXPECT_TRUE(std::equal(out.begin(), out.begin() + kept * bins, subbed.begin()));
  EXPECT_TRUE(std::all_of(out.begin() + kept * bins, out.end(), [](float v) { return v == -5.0f; }));

  // Same (seed, epoch, key): same output; another seed, epoch or key: different.
  const auto run = [&](uint64_t seed, int64_t epoch, const std::string& key) {
    std::vector<float> w = x, o2(frames * bins, 0.0f);
    augment_utterance(o2.data(), w.data(), o, augment_stream(seed, epoch, key), frames, bins);
    return o2;
  };
  std::vector<float> a = run(3, 4, "spk-7_utt-0001");
  EXPECT_EQ(a, run(3, 4, "spk-7_utt-0001"));
  EXPECT_NE(a, run(4, 4, "spk-7_utt-0001"));
  EXPECT_NE(a, run(3, 5, "spk-7_utt-0001"));
  EXPECT_NE(a, run(3, 4, "spk-7_utt-0002"));

  // All off: a copy.
  AugmentOptions off;
  std::vector<float> w = x, copy(frames * bins);
  EXPECT_EQ(augment_utterance(copy.data(), w.data(), off, s, frames, bins), frames);
  EXPECT_EQ(copy, x);
}

}  // namespace
}  // namespace moeasr
