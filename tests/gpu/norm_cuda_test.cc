// tests/gpu/norm_cuda_test.cc — the CUDA LayerNorm and BatchNorm (kernels/cuda/norm_cuda.h) against the
// CPU ops of kernels/cpu/norm.h on fresh random data, fp32 and bf16 activations (statistics,
// parameters, parameter grads and running statistics are fp32 on both sides).
// Shapes: 0 and 1 rows, odd C, a 5003-wide row, row counts across the 256-row chunk boundary of the
// per-channel reductions, a 5003-row BatchNorm; with and without affine parameters / running stats.
// Checked: every output incl. saved mean/rstd, running statistics (pre-filled, then updated), parameter
// grads (pre-filled with known random values on both sides, so += is checked), the null-to-skip
// outputs, and that N == 0 writes nothing. Inputs carry an offset (+3) so the statistics see a
// non-zero mean. Outputs are poisoned DeviceBuffers (NaN): an unwritten element fails.
// Tolerances: fp32 tensors max_scaled_error <= 1e-5 (also the fp32 statistics and grads of the bf16
// path: both sides see the same bf16-rounded values); bf16 tensors relative_norm_error <= 1e-2 plus a
// per-element max_scaled_error <= 3e-2.
#include "kernels/cuda/norm_cuda.h"

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/norm.h"
#include "tests/common/gradcheck.h"
#include "tests/gpu/gpu_test_util.h"

