// trainer/recognizer.cc — `moe-asr recognize` (see recognizer.h), after WeNet's wenet/bin/recognize.py
// and its C++ runtime's RTF/latency reporting.
#include "trainer/recognizer.h"

#include <sys/stat.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/arena.h"
#include "core/logging.h"
#include "data_pipeline/audio.h"
#include "data_pipeline/shard.h"
#include "data_pipeline/tokenizer.h"
#include "model/front_end.h"
#include "parallel/single_process_communicator.h"
#include "trainer/model_weights.h"
#include "trainer/rank_device.h"
#include "trainer/wenet_yaml.h"

#if MOEASR_WITH_CUDA
#include "kernels/cuda/cuda_context.h"
#include "kernels/cuda/device.h"
#endif

namespace moeasr {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

constexpr int64_t kMinEncoderInput = 7;  // Conv2dSubsampling4's context: fewer frames give L = 0

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

// ---- Agreement and gathering across ranks -------------------------------------------------------------

// Every rank gets every rank's string (all_gather of the lengths, then of the strings padded to the
// longest).
Status all_gather_strings(Communicator* comm, const std::string& mine, std::vector<std::string>* all) {
  const int world = comm->size();
  all->assign(static_cast<size_t>(world), std::string());
  int64_t len = static_cast<int64_t>(mine.size());
  std::vector<int64_t> lens(static_cast<size_t>(world), 0);
  RETURN_IF_ERROR(comm->all_gather(lens.data(), &len, 1, DType::i64));
  const int64_t longest = *std::max_element(lens.begin(), lens.end());
  std::vector<uint8_t> send(static_cast<size_t>(longest), 0), recv(static_cast<size_t>(longest * world), 0);
  std::copy(mine.begin(), mine.end(), send.begin());
  RETURN_IF_ERROR(comm->all_gather(recv.data(), send.data(), longest, DType::u8));
  for (int r = 0; r < world; ++r) {
    const char* p = reinterpret_cast<const char*>(recv.data()) + r * longest;
    (*all)[static_cast<size_t>(r)].assign(p, p + lens[static_cast<size_t>(r)]);
  }
  return Status();
}

// Every rank learns whether any rank failed; all return the first failure (naming its rank when
// there are several ranks), so that no rank goes on into a collective the others never reach.
Status agree(Communicator* comm, const Status& local) {
  if (comm->size() == 1) return local;
  std::string mine =
      local.ok() ? std::string() : std::to_string(static_cast<int>(local.code())) + " " + local.message();
  std::vector<std::string> all;
  Status gathered = all_gather_strings(comm, mine, &all);
  if (!gathered.ok()) return gathered.with_context("recognize: agreeing on the outcome across ranks");
  for (size_t r = 0; r < all.size(); ++r) {
    if (all[r].empty()) continue;
    size_t space = all[r].find(' ');
    int code = std::atoi(all[r].substr(0, space).c_str());
    return Status(static_cast<StatusCode>(code),
                  "rank " + std::to_string(r) + ": " + all[r].substr(space + 1));
  }
  return Status();
}

// ---- Files --------------------------------------------------------------------------------------------

Status write_text_file(const std::string& path, const std::vector<std::string>& lines) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc | std::ios::binary);
    if (!out) return io_error("cannot write " + tmp + " (" + std::strerror(errno) + ")");
    for (const std::string& l : lines) out << l << '\n';
    out.flush();
    if (!out) return io_error("cannot write " + tmp + " (disk full?)");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return io_error("cannot rename " + tmp + " to " + path + " (" + std::strerror(errno) + ")");
  }
  return Status();
}

std::string mode_text_path(const std::string& result_dir, const std::string& mode) {
  return (std::filesystem::path(result_dir) / mode / "text").string();
}

// ---- Fbank settings from the yaml ----------------------------------------------------------------------

Status fbank_from_yaml(const std::string& yaml_text, const std::string& source, int64_t input_dim,
                       FbankConfig* fbank) {
  *fbank = FbankConfig();
  fbank->num_mel_bins = static_cast<int>(input_dim);
  fbank->dither = 0.0;
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
    YAML::Node ds = root["dataset_conf"];
    if (ds && ds.IsMap()) {
      YAML::Node fc = ds["fbank_conf"];
      if (fc && fc.IsMap()) {
        if (fc["num_mel_bins"]) fbank->num_mel_bins = fc["num_mel_bins"].as<int>();
        if (fc["frame_shift"]) fbank->frame_shift_ms = fc["frame_shift"].as<double>();
        if (fc["frame_length"]) fbank->frame_length_ms = fc["frame_length"].as<double>();
        // fc["dither"] is the training dither; decoding uses 0, as WeNet's recognize.py.
      }
      YAML::Node rc = ds["resample_conf"];
      if (rc && rc.IsMap() && rc["resample_rate"]) fbank->sample_rate = rc["resample_rate"].as<double>();
    }
  } catch (const YAML::Exception& e) {
    return invalid_argument_error(source + ": dataset_conf.fbank_conf: " + e.what());
  }
  if (fbank->num_mel_bins != input_dim) {
    return invalid_argument_error(source + ": dataset_conf.fbank_conf.num_mel_bins is " +
                                  std::to_string(fbank->num_mel_bins) + " but the model's input_dim is " +
                                  std::to_string(input_dim));
  }
  Status valid = fbank->validate();
  if (!valid.ok()) return valid.with_context(source + ": dataset_conf.fbank_conf");
  return Status();
}

// ---- Reading one utterance's features -------------------------------------------------------------------

struct UttInput {
  std::vector<float> feats;  // [frames, F]
  int64_t frames = 0;
  double audio_seconds = 0;
  double fbank_seconds = 0;  // audio inputs only
  FbankConfig fbank;         // the features' framing (for the latency clock)
};

class InputReader {
 public:
  InputReader(const TestSet& set, const RecognitionModel& model) : set_(set), model_(model) {}

  Status read(const TestUtterance& u, UttInput* in) {
    if (u.shard >= 0) return read_shard(u, in);
    return read_audio_utt(u, in);
  }

