// kernels/ops.h — the op set as the layers call it: one function per op and direction with the CPU
// op's arguments (kernels/cpu/<op>.h documents every pointer's shape and the gradient convention),
// routed on ctx.device to the CPU op or to its CUDA twin (kernels/cuda/<op>_cuda.h). model/ calls
// these, so the same layer code runs on both backends (DESIGN.md §2: explicit context, no globals).
//
// T is the storage type: float, double (CPU only: the gradient checks) or bf16 (the bf16 model; on
// the CPU a reference path widens each bf16 array to fp32, runs the fp32 op and rounds what it wrote,
// one rounding per stored element as on the GPU; slow, for tests). Pointers that the CUDA twins keep in fp32
// whatever T is (parameters added or scaled in fp32, norm statistics, routing weights, losses, scalars) are
// Accum<T> (float for bf16, T otherwise; core/dtype.h). On ctx.device == cuda every pointer is device memory
// and the build must have the CUDA backend; otherwise the op CHECK-fails naming itself. The routing, CTC and
// optimizer ops exist for float and double only (a bf16 model calls them on Accum<T> tensors).
// With ctx.bf16_matmul (float only) the matrix products (linear,
// grouped_linear, gemm_strided_batched, batched_matmul) cast their fp32 operands to bf16 in the
// activation arena and run on tensor cores with fp32 accumulation and fp32 outputs (the grouped GEMM
// and batched matmul write bf16 and are widened back); parameter gradients accumulate in fp32. Ops whose CUDA
// twin needs scratch (LayerNorm/BatchNorm backward, BatchNorm, the subsampling convolution, the permute plan,
// the label-smoothing loss) take it from ctx.activations (freed at the step's reset). The CPU conv2d's im2col
// buffer comes from there too.
//
// Differences from the CPU ops (only on the GPU):
//  - moe_permute_plan: the plan stays on the device, but M (offsets[E]) is copied to the host and the
//    stream is synchronised: with expert parallelism the layer sizes the exchange by the counts (they
//    must reach the host for an MPI/NCCL all-to-all; DESIGN.md §3 step 5). With every expert local
//    the MoE layer calls moe_permute_plan_on_device instead, which reads nothing back: its row buffers
//    take the bound N*k and the grouped Linears read the device offsets.
//  - grouped_linear's expert_offsets and the masks' lengths are device arrays.
//  - the losses' scalar outputs (loss, total_loss, num_kept, num_correct) are device memory.
#pragma once

#include <cstdint>

#include "core/philox.h"
#include "core/run_context.h"
#include "kernels/cpu/conv.h"       // Conv1dPadding
#include "kernels/cpu/gemm.h"       // Transpose
#include "kernels/cpu/optimizer.h"  // GradBuffer

