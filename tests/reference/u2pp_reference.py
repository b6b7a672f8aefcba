"""PyTorch reference model for moe-asr: WeNet U2++ (Conformer + BiTransformer
decoder + CTC) with optional MoE feed-forward layers.

Written from the facts in shared/reference/u2pp_moe_wenet.md (sections 2-5 and
the pitfalls), not copied from WeNet.  Module and parameter names are chosen so
that ``state_dict()`` keys equal WeNet's, so a WeNet checkpoint loads directly
(``load_state_dict(strict=True)``) and the fixture names match what the C++
converter will see.

Conventions:
  * all dropouts exist as arguments but the reference is meant to run with 0.
  * masks are bool, True = "keep" (WeNet convention).
  * ignore_id = -1, blank = 0, sos = eos = vocab_size - 1.
"""

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_ID = -1


# ---------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------
def make_pad_mask(lengths: torch.Tensor, max_len: int = 0) -> torch.Tensor:
    """True at padded positions. (B,) -> (B, max_len)."""
    max_len = max(max_len, int(lengths.max().item()))
    ar = torch.arange(max_len, device=lengths.device)
    return ar.unsqueeze(0) >= lengths.unsqueeze(1)


def subsequent_mask(size: int, device=None) -> torch.Tensor:
    """Lower-triangular (causal) mask, True = keep. (size, size)."""
    return torch.tril(torch.ones(size, size, dtype=torch.bool, device=device))