 private:
  Status read_shard(const TestUtterance& u, UttInput* in) {
    if (reader_ == nullptr || open_shard_ != u.shard) {
      reader_.reset();
      const std::string& path = set_.shard_paths[static_cast<size_t>(u.shard)];
      StatusOr<std::unique_ptr<ShardReader>> r = ShardReader::open(path);
      if (!r.ok()) return r.status();
      reader_ = std::move(r).value();
      open_shard_ = u.shard;
      if (reader_->num_mel_bins() != model_.config.input_dim) {
        return invalid_argument_error(path + " holds " + std::to_string(reader_->num_mel_bins()) +
                                      "-bin features but the model's input_dim is " +
                                      std::to_string(model_.config.input_dim) +
                                      " (shards made with another --num_mel_bins?)");
      }
      StatusOr<FbankConfig> fc = fbank_config_from_json(reader_->fbank_config_json());
      if (fc.ok()) {
        shard_fbank_ = fc.value();
      } else {
        LOG(WARNING) << path << ": cannot parse its fbank_config (" << fc.status().message()
                     << "); the latency clock assumes 25 ms frames every 10 ms at 16 kHz";
        shard_fbank_ = FbankConfig();
      }
    }
    const ShardIndexEntry& e = reader_->entry(u.shard_utt);
    in->frames = e.num_frames;
    in->feats.resize(static_cast<size_t>(e.num_frames * reader_->num_mel_bins()));
    Status s = reader_->read_feats(u.shard_utt, in->feats.data());
    if (!s.ok()) return s.with_context("utterance '" + u.key + "'");
    in->fbank = shard_fbank_;
    in->audio_seconds =
        e.duration > 0 ? e.duration
                       : (e.num_frames > 0 ? fbank_frame_end_seconds(shard_fbank_, e.num_frames - 1) : 0.0);
    in->fbank_seconds = 0;
    return Status();
  }

  Status read_audio_utt(const TestUtterance& u, UttInput* in) {
    const std::string where = "utterance '" + u.key + "' (" + u.audio.origin + ")";
    AudioReadOptions ro;
    ro.target_sample_rate = static_cast<int>(model_.fbank.sample_rate);
    StatusOr<Audio> audio = read_audio(u.audio.wav, ro);
    if (!audio.ok()) return audio.status().with_context(where);
    const std::vector<float>& samples = audio.value().samples;
    const double rate = audio.value().sample_rate;
    int64_t first = 0, last = static_cast<int64_t>(samples.size());
    if (u.audio.start > 0 || u.audio.end >= 0) {
      first = std::llround(u.audio.start * rate);
      if (u.audio.end >= 0) last = std::min(last, static_cast<int64_t>(std::llround(u.audio.end * rate)));
      if (first >= last) {
        return invalid_argument_error(where + ": segment [" + std::to_string(u.audio.start) + ", " +
                                      std::to_string(u.audio.end) + "] s lies outside " + u.audio.wav + " (" +
                                      std::to_string(samples.size() / rate) + " s)");
      }
    }
    const int64_t n = last - first;
    if (computer_ == nullptr) {
      StatusOr<std::unique_ptr<FbankComputer>> c = FbankComputer::create(model_.fbank);
      if (!c.ok()) return c.status();
      computer_ = std::move(c).value();
    }
    const Clock::time_point t0 = Clock::now();
    in->frames = computer_->num_frames(n);
    in->feats.assign(static_cast<size_t>(in->frames * computer_->num_features()), 0.0f);
    if (in->frames > 0) computer_->compute(in->feats.data(), samples.data() + first, n, nullptr);
    in->fbank_seconds = seconds_since(t0);
    in->audio_seconds = static_cast<double>(n) / rate;
    in->fbank = model_.fbank;
    return Status();
  }

  const TestSet& set_;
  const RecognitionModel& model_;
  std::unique_ptr<ShardReader> reader_;
  int64_t open_shard_ = -1;
  FbankConfig shard_fbank_;
  std::unique_ptr<FbankComputer> computer_;
};

// ---- Per-utterance decoding ------------------------------------------------------------------------------

// The step arenas of one batch or utterance (the host metadata arena exists on GPU runs).
void reset_arenas(const RunContext& ctx) {
  ctx.activations->reset();
  if (ctx.host_metadata != nullptr) ctx.host_metadata->reset();
}

std::vector<DecodeResult> run_searches(const RecognitionModel& model, const std::vector<DecodeMode>& modes,
                                       const std::vector<float>& enc, const SearchOptions& search,
                                       const RunContext& ctx) {
  const int64_t d = model.config.encoder.output_size;
  const int64_t frames = static_cast<int64_t>(enc.size()) / d;
  if (frames == 0) return std::vector<DecodeResult>(modes.size());  // nothing heard: empty hypotheses
  reset_arenas(ctx);
  const float* encoder_out = device_mirror(ctx, enc.data(), frames * d);  // the same array on the CPU
  std::vector<DecodeResult> r = decode_utterance(*model.search, modes, encoder_out, frames, search, ctx);
  reset_arenas(ctx);
  return r;
}

// First frame among [0, n) whose CTC argmax (ties -> lower id, as ctc_greedy_search) is not blank.
int64_t first_non_blank_frame(const std::vector<float>& log_probs, int64_t n, int64_t vocab, int32_t blank) {
  for (int64_t t = 0; t < n; ++t) {
    const float* row = log_probs.data() + t * vocab;
    int64_t best = 0;
    for (int64_t v = 1; v < vocab; ++v) {
      if (row[v] > row[best]) best = v;
    }
    if (best != blank) return t;
  }
  return -1;
}

struct StreamTimes {
  double first_token = -1;         // seconds; < 0: no token
  std::vector<double> last_token;  // per mode, seconds
  double processing = 0;           // every packet plus every mode's final search
};

