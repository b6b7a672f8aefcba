// tests/data_pipeline/audio_test.cc — audio reading (data_pipeline/audio.h): int16 scale exactly for
// 16-bit WAV and FLAC, the scale of 24-bit and float files, channel 0 of a stereo file, every bad
// input (missing, directory, not audio, empty, NaN) as a Status naming the file, and libsamplerate
// resampling (22.05 kHz -> 16 kHz and 8 kHz -> 16 kHz keep the duration, the frequency and the
// amplitude of a sine, with no delay).
#include "data_pipeline/audio.h"

#include <gtest/gtest.h>
#include <sndfile.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace moeasr {
namespace {

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "/moeasr_audio_test_" + std::to_string(::getpid()) + "_" + name;
}

// Writes interleaved int32-scale samples with libsndfile in any format (for formats write_wav_int16
// does not make).
void write_with_sndfile(const std::string& path, int format, int channels, int rate,
                        const std::vector<int>& data) {
  SF_INFO info{};
  info.samplerate = rate;
  info.channels = channels;
  info.format = format;
  ASSERT_TRUE(sf_format_check(&info)) << "libsndfile cannot write format " << format;
  SNDFILE* f = sf_open(path.c_str(), SFM_WRITE, &info);
  ASSERT_NE(f, nullptr) << sf_strerror(nullptr);
  ASSERT_EQ(sf_writef_int(f, data.data(), static_cast<sf_count_t>(data.size() / channels)),
            static_cast<sf_count_t>(data.size() / channels));
  sf_close(f);
}

std::vector<float> sine(int rate, double freq, double seconds, double amplitude) {
  std::vector<float> x(static_cast<size_t>(std::llround(rate * seconds)));
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = static_cast<float>(amplitude * std::sin(2 * M_PI * freq * static_cast<double>(i) / rate));
  }
  return x;
}

TEST(Audio, Int16WavReadsBackExactlyInInt16Scale) {
  const std::string path = temp_path("int16.wav");
  std::vector<float> x = {0, 1, -1, 32767, -32768, 12345, -54321 /*clipped*/, 2.6f /*rounded*/};
  ASSERT_TRUE(write_wav_int16(path, x.data(), static_cast<int64_t>(x.size()), 16000).ok());
  StatusOr<Audio> a = read_audio(path);
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  const std::vector<float> want = {0, 1, -1, 32767, -32768, 12345, -32768, 3};
  EXPECT_EQ(a.value().samples, want);
  EXPECT_EQ(a.value().sample_rate, 16000);
  EXPECT_EQ(a.value().source_sample_rate, 16000);
  EXPECT_EQ(a.value().source_channels, 1);
  EXPECT_EQ(a.value().source_samples, 8);
  EXPECT_DOUBLE_EQ(a.value().duration(), 8.0 / 16000);
  std::remove(path.c_str());
}

TEST(Audio, FlacStereo24BitAndFloatFiles) {
  // FLAC, 16 bit, stereo: channel 0 is kept exactly.
  const std::string flac = temp_path("stereo.flac");
  std::vector<int> data;
  for (int i = 0; i < 1000; ++i) {
    data.push_back((i * 37 % 2001 - 1000) * 65536);  // channel 0: int16 value (i*37 % 2001 - 1000)
    data.push_back(7 * 65536);                       // channel 1: constant 7
  }
  write_with_sndfile(flac, SF_FORMAT_FLAC | SF_FORMAT_PCM_16, 2, 16000, data);
  StatusOr<Audio> a = read_audio(flac);
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  ASSERT_EQ(a.value().samples.size(), 1000u);
  EXPECT_EQ(a.value().source_channels, 2);
  for (int i = 0; i < 1000; ++i)
    EXPECT_EQ(a.value().samples[static_cast<size_t>(i)], i * 37 % 2001 - 1000) << i;

  // 24-bit PCM: full scale is +-32768 too, so one 24-bit step is 1/256.
  const std::string wav24 = temp_path("pcm24.wav");
  write_with_sndfile(wav24, SF_FORMAT_WAV | SF_FORMAT_PCM_24, 1, 16000, {1 << 24, -(1 << 8), 0});
  StatusOr<Audio> b = read_audio(wav24);
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  EXPECT_EQ(b.value().samples, (std::vector<float>{256.0f, -1.0f / 256.0f, 0.0f}));

  // 32-bit float WAV: the stored value in [-1, 1] times 32768.
  const std::string wavf = temp_path("float.wav");
  {
    SF_INFO info{};
    info.samplerate = 16000;
    info.channels = 1;
    info.format = SF_FORMAT_WAV | SF_FORMAT_FLOAT;
    SNDFILE* f = sf_open(wavf.c_str(), SFM_WRITE, &info);
    ASSERT_NE(f, nullptr);
    const float v[3] = {0.5f, -0.25f, 1.0f / 32768};
    ASSERT_EQ(sf_writef_float(f, v, 3), 3);
    sf_close(f);
  }
  StatusOr<Audio> c = read_audio(wavf);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c.value().samples, (std::vector<float>{16384.0f, -8192.0f, 1.0f}));
  for (const std::string& p : {flac, wav24, wavf}) std::remove(p.c_str());
}

