// trainer/tensorboard.h — TensorBoard event files, as TensorFlow's EventsWriter / tensorboardX's
// EventFileWriter write them: <dir>/events.out.tfevents.<unix seconds>.<hostname>, a sequence of
// proto::Event records (proto/tensorboard.proto) in TFRecord framing, the first one carrying
// file_version "brain.Event:2", the rest scalar summaries (WeNet's tags: train/train_loss, cv/loss,
// ...). TFRecord framing of one record:
//   uint64 length (little endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
// with masked_crc32c(x) = ((c >> 15) | (c << 17)) + 0xa282ead8, c = CRC-32C (Castagnoli) of x.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"

namespace moeasr {

namespace proto {
class Event;
}

// CRC-32C (Castagnoli, reflected, init and final xor 0xffffffff), as iSCSI, ext4 and TFRecord use.
uint32_t crc32c(const void* data, size_t size);
// TFRecord's masked CRC: ((c >> 15) | (c << 17)) + 0xa282ead8 of c = crc32c(data).
uint32_t masked_crc32c(const void* data, size_t size);
// One TFRecord: length, its masked CRC, the data, the data's masked CRC.
std::string tfrecord_frame(const std::string& data);
// The records of a TFRecord file, each CRC verified; a truncated or corrupted file is an error
// naming the file and the byte offset of the bad record.
StatusOr<std::vector<std::string>> read_tfrecords(const std::string& path);

// Writes one TensorBoard event file. Not thread-safe: one writer per process (rank 0).
class EventWriter {
 public:
  // Creates `dir` (and its parents) and the file events.out.tfevents.<unix seconds>.<hostname>
  // (".<n>" appended when a file of that name exists, so a restart in the same second does not
  // overwrite it), and writes the file_version event.
  static StatusOr<std::unique_ptr<EventWriter>> open(const std::string& dir);
  ~EventWriter();  // closes; an error on this path is only logged: call close() to see it
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;

  // One scalar event (TensorBoard stores simple_value as a float). wall_time: seconds since the
  // Unix epoch; the overload without it uses the current time.
  Status add_scalar(const std::string& tag, double value, int64_t step);
  Status add_scalar(const std::string& tag, double value, int64_t step, double wall_time);
  // Several scalars in one event (one record), e.g. the per-expert loads of a step.
  Status add_scalars(const std::vector<std::pair<std::string, double>>& values, int64_t step,
                     double wall_time);
  // Any event, framed and appended.
  Status write_event(const proto::Event& event);
  // Pushes buffered records to the operating system (TensorBoard sees them on its next reload).
  Status flush();
  // Flushes and closes the file; later writes are errors. Idempotent.
  Status close();
  const std::string& path() const { return path_; }

 private:
  EventWriter(std::string path, std::FILE* file) : path_(std::move(path)), file_(file) {}
  Status write_record(const std::string& data);

  std::string path_;
  std::FILE* file_ = nullptr;
};

// Seconds since the Unix epoch, as TensorBoard's wall_time.
double wall_time_now();

}  // namespace moeasr
