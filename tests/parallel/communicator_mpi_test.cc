// tests/parallel/communicator_mpi_test.cc — the MPI Communicator and the process groups under
// mpirun -np 2 and -np 4 (nccl-tests style: every rank knows exactly what every peer must have
// sent, so results are checked exactly with no extra communication):
//   - all_reduce (sum/max/min), all_gather, broadcast from every root, barrier, all_to_all and
//     all_to_all_v with variable and zero counts, on the world, EP and EDP groups, plain and debug mode;
//   - groups: sizes, ranks, names and members for every valid ep_size; invalid ep_size is a clear
//     error on every rank;
//   - debug mode: a count mismatch and non-transposed all_to_all_v counts are caught BEFORE the payload
//     moves, on every rank, with every fingerprint in the message, and the group stays usable;
//   - a rank that never arrives: debug mode names it within the timeout (no hang); plain mode times
//     out with a hint, and the late rank's arrival later completes the abandoned collective.
#include <gtest/gtest.h>
#include <unistd.h>

#include <numeric>
#include <string>
#include <vector>

#include "parallel/groups.h"
#include "parallel/mpi_communicator.h"
#include "tests/parallel/mpi_test_env.h"

namespace moeasr {
namespace {

const bool kRegistered = testing::register_mpi_environment();

using testing::MpiTest;
using testing::world_rank;
using testing::world_size;

CommunicatorOptions test_options(bool debug, int timeout_ms = 20000) {
  CommunicatorOptions o;
  o.debug = debug;
  o.timeout = std::chrono::milliseconds(timeout_ms);
  o.on_error = CollectiveErrorPolicy::kReturnStatus;
  return o;
}

std::unique_ptr<MpiCommunicator> make_world(bool debug, int timeout_ms = 20000) {
  auto c = MpiCommunicator::create(MPI_COMM_WORLD, "world", test_options(debug, timeout_ms));
  CHECK(c.ok()) << c.status().to_string();
  return std::move(c).value();
}

// Exact checks of every collective on one group.
void exercise_collectives(Communicator* comm) {
  const int n = comm->size(), me = comm->rank();
  SCOPED_TRACE("group " + comm->name());
  // all_reduce: integer-valued doubles and int64, exact.
  std::vector<double> v = {double(me + 1), -2.0 * me, 0.5};
  ASSERT_TRUE(comm->all_reduce(v.data(), 3, DType::f64, ReduceOp::kSum).ok());
  EXPECT_EQ(v[0], n * (n + 1) / 2.0);
  EXPECT_EQ(v[1], -1.0 * n * (n - 1));
  EXPECT_EQ(v[2], 0.5 * n);
  std::vector<int64_t> m = {me, -me};
  ASSERT_TRUE(comm->all_reduce(m.data(), 2, DType::i64, ReduceOp::kMax).ok());
  EXPECT_EQ(m[0], n - 1);
  EXPECT_EQ(m[1], 0);
  std::vector<float> f = {float(me)};
  ASSERT_TRUE(comm->all_reduce(f.data(), 1, DType::f32, ReduceOp::kMin).ok());
  EXPECT_EQ(f[0], 0.0f);
  ASSERT_TRUE(comm->all_reduce(nullptr, 0, DType::f32, ReduceOp::kSum).ok());  // empty takes part

  // all_gather
  std::vector<int32_t> mine = {me * 10, me * 10 + 1}, all(2 * n, -1);
  ASSERT_TRUE(comm->all_gather(all.data(), mine.data(), 2, DType::i32).ok());
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(all[2 * i], i * 10);
    EXPECT_EQ(all[2 * i + 1], i * 10 + 1);
  }
  // broadcast from every root
  for (int root = 0; root < n; ++root) {
    std::vector<int64_t> b = {me == root ? 1000 + root : -1, me == root ? 7 : -1};
    ASSERT_TRUE(comm->broadcast(b.data(), 2, DType::i64, root).ok());
    EXPECT_EQ(b[0], 1000 + root);
    EXPECT_EQ(b[1], 7);
  }
  ASSERT_TRUE(comm->barrier().ok());
  // all_to_all: block j of rank i holds 100*i + j.
  std::vector<int64_t> in(n * 3), out(n * 3, -1);
  for (int j = 0; j < n; ++j) {
    for (int k = 0; k < 3; ++k) in[j * 3 + k] = 100 * me + j + 1000 * k;
  }
  ASSERT_TRUE(comm->all_to_all(out.data(), in.data(), 3, DType::i64).ok());
  for (int i = 0; i < n; ++i) {
    for (int k = 0; k < 3; ++k) EXPECT_EQ(out[i * 3 + k], 100 * i + me + 1000 * k);
  }
  // all_to_all_v: rank i sends (i + j) % 3 floats to rank j (zeros included), value 1000 i + 10 j + k.
  auto count = [](int i, int j) { return int64_t((i + j) % 3); };
  std::vector<int64_t> send(n), recv(n);
  std::vector<float> payload;
  for (int j = 0; j < n; ++j) {
    send[j] = count(me, j);
    recv[j] = count(j, me);
    for (int64_t k = 0; k < send[j]; ++k) payload.push_back(float(1000 * me + 10 * j + k));
  }
  std::vector<float> got(std::accumulate(recv.begin(), recv.end(), int64_t(0)), -1.0f);
  ASSERT_TRUE(comm->all_to_all_v(got.data(), recv.data(), payload.data(), send.data(), DType::f32).ok());
  int64_t at = 0;
  for (int i = 0; i < n; ++i) {
    for (int64_t k = 0; k < recv[i]; ++k) EXPECT_EQ(got[at++], float(1000 * i + 10 * me + k)) << "from " << i;
  }
  // Nothing at all to move still takes part.
  std::vector<int64_t> zeros(n, 0);
  ASSERT_TRUE(comm->all_to_all_v(nullptr, zeros.data(), nullptr, zeros.data(), DType::f32).ok());
}

class CommunicatorMpiTest : public MpiTest {};

TEST_F(CommunicatorMpiTest, CollectivesOnWorldAreExact) {
  for (bool debug : {false, true}) {
    auto world = make_world(debug);
    EXPECT_EQ(world->size(), world_size());
    EXPECT_EQ(world->rank(), world_rank());
    for (int i = 0; i < world->size(); ++i) EXPECT_EQ(world->world_rank_of(i), i);
    const int64_t before = world->sequence_number();
    exercise_collectives(world.get());
    EXPECT_GT(world->sequence_number(), before);
    // Sequence numbers agree on every rank.
    int64_t seq[2] = {world->sequence_number(), -world->sequence_number()};
    MPI_Allreduce(MPI_IN_PLACE, seq, 2, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
    EXPECT_EQ(seq[0], -seq[1]);
  }
}

TEST_F(CommunicatorMpiTest, GroupsForEveryValidExpertParallelSize) {
  const int n = world_size(), me = world_rank();
  for (int64_t ep = 1; ep <= n; ++ep) {
    if (n % ep != 0) continue;
    for (bool debug : {false, true}) {
      auto groups = create_mpi_process_groups(ep, {4, 8}, test_options(debug));
      ASSERT_TRUE(groups.ok()) << groups.status().to_string();
      ProcessGroups& g = groups.value();
      EXPECT_EQ(g.ep->size(), ep);
      EXPECT_EQ(g.edp->size(), n / ep);
      EXPECT_EQ(g.ep->rank(), me % ep);
      EXPECT_EQ(g.edp->rank(), me / ep);
      EXPECT_EQ(g.ep->name(), "ep" + std::to_string(me / ep));
      EXPECT_EQ(g.edp->name(), "edp" + std::to_string(me % ep));
      std::vector<int> ep_members = ep_group_members(g.layout), edp_members = edp_group_members(g.layout);
      for (int i = 0; i < g.ep->size(); ++i) EXPECT_EQ(g.ep->world_rank_of(i), ep_members[i]);
      for (int i = 0; i < g.edp->size(); ++i) EXPECT_EQ(g.edp->world_rank_of(i), edp_members[i]);
      exercise_collectives(g.ep.get());
      exercise_collectives(g.edp.get());
      // A sum over EP then EDP is a sum over the world.
      int64_t x = me + 1;
      ASSERT_TRUE(g.ep->all_reduce(&x, 1, DType::i64, ReduceOp::kSum).ok());
      ASSERT_TRUE(g.edp->all_reduce(&x, 1, DType::i64, ReduceOp::kSum).ok());
      EXPECT_EQ(x, int64_t(n) * (n + 1) / 2);
    }
  }
}

TEST_F(CommunicatorMpiTest, InvalidExpertParallelSizeIsAClearErrorOnEveryRank) {
  const int n = world_size();
  auto too_big = create_mpi_process_groups(n + 1, {8}, test_options(false));
  ASSERT_FALSE(too_big.ok());
  EXPECT_NE(too_big.status().message().find("does not divide the world size " + std::to_string(n)),
            std::string::npos)
      << too_big.status().to_string();
  auto experts = create_mpi_process_groups(2, {3}, test_options(false));
  ASSERT_FALSE(experts.ok());
  EXPECT_NE(experts.status().message().find("does not divide n_expert 3"), std::string::npos)
      << experts.status().to_string();
}

TEST_F(CommunicatorMpiTest, DebugModeCatchesACountMismatchOnEveryRankBeforeThePayload) {
  auto world = make_world(true);
  const int me = world->rank();
  std::vector<float> buf(8, 1.0f);
  const int64_t count = me == 0 ? 3 : 4;  // rank 0 disagrees
  Status s = world->all_reduce(buf.data(), count, DType::f32, ReduceOp::kSum);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kInternal);
  const std::string& m = s.message();
  if (me == 0) std::printf("[ example ] %s\n", s.to_string().c_str());
  EXPECT_NE(m.find("counts differ"), std::string::npos) << m;
  EXPECT_NE(m.find("group 'world'"), std::string::npos) << m;
  EXPECT_NE(m.find("seq 0"), std::string::npos) << m;
  for (int i = 0; i < world->size(); ++i) {  // every fingerprint is printed
    EXPECT_NE(m.find("rank " + std::to_string(i) + " (world " + std::to_string(i) + "): seq 0 all_reduce"),
              std::string::npos)
        << m;
  }
  for (float x : buf) EXPECT_EQ(x, 1.0f) << "the payload must not have moved";
  // The group is still consistent: the next collective works.
  EXPECT_TRUE(world->barrier().ok());
  // An operation mismatch, too.
  Status op = me == 0 ? world->barrier() : world->all_reduce(buf.data(), 1, DType::f32, ReduceOp::kSum);
  ASSERT_FALSE(op.ok());
  EXPECT_NE(op.message().find("operations differ"), std::string::npos) << op.message();
  EXPECT_TRUE(world->barrier().ok());
}

TEST_F(CommunicatorMpiTest, DebugModeCatchesAllToAllVCountsThatAreNotTransposes) {
  auto world = make_world(true);
  const int n = world->size(), me = world->rank();
  std::vector<int64_t> send(n, 2), recv(n, 2);
  if (me == 1) recv[0] = 3;  // rank 0 sends 2 to rank 1, which expects 3: a "deliberately wrong count"
  std::vector<double> in(2 * n, 1.0), out(2 * n + 1, -1.0);
  Status s = world->all_to_all_v(out.data(), recv.data(), in.data(), send.data(), DType::f64);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("rank 0 sends 2 elements to rank 1, which expects 3 from rank 0"),
            std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("send [2"), std::string::npos) << s.message();
  for (double x : out) EXPECT_EQ(x, -1.0);
  EXPECT_TRUE(world->barrier().ok());
}

