// kernels/cpu/cpu_parallel.h — how CPU kernels share out work: OpenMP over ctx.num_threads, and only
// when a loop has enough work to pay for waking the threads. Every kernel with an OpenMP loop keeps
// a plain loop behind ctx.use_reference_kernels for tests.
#pragma once

#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

// Below this many scalar operations a loop runs on one thread.
constexpr int64_t kCpuParallelMinWork = 1 << 15;

inline int cpu_threads_for(const RunContext& ctx, int64_t work) {
  if (ctx.use_reference_kernels || work < kCpuParallelMinWork || ctx.num_threads < 1) return 1;
  return ctx.num_threads;
}

// Makes OpenBLAS single-threaded (it keeps that setting process-wide): the CPU backend runs one
// OpenMP thread pool and gemm() splits large products over ctx.num_threads itself. main (or a
// benchmark) calls this once after building the RunContext.
void cpu_backend_init(const RunContext& ctx);

}  // namespace moeasr
