// kernels/ops.cc — the routing of kernels/ops.h: the CPU op when ctx.device is cpu, else its CUDA twin
// (float and bf16, CUDA builds only), with scratch for the CUDA ops from ctx.activations.
#include "kernels/ops.h"

#include <cstring>
#include <type_traits>
#include <vector>

#include "core/arena.h"
#include "core/check.h"
#include "kernels/cpu/ctc_loss.h"
#include "kernels/cpu/dropout.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/grouped_linear.h"
#include "kernels/cpu/label_smoothing_loss.h"
#include "kernels/cpu/layout.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/masks.h"
#include "kernels/cpu/moe_dispatch.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/optimizer.h"
#include "kernels/cpu/softmax.h"

#if MOEASR_WITH_CUDA
#include <cuda_runtime.h>

#include "kernels/cuda/conv_cuda.h"
#include "kernels/cuda/ctc_loss_cuda.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dropout_cuda.h"
#include "kernels/cuda/elementwise_cuda.h"
#include "kernels/cuda/embedding_cuda.h"
#include "kernels/cuda/gemm_cuda.h"
#include "kernels/cuda/grouped_gemm_cuda.h"
#include "kernels/cuda/label_smoothing_loss_cuda.h"
#include "kernels/cuda/layout_cuda.h"
#include "kernels/cuda/linear_cuda.h"
#include "kernels/cuda/masks_cuda.h"
#include "kernels/cuda/moe_dispatch_cuda.h"
#include "kernels/cuda/norm_cuda.h"
#include "kernels/cuda/optimizer_cuda.h"
#include "kernels/cuda/softmax_cuda.h"
#endif

namespace moeasr::op {
namespace {

[[noreturn]] void fail_on_device(const char* op, const char* why) {
  CHECK(false) << "op " << op << " on the CUDA device: " << why;
  __builtin_unreachable();
}

// `bytes` of scratch in the memory of ctx.device, from the step's activation arena.
[[maybe_unused]] void* device_scratch(const RunContext& ctx, size_t bytes) {
  CHECK(ctx.activations != nullptr) << "RunContext.activations is not set (ops take their scratch from it)";
  return bytes == 0 ? nullptr : ctx.activations->allocate_bytes(static_cast<int64_t>(bytes));
}

template <class T>
T* host_scratch(const RunContext& ctx, int64_t n) {
  CHECK(ctx.activations != nullptr) << "RunContext.activations is not set (ops take their scratch from it)";
  return ctx.activations->allocate_array<T>(n);
}

// Elements spanned by a strided-batched GEMM operand of `rows` x `cols` (as stored, row stride ld).
int64_t operand_extent(int64_t rows, int64_t cols, int64_t ld, int64_t stride, int64_t batch) {
  if (rows <= 0 || cols <= 0 || batch <= 0) return 0;
  return (batch - 1) * stride + (rows - 1) * ld + cols;
}

// bf16 tensors on the CPU: the bf16 model's reference path (CI runs U2ppModel<bf16> through it; the
// GPU's bf16 kernels compute the same way). Each bf16 array an op reads or writes is widened into fp32
// scratch from ctx.activations, the fp32 CPU op runs, and every array it wrote is rounded back to bf16
// (nearest even): one rounding per stored element, fp32 inside, as the CUDA twins. An array passed
// twice (in place) maps to one scratch array, and outputs are widened too, so in-place and
// accumulating calls (beta = 1, add_scaled_inplace) see their old contents.
class Bf16OnCpu {
 public:
  explicit Bf16OnCpu(const RunContext& ctx) : ctx_(ctx) {}
  Bf16OnCpu(const Bf16OnCpu&) = delete;
  Bf16OnCpu& operator=(const Bf16OnCpu&) = delete;

  // `n` elements of a bf16 input as fp32 (null stays null).
  const float* in(const bf16* array, int64_t n) { return map(array, n, false); }
  // `n` elements of a bf16 output (read too: in place / accumulated) as fp32; rounded back by finish().
  float* out(bf16* array, int64_t n) { return map(array, n, true); }
  // Rounds every output back into its bf16 array.
  void finish() {
    for (const Mapping& m : mappings_) {
      if (!m.written) continue;
      bf16* dst = const_cast<bf16*>(m.array);
      for (int64_t i = 0; i < m.n; ++i) dst[i] = bf16(m.scratch[i]);
    }
  }

 private:
  struct Mapping {
    const bf16* array;
    float* scratch;
    int64_t n;
    bool written;
  };
  float* map(const bf16* array, int64_t n, bool written) {
    if (array == nullptr) return nullptr;
    CHECK_GE(n, 0);
    for (Mapping& m : mappings_) {
      if (m.array != array) continue;
      CHECK_EQ(m.n, n) << "a bf16 array passed twice to one op with two sizes";
      m.written = m.written || written;
      return m.scratch;
    }
    float* scratch = host_scratch<float>(ctx_, n);
    for (int64_t i = 0; i < n; ++i) scratch[i] = static_cast<float>(array[i]);
    mappings_.push_back(Mapping{array, scratch, n, written});
    return scratch;
  }

  const RunContext& ctx_;
  std::vector<Mapping> mappings_;
};

#if MOEASR_WITH_CUDA
// ctx.bf16_matmul: bf16 copies of fp32 operands in the activation arena (round to nearest even).
const __nv_bfloat16* bf16_copy(const float* x, int64_t n, const RunContext& ctx) {
  if (n <= 0) return nullptr;
  auto* out =
      static_cast<__nv_bfloat16*>(device_scratch(ctx, static_cast<size_t>(n) * sizeof(__nv_bfloat16)));
  cast_f32_to_bf16_cuda(out, x, n, ctx);
  return out;
}

__nv_bfloat16* bf16_buffer(int64_t n, const RunContext& ctx) {
  return n <= 0 ? nullptr
                : static_cast<__nv_bfloat16*>(
                      device_scratch(ctx, static_cast<size_t>(n) * sizeof(__nv_bfloat16)));
}

void to_f32(float* out, const __nv_bfloat16* x, int64_t n, const RunContext& ctx) {
  if (n > 0 && out != nullptr) cast_bf16_to_f32_cuda(out, x, n, ctx);
}

// A pointer as the CUDA twins take it: moeasr::bf16 (host code's name for the 16 bits) becomes
// __nv_bfloat16 (same size and layout); every other pointer passes through.
static_assert(sizeof(bf16) == sizeof(__nv_bfloat16) && alignof(bf16) == alignof(__nv_bfloat16));
template <class U>
U* dev(U* p) {
  return p;
}
inline __nv_bfloat16* dev(bf16* p) {
  return reinterpret_cast<__nv_bfloat16*>(p);
}
inline const __nv_bfloat16* dev(const bf16* p) {
  return reinterpret_cast<const __nv_bfloat16*>(p);
}
// The element type the CUDA twins are instantiated for.
template <class T>
using DeviceT = std::conditional_t<std::is_same_v<T, bf16>, __nv_bfloat16, T>;
// A value of Accum<T> as a DeviceT<T> (bf16: rounded to nearest even).
template <class T>
DeviceT<T> device_value(Accum<T> value) {
  if constexpr (std::is_same_v<T, bf16>) {
    __nv_bfloat16_raw raw;
    raw.x = bf16(value).bits;
    return __nv_bfloat16(raw);
  } else {
    return value;
  }
}

#endif

}  // namespace

// The CPU op for float and double (bf16 takes MOEASR_BF16_ON_CPU before it).
#define MOEASR_OP_ON_CPU(T, name, ...)                                     \
  do {                                                                     \
    if (ctx.device == Device::cpu) {                                       \
      if constexpr (!std::is_same_v<T, bf16>) {                            \
        __VA_ARGS__;                                                       \
      } else {                                                             \
        CHECK(false) << "op " << name << ": no CPU path for bf16 tensors"; \
      }                                                                    \
    }                                                                      \
  } while (0)

// bf16 on the CPU: the op on fp32 copies (Bf16OnCpu). `call` names the fp32 routing op and wraps each
// bf16 pointer in w.in / w.out with its element count.
#define MOEASR_BF16_ON_CPU(T, ...)           \
  do {                                       \
    if constexpr (std::is_same_v<T, bf16>) { \
      if (ctx.device == Device::cpu) {       \
        Bf16OnCpu w(ctx);                    \
        __VA_ARGS__;                         \
        w.finish();                          \
        return;                              \
      }                                      \
    }                                        \
  } while (0)

#if MOEASR_WITH_CUDA
// The CUDA twin for float and bf16; double on the device is refused.
#define MOEASR_OP_ON_CUDA(T, name, ...)                                                                   \
  do {                                                                                                    \
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, bf16>) {                                  \
      __VA_ARGS__                                                                                         \
    } else {                                                                                              \
      fail_on_device(name, "only float and bf16 tensors run on the GPU (double is for gradient checks)"); \
    }                                                                                                     \
  } while (0)
#else
#define MOEASR_OP_ON_CUDA(T, name, ...) \
  fail_on_device(name, "this build has no CUDA backend (configure with -DMOEASR_CUDA=ON)")
#endif

template <class T>
void add_forward(T* out, const T* a, const T* b, int64_t n, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::add_forward(w.out(out, n), w.in(a, n), w.in(b, n), n, ctx));
  MOEASR_OP_ON_CPU(T, "add_forward", return moeasr::add_forward(out, a, b, n, ctx));
  MOEASR_OP_ON_CUDA(T, "add_forward", { add_forward_cuda(dev(out), dev(a), dev(b), n, ctx); });
}

template <class T>
void add_backward(T* da, T* db, const T* dout, int64_t n, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::add_backward(w.out(da, n), w.out(db, n), w.in(dout, n), n, ctx));
  MOEASR_OP_ON_CPU(T, "add_backward", return moeasr::add_backward(da, db, dout, n, ctx));
  MOEASR_OP_ON_CUDA(T, "add_backward", { add_backward_cuda(dev(da), dev(db), dev(dout), n, ctx); });
}

template <class T>
void scale_forward(T* out, const T* x, Accum<T> alpha, int64_t n, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::scale_forward(w.out(out, n), w.in(x, n), alpha, n, ctx));
  MOEASR_OP_ON_CPU(T, "scale_forward", return moeasr::scale_forward(out, x, alpha, n, ctx));
  MOEASR_OP_ON_CUDA(T, "scale_forward", { scale_forward_cuda(dev(out), dev(x), alpha, n, ctx); });
}

template <class T>
void scale_backward(T* dx, const T* dout, Accum<T> alpha, int64_t n, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::scale_backward(w.out(dx, n), w.in(dout, n), alpha, n, ctx));
  MOEASR_OP_ON_CPU(T, "scale_backward", return moeasr::scale_backward(dx, dout, alpha, n, ctx));
  MOEASR_OP_ON_CUDA(T, "scale_backward", { scale_backward_cuda(dev(dx), dev(dout), alpha, n, ctx); });
}

