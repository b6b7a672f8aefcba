// tests/trainer/recognizer_test.cc — `moe-asr recognize` (trainer/recognizer.h) end to end on a tiny
// random U2++ MoE model (d 16, 2 causal layers, 4 experts, vocabulary 9) saved with
// save_model_weights, a two-shard feature set written with ShardWriter (one utterance shorter than
// the encoder's 7-frame context, so its hypothesis is empty), and a Kaldi data dir / WeNet data.list
// of three 16-bit wavs:
//   - format detection and test-set reading, with their errors;
//   - all four modes, full context, chunk mask and simulate_streaming: every <result_dir>/<mode>/text
//     has every key in test-set order, "key " for the empty hypothesis, and the ctc_greedy_search
//     text equals ctc_greedy_search run directly on the StreamingEncoder's output;
//   - batched encoding (--batch_size 3) equals batch 1 (encoder outputs within 1e-4, same texts);
//   - audio inputs: Kaldi dir and data.list give the same texts, fbank (dither 0) included in RTF;
//   - latency: the virtual clock by hand, and the streaming run reports first/last-token latencies;
//   - bad input: empty / unreadable test sets, a checkpoint of another shape (names the tensor), a
//     chunk the model was not trained for (runs, warns), --decoding_chunk_size 0, a dict of another
//     size, unknown modes;
//   - the built binary (build/cli/moe-asr): same file as in-process, exit code 1 with the message on
//     bad input, and under `mpirun -np 2` the merged file equals the single-process one.
#include "trainer/recognizer.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "data_pipeline/audio.h"
#include "data_pipeline/fbank.h"
#include "data_pipeline/shard.h"
#include "data_pipeline/tokenizer.h"
#include "model/parameter_table.h"
#include "model/search.h"
#include "tests/common/gradcheck.h"
#include "trainer/model_weights.h"
#include "trainer/wenet_yaml.h"