namespace moeasr {
namespace {

using bf16 = __nv_bfloat16;
using testing::DeviceBuffer;

constexpr double kBf16ElementTolerance = 3e-2;
constexpr float kEps = 1e-5f;
constexpr float kMomentum = 0.1f;

using testing::dtype_label;
using testing::representable;
using testing::to_f32;
using testing::to_storage;

// An activation tensor of dtype T.
template <class T>
void expect_activation(const std::vector<float>& got, const std::vector<float>& want,
                       const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  if (std::is_same<T, float>::value) {
    EXPECT_LE(testing::max_scaled_error(got, want), testing::kFp32Tolerance) << what << " [f32]";
  } else {
    EXPECT_LE(testing::relative_norm_error(got, want), testing::kBf16Tolerance) << what << " [bf16]";
    EXPECT_LE(testing::max_scaled_error(got, want), kBf16ElementTolerance) << what << " [bf16 per element]";
  }
}

// An fp32 tensor (statistics, parameter grads, running stats).
void expect_f32(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  EXPECT_LE(testing::max_scaled_error(got, want), testing::kFp32Tolerance) << what;
}

// x + offset, as T would hold it.
template <class T>
std::vector<float> random_input(int64_t n, uint64_t seed, float offset) {
  std::vector<float> x = testing::random_floats(n, seed, -1.0f, 1.0f);
  for (float& v : x) v += offset;
  return representable<T>(x);
}

struct Shape {
  int64_t n, c;
};

std::string shape_label(const char* op, Shape s, bool affine, const char* dtype) {
  return std::string(op) + " N=" + std::to_string(s.n) + " C=" + std::to_string(s.c) +
         (affine ? " affine " : " plain ") + dtype;
}

// ---- LayerNorm -------------------------------------------------------------------------------------------

template <class T>
void check_layer_norm() {
  RunContext cpu = testing::cpu_test_context();
  RunContext g = testing::gpu_test_context();
  const std::vector<Shape> shapes = {{0, 8}, {1, 1}, {1, 256}, {7, 33}, {300, 256}, {3, 5003}, {513, 80}};
  uint64_t seed = 10000;
  for (Shape s : shapes) {
    for (bool affine : {true, false}) {
      seed += 100;
      const std::string what = shape_label("layer_norm", s, affine, dtype_label<T>());
      const int64_t nc = s.n * s.c;
      std::vector<float> x = random_input<T>(nc, seed, 3.0f);
      std::vector<float> dout = representable<T>(testing::random_floats(nc, seed + 1, -1.0f, 1.0f));
      std::vector<float> w = testing::random_floats(s.c, seed + 2, 0.5f, 1.5f);
      std::vector<float> b = testing::random_floats(s.c, seed + 3, -0.5f, 0.5f);
      std::vector<float> dw0 = testing::random_floats(s.c, seed + 4, -1.0f, 1.0f);
      std::vector<float> db0 = testing::random_floats(s.c, seed + 5, -1.0f, 1.0f);
      const float* wp = affine ? w.data() : nullptr;
      const float* bp = affine ? b.data() : nullptr;

      // CPU reference (fp32 on the values T holds).
      std::vector<float> out(nc), mean(s.n), rstd(s.n), dx(nc), dw = dw0, db = db0;
      layer_norm_forward(out.data(), mean.data(), rstd.data(), x.data(), wp, bp, kEps, s.n, s.c, cpu);
      layer_norm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), mean.data(), rstd.data(),
                          wp, s.n, s.c, cpu);

      DeviceBuffer<T> gx(to_storage<T>(x)), gdout(to_storage<T>(dout)), gout(nc), gdx(nc);
      DeviceBuffer<float> gmean(s.n), grstd(s.n), gw(w), gb(b), gdw(dw0), gdb(db0);
      const float* gwp = affine ? gw.get() : nullptr;
      const float* gbp = affine ? gb.get() : nullptr;
      layer_norm_forward_cuda(gout.get(), gmean.get(), grstd.get(), gx.get(), gwp, gbp, kEps, s.n, s.c, g);
      expect_activation<T>(to_f32(gout.download()), out, what + " out");
      expect_f32(gmean.download(), mean, what + " mean");
      expect_f32(grstd.download(), rstd, what + " rstd");

      // Backward from the CPU's saved statistics, so it is checked on its own.
      DeviceBuffer<float> cmean(mean), crstd(rstd);
      DeviceBuffer<char> ws(static_cast<int64_t>(layer_norm_workspace_bytes(s.n, s.c)));
      layer_norm_backward_cuda(gdx.get(), gdw.get(), gdb.get(), gdout.get(), gx.get(), cmean.get(),
                               crstd.get(), gwp, s.n, s.c, ws.get(), layer_norm_workspace_bytes(s.n, s.c), g);
      expect_activation<T>(to_f32(gdx.download()), dx, what + " dx");
      expect_f32(gdw.download(), dw, what + " dweight (+=)");
      expect_f32(gdb.download(), db, what + " dbias (+=)");

      // Null to skip: dx alone (no workspace needed), then the parameter grads alone.
      DeviceBuffer<T> gdx_only(nc);
      layer_norm_backward_cuda(gdx_only.get(), static_cast<float*>(nullptr), static_cast<float*>(nullptr),
                               gdout.get(), gx.get(), cmean.get(), crstd.get(), gwp, s.n, s.c, nullptr, 0, g);
      expect_activation<T>(to_f32(gdx_only.download()), dx, what + " dx alone");
      DeviceBuffer<float> gdw_only(dw0);
      layer_norm_backward_cuda(static_cast<T*>(nullptr), gdw_only.get(), static_cast<float*>(nullptr),
                               gdout.get(), gx.get(), cmean.get(), crstd.get(), gwp, s.n, s.c, ws.get(),
                               layer_norm_workspace_bytes(s.n, s.c), g);
      expect_f32(gdw_only.download(), dw, what + " dweight alone");
    }
  }
}

TEST(NormCuda, LayerNormMatchesCpuF32) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_layer_norm<float>();
}

TEST(NormCuda, LayerNormMatchesCpuBf16) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_layer_norm<bf16>();
}