namespace moeasr::op {

// ---- elementwise (kernels/cpu/elementwise.h) ----------------------------------------------------------
template <class T>
void add_forward(T* out, const T* a, const T* b, int64_t n, const RunContext& ctx);

template <class T>
void add_backward(T* da, T* db, const T* dout, int64_t n, const RunContext& ctx);

template <class T>
void scale_forward(T* out, const T* x, Accum<T> alpha, int64_t n, const RunContext& ctx);

template <class T>
void scale_backward(T* dx, const T* dout, Accum<T> alpha, int64_t n, const RunContext& ctx);

template <class T>
void residual_add_forward(T* out, const T* x, const T* y, Accum<T> alpha, int64_t n, const RunContext& ctx);

template <class T>
void residual_add_backward(T* dx, T* dy, const T* dout, Accum<T> alpha, int64_t n, const RunContext& ctx);

template <class T>
void add_scaled_inplace(T* acc, const T* x, Accum<T> alpha, int64_t n, const RunContext& ctx);

template <class T>
void relu_forward(T* out, const T* x, int64_t n, const RunContext& ctx);

template <class T>
void relu_backward(T* dx, const T* dout, const T* x, int64_t n, const RunContext& ctx);

template <class T>
void silu_forward(T* out, const T* x, int64_t n, const RunContext& ctx);

template <class T>
void silu_backward(T* dx, const T* dout, const T* x, int64_t n, const RunContext& ctx);

template <class T>
void sigmoid_forward(T* out, const T* x, int64_t n, const RunContext& ctx);

template <class T>
void sigmoid_backward(T* dx, const T* dout, const T* out, int64_t n, const RunContext& ctx);

template <class T>
void glu_forward(T* out, const T* x, int64_t n, int64_t c, const RunContext& ctx);

template <class T>
void glu_backward(T* dx, const T* dout, const T* x, int64_t n, int64_t c, const RunContext& ctx);

// ---- layout (kernels/cpu/layout.h) --------------------------------------------------------------------
template <class T>
void fill_constant(T* out, Accum<T> value, int64_t n, const RunContext& ctx);

template <class T>
void copy_elements(T* dst, const T* src, int64_t n, const RunContext& ctx);

template <class T>
void transpose_middle_forward(T* dst, const T* src, int64_t outer, int64_t rows_i, int64_t cols_j,
                              int64_t inner, const RunContext& ctx);

template <class T>
void transpose_middle_backward(T* dsrc, const T* ddst, int64_t outer, int64_t rows_i, int64_t cols_j,
                               int64_t inner, const RunContext& ctx);

template <class T>
void split_heads_forward(T* dst, const T* src, const Accum<T>* bias, int64_t batch, int64_t steps,
                         int64_t heads, int64_t d_k, const RunContext& ctx);

template <class T>
void split_heads_backward(T* dsrc, Accum<T>* dbias, const T* dout, int64_t batch, int64_t steps,
                          int64_t heads, int64_t d_k, const RunContext& ctx);

template <class T>
void masked_pad_rows_forward(T* dst, const T* src, const uint8_t* mask, int64_t batch, int64_t time,
                             int64_t lpad, int64_t channels, const RunContext& ctx);

template <class T>
void masked_pad_rows_backward(T* dst, const T* src, const uint8_t* mask, int64_t batch, int64_t time,
                              int64_t lpad, int64_t channels, const RunContext& ctx);

template <class T>
void masked_crop_rows_forward(T* dst, const T* src, const uint8_t* mask, int64_t batch, int64_t time,
                              int64_t lpad, int64_t channels, const RunContext& ctx);

template <class T>
void masked_crop_rows_backward(T* dst, const T* src, const uint8_t* mask, int64_t batch, int64_t time,
                               int64_t lpad, int64_t channels, const RunContext& ctx);

template <class T>
void cmvn_normalize_forward(T* out, const T* x, const Accum<T>* mean, const Accum<T>* istd, int64_t rows,
                            int64_t feat, const RunContext& ctx);

template <class T>
void scale_add_table_forward(T* out, const T* x, const Accum<T>* table, Accum<T> scale, int64_t batch,
                             int64_t time, int64_t d, const RunContext& ctx);

template <class T>
void scale_add_table_backward(T* dx, const T* dout, Accum<T> scale, int64_t batch, int64_t time, int64_t d,
                              const RunContext& ctx);

// dst = src element-wise in another type: float <-> bf16 rounds to nearest even (core/dtype.h, on the
// host and the device alike); the same type is a copy. Instantiated for (float, bf16), (bf16, float),
// (float, float) and (double, double): the model's casts between its storage type and Accum.
template <class To, class From>
void convert_elements(To* dst, const From* src, int64_t n, const RunContext& ctx);

// ---- linear (kernels/cpu/linear.h) --------------------------------------------------------------------
template <class T>
void linear_forward(T* y, const T* x, const T* weight, const T* bias, int64_t n, int64_t in_features,
                    int64_t out_features, const RunContext& ctx);

template <class T>
void linear_backward(T* dx, Accum<T>* dweight, Accum<T>* dbias, const T* dy, const T* x, const T* weight,
                     int64_t n, int64_t in_features, int64_t out_features, const RunContext& ctx);

// ---- grouped_linear (kernels/cpu/grouped_linear.h) ----------------------------------------------------
template <class T>
void grouped_linear_forward(T* y, const T* x, const T* weight, const T* bias, const int64_t* expert_offsets,
                            int64_t m_max, int64_t n_experts, int64_t in_features, int64_t out_features,
                            const RunContext& ctx);

template <class T>
void grouped_linear_backward(T* dx, Accum<T>* dweight, Accum<T>* dbias, const T* dy, const T* x,
                             const T* weight, const int64_t* expert_offsets, int64_t m_max, int64_t n_experts,
                             int64_t in_features, int64_t out_features, const RunContext& ctx);

// ---- gemm (kernels/cpu/gemm.h) ------------------------------------------------------------------------
template <class T>
void gemm_strided_batched(T* c, const T* a, const T* b, Transpose trans_a, Transpose trans_b, int64_t m,
                          int64_t n, int64_t k, Accum<T> alpha, Accum<T> beta, int64_t lda, int64_t ldb,
                          int64_t ldc, int64_t stride_a, int64_t stride_b, int64_t stride_c, int64_t batch,
                          const RunContext& ctx);

template <class T>
void batched_matmul_forward(T* out, const T* a, const T* b, Transpose trans_b, int64_t groups, int64_t m,
                            int64_t n, int64_t k, const RunContext& ctx);

template <class T>
void batched_matmul_backward(T* da, T* db, const T* dout, const T* a, const T* b, Transpose trans_b,
                             int64_t groups, int64_t m, int64_t n, int64_t k, const RunContext& ctx);

// ---- softmax (kernels/cpu/softmax.h) ------------------------------------------------------------------
template <class T>
void softmax_forward(T* y, const T* x, const uint8_t* mask, int64_t rows, int64_t cols,
                     const RunContext& ctx);

template <class T>
void softmax_backward(T* dx, const T* dy, const T* y, int64_t rows, int64_t cols, const RunContext& ctx);

template <class T>
void log_softmax_forward(T* y, const T* x, const uint8_t* mask, int64_t rows, int64_t cols,
                         const RunContext& ctx);

template <class T>
void log_softmax_backward(T* dx, const T* dy, const T* y, const uint8_t* mask, int64_t rows, int64_t cols,
                          const RunContext& ctx);

template <class T>
void attention_softmax_forward(T* probs, const T* scores, const uint8_t* mask, int64_t batch, int64_t heads,
                               int64_t queries, int64_t keys, const RunContext& ctx);

template <class T>
void attention_softmax_backward(T* dscores, const T* dprobs, const T* probs, int64_t batch, int64_t heads,
                                int64_t queries, int64_t keys, const RunContext& ctx);

// ---- dropout (kernels/cpu/dropout.h) ------------------------------------------------------------------
template <class T>
void dropout_forward(T* y, const T* x, const PhiloxStream& stream, double p, int64_t n,
                     const RunContext& ctx);

template <class T>
void dropout_backward(T* dx, const T* dy, const PhiloxStream& stream, double p, int64_t n,
                      const RunContext& ctx);

// ---- norm (kernels/cpu/norm.h) ------------------------------------------------------------------------
template <class T>
void layer_norm_forward(T* out, Accum<T>* mean, Accum<T>* rstd, const T* x, const Accum<T>* weight,
                        const Accum<T>* bias, Accum<T> eps, int64_t n, int64_t c, const RunContext& ctx);

template <class T>
void layer_norm_backward(T* dx, Accum<T>* dweight, Accum<T>* dbias, const T* dout, const T* x,
                         const Accum<T>* mean, const Accum<T>* rstd, const Accum<T>* weight, int64_t n,
                         int64_t c, const RunContext& ctx);

template <class T>
void batch_norm_train_forward(T* out, Accum<T>* save_mean, Accum<T>* save_rstd, Accum<T>* running_mean,
                              Accum<T>* running_var, const T* x, const Accum<T>* weight, const Accum<T>* bias,
                              Accum<T> momentum, Accum<T> eps, int64_t n, int64_t c, const RunContext& ctx);

template <class T>
void batch_norm_train_backward(T* dx, Accum<T>* dweight, Accum<T>* dbias, const T* dout, const T* x,
                               const Accum<T>* save_mean, const Accum<T>* save_rstd, const Accum<T>* weight,
                               int64_t n, int64_t c, const RunContext& ctx);

template <class T>
void batch_norm_eval_forward(T* out, const T* x, const Accum<T>* running_mean, const Accum<T>* running_var,
                             const Accum<T>* weight, const Accum<T>* bias, Accum<T> eps, int64_t n, int64_t c,
                             const RunContext& ctx);

template <class T>
void batch_norm_eval_backward(T* dx, Accum<T>* dweight, Accum<T>* dbias, const T* dout, const T* x,
                              const Accum<T>* running_mean, const Accum<T>* running_var,
                              const Accum<T>* weight, Accum<T> eps, int64_t n, int64_t c,
                              const RunContext& ctx);

// ---- conv (kernels/cpu/conv.h) ------------------------------------------------------------------------
template <class T>
void conv2d_3x3s2_forward(T* y, const T* x, const T* weight, const T* bias, int64_t batch,
                          int64_t in_channels, int64_t out_channels, int64_t height, int64_t width,
                          const RunContext& ctx);

template <class T>
void conv2d_3x3s2_backward(T* dx, Accum<T>* dweight, Accum<T>* dbias, const T* dy, const T* x,
                           const T* weight, int64_t batch, int64_t in_channels, int64_t out_channels,
                           int64_t height, int64_t width, const RunContext& ctx);

template <class T>
void depthwise_conv1d_forward(T* y, const T* x, const T* weight, const T* bias, Conv1dPadding padding,
                              int64_t batch, int64_t time, int64_t channels, int64_t kernel_size,
                              const RunContext& ctx);

template <class T>
void depthwise_conv1d_backward(T* dx, Accum<T>* dweight, Accum<T>* dbias, const T* dy, const T* x,
                               const T* weight, Conv1dPadding padding, int64_t batch, int64_t time,
                               int64_t channels, int64_t kernel_size, const RunContext& ctx);

// ---- embedding (kernels/cpu/embedding.h) --------------------------------------------------------------
template <class T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int64_t n, int64_t vocab, int64_t dim,
                       const RunContext& ctx);