namespace moeasr {
namespace {

const char* kModelYaml = R"(input_dim: 20
output_dim: 9
encoder: conformer
encoder_conf:
  output_size: 16
  attention_heads: 2
  linear_units: 24
  num_blocks: 2
  cnn_module_kernel: 5
  causal: true
  cnn_module_norm: layer_norm
  use_dynamic_chunk: true
  mlp_type: moe
  n_expert: 4
  n_expert_activated: 2
decoder: bitransformer
decoder_conf:
  attention_heads: 2
  linear_units: 24
  num_blocks: 1
  r_num_blocks: 1
model_conf:
  ctc_weight: 0.3
  reverse_weight: 0.3
dataset_conf:
  fbank_conf:
    num_mel_bins: 20
    frame_shift: 10
    frame_length: 25
    dither: 1.0
)";

const std::vector<std::string> kAllModes = {"ctc_greedy_search", "ctc_prefix_beam_search", "attention",
                                            "attention_rescoring"};

std::string replace(std::string text, const std::string& from, const std::string& to) {
  size_t p = text.find(from);
  EXPECT_NE(p, std::string::npos) << from;
  if (p != std::string::npos) text.replace(p, from.size(), to);
  return text;
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<std::string> read_lines(const std::string& path) {
  std::vector<std::string> lines;
  std::ifstream in(path);
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  return lines;
}

// Random weights (the default init with random CMVN and norms), a sharper CTC head and decoders (so
// that searches have clear winners and emit tokens), a likelier eos (so attention stops early).
Status save_random_model(const std::string& path, const std::string& yaml, uint64_t seed) {
  StatusOr<ModelConfig> config = model_config_from_wenet_yaml_text(yaml, "test yaml");
  if (!config.ok()) return config.status();
  ParameterTable table = build_u2pp_parameter_table(config.value(), ExpertLayout{});
  ParameterStore<float> store(table);
  initialize_parameters(&store, seed);
  uint64_t s = seed * 100;
  for (const ParamEntry& e : table.entries()) {
    float* v = store.value(e);
    if (e.name == "encoder.global_cmvn.mean" || e.name.find("norm") != std::string::npos) {
      std::vector<float> r = testing::random_floats(e.numel, ++s, -0.3f, 0.3f);
      for (int64_t i = 0; i < e.numel; ++i) v[i] += r[static_cast<size_t>(i)];
    } else if (e.name == "encoder.global_cmvn.istd") {
      std::vector<float> r = testing::random_floats(e.numel, ++s, 0.7f, 1.3f);
      for (int64_t i = 0; i < e.numel; ++i) v[i] = r[static_cast<size_t>(i)];
    } else if (e.name == "ctc.ctc_lo.weight" || e.name.find("output_layer.weight") != std::string::npos) {
      for (int64_t i = 0; i < e.numel; ++i) v[i] *= 6.0f;
    }
  }
  for (const char* name :
       {"decoder.left_decoder.output_layer.bias", "decoder.right_decoder.output_layer.bias"}) {
    if (table.find(name) != nullptr) store.value(name)[config.value().eos()] += 1.5f;
  }
  return save_model_weights(path, store, yaml);
}

std::string moe_asr_binary() {
  char exe[4096];
  const ssize_t len = ::readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (len <= 0) return "";
  std::string path(exe, static_cast<size_t>(len));
  for (int up = 0; up < 2; ++up) path = path.substr(0, path.rfind('/'));  // build/tests/x -> build
  return path + "/cli/moe-asr";
}

int run_command(const std::string& command, std::string* output) {
  output->clear();
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) return -1;
  std::array<char, 4096> buf;
  for (size_t n; (n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0;) output->append(buf.data(), n);
  const int status = ::pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// The shared test data, written once for the suite.
class Recognizer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string tmpl = ::testing::TempDir() + "recognizer_test_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = new std::string(tmpl);
    const std::string& d = *dir_;
    write_file(d + "/train.yaml", kModelYaml);
    ASSERT_TRUE(save_random_model(d + "/model.h5", kModelYaml, 7).ok());
    ASSERT_TRUE(write_units(d + "/units.txt",
                            {"<blank>", "<unk>", "a", "b", "c", "d", "e", kWordBoundary, "<sos/eos>"})
                    .ok());
    // Two shards: 3 + 2 utterances of random features; "s1_b" has 5 frames (< 7: no encoder frame).
    const std::vector<std::vector<std::pair<std::string, int64_t>>> shards = {
        {{"s0_a", 40}, {"s0_b", 131}, {"s0_c", 63}}, {{"s1_a", 90}, {"s1_b", 5}}};
    std::vector<ManifestEntry> entries;
    uint64_t seed = 40;
    for (size_t s = 0; s < shards.size(); ++s) {
      const std::string rel = "shard_" + std::to_string(s) + ".h5";
      StatusOr<std::unique_ptr<ShardWriter>> w =
          ShardWriter::create(d + "/" + rel, 20, fbank_config_to_json(FbankConfig()));
      ASSERT_TRUE(w.ok()) << w.status().to_string();
      ManifestEntry e;
      e.path = rel;
      for (const auto& [key, frames] : shards[s]) {
        std::vector<float> feats = testing::random_floats(frames * 20, ++seed, -2.0f, 2.0f);
        ASSERT_TRUE(w.value()
                        ->add(key, "a b", feats.data(), frames, 0.01f * static_cast<float>(frames) + 0.015f)
                        .ok());
        ++e.num_utts;
        e.num_frames += frames;
        keys_shards_->push_back(key);
      }
      ASSERT_TRUE(w.value()->finish().ok());
      e.bytes = static_cast<int64_t>(std::filesystem::file_size(d + "/" + rel));
      e.sha256 = sha256_file(d + "/" + rel).value();
      entries.push_back(e);
    }
    ASSERT_TRUE(write_manifest(d + "/manifest.jsonl", entries).ok());
    // Audio: three 16 kHz wavs, in a Kaldi data dir and a data.list.
    std::filesystem::create_directories(d + "/kaldi");
    std::string wav_scp, text, data_list;
    const std::vector<std::pair<std::string, int>> wavs = {
        {"w_one", 9000}, {"w_two", 16000}, {"w_three", 4800}};
    for (size_t i = 0; i < wavs.size(); ++i) {
      std::vector<float> x = testing::random_floats(wavs[i].second, 90 + i, -2000.0f, 2000.0f);
      for (size_t t = 0; t < x.size(); ++t) {
        x[t] += 6000.0f * static_cast<float>(
                              std::sin(0.05 * static_cast<double>(t) * (1.0 + 0.3 * static_cast<double>(i))));
      }
      const std::string path = d + "/" + wavs[i].first + ".wav";
      ASSERT_TRUE(write_wav_int16(path, x.data(), static_cast<int64_t>(x.size()), 16000).ok());
      wav_scp += wavs[i].first + " " + path + "\n";
      text += wavs[i].first + " a b c\n";
      data_list += "{\"key\": \"" + wavs[i].first + "\", \"wav\": \"" + path + "\", \"txt\": \"a b c\"}\n";
      keys_wavs_->push_back(wavs[i].first);
    }
    write_file(d + "/kaldi/wav.scp", wav_scp);
    write_file(d + "/kaldi/text", text);
    write_file(d + "/data.list", data_list);
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
    dir_ = nullptr;
  }

  static RecognizeOptions options(const std::string& test_data, const std::string& result) {
    RecognizeOptions o;
    o.checkpoint = *dir_ + "/model.h5";
    o.test_data = test_data;
    o.dict = *dir_ + "/units.txt";
    o.modes = kAllModes;
    o.search.beam_size = 4;
    o.search.ctc_weight = 0.3;
    o.search.reverse_weight = 0.5;
    o.result_dir = *dir_ + "/" + result;
    return o;
  }

  // Runs and checks the files: one line per key, in order, "key text".
  static RecognizeSummary run_and_check(const RecognizeOptions& o, const std::vector<std::string>& keys) {
    StatusOr<RecognizeSummary> s = recognize(o, nullptr);
    EXPECT_TRUE(s.ok()) << s.status().to_string();
    if (!s.ok()) return RecognizeSummary();
    EXPECT_EQ(s.value().text_files.size(), o.modes.size());
    for (size_t m = 0; m < o.modes.size(); ++m) {
      const std::string path = o.result_dir + "/" + o.modes[m] + "/text";
      EXPECT_EQ(s.value().text_files[m], path);
      std::vector<std::string> lines = read_lines(path);
      EXPECT_EQ(lines.size(), keys.size()) << path;
      for (size_t i = 0; i < std::min(lines.size(), keys.size()); ++i) {
        EXPECT_EQ(lines[i].substr(0, keys[i].size() + 1), keys[i] + " ") << path << " line " << i;
      }
    }
    return s.value();
  }

  // ctc_greedy_search on the StreamingEncoder's output for each utterance's features, detokenised.
  static std::vector<std::string> direct_greedy(const std::vector<std::vector<float>>& feats,
                                                const EncodeOptions& eo) {
    StatusOr<std::unique_ptr<RecognitionModel>> m = load_recognition_model("", *dir_ + "/model.h5");
    EXPECT_TRUE(m.ok()) << m.status().to_string();
    StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::create_char(*dir_ + "/units.txt");
    EXPECT_TRUE(tok.ok());
    Arena arena("direct", 1 << 20, Arena::Growth::kGrowable);
    RunContext ctx = testing::cpu_test_context();
    ctx.activations = &arena;
    std::vector<std::string> texts;
    const int64_t d = 16, v = 9;
    for (const std::vector<float>& f : feats) {
      std::vector<float> enc;
      EXPECT_TRUE(
          m.value()->encoder->encode(&enc, f.data(), static_cast<int64_t>(f.size()) / 20, eo, ctx).ok());
      const int64_t frames = static_cast<int64_t>(enc.size()) / d;
      std::vector<float> lp(static_cast<size_t>(frames * v));
      arena.reset();
      if (frames > 0) m.value()->search->ctc_log_probs(lp.data(), enc.data(), frames, ctx);
      texts.push_back(tok.value()->decode(ctc_greedy_search(lp.data(), frames, v, 0).tokens));
    }
    return texts;
  }

  static std::vector<std::vector<float>> shard_feats() {
    std::vector<std::vector<float>> out;
    for (int s = 0; s < 2; ++s) {
      std::unique_ptr<ShardReader> r =
          ShardReader::open(*dir_ + "/shard_" + std::to_string(s) + ".h5").value();
      for (int64_t i = 0; i < r->num_utts(); ++i) {
        std::vector<float> f(static_cast<size_t>(r->entry(i).num_frames * 20));
        EXPECT_TRUE(r->read_feats(i, f.data()).ok());
        out.push_back(std::move(f));
      }
    }
    return out;
  }

  static void expect_greedy_matches(const RecognizeOptions& o, const std::vector<std::string>& keys,
                                    const std::vector<std::string>& texts) {
    std::vector<std::string> lines = read_lines(o.result_dir + "/ctc_greedy_search/text");
    ASSERT_EQ(lines.size(), texts.size());
    for (size_t i = 0; i < lines.size(); ++i) EXPECT_EQ(lines[i], keys[i] + " " + texts[i]) << i;
  }

  static std::string* dir_;
  static std::vector<std::string>* keys_shards_;
  static std::vector<std::string>* keys_wavs_;
};

std::string* Recognizer::dir_ = nullptr;
std::vector<std::string>* Recognizer::keys_shards_ = new std::vector<std::string>();
std::vector<std::string>* Recognizer::keys_wavs_ = new std::vector<std::string>();

TEST_F(Recognizer, DetectsAndReadsTheThreeFormats) {
  std::string why;
  StatusOr<TestDataFormat> f = detect_test_data_format(*dir_ + "/manifest.jsonl", &why);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f.value(), TestDataFormat::kShardManifest);
  EXPECT_NE(why.find("\"path\" and \"num_utts\""), std::string::npos) << why;
  f = detect_test_data_format(*dir_ + "/kaldi", &why);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f.value(), TestDataFormat::kKaldiDataDir);
  f = detect_test_data_format(*dir_ + "/data.list", &why);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f.value(), TestDataFormat::kWenetDataList);
  EXPECT_STREQ(test_data_format_name(TestDataFormat::kWenetDataList), "WeNet data.list");

  StatusOr<TestSet> set = read_test_set(*dir_ + "/manifest.jsonl");
  ASSERT_TRUE(set.ok()) << set.status().to_string();
  ASSERT_EQ(set.value().utts.size(), keys_shards_->size());
  for (size_t i = 0; i < keys_shards_->size(); ++i) EXPECT_EQ(set.value().utts[i].key, (*keys_shards_)[i]);
  EXPECT_EQ(set.value().utts[3].shard, 1);
  EXPECT_EQ(set.value().utts[3].shard_utt, 0);
  set = read_test_set(*dir_ + "/kaldi");
  ASSERT_TRUE(set.ok());
  ASSERT_EQ(set.value().utts.size(), 3u);
  EXPECT_EQ(set.value().utts[2].key, "w_three");
}

