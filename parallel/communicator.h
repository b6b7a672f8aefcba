// parallel/communicator.h — the collective interface of moe-asr, in the spirit of PyTorch's c10d
// Backend (style_anchors.md §4.1, habit 13): one object per process group (world, expert-parallel,
// expert-data-parallel; parallel/groups.h) with rank(), size(), name(), a per-group sequence number
// and the collectives the trainer needs: all-reduce, all-gather, all-to-all (equal and variable
// counts), broadcast, barrier. Implementations: MpiCommunicator (host buffers; CPU training and
// bootstrap), SingleProcessCommunicator (one rank, validates its arguments), NcclCommunicator (device
// buffers on its own stream; parallel/nccl/).
//
// Contract of every collective:
//   - every member calls it, in the same order, with matching arguments (same op, dtype, count; for
//     all_to_all_v, what rank i sends to j is what j expects from i). Zero counts take part too;
//   - it never hangs: a collective that does not complete within options().timeout returns
//     DeadlineExceeded (or aborts the job, see CollectiveErrorPolicy) with the group, rank, operation
//     and sequence number in the message (traps 7.9, 7.12);
//   - in debug mode (CommunicatorOptions::debug, env MOEASR_COLLECTIVE_DEBUG=1) a fingerprint of the
//     call (op, group, dtype, count, sequence number, and for all_to_all_v the per-peer counts) is
//     exchanged over a side channel BEFORE the payload moves (c10d's ProcessGroupWrapper, habit 14);
//     a mismatch, or a member that does not arrive, is an error that prints every fingerprint and
//     names the ranks that did not arrive;
//   - MPI and single-process calls are complete when they return. NCCL calls are enqueued on the
//     communicator's stream: they are complete when synchronize() returns (flashlight's
//     syncDistributed contract; see nccl_communicator.h).
// Counts are elements of `dtype` (int64_t), buffers are raw pointers on the communicator's device.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"

namespace moeasr {

enum class ReduceOp : uint8_t { kSum, kMax, kMin };
enum class CollectiveOp : uint8_t { kAllReduce, kAllGather, kAllToAll, kAllToAllV, kBroadcast, kBarrier };
const char* reduce_op_name(ReduceOp op);
const char* collective_op_name(CollectiveOp op);

// What a failed collective does. kAbort (the default in training): print the error with every
// fingerprint and abort the whole job through the process's abort handler (MPI_Abort once
// parallel/bootstrap.h has installed it), so that every rank stops instead of hanging.
// kReturnStatus: return the Status to the caller (tests of the failure paths).
enum class CollectiveErrorPolicy : uint8_t { kAbort, kReturnStatus };

struct CommunicatorOptions {
  std::chrono::milliseconds timeout{std::chrono::minutes(10)};  // per collective; c10d's default is 30 min
  bool debug = false;                                           // fingerprint every collective
  CollectiveErrorPolicy on_error = CollectiveErrorPolicy::kAbort;
};

// Defaults overridden by the environment: MOEASR_COLLECTIVE_DEBUG=1 turns on debug mode,
// MOEASR_COLLECTIVE_TIMEOUT_S=<seconds> sets the timeout. A malformed value is an InvalidArgument
// naming the variable.
StatusOr<CommunicatorOptions> communicator_options_from_env();

// One member's description of one collective call, as exchanged in debug mode.
struct CollectiveFingerprint {
  int64_t sequence = 0;  // per-group count of collectives before this one
  CollectiveOp op = CollectiveOp::kBarrier;
  DType dtype = DType::u8;
  uint64_t group_hash = 0;  // hash of the group name (groups with equal members but other names differ)
  int64_t count = 0;        // all_reduce, broadcast: buffer elements; all_gather: per rank;
                            // all_to_all: per peer; all_to_all_v: total sent; barrier: 0
  int32_t root = -1;        // broadcast root (group rank), else -1
  int32_t group_rank = -1;  // who sent it
  int32_t world_rank = -1;
  ReduceOp reduce = ReduceOp::kSum;  // all_reduce only
  std::vector<int64_t> send_counts;  // all_to_all_v: [size] elements sent to each peer, else empty
  std::vector<int64_t> recv_counts;  // all_to_all_v: [size] elements expected from each peer, else empty
};

uint64_t group_name_hash(const std::string& name);  // FNV-1a 64
std::string describe_fingerprint(const CollectiveFingerprint& fp);

// Packs a fingerprint of a group of `group_size` into a fixed-size int64 record (the side channel's
// message) and back. Records are 10 + 2 * group_size long.
int64_t fingerprint_record_size(int group_size);
void pack_fingerprint(int64_t* record, const CollectiveFingerprint& fp, int group_size);
CollectiveFingerprint unpack_fingerprint(const int64_t* record, int group_size);

// The debug-mode checker, a pure function so tests can call it without aborting. `prints[i]` is
// group member i's fingerprint, nullopt when member i did not arrive within the timeout. OK when every
// member arrived and they agree (same sequence, op, dtype, group, count, root, reduce op; for
// all_to_all_v: prints[i].send_counts[j] == prints[j].recv_counts[i] for all i, j). Otherwise a
// Status (DeadlineExceeded when someone is missing, else Internal) whose message names the group, the
// ranks that did not arrive or the first disagreement, and lists every fingerprint.
Status check_collective_fingerprints(const std::string& group_name,
                                     const std::vector<std::optional<CollectiveFingerprint>>& prints);

// Blocks of a buffer per group member, in elements: member j's blocks are
// [j * blocks_per_peer, (j + 1) * blocks_per_peer) of offset/count, taken in that order.
struct AllToAllBlocks {
  int64_t blocks_per_peer = 1;
  const int64_t* offset = nullptr;  // [size * blocks_per_peer]
  const int64_t* count = nullptr;   // [size * blocks_per_peer]
  int64_t peer_total(int peer) const {
    int64_t t = 0;
    for (int64_t b = 0; b < blocks_per_peer; ++b) t += count[peer * blocks_per_peer + b];
    return t;
  }
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;  // in this group
  virtual int size() const = 0;
  virtual const std::string& name() const = 0;  // "world", "ep0", "edp1", ...
  virtual Device device() const = 0;            // where the buffers live
  virtual int world_rank_of(int group_rank) const = 0;
  virtual const CommunicatorOptions& options() const = 0;
  // Collectives issued on this group so far (the next call's sequence number). Equal on every
  // member between calls; a difference is a desynchronisation (c10d's sequence numbers).
  virtual int64_t sequence_number() const = 0;

