// data_pipeline/fbank.cc — Kaldi/torchaudio fbank with FFTW (see fbank.h). The window and the mel
// banks are built in float32 with the same operations, in the same order, as
// torchaudio.compliance.kaldi (hann_window/hamming_window, get_mel_banks), so the tables agree with
// torchaudio's to the last bit or so; the per-frame steps follow Kaldi's ProcessWindow.
#include "data_pipeline/fbank.h"

#include <fftw3.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <nlohmann/json.hpp>
#include <type_traits>

#include "core/check.h"

namespace moeasr {
namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr float kEpsilon = FLT_EPSILON;  // torchaudio's _get_epsilon, Kaldi's float epsilon

double mel_scale(double freq) {
  return 1127.0 * std::log(1.0 + freq / 700.0);
}

int64_t next_power_of_two(int64_t x) {
  int64_t p = 1;
  while (p < x) p *= 2;
  return p;
}

// torchaudio's hann/hamming_window(periodic=False): arange * (2 pi / (N - 1)), cos, * -beta + alpha,
// all float32.
std::vector<float> make_window(FbankWindow type, int64_t n, double blackman_coeff) {
  std::vector<float> w(static_cast<size_t>(n));
  const float step = static_cast<float>(2.0 * kPi / static_cast<double>(n - 1));
  for (int64_t i = 0; i < n; ++i) {
    const float angle = static_cast<float>(i) * step;
    float value = 1.0f;
    switch (type) {
      case FbankWindow::kHanning: value = std::cos(angle) * -0.5f + 0.5f; break;
      case FbankWindow::kPovey: value = std::pow(std::cos(angle) * -0.5f + 0.5f, 0.85f); break;
      case FbankWindow::kHamming: value = std::cos(angle) * -0.46f + 0.54f; break;
      case FbankWindow::kRectangular: value = 1.0f; break;
      case FbankWindow::kBlackman: {
        const double a = 2.0 * kPi / static_cast<double>(n - 1);
        const float x = static_cast<float>(i);
        value = static_cast<float>(blackman_coeff) - 0.5f * std::cos(static_cast<float>(a) * x) +
                static_cast<float>(0.5 - blackman_coeff) * std::cos(static_cast<float>(2.0 * a) * x);
        break;
      }
    }
    w[static_cast<size_t>(i)] = value;
  }
  return w;
}

// philox_normal(stream, index) with one Philox block instead of four (philox_normal reads the four
// words of block `index` through philox_u32, one block evaluation per word); same bits.
double dither_normal(const PhiloxStream& stream, uint64_t index) {
  const PhiloxCounter w = philox_block(stream, index);
  auto to_double = [](uint32_t hi, uint32_t lo) {
    const uint64_t bits = ((static_cast<uint64_t>(hi) << 32) | lo) >> 11;
    return static_cast<double>(bits) * (1.0 / 9007199254740992.0);
  };
  const double u1 = to_double(w[0], w[1]);
  const double u2 = to_double(w[2], w[3]);
  const double radius = std::sqrt(-2.0 * std::log(1.0 - u1));
  return radius * std::cos(2.0 * kPi * u2);
}

// Reflection of Kaldi's ExtractWindow for samples outside [0, n).
int64_t reflect_index(int64_t s, int64_t n) {
  while (s < 0 || s >= n) s = s < 0 ? -s - 1 : 2 * n - 1 - s;
  return s;
}

template <class V>
Status json_get(const nlohmann::json& value, const std::string& key, V* out) {
  const char* expected = nullptr;
  if constexpr (std::is_same_v<V, bool>) {
    if (!value.is_boolean()) expected = "a boolean";
  } else if constexpr (std::is_same_v<V, int>) {
    if (!value.is_number_integer()) expected = "an integer";
  } else if constexpr (std::is_same_v<V, std::string>) {
    if (!value.is_string()) expected = "a string";
  } else {
    if (!value.is_number()) expected = "a number";
  }
  if (expected != nullptr) {
    return invalid_argument_error("fbank config key \"" + key + "\" must be " + expected + ", got " +
                                  value.dump());
  }
  *out = value.get<V>();
  return Status::ok_status();
}

}  // namespace

const char* fbank_window_name(FbankWindow window) {
  switch (window) {
    case FbankWindow::kPovey: return "povey";
    case FbankWindow::kHanning: return "hanning";
    case FbankWindow::kHamming: return "hamming";
    case FbankWindow::kRectangular: return "rectangular";
    case FbankWindow::kBlackman: return "blackman";
  }
  return "povey";
}

