// tests/parallel/parallel_test.cc — the single-process parts of parallel/ (no mpirun):
//   - layouts: EP/EDP ranks and members by hand for world 8 / ep 4; errors for world % ep, experts % ep,
//     ep < 1, each naming the numbers to change;
//   - the abort path end to end: a debug-mode mismatch under mpirun (communicator_mpi_test's disabled
//     demo) ends the whole job with every fingerprint printed, without hanging;
//   - the debug-mode fingerprint checker as a pure function (the part that would abort): agreement,
//     a missing rank, count/op/sequence/root mismatches, all_to_all_v counts that are not transposes,
//     every fingerprint listed; pack/unpack round trip;
//   - communicator options from the environment, with bad values refused by name;
//   - local rank from OMPI_COMM_WORLD_LOCAL_RANK / SLURM_LOCALID (precedence, absence, garbage);
//     the rank-map format;
//   - SingleProcessCommunicator: copies, argument checks, sequence numbers, the abort/return policy;
//   - the local-expert-major offsets of received blocks, and a block exchange on one member, exactly;
//   - MpiExpertDispatcher over a one-member group reproduces LocalExpertDispatcher bit for bit
//     (forward, dx, every gradient), also with zero tokens;
//   - grad sync on one process: the norm and clipping equal kernels/cpu clip_grad_norm;
//   - load statistics by hand.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "core/arena.h"
#include "kernels/cpu/optimizer.h"
#include "model/expert_dispatch.h"
#include "model/ffn.h"
#include "parallel/bootstrap.h"
#include "parallel/expert_load.h"
#include "parallel/grad_sync.h"
#include "parallel/groups.h"
#include "parallel/mpi_expert_dispatcher.h"
#include "parallel/single_process_communicator.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(ParallelLayout, RanksAndMembersOfEpAndEdpGroups) {
  // world 8, ep 4: EP groups {0..3}, {4..7}; EDP groups {0,4}, {1,5}, {2,6}, {3,7}.
  auto l = make_parallel_layout(8, 5, 4, {8, 4});
  ASSERT_TRUE(l.ok()) << l.status().to_string();
  EXPECT_EQ(l.value().ep_rank, 1);
  EXPECT_EQ(l.value().ep_group, 1);
  EXPECT_EQ(l.value().edp_size, 2);
  EXPECT_EQ(l.value().edp_rank, 1);
  EXPECT_EQ(ep_group_members(l.value()), (std::vector<int>{4, 5, 6, 7}));
  EXPECT_EQ(edp_group_members(l.value()), (std::vector<int>{1, 5}));
  EXPECT_EQ(l.value().expert_layout().ep_rank, 1);
  EXPECT_EQ(l.value().expert_layout().ep_size, 4);
  auto one = make_parallel_layout(3, 2, 1, {8});
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(edp_group_members(one.value()), (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(ep_group_members(one.value()), (std::vector<int>{2}));
}

TEST(ParallelLayout, InvalidSizesAreClearErrors) {
  auto world = make_parallel_layout(6, 0, 4, {8});
  ASSERT_FALSE(world.ok());
  EXPECT_EQ(world.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(contains(world.status().message(), "expert_parallel_size 4 does not divide the world size 6"))
      << world.status().message();
  auto experts = make_parallel_layout(8, 0, 4, {8, 6});
  ASSERT_FALSE(experts.ok());
  EXPECT_TRUE(contains(experts.status().message(), "does not divide n_expert 6"))
      << experts.status().message();
  EXPECT_FALSE(make_parallel_layout(8, 0, 0, {8}).ok());
  EXPECT_FALSE(make_parallel_layout(8, 8, 1, {8}).ok());
  ModelConfig c;
  EXPECT_TRUE(moe_expert_counts(c).empty());
  c.encoder.ffn.mlp_type = MlpType::kMoe;
  c.encoder.ffn.n_expert = 6;
  c.decoder.ffn.mlp_type = MlpType::kMoe;
  c.decoder.ffn.n_expert = 4;
  EXPECT_EQ(moe_expert_counts(c), (std::vector<int64_t>{6, 4}));
  EXPECT_TRUE(create_single_process_groups({6, 4}, CommunicatorOptions{}).ok());
}

CollectiveFingerprint print(int rank, CollectiveOp op, int64_t count, int64_t seq = 7) {
  CollectiveFingerprint fp;
  fp.sequence = seq;
  fp.op = op;
  fp.dtype = DType::f32;
  fp.group_hash = group_name_hash("ep0");
  fp.count = count;
  fp.group_rank = rank;
  fp.world_rank = 10 + rank;
  return fp;
}

TEST(Fingerprints, AgreementPasses) {
  std::vector<std::optional<CollectiveFingerprint>> p;
  for (int r = 0; r < 3; ++r) p.push_back(print(r, CollectiveOp::kAllReduce, 5));
  EXPECT_TRUE(check_collective_fingerprints("ep0", p).ok());
}

TEST(Fingerprints, MissingRankIsNamedAndEveryFingerprintListed) {
  std::vector<std::optional<CollectiveFingerprint>> p;
  p.push_back(print(0, CollectiveOp::kBarrier, 0));
  p.push_back(std::nullopt);
  p.push_back(print(2, CollectiveOp::kBarrier, 0));
  Status s = check_collective_fingerprints("ep0", p);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(contains(s.message(), "group ranks that did not arrive: 1")) << s.message();
  EXPECT_TRUE(contains(s.message(), "rank 0 (world 10): seq 7 barrier")) << s.message();
  EXPECT_TRUE(contains(s.message(), "rank 1: <did not arrive>")) << s.message();
  EXPECT_TRUE(contains(s.message(), "rank 2 (world 12): seq 7 barrier")) << s.message();
}

TEST(Fingerprints, EachKindOfMismatchIsReported) {
  auto check = [](std::vector<std::optional<CollectiveFingerprint>> p, const std::string& expected) {
    Status s = check_collective_fingerprints("ep0", p);
    ASSERT_FALSE(s.ok()) << expected;
    EXPECT_EQ(s.code(), StatusCode::kInternal);
    EXPECT_TRUE(contains(s.message(), expected)) << s.message();
    EXPECT_TRUE(contains(s.message(), "fingerprints:")) << s.message();
  };
  check({print(0, CollectiveOp::kAllReduce, 5), print(1, CollectiveOp::kAllReduce, 6)},
        "counts differ: 5 on rank 0, 6 on rank 1");
  check({print(0, CollectiveOp::kAllReduce, 5), print(1, CollectiveOp::kAllGather, 5)},
        "operations differ: rank 0 calls all_reduce, rank 1 calls all_gather");
  check({print(0, CollectiveOp::kBarrier, 0, 7), print(1, CollectiveOp::kBarrier, 0, 8)},
        "sequence numbers differ: rank 0 is at 7, rank 1 at 8");
  auto b0 = print(0, CollectiveOp::kBroadcast, 2), b1 = print(1, CollectiveOp::kBroadcast, 2);
  b0.root = 0;
  b1.root = 1;
  check({b0, b1}, "broadcast roots differ");
  auto other = print(1, CollectiveOp::kBarrier, 0);
  other.group_hash = group_name_hash("ep1");
  check({print(0, CollectiveOp::kBarrier, 0), other}, "rank 1 is in another group");
  auto v0 = print(0, CollectiveOp::kAllToAllV, 5), v1 = print(1, CollectiveOp::kAllToAllV, 4);
  v0.send_counts = {2, 3};
  v0.recv_counts = {2, 1};
  v1.send_counts = {1, 3};
  v1.recv_counts = {3, 3};  // expects 3 from rank 0, which sends 3: fine; rank 0 expects 1 from 1: fine
  EXPECT_TRUE(check_collective_fingerprints("ep0", {v0, v1}).ok());
  v1.recv_counts = {4, 3};
  check({v0, v1}, "rank 0 sends 3 elements to rank 1, which expects 4 from rank 0");
}

TEST(Fingerprints, PackUnpackRoundTrip) {
  auto fp = print(1, CollectiveOp::kAllToAllV, 9, 123456789);
  fp.send_counts = {4, 5, 0};
  fp.recv_counts = {1, 2, 3};
  fp.reduce = ReduceOp::kMax;
  std::vector<int64_t> record(fingerprint_record_size(3));
  pack_fingerprint(record.data(), fp, 3);
  CollectiveFingerprint back = unpack_fingerprint(record.data(), 3);
  EXPECT_EQ(describe_fingerprint(back), describe_fingerprint(fp));
  EXPECT_EQ(back.send_counts, fp.send_counts);
  EXPECT_EQ(back.recv_counts, fp.recv_counts);
  EXPECT_EQ(back.group_hash, fp.group_hash);
  EXPECT_NE(group_name_hash("ep0"), group_name_hash("ep1"));
}

TEST(CommunicatorOptionsFromEnv, ReadsAndRefusesByName) {
  unsetenv("MOEASR_COLLECTIVE_DEBUG");
  unsetenv("MOEASR_COLLECTIVE_TIMEOUT_S");
  auto def = communicator_options_from_env();
  ASSERT_TRUE(def.ok());
  EXPECT_FALSE(def.value().debug);
  EXPECT_EQ(def.value().timeout.count(), 600000);
  setenv("MOEASR_COLLECTIVE_DEBUG", "1", 1);
  setenv("MOEASR_COLLECTIVE_TIMEOUT_S", "2.5", 1);
  auto set = communicator_options_from_env();
  ASSERT_TRUE(set.ok());
  EXPECT_TRUE(set.value().debug);
  EXPECT_EQ(set.value().timeout.count(), 2500);
  setenv("MOEASR_COLLECTIVE_TIMEOUT_S", "soon", 1);
  auto bad = communicator_options_from_env();
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(contains(bad.status().message(), "MOEASR_COLLECTIVE_TIMEOUT_S='soon'"))
      << bad.status().message();
  setenv("MOEASR_COLLECTIVE_TIMEOUT_S", "1", 1);
  setenv("MOEASR_COLLECTIVE_DEBUG", "yes please", 1);
  EXPECT_FALSE(communicator_options_from_env().ok());
  unsetenv("MOEASR_COLLECTIVE_DEBUG");
  unsetenv("MOEASR_COLLECTIVE_TIMEOUT_S");
}

TEST(Bootstrap, LocalRankFromLauncherVariables) {
  std::map<std::string, std::string> vars;
  EnvLookup env = [&](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  };
  std::string source;
  EXPECT_EQ(local_rank_from_env(env, &source).status().code(), StatusCode::kNotFound);
  vars["SLURM_LOCALID"] = "3";
  auto slurm = local_rank_from_env(env, &source);
  ASSERT_TRUE(slurm.ok());
  EXPECT_EQ(slurm.value(), 3);
  EXPECT_EQ(source, "SLURM_LOCALID");
  vars["OMPI_COMM_WORLD_LOCAL_RANK"] = "1";  // Open MPI's wins
  auto ompi = local_rank_from_env(env, &source);
  ASSERT_TRUE(ompi.ok());
  EXPECT_EQ(ompi.value(), 1);
  EXPECT_EQ(source, "OMPI_COMM_WORLD_LOCAL_RANK");
  vars["OMPI_COMM_WORLD_LOCAL_RANK"] = "one";
  auto bad = local_rank_from_env(env, &source);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(contains(bad.status().message(), "OMPI_COMM_WORLD_LOCAL_RANK='one'")) << bad.status().message();
  ProcessInfo a;
  a.host = "n1";
  a.local_world = 2;
  a.local_rank_source = "SLURM_LOCALID";
  ProcessInfo b = a;
  b.rank = 1;
  b.local_rank = 1;
  EXPECT_EQ(format_rank_map({a, b}),
            "rank map (world 2):\n  rank 0 host n1 local 0/2 [SLURM_LOCALID]\n  rank 1 host n1 local 1/2 "
            "[SLURM_LOCALID]");
}

TEST(SingleProcessCommunicator, CopiesChecksAndCounts) {
  CommunicatorOptions o;
  o.on_error = CollectiveErrorPolicy::kReturnStatus;
  SingleProcessCommunicator c("world", o);
  std::vector<float> a = {1, 2, 3}, b(3, 0);
  EXPECT_TRUE(c.all_reduce(a.data(), 3, DType::f32, ReduceOp::kSum).ok());
  EXPECT_EQ(a, (std::vector<float>{1, 2, 3}));
  EXPECT_TRUE(c.all_gather(b.data(), a.data(), 3, DType::f32).ok());
  EXPECT_EQ(b, a);
  int64_t two = 2, three = 3;
  Status s = c.all_to_all_v(b.data(), &three, a.data(), &two, DType::f32);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(contains(s.message(), "sends 2 elements to itself but expects 3")) << s.message();
  EXPECT_TRUE(contains(s.message(), "[group world rank 0/1 (world 0) seq 2 all_to_all_v]")) << s.message();
  EXPECT_FALSE(c.broadcast(a.data(), 3, DType::f32, 1).ok());
  EXPECT_TRUE(c.barrier().ok());
  EXPECT_EQ(c.sequence_number(), 5);
  int64_t neg = -1;
  EXPECT_FALSE(c.all_to_all_v(b.data(), &neg, a.data(), &neg, DType::f32).ok());
}

TEST(SingleProcessCommunicatorDeathTest, AbortPolicyStopsTheProcessWithTheMessage) {
  SingleProcessCommunicator c("edp3");  // default policy: abort
  std::vector<float> a(2);
  int64_t one = 1, two = 2;
  EXPECT_DEATH((void)c.all_to_all_v(a.data(), &two, a.data(), &one, DType::f32),
               "seq 0 all_to_all_v.*expects 2");
}

// The abort path end to end: mpirun runs communicator_mpi_test's disabled demo, where rank 0 calls an
// all_reduce with another count than rank 1 in debug mode under the default abort policy. The job
// must end (no hang: `timeout` would exit 124) with a failure code, the mismatch and every rank's
// fingerprint printed, and no rank surviving the collective.
TEST(CollectiveAbort, DebugMismatchAbortsEveryRankWithFingerprints) {
  char exe[4096] = {0};
  const ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  ASSERT_GT(len, 0);
  std::string dir(exe, static_cast<size_t>(len));
  dir = dir.substr(0, dir.rfind('/'));
  const std::string binary = dir + "/communicator_mpi_test";
  ASSERT_EQ(access(binary.c_str(), X_OK), 0)
      << binary << " is missing: build the communicator_mpi_test target";
  setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
  setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  setenv("OMPI_MCA_btl_vader_single_copy_mechanism", "none", 1);
  const std::string command = "timeout 120 mpirun --oversubscribe --bind-to none -np 2 " + binary +
                              " --gtest_also_run_disabled_tests --gtest_filter=CommunicatorAbortDemo.* 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof(buffer), pipe)) output.append(buffer, n);
  const int status = pclose(pipe);
  ASSERT_TRUE(WIFEXITED(status)) << output;
  const int code = WEXITSTATUS(status);
  EXPECT_NE(code, 0) << output;
  EXPECT_NE(code, 124) << "the job hung until timeout killed it\n" << output;
  // Every rank reaches the same verdict and reports it itself (mpirun's own "MPI_ABORT" banner is not
  // asserted: when both ranks abort at once, Open MPI's help aggregation can fail under load and drop it).
  EXPECT_TRUE(contains(output, "CHECK failed at")) << output;
  EXPECT_TRUE(contains(output, "on rank 0/2")) << output;
  EXPECT_TRUE(contains(output, "on rank 1/2")) << output;
  EXPECT_TRUE(contains(output, "counts differ: 3 on rank 0, 4 on rank 1")) << output;
  EXPECT_TRUE(contains(output, "rank 0 (world 0): seq 0 all_reduce f32 count 3")) << output;
  EXPECT_TRUE(contains(output, "rank 1 (world 1): seq 0 all_reduce f32 count 4")) << output;
  EXPECT_FALSE(contains(output, "was not aborted")) << output;
}

TEST(ExpertExchange, ReceivedBlocksLandLocalExpertMajor) {
  // ep 2, 3 local experts; recv_counts[q][e]. Expert-major order: e0 q0 (1), e0 q1 (2), e1 q0 (0),
  // e1 q1 (1), e2 q0 (2), e2 q1 (0).
  const std::vector<int64_t> counts = {1, 0, 2,   // from rank 0
                                       2, 1, 0};  // from rank 1
  EXPECT_EQ(expert_major_offsets(counts.data(), 2, 3), (std::vector<int64_t>{0, 3, 4, 1, 3, 6}));
  // One member: blocks move between two block lists exactly.
  SingleProcessCommunicator c("ep0");
  const std::vector<int64_t> in_off = {0, 2, 3}, in_cnt = {2, 1, 3}, out_off = {4, 0, 1}, out_cnt = {2, 1, 3};
  std::vector<double> in = {10, 11, 12, 13, 14, 15}, out(6, -1);
  ASSERT_TRUE(c.all_to_all_blocks(out.data(), AllToAllBlocks{3, out_off.data(), out_cnt.data()}, in.data(),
                                  AllToAllBlocks{3, in_off.data(), in_cnt.data()}, DType::f64)
                  .ok());
  EXPECT_EQ(out, (std::vector<double>{12, 13, 14, 15, 10, 11}));
}

ParameterTable moe_table(int64_t d, int64_t f, int64_t n_experts) {
  ParameterTable t;
  t.add("moe.gate.weight", Shape{n_experts, d}, ParamRegion::kDense, ParamInit::kUniformFanIn, d);
  ExpertLayout layout;
  t.add_expert_block("moe.experts", "w_1.weight", Shape{f, d}, layout, n_experts, ParamInit::kUniformFanIn,
                     d);
  t.add_expert_block("moe.experts", "w_1.bias", Shape{f}, layout, n_experts, ParamInit::kUniformFanIn, d);
  t.add_expert_block("moe.experts", "w_2.weight", Shape{d, f}, layout, n_experts, ParamInit::kUniformFanIn,
                     f);
  t.add_expert_block("moe.experts", "w_2.bias", Shape{d}, layout, n_experts, ParamInit::kUniformFanIn, f);
  return t;
}

TEST(MpiExpertDispatcher, OneMemberGroupReproducesTheLocalDispatcherBitForBit) {
  const int64_t d = 8, f = 12, experts = 4, k = 2;
  for (int64_t n : {int64_t(0), int64_t(1), int64_t(23)}) {
    std::vector<std::vector<float>> outs, dxs, grads;
    for (int which = 0; which < 2; ++which) {
      ParameterTable table = moe_table(d, f, experts);
      ParameterStore<float> store(table);
      initialize_parameters(&store, 9);
      MoeFfnParams<float> p = bind_moe_ffn(&store, "moe", ExpertLayout{}, k, ActivationType::kSwish, 0.0);
      Arena arena("act", 1 << 16, Arena::Growth::kGrowable);
      RunContext ctx = testing::cpu_test_context();
      ctx.activations = &arena;
      SingleProcessCommunicator comm("ep0");
      MpiExpertDispatcher<float> mpi(&comm, CountVerification::kFullMatrix);
      LocalExpertDispatcher<float> local;
      ExpertDispatcher<float>* dispatcher = which == 0 ? static_cast<ExpertDispatcher<float>*>(&local) : &mpi;
      std::vector<float> x = testing::random_floats(n * d, 4), dout = testing::random_floats(n * d, 5);
      std::vector<uint8_t> mask(n, 1);
      if (n > 3) mask[3] = 0;
      std::vector<float> out(n * d), dx(n * d);
      MoeFfnSaved<float> saved;
      StepRng rng;
      moe_ffn_forward(&saved, out.data(), x.data(), mask.data(), p, dispatcher, n, 1, 0, rng, ctx);
      moe_ffn_backward(dx.data(), saved, dout.data(), p, dispatcher, n, 1, 0, rng, ctx);
      outs.push_back(out);
      dxs.push_back(dx);
      grads.push_back(store.grads[0]);
      grads.back().insert(grads.back().end(), store.grads[1].begin(), store.grads[1].end());
    }
    EXPECT_EQ(outs[0], outs[1]) << "n " << n;
    EXPECT_EQ(dxs[0], dxs[1]) << "n " << n;
    EXPECT_EQ(grads[0], grads[1]) << "n " << n;
  }
}

TEST(ExchangeExpertCounts, NegativeCountIsRefused) {
  SingleProcessCommunicator comm("ep0");
  Arena arena("act", 1 << 12, Arena::Growth::kGrowable);
  RunContext ctx = testing::cpu_test_context();
  ctx.activations = &arena;
  std::vector<int64_t> send = {2, -1, 0};
  ExpertDispatchCounts counts;
  Status s = exchange_expert_counts(&counts, send.data(), &comm, CountVerification::kSums, 3, ctx);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(contains(s.message(), "negative row count (this rank: expert 1 = -1)")) << s.message();
  send[1] = 4;
  ASSERT_TRUE(exchange_expert_counts(&counts, send.data(), &comm, CountVerification::kSums, 3, ctx).ok());
  EXPECT_EQ(counts.received_rows, 6);
  EXPECT_EQ(counts.sent_rows, 6);
  EXPECT_EQ(counts.local_counts[1], 4);
}

TEST(GradSync, OneProcessNormAndClipEqualTheKernel) {
  ParameterTable t;
  t.add("dense", Shape{300}, ParamRegion::kDense, ParamInit::kZeros, 1);
  t.add("expert", Shape{200}, ParamRegion::kExpert, ParamInit::kZeros, 1, 0, 0);
  ParameterStore<double> store(t), copy(t);
  auto g = testing::random_doubles(500, 3, -1, 1);
  std::copy(g.begin(), g.begin() + 300, store.grads[0].begin());
  std::copy(g.begin() + 300, g.end(), store.grads[1].begin());
  copy.grads[0] = store.grads[0];
  copy.grads[1] = store.grads[1];
  RunContext ctx = testing::cpu_test_context();
  auto groups = create_single_process_groups({}, CommunicatorOptions{});
  ASSERT_TRUE(groups.ok());
  GradSyncOptions sync;
  sync.bucket_bytes = 100;
  ASSERT_TRUE(sync_gradients(&store, groups.value().world.get(), groups.value().edp.get(), sync).ok());
  EXPECT_EQ(store.grads[0], copy.grads[0]);
  auto norm = clip_grad_norm_distributed(&store, 2.0, groups.value().ep.get(), ctx);
  ASSERT_TRUE(norm.ok());
  GradBuffer<double> buffers[2] = {{copy.grads[0].data(), 300}, {copy.grads[1].data(), 200}};
  const double want = clip_grad_norm(buffers, 2.0, 2, ctx);
  EXPECT_NEAR(norm.value(), want, 1e-12 * want);
  for (int r = 0; r < 2; ++r) {
    for (size_t i = 0; i < store.grads[r].size(); ++i)
      EXPECT_NEAR(store.grads[r][i], copy.grads[r][i], 1e-15);
  }
  sync.bucket_bytes = 0;
  EXPECT_FALSE(sync_gradients(&store, groups.value().world.get(), groups.value().edp.get(), sync).ok());
  auto total = global_batch_size(7, groups.value().world.get());
  ASSERT_TRUE(total.ok());
  EXPECT_EQ(total.value(), 7);
}

TEST(ExpertLoad, StatisticsByHand) {
  ExpertLoadStats s = summarize_expert_load({6, 0, 2, 0}, {6, 2});
  EXPECT_EQ(s.total, 8);
  EXPECT_EQ(s.max, 6);
  EXPECT_DOUBLE_EQ(s.mean, 2.0);
  EXPECT_DOUBLE_EQ(s.max_over_mean, 3.0);
  EXPECT_EQ(s.dead_experts, 2);
  EXPECT_DOUBLE_EQ(s.rank_max_over_mean, 1.5);
  EXPECT_EQ(format_expert_load({s}),
            "moe 0: tokens/expert [6 0 2 0] max/mean 3.00 dead 2 | rows/EP rank [6 2] max/mean 1.50");
  SingleProcessCommunicator ep("ep0"), edp("edp0");
  auto reduced = reduce_expert_load({{6, 0, 2, 0}, {1, 1, 1, 1}}, &ep, &edp);
  ASSERT_TRUE(reduced.ok());
  EXPECT_EQ(reduced.value()[1].tokens_per_expert, (std::vector<int64_t>{1, 1, 1, 1}));
  EXPECT_EQ(reduced.value()[0].rows_per_ep_rank, (std::vector<int64_t>{8}));
  EXPECT_FALSE(reduce_expert_load({{1, 2}, {1}}, &ep, &edp).ok());
}

}  // namespace
}  // namespace moeasr
