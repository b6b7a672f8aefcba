// tests/trainer/tensorboard_test.cc — TensorBoard event files (trainer/tensorboard.h): CRC-32C on its
// published test vectors (RFC 3720 B.4 and the "123456789" check value), TFRecord framing byte for byte
// against the bytes tensorboard's own Python RecordWriter writes for the same two events, and the
// EventWriter's files read back record by record with both CRCs verified; corrupt and truncated files
// are refused. With MOEASR_TB_KEEP_DIR set, the round-trip test leaves its event file in that
// directory for tests/reference/check_tensorboard.py (TensorBoard's own EventAccumulator).
#include "trainer/tensorboard.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "proto/tensorboard.pb.h"

namespace moeasr {
namespace {

namespace fs = std::filesystem;

std::string hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

// A fresh directory under the system temp dir, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "moeasr_tb_XXXXXX").string();
    CHECK(mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(Crc32cTest, PublishedCheckValues) {
  // The CRC catalogue's check value of CRC-32/ISCSI.
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(crc32c("", 0), 0u);
  // RFC 3720 (iSCSI) appendix B.4.
  std::string zeros(32, '\0'), ones(32, '\xff'), up(32, '\0'), down(32, '\0');
  for (int i = 0; i < 32; ++i) {
    up[i] = static_cast<char>(i);
    down[i] = static_cast<char>(31 - i);
  }
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  EXPECT_EQ(crc32c(up.data(), up.size()), 0x46DD794Eu);
  EXPECT_EQ(crc32c(down.data(), down.size()), 0x113FDB5Cu);
}

TEST(Crc32cTest, MaskIsTfRecords) {
  // ((0xE3069283 >> 15) | (0xE3069283 << 17)) + 0xa282ead8 mod 2^32, worked by hand; tensorboard's
  // own masked_crc32c(b"123456789") gives the same.
  EXPECT_EQ(masked_crc32c("123456789", 9), 0xC78AB0E5u);
}

// The two events below, written by tensorboard 2.21's RecordWriter (tensorboard.summary.writer.
// record_writer) from tensorboard.compat.proto.event_pb2: Event(wall_time=1234567890.5,
// file_version="brain.Event:2") then Event(wall_time=1234567891.25, step=7, summary=Summary(value=[
// Value(tag="train/loss", simple_value=0.5)])).
constexpr const char* kTensorboardBytes =
    "1800000000000000a37f4b22090000a0b48065d2411a0d627261696e2e4576656e743a32f5e8f016"
    "200000000000000029eda950090000d0b48065d24110072a130a110a0a747261696e2f6c6f7373150000003f5316d10c";

std::string reference_events() {
  proto::Event version;
  version.set_wall_time(1234567890.5);
  version.set_file_version("brain.Event:2");
  proto::Event scalar;
  scalar.set_wall_time(1234567891.25);
  scalar.set_step(7);
  proto::Summary::Value* v = scalar.mutable_summary()->add_value();
  v->set_tag("train/loss");
  v->set_simple_value(0.5f);
  return tfrecord_frame(version.SerializeAsString()) + tfrecord_frame(scalar.SerializeAsString());
}

TEST(TfRecordTest, FramingMatchesTensorboardByteForByte) {
  EXPECT_EQ(hex(reference_events()), kTensorboardBytes);
}

TEST(TfRecordTest, FrameLayout) {
  std::string data = "123456789";
  std::string frame = tfrecord_frame(data);
  ASSERT_EQ(frame.size(), 8u + 4u + 9u + 4u);
  EXPECT_EQ(hex(frame.substr(0, 8)), "0900000000000000");  // uint64 little-endian length
  uint32_t length_crc = masked_crc32c(frame.data(), 8);
  EXPECT_EQ(static_cast<uint8_t>(frame[8]), length_crc & 0xff);
  EXPECT_EQ(static_cast<uint8_t>(frame[11]), length_crc >> 24);
  EXPECT_EQ(frame.substr(12, 9), data);
  EXPECT_EQ(hex(frame.substr(21)), "e5b08ac7");  // 0xC78AB0E5 little endian
  // An empty record is legal: length 0, its CRC, no data, the CRC of nothing.
  EXPECT_EQ(tfrecord_frame("").size(), 16u);
}

TEST(TfRecordTest, ReadsBackAndRefusesCorruption) {
  TempDir dir;
  std::string path = dir.path() + "/records";
  std::string bytes = reference_events();
  write_file(path, bytes);
  auto records = read_tfrecords(path);
  ASSERT_TRUE(records.ok()) << records.status().to_string();
  ASSERT_EQ(records.value().size(), 2u);
  proto::Event second;
  ASSERT_TRUE(second.ParseFromString(records.value()[1]));
  EXPECT_EQ(second.step(), 7);
  EXPECT_EQ(second.summary().value(0).tag(), "train/loss");

  std::string flipped = bytes;
  flipped[40 + 20] ^= 0x01;  // a byte inside the second record's data (the record starts at byte 40)
  write_file(path, flipped);
  auto bad = read_tfrecords(path);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(bad.status().message().find("data CRC of the record at byte 40"), std::string::npos)
      << bad.status().message();

  std::string length_flipped = bytes;
  length_flipped[0] ^= 0x02;
  write_file(path, length_flipped);
  bad = read_tfrecords(path);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("length CRC of the record at byte 0"), std::string::npos)
      << bad.status().message();

  for (size_t cut : {bytes.size() - 1, size_t{40 + 5}}) {
    write_file(path, bytes.substr(0, cut));
    bad = read_tfrecords(path);
    ASSERT_FALSE(bad.ok()) << "cut at " << cut;
    EXPECT_EQ(bad.status().code(), StatusCode::kDataLoss);
    EXPECT_NE(bad.status().message().find("truncated record"), std::string::npos) << bad.status().message();
  }

  auto missing = read_tfrecords(dir.path() + "/nothing");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
}

TEST(EventWriterTest, WritesEventsTensorboardCanRead) {
  TempDir temp;
  const char* keep = std::getenv("MOEASR_TB_KEEP_DIR");
  std::string dir = keep != nullptr && *keep != '\0' ? std::string(keep) : temp.path() + "/tensorboard/a/b";
  auto opened = EventWriter::open(dir);
  ASSERT_TRUE(opened.ok()) << opened.status().to_string();
  std::unique_ptr<EventWriter> writer = std::move(opened).value();
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  std::string name = fs::path(writer->path()).filename().string();
  EXPECT_TRUE(std::regex_match(
      name, std::regex("events\\.out\\.tfevents\\.[0-9]{10}\\." + std::string(host) + "(\\.[0-9]+)?")))
      << name;

  double before = wall_time_now();
  for (int step = 1; step <= 5; ++step) {
    ASSERT_TRUE(writer->add_scalar("train/train_loss", 100.0 / step, step).ok());
    ASSERT_TRUE(writer->add_scalar("train/lr_0", 1e-3 * step, step, 1.7e9 + step).ok());
  }
  ASSERT_TRUE(writer->add_scalars({{"moe/expert_load_0", 0.25}, {"moe/expert_load_1", 0.75}}, 5, 1.7e9).ok());
  ASSERT_TRUE(writer->flush().ok());
  // After flush() the records are in the file, before close().
  auto partial = read_tfrecords(writer->path());
  ASSERT_TRUE(partial.ok()) << partial.status().to_string();
  EXPECT_EQ(partial.value().size(), 12u);
  ASSERT_TRUE(writer->close().ok());
  EXPECT_TRUE(writer->close().ok());  // idempotent
  Status after = writer->add_scalar("x", 1, 1);
  EXPECT_EQ(after.code(), StatusCode::kFailedPrecondition);

  auto records = read_tfrecords(writer->path());
  ASSERT_TRUE(records.ok()) << records.status().to_string();
  ASSERT_EQ(records.value().size(), 12u);
  proto::Event first;
  ASSERT_TRUE(first.ParseFromString(records.value()[0]));
  EXPECT_EQ(first.file_version(), "brain.Event:2");
  EXPECT_GT(first.wall_time(), 1.7e9);
  for (int step = 1; step <= 5; ++step) {
    proto::Event loss, lr;
    ASSERT_TRUE(loss.ParseFromString(records.value()[2 * step - 1]));
    ASSERT_TRUE(lr.ParseFromString(records.value()[2 * step]));
    EXPECT_EQ(loss.step(), step);
    ASSERT_EQ(loss.summary().value_size(), 1);
    EXPECT_EQ(loss.summary().value(0).tag(), "train/train_loss");
    EXPECT_EQ(loss.summary().value(0).simple_value(), static_cast<float>(100.0 / step));
    EXPECT_GE(loss.wall_time(), before);
    EXPECT_EQ(lr.summary().value(0).tag(), "train/lr_0");
    EXPECT_EQ(lr.summary().value(0).simple_value(), static_cast<float>(1e-3 * step));
    EXPECT_EQ(lr.wall_time(), 1.7e9 + step);
  }
  proto::Event loads;
  ASSERT_TRUE(loads.ParseFromString(records.value()[11]));
  ASSERT_EQ(loads.summary().value_size(), 2);
  EXPECT_EQ(loads.summary().value(1).tag(), "moe/expert_load_1");
  EXPECT_EQ(loads.summary().value(1).simple_value(), 0.75f);
}

TEST(EventWriterTest, NeverOverwritesAnEarlierFile) {
  TempDir temp;
  std::vector<std::string> paths;
  for (int i = 0; i < 3; ++i) {
    auto w = EventWriter::open(temp.path());
    ASSERT_TRUE(w.ok()) << w.status().to_string();
    ASSERT_TRUE(w.value()->add_scalar("cv/loss", i, i).ok());
    paths.push_back(w.value()->path());
  }  // closed by the destructors
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < i; ++j) EXPECT_NE(paths[i], paths[j]);
    auto records = read_tfrecords(paths[i]);
    ASSERT_TRUE(records.ok());
    ASSERT_EQ(records.value().size(), 2u);
    proto::Event e;
    ASSERT_TRUE(e.ParseFromString(records.value()[1]));
    EXPECT_EQ(e.step(), i);
  }
}

TEST(EventWriterTest, UnwritableDirectoryIsAnError) {
  TempDir temp;
  std::string file = temp.path() + "/plain_file";
  write_file(file, "x");
  auto w = EventWriter::open(file + "/tensorboard");
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), StatusCode::kIoError);
  EXPECT_NE(w.status().message().find(file + "/tensorboard"), std::string::npos) << w.status().message();
}

}  // namespace
}  // namespace moeasr
