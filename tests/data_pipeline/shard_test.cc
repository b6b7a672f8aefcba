// tests/data_pipeline/shard_test.cc — HDF5 shards and the manifest (data_pipeline/shard.h): round trip
// (keys, texts, durations, float16 feats, exact double CMVN sums), atomic writing, and every corruption
// case (truncated file, flipped byte, missing dataset, unknown format_version, index out of range,
// missing file, bad manifest lines) giving a Status that names the file (and line).
#include "data_pipeline/shard.h"

#include <gtest/gtest.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace moeasr {
namespace {

class ShardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "shard_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  struct Utt {
    std::string key, text;
    std::vector<float> feats;
    int64_t frames;
    float duration;
  };

  // Lengths cross the 6553-row chunk boundary and include an empty utterance.
  std::vector<Utt> make_utts(int64_t bins) {
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> dist(-12.0f, 25.0f);
    const int64_t lengths[] = {37, 1, 0, 7000, 250};
    const char* texts[] = {"HELLO WORLD", "", "é 中文 ▁x", "a longer transcript here", "Z"};
    std::vector<Utt> utts;
    for (int i = 0; i < 5; ++i) {
      Utt u;
      u.key = "utt_" + std::to_string(i) + (i == 2 ? "_ü" : "");
      u.text = texts[i];
      u.frames = lengths[i];
      u.feats.resize(static_cast<size_t>(u.frames * bins));
      for (float& x : u.feats) x = dist(rng);
      u.duration = 0.01f * static_cast<float>(u.frames) + 0.015f;
      utts.push_back(std::move(u));
    }
    return utts;
  }

  std::string write_shard(const std::string& name, const std::vector<Utt>& utts, int64_t bins) {
    const std::string path = dir_ + "/" + name;
    auto writer = ShardWriter::create(path, bins, "{\"num_mel_bins\":80}");
    EXPECT_TRUE(writer.ok()) << writer.status().to_string();
    for (const Utt& u : utts) {
      Status s = writer.value()->add(u.key, u.text, u.feats.data(), u.frames, u.duration);
      EXPECT_TRUE(s.ok()) << s.to_string();
    }
    Status s = writer.value()->finish();
    EXPECT_TRUE(s.ok()) << s.to_string();
    return path;
  }

  ManifestEntry entry_for(const std::string& name, int64_t utts, int64_t frames) {
    ManifestEntry e;
    e.path = name;
    e.num_utts = utts;
    e.num_frames = frames;
    struct stat st;
    EXPECT_EQ(::stat((dir_ + "/" + name).c_str(), &st), 0);
    e.bytes = st.st_size;
    auto sha = sha256_file(dir_ + "/" + name);
    EXPECT_TRUE(sha.ok());
    e.sha256 = sha.value();
    return e;
  }

  // Opens the shard read-write with the raw HDF5 API to damage it.
  hid_t open_rw(const std::string& path) {
    hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    EXPECT_GE(f, 0);
    return f;
  }

  void expect_open_fails(const std::string& path, StatusCode code, const std::string& needle) {
    auto reader = ShardReader::open(path);
    ASSERT_FALSE(reader.ok()) << "opened a bad shard " << path;
    EXPECT_EQ(reader.status().code(), code) << reader.status().to_string();
    EXPECT_NE(reader.status().message().find(path), std::string::npos) << reader.status().message();
    EXPECT_NE(reader.status().message().find(needle), std::string::npos) << reader.status().message();
  }

  std::string dir_;
};