template <class T>
void residual_add_forward(T* out, const T* x, const T* y, Accum<T> alpha, int64_t n, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::residual_add_forward(w.out(out, n), w.in(x, n), w.in(y, n), alpha, n, ctx));
  MOEASR_OP_ON_CPU(T, "residual_add_forward", return moeasr::residual_add_forward(out, x, y, alpha, n, ctx));
  MOEASR_OP_ON_CUDA(T, "residual_add_forward",
                    { residual_add_forward_cuda(dev(out), dev(x), dev(y), alpha, n, ctx); });
}

template <class T>
void residual_add_backward(T* dx, T* dy, const T* dout, Accum<T> alpha, int64_t n, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::residual_add_backward(w.out(dx, n), w.out(dy, n), w.in(dout, n), alpha, n, ctx));
  MOEASR_OP_ON_CPU(T, "residual_add_backward",
                   return moeasr::residual_add_backward(dx, dy, dout, alpha, n, ctx));
  MOEASR_OP_ON_CUDA(T, "residual_add_backward",
                    { residual_add_backward_cuda(dev(dx), dev(dy), dev(dout), alpha, n, ctx); });
}

template <class T>
void add_scaled_inplace(T* acc, const T* x, Accum<T> alpha, int64_t n, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::add_scaled_inplace(w.out(acc, n), w.in(x, n), alpha, n, ctx));
  MOEASR_OP_ON_CPU(T, "add_scaled_inplace", return moeasr::add_scaled_inplace(acc, x, alpha, n, ctx));
  MOEASR_OP_ON_CUDA(T, "add_scaled_inplace", { add_scaled_inplace_cuda(dev(acc), dev(x), alpha, n, ctx); });
}

template <class T>
void relu_forward(T* out, const T* x, int64_t n, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::relu_forward(w.out(out, n), w.in(x, n), n, ctx));
  MOEASR_OP_ON_CPU(T, "relu_forward", return moeasr::relu_forward(out, x, n, ctx));
  MOEASR_OP_ON_CUDA(T, "relu_forward", { relu_forward_cuda(dev(out), dev(x), n, ctx); });
}

template <class T>
void relu_backward(T* dx, const T* dout, const T* x, int64_t n, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::relu_backward(w.out(dx, n), w.in(dout, n), w.in(x, n), n, ctx));
  MOEASR_OP_ON_CPU(T, "relu_backward", return moeasr::relu_backward(dx, dout, x, n, ctx));
  MOEASR_OP_ON_CUDA(T, "relu_backward", { relu_backward_cuda(dev(dx), dev(dout), dev(x), n, ctx); });
}

template <class T>
void silu_forward(T* out, const T* x, int64_t n, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::silu_forward(w.out(out, n), w.in(x, n), n, ctx));
  MOEASR_OP_ON_CPU(T, "silu_forward", return moeasr::silu_forward(out, x, n, ctx));
  MOEASR_OP_ON_CUDA(T, "silu_forward", { silu_forward_cuda(dev(out), dev(x), n, ctx); });
}

template <class T>
void silu_backward(T* dx, const T* dout, const T* x, int64_t n, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::silu_backward(w.out(dx, n), w.in(dout, n), w.in(x, n), n, ctx));
  MOEASR_OP_ON_CPU(T, "silu_backward", return moeasr::silu_backward(dx, dout, x, n, ctx));
  MOEASR_OP_ON_CUDA(T, "silu_backward", { silu_backward_cuda(dev(dx), dev(dout), dev(x), n, ctx); });
}

template <class T>
void sigmoid_forward(T* out, const T* x, int64_t n, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::sigmoid_forward(w.out(out, n), w.in(x, n), n, ctx));
  MOEASR_OP_ON_CPU(T, "sigmoid_forward", return moeasr::sigmoid_forward(out, x, n, ctx));
  MOEASR_OP_ON_CUDA(T, "sigmoid_forward", { sigmoid_forward_cuda(dev(out), dev(x), n, ctx); });
}

template <class T>
void sigmoid_backward(T* dx, const T* dout, const T* out, int64_t n, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::sigmoid_backward(w.out(dx, n), w.in(dout, n), w.in(out, n), n, ctx));
  MOEASR_OP_ON_CPU(T, "sigmoid_backward", return moeasr::sigmoid_backward(dx, dout, out, n, ctx));
  MOEASR_OP_ON_CUDA(T, "sigmoid_backward", { sigmoid_backward_cuda(dev(dx), dev(dout), dev(out), n, ctx); });
}

template <class T>
void glu_forward(T* out, const T* x, int64_t n, int64_t c, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::glu_forward(w.out(out, n * c), w.in(x, 2 * n * c), n, c, ctx));
  MOEASR_OP_ON_CPU(T, "glu_forward", return moeasr::glu_forward(out, x, n, c, ctx));
  MOEASR_OP_ON_CUDA(T, "glu_forward", { glu_forward_cuda(dev(out), dev(x), n, c, ctx); });
}

template <class T>
void glu_backward(T* dx, const T* dout, const T* x, int64_t n, int64_t c, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(
      T, op::glu_backward(w.out(dx, 2 * n * c), w.in(dout, n * c), w.in(x, 2 * n * c), n, c, ctx));
  MOEASR_OP_ON_CPU(T, "glu_backward", return moeasr::glu_backward(dx, dout, x, n, c, ctx));
  MOEASR_OP_ON_CUDA(T, "glu_backward", { glu_backward_cuda(dev(dx), dev(dout), dev(x), n, c, ctx); });
}

template <class T>
void fill_constant(T* out, Accum<T> value, int64_t n, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::fill_constant(w.out(out, n), value, n, ctx));
  MOEASR_OP_ON_CPU(T, "fill_constant", return moeasr::fill_constant(out, value, n, ctx));
  MOEASR_OP_ON_CUDA(T, "fill_constant", { fill_constant_cuda(dev(out), device_value<T>(value), n, ctx); });
}

template <class T>
void copy_elements(T* dst, const T* src, int64_t n, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::copy_elements(w.out(dst, n), w.in(src, n), n, ctx));
  MOEASR_OP_ON_CPU(T, "copy_elements", return moeasr::copy_elements(dst, src, n, ctx));
  MOEASR_OP_ON_CUDA(T, "copy_elements", { copy_elements_cuda(dev(dst), dev(src), n, ctx); });
}

template <class T>
void transpose_middle_forward(T* dst, const T* src, int64_t outer, int64_t rows_i, int64_t cols_j,
                              int64_t inner, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::transpose_middle_forward(w.out(dst, outer * rows_i * cols_j * inner),
                                                     w.in(src, outer * rows_i * cols_j * inner), outer,
                                                     rows_i, cols_j, inner, ctx));
  MOEASR_OP_ON_CPU(T, "transpose_middle_forward",
                   return moeasr::transpose_middle_forward(dst, src, outer, rows_i, cols_j, inner, ctx));
  MOEASR_OP_ON_CUDA(T, "transpose_middle_forward", {
    transpose_middle_forward_cuda(dev(dst), dev(src), outer, rows_i, cols_j, inner, ctx);
  });
}

template <class T>
void transpose_middle_backward(T* dsrc, const T* ddst, int64_t outer, int64_t rows_i, int64_t cols_j,
                               int64_t inner, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::transpose_middle_backward(w.out(dsrc, outer * rows_i * cols_j * inner),
                                                      w.in(ddst, outer * rows_i * cols_j * inner), outer,
                                                      rows_i, cols_j, inner, ctx));
  MOEASR_OP_ON_CPU(T, "transpose_middle_backward",
                   return moeasr::transpose_middle_backward(dsrc, ddst, outer, rows_i, cols_j, inner, ctx));
  MOEASR_OP_ON_CUDA(T, "transpose_middle_backward", {
    transpose_middle_backward_cuda(dev(dsrc), dev(ddst), outer, rows_i, cols_j, inner, ctx);
  });
}

template <class T>
void split_heads_forward(T* dst, const T* src, const Accum<T>* bias, int64_t batch, int64_t steps,
                         int64_t heads, int64_t d_k, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::split_heads_forward(w.out(dst, batch * steps * heads * d_k),
                                                w.in(src, batch * steps * heads * d_k), bias, batch, steps,
                                                heads, d_k, ctx));
  MOEASR_OP_ON_CPU(T, "split_heads_forward",
                   return moeasr::split_heads_forward(dst, src, bias, batch, steps, heads, d_k, ctx));
  MOEASR_OP_ON_CUDA(T, "split_heads_forward", {
    split_heads_forward_cuda(dev(dst), dev(src), dev(bias), batch, steps, heads, d_k, ctx);
  });
}

template <class T>
void split_heads_backward(T* dsrc, Accum<T>* dbias, const T* dout, int64_t batch, int64_t steps,
                          int64_t heads, int64_t d_k, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(
      T, op::split_heads_backward(w.out(dsrc, batch * steps * heads * d_k), dbias,
                                  w.in(dout, batch * steps * heads * d_k), batch, steps, heads, d_k, ctx));
  MOEASR_OP_ON_CPU(T, "split_heads_backward",
                   return moeasr::split_heads_backward(dsrc, dbias, dout, batch, steps, heads, d_k, ctx));
  MOEASR_OP_ON_CUDA(T, "split_heads_backward", {
    split_heads_backward_cuda(dev(dsrc), dev(dbias), dev(dout), batch, steps, heads, d_k, ctx);
  });
}

template <class T>
void masked_pad_rows_forward(T* dst, const T* src, const uint8_t* mask, int64_t batch, int64_t time,
                             int64_t lpad, int64_t channels, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::masked_pad_rows_forward(w.out(dst, batch * (lpad + time) * channels),
                                                    w.in(src, batch * time * channels), mask, batch, time,
                                                    lpad, channels, ctx));
  MOEASR_OP_ON_CPU(T, "masked_pad_rows_forward",
                   return moeasr::masked_pad_rows_forward(dst, src, mask, batch, time, lpad, channels, ctx));
  MOEASR_OP_ON_CUDA(T, "masked_pad_rows_forward", {
    masked_pad_rows_forward_cuda(dev(dst), dev(src), dev(mask), batch, time, lpad, channels, ctx);
  });
}

template <class T>
void masked_pad_rows_backward(T* dst, const T* src, const uint8_t* mask, int64_t batch, int64_t time,
                              int64_t lpad, int64_t channels, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::masked_pad_rows_backward(w.out(dst, batch * time * channels),
                                                     w.in(src, batch * (lpad + time) * channels), mask, batch,
                                                     time, lpad, channels, ctx));
  MOEASR_OP_ON_CPU(T, "masked_pad_rows_backward",
                   return moeasr::masked_pad_rows_backward(dst, src, mask, batch, time, lpad, channels, ctx));
  MOEASR_OP_ON_CUDA(T, "masked_pad_rows_backward", {
    masked_pad_rows_backward_cuda(dev(dst), dev(src), dev(mask), batch, time, lpad, channels, ctx);
  });
}

