// parallel/mpi_communicator.h — the Communicator over MPI (host buffers): CPU training, CI, and the
// bootstrap/side channel of the NCCL backend. Every collective is nonblocking underneath
// (MPI_Iallreduce, MPI_Iallgather, MPI_Ibcast, MPI_Ibarrier; all-to-all as one MPI_Isend/MPI_Irecv per
// peer, so that a missing peer can be named) followed by a test loop with a deadline: a collective
// that does not complete within options().timeout is an error naming the group, rank, operation and
// sequence number — never a hang (traps 7.9, 7.10). Debug mode exchanges fingerprints over a second
// duplicated communicator before each collective (communicator.h). The communicators use
// MPI_ERRORS_RETURN, so MPI errors (e.g. a truncated message) become Status messages too.
//
// Waiting: the test loop spins briefly, then yields the core (sched_yield) and after a few ms sleeps
// 50 us between tests, so oversubscribed ranks (CI: 4 ranks on 2 cores) leave the cores to peers.
#pragma once

#include <mpi.h>

#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace moeasr {

// MPI's element type for a moe-asr dtype (bf16/f16 move as 16-bit integers and cannot be reduced).
MPI_Datatype mpi_datatype(DType dtype);
// "MPI_ERR_TRUNCATE: message truncated" for an MPI error code.
std::string mpi_error_string(int code);

class MpiCommunicator final : public Communicator {
 public:
  // Duplicates `comm` (MPI_Comm_idup, so a member that never comes is a timeout too) for the
  // payload and again for the debug side channel. The caller keeps `comm`. Collective over `comm`.
  static StatusOr<std::unique_ptr<MpiCommunicator>> create(MPI_Comm comm, std::string name,
                                                           CommunicatorOptions options);
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  Device device() const override { return Device::cpu; }
  int world_rank_of(int group_rank) const override { return world_ranks_.at(group_rank); }
  const CommunicatorOptions& options() const override { return options_; }
  int64_t sequence_number() const override { return sequence_; }
  MPI_Comm comm() const { return comm_; }

  Status all_reduce(void* buf, int64_t count, DType dtype, ReduceOp op) override;
  Status all_gather(void* out, const void* in, int64_t count, DType dtype) override;
  Status all_to_all(void* out, const void* in, int64_t count_per_peer, DType dtype) override;
  Status all_to_all_v(void* out, const int64_t* out_counts, const void* in, const int64_t* in_counts,
                      DType dtype) override;
  Status all_to_all_blocks(void* out, const AllToAllBlocks& out_blocks, const void* in,
                           const AllToAllBlocks& in_blocks, DType dtype) override;
  Status broadcast(void* buf, int64_t count, DType dtype, int root) override;
  Status barrier() override;

  // The debug side channel, public so that another backend over the same ranks (NCCL) can check its
  // own collectives: sends `mine` to every member, receives theirs within the timeout, and runs
  // check_collective_fingerprints. Does not advance this communicator's sequence number.
  Status exchange_fingerprints(const CollectiveFingerprint& mine);

 private:
  MpiCommunicator(MPI_Comm comm, MPI_Comm side, std::string name, CommunicatorOptions options);
  // Assigns the next sequence number to `fp` and, in debug mode, checks it across the group.
  Status begin(CollectiveFingerprint* fp);
  // Tests `requests` until all complete or the deadline passes. `peers[i]` names the member behind
  // request i (-1 for a collective request). On timeout the unfinished requests are cancelled
  // (receives), released (sends) or kept as orphans (collectives, which MPI cannot cancel).
  Status wait(std::vector<MPI_Request>* requests, const std::vector<int>& peers, const char* what);
  // Applies the error policy to a failed collective.
  Status finish(Status status, const CollectiveFingerprint& fp);

  MPI_Comm comm_ = MPI_COMM_NULL;
  MPI_Comm side_ = MPI_COMM_NULL;
  std::string name_;
  CommunicatorOptions options_;
  int rank_ = 0;
  int size_ = 1;
  std::vector<int> world_ranks_;
  int64_t sequence_ = 0;
  std::vector<MPI_Request> orphans_;  // collective requests abandoned after a timeout
};

}  // namespace moeasr