TEST(Audio, BadInputsAreStatusesNamingTheFile) {
  const std::string missing = temp_path("no_such_file.wav");
  StatusOr<Audio> a = read_audio(missing);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), StatusCode::kNotFound);
  EXPECT_NE(a.status().message().find(missing), std::string::npos) << a.status().to_string();

  StatusOr<Audio> in_missing_dir = read_audio(missing + "/x.wav");
  ASSERT_FALSE(in_missing_dir.ok());
  EXPECT_EQ(in_missing_dir.status().code(), StatusCode::kNotFound);

  const std::string dir = ::testing::TempDir();
  StatusOr<Audio> d = read_audio(dir);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kIoError);
  EXPECT_NE(d.status().message().find(dir), std::string::npos) << d.status().to_string();

  const std::string text = temp_path("not_audio.wav");
  {
    std::ofstream out(text);
    out << "this is a transcript, not a RIFF file\n";
  }
  StatusOr<Audio> t = read_audio(text);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(t.status().message().find(text), std::string::npos) << t.status().to_string();

  const std::string truncated = temp_path("truncated.wav");
  {
    std::ofstream out(truncated, std::ios::binary);
    out.write("RIFF\x24\x00\x00\x00WAVEfmt ", 16);  // a header cut short
  }
  StatusOr<Audio> tr = read_audio(truncated);
  ASSERT_FALSE(tr.ok());
  EXPECT_NE(tr.status().message().find(truncated), std::string::npos) << tr.status().to_string();

  const std::string empty = temp_path("empty.wav");
  ASSERT_TRUE(write_wav_int16(empty, nullptr, 0, 16000).ok());
  StatusOr<Audio> e = read_audio(empty);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(e.status().message().find(empty), std::string::npos) << e.status().to_string();
  EXPECT_NE(e.status().message().find("no samples"), std::string::npos) << e.status().to_string();

  const std::string nan_wav = temp_path("nan.wav");
  {
    SF_INFO info{};
    info.samplerate = 16000;
    info.channels = 1;
    info.format = SF_FORMAT_WAV | SF_FORMAT_FLOAT;
    SNDFILE* f = sf_open(nan_wav.c_str(), SFM_WRITE, &info);
    ASSERT_NE(f, nullptr);
    const float v[3] = {0.5f, NAN, 0.25f};
    ASSERT_EQ(sf_writef_float(f, v, 3), 3);
    sf_close(f);
  }
  StatusOr<Audio> n = read_audio(nan_wav);
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(n.status().message().find(nan_wav), std::string::npos) << n.status().to_string();
  EXPECT_NE(n.status().message().find("index 1"), std::string::npos) << n.status().to_string();

  const std::string unwritable = temp_path("no_dir/out.wav");
  Status w = write_wav_int16(unwritable, nullptr, 0, 16000);
  EXPECT_FALSE(w.ok());
  EXPECT_NE(w.message().find(unwritable), std::string::npos) << w.to_string();
  EXPECT_FALSE(write_wav_int16(temp_path("bad_rate.wav"), nullptr, 0, 0).ok());
  for (const std::string& p : {text, truncated, empty, nan_wav}) std::remove(p.c_str());
}