template <class T>
void masked_crop_rows_forward(T* dst, const T* src, const uint8_t* mask, int64_t batch, int64_t time,
                              int64_t lpad, int64_t channels, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::masked_crop_rows_forward(w.out(dst, batch * time * channels),
                                                     w.in(src, batch * (lpad + time) * channels), mask, batch,
                                                     time, lpad, channels, ctx));
  MOEASR_OP_ON_CPU(T, "masked_crop_rows_forward",
                   return moeasr::masked_crop_rows_forward(dst, src, mask, batch, time, lpad, channels, ctx));
  MOEASR_OP_ON_CUDA(T, "masked_crop_rows_forward", {
    masked_crop_rows_forward_cuda(dev(dst), dev(src), dev(mask), batch, time, lpad, channels, ctx);
  });
}

template <class T>
void masked_crop_rows_backward(T* dst, const T* src, const uint8_t* mask, int64_t batch, int64_t time,
                               int64_t lpad, int64_t channels, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::masked_crop_rows_backward(w.out(dst, batch * (lpad + time) * channels),
                                                      w.in(src, batch * time * channels), mask, batch, time,
                                                      lpad, channels, ctx));
  MOEASR_OP_ON_CPU(
      T, "masked_crop_rows_backward",
      return moeasr::masked_crop_rows_backward(dst, src, mask, batch, time, lpad, channels, ctx));
  MOEASR_OP_ON_CUDA(T, "masked_crop_rows_backward", {
    masked_crop_rows_backward_cuda(dev(dst), dev(src), dev(mask), batch, time, lpad, channels, ctx);
  });
}

template <class T>
void cmvn_normalize_forward(T* out, const T* x, const Accum<T>* mean, const Accum<T>* istd, int64_t rows,
                            int64_t feat, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::cmvn_normalize_forward(w.out(out, rows * feat), w.in(x, rows * feat), mean, istd,
                                                   rows, feat, ctx));
  MOEASR_OP_ON_CPU(T, "cmvn_normalize_forward",
                   return moeasr::cmvn_normalize_forward(out, x, mean, istd, rows, feat, ctx));
  MOEASR_OP_ON_CUDA(T, "cmvn_normalize_forward", {
    cmvn_normalize_forward_cuda(dev(out), dev(x), dev(mean), dev(istd), rows, feat, ctx);
  });
}

template <class T>
void scale_add_table_forward(T* out, const T* x, const Accum<T>* table, Accum<T> scale, int64_t batch,
                             int64_t time, int64_t d, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::scale_add_table_forward(w.out(out, batch * time * d), w.in(x, batch * time * d),
                                                    table, scale, batch, time, d, ctx));
  MOEASR_OP_ON_CPU(T, "scale_add_table_forward",
                   return moeasr::scale_add_table_forward(out, x, table, scale, batch, time, d, ctx));
  MOEASR_OP_ON_CUDA(T, "scale_add_table_forward", {
    scale_add_table_forward_cuda(dev(out), dev(x), dev(table), scale, batch, time, d, ctx);
  });
}

template <class T>
void scale_add_table_backward(T* dx, const T* dout, Accum<T> scale, int64_t batch, int64_t time, int64_t d,
                              const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(
      T, op::scale_add_table_backward(w.out(dx, batch * time * d), w.in(dout, batch * time * d), scale, batch,
                                      time, d, ctx));
  MOEASR_OP_ON_CPU(T, "scale_add_table_backward",
                   return moeasr::scale_add_table_backward(dx, dout, scale, batch, time, d, ctx));
  MOEASR_OP_ON_CUDA(T, "scale_add_table_backward",
                    { scale_add_table_backward_cuda(dev(dx), dev(dout), scale, batch, time, d, ctx); });
}

template <class To, class From>
void convert_elements(To* dst, const From* src, int64_t n, const RunContext& ctx) {
  CHECK_GE(n, 0);
  if constexpr (std::is_same_v<To, From>) {
    op::copy_elements(dst, src, n, ctx);
  } else {
    if (ctx.device == Device::cpu) {
      for (int64_t i = 0; i < n; ++i) dst[i] = To(static_cast<float>(src[i]));
      return;
    }
    MOEASR_OP_ON_CUDA(float, "convert_elements", {
      if constexpr (std::is_same_v<To, bf16>) {
        cast_f32_to_bf16_cuda(dev(dst), src, n, ctx);
      } else {
        cast_bf16_to_f32_cuda(dst, dev(src), n, ctx);
      }
    });
  }
}

template void convert_elements<float, bf16>(float*, const bf16*, int64_t, const RunContext&);
template void convert_elements<bf16, float>(bf16*, const float*, int64_t, const RunContext&);
template void convert_elements<float, float>(float*, const float*, int64_t, const RunContext&);
template void convert_elements<double, double>(double*, const double*, int64_t, const RunContext&);

template <class T>
void linear_forward(T* y, const T* x, const T* weight, const T* bias, int64_t n, int64_t in_features,
                    int64_t out_features, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::linear_forward(w.out(y, n * out_features), w.in(x, n * in_features),
                                           w.in(weight, out_features * in_features), w.in(bias, out_features),
                                           n, in_features, out_features, ctx));
  MOEASR_OP_ON_CPU(T, "linear_forward",
                   return moeasr::linear_forward(y, x, weight, bias, n, in_features, out_features, ctx));
  MOEASR_OP_ON_CUDA(T, "linear_forward", {
    if constexpr (std::is_same_v<T, float>) {
      if (ctx.bf16_matmul) {  // y [N, O] = x [N, I] . W^T [I, O] (+ b), bf16 operands, fp32 out
        gemm_ex_cuda<__nv_bfloat16, float>(
            y, nullptr, 0, bf16_copy(x, n * in_features, ctx),
            bf16_copy(weight, out_features * in_features, ctx), bias, Transpose::kNo, Transpose::kYes, n,
            out_features, in_features, 1.0f, 0.0f, in_features, in_features, out_features, 0, 0, 0, 1, ctx);
        return;
      }
    }
    linear_forward_cuda(dev(y), nullptr, 0, dev(x), dev(weight), dev(bias), n, in_features, out_features,
                        ctx);
  });
}

template <class T>
void linear_backward(T* dx, Accum<T>* dweight, Accum<T>* dbias, const T* dy, const T* x, const T* weight,
                     int64_t n, int64_t in_features, int64_t out_features, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(
      T, op::linear_backward(w.out(dx, n * in_features), dweight, dbias, w.in(dy, n * out_features),
                             w.in(x, n * in_features), w.in(weight, out_features * in_features), n,
                             in_features, out_features, ctx));
  MOEASR_OP_ON_CPU(
      T, "linear_backward",
      return moeasr::linear_backward(dx, dweight, dbias, dy, x, weight, n, in_features, out_features, ctx));
  MOEASR_OP_ON_CUDA(T, "linear_backward", {
    if constexpr (std::is_same_v<T, float>) {
      if (ctx.bf16_matmul) {
        const __nv_bfloat16* dy16 = bf16_copy(dy, n * out_features, ctx);
        if (dx != nullptr) {  // dx [N, I] = dy [N, O] . W [O, I]
          gemm_ex_cuda<__nv_bfloat16, float>(
              dx, nullptr, 0, dy16, bf16_copy(weight, out_features * in_features, ctx),
              static_cast<const float*>(nullptr), Transpose::kNo, Transpose::kNo, n, in_features,
              out_features, 1.0f, 0.0f, out_features, in_features, in_features, 0, 0, 0, 1, ctx);
        }
        if (dweight != nullptr) {  // dW [O, I] += dy^T [O, N] . x [N, I]
          gemm_ex_cuda<__nv_bfloat16, float>(dweight, nullptr, 0, dy16, bf16_copy(x, n * in_features, ctx),
                                             static_cast<const float*>(nullptr), Transpose::kYes,
                                             Transpose::kNo, out_features, in_features, n, 1.0f, 1.0f,
                                             out_features, in_features, in_features, 0, 0, 0, 1, ctx);
        }
        if (dbias != nullptr) {  // column sums of the fp32 dy (the fp32 op with only dbias asked for)
          linear_backward_cuda(static_cast<float*>(nullptr), static_cast<float*>(nullptr), dbias, nullptr, 0,
                               dy, x, weight, n, in_features, out_features, ctx);
        }
        return;
      }
    }
    linear_backward_cuda(dev(dx), dev(dweight), dev(dbias), nullptr, 0, dev(dy), dev(x), dev(weight), n,
                         in_features, out_features, ctx);
  });
}

template <class T>
void grouped_linear_forward(T* y, const T* x, const T* weight, const T* bias, const int64_t* expert_offsets,
                            int64_t m_max, int64_t n_experts, int64_t in_features, int64_t out_features,
                            const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(
      T, op::grouped_linear_forward(w.out(y, m_max * out_features), w.in(x, m_max * in_features),
                                    w.in(weight, n_experts * out_features * in_features),
                                    w.in(bias, n_experts * out_features), expert_offsets, m_max, n_experts,
                                    in_features, out_features, ctx));
  MOEASR_OP_ON_CPU(T, "grouped_linear_forward",
                   return moeasr::grouped_linear_forward(y, x, weight, bias, expert_offsets, m_max, n_experts,
                                                         in_features, out_features, ctx));
  MOEASR_OP_ON_CUDA(T, "grouped_linear_forward", {
    if constexpr (std::is_same_v<T, float>) {
      if (ctx.bf16_matmul) {  // the bf16 grouped GEMM (tensor cores) writes bf16; widened back to fp32
        __nv_bfloat16* y16 = bf16_buffer(m_max * out_features, ctx);
        grouped_gemm_forward_cuda(y16, bf16_copy(x, m_max * in_features, ctx),
                                  bf16_copy(weight, n_experts * out_features * in_features, ctx),
                                  bias != nullptr ? bf16_copy(bias, n_experts * out_features, ctx) : nullptr,
                                  expert_offsets, m_max, n_experts, in_features, out_features, ctx);
        to_f32(y, y16, m_max * out_features, ctx);
        return;
      }
    }
    grouped_gemm_forward_cuda(dev(y), dev(x), dev(weight), dev(bias), dev(expert_offsets), m_max, n_experts,
                              in_features, out_features, ctx);
  });
}

