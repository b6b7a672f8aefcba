// model/parameter_table.h — the parameter table of a U2++ (MoE) model: one entry per tensor, named
// with WeNet's state-dict name, generated from the ModelConfig (after llm.c's ParameterTensors, with
// regions for MoE). Every tensor lives in one flat buffer per region:
//   dense  — replicated on every rank, gradients all-reduced over the world;
//   expert — this rank's experts, laid out [E_local, ...] per MoE FFN tensor (w_1.weight of the local
//            experts is one [E_local, f, d] block), gradients all-reduced over the expert-data-parallel
//            group;
//   buffer — not trained (global CMVN, BatchNorm running statistics): checkpointed, never reduced.
// Gradients and Adam moments use the same layout, so a region is one buffer for a collective and a
// checkpoint shard is an offset range.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/arena.h"
#include "core/run_context.h"
#include "core/tensor.h"
#include "model/model_config.h"

namespace moeasr {

enum class ParamRegion : uint8_t { kDense = 0, kExpert = 1, kBuffer = 2 };
constexpr int kNumParamRegions = 3;
const char* param_region_name(ParamRegion region);

// PyTorch's default initialisations, as WeNet leaves them (u2pp_moe_wenet.md §3).
enum class ParamInit : uint8_t {
  kZeros,
  kOnes,
  kUniformFanIn,   // U(-1/sqrt(fan_in), 1/sqrt(fan_in)): nn.Linear / nn.Conv weights and biases
  kXavierUniform,  // U(-a, a), a = sqrt(6 / (fan_in + fan_out)): pos_bias_u / pos_bias_v
  kNormal,         // N(0, 1): nn.Embedding
};

struct ParamEntry {
  std::string name;  // WeNet state-dict name, e.g. encoder.encoders.3.feed_forward.experts.5.w_1.weight
  Shape shape;       // PyTorch shape
  ParamRegion region = ParamRegion::kDense;
  int64_t offset = 0;  // element offset inside the region buffer
  int64_t numel = 0;
  ParamInit init = ParamInit::kZeros;
  int64_t fan_in = 0;
  int64_t fan_out = 0;
  int32_t expert = -1;  // global expert id for expert tensors, -1 otherwise
};

// How the experts of each MoE FFN are split over an expert-parallel group.
struct ExpertLayout {
  int64_t ep_rank = 0;
  int64_t ep_size = 1;
};

class ParameterTable {
 public:
  const std::vector<ParamEntry>& entries() const { return entries_; }
  int64_t region_numel(ParamRegion region) const { return region_numel_[static_cast<int>(region)]; }
  // nullptr when absent.
  const ParamEntry* find(const std::string& name) const;
  // CHECK-fails naming the tensor when absent (model construction bugs).
  const ParamEntry& at(const std::string& name) const;

  // Appends a tensor at the end of its region.
  void add(const std::string& name, Shape shape, ParamRegion region, ParamInit init, int64_t fan_in,
           int64_t fan_out = 0, int32_t expert = -1);
  // Appends an [E_local, ...] block for the named per-expert tensors, e.g. prefix
  // "encoder.encoders.0.feed_forward.experts", suffix "w_1.weight", local shape {f, d}: entries
  // "<prefix>.<global id>.<suffix>" placed contiguously in expert order.
  void add_expert_block(const std::string& prefix, const std::string& suffix, Shape per_expert_shape,
                        const ExpertLayout& layout, int64_t experts_total, ParamInit init, int64_t fan_in);

 private:
  std::vector<ParamEntry> entries_;
  std::unordered_map<std::string, size_t> index_;
  int64_t region_numel_[kNumParamRegions] = {0, 0, 0};
};

// The full table of a U2++ model for this rank's share of the experts.
// CHECK-fails on a config validate_model_config() rejects.
ParameterTable build_u2pp_parameter_table(const ModelConfig& config, const ExpertLayout& layout);

// Flat storage for values (and, for trainable regions, gradients) of one table. The host vectors
// always exist (initialisation, checkpoints); after place_on(arena) of a device arena the model's
// working copy lives in that arena and value()/grad() return device pointers. The host vectors are
// then a staging copy that copy_to_host() refreshes.
template <class T>
struct ParameterStore {
  const ParameterTable* table = nullptr;
  std::vector<T> values[kNumParamRegions];
  std::vector<T> grads[kNumParamRegions];  // buffer region: empty

  explicit ParameterStore(const ParameterTable& t);
  T* value(const ParamEntry& e) { return region_values(e.region) + e.offset; }
  const T* value(const ParamEntry& e) const {
    return const_cast<ParameterStore*>(this)->region_values(e.region) + e.offset;
  }
  // The host vectors' element of e, whatever holds the working copy (checkpoints and weight files
  // read and write these; after place_on they are staging, see copy_to_host).
  T* host_value(const ParamEntry& e) { return values[static_cast<int>(e.region)].data() + e.offset; }
  const T* host_value(const ParamEntry& e) const {
    return values[static_cast<int>(e.region)].data() + e.offset;
  }
  T* grad(const ParamEntry& e);  // CHECK-fails for buffers
  // The trained value: the value itself (ParameterStore<bf16> below keeps the two apart).
  T* master(const ParamEntry& e) { return value(e); }
  T* value(const std::string& name) { return value(table->at(name)); }
  T* grad(const std::string& name) { return grad(table->at(name)); }
  // The working copy of a region (host vector, or device memory after place_on).
  T* region_values(ParamRegion region);
  T* region_grads(ParamRegion region);
  void zero_grads();                       // host store only
  void zero_grads(const RunContext& ctx);  // either

  // Moves the working copy into `arena` (memory of ctx.device): values uploaded, grads zeroed. Binds
  // made before this point keep pointing at the host vectors: bind after placing.
  void place_on(Arena* arena, const RunContext& ctx);
  // Downloads values and grads into the host vectors (a host synchronisation on the GPU).
  void copy_to_host(const RunContext& ctx);
  Device device() const { return device_; }

 private:
  Device device_ = Device::cpu;
  T* device_values_[kNumParamRegions] = {nullptr, nullptr, nullptr};
  T* device_grads_[kNumParamRegions] = {nullptr, nullptr, nullptr};
};

// The parameters as a model that stores its activations in bf16 binds them (U2ppModel<bf16>): the
// fp32 masters and gradients stay in `masters` (the optimizer, the gradient all-reduce and
// checkpoints use that store); value() is a bf16 copy of every value in memory of ctx.device, which
// refresh_copy() re-rounds from the masters (round to nearest even; the model does it at the start of
// each forward, so the copy is never older than the last optimizer step).
template <>
struct ParameterStore<bf16> {
  const ParameterTable* table = nullptr;
  ParameterStore<float>* masters = nullptr;

  // Allocates the copy in `arena` (memory of ctx.device, living as long as the model) and fills it.
  ParameterStore(ParameterStore<float>* masters, Arena* arena, const RunContext& ctx);
  bf16* value(const ParamEntry& e) { return copies_[static_cast<int>(e.region)] + e.offset; }
  float* master(const ParamEntry& e) { return masters->value(e); }
  float* grad(const ParamEntry& e) { return masters->grad(e); }
  void refresh_copy(const RunContext& ctx);

 private:
  bf16* copies_[kNumParamRegions] = {nullptr, nullptr, nullptr};
};

// Fills every tensor by its init rule from a Philox stream keyed by (seed, kInit, hash of the name),
// so a tensor's initial value depends on its name alone: the same expert gets the same weights
// whatever the expert-parallel layout.
template <class T>
void initialize_parameters(ParameterStore<T>* store, uint64_t seed);

}  // namespace moeasr
