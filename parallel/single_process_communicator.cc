// parallel/single_process_communicator.cc — the one-process Communicator (see the header).
#include "parallel/single_process_communicator.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <utility>

namespace moeasr {
namespace {

Status check_count(int64_t count, const void* a, const void* b) {
  if (count < 0) return invalid_argument_error("negative element count " + std::to_string(count));
  if (count > 0 && (a == nullptr || b == nullptr)) return invalid_argument_error("null buffer");
  return Status();
}

void copy_elements(void* out, const void* in, int64_t count, DType dtype) {
  if (count > 0 && out != in) std::memmove(out, in, static_cast<size_t>(count * dtype_size(dtype)));
}

}  // namespace

SingleProcessCommunicator::SingleProcessCommunicator(std::string name, CommunicatorOptions options)
    : name_(std::move(name)), options_(options) {}

Status SingleProcessCommunicator::finish(Status status, CollectiveOp op, int64_t sequence) {
  if (status.ok()) return status;
  Status error = status.with_context(collective_context(*this, op, sequence));
  if (options_.on_error == CollectiveErrorPolicy::kAbort) {
    CHECK(false) << error.to_string();
  }
  return error;
}

Status SingleProcessCommunicator::all_reduce(void* buf, int64_t count, DType, ReduceOp) {
  const int64_t seq = sequence_++;
  return finish(check_count(count, buf, buf), CollectiveOp::kAllReduce, seq);
}

Status SingleProcessCommunicator::all_gather(void* out, const void* in, int64_t count, DType dtype) {
  const int64_t seq = sequence_++;
  Status s = check_count(count, out, in);
  if (s.ok()) copy_elements(out, in, count, dtype);
  return finish(s, CollectiveOp::kAllGather, seq);
}

Status SingleProcessCommunicator::all_to_all(void* out, const void* in, int64_t count_per_peer, DType dtype) {
  const int64_t seq = sequence_++;
  Status s = check_count(count_per_peer, out, in);
  if (s.ok()) copy_elements(out, in, count_per_peer, dtype);
  return finish(s, CollectiveOp::kAllToAll, seq);
}

Status SingleProcessCommunicator::all_to_all_v(void* out, const int64_t* out_counts, const void* in,
                                               const int64_t* in_counts, DType dtype) {
  const int64_t seq = sequence_++;
  Status s = check_all_to_all_v_counts(*this, out_counts, in_counts);
  if (s.ok()) s = check_count(in_counts[0], out, in);
  if (s.ok()) copy_elements(out, in, in_counts[0], dtype);
  return finish(s, CollectiveOp::kAllToAllV, seq);
}

Status SingleProcessCommunicator::all_to_all_blocks(void* out, const AllToAllBlocks& out_blocks,
                                                    const void* in, const AllToAllBlocks& in_blocks,
                                                    DType dtype) {
  const int64_t seq = sequence_++;
  Status s;
  if (out_blocks.blocks_per_peer < 1 || in_blocks.blocks_per_peer < 1)
    s = invalid_argument_error("no blocks");
  int64_t sent = 0, received = 0;
  for (int64_t b = 0; s.ok() && b < in_blocks.blocks_per_peer; ++b) {
    if (in_blocks.count[b] < 0 || in_blocks.offset[b] < 0) s = invalid_argument_error("negative send block");
    sent += in_blocks.count[b];
  }
  for (int64_t b = 0; s.ok() && b < out_blocks.blocks_per_peer; ++b) {
    if (out_blocks.count[b] < 0 || out_blocks.offset[b] < 0)
      s = invalid_argument_error("negative receive block");
    received += out_blocks.count[b];
  }
  if (s.ok() && sent != received) {
    s = invalid_argument_error("sends " + std::to_string(sent) + " elements to itself but expects " +
                               std::to_string(received));
  }
  if (s.ok()) {
    const int64_t elem = dtype_size(dtype);
    const char* src = static_cast<const char*>(in);
    char* dst = static_cast<char*>(out);
    int64_t ib = 0, ob = 0, i_used = 0, o_used = 0;
    while (ib < in_blocks.blocks_per_peer && ob < out_blocks.blocks_per_peer) {
      if (i_used == in_blocks.count[ib]) {
        ++ib;
        i_used = 0;
      } else if (o_used == out_blocks.count[ob]) {
        ++ob;
        o_used = 0;
      } else {
        const int64_t n = std::min(in_blocks.count[ib] - i_used, out_blocks.count[ob] - o_used);
        std::memmove(dst + (out_blocks.offset[ob] + o_used) * elem,
                     src + (in_blocks.offset[ib] + i_used) * elem, static_cast<size_t>(n * elem));
        i_used += n;
        o_used += n;
      }
    }
  }
  return finish(s, CollectiveOp::kAllToAllV, seq);
}

Status SingleProcessCommunicator::broadcast(void* buf, int64_t count, DType, int root) {
  const int64_t seq = sequence_++;
  Status s = check_count(count, buf, buf);
  if (s.ok() && root != 0)
    s = invalid_argument_error("broadcast root " + std::to_string(root) + " in a group of 1");
  return finish(s, CollectiveOp::kBroadcast, seq);
}

Status SingleProcessCommunicator::barrier() {
  ++sequence_;
  return Status();
}

}  // namespace moeasr