template <class T>
void embedding_backward(Accum<T>* dtable, const T* dout, const int32_t* ids, int64_t n, int64_t vocab,
                        int64_t dim, const RunContext& ctx);

// ---- masks (kernels/cpu/masks.h) ----------------------------------------------------------------------
void make_valid_mask(uint8_t* mask, const int32_t* lengths, int64_t batch, int64_t max_len,
                     const RunContext& ctx);

void make_causal_mask(uint8_t* mask, int64_t length, const RunContext& ctx);

void make_chunk_mask(uint8_t* mask, int64_t chunk_size, int64_t num_left_chunks, int64_t length,
                     const RunContext& ctx);

void make_chunk_attention_mask(uint8_t* mask, const int32_t* lengths, int64_t chunk_size,
                               int64_t num_left_chunks, int64_t batch, int64_t length, const RunContext& ctx);

void make_decoder_self_attention_mask(uint8_t* mask, const int32_t* lengths, int64_t batch, int64_t length,
                                      const RunContext& ctx);

void make_cross_attention_mask(uint8_t* mask, const uint8_t* memory_valid, int64_t batch, int64_t steps,
                               int64_t frames, const RunContext& ctx);

// ---- moe_dispatch (kernels/cpu/moe_dispatch.h) --------------------------------------------------------
template <class T>
void moe_topk_forward(T* values, int32_t* indices, const T* logits, int64_t n, int64_t n_experts, int64_t k,
                      const RunContext& ctx);

