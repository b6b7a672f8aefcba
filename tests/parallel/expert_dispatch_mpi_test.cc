// tests/parallel/expert_dispatch_mpi_test.cc — the MoE layer (model/ffn.h) with expert parallelism
// through MpiExpertDispatcher, under mpirun -np 2 and -np 4. Each rank builds the EP=1 reference
// itself on the concatenated batch of every rank (LocalExpertDispatcher, one process's view) and
// compares its own rows and the synchronised gradients with it:
//   - every EP size dividing the world (EP = world, EP = 2 inside DP = 2 on 4 ranks, EP = 1 = pure
//     DP), both count verifications, float (<= 1e-5 relative) and double (<= 1e-12);
//   - the rows over a second communicator of the same ranks (the counts over the first), as on GPUs
//     where NCCL moves the rows beside the MPI group;
//   - ranks with different token counts and padded tokens; a rank with no tokens at all; a rank whose
//     tokens are all padding; skewed routing (every token to one expert with k = 1, so other holders
//     receive nothing; and one hot expert with k = 2);
//   - a deliberately wrong count (a transport that corrupts one received count) is caught by both
//     verifications on every rank, with the counts in the message, before rows move;
//   - exact rows in local-expert-major order and the round trip of all four exchanges; the
//     dispatcher's counts (R, per-local-expert rows) against the reference's per-expert counts.
// Dropout is 0: the expert dropout mask follows the holder's row order (ffn.h).
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/arena.h"
#include "model/expert_dispatch.h"
#include "model/ffn.h"
#include "model/parameter_table.h"
#include "parallel/groups.h"
#include "parallel/mpi_expert_dispatcher.h"
#include "tests/common/gradcheck.h"
#include "tests/parallel/mpi_test_env.h"

namespace moeasr {
namespace {

const bool kRegistered = testing::register_mpi_environment();

using testing::MpiTest;
using testing::world_rank;
using testing::world_size;

constexpr int64_t kD = 16, kF = 32, kExperts = 4;

CommunicatorOptions test_options(bool debug) {
  CommunicatorOptions o;
  o.debug = debug;
  o.timeout = std::chrono::milliseconds(20000);
  o.on_error = CollectiveErrorPolicy::kReturnStatus;
  return o;
}

ParameterTable moe_table(const ExpertLayout& layout) {
  ParameterTable t;
  t.add("moe.gate.weight", Shape{kExperts, kD}, ParamRegion::kDense, ParamInit::kUniformFanIn, kD);
  for (auto [suffix, shape, fan] : {std::tuple<const char*, Shape, int64_t>{"w_1.weight", Shape{kF, kD}, kD},
                                    {"w_1.bias", Shape{kF}, kD},
                                    {"w_2.weight", Shape{kD, kF}, kF},
                                    {"w_2.bias", Shape{kD}, kF}}) {
    t.add_expert_block("moe.experts", suffix, shape, layout, kExperts, ParamInit::kUniformFanIn, fan);
  }
  return t;
}

enum class Routing { kRandom, kAllToExpertZero, kHotExpert };

// One MoE layer for a layout, with its own store, arena and outputs.
template <class T>
struct Layer {
  ParameterTable table;
  ParameterStore<T> store;
  MoeFfnParams<T> p;
  Arena arena{"act", 1 << 20, Arena::Growth::kGrowable};
  RunContext ctx = testing::cpu_test_context();
  MoeFfnSaved<T> saved;
  std::vector<T> out, dx;

  Layer(const ExpertLayout& layout, int64_t k, Routing routing) : table(moe_table(layout)), store(table) {
    initialize_parameters(&store, 17);  // by name: the same experts under any layout
    T* gate = store.value("moe.gate.weight");
    if (routing != Routing::kRandom) {
      // Feature 0 of every token is >= 2 (see make_inputs): a large weight on it makes expert 0 (k = 1:
      // every token) or expert 2 (k = 2: every token's first choice) win by a wide margin.
      const int64_t hot = routing == Routing::kAllToExpertZero ? 0 : 2;
      gate[hot * kD + 0] = T(8);
    }
    p = bind_moe_ffn(&store, "moe", layout, k, ActivationType::kSwish, 0.0);
    ctx.activations = &arena;
  }

