// bench/parallel_alltoall.cc — the expert-parallel exchange on this machine, under mpirun (after
// nccl-tests' alltoall_perf and Megatron's MoE-layer benchmark, moe_systems.md §2.3, §5.3 B3):
//   1. achieved GB/s of MpiExpertDispatcher's dispatch (counts all-to-all + verification + row
//      all-to-all-v straight into local-expert-major order) and combine (the rows back), against
//      a raw blocking MPI_Alltoallv of exactly the same per-peer bytes (target >= 90%);
//   2. the MoE FFN layer (forward + backward) per rank with EP = 1 (every expert local, each rank its
//      own tokens: the data-parallel layout) and EP = world (experts split, tokens exchanged).
// Routing is uniform random top-2 over 8 experts (a fixed seed per rank); bytes are the rows this rank
// sends (fp32), the same definition for both columns; times are the max over ranks of the median
// over iterations. Asserts nothing.
//
//   mpirun -np 2 build/bench/bench_parallel_alltoall [--iters 20] [--d 256] [--ffn 1024]
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/arena.h"
#include "kernels/cpu/cpu_parallel.h"
#include "model/expert_dispatch.h"
#include "model/ffn.h"
#include "parallel/bootstrap.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_expert_dispatcher.h"

namespace moeasr {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double max_over_ranks(double x) {
  MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return x;
}

// Uniform top-k routing without repeats: rows per global expert of this rank's tokens.
std::vector<int64_t> random_send_counts(int64_t tokens, int64_t experts, int64_t k, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::vector<int64_t> counts(experts, 0);
  std::vector<int64_t> ids(experts);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t e = 0; e < experts; ++e) ids[e] = e;
    for (int64_t j = 0; j < k; ++j) {
      std::uniform_int_distribution<int64_t> pick(j, experts - 1);
      std::swap(ids[j], ids[pick(gen)]);
      ++counts[ids[j]];
    }
  }
  return counts;
}

struct Row {
  int64_t tokens;
  double dispatch_s, combine_s, raw_s;
  double bytes;
};

Row bench_exchange(MpiCommunicator* comm, int64_t tokens, int64_t d, int64_t experts, int iters) {
  const int ep = comm->size(), me = comm->rank();
  const int64_t k = 2, n_local = experts / ep;
  std::vector<int64_t> send_counts = random_send_counts(tokens, experts, k, 1000 + me);
  int64_t m = 0;
  for (int64_t c : send_counts) m += c;
  std::vector<float> rows(m * d);
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<float>(i % 1000) * 1e-3f;
  Arena arena("bench", 1 << 20, Arena::Growth::kGrowable);
  RunContext ctx;
  ctx.num_threads = 1;
  ctx.activations = &arena;
  MpiExpertDispatcher<float> dispatcher(comm);

  // The raw exchange: the same per-peer element counts, MPI_Alltoallv (int counts: fine at these sizes).
  ExpertDispatchCounts counts;
  const float* local = nullptr;
  dispatcher.dispatch_forward(&counts, &local, rows.data(), send_counts.data(), experts, d, ctx);
  std::vector<int> scount(ep), sdispl(ep), rcount(ep), rdispl(ep);
  int64_t s_at = 0, r_at = 0;
  for (int p = 0; p < ep; ++p) {
    int64_t s = 0, r = 0;
    for (int64_t e = 0; e < n_local; ++e) {
      s += counts.send_counts[p * n_local + e] * d;
      r += counts.recv_counts[p * n_local + e] * d;
    }
    scount[p] = static_cast<int>(s);
    rcount[p] = static_cast<int>(r);
    sdispl[p] = static_cast<int>(s_at);
    rdispl[p] = static_cast<int>(r_at);
    s_at += s;
    r_at += r;
  }
  std::vector<float> raw_out(r_at);

  std::vector<double> t_dispatch, t_combine, t_raw;
  for (int it = 0; it < iters + 2; ++it) {
    arena.reset();
    MPI_Barrier(MPI_COMM_WORLD);
    Clock::time_point t0 = Clock::now();
    dispatcher.dispatch_forward(&counts, &local, rows.data(), send_counts.data(), experts, d, ctx);
    const double a = seconds_since(t0);
    MPI_Barrier(MPI_COMM_WORLD);
    t0 = Clock::now();
    const float* back = nullptr;
    dispatcher.combine_forward(&back, local, counts, d, ctx);
    const double b = seconds_since(t0);
    MPI_Barrier(MPI_COMM_WORLD);
    t0 = Clock::now();
    MPI_Alltoallv(rows.data(), scount.data(), sdispl.data(), MPI_FLOAT, raw_out.data(), rcount.data(),
                  rdispl.data(), MPI_FLOAT, MPI_COMM_WORLD);
    const double c = seconds_since(t0);
    if (it >= 2) {  // warm-up
      t_dispatch.push_back(a);
      t_combine.push_back(b);
      t_raw.push_back(c);
    }
  }
  Row row;
  row.tokens = tokens;
  row.dispatch_s = max_over_ranks(median(t_dispatch));
  row.combine_s = max_over_ranks(median(t_combine));
  row.raw_s = max_over_ranks(median(t_raw));
  row.bytes = max_over_ranks(static_cast<double>(m * d * sizeof(float)));
  return row;
}

