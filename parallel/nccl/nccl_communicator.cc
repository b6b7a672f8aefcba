// parallel/nccl/nccl_communicator.cc — the NCCL Communicator (see the header).
#include "parallel/nccl/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>
#include <sched.h>

#include <chrono>
#include <sstream>
#include <utility>
#include <vector>

#include "core/check.h"

namespace moeasr {
namespace {

ncclComm_t as_comm(void* p) {
  return static_cast<ncclComm_t>(p);
}
cudaStream_t as_stream(void* p) {
  return static_cast<cudaStream_t>(p);
}

Status cuda_status(cudaError_t e, const char* call) {
  if (e == cudaSuccess) return Status();
  return internal_error(std::string(call) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

Status nccl_status(ncclResult_t r, const char* call, void* comm) {
  if (r == ncclSuccess) return Status();
  std::string detail = comm != nullptr ? ncclGetLastError(as_comm(comm)) : "";
  return internal_error(std::string(call) + ": " + ncclGetErrorString(r) +
                        (detail.empty() ? "" : " (" + detail + ")"));
}

StatusOr<ncclDataType_t> nccl_type(DType dtype) {
  switch (dtype) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::bf16: return ncclBfloat16;
    case DType::f16: return ncclFloat16;
    case DType::i32: return ncclInt32;
    case DType::i64: return ncclInt64;
    case DType::u8: return ncclUint8;
  }
  return invalid_argument_error("no NCCL type for this dtype");
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kMin: return ncclMin;
  }
  return ncclSum;
}

}  // namespace

StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::create(MpiCommunicator* bootstrap, int device,
                                                                     CommunicatorOptions options) {
  CHECK(bootstrap != nullptr);
  std::unique_ptr<NcclCommunicator> c(new NcclCommunicator(bootstrap, device, options));
  const std::string where =
      "NCCL group '" + bootstrap->name() + "' rank " + std::to_string(bootstrap->rank());
  // cudaSetDevice before anything NCCL does (llm.c PR #632).
  RETURN_IF_ERROR(cuda_status(cudaSetDevice(device), "cudaSetDevice").with_context(where));
  ncclUniqueId id;
  if (bootstrap->rank() == 0) RETURN_IF_ERROR(nccl_status(ncclGetUniqueId(&id), "ncclGetUniqueId", nullptr));
  RETURN_IF_ERROR(
      bootstrap->broadcast(&id, static_cast<int64_t>(sizeof(id)), DType::u8, 0).with_context(where));
  cudaStream_t stream = nullptr;
  RETURN_IF_ERROR(cuda_status(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate"));
  c->stream_ = stream;
  cudaEvent_t event = nullptr;
  RETURN_IF_ERROR(cuda_status(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate"));
  c->event_ = event;
  RETURN_IF_ERROR(cuda_status(cudaMalloc(&c->scratch_, sizeof(float)), "cudaMalloc"));
  ncclComm_t comm = nullptr;
  RETURN_IF_ERROR(nccl_status(ncclCommInitRank(&comm, bootstrap->size(), id, bootstrap->rank()),
                              "ncclCommInitRank", nullptr)
                      .with_context(where));
  c->comm_ = comm;
  return c;
}

NcclCommunicator::NcclCommunicator(MpiCommunicator* bootstrap, int device, CommunicatorOptions options)
    : bootstrap_(bootstrap), device_(device), options_(options) {}

NcclCommunicator::~NcclCommunicator() {
  if (comm_ != nullptr) {
    if (aborted_) {
      ncclCommAbort(as_comm(comm_));
    } else {
      ncclCommDestroy(as_comm(comm_));
    }
  }
  if (scratch_ != nullptr) cudaFree(scratch_);
  if (event_ != nullptr) cudaEventDestroy(static_cast<cudaEvent_t>(event_));
  if (stream_ != nullptr) cudaStreamDestroy(as_stream(stream_));
}

Status NcclCommunicator::begin(CollectiveFingerprint* fp) {
  fp->sequence = sequence_++;
  fp->group_hash = group_name_hash(name() + "/nccl");
  fp->group_rank = rank();
  fp->world_rank = world_rank_of(rank());
  if (aborted_) return failed_precondition_error("the NCCL communicator was aborted after an earlier error");
  if (!options_.debug) return Status();
  return bootstrap_->exchange_fingerprints(*fp);
}

Status NcclCommunicator::finish(Status status, const CollectiveFingerprint& fp) {
  if (status.ok()) return status;
  Status error = status.with_context(collective_context(*this, fp.op, fp.sequence));
  if (options_.on_error == CollectiveErrorPolicy::kAbort) CHECK(false) << error.to_string();
  return error;
}

Status NcclCommunicator::all_reduce(void* buf, int64_t count, DType dtype, ReduceOp op) {
  CollectiveFingerprint fp;
  fp.op = CollectiveOp::kAllReduce;
  fp.dtype = dtype;
  fp.count = count;
  fp.reduce = op;
  Status s = begin(&fp);
  StatusOr<ncclDataType_t> type = nccl_type(dtype);
  if (s.ok() && !type.ok()) s = type.status();
  if (s.ok() && count > 0) {
    s = nccl_status(ncclAllReduce(buf, buf, static_cast<size_t>(count), type.value(), nccl_op(op),
                                  as_comm(comm_), as_stream(stream_)),
                    "ncclAllReduce", comm_);
  }
  return finish(s, fp);
}

Status NcclCommunicator::all_gather(void* out, const void* in, int64_t count, DType dtype) {
  CollectiveFingerprint fp;
  fp.op = CollectiveOp::kAllGather;
  fp.dtype = dtype;
  fp.count = count;
  Status s = begin(&fp);
  StatusOr<ncclDataType_t> type = nccl_type(dtype);
  if (s.ok() && !type.ok()) s = type.status();
  if (s.ok() && count > 0) {
    s = nccl_status(
        ncclAllGather(in, out, static_cast<size_t>(count), type.value(), as_comm(comm_), as_stream(stream_)),
        "ncclAllGather", comm_);
  }
  return finish(s, fp);
}

Status NcclCommunicator::all_to_all(void* out, const void* in, int64_t count_per_peer, DType dtype) {
  std::vector<int64_t> counts(size(), count_per_peer < 0 ? 0 : count_per_peer);
  return all_to_all_v(out, counts.data(), in, counts.data(), dtype);
}

Status NcclCommunicator::all_to_all_v(void* out, const int64_t* out_counts, const void* in,
                                      const int64_t* in_counts, DType dtype) {
  CollectiveFingerprint fp;
  fp.op = CollectiveOp::kAllToAllV;
  fp.dtype = dtype;
  Status s = check_all_to_all_v_counts(*this, out_counts, in_counts);
  const int n = size();
  fp.send_counts.assign(n, 0);
  fp.recv_counts.assign(n, 0);
  if (s.ok()) {
    fp.send_counts.assign(in_counts, in_counts + n);
    fp.recv_counts.assign(out_counts, out_counts + n);
    for (int i = 0; i < n; ++i) fp.count += in_counts[i];
  }
  Status b = begin(&fp);
  if (s.ok()) s = b;
  StatusOr<ncclDataType_t> type = nccl_type(dtype);
  if (s.ok() && !type.ok()) s = type.status();
  if (s.ok()) {
    const int64_t elem = dtype_size(dtype);
    const char* src = static_cast<const char*>(in);
    char* dst = static_cast<char*>(out);
    s = nccl_status(ncclGroupStart(), "ncclGroupStart", comm_);
    int64_t send_at = 0, recv_at = 0;
    for (int peer = 0; peer < n && s.ok(); ++peer) {
      if (in_counts[peer] > 0) {
        s = nccl_status(ncclSend(src + send_at * elem, static_cast<size_t>(in_counts[peer]), type.value(),
                                 peer, as_comm(comm_), as_stream(stream_)),
                        "ncclSend", comm_);
      }
      if (s.ok() && out_counts[peer] > 0) {
        s = nccl_status(ncclRecv(dst + recv_at * elem, static_cast<size_t>(out_counts[peer]), type.value(),
                                 peer, as_comm(comm_), as_stream(stream_)),
                        "ncclRecv", comm_);
      }
      send_at += in_counts[peer];
      recv_at += out_counts[peer];
    }
    Status end = nccl_status(ncclGroupEnd(), "ncclGroupEnd", comm_);  // always close the group
    if (s.ok()) s = end;
  }
  return finish(s, fp);
}

Status NcclCommunicator::all_to_all_blocks(void* out, const AllToAllBlocks& out_blocks, const void* in,
                                           const AllToAllBlocks& in_blocks, DType dtype) {
  CollectiveFingerprint fp;
  fp.op = CollectiveOp::kAllToAllV;
  fp.dtype = dtype;
  const int n = size();
  fp.send_counts.assign(n, 0);
  fp.recv_counts.assign(n, 0);
  Status s;
  if (out_blocks.blocks_per_peer < 1 || in_blocks.blocks_per_peer < 1)
    s = invalid_argument_error("no blocks");
  for (int p = 0; s.ok() && p < n; ++p) {
    fp.send_counts[p] = in_blocks.peer_total(p);
    fp.recv_counts[p] = out_blocks.peer_total(p);
    fp.count += fp.send_counts[p];
  }
  Status b = begin(&fp);
  if (s.ok()) s = b;
  StatusOr<ncclDataType_t> type = nccl_type(dtype);
  if (s.ok() && !type.ok()) s = type.status();
  if (s.ok()) {
    const int64_t elem = dtype_size(dtype);
    const char* src = static_cast<const char*>(in);
    char* dst = static_cast<char*>(out);
    s = nccl_status(ncclGroupStart(), "ncclGroupStart", comm_);
    for (int peer = 0; peer < n && s.ok(); ++peer) {
      for (int64_t k = 0; k < in_blocks.blocks_per_peer && s.ok(); ++k) {
        const int64_t i = peer * in_blocks.blocks_per_peer + k;
        if (in_blocks.count[i] == 0) continue;
        s = nccl_status(ncclSend(src + in_blocks.offset[i] * elem, static_cast<size_t>(in_blocks.count[i]),
                                 type.value(), peer, as_comm(comm_), as_stream(stream_)),
                        "ncclSend", comm_);
      }
      for (int64_t k = 0; k < out_blocks.blocks_per_peer && s.ok(); ++k) {
        const int64_t i = peer * out_blocks.blocks_per_peer + k;
        if (out_blocks.count[i] == 0) continue;
        s = nccl_status(ncclRecv(dst + out_blocks.offset[i] * elem, static_cast<size_t>(out_blocks.count[i]),
                                 type.value(), peer, as_comm(comm_), as_stream(stream_)),
                        "ncclRecv", comm_);
      }
    }
    Status end = nccl_status(ncclGroupEnd(), "ncclGroupEnd", comm_);  // always close the group
    if (s.ok()) s = end;
  }
  return finish(s, fp);
}

Status NcclCommunicator::broadcast(void* buf, int64_t count, DType dtype, int root) {
  CollectiveFingerprint fp;
  fp.op = CollectiveOp::kBroadcast;
  fp.dtype = dtype;
  fp.count = count;
  fp.root = root;
  Status s = begin(&fp);
  if (s.ok() && (root < 0 || root >= size())) s = invalid_argument_error("root " + std::to_string(root));
  StatusOr<ncclDataType_t> type = nccl_type(dtype);
  if (s.ok() && !type.ok()) s = type.status();
  if (s.ok() && count > 0) {
    s = nccl_status(ncclBroadcast(buf, buf, static_cast<size_t>(count), type.value(), root, as_comm(comm_),
                                  as_stream(stream_)),
                    "ncclBroadcast", comm_);
  }
  return finish(s, fp);
}

Status NcclCommunicator::barrier() {
  CollectiveFingerprint fp;
  fp.op = CollectiveOp::kBarrier;
  Status s = begin(&fp);
  if (s.ok()) {
    s = nccl_status(
        ncclAllReduce(scratch_, scratch_, 1, ncclFloat32, ncclSum, as_comm(comm_), as_stream(stream_)),
        "ncclAllReduce (barrier)", comm_);
  }
  if (s.ok()) s = synchronize();
  return finish(s, fp);
}

Status NcclCommunicator::synchronize() {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point deadline = Clock::now() + options_.timeout;
  for (;;) {
    cudaError_t e = cudaStreamQuery(as_stream(stream_));
    if (e == cudaSuccess) return Status();
    if (e != cudaErrorNotReady) return cuda_status(e, "cudaStreamQuery");
    ncclResult_t async = ncclSuccess;
    Status s = nccl_status(ncclCommGetAsyncError(as_comm(comm_), &async), "ncclCommGetAsyncError", comm_);
    if (s.ok()) s = nccl_status(async, "NCCL asynchronous error", comm_);
    if (!s.ok() || Clock::now() > deadline) {
      // A peer that never arrives leaves the kernels spinning: abort the communicator so the stream
      // drains, and report. The communicator is unusable afterwards.
      ncclCommAbort(as_comm(comm_));
      comm_ = nullptr;
      aborted_ = true;
      std::ostringstream m;
      m << "[group " << name() << " rank " << rank() << "/" << size() << " (world " << world_rank_of(rank())
        << ") after seq " << sequence_ - 1 << "] ";
      if (s.ok()) {
        m << "NCCL work did not complete within " << options_.timeout.count()
          << " ms; the communicator was aborted (set MOEASR_COLLECTIVE_DEBUG=1 to learn which ranks did not "
             "arrive)";
        return deadline_exceeded_error(m.str());
      }
      return Status(s.code(), m.str() + s.message());
    }
    sched_yield();
  }
}

Status NcclCommunicator::wait_for_compute(void* compute_stream) {
  cudaEvent_t event = static_cast<cudaEvent_t>(event_);
  RETURN_IF_ERROR(cuda_status(cudaEventRecord(event, as_stream(compute_stream)), "cudaEventRecord"));
  return cuda_status(cudaStreamWaitEvent(as_stream(stream_), event, 0), "cudaStreamWaitEvent");
}

Status NcclCommunicator::compute_wait(void* compute_stream) {
  cudaEvent_t event = static_cast<cudaEvent_t>(event_);
  RETURN_IF_ERROR(cuda_status(cudaEventRecord(event, as_stream(stream_)), "cudaEventRecord"));
  return cuda_status(cudaStreamWaitEvent(as_stream(compute_stream), event, 0), "cudaStreamWaitEvent");
}

}  // namespace moeasr
