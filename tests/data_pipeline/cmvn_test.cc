// tests/data_pipeline/cmvn_test.cc — global CMVN (data_pipeline/cmvn.h): WeNet JSON round trip (exact
// doubles), WeNet's mean/istd with the 1e-20 variance floor on hand-computed values, summing shard
// stats against a direct double computation, and every bad CMVN file.
#include "data_pipeline/cmvn.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "data_pipeline/shard.h"

namespace moeasr {
namespace {

class CmvnTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "cmvn_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

TEST_F(CmvnTest, JsonRoundTripIsExactAndWeNetShaped) {
  CmvnStats stats;
  stats.sum = {1.0 / 3.0, -2.5e8, 123456789.0123456};
  stats.sum_sq = {0.1, 7e17, 1e-300};
  stats.frames = 421337;
  const std::string path = dir_ + "/global_cmvn";
  ASSERT_TRUE(write_cmvn_json(path, stats).ok());
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(text.str());
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j.size(), 3u);
  EXPECT_TRUE(j.at("mean_stat").is_array());
  EXPECT_TRUE(j.at("var_stat").is_array());
  EXPECT_TRUE(j.at("frame_num").is_number_integer());
  EXPECT_EQ(text.str().find("{\"mean_stat\":["), 0u) << text.str();
  auto back = read_cmvn_json(path);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(back.value().sum, stats.sum);
  EXPECT_EQ(back.value().sum_sq, stats.sum_sq);
  EXPECT_EQ(back.value().frames, stats.frames);
}

TEST_F(CmvnTest, ReadsWeNetFileWithFloatFrameNum) {
  const std::string path = dir_ + "/wenet_cmvn";
  std::ofstream(path) << "{\"mean_stat\": [10.0, 20.0], \"var_stat\": [60.0, 250.0], \"frame_num\": 5.0}";
  auto stats = read_cmvn_json(path);
  ASSERT_TRUE(stats.ok()) << stats.status().to_string();
  EXPECT_EQ(stats.value().frames, 5);
  std::vector<float> mean, istd;
  ASSERT_TRUE(cmvn_mean_istd(&mean, &istd, stats.value()).ok());
  // mean = [2, 4]; var = [12 - 4, 50 - 16] = [8, 34]
  EXPECT_FLOAT_EQ(mean[0], 2.0f);
  EXPECT_FLOAT_EQ(mean[1], 4.0f);
  EXPECT_FLOAT_EQ(istd[0], static_cast<float>(1.0 / std::sqrt(8.0)));
  EXPECT_FLOAT_EQ(istd[1], static_cast<float>(1.0 / std::sqrt(34.0)));
}

TEST_F(CmvnTest, VarianceFloorAsWeNet) {
  CmvnStats stats;
  stats.sum = {2.0, 0.0, 6.0};
  stats.sum_sq = {6.0, 0.0, 17.99999};  // var: 3 - 1 = 2; 0 -> 1e-20; 9 - 9.0000005 < 0 -> 1e-20
  stats.frames = 2;
  std::vector<float> mean, istd;
  ASSERT_TRUE(cmvn_mean_istd(&mean, &istd, stats).ok());
  EXPECT_EQ(mean, (std::vector<float>{1.0f, 0.0f, 3.0f}));
  EXPECT_FLOAT_EQ(istd[0], static_cast<float>(1.0 / std::sqrt(2.0)));
  EXPECT_FLOAT_EQ(istd[1], 1e10f);
  EXPECT_FLOAT_EQ(istd[2], 1e10f);
  CmvnStats empty;
  empty.sum = {1.0};
  empty.sum_sq = {1.0};
  EXPECT_FALSE(cmvn_mean_istd(&mean, &istd, empty).ok());
}

TEST_F(CmvnTest, AddStats) {
  CmvnStats total;
  CmvnStats a{{1.0, 2.0}, {3.0, 4.0}, 5};
  CmvnStats b{{0.5, -2.0}, {1.0, 1.0}, 2};
  ASSERT_TRUE(add_cmvn_stats(&total, a).ok());
  ASSERT_TRUE(add_cmvn_stats(&total, b).ok());
  EXPECT_EQ(total.sum, (std::vector<double>{1.5, 0.0}));
  EXPECT_EQ(total.sum_sq, (std::vector<double>{4.0, 5.0}));
  EXPECT_EQ(total.frames, 7);
  CmvnStats c{{1.0, 2.0, 3.0}, {1.0, 2.0, 3.0}, 1};
  Status s = add_cmvn_stats(&total, c);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("dimension 3"), std::string::npos) << s.message();
}

