// core/check.h — CHECK macros for invariants (after glog's CHECK and llm.c's cudaCheck): on failure
// they print file:line, rank/world, host and the compared values, then abort the whole job through
// the process's abort handler (MPI_Abort once parallel/ has installed it; std::abort before).
//
//   CHECK(ptr != nullptr) << "while loading " << path;
//   CHECK_EQ(rows, expected_rows) << "tensor " << name;
#pragma once

#include <cstdint>
#include <sstream>
#include <string>

namespace moeasr {

// The process identity shown in CHECK and log lines. It is the one piece of process-wide state in
// moe-asr: a CHECK can fire in code that holds no RunContext, and the message must still say which
// rank failed. Set once at start-up by the bootstrap (parallel/) or by main.
struct ProcessIdentity {
  int rank = 0;
  int world = 1;
  std::string host;  // filled from gethostname() when left empty
};
void set_process_identity(int rank, int world);
const ProcessIdentity& process_identity();

// Called after a CHECK failure has been printed; must not return. Default: std::abort().
using AbortHandler = void (*)(int exit_code);
void set_abort_handler(AbortHandler handler);

namespace detail {

class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* condition);
  [[noreturn]] ~CheckFailure();
  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
};

// Makes `CHECK(x) << ...` a void expression in both branches of the ternary.
struct CheckVoidify {
  void operator&(std::ostream&) {}
};

template <class A, class B>
std::string check_op_values(const A& a, const B& b) {
  std::ostringstream out;
  out << "(" << a << " vs " << b << ") ";
  return out.str();
}

}  // namespace detail
}  // namespace moeasr

#define CHECK(condition)                           \
  (condition) ? (void)0                            \
              : ::moeasr::detail::CheckVoidify() & \
                    ::moeasr::detail::CheckFailure(__FILE__, __LINE__, #condition).stream()

#define MOEASR_CHECK_OP(op, a, b)                                                                 \
  ((a)op(b)) ? (void)0                                                                            \
             : ::moeasr::detail::CheckVoidify() &                                                 \
                   ::moeasr::detail::CheckFailure(__FILE__, __LINE__, #a " " #op " " #b).stream() \
                       << ::moeasr::detail::check_op_values((a), (b))

#define CHECK_EQ(a, b) MOEASR_CHECK_OP(==, a, b)
#define CHECK_NE(a, b) MOEASR_CHECK_OP(!=, a, b)
#define CHECK_LT(a, b) MOEASR_CHECK_OP(<, a, b)
#define CHECK_LE(a, b) MOEASR_CHECK_OP(<=, a, b)
#define CHECK_GT(a, b) MOEASR_CHECK_OP(>, a, b)
#define CHECK_GE(a, b) MOEASR_CHECK_OP(>=, a, b)
