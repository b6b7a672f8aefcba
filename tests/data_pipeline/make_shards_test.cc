// tests/data_pipeline/make_shards_test.cc — utterance lists (data_pipeline/data_list.h: Kaldi data dir
// and WeNet data.list, with their errors) and `moe-asr make_shards` / `moe-asr compute_cmvn` end to end
// on a tiny generated corpus (sine-wave wavs written with libsndfile), run as the built binary
// (build/cli/moe-asr, or $MOEASR_CLI): manifest and shards against a direct fbank computation, bad
// utterances, resume, --shard_range, --hours_per_shard + --sort_by_length, CMVN against direct sums.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "data_pipeline/audio.h"
#include "data_pipeline/cmvn.h"
#include "data_pipeline/data_list.h"
#include "data_pipeline/fbank.h"
#include "data_pipeline/shard.h"

namespace moeasr {
namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

class DirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "make_shards_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void write(const std::string& name, const std::string& text) { std::ofstream(dir_ + "/" + name) << text; }
  std::string dir_;
};

// ------------------------------------------------------------------------------------------------
// Utterance lists.

using DataListTest = DirTest;

TEST_F(DataListTest, KaldiDirWithoutSegments) {
  write("wav.scp", "b /x/b.wav\na /x/a dir/a.wav\r\n\n");
  write("text", "a hello  world\nb\tone\n");
  auto utts = read_kaldi_data_dir(dir_);
  ASSERT_TRUE(utts.ok()) << utts.status().to_string();
  ASSERT_EQ(utts.value().size(), 2u);
  EXPECT_EQ(utts.value()[0].key, "b");  // wav.scp order
  EXPECT_EQ(utts.value()[0].wav, "/x/b.wav");
  EXPECT_EQ(utts.value()[0].text, "one");
  EXPECT_EQ(utts.value()[1].wav, "/x/a dir/a.wav");
  EXPECT_EQ(utts.value()[1].text, "hello  world");
  EXPECT_EQ(utts.value()[1].end, -1);
  EXPECT_EQ(utts.value()[1].origin, dir_ + "/wav.scp:2");
}

TEST_F(DataListTest, KaldiDirWithSegments) {
  write("wav.scp", "rec1 /x/r1.flac\nrec2 /x/r2.wav\n");
  write("segments", "s2 rec2 0.5 1.75\ns1 rec1 0 -1\ns3 rec1 3 4.5\n");
  write("text", "s1 A\ns3 C\ns2 B\n");
  auto utts = read_kaldi_data_dir(dir_);
  ASSERT_TRUE(utts.ok()) << utts.status().to_string();
  ASSERT_EQ(utts.value().size(), 3u);
  EXPECT_EQ(utts.value()[0].key, "s2");
  EXPECT_EQ(utts.value()[0].wav, "/x/r2.wav");
  EXPECT_EQ(utts.value()[0].start, 0.5);
  EXPECT_EQ(utts.value()[0].end, 1.75);
  EXPECT_EQ(utts.value()[0].text, "B");
  EXPECT_EQ(utts.value()[1].end, -1);
  EXPECT_EQ(utts.value()[2].text, "C");
}

TEST_F(DataListTest, KaldiDirErrorsNameFileAndLine) {
  struct Case {
    std::string wav_scp, text, segments, needle;
  };
  const Case cases[] = {
      {"a /a.wav\nb /b.wav\n", "a x\n", "", "'b' has no line in " + dir_ + "/text"},
      {"a /a.wav\n", "a x\nz y\n", "", dir_ + "/text:2: utterance 'z' has no audio"},
      {"a /a.wav\nb /b.wav\na /c.wav\n", "a x\nb y\n", "",
       dir_ + "/wav.scp:3: duplicate key 'a' (first at line 1)"},
      {"a /a.wav\n", "a x\na y\n", "", dir_ + "/text:2: duplicate key 'a'"},
      {"a sox /a.wav -t wav - |\n", "a x\n", "", dir_ + "/wav.scp:1: 'sox /a.wav -t wav - |' is a pipe"},
      {"a\n", "a x\n", "", dir_ + "/wav.scp:1: no path"},
      {"r /r.wav\n", "s x\n", "s r 2.0 1.0\n", dir_ + "/segments:1: bad times"},
      {"r /r.wav\n", "s x\n", "s r zero 1.0\n", dir_ + "/segments:1: expected"},
      {"r /r.wav\n", "s x\n", "s q 0 1.0\n", dir_ + "/segments:1: recording 'q' is not in"},
      {"r /r.wav\n", "s x\nt y\n", "s r 0 1\nt r 1 2\nu r 2 3\n",
       dir_ + "/segments:3: utterance 'u' has no line"},
  };
  for (const Case& c : cases) {
    std::filesystem::remove(dir_ + "/segments");
    write("wav.scp", c.wav_scp);
    write("text", c.text);
    if (!c.segments.empty()) write("segments", c.segments);
    auto utts = read_kaldi_data_dir(dir_);
    ASSERT_FALSE(utts.ok()) << c.needle;
    EXPECT_NE(utts.status().message().find(c.needle), std::string::npos) << utts.status().message();
  }
  std::filesystem::remove(dir_ + "/text");
  auto no_text = read_kaldi_data_dir(dir_);
  EXPECT_EQ(no_text.status().code(), StatusCode::kNotFound);
  EXPECT_NE(no_text.status().message().find(dir_ + "/text is missing"), std::string::npos);
}