TEST_F(ShardTest, RoundTripKeysTextsFeatsAndExactCmvnSums) {
  const int64_t bins = 80;
  std::vector<Utt> utts = make_utts(bins);
  const std::string path = write_shard("a.h5", utts, bins);
  struct stat st;
  EXPECT_NE(::stat((path + ".tmp").c_str(), &st), 0) << "the .tmp file must be renamed away";

  auto reader = ShardReader::open(path);
  ASSERT_TRUE(reader.ok()) << reader.status().to_string();
  ShardReader& r = *reader.value();
  ASSERT_EQ(r.num_utts(), 5);
  EXPECT_EQ(r.num_mel_bins(), bins);
  EXPECT_EQ(r.num_frames(), 37 + 1 + 0 + 7000 + 250);
  EXPECT_EQ(r.fbank_config_json(), "{\"num_mel_bins\":80}");
  EXPECT_EQ(r.path(), path);
  std::vector<double> sum(bins, 0.0), sum_sq(bins, 0.0);
  int64_t frames = 0, offset = 0;
  for (int64_t i = 0; i < 5; ++i) {
    const Utt& u = utts[static_cast<size_t>(i)];
    EXPECT_EQ(r.key(i), u.key);
    EXPECT_EQ(r.text(i), u.text);
    EXPECT_EQ(r.entry(i).num_frames, u.frames);
    EXPECT_EQ(r.entry(i).frame_offset, offset);
    EXPECT_EQ(r.entry(i).duration, u.duration);
    offset += u.frames;
    std::vector<float> got(u.feats.size() + 1, -999.0f);
    ASSERT_TRUE(r.read_feats(i, got.data()).ok());
    EXPECT_EQ(got.back(), -999.0f) << "read_feats wrote past the utterance";
    for (size_t k = 0; k < u.feats.size(); ++k) {
      const float x = u.feats[k];
      ASSERT_EQ(got[k], f16_bits_to_float(float_to_f16_bits(x))) << "utt " << i << " value " << k;
      ASSERT_NEAR(got[k], x, std::fabs(x) * (1.0f / 1024) + 1e-7f);
    }
    for (int64_t t = 0; t < u.frames; ++t) {
      for (int64_t b = 0; b < bins; ++b) {
        const double x = u.feats[static_cast<size_t>(t * bins + b)];
        sum[static_cast<size_t>(b)] += x;
        sum_sq[static_cast<size_t>(b)] += x * x;
      }
    }
    frames += u.frames;
  }
  EXPECT_EQ(r.cmvn_stats().frames, frames);
  EXPECT_EQ(r.cmvn_stats().sum, sum);  // exact: same order, double
  EXPECT_EQ(r.cmvn_stats().sum_sq, sum_sq);
}

TEST_F(ShardTest, SameContentGivesIdenticalBytes) {
  const std::vector<Utt> utts = make_utts(80);
  const std::string a = write_shard("same_a.h5", utts, 80);
  ::usleep(1100000);  // object timestamps, if any were stored, would now differ
  const std::string b = write_shard("same_b.h5", utts, 80);
  EXPECT_EQ(sha256_file(a).value(), sha256_file(b).value());
}

TEST_F(ShardTest, EmptyShardAndOddBinCount) {
  const std::string path = write_shard("empty.h5", {}, 3);
  auto reader = ShardReader::open(path);
  ASSERT_TRUE(reader.ok()) << reader.status().to_string();
  EXPECT_EQ(reader.value()->num_utts(), 0);
  EXPECT_EQ(reader.value()->num_frames(), 0);
  EXPECT_EQ(reader.value()->cmvn_stats().frames, 0);
  EXPECT_EQ(reader.value()->cmvn_stats().sum, std::vector<double>(3, 0.0));
}

TEST_F(ShardTest, WriterRejectsNonFiniteAndOutOfRangeAndCleansUp) {
  const std::string path = dir_ + "/bad.h5";
  {
    auto writer = ShardWriter::create(path, 2, "{}");
    ASSERT_TRUE(writer.ok());
    const float nan_feats[] = {1.0f, NAN};
    Status s = writer.value()->add("k_nan", "t", nan_feats, 1, 0.1f);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("k_nan"), std::string::npos) << s.message();
    const float big[] = {1e6f, 0.0f};
    s = writer.value()->add("k_big", "t", big, 1, 0.1f);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("float16"), std::string::npos) << s.message();
    EXPECT_FALSE(writer.value()->add("", "t", big, 0, 0.1f).ok());
    struct stat st;
    EXPECT_EQ(::stat((path + ".tmp").c_str(), &st), 0);
  }  // destroyed without finish(): the .tmp goes away, no final file appears
  struct stat st;
  EXPECT_NE(::stat((path + ".tmp").c_str(), &st), 0);
  EXPECT_NE(::stat(path.c_str(), &st), 0);
  auto bad_dir = ShardWriter::create(dir_ + "/no/such/dir/x.h5", 80, "{}");
  ASSERT_FALSE(bad_dir.ok());
  EXPECT_NE(bad_dir.status().message().find("no/such/dir/x.h5.tmp"), std::string::npos);
  EXPECT_FALSE(ShardWriter::create(dir_ + "/y.h5", 0, "{}").ok());
}

TEST_F(ShardTest, MissingAndNonHdf5Files) {
  expect_open_fails(dir_ + "/nope.h5", StatusCode::kNotFound, "does not exist");
  const std::string junk = dir_ + "/junk.h5";
  std::ofstream(junk) << "this is not HDF5\n";
  expect_open_fails(junk, StatusCode::kDataLoss, "cannot open as HDF5");
}

TEST_F(ShardTest, TruncatedFileFailsToOpen) {
  const std::string path = write_shard("t.h5", make_utts(80), 80);
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  ASSERT_EQ(::truncate(path.c_str(), st.st_size / 2), 0);
  expect_open_fails(path, StatusCode::kDataLoss, "truncated");
}