  void run(const std::vector<T>& x, const std::vector<uint8_t>& mask, const std::vector<T>& dout, int64_t n,
           ExpertDispatcher<T>* dispatcher) {
    arena.reset();
    store.zero_grads();
    out.assign(n * kD, T(-7));
    dx.assign(n * kD, T(-7));
    StepRng rng;
    moe_ffn_forward(&saved, out.data(), x.data(), mask.empty() ? nullptr : mask.data(), p, dispatcher, n, 1,
                    0, rng, ctx);
    moe_ffn_backward(dx.data(), saved, dout.data(), p, dispatcher, n, 1, 0, rng, ctx);
  }
};

struct Inputs {
  std::vector<int64_t> tokens;  // per world rank
  std::vector<int64_t> offset;  // first token of each rank in the concatenated batch
  int64_t total = 0;
  std::vector<double> x, dout;
  std::vector<uint8_t> mask;
};

// The concatenated batch of every rank, identical on every rank (fixed seeds).
Inputs make_inputs(int world, const std::vector<int64_t>& tokens, const std::vector<uint8_t>& all_padding) {
  Inputs in;
  in.tokens = tokens;
  for (int r = 0; r < world; ++r) {
    in.offset.push_back(in.total);
    in.total += tokens[r];
  }
  in.x = testing::random_doubles(in.total * kD, 5, -1.0, 1.0);
  for (int64_t i = 0; i < in.total; ++i) in.x[i * kD] = 2.0 + 0.5 * in.x[i * kD];  // feature 0 in [1.5, 2.5]
  in.dout = testing::random_doubles(in.total * kD, 6, -1.0, 1.0);
  in.mask.assign(in.total, 1);
  for (int r = 0; r < world; ++r) {
    for (int64_t i = 0; i < tokens[r]; ++i) {
      // Every 5th token is padding; a rank in all_padding has only padding.
      if (all_padding[r] || (i % 5) == 4) in.mask[in.offset[r] + i] = 0;
    }
  }
  return in;
}

template <class T>
std::vector<T> rows(const std::vector<double>& v, int64_t first, int64_t n) {
  return std::vector<T>(v.begin() + first * kD, v.begin() + (first + n) * kD);
}

template <class T>
double rel_error(const T* a, const T* b, int64_t n) {
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff += (double(a[i]) - double(b[i])) * (double(a[i]) - double(b[i]));
    norm += double(b[i]) * double(b[i]);
  }
  if (norm == 0) return diff == 0 ? 0 : INFINITY;
  return std::sqrt(diff / norm);
}

struct Case {
  std::string name;
  std::vector<int64_t> tokens;       // per world rank
  std::vector<uint8_t> all_padding;  // per world rank
  Routing routing = Routing::kRandom;
  int64_t k = 2;
};

// Runs one case for one EP size and checks it against the EP=1 reference.
// separate_rows_group: the rows move over a second communicator of the same ranks (as NCCL beside the
// MPI group on GPUs), the counts over the first.
template <class T>
void check_case(const Case& c, int64_t ep_size, CountVerification verification, bool debug, double tol,
                bool separate_rows_group = false) {
  const int world = world_size(), me = world_rank();
  SCOPED_TRACE(c.name + " ep " + std::to_string(ep_size) + (debug ? " debug" : "") +
               (verification == CountVerification::kSums ? " sums" : " matrix") +
               (separate_rows_group ? " rows group" : ""));
  Inputs in = make_inputs(world, c.tokens, c.all_padding);
  std::vector<T> x = rows<T>(in.x, 0, in.total), dout = rows<T>(in.dout, 0, in.total);

  // Reference: one process, every expert, the whole batch.
  Layer<T> ref(ExpertLayout{}, c.k, c.routing);
  LocalExpertDispatcher<T> local;
  ref.run(x, in.mask, dout, in.total, &local);
  std::vector<int64_t> ref_counts(ref.saved.expert_counts, ref.saved.expert_counts + kExperts);

  // Expert parallel: this rank's tokens only.
  auto groups = create_mpi_process_groups(ep_size, {kExperts}, test_options(debug));
  ASSERT_TRUE(groups.ok()) << groups.status().to_string();
  ProcessGroups& g = groups.value();
  StatusOr<ProcessGroups> rows_groups = ProcessGroups{};
  if (separate_rows_group) {
    rows_groups = create_mpi_process_groups(ep_size, {kExperts}, test_options(debug));
    ASSERT_TRUE(rows_groups.ok()) << rows_groups.status().to_string();
  }
  MpiExpertDispatcher<T> dispatcher(g.ep.get(), verification,
                                    separate_rows_group ? rows_groups.value().ep.get() : nullptr);
  Layer<T> par(g.layout.expert_layout(), c.k, c.routing);
  const int64_t n = in.tokens[me], first = in.offset[me];
  std::vector<T> my_x(x.begin() + first * kD, x.begin() + (first + n) * kD);
  std::vector<T> my_dout(dout.begin() + first * kD, dout.begin() + (first + n) * kD);
  std::vector<uint8_t> my_mask(in.mask.begin() + first, in.mask.begin() + first + n);
  par.run(my_x, my_mask, my_dout, n, &dispatcher);

  // Rows this rank's experts processed = what the reference routed to them from this EP group.
  const ExpertDispatchCounts& dc = par.saved.dispatch;
  EXPECT_EQ(dc.ep_size, ep_size);
  EXPECT_EQ(dc.n_local_experts, kExperts / ep_size);
  std::vector<int64_t> group_counts(par.saved.expert_counts, par.saved.expert_counts + kExperts);
  ASSERT_TRUE(g.ep->all_reduce(group_counts.data(), kExperts, DType::i64, ReduceOp::kSum).ok());
  int64_t expect_r = 0;
  for (int64_t e = 0; e < dc.n_local_experts; ++e) {
    EXPECT_EQ(dc.local_counts[e], group_counts[g.layout.ep_rank * dc.n_local_experts + e])
        << "local expert " << e;
    expect_r += dc.local_counts[e];
  }
  EXPECT_EQ(dc.received_rows, expect_r);
  std::vector<int64_t> world_counts = group_counts;
  ASSERT_TRUE(g.edp->all_reduce(world_counts.data(), kExperts, DType::i64, ReduceOp::kSum).ok());
  EXPECT_EQ(world_counts, ref_counts);

  // Outputs and dx: this rank's rows of the reference.
  EXPECT_LE(rel_error(par.out.data(), ref.out.data() + first * kD, n * kD), tol);
  EXPECT_LE(rel_error(par.dx.data(), ref.dx.data() + first * kD, n * kD), tol);
  for (int64_t i = 0; i < n; ++i) {
    if (my_mask[i] == 0) {
      for (int64_t j = 0; j < kD; ++j) ASSERT_EQ(par.out[i * kD + j], T(0)) << "padded token " << i;
    }
  }
  // Gate: dense, summed over the world. Experts: summed over the EDP group.
  std::vector<T>& dense = par.store.grads[static_cast<int>(ParamRegion::kDense)];
  std::vector<T>& expert = par.store.grads[static_cast<int>(ParamRegion::kExpert)];
  ASSERT_TRUE(g.world->all_reduce(dense.data(), dense.size(), DTypeOf<T>::value, ReduceOp::kSum).ok());
  ASSERT_TRUE(g.edp->all_reduce(expert.data(), expert.size(), DTypeOf<T>::value, ReduceOp::kSum).ok());
  for (const ParamEntry& e : par.table.entries()) {
    const ParamEntry& r = ref.table.at(e.name);
    const T* got = par.store.grad(e);
    const T* want = ref.store.grad(r);
    double norm = 0;
    for (int64_t i = 0; i < e.numel; ++i) norm += double(want[i]) * want[i];
    const bool dead = e.expert >= 0 && ref_counts[e.expert] == 0;
    const bool k1_gate = e.expert < 0 && c.k == 1;  // softmax over one logit is 1: no gate gradient
    if (dead || k1_gate) {
      for (int64_t i = 0; i < e.numel; ++i) ASSERT_EQ(got[i], T(0)) << e.name << " must get no gradient";
    } else {
      EXPECT_GT(norm, 0) << e.name << ": a zero reference gradient proves nothing";
      EXPECT_LE(rel_error(got, want, e.numel), tol) << e.name;
    }
  }
}

std::vector<int64_t> ep_sizes(int world) {
  std::vector<int64_t> sizes;
  for (int64_t ep = 1; ep <= world; ++ep) {
    if (world % ep == 0 && kExperts % ep == 0) sizes.push_back(ep);
  }
  return sizes;
}

std::vector<int64_t> varied_tokens(int world) {
  std::vector<int64_t> t;
  for (int r = 0; r < world; ++r) t.push_back(13 + 4 * r);
  return t;
}

class ExpertDispatchMpiTest : public MpiTest {};

TEST_F(ExpertDispatchMpiTest, EveryEpSizeMatchesOneProcessOnTheConcatenatedBatch) {
  const int world = world_size();
  Case c{"random routing", varied_tokens(world), std::vector<uint8_t>(world, 0)};
  for (int64_t ep : ep_sizes(world)) {
    check_case<float>(c, ep, CountVerification::kSums, false, 1e-5);
    check_case<double>(c, ep, CountVerification::kFullMatrix, true, 1e-12);
  }
}

TEST_F(ExpertDispatchMpiTest, RowsOverASecondGroupMatchOneProcess) {
  const int world = world_size();
  std::vector<int64_t> tokens = varied_tokens(world);
  tokens[0] = 0;
  Case c{"rows over a second group", tokens, std::vector<uint8_t>(world, 0)};
  for (int64_t ep : ep_sizes(world)) {
    check_case<float>(c, ep, CountVerification::kSums, false, 1e-5, /*separate_rows_group=*/true);
    check_case<double>(c, ep, CountVerification::kFullMatrix, true, 1e-12, /*separate_rows_group=*/true);
  }
}

TEST_F(ExpertDispatchMpiTest, RankWithNoTokensTakesPart) {
  const int world = world_size();
  std::vector<int64_t> tokens = varied_tokens(world);
  tokens[1] = 0;
  Case c{"rank 1 has no tokens", tokens, std::vector<uint8_t>(world, 0)};
  for (int64_t ep : ep_sizes(world)) {
    check_case<float>(c, ep, CountVerification::kSums, false, 1e-5);
    check_case<float>(c, ep, CountVerification::kFullMatrix, true, 1e-5);
  }
}

TEST_F(ExpertDispatchMpiTest, RankWhoseBatchIsAllPaddingTakesPart) {
  const int world = world_size();
  std::vector<uint8_t> padding(world, 0);
  padding[world - 1] = 1;
  Case c{"last rank all padding", varied_tokens(world), padding};
  for (int64_t ep : ep_sizes(world)) check_case<float>(c, ep, CountVerification::kSums, false, 1e-5);
}

TEST_F(ExpertDispatchMpiTest, SkewedRoutingEveryTokenToOneExpert) {
  const int world = world_size();
  Case all{"every token to expert 0", varied_tokens(world), std::vector<uint8_t>(world, 0),
           Routing::kAllToExpertZero, 1};
  Case hot{"hot expert 2", varied_tokens(world), std::vector<uint8_t>(world, 0), Routing::kHotExpert, 2};
  for (int64_t ep : ep_sizes(world)) {
    check_case<float>(all, ep, CountVerification::kSums, false, 1e-5);
    check_case<float>(hot, ep, CountVerification::kFullMatrix, false, 1e-5);
  }
}

// A transport fault: passes everything through, but the counts all-to-all delivers one wrong count
// on one rank.
class CorruptingCommunicator final : public Communicator {
 public:
  CorruptingCommunicator(Communicator* inner, int victim) : inner_(inner), victim_(victim) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  const std::string& name() const override { return inner_->name(); }
  Device device() const override { return inner_->device(); }
  int world_rank_of(int r) const override { return inner_->world_rank_of(r); }
  const CommunicatorOptions& options() const override { return inner_->options(); }
  int64_t sequence_number() const override { return inner_->sequence_number(); }
  Status all_reduce(void* b, int64_t n, DType t, ReduceOp op) override {
    return inner_->all_reduce(b, n, t, op);
  }
  Status all_gather(void* o, const void* i, int64_t n, DType t) override {
    return inner_->all_gather(o, i, n, t);
  }
  Status all_to_all(void* out, const void* in, int64_t n, DType t) override {
    Status s = inner_->all_to_all(out, in, n, t);
    if (s.ok() && rank() == victim_ && t == DType::i64) static_cast<int64_t*>(out)[0] += 3;
    return s;
  }
  Status all_to_all_v(void* o, const int64_t* oc, const void* i, const int64_t* ic, DType t) override {
    ++payload_calls;
    return inner_->all_to_all_v(o, oc, i, ic, t);
  }
  Status all_to_all_blocks(void* o, const AllToAllBlocks& ob, const void* i, const AllToAllBlocks& ib,
                           DType t) override {
    ++payload_calls;
    return inner_->all_to_all_blocks(o, ob, i, ib, t);
  }
  Status broadcast(void* b, int64_t n, DType t, int root) override {
    return inner_->broadcast(b, n, t, root);
  }
  Status barrier() override { return inner_->barrier(); }
  int payload_calls = 0;