TEST_F(DataListTest, WeNetDataList) {
  write("data.list",
        "{\"key\": \"k1\", \"wav\": \"/a.wav\", \"txt\": \"HELLO\"}\n\n"
        "{\"key\": \"k2\", \"wav\": \"/b.wav\", \"txt\": \"\", \"start\": 1.5, \"end\": 2.25}\n");
  auto utts = read_data_list(dir_ + "/data.list");
  ASSERT_TRUE(utts.ok()) << utts.status().to_string();
  ASSERT_EQ(utts.value().size(), 2u);
  EXPECT_EQ(utts.value()[0].key, "k1");
  EXPECT_EQ(utts.value()[0].text, "HELLO");
  EXPECT_EQ(utts.value()[0].end, -1);
  EXPECT_EQ(utts.value()[1].start, 1.5);
  EXPECT_EQ(utts.value()[1].end, 2.25);
  EXPECT_EQ(utts.value()[1].origin, dir_ + "/data.list:3");

  const std::string good = "{\"key\": \"k1\", \"wav\": \"/a.wav\", \"txt\": \"A\"}\n";
  const std::pair<std::string, std::string> cases[] = {
      {"{\"key\": \"k2\", \"wav\": \"/b.wav\"", ":2: not a JSON object"},
      {"{\"key\": \"k2\", \"txt\": \"B\"}", ":2: missing string field \"wav\""},
      {"{\"key\": 5, \"wav\": \"/b.wav\", \"txt\": \"B\"}", ":2: missing string field \"key\""},
      {"{\"key\": \"k1\", \"wav\": \"/b.wav\", \"txt\": \"B\"}", ":2: duplicate key 'k1' (first at line 1)"},
      {"{\"key\": \"k2\", \"wav\": \"/b.wav\", \"txt\": \"B\", \"start\": \"0\"}",
       ":2: \"start\" is not a number"},
      {"{\"key\": \"k2\", \"wav\": \"/b.wav\", \"txt\": \"B\", \"start\": 3, \"end\": 2}",
       ":2: bad \"start\"/\"end\""}};
  for (const auto& [line, needle] : cases) {
    write("bad.list", good + line + "\n");
    auto r = read_data_list(dir_ + "/bad.list");
    ASSERT_FALSE(r.ok()) << line;
    EXPECT_NE(r.status().message().find(dir_ + "/bad.list" + needle), std::string::npos)
        << r.status().message();
  }
  EXPECT_EQ(read_data_list(dir_ + "/none.list").status().code(), StatusCode::kNotFound);
}

// ------------------------------------------------------------------------------------------------
// The commands, end to end.

std::string cli_path() {
  if (const char* env = std::getenv("MOEASR_CLI")) return env;
  char self[4096];
  ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return "moe-asr";
  self[n] = '\0';
  std::string dir(self);
  dir = dir.substr(0, dir.rfind('/'));  // build/tests
  dir = dir.substr(0, dir.rfind('/'));  // build
  return dir + "/cli/moe-asr";
}

struct CorpusUtt {
  std::string key;
  double seconds;  // < 0: no file written
  int rate;
  bool silent;
  std::string text;
};