  // In place: buf = op over members of buf.
  virtual Status all_reduce(void* buf,  // [count]
                            int64_t count, DType dtype, ReduceOp op) = 0;
  // out = concatenation of every member's `in`, in group rank order.
  virtual Status all_gather(void* out,       // [size * count]
                            const void* in,  // [count]
                            int64_t count, DType dtype) = 0;
  // Block j of `in` goes to member j; block i of `out` comes from member i.
  virtual Status all_to_all(void* out,       // [size * count_per_peer]
                            const void* in,  // [size * count_per_peer]
                            int64_t count_per_peer, DType dtype) = 0;
  // Variable counts, blocks packed back to back in rank order (displacements are prefix sums):
  // in_counts[j] elements go to member j, out_counts[i] elements arrive from member i. The caller
  // must have agreed the counts first (the expert dispatcher exchanges and verifies them).
  virtual Status all_to_all_v(void* out,                  // [sum out_counts]
                              const int64_t* out_counts,  // [size]
                              const void* in,             // [sum in_counts]
                              const int64_t* in_counts,   // [size]
                              DType dtype) = 0;
  // all_to_all_v with scattered blocks on either side (FastMoE's per-(expert, peer) exchange, MPI's
  // derived datatypes): the message to member j is the concatenation of in_blocks' blocks of j; the
  // message from member i is scattered over out_blocks' blocks of i. No staging copies: the expert
  // dispatcher receives rows straight into local-expert-major order and sends them back from it.
  virtual Status all_to_all_blocks(void* out, const AllToAllBlocks& out_blocks, const void* in,
                                   const AllToAllBlocks& in_blocks, DType dtype) = 0;
  virtual Status broadcast(void* buf,  // [count]
                           int64_t count, DType dtype, int root) = 0;
  virtual Status barrier() = 0;
  // Waits until every enqueued collective is complete (a no-op where calls complete on return).
  virtual Status synchronize() { return Status(); }
  // Ordering with a compute stream (a cudaStream_t) for communicators that enqueue on their own
  // stream (NCCL): after_compute makes the next collectives wait for the work issued so far on
  // `compute_stream`; before_compute makes later work on `compute_stream` wait for the collectives
  // issued so far. No-ops where a call completes on return (MPI, one process).
  virtual Status after_compute(void* compute_stream) {
    (void)compute_stream;
    return Status();
  }
  virtual Status before_compute(void* compute_stream) {
    (void)compute_stream;
    return Status();
  }
};

// "[group ep0 rank 1/2 (world 3) seq 17 all_to_all_v]": the prefix of every collective error.
std::string collective_context(const Communicator& comm, CollectiveOp op, int64_t sequence);

// Checks the arguments of all_to_all_v against the group size: counts non-negative; for one member
// (size 1) out_counts[0] == in_counts[0]. Used by every implementation.
Status check_all_to_all_v_counts(const Communicator& comm, const int64_t* out_counts,
                                 const int64_t* in_counts);

}  // namespace moeasr
