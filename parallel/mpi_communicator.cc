// parallel/mpi_communicator.cc — the MPI Communicator: nonblocking MPI + a deadline (see the header).
#include "parallel/mpi_communicator.h"

#include <sched.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <optional>
#include <sstream>
#include <utility>

#include "core/check.h"
#include "core/logging.h"

namespace moeasr {
namespace {

using Clock = std::chrono::steady_clock;

// Largest element count of one MPI call (MPI counts are int).
constexpr int64_t kMaxMpiCount = int64_t{1} << 30;
// Tags of the payload messages and side-channel records: the sequence number modulo this, so that a
// message of one collective can never match a receive of the next one.
constexpr int64_t kTagModulus = 32767;

int tag_of(int64_t sequence) {
  return static_cast<int>(sequence % kTagModulus);
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return MPI_SUM;
    case ReduceOp::kMax: return MPI_MAX;
    case ReduceOp::kMin: return MPI_MIN;
  }
  return MPI_SUM;
}

Status mpi_status(int code, const char* call) {
  if (code == MPI_SUCCESS) return Status();
  return internal_error(std::string(call) + " failed: " + mpi_error_string(code));
}

void backoff(int64_t iteration, Clock::time_point start) {
  if (iteration < 256) return;  // spin: the common case completes within microseconds
  if (Clock::now() - start < std::chrono::milliseconds(5)) {
    sched_yield();
    return;
  }
  timespec pause{0, 50 * 1000};
  nanosleep(&pause, nullptr);
}

// Tests until every request is MPI_REQUEST_NULL or the deadline passes. On timeout `pending` lists
// the indices still incomplete.
Status test_until(std::vector<MPI_Request>* requests, std::chrono::milliseconds timeout,
                  std::vector<int>* pending) {
  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline = start + timeout;
  const int n = static_cast<int>(requests->size());
  std::vector<int> indices(std::max(n, 1));
  for (int64_t it = 0;; ++it) {
    int outcount = 0;
    int code = MPI_Testsome(n, requests->data(), &outcount, indices.data(), MPI_STATUSES_IGNORE);
    if (code != MPI_SUCCESS) return mpi_status(code, "MPI_Testsome");
    if (outcount == MPI_UNDEFINED) return Status();  // every request is done (or null)
    if (Clock::now() > deadline) break;
    backoff(it, start);
  }
  pending->clear();
  for (int i = 0; i < n; ++i) {
    if ((*requests)[i] != MPI_REQUEST_NULL) pending->push_back(i);
  }
  if (pending->empty()) return Status();
  return deadline_exceeded_error("did not complete within " + std::to_string(timeout.count()) + " ms");
}

std::string format_ranks(const std::vector<int>& ranks) {
  std::ostringstream out;
  for (size_t i = 0; i < ranks.size(); ++i) out << (i ? " " : "") << ranks[i];
  return out.str();
}

}  // namespace

MPI_Datatype mpi_datatype(DType dtype) {
  switch (dtype) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::bf16:
    case DType::f16: return MPI_UINT16_T;
    case DType::i32: return MPI_INT32_T;
    case DType::i64: return MPI_INT64_T;
    case DType::u8: return MPI_UINT8_T;
  }
  return MPI_BYTE;
}

std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING] = {0};
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, length);
}

StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::create(MPI_Comm comm, std::string name,
                                                                   CommunicatorOptions options) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    return failed_precondition_error("MpiCommunicator '" + name +
                                     "': MPI is not initialised (bootstrap_mpi first)");
  }
  if (comm == MPI_COMM_NULL) return invalid_argument_error("MpiCommunicator '" + name + "': MPI_COMM_NULL");
  MPI_Comm dups[2] = {MPI_COMM_NULL, MPI_COMM_NULL};
  std::vector<MPI_Request> requests(2, MPI_REQUEST_NULL);
  for (int i = 0; i < 2; ++i) {
    int code = MPI_Comm_idup(comm, &dups[i], &requests[i]);
    if (code != MPI_SUCCESS) return mpi_status(code, "MPI_Comm_idup").with_context("group " + name);
  }
  std::vector<int> pending;
  Status s = test_until(&requests, options.timeout, &pending);
  if (!s.ok()) {
    // The duplicates are unusable; the requests are abandoned (MPI cannot cancel them).
    return s.with_context("creating group '" + name + "': a member did not join");
  }
  std::unique_ptr<MpiCommunicator> result(new MpiCommunicator(dups[0], dups[1], std::move(name), options));
  // Group rank -> world rank, for messages.
  int world_rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  result->world_ranks_.assign(result->size_, -1);
  std::vector<MPI_Request> gather(1, MPI_REQUEST_NULL);
  int code = MPI_Iallgather(&world_rank, 1, MPI_INT, result->world_ranks_.data(), 1, MPI_INT, result->side_,
                            &gather[0]);
  if (code != MPI_SUCCESS) return mpi_status(code, "MPI_Iallgather").with_context("group " + result->name_);
  s = test_until(&gather, options.timeout, &pending);
  if (!s.ok()) {
    result->orphans_.push_back(gather[0]);
    return s.with_context("creating group '" + result->name_ + "': exchanging world ranks");
  }
  return result;
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm, MPI_Comm side, std::string name, CommunicatorOptions options)
    : comm_(comm), side_(side), name_(std::move(name)), options_(options) {
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(side_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  world_ranks_.assign(size_, -1);
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  if (!orphans_.empty()) {
    // Give abandoned collectives a moment to finish (a late member may have arrived since).
    std::vector<int> pending;
    Status s = test_until(&orphans_, std::chrono::milliseconds(1000), &pending);
    if (!s.ok()) {
      LOG(WARNING) << "group " << name_ << ": " << pending.size()
                   << " collective(s) abandoned after a timeout never completed; leaking their requests";
    }
  }
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  if (side_ != MPI_COMM_NULL) MPI_Comm_free(&side_);
}

Status MpiCommunicator::finish(Status status, const CollectiveFingerprint& fp) {
  if (status.ok()) return status;
  Status error = status.with_context(collective_context(*this, fp.op, fp.sequence));
  if (options_.on_error == CollectiveErrorPolicy::kAbort) {
    // Every rank that meets the error aborts the job (MPI_Abort through the abort handler).
    CHECK(false) << error.to_string();
  }
  return error;
}

Status MpiCommunicator::wait(std::vector<MPI_Request>* requests, const std::vector<int>& peers,
                             const char* what) {
  std::vector<int> pending;
  Status s = test_until(requests, options_.timeout, &pending);
  if (s.ok() || pending.empty()) return s;
  std::vector<int> missing;  // members whose rows (or record) never came
  bool collective = false;
  for (int i : pending) {
    MPI_Request& r = (*requests)[i];
    if (peers[i] >= 0) {  // a receive: cancel it
      missing.push_back(peers[i]);
      MPI_Cancel(&r);
      MPI_Request_free(&r);
    } else if (peers[i] <= -2) {  // a send: release it, it completes (or not) on its own
      MPI_Request_free(&r);
    } else {  // a collective: MPI cannot cancel it; kept and tested again at destruction
      collective = true;
      orphans_.push_back(r);
      r = MPI_REQUEST_NULL;
    }
  }
  std::ostringstream m;
  m << what << " " << s.message();
  if (!missing.empty()) {
    std::sort(missing.begin(), missing.end());
    missing.erase(std::unique(missing.begin(), missing.end()), missing.end());
    std::vector<int> world;
    for (int g : missing) world.push_back(world_rank_of(g));
    m << "; waiting on group ranks [" << format_ranks(missing) << "] (world [" << format_ranks(world) << "])";
  }
  if (collective && !options_.debug) {
    m << "; set MOEASR_COLLECTIVE_DEBUG=1 to learn which ranks did not arrive";
  }
  return deadline_exceeded_error(m.str());
}

Status MpiCommunicator::exchange_fingerprints(const CollectiveFingerprint& mine) {
  const int64_t record = fingerprint_record_size(size_);
  std::vector<int64_t> records(static_cast<size_t>(record * size_), 0);
  pack_fingerprint(records.data() + rank_ * record, mine, size_);
  std::vector<MPI_Request> requests;
  std::vector<int> peers;
  const int tag = tag_of(mine.sequence);
  for (int peer = 0; peer < size_; ++peer) {
    if (peer == rank_) continue;
    requests.emplace_back();
    peers.push_back(peer);
    int code = MPI_Irecv(records.data() + peer * record, static_cast<int>(record), MPI_INT64_T, peer, tag,
                         side_, &requests.back());
    if (code != MPI_SUCCESS) return mpi_status(code, "MPI_Irecv (fingerprint)");
  }
  // Sends are eager-sized (a few hundred bytes); they are waited on with the receives.
  for (int peer = 0; peer < size_; ++peer) {
    if (peer == rank_) continue;
    requests.emplace_back();
    peers.push_back(-2 - peer);  // marks a send (not reported as missing)
    int code = MPI_Isend(records.data() + rank_ * record, static_cast<int>(record), MPI_INT64_T, peer, tag,
                         side_, &requests.back());
    if (code != MPI_SUCCESS) return mpi_status(code, "MPI_Isend (fingerprint)");
  }
  std::vector<int> pending;
  Status s = test_until(&requests, options_.timeout, &pending);
  std::vector<std::optional<CollectiveFingerprint>> prints(size_);
  std::vector<bool> arrived(size_, true);
  for (int i : pending) {
    MPI_Request& r = requests[i];
    if (peers[i] >= 0) arrived[peers[i]] = false;
    if (peers[i] >= 0) MPI_Cancel(&r);
    MPI_Request_free(&r);
  }
  for (int peer = 0; peer < size_; ++peer) {
    if (arrived[peer]) prints[peer] = unpack_fingerprint(records.data() + peer * record, size_);
  }
  Status check = check_collective_fingerprints(name_, prints);
  if (!check.ok()) {
    std::ostringstream m;
    m << check.message();
    for (int peer = 0; peer < size_; ++peer) {
      if (!arrived[peer]) m << "\n  (group rank " << peer << " = world rank " << world_rank_of(peer) << ")";
    }
    if (!s.ok()) m << "\n  side channel: " << s.message();
    return Status(check.code(), m.str());
  }
  return s;
}

Status MpiCommunicator::begin(CollectiveFingerprint* fp) {
  fp->sequence = sequence_++;
  fp->group_hash = group_name_hash(name_);
  fp->group_rank = rank_;
  fp->world_rank = world_ranks_[rank_];
  if (!options_.debug) return Status();
  return exchange_fingerprints(*fp);
}

Status MpiCommunicator::all_reduce(void* buf, int64_t count, DType dtype, ReduceOp op) {
  CollectiveFingerprint fp;
  fp.op = CollectiveOp::kAllReduce;
  fp.dtype = dtype;
  fp.count = count;
  fp.reduce = op;
  Status s = begin(&fp);
  if (s.ok() && (count < 0 || (count > 0 && buf == nullptr))) {
    s = invalid_argument_error("bad buffer/count " + std::to_string(count));
  }
  if (s.ok() && (dtype == DType::bf16 || dtype == DType::f16)) {
    s = unimplemented_error(std::string("reducing ") + dtype_name(dtype) + " over MPI");
  }
  char* base = static_cast<char*>(buf);
  for (int64_t begin_at = 0; s.ok() && begin_at < count; begin_at += kMaxMpiCount) {
    const int n = static_cast<int>(std::min(kMaxMpiCount, count - begin_at));
    std::vector<MPI_Request> requests(1, MPI_REQUEST_NULL);
    s = mpi_status(MPI_Iallreduce(MPI_IN_PLACE, base + begin_at * dtype_size(dtype), n, mpi_datatype(dtype),
                                  mpi_op(op), comm_, &requests[0]),
                   "MPI_Iallreduce");
    if (s.ok()) s = wait(&requests, {-1}, "MPI_Iallreduce");
  }
  return finish(s, fp);
}

Status MpiCommunicator::all_gather(void* out, const void* in, int64_t count, DType dtype) {
  CollectiveFingerprint fp;
  fp.op = CollectiveOp::kAllGather;
  fp.dtype = dtype;
  fp.count = count;
  Status s = begin(&fp);
  if (s.ok() && (count < 0 || count > kMaxMpiCount || (count > 0 && (out == nullptr || in == nullptr)))) {
    s = invalid_argument_error("bad buffer/count " + std::to_string(count) +
                               " (at most 2^30 elements per rank)");
  }
  if (s.ok()) {
    std::vector<MPI_Request> requests(1, MPI_REQUEST_NULL);
    s = mpi_status(MPI_Iallgather(in, static_cast<int>(count), mpi_datatype(dtype), out,
                                  static_cast<int>(count), mpi_datatype(dtype), comm_, &requests[0]),
                   "MPI_Iallgather");
    if (s.ok()) s = wait(&requests, {-1}, "MPI_Iallgather");
  }
  return finish(s, fp);
}

Status MpiCommunicator::all_to_all(void* out, const void* in, int64_t count_per_peer, DType dtype) {
  std::vector<int64_t> counts(size_, count_per_peer);
  if (count_per_peer < 0) {
    CollectiveFingerprint fp;
    fp.op = CollectiveOp::kAllToAll;
    fp.sequence = sequence_++;
    return finish(invalid_argument_error("negative count " + std::to_string(count_per_peer)), fp);
  }
  return all_to_all_v(out, counts.data(), in, counts.data(), dtype);
}

Status MpiCommunicator::all_to_all_v(void* out, const int64_t* out_counts, const void* in,
                                     const int64_t* in_counts, DType dtype) {
  Status s = check_all_to_all_v_counts(*this, out_counts, in_counts);
  if (!s.ok()) {
    CollectiveFingerprint fp;
    fp.op = CollectiveOp::kAllToAllV;
    fp.sequence = sequence_++;  // every member advances, also on an argument error
    return finish(s, fp);
  }
  std::vector<int64_t> out_offset(size_), in_offset(size_);
  int64_t o = 0, i = 0;
  for (int p = 0; p < size_; ++p) {
    out_offset[p] = o;
    in_offset[p] = i;
    o += out_counts[p];
    i += in_counts[p];
  }
  AllToAllBlocks out_blocks{1, out_offset.data(), out_counts};
  AllToAllBlocks in_blocks{1, in_offset.data(), in_counts};
  return all_to_all_blocks(out, out_blocks, in, in_blocks, dtype);
}

namespace {

// One MPI datatype for the blocks of one peer (hindexed over the element type), or the element type
// itself with an offset when there is one non-empty block. *count is what MPI is told to move.
Status peer_datatype(const AllToAllBlocks& blocks, int peer, DType dtype, MPI_Datatype* type,
                     int64_t* first_offset, int* count, bool* derived) {
  const int64_t elem = dtype_size(dtype);
  std::vector<int> lengths;
  std::vector<MPI_Aint> displacements;
  int64_t base = -1, total = 0;
  for (int64_t b = 0; b < blocks.blocks_per_peer; ++b) {
    const int64_t n = blocks.count[peer * blocks.blocks_per_peer + b];
    if (n == 0) continue;
    const int64_t at = blocks.offset[peer * blocks.blocks_per_peer + b];
    if (n > kMaxMpiCount)
      return invalid_argument_error("a block of more than 2^30 elements; split the exchange");
    if (base < 0) base = at;
    const MPI_Aint disp = static_cast<MPI_Aint>((at - base) * elem);
    if (!lengths.empty() && displacements.back() + static_cast<MPI_Aint>(lengths.back()) * elem == disp &&
        lengths.back() + n <= kMaxMpiCount) {
      lengths.back() += static_cast<int>(n);  // adjacent blocks: one run
    } else {
      lengths.push_back(static_cast<int>(n));
      displacements.push_back(disp);
    }
    total += n;
  }
  *first_offset = base < 0 ? 0 : base;
  *derived = false;
  if (lengths.size() <= 1) {
    if (total > kMaxMpiCount)
      return invalid_argument_error("more than 2^30 elements for one peer; split the exchange");
    *type = mpi_datatype(dtype);
    *count = static_cast<int>(total);
    return Status();
  }
  int code = MPI_Type_create_hindexed(static_cast<int>(lengths.size()), lengths.data(), displacements.data(),
                                      mpi_datatype(dtype), type);
  if (code == MPI_SUCCESS) code = MPI_Type_commit(type);
  if (code != MPI_SUCCESS) return mpi_status(code, "MPI_Type_create_hindexed");
  *derived = true;
  *count = 1;
  return Status();
}

Status check_blocks(const AllToAllBlocks& blocks, int size, const char* side) {
  if (blocks.blocks_per_peer < 1 || (size > 0 && (blocks.offset == nullptr || blocks.count == nullptr))) {
    return invalid_argument_error(std::string(side) + " blocks: none described");
  }
  for (int64_t b = 0; b < size * blocks.blocks_per_peer; ++b) {
    if (blocks.count[b] < 0 || blocks.offset[b] < 0) {
      return invalid_argument_error(std::string(side) + " block " + std::to_string(b) + " has a negative " +
                                    (blocks.count[b] < 0 ? "count" : "offset"));
    }
  }
  return Status();
}

}  // namespace

Status MpiCommunicator::all_to_all_blocks(void* out, const AllToAllBlocks& out_blocks, const void* in,
                                          const AllToAllBlocks& in_blocks, DType dtype) {
  CollectiveFingerprint fp;
  fp.op = CollectiveOp::kAllToAllV;
  fp.dtype = dtype;
  Status s = check_blocks(out_blocks, size_, "receive");
  if (s.ok()) s = check_blocks(in_blocks, size_, "send");
  fp.send_counts.assign(size_, 0);
  fp.recv_counts.assign(size_, 0);
  if (s.ok()) {
    for (int p = 0; p < size_; ++p) {
      fp.send_counts[p] = in_blocks.peer_total(p);
      fp.recv_counts[p] = out_blocks.peer_total(p);
      fp.count += fp.send_counts[p];
    }
    if (fp.send_counts[rank_] != fp.recv_counts[rank_]) {
      s = invalid_argument_error("sends " + std::to_string(fp.send_counts[rank_]) +
                                 " elements to itself but expects " + std::to_string(fp.recv_counts[rank_]));
    }
  }
  Status b = begin(&fp);  // always advance the sequence, also after an argument error
  if (s.ok()) s = b;
  if (!s.ok()) return finish(s, fp);

  const int64_t elem = dtype_size(dtype);
  const int tag = tag_of(fp.sequence);
  const char* src = static_cast<const char*>(in);
  char* dst = static_cast<char*>(out);
  std::vector<MPI_Request> requests;
  std::vector<int> peers;
  // Receives first (posted before the matching sends arrive: no unexpected-message copies).
  for (int i = 0; i < size_ && s.ok(); ++i) {
    if (i == rank_ || fp.recv_counts[i] == 0) continue;
    MPI_Datatype type;
    int64_t at = 0;
    int count = 0;
    bool derived = false;
    s = peer_datatype(out_blocks, i, dtype, &type, &at, &count, &derived);
    if (!s.ok()) break;
    requests.emplace_back();
    peers.push_back(i);
    s = mpi_status(MPI_Irecv(dst + at * elem, count, type, i, tag, comm_, &requests.back()), "MPI_Irecv");
    if (derived) MPI_Type_free(&type);  // pending operations keep it alive
  }
  // Sends in ring order starting after this rank, so peers are not all hit by the same sender first.
  for (int step = 1; step < size_ && s.ok(); ++step) {
    const int j = (rank_ + step) % size_;
    if (fp.send_counts[j] == 0) continue;
    MPI_Datatype type;
    int64_t at = 0;
    int count = 0;
    bool derived = false;
    s = peer_datatype(in_blocks, j, dtype, &type, &at, &count, &derived);
    if (!s.ok()) break;
    requests.emplace_back();
    peers.push_back(-2 - j);
    s = mpi_status(MPI_Isend(src + at * elem, count, type, j, tag, comm_, &requests.back()), "MPI_Isend");
    if (derived) MPI_Type_free(&type);
  }
  // This rank's own share: block by block, walking both lists.
  if (s.ok() && fp.send_counts[rank_] > 0) {
    int64_t ib = 0, ob = 0, i_used = 0, o_used = 0;
    const int64_t* ic = in_blocks.count + rank_ * in_blocks.blocks_per_peer;
    const int64_t* io = in_blocks.offset + rank_ * in_blocks.blocks_per_peer;
    const int64_t* oc = out_blocks.count + rank_ * out_blocks.blocks_per_peer;
    const int64_t* oo = out_blocks.offset + rank_ * out_blocks.blocks_per_peer;
    while (ib < in_blocks.blocks_per_peer && ob < out_blocks.blocks_per_peer) {
      if (i_used == ic[ib]) {
        ++ib;
        i_used = 0;
        continue;
      }
      if (o_used == oc[ob]) {
        ++ob;
        o_used = 0;
        continue;
      }
      const int64_t n = std::min(ic[ib] - i_used, oc[ob] - o_used);
      std::memmove(dst + (oo[ob] + o_used) * elem, src + (io[ib] + i_used) * elem,
                   static_cast<size_t>(n * elem));
      i_used += n;
      o_used += n;
    }
  }
  if (s.ok()) {
    s = wait(&requests, peers, "all_to_all_v payload");
  } else {
    // An error while posting: release what was posted (the peers time out on their side).
    for (MPI_Request& r : requests) {
      if (r != MPI_REQUEST_NULL) MPI_Request_free(&r);
    }
  }
  return finish(s, fp);
}

Status MpiCommunicator::broadcast(void* buf, int64_t count, DType dtype, int root) {
  CollectiveFingerprint fp;
  fp.op = CollectiveOp::kBroadcast;
  fp.dtype = dtype;
  fp.count = count;
  fp.root = root;
  Status s = begin(&fp);
  if (s.ok() && (root < 0 || root >= size_)) s = invalid_argument_error("root " + std::to_string(root));
  if (s.ok() && (count < 0 || count > kMaxMpiCount || (count > 0 && buf == nullptr))) {
    s = invalid_argument_error("bad buffer/count " + std::to_string(count));
  }
  if (s.ok()) {
    std::vector<MPI_Request> requests(1, MPI_REQUEST_NULL);
    s = mpi_status(MPI_Ibcast(buf, static_cast<int>(count), mpi_datatype(dtype), root, comm_, &requests[0]),
                   "MPI_Ibcast");
    if (s.ok()) s = wait(&requests, {-1}, "MPI_Ibcast");
  }
  return finish(s, fp);
}

Status MpiCommunicator::barrier() {
  CollectiveFingerprint fp;
  fp.op = CollectiveOp::kBarrier;
  Status s = begin(&fp);
  if (s.ok()) {
    std::vector<MPI_Request> requests(1, MPI_REQUEST_NULL);
    s = mpi_status(MPI_Ibarrier(comm_, &requests[0]), "MPI_Ibarrier");
    if (s.ok()) s = wait(&requests, {-1}, "MPI_Ibarrier");
  }
  return finish(s, fp);
}

}  // namespace moeasr
