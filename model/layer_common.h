// model/layer_common.h — what every layer in model/ shares: references to a tensor's value and
// gradient inside the ParameterStore, the per-module parameter structs (Linear, LayerNorm) bound by
// WeNet name, activation allocation from the step's arena, and dropout keys.
//
// Layer conventions (as kernels/, one level up): `<layer>_forward(saved, out, inputs, params, sizes,
// ctx)` and `<layer>_backward(dinputs, saved, dout, params, sizes, ctx)`. Forward allocates what
// backward needs from ctx.activations (valid until the step's reset) and records it in a
// `<Layer>Saved<T>` struct. Parameter gradients accumulate (+=); activation gradients are assigned.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>

#include "core/arena.h"
#include "core/check.h"
#include "core/philox.h"
#include "core/run_context.h"
#include "kernels/ops.h"
#include "model/parameter_table.h"

namespace moeasr {

// A tensor of the model as the ops see it. For float and double models `value` and `master` are the
// same array; a bf16 model (ParameterStore<bf16>) reads `value` from the bf16 copy in its matrix
// products and `master` (fp32) where the op takes fp32 parameters (norms, biases added in fp32, tables).
template <class T>
struct ParamRef {
  ParamRef() = default;
  // A float or double tensor whose value is its master (tests and host tools build these by hand).
  ParamRef(Accum<T>* value_and_master, Accum<T>* gradient, int64_t elements)
      : value(value_and_master), master(value_and_master), grad(gradient), numel(elements) {
    static_assert(std::is_same_v<T, Accum<T>>, "a bf16 ParamRef needs its bf16 copy: bind it from a store");
  }

  const T* value = nullptr;    // the value in the storage type T
  Accum<T>* master = nullptr;  // the trained value (buffers: updated in place, e.g. BatchNorm statistics)
  Accum<T>* grad = nullptr;    // null for buffers
  int64_t numel = 0;
};

template <class T>
struct LinearRef {
  ParamRef<T> weight;  // [out, in]
  ParamRef<T> bias;    // [out] or empty
  int64_t in_features = 0;
  int64_t out_features = 0;
};

template <class T>
struct LayerNormRef {
  ParamRef<T> weight;  // [C]
  ParamRef<T> bias;    // [C]
  int64_t channels = 0;
  double eps = 1e-5;  // every LayerNorm in WeNet's Conformer and decoder
};

template <class T>
ParamRef<T> bind_param(ParameterStore<T>* store, const std::string& name) {
  const ParamEntry& e = store->table->at(name);
  ParamRef<T> ref;
  ref.value = store->value(e);
  ref.master = store->master(e);
  ref.grad = e.region == ParamRegion::kBuffer ? nullptr : store->grad(e);
  ref.numel = e.numel;
  return ref;
}

// Binds "<prefix>.weight" (and "<prefix>.bias" when the table has it).
template <class T>
LinearRef<T> bind_linear(ParameterStore<T>* store, const std::string& prefix) {
  LinearRef<T> ref;
  const ParamEntry& w = store->table->at(prefix + ".weight");
  ref.weight = bind_param(store, prefix + ".weight");
  ref.out_features = w.shape[0];
  ref.in_features = w.shape.numel() / w.shape[0];  // Conv1d(k=1) weights [out, in, 1] included
  if (store->table->find(prefix + ".bias") != nullptr) ref.bias = bind_param(store, prefix + ".bias");
  return ref;
}

template <class T>
LayerNormRef<T> bind_layer_norm(ParameterStore<T>* store, const std::string& prefix) {
  LayerNormRef<T> ref;
  ref.weight = bind_param(store, prefix + ".weight");
  ref.bias = bind_param(store, prefix + ".bias");
  ref.channels = ref.weight.numel;
  return ref;
}

// n elements of T from the step's activation arena.
template <class T>
T* activation_alloc(const RunContext& ctx, int64_t n) {
  CHECK(ctx.activations != nullptr) << "RunContext.activations is not set";
  return ctx.activations->allocate_array<T>(n);
}

// n elements of T in host memory for the step's metadata (lengths, targets, per-expert counts):
// ctx.host_metadata, or the activation arena when that is host memory (the CPU backend).
template <class T>
T* host_alloc(const RunContext& ctx, int64_t n) {
  Arena* arena = ctx.host_metadata != nullptr ? ctx.host_metadata : ctx.activations;
  CHECK(arena != nullptr) << "RunContext.activations is not set";
  CHECK(arena->device() == Device::cpu) << "host metadata would land in " << device_name(arena->device())
                                        << " memory: set RunContext.host_metadata";
  return arena->allocate_array<T>(n);
}

// The host array `host` [n] as ctx.device memory: the array itself on the CPU, else a copy in the
// activation arena (asynchronous; `host` must live until the step ends, as host_alloc memory does).
template <class T>
const T* device_mirror(const RunContext& ctx, const T* host, int64_t n) {
  if (ctx.device == Device::cpu || host == nullptr) return host;
  T* copy = activation_alloc<T>(ctx, n);
  op::copy_host_to_device(copy, host, n * static_cast<int64_t>(sizeof(T)), ctx);
  return copy;
}

// The ctx.device array `device` [n] readable on the host: the array itself on the CPU, else a copy in
// host_alloc memory (waits for the stream: a host synchronisation).
template <class T>
const T* host_mirror(const RunContext& ctx, const T* device, int64_t n) {
  if (ctx.device == Device::cpu || device == nullptr) return device;
  T* copy = host_alloc<T>(ctx, n);
  op::copy_device_to_host(copy, device, n * static_cast<int64_t>(sizeof(T)), ctx);
  return copy;
}

// x [n] (ctx.device memory) as Accum<T>: the array itself when T is Accum<T>, else an fp32 copy in the
// activation arena (the model's hand-over from bf16 storage to the fp32 routing and CTC ops).
template <class T>
const Accum<T>* as_accum(const T* x, int64_t n, const RunContext& ctx) {
  if constexpr (std::is_same_v<T, Accum<T>>) {
    return x;
  } else {
    Accum<T>* out = activation_alloc<Accum<T>>(ctx, n);
    op::convert_elements(out, x, n, ctx);
    return out;
  }
}

// x [n] in Accum<T> as T: the array itself, or a copy rounded to T (bf16) in the activation arena.
template <class T>
const T* as_storage(const Accum<T>* x, int64_t n, const RunContext& ctx) {
  if constexpr (std::is_same_v<T, Accum<T>>) {
    return x;
  } else {
    T* out = activation_alloc<T>(ctx, n);
    op::convert_elements(out, x, n, ctx);
    return out;
  }
}

// Where a dropout draws its mask: rate, and the Philox stream for this (step, layer, site).
// A rate of 0 or training == false makes it the identity.
struct DropoutSite {
  double rate = 0.0;
  bool training = false;
  PhiloxStream stream;
  bool active() const { return training && rate > 0.0; }
};

// Training-time randomness of one forward pass: the step's key; each layer derives its sites from
// (layer id, site id) so that forward and backward see the same masks without storing them.
struct StepRng {
  RngKey base;  // seed, epoch, step, rank set by the trainer; purpose kDropout
  bool training = false;
  DropoutSite site(double rate, uint64_t layer_id, uint64_t site_id) const {
    RngKey key = base;
    key.purpose = RngPurpose::kDropout;
    key.stream = layer_id * 64 + site_id;
    DropoutSite s;
    s.rate = rate;
    s.training = training;
    s.stream = philox_stream(key);
    return s;
  }
};

}  // namespace moeasr
