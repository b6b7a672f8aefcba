// bench/kernels_cpu.cc — CPU op throughput at the shapes of the tiny model (d256, ffn 1024, 4 heads)
// and of Dense-225M (d512, ffn 2048, 8 heads), batch 4 x 500 frames (124 encoder frames after
// subsampling, N = 496 rows). GEMM-backed ops report GFLOP/s against raw OpenBLAS SGEMM on the same
// shapes; elementwise and normalisation ops report GB/s against a memcpy moving the same bytes.
// Each op and its peer are timed alternately in the same run (this machine is shared and noisy) and
// the table shows medians of 7 samples. Prints a table; asserts nothing.
//
//   build/bench/bench_kernels_cpu [--threads 2] [--samples 7]
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/philox.h"
#include "core/run_context.h"
#include "kernels/cpu/conv.h"
#include "kernels/cpu/cpu_parallel.h"
#include "kernels/cpu/dropout.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/optimizer.h"
#include "kernels/cpu/softmax.h"

namespace moeasr {
namespace {

using Clock = std::chrono::steady_clock;

// Seconds per call: repeats the call until a sample lasts >= 40 ms.
double seconds_per_call(const std::function<void()>& fn) {
  fn();  // warm-up
  int reps = 1;
  while (true) {
    auto start = Clock::now();
    for (int i = 0; i < reps; ++i) fn();
    double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    if (elapsed >= 0.04) return elapsed / reps;
    reps *= 2;
  }
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Case {
  std::string model;
  std::string op;
  std::string shape;
  double work;  // FLOPs (compute cases) or bytes moved (memory cases)
  bool compute;
  std::function<void()> run;
  std::function<void()> peer;
};

std::vector<float> filled(int64_t n, uint64_t seed) {
  RngKey key;
  key.seed = seed;
  PhiloxStream s = philox_stream(key);
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = 2.0f * philox_uniform(s, i) - 1.0f;
  return v;
}

// Keeps buffers alive for the lambdas.
struct Buffers {
  std::vector<std::vector<float>> store;
  std::vector<std::vector<char>> bytes;
  char* make_bytes(int64_t n) {
    bytes.emplace_back(static_cast<size_t>(n), 1);
    return bytes.back().data();
  }
  float* make(int64_t n, uint64_t seed) {
    store.push_back(filled(n, seed));
    return store.back().data();
  }
};

void sgemm_peer(float* c, const float* a, const float* b, int64_t m, int64_t n, int64_t k, bool trans_b) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, int(m), int(n), int(k), 1.0f,
              a, int(k), b, trans_b ? int(k) : int(n), 0.0f, c, int(n));
}

void add_model_cases(std::vector<Case>* cases, Buffers* buf, const std::string& model, int64_t d, int64_t f,
                     int64_t heads, const RunContext& ctx) {
  const int64_t batch = 4, frames = 500, t = 124, n = batch * t, dk = d / heads;
  char shape[128];

  // Linear forward (FFN w_1): [N, d] x [f, d]^T + b.
  float* x = buf->make(n * d, 1);
  float* w = buf->make(f * d, 2);
  float* bias = buf->make(f, 3);
  float* y = buf->make(n * f, 4);
  float* peer_c = buf->make(n * f, 5);
  std::snprintf(shape, sizeof(shape), "[%ld,%ld]x[%ld,%ld]^T", long(n), long(d), long(f), long(d));
  cases->push_back({model, "linear_forward", shape, 2.0 * n * d * f, true,
                    [=] { linear_forward(y, x, w, bias, n, d, f, ctx); },
                    [=] { sgemm_peer(peer_c, x, w, n, f, d, true); }});

  // Linear backward (dx, dW, db): two GEMMs of the forward's size.
  float* dy = buf->make(n * f, 6);
  float* dx = buf->make(n * d, 7);
  float* dw = buf->make(f * d, 8);
  float* db = buf->make(f, 9);
  float* peer_dx = buf->make(n * d, 10);
  float* peer_dw = buf->make(f * d, 11);
  cases->push_back({model, "linear_backward", shape, 4.0 * n * d * f, true,
                    [=] { linear_backward(dx, dw, db, dy, x, w, n, d, f, ctx); },
                    [=] {
                      sgemm_peer(peer_dx, dy, w, n, d, f, false);
                      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(f), int(d), int(n), 1.0f, dy,
                                  int(f), x, int(d), 1.0f, peer_dw, int(d));
                    }});