 private:
  Communicator* inner_;
  int victim_;
};

TEST_F(ExpertDispatchMpiTest, WrongCountIsCaughtOnEveryRankBeforeRowsMove) {
  const int world = world_size(), me = world_rank();
  for (CountVerification v : {CountVerification::kSums, CountVerification::kFullMatrix}) {
    auto groups = create_mpi_process_groups(world, {kExperts}, test_options(false));
    ASSERT_TRUE(groups.ok()) << groups.status().to_string();
    CorruptingCommunicator faulty(groups.value().ep.get(), world - 1);
    Arena arena("act", 1 << 16, Arena::Growth::kGrowable);
    RunContext ctx = testing::cpu_test_context();
    ctx.activations = &arena;
    std::vector<int64_t> send = {3, 0, 5, 1};
    ExpertDispatchCounts counts;
    Status s = exchange_expert_counts(&counts, send.data(), &faulty, v, kExperts, ctx);
    ASSERT_FALSE(s.ok()) << "rank " << me;
    EXPECT_EQ(s.code(), StatusCode::kDataLoss);
    if (me == 0) std::printf("[ example ] %s\n", s.to_string().c_str());
    const std::string& m = s.message();
    if (v == CountVerification::kSums) {
      const int64_t hit = (world - 1) * (kExperts / world);  // the victim's local expert 0
      EXPECT_NE(m.find("expert " + std::to_string(hit) + " (held by rank " + std::to_string(world - 1) +
                       "): the group sends it " + std::to_string(send[hit] * world) +
                       " rows but its holder counts " + std::to_string(send[hit] * world + 3) + " arriving"),
                std::string::npos)
          << m;
    } else {
      EXPECT_NE(m.find("1 rank(s) received counts that are not the transpose"), std::string::npos) << m;
      EXPECT_NE(m.find("send counts of every rank"), std::string::npos) << m;
    }
    EXPECT_NE(m.find("this rank sends per global expert: 3 0 5 1"), std::string::npos) << m;
    EXPECT_EQ(faulty.payload_calls, 0) << "no rows may move after a failed verification";
    // The group is still in step afterwards.
    EXPECT_TRUE(groups.value().ep->barrier().ok());
  }
  // A negative count is refused on every rank.
  auto groups = create_mpi_process_groups(world, {kExperts}, test_options(false));
  ASSERT_TRUE(groups.ok());
  Arena arena("act", 1 << 16, Arena::Growth::kGrowable);
  RunContext ctx = testing::cpu_test_context();
  ctx.activations = &arena;
  std::vector<int64_t> send = {1, me == 0 ? -1 : 1, 1, 1};
  ExpertDispatchCounts counts;
  Status s = exchange_expert_counts(&counts, send.data(), groups.value().ep.get(), CountVerification::kSums,
                                    kExperts, ctx);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("1 rank(s) have a negative row count"), std::string::npos) << s.message();
}