template <class T>
void grouped_linear_backward(T* dx, Accum<T>* dweight, Accum<T>* dbias, const T* dy, const T* x,
                             const T* weight, const int64_t* expert_offsets, int64_t m_max, int64_t n_experts,
                             int64_t in_features, int64_t out_features, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(
      T, op::grouped_linear_backward(w.out(dx, m_max * in_features), dweight, dbias,
                                     w.in(dy, m_max * out_features), w.in(x, m_max * in_features),
                                     w.in(weight, n_experts * out_features * in_features), expert_offsets,
                                     m_max, n_experts, in_features, out_features, ctx));
  MOEASR_OP_ON_CPU(T, "grouped_linear_backward",
                   return moeasr::grouped_linear_backward(dx, dweight, dbias, dy, x, weight, expert_offsets,
                                                          m_max, n_experts, in_features, out_features, ctx));
  MOEASR_OP_ON_CUDA(T, "grouped_linear_backward", {
    if constexpr (std::is_same_v<T, float>) {
      if (ctx.bf16_matmul) {  // bf16 operands; dW, db accumulate in fp32; dx widened back to fp32
        __nv_bfloat16* dx16 = dx != nullptr ? bf16_buffer(m_max * in_features, ctx) : nullptr;
        grouped_gemm_backward_cuda(dx16, dweight, dbias, bf16_copy(dy, m_max * out_features, ctx),
                                   bf16_copy(x, m_max * in_features, ctx),
                                   bf16_copy(weight, n_experts * out_features * in_features, ctx),
                                   expert_offsets, m_max, n_experts, in_features, out_features, ctx);
        to_f32(dx, dx16, m_max * in_features, ctx);
        return;
      }
    }
    grouped_gemm_backward_cuda(dev(dx), dev(dweight), dev(dbias), dev(dy), dev(x), dev(weight),
                               dev(expert_offsets), m_max, n_experts, in_features, out_features, ctx);
  });
}

template <class T>
void gemm_strided_batched(T* c, const T* a, const T* b, Transpose trans_a, Transpose trans_b, int64_t m,
                          int64_t n, int64_t k, Accum<T> alpha, Accum<T> beta, int64_t lda, int64_t ldb,
                          int64_t ldc, int64_t stride_a, int64_t stride_b, int64_t stride_c, int64_t batch,
                          const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::gemm_strided_batched(
                            w.out(c, operand_extent(m, n, ldc, stride_c, batch)),
                            w.in(a, operand_extent(trans_a == Transpose::kNo ? m : k,
                                                   trans_a == Transpose::kNo ? k : m, lda, stride_a, batch)),
                            w.in(b, operand_extent(trans_b == Transpose::kNo ? k : n,
                                                   trans_b == Transpose::kNo ? n : k, ldb, stride_b, batch)),
                            trans_a, trans_b, m, n, k, alpha, beta, lda, ldb, ldc, stride_a, stride_b,
                            stride_c, batch, ctx));
  MOEASR_OP_ON_CPU(T, "gemm_strided_batched",
                   return moeasr::gemm_strided_batched(c, a, b, trans_a, trans_b, m, n, k, alpha, beta, lda,
                                                       ldb, ldc, stride_a, stride_b, stride_c, batch, ctx));
  MOEASR_OP_ON_CUDA(T, "gemm_strided_batched", {
    if constexpr (std::is_same_v<T, float>) {
      if (ctx.bf16_matmul) {  // bf16 copies of the spans A and B cover (same layout), fp32 C and beta
        const int64_t a_rows = trans_a == Transpose::kNo ? m : k, a_cols = trans_a == Transpose::kNo ? k : m;
        const int64_t b_rows = trans_b == Transpose::kNo ? k : n, b_cols = trans_b == Transpose::kNo ? n : k;
        gemm_ex_cuda<__nv_bfloat16, float>(
            c, nullptr, 0, bf16_copy(a, operand_extent(a_rows, a_cols, lda, stride_a, batch), ctx),
            bf16_copy(b, operand_extent(b_rows, b_cols, ldb, stride_b, batch), ctx),
            static_cast<const float*>(nullptr), trans_a, trans_b, m, n, k, alpha, beta, lda, ldb, ldc,
            stride_a, stride_b, stride_c, batch, ctx);
        return;
      }
    }
    gemm_strided_batched_cuda(dev(c), nullptr, 0, dev(a), dev(b), trans_a, trans_b, m, n, k, alpha, beta, lda,
                              ldb, ldc, stride_a, stride_b, stride_c, batch, ctx);
  });
}

template <class T>
void batched_matmul_forward(T* out, const T* a, const T* b, Transpose trans_b, int64_t groups, int64_t m,
                            int64_t n, int64_t k, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::batched_matmul_forward(w.out(out, groups * m * n), w.in(a, groups * m * k),
                                                   w.in(b, groups * k * n), trans_b, groups, m, n, k, ctx));
  MOEASR_OP_ON_CPU(T, "batched_matmul_forward",
                   return moeasr::batched_matmul_forward(out, a, b, trans_b, groups, m, n, k, ctx));
  MOEASR_OP_ON_CUDA(T, "batched_matmul_forward", {
    if constexpr (std::is_same_v<T, float>) {
      if (ctx.bf16_matmul) {
        __nv_bfloat16* out16 = bf16_buffer(groups * m * n, ctx);
        batched_matmul_forward_cuda(out16, nullptr, 0, bf16_copy(a, groups * m * k, ctx),
                                    bf16_copy(b, groups * k * n, ctx), trans_b, groups, m, n, k, ctx);
        to_f32(out, out16, groups * m * n, ctx);
        return;
      }
    }
    batched_matmul_forward_cuda(dev(out), nullptr, 0, dev(a), dev(b), trans_b, groups, m, n, k, ctx);
  });
}

template <class T>
void batched_matmul_backward(T* da, T* db, const T* dout, const T* a, const T* b, Transpose trans_b,
                             int64_t groups, int64_t m, int64_t n, int64_t k, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::batched_matmul_backward(w.out(da, groups * m * k), w.out(db, groups * k * n),
                                                    w.in(dout, groups * m * n), w.in(a, groups * m * k),
                                                    w.in(b, groups * k * n), trans_b, groups, m, n, k, ctx));
  MOEASR_OP_ON_CPU(T, "batched_matmul_backward",
                   return moeasr::batched_matmul_backward(da, db, dout, a, b, trans_b, groups, m, n, k, ctx));
  MOEASR_OP_ON_CUDA(T, "batched_matmul_backward", {
    if constexpr (std::is_same_v<T, float>) {
      if (ctx.bf16_matmul) {
        __nv_bfloat16* da16 = da != nullptr ? bf16_buffer(groups * m * k, ctx) : nullptr;
        __nv_bfloat16* db16 = db != nullptr ? bf16_buffer(groups * k * n, ctx) : nullptr;
        batched_matmul_backward_cuda(da16, db16, nullptr, 0, bf16_copy(dout, groups * m * n, ctx),
                                     bf16_copy(a, groups * m * k, ctx), bf16_copy(b, groups * k * n, ctx),
                                     trans_b, groups, m, n, k, ctx);
        to_f32(da, da16, groups * m * k, ctx);
        to_f32(db, db16, groups * k * n, ctx);
        return;
      }
    }
    batched_matmul_backward_cuda(dev(da), dev(db), nullptr, 0, dev(dout), dev(a), dev(b), trans_b, groups, m,
                                 n, k, ctx);
  });
}

template <class T>
void softmax_forward(T* y, const T* x, const uint8_t* mask, int64_t rows, int64_t cols,
                     const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T,
                     op::softmax_forward(w.out(y, rows * cols), w.in(x, rows * cols), mask, rows, cols, ctx));
  MOEASR_OP_ON_CPU(T, "softmax_forward", return moeasr::softmax_forward(y, x, mask, rows, cols, ctx));
  MOEASR_OP_ON_CUDA(T, "softmax_forward",
                    { softmax_forward_cuda(dev(y), dev(x), dev(mask), rows, cols, ctx); });
}

template <class T>
void softmax_backward(T* dx, const T* dy, const T* y, int64_t rows, int64_t cols, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::softmax_backward(w.out(dx, rows * cols), w.in(dy, rows * cols),
                                             w.in(y, rows * cols), rows, cols, ctx));
  MOEASR_OP_ON_CPU(T, "softmax_backward", return moeasr::softmax_backward(dx, dy, y, rows, cols, ctx));
  MOEASR_OP_ON_CUDA(T, "softmax_backward",
                    { softmax_backward_cuda(dev(dx), dev(dy), dev(y), rows, cols, ctx); });
}

template <class T>
void log_softmax_forward(T* y, const T* x, const uint8_t* mask, int64_t rows, int64_t cols,
                         const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(
      T, op::log_softmax_forward(w.out(y, rows * cols), w.in(x, rows * cols), mask, rows, cols, ctx));
  MOEASR_OP_ON_CPU(T, "log_softmax_forward", return moeasr::log_softmax_forward(y, x, mask, rows, cols, ctx));
  MOEASR_OP_ON_CUDA(T, "log_softmax_forward",
                    { log_softmax_forward_cuda(dev(y), dev(x), dev(mask), rows, cols, ctx); });
}

template <class T>
void log_softmax_backward(T* dx, const T* dy, const T* y, const uint8_t* mask, int64_t rows, int64_t cols,
                          const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::log_softmax_backward(w.out(dx, rows * cols), w.in(dy, rows * cols),
                                                 w.in(y, rows * cols), mask, rows, cols, ctx));
  MOEASR_OP_ON_CPU(T, "log_softmax_backward",
                   return moeasr::log_softmax_backward(dx, dy, y, mask, rows, cols, ctx));
  MOEASR_OP_ON_CUDA(T, "log_softmax_backward",
                    { log_softmax_backward_cuda(dev(dx), dev(dy), dev(y), dev(mask), rows, cols, ctx); });
}

template <class T>
void attention_softmax_forward(T* probs, const T* scores, const uint8_t* mask, int64_t batch, int64_t heads,
                               int64_t queries, int64_t keys, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::attention_softmax_forward(w.out(probs, batch * heads * queries * keys),
                                                      w.in(scores, batch * heads * queries * keys), mask,
                                                      batch, heads, queries, keys, ctx));
  MOEASR_OP_ON_CPU(
      T, "attention_softmax_forward",
      return moeasr::attention_softmax_forward(probs, scores, mask, batch, heads, queries, keys, ctx));
  MOEASR_OP_ON_CUDA(T, "attention_softmax_forward", {
    attention_softmax_forward_cuda(dev(probs), dev(scores), dev(mask), batch, heads, queries, keys, ctx);
  });
}

template <class T>
void attention_softmax_backward(T* dscores, const T* dprobs, const T* probs, int64_t batch, int64_t heads,
                                int64_t queries, int64_t keys, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::attention_softmax_backward(w.out(dscores, batch * heads * queries * keys),
                                                       w.in(dprobs, batch * heads * queries * keys),
                                                       w.in(probs, batch * heads * queries * keys), batch,
                                                       heads, queries, keys, ctx));
  MOEASR_OP_ON_CPU(
      T, "attention_softmax_backward",
      return moeasr::attention_softmax_backward(dscores, dprobs, probs, batch, heads, queries, keys, ctx));
  MOEASR_OP_ON_CUDA(T, "attention_softmax_backward", {
    attention_softmax_backward_cuda(dev(dscores), dev(dprobs), dev(probs), batch, heads, queries, keys, ctx);
  });
}

template <class T>
void dropout_forward(T* y, const T* x, const PhiloxStream& stream, double p, int64_t n,
                     const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::dropout_forward(w.out(y, n), w.in(x, n), stream, p, n, ctx));
  MOEASR_OP_ON_CPU(T, "dropout_forward", return moeasr::dropout_forward(y, x, stream, p, n, ctx));
  MOEASR_OP_ON_CUDA(T, "dropout_forward", { dropout_forward_cuda(dev(y), dev(x), stream, p, n, ctx); });
}