TEST_F(Recognizer, AllModesFullContextFromShards) {
  RecognizeOptions o = options(*dir_ + "/manifest.jsonl", "full");
  RecognizeSummary s = run_and_check(o, *keys_shards_);
  EXPECT_EQ(s.format, TestDataFormat::kShardManifest);
  EXPECT_EQ(s.num_utts, 5);
  EXPECT_FALSE(s.features_included);
  EXPECT_EQ(s.feature_seconds, 0.0);
  EXPECT_NEAR(s.audio_seconds, 0.01 * (40 + 131 + 63 + 90 + 5) + 5 * 0.015, 1e-4);
  EXPECT_GT(s.processing_seconds, 0.0);
  EXPECT_NEAR(s.rtf() * s.rtfx(), 1.0, 1e-9);
  EXPECT_FALSE(s.latency_measured);
  EXPECT_TRUE(s.warnings.empty());
  // The 5-frame utterance has no encoder frame: "key " with empty text in every mode.
  for (size_t m = 0; m < kAllModes.size(); ++m) {
    EXPECT_EQ(read_lines(o.result_dir + "/" + kAllModes[m] + "/text")[4], "s1_b ") << kAllModes[m];
    EXPECT_GE(s.empty_hypotheses[m], 1);
  }
  EncodeOptions eo;
  expect_greedy_matches(o, *keys_shards_, direct_greedy(shard_feats(), eo));
  // The random model emits tokens (the check above is not trivially "all empty").
  EXPECT_LT(s.empty_hypotheses[0], 5);
  const std::string summary = format_recognize_summary(s, o);
  EXPECT_NE(summary.find("RTF: "), std::string::npos) << summary;
  EXPECT_NE(summary.find("RTFx: "), std::string::npos) << summary;
  EXPECT_NE(summary.find("features precomputed in the shards, not included"), std::string::npos) << summary;
}