// The streaming decode of one utterance on the virtual real-time clock (docs/recognition.md): packets
// of whole decoding windows through StreamingEncoder::accept_frames, the CTC head and greedy argmax
// after each (the partial result), then finish_stream and each mode's search on the whole output.
Status decode_streaming(std::vector<DecodeResult>* results, StreamTimes* times, RecognitionModel* model,
                        const std::vector<DecodeMode>& modes, const UttInput& in, const RecognizeOptions& opt,
                        const RunContext& ctx) {
  const int64_t f = model->config.input_dim, d = model->config.encoder.output_size;
  const int64_t vocab = model->config.vocab_size;
  const int64_t c = opt.encode.decoding_chunk_size;
  const int64_t stride = c * 4, window = (c - 1) * 4 + kMinEncoderInput;
  if (conv2d_subsampling4_output_size(std::max<int64_t>(in.frames, kMinEncoderInput)) >
      kPositionalEncodingMaxLen) {
    return out_of_range_error("an utterance of " + std::to_string(in.frames) +
                              " frames is longer than the positional table's " +
                              std::to_string(kPositionalEncodingMaxLen) +
                              " encoder frames (200 s at 40 ms); split the audio into shorter segments");
  }
  StreamingState<float> state;
  RETURN_IF_ERROR(model->encoder->start_stream(&state, c, opt.encode.num_decoding_left_chunks));
  std::vector<float> enc, lp;
  std::vector<double> arrival, processing;
  int64_t fed = 0, first_frame = -1, first_packet = -1;
  auto ctc_check = [&](int64_t from, int64_t packet) {
    const int64_t total = static_cast<int64_t>(enc.size()) / d, n = total - from;
    if (n <= 0 || first_frame >= 0) return;
    lp.resize(static_cast<size_t>(n * vocab));
    ctx.activations->reset();
    model->search->ctc_log_probs(lp.data(), enc.data() + from * d, n, ctx);
    ctx.activations->reset();
    int64_t t = first_non_blank_frame(lp, n, vocab, opt.search.blank_id);
    if (t >= 0) {
      first_frame = from + t;
      first_packet = packet;
    }
  };
  for (int64_t k = 0; k * stride + window <= in.frames; ++k) {
    const int64_t end = k * stride + window;
    const Clock::time_point t0 = Clock::now();
    const int64_t before = static_cast<int64_t>(enc.size()) / d;
    model->encoder->accept_frames(&enc, &state, in.feats.data() + fed * f, end - fed, ctx);
    fed = end;
    ctc_check(before, static_cast<int64_t>(arrival.size()));
    processing.push_back(seconds_since(t0));
    arrival.push_back(fbank_frame_end_seconds(in.fbank, end - 1));
  }
  // The end of the audio: the rest of the frames, the last (shorter) window, the end of the partial result.
  const double audio_end =
      std::max(in.audio_seconds, in.frames > 0 ? fbank_frame_end_seconds(in.fbank, in.frames - 1) : 0.0);
  {
    const Clock::time_point t0 = Clock::now();
    const int64_t before = static_cast<int64_t>(enc.size()) / d;
    if (fed < in.frames)
      model->encoder->accept_frames(&enc, &state, in.feats.data() + fed * f, in.frames - fed, ctx);
    model->encoder->finish_stream(&enc, &state, ctx);
    ctc_check(before, static_cast<int64_t>(arrival.size()));
    processing.push_back(seconds_since(t0));
    arrival.push_back(audio_end);
  }
  const std::vector<double> finish = streaming_finish_times(arrival, processing);
  for (double p : processing) times->processing += p;
  if (first_frame >= 0) {
    const int64_t last_input = std::min(first_frame * 4 + kMinEncoderInput - 1, in.frames - 1);
    times->first_token =
        finish[static_cast<size_t>(first_packet)] - fbank_frame_end_seconds(in.fbank, last_input);
  }
  results->clear();
  times->last_token.clear();
  for (DecodeMode mode : modes) {
    const Clock::time_point t0 = Clock::now();
    std::vector<DecodeResult> r = run_searches(*model, {mode}, enc, opt.search, ctx);
    const double w = seconds_since(t0);
    times->processing += w;
    times->last_token.push_back(finish.back() + w - audio_end);
    results->push_back(std::move(r[0]));
  }
  return Status();
}

// ---- Warnings about the flags and the model -------------------------------------------------------------

std::vector<std::string> option_warnings(const RecognizeOptions& opt, const ModelConfig& config) {
  std::vector<std::string> w;
  const EncoderConfig& enc = config.encoder;
  const int64_t c = opt.encode.decoding_chunk_size;
  if (c > 0 && !enc.use_dynamic_chunk && enc.static_chunk_size <= 0) {
    w.push_back("--decoding_chunk_size " + std::to_string(c) +
                " on a model trained without chunk masks (encoder_conf.use_dynamic_chunk false, "
                "static_chunk_size 0): it runs, as in WeNet, but expect worse accuracy than full context");
  } else if (c > 0 && !enc.use_dynamic_chunk && enc.static_chunk_size > 0 && c != enc.static_chunk_size) {
    w.push_back("--decoding_chunk_size " + std::to_string(c) + " on a model trained with static chunks of " +
                std::to_string(enc.static_chunk_size) + ": it runs, but the model never saw this context");
  }
  if (opt.encode.simulate_streaming && c < 0) {
    w.push_back("--simulate_streaming has no effect with --decoding_chunk_size -1 (full context)");
  }
  if (opt.encode.simulate_streaming && c > 0 && !enc.causal) {
    w.push_back(
        "--simulate_streaming on a model with encoder_conf.causal false: its convolution sees only "
        "each chunk, so results differ from the chunk-masked forward (WeNet #1690: train with causal true)");
  }
  if (opt.encode.simulate_streaming && c > 0 && opt.batch_size > 1) {
    w.push_back("--batch_size " + std::to_string(opt.batch_size) +
                " is ignored with --simulate_streaming (streaming decodes one utterance at a time)");
  }
  if (opt.search.reverse_weight > 0 && config.decoder.r_num_blocks == 0) {
    w.push_back("--reverse_weight " + std::to_string(opt.search.reverse_weight) +
                " but the model has no right-to-left decoder (decoder_conf.r_num_blocks 0): it is ignored");
  }
  return w;
}

}  // namespace

// ---- The test set ------------------------------------------------------------------------------------