TEST_F(ExpertDispatchMpiTest, CountsAreTheTransposeAndRowsArriveExpertMajor) {
  const int world = world_size(), me = world_rank();
  auto groups = create_mpi_process_groups(world, {kExperts}, test_options(true));
  ASSERT_TRUE(groups.ok());
  Communicator* ep = groups.value().ep.get();
  const int64_t n_local = kExperts / world, d = 3;
  Arena arena("act", 1 << 16, Arena::Growth::kGrowable);
  RunContext ctx = testing::cpu_test_context();
  ctx.activations = &arena;
  // Rank q sends (q + e) % 3 rows to global expert e; row value (q, e, i, j) encoded exactly.
  auto count = [](int64_t q, int64_t e) { return (q + e) % 3; };
  std::vector<int64_t> send(kExperts);
  std::vector<double> rows_in;
  for (int64_t e = 0; e < kExperts; ++e) {
    send[e] = count(me, e);
    for (int64_t i = 0; i < send[e]; ++i) {
      for (int64_t j = 0; j < d; ++j) rows_in.push_back(1000.0 * me + 100.0 * e + 10.0 * i + j);
    }
  }
  MpiExpertDispatcher<double> dispatcher(ep, CountVerification::kFullMatrix);
  ExpertDispatchCounts counts;
  const double* local = nullptr;
  dispatcher.dispatch_forward(&counts, &local, rows_in.data(), send.data(), kExperts, d, ctx);
  // Local-expert-major, source rank order inside each expert.
  int64_t at = 0;
  for (int64_t e = 0; e < n_local; ++e) {
    const int64_t ge = me * n_local + e;
    int64_t expected_local = 0;
    for (int64_t q = 0; q < world; ++q) {
      EXPECT_EQ(counts.recv_counts[q * n_local + e], count(q, ge));
      expected_local += count(q, ge);
      for (int64_t i = 0; i < count(q, ge); ++i) {
        for (int64_t j = 0; j < d; ++j) {
          ASSERT_EQ(local[at * d + j], 1000.0 * q + 100.0 * ge + 10.0 * i + j)
              << "expert " << e << " from " << q;
        }
        ++at;
      }
    }
    EXPECT_EQ(counts.local_counts[e], expected_local);
  }
  EXPECT_EQ(at, counts.received_rows);
  // Round trip: combine sends every row back to its owner in the owner's order.
  const double* back = nullptr;
  dispatcher.combine_forward(&back, local, counts, d, ctx);
  for (size_t i = 0; i < rows_in.size(); ++i) ASSERT_EQ(back[i], rows_in[i]);
  const double* grad_local = nullptr;
  dispatcher.combine_backward(&grad_local, rows_in.data(), counts, d, ctx);
  for (int64_t i = 0; i < counts.received_rows * d; ++i) ASSERT_EQ(grad_local[i], local[i]);
  const double* grad_back = nullptr;
  dispatcher.dispatch_backward(&grad_back, grad_local, counts, d, ctx);
  for (size_t i = 0; i < rows_in.size(); ++i) ASSERT_EQ(grad_back[i], rows_in[i]);
}

}  // namespace
}  // namespace moeasr