TEST_F(Recognizer, ChunkMaskAndSimulateStreaming) {
  for (bool streaming : {false, true}) {
    RecognizeOptions o = options(*dir_ + "/manifest.jsonl", streaming ? "chunk4_stream" : "chunk4_mask");
    o.encode.decoding_chunk_size = 4;
    o.encode.num_decoding_left_chunks = streaming ? 2 : -1;
    o.encode.simulate_streaming = streaming;
    RecognizeSummary s = run_and_check(o, *keys_shards_);
    expect_greedy_matches(o, *keys_shards_, direct_greedy(shard_feats(), o.encode));
    EXPECT_EQ(s.latency_measured, streaming);
    EXPECT_TRUE(s.warnings.empty()) << s.warnings[0];
    if (streaming) {
      // Every utterance with a token has a first-token latency; every utterance a last-token one.
      EXPECT_EQ(s.first_token.count, 5 - s.empty_hypotheses[0]);
      ASSERT_EQ(s.last_token.size(), kAllModes.size());
      for (const LatencyStats& l : s.last_token) {
        EXPECT_EQ(l.count, 5);
        EXPECT_GE(l.mean_ms, 0.0);
        EXPECT_LE(l.p50_ms, l.p90_ms);
        EXPECT_LE(l.p90_ms, l.max_ms);
      }
      // A token waits at most for the rest of its window (4 encoder frames = 16 fbank frames = 160 ms)
      // plus compute, and at least for nothing.
      EXPECT_GE(s.first_token.p50_ms, 0.0);
      EXPECT_LT(s.first_token.p50_ms, 160.0 + 1000.0);
      const std::string summary = format_recognize_summary(s, o);
      EXPECT_NE(summary.find("first-token mean"), std::string::npos) << summary;
      EXPECT_NE(summary.find("latency last-token [attention_rescoring]"), std::string::npos) << summary;
    }
  }
}