// The same inputs twice give the same bits (no atomics, fixed reduction order).
TEST(NormCuda, LayerNormBackwardIsDeterministic) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext g = testing::gpu_test_context();
  const int64_t n = 1029, c = 192;
  DeviceBuffer<float> x(testing::random_floats(n * c, 1, -1.0f, 1.0f));
  DeviceBuffer<float> dout(testing::random_floats(n * c, 2, -1.0f, 1.0f));
  DeviceBuffer<float> w(testing::random_floats(c, 3, 0.5f, 1.5f)), mean(n), rstd(n), out(n * c);
  layer_norm_forward_cuda(out.get(), mean.get(), rstd.get(), x.get(), w.get(),
                          static_cast<const float*>(nullptr), kEps, n, c, g);
  DeviceBuffer<char> ws(static_cast<int64_t>(layer_norm_workspace_bytes(n, c)));
  std::vector<std::vector<float>> runs;
  for (int run = 0; run < 2; ++run) {
    DeviceBuffer<float> dw(std::vector<float>(c, 0.0f)), db(std::vector<float>(c, 0.0f));
    layer_norm_backward_cuda(static_cast<float*>(nullptr), dw.get(), db.get(), dout.get(), x.get(),
                             mean.get(), rstd.get(), w.get(), n, c, ws.get(),
                             layer_norm_workspace_bytes(n, c), g);
    std::vector<float> a = dw.download(), b = db.download();
    a.insert(a.end(), b.begin(), b.end());
    runs.push_back(a);
  }
  EXPECT_EQ(runs[0], runs[1]);
}

// ---- BatchNorm -------------------------------------------------------------------------------------------

template <class T>
void check_batch_norm_train() {
  RunContext cpu = testing::cpu_test_context();
  RunContext g = testing::gpu_test_context();
  const std::vector<Shape> shapes = {{2, 1}, {3, 7}, {257, 33}, {600, 144}, {5003, 3}, {4, 5003}, {2, 0}};
  uint64_t seed = 20000;
  for (Shape s : shapes) {
    for (bool affine : {true, false}) {
      seed += 100;
      const std::string what = shape_label("batch_norm_train", s, affine, dtype_label<T>());
      const int64_t nc = s.n * s.c;
      std::vector<float> x = random_input<T>(nc, seed, 2.0f);
      std::vector<float> dout = representable<T>(testing::random_floats(nc, seed + 1, -1.0f, 1.0f));
      std::vector<float> w = testing::random_floats(s.c, seed + 2, 0.5f, 1.5f);
      std::vector<float> b = testing::random_floats(s.c, seed + 3, -0.5f, 0.5f);
      std::vector<float> rm0 = testing::random_floats(s.c, seed + 4, -1.0f, 1.0f);
      std::vector<float> rv0 = testing::random_floats(s.c, seed + 5, 0.5f, 1.5f);
      std::vector<float> dw0 = testing::random_floats(s.c, seed + 6, -1.0f, 1.0f);
      std::vector<float> db0 = testing::random_floats(s.c, seed + 7, -1.0f, 1.0f);
      const float* wp = affine ? w.data() : nullptr;
      const float* bp = affine ? b.data() : nullptr;
      // Running statistics are tracked in the affine variant, absent (null) in the plain one.
      std::vector<float> out(nc), smean(s.c), srstd(s.c), rm = rm0, rv = rv0, dx(nc), dw = dw0, db = db0;
      batch_norm_train_forward(out.data(), smean.data(), srstd.data(), affine ? rm.data() : nullptr,
                               affine ? rv.data() : nullptr, x.data(), wp, bp, kMomentum, kEps, s.n, s.c,
                               cpu);
      batch_norm_train_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), smean.data(),
                                srstd.data(), wp, s.n, s.c, cpu);

      const size_t ws_bytes = batch_norm_workspace_bytes(s.n, s.c);
      DeviceBuffer<char> ws(static_cast<int64_t>(ws_bytes));
      DeviceBuffer<T> gx(to_storage<T>(x)), gdout(to_storage<T>(dout)), gout(nc), gdx(nc);
      DeviceBuffer<float> gsmean(s.c), gsrstd(s.c), grm(rm0), grv(rv0), gw(w), gb(b), gdw(dw0), gdb(db0);
      const float* gwp = affine ? gw.get() : nullptr;
      const float* gbp = affine ? gb.get() : nullptr;
      batch_norm_train_forward_cuda(gout.get(), gsmean.get(), gsrstd.get(), affine ? grm.get() : nullptr,
                                    affine ? grv.get() : nullptr, gx.get(), gwp, gbp, kMomentum, kEps, s.n,
                                    s.c, ws.get(), ws_bytes, g);
      expect_activation<T>(to_f32(gout.download()), out, what + " out");
      expect_f32(gsmean.download(), smean, what + " save_mean");
      expect_f32(gsrstd.download(), srstd, what + " save_rstd");
      expect_f32(grm.download(), rm, what + " running_mean");  // rm0 unchanged in the plain variant
      expect_f32(grv.download(), rv, what + " running_var");

      DeviceBuffer<float> csmean(smean), csrstd(srstd);
      batch_norm_train_backward_cuda(gdx.get(), gdw.get(), gdb.get(), gdout.get(), gx.get(), csmean.get(),
                                     csrstd.get(), gwp, s.n, s.c, ws.get(), ws_bytes, g);
      expect_activation<T>(to_f32(gdx.download()), dx, what + " dx");
      expect_f32(gdw.download(), dw, what + " dweight (+=)");
      expect_f32(gdb.download(), db, what + " dbias (+=)");

      DeviceBuffer<T> gdx_only(nc);
      batch_norm_train_backward_cuda(gdx_only.get(), static_cast<float*>(nullptr),
                                     static_cast<float*>(nullptr), gdout.get(), gx.get(), csmean.get(),
                                     csrstd.get(), gwp, s.n, s.c, ws.get(), ws_bytes, g);
      expect_activation<T>(to_f32(gdx_only.download()), dx, what + " dx alone");
      DeviceBuffer<float> gdb_only(db0);
      batch_norm_train_backward_cuda(static_cast<T*>(nullptr), static_cast<float*>(nullptr), gdb_only.get(),
                                     gdout.get(), gx.get(), csmean.get(), csrstd.get(), gwp, s.n, s.c,
                                     ws.get(), ws_bytes, g);
      expect_f32(gdb_only.download(), db, what + " dbias alone");
    }
  }
}

