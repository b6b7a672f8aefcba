#!/usr/bin/env bash
# scripts/test.sh — the test command: installs what is missing (scripts/setup.sh), configures, builds
# on all cores, and runs every CTest label except `gpu`. Prints CTest's summary; the exit code is the
# verdict.
#   scripts/test.sh              RelWithDebInfo build in build/ (CUDA backend compiled when nvcc exists)
#   scripts/test.sh --sanitize   ASan + UBSan build in build-sanitize/ (CPU backend only); every label but
#                                gpu and e2e (the whole-pipeline jobs would take most of CI's time under
#                                ASan; everything they run is covered by the other labels)
#   scripts/test.sh --with-torch also the tests that need PyTorch (label torch: the WeNet checkpoint
#                                converter); installs torch, numpy and h5py from PyPI into build-torch/venv
#   scripts/test.sh -L gradcheck extra arguments go to ctest (e.g. a label or -R regex)
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=build
cmake_args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOEASR_CUDA=AUTO)
ctest_extra=()
exclude='^gpu$'
with_torch=0
while (($#)); do
  case "$1" in
    --sanitize)
      build_dir=build-sanitize
      # CUDA off: its runtime is not built for ASan, and gpu tests are not run here anyway.
      cmake_args=(-DCMAKE_BUILD_TYPE=Debug -DMOEASR_CUDA=OFF -DMOEASR_SANITIZE=address,undefined)
      export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:${ASAN_OPTIONS:-}"
      export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
      exclude='^(gpu|e2e)$'
      ;;
    --with-torch)
      build_dir=build-torch
      with_torch=1
      ;;
    *) ctest_extra+=("$1") ;;
  esac
  shift
done

scripts/setup.sh

if ((with_torch)); then
  mkdir -p "$build_dir"
  venv="$build_dir/venv"
  if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import torch, h5py, numpy" 2>/dev/null; then
    echo "== installing torch, numpy, h5py into $venv (PyPI; large download)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch numpy h5py || { echo "test.sh: pip install torch failed" >&2; exit 1; }
  fi
  cmake_args+=(-DMOEASR_TORCH_TESTS=ON "-DMOEASR_PYTHON=$(cd "$venv" && pwd)/bin/python")
fi

jobs=$(nproc 2>/dev/null || echo 2)
# Open MPI refuses to run as root (CI runs as root) unless told; more ranks than cores need
# --oversubscribe, which the mpi tests pass themselves.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none

echo "== configure ($build_dir)"
cmake -S . -B "$build_dir" -G Ninja "${cmake_args[@]}" >"$build_dir.configure.log" 2>&1 || {
  cat "$build_dir.configure.log" >&2
  echo "test.sh: configure failed (log above, also in $build_dir.configure.log)" >&2
  exit 1
}
grep -E "moe-asr:" "$build_dir.configure.log" || true
echo "== build (-j$jobs)"
if ! cmake --build "$build_dir" -j "$jobs" >"$build_dir.build.log" 2>&1; then
  grep -E -B2 -A12 "error|FAILED" "$build_dir.build.log" | head -n 120 >&2
  echo "test.sh: build failed (full log: $build_dir.build.log)" >&2
  exit 1
fi

# Every CPU label that has code behind it must have tests: a label with none is a failure, not a pass.
for label in unit gradcheck; do
  count=$(ctest --test-dir "$build_dir" -N -L "^${label}\$" | sed -n 's/^Total Tests: //p')
  if [[ -z "$count" || "$count" -eq 0 ]]; then
    echo "test.sh: no tests carry the label '$label'; refusing to report success" >&2
    exit 1
  fi
done

echo "== ctest (every label but ${exclude//[\^\$()]/})"
ctest --test-dir "$build_dir" -LE "$exclude" -j "$jobs" --output-on-failure --timeout 900 "${ctest_extra[@]}"
