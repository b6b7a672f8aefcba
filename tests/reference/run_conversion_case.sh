#!/usr/bin/env bash
# tests/reference/run_conversion_case.sh PYTHON OUT_DIR — builds the WeNet-style checkpoint of
# make_conversion_case.py and converts it with tools/convert_wenet.py (the setup step of the `torch`
# test label; needs torch and h5py in PYTHON's environment).
set -euo pipefail
python=$1
out=$2
root=$(cd "$(dirname "$0")/../.." && pwd)
"$python" "$root/tests/reference/make_conversion_case.py" --out "$out"
"$python" "$root/tools/convert_wenet.py" --checkpoint "$out/final.pt" --config "$out/train.yaml" --out "$out/model.h5"