TEST(NormCuda, BatchNormTrainMatchesCpuF32) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_batch_norm_train<float>();
}

TEST(NormCuda, BatchNormTrainMatchesCpuBf16) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_batch_norm_train<bf16>();
}

// N == 0 writes nothing: saved statistics stay poisoned, running statistics keep their values.
TEST(NormCuda, BatchNormTrainEmptyBatchWritesNothing) {
  MOEASR_SKIP_WITHOUT_GPU();
  RunContext g = testing::gpu_test_context();
  const int64_t c = 5;
  std::vector<float> rm0 = testing::random_floats(c, 1), rv0 = testing::random_floats(c, 2, 0.5f, 1.5f);
  DeviceBuffer<float> x(0), out(0), smean(c), srstd(c), rm(rm0), rv(rv0), dout(0), dx(0), dw(rm0), db(rv0);
  batch_norm_train_forward_cuda(out.get(), smean.get(), srstd.get(), rm.get(), rv.get(), x.get(),
                                static_cast<const float*>(nullptr), static_cast<const float*>(nullptr),
                                kMomentum, kEps, 0, c, nullptr, 0, g);
  batch_norm_train_backward_cuda(dx.get(), dw.get(), db.get(), dout.get(), x.get(), smean.get(), srstd.get(),
                                 static_cast<const float*>(nullptr), 0, c, nullptr, 0, g);
  EXPECT_EQ(rm.download(), rm0);
  EXPECT_EQ(rv.download(), rv0);
  EXPECT_EQ(dw.download(), rm0);
  EXPECT_EQ(db.download(), rv0);
  for (float v : smean.download()) EXPECT_TRUE(std::isnan(v)) << "save_mean written for N = 0";
  for (float v : srstd.download()) EXPECT_TRUE(std::isnan(v)) << "save_rstd written for N = 0";
}

