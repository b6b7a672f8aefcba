// model/targets.h — decoder inputs and outputs of U2++ training, as WeNet's add_sos_eos and
// reverse_pad_list (u2pp_moe_wenet.md §5): from padded token ids ys [B, L] with lengths,
//   L2R: ys_in  = [sos, y1..yn] padded with eos,   ys_out = [y1..yn, eos] padded with ignore_id (-1);
//   R2L: r_in   = [sos, yn..y1] padded with eos,   r_out  = [yn..y1, eos] padded with ignore_id.
// Both have L+1 columns and valid length n+1.
#pragma once

#include <cstdint>

namespace moeasr {

void make_decoder_targets(int32_t* ys_in,          // [B, L+1]
                          int32_t* ys_out,         // [B, L+1]
                          int32_t* ys_in_lengths,  // [B] n + 1
                          const int32_t* ys,       // [B, L] padded (padding value ignored)
                          const int32_t* lengths,  // [B] n <= L
                          bool reverse,            // R2L when true
                          int32_t sos, int32_t eos, int32_t ignore_id, int64_t batch, int64_t max_len);

}  // namespace moeasr
