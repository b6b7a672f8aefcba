#!/usr/bin/env python3
"""Self-checks for tests/reference/u2pp_reference.py (no pytest needed).

    /work/venv-torch/bin/python tests/reference/test_reference_selfcheck.py
"""

import copy
import os
import sys

import torch
from torch.func import functional_call

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import u2pp_reference as ref  # noqa: E402
import make_parity_fixture as fx  # noqa: E402


def tiny_model(mlp_type="moe", dtype=torch.float64, seed=1233):
    cfg = fx.make_config(mlp_type)
    feats, fl, text, tl, cm, ci = fx.make_inputs()
    torch.manual_seed(seed)
    model = fx.build_model("moe" if mlp_type == "moe" else "dense", cfg, cm, ci)
    return model.to(dtype), cfg, (feats.to(dtype), fl, text, tl)


def test_moe_identical_experts_equals_dense():
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        for act in ("swish", "relu"):
            for k in (4, 2, 1):
                dense = ref.PositionwiseFeedForward(32, 64, 0.0, act, True).to(dtype)
                moe = ref.MoEFFNLayer(32, 64, 0.0, act, True, n_expert=4,
                                      n_expert_activated=k).to(dtype)
                for e in moe.experts:
                    e.load_state_dict(dense.state_dict())
                x = torch.randn(3, 7, 32, dtype=dtype)
                tol = 1e-5 if dtype == torch.float32 else 1e-12
                diff = (moe(x) - dense(x)).abs().max().item()
                assert diff < tol, (dtype, act, k, diff)
    print("ok  MoE(k=E or any k, identical experts) == dense FFN")


def test_moe_routing_semantics():
    """Explicit per-token check: top-k of raw logits, softmax over the k."""
    torch.manual_seed(1)
    moe = ref.MoEFFNLayer(8, 16, 0.0, "swish", True, n_expert=4,
                          n_expert_activated=2).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    y = moe(x)
    xf = x.reshape(-1, 8)
    logits = moe.gate(xf)
    for n in range(xf.size(0)):
        order = torch.argsort(logits[n], descending=True)[:2]
        w = torch.softmax(logits[n, order], dim=0)
        ref_y = sum(w[j] * moe.experts[int(order[j])](xf[n]) for j in range(2))
        assert torch.allclose(y.reshape(-1, 8)[n], ref_y, atol=1e-12)
    assert moe.gate.bias is None
    print("ok  MoE routing = top-k raw logits, softmax over selected")


def test_chunk_mask():
    T, F = True, False
    want = torch.tensor([[T, T, F, F, F],
                         [T, T, F, F, F],
                         [T, T, T, T, F],
                         [T, T, T, T, F],
                         [T, T, T, T, T]])
    assert torch.equal(ref.subsequent_chunk_mask(5, 2, -1), want)
    want_left0 = torch.tensor([[T, T, F, F, F],
                               [T, T, F, F, F],
                               [F, F, T, T, F],
                               [F, F, T, T, F],
                               [F, F, F, F, T]])
    assert torch.equal(ref.subsequent_chunk_mask(5, 2, 0), want_left0)
    # static chunk + pad mask: keys beyond the length are masked in every row
    xs = torch.zeros(2, 5, 3)
    pad = ~ref.make_pad_mask(torch.tensor([5, 3]), 5).unsqueeze(1)
    m = ref.add_optional_chunk_mask(xs, pad, False, False, 0, 2, -1)
    assert m.shape == (2, 5, 5)
    assert torch.equal(m[0], want)
    assert torch.equal(m[1], want & torch.tensor([T, T, T, F, F]))
    # full context: the (B,1,L) pad mask is returned unchanged
    m_full = ref.add_optional_chunk_mask(xs, pad, False, False, 0, 0, -1)
    assert torch.equal(m_full, pad)
    # dynamic mode with explicit decoding chunk equals static mode
    m_dyn = ref.add_optional_chunk_mask(xs, pad, True, False, 2, 0, -1)
    assert torch.equal(m_dyn, m)
    print("ok  chunk masks (L=5, chunk 2; left 0; pad; full; dynamic)")


