// data_pipeline/fbank.h — Kaldi-compatible log-mel filterbank features, exactly the definition of
// torchaudio.compliance.kaldi.fbank (= Kaldi's compute-fbank-feats; shared/reference/asr_toolkits.md
// §2), computed in float32 with an FFTW real FFT. Per frame t (samples [t*shift, t*shift + win) with
// snip_edges; else centred at t*shift + shift/2 with Kaldi's reflection at both ends), in this order:
//   1. dither:     x[j] += dither * N(0,1), drawn per frame copy from a caller-given PhiloxStream:
//                  the normal for frame t, sample j is philox_normal(stream, t * window_size() + j),
//                  so dither is a pure function of the stream (reproducible on resume, any threads).
//                  (One Philox block + Box-Muller per sample: one core computes ~140k frames/s
//                  without dither and ~14k frames/s with it.)
//   2. DC removal: x[j] -= mean(x) (the mean summed in double).
//   3. raw log-energy (use_energy && raw_energy): log(max(sum x^2, FLT_EPSILON)).
//   4. preemphasis: x[j] -= p * x[j-1] for j = win-1..1, then x[0] -= p * x[0].
//   5. window (povey = hann(win, periodic=False)^0.85; hanning, hamming, rectangular, blackman).
//   6. zero pad to padded_window_size() (next power of two with round_to_power_of_two), real FFT,
//      power |X_k|^2 (or magnitude with use_power=false); windowed log-energy if !raw_energy.
//   7. mel banks: triangles in Kaldi's mel scale 1127 ln(1 + f/700) between low_freq and high_freq
//      (<= 0: Nyquist + high_freq), over FFT bins 0..padded/2-1 (the Nyquist bin gets weight 0).
//   8. log(max(mel energy, FLT_EPSILON)) with use_log_fbank.
//   9. energy column (use_energy): first, or last with htk_compat; floored at log(energy_floor) when
//      energy_floor > 0.
// Input: samples in int16 scale (data_pipeline/audio.h) at config.sample_rate. Output:
// [num_frames, num_features()] float, num_features() = num_mel_bins (+1 with use_energy). Input
// shorter than one window gives 0 frames (Kaldi's behaviour; torchaudio asserts instead).
// Parity (tests/data_pipeline/fbank_test.cc, tests/fixtures/fbank_parity.h5, three espeak-ng wavs):
// |ours - torchaudio| <= 2.6e-4 on every cell within 20 nats of its frame's total mel energy (99.8% of
// cells); the overall max is 2.6e-3, on 3 of 51,440 cells ~24 nats below their frame, where
// torchaudio's own float32 result is 1.9e-3 from its float64 result (float32 rounding noise).
//
// Threads: FbankComputer::compute uses the object's own buffers, so give each thread its own
// computer. FFTW's planner (plan creation and destruction) is NOT thread-safe: create and destroy
// computers on one thread, or pass the same std::mutex to every create() (it is then held around
// planning and around destruction). Plans use FFTW_ESTIMATE, so the plan, and hence every float
// result, does not depend on timing: the same input gives the same features in every run.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/philox.h"
#include "core/status.h"

namespace moeasr {

enum class FbankWindow { kPovey, kHanning, kHamming, kRectangular, kBlackman };

// "povey", "hanning", "hamming", "rectangular", "blackman" (torchaudio's window_type strings).
const char* fbank_window_name(FbankWindow window);
StatusOr<FbankWindow> parse_fbank_window(const std::string& name);

// Defaults are WeNet's front-end (80 bins, povey, energy_floor 0) with dither 0 (torchaudio's
// default; WeNet trains with dither 1.0 and recognises with 0.0). Field comments give the
// torchaudio.compliance.kaldi.fbank keyword, which is also the JSON key.
struct FbankConfig {
  double sample_rate = 16000.0;              // sample_frequency (Hz)
  double frame_length_ms = 25.0;             // frame_length
  double frame_shift_ms = 10.0;              // frame_shift
  int num_mel_bins = 80;                     // num_mel_bins
  double low_freq = 20.0;                    // low_freq (Hz)
  double high_freq = 0.0;                    // high_freq (Hz; <= 0: offset from Nyquist)
  double dither = 0.0;                       // dither (0 = off; WeNet training: 1.0)
  double preemphasis = 0.97;                 // preemphasis_coefficient
  bool remove_dc_offset = true;              // remove_dc_offset
  FbankWindow window = FbankWindow::kPovey;  // window_type
  double blackman_coeff = 0.42;              // blackman_coeff
  bool round_to_power_of_two = true;         // round_to_power_of_two
  bool snip_edges = true;                    // snip_edges
  double energy_floor = 0.0;                 // energy_floor (only with use_energy; 0 = no floor)
  bool use_energy = false;                   // use_energy
  bool raw_energy = true;                    // raw_energy
  bool htk_compat = false;                   // htk_compat
  bool use_log_fbank = true;                 // use_log_fbank
  bool use_power = true;                     // use_power

