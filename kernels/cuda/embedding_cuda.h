// kernels/cuda/embedding_cuda.h — the CUDA twin of kernels/cpu/embedding.h: torch.nn.Embedding
// forward (row gather) and backward (deterministic scatter-add into the fp32 table gradient).
// Dims: N lookups, V vocabulary rows, D embedding dim. The table is [V, D] as in PyTorch state dicts.
//
// Dtypes: T in {float, __nv_bfloat16} for the table copy, out and dout (bf16 = the bf16 copy of the
// parameters the forward reads); dtable is always the fp32 parameter gradient, added in fp32.
// Gradient convention: dtable accumulates (+=). Determinism: no atomics. Each CUDA block owns one
// table row (and a slice of its columns), scans all N ids in increasing n, and adds the matching
// dout rows into a register that starts from dtable's old value, so every element receives its
// additions in increasing n, exactly the CPU op's order: with T = float the result equals the CPU op
// bit for bit. Cost: V * ceil(D / 128) blocks, each reading all N ids (fine for a decoder embedding,
// V ~ 5000, N ~ a few thousand).
//
// Differences from the CPU op: ids live on the device and are not CHECKed on the host (that would need
// a host sync). An id outside [0, V) gives a NaN output row in the forward and is ignored by the
// backward. No host synchronisation.
#pragma once

#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

template <class T>
void embedding_forward_cuda(T* out,              // [N, D] device
                            const int32_t* ids,  // [N] device
                            const T* table,      // [V, D] device
                            int64_t n, int64_t vocab, int64_t dim, const RunContext& ctx);

// dtable[ids[n], :] += dout[n, :] for n = 0 .. N-1 in order (fp32 accumulation).
template <class T>
void embedding_backward_cuda(float* dtable,       // [V, D] device, accumulated
                             const T* dout,       // [N, D] device
                             const int32_t* ids,  // [N] device
                             int64_t n, int64_t vocab, int64_t dim, const RunContext& ctx);

}  // namespace moeasr
