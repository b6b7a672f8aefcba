#!/usr/bin/env python3
"""tests/reference/make_conversion_case.py — a WeNet-style checkpoint for the converter test.

Builds the reference U2++ MoE model of make_parity_fixture.py (WeNet state-dict names), saves it the
way WeNet does (torch.save(model.state_dict()) plus train.yaml), and writes case.h5 with one batch and
the reference's loss parts at full context. The C++ side converts nothing itself: the test runs
tools/convert_wenet.py on final.pt and checks that moe-asr, loading the converted file and the yaml,
gives the same loss.
    python3 tests/reference/make_conversion_case.py --out DIR
"""
import argparse
import json
import os
import sys

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_parity_fixture as fx  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    feats, feats_lens, text, text_lens, cmvn_mean, cmvn_istd = fx.make_inputs()
    cfg = fx.make_config("moe")
    model = fx.build_model("moe", cfg, cmvn_mean, cmvn_istd)
    model.eval()
    with torch.no_grad():
        out = model(feats, feats_lens, text, text_lens, decoding_chunk_size=-1, num_decoding_left_chunks=-1)
    torch.save(model.state_dict(), os.path.join(args.out, "final.pt"))
    yaml_cfg = {k: v for k, v in cfg.items() if k != "fixture"}
    with open(os.path.join(args.out, "train.yaml"), "w") as f:
        json.dump(yaml_cfg, f, indent=2)  # JSON is YAML
    with h5py.File(os.path.join(args.out, "case.h5"), "w") as h5:
        h5["feats"] = feats.numpy().astype(np.float32)
        h5["feats_lengths"] = feats_lens.numpy().astype(np.int32)
        h5["text"] = text.numpy().astype(np.int32)
        h5["text_lengths"] = text_lens.numpy().astype(np.int32)
        for k, v in fx.loss_parts(out).items():
            h5[f"loss/{k}"] = np.float64(v)
    print("make_conversion_case.py: wrote", args.out, fx.loss_parts(out))


if __name__ == "__main__":
    main()
