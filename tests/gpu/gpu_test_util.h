// tests/gpu/gpu_test_util.h — shared helpers of the gpu-label tests (CUDA op against the CPU op on
// fresh random data): skip with the reason where no device exists, device buffers that are poisoned
// with NaN before every run (so an element the kernel never writes fails the comparison), bf16
// round trips through core/dtype.h, and the two documented tolerances:
//   fp32 paths: max |got - want| / (1 + |want|) <= 1e-5 per element (max_scaled_error)
//   bf16 paths: ||got - want||_2 / ||want||_2 <= 1e-2 (relative_norm_error)
// Both return +inf when `got` holds a NaN or an infinity that `want` does not, so NaN never passes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "core/arena.h"
#include "core/dtype.h"
#include "core/run_context.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"
#include "tests/common/gradcheck.h"

// Skips the calling test (label gpu only; other labels treat a skip as a failure) with the reason.
#define MOEASR_SKIP_WITHOUT_GPU()                                                                \
  do {                                                                                           \
    std::string moeasr_why_;                                                                     \
    if (::moeasr::cuda_usable_device_count(&moeasr_why_) == 0)                                   \
      GTEST_SKIP() << "no usable CUDA device (" << moeasr_why_ << "); run scripts/gpu_check.sh " \
                   << "on a machine with an NVIDIA GPU";                                         \
  } while (0)

namespace moeasr {
namespace testing {

// A device allocation of n elements of T (n may be 0), freed on destruction.
template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(int64_t n) : n_(n) {
    CUDA_CHECK(cudaMalloc(&data_, static_cast<size_t>(n > 0 ? n : 1) * sizeof(T)));
    poison();
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(static_cast<int64_t>(host.size())) {
    upload(host);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { cudaFree(data_); }

  T* get() { return data_; }
  const T* get() const { return data_; }
  int64_t size() const { return n_; }

  // All bytes 0xFF: a NaN in fp32 and in bf16, -1 in integer types.
  void poison() { CUDA_CHECK(cudaMemset(data_, 0xFF, static_cast<size_t>(n_ > 0 ? n_ : 1) * sizeof(T))); }
  void upload(const std::vector<T>& host) {
    CHECK_EQ(static_cast<int64_t>(host.size()), n_);
    if (n_ > 0) CUDA_CHECK(cudaMemcpy(data_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<T> host(static_cast<size_t>(n_));
    if (n_ > 0) CUDA_CHECK(cudaMemcpy(host.data(), data_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  T* data_ = nullptr;
  int64_t n_ = 0;
};

inline std::vector<__nv_bfloat16> to_bf16(const std::vector<float>& x) {
  std::vector<__nv_bfloat16> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    uint16_t bits = float_to_bf16_bits(x[i]);
    std::memcpy(static_cast<void*>(&out[i]), &bits, sizeof(bits));
  }
  return out;
}

inline std::vector<float> from_bf16(const std::vector<__nv_bfloat16>& x) {
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    uint16_t bits;
    std::memcpy(&bits, static_cast<const void*>(&x[i]), sizeof(bits));
    out[i] = bf16_bits_to_float(bits);
  }
  return out;
}

// The values a bf16 tensor actually holds (x rounded to bf16 and back): CPU references of bf16 ops
// are computed from these so that the comparison measures the kernel, not the input rounding.
inline std::vector<float> round_to_bf16(const std::vector<float>& x) {
  return from_bf16(to_bf16(x));
}

// A T tensor's upload from fp32 values (float: as is; bf16: rounded) and its download back to fp32.
template <class T>
std::vector<T> to_storage(const std::vector<float>& x);
template <>
inline std::vector<float> to_storage<float>(const std::vector<float>& x) {
  return x;
}
template <>
inline std::vector<__nv_bfloat16> to_storage<__nv_bfloat16>(const std::vector<float>& x) {
  return to_bf16(x);
}
inline std::vector<float> to_f32(const std::vector<float>& x) {
  return x;
}
inline std::vector<float> to_f32(const std::vector<__nv_bfloat16>& x) {
  return from_bf16(x);
}

// The values a T tensor holds after uploading x (the CPU reference is computed from these).
template <class T>
std::vector<float> representable(const std::vector<float>& x) {
  return to_f32(to_storage<T>(x));
}

template <class T>
const char* dtype_label() {
  return std::is_same<T, float>::value ? "f32" : "bf16";
}

// max over i of |got - want| / (1 + |want|); +inf on a size mismatch or a non-finite `got` where
// `want` is finite.
template <class A, class B>
double max_scaled_error(const std::vector<A>& got, const std::vector<B>& want) {
  if (got.size() != want.size()) return std::numeric_limits<double>::infinity();
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    double g = static_cast<double>(got[i]), w = static_cast<double>(want[i]);
    if (!std::isfinite(g)) {
      if (std::isfinite(w) || std::isnan(g)) return std::numeric_limits<double>::infinity();
      continue;
    }
    worst = std::max(worst, std::fabs(g - w) / (1 + std::fabs(w)));
  }
  return worst;
}

// relative_norm_error: tests/common/gradcheck.h.

// A RunContext for CUDA ops on the default stream (the ops take the stream from ctx.cuda_stream).
inline RunContext gpu_test_context() {
  RunContext ctx;
  ctx.device = Device::cuda;
  ctx.num_threads = 2;
  return ctx;
}

// Device memory for a whole-model test: a parameter arena and an activation arena over owned device
// blocks, and a host arena for the step's metadata; points ctx's activations and host_metadata at
// them. Destroyed after everything that uses them (declare it first).
class DeviceArenas {
 public:
  DeviceArenas(int64_t param_bytes, int64_t activation_bytes, RunContext* ctx)
      : params_block_("test parameters", param_bytes),
        activations_block_("test activations", activation_bytes),
        params_("device parameters", params_block_.data(), param_bytes, Device::cuda),
        activations_("device activations", activations_block_.data(), activation_bytes, Device::cuda),
        host_("host metadata", int64_t{1} << 20, Arena::Growth::kGrowable) {
    ctx->activations = &activations_;
    ctx->host_metadata = &host_;
  }
  Arena* params() { return &params_; }
  Arena* activations() { return &activations_; }

 private:
  DeviceMemoryBlock params_block_, activations_block_;
  Arena params_, activations_, host_;
};

constexpr double kFp32Tolerance = 1e-5;  // max_scaled_error
constexpr double kBf16Tolerance = 1e-2;  // relative_norm_error

}  // namespace testing
}  // namespace moeasr
