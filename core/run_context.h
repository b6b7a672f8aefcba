// core/run_context.h — RunContext: everything an op or layer needs from its surroundings, built once
// in main (or a test) and passed down explicitly (no hidden globals; DESIGN.md §2). It carries the
// device, CPU thread count, the reference-kernel switch, the arenas (device and host), the run's seed
// and rank, and opaque CUDA handles that the CUDA backend fills in.
#pragma once

#include <cstdint>

#include "core/arena.h"
#include "core/dtype.h"

namespace moeasr {

struct RunContext {
  Device device = Device::cpu;
  int num_threads = 1;                 // OpenMP threads for CPU loops, e.g. 2 on the CI machine
  bool use_reference_kernels = false;  // route CPU ops to their plain reference loops (tests)
  Arena* activations = nullptr;        // per-step activations; reset at each step
  Arena* workspace = nullptr;          // scratch inside one op
  // Host memory for the step's metadata that host code reads (lengths, targets, per-expert counts).
  // Null means `activations`, which is then host memory (the CPU backend); a GPU run sets it.
  Arena* host_metadata = nullptr;
  uint64_t seed = 0;  // the run's seed; RngKey.seed of every draw
  // CUDA backend: the matrix products (linear, grouped expert linear, attention GEMMs) take bf16
  // copies of their fp32 operands (tensor cores), accumulate in fp32 and write fp32; every other op
  // stays fp32. Off: exact fp32 GEMMs (no TF32). Ignored on the CPU.
  bool bf16_matmul = false;
  // Tests: run the GPU's MoE path for every expert local (row buffers of the bound N*k, the routed
  // row count and per-expert counts never read back inside the layer) on the CPU too, to check that it
  // equals the counted path. The CUDA backend takes that path whenever EP = 1.
  bool force_moe_device_sizes = false;
  int rank = 0;  // this process in the world communicator
  int world = 1;
  // CUDA backend handles (cudaStream_t, cublasLtHandle_t, cudnnHandle_t); opaque here so that core
  // and the CPU kernels need no CUDA headers.
  void* cuda_stream = nullptr;
  void* cublaslt_handle = nullptr;
  void* cudnn_handle = nullptr;
};

}  // namespace moeasr