  // Attention scores: B*H batched [T, dk] x [T, dk]^T.
  const int64_t groups = batch * heads;
  float* q = buf->make(groups * t * dk, 12);
  float* k = buf->make(groups * t * dk, 13);
  float* s = buf->make(groups * t * t, 14);
  float* peer_s = buf->make(groups * t * t, 15);
  std::snprintf(shape, sizeof(shape), "%ldx[%ld,%ld]x[%ld,%ld]^T", long(groups), long(t), long(dk), long(t),
                long(dk));
  cases->push_back({model, "batched_matmul (scores)", shape, 2.0 * groups * t * t * dk, true,
                    [=] { batched_matmul_forward(s, q, k, Transpose::kYes, groups, t, t, dk, ctx); },
                    [=] {
                      for (int64_t g = 0; g < groups; ++g) {
                        sgemm_peer(peer_s + g * t * t, q + g * t * dk, k + g * t * dk, t, t, dk, true);
                      }
                    }});

  // Subsampling conv 2 (d -> d, 3x3 stride 2) on [B, d, 249, 39]: im2col + GEMM.
  const int64_t h1 = conv2d_3x3s2_output_size(frames), w1 = conv2d_3x3s2_output_size(80);
  const int64_t h2 = conv2d_3x3s2_output_size(h1), w2 = conv2d_3x3s2_output_size(w1);
  float* cx = buf->make(batch * d * h1 * w1, 16);
  float* cw = buf->make(d * d * 9, 17);
  float* cb = buf->make(d, 18);
  float* cy = buf->make(batch * d * h2 * w2, 19);
  float* ws = buf->make(conv2d_3x3s2_workspace_elems(d, h1, w1), 20);
  float* peer_col = buf->make(d * 9 * h2 * w2, 21);
  float* peer_y = buf->make(d * h2 * w2, 22);
  std::snprintf(shape, sizeof(shape), "[%ld,%ld,%ld,%ld] k3s2", long(batch), long(d), long(h1), long(w1));
  cases->push_back({model, "conv2d_3x3s2_forward", shape, 2.0 * batch * d * h2 * w2 * d * 9, true,
                    [=] { conv2d_3x3s2_forward(cy, ws, cx, cw, cb, batch, d, d, h1, w1, ctx); },
                    [=] {
                      for (int64_t b = 0; b < batch; ++b) {
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(d), int(h2 * w2),
                                    int(d * 9), 1.0f, cw, int(d * 9), peer_col, int(h2 * w2), 0.0f, peer_y,
                                    int(h2 * w2));
                      }
                    }});

  // Memory-bound ops; the peer is a memcpy moving the same number of bytes (read + write).
  auto memory_case = [&](const std::string& op, const std::string& shp, double bytes,
                         std::function<void()> run) {
    int64_t half = static_cast<int64_t>(bytes / 2);
    char* src = buf->make_bytes(half);
    char* dst = buf->make_bytes(half);
    cases->push_back({model, op, shp, bytes, false, std::move(run),
                      [=] { std::memcpy(dst, src, static_cast<size_t>(half)); }});
  };
  float* ra = buf->make(n * d, 23);
  float* rb = buf->make(n * d, 24);
  float* rout = buf->make(n * d, 25);
  std::snprintf(shape, sizeof(shape), "[%ld,%ld]", long(n), long(d));
  memory_case("residual_add_forward", shape, 3.0 * n * d * 4,
              [=] { residual_add_forward(rout, ra, rb, 0.5f, n * d, ctx); });
  float* fx = buf->make(n * f, 26);
  float* fy = buf->make(n * f, 27);
  std::snprintf(shape, sizeof(shape), "[%ld,%ld]", long(n), long(f));
  memory_case("silu_forward", shape, 2.0 * n * f * 4, [=] { silu_forward(fy, fx, n * f, ctx); });
  float* fdx = buf->make(n * f, 28);
  memory_case("silu_backward", shape, 3.0 * n * f * 4, [=] { silu_backward(fdx, fy, fx, n * f, ctx); });
  RngKey key;
  key.purpose = RngPurpose::kDropout;
  PhiloxStream stream = philox_stream(key);
  memory_case("dropout_forward p=0.1", shape, 2.0 * n * f * 4,
              [=] { dropout_forward(fy, fx, stream, 0.1, n * f, ctx); });
  float* gx = buf->make(n * 2 * d, 29);
  float* gy = buf->make(n * d, 30);
  std::snprintf(shape, sizeof(shape), "[%ld,%ld]->[%ld,%ld]", long(n), long(2 * d), long(n), long(d));
  memory_case("glu_forward", shape, 3.0 * n * d * 4, [=] { glu_forward(gy, gx, n, d, ctx); });
  float* lw = buf->make(d, 31);
  float* lb = buf->make(d, 32);
  float* lmean = buf->make(n, 33);
  float* lrstd = buf->make(n, 34);
  std::snprintf(shape, sizeof(shape), "[%ld,%ld]", long(n), long(d));
  memory_case("layer_norm_forward", shape, 2.0 * n * d * 4,
              [=] { layer_norm_forward(rout, lmean, lrstd, ra, lw, lb, 1e-5f, n, d, ctx); });
  float* ldx = buf->make(n * d, 35);
  float* ldw = buf->make(d, 36);
  float* ldb = buf->make(d, 37);
  memory_case("layer_norm_backward", shape, 3.0 * n * d * 4,
              [=] { layer_norm_backward(ldx, ldw, ldb, rb, ra, lmean, lrstd, lw, n, d, ctx); });
  float* sx = buf->make(groups * t * t, 38);
  float* sy = buf->make(groups * t * t, 39);
  std::snprintf(shape, sizeof(shape), "[%ld,%ld,%ld,%ld]", long(batch), long(heads), long(t), long(t));
  memory_case("attention_softmax_forward", shape, 2.0 * groups * t * t * 4,
              [=] { attention_softmax_forward(sy, sx, nullptr, batch, heads, t, t, ctx); });
  const int64_t np = f * d;
  float* p = buf->make(np, 40);
  float* m = buf->make(np, 41);
  float* v = buf->make(np, 42);
  float* g = buf->make(np, 43);
  for (int64_t i = 0; i < np; ++i) v[i] = std::abs(v[i]);
  std::snprintf(shape, sizeof(shape), "%ld params", long(np));
  memory_case("adam_update", shape, 7.0 * np * 4,
              [=] { adam_update(p, m, v, g, 1e-3, 0.9, 0.999, 1e-8, 0.0, 10, np, ctx); });
}

