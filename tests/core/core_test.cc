// tests/core/core_test.cc — core/: shapes and tensor views, dtype conversions, arenas, Status,
// logging format, CHECK failure output, Philox known answers and stream properties.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <vector>

#include "core/arena.h"
#include "core/check.h"
#include "core/dtype.h"
#include "core/logging.h"
#include "core/philox.h"
#include "core/status.h"
#include "core/tensor.h"

namespace moeasr {
namespace {

TEST(Shape, ExtentsAndNumel) {
  Shape s{4, 500, 80};
  EXPECT_EQ(s.ndim(), 3);
  EXPECT_EQ(s[0], 4);
  EXPECT_EQ(s[-1], 80);
  EXPECT_EQ(s.numel(), 4 * 500 * 80);
  EXPECT_EQ(s.to_string(), "[4, 500, 80]");
  EXPECT_EQ(Shape{}.numel(), 1);
  EXPECT_EQ((Shape{3, 0, 2}).numel(), 0);
  EXPECT_TRUE((Shape{2, 3}) == (Shape{2, 3}));
  EXPECT_TRUE((Shape{2, 3}) != (Shape{3, 2}));
}

TEST(Tensor, ViewsShareMemory) {
  std::vector<float> storage(24);
  for (size_t i = 0; i < storage.size(); ++i) storage[i] = static_cast<float>(i);
  Tensor t = tensor_view(storage.data(), Shape{2, 3, 4});
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.nbytes(), 96);
  EXPECT_EQ(t.to_string(), "f32 cpu [2, 3, 4]");
  Tensor r = t.reshaped(Shape{6, 4});
  EXPECT_EQ(r.as<float>(), storage.data());
  Tensor second = t.rows(1, 2);
  EXPECT_EQ(second.shape, (Shape{1, 3, 4}));
  EXPECT_EQ(second.as<float>()[0], 12.0f);
}

TEST(TensorDeathTest, WrongDtypeAndBadReshapeAbort) {
  std::vector<float> storage(6);
  Tensor t = tensor_view(storage.data(), Shape{2, 3});
  EXPECT_DEATH(t.as<double>(), "tensor holds f32, asked for f64");
  EXPECT_DEATH(t.reshaped(Shape{4}), "cannot reshape \\[2, 3\\] to \\[4\\]");
}

TEST(DType, SizesAndNames) {
  EXPECT_EQ(dtype_size(DType::f32), 4);
  EXPECT_EQ(dtype_size(DType::f64), 8);
  EXPECT_EQ(dtype_size(DType::bf16), 2);
  EXPECT_EQ(dtype_size(DType::f16), 2);
  EXPECT_EQ(dtype_size(DType::i32), 4);
  EXPECT_EQ(dtype_size(DType::i64), 8);
  EXPECT_EQ(dtype_size(DType::u8), 1);
  EXPECT_STREQ(dtype_name(DType::bf16), "bf16");
  EXPECT_STREQ(device_name(Device::cuda), "cuda");
}

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16_bits(1.0f), 0x3f80);
  EXPECT_EQ(float_to_bf16_bits(-2.0f), 0xc000);
  // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1.0078125: ties to even (1.0).
  EXPECT_EQ(float_to_bf16_bits(1.0f + 1.0f / 256.0f), 0x3f80);
  // 1 + 3*2^-8 is halfway between 1.0078125 (odd) and 1.015625 (even): rounds up.
  EXPECT_EQ(float_to_bf16_bits(1.0f + 3.0f / 256.0f), 0x3f82);
  EXPECT_EQ(bf16_bits_to_float(0x4049), 3.140625f);
  EXPECT_TRUE(std::isnan(bf16_bits_to_float(float_to_bf16_bits(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isinf(bf16_bits_to_float(float_to_bf16_bits(std::numeric_limits<float>::infinity()))));
}

TEST(DType, F16ExactValuesSubnormalsAndOverflow) {
  EXPECT_EQ(float_to_f16_bits(1.0f), 0x3c00);
  EXPECT_EQ(float_to_f16_bits(-2.5f), 0xc100);
  EXPECT_EQ(float_to_f16_bits(65504.0f), 0x7bff);                 // largest finite
  EXPECT_EQ(float_to_f16_bits(65520.0f), 0x7c00);                 // rounds to inf
  EXPECT_EQ(float_to_f16_bits(5.9604644775390625e-08f), 0x0001);  // smallest subnormal
  EXPECT_EQ(float_to_f16_bits(2.0e-8f), 0x0000);                  // below half of it
  EXPECT_EQ(float_to_f16_bits(1.0f + 1.0f / 2048.0f), 0x3c00);    // tie to even
  EXPECT_EQ(f16_bits_to_float(0x3555), 0.333251953125f);
  EXPECT_EQ(f16_bits_to_float(0x0001), 5.9604644775390625e-08f);
  EXPECT_TRUE(std::isnan(f16_bits_to_float(float_to_f16_bits(std::nanf("")))));
  // Every finite f16 survives f16 -> f32 -> f16.
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    if (((bits >> 10) & 0x1f) == 0x1f) continue;
    ASSERT_EQ(float_to_f16_bits(f16_bits_to_float(static_cast<uint16_t>(bits))), bits) << bits;
  }
}

TEST(Arena, AlignsTracksHighWaterAndResets) {
  Arena arena("test", 4096);
  Tensor a = arena.allocate(DType::f32, Shape{3});
  Tensor b = arena.allocate_zeroed(DType::f64, Shape{10});
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data) % Arena::kAlignment, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data) % Arena::kAlignment, 0u);
  EXPECT_NE(a.data, b.data);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(b.as<double>()[i], 0.0);
  EXPECT_EQ(arena.used_bytes(), 2 * Arena::kAlignment);
  arena.reset();
  EXPECT_EQ(arena.used_bytes(), 0);
  EXPECT_EQ(arena.high_water_bytes(), 2 * Arena::kAlignment);
  Tensor c = arena.allocate(DType::f32, Shape{1});
  EXPECT_EQ(c.data, a.data);
}