template <class T>
void moe_topk_backward(T* dlogits, const T* dvalues, const int32_t* indices, int64_t n, int64_t n_experts,
                       int64_t k, const RunContext& ctx);

template <class T>
void moe_routing_softmax_forward(T* weights, const T* values, int64_t n, int64_t k, const RunContext& ctx);

template <class T>
void moe_routing_softmax_backward(T* dvalues, const T* dweights, const T* weights, int64_t n, int64_t k,
                                  const RunContext& ctx);

template <class T>
void moe_permute_forward(T* permuted, const T* x, const int32_t* dest, int64_t n, int64_t m, int64_t k,
                         int64_t d, const RunContext& ctx);

template <class T>
void moe_permute_backward(T* dx, const T* dpermuted, const int32_t* dest, int64_t n, int64_t m, int64_t k,
                          int64_t d, const RunContext& ctx);

template <class T>
void moe_unpermute_forward(T* out, const T* y, const Accum<T>* weights, const int32_t* dest, int64_t n,
                           int64_t m, int64_t k, int64_t d, const RunContext& ctx);

template <class T>
void moe_unpermute_backward(T* dy, Accum<T>* dweights, const T* dout, const T* y, const Accum<T>* weights,
                            const int32_t* dest, int64_t n, int64_t m, int64_t k, int64_t d,
                            const RunContext& ctx);

