// kernels/cuda/elementwise_cuda.h — the first CUDA op, the build plumbing's proof: the residual add
// out = x + alpha * y of kernels/cpu/elementwise.h, on device pointers, on ctx.cuda_stream.
// The real CUDA op set (bf16 storage, fp32 accumulation) comes with the CUDA backend issue.
#pragma once

#include <cstdint>

#include "core/run_context.h"

namespace moeasr {

void residual_add_forward_cuda(float* out,      // [n] device
                               const float* x,  // [n] device
                               const float* y,  // [n] device
                               float alpha, int64_t n, const RunContext& ctx);

}  // namespace moeasr