StatusOr<FbankWindow> parse_fbank_window(const std::string& name) {
  for (FbankWindow w : {FbankWindow::kPovey, FbankWindow::kHanning, FbankWindow::kHamming,
                        FbankWindow::kRectangular, FbankWindow::kBlackman}) {
    if (name == fbank_window_name(w)) return w;
  }
  return invalid_argument_error("unknown fbank window_type \"" + name +
                                "\" (use povey, hanning, hamming, rectangular or blackman)");
}

int64_t FbankConfig::window_size() const {
  return static_cast<int64_t>(sample_rate * frame_length_ms * 0.001);
}

int64_t FbankConfig::window_shift() const {
  return static_cast<int64_t>(sample_rate * frame_shift_ms * 0.001);
}

int64_t FbankConfig::padded_window_size() const {
  return round_to_power_of_two ? next_power_of_two(window_size()) : window_size();
}

int64_t FbankConfig::num_features() const {
  return num_mel_bins + (use_energy ? 1 : 0);
}

int64_t FbankConfig::num_frames(int64_t num_samples) const {
  const int64_t win = window_size();
  const int64_t shift = window_shift();
  if (num_samples <= 0 || shift <= 0) return 0;
  if (snip_edges) return num_samples < win ? 0 : 1 + (num_samples - win) / shift;
  return (num_samples + shift / 2) / shift;
}

Status FbankConfig::validate() const {
  auto bad = [](const std::string& m) { return invalid_argument_error("fbank config: " + m); };
  if (!(sample_rate > 0)) return bad("sample_frequency must be > 0, got " + std::to_string(sample_rate));
  if (!(frame_length_ms > 0) || window_size() < 2) {
    return bad("frame_length " + std::to_string(frame_length_ms) + " ms gives a window of " +
               std::to_string(window_size()) + " samples; need >= 2");
  }
  if (!(frame_shift_ms > 0) || window_shift() < 1) {
    return bad("frame_shift " + std::to_string(frame_shift_ms) + " ms gives a shift of " +
               std::to_string(window_shift()) + " samples; need >= 1");
  }
  if (padded_window_size() % 2 != 0) {
    return bad("the padded window (" + std::to_string(padded_window_size()) +
               " samples) must be even: set round_to_power_of_two or change frame_length");
  }
  if (num_mel_bins < 3) return bad("num_mel_bins must be >= 3, got " + std::to_string(num_mel_bins));
  const double nyquist = 0.5 * sample_rate;
  const double high = high_freq <= 0 ? high_freq + nyquist : high_freq;
  if (!(low_freq >= 0 && low_freq < nyquist)) {
    return bad("low_freq must be in [0, Nyquist = " + std::to_string(nyquist) + "), got " +
               std::to_string(low_freq));
  }
  if (!(high > 0 && high <= nyquist && low_freq < high)) {
    return bad("high_freq " + std::to_string(high_freq) + " gives " + std::to_string(high) +
               " Hz; need low_freq < high <= Nyquist = " + std::to_string(nyquist));
  }
  if (!(dither >= 0) || !std::isfinite(dither))
    return bad("dither must be >= 0, got " + std::to_string(dither));
  if (!(preemphasis >= 0 && preemphasis <= 1)) {
    return bad("preemphasis_coefficient must be in [0, 1], got " + std::to_string(preemphasis));
  }
  if (!(energy_floor >= 0)) return bad("energy_floor must be >= 0, got " + std::to_string(energy_floor));
  return Status::ok_status();
}

std::string fbank_config_to_json(const FbankConfig& c) {
  nlohmann::json j;  // std::map underneath: keys come out sorted
  j["sample_frequency"] = c.sample_rate;
  j["frame_length"] = c.frame_length_ms;
  j["frame_shift"] = c.frame_shift_ms;
  j["num_mel_bins"] = c.num_mel_bins;
  j["low_freq"] = c.low_freq;
  j["high_freq"] = c.high_freq;
  j["dither"] = c.dither;
  j["preemphasis_coefficient"] = c.preemphasis;
  j["remove_dc_offset"] = c.remove_dc_offset;
  j["window_type"] = fbank_window_name(c.window);
  j["blackman_coeff"] = c.blackman_coeff;
  j["round_to_power_of_two"] = c.round_to_power_of_two;
  j["snip_edges"] = c.snip_edges;
  j["energy_floor"] = c.energy_floor;
  j["use_energy"] = c.use_energy;
  j["raw_energy"] = c.raw_energy;
  j["htk_compat"] = c.htk_compat;
  j["use_log_fbank"] = c.use_log_fbank;
  j["use_power"] = c.use_power;
  return j.dump();
}

