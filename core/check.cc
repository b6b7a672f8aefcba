// core/check.cc — CHECK failure reporting and the process identity used by CHECK and logging.
#include "core/check.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace moeasr {
namespace {

// Process-wide by necessity (see check.h); written once at start-up, read on failure paths.
ProcessIdentity g_identity;
AbortHandler g_abort_handler = nullptr;

void fill_host(ProcessIdentity* identity) {
  if (!identity->host.empty()) return;
  char buffer[256] = {0};
  if (gethostname(buffer, sizeof(buffer) - 1) == 0) identity->host = buffer;
  if (identity->host.empty()) identity->host = "unknown-host";
}

}  // namespace

void set_process_identity(int rank, int world) {
  g_identity.rank = rank;
  g_identity.world = world;
  fill_host(&g_identity);
}

const ProcessIdentity& process_identity() {
  fill_host(&g_identity);
  return g_identity;
}

void set_abort_handler(AbortHandler handler) {
  g_abort_handler = handler;
}

namespace detail {

CheckFailure::CheckFailure(const char* file, int line, const char* condition) {
  const ProcessIdentity& id = process_identity();
  stream_ << "CHECK failed at " << file << ":" << line << " on rank " << id.rank << "/" << id.world
          << " (host " << id.host << ", pid " << getpid() << "): " << condition << " ";
}

CheckFailure::~CheckFailure() {
  std::string message = stream_.str();
  std::fprintf(stderr, "%s\n", message.c_str());
  std::fflush(stderr);
  if (g_abort_handler != nullptr) g_abort_handler(134);
  std::abort();
}

}  // namespace detail
}  // namespace moeasr
