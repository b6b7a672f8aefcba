#!/usr/bin/env python3
"""tools/convert_wenet.py — a WeNet U2++ (MoE) checkpoint to a moe-asr weights file.

    python3 tools/convert_wenet.py --checkpoint exp/final.pt --config exp/train.yaml --out model.h5

Reads the PyTorch state dict (a plain state dict, or one under a "model" / "state_dict" key), and
writes every tensor as float32 under /params/<its WeNet name> in an HDF5 file, with the train.yaml
text as the `config` attribute (moe-asr reads the model shape from it, see trainer/wenet_yaml.h).
moe-asr uses WeNet's state-dict names and PyTorch shapes, so the conversion is a copy; BatchNorm's
num_batches_tracked counters are dropped (moe-asr does not use them). moe-asr checks on load that
every tensor its configured model needs is present with the right shape.
Needs torch and h5py (pip install torch h5py).
"""
import argparse
import sys

import h5py
import numpy as np
import torch


def load_state_dict(path):
    obj = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        sys.exit(f"convert_wenet.py: {path} does not hold a state dict")
    return obj


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="WeNet .pt checkpoint (state dict)")
    ap.add_argument("--config", required=True, help="the run's train.yaml")
    ap.add_argument("--out", required=True, help="moe-asr weights file (.h5) to write")
    args = ap.parse_args()

    state = load_state_dict(args.checkpoint)
    with open(args.config, encoding="utf-8") as f:
        config_text = f.read()
    written = 0
    tmp = args.out + ".tmp"
    with h5py.File(tmp, "w") as h5:
        params = h5.create_group("params")
        for name, tensor in state.items():
            if name.endswith("num_batches_tracked"):
                continue
            if not torch.is_tensor(tensor):
                sys.exit(f"convert_wenet.py: entry {name} of {args.checkpoint} is not a tensor")
            params.create_dataset(name, data=tensor.detach().to(torch.float32).cpu().numpy().astype(np.float32))
            written += 1
        h5.attrs["format"] = np.bytes_("moe-asr-weights")
        h5.attrs["format_version"] = np.bytes_("1")
        h5.attrs["config"] = np.bytes_(config_text.encode("utf-8"))
    import os
    os.replace(tmp, args.out)
    print(f"convert_wenet.py: {written} tensors from {args.checkpoint} -> {args.out}")


if __name__ == "__main__":
    main()
