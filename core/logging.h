// core/logging.h — leveled logging: `LOG(INFO) << "loss " << loss;` prints
//   I 2026-11-28 18:20:01.123 trainer.cc:42 (0/2)] loss 1.25
// i.e. level letter, local time with milliseconds, file:line, (rank/world), message. One write per
// line, so lines from threads and ranks do not interleave mid-line. The threshold comes from
// set_log_level() or the MOEASR_LOG_LEVEL environment variable (debug|info|warning|error).
#pragma once

#include <sstream>
#include <string>

namespace moeasr {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void set_log_level(LogLevel level);
LogLevel log_level();
bool log_enabled(LogLevel level);
// Parses "debug", "info", "warning", "error"; returns false on anything else.
bool parse_log_level(const std::string& text, LogLevel* level);

namespace detail {

class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};

struct LogVoidify {
  void operator&(std::ostream&) {}
};

}  // namespace detail
}  // namespace moeasr

#define MOEASR_LOG_LEVEL_DEBUG ::moeasr::LogLevel::kDebug
#define MOEASR_LOG_LEVEL_INFO ::moeasr::LogLevel::kInfo
#define MOEASR_LOG_LEVEL_WARNING ::moeasr::LogLevel::kWarning
#define MOEASR_LOG_LEVEL_ERROR ::moeasr::LogLevel::kError

#define LOG(level)                                 \
  !::moeasr::log_enabled(MOEASR_LOG_LEVEL_##level) \
      ? (void)0                                    \
      : ::moeasr::detail::LogVoidify() &           \
            ::moeasr::detail::LogMessage(MOEASR_LOG_LEVEL_##level, __FILE__, __LINE__).stream()