template <class T>
void check_batch_norm_eval() {
  RunContext cpu = testing::cpu_test_context();
  RunContext g = testing::gpu_test_context();
  const std::vector<Shape> shapes = {{0, 4}, {1, 1}, {1, 9}, {3, 7}, {257, 33}, {600, 144}, {4, 5003}};
  uint64_t seed = 30000;
  for (Shape s : shapes) {
    for (bool affine : {true, false}) {
      seed += 100;
      const std::string what = shape_label("batch_norm_eval", s, affine, dtype_label<T>());
      const int64_t nc = s.n * s.c;
      std::vector<float> x = random_input<T>(nc, seed, 2.0f);
      std::vector<float> dout = representable<T>(testing::random_floats(nc, seed + 1, -1.0f, 1.0f));
      std::vector<float> w = testing::random_floats(s.c, seed + 2, 0.5f, 1.5f);
      std::vector<float> b = testing::random_floats(s.c, seed + 3, -0.5f, 0.5f);
      std::vector<float> rm = testing::random_floats(s.c, seed + 4, 1.0f, 3.0f);
      std::vector<float> rv = testing::random_floats(s.c, seed + 5, 0.2f, 1.5f);
      std::vector<float> dw0 = testing::random_floats(s.c, seed + 6, -1.0f, 1.0f);
      std::vector<float> db0 = testing::random_floats(s.c, seed + 7, -1.0f, 1.0f);
      const float* wp = affine ? w.data() : nullptr;
      const float* bp = affine ? b.data() : nullptr;
      std::vector<float> out(nc), dx(nc), dw = dw0, db = db0;
      batch_norm_eval_forward(out.data(), x.data(), rm.data(), rv.data(), wp, bp, kEps, s.n, s.c, cpu);
      batch_norm_eval_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), rm.data(), rv.data(),
                               wp, kEps, s.n, s.c, cpu);

      const size_t ws_bytes = batch_norm_workspace_bytes(s.n, s.c);
      DeviceBuffer<char> ws(static_cast<int64_t>(ws_bytes));
      DeviceBuffer<T> gx(to_storage<T>(x)), gdout(to_storage<T>(dout)), gout(nc), gdx(nc);
      DeviceBuffer<float> grm(rm), grv(rv), gw(w), gb(b), gdw(dw0), gdb(db0);
      const float* gwp = affine ? gw.get() : nullptr;
      const float* gbp = affine ? gb.get() : nullptr;
      batch_norm_eval_forward_cuda(gout.get(), gx.get(), grm.get(), grv.get(), gwp, gbp, kEps, s.n, s.c, g);
      expect_activation<T>(to_f32(gout.download()), out, what + " out");
      batch_norm_eval_backward_cuda(gdx.get(), gdw.get(), gdb.get(), gdout.get(), gx.get(), grm.get(),
                                    grv.get(), gwp, kEps, s.n, s.c, ws.get(), ws_bytes, g);
      expect_activation<T>(to_f32(gdx.download()), dx, what + " dx");
      expect_f32(gdw.download(), dw, what + " dweight (+=)");
      expect_f32(gdb.download(), db, what + " dbias (+=)");
      EXPECT_EQ(grm.download(), rm) << what << " running_mean must not change";
      EXPECT_EQ(grv.download(), rv) << what << " running_var must not change";

      DeviceBuffer<T> gdx_only(nc);
      batch_norm_eval_backward_cuda(gdx_only.get(), static_cast<float*>(nullptr),
                                    static_cast<float*>(nullptr), gdout.get(), gx.get(), grm.get(), grv.get(),
                                    gwp, kEps, s.n, s.c, nullptr, 0, g);
      expect_activation<T>(to_f32(gdx_only.download()), dx, what + " dx alone");
    }
  }
}

TEST(NormCuda, BatchNormEvalMatchesCpuF32) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_batch_norm_eval<float>();
}

TEST(NormCuda, BatchNormEvalMatchesCpuBf16) {
  MOEASR_SKIP_WITHOUT_GPU();
  check_batch_norm_eval<bf16>();
}

}  // namespace
}  // namespace moeasr
