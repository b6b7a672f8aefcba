// parallel/grad_sync.cc — bucketed gradient all-reduce, distributed norm and clipping (see the header).
#include "parallel/grad_sync.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <string>
#include <vector>

#include "kernels/ops.h"

namespace moeasr {
namespace {

// Sums grads [begin, end) of `region` over `comm` in buckets of at most `bucket_bytes`.
template <class T>
Status all_reduce_buckets(ParameterStore<T>* store, ParamRegion region, int64_t begin, int64_t end,
                          Communicator* comm, int64_t bucket_bytes, const char* name) {
  // A one-member group has nothing to sum; a device-resident store must not hand an MPI communicator
  // device memory (a CPU store keeps the call, so collective sequence numbers stay as they were).
  if (store->device() != Device::cpu && comm->size() == 1) return Status();
  T* grads = store->region_grads(region);  // the working copy: host, or device memory after place_on
  const int64_t per_bucket = std::max<int64_t>(1, bucket_bytes / static_cast<int64_t>(sizeof(T)));
  // The bucket count is a function of the range alone, equal on every member (same table).
  for (int64_t at = begin; at < end; at += per_bucket) {
    const int64_t count = std::min(per_bucket, end - at);
    Status s = comm->all_reduce(grads + at, count, DTypeOf<T>::value, ReduceOp::kSum);
    if (!s.ok()) return s.with_context(std::string("syncing the ") + name + " gradients");
  }
  return Status();
}

template <class T>
Status check_sync_arguments(const ParameterStore<T>& store, const GradSyncOptions& options,
                            std::initializer_list<Communicator*> comms) {
  if (options.bucket_bytes <= 0) {
    return invalid_argument_error("GradSyncOptions.bucket_bytes must be > 0, got " +
                                  std::to_string(options.bucket_bytes));
  }
  for (Communicator* comm : comms) {
    if (store.device() != Device::cpu && comm->size() > 1 && comm->device() != store.device()) {
      return invalid_argument_error("gradient sync of a GPU-resident model over group '" + comm->name() +
                                    "' needs a device communicator (NCCL); it is on " +
                                    device_name(comm->device()));
    }
  }
  return Status();
}

template <class T>
double squared_norm(const ParameterStore<T>& store, ParamRegion region, const RunContext& ctx) {
  GradBuffer<T> buffer{const_cast<ParameterStore<T>&>(store).region_grads(region),
                       static_cast<int64_t>(store.grads[static_cast<int>(region)].size())};
  const double norm = op::global_grad_norm(&buffer, 1, ctx);
  return norm * norm;
}

}  // namespace

StatusOr<int64_t> global_batch_size(int64_t local_batch, Communicator* world) {
  if (local_batch < 0) return invalid_argument_error("negative batch size " + std::to_string(local_batch));
  int64_t total = local_batch;
  RETURN_IF_ERROR(world->all_reduce(&total, 1, DType::i64, ReduceOp::kSum));
  return total;
}

template <class T>
Status sync_gradients(ParameterStore<T>* store, Communicator* world, Communicator* edp,
                      const GradSyncOptions& options) {
  RETURN_IF_ERROR(check_sync_arguments(*store, options, {world, edp}));
  const auto size = [&](ParamRegion r) {
    return static_cast<int64_t>(store->grads[static_cast<int>(r)].size());
  };
  RETURN_IF_ERROR(all_reduce_buckets(store, ParamRegion::kDense, 0, size(ParamRegion::kDense), world,
                                     options.bucket_bytes, "dense"));
  RETURN_IF_ERROR(all_reduce_buckets(store, ParamRegion::kExpert, 0, size(ParamRegion::kExpert), edp,
                                     options.bucket_bytes, "expert"));
  return Status();
}

template <class T>
Status sync_gradient_range(ParameterStore<T>* store, ParamRegion region, int64_t begin, int64_t end,
                           Communicator* comm, const GradSyncOptions& options) {
  if (region != ParamRegion::kDense && region != ParamRegion::kExpert) {
    return invalid_argument_error(std::string("sync_gradient_range: the ") + param_region_name(region) +
                                  " region has no gradients");
  }
  const int64_t n = static_cast<int64_t>(store->grads[static_cast<int>(region)].size());
  if (begin < 0 || begin > end || end > n) {
    return invalid_argument_error("sync_gradient_range: [" + std::to_string(begin) + ", " +
                                  std::to_string(end) + ") is outside the " + param_region_name(region) +
                                  " region's " + std::to_string(n) + " gradients");
  }
  RETURN_IF_ERROR(check_sync_arguments(*store, options, {comm}));
  return all_reduce_buckets(store, region, begin, end, comm, options.bucket_bytes,
                            region == ParamRegion::kDense ? "dense" : "expert");
}

template <class T>
StatusOr<double> global_grad_norm_distributed(const ParameterStore<T>& store, Communicator* ep,
                                              const RunContext& ctx) {
  const double dense = squared_norm(store, ParamRegion::kDense, ctx);
  double expert = squared_norm(store, ParamRegion::kExpert, ctx);
  RETURN_IF_ERROR(ep->all_reduce(&expert, 1, DType::f64, ReduceOp::kSum));
  return std::sqrt(dense + expert);
}

template <class T>
StatusOr<double> clip_grad_norm_distributed(ParameterStore<T>* store, double max_norm, Communicator* ep,
                                            const RunContext& ctx) {
  if (!(max_norm > 0)) return invalid_argument_error("max_norm must be > 0, got " + std::to_string(max_norm));
  ASSIGN_OR_RETURN(double norm, global_grad_norm_distributed(*store, ep, ctx));
  if (!std::isfinite(norm)) return norm;
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) {
    for (ParamRegion region : {ParamRegion::kDense, ParamRegion::kExpert}) {
      T* g = store->region_grads(region);
      op::scale_forward(g, g, static_cast<T>(coef),
                        static_cast<int64_t>(store->grads[static_cast<int>(region)].size()), ctx);
    }
  }
  return norm;
}

#define MOEASR_INSTANTIATE_GRAD_SYNC(T)                                                                    \
  template Status sync_gradients<T>(ParameterStore<T>*, Communicator*, Communicator*,                      \
                                    const GradSyncOptions&);                                               \
  template Status sync_gradient_range<T>(ParameterStore<T>*, ParamRegion, int64_t, int64_t, Communicator*, \
                                         const GradSyncOptions&);                                          \
  template StatusOr<double> global_grad_norm_distributed<T>(const ParameterStore<T>&, Communicator*,       \
                                                            const RunContext&);                            \
  template StatusOr<double> clip_grad_norm_distributed<T>(ParameterStore<T>*, double, Communicator*,       \
                                                          const RunContext&);
MOEASR_INSTANTIATE_GRAD_SYNC(float)
MOEASR_INSTANTIATE_GRAD_SYNC(double)
#undef MOEASR_INSTANTIATE_GRAD_SYNC

}  // namespace moeasr