TEST(Arena, GrowableChainsBlocksThenReplansAtReset) {
  Arena arena("activations", 1024, Arena::Growth::kGrowable);
  float* a = arena.allocate_array<float>(200);   // 800 bytes -> 1024 rounded: fits
  float* b = arena.allocate_array<float>(1000);  // overflow block
  double* c = arena.allocate_array<double>(10);  // another overflow block
  a[199] = 1.0f;
  b[999] = 2.0f;
  c[9] = 3.0;
  EXPECT_EQ(arena.extra_block_count(), 2);
  EXPECT_EQ(arena.high_water_bytes(), 1024 + 4096 + 256);
  arena.reset();
  EXPECT_EQ(arena.extra_block_count(), 0);
  EXPECT_EQ(arena.capacity_bytes(), 6912);  // (high water 5376 + 25% headroom) rounded up to 256
  // The same step's allocations now come from the single re-planned block.
  arena.allocate_array<float>(200);
  arena.allocate_array<float>(1000);
  arena.allocate_array<double>(10);
  EXPECT_EQ(arena.extra_block_count(), 0);
  EXPECT_EQ(arena.used_bytes(), 1024 + 4096 + 256);
}

TEST(ArenaDeathTest, ExhaustionReportsNeededAndAvailable) {
  Arena arena("activations", 1024);
  EXPECT_DEATH(arena.allocate(DType::f32, Shape{1000}),
               "arena 'activations' is too small: needed 4096 bytes, available 1024");
}

TEST(Status, CodesMessagesAndMacros) {
  Status ok;
  EXPECT_TRUE(ok.ok());
  EXPECT_EQ(ok.to_string(), "OK");
  Status missing = not_found_error("shard /data/a.h5 is missing");
  EXPECT_FALSE(missing.ok());
  EXPECT_EQ(missing.code(), StatusCode::kNotFound);
  EXPECT_EQ(missing.to_string(), "NotFound: shard /data/a.h5 is missing");
  EXPECT_EQ(missing.with_context("loading manifest").message(),
            "loading manifest: shard /data/a.h5 is missing");

  auto fails = []() -> Status {
    RETURN_IF_ERROR(data_loss_error("checksum mismatch"));
    return Status();
  };
  EXPECT_EQ(fails().code(), StatusCode::kDataLoss);

  auto half = [](int x) -> StatusOr<int> {
    if (x % 2) return invalid_argument_error("odd");
    return x / 2;
  };
  auto quarter = [&](int x) -> StatusOr<int> {
    ASSIGN_OR_RETURN(int h, half(x));
    ASSIGN_OR_RETURN(int q, half(h));
    return q;
  };
  EXPECT_EQ(quarter(8).value(), 2);
  EXPECT_EQ(quarter(6).status().code(), StatusCode::kInvalidArgument);
}

TEST(CheckDeathTest, PrintsFileLineRankHostAndValues) {
  set_process_identity(3, 8);
  int rows = 5, expected = 7;
  EXPECT_DEATH(CHECK_EQ(rows, expected) << "tensor foo",
               "CHECK failed at .*core_test.cc:[0-9]+ on rank 3/8 \\(host .+, pid [0-9]+\\): rows == "
               "expected \\(5 vs 7\\) tensor foo");
  set_process_identity(0, 1);
}