const char* test_data_format_name(TestDataFormat format) {
  switch (format) {
    case TestDataFormat::kShardManifest: return "shard manifest";
    case TestDataFormat::kKaldiDataDir: return "Kaldi data dir";
    case TestDataFormat::kWenetDataList: return "WeNet data.list";
  }
  return "?";
}

StatusOr<TestDataFormat> detect_test_data_format(const std::string& path, std::string* why) {
  if (path.empty()) return invalid_argument_error("--test_data is empty");
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return not_found_error("--test_data " + path + " does not exist (" + std::strerror(errno) + ")");
  }
  if (S_ISDIR(st.st_mode)) {
    *why = path + " is a directory";
    return TestDataFormat::kKaldiDataDir;
  }
  std::ifstream in(path);
  if (!in) return io_error("cannot read --test_data " + path + " (" + std::strerror(errno) + ")");
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    line = trim(line);
    if (!line.empty()) break;
  }
  if (line.empty()) {
    return invalid_argument_error("the test set " + path + " holds no utterances (the file is empty)");
  }
  const std::string where = path + ":" + std::to_string(number);
  nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return invalid_argument_error(
        where +
        ": not a JSON object, so --test_data is neither a shard manifest (JSON lines "
        "with \"path\" and \"num_utts\", from make_shards) nor a WeNet data.list (JSON "
        "lines with \"key\", \"wav\", \"txt\"); a Kaldi data dir is given as its directory. "
        "WeNet tar shard lists are not read: convert them with make_shards");
  }
  if (j.contains("path") && j.contains("num_utts")) {
    *why = where + " has \"path\" and \"num_utts\"";
    return TestDataFormat::kShardManifest;
  }
  if (j.contains("key") && j.contains("wav")) {
    *why = where + " has \"key\" and \"wav\"";
    return TestDataFormat::kWenetDataList;
  }
  return invalid_argument_error(where +
                                ": a JSON object with neither \"path\"/\"num_utts\" (a shard manifest) nor "
                                "\"key\"/\"wav\" (a WeNet data.list)");
}

StatusOr<TestSet> read_test_set(const std::string& path) {
  TestSet set;
  set.path = path;
  StatusOr<TestDataFormat> format = detect_test_data_format(path, &set.detection);
  if (!format.ok()) return format.status();
  set.format = format.value();
  if (set.format == TestDataFormat::kShardManifest) {
    StatusOr<std::vector<ManifestEntry>> entries = read_manifest(path);
    if (!entries.ok()) return entries.status();
    for (const ManifestEntry& e : entries.value()) {
      const std::string shard_path = manifest_entry_path(path, e);
      StatusOr<std::unique_ptr<ShardReader>> reader = ShardReader::open(shard_path);
      if (!reader.ok()) return reader.status().with_context("test set " + path);
      const int64_t shard = static_cast<int64_t>(set.shard_paths.size());
      set.shard_paths.push_back(shard_path);
      for (int64_t i = 0; i < reader.value()->num_utts(); ++i) {
        TestUtterance u;
        u.key = reader.value()->key(i);
        u.shard = shard;
        u.shard_utt = i;
        set.utts.push_back(std::move(u));
      }
    }
  } else {
    StatusOr<std::vector<Utterance>> list =
        set.format == TestDataFormat::kKaldiDataDir ? read_kaldi_data_dir(path) : read_data_list(path);
    if (!list.ok()) return list.status().with_context("test set");
    for (Utterance& a : list.value()) {
      TestUtterance u;
      u.key = a.key;
      u.audio = std::move(a);
      set.utts.push_back(std::move(u));
    }
  }
  if (set.utts.empty()) {
    return invalid_argument_error("the test set " + path + " (" + test_data_format_name(set.format) +
                                  ") holds no utterances");
  }
  return set;
}

// ---- The model ---------------------------------------------------------------------------------------

StatusOr<std::unique_ptr<RecognitionModel>> load_recognition_model(const std::string& config_path,
                                                                   const std::string& checkpoint) {
  struct stat st;
  if (checkpoint.empty()) return invalid_argument_error("--checkpoint is required (a moe-asr weights .h5)");
  if (::stat(checkpoint.c_str(), &st) != 0) {
    return not_found_error("--checkpoint " + checkpoint + " does not exist (" + std::strerror(errno) + ")");
  }
  auto m = std::make_unique<RecognitionModel>();
  std::string yaml_text;
  if (!config_path.empty()) {
    std::ifstream in(config_path);
    if (!in)
      return not_found_error("cannot read --config " + config_path + " (" + std::strerror(errno) + ")");
    std::stringstream text;
    text << in.rdbuf();
    yaml_text = text.str();
    m->config_source = config_path;
  } else {
    StatusOr<std::string> attr = read_model_weights_config(checkpoint);
    if (!attr.ok()) return attr.status().with_context("--checkpoint " + checkpoint);
    if (attr.value().empty()) {
      return invalid_argument_error("--checkpoint " + checkpoint +
                                    " carries no config attribute; pass --config <exp dir>/train.yaml");
    }
    yaml_text = attr.value();
    m->config_source = checkpoint + " (config attribute)";
  }
  StatusOr<ModelConfig> config = model_config_from_wenet_yaml_text(yaml_text, m->config_source);
  if (!config.ok()) return config.status();
  m->config = config.value();
  RETURN_IF_ERROR(fbank_from_yaml(yaml_text, m->config_source, m->config.input_dim, &m->fbank));
  m->table = std::make_unique<ParameterTable>(build_u2pp_parameter_table(m->config, ExpertLayout{}));
  m->store = std::make_unique<ParameterStore<float>>(*m->table);
  Status loaded = load_model_weights(checkpoint, m->store.get());
  if (!loaded.ok()) {
    return Status(loaded.code(), loaded.message() + " [model config from " + m->config_source + "]");
  }
  const int64_t d = m->config.encoder.output_size;
  m->pe_table.resize(static_cast<size_t>(kPositionalEncodingMaxLen * d));
  sinusoid_position_table(m->pe_table.data(), kPositionalEncodingMaxLen, d);
  m->encoder_params = bind_encoder(m->store.get(), m->config, ExpertLayout{}, m->pe_table.data());
  m->encoder = std::make_unique<StreamingEncoder<float>>(m->config, m->store.get(), &m->dispatcher);
  m->search = std::make_unique<SearchModel<float>>(m->config, m->store.get(), &m->dispatcher);
  return m;
}

