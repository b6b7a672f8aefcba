// trainer/tensorboard.cc — TensorBoard event files in TFRecord framing (see tensorboard.h). CRC-32C
// comes from Boost.CRC (boost/crc.hpp, header-only), configured with the Castagnoli polynomial.
#include "trainer/tensorboard.h"

#include <unistd.h>

#include <boost/crc.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "core/logging.h"
#include "proto/tensorboard.pb.h"

namespace moeasr {
namespace {

// CRC-32C: polynomial 0x1EDC6F41, init 0xffffffff, reflected in and out, final xor 0xffffffff.
using Crc32c = boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true>;

constexpr uint32_t kMaskDelta = 0xa282ead8u;

void put_le(std::string* out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out->push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

uint64_t get_le(const unsigned char* in, int bytes) {
  uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) value |= static_cast<uint64_t>(in[i]) << (8 * i);
  return value;
}

std::string host_name() {
  char buffer[256] = {0};
  if (gethostname(buffer, sizeof(buffer) - 1) != 0 || buffer[0] == '\0') return "localhost";
  return buffer;
}

}  // namespace

uint32_t crc32c(const void* data, size_t size) {
  Crc32c crc;
  crc.process_bytes(data, size);
  return crc.checksum();
}

uint32_t masked_crc32c(const void* data, size_t size) {
  uint32_t crc = crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + kMaskDelta;
}

std::string tfrecord_frame(const std::string& data) {
  std::string out;
  out.reserve(data.size() + 16);
  put_le(&out, data.size(), 8);
  put_le(&out, masked_crc32c(out.data(), 8), 4);
  out += data;
  put_le(&out, masked_crc32c(data.data(), data.size()), 4);
  return out;
}

StatusOr<std::vector<std::string>> read_tfrecords(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr)
    return not_found_error("cannot open the TFRecord file " + path + ": " + std::strerror(errno));
  std::vector<std::string> records;
  uint64_t offset = 0;
  Status status;
  while (true) {
    unsigned char header[12];
    size_t got = std::fread(header, 1, sizeof(header), file);
    if (got == 0) break;
    if (got < sizeof(header)) {
      status = data_loss_error(path + ": truncated record header at byte " + std::to_string(offset));
      break;
    }
    uint64_t length = get_le(header, 8);
    if (static_cast<uint32_t>(get_le(header + 8, 4)) != masked_crc32c(header, 8)) {
      status = data_loss_error(path + ": the length CRC of the record at byte " + std::to_string(offset) +
                               " does not match (corrupt file)");
      break;
    }
    if (length > (uint64_t{1} << 32)) {
      status = data_loss_error(path + ": implausible record length " + std::to_string(length) + " at byte " +
                               std::to_string(offset));
      break;
    }
    std::string data(length, '\0');
    unsigned char footer[4];
    if (std::fread(data.data(), 1, length, file) != length || std::fread(footer, 1, 4, file) != 4) {
      status = data_loss_error(path + ": truncated record at byte " + std::to_string(offset));
      break;
    }
    if (static_cast<uint32_t>(get_le(footer, 4)) != masked_crc32c(data.data(), data.size())) {
      status = data_loss_error(path + ": the data CRC of the record at byte " + std::to_string(offset) +
                               " does not match (corrupt file)");
      break;
    }
    records.push_back(std::move(data));
    offset += 16 + length;
  }
  std::fclose(file);
  if (!status.ok()) return status;
  return records;
}

double wall_time_now() {
  auto since_epoch = std::chrono::system_clock::now().time_since_epoch();
  return std::chrono::duration<double>(since_epoch).count();
}

StatusOr<std::unique_ptr<EventWriter>> EventWriter::open(const std::string& dir) {
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) return io_error("cannot create the TensorBoard directory " + dir + ": " + error.message());
  double now = wall_time_now();
  std::string base =
      dir + "/events.out.tfevents." + std::to_string(static_cast<int64_t>(now)) + "." + host_name();
  std::string path = base;
  std::FILE* file = nullptr;
  for (int n = 1; n < 1000; ++n) {
    file = std::fopen(path.c_str(), "wbx");  // x: fail if it exists (C11), never overwrite a log
    if (file != nullptr || errno != EEXIST) break;
    path = base + "." + std::to_string(n);
  }
  if (file == nullptr) {
    return io_error("cannot create the TensorBoard event file " + path + ": " + std::strerror(errno));
  }
  std::unique_ptr<EventWriter> writer(new EventWriter(path, file));
  proto::Event version;
  version.set_wall_time(now);
  version.set_step(0);
  version.set_file_version("brain.Event:2");
  RETURN_IF_ERROR(writer->write_event(version));
  RETURN_IF_ERROR(writer->flush());
  return writer;
}

EventWriter::~EventWriter() {
  Status status = close();
  if (!status.ok()) LOG(WARNING) << status.to_string();
}

Status EventWriter::write_record(const std::string& data) {
  if (file_ == nullptr)
    return failed_precondition_error("the TensorBoard event file " + path_ + " is closed");
  std::string record = tfrecord_frame(data);
  if (std::fwrite(record.data(), 1, record.size(), file_) != record.size()) {
    return io_error("cannot write to the TensorBoard event file " + path_ + ": " + std::strerror(errno));
  }
  return Status();
}

Status EventWriter::write_event(const proto::Event& event) {
  std::string data;
  CHECK(event.SerializeToString(&data)) << "cannot serialise a TensorBoard event";
  return write_record(data);
}

Status EventWriter::add_scalars(const std::vector<std::pair<std::string, double>>& values, int64_t step,
                                double wall_time) {
  proto::Event event;
  event.set_wall_time(wall_time);
  event.set_step(step);
  proto::Summary* summary = event.mutable_summary();
  for (const auto& [tag, value] : values) {
    proto::Summary::Value* v = summary->add_value();
    v->set_tag(tag);
    v->set_simple_value(static_cast<float>(value));
  }
  return write_event(event);
}

Status EventWriter::add_scalar(const std::string& tag, double value, int64_t step, double wall_time) {
  return add_scalars({{tag, value}}, step, wall_time);
}

Status EventWriter::add_scalar(const std::string& tag, double value, int64_t step) {
  return add_scalar(tag, value, step, wall_time_now());
}

Status EventWriter::flush() {
  if (file_ == nullptr)
    return failed_precondition_error("the TensorBoard event file " + path_ + " is closed");
  if (std::fflush(file_) != 0) {
    return io_error("cannot flush the TensorBoard event file " + path_ + ": " + std::strerror(errno));
  }
  return Status();
}

Status EventWriter::close() {
  if (file_ == nullptr) return Status();
  bool flushed = std::fflush(file_) == 0;
  bool closed = std::fclose(file_) == 0;
  file_ = nullptr;
  if (!flushed || !closed) {
    return io_error("cannot close the TensorBoard event file " + path_ + ": " + std::strerror(errno));
  }
  return Status();
}

}  // namespace moeasr