TEST_F(CommunicatorMpiTest, DebugModeNamesARankThatNeverArrives) {
  const int n = world_size(), me = world_rank();
  {
    auto world = make_world(true, 1500);
    if (me != n - 1) {  // the last rank skips the barrier
      Status s = world->barrier();
      ASSERT_FALSE(s.ok());
      if (me == 0) std::printf("[ example ] %s\n", s.to_string().c_str());
      EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded);
      EXPECT_NE(s.message().find("group ranks that did not arrive: " + std::to_string(n - 1)),
                std::string::npos)
          << s.message();
      EXPECT_NE(s.message().find("= world rank " + std::to_string(n - 1)), std::string::npos) << s.message();
      EXPECT_NE(s.message().find("<did not arrive>"), std::string::npos) << s.message();
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST_F(CommunicatorMpiTest, PlainModeTimesOutAndALateRankCompletesTheAbandonedCollective) {
  const int n = world_size(), me = world_rank();
  auto world = make_world(false, 800);
  if (me == n - 1) usleep(1500 * 1000);  // arrives after everybody else's deadline
  Status s = world->barrier();
  if (me != n - 1) {
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded);
    EXPECT_NE(s.message().find("MPI_Ibarrier did not complete within 800 ms"), std::string::npos)
        << s.message();
    EXPECT_NE(s.message().find("MOEASR_COLLECTIVE_DEBUG=1"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("[group world rank " + std::to_string(me)), std::string::npos) << s.message();
  } else {
    EXPECT_TRUE(s.ok()) << s.to_string();  // everybody had entered: it completes
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST_F(CommunicatorMpiTest, AllToAllVTimeoutNamesTheSilentPeer) {
  const int n = world_size(), me = world_rank();
  {
    auto world = make_world(false, 1000);
    // Rank 0 expects one element from the last rank, which believes it sends nothing.
    std::vector<int64_t> send(n, 1), recv(n, 1);
    if (me == n - 1) send[0] = 0;
    std::vector<float> in(n, 1.0f), out(n, 0.0f);
    Status s = world->all_to_all_v(out.data(), recv.data(), in.data(), send.data(), DType::f32);
    if (me == 0) {
      ASSERT_FALSE(s.ok());
      EXPECT_NE(s.message().find("waiting on group ranks [" + std::to_string(n - 1) + "]"), std::string::npos)
          << s.message();
    } else {
      EXPECT_TRUE(s.ok()) << s.to_string();
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
}

}  // namespace
}  // namespace moeasr

namespace moeasr {
namespace {

// Run only through mpirun by parallel_test (CollectiveAbort): with the default policy a debug-mode
// count mismatch must take every rank down, printing every fingerprint. Disabled in normal runs.
TEST(CommunicatorAbortDemo, DISABLED_DebugMismatchAbortsTheJob) {
  CommunicatorOptions o;
  o.debug = true;
  o.timeout = std::chrono::milliseconds(20000);  // on_error stays kAbort
  auto world = MpiCommunicator::create(MPI_COMM_WORLD, "world", o);
  ASSERT_TRUE(world.ok());
  std::vector<float> buf(4, 1.0f);
  (void)world.value()->all_reduce(buf.data(), world_rank() == 0 ? 3 : 4, DType::f32, ReduceOp::kSum);
  ADD_FAILURE() << "rank " << world_rank() << " was not aborted";
}

}  // namespace
}  // namespace moeasr