template <class T>
void dropout_backward(T* dx, const T* dy, const PhiloxStream& stream, double p, int64_t n,
                      const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::dropout_backward(w.out(dx, n), w.in(dy, n), stream, p, n, ctx));
  MOEASR_OP_ON_CPU(T, "dropout_backward", return moeasr::dropout_backward(dx, dy, stream, p, n, ctx));
  MOEASR_OP_ON_CUDA(T, "dropout_backward", { dropout_backward_cuda(dev(dx), dev(dy), stream, p, n, ctx); });
}

template <class T>
void layer_norm_forward(T* out, Accum<T>* mean, Accum<T>* rstd, const T* x, const Accum<T>* weight,
                        const Accum<T>* bias, Accum<T> eps, int64_t n, int64_t c, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(
      T, op::layer_norm_forward(w.out(out, n * c), mean, rstd, w.in(x, n * c), weight, bias, eps, n, c, ctx));
  MOEASR_OP_ON_CPU(T, "layer_norm_forward",
                   return moeasr::layer_norm_forward(out, mean, rstd, x, weight, bias, eps, n, c, ctx));
  MOEASR_OP_ON_CUDA(T, "layer_norm_forward", {
    layer_norm_forward_cuda(dev(out), dev(mean), dev(rstd), dev(x), dev(weight), dev(bias), eps, n, c, ctx);
  });
}

template <class T>
void layer_norm_backward(T* dx, Accum<T>* dweight, Accum<T>* dbias, const T* dout, const T* x,
                         const Accum<T>* mean, const Accum<T>* rstd, const Accum<T>* weight, int64_t n,
                         int64_t c, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::layer_norm_backward(w.out(dx, n * c), dweight, dbias, w.in(dout, n * c),
                                                w.in(x, n * c), mean, rstd, weight, n, c, ctx));
  MOEASR_OP_ON_CPU(
      T, "layer_norm_backward",
      return moeasr::layer_norm_backward(dx, dweight, dbias, dout, x, mean, rstd, weight, n, c, ctx));
  MOEASR_OP_ON_CUDA(T, "layer_norm_backward", {
    const size_t workspace_bytes = layer_norm_workspace_bytes(n, c);
    void* workspace = device_scratch(ctx, workspace_bytes);
    layer_norm_backward_cuda(dev(dx), dev(dweight), dev(dbias), dev(dout), dev(x), dev(mean), dev(rstd),
                             dev(weight), n, c, workspace, workspace_bytes, ctx);
  });
}

template <class T>
void batch_norm_train_forward(T* out, Accum<T>* save_mean, Accum<T>* save_rstd, Accum<T>* running_mean,
                              Accum<T>* running_var, const T* x, const Accum<T>* weight, const Accum<T>* bias,
                              Accum<T> momentum, Accum<T> eps, int64_t n, int64_t c, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(
      T, op::batch_norm_train_forward(w.out(out, n * c), save_mean, save_rstd, running_mean, running_var,
                                      w.in(x, n * c), weight, bias, momentum, eps, n, c, ctx));
  MOEASR_OP_ON_CPU(
      T, "batch_norm_train_forward",
      return moeasr::batch_norm_train_forward(out, save_mean, save_rstd, running_mean, running_var, x, weight,
                                              bias, momentum, eps, n, c, ctx));
  MOEASR_OP_ON_CUDA(T, "batch_norm_train_forward", {
    const size_t workspace_bytes = batch_norm_workspace_bytes(n, c);
    void* workspace = device_scratch(ctx, workspace_bytes);
    batch_norm_train_forward_cuda(dev(out), dev(save_mean), dev(save_rstd), dev(running_mean),
                                  dev(running_var), dev(x), dev(weight), dev(bias), momentum, eps, n, c,
                                  workspace, workspace_bytes, ctx);
  });
}

template <class T>
void batch_norm_train_backward(T* dx, Accum<T>* dweight, Accum<T>* dbias, const T* dout, const T* x,
                               const Accum<T>* save_mean, const Accum<T>* save_rstd, const Accum<T>* weight,
                               int64_t n, int64_t c, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(
      T, op::batch_norm_train_backward(w.out(dx, n * c), dweight, dbias, w.in(dout, n * c), w.in(x, n * c),
                                       save_mean, save_rstd, weight, n, c, ctx));
  MOEASR_OP_ON_CPU(T, "batch_norm_train_backward",
                   return moeasr::batch_norm_train_backward(dx, dweight, dbias, dout, x, save_mean, save_rstd,
                                                            weight, n, c, ctx));
  MOEASR_OP_ON_CUDA(T, "batch_norm_train_backward", {
    const size_t workspace_bytes = batch_norm_workspace_bytes(n, c);
    void* workspace = device_scratch(ctx, workspace_bytes);
    batch_norm_train_backward_cuda(dev(dx), dev(dweight), dev(dbias), dev(dout), dev(x), dev(save_mean),
                                   dev(save_rstd), dev(weight), n, c, workspace, workspace_bytes, ctx);
  });
}

template <class T>
void batch_norm_eval_forward(T* out, const T* x, const Accum<T>* running_mean, const Accum<T>* running_var,
                             const Accum<T>* weight, const Accum<T>* bias, Accum<T> eps, int64_t n, int64_t c,
                             const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::batch_norm_eval_forward(w.out(out, n * c), w.in(x, n * c), running_mean,
                                                    running_var, weight, bias, eps, n, c, ctx));
  MOEASR_OP_ON_CPU(T, "batch_norm_eval_forward",
                   return moeasr::batch_norm_eval_forward(out, x, running_mean, running_var, weight, bias,
                                                          eps, n, c, ctx));
  MOEASR_OP_ON_CUDA(T, "batch_norm_eval_forward", {
    batch_norm_eval_forward_cuda(dev(out), dev(x), dev(running_mean), dev(running_var), dev(weight),
                                 dev(bias), eps, n, c, ctx);
  });
}

template <class T>
void batch_norm_eval_backward(T* dx, Accum<T>* dweight, Accum<T>* dbias, const T* dout, const T* x,
                              const Accum<T>* running_mean, const Accum<T>* running_var,
                              const Accum<T>* weight, Accum<T> eps, int64_t n, int64_t c,
                              const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(
      T, op::batch_norm_eval_backward(w.out(dx, n * c), dweight, dbias, w.in(dout, n * c), w.in(x, n * c),
                                      running_mean, running_var, weight, eps, n, c, ctx));
  MOEASR_OP_ON_CPU(T, "batch_norm_eval_backward",
                   return moeasr::batch_norm_eval_backward(dx, dweight, dbias, dout, x, running_mean,
                                                           running_var, weight, eps, n, c, ctx));
  MOEASR_OP_ON_CUDA(T, "batch_norm_eval_backward", {
    const size_t workspace_bytes = batch_norm_workspace_bytes(n, c);
    void* workspace = device_scratch(ctx, workspace_bytes);
    batch_norm_eval_backward_cuda(dev(dx), dev(dweight), dev(dbias), dev(dout), dev(x), dev(running_mean),
                                  dev(running_var), dev(weight), eps, n, c, workspace, workspace_bytes, ctx);
  });
}

template <class T>
void conv2d_3x3s2_forward(T* y, const T* x, const T* weight, const T* bias, int64_t batch,
                          int64_t in_channels, int64_t out_channels, int64_t height, int64_t width,
                          const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(
      T,
      op::conv2d_3x3s2_forward(
          w.out(y, batch * out_channels * conv2d_3x3s2_output_size(height) * conv2d_3x3s2_output_size(width)),
          w.in(x, batch * in_channels * height * width), w.in(weight, out_channels * in_channels * 9),
          w.in(bias, out_channels), batch, in_channels, out_channels, height, width, ctx));
  MOEASR_OP_ON_CPU(T, "conv2d_3x3s2_forward",
                   return moeasr::conv2d_3x3s2_forward(
                       y, host_scratch<T>(ctx, conv2d_3x3s2_workspace_elems(in_channels, height, width)), x,
                       weight, bias, batch, in_channels, out_channels, height, width, ctx));
  MOEASR_OP_ON_CUDA(T, "conv2d_3x3s2_forward", {
    const size_t workspace_bytes =
        conv2d_3x3s2_cuda_workspace_bytes<DeviceT<T>>(batch, in_channels, out_channels, height, width, ctx);
    void* workspace = device_scratch(ctx, workspace_bytes);
    conv2d_3x3s2_forward_cuda(dev(y), workspace, workspace_bytes, dev(x), dev(weight), dev(bias), batch,
                              in_channels, out_channels, height, width, ctx);
  });
}

template <class T>
void conv2d_3x3s2_backward(T* dx, Accum<T>* dweight, Accum<T>* dbias, const T* dy, const T* x,
                           const T* weight, int64_t batch, int64_t in_channels, int64_t out_channels,
                           int64_t height, int64_t width, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(
      T,
      op::conv2d_3x3s2_backward(
          w.out(dx, batch * in_channels * height * width), dweight, dbias,
          w.in(dy, batch * out_channels * conv2d_3x3s2_output_size(height) * conv2d_3x3s2_output_size(width)),
          w.in(x, batch * in_channels * height * width), w.in(weight, out_channels * in_channels * 9), batch,
          in_channels, out_channels, height, width, ctx));
  MOEASR_OP_ON_CPU(
      T, "conv2d_3x3s2_backward",
      return moeasr::conv2d_3x3s2_backward(
          dx, dweight, dbias, host_scratch<T>(ctx, conv2d_3x3s2_workspace_elems(in_channels, height, width)),
          dy, x, weight, batch, in_channels, out_channels, height, width, ctx));
  MOEASR_OP_ON_CUDA(T, "conv2d_3x3s2_backward", {
    const size_t workspace_bytes =
        conv2d_3x3s2_cuda_workspace_bytes<DeviceT<T>>(batch, in_channels, out_channels, height, width, ctx);
    void* workspace = device_scratch(ctx, workspace_bytes);
    conv2d_3x3s2_backward_cuda(dev(dx), dev(dweight), dev(dbias), workspace, workspace_bytes, dev(dy), dev(x),
                               dev(weight), batch, in_channels, out_channels, height, width, ctx);
  });
}

template <class T>
void depthwise_conv1d_forward(T* y, const T* x, const T* weight, const T* bias, Conv1dPadding padding,
                              int64_t batch, int64_t time, int64_t channels, int64_t kernel_size,
                              const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(
      T, op::depthwise_conv1d_forward(w.out(y, batch * time * channels), w.in(x, batch * time * channels),
                                      w.in(weight, channels * kernel_size), w.in(bias, channels), padding,
                                      batch, time, channels, kernel_size, ctx));
  MOEASR_OP_ON_CPU(T, "depthwise_conv1d_forward",
                   return moeasr::depthwise_conv1d_forward(y, x, weight, bias, padding, batch, time, channels,
                                                           kernel_size, ctx));
  MOEASR_OP_ON_CUDA(T, "depthwise_conv1d_forward", {
    depthwise_conv1d_forward_cuda(dev(y), dev(x), dev(weight), dev(bias), padding, batch, time, channels,
                                  kernel_size, ctx);
  });
}

