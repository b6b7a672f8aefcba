// data_pipeline/audio.h — reading speech audio for feature extraction, as WeNet's processor does
// (torchaudio.load, take the waveform, resample to 16 kHz, multiply by 1 << 15) but with libsndfile
// and libsamplerate:
//   - Formats: anything libsndfile opens (WAV/RF64/WAVEX, FLAC, OGG/Vorbis, AIFF, AU, CAF, W64, ...).
//   - Scale: samples are returned in int16 units, i.e. libsndfile's normalised float (for 16-bit PCM
//     sample/32768, exact) multiplied by 32768. A 16-bit file therefore yields exactly its integer
//     sample values as floats, which is what Kaldi's wav reader gives and what WeNet feeds
//     torchaudio.compliance.kaldi.fbank (`waveform * (1 << 15)`). 8/24/32-bit PCM and float files get
//     the same scale (full scale = +-32768), also as torchaudio.
//   - Channels: channel 0 is kept, the others are dropped. This is what torchaudio's kaldi.fbank does
//     with a multi-channel waveform (channel=-1 -> 0), so a stereo file gives the same features as in
//     WeNet. (Averaging the channels would differ from WeNet.)
//   - Resampling: when the file's rate differs from the target (default 16 kHz), libsamplerate's
//     band-limited sinc converter (src_simple) resamples the whole utterance in float. The default is
//     SRC_SINC_BEST_QUALITY (97% passband, ~97 dB stop band; WeNet's torchaudio Resample uses a 99%
//     rolloff windowed sinc, so BEST is the closer one, keeping the top mel bins below 8 kHz).
//     Measured on one core: BEST 25x real time from 22.05 kHz, 13x from 44.1 kHz, 40x from 8 kHz;
//     kSincMedium (90% passband, i.e. the top ~3 of 80 mel bins attenuated) is ~3x faster.
//     The output has round(N * target / rate) samples (the utterance's duration is kept) and no
//     delay.
// Errors are Status values whose message names the file: missing (NotFound), a directory or
// unreadable (IoError), not a recognised audio file (DataLoss), no samples (DataLoss), non-finite
// samples (DataLoss). Thread-safe: libsndfile and libsamplerate handles are per call (only the text of
// libsndfile's "cannot open" message comes from its process-wide last error).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace moeasr {

enum class ResampleQuality {
  kSincBest,    // SRC_SINC_BEST_QUALITY (default)
  kSincMedium,  // SRC_SINC_MEDIUM_QUALITY
  kSincFastest  // SRC_SINC_FASTEST
};

struct AudioReadOptions {
  int target_sample_rate = 16000;  // <= 0: keep the file's rate
  ResampleQuality resample_quality = ResampleQuality::kSincBest;
};

struct Audio {
  std::vector<float> samples;  // [num_samples] channel 0, int16 scale, at sample_rate
  int sample_rate = 0;         // after resampling
  int source_sample_rate = 0;  // the file's rate
  int source_channels = 0;     // the file's channel count (only channel 0 is kept)
  int64_t source_samples = 0;  // frames in the file
  double duration() const {    // seconds
    return sample_rate > 0 ? static_cast<double>(samples.size()) / sample_rate : 0.0;
  }
};

// Reads `path` (channel 0, int16 scale) and resamples to options.target_sample_rate when needed.
StatusOr<Audio> read_audio(const std::string& path, const AudioReadOptions& options = {});

// Resamples `samples` from `from_rate` to `to_rate` (whole signal at once; round(n * to / from)
// samples come back). Errors: non-positive rates, libsamplerate failure.
StatusOr<std::vector<float>> resample_audio(const float* samples,  // [num_samples]
                                            int64_t num_samples, int from_rate, int to_rate,
                                            ResampleQuality quality = ResampleQuality::kSincBest);

// Writes a mono 16-bit PCM WAV: samples in int16 scale are rounded to the nearest integer and clipped
// to [-32768, 32767]. For tests and tools. Errors name the file.
Status write_wav_int16(const std::string& path,
                       const float* samples,  // [num_samples] int16 scale
                       int64_t num_samples, int sample_rate);

}  // namespace moeasr