  // Checks every field (as torchaudio's asserts and Kaldi's errors); the message names the field.
  Status validate() const;
  // int(sample_rate * frame_length_ms * 0.001), as torchaudio (400 at 16 kHz).
  int64_t window_size() const;
  // int(sample_rate * frame_shift_ms * 0.001) (160 at 16 kHz).
  int64_t window_shift() const;
  // Next power of two >= window_size() with round_to_power_of_two, else window_size() (512).
  int64_t padded_window_size() const;
  // num_mel_bins + (use_energy ? 1 : 0).
  int64_t num_features() const;
  // snip_edges: n < win ? 0 : 1 + (n - win) / shift; otherwise (n + shift / 2) / shift.
  int64_t num_frames(int64_t num_samples) const;
};

// JSON object with torchaudio.compliance.kaldi.fbank's keyword names (so that Python can call
// kaldi.fbank(waveform * 32768, **json.loads(text)) and get the same features), sorted keys, e.g.
// {"blackman_coeff":0.42,"dither":0.0,...,"window_type":"povey"}. Stored as the shard attribute
// fbank_config.
std::string fbank_config_to_json(const FbankConfig& config);
// Parses that JSON. Missing keys keep their defaults; an unknown key, a wrong type or an invalid
// config is an InvalidArgument error naming the key. torchaudio keywords that moe-asr does not
// implement (channel, min_duration, subtract_mean, vtln_low, vtln_high, vtln_warp) are accepted at
// their neutral values only (channel -1 or 0, min_duration 0, subtract_mean false, vtln_warp 1).
StatusOr<FbankConfig> fbank_config_from_json(const std::string& text);

class FbankComputer {
 public:
  // Validates the config, builds the window and mel banks, and plans the FFT. `fftw_planner_mutex`
  // (optional, see the file comment) is held while planning and, later, while destroying the plan.
  static StatusOr<std::unique_ptr<FbankComputer>> create(const FbankConfig& config,
                                                         std::mutex* fftw_planner_mutex = nullptr);
  ~FbankComputer();
  FbankComputer(const FbankComputer&) = delete;
  FbankComputer& operator=(const FbankComputer&) = delete;

  const FbankConfig& config() const { return config_; }
  int64_t num_frames(int64_t num_samples) const { return config_.num_frames(num_samples); }
  int64_t num_features() const { return config_.num_features(); }

  // Features of one utterance. `dither_stream` may be null only when config().dither == 0 (CHECK).
  void compute(float* feats,          // [num_frames(num_samples), num_features()]
               const float* samples,  // [num_samples] int16 scale, at config().sample_rate
               int64_t num_samples, const PhiloxStream* dither_stream);
  std::vector<float> compute(const float* samples,  // [num_samples]
                             int64_t num_samples, const PhiloxStream* dither_stream);

  // The dense mel filterbank [num_mel_bins, padded_window_size() / 2 + 1] (last column, the Nyquist
  // bin, is 0) and the window function [window_size()], for tests.
  std::vector<float> mel_banks() const;
  const std::vector<float>& window() const { return window_; }

 private:
  FbankComputer() = default;

  FbankConfig config_;
  int64_t window_size_ = 0;
  int64_t window_shift_ = 0;
  int64_t padded_ = 0;
  std::vector<float> window_;                     // [window_size_]
  std::vector<int64_t> bank_first_;               // [num_mel_bins] first FFT bin with a nonzero weight
  std::vector<std::vector<float>> bank_weights_;  // [num_mel_bins][len] weights from bank_first_
  std::vector<float> spectrum_;                   // [padded_ / 2 + 1]
  float* fft_in_ = nullptr;                       // fftwf_malloc'd [padded_]
  void* fft_out_ = nullptr;                       // fftwf_complex[padded_ / 2 + 1]
  void* plan_ = nullptr;                          // fftwf_plan
  std::mutex* planner_mutex_ = nullptr;
};

}  // namespace moeasr
