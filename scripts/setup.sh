#!/usr/bin/env bash
# scripts/setup.sh — installs every Debian package moe-asr's build, tests and demo need.
# Idempotent: packages already present are not touched. Quiet on success; on failure it names
# the packages that could not be installed and shows apt's own output.
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build pkg-config clang-format
  # parallel runtime
  openmpi-bin libopenmpi-dev
  # storage, config, schema
  libhdf5-dev hdf5-tools libprotobuf-dev protobuf-compiler libyaml-cpp-dev
  # command line, tests
  libboost-program-options-dev libgtest-dev libgmock-dev
  # Boost headers: boost/crc.hpp gives the CRC-32C of TensorBoard's TFRecord framing (Debian 12 has no
  # libcrc32c-dev)
  libboost-dev
  # math
  libopenblas-dev libfftw3-dev
  # audio, tokenizer, checksums, JSON (manifests, CMVN files)
  libsndfile1-dev libsamplerate0-dev libsentencepiece-dev sentencepiece libssl-dev nlohmann-json3-dev
  # the spoken test/demo corpus: speech synthesizers, sox, public-domain texts
  espeak-ng flite sox fortunes-min
  # the demo's loss-curve plot
  python3-matplotlib
  # helpers the scripts use
  python3 jq
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "setup.sh: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi

log=$(mktemp /tmp/moeasr-setup.XXXXXX.log)
echo "setup.sh: installing ${#missing[@]} Debian package(s): ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get update -q >"$log" 2>&1; then
  echo "setup.sh: 'apt-get update' failed; check the network to the Debian mirror. Log:" >&2
  tail -n 30 "$log" >&2
  exit 1
fi
if ! $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$log" 2>&1; then
  echo "setup.sh: 'apt-get install' failed for: ${missing[*]}" >&2
  echo "setup.sh: apt's output (last 40 lines of $log):" >&2
  tail -n 40 "$log" >&2
  exit 1
fi
still=()
for p in "${missing[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || still+=("$p")
done
if ((${#still[@]} > 0)); then
  echo "setup.sh: apt reported success but these are still missing: ${still[*]} (log: $log)" >&2
  exit 1
fi
rm -f "$log"
