// model/ffn.h — the feed-forward layers of the U2++ (MoE) model (u2pp_moe_wenet.md §2):
//   dense FFN: WeNet's PositionwiseFeedForward   y = w_2(dropout(act(w_1 x)))
//   MoE FFN:   WeNet's MoEFFNLayer               y[n] = sum_j w[n, j] * expert_{sel[n, j]}(x[n])
// act is Swish (SiLU) in the encoder and ReLU in the decoder; the linears carry biases when the
// config's mlp_bias is set (WeNet's default). The caller flattens [B, T, D] to N = B*T rows.
//
// Dims: N rows (tokens), D model dim (d), F hidden width (linear_units), E global experts,
// E_local experts on this rank, K experts per token (top-k), M routed (token, slot) pairs on this rank,
// R rows processed by this rank's local experts (R = M on one process).
//
// MoE semantics, exactly WeNet's: router logits = gate(x) (Linear D -> E, no bias); top-k over the
// RAW logits (ties -> lower expert id); routing weights = softmax over the k selected logits only, in
// T (fp32 for float, as WeNet's softmax(dtype=float32); fp64 for double); no capacity, no token
// dropping, no noise, no auxiliary loss. The gate gets gradient only through the routing softmax.
// Execution: the routed pairs are permuted expert-major (moe_permute_plan / moe_permute_forward),
// handed to an ExpertDispatcher (model/expert_dispatch.h; identity on one process), each local expert
// runs ONE GEMM for w_1 over its contiguous block of rows, the activation and dropout run over all
// rows at once, ONE GEMM per expert for w_2, then the rows come back and are combined with the
// routing weights in fixed slot order (moe_unpermute_forward).
//
// Token mask (MoE only, optional): tokens with mask 0 (padding) are not routed: their output is 0 and
// they contribute no gradient to x, the gate or the experts. WeNet routes padded frames too; that
// changes nothing at valid positions (each token's output depends on its own row only) and padded
// outputs are masked downstream (conv module zeroes them, attention masks them as keys), so skipping
// them is exact for the loss and saves the experts' work. Padded rows of x must still be finite (the
// gate GEMM reads them).
//
// Dropout: one site per FFN, rng.site(rate, layer_id, site_id), over the hidden activations
// ([N, F] dense; [R, F] in local-expert-major row order for the MoE, Philox counter = flat index).
// The caller picks site_id (as for attention) so that the two FFNs of a Conformer layer (macaron and
// second) draw different masks; forward and backward must get the same (layer_id, site_id). With
// expert parallelism the MoE's mask follows the holder's row order, so masks differ between EP
// layouts (equivalence tests across EP sizes need dropout 0).
//
// Saved pointers: forward records `x` (the caller's input) in the Saved struct; it must stay valid
// and unchanged until backward (normally it lives in the same activation arena).
// Gradient convention: parameter grads accumulate (+=); dx is assigned (=).
#pragma once

#include <cstdint>
#include <string>

#include "core/run_context.h"
#include "model/expert_dispatch.h"
#include "model/layer_common.h"
#include "model/model_config.h"
#include "model/parameter_table.h"