// Resamples a sine and compares it with the sine computed directly at the new rate, away from the
// ends: equal duration, frequency, amplitude and phase (no delay).
void check_resampled_sine(int from_rate, int to_rate, double freq, ResampleQuality quality,
                          double tolerance) {
  const double seconds = 1.0;
  std::vector<float> x = sine(from_rate, freq, seconds, 10000);
  StatusOr<std::vector<float>> y =
      resample_audio(x.data(), static_cast<int64_t>(x.size()), from_rate, to_rate, quality);
  ASSERT_TRUE(y.ok()) << y.status().to_string();
  EXPECT_EQ(static_cast<int64_t>(y.value().size()),
            std::llround(x.size() * static_cast<double>(to_rate) / from_rate));
  std::vector<float> want = sine(to_rate, freq, seconds, 10000);
  double worst = 0;
  for (size_t i = static_cast<size_t>(to_rate / 20); i + to_rate / 20 < want.size(); ++i) {
    worst = std::max(worst, std::fabs(static_cast<double>(y.value()[i]) - want[i]));
  }
  EXPECT_LT(worst, tolerance) << from_rate << " -> " << to_rate << " at " << freq << " Hz";
}

TEST(Audio, ResamplingKeepsDurationFrequencyAndPhase) {
  check_resampled_sine(22050, 16000, 1000, ResampleQuality::kSincBest, 2.0);  // 2e-4 of the amplitude
  check_resampled_sine(22050, 16000, 5000, ResampleQuality::kSincBest, 2.0);
  check_resampled_sine(22050, 16000, 1000, ResampleQuality::kSincMedium, 5.0);
  check_resampled_sine(8000, 16000, 440, ResampleQuality::kSincBest, 2.0);  // flite's kal voice is 8 kHz
  check_resampled_sine(44100, 16000, 3000, ResampleQuality::kSincBest, 2.0);
  // Above the new Nyquist: removed.
  std::vector<float> x = sine(22050, 9500, 1.0, 10000);
  StatusOr<std::vector<float>> y = resample_audio(x.data(), 22050, 22050, 16000);
  ASSERT_TRUE(y.ok());
  double peak = 0;
  for (size_t i = 800; i + 800 < y.value().size(); ++i)
    peak = std::max(peak, std::fabs(static_cast<double>(y.value()[i])));
  EXPECT_LT(peak, 10.0);
  // Same rate: a copy. Bad rates: an error.
  StatusOr<std::vector<float>> same = resample_audio(x.data(), 100, 22050, 22050);
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(same.value(), std::vector<float>(x.begin(), x.begin() + 100));
  EXPECT_FALSE(resample_audio(x.data(), 100, 0, 16000).ok());
}

TEST(Audio, ReadAudioResamplesToTheTargetRate) {
  const std::string path = temp_path("sine_22k.wav");
  std::vector<float> x = sine(22050, 1000, 1.5, 10000);
  ASSERT_TRUE(write_wav_int16(path, x.data(), static_cast<int64_t>(x.size()), 22050).ok());
  StatusOr<Audio> a = read_audio(path);
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  EXPECT_EQ(a.value().sample_rate, 16000);
  EXPECT_EQ(a.value().source_sample_rate, 22050);
  EXPECT_EQ(a.value().source_samples, static_cast<int64_t>(x.size()));
  EXPECT_EQ(a.value().samples.size(), 24000u);
  EXPECT_NEAR(a.value().duration(), 1.5, 1.0 / 16000);
  // Frequency: zero crossings over the middle second (1000 Hz -> ~2000).
  int crossings = 0;
  const std::vector<float>& y = a.value().samples;
  for (size_t i = 4001; i < 20000; ++i) crossings += (y[i - 1] < 0) != (y[i] < 0);
  EXPECT_NEAR(crossings, 2000, 2);
  AudioReadOptions keep;
  keep.target_sample_rate = 0;
  StatusOr<Audio> b = read_audio(path, keep);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b.value().sample_rate, 22050);
  EXPECT_EQ(b.value().samples.size(), x.size());
  std::remove(path.c_str());
}

}  // namespace
}  // namespace moeasr