def test_conv_module():
    torch.manual_seed(3)
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    mask = ~ref.make_pad_mask(torch.tensor([9, 6]), 9).unsqueeze(1)
    for norm in ("layer_norm", "batch_norm"):
        causal = ref.ConvolutionModule(8, 4, "swish", norm, causal=True).double().eval()
        y, cache = causal(x, mask)
        assert y.shape == x.shape and cache.shape == (2, 8, 3)
        assert (y[1, 6:] == 0).all()  # padded frames zeroed
        x2 = x.clone()
        x2[:, 5:] += 1.0
        y2, _ = causal(x2, mask)
        assert (y[:, :5] - y2[:, :5]).abs().max() < 1e-12  # no look-ahead
        # causal padding sits BEFORE pointwise_conv1: it equals prepending 3 zero
        # input frames (as a zero cnn_cache) -- not zeros of the GLU output
        y_cache, _ = causal(x[:1], None, cache=torch.zeros(1, 8, 3, dtype=torch.float64))
        assert (y_cache[0] - y[0]).abs().max() < 1e-12
        if norm == "layer_norm":
            glu0 = torch.nn.functional.glu(causal.pointwise_conv1.bias.view(1, 16, 1), 1)
            assert glu0.abs().max() > 0  # so a post-GLU zero pad would differ
        sym = ref.ConvolutionModule(8, 5, "swish", norm, causal=False).double().eval()
        ys, _ = sym(x, mask)
        assert ys.shape == x.shape
    print("ok  conv module (causal / symmetric, layer_norm / batch_norm)")


