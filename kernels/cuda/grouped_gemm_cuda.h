// kernels/cuda/grouped_gemm_cuda.h — the expert GEMMs of the MoE FFN on permuted rows: for every
// expert e, its rows [off[e], off[e+1]) of X go through its own Linear (torch.nn.Linear semantics,
// weight [Nout, K] per expert, as kernels/cpu/linear.h applied expert by expert):
//   forward   Y[off[e]:off[e+1]] = X[off[e]:off[e+1]] · W_e^T + b_e
//   backward  dX_e = dY_e · W_e (assigned),  dW_e += dY_e^T · X_e,  db_e += column sums of dY_e
// The per-expert row ranges are read from a DEVICE offsets[E+1] array (moe_permute_plan_cuda's), so
// there is no host synchronisation: kernels are launched for the host-side upper bound m_max of the
// rows (N*k) and each block finds its expert by walking the device offsets; blocks past the real row
// tiles exit at once. Rows [M, m_max) of Y and dX are never touched.
//
// Dtypes: X, Y, dY, dX, the weights and the bias are T in {float, __nv_bfloat16} (for bf16 the
// caller passes bf16 copies of the fp32 master parameters, as for linear_cuda.h); the parameter
// gradients dW and db are fp32 and accumulate. All accumulation is fp32.
//   bf16: tensor cores through WMMA bf16 m16n16k16, block tile 128x128x32, 8 warps of 64x32.
//   fp32: a plain SIMT tiled kernel, block tile 64x64x16, 4x4 outputs per thread, fmaf in fp32
//         (for tests and small models; not fast).
// Scheduling: forward and dX use a tile list over the row tiles of each expert (grid.x =
// ceil(m_max/TM) + E, grid.y over output column tiles). dW uses one block per (expert, Nout tile,
// K tile) that loops over all of the expert's rows in order: a deterministic reduction with no
// float atomics (every dW element is read-modified-written by one thread). db uses one block per
// (expert, 32 columns) with 32 row groups reduced in a fixed order in shared memory. No atomics.
//
// Efficiency, honestly: the bf16 kernel is a plain WMMA kernel (no wgmma, no TMA, no cp.async, one
// shared-memory stage): each thread fetches its share of the next 128x32 / 32x128 operand tiles into
// registers while the warps run the current tile's MMAs, then stores them to padded shared memory
// (two __syncthreads per k-step). It uses 168 registers per thread, so one 256-thread block per SM.
// Expect roughly 20-40% of cuBLASLt's bf16 throughput on an H100/H200; this is a correct, simple
// baseline to tune (cp.async multi-stage pipeline, 2 blocks/SM, wgmma), not a tuned kernel.
// The dW kernel has E*ceil(Nout/128)*ceil(K/128) blocks, each looping over all M_e rows: enough
// parallelism only when that product is in the hundreds (512 for the d512/ffn2048/8-expert shapes);
// for few, small experts with many rows it underfills the GPU (a deterministic split-K over row
// chunks with a fixed-order second pass would fix that). The fp32 path is for tests and small models.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

template <class T>
void grouped_gemm_forward_cuda(T* y,                           // [M, Nout] (capacity m_max rows)
                               const T* x,                     // [M, K]
                               const T* weight,                // [E, Nout, K]
                               const T* bias,                  // [E, Nout] or null
                               const int64_t* expert_offsets,  // [E + 1] device, offsets[E] = M <= m_max
                               int64_t m_max, int64_t n_experts, int64_t in_features, int64_t out_features,
                               const RunContext& ctx);

template <class T>
void grouped_gemm_backward_cuda(T* dx,                          // [M, K] assigned; null to skip
                                float* dweight,                 // [E, Nout, K] accumulated; null to skip
                                float* dbias,                   // [E, Nout] accumulated; null to skip
                                const T* dy,                    // [M, Nout]
                                const T* x,                     // [M, K]
                                const T* weight,                // [E, Nout, K]
                                const int64_t* expert_offsets,  // [E + 1] device
                                int64_t m_max, int64_t n_experts, int64_t in_features, int64_t out_features,
                                const RunContext& ctx);

}  // namespace moeasr
