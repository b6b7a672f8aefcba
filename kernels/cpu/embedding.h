// kernels/cpu/embedding.h — embedding lookup as torch.nn.Embedding (no padding_idx, no max_norm):
// out[n] = table[ids[n]]; the table is [V, D] as in PyTorch state dicts (WeNet's decoder `embed.0`).
// Dims: N lookups, V vocabulary rows, D embedding dim.
// Gradient convention: dtable accumulates (+=). Repeated ids add up; the additions into each table
// element happen in increasing n, whatever the thread count (threads split the D columns, so no two
// threads ever add into the same element).
#pragma once

#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

// Requires 0 <= ids[n] < V (CHECK).
template <class T>
void embedding_forward(T* out,              // [N, D]
                       const int32_t* ids,  // [N]
                       const T* table,      // [V, D]
                       int64_t n, int64_t vocab, int64_t dim, const RunContext& ctx);

// dtable[ids[n], :] += dout[n, :] for n = 0 .. N-1 in order.
template <class T>
void embedding_backward(T* dtable,           // [V, D] accumulated
                        const T* dout,       // [N, D]
                        const int32_t* ids,  // [N]
                        int64_t n, int64_t vocab, int64_t dim, const RunContext& ctx);

}  // namespace moeasr