TEST_F(ShardTest, MissingDatasets) {
  for (const char* name : {"/text", "/keys", "/feats", "/cmvn_stats", "/index/num_frames", "/index"}) {
    const std::string path = write_shard("m.h5", make_utts(4), 4);
    hid_t f = open_rw(path);
    ASSERT_GE(H5Ldelete(f, name, H5P_DEFAULT), 0) << name;
    H5Fclose(f);
    const std::string expected = std::string(name) == "/index" ? "/index/frame_offset" : name;
    expect_open_fails(path, StatusCode::kDataLoss, "missing dataset " + expected);
  }
}

TEST_F(ShardTest, UnknownFormatVersion) {
  const std::string path = write_shard("v.h5", make_utts(4), 4);
  hid_t f = open_rw(path);
  hid_t a = H5Aopen(f, "format_version", H5P_DEFAULT);
  const int32_t version = 99;
  ASSERT_GE(H5Awrite(a, H5T_NATIVE_INT32, &version), 0);
  H5Aclose(a);
  H5Fclose(f);
  expect_open_fails(path, StatusCode::kDataLoss, "unknown format_version 99");

  const std::string path2 = write_shard("v2.h5", make_utts(4), 4);
  f = open_rw(path2);
  ASSERT_GE(H5Adelete(f, "format_version"), 0);
  H5Fclose(f);
  expect_open_fails(path2, StatusCode::kDataLoss, "format_version");
}

// Overwrites element `row` of a 1-D int64 or int32 dataset.
void poke(hid_t f, const char* name, int64_t row, int64_t value) {
  hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
  ASSERT_GE(d, 0) << name;
  hid_t space = H5Dget_space(d);
  hsize_t start[1] = {static_cast<hsize_t>(row)}, count[1] = {1};
  H5Sselect_hyperslab(space, H5S_SELECT_SET, start, nullptr, count, nullptr);
  hid_t mem = H5Screate_simple(1, count, nullptr);
  ASSERT_GE(H5Dwrite(d, H5T_NATIVE_INT64, mem, space, H5P_DEFAULT, &value), 0);
  H5Sclose(mem);
  H5Sclose(space);
  H5Dclose(d);
}

TEST_F(ShardTest, IndexOutOfRange) {
  struct Case {
    const char* dataset;
    int64_t value;
    const char* needle;
  };
  const Case cases[] = {
      {"/index/frame_offset", 7100, "outside /feats"}, {"/index/num_frames", 100000, "outside /feats"},
      {"/index/frame_offset", -1, "outside /feats"},   {"/index/text_offset", 1000, "outside /text"},
      {"/index/key_bytes", 500, "outside /keys"},      {"/index/key_bytes", 0, "outside /keys"}};
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.dataset) + " = " + std::to_string(c.value));
    const std::string path = write_shard("i.h5", make_utts(4), 4);
    hid_t f = open_rw(path);
    poke(f, c.dataset, 4, c.value);
    H5Fclose(f);
    expect_open_fails(path, StatusCode::kDataLoss, "/index row 4: ");
    auto reader = ShardReader::open(path);
    EXPECT_NE(reader.status().message().find(c.needle), std::string::npos) << reader.status().message();
  }
}

TEST_F(ShardTest, AttributeAndDatasetDisagree) {
  const std::string path = write_shard("n.h5", make_utts(4), 4);
  hid_t f = open_rw(path);
  hid_t a = H5Aopen(f, "num_utts", H5P_DEFAULT);
  const int64_t n = 6;
  ASSERT_GE(H5Awrite(a, H5T_NATIVE_INT64, &n), 0);
  H5Aclose(a);
  H5Fclose(f);
  expect_open_fails(path, StatusCode::kDataLoss, "/index/frame_offset has 5 rows but num_utts is 6");
}

