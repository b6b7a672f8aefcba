#!/usr/bin/env python3
"""Build tests/fixtures/u2pp_parity.h5: a small forward/backward parity fixture
for the C++ U2++ (MoE) model, produced by tests/reference/u2pp_reference.py.

Two tiny models, groups /dense and /moe, identical except mlp_type.

Weights: PyTorch default init (pos_bias_u/v: xavier_uniform as in WeNet), then
every bias and every LayerNorm weight/bias is perturbed with small random
values (bias += N(0, 0.05^2); LN weight = 1 + N(0, 0.1^2); LN bias =
N(0, 0.05^2)) so that nothing is trivially 0 or 1.  Finally every parameter,
the CMVN stats and the features are rounded to the bfloat16 grid (values stay
float32; only the low 16 mantissa bits are zero).  This is only done so the
fixture compresses under the 2 MB budget; the model runs entirely in float32.

Run:  python tests/reference/make_parity_fixture.py --out tests/fixtures/u2pp_parity.h5
"""

import argparse
import copy
import json
import os
import sys

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import u2pp_reference as ref  # noqa: E402

FIXTURE_VERSION = 1
IDIM = 80
VOCAB = 40
FEATS_LENGTHS = [67, 50, 31]
TEXT_LENGTHS = [5, 3, 4]
CHUNK = 4
LEFT_CHUNKS = -1
SEED_INPUTS = 20240425
# The moe seed is the first seed >= 1002 for which, in every MoE layer,
# (a) each expert receives >= 3 non-padded tokens in the chunk-4 forward (so no
# expert gradient is trivially zero) and (b) for every non-padded token, in both
# the chunk-4 and the full-context forward, the gap between the 2nd and 3rd
# largest router logits is >= 2e-3 (so fp32 rounding differences in a
# re-implementation cannot flip the top-k choice).
# run_one() asserts both.
SEED_MODEL = {"dense": 1001, "moe": 1233}
MIN_TOKENS_PER_EXPERT = 3
MIN_TOPK_GAP = 2e-3


def make_config(mlp_type: str) -> dict:
    moe = dict(n_expert=4, n_expert_activated=2)
    return {
        "input_dim": IDIM,
        "vocab_size": VOCAB,
        "output_dim": VOCAB,
        "encoder": "conformer",
        "decoder": "bitransformer",
        "encoder_conf": {
            "output_size": 32, "attention_heads": 4, "linear_units": 64,
            "num_blocks": 2, "dropout_rate": 0.0, "positional_dropout_rate": 0.0,
            "attention_dropout_rate": 0.0, "input_layer": "conv2d",
            "normalize_before": True, "cnn_module_kernel": 5, "causal": True,
            "cnn_module_norm": "layer_norm", "use_cnn_module": True,
            "macaron_style": True, "activation_type": "swish",
            "pos_enc_layer_type": "rel_pos", "selfattention_layer_type": "rel_selfattn",
            "static_chunk_size": CHUNK, "use_dynamic_chunk": False,
            "use_dynamic_left_chunk": False, "mlp_type": mlp_type, "mlp_bias": True,
            **moe,
        },
        "decoder_conf": {
            "attention_heads": 4, "linear_units": 64, "num_blocks": 1,
            "r_num_blocks": 1, "dropout_rate": 0.0, "positional_dropout_rate": 0.0,
            "self_attention_dropout_rate": 0.0, "src_attention_dropout_rate": 0.0,
            "activation_type": "relu", "normalize_before": True,
            "input_layer": "embed", "mlp_type": mlp_type, "mlp_bias": True, **moe,
        },
        "model_conf": {
            "ctc_weight": 0.3, "lsm_weight": 0.1, "reverse_weight": 0.3,
            "length_normalized_loss": False,
        },
        # not WeNet yaml keys: how the fixture was run
        "fixture": {
            "decoding_chunk_size": CHUNK, "num_decoding_left_chunks": LEFT_CHUNKS,
            "blank_id": 0, "sos": VOCAB - 1, "eos": VOCAB - 1, "ignore_id": -1,
            "layer_norm_eps": 1e-5, "max_len_pos_enc": 5000,
            "note": "n_expert/n_expert_activated are unused when mlp_type is "
                    "position_wise_feed_forward",
        },
    }