TEST_F(Recognizer, BatchedEncoderEqualsOneAtATime) {
  StatusOr<std::unique_ptr<RecognitionModel>> m =
      load_recognition_model(*dir_ + "/train.yaml", *dir_ + "/model.h5");
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  std::vector<std::vector<float>> feats = shard_feats();
  std::vector<const float*> ptrs;
  std::vector<int64_t> frames;
  for (const auto& f : feats) {
    ptrs.push_back(f.data());
    frames.push_back(static_cast<int64_t>(f.size()) / 20);
  }
  Arena arena("batch", 1 << 20, Arena::Growth::kGrowable);
  RunContext ctx = testing::cpu_test_context();
  ctx.activations = &arena;
  for (int64_t chunk : {int64_t{-1}, int64_t{4}}) {
    EncodeOptions eo;
    eo.decoding_chunk_size = chunk;
    std::vector<std::vector<float>> batched;
    ASSERT_TRUE(encode_batch(&batched, m.value().get(), ptrs, frames, eo, ctx).ok());
    ASSERT_EQ(batched.size(), feats.size());
    for (size_t b = 0; b < feats.size(); ++b) {
      std::vector<float> one;
      ASSERT_TRUE(m.value()->encoder->encode(&one, ptrs[b], frames[b], eo, ctx).ok());
      ASSERT_EQ(one.size(), batched[b].size()) << b;
      double diff = 0;
      for (size_t i = 0; i < one.size(); ++i)
        diff = std::max(diff, std::fabs(double(one[i]) - batched[b][i]));
      EXPECT_LT(diff, 1e-4) << "chunk " << chunk << " utterance " << b;
    }
    EXPECT_TRUE(batched[4].empty());  // 5 frames
  }
  RecognizeOptions o1 = options(*dir_ + "/manifest.jsonl", "batch1");
  RecognizeOptions o3 = options(*dir_ + "/manifest.jsonl", "batch3");
  o3.batch_size = 3;
  run_and_check(o1, *keys_shards_);
  run_and_check(o3, *keys_shards_);
  for (const std::string& mode : kAllModes) {
    EXPECT_EQ(read_file(o1.result_dir + "/" + mode + "/text"),
              read_file(o3.result_dir + "/" + mode + "/text"))
        << mode;
  }
}

TEST_F(Recognizer, AudioFromKaldiDirAndDataList) {
  RecognizeOptions ok = options(*dir_ + "/kaldi", "kaldi");
  RecognizeOptions ol = options(*dir_ + "/data.list", "list");
  ok.modes = {"ctc_greedy_search", "attention_rescoring"};
  ol.modes = ok.modes;
  RecognizeSummary sk = run_and_check(ok, *keys_wavs_);
  RecognizeSummary sl = run_and_check(ol, *keys_wavs_);
  EXPECT_EQ(sk.format, TestDataFormat::kKaldiDataDir);
  EXPECT_EQ(sl.format, TestDataFormat::kWenetDataList);
  EXPECT_TRUE(sk.features_included);
  EXPECT_GT(sk.feature_seconds, 0.0);
  EXPECT_LE(sk.feature_seconds, sk.processing_seconds);
  EXPECT_NEAR(sk.audio_seconds, (9000 + 16000 + 4800) / 16000.0, 1e-9);
  for (const std::string& mode : ok.modes) {
    EXPECT_EQ(read_file(ok.result_dir + "/" + mode + "/text"),
              read_file(ol.result_dir + "/" + mode + "/text"));
  }
  EXPECT_NE(format_recognize_summary(sk, ok).find("includes fbank"), std::string::npos);
  // The greedy text equals the direct search on fbank features with dither 0.
  FbankConfig fc;
  fc.num_mel_bins = 20;
  std::unique_ptr<FbankComputer> computer = FbankComputer::create(fc).value();
  std::vector<std::vector<float>> feats;
  for (const std::string& key : *keys_wavs_) {
    Audio a = read_audio(*dir_ + "/" + key + ".wav").value();
    feats.push_back(computer->compute(a.samples.data(), static_cast<int64_t>(a.samples.size()), nullptr));
  }
  expect_greedy_matches(ok, *keys_wavs_, direct_greedy(feats, EncodeOptions()));
}