TEST_F(ShardTest, ManifestRoundTripAndPaths) {
  std::vector<ManifestEntry> entries(2);
  entries[0] = {"shards/shard_000000.h5", 512, 421337, 67432101, std::string(64, 'a')};
  entries[1] = {"/abs/x.h5", 1, 2, 3, std::string(64, '0')};
  const std::string manifest = dir_ + "/manifest.jsonl";
  ASSERT_TRUE(write_manifest(manifest, entries).ok());
  std::ifstream in(manifest);
  std::string first;
  std::getline(in, first);
  EXPECT_EQ(first,
            "{\"path\":\"shards/shard_000000.h5\",\"num_utts\":512,\"num_frames\":421337,"
            "\"bytes\":67432101,\"sha256\":\"" +
                std::string(64, 'a') + "\"}");
  auto back = read_manifest(manifest);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  ASSERT_EQ(back.value().size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(back.value()[i].path, entries[i].path);
    EXPECT_EQ(back.value()[i].num_utts, entries[i].num_utts);
    EXPECT_EQ(back.value()[i].num_frames, entries[i].num_frames);
    EXPECT_EQ(back.value()[i].bytes, entries[i].bytes);
    EXPECT_EQ(back.value()[i].sha256, entries[i].sha256);
  }
  EXPECT_EQ(manifest_entry_path(manifest, entries[0]), dir_ + "/shards/shard_000000.h5");
  EXPECT_EQ(manifest_entry_path(manifest, entries[1]), "/abs/x.h5");
  EXPECT_EQ(manifest_entry_path("manifest.jsonl", entries[0]), "shards/shard_000000.h5");
  struct stat st;
  EXPECT_NE(::stat((manifest + ".tmp").c_str(), &st), 0);
}

TEST_F(ShardTest, Sha256KnownAnswer) {
  const std::string path = dir_ + "/abc";
  std::ofstream(path) << "abc";
  auto sha = sha256_file(path);
  ASSERT_TRUE(sha.ok());
  EXPECT_EQ(sha.value(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  std::ofstream(dir_ + "/empty").flush();
  EXPECT_EQ(sha256_file(dir_ + "/empty").value(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_file(dir_ + "/none").status().code(), StatusCode::kNotFound);
}

TEST_F(ShardTest, VerifyShardSizeAndChecksum) {
  const std::vector<Utt> utts = make_utts(80);
  write_shard("s.h5", utts, 80);
  const std::string manifest = dir_ + "/manifest.jsonl";
  ManifestEntry e = entry_for("s.h5", 5, 7288);
  EXPECT_TRUE(verify_shard(manifest, e, true).ok());

  // Flip one byte in the middle of /feats: the size still matches, the checksum does not.
  const std::string path = dir_ + "/s.h5";
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(e.bytes / 2);
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x5a);
    f.seekp(e.bytes / 2);
    f.write(&c, 1);
  }
  EXPECT_TRUE(verify_shard(manifest, e, false).ok());
  Status s = verify_shard(manifest, e, true);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find(path), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("checksum"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(manifest), std::string::npos) << s.message();

  ManifestEntry wrong_size = e;
  wrong_size.bytes += 1;
  s = verify_shard(manifest, wrong_size, false);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find(path), std::string::npos) << s.message();

  ManifestEntry missing = e;
  missing.path = "shards/gone.h5";
  s = verify_shard(manifest, missing, false);
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_NE(s.message().find(dir_ + "/shards/gone.h5"), std::string::npos) << s.message();
}

TEST_F(ShardTest, BadManifestLinesNameFileAndLine) {
  const std::string manifest = dir_ + "/manifest.jsonl";
  const std::string good = "{\"path\":\"a.h5\",\"num_utts\":1,\"num_frames\":2,\"bytes\":3,\"sha256\":\"" +
                           std::string(64, 'f') + "\"}";
  const std::pair<std::string, std::string> cases[] = {
      {"{\"path\": \"b.h5\", \"num_utts\": 1", "not a JSON object"},
      {"[1, 2]", "not a JSON object"},
      {"{\"num_utts\":1,\"num_frames\":2,\"bytes\":3,\"sha256\":\"" + std::string(64, 'f') + "\"}",
       "\"path\""},
      {"{\"path\":\"a.h5\",\"num_utts\":-1,\"num_frames\":2,\"bytes\":3,\"sha256\":\"" +
           std::string(64, 'f') + "\"}",
       "\"num_utts\""},
      {"{\"path\":\"a.h5\",\"num_utts\":1,\"num_frames\":2,\"bytes\":\"3\",\"sha256\":\"" +
           std::string(64, 'f') + "\"}",
       "\"bytes\""},
      {"{\"path\":\"a.h5\",\"num_utts\":1,\"num_frames\":2,\"bytes\":3,\"sha256\":\"xyz\"}", "sha256"}};
  for (const auto& [line, needle] : cases) {
    std::ofstream(manifest) << good << "\n\n" << line << "\n" << good << "\n";
    auto r = read_manifest(manifest);
    ASSERT_FALSE(r.ok()) << line;
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
    EXPECT_NE(r.status().message().find(manifest + ":3"), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
  }
  auto missing = read_manifest(dir_ + "/no_manifest.jsonl");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find(dir_ + "/no_manifest.jsonl"), std::string::npos);
}

}  // namespace
}  // namespace moeasr