Status encode_batch(std::vector<std::vector<float>>* out, RecognitionModel* model,
                    const std::vector<const float*>& feats, const std::vector<int64_t>& frames,
                    const EncodeOptions& options, const RunContext& ctx) {
  CHECK(!(options.simulate_streaming && options.decoding_chunk_size > 0))
      << "encode_batch: simulate_streaming decodes one utterance at a time";
  CHECK_EQ(feats.size(), frames.size());
  RETURN_IF_ERROR(validate_encode_options(options));
  const size_t b_total = feats.size();
  out->assign(b_total, std::vector<float>());
  std::vector<size_t> idx;
  for (size_t b = 0; b < b_total; ++b) {
    if (frames[b] < kMinEncoderInput) continue;
    if (conv2d_subsampling4_output_size(frames[b]) > kPositionalEncodingMaxLen) {
      return out_of_range_error("an utterance of " + std::to_string(frames[b]) +
                                " frames is longer than the positional table's " +
                                std::to_string(kPositionalEncodingMaxLen) +
                                " encoder frames (200 s at 40 ms); split the audio into shorter segments");
    }
    idx.push_back(b);
  }
  if (idx.size() <= 1 && ctx.device == Device::cpu) {  // the GPU takes the batched forward below
    for (size_t b : idx)
      RETURN_IF_ERROR(model->encoder->encode(&(*out)[b], feats[b], frames[b], options, ctx));
    return Status();
  }
  if (idx.empty()) return Status();
  CHECK(ctx.activations != nullptr) << "encode_batch needs ctx.activations";
  const int64_t f = model->config.input_dim, d = model->config.encoder.output_size;
  const int64_t n = static_cast<int64_t>(idx.size());
  int64_t t_max = 0;
  for (size_t b : idx) t_max = std::max(t_max, frames[b]);
  std::vector<float> padded(static_cast<size_t>(n * t_max * f), 0.0f);
  std::vector<int32_t> lengths(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const size_t b = idx[static_cast<size_t>(i)];
    std::copy(feats[b], feats[b] + frames[b] * f, padded.begin() + i * t_max * f);
    lengths[static_cast<size_t>(i)] = static_cast<int32_t>(frames[b]);
  }
  reset_arenas(ctx);
  EncoderSaved<float> saved;
  encoder_forward(&saved, device_mirror(ctx, static_cast<const float*>(padded.data()), n * t_max * f),
                  lengths.data(), model->encoder_params, &model->dispatcher, options.decoding_chunk_size,
                  options.num_decoding_left_chunks, false, n, t_max, StepRng{}, ctx);
  const float* encoder_out = host_mirror(ctx, static_cast<const float*>(saved.out), n * saved.length * d);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t l = saved.lengths_host[i];
    const float* src = encoder_out + i * saved.length * d;
    (*out)[idx[static_cast<size_t>(i)]].assign(src, src + l * d);
  }
  reset_arenas(ctx);
  return Status();
}

// ---- Options -----------------------------------------------------------------------------------------

Status validate_recognize_options(const RecognizeOptions& o) {
  if (o.checkpoint.empty()) return invalid_argument_error("--checkpoint is required (a moe-asr weights .h5)");
  if (o.test_data.empty()) {
    return invalid_argument_error(
        "--test_data is required (a shard manifest, a Kaldi data dir or a WeNet data.list)");
  }
  if (o.dict.empty())
    return invalid_argument_error("--dict is required (the units.txt the model was trained with)");
  if (o.result_dir.empty()) return invalid_argument_error("--result_dir is required");
  if (o.modes.empty()) {
    return invalid_argument_error(
        "--modes needs at least one of ctc_greedy_search ctc_prefix_beam_search attention "
        "attention_rescoring");
  }
  for (size_t i = 0; i < o.modes.size(); ++i) {
    DecodeMode mode;
    RETURN_IF_ERROR(parse_decode_mode(o.modes[i], &mode));
    for (size_t j = 0; j < i; ++j) {
      if (o.modes[j] == o.modes[i]) return invalid_argument_error("--modes names '" + o.modes[i] + "' twice");
    }
  }
  RETURN_IF_ERROR(validate_encode_options(o.encode));
  RETURN_IF_ERROR(validate_search_options(o.search));
  if (o.batch_size < 1) {
    return invalid_argument_error("--batch_size must be >= 1, got " + std::to_string(o.batch_size));
  }
  if (o.device != "cpu" && o.device != "cuda") {
    return invalid_argument_error("--device must be cpu or cuda (got '" + o.device + "')");
  }
  if (o.device == "cuda" && o.encode.simulate_streaming && o.encode.decoding_chunk_size > 0) {
    return invalid_argument_error(
        "--simulate_streaming runs on the CPU only (chunk-by-chunk caches): drop --device cuda, or decode "
        "with the chunk mask (--decoding_chunk_size without --simulate_streaming)");
  }
  if (o.bf16_matmul && o.device != "cuda") {
    return invalid_argument_error("--precision bf16 needs --device cuda (the CPU backend computes in fp32)");
  }
  if (o.num_threads < 1) {
    return invalid_argument_error("--num_threads must be >= 1, got " + std::to_string(o.num_threads));
  }
  return Status();
}

LatencyStats summarize_latencies(std::vector<double> seconds) {
  LatencyStats s;
  s.count = static_cast<int64_t>(seconds.size());
  if (seconds.empty()) return s;
  std::sort(seconds.begin(), seconds.end());
  double sum = 0;
  for (double x : seconds) sum += x;
  auto rank = [&](double p) {
    const int64_t k = static_cast<int64_t>(std::ceil(p * static_cast<double>(s.count)));
    return seconds[static_cast<size_t>(std::clamp<int64_t>(k, 1, s.count) - 1)];
  };
  s.mean_ms = 1000.0 * sum / static_cast<double>(s.count);
  s.p50_ms = 1000.0 * rank(0.5);
  s.p90_ms = 1000.0 * rank(0.9);
  s.max_ms = 1000.0 * seconds.back();
  return s;
}