def bf16_round_(t: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        t.copy_(t.to(torch.bfloat16).to(t.dtype))
    return t


def build_model(name: str, cfg: dict, cmvn_mean, cmvn_istd) -> ref.U2ppModel:
    torch.manual_seed(SEED_MODEL[name])
    model = ref.U2ppModel(cfg["input_dim"], cfg["vocab_size"], cfg["encoder_conf"],
                          cfg["decoder_conf"], cfg["model_conf"], cmvn_mean, cmvn_istd)
    ln_prefixes = set()
    for mname, mod in model.named_modules():
        if isinstance(mod, torch.nn.LayerNorm):
            ln_prefixes.add(mname)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            owner, leaf = pname.rsplit(".", 1)
            if owner in ln_prefixes and leaf == "weight":
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif owner in ln_prefixes and leaf == "bias":
                p.copy_(0.05 * torch.randn_like(p))
            elif leaf == "bias":
                p.add_(0.05 * torch.randn_like(p))
            bf16_round_(p)
    return model


def make_inputs():
    g = torch.Generator().manual_seed(SEED_INPUTS)
    B, T = len(FEATS_LENGTHS), max(FEATS_LENGTHS)
    feats = torch.zeros(B, T, IDIM)
    for b, n in enumerate(FEATS_LENGTHS):
        # fbank-like: per-bin offset around 10 plus unit-scale noise
        feats[b, :n] = 10.0 + torch.linspace(-2, 2, IDIM) + 2.0 * torch.randn(n, IDIM, generator=g)
    Lmax = max(TEXT_LENGTHS)
    text = torch.full((B, Lmax), -1, dtype=torch.long)
    for b, n in enumerate(TEXT_LENGTHS):
        text[b, :n] = torch.randint(1, VOCAB - 1, (n,), generator=g)  # [1, V-2]
    cmvn_mean = 10.0 + 0.5 * torch.randn(IDIM, generator=g)
    cmvn_istd = 1.0 / (2.0 * (0.8 + 0.4 * torch.rand(IDIM, generator=g)))  # > 0
    for t in (feats, cmvn_mean, cmvn_istd):
        bf16_round_(t)
    return (feats, torch.tensor(FEATS_LENGTHS, dtype=torch.long), text,
            torch.tensor(TEXT_LENGTHS, dtype=torch.long), cmvn_mean, cmvn_istd)


def loss_parts(out) -> dict:
    return {"total": float(out["loss"].detach()), "ctc": float(out["loss_ctc"].detach()),
            "att_l2r": float(out["loss_att_l2r"].detach()), "att_r2l": float(out["loss_att_r2l"].detach()),
            "l2r_accuracy": float(out["l2r_accuracy"])}


def f32(t):
    return t.detach().cpu().to(torch.float32).numpy()


def put(g, name, arr):
    arr = np.asarray(arr)
    if arr.ndim == 0 or arr.nbytes < 2048:
        g.create_dataset(name, data=arr)  # small: contiguous, no chunk index
    else:
        g.create_dataset(name, data=arr, compression="gzip", compression_opts=9,
                         shuffle=True)


def forward_with_routing(model, inputs, chunk, left):
    """Forward pass that also records, per MoE layer, the top-k expert ids,
    their weights and the router-logit gap between the k-th and (k+1)-th
    expert, for all B*L tokens (padded ones included)."""
    feats, feats_lens, text, text_lens = inputs[:4]
    routing = {}

    def hook(mname):
        def f(mod, args, _out):
            x = args[0]
            with torch.no_grad():
                x2 = x.reshape(-1, x.size(-1))
                w, sel = mod.route(x2)
                srt = mod.gate(x2).sort(dim=1, descending=True).values
                k = mod.n_expert_activated
                if k < mod.n_expert:
                    gap = srt[:, k - 1] - srt[:, k]
                else:
                    gap = torch.full_like(srt[:, 0], float("inf"))
            routing[mname] = (sel, w, x.size(1), gap)
        return f

    handles = [mod.register_forward_hook(hook(n)) for n, mod in model.named_modules()
               if isinstance(mod, ref.MoEFFNLayer)]
    try:
        out = model(feats, feats_lens, text, text_lens, chunk, left)
    finally:
        for h in handles:
            h.remove()
    return out, routing


def check_routing(name, label, cfg, out, routing, text_lens, min_tokens):
    for mname, (sel, w, L, gap) in routing.items():
        lens = out["encoder_out_lens"] if mname.startswith("encoder") else text_lens + 1
        valid = (torch.arange(L)[None, :] < lens[:, None]).reshape(-1)
        conf = cfg["encoder_conf" if mname.startswith("encoder") else "decoder_conf"]
        cnt = [int((sel[valid] == e).sum()) for e in range(conf["n_expert"])]
        min_gap = float(gap[valid].min())
        print(f"[{name}] {label} {mname}: valid tokens per expert {cnt}, "
              f"min top-k logit gap {min_gap:.2e}")
        assert min(cnt) >= min_tokens, (mname, cnt)
        assert min_gap >= MIN_TOPK_GAP, (mname, min_gap)


def run_one(h5, name: str, inputs):
    feats, feats_lens, text, text_lens, cmvn_mean, cmvn_istd = inputs
    cfg = make_config("moe" if name == "moe" else "position_wise_feed_forward")
    model = build_model(name, cfg, cmvn_mean, cmvn_istd)
    model.train()  # dropouts are 0; conv norm is layer_norm, so mode is irrelevant

    # --- fp32, static chunk 4: forward + backward (record MoE routing)
    model.zero_grad(set_to_none=True)
    out, routing = forward_with_routing(model, inputs, CHUNK, LEFT_CHUNKS)
    out["loss"].backward()
    check_routing(name, "chunk4", cfg, out, routing, text_lens, MIN_TOKENS_PER_EXPERT)
    parts = loss_parts(out)

    # --- fp32, full context (static_chunk_size 0 -> pad mask only)
    with torch.no_grad():
        model.encoder.static_chunk_size = 0
        out_full, routing_full = forward_with_routing(model, inputs, -1, -1)
        model.encoder.static_chunk_size = CHUNK
    check_routing(name, "full", cfg, out_full, routing_full, text_lens, 0)
    parts_full = loss_parts(out_full)

    # --- fp64, static chunk 4 (noise-level reference)
    m64 = copy.deepcopy(model).double()
    with torch.no_grad():
        out64 = m64(feats.double(), feats_lens, text, text_lens, CHUNK, LEFT_CHUNKS)
    parts64 = loss_parts(out64)

    g = h5.create_group(name)
    g.attrs["config_json"] = json.dumps(cfg, sort_keys=True)
    g.attrs["fixture_version"] = FIXTURE_VERSION
    g.attrs["torch_version"] = str(torch.__version__)
    gi = g.create_group("inputs")
    put(gi, "feats", f32(feats))
    put(gi, "feats_lengths", feats_lens.numpy().astype(np.int32))
    put(gi, "text", text.numpy().astype(np.int32))
    put(gi, "text_lengths", text_lens.numpy().astype(np.int32))

    gp, gg = g.create_group("params"), g.create_group("grads")
    sd = model.state_dict()
    trainable = dict(model.named_parameters())
    for k, v in sd.items():
        put(gp, k, f32(v) if v.is_floating_point() else v.numpy().astype(np.int32))
    for k, p in trainable.items():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        put(gg, k, f32(grad))

    for grp_name, pr in (("loss", parts), ("loss_full_context", parts_full),
                         ("loss64", parts64)):
        gl = g.create_group(grp_name)
        for k, v in pr.items():
            put(gl, k, np.float64(v))

    go = g.create_group("outputs")
    put(go, "encoder_out", f32(out["encoder_out"]))
    put(go, "encoder_out_lens", out["encoder_out_lens"].numpy().astype(np.int32))
    put(go, "ctc_log_probs", f32(out["ctc_log_probs"]))
    put(go, "chunk_mask", out["chunk_mask"].numpy().astype(np.uint8))
    if routing:
        gr = go.create_group("moe_routing")
        for mname, (sel, w, L, _gap) in routing.items():
            # rows = B*L tokens (padded positions included), cols = k slots,
            # in torch.topk order (descending logit)
            put(gr, mname + ".selected", sel.numpy().astype(np.int32))
            put(gr, mname + ".weights", f32(w))

    n_params = sum(p.numel() for p in model.parameters())
    print(f"[{name}] params={n_params} T'={out['encoder_out'].size(1)} "
          f"enc_lens={out['encoder_out_lens'].tolist()}")
    for label, pr in (("chunk4 fp32", parts), ("full   fp32", parts_full),
                      ("chunk4 fp64", parts64)):
        print(f"[{name}] {label}: " + " ".join(f"{k}={v:.8f}" for k, v in pr.items()))
    return parts, parts64


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/u2pp_parity.h5")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)

    inputs = make_inputs()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with h5py.File(args.out, "w", libver=("v110", "v110")) as h5:
        h5.attrs["fixture_version"] = FIXTURE_VERSION
        h5.attrs["generator"] = "tests/reference/make_parity_fixture.py"
        for name in ("dense", "moe"):
            run_one(h5, name, inputs)
    size = os.path.getsize(args.out)
    print(f"wrote {args.out}: {size} bytes ({size / 2**20:.3f} MiB)")
    if size > 2 * 1024 * 1024:
        print("ERROR: fixture exceeds 2 MB", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
