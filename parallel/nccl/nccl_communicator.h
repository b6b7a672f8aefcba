// parallel/nccl/nccl_communicator.h — the Communicator over NCCL (device buffers), built only with the
// CUDA backend (after llm.c's zero.cuh and flashlight's NCCL backend, style_anchors.md §1.7, §3.5):
//   - bootstrap over MPI: rank 0 of the group draws the ncclUniqueId, MPI broadcasts it (through an
//     MpiCommunicator of the same ranks, so a missing rank is a timeout), every rank calls
//     cudaSetDevice(device) BEFORE ncclCommInitRank (trap 7.11);
//   - every collective is enqueued on the communicator's own non-blocking stream; the caller orders
//     it with compute by events, not device syncs (habit 16): wait_for_compute(compute_stream) before
//     enqueueing work that reads buffers written by compute, compute_wait(compute_stream) before
//     compute reads what a collective wrote; synchronize() blocks the host until the stream is
//     idle, with the timeout: a collective that does not finish in time aborts the NCCL communicator
//     (ncclCommAbort) and returns DeadlineExceeded naming the group, rank and sequence number;
//   - all_to_all_v is a group of ncclSend/ncclRecv, one pair per peer with a non-zero count (NCCL
//     has no alltoallv; counts are host-side, moe_systems.md fact 5);
//   - debug mode fingerprints every call over the MPI bootstrap communicator before enqueueing it.
// Counts are elements; buffers are device pointers on `device`.
#pragma once

#include <memory>
#include <string>

#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"

namespace moeasr {

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `bootstrap`, which must outlive this communicator (debug-mode side channel).
  static StatusOr<std::unique_ptr<NcclCommunicator>> create(MpiCommunicator* bootstrap, int device,
                                                            CommunicatorOptions options);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return bootstrap_->rank(); }
  int size() const override { return bootstrap_->size(); }
  const std::string& name() const override { return bootstrap_->name(); }
  Device device() const override { return Device::cuda; }
  int world_rank_of(int group_rank) const override { return bootstrap_->world_rank_of(group_rank); }
  const CommunicatorOptions& options() const override { return options_; }
  int64_t sequence_number() const override { return sequence_; }
  int cuda_device() const { return device_; }
  void* stream() const { return stream_; }  // cudaStream_t

  Status all_reduce(void* buf, int64_t count, DType dtype, ReduceOp op) override;
  Status all_gather(void* out, const void* in, int64_t count, DType dtype) override;
  Status all_to_all(void* out, const void* in, int64_t count_per_peer, DType dtype) override;
  Status all_to_all_v(void* out, const int64_t* out_counts, const void* in, const int64_t* in_counts,
                      DType dtype) override;
  // One ncclSend/ncclRecv per non-empty block: NCCL matches them in order, so the i-th non-empty
  // block this rank sends to j must have the size of the i-th non-empty block j receives from it
  // (the expert dispatcher describes both sides per (peer, local expert), which guarantees it).
  Status all_to_all_blocks(void* out, const AllToAllBlocks& out_blocks, const void* in,
                           const AllToAllBlocks& in_blocks, DType dtype) override;
  Status broadcast(void* buf, int64_t count, DType dtype, int root) override;
  Status barrier() override;  // a one-element all-reduce, then synchronize()
  Status synchronize() override;

  // Event ordering between a compute stream (cudaStream_t) and this communicator's stream.
  Status wait_for_compute(void* compute_stream);
  Status compute_wait(void* compute_stream);
  Status after_compute(void* compute_stream) override { return wait_for_compute(compute_stream); }
  Status before_compute(void* compute_stream) override { return compute_wait(compute_stream); }

 private:
  NcclCommunicator(MpiCommunicator* bootstrap, int device, CommunicatorOptions options);
  Status begin(CollectiveFingerprint* fp);
  Status finish(Status status, const CollectiveFingerprint& fp);

  MpiCommunicator* bootstrap_;
  int device_;
  CommunicatorOptions options_;
  void* comm_ = nullptr;     // ncclComm_t
  void* stream_ = nullptr;   // cudaStream_t
  void* event_ = nullptr;    // cudaEvent_t
  void* scratch_ = nullptr;  // one float on the device, for barrier()
  int64_t sequence_ = 0;
  bool aborted_ = false;
};

}  // namespace moeasr
