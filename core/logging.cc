// core/logging.cc — the log line format and threshold (see logging.h).
#include "core/logging.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include "core/check.h"

namespace moeasr {
namespace {

LogLevel initial_level() {
  const char* env = std::getenv("MOEASR_LOG_LEVEL");
  LogLevel level = LogLevel::kInfo;
  if (env != nullptr && !parse_log_level(env, &level)) {
    std::fprintf(stderr, "MOEASR_LOG_LEVEL='%s' is not one of debug|info|warning|error; using info\n", env);
  }
  return level;
}

// Process-wide log threshold, like the process identity in check.cc.
std::atomic<int> g_level{static_cast<int>(initial_level())};

constexpr char kLevelLetters[] = {'D', 'I', 'W', 'E'};

const char* base_name(const char* path) {
  const char* slash = std::strrchr(path, '/');
  return slash ? slash + 1 : path;
}

}  // namespace

void set_log_level(LogLevel level) {
  g_level.store(static_cast<int>(level));
}
LogLevel log_level() {
  return static_cast<LogLevel>(g_level.load());
}
bool log_enabled(LogLevel level) {
  return static_cast<int>(level) >= g_level.load();
}

bool parse_log_level(const std::string& text, LogLevel* level) {
  if (text == "debug")
    *level = LogLevel::kDebug;
  else if (text == "info")
    *level = LogLevel::kInfo;
  else if (text == "warning")
    *level = LogLevel::kWarning;
  else if (text == "error")
    *level = LogLevel::kError;
  else
    return false;
  return true;
}

namespace detail {

LogMessage::LogMessage(LogLevel level, const char* file, int line) : level_(level) {
  auto now = std::chrono::system_clock::now();
  std::time_t seconds = std::chrono::system_clock::to_time_t(now);
  int millis = static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm local{};
  localtime_r(&seconds, &local);
  char time_text[32];
  std::strftime(time_text, sizeof(time_text), "%Y-%m-%d %H:%M:%S", &local);
  char millis_text[8];
  std::snprintf(millis_text, sizeof(millis_text), ".%03d", millis);
  const ProcessIdentity& id = process_identity();
  stream_ << kLevelLetters[static_cast<int>(level)] << ' ' << time_text << millis_text << ' '
          << base_name(file) << ':' << line << " (" << id.rank << '/' << id.world << ")] ";
}

LogMessage::~LogMessage() {
  stream_ << '\n';
  std::string text = stream_.str();
  std::fwrite(text.data(), 1, text.size(), stderr);
  if (level_ >= LogLevel::kWarning) std::fflush(stderr);
}

}  // namespace detail
}  // namespace moeasr