std::string hypothesis_line(const std::string& key, const std::string& text) {
  return key + " " + text;
}

std::vector<int64_t> utterances_of_rank(int64_t num_utts, int rank, int world) {
  std::vector<int64_t> mine;
  for (int64_t i = rank; i < num_utts; i += world) mine.push_back(i);
  return mine;
}

StatusOr<std::vector<std::string>> merge_rank_lines(const std::vector<std::vector<std::string>>& per_rank,
                                                    int64_t num_utts) {
  const int world = static_cast<int>(per_rank.size());
  std::vector<std::string> lines(static_cast<size_t>(num_utts));
  for (int r = 0; r < world; ++r) {
    const std::vector<int64_t> mine = utterances_of_rank(num_utts, r, world);
    if (mine.size() != per_rank[static_cast<size_t>(r)].size()) {
      return invalid_argument_error("rank " + std::to_string(r) + " returned " +
                                    std::to_string(per_rank[static_cast<size_t>(r)].size()) +
                                    " lines, expected " + std::to_string(mine.size()));
    }
    for (size_t k = 0; k < mine.size(); ++k)
      lines[static_cast<size_t>(mine[k])] = per_rank[static_cast<size_t>(r)][k];
  }
  return lines;
}

std::vector<double> streaming_finish_times(const std::vector<double>& arrival,
                                           const std::vector<double>& processing) {
  CHECK_EQ(arrival.size(), processing.size());
  std::vector<double> finish(arrival.size());
  double busy_until = -INFINITY;
  for (size_t i = 0; i < arrival.size(); ++i) {
    busy_until = std::max(arrival[i], busy_until) + processing[i];
    finish[i] = busy_until;
  }
  return finish;
}

double fbank_frame_end_seconds(const FbankConfig& fbank, int64_t frame) {
  return static_cast<double>(frame * fbank.window_shift() + fbank.window_size()) / fbank.sample_rate;
}

// ---- The GPU ------------------------------------------------------------------------------------------

// --device cuda: a CUDA context on the rank's local device, the weights in one device block (the
// search model and the encoder rebound to them, the positional table beside them), the activations
// in another, the host metadata in a host arena; ctx filled accordingly.
#if MOEASR_WITH_CUDA
struct RecognitionGpu {
  std::unique_ptr<CudaContext> cuda;
  std::unique_ptr<DeviceMemoryBlock> params_block, activations_block;
  std::unique_ptr<Arena> params, activations, host;
};

Status place_recognition_model_on_gpu(RecognitionGpu* gpu, RecognitionModel* model, RunContext* ctx) {
  std::string how;
  ASSIGN_OR_RETURN(const int device, rank_cuda_device(&how));
  gpu->cuda = std::make_unique<CudaContext>(device);
  gpu->cuda->fill(ctx);
  int64_t elems = 0;
  for (int r = 0; r < kNumParamRegions; ++r) {
    elems += static_cast<int64_t>(model->store->values[r].size() + model->store->grads[r].size());
  }
  const int64_t table_bytes =
      kPositionalEncodingMaxLen * model->config.encoder.output_size * static_cast<int64_t>(sizeof(float));
  const int64_t param_bytes = elems * static_cast<int64_t>(sizeof(float)) + table_bytes + (int64_t{16} << 20);
  gpu->params_block = std::make_unique<DeviceMemoryBlock>("the model's weights", param_bytes);
  gpu->params =
      std::make_unique<Arena>("device weights", gpu->params_block->data(), param_bytes, Device::cuda);
  model->store->place_on(gpu->params.get(), *ctx);
  // Rebind after placing: the search model and the batched encoder read the device copies.
  model->search = std::make_unique<SearchModel<float>>(model->config, model->store.get(), &model->dispatcher);
  const float* table = model->search->place_tables(gpu->params.get(), *ctx);
  model->encoder_params = bind_encoder(model->store.get(), model->config, ExpertLayout{}, table);
  const int64_t activation_bytes =
      std::min<int64_t>(cuda_free_bytes() - (int64_t{2} << 30), int64_t{16} << 30);
  if (activation_bytes <= 0)
    return failed_precondition_error("--device cuda: no device memory left for activations");
  gpu->activations_block = std::make_unique<DeviceMemoryBlock>("activations", activation_bytes);
  gpu->activations = std::make_unique<Arena>("device activations", gpu->activations_block->data(),
                                             activation_bytes, Device::cuda);
  gpu->host = std::make_unique<Arena>("host metadata", int64_t{1} << 20, Arena::Growth::kGrowable);
  ctx->activations = gpu->activations.get();
  ctx->host_metadata = gpu->host.get();
  LOG(INFO) << "recognize: " << how;
  return Status();
}
#else
struct RecognitionGpu {};

Status place_recognition_model_on_gpu(RecognitionGpu*, RecognitionModel*, RunContext*) {
  return rank_cuda_device(nullptr).status();  // this build has no CUDA backend: says so
}
#endif

// ---- The run -----------------------------------------------------------------------------------------