template <class T>
void depthwise_conv1d_backward(T* dx, Accum<T>* dweight, Accum<T>* dbias, const T* dy, const T* x,
                               const T* weight, Conv1dPadding padding, int64_t batch, int64_t time,
                               int64_t channels, int64_t kernel_size, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(
      T, op::depthwise_conv1d_backward(w.out(dx, batch * time * channels), dweight, dbias,
                                       w.in(dy, batch * time * channels), w.in(x, batch * time * channels),
                                       w.in(weight, channels * kernel_size), padding, batch, time, channels,
                                       kernel_size, ctx));
  MOEASR_OP_ON_CPU(T, "depthwise_conv1d_backward",
                   return moeasr::depthwise_conv1d_backward(dx, dweight, dbias, dy, x, weight, padding, batch,
                                                            time, channels, kernel_size, ctx));
  MOEASR_OP_ON_CUDA(T, "depthwise_conv1d_backward", {
    depthwise_conv1d_backward_cuda(dev(dx), dev(dweight), dev(dbias), dev(dy), dev(x), dev(weight), padding,
                                   batch, time, channels, kernel_size, ctx);
  });
}

template <class T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int64_t n, int64_t vocab, int64_t dim,
                       const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(
      T, op::embedding_forward(w.out(out, n * dim), ids, w.in(table, vocab * dim), n, vocab, dim, ctx));
  MOEASR_OP_ON_CPU(T, "embedding_forward",
                   return moeasr::embedding_forward(out, ids, table, n, vocab, dim, ctx));
  MOEASR_OP_ON_CUDA(T, "embedding_forward",
                    { embedding_forward_cuda(dev(out), dev(ids), dev(table), n, vocab, dim, ctx); });
}

template <class T>
void embedding_backward(Accum<T>* dtable, const T* dout, const int32_t* ids, int64_t n, int64_t vocab,
                        int64_t dim, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::embedding_backward(dtable, w.in(dout, n * dim), ids, n, vocab, dim, ctx));
  MOEASR_OP_ON_CPU(T, "embedding_backward",
                   return moeasr::embedding_backward(dtable, dout, ids, n, vocab, dim, ctx));
  MOEASR_OP_ON_CUDA(T, "embedding_backward",
                    { embedding_backward_cuda(dev(dtable), dev(dout), dev(ids), n, vocab, dim, ctx); });
}

void make_valid_mask(uint8_t* mask, const int32_t* lengths, int64_t batch, int64_t max_len,
                     const RunContext& ctx) {
  if (ctx.device == Device::cpu) return moeasr::make_valid_mask(mask, lengths, batch, max_len, ctx);
  MOEASR_OP_ON_CUDA(float, "make_valid_mask", { make_valid_mask_cuda(mask, lengths, batch, max_len, ctx); });
}

void make_causal_mask(uint8_t* mask, int64_t length, const RunContext& ctx) {
  if (ctx.device == Device::cpu) return moeasr::make_causal_mask(mask, length, ctx);
  MOEASR_OP_ON_CUDA(float, "make_causal_mask", { make_causal_mask_cuda(mask, length, ctx); });
}

void make_chunk_mask(uint8_t* mask, int64_t chunk_size, int64_t num_left_chunks, int64_t length,
                     const RunContext& ctx) {
  if (ctx.device == Device::cpu)
    return moeasr::make_chunk_mask(mask, chunk_size, num_left_chunks, length, ctx);
  MOEASR_OP_ON_CUDA(float, "make_chunk_mask",
                    { make_chunk_mask_cuda(mask, chunk_size, num_left_chunks, length, ctx); });
}

void make_chunk_attention_mask(uint8_t* mask, const int32_t* lengths, int64_t chunk_size,
                               int64_t num_left_chunks, int64_t batch, int64_t length,
                               const RunContext& ctx) {
  if (ctx.device == Device::cpu)
    return moeasr::make_chunk_attention_mask(mask, lengths, chunk_size, num_left_chunks, batch, length, ctx);
  MOEASR_OP_ON_CUDA(float, "make_chunk_attention_mask", {
    make_chunk_attention_mask_cuda(mask, lengths, chunk_size, num_left_chunks, batch, length, ctx);
  });
}

void make_decoder_self_attention_mask(uint8_t* mask, const int32_t* lengths, int64_t batch, int64_t length,
                                      const RunContext& ctx) {
  if (ctx.device == Device::cpu)
    return moeasr::make_decoder_self_attention_mask(mask, lengths, batch, length, ctx);
  MOEASR_OP_ON_CUDA(float, "make_decoder_self_attention_mask",
                    { make_decoder_self_attention_mask_cuda(mask, lengths, batch, length, ctx); });
}

void make_cross_attention_mask(uint8_t* mask, const uint8_t* memory_valid, int64_t batch, int64_t steps,
                               int64_t frames, const RunContext& ctx) {
  if (ctx.device == Device::cpu)
    return moeasr::make_cross_attention_mask(mask, memory_valid, batch, steps, frames, ctx);
  MOEASR_OP_ON_CUDA(float, "make_cross_attention_mask",
                    { make_cross_attention_mask_cuda(mask, memory_valid, batch, steps, frames, ctx); });
}

template <class T>
void moe_topk_forward(T* values, int32_t* indices, const T* logits, int64_t n, int64_t n_experts, int64_t k,
                      const RunContext& ctx) {
  MOEASR_OP_ON_CPU(T, "moe_topk_forward",
                   return moeasr::moe_topk_forward(values, indices, logits, n, n_experts, k, ctx));
  MOEASR_OP_ON_CUDA(T, "moe_topk_forward",
                    { moe_topk_forward_cuda(dev(values), dev(indices), dev(logits), n, n_experts, k, ctx); });
}

template <class T>
void moe_topk_backward(T* dlogits, const T* dvalues, const int32_t* indices, int64_t n, int64_t n_experts,
                       int64_t k, const RunContext& ctx) {
  MOEASR_OP_ON_CPU(T, "moe_topk_backward",
                   return moeasr::moe_topk_backward(dlogits, dvalues, indices, n, n_experts, k, ctx));
  MOEASR_OP_ON_CUDA(T, "moe_topk_backward", {
    moe_topk_backward_cuda(dev(dlogits), dev(dvalues), dev(indices), n, n_experts, k, ctx);
  });
}

template <class T>
void moe_routing_softmax_forward(T* weights, const T* values, int64_t n, int64_t k, const RunContext& ctx) {
  MOEASR_OP_ON_CPU(T, "moe_routing_softmax_forward",
                   return moeasr::moe_routing_softmax_forward(weights, values, n, k, ctx));
  MOEASR_OP_ON_CUDA(T, "moe_routing_softmax_forward",
                    { moe_routing_softmax_forward_cuda(dev(weights), dev(values), n, k, ctx); });
}

template <class T>
void moe_routing_softmax_backward(T* dvalues, const T* dweights, const T* weights, int64_t n, int64_t k,
                                  const RunContext& ctx) {
  MOEASR_OP_ON_CPU(T, "moe_routing_softmax_backward",
                   return moeasr::moe_routing_softmax_backward(dvalues, dweights, weights, n, k, ctx));
  MOEASR_OP_ON_CUDA(T, "moe_routing_softmax_backward", {
    moe_routing_softmax_backward_cuda(dev(dvalues), dev(dweights), dev(weights), n, k, ctx);
  });
}

template <class T>
void moe_permute_forward(T* permuted, const T* x, const int32_t* dest, int64_t n, int64_t m, int64_t k,
                         int64_t d, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T,
                     op::moe_permute_forward(w.out(permuted, m * d), w.in(x, n * d), dest, n, m, k, d, ctx));
  MOEASR_OP_ON_CPU(T, "moe_permute_forward",
                   return moeasr::moe_permute_forward(permuted, x, dest, n, m, k, d, ctx));
  MOEASR_OP_ON_CUDA(T, "moe_permute_forward",
                    { moe_permute_forward_cuda(dev(permuted), dev(x), dev(dest), n, m, k, d, ctx); });
}

template <class T>
void moe_permute_backward(T* dx, const T* dpermuted, const int32_t* dest, int64_t n, int64_t m, int64_t k,
                          int64_t d, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(
      T, op::moe_permute_backward(w.out(dx, n * d), w.in(dpermuted, m * d), dest, n, m, k, d, ctx));
  MOEASR_OP_ON_CPU(T, "moe_permute_backward",
                   return moeasr::moe_permute_backward(dx, dpermuted, dest, n, m, k, d, ctx));
  MOEASR_OP_ON_CUDA(T, "moe_permute_backward",
                    { moe_permute_backward_cuda(dev(dx), dev(dpermuted), dev(dest), n, m, k, d, ctx); });
}

template <class T>
void moe_unpermute_forward(T* out, const T* y, const Accum<T>* weights, const int32_t* dest, int64_t n,
                           int64_t m, int64_t k, int64_t d, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(
      T, op::moe_unpermute_forward(w.out(out, n * d), w.in(y, m * d), weights, dest, n, m, k, d, ctx));
  MOEASR_OP_ON_CPU(T, "moe_unpermute_forward",
                   return moeasr::moe_unpermute_forward(out, y, weights, dest, n, m, k, d, ctx));
  MOEASR_OP_ON_CUDA(T, "moe_unpermute_forward", {
    moe_unpermute_forward_cuda(dev(out), dev(y), dev(weights), dev(dest), n, m, k, d, ctx);
  });
}

template <class T>
void moe_unpermute_backward(T* dy, Accum<T>* dweights, const T* dout, const T* y, const Accum<T>* weights,
                            const int32_t* dest, int64_t n, int64_t m, int64_t k, int64_t d,
                            const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::moe_unpermute_backward(w.out(dy, m * d), dweights, w.in(dout, n * d),
                                                   w.in(y, m * d), weights, dest, n, m, k, d, ctx));
  MOEASR_OP_ON_CPU(
      T, "moe_unpermute_backward",
      return moeasr::moe_unpermute_backward(dy, dweights, dout, y, weights, dest, n, m, k, d, ctx));
  MOEASR_OP_ON_CUDA(T, "moe_unpermute_backward", {
    moe_unpermute_backward_cuda(dev(dy), dev(dweights), dev(dout), dev(y), dev(weights), dev(dest), n, m, k,
                                d, ctx);
  });
}