class MakeShardsTest : public DirTest {
 protected:
  void SetUp() override {
    DirTest::SetUp();
    cli_ = cli_path();
    ASSERT_TRUE(exists(cli_)) << "the moe-asr binary " << cli_
                              << " is missing: build the moe-asr target (or set MOEASR_CLI)";
    // 9 utterances, 3 bad: u2 (missing wav), u4 (empty text), u7 (silent).
    corpus_ = {{"u0", 1.2, 16000, false, "ONE TWO"}, {"u1", 0.8, 16000, false, "THREE"},
               {"u2", -1, 16000, false, "MISSING"},  {"u3", 2.0, 16000, false, "FOUR FIVE SIX"},
               {"u4", 0.7, 16000, false, ""},        {"u5", 0.5, 16000, false, "SEVEN"},
               {"u6", 1.5, 8000, false, "EIGHT"},    {"u7", 1.0, 16000, true, "SILENT"},
               {"u8", 1.0, 16000, false, "NINE TEN"}};
    std::filesystem::create_directories(dir_ + "/data");
    std::filesystem::create_directories(dir_ + "/wav");
    std::ofstream scp(dir_ + "/data/wav.scp"), text(dir_ + "/data/text");
    for (size_t i = 0; i < corpus_.size(); ++i) {
      const CorpusUtt& u = corpus_[i];
      const std::string wav = dir_ + "/wav/" + u.key + ".wav";
      scp << u.key << " " << wav << "\n";
      text << u.key << (u.text.empty() ? "" : " " + u.text) << "\n";
      if (u.seconds < 0) continue;
      const int64_t n = static_cast<int64_t>(std::lround(u.seconds * u.rate));
      std::vector<float> x(static_cast<size_t>(n), 0.0f);
      if (!u.silent) {
        const double f0 = 220.0 + 110.0 * static_cast<double>(i);
        for (int64_t t = 0; t < n; ++t) {
          const double s = static_cast<double>(t) / u.rate;
          x[static_cast<size_t>(t)] = static_cast<float>(4000.0 * std::sin(2 * M_PI * f0 * s) +
                                                         1500.0 * std::sin(2 * M_PI * 3.7 * f0 * s + 0.3) +
                                                         200.0 * std::sin(2 * M_PI * 3100.0 * s * (1.0 + s)));
        }
      }
      ASSERT_TRUE(write_wav_int16(wav, x.data(), n, u.rate).ok());
    }
  }