TEST_F(Recognizer, LatencyClockAndHelpers) {
  // Packets arriving at 0.3, 0.6, 0.9, 1.0 s taking 0.1, 0.5, 0.1, 0.2 s.
  std::vector<double> f = streaming_finish_times({0.3, 0.6, 0.9, 1.0}, {0.1, 0.5, 0.1, 0.2});
  ASSERT_EQ(f.size(), 4u);
  EXPECT_NEAR(f[0], 0.4, 1e-12);
  EXPECT_NEAR(f[1], 1.1, 1e-12);
  EXPECT_NEAR(f[2], 1.2, 1e-12);
  EXPECT_NEAR(f[3], 1.4, 1e-12);
  LatencyStats l = summarize_latencies({0.4, 0.1, 0.3, 0.2});
  EXPECT_EQ(l.count, 4);
  EXPECT_NEAR(l.mean_ms, 250.0, 1e-9);
  EXPECT_NEAR(l.p50_ms, 200.0, 1e-9);
  EXPECT_NEAR(l.p90_ms, 400.0, 1e-9);
  EXPECT_NEAR(l.max_ms, 400.0, 1e-9);
  EXPECT_EQ(summarize_latencies({}).count, 0);
  FbankConfig fc;
  EXPECT_NEAR(fbank_frame_end_seconds(fc, 0), 0.025, 1e-12);
  EXPECT_NEAR(fbank_frame_end_seconds(fc, 99), 1.015, 1e-12);
  EXPECT_EQ(hypothesis_line("k", ""), "k ");
  EXPECT_EQ(hypothesis_line("k", "a b"), "k a b");
  EXPECT_EQ(utterances_of_rank(7, 1, 3), (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(utterances_of_rank(2, 2, 3), (std::vector<int64_t>{}));
  StatusOr<std::vector<std::string>> merged =
      merge_rank_lines({{"u0", "u3", "u6"}, {"u1", "u4"}, {"u2", "u5"}}, 7);
  ASSERT_TRUE(merged.ok());
  EXPECT_EQ(merged.value(), (std::vector<std::string>{"u0", "u1", "u2", "u3", "u4", "u5", "u6"}));
  EXPECT_FALSE(merge_rank_lines({{"u0"}, {"u1"}}, 3).ok());
}

// The error of recognize() with `o`, or "" when it succeeds.
std::string error_of(const RecognizeOptions& o) {
  StatusOr<RecognizeSummary> s = recognize(o, nullptr);
  return s.ok() ? std::string() : s.status().message();
}

// --device cuda decodes what the CPU decodes: every mode's hypotheses, full context and the chunk
// mask, fp32 (the GPU's sums run in another order, so only a near-tie between two hypotheses could
// split them; this tiny model's test set has none on the CPU side's scores). Skipped where this
// build or machine cannot decode on a GPU: there the test checks that recognize() refuses with that
// reason (CPU tests may not skip).
TEST_F(Recognizer, CudaDecodesWhatTheCpuDecodes) {
  for (int64_t chunk : {int64_t{-1}, int64_t{4}}) {
    RecognizeOptions gpu = options(*dir_ + "/manifest.jsonl", "cuda_" + std::to_string(chunk));
    gpu.device = "cuda";
    gpu.encode.decoding_chunk_size = chunk;
    gpu.batch_size = 2;
    StatusOr<RecognizeSummary> on_gpu = recognize(gpu, nullptr);
    if (!on_gpu.ok()) {
      const std::string why = on_gpu.status().message();
      ASSERT_TRUE(why.find("--device cuda: this build has no CUDA backend") != std::string::npos ||
                  why.find("--device cuda: no usable CUDA device") != std::string::npos)
          << why;
      std::printf("[ cuda ] not compared: %s\n", why.c_str());
      return;
    }
    RecognizeOptions cpu = gpu;
    cpu.device = "cpu";
    cpu.result_dir = *dir_ + "/cpu_" + std::to_string(chunk);
    run_and_check(cpu, *keys_shards_);
    for (const std::string& mode : kAllModes) {
      EXPECT_EQ(read_lines(gpu.result_dir + "/" + mode + "/text"),
                read_lines(cpu.result_dir + "/" + mode + "/text"))
          << mode << ", chunk " << chunk;
    }
  }
}

#define EXPECT_ERROR_HAS(options, text)                                   \
  do {                                                                    \
    const std::string e = error_of(options);                              \
    EXPECT_NE(e.find(text), std::string::npos) << "error: '" << e << "'"; \
  } while (0)

TEST_F(Recognizer, BadInput) {
  const std::string& d = *dir_;
  // Empty test sets.
  write_file(d + "/empty.list", "\n\n");
  EXPECT_ERROR_HAS(options(d + "/empty.list", "bad"), "holds no utterances");
  write_file(d + "/empty_manifest.jsonl", "");
  EXPECT_ERROR_HAS(options(d + "/empty_manifest.jsonl", "bad"), "holds no utterances");
  std::filesystem::create_directories(d + "/empty_kaldi");
  write_file(d + "/empty_kaldi/wav.scp", "");
  write_file(d + "/empty_kaldi/text", "");
  EXPECT_ERROR_HAS(options(d + "/empty_kaldi", "bad"), "holds no utterances");
  // Unreadable test sets.
  EXPECT_ERROR_HAS(options(d + "/nope.list", "bad"), "does not exist");
  write_file(d + "/junk.txt", "shard_000.tar\n");
  EXPECT_ERROR_HAS(options(d + "/junk.txt", "bad"), "not a JSON object");
  std::filesystem::create_directories(d + "/not_kaldi");
  EXPECT_ERROR_HAS(options(d + "/not_kaldi", "bad"), "wav.scp is missing");
  write_file(d + "/missing_shard.jsonl",
             "{\"path\": \"gone.h5\", \"num_utts\": 2, \"num_frames\": 10, \"bytes\": 1, \"sha256\": \"" +
                 std::string(64, '0') + "\"}\n");
  EXPECT_ERROR_HAS(options(d + "/missing_shard.jsonl", "bad"), "gone.h5");
  write_file(d + "/bad_wav.list", "{\"key\": \"x\", \"wav\": \"" + d + "/units.txt\", \"txt\": \"a\"}\n");
  EXPECT_ERROR_HAS(options(d + "/bad_wav.list", "bad"), "utterance 'x'");
  // --device / --precision: unknown values and CPU-only combinations are refused naming the flags;
  // cuda is refused with the reason where this machine cannot decode on a GPU.
  RecognizeOptions dev = options(d + "/manifest.jsonl", "bad");
  dev.device = "tpu";
  EXPECT_ERROR_HAS(dev, "--device must be cpu or cuda (got 'tpu')");
  dev.device = "cpu";
  dev.bf16_matmul = true;
  EXPECT_ERROR_HAS(dev, "--precision bf16 needs --device cuda");
  dev = options(d + "/manifest.jsonl", "bad");
  dev.device = "cuda";
  dev.encode.decoding_chunk_size = 4;
  dev.encode.simulate_streaming = true;
  EXPECT_ERROR_HAS(dev, "--simulate_streaming runs on the CPU only");
  dev.encode.simulate_streaming = false;
  const std::string cuda_error = error_of(dev);
  if (!cuda_error.empty()) {
    EXPECT_TRUE(cuda_error.find("--device cuda: this build has no CUDA backend") != std::string::npos ||
                cuda_error.find("--device cuda: no usable CUDA device") != std::string::npos)
        << cuda_error;
  }
  // A checkpoint from another model shape: the message names the tensor and both shapes.
  const std::string other_yaml = replace(kModelYaml, "output_size: 16", "output_size: 24");
  ASSERT_TRUE(save_random_model(d + "/other.h5", other_yaml, 3).ok());
  RecognizeOptions o = options(d + "/manifest.jsonl", "bad");
  o.config = d + "/train.yaml";
  o.checkpoint = d + "/other.h5";
  EXPECT_ERROR_HAS(o, "has shape [");
  EXPECT_ERROR_HAS(o, "a checkpoint from another model shape");
  o = options(d + "/manifest.jsonl", "bad");
  o.checkpoint = d + "/nope.h5";
  EXPECT_ERROR_HAS(o, "--checkpoint " + d + "/nope.h5 does not exist");
  // A dictionary of another size.
  ASSERT_TRUE(write_units(d + "/units5.txt", {"<blank>", "<unk>", "a", "b", "<sos/eos>"}).ok());
  o = options(d + "/manifest.jsonl", "bad");
  o.dict = d + "/units5.txt";
  EXPECT_ERROR_HAS(o, "has 5 units but the model's output_dim is 9");
  // --decoding_chunk_size 0, unknown or repeated modes, bad numbers.
  o = options(d + "/manifest.jsonl", "bad");
  o.encode.decoding_chunk_size = 0;
  EXPECT_ERROR_HAS(o, "--decoding_chunk_size");
  EXPECT_FALSE(validate_recognize_options(o).ok());
  o = options(d + "/manifest.jsonl", "bad");
  o.modes = {"ctc_greedy_search", "beam_search"};
  EXPECT_ERROR_HAS(o, "--modes");
  o.modes = {"attention", "attention"};
  EXPECT_ERROR_HAS(o, "twice");
  o.modes = {};
  EXPECT_ERROR_HAS(o, "--modes needs at least one");
  o = options(d + "/manifest.jsonl", "bad");
  o.batch_size = 0;
  EXPECT_ERROR_HAS(o, "--batch_size");
  o = options(d + "/manifest.jsonl", "bad");
  o.search.beam_size = 0;
  EXPECT_FALSE(error_of(o).empty());
  o = options(d + "/manifest.jsonl", "bad");
  o.search.beam_size = 10;
  EXPECT_ERROR_HAS(o, "--beam_size 10 is larger than the model's vocabulary (9 units)");
  o = options(d + "/manifest.jsonl", "bad");
  o.dict = "";
  EXPECT_ERROR_HAS(o, "--dict is required");
  // A chunk size the model was not trained for: it runs, with a warning.
  write_file(d + "/no_chunk.yaml",
             replace(kModelYaml, "use_dynamic_chunk: true", "use_dynamic_chunk: false"));
  o = options(d + "/manifest.jsonl", "untrained_chunk");
  o.config = d + "/no_chunk.yaml";
  o.modes = {"ctc_greedy_search"};
  o.encode.decoding_chunk_size = 8;
  o.encode.simulate_streaming = true;
  RecognizeSummary s = run_and_check(o, *keys_shards_);
  ASSERT_EQ(s.warnings.size(), 1u);
  EXPECT_NE(s.warnings[0].find("trained without chunk masks"), std::string::npos) << s.warnings[0];
}

TEST_F(Recognizer, CommandLine) {
  const std::string bin = moe_asr_binary();
  struct stat st;
  ASSERT_EQ(::stat(bin.c_str(), &st), 0) << "build the moe-asr target first: " << bin << " not found";
  const std::string& d = *dir_;
  RecognizeOptions o = options(d + "/manifest.jsonl", "api");
  run_and_check(o, *keys_shards_);
  const std::string common = " recognize --checkpoint " + d + "/model.h5 --test_data " + d +
                             "/manifest.jsonl --dict " + d +
                             "/units.txt --beam_size 4 --ctc_weight 0.3 --reverse_weight 0.5 --modes " +
                             "ctc_greedy_search ctc_prefix_beam_search attention attention_rescoring";
  std::string out;
  ASSERT_EQ(run_command(bin + common + " --result_dir " + d + "/cli 2>&1", &out), 0) << out;
  EXPECT_NE(out.find("RTF: "), std::string::npos) << out;
  EXPECT_NE(out.find("shard manifest"), std::string::npos) << out;
  for (const std::string& mode : kAllModes) {
    EXPECT_EQ(read_file(d + "/cli/" + mode + "/text"), read_file(d + "/api/" + mode + "/text")) << mode;
  }
  // Streaming prints the latencies.
  ASSERT_EQ(run_command(bin + common + " --result_dir " + d + "/cli_stream --decoding_chunk_size 4 " +
                            "--simulate_streaming 2>&1",
                        &out),
            0)
      << out;
  EXPECT_NE(out.find("first-token mean"), std::string::npos) << out;
  EXPECT_NE(out.find("latency last-token [ctc_greedy_search]"), std::string::npos) << out;
  if (std::getenv("RECOGNIZER_TEST_SHOW")) std::cout << out << read_file(d + "/cli_stream/attention/text");
  // Bad input: exit code 1 and the message.
  EXPECT_EQ(run_command(bin + common + " --result_dir " + d + "/cli0 --decoding_chunk_size 0 2>&1", &out), 1);
  EXPECT_NE(out.find("--decoding_chunk_size"), std::string::npos) << out;
  write_file(d + "/cli_empty.list", "");
  EXPECT_EQ(run_command(bin + " recognize --checkpoint " + d + "/model.h5 --test_data " + d +
                            "/cli_empty.list --dict " + d +
                            "/units.txt --modes attention --beam_size 4 --result_dir " + d + "/cli1 2>&1",
                        &out),
            1);
  EXPECT_NE(out.find("holds no utterances"), std::string::npos) << out;
  // Under mpirun: two ranks split the set and rank 0 merges in the original order.
  const std::string mpi_env =
      "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
      "OMPI_MCA_btl_vader_single_copy_mechanism=none ";
  ASSERT_EQ(run_command(mpi_env + "mpirun --oversubscribe --bind-to none -np 2 " + bin + common +
                            " --result_dir " + d + "/cli_mpi 2>&1",
                        &out),
            0)
      << out;
  EXPECT_NE(out.find("2 ranks"), std::string::npos) << out;
  for (const std::string& mode : kAllModes) {
    EXPECT_EQ(read_file(d + "/cli_mpi/" + mode + "/text"), read_file(d + "/api/" + mode + "/text")) << mode;
  }
  // A bad utterance on rank 1 only: every rank stops with rank 1's message (no hang), exit code 1.
  write_file(d + "/one_bad.list", "{\"key\": \"w_one\", \"wav\": \"" + d + "/w_one.wav\", \"txt\": \"a\"}\n" +
                                      "{\"key\": \"broken\", \"wav\": \"" + d +
                                      "/units.txt\", \"txt\": \"a\"}\n");
  EXPECT_EQ(run_command(
                mpi_env + "mpirun --oversubscribe --bind-to none -np 2 " + bin + " recognize --checkpoint " +
                    d + "/model.h5 --test_data " + d + "/one_bad.list --dict " + d +
                    "/units.txt --modes attention --beam_size 3 --result_dir " + d + "/cli_mpi_bad 2>&1",
                &out),
            1)
      << out;
  EXPECT_NE(out.find("rank 1: utterance 'broken'"), std::string::npos) << out;
}

}  // namespace
}  // namespace moeasr