StatusOr<FbankConfig> fbank_config_from_json(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return invalid_argument_error("fbank config is not a JSON object: " + text.substr(0, 200));
  }
  FbankConfig c;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const nlohmann::json& v = it.value();
    Status s;
    if (key == "sample_frequency") {
      s = json_get(v, key, &c.sample_rate);
    } else if (key == "frame_length") {
      s = json_get(v, key, &c.frame_length_ms);
    } else if (key == "frame_shift") {
      s = json_get(v, key, &c.frame_shift_ms);
    } else if (key == "num_mel_bins") {
      s = json_get(v, key, &c.num_mel_bins);
    } else if (key == "low_freq") {
      s = json_get(v, key, &c.low_freq);
    } else if (key == "high_freq") {
      s = json_get(v, key, &c.high_freq);
    } else if (key == "dither") {
      s = json_get(v, key, &c.dither);
    } else if (key == "preemphasis_coefficient") {
      s = json_get(v, key, &c.preemphasis);
    } else if (key == "remove_dc_offset") {
      s = json_get(v, key, &c.remove_dc_offset);
    } else if (key == "window_type") {
      std::string name;
      s = json_get(v, key, &name);
      if (s.ok()) {
        StatusOr<FbankWindow> w = parse_fbank_window(name);
        if (!w.ok()) return w.status();
        c.window = w.value();
      }
    } else if (key == "blackman_coeff") {
      s = json_get(v, key, &c.blackman_coeff);
    } else if (key == "round_to_power_of_two") {
      s = json_get(v, key, &c.round_to_power_of_two);
    } else if (key == "snip_edges") {
      s = json_get(v, key, &c.snip_edges);
    } else if (key == "energy_floor") {
      s = json_get(v, key, &c.energy_floor);
    } else if (key == "use_energy") {
      s = json_get(v, key, &c.use_energy);
    } else if (key == "raw_energy") {
      s = json_get(v, key, &c.raw_energy);
    } else if (key == "htk_compat") {
      s = json_get(v, key, &c.htk_compat);
    } else if (key == "use_log_fbank") {
      s = json_get(v, key, &c.use_log_fbank);
    } else if (key == "use_power") {
      s = json_get(v, key, &c.use_power);
    } else if (key == "channel" || key == "min_duration" || key == "vtln_warp") {
      double x = 0;
      s = json_get(v, key, &x);
      const bool neutral = key == "channel" ? (x == -1 || x == 0) : key == "min_duration" ? x == 0 : x == 1;
      if (s.ok() && !neutral) {
        return unimplemented_error("fbank config key \"" + key + "\" = " + v.dump() +
                                   " is not supported (only its default)");
      }
    } else if (key == "vtln_low" || key == "vtln_high") {
      double x = 0;
      s = json_get(v, key, &x);  // unused without VTLN warping
    } else if (key == "subtract_mean") {
      bool x = false;
      s = json_get(v, key, &x);
      if (s.ok() && x)
        return unimplemented_error("fbank config key \"subtract_mean\" = true is not supported");
    } else {
      return invalid_argument_error("unknown fbank config key \"" + key + "\"");
    }
    RETURN_IF_ERROR(s);
  }
  RETURN_IF_ERROR(c.validate());
  return c;
}

