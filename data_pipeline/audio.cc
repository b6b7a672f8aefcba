// data_pipeline/audio.cc — libsndfile reading and libsamplerate resampling (see audio.h).
#include "data_pipeline/audio.h"

#include <samplerate.h>
#include <sndfile.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>

namespace moeasr {
namespace {

constexpr float kInt16Scale = 32768.0f;
constexpr int64_t kReadBlockFrames = 65536;

int src_converter(ResampleQuality quality) {
  switch (quality) {
    case ResampleQuality::kSincBest: return SRC_SINC_BEST_QUALITY;
    case ResampleQuality::kSincMedium: return SRC_SINC_MEDIUM_QUALITY;
    case ResampleQuality::kSincFastest: return SRC_SINC_FASTEST;
  }
  return SRC_SINC_BEST_QUALITY;
}

// Closes the SNDFILE on every return path.
struct SndFileCloser {
  SNDFILE* file = nullptr;
  ~SndFileCloser() {
    if (file != nullptr) sf_close(file);
  }
};

}  // namespace

StatusOr<std::vector<float>> resample_audio(const float* samples, int64_t num_samples, int from_rate,
                                            int to_rate, ResampleQuality quality) {
  if (from_rate <= 0 || to_rate <= 0) {
    return invalid_argument_error("resample_audio: sample rates must be positive, got " +
                                  std::to_string(from_rate) + " -> " + std::to_string(to_rate));
  }
  if (from_rate == to_rate || num_samples == 0) return std::vector<float>(samples, samples + num_samples);
  const double ratio = static_cast<double>(to_rate) / from_rate;
  const int64_t expected = std::llround(static_cast<double>(num_samples) * ratio);
  if (num_samples > std::numeric_limits<long>::max() / 4) {
    return invalid_argument_error("resample_audio: " + std::to_string(num_samples) + " samples is too many");
  }
  // A few spare samples: src_simple may produce one or two more than `expected`.
  std::vector<float> out(static_cast<size_t>(expected + 16), 0.0f);
  SRC_DATA data;
  std::memset(&data, 0, sizeof(data));
  data.data_in = samples;
  data.input_frames = static_cast<long>(num_samples);
  data.data_out = out.data();
  data.output_frames = static_cast<long>(out.size());
  data.src_ratio = ratio;
  data.end_of_input = 1;
  int error = src_simple(&data, src_converter(quality), 1);
  if (error != 0) {
    return internal_error(std::string("resample_audio: libsamplerate failed: ") + src_strerror(error));
  }
  // Keep the duration exactly: drop the surplus or pad the (at most a sample or two) shortfall with
  // zeros.
  out.resize(static_cast<size_t>(expected), 0.0f);
  for (int64_t i = data.output_frames_gen; i < expected; ++i) out[static_cast<size_t>(i)] = 0.0f;
  return out;
}

StatusOr<Audio> read_audio(const std::string& path, const AudioReadOptions& options) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) {
      return not_found_error("audio file " + path + " does not exist (check wav.scp / data.list paths)");
    }
    return io_error("cannot stat audio file " + path + ": " + std::strerror(errno));
  }
  if (S_ISDIR(st.st_mode)) return io_error("audio path " + path + " is a directory, not a file");

  SF_INFO info;
  std::memset(&info, 0, sizeof(info));
  SndFileCloser closer;
  closer.file = sf_open(path.c_str(), SFM_READ, &info);
  if (closer.file == nullptr) {
    int err = sf_error(nullptr);
    if (err == SF_ERR_SYSTEM) {
      return io_error("cannot open audio file " + path + ": " + sf_strerror(nullptr));
    }
    return data_loss_error("audio file " + path +
                           " is not a readable audio file (libsndfile: " + sf_strerror(nullptr) + ")");
  }
  if (info.channels <= 0 || info.samplerate <= 0) {
    return data_loss_error("audio file " + path + " has no channels or no sample rate");
  }
  Audio audio;
  audio.source_sample_rate = info.samplerate;
  audio.source_channels = info.channels;
  // Read in blocks until the end (info.frames may be unknown for some containers).
  std::vector<float> block(static_cast<size_t>(kReadBlockFrames * info.channels));
  std::vector<float>& mono = audio.samples;
  if (info.frames > 0 && info.frames < (int64_t{1} << 34)) mono.reserve(static_cast<size_t>(info.frames));
  for (;;) {
    sf_count_t got = sf_readf_float(closer.file, block.data(), kReadBlockFrames);
    if (got < 0) return data_loss_error("error reading audio file " + path + ": " + sf_strerror(closer.file));
    for (sf_count_t i = 0; i < got; ++i) {
      mono.push_back(block[static_cast<size_t>(i * info.channels)] * kInt16Scale);
    }
    if (got < kReadBlockFrames) break;
  }
  if (sf_error(closer.file) != SF_ERR_NO_ERROR) {
    return data_loss_error("error reading audio file " + path + ": " + sf_strerror(closer.file));
  }
  audio.source_samples = static_cast<int64_t>(mono.size());
  if (mono.empty()) return data_loss_error("audio file " + path + " has no samples");
  for (size_t i = 0; i < mono.size(); ++i) {
    if (!std::isfinite(mono[i])) {
      return data_loss_error("audio file " + path + " has a non-finite sample at index " + std::to_string(i));
    }
  }
  audio.sample_rate = info.samplerate;
  if (options.target_sample_rate > 0 && options.target_sample_rate != info.samplerate) {
    StatusOr<std::vector<float>> resampled =
        resample_audio(mono.data(), static_cast<int64_t>(mono.size()), info.samplerate,
                       options.target_sample_rate, options.resample_quality);
    if (!resampled.ok()) return resampled.status().with_context("audio file " + path);
    audio.samples = std::move(resampled).value();
    audio.sample_rate = options.target_sample_rate;
  }
  return audio;
}

Status write_wav_int16(const std::string& path, const float* samples, int64_t num_samples, int sample_rate) {
  if (sample_rate <= 0) {
    return invalid_argument_error("write_wav_int16: " + path + ": sample rate must be positive, got " +
                                  std::to_string(sample_rate));
  }
  SF_INFO info;
  std::memset(&info, 0, sizeof(info));
  info.samplerate = sample_rate;
  info.channels = 1;
  info.format = SF_FORMAT_WAV | SF_FORMAT_PCM_16;
  SndFileCloser closer;
  closer.file = sf_open(path.c_str(), SFM_WRITE, &info);
  if (closer.file == nullptr) {
    return io_error("cannot create wav file " + path + ": " + sf_strerror(nullptr));
  }
  std::vector<short> block;
  for (int64_t start = 0; start < num_samples; start += kReadBlockFrames) {
    int64_t n = std::min<int64_t>(kReadBlockFrames, num_samples - start);
    block.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      float v = std::isnan(samples[start + i]) ? 0.0f : std::nearbyint(samples[start + i]);
      v = std::min(32767.0f, std::max(-32768.0f, v));
      block[static_cast<size_t>(i)] = static_cast<short>(v);
    }
    if (sf_writef_short(closer.file, block.data(), n) != n) {
      return io_error("cannot write wav file " + path + ": " + sf_strerror(closer.file));
    }
  }
  if (sf_close(closer.file) != 0) {
    closer.file = nullptr;
    return io_error("cannot finish wav file " + path);
  }
  closer.file = nullptr;
  return Status::ok_status();
}

}  // namespace moeasr