// ---- host <-> ctx.device copies ----------------------------------------------------------------------
// `bytes` from host memory into ctx.device memory (a plain copy on the CPU). Asynchronous on the GPU
// stream, so `host` must stay valid until the stream reaches the copy (the step's host arena does).
void copy_host_to_device(void* device_dst, const void* host_src, int64_t bytes, const RunContext& ctx);

// `bytes` from ctx.device memory into host memory; on the GPU it waits for the stream (a host
// synchronisation: the callers are the permute plan's counts and the step's loss scalars).
void copy_device_to_host(void* host_dst, const void* device_src, int64_t bytes, const RunContext& ctx);

// ---- moe permute plan (kernels/cpu/moe_dispatch.h) -------------------------------------------------
// Returns M, the number of routed rows (see the GPU note at the top).
int64_t moe_permute_plan(int64_t* expert_counts, int64_t* expert_offsets, int32_t* dest,
                         const int32_t* indices, const uint8_t* token_mask, int64_t n, int64_t n_experts,
                         int64_t k, const RunContext& ctx);

// The same plan without M on the host: nothing is read back (M = expert_offsets[E] stays in ctx.device
// memory; the GPU MoE layer with every expert local sizes its row buffers by N*k instead).
void moe_permute_plan_on_device(int64_t* expert_counts, int64_t* expert_offsets, int32_t* dest,
                                const int32_t* indices, const uint8_t* token_mask, int64_t n,
                                int64_t n_experts, int64_t k, const RunContext& ctx);

// ---- losses (kernels/cpu/ctc_loss.h, kernels/cpu/label_smoothing_loss.h) ---------------------------
template <class T>
void ctc_loss_forward(T* loss, T* total_loss, T* log_alpha, const T* log_probs, const int32_t* input_lengths,
                      const int32_t* targets, const int32_t* target_lengths, int64_t batch, int64_t max_time,
                      int64_t vocab, int64_t max_target_length, const RunContext& ctx);

template <class T>
void ctc_loss_backward(T* dlog_probs, const T* dloss, T dtotal_loss, const T* log_alpha, const T* log_probs,
                       const int32_t* input_lengths, const int32_t* targets, const int32_t* target_lengths,
                       int64_t batch, int64_t max_time, int64_t vocab, int64_t max_target_length,
                       const RunContext& ctx);

template <class T>
void label_smoothing_loss_forward(Accum<T>* loss, Accum<T>* log_sum_exp, int64_t* num_kept,
                                  int64_t* num_correct, const T* logits, const int32_t* targets,
                                  double smoothing, int32_t ignore_id, double normalizer, int64_t n,
                                  int64_t vocab, const RunContext& ctx);

template <class T>
void label_smoothing_loss_backward(T* dlogits, Accum<T> dloss, const T* logits, const Accum<T>* log_sum_exp,
                                   const int32_t* targets, double smoothing, int32_t ignore_id,
                                   double normalizer, int64_t n, int64_t vocab, const RunContext& ctx);

// ---- optimizer (kernels/cpu/optimizer.h) ------------------------------------------------------------
template <class T>
void adam_update(T* param, T* exp_avg, T* exp_avg_sq, const T* grad, double lr, double beta1, double beta2,
                 double eps, double weight_decay, int64_t step, int64_t n, const RunContext& ctx);

// The norm comes back to the host (on the GPU: computed on the device, then one 4-byte copy and a
// stream synchronisation: the trainer needs it to skip non-finite steps and to log it).
template <class T>
double global_grad_norm(const GradBuffer<T>* buffers, int64_t num_buffers, const RunContext& ctx);

template <class T>
double clip_grad_norm(const GradBuffer<T>* buffers, double max_norm, int64_t num_buffers,
                      const RunContext& ctx);

}  // namespace moeasr::op