ParameterTable moe_table(int64_t d, int64_t f, int64_t experts, const ExpertLayout& layout) {
  ParameterTable t;
  t.add("moe.gate.weight", Shape{experts, d}, ParamRegion::kDense, ParamInit::kUniformFanIn, d);
  t.add_expert_block("moe.experts", "w_1.weight", Shape{f, d}, layout, experts, ParamInit::kUniformFanIn, d);
  t.add_expert_block("moe.experts", "w_1.bias", Shape{f}, layout, experts, ParamInit::kUniformFanIn, d);
  t.add_expert_block("moe.experts", "w_2.weight", Shape{d, f}, layout, experts, ParamInit::kUniformFanIn, f);
  t.add_expert_block("moe.experts", "w_2.bias", Shape{d}, layout, experts, ParamInit::kUniformFanIn, f);
  return t;
}

// Median forward+backward seconds of one MoE FFN on this rank's tokens, max over ranks.
double bench_layer(ExpertDispatcher<float>* dispatcher, int64_t tokens, int64_t d, int64_t f, int64_t experts,
                   int iters) {
  const ExpertLayout layout = dispatcher->layout();
  ParameterTable table = moe_table(d, f, experts, layout);
  ParameterStore<float> store(table);
  initialize_parameters(&store, 7);
  MoeFfnParams<float> p = bind_moe_ffn(&store, "moe", layout, 2, ActivationType::kSwish, 0.0);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::mt19937_64 gen(77 + rank);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> x(tokens * d), dout(tokens * d), out(tokens * d), dx(tokens * d);
  for (float& v : x) v = u(gen);
  for (float& v : dout) v = u(gen);
  Arena arena("bench", 1 << 24, Arena::Growth::kGrowable);
  RunContext ctx;
  ctx.num_threads = 1;
  ctx.activations = &arena;
  StepRng rng;
  std::vector<double> times;
  for (int it = 0; it < iters + 1; ++it) {
    arena.reset();
    MPI_Barrier(MPI_COMM_WORLD);
    Clock::time_point t0 = Clock::now();
    MoeFfnSaved<float> saved;
    moe_ffn_forward(&saved, out.data(), x.data(), nullptr, p, dispatcher, tokens, 1, 0, rng, ctx);
    moe_ffn_backward(dx.data(), saved, dout.data(), p, dispatcher, tokens, 1, 0, rng, ctx);
    if (it >= 1) times.push_back(seconds_since(t0));
  }
  return max_over_ranks(median(times));
}