  // Runs `moe-asr <args>`, returns its exit code; stdout+stderr go to *output.
  int run_cli(const std::vector<std::string>& args, std::string* output) {
    const std::string log = dir_ + "/cli.log";
    pid_t pid = ::fork();
    if (pid == 0) {
      FILE* f = std::freopen(log.c_str(), "w", stdout);
      if (f == nullptr) ::_exit(127);
      ::dup2(::fileno(stdout), 2);
      std::vector<char*> argv;
      argv.push_back(const_cast<char*>(cli_.c_str()));
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(cli_.c_str(), argv.data());
      ::_exit(127);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    *output = slurp(log);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
  }

  std::vector<std::string> base_args(const std::string& out) {
    return {
        "make_shards",   "--data_dir", dir_ + "/data",       "--out_dir", out, "--num_utts_per_shard", "3",
        "--num_threads", "2",          "--max_bad_fraction", "0.5"};
  }

  // The features make_shards should have stored for one corpus utterance (fp32, before fp16).
  std::vector<float> direct_feats(const std::string& key, double start = 0, double end = -1) {
    Audio audio = read_audio(dir_ + "/wav/" + key + ".wav").value();
    int64_t first = std::llround(start * 16000), last = static_cast<int64_t>(audio.samples.size());
    if (end >= 0) last = std::min<int64_t>(last, std::llround(end * 16000));
    auto computer = FbankComputer::create(FbankConfig()).value();
    return computer->compute(audio.samples.data() + first, last - first, nullptr);
  }

  std::string cli_;
  std::vector<CorpusUtt> corpus_;
};

TEST_F(MakeShardsTest, EndToEndManifestShardsAndResume) {
  const std::string out = dir_ + "/out";
  std::string log;
  // Default --max_bad_fraction 0.01: 3 bad of 9 fails, naming the bad utterances.
  std::vector<std::string> strict = base_args(dir_ + "/strict");
  strict.resize(strict.size() - 2);
  EXPECT_EQ(run_cli(strict, &log), 1) << log;
  EXPECT_NE(log.find("bad utterance 'u2'"), std::string::npos) << log;
  EXPECT_NE(log.find(dir_ + "/wav/u2.wav"), std::string::npos) << log;
  EXPECT_NE(log.find("max_bad_fraction"), std::string::npos) << log;
  EXPECT_FALSE(exists(dir_ + "/strict/manifest.jsonl"));

  ASSERT_EQ(run_cli(base_args(out), &log), 0) << log;
  EXPECT_NE(log.find("bad utterance 'u4' (" + dir_ + "/data/wav.scp:5"), std::string::npos) << log;
  EXPECT_NE(log.find("empty text"), std::string::npos) << log;
  EXPECT_NE(log.find("bad utterance 'u7'"), std::string::npos) << log;
  EXPECT_NE(log.find("silent"), std::string::npos) << log;
  EXPECT_NE(log.find("6 utterances written"), std::string::npos) << log;
  EXPECT_NE(log.find("3 bad utterances"), std::string::npos) << log;
  const std::string manifest = out + "/manifest.jsonl";
  auto entries = read_manifest(manifest);
  ASSERT_TRUE(entries.ok()) << entries.status().to_string();
  ASSERT_EQ(entries.value().size(), 3u);
  const std::vector<std::vector<std::string>> keys = {{"u0", "u1"}, {"u3", "u5"}, {"u6", "u8"}};
  std::map<std::string, std::string> text_of;
  for (const CorpusUtt& u : corpus_) text_of[u.key] = u.text;
  CmvnStats direct;
  direct.sum.assign(80, 0.0);
  direct.sum_sq.assign(80, 0.0);
  for (size_t s = 0; s < 3; ++s) {
    const ManifestEntry& e = entries.value()[s];
    EXPECT_EQ(e.path, "shards/shard_00000" + std::to_string(s) + ".h5");
    EXPECT_TRUE(verify_shard(manifest, e, true).ok());
    auto reader = ShardReader::open(manifest_entry_path(manifest, e));
    ASSERT_TRUE(reader.ok()) << reader.status().to_string();
    ShardReader& r = *reader.value();
    ASSERT_EQ(r.num_utts(), 2);
    EXPECT_EQ(e.num_utts, 2);
    EXPECT_EQ(e.num_frames, r.num_frames());
    auto config = fbank_config_from_json(r.fbank_config_json());
    ASSERT_TRUE(config.ok()) << r.fbank_config_json();
    EXPECT_EQ(config.value().num_mel_bins, 80);
    EXPECT_EQ(config.value().dither, 0.0);
    for (int64_t i = 0; i < 2; ++i) {
      const std::string key = keys[s][static_cast<size_t>(i)];
      EXPECT_EQ(r.key(i), key);
      EXPECT_EQ(r.text(i), text_of[key]);
      const std::vector<float> want = direct_feats(key);
      ASSERT_EQ(static_cast<size_t>(r.entry(i).num_frames) * 80, want.size()) << key;
      std::vector<float> got(want.size());
      ASSERT_TRUE(r.read_feats(i, got.data()).ok());
      for (size_t k = 0; k < want.size(); ++k) {
        ASSERT_EQ(got[k], f16_bits_to_float(float_to_f16_bits(want[k]))) << key << " value " << k;
        direct.sum[k % 80] += want[k];
        direct.sum_sq[k % 80] += static_cast<double>(want[k]) * want[k];
      }
      direct.frames += r.entry(i).num_frames;
      for (const CorpusUtt& u : corpus_) {
        if (u.key == key) {
          EXPECT_NEAR(r.entry(i).duration, u.seconds, 1e-4) << key;
        }
      }
    }
  }

  // compute_cmvn against the direct double sums.
  const std::string cmvn = out + "/global_cmvn";
  ASSERT_EQ(run_cli({"compute_cmvn", "--manifest", manifest, "--out", cmvn, "--verify", "sha256"}, &log), 0)
      << log;
  auto stats = read_cmvn_json(cmvn);
  ASSERT_TRUE(stats.ok()) << stats.status().to_string();
  EXPECT_EQ(stats.value().frames, direct.frames);
  for (size_t b = 0; b < 80; ++b) {
    EXPECT_NEAR(stats.value().sum[b], direct.sum[b], 1e-10 * std::fabs(direct.sum[b]) + 1e-9);
    EXPECT_NEAR(stats.value().sum_sq[b], direct.sum_sq[b], 1e-10 * direct.sum_sq[b]);
  }

  // Resume: everything is done, nothing is rewritten, the manifest is the same.
  const std::string manifest_text = slurp(manifest);
  struct stat before;
  ASSERT_EQ(::stat((out + "/shards/shard_000001.h5").c_str(), &before), 0);
  ::usleep(20000);
  ASSERT_EQ(run_cli(base_args(out), &log), 0) << log;
  EXPECT_NE(log.find("0 shards, 3 shards skipped"), std::string::npos) << log;
  EXPECT_NE(log.find("3 bad utterances"), std::string::npos) << log;
  struct stat after;
  ASSERT_EQ(::stat((out + "/shards/shard_000001.h5").c_str(), &after), 0);
  EXPECT_EQ(before.st_mtim.tv_nsec, after.st_mtim.tv_nsec);
  EXPECT_EQ(before.st_ino, after.st_ino);
  EXPECT_EQ(slurp(manifest), manifest_text);

  // A lost shard is remade by its array job alone; the bytes (and so the manifest) come out the same.
  std::filesystem::remove(out + "/shards/shard_000001.h5");
  std::filesystem::remove(out + "/shards/shard_000001.h5.json");
  std::vector<std::string> one = base_args(out);
  one.insert(one.end(), {"--shard_range", "1:2"});
  ASSERT_EQ(run_cli(one, &log), 0) << log;
  EXPECT_NE(log.find("in 1 shards, 0 shards skipped"), std::string::npos) << log;
  EXPECT_EQ(slurp(manifest), manifest_text);

  // A shard that exists without its record is validated and recorded, not rewritten.
  std::filesystem::remove(out + "/shards/shard_000002.h5.json");
  ASSERT_EQ(run_cli(base_args(out), &log), 0) << log;
  EXPECT_NE(log.find("shard_000002.h5 is complete (validated)"), std::string::npos) << log;
  EXPECT_EQ(slurp(manifest), manifest_text);

  // A truncated shard makes compute_cmvn fail, naming it.
  std::filesystem::resize_file(out + "/shards/shard_000002.h5", 1000);
  EXPECT_EQ(run_cli({"compute_cmvn", "--manifest", manifest, "--out", cmvn}, &log), 1) << log;
  EXPECT_NE(log.find(out + "/shards/shard_000002.h5"), std::string::npos) << log;
  // ... and make_shards rewrites it (size no longer matches its record).
  ASSERT_EQ(run_cli(base_args(out), &log), 0) << log;
  EXPECT_NE(log.find("in 1 shards, 2 shards skipped"), std::string::npos) << log;
  EXPECT_EQ(slurp(manifest), manifest_text);
}

TEST_F(MakeShardsTest, ShardRangeArrayJobsGiveTheSameManifest) {
  std::string log;
  ASSERT_EQ(run_cli(base_args(dir_ + "/full"), &log), 0) << log;
  const std::string out = dir_ + "/array";
  std::vector<std::string> first = base_args(out);
  first.insert(first.end(), {"--shard_range", "0:1"});
  ASSERT_EQ(run_cli(first, &log), 0) << log;
  EXPECT_TRUE(exists(out + "/shards/shard_000000.h5"));
  EXPECT_FALSE(exists(out + "/shards/shard_000001.h5"));
  EXPECT_FALSE(exists(out + "/manifest.jsonl"));
  EXPECT_NE(log.find("1 of 3 shards done"), std::string::npos) << log;
  std::vector<std::string> rest = base_args(out);
  rest.insert(rest.end(), {"--shard_range", "1:99"});
  ASSERT_EQ(run_cli(rest, &log), 0) << log;
  EXPECT_EQ(slurp(out + "/manifest.jsonl"), slurp(dir_ + "/full/manifest.jsonl"));
}

TEST_F(MakeShardsTest, HoursPerShardSortByLengthAndDataList) {
  std::string log;
  const std::string out = dir_ + "/hours";
  ASSERT_EQ(run_cli({"make_shards", "--data_dir", dir_ + "/data", "--out_dir", out, "--hours_per_shard",
                     "0.0005", "--sort_by_length", "--max_bad_fraction", "0.5"},
                    &log),
            0)
      << log;
  // 1.8 s per shard: [u0 u1] [u2 u3] [u4 u5 u6] [u7 u8]; sorted by duration inside each; bad ones gone.
  const std::vector<std::vector<std::string>> keys = {{"u1", "u0"}, {"u3"}, {"u5", "u6"}, {"u8"}};
  auto entries = read_manifest(out + "/manifest.jsonl");
  ASSERT_TRUE(entries.ok()) << entries.status().to_string();
  ASSERT_EQ(entries.value().size(), keys.size());
  for (size_t s = 0; s < keys.size(); ++s) {
    auto reader = ShardReader::open(manifest_entry_path(out + "/manifest.jsonl", entries.value()[s]));
    ASSERT_TRUE(reader.ok());
    ASSERT_EQ(reader.value()->num_utts(), static_cast<int64_t>(keys[s].size()));
    for (size_t i = 0; i < keys[s].size(); ++i)
      EXPECT_EQ(reader.value()->key(static_cast<int64_t>(i)), keys[s][i]);
  }

  // A WeNet data.list with a segment.
  write("data.list", "{\"key\": \"seg\", \"wav\": \"" + dir_ +
                         "/wav/u3.wav\", \"txt\": \"X\", \"start\": 0.25, "
                         "\"end\": 1.5}\n{\"key\": \"whole\", \"wav\": \"" +
                         dir_ + "/wav/u0.wav\", \"txt\": \"Y\"}\n");
  const std::string list_out = dir_ + "/list";
  ASSERT_EQ(run_cli({"make_shards", "--data_list", dir_ + "/data.list", "--out_dir", list_out,
                     "--num_utts_per_shard", "10"},
                    &log),
            0)
      << log;
  auto reader = ShardReader::open(list_out + "/shards/shard_000000.h5");
  ASSERT_TRUE(reader.ok()) << reader.status().to_string();
  ASSERT_EQ(reader.value()->num_utts(), 2);
  EXPECT_EQ(reader.value()->key(0), "seg");
  EXPECT_NEAR(reader.value()->entry(0).duration, 1.25, 1e-6);
  const std::vector<float> want = direct_feats("u3", 0.25, 1.5);
  ASSERT_EQ(static_cast<size_t>(reader.value()->entry(0).num_frames) * 80, want.size());
  std::vector<float> got(want.size());
  ASSERT_TRUE(reader.value()->read_feats(0, got.data()).ok());
  for (size_t k = 0; k < want.size(); ++k) ASSERT_EQ(got[k], f16_bits_to_float(float_to_f16_bits(want[k])));
}

TEST_F(MakeShardsTest, FlagErrors) {
  std::string log;
  EXPECT_EQ(run_cli({"make_shards", "--data_dir", dir_ + "/data", "--num_utts_per_shard", "3"}, &log), 2)
      << log;
  EXPECT_NE(log.find("--out_dir"), std::string::npos) << log;
  EXPECT_EQ(run_cli({"make_shards", "--data_dir", dir_ + "/data", "--out_dir", dir_ + "/o",
                     "--num_utts_per_shard", "3", "--hours_per_shard", "1"},
                    &log),
            2)
      << log;
  std::vector<std::string> range = base_args(dir_ + "/o");
  range.insert(range.end(), {"--shard_range", "5"});
  EXPECT_EQ(run_cli(range, &log), 2) << log;
  EXPECT_NE(log.find("--shard_range '5'"), std::string::npos) << log;
  EXPECT_EQ(run_cli({"make_shards", "--data_dir", dir_ + "/nodir", "--out_dir", dir_ + "/o",
                     "--num_utts_per_shard", "3"},
                    &log),
            1)
      << log;
  EXPECT_NE(log.find(dir_ + "/nodir/wav.scp is missing"), std::string::npos) << log;
  EXPECT_EQ(run_cli({"make_shards", "--bogus"}, &log), 2) << log;
  EXPECT_EQ(run_cli({"compute_cmvn", "--manifest", dir_ + "/none.jsonl", "--out", dir_ + "/c"}, &log), 1)
      << log;
  EXPECT_NE(log.find(dir_ + "/none.jsonl"), std::string::npos) << log;
}

}  // namespace
}  // namespace moeasr
