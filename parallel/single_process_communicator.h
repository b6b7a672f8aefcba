// parallel/single_process_communicator.h — a Communicator for a group of one process (after c10d's
// FakeProcessGroup): no communication, but every argument is checked as the real backends check it
// (counts, splits, roots), so code run on one process exercises the same calls as under mpirun.
// Host buffers.
#pragma once

#include <string>

#include "parallel/communicator.h"

namespace moeasr {

class SingleProcessCommunicator final : public Communicator {
 public:
  explicit SingleProcessCommunicator(std::string name = "world", CommunicatorOptions options = {});

  int rank() const override { return 0; }
  int size() const override { return 1; }
  const std::string& name() const override { return name_; }
  Device device() const override { return Device::cpu; }
  int world_rank_of(int group_rank) const override { return group_rank; }
  const CommunicatorOptions& options() const override { return options_; }
  int64_t sequence_number() const override { return sequence_; }

  Status all_reduce(void* buf, int64_t count, DType dtype, ReduceOp op) override;
  Status all_gather(void* out, const void* in, int64_t count, DType dtype) override;
  Status all_to_all(void* out, const void* in, int64_t count_per_peer, DType dtype) override;
  Status all_to_all_v(void* out, const int64_t* out_counts, const void* in, const int64_t* in_counts,
                      DType dtype) override;
  Status all_to_all_blocks(void* out, const AllToAllBlocks& out_blocks, const void* in,
                           const AllToAllBlocks& in_blocks, DType dtype) override;
  Status broadcast(void* buf, int64_t count, DType dtype, int root) override;
  Status barrier() override;

 private:
  Status finish(Status status, CollectiveOp op, int64_t sequence);

  std::string name_;
  CommunicatorOptions options_;
  int64_t sequence_ = 0;
};

}  // namespace moeasr