// Shard sums added over shards equal the direct double sums over every frame (up to summation order).
TEST_F(CmvnTest, ShardSumsMatchDirectComputation) {
  const int64_t bins = 6;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-5.0f, 15.0f);
  std::vector<double> sum(bins, 0.0), sum_sq(bins, 0.0);
  int64_t frames = 0;
  CmvnStats total;
  for (int shard = 0; shard < 3; ++shard) {
    const std::string path = dir_ + "/s" + std::to_string(shard) + ".h5";
    auto writer = ShardWriter::create(path, bins, "{}");
    ASSERT_TRUE(writer.ok());
    for (int u = 0; u < 4; ++u) {
      const int64_t n = 10 + 17 * u + shard;
      std::vector<float> feats(static_cast<size_t>(n * bins));
      for (float& x : feats) x = dist(rng);
      for (int64_t i = 0; i < n * bins; ++i) {
        sum[static_cast<size_t>(i % bins)] += feats[static_cast<size_t>(i)];
        sum_sq[static_cast<size_t>(i % bins)] +=
            static_cast<double>(feats[static_cast<size_t>(i)]) * feats[static_cast<size_t>(i)];
      }
      frames += n;
      ASSERT_TRUE(writer.value()->add("k" + std::to_string(u), "t", feats.data(), n, 0.1f).ok());
    }
    ASSERT_TRUE(writer.value()->finish().ok());
    auto reader = ShardReader::open(path);
    ASSERT_TRUE(reader.ok());
    ASSERT_TRUE(add_cmvn_stats(&total, reader.value()->cmvn_stats()).ok());
  }
  EXPECT_EQ(total.frames, frames);
  for (int64_t b = 0; b < bins; ++b) {
    EXPECT_NEAR(total.sum[b], sum[b], 1e-12 * std::fabs(sum[b]) + 1e-9);
    EXPECT_NEAR(total.sum_sq[b], sum_sq[b], 1e-12 * sum_sq[b]);
  }
}

TEST_F(CmvnTest, BadFilesNameTheFile) {
  const std::string path = dir_ + "/bad_cmvn";
  const std::pair<std::string, std::string> cases[] = {
      {"[ 1 2 3 ]", "not a JSON object"},
      {"{\"mean_stat\": [1, 2], \"var_stat\": [1, 2]", "not a JSON object"},
      {"{\"var_stat\": [1, 2], \"frame_num\": 3}", "\"mean_stat\""},
      {"{\"mean_stat\": [1, \"x\"], \"var_stat\": [1, 2], \"frame_num\": 3}", "non-number"},
      {"{\"mean_stat\": [1, 2, 3], \"var_stat\": [1, 2], \"frame_num\": 3}", "var_stat has 2"},
      {"{\"mean_stat\": [1, 2], \"var_stat\": [1, 2]}", "\"frame_num\""},
      {"{\"mean_stat\": [1, 2], \"var_stat\": [1, 2], \"frame_num\": 0}", "positive integer"},
      {"{\"mean_stat\": [1, 2], \"var_stat\": [1, 2], \"frame_num\": 2.5}", "positive integer"},
      {"{\"mean_stat\": [], \"var_stat\": [], \"frame_num\": 2}", "empty array"}};
  for (const auto& [text, needle] : cases) {
    std::ofstream(path) << text;
    auto r = read_cmvn_json(path);
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_NE(r.status().message().find(path), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
  }
  auto missing = read_cmvn_json(dir_ + "/nope");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find(dir_ + "/nope"), std::string::npos);
}

}  // namespace
}  // namespace moeasr