def test_dynamic_chunk_smoke():
    xs = torch.zeros(1, 40, 3)
    pad = torch.ones(1, 1, 40, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    sizes = set()
    for _ in range(50):
        m = ref.add_optional_chunk_mask(xs, pad, True, False, 0, 0, -1, generator=g)
        first_row = int(m[0, 0].sum())
        sizes.add(first_row)
        assert 1 <= first_row <= 40
    assert 40 in sizes and len(sizes) > 2
    print("ok  dynamic chunk sampling smoke test")


def test_targets():
    ys = torch.tensor([[5, 6, 7], [8, 9, -1]])
    lens = torch.tensor([3, 2])
    sos = eos = 39
    ys_in, ys_out = ref.add_sos_eos(ys, sos, eos, -1)
    assert ys_in.tolist() == [[39, 5, 6, 7], [39, 8, 9, 39]]
    assert ys_out.tolist() == [[5, 6, 7, 39], [8, 9, 39, -1]]
    r = ref.reverse_pad_list(ys, lens, -1)
    assert r.tolist() == [[7, 6, 5], [9, 8, -1]]
    r_in, r_out = ref.add_sos_eos(r, sos, eos, -1)
    assert r_in.tolist() == [[39, 7, 6, 5], [39, 9, 8, 39]]
    assert r_out.tolist() == [[7, 6, 5, 39], [9, 8, 39, -1]]
    print("ok  L2R / R2L targets")


def test_label_smoothing():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    tgt = torch.tensor([[1, 2, -1], [0, 5, 4]])
    got = ref.label_smoothing_loss(x, tgt, 0.1, False)
    lp = torch.log_softmax(x, -1)
    tot = 0.0
    for b in range(2):
        for t in range(3):
            if tgt[b, t] < 0:
                continue
            q = torch.full((6,), 0.1 / 5, dtype=torch.float64)
            q[tgt[b, t]] = 0.9
            tot += float((q * (q.log() - lp[b, t])).sum())
    assert abs(float(got) - tot / 2) < 1e-12
    print("ok  label smoothing KL (sum / B)")


def test_state_dict_names():
    model, _, _ = tiny_model("moe", torch.float32)
    sd = model.state_dict()
    names = set(sd)
    must = [
        "encoder.global_cmvn.mean", "encoder.global_cmvn.istd",
        "encoder.embed.conv.0.weight", "encoder.embed.conv.0.bias",
        "encoder.embed.conv.2.weight", "encoder.embed.out.0.weight",
        "encoder.encoders.0.self_attn.linear_q.weight",
        "encoder.encoders.0.self_attn.linear_k.bias",
        "encoder.encoders.0.self_attn.linear_out.weight",
        "encoder.encoders.0.self_attn.linear_pos.weight",
        "encoder.encoders.0.self_attn.pos_bias_u",
        "encoder.encoders.0.self_attn.pos_bias_v",
        "encoder.encoders.0.feed_forward_macaron.gate.weight",
        "encoder.encoders.0.feed_forward_macaron.experts.3.w_1.weight",
        "encoder.encoders.0.feed_forward.experts.0.w_2.bias",
        "encoder.encoders.0.conv_module.pointwise_conv1.weight",
        "encoder.encoders.0.conv_module.depthwise_conv.weight",
        "encoder.encoders.0.conv_module.norm.weight",
        "encoder.encoders.0.conv_module.pointwise_conv2.weight",
        "encoder.encoders.0.norm_ff.weight", "encoder.encoders.0.norm_mha.weight",
        "encoder.encoders.0.norm_ff_macaron.weight",
        "encoder.encoders.0.norm_conv.weight", "encoder.encoders.0.norm_final.weight",
        "encoder.after_norm.weight",
        "decoder.left_decoder.embed.0.weight",
        "decoder.left_decoder.decoders.0.self_attn.linear_q.weight",
        "decoder.left_decoder.decoders.0.src_attn.linear_v.weight",
        "decoder.left_decoder.decoders.0.feed_forward.gate.weight",
        "decoder.left_decoder.decoders.0.feed_forward.experts.2.w_1.bias",
        "decoder.left_decoder.decoders.0.norm1.weight",
        "decoder.left_decoder.decoders.0.norm2.bias",
        "decoder.left_decoder.decoders.0.norm3.weight",
        "decoder.left_decoder.after_norm.weight",
        "decoder.left_decoder.output_layer.weight",
        "decoder.right_decoder.decoders.0.self_attn.linear_q.weight",
        "decoder.right_decoder.output_layer.bias",
        "ctc.ctc_lo.weight", "ctc.ctc_lo.bias",
    ]
    missing = [n for n in must if n not in names]
    assert not missing, missing
    assert "encoder.encoders.0.feed_forward_macaron.gate.bias" not in names
    assert "encoder.encoders.0.self_attn.linear_pos.bias" not in names
    assert not any(".pe" in n for n in names), "PE tables must not be in state_dict"
    shapes = {
        "encoder.encoders.0.conv_module.pointwise_conv1.weight": (64, 32, 1),
        "encoder.encoders.0.conv_module.depthwise_conv.weight": (32, 1, 5),
        "encoder.encoders.0.conv_module.pointwise_conv2.weight": (32, 32, 1),
        "encoder.embed.out.0.weight": (32, 32 * 19),
        "encoder.embed.conv.0.weight": (32, 1, 3, 3),
        "encoder.encoders.0.self_attn.pos_bias_u": (4, 8),
        "encoder.encoders.0.feed_forward.gate.weight": (4, 32),
        "encoder.encoders.0.feed_forward.experts.3.w_1.weight": (64, 32),
    }
    for n, s in shapes.items():
        assert tuple(sd[n].shape) == s, (n, tuple(sd[n].shape), s)
    dense, _, _ = tiny_model("position_wise_feed_forward", torch.float32)
    dn = set(dense.state_dict())
    assert "encoder.encoders.0.feed_forward_macaron.w_1.weight" in dn
    assert "decoder.right_decoder.decoders.0.feed_forward.w_2.bias" in dn
    # strict round trip
    m2, _, _ = tiny_model("moe", torch.float32, seed=7)
    m2.load_state_dict(sd, strict=True)
    print(f"ok  state_dict names ({len(names)} moe entries, {len(dn)} dense)")


def test_causality_under_chunk_mask():
    """With chunk 4 (causal conv, all history), encoder frames of chunks 0..1
    (subsampled 0..7, input frames 0..34) must not depend on input frames >= 35."""
    model, _, (feats, fl, text, tl) = tiny_model("moe", torch.float64)
    with torch.no_grad():
        a, _ = model.encoder(feats, fl, 4, -1)
        f2 = feats.clone()
        f2[0, 35:] += torch.randn_like(f2[0, 35:])
        b, _ = model.encoder(f2, fl, 4, -1)
        assert (a[0, :8] - b[0, :8]).abs().max().item() < 1e-12
        assert (a[0, 8:] - b[0, 8:]).abs().max().item() > 1e-3
        # other utterances untouched (up to GEMM rounding: the MoE gathers rows of
        # the whole batch); padding does not leak into valid frames
        assert (a[1:] - b[1:]).abs().max().item() < 1e-12
        f3 = feats.clone()
        f3[2, 31:] = 5.0  # change padding of utt 2 (length 31)
        c, mask = model.encoder(f3, fl, 4, -1)
        n = int(mask[2].sum())
        assert (a[2, :n] - c[2, :n]).abs().max().item() < 1e-12
    print("ok  chunk-4 causality and padding independence of the encoder")


def test_gradcheck_full_loss():
    model, _, (feats, fl, text, tl) = tiny_model("moe", torch.float64)
    names = [
        "encoder.encoders.0.self_attn.pos_bias_u",
        "encoder.encoders.1.feed_forward.gate.weight",
        "encoder.encoders.0.feed_forward_macaron.experts.2.w_2.bias",
        "encoder.encoders.1.conv_module.depthwise_conv.weight",
        "encoder.encoders.0.conv_module.norm.bias",
        "decoder.right_decoder.decoders.0.feed_forward.gate.weight",
        "decoder.left_decoder.decoders.0.src_attn.linear_k.bias",
        "ctc.ctc_lo.bias",
        "encoder.after_norm.weight",
    ]
    params = dict(model.named_parameters())
    inputs = tuple(params[n].detach().clone().requires_grad_(True) for n in names)

    def f(*ps):
        out = functional_call(model, dict(zip(names, ps)),
                              (feats, fl, text, tl, 4, -1))
        return out["loss"]

    ok = torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)
    assert ok
    n_el = sum(p.numel() for p in inputs)
    print(f"ok  gradcheck (double) of total loss w.r.t. {len(names)} params ({n_el} elements)")