TEST(Logging, LineFormatAndThreshold) {
  set_process_identity(1, 2);
  ::testing::internal::CaptureStderr();
  LOG(INFO) << "loss " << 1.25;
  LOG(DEBUG) << "hidden";
  std::string text = ::testing::internal::GetCapturedStderr();
  EXPECT_TRUE(::testing::internal::RE::PartialMatch(
      text, ::testing::internal::RE("^I [0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3} "
                                    "core_test.cc:[0-9]+ \\(1/2\\)\\] loss 1.25\n$")))
      << text;
  LogLevel level;
  EXPECT_TRUE(parse_log_level("warning", &level));
  EXPECT_EQ(level, LogLevel::kWarning);
  EXPECT_FALSE(parse_log_level("verbose", &level));
  set_process_identity(0, 1);
}

// Known-answer vectors published with Random123 (kat_vectors) for Philox4x32 with 7 and 10 rounds.
TEST(Philox, KnownAnswerVectors) {
  struct Kat {
    int rounds;
    PhiloxCounter counter;
    PhiloxKeyWords key;
    PhiloxCounter expected;
  };
  const Kat kats[] = {
      {7, {0, 0, 0, 0}, {0, 0}, {0x5f6fb709, 0x0d893f64, 0x4f121f81, 0x4f730a48}},
      {7,
       {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x5207ddc2, 0x45165e59, 0x4d8ee751, 0x8c52f662}},
      {7,
       {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0x4dfccaba, 0x190a87f0, 0xc47362ba, 0xb6b5242a}},
      {10, {0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {10,
       {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {10,
       {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const Kat& kat : kats) {
    EXPECT_EQ(philox4x32(kat.counter, kat.key, kat.rounds), kat.expected) << "rounds " << kat.rounds;
  }
}

// The batched blocks (dropout's draw) are philox_block()'s words, also where the low counter word wraps
// into the next one.
TEST(Philox, BlockBatchEqualsSingleBlocks) {
  RngKey key;
  key.seed = 12345;
  key.purpose = RngPurpose::kDropout;
  key.step = 9;
  const PhiloxStream stream = philox_stream(key);
  for (uint64_t first :
       {uint64_t{0}, uint64_t{1}, uint64_t{977}, uint64_t{0xFFFFFFF8u}, uint64_t{0x1234FFFFFFFEull}}) {
    uint32_t words[4 * kPhiloxBatchBlocks];
    philox_block_batch(stream, first, words);
    for (int b = 0; b < kPhiloxBatchBlocks; ++b) {
      const PhiloxCounter want = philox_block(stream, first + static_cast<uint64_t>(b));
      for (int j = 0; j < 4; ++j)
        EXPECT_EQ(words[4 * b + j], want[static_cast<size_t>(j)]) << first << " " << b << " " << j;
    }
  }
}

TEST(Philox, StreamsArePureFunctionsAndDistinct) {
  RngKey key;
  key.seed = 42;
  key.purpose = RngPurpose::kDropout;
  key.step = 7;
  PhiloxStream a = philox_stream(key);
  PhiloxStream b = philox_stream(key);
  for (uint64_t i = 0; i < 64; ++i) EXPECT_EQ(philox_u32(a, i), philox_u32(b, i));
  RngKey other = key;
  other.rank = 1;
  PhiloxStream c = philox_stream(other);
  int equal = 0;
  for (uint64_t i = 0; i < 64; ++i) equal += philox_u32(a, i) == philox_u32(c, i);
  EXPECT_LT(equal, 2);
  // Another purpose with the same seed gives other numbers too.
  RngKey purpose = key;
  purpose.purpose = RngPurpose::kSpecAugment;
  EXPECT_NE(philox_u32(philox_stream(purpose), 0), philox_u32(a, 0));
}

TEST(Philox, UniformAndNormalMoments) {
  RngKey key;
  key.seed = 1234;
  PhiloxStream s = philox_stream(key);
  const int n = 200000;
  double sum = 0, sum_sq = 0, nsum = 0, nsum_sq = 0;
  float lo = 1.0f, hi = 0.0f;
  for (int i = 0; i < n; ++i) {
    float u = philox_uniform(s, i);
    lo = std::min(lo, u);
    hi = std::max(hi, u);
    sum += u;
    sum_sq += double(u) * u;
    double z = philox_normal(s, i);
    nsum += z;
    nsum_sq += z * z;
  }
  EXPECT_GE(lo, 0.0f);
  EXPECT_LT(hi, 1.0f);
  EXPECT_NEAR(sum / n, 0.5, 0.005);
  EXPECT_NEAR(sum_sq / n - (sum / n) * (sum / n), 1.0 / 12.0, 0.002);
  EXPECT_NEAR(nsum / n, 0.0, 0.01);
  EXPECT_NEAR(nsum_sq / n, 1.0, 0.02);
  std::set<uint64_t> seen;
  for (int i = 0; i < 1000; ++i) {
    uint64_t v = philox_below(s, i, 10);
    ASSERT_LT(v, 10u);
    seen.insert(v);
  }
  EXPECT_EQ(seen.size(), 10u);
}

}  // namespace
}  // namespace moeasr