StatusOr<RecognizeSummary> recognize(const RecognizeOptions& options, Communicator* comm_in) {
  SingleProcessCommunicator single;
  Communicator* comm = comm_in != nullptr ? comm_in : &single;
  const int rank = comm->rank(), world = comm->size();
  RETURN_IF_ERROR(validate_recognize_options(options));  // the same flags on every rank
  std::vector<DecodeMode> modes;
  for (const std::string& name : options.modes) {
    DecodeMode m;
    RETURN_IF_ERROR(parse_decode_mode(name, &m));
    modes.push_back(m);
  }

  // Model, dictionary, test set, result directories: every rank loads them; any failure stops all.
  std::unique_ptr<RecognitionModel> model;
  std::unique_ptr<Tokenizer> tokenizer;
  TestSet set;
  Status setup = [&]() -> Status {
    StatusOr<std::unique_ptr<RecognitionModel>> m =
        load_recognition_model(options.config, options.checkpoint);
    if (!m.ok()) return m.status();
    model = std::move(m).value();
    StatusOr<std::unique_ptr<Tokenizer>> tok = options.bpe_model.empty()
                                                   ? Tokenizer::create_char(options.dict)
                                                   : Tokenizer::create_bpe(options.dict, options.bpe_model);
    if (!tok.ok()) return tok.status().with_context("--dict");
    tokenizer = std::move(tok).value();
    if (tokenizer->vocab_size() != model->config.vocab_size) {
      return invalid_argument_error(
          "--dict " + options.dict + " has " + std::to_string(tokenizer->vocab_size()) +
          " units but the model's output_dim is " + std::to_string(model->config.vocab_size) + " (" +
          model->config_source + "): use the units.txt the model was trained with");
    }
    if (std::find(modes.begin(), modes.end(), DecodeMode::kAttention) != modes.end() &&
        options.search.beam_size > model->config.vocab_size) {
      return invalid_argument_error("--beam_size " + std::to_string(options.search.beam_size) +
                                    " is larger than the model's vocabulary (" +
                                    std::to_string(model->config.vocab_size) +
                                    " units): the attention search takes the top beam_size tokens per step");
    }
    StatusOr<TestSet> s = read_test_set(options.test_data);
    if (!s.ok()) return s.status();
    set = std::move(s).value();
    if (rank == 0) {
      for (const std::string& mode : options.modes) {
        std::error_code ec;
        const std::filesystem::path dir = std::filesystem::path(options.result_dir) / mode;
        std::filesystem::create_directories(dir, ec);
        if (ec) return io_error("cannot create " + dir.string() + ": " + ec.message());
      }
    }
    return Status();
  }();
  RETURN_IF_ERROR(agree(comm, setup));

  RecognizeSummary summary;
  summary.format = set.format;
  summary.detection = set.detection;
  summary.world = world;
  summary.num_utts = static_cast<int64_t>(set.utts.size());
  summary.modes = options.modes;
  summary.features_included = set.format != TestDataFormat::kShardManifest;
  summary.warnings = option_warnings(options, model->config);
  if (rank == 0) {
    LOG(INFO) << "recognize: --test_data " << set.path << " is a " << test_data_format_name(set.format)
              << " (" << set.detection << "): " << set.utts.size() << " utterances"
              << (world > 1 ? ", split over " + std::to_string(world) + " ranks" : std::string());
    for (const std::string& w : summary.warnings) LOG(WARNING) << "recognize: " << w;
  }

  // Decode this rank's share.
  const bool streaming = options.encode.simulate_streaming && options.encode.decoding_chunk_size > 0;
  summary.latency_measured = streaming;
  const int64_t batch = streaming ? 1 : options.batch_size;
  Arena arena("recognize", 1 << 22, Arena::Growth::kGrowable);
  RunContext ctx;
  ctx.num_threads = options.num_threads;
  ctx.activations = &arena;
  ctx.rank = rank;
  ctx.world = world;
  ctx.bf16_matmul = options.bf16_matmul;
  RecognitionGpu gpu;
  if (options.device == "cuda")
    RETURN_IF_ERROR(agree(comm, place_recognition_model_on_gpu(&gpu, model.get(), &ctx)));
  const std::vector<int64_t> mine = utterances_of_rank(summary.num_utts, rank, world);
  std::vector<std::vector<std::string>> lines(modes.size());
  std::vector<int64_t> empty(modes.size(), 0);
  std::vector<double> first_token;
  std::vector<std::vector<double>> last_token(modes.size());
  double audio = 0, processing = 0, fbank_s = 0;
  const Clock::time_point loop_start = Clock::now();
  InputReader reader(set, *model);
  Status decoded = [&]() -> Status {
    std::vector<UttInput> inputs;
    for (size_t pos = 0; pos < mine.size(); pos += static_cast<size_t>(batch)) {
      const size_t end = std::min(mine.size(), pos + static_cast<size_t>(batch));
      inputs.assign(end - pos, UttInput());
      for (size_t k = pos; k < end; ++k) {
        const TestUtterance& u = set.utts[static_cast<size_t>(mine[k])];
        UttInput& in = inputs[k - pos];
        RETURN_IF_ERROR(reader.read(u, &in));
        audio += in.audio_seconds;
        fbank_s += in.fbank_seconds;
        processing += in.fbank_seconds;
      }
      std::vector<std::vector<DecodeResult>> results(end - pos);
      if (streaming) {
        const TestUtterance& u = set.utts[static_cast<size_t>(mine[pos])];
        StreamTimes times;
        Status s = decode_streaming(&results[0], &times, model.get(), modes, inputs[0], options, ctx);
        if (!s.ok()) return s.with_context("utterance '" + u.key + "'");
        processing += times.processing;
        if (times.first_token >= 0) first_token.push_back(times.first_token);
        for (size_t m = 0; m < modes.size(); ++m) last_token[m].push_back(times.last_token[m]);
      } else {
        std::vector<const float*> feats;
        std::vector<int64_t> frames;
        for (const UttInput& in : inputs) {
          feats.push_back(in.feats.data());
          frames.push_back(in.frames);
        }
        std::vector<std::vector<float>> enc;
        Clock::time_point t0 = Clock::now();
        Status s = encode_batch(&enc, model.get(), feats, frames, options.encode, ctx);
        if (!s.ok()) {
          std::string keys;
          for (size_t k = pos; k < end; ++k)
            keys += (keys.empty() ? "'" : ", '") + set.utts[static_cast<size_t>(mine[k])].key + "'";
          return s.with_context("utterance(s) " + keys);
        }
        processing += seconds_since(t0);
        for (size_t k = pos; k < end; ++k) {
          t0 = Clock::now();
          results[k - pos] = run_searches(*model, modes, enc[k - pos], options.search, ctx);
          processing += seconds_since(t0);
        }
      }
      for (size_t k = pos; k < end; ++k) {
        const TestUtterance& u = set.utts[static_cast<size_t>(mine[k])];
        for (size_t m = 0; m < modes.size(); ++m) {
          const std::string text = tokenizer->decode(results[k - pos][m].tokens);
          if (text.empty()) ++empty[m];
          lines[m].push_back(hypothesis_line(u.key, text));
        }
      }
    }
    return Status();
  }();
  const double wall = seconds_since(loop_start);
  RETURN_IF_ERROR(agree(comm, decoded));

  // Gather to rank 0: the lines of each mode and the numbers.
  nlohmann::json stats;
  stats["audio"] = audio;
  stats["processing"] = processing;
  stats["fbank"] = fbank_s;
  stats["wall"] = wall;
  stats["empty"] = empty;
  stats["first_token"] = first_token;
  stats["last_token"] = last_token;
  std::vector<std::string> all_stats;
  RETURN_IF_ERROR(all_gather_strings(comm, stats.dump(), &all_stats));
  std::vector<std::vector<double>> merged_last(modes.size());
  std::vector<double> merged_first;
  summary.empty_hypotheses.assign(modes.size(), 0);
  for (const std::string& text : all_stats) {
    nlohmann::json j = nlohmann::json::parse(text);
    summary.audio_seconds += j["audio"].get<double>();
    summary.processing_seconds += j["processing"].get<double>();
    summary.feature_seconds += j["fbank"].get<double>();
    summary.wall_seconds = std::max(summary.wall_seconds, j["wall"].get<double>());
    for (size_t m = 0; m < modes.size(); ++m) {
      summary.empty_hypotheses[m] += j["empty"][m].get<int64_t>();
      for (const auto& x : j["last_token"][m]) merged_last[m].push_back(x.get<double>());
    }
    for (const auto& x : j["first_token"]) merged_first.push_back(x.get<double>());
  }
  if (streaming) {
    summary.first_token = summarize_latencies(merged_first);
    for (size_t m = 0; m < modes.size(); ++m)
      summary.last_token.push_back(summarize_latencies(merged_last[m]));
  }
  Status written;
  for (size_t m = 0; m < modes.size() && written.ok(); ++m) {
    std::string joined;
    for (const std::string& l : lines[m]) joined += l + '\n';
    std::vector<std::string> per_rank_text;
    RETURN_IF_ERROR(all_gather_strings(comm, joined, &per_rank_text));
    const std::string path = mode_text_path(options.result_dir, options.modes[m]);
    summary.text_files.push_back(path);
    if (rank != 0) continue;
    std::vector<std::vector<std::string>> per_rank(static_cast<size_t>(world));
    for (int r = 0; r < world; ++r) {
      std::istringstream in(per_rank_text[static_cast<size_t>(r)]);
      std::string l;
      while (std::getline(in, l)) per_rank[static_cast<size_t>(r)].push_back(l);
    }
    StatusOr<std::vector<std::string>> merged = merge_rank_lines(per_rank, summary.num_utts);
    written = merged.ok() ? write_text_file(path, merged.value()) : merged.status();
  }
  RETURN_IF_ERROR(agree(comm, written));
  return summary;
}