StatusOr<std::unique_ptr<FbankComputer>> FbankComputer::create(const FbankConfig& config,
                                                               std::mutex* fftw_planner_mutex) {
  RETURN_IF_ERROR(config.validate());
  std::unique_ptr<FbankComputer> fc(new FbankComputer());
  fc->config_ = config;
  fc->window_size_ = config.window_size();
  fc->window_shift_ = config.window_shift();
  fc->padded_ = config.padded_window_size();
  fc->window_ = make_window(config.window, fc->window_size_, config.blackman_coeff);

  // Mel banks as torchaudio's get_mel_banks: scalars in double, tensors in float32.
  const int64_t num_fft_bins = fc->padded_ / 2;
  const double nyquist = 0.5 * config.sample_rate;
  const double high_freq = config.high_freq <= 0 ? config.high_freq + nyquist : config.high_freq;
  const double fft_bin_width = config.sample_rate / static_cast<double>(fc->padded_);
  const double mel_low = mel_scale(config.low_freq);
  const double mel_high = mel_scale(high_freq);
  const double mel_delta = (mel_high - mel_low) / (config.num_mel_bins + 1);
  const float mel_low_f = static_cast<float>(mel_low);
  const float mel_delta_f = static_cast<float>(mel_delta);
  const float bin_width_f = static_cast<float>(fft_bin_width);
  std::vector<float> fft_mel(static_cast<size_t>(num_fft_bins));
  for (int64_t i = 0; i < num_fft_bins; ++i) {
    const float freq = static_cast<float>(i) * bin_width_f;
    fft_mel[static_cast<size_t>(i)] = 1127.0f * std::log(1.0f + freq / 700.0f);
  }
  fc->bank_first_.resize(static_cast<size_t>(config.num_mel_bins));
  fc->bank_weights_.resize(static_cast<size_t>(config.num_mel_bins));
  for (int b = 0; b < config.num_mel_bins; ++b) {
    const float left = mel_low_f + static_cast<float>(b) * mel_delta_f;
    const float center = mel_low_f + (static_cast<float>(b) + 1.0f) * mel_delta_f;
    const float right = mel_low_f + (static_cast<float>(b) + 2.0f) * mel_delta_f;
    int64_t first = -1;
    int64_t last = -1;
    std::vector<float> weights(static_cast<size_t>(num_fft_bins));
    for (int64_t i = 0; i < num_fft_bins; ++i) {
      const float m = fft_mel[static_cast<size_t>(i)];
      const float up = (m - left) / (center - left);
      const float down = (right - m) / (right - center);
      const float w = std::max(0.0f, std::min(up, down));
      weights[static_cast<size_t>(i)] = w;
      if (w > 0) {
        if (first < 0) first = i;
        last = i;
      }
    }
    if (first < 0) {
      return invalid_argument_error("fbank config: mel bin " + std::to_string(b) + " of " +
                                    std::to_string(config.num_mel_bins) +
                                    " covers no FFT bin; use fewer num_mel_bins or a longer frame_length");
    }
    fc->bank_first_[static_cast<size_t>(b)] = first;
    fc->bank_weights_[static_cast<size_t>(b)].assign(weights.begin() + first, weights.begin() + last + 1);
  }

  fc->spectrum_.assign(static_cast<size_t>(num_fft_bins + 1), 0.0f);
  fc->planner_mutex_ = fftw_planner_mutex;
  std::unique_lock<std::mutex> lock;
  if (fftw_planner_mutex != nullptr) lock = std::unique_lock<std::mutex>(*fftw_planner_mutex);
  fc->fft_in_ = static_cast<float*>(fftwf_malloc(sizeof(float) * static_cast<size_t>(fc->padded_)));
  fftwf_complex* out = static_cast<fftwf_complex*>(
      fftwf_malloc(sizeof(fftwf_complex) * static_cast<size_t>(num_fft_bins + 1)));
  fc->fft_out_ = out;
  CHECK(fc->fft_in_ != nullptr && out != nullptr)
      << "fftwf_malloc failed for a " << fc->padded_ << "-point FFT";
  fftwf_plan plan = fftwf_plan_dft_r2c_1d(static_cast<int>(fc->padded_), fc->fft_in_, out, FFTW_ESTIMATE);
  CHECK(plan != nullptr) << "FFTW could not plan a " << fc->padded_ << "-point real FFT";
  fc->plan_ = plan;
  return fc;
}

FbankComputer::~FbankComputer() {
  std::unique_lock<std::mutex> lock;
  if (planner_mutex_ != nullptr) lock = std::unique_lock<std::mutex>(*planner_mutex_);
  if (plan_ != nullptr) fftwf_destroy_plan(static_cast<fftwf_plan>(plan_));
  if (fft_in_ != nullptr) fftwf_free(fft_in_);
  if (fft_out_ != nullptr) fftwf_free(fft_out_);
}

