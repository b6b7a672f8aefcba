// model/targets.cc — add_sos_eos and the R2L reversal (see targets.h).
#include "model/targets.h"

#include "core/check.h"

namespace moeasr {

void make_decoder_targets(int32_t* ys_in, int32_t* ys_out, int32_t* ys_in_lengths, const int32_t* ys,
                          const int32_t* lengths, bool reverse, int32_t sos, int32_t eos, int32_t ignore_id,
                          int64_t batch, int64_t max_len) {
  const int64_t cols = max_len + 1;
  for (int64_t b = 0; b < batch; ++b) {
    int64_t n = lengths[b];
    CHECK(n >= 0 && n <= max_len) << "target length " << n << " of utterance " << b << " outside [0, "
                                  << max_len << "]";
    int32_t* in = ys_in + b * cols;
    int32_t* out = ys_out + b * cols;
    const int32_t* y = ys + b * max_len;
    in[0] = sos;
    for (int64_t j = 0; j < n; ++j) {
      int32_t token = reverse ? y[n - 1 - j] : y[j];
      in[j + 1] = token;
      out[j] = token;
    }
    out[n] = eos;
    for (int64_t j = n + 1; j < cols; ++j) {
      in[j] = eos;
      out[j] = ignore_id;
    }
    ys_in_lengths[b] = static_cast<int32_t>(n + 1);
  }
}

}  // namespace moeasr