std::string format_recognize_summary(const RecognizeSummary& s, const RecognizeOptions& o) {
  std::ostringstream out;
  char buf[512];
  std::snprintf(buf, sizeof(buf), "recognize: %lld utterances, %.2f s (%.3f h) of audio, %s (%s)%s\n",
                static_cast<long long>(s.num_utts), s.audio_seconds, s.audio_seconds / 3600.0,
                test_data_format_name(s.format), s.detection.c_str(),
                s.world > 1 ? (", " + std::to_string(s.world) + " ranks").c_str() : "");
  out << buf;
  for (size_t m = 0; m < s.modes.size() && m < s.text_files.size(); ++m) {
    std::snprintf(buf, sizeof(buf), "recognize: %-22s -> %s (%lld empty hypotheses)\n", s.modes[m].c_str(),
                  s.text_files[m].c_str(), static_cast<long long>(s.empty_hypotheses[m]));
    out << buf;
  }
  const char* encoder =
      o.encode.decoding_chunk_size < 0
          ? "full context"
          : (o.encode.simulate_streaming ? "chunk by chunk (simulate_streaming)" : "chunk mask");
  std::snprintf(buf, sizeof(buf),
                "RTF: %.4f RTFx: %.1f (processing %.2f s / audio %.2f s; %s; %s; %d thread(s) per process, "
                "batch %lld; decoding wall time %.2f s)\n",
                s.rtf(), s.rtfx(), s.processing_seconds, s.audio_seconds,
                s.features_included ? "includes fbank" : "features precomputed in the shards, not included",
                encoder, o.num_threads, static_cast<long long>(s.latency_measured ? 1 : o.batch_size),
                s.wall_seconds);
  out << buf;
  if (s.features_included) {
    std::snprintf(buf, sizeof(buf), "RTF without fbank: %.4f (fbank %.2f s)\n",
                  s.audio_seconds > 0 ? (s.processing_seconds - s.feature_seconds) / s.audio_seconds : 0.0,
                  s.feature_seconds);
    out << buf;
  }
  if (s.latency_measured) {
    const double chunk_ms = static_cast<double>(o.encode.decoding_chunk_size) * 40.0;
    std::snprintf(
        buf, sizeof(buf),
        "latency (chunk %lld = %.0f ms at 10 ms frames, virtual real-time clock): first-token mean %.1f ms "
        "p50 %.1f p90 %.1f max %.1f (%lld utterances with a token)\n",
        static_cast<long long>(o.encode.decoding_chunk_size), chunk_ms, s.first_token.mean_ms,
        s.first_token.p50_ms, s.first_token.p90_ms, s.first_token.max_ms,
        static_cast<long long>(s.first_token.count));
    out << buf;
    for (size_t m = 0; m < s.modes.size() && m < s.last_token.size(); ++m) {
      const LatencyStats& l = s.last_token[m];
      std::snprintf(buf, sizeof(buf), "latency last-token [%s]: mean %.1f ms p50 %.1f p90 %.1f max %.1f\n",
                    s.modes[m].c_str(), l.mean_ms, l.p50_ms, l.p90_ms, l.max_ms);
      out << buf;
    }
  } else if (o.encode.decoding_chunk_size > 0) {
    out << "latency: not measured (--decoding_chunk_size > 0 without --simulate_streaming runs the whole "
           "utterance under the chunk mask; add --simulate_streaming for first/last-token latency)\n";
  }
  return out.str();
}

}  // namespace moeasr
