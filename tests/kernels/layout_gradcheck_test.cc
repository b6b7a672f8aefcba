// tests/kernels/layout_gradcheck_test.cc — finite-difference gradients (double) of the differentiable
// data-movement ops of kernels/cpu/layout.h: the middle-axes transpose, the head split with its bias,
// the masked row pad and crop (lpad 0 and > 0, with and without a mask) and the scaled add of the
// positional table, on the threaded and the reference path.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/cpu/layout.h"
#include "tests/common/gradcheck.h"

namespace moeasr {
namespace {

using testing::random_doubles;

TEST(LayoutGradcheck, TransposeMiddle) {
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    const int64_t a = 2, i = 3, j = 4, k = 5, n = a * i * j * k;
    auto x = random_doubles(n, 1);
    auto dout = random_doubles(n, 2);
    std::vector<double> out(n), dx(n);
    auto loss = [&] {
      transpose_middle_forward(out.data(), x.data(), a, i, j, k, ctx);
      return testing::weighted_sum(out, dout);
    };
    auto grads = [&] { transpose_middle_backward(dx.data(), dout.data(), a, i, j, k, ctx); };
    testing::expect_gradients_match(loss, grads, {{"x", x.data(), dx.data(), n}});
  }
}

TEST(LayoutGradcheck, SplitHeadsSourceAndBias) {
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    const int64_t b = 2, t = 3, h = 2, dk = 3, n = b * t * h * dk;
    auto x = random_doubles(n, 3);
    auto bias = random_doubles(h * dk, 4);
    auto dout = random_doubles(n, 5);
    std::vector<double> out(n), dx(n), dbias(h * dk);
    auto loss = [&] {
      split_heads_forward(out.data(), x.data(), bias.data(), b, t, h, dk, ctx);
      return testing::weighted_sum(out, dout);
    };
    auto grads = [&] {
      std::fill(dbias.begin(), dbias.end(), 0.0);  // dbias accumulates
      split_heads_backward(dx.data(), dbias.data(), dout.data(), b, t, h, dk, ctx);
    };
    testing::expect_gradients_match(
        loss, grads, {{"x", x.data(), dx.data(), n}, {"bias", bias.data(), dbias.data(), h * dk}});
  }
}

TEST(LayoutGradcheck, MaskedPadAndCropRows) {
  const int64_t batch = 2, time = 4, channels = 3;
  const std::vector<uint8_t> mask = {1, 1, 0, 1, 1, 1, 1, 0};
  for (bool reference : {false, true})
    for (int64_t lpad : {0, 2})
      for (bool masked : {false, true}) {
        SCOPED_TRACE(::testing::Message() << "lpad " << lpad << " masked " << masked << " ref " << reference);
        RunContext ctx = testing::cpu_test_context(reference);
        const uint8_t* m = masked ? mask.data() : nullptr;
        const int64_t n = batch * time * channels, np = batch * (time + lpad) * channels;
        // pad: [B, T, C] -> [B, lpad + T, C]
        auto x = random_doubles(n, 6);
        auto dpad = random_doubles(np, 7);
        std::vector<double> padded(np), dx(n);
        testing::expect_gradients_match(
            [&] {
              masked_pad_rows_forward(padded.data(), x.data(), m, batch, time, lpad, channels, ctx);
              return testing::weighted_sum(padded, dpad);
            },
            [&] { masked_pad_rows_backward(dx.data(), dpad.data(), m, batch, time, lpad, channels, ctx); },
            {{"x", x.data(), dx.data(), n}});
        // crop: [B, lpad + T, C] -> [B, T, C]
        auto xp = random_doubles(np, 8);
        auto dcrop = random_doubles(n, 9);
        std::vector<double> cropped(n), dxp(np);
        testing::expect_gradients_match(
            [&] {
              masked_crop_rows_forward(cropped.data(), xp.data(), m, batch, time, lpad, channels, ctx);
              return testing::weighted_sum(cropped, dcrop);
            },
            [&] { masked_crop_rows_backward(dxp.data(), dcrop.data(), m, batch, time, lpad, channels, ctx); },
            {{"xp", xp.data(), dxp.data(), np}});
      }
}

TEST(LayoutGradcheck, ScaleAddTable) {
  for (bool reference : {false, true}) {
    RunContext ctx = testing::cpu_test_context(reference);
    const int64_t batch = 2, time = 3, d = 4, n = batch * time * d;
    auto x = random_doubles(n, 10);
    auto table = random_doubles(time * d, 11);
    auto dout = random_doubles(n, 12);
    std::vector<double> out(n), dx(n);
    testing::expect_gradients_match(
        [&] {
          scale_add_table_forward(out.data(), x.data(), table.data(), 2.0, batch, time, d, ctx);
          return testing::weighted_sum(out, dout);
        },
        [&] { scale_add_table_backward(dx.data(), dout.data(), 2.0, batch, time, d, ctx); },
        {{"x", x.data(), dx.data(), n}});
  }
}

}  // namespace
}  // namespace moeasr