int run(int argc, char** argv) {
  int threads = 2, samples = 7;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--threads") == 0) threads = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--samples") == 0) samples = std::atoi(argv[i + 1]);
  }
  RunContext ctx;
  ctx.num_threads = threads;
  cpu_backend_init(ctx);
  Buffers buffers;
  std::vector<Case> cases;
  add_model_cases(&cases, &buffers, "tiny d256", 256, 1024, 4, ctx);
  add_model_cases(&cases, &buffers, "225M d512", 512, 2048, 8, ctx);

  std::printf("# bench_kernels_cpu: %d thread(s), median of %d samples, op and peer timed alternately\n",
              threads, samples);
  std::printf("| model | op | shape | ms | achieved | peer | ratio |\n|---|---|---|---|---|---|---|\n");
  for (const Case& c : cases) {
    std::vector<double> op_t, peer_t;
    for (int s = 0; s < samples; ++s) {
      op_t.push_back(seconds_per_call(c.run));
      // The SGEMM peer runs OpenBLAS with its own threads (as a plain OpenBLAS user would); ours
      // runs single-threaded OpenBLAS inside our OpenMP split (cpu_backend_init).
      openblas_set_num_threads(threads);
      peer_t.push_back(seconds_per_call(c.peer));
      openblas_set_num_threads(1);
    }
    double t_op = median(op_t), t_peer = median(peer_t);
    double achieved = c.work / t_op / 1e9, peer = c.work / t_peer / 1e9;  // GFLOP/s or GB/s
    std::printf("| %s | %s | %s | %.3f | %.1f %s | %.1f %s | %.2f |\n", c.model.c_str(), c.op.c_str(),
                c.shape.c_str(), t_op * 1e3, achieved, c.compute ? "GFLOP/s" : "GB/s", peer,
                c.compute ? "GFLOP/s (SGEMM)" : "GB/s (memcpy)", achieved / peer);
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace
}  // namespace moeasr

int main(int argc, char** argv) {
  return moeasr::run(argc, argv);
}