namespace moeasr {

// ---------------------------------------------------------------------------------------------
// Dense FFN (PositionwiseFeedForward)

template <class T>
struct FfnParams {
  LinearRef<T> w_1;                                    // <prefix>.w_1: weight [F, D], bias [F] or empty
  LinearRef<T> w_2;                                    // <prefix>.w_2: weight [D, F], bias [D] or empty
  ActivationType activation = ActivationType::kSwish;  // swish (encoder) / relu (decoder)
  double dropout_rate = 0.0;                           // on act(w_1 x), training only
};

// Binds "<prefix>.w_1" and "<prefix>.w_2" (biases when the table has them); CHECKs the shapes agree.
template <class T>
FfnParams<T> bind_ffn(ParameterStore<T>* store, const std::string& prefix, ActivationType activation,
                      double dropout_rate);

template <class T>
struct FfnSaved {
  const T* x = nullptr;     // [N, D] the forward input (caller's buffer)
  T* hidden_pre = nullptr;  // [N, F] w_1 x + b_1 (activation input)
  T* hidden = nullptr;      // [N, F] dropout(act(hidden_pre)) (w_2 input)
  int64_t n = 0;
};

template <class T>
void ffn_forward(FfnSaved<T>* saved,  // filled; buffers from ctx.activations
                 T* out,              // [N, D]
                 const T* x,          // [N, D]
                 const FfnParams<T>& p, int64_t n, uint64_t layer_id, uint64_t site_id, const StepRng& rng,
                 const RunContext& ctx);

template <class T>
void ffn_backward(T* dx,                     // [N, D] assigned
                  const FfnSaved<T>& saved,  // from ffn_forward
                  const T* dout,             // [N, D]
                  const FfnParams<T>& p,     // grads accumulated
                  int64_t n, uint64_t layer_id, uint64_t site_id, const StepRng& rng, const RunContext& ctx);

// ---------------------------------------------------------------------------------------------
// MoE FFN (MoEFFNLayer)

template <class T>
struct MoeFfnParams {
  LinearRef<T> gate;  // <prefix>.gate: weight [E, D], no bias
  // This rank's experts "<prefix>.experts.<global id>.w_*", one contiguous [E_local, ...] block per
  // tensor kind in the expert region (ParameterTable::add_expert_block): local expert e's w_1.weight
  // is w_1_weight.value + e * F * D, and likewise for the grads and the other tensors.
  ParamRef<T> w_1_weight;          // [E_local, F, D]
  ParamRef<T> w_1_bias;            // [E_local, F] or empty (mlp_bias false)
  ParamRef<T> w_2_weight;          // [E_local, D, F]
  ParamRef<T> w_2_bias;            // [E_local, D] or empty
  int64_t d_model = 0;             // D
  int64_t hidden = 0;              // F
  int64_t n_experts = 0;           // E (global)
  int64_t n_local_experts = 0;     // E_local = E / ep_size
  int64_t first_local_expert = 0;  // global id of local expert 0 = ep_rank * E_local
  int64_t top_k = 2;               // K (n_expert_activated)
  ActivationType activation = ActivationType::kSwish;
  double dropout_rate = 0.0;  // inside each expert, on act(w_1 x), training only
};

// Binds "<prefix>.gate.weight" and this rank's "<prefix>.experts.<global id>.w_1/w_2.weight/.bias"
// for `layout`; E comes from the gate's shape. CHECKs that the local experts' tensors are contiguous
// blocks in expert order (add_expert_block's layout) with equal shapes, and that biases are all
// present or all absent.
template <class T>
MoeFfnParams<T> bind_moe_ffn(ParameterStore<T>* store, const std::string& prefix, const ExpertLayout& layout,
                             int64_t top_k, ActivationType activation, double dropout_rate);

template <class T>
struct MoeFfnSaved {
  const T* x = nullptr;                    // [N, D] the forward input (caller's buffer)
  const uint8_t* token_mask = nullptr;     // [N] or null (caller's buffer)
  int32_t* selected = nullptr;             // [N, K] top-k expert ids (global), descending logit
  Accum<T>* routing_weights = nullptr;     // [N, K] softmax over the selected logits
  const int64_t* expert_counts = nullptr;  // [E] routed rows per global expert (this rank's tokens),
                                           // the load statistics: host memory, or ctx.device memory
                                           // when sizes_on_device
  bool sizes_on_device = false;            // GPU with every expert local: M and the counts stay on the
                                           // device, routed_rows and R are the bound N*k, no exchange
  int32_t* dest = nullptr;                 // [N, K] permuted row of each pair, -1 for unrouted tokens
  ExpertDispatchCounts dispatch;           // counts of the exchange (R, per-local-expert rows)
  const T* local_x = nullptr;              // [R, D] local experts' input rows (dispatcher-owned/arena)
  const int64_t* local_offsets = nullptr;  // [E_local + 1] ctx.device: first row of each local expert in
                                           // local_x (the grouped Linears' row ranges)
  T* hidden_pre = nullptr;                 // [R, F] w_1 x + b_1 per expert
  T* hidden = nullptr;                     // [R, F] dropout(act(hidden_pre))
  const T* permuted_out = nullptr;         // [M, D] expert outputs back in this rank's permuted order
  int64_t n = 0;                           // N
  int64_t routed_rows = 0;                 // M (sizes_on_device: the bound N*k)
};

// The dispatcher decides where the local experts' rows come from; its layout() must match the one
// the params were bound with. It is called on every path (also N = 0), as a collective would need.
template <class T>
void moe_ffn_forward(MoeFfnSaved<T>* saved,      // filled; buffers from ctx.activations
                     T* out,                     // [N, D]; rows of unrouted tokens are 0
                     const T* x,                 // [N, D]
                     const uint8_t* token_mask,  // [N] 1 = route, 0 = padding; or null (route all)
                     const MoeFfnParams<T>& p, ExpertDispatcher<T>* dispatcher, int64_t n, uint64_t layer_id,
                     uint64_t site_id, const StepRng& rng, const RunContext& ctx);

template <class T>
void moe_ffn_backward(T* dx,                        // [N, D] assigned
                      const MoeFfnSaved<T>& saved,  // from moe_ffn_forward
                      const T* dout,                // [N, D]
                      const MoeFfnParams<T>& p,     // grads accumulated (gate and local experts)
                      ExpertDispatcher<T>* dispatcher, int64_t n, uint64_t layer_id, uint64_t site_id,
                      const StepRng& rng, const RunContext& ctx);

}  // namespace moeasr