def test_fixture_roundtrip():
    """If the fixture exists, reload params from it and reproduce the losses."""
    path = os.path.join(HERE, "..", "fixtures", "u2pp_parity.h5")
    if not os.path.exists(path):
        print("skip fixture round trip (no fixture)")
        return
    import h5py
    import json
    with h5py.File(path, "r") as h5:
        for name in ("dense", "moe"):
            g = h5[name]
            cfg = json.loads(g.attrs["config_json"])
            model = ref.U2ppModel(cfg["input_dim"], cfg["vocab_size"], cfg["encoder_conf"],
                                  cfg["decoder_conf"], cfg["model_conf"])
            sd = {k: torch.from_numpy(g["params"][k][()]) for k in g["params"]}
            sd = {k: (v.long() if k.endswith("num_batches_tracked") else v)
                  for k, v in sd.items()}
            model.load_state_dict(sd, strict=True)
            feats = torch.from_numpy(g["inputs/feats"][()])
            fl = torch.from_numpy(g["inputs/feats_lengths"][()]).long()
            text = torch.from_numpy(g["inputs/text"][()]).long()
            tl = torch.from_numpy(g["inputs/text_lengths"][()]).long()
            chunk = cfg["fixture"]["decoding_chunk_size"]
            out = model(feats, fl, text, tl, chunk, -1)
            out["loss"].backward()
            loss = float(out["loss"].detach())
            assert abs(loss - float(g["loss/total"][()])) < 1e-5
            assert abs(float(out["loss_ctc"].detach()) - float(g["loss/ctc"][()])) < 1e-5
            assert abs(loss - float(g["loss64/total"][()])) < 1e-4
            assert torch.equal(out["chunk_mask"].to(torch.uint8),
                               torch.from_numpy(g["outputs/chunk_mask"][()]))
            enc = torch.from_numpy(g["outputs/encoder_out"][()])
            assert (out["encoder_out"].detach() - enc).abs().max().item() < 1e-5
            worst = 0.0
            for k, p in model.named_parameters():
                want = torch.from_numpy(g["grads"][k][()])
                worst = max(worst, (p.grad - want).abs().max().item())
            assert worst < 1e-5, worst
            assert set(g["grads"]) == {k for k, _ in model.named_parameters()}
            assert set(g["params"]) == set(model.state_dict())
    print("ok  fixture reload reproduces losses, encoder_out and grads")


def main():
    torch.set_num_threads(1)
    test_moe_identical_experts_equals_dense()
    test_moe_routing_semantics()
    test_chunk_mask()
    test_conv_module()
    test_dynamic_chunk_smoke()
    test_targets()
    test_label_smoothing()
    test_state_dict_names()
    test_causality_under_chunk_mask()
    test_gradcheck_full_loss()
    test_fixture_roundtrip()
    print("ALL SELF-CHECKS PASSED")


if __name__ == "__main__":
    main()
