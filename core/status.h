// core/status.h — Status for recoverable errors (anything read from disk, a flag or a config), in
// the manner of leveldb's Status and absl::Status: a code plus a message that says what to do.
// Invariants use CHECK (core/check.h) instead.
#pragma once

#include <string>
#include <utility>

#include "core/check.h"

namespace moeasr {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,     // a bad flag, config value or shape given by the user
  kNotFound,            // a file, key or dataset that should exist does not
  kIoError,             // the operating system or a library failed to read/write
  kDataLoss,            // corrupt or truncated data (checksum, size, format version)
  kFailedPrecondition,  // the system is not in a state where the call makes sense
  kOutOfRange,          // e.g. reading past the end of a shard
  kDeadlineExceeded,    // a collective or wait timed out
  kUnimplemented,
  kInternal,
};

const char* status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok_status() { return Status(); }
  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string to_string() const;  // "NotFound: <message>" or "OK"

  // Prefixes the message with where the error was met, keeping the code.
  Status with_context(const std::string& context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status invalid_argument_error(std::string m) {
  return {StatusCode::kInvalidArgument, std::move(m)};
}
inline Status not_found_error(std::string m) {
  return {StatusCode::kNotFound, std::move(m)};
}
inline Status io_error(std::string m) {
  return {StatusCode::kIoError, std::move(m)};
}
inline Status data_loss_error(std::string m) {
  return {StatusCode::kDataLoss, std::move(m)};
}
inline Status failed_precondition_error(std::string m) {
  return {StatusCode::kFailedPrecondition, std::move(m)};
}
inline Status out_of_range_error(std::string m) {
  return {StatusCode::kOutOfRange, std::move(m)};
}
inline Status deadline_exceeded_error(std::string m) {
  return {StatusCode::kDeadlineExceeded, std::move(m)};
}
inline Status unimplemented_error(std::string m) {
  return {StatusCode::kUnimplemented, std::move(m)};
}
inline Status internal_error(std::string m) {
  return {StatusCode::kInternal, std::move(m)};
}

// A value or the Status that explains why there is none.
template <class T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(Status status) : status_(std::move(status)) {  // NOLINT: implicit by design
    CHECK(!status_.ok()) << "StatusOr built from an OK status carries no value";
  }
  StatusOr(T value) : value_(std::move(value)), has_value_(true) {}  // NOLINT: implicit by design

  bool ok() const { return has_value_; }
  const Status& status() const { return status_; }
  T& value() & {
    CHECK(has_value_) << "StatusOr::value() on error: " << status_.to_string();
    return value_;
  }
  const T& value() const& {
    CHECK(has_value_) << "StatusOr::value() on error: " << status_.to_string();
    return value_;
  }
  T&& value() && {
    CHECK(has_value_) << "StatusOr::value() on error: " << status_.to_string();
    return std::move(value_);
  }

 private:
  Status status_;
  T value_{};
  bool has_value_ = false;
};

}  // namespace moeasr

#define MOEASR_STATUS_CONCAT_INNER(a, b) a##b
#define MOEASR_STATUS_CONCAT(a, b) MOEASR_STATUS_CONCAT_INNER(a, b)

// Returns from the enclosing function when `expr` yields a non-OK Status.
#define RETURN_IF_ERROR(expr)                                \
  do {                                                       \
    ::moeasr::Status moeasr_status_tmp_ = (expr);            \
    if (!moeasr_status_tmp_.ok()) return moeasr_status_tmp_; \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, f())`: binds the value or returns the error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  MOEASR_ASSIGN_OR_RETURN_IMPL(MOEASR_STATUS_CONCAT(moeasr_statusor_, __LINE__), lhs, expr)
#define MOEASR_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()