std::vector<float> FbankComputer::mel_banks() const {
  const int64_t cols = padded_ / 2 + 1;
  std::vector<float> dense(static_cast<size_t>(config_.num_mel_bins * cols), 0.0f);
  for (int b = 0; b < config_.num_mel_bins; ++b) {
    const std::vector<float>& w = bank_weights_[static_cast<size_t>(b)];
    for (size_t k = 0; k < w.size(); ++k) {
      dense[static_cast<size_t>(b * cols + bank_first_[static_cast<size_t>(b)]) + k] = w[k];
    }
  }
  return dense;
}

std::vector<float> FbankComputer::compute(const float* samples, int64_t num_samples,
                                          const PhiloxStream* dither_stream) {
  std::vector<float> feats(static_cast<size_t>(num_frames(num_samples) * num_features()));
  compute(feats.data(), samples, num_samples, dither_stream);
  return feats;
}

void FbankComputer::compute(float* feats, const float* samples, int64_t num_samples,
                            const PhiloxStream* dither_stream) {
  const FbankConfig& c = config_;
  CHECK(c.dither == 0 || dither_stream != nullptr) << "fbank dither " << c.dither << " needs a PhiloxStream";
  const int64_t frames = num_frames(num_samples);
  const int64_t win = window_size_;
  const int64_t dim = num_features();
  const int64_t mel_offset = c.use_energy && !c.htk_compat ? 1 : 0;
  const int64_t energy_col = c.htk_compat ? c.num_mel_bins : 0;
  const float dither = static_cast<float>(c.dither);
  const float preemph = static_cast<float>(c.preemphasis);
  const float log_energy_floor = c.energy_floor > 0 ? std::log(static_cast<float>(c.energy_floor)) : 0.0f;
  float* x = fft_in_;
  const fftwf_complex* spec = static_cast<const fftwf_complex*>(fft_out_);
  auto log_energy = [&]() {
    double e = 0;
    for (int64_t j = 0; j < win; ++j) e += static_cast<double>(x[j]) * x[j];
    float le = std::log(std::max(static_cast<float>(e), kEpsilon));
    if (c.energy_floor > 0) le = std::max(le, log_energy_floor);
    return le;
  };

  for (int64_t t = 0; t < frames; ++t) {
    float* out = feats + t * dim;
    // Extract the frame.
    if (c.snip_edges) {
      std::copy(samples + t * window_shift_, samples + t * window_shift_ + win, x);
    } else {
      const int64_t start = t * window_shift_ + window_shift_ / 2 - win / 2;
      for (int64_t j = 0; j < win; ++j) x[j] = samples[reflect_index(start + j, num_samples)];
    }
    if (dither != 0) {
      for (int64_t j = 0; j < win; ++j) {
        x[j] +=
            dither * static_cast<float>(dither_normal(*dither_stream, static_cast<uint64_t>(t * win + j)));
      }
    }
    if (c.remove_dc_offset) {
      double sum = 0;
      for (int64_t j = 0; j < win; ++j) sum += x[j];
      const float mean = static_cast<float>(sum / static_cast<double>(win));
      for (int64_t j = 0; j < win; ++j) x[j] -= mean;
    }
    if (c.use_energy && c.raw_energy) out[energy_col] = log_energy();
    if (preemph != 0) {
      for (int64_t j = win - 1; j > 0; --j) x[j] -= preemph * x[j - 1];
      x[0] -= preemph * x[0];
    }
    for (int64_t j = 0; j < win; ++j) x[j] *= window_[static_cast<size_t>(j)];
    std::fill(x + win, x + padded_, 0.0f);
    if (c.use_energy && !c.raw_energy) out[energy_col] = log_energy();

    fftwf_execute(static_cast<fftwf_plan>(plan_));
    const int64_t bins = padded_ / 2;
    for (int64_t k = 0; k < bins; ++k) {
      const float p = spec[k][0] * spec[k][0] + spec[k][1] * spec[k][1];
      spectrum_[static_cast<size_t>(k)] = c.use_power ? p : std::sqrt(p);
    }
    for (int b = 0; b < c.num_mel_bins; ++b) {
      const std::vector<float>& w = bank_weights_[static_cast<size_t>(b)];
      const float* s = spectrum_.data() + bank_first_[static_cast<size_t>(b)];
      float energy = 0;
      for (size_t k = 0; k < w.size(); ++k) energy += w[k] * s[k];
      out[mel_offset + b] = c.use_log_fbank ? std::log(std::max(energy, kEpsilon)) : energy;
    }
  }
}

}  // namespace moeasr