def subsequent_chunk_mask(size: int, chunk_size: int, num_left_chunks: int = -1,
                          device=None) -> torch.Tensor:
    """Row i keeps keys [start, end) with
    start = 0 if num_left_chunks < 0 else max((i//c - left)*c, 0),
    end = min((i//c + 1)*c, size)."""
    ret = torch.zeros(size, size, dtype=torch.bool, device=device)
    for i in range(size):
        if num_left_chunks < 0:
            start = 0
        else:
            start = max((i // chunk_size - num_left_chunks) * chunk_size, 0)
        end = min((i // chunk_size + 1) * chunk_size, size)
        ret[i, start:end] = True
    return ret


def add_optional_chunk_mask(xs: torch.Tensor, masks: torch.Tensor,
                            use_dynamic_chunk: bool,
                            use_dynamic_left_chunk: bool,
                            decoding_chunk_size: int, static_chunk_size: int,
                            num_decoding_left_chunks: int,
                            enable_full_context: bool = True,
                            max_chunk_size: int = 25,
                            generator: Optional[torch.Generator] = None
                            ) -> torch.Tensor:
    """xs: (B, L, D) subsampled; masks: (B, 1, L) pad mask.
    Returns (B, L, L) = pad_mask & chunk_mask, or the (B, 1, L) pad mask for
    full context (no chunking)."""
    L = xs.size(1)
    if use_dynamic_chunk:
        if decoding_chunk_size < 0:
            chunk_size, num_left = L, -1
        elif decoding_chunk_size > 0:
            chunk_size, num_left = decoding_chunk_size, num_decoding_left_chunks
        else:
            # training: one chunk size per batch
            chunk_size = int(torch.randint(1, L, (1,), generator=generator).item())
            num_left = -1
            if chunk_size > L // 2 and enable_full_context:
                chunk_size = L
            else:
                chunk_size = chunk_size % max_chunk_size + 1
                if use_dynamic_left_chunk:
                    max_left = (L - 1) // chunk_size
                    num_left = int(torch.randint(0, max_left, (1,),
                                                 generator=generator).item())
        chunk = subsequent_chunk_mask(L, chunk_size, num_left, xs.device)
        chunk_masks = masks & chunk.unsqueeze(0)
    elif static_chunk_size > 0:
        chunk = subsequent_chunk_mask(L, static_chunk_size,
                                      num_decoding_left_chunks, xs.device)
        chunk_masks = masks & chunk.unsqueeze(0)
    else:
        chunk_masks = masks
    # Current WeNet (wenet/utils/mask.py) forces rows that are entirely False
    # to all-True (such rows only occur for padded query frames with limited
    # left chunks; their outputs are masked later).  Never triggers in the
    # fixture (num_left_chunks = -1).
    empty = chunk_masks.sum(dim=-1) == 0
    if bool(empty.any()):
        chunk_masks = chunk_masks.clone()
        chunk_masks[empty] = True
    return chunk_masks


# ---------------------------------------------------------------------------
# front-end
# ---------------------------------------------------------------------------
class GlobalCMVN(nn.Module):
    """x = (x - mean) * istd; buffers `mean`, `istd` of shape (idim,)."""

    def __init__(self, mean: torch.Tensor, istd: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("istd", istd.clone())

    def forward(self, x):
        return (x - self.mean) * self.istd


class RelPositionalEncoding(nn.Module):
    """x -> x * sqrt(d) (PE NOT added); returns pe[offset:offset+T] separately."""

    def __init__(self, d_model: int, dropout_rate: float = 0.0, max_len: int = 5000):
        super().__init__()
        self.xscale = math.sqrt(d_model)
        self.dropout = nn.Dropout(dropout_rate)
        self.register_buffer("pe", sinusoid_table(max_len, d_model), persistent=False)

    def forward(self, x, offset: int = 0):
        T = x.size(1)
        pos = self.pe[offset:offset + T].unsqueeze(0).to(x.dtype)
        return self.dropout(x * self.xscale), self.dropout(pos)


class PositionalEncoding(nn.Module):
    """Absolute PE: x -> x * sqrt(d) + pe[:T]."""

    def __init__(self, d_model: int, dropout_rate: float = 0.0, max_len: int = 5000):
        super().__init__()
        self.xscale = math.sqrt(d_model)
        self.dropout = nn.Dropout(dropout_rate)
        self.register_buffer("pe", sinusoid_table(max_len, d_model), persistent=False)

    def forward(self, x, offset: int = 0):
        T = x.size(1)
        pos = self.pe[offset:offset + T].unsqueeze(0).to(x.dtype)
        return self.dropout(x * self.xscale + pos), self.dropout(pos)


def sinusoid_table(max_len: int, d: int) -> torch.Tensor:
    """PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(same)."""
    pos = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * -(math.log(10000.0) / d))
    pe = torch.zeros(max_len, d)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


class Conv2dSubsampling4(nn.Module):
    """(B,T,idim) -> conv3x3/2 -> relu -> conv3x3/2 -> relu -> channel-major
    flatten (c*F' + f) -> Linear(d*F', d) -> pos_enc."""

    def __init__(self, idim: int, odim: int, dropout_rate: float = 0.0,
                 pos_enc: Optional[nn.Module] = None):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, odim, 3, 2), nn.ReLU(),
                                  nn.Conv2d(odim, odim, 3, 2), nn.ReLU())
        fdim = ((idim - 1) // 2 - 1) // 2
        self.out = nn.Sequential(nn.Linear(odim * fdim, odim))
        self.pos_enc = pos_enc
        self.subsampling_rate = 4
        self.right_context = 6

    def forward(self, x, x_mask, offset: int = 0):
        x = self.conv(x.unsqueeze(1))              # (B, d, T', F')
        b, c, t, f = x.size()
        x = self.out(x.transpose(1, 2).contiguous().view(b, t, c * f))
        x, pos_emb = self.pos_enc(x, offset)
        return x, pos_emb, x_mask[:, :, 2::2][:, :, 2::2]


# ---------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------
def _masked_softmax(scores: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """scores (B,h,T1,T2); mask (B,1,T2) or (B,T1,T2), True = keep.
    masked_fill(-inf) -> softmax in (at least) fp32 -> masked_fill(0)."""
    sm_dtype = torch.promote_types(scores.dtype, torch.float32)
    if mask is not None and mask.size(2) > 0:
        drop = ~mask.unsqueeze(1)[..., :scores.size(-1)]       # (B,1,*,T2)
        scores = scores.masked_fill(drop, float("-inf"))
        attn = torch.softmax(scores, dim=-1, dtype=sm_dtype).to(scores.dtype)
        attn = attn.masked_fill(drop, 0.0)
    else:
        attn = torch.softmax(scores, dim=-1, dtype=sm_dtype).to(scores.dtype)
    return attn


class MultiHeadedAttention(nn.Module):
    def __init__(self, n_head: int, n_feat: int, dropout_rate: float = 0.0):
        super().__init__()
        assert n_feat % n_head == 0
        self.h = n_head
        self.d_k = n_feat // n_head
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.dropout = nn.Dropout(dropout_rate)

    def _heads(self, lin, x):
        b = x.size(0)
        return lin(x).view(b, -1, self.h, self.d_k).transpose(1, 2)  # (B,h,T,dk)

    def _attend(self, v, scores, mask):
        attn = self.dropout(_masked_softmax(scores, mask))
        x = torch.matmul(attn, v)                                  # (B,h,T1,dk)
        b = x.size(0)
        x = x.transpose(1, 2).contiguous().view(b, -1, self.h * self.d_k)
        return self.linear_out(x)

    def forward(self, query, key, value, mask, pos_emb=None):
        q = self._heads(self.linear_q, query)
        k = self._heads(self.linear_k, key)
        v = self._heads(self.linear_v, value)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.d_k)
        return self._attend(v, scores, mask)


class RelPositionMultiHeadedAttention(MultiHeadedAttention):
    """WeNet rel_selfattn WITHOUT rel_shift:
    scores = ((q+u) k^T + (q+v) p^T) / sqrt(d_k),  p = linear_pos(pos_emb)."""

    def __init__(self, n_head: int, n_feat: int, dropout_rate: float = 0.0):
        super().__init__(n_head, n_feat, dropout_rate)
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(self.h, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.empty(self.h, self.d_k))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def forward(self, query, key, value, mask, pos_emb=None):
        q = self._heads(self.linear_q, query)                      # (B,h,T1,dk)
        k = self._heads(self.linear_k, key)
        v = self._heads(self.linear_v, value)
        p = self.linear_pos(pos_emb).view(pos_emb.size(0), -1, self.h, self.d_k)
        p = p.transpose(1, 2)                                      # (1,h,T2,dk)
        q_u = q + self.pos_bias_u.unsqueeze(1)                     # (h,1,dk) bcast
        q_v = q + self.pos_bias_v.unsqueeze(1)
        ac = torch.matmul(q_u, k.transpose(-2, -1))
        bd = torch.matmul(q_v, p.transpose(-2, -1))
        scores = (ac + bd) / math.sqrt(self.d_k)
        return self._attend(v, scores, mask)


# ---------------------------------------------------------------------------
# feed-forward
# ---------------------------------------------------------------------------
def make_activation(name: str) -> nn.Module:
    if name == "swish":
        return nn.SiLU()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(name)


class PositionwiseFeedForward(nn.Module):
    """w_2(dropout(act(w_1 x)))."""

    def __init__(self, idim: int, hidden: int, dropout_rate: float = 0.0,
                 activation: str = "relu", bias: bool = True):
        super().__init__()
        self.w_1 = nn.Linear(idim, hidden, bias=bias)
        self.activation = make_activation(activation)
        self.dropout = nn.Dropout(dropout_rate)
        self.w_2 = nn.Linear(hidden, idim, bias=bias)

    def forward(self, x):
        return self.w_2(self.dropout(self.activation(self.w_1(x))))


class MoEFFNLayer(nn.Module):
    """gate = Linear(d, E, bias=False); top-k on raw logits; softmax over the k
    selected logits (fp32); out = sum_j w_j * expert_{sel_j}(x). No aux loss,
    no capacity, no noise. Implemented as a plain loop over experts."""

    def __init__(self, idim: int, hidden: int, dropout_rate: float = 0.0,
                 activation: str = "relu", bias: bool = True,
                 n_expert: int = 8, n_expert_activated: int = 2):
        super().__init__()
        self.gate = nn.Linear(idim, n_expert, bias=False)
        self.experts = nn.ModuleList(
            PositionwiseFeedForward(idim, hidden, dropout_rate, activation, bias)
            for _ in range(n_expert))
        self.n_expert = n_expert
        self.n_expert_activated = n_expert_activated

    def route(self, x2d):
        """(N, D) -> (weights (N,k), selected expert ids (N,k))."""
        router = self.gate(x2d)
        logits, sel = torch.topk(router, self.n_expert_activated, dim=1)
        sm_dtype = torch.promote_types(x2d.dtype, torch.float32)
        w = torch.softmax(logits, dim=1, dtype=sm_dtype).to(x2d.dtype)
        return w, sel

    def forward(self, xs):
        B, L, D = xs.size()
        x = xs.reshape(B * L, D)
        w, sel = self.route(x)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            tok, slot = torch.where(sel == e)
            if tok.numel() == 0:
                continue
            y = w[tok, slot].unsqueeze(1) * expert(x[tok])
            out = out.index_add(0, tok, y)
        return out.view(B, L, D)


def make_ffn(mlp_type: str, d: int, hidden: int, dropout_rate: float,
             activation: str, bias: bool, n_expert: int, n_expert_activated: int):
    if mlp_type == "position_wise_feed_forward":
        return PositionwiseFeedForward(d, hidden, dropout_rate, activation, bias)
    if mlp_type == "moe":
        return MoEFFNLayer(d, hidden, dropout_rate, activation, bias,
                           n_expert, n_expert_activated)
    raise ValueError(mlp_type)


# ---------------------------------------------------------------------------
# conformer
# ---------------------------------------------------------------------------
class ConvolutionModule(nn.Module):
    """zero pads -> [causal: left-pad k-1 zeros] -> pointwise_conv1 (d->2d)
    -> GLU -> depthwise conv (k; non-causal: symmetric (k-1)/2 zero padding of
    the GLU output, inside the conv) -> norm -> swish -> pointwise_conv2
    -> zero pads."""

    def __init__(self, channels: int, kernel_size: int = 15,
                 activation: str = "swish", norm: str = "batch_norm",
                 causal: bool = False, bias: bool = True):
        super().__init__()
        self.pointwise_conv1 = nn.Conv1d(channels, 2 * channels, 1, bias=bias)
        if causal:
            padding, self.lorder = 0, kernel_size - 1
        else:
            assert (kernel_size - 1) % 2 == 0, "non-causal kernel must be odd"
            padding, self.lorder = (kernel_size - 1) // 2, 0
        self.depthwise_conv = nn.Conv1d(channels, channels, kernel_size,
                                        padding=padding, groups=channels, bias=bias)
        assert norm in ("batch_norm", "layer_norm")
        self.use_layer_norm = norm == "layer_norm"
        self.norm = nn.LayerNorm(channels, eps=1e-5) if self.use_layer_norm \
            else nn.BatchNorm1d(channels)
        self.pointwise_conv2 = nn.Conv1d(channels, channels, 1, bias=bias)
        self.activation = make_activation(activation)

    def forward(self, x, mask_pad: Optional[torch.Tensor] = None,
                cache: Optional[torch.Tensor] = None):
        """x (B,T,d); mask_pad (B,1,T) True = valid; cache (B,d,k-1) or None."""
        x = x.transpose(1, 2)                                      # (B,d,T)
        if mask_pad is not None and mask_pad.size(2) > 0:
            x = x.masked_fill(~mask_pad, 0.0)
        new_cache = x.new_zeros(0)
        if self.lorder > 0:
            if cache is None or cache.size(2) == 0:
                x = F.pad(x, (self.lorder, 0), "constant", 0.0)
            else:
                x = torch.cat((cache, x), dim=2)
            new_cache = x[:, :, -self.lorder:]
        x = F.glu(self.pointwise_conv1(x), dim=1)
        x = self.depthwise_conv(x)
        if self.use_layer_norm:
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        else:
            x = self.norm(x)
        x = self.pointwise_conv2(self.activation(x))
        if mask_pad is not None and mask_pad.size(2) > 0:
            x = x.masked_fill(~mask_pad, 0.0)
        return x.transpose(1, 2), new_cache


class ConformerEncoderLayer(nn.Module):
    """Pre-LN macaron conformer block (ff_scale 0.5, norm_final)."""

    def __init__(self, size, self_attn, feed_forward, feed_forward_macaron,
                 conv_module, dropout_rate: float = 0.0):
        super().__init__()
        self.self_attn = self_attn
        self.feed_forward = feed_forward
        self.feed_forward_macaron = feed_forward_macaron
        self.conv_module = conv_module
        self.norm_ff = nn.LayerNorm(size, eps=1e-5)
        self.norm_mha = nn.LayerNorm(size, eps=1e-5)
        if feed_forward_macaron is not None:
            self.norm_ff_macaron = nn.LayerNorm(size, eps=1e-5)
            self.ff_scale = 0.5
        else:
            self.ff_scale = 1.0
        if conv_module is not None:
            self.norm_conv = nn.LayerNorm(size, eps=1e-5)
            self.norm_final = nn.LayerNorm(size, eps=1e-5)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x, mask, pos_emb, mask_pad):
        if self.feed_forward_macaron is not None:
            x = x + self.ff_scale * self.dropout(
                self.feed_forward_macaron(self.norm_ff_macaron(x)))
        y = self.norm_mha(x)
        x = x + self.dropout(self.self_attn(y, y, y, mask, pos_emb))
        if self.conv_module is not None:
            y, _ = self.conv_module(self.norm_conv(x), mask_pad)
            x = x + self.dropout(y)
        x = x + self.ff_scale * self.dropout(self.feed_forward(self.norm_ff(x)))
        if self.conv_module is not None:
            x = self.norm_final(x)
        return x


class ConformerEncoder(nn.Module):
    def __init__(self, input_size: int, output_size: int = 256,
                 attention_heads: int = 4, linear_units: int = 2048,
                 num_blocks: int = 6, dropout_rate: float = 0.0,
                 positional_dropout_rate: float = 0.0,
                 attention_dropout_rate: float = 0.0,
                 static_chunk_size: int = 0, use_dynamic_chunk: bool = False,
                 use_dynamic_left_chunk: bool = False,
                 activation_type: str = "swish", cnn_module_kernel: int = 15,
                 causal: bool = False, cnn_module_norm: str = "batch_norm",
                 mlp_type: str = "position_wise_feed_forward",
                 n_expert: int = 8, n_expert_activated: int = 2,
                 mlp_bias: bool = True,
                 cmvn_mean: Optional[torch.Tensor] = None,
                 cmvn_istd: Optional[torch.Tensor] = None):
        super().__init__()
        d = output_size
        if cmvn_mean is None:
            cmvn_mean = torch.zeros(input_size)
        if cmvn_istd is None:
            cmvn_istd = torch.ones(input_size)
        self.global_cmvn = GlobalCMVN(cmvn_mean, cmvn_istd)
        self.embed = Conv2dSubsampling4(
            input_size, d, dropout_rate,
            RelPositionalEncoding(d, positional_dropout_rate))
        self.static_chunk_size = static_chunk_size
        self.use_dynamic_chunk = use_dynamic_chunk
        self.use_dynamic_left_chunk = use_dynamic_left_chunk
        self._output_size = d

        def ffn():
            return make_ffn(mlp_type, d, linear_units, dropout_rate,
                            activation_type, mlp_bias, n_expert, n_expert_activated)

        self.encoders = nn.ModuleList(
            ConformerEncoderLayer(
                d,
                RelPositionMultiHeadedAttention(attention_heads, d, attention_dropout_rate),
                ffn(), ffn(),
                ConvolutionModule(d, cnn_module_kernel, activation_type,
                                  cnn_module_norm, causal),
                dropout_rate)
            for _ in range(num_blocks))
        self.after_norm = nn.LayerNorm(d, eps=1e-5)

    def output_size(self):
        return self._output_size

    def forward(self, xs, xs_lens, decoding_chunk_size: int = 0,
                num_decoding_left_chunks: int = -1,
                generator: Optional[torch.Generator] = None,
                return_chunk_mask: bool = False):
        T = xs.size(1)
        masks = ~make_pad_mask(xs_lens, T).unsqueeze(1)            # (B,1,T)
        xs = self.global_cmvn(xs)
        xs, pos_emb, masks = self.embed(xs, masks)
        mask_pad = masks                                           # (B,1,T')
        chunk_masks = add_optional_chunk_mask(
            xs, masks, self.use_dynamic_chunk, self.use_dynamic_left_chunk,
            decoding_chunk_size, self.static_chunk_size,
            num_decoding_left_chunks, generator=generator)
        for layer in self.encoders:
            xs = layer(xs, chunk_masks, pos_emb, mask_pad)
        xs = self.after_norm(xs)
        if return_chunk_mask:
            return xs, masks, chunk_masks
        return xs, masks


# ---------------------------------------------------------------------------
# decoder
# ---------------------------------------------------------------------------
class DecoderLayer(nn.Module):
    def __init__(self, size, self_attn, src_attn, feed_forward, dropout_rate=0.0):
        super().__init__()
        self.self_attn = self_attn
        self.src_attn = src_attn
        self.feed_forward = feed_forward
        self.norm1 = nn.LayerNorm(size, eps=1e-5)
        self.norm2 = nn.LayerNorm(size, eps=1e-5)
        self.norm3 = nn.LayerNorm(size, eps=1e-5)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x, tgt_mask, memory, memory_mask):
        y = self.norm1(x)
        x = x + self.dropout(self.self_attn(y, y, y, tgt_mask))
        y = self.norm2(x)
        x = x + self.dropout(self.src_attn(y, memory, memory, memory_mask))
        x = x + self.dropout(self.feed_forward(self.norm3(x)))
        return x


class TransformerDecoder(nn.Module):
    def __init__(self, vocab_size: int, encoder_output_size: int,
                 attention_heads: int = 4, linear_units: int = 2048,
                 num_blocks: int = 6, dropout_rate: float = 0.0,
                 positional_dropout_rate: float = 0.0,
                 self_attention_dropout_rate: float = 0.0,
                 src_attention_dropout_rate: float = 0.0,
                 activation_type: str = "relu",
                 mlp_type: str = "position_wise_feed_forward",
                 n_expert: int = 8, n_expert_activated: int = 2,
                 mlp_bias: bool = True):
        super().__init__()
        d = encoder_output_size
        self.embed = nn.Sequential(nn.Embedding(vocab_size, d),
                                   PositionalEncoding(d, positional_dropout_rate))
        self.decoders = nn.ModuleList(
            DecoderLayer(
                d,
                MultiHeadedAttention(attention_heads, d, self_attention_dropout_rate),
                MultiHeadedAttention(attention_heads, d, src_attention_dropout_rate),
                make_ffn(mlp_type, d, linear_units, dropout_rate, activation_type,
                         mlp_bias, n_expert, n_expert_activated),
                dropout_rate)
            for _ in range(num_blocks))
        self.after_norm = nn.LayerNorm(d, eps=1e-5)
        self.output_layer = nn.Linear(d, vocab_size)

    def forward(self, memory, memory_mask, ys_in_pad, ys_in_lens):
        L = ys_in_pad.size(1)
        tgt_mask = ~make_pad_mask(ys_in_lens, L).unsqueeze(1)      # (B,1,L)
        tgt_mask = tgt_mask & subsequent_mask(L, ys_in_pad.device).unsqueeze(0)
        x = self.embed[0](ys_in_pad)
        x, _ = self.embed[1](x)
        for layer in self.decoders:
            x = layer(x, tgt_mask, memory, memory_mask)
        return self.output_layer(self.after_norm(x))


class BiTransformerDecoder(nn.Module):
    def __init__(self, vocab_size: int, encoder_output_size: int,
                 attention_heads: int = 4, linear_units: int = 2048,
                 num_blocks: int = 6, r_num_blocks: int = 0, **kw):
        super().__init__()
        self.left_decoder = TransformerDecoder(
            vocab_size, encoder_output_size, attention_heads, linear_units,
            num_blocks, **kw)
        self.right_decoder = TransformerDecoder(
            vocab_size, encoder_output_size, attention_heads, linear_units,
            r_num_blocks, **kw)

    def forward(self, memory, memory_mask, ys_in_pad, ys_in_lens,
                r_ys_in_pad, reverse_weight: float = 0.0):
        l_x = self.left_decoder(memory, memory_mask, ys_in_pad, ys_in_lens)
        r_x = None
        if reverse_weight > 0.0:
            r_x = self.right_decoder(memory, memory_mask, r_ys_in_pad, ys_in_lens)
        return l_x, r_x


# ---------------------------------------------------------------------------
# heads / losses
# ---------------------------------------------------------------------------
class CTC(nn.Module):
    def __init__(self, odim: int, encoder_output_size: int, blank_id: int = 0):
        super().__init__()
        self.ctc_lo = nn.Linear(encoder_output_size, odim)
        self.blank_id = blank_id

    def log_softmax(self, hs):
        return F.log_softmax(self.ctc_lo(hs), dim=2)

    def forward(self, hs_pad, hlens, ys_pad, ys_lens):
        """Returns (loss = sum / B, log_probs (B,T,V))."""
        lp = self.log_softmax(hs_pad)
        ys = ys_pad.clamp(min=0)  # pads never read (target_lengths), keep ids valid
        loss = F.ctc_loss(lp.transpose(0, 1), ys, hlens, ys_lens,
                          blank=self.blank_id, reduction="sum", zero_infinity=True)
        return loss / lp.size(0), lp


def label_smoothing_loss(x, target, smoothing: float, normalize_length: bool = False,
                         padding_idx: int = IGNORE_ID):
    """KL(q || softmax(x)) summed over non-pad positions; q(target)=1-eps,
    q(other)=eps/(V-1); / B (or / #tokens if normalize_length)."""
    B, V = x.size(0), x.size(-1)
    x = x.reshape(-1, V)
    target = target.reshape(-1)
    ignore = target == padding_idx
    total = int((~ignore).sum().item())
    tgt = target.masked_fill(ignore, 0)
    true_dist = torch.full_like(x, smoothing / (V - 1))
    true_dist.scatter_(1, tgt.unsqueeze(1), 1.0 - smoothing)
    kl = F.kl_div(torch.log_softmax(x, dim=1), true_dist, reduction="none")
    denom = total if normalize_length else B
    return kl.masked_fill(ignore.unsqueeze(1), 0.0).sum() / denom


def th_accuracy(logits, targets, ignore_label: int = IGNORE_ID) -> float:
    pred = logits.argmax(-1)
    mask = targets != ignore_label
    return float((pred[mask] == targets[mask]).sum().item()) / float(mask.sum().item())


def add_sos_eos(ys_pad, sos: int, eos: int, ignore_id: int = IGNORE_ID):
    """ys_in = [sos, y...] padded with eos; ys_out = [y..., eos] padded with -1."""
    B, L = ys_pad.shape
    ys_in = torch.full((B, L + 1), eos, dtype=ys_pad.dtype, device=ys_pad.device)
    ys_out = torch.full((B, L + 1), ignore_id, dtype=ys_pad.dtype, device=ys_pad.device)
    ys_in[:, 0] = sos
    for b in range(B):
        y = ys_pad[b][ys_pad[b] != ignore_id]
        n = y.numel()
        ys_in[b, 1:n + 1] = y
        ys_out[b, :n] = y
        ys_out[b, n] = eos
    return ys_in, ys_out


def reverse_pad_list(ys_pad, ys_lens, pad_value: int = IGNORE_ID):
    """Reverse each row within its true length; padding stays pad_value."""
    out = torch.full_like(ys_pad, pad_value)
    for b in range(ys_pad.size(0)):
        n = int(ys_lens[b])
        out[b, :n] = torch.flip(ys_pad[b, :n], [0])
    return out


# ---------------------------------------------------------------------------
# full model
# ---------------------------------------------------------------------------
class U2ppModel(nn.Module):
    """ASRModel with conformer encoder, bitransformer decoder and CTC."""

    def __init__(self, input_dim: int, vocab_size: int, encoder_conf: dict,
                 decoder_conf: dict, model_conf: dict,
                 cmvn_mean: Optional[torch.Tensor] = None,
                 cmvn_istd: Optional[torch.Tensor] = None):
        super().__init__()
        enc_keys = ("output_size", "attention_heads", "linear_units", "num_blocks",
                    "dropout_rate", "positional_dropout_rate", "attention_dropout_rate",
                    "static_chunk_size", "use_dynamic_chunk", "use_dynamic_left_chunk",
                    "activation_type", "cnn_module_kernel", "causal", "cnn_module_norm",
                    "mlp_type", "n_expert", "n_expert_activated", "mlp_bias")
        dec_keys = ("attention_heads", "linear_units", "num_blocks", "r_num_blocks",
                    "dropout_rate", "positional_dropout_rate",
                    "self_attention_dropout_rate", "src_attention_dropout_rate",
                    "activation_type", "mlp_type", "n_expert", "n_expert_activated",
                    "mlp_bias")
        self._check_supported(encoder_conf)
        self.encoder = ConformerEncoder(
            input_dim, cmvn_mean=cmvn_mean, cmvn_istd=cmvn_istd,
            **{k: encoder_conf[k] for k in enc_keys if k in encoder_conf})
        d = self.encoder.output_size()
        self.decoder = BiTransformerDecoder(
            vocab_size, d, **{k: decoder_conf[k] for k in dec_keys if k in decoder_conf})
        self.ctc = CTC(vocab_size, d, blank_id=0)
        self.vocab_size = vocab_size
        self.sos = self.eos = vocab_size - 1
        self.ignore_id = IGNORE_ID
        self.ctc_weight = model_conf["ctc_weight"]
        self.reverse_weight = model_conf["reverse_weight"]
        self.lsm_weight = model_conf["lsm_weight"]
        self.length_normalized_loss = model_conf["length_normalized_loss"]

    @staticmethod
    def _check_supported(ec):
        fixed = {"input_layer": "conv2d", "pos_enc_layer_type": "rel_pos",
                 "selfattention_layer_type": "rel_selfattn", "normalize_before": True,
                 "macaron_style": True, "use_cnn_module": True}
        for k, v in fixed.items():
            if k in ec and ec[k] != v:
                raise NotImplementedError(f"encoder_conf.{k}={ec[k]!r} (only {v!r})")

    def forward(self, speech, speech_lengths, text, text_lengths,
                decoding_chunk_size: int = 0, num_decoding_left_chunks: int = -1,
                generator: Optional[torch.Generator] = None) -> Dict[str, object]:
        enc, enc_mask, chunk_mask = self.encoder(
            speech, speech_lengths, decoding_chunk_size, num_decoding_left_chunks,
            generator=generator, return_chunk_mask=True)
        enc_lens = enc_mask.squeeze(1).sum(1)
        out = {"encoder_out": enc, "encoder_out_lens": enc_lens,
               "encoder_mask": enc_mask, "chunk_mask": chunk_mask}

        loss_ctc, lp = self.ctc(enc, enc_lens, text, text_lengths)
        out["ctc_log_probs"] = lp
        out["loss_ctc"] = loss_ctc

        ys_in, ys_out = add_sos_eos(text, self.sos, self.eos, self.ignore_id)
        ys_in_lens = text_lengths + 1
        r_text = reverse_pad_list(text, text_lengths, self.ignore_id)
        r_ys_in, r_ys_out = add_sos_eos(r_text, self.sos, self.eos, self.ignore_id)
        l_x, r_x = self.decoder(enc, enc_mask, ys_in, ys_in_lens, r_ys_in,
                                self.reverse_weight)
        loss_l2r = label_smoothing_loss(l_x, ys_out, self.lsm_weight,
                                        self.length_normalized_loss)
        if self.reverse_weight > 0.0:
            loss_r2l = label_smoothing_loss(r_x, r_ys_out, self.lsm_weight,
                                            self.length_normalized_loss)
        else:
            loss_r2l = torch.zeros((), dtype=enc.dtype)
        loss_att = (1 - self.reverse_weight) * loss_l2r + self.reverse_weight * loss_r2l
        out.update(loss_att_l2r=loss_l2r, loss_att_r2l=loss_r2l, loss_att=loss_att,
                   l2r_accuracy=th_accuracy(l_x, ys_out, self.ignore_id),
                   decoder_out=l_x, r_decoder_out=r_x,
                   ys_in=ys_in, ys_out=ys_out, r_ys_in=r_ys_in, r_ys_out=r_ys_out)
        out["loss"] = self.ctc_weight * loss_ctc + (1 - self.ctc_weight) * loss_att
        return out