void copy_host_to_device(void* device_dst, const void* host_src, int64_t bytes, const RunContext& ctx) {
  CHECK_GE(bytes, 0);
  if (bytes == 0) return;
  if (ctx.device == Device::cpu) {
    if (device_dst != host_src) std::memcpy(device_dst, host_src, static_cast<size_t>(bytes));
    return;
  }
  MOEASR_OP_ON_CUDA(float, "copy_host_to_device", {
    CUDA_CHECK(cudaMemcpyAsync(device_dst, host_src, static_cast<size_t>(bytes), cudaMemcpyHostToDevice,
                               static_cast<cudaStream_t>(ctx.cuda_stream)));
  });
}

void copy_device_to_host(void* host_dst, const void* device_src, int64_t bytes, const RunContext& ctx) {
  CHECK_GE(bytes, 0);
  if (bytes == 0) return;
  if (ctx.device == Device::cpu) {
    if (host_dst != device_src) std::memcpy(host_dst, device_src, static_cast<size_t>(bytes));
    return;
  }
  MOEASR_OP_ON_CUDA(float, "copy_device_to_host", {
    auto stream = static_cast<cudaStream_t>(ctx.cuda_stream);
    CUDA_CHECK(
        cudaMemcpyAsync(host_dst, device_src, static_cast<size_t>(bytes), cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
  });
}

void moe_permute_plan_on_device(int64_t* expert_counts, int64_t* expert_offsets, int32_t* dest,
                                const int32_t* indices, const uint8_t* token_mask, int64_t n,
                                int64_t n_experts, int64_t k, const RunContext& ctx) {
  if (ctx.device == Device::cpu) {
    moeasr::moe_permute_plan(expert_counts, expert_offsets, dest, indices, token_mask, n, n_experts, k, ctx);
    return;
  }
  MOEASR_OP_ON_CUDA(float, "moe_permute_plan_on_device", {
    const size_t workspace_bytes = moe_permute_plan_workspace_bytes(n, n_experts, k);
    void* workspace = device_scratch(ctx, workspace_bytes);
    moe_permute_plan_cuda(expert_counts, expert_offsets, dest, indices, token_mask, n, n_experts, k,
                          workspace, workspace_bytes, ctx);
  });
}

int64_t moe_permute_plan(int64_t* expert_counts, int64_t* expert_offsets, int32_t* dest,
                         const int32_t* indices, const uint8_t* token_mask, int64_t n, int64_t n_experts,
                         int64_t k, const RunContext& ctx) {
  if (ctx.device == Device::cpu)
    return moeasr::moe_permute_plan(expert_counts, expert_offsets, dest, indices, token_mask, n, n_experts, k,
                                    ctx);
  moe_permute_plan_on_device(expert_counts, expert_offsets, dest, indices, token_mask, n, n_experts, k, ctx);
  // Host synchronisation (documented in ops.h): M sizes the permuted buffers and the exchange.
  int64_t m = 0;
  copy_device_to_host(&m, expert_offsets + n_experts, sizeof(int64_t), ctx);
  return m;
}

template <class T>
void ctc_loss_forward(T* loss, T* total_loss, T* log_alpha, const T* log_probs, const int32_t* input_lengths,
                      const int32_t* targets, const int32_t* target_lengths, int64_t batch, int64_t max_time,
                      int64_t vocab, int64_t max_target_length, const RunContext& ctx) {
  MOEASR_OP_ON_CPU(
      T, "ctc_loss_forward",
      return moeasr::ctc_loss_forward(loss, total_loss, log_alpha, log_probs, input_lengths, targets,
                                      target_lengths, batch, max_time, vocab, max_target_length, ctx));
  MOEASR_OP_ON_CUDA(T, "ctc_loss_forward", {
    ctc_loss_forward_cuda(dev(loss), dev(total_loss), dev(log_alpha), dev(log_probs), dev(input_lengths),
                          dev(targets), dev(target_lengths), batch, max_time, vocab, max_target_length, ctx);
  });
}

template <class T>
void ctc_loss_backward(T* dlog_probs, const T* dloss, T dtotal_loss, const T* log_alpha, const T* log_probs,
                       const int32_t* input_lengths, const int32_t* targets, const int32_t* target_lengths,
                       int64_t batch, int64_t max_time, int64_t vocab, int64_t max_target_length,
                       const RunContext& ctx) {
  MOEASR_OP_ON_CPU(T, "ctc_loss_backward",
                   return moeasr::ctc_loss_backward(dlog_probs, dloss, dtotal_loss, log_alpha, log_probs,
                                                    input_lengths, targets, target_lengths, batch, max_time,
                                                    vocab, max_target_length, ctx));
  MOEASR_OP_ON_CUDA(T, "ctc_loss_backward", {
    ctc_loss_backward_cuda(dev(dlog_probs), dev(dloss), dtotal_loss, dev(log_alpha), dev(log_probs),
                           dev(input_lengths), dev(targets), dev(target_lengths), batch, max_time, vocab,
                           max_target_length, ctx);
  });
}

template <class T>
void label_smoothing_loss_forward(Accum<T>* loss, Accum<T>* log_sum_exp, int64_t* num_kept,
                                  int64_t* num_correct, const T* logits, const int32_t* targets,
                                  double smoothing, int32_t ignore_id, double normalizer, int64_t n,
                                  int64_t vocab, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(
      T, op::label_smoothing_loss_forward(loss, log_sum_exp, num_kept, num_correct, w.in(logits, n * vocab),
                                          targets, smoothing, ignore_id, normalizer, n, vocab, ctx));
  MOEASR_OP_ON_CPU(
      T, "label_smoothing_loss_forward",
      return moeasr::label_smoothing_loss_forward(loss, log_sum_exp, num_kept, num_correct, logits, targets,
                                                  smoothing, ignore_id, normalizer, n, vocab, ctx));
  MOEASR_OP_ON_CUDA(T, "label_smoothing_loss_forward", {
    const size_t workspace_bytes = label_smoothing_loss_workspace_bytes(n);
    void* workspace = device_scratch(ctx, workspace_bytes);
    label_smoothing_loss_forward_cuda(dev(loss), dev(log_sum_exp), dev(num_kept), dev(num_correct),
                                      dev(logits), dev(targets), smoothing, ignore_id, normalizer, n, vocab,
                                      workspace, workspace_bytes, ctx);
  });
}

template <class T>
void label_smoothing_loss_backward(T* dlogits, Accum<T> dloss, const T* logits, const Accum<T>* log_sum_exp,
                                   const int32_t* targets, double smoothing, int32_t ignore_id,
                                   double normalizer, int64_t n, int64_t vocab, const RunContext& ctx) {
  MOEASR_BF16_ON_CPU(T, op::label_smoothing_loss_backward(w.out(dlogits, n * vocab), dloss,
                                                          w.in(logits, n * vocab), log_sum_exp, targets,
                                                          smoothing, ignore_id, normalizer, n, vocab, ctx));
  MOEASR_OP_ON_CPU(
      T, "label_smoothing_loss_backward",
      return moeasr::label_smoothing_loss_backward(dlogits, dloss, logits, log_sum_exp, targets, smoothing,
                                                   ignore_id, normalizer, n, vocab, ctx));
  MOEASR_OP_ON_CUDA(T, "label_smoothing_loss_backward", {
    label_smoothing_loss_backward_cuda(dev(dlogits), dloss, dev(logits), dev(log_sum_exp), dev(targets),
                                       smoothing, ignore_id, normalizer, n, vocab, ctx);
  });
}

template <class T>
void adam_update(T* param, T* exp_avg, T* exp_avg_sq, const T* grad, double lr, double beta1, double beta2,
                 double eps, double weight_decay, int64_t step, int64_t n, const RunContext& ctx) {
  MOEASR_OP_ON_CPU(T, "adam_update",
                   return moeasr::adam_update(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps,
                                              weight_decay, step, n, ctx));
  MOEASR_OP_ON_CUDA(T, "adam_update", {
    adam_update_cuda(dev(param), dev(exp_avg), dev(exp_avg_sq), static_cast<__nv_bfloat16*>(nullptr),
                     dev(grad), lr, beta1, beta2, eps, weight_decay, step, n, ctx);
  });
}

template <class T>
double global_grad_norm(const GradBuffer<T>* buffers, int64_t num_buffers, const RunContext& ctx) {
  MOEASR_OP_ON_CPU(T, "global_grad_norm", return moeasr::global_grad_norm(buffers, num_buffers, ctx));
  double norm = 0.0;
  MOEASR_OP_ON_CUDA(T, "global_grad_norm", {
    const size_t workspace_bytes = global_grad_norm_workspace_bytes(dev(buffers), num_buffers);
    void* workspace = device_scratch(ctx, workspace_bytes);
    auto* device_norm = static_cast<float*>(device_scratch(ctx, sizeof(float)));
    global_grad_norm_cuda(device_norm, dev(buffers), num_buffers, workspace, workspace_bytes, ctx);
    float host_norm = 0.0f;
    copy_device_to_host(&host_norm, device_norm, sizeof(float), ctx);
    norm = host_norm;
  });
  return norm;
}

template <class T>
double clip_grad_norm(const GradBuffer<T>* buffers, double max_norm, int64_t num_buffers,
                      const RunContext& ctx) {
  MOEASR_OP_ON_CPU(T, "clip_grad_norm", return moeasr::clip_grad_norm(buffers, max_norm, num_buffers, ctx));
  double norm = 0.0;
  MOEASR_OP_ON_CUDA(T, "clip_grad_norm", {
    const size_t workspace_bytes = global_grad_norm_workspace_bytes(dev(buffers), num_buffers);
    void* workspace = device_scratch(ctx, workspace_bytes);
    auto* device_norm = static_cast<float*>(device_scratch(ctx, sizeof(float)));
    clip_grad_norm_cuda(device_norm, dev(buffers), max_norm, num_buffers, workspace, workspace_bytes, ctx);
    float host_norm = 0.0f;
    copy_device_to_host(&host_norm, device_norm, sizeof(float), ctx);
    norm = host_norm;
  });
  return norm;
}

#undef MOEASR_OP_ON_CUDA

// Ops on tensors stored as T (float, double, and bf16 for the CUDA device).
#define MOEASR_INSTANTIATE_STORAGE_OPS(T)                                                                    \
  template void add_forward<T>(T*, const T*, const T*, int64_t, const RunContext&);                          \
  template void add_backward<T>(T*, T*, const T*, int64_t, const RunContext&);                               \
  template void scale_forward<T>(T*, const T*, Accum<T>, int64_t, const RunContext&);                        \
  template void scale_backward<T>(T*, const T*, Accum<T>, int64_t, const RunContext&);                       \
  template void residual_add_forward<T>(T*, const T*, const T*, Accum<T>, int64_t, const RunContext&);       \
  template void residual_add_backward<T>(T*, T*, const T*, Accum<T>, int64_t, const RunContext&);            \
  template void add_scaled_inplace<T>(T*, const T*, Accum<T>, int64_t, const RunContext&);                   \
  template void relu_forward<T>(T*, const T*, int64_t, const RunContext&);                                   \
  template void relu_backward<T>(T*, const T*, const T*, int64_t, const RunContext&);                        \
  template void silu_forward<T>(T*, const T*, int64_t, const RunContext&);                                   \
  template void silu_backward<T>(T*, const T*, const T*, int64_t, const RunContext&);                        \
  template void sigmoid_forward<T>(T*, const T*, int64_t, const RunContext&);                                \
  template void sigmoid_backward<T>(T*, const T*, const T*, int64_t, const RunContext&);                     \
  template void glu_forward<T>(T*, const T*, int64_t, int64_t, const RunContext&);                           \
  template void glu_backward<T>(T*, const T*, const T*, int64_t, int64_t, const RunContext&);                \
  template void fill_constant<T>(T*, Accum<T>, int64_t, const RunContext&);                                  \
  template void copy_elements<T>(T*, const T*, int64_t, const RunContext&);                                  \
  template void transpose_middle_forward<T>(T*, const T*, int64_t, int64_t, int64_t, int64_t,                \
                                            const RunContext&);                                              \
  template void transpose_middle_backward<T>(T*, const T*, int64_t, int64_t, int64_t, int64_t,               \
                                             const RunContext&);                                             \
  template void split_heads_forward<T>(T*, const T*, const Accum<T>*, int64_t, int64_t, int64_t, int64_t,    \
                                       const RunContext&);                                                   \
  template void split_heads_backward<T>(T*, Accum<T>*, const T*, int64_t, int64_t, int64_t, int64_t,         \
                                        const RunContext&);                                                  \
  template void masked_pad_rows_forward<T>(T*, const T*, const uint8_t*, int64_t, int64_t, int64_t, int64_t, \
                                           const RunContext&);                                               \
  template void masked_pad_rows_backward<T>(T*, const T*, const uint8_t*, int64_t, int64_t, int64_t,         \
                                            int64_t, const RunContext&);                                     \
  template void masked_crop_rows_forward<T>(T*, const T*, const uint8_t*, int64_t, int64_t, int64_t,         \
                                            int64_t, const RunContext&);                                     \
  template void masked_crop_rows_backward<T>(T*, const T*, const uint8_t*, int64_t, int64_t, int64_t,        \
                                             int64_t, const RunContext&);                                    \
  template void cmvn_normalize_forward<T>(T*, const T*, const Accum<T>*, const Accum<T>*, int64_t, int64_t,  \
                                          const RunContext&);                                                \
  template void scale_add_table_forward<T>(T*, const T*, const Accum<T>*, Accum<T>, int64_t, int64_t,        \
                                           int64_t, const RunContext&);                                      \
  template void scale_add_table_backward<T>(T*, const T*, Accum<T>, int64_t, int64_t, int64_t,               \
                                            const RunContext&);                                              \
  template void linear_forward<T>(T*, const T*, const T*, const T*, int64_t, int64_t, int64_t,               \
                                  const RunContext&);                                                        \
  template void linear_backward<T>(T*, Accum<T>*, Accum<T>*, const T*, const T*, const T*, int64_t, int64_t, \
                                   int64_t, const RunContext&);                                              \
  template void grouped_linear_forward<T>(T*, const T*, const T*, const T*, const int64_t*, int64_t,         \
                                          int64_t, int64_t, int64_t, const RunContext&);                     \
  template void grouped_linear_backward<T>(T*, Accum<T>*, Accum<T>*, const T*, const T*, const T*,           \
                                           const int64_t*, int64_t, int64_t, int64_t, int64_t,               \
                                           const RunContext&);                                               \
  template void gemm_strided_batched<T>(T*, const T*, const T*, Transpose, Transpose, int64_t, int64_t,      \
                                        int64_t, Accum<T>, Accum<T>, int64_t, int64_t, int64_t, int64_t,     \
                                        int64_t, int64_t, int64_t, const RunContext&);                       \
  template void batched_matmul_forward<T>(T*, const T*, const T*, Transpose, int64_t, int64_t, int64_t,      \
                                          int64_t, const RunContext&);                                       \
  template void batched_matmul_backward<T>(T*, T*, const T*, const T*, const T*, Transpose, int64_t,         \
                                           int64_t, int64_t, int64_t, const RunContext&);                    \
  template void softmax_forward<T>(T*, const T*, const uint8_t*, int64_t, int64_t, const RunContext&);       \
  template void softmax_backward<T>(T*, const T*, const T*, int64_t, int64_t, const RunContext&);            \
  template void log_softmax_forward<T>(T*, const T*, const uint8_t*, int64_t, int64_t, const RunContext&);   \
  template void log_softmax_backward<T>(T*, const T*, const T*, const uint8_t*, int64_t, int64_t,            \
                                        const RunContext&);                                                  \
  template void attention_softmax_forward<T>(T*, const T*, const uint8_t*, int64_t, int64_t, int64_t,        \
                                             int64_t, const RunContext&);                                    \
  template void attention_softmax_backward<T>(T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t,    \
                                              const RunContext&);                                            \
  template void dropout_forward<T>(T*, const T*, const PhiloxStream&, double, int64_t, const RunContext&);   \
  template void dropout_backward<T>(T*, const T*, const PhiloxStream&, double, int64_t, const RunContext&);  \
  template void layer_norm_forward<T>(T*, Accum<T>*, Accum<T>*, const T*, const Accum<T>*, const Accum<T>*,  \
                                      Accum<T>, int64_t, int64_t, const RunContext&);                        \
  template void layer_norm_backward<T>(T*, Accum<T>*, Accum<T>*, const T*, const T*, const Accum<T>*,        \
                                       const Accum<T>*, const Accum<T>*, int64_t, int64_t,                   \
                                       const RunContext&);                                                   \
  template void batch_norm_train_forward<T>(T*, Accum<T>*, Accum<T>*, Accum<T>*, Accum<T>*, const T*,        \
                                            const Accum<T>*, const Accum<T>*, Accum<T>, Accum<T>, int64_t,   \
                                            int64_t, const RunContext&);                                     \
  template void batch_norm_train_backward<T>(T*, Accum<T>*, Accum<T>*, const T*, const T*, const Accum<T>*,  \
                                             const Accum<T>*, const Accum<T>*, int64_t, int64_t,             \
                                             const RunContext&);                                             \
  template void batch_norm_eval_forward<T>(T*, const T*, const Accum<T>*, const Accum<T>*, const Accum<T>*,  \
                                           const Accum<T>*, Accum<T>, int64_t, int64_t, const RunContext&);  \
  template void batch_norm_eval_backward<T>(T*, Accum<T>*, Accum<T>*, const T*, const T*, const Accum<T>*,   \
                                            const Accum<T>*, const Accum<T>*, Accum<T>, int64_t, int64_t,    \
                                            const RunContext&);                                              \
  template void conv2d_3x3s2_forward<T>(T*, const T*, const T*, const T*, int64_t, int64_t, int64_t,         \
                                        int64_t, int64_t, const RunContext&);                                \
  template void conv2d_3x3s2_backward<T>(T*, Accum<T>*, Accum<T>*, const T*, const T*, const T*, int64_t,    \
                                         int64_t, int64_t, int64_t, int64_t, const RunContext&);             \
  template void depthwise_conv1d_forward<T>(T*, const T*, const T*, const T*, Conv1dPadding, int64_t,        \
                                            int64_t, int64_t, int64_t, const RunContext&);                   \
  template void depthwise_conv1d_backward<T>(T*, Accum<T>*, Accum<T>*, const T*, const T*, const T*,         \
                                             Conv1dPadding, int64_t, int64_t, int64_t, int64_t,              \
                                             const RunContext&);                                             \
  template void embedding_forward<T>(T*, const int32_t*, const T*, int64_t, int64_t, int64_t,                \
                                     const RunContext&);                                                     \
  template void embedding_backward<T>(Accum<T>*, const T*, const int32_t*, int64_t, int64_t, int64_t,        \
                                      const RunContext&);                                                    \
  template void moe_permute_forward<T>(T*, const T*, const int32_t*, int64_t, int64_t, int64_t, int64_t,     \
                                       const RunContext&);                                                   \
  template void moe_permute_backward<T>(T*, const T*, const int32_t*, int64_t, int64_t, int64_t, int64_t,    \
                                        const RunContext&);                                                  \
  template void moe_unpermute_forward<T>(T*, const T*, const Accum<T>*, const int32_t*, int64_t, int64_t,    \
                                         int64_t, int64_t, const RunContext&);                               \
  template void moe_unpermute_backward<T>(T*, Accum<T>*, const T*, const T*, const Accum<T>*,                \
                                          const int32_t*, int64_t, int64_t, int64_t, int64_t,                \
                                          const RunContext&);                                                \
  template void label_smoothing_loss_forward<T>(Accum<T>*, Accum<T>*, int64_t*, int64_t*, const T*,          \
                                                const int32_t*, double, int32_t, double, int64_t, int64_t,   \
                                                const RunContext&);                                          \
  template void label_smoothing_loss_backward<T>(T*, Accum<T>, const T*, const Accum<T>*, const int32_t*,    \
                                                 double, int32_t, double, int64_t, int64_t,                  \
                                                 const RunContext&);

// Ops that run on Accum<T> tensors only (routing, the CTC loss, the optimizer): float and double.
#define MOEASR_INSTANTIATE_ACCUM_OPS(T)                                                                      \
  template void moe_topk_forward<T>(T*, int32_t*, const T*, int64_t, int64_t, int64_t, const RunContext&);   \
  template void moe_topk_backward<T>(T*, const T*, const int32_t*, int64_t, int64_t, int64_t,                \
                                     const RunContext&);                                                     \
  template void moe_routing_softmax_forward<T>(T*, const T*, int64_t, int64_t, const RunContext&);           \
  template void moe_routing_softmax_backward<T>(T*, const T*, const T*, int64_t, int64_t,                    \
                                                const RunContext&);                                          \
  template void ctc_loss_forward<T>(T*, T*, T*, const T*, const int32_t*, const int32_t*, const int32_t*,    \
                                    int64_t, int64_t, int64_t, int64_t, const RunContext&);                  \
  template void ctc_loss_backward<T>(T*, const T*, T, const T*, const T*, const int32_t*, const int32_t*,    \
                                     const int32_t*, int64_t, int64_t, int64_t, int64_t, const RunContext&); \
  template void adam_update<T>(T*, T*, T*, const T*, double, double, double, double, double, int64_t,        \
                               int64_t, const RunContext&);                                                  \
  template double global_grad_norm<T>(const GradBuffer<T>*, int64_t, const RunContext&);                     \
  template double clip_grad_norm<T>(const GradBuffer<T>*, double, int64_t, const RunContext&);

MOEASR_INSTANTIATE_STORAGE_OPS(float)
MOEASR_INSTANTIATE_STORAGE_OPS(double)
MOEASR_INSTANTIATE_STORAGE_OPS(bf16)
MOEASR_INSTANTIATE_ACCUM_OPS(float)
MOEASR_INSTANTIATE_ACCUM_OPS(double)
#undef MOEASR_INSTANTIATE_STORAGE_OPS
#undef MOEASR_INSTANTIATE_ACCUM_OPS

}  // namespace moeasr::op