int run(int argc, char** argv) {
  StatusOr<ProcessInfo> info = bootstrap_mpi(&argc, &argv);
  if (!info.ok()) {
    std::fprintf(stderr, "%s\n", info.status().to_string().c_str());
    return 1;
  }
  int iters = 20;
  int64_t d = 256, f = 1024;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--iters") {
      iters = std::atoi(argv[i + 1]);
    } else if (flag == "--d") {
      d = std::atoll(argv[i + 1]);
    } else if (flag == "--ffn") {
      f = std::atoll(argv[i + 1]);
    } else {
      std::fprintf(stderr, "unknown flag %s (flags: --iters N --d D --ffn F)\n", flag.c_str());
      return 2;
    }
  }
  RunContext init;
  init.num_threads = 1;
  cpu_backend_init(init);
  const int world = info.value().world, me = info.value().rank;
  const int64_t experts = 8;
  if (experts % world != 0) {
    if (me == 0) std::fprintf(stderr, "run with a world size dividing 8 (1, 2, 4, 8)\n");
    finalize_mpi();
    return 2;
  }
  CommunicatorOptions options;
  options.timeout = std::chrono::milliseconds(120000);
  auto world_comm = MpiCommunicator::create(MPI_COMM_WORLD, "world", options);
  if (!world_comm.ok()) {
    std::fprintf(stderr, "%s\n", world_comm.status().to_string().c_str());
    return 1;
  }
  std::unique_ptr<MpiCommunicator> owned = std::move(world_comm).value();
  MpiCommunicator* comm = owned.get();

  if (me == 0) {
    std::printf("== expert all-to-all, EP %d, d %lld, 8 experts top-2, fp32, MPI shared memory\n", world,
                static_cast<long long>(d));
    std::printf("%8s %10s | %9s %9s | %9s %9s | %9s | %8s %8s\n", "tokens", "MB/rank", "dispatch", "GB/s",
                "combine", "GB/s", "raw GB/s", "disp/raw", "comb/raw");
  }
  for (int64_t tokens : {int64_t(256), int64_t(1024), int64_t(4096), int64_t(16384)}) {
    Row r = bench_exchange(comm, tokens, d, experts, iters);
    const double gb = r.bytes / 1e9;
    if (me == 0) {
      std::printf("%8lld %10.2f | %7.3fms %9.2f | %7.3fms %9.2f | %9.2f | %7.0f%% %7.0f%%\n",
                  static_cast<long long>(tokens), r.bytes / 1e6, r.dispatch_s * 1e3, gb / r.dispatch_s,
                  r.combine_s * 1e3, gb / r.combine_s, gb / r.raw_s, 100.0 * r.raw_s / r.dispatch_s,
                  100.0 * r.raw_s / r.combine_s);
    }
  }

  if (me == 0) {
    std::printf(
        "\n== MoE FFN forward+backward per rank, d %lld, ffn %lld, 8 experts top-2, 1 thread per rank\n",
        static_cast<long long>(d), static_cast<long long>(f));
    const std::string ep_n = "EP " + std::to_string(world) + " (ms)";
    std::printf("%8s | %12s | %12s | %8s | %s\n", "tokens", "EP 1 (ms)", ep_n.c_str(), "ratio",
                "EP 1 expert GFLOP/s");
  }
  LocalExpertDispatcher<float> local;
  {
    MpiExpertDispatcher<float> dispatcher(comm);
    for (int64_t tokens : {int64_t(1024), int64_t(4096)}) {
      const double t1 = bench_layer(&local, tokens, d, f, experts, std::max(3, iters / 4));
      const double tn = bench_layer(&dispatcher, tokens, d, f, experts, std::max(3, iters / 4));
      if (me == 0) {
        // Expert GEMMs only: 3 (fwd + bwd) x 2 GEMMs x 2 FLOP x k rows per token x d x f.
        const double flops = 3.0 * 2.0 * 2.0 * 2.0 * double(tokens) * double(d) * double(f);
        std::printf("%8lld | %12.2f | %12.2f | %7.2fx | %.1f\n", static_cast<long long>(tokens), t1 * 1e3,
                    tn * 1e3, tn / t1, flops / t1 / 1e9);
      }
    }
  }
  owned.reset();  // MPI_Comm_free before MPI_Finalize
  finalize_mpi();
  return 0;
}

}  // namespace
}  // namespace moeasr

int main(int argc, char** argv) {
  return moeasr::run(argc, argv);
}
