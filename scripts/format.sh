#!/usr/bin/env bash
# scripts/format.sh — applies .clang-format to moe-asr's C++/CUDA sources.
#   scripts/format.sh          rewrite files in place
#   scripts/format.sh --check  list files that differ and exit 1 (no changes made)
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"
mapfile -t files < <(git ls-files '*.h' '*.cc' '*.cu' '*.cuh' | grep -v '^third_party/' || true)
((${#files[@]})) || exit 0
if [[ "$mode" == "--check" ]]; then
  bad=0
  for f in "${files[@]}"; do
    if ! clang-format --style=file --dry-run -Werror "$f" >/dev/null 2>&1; then echo "needs formatting: $f"; bad=1; fi
  done
  exit $bad
fi
clang-format --style=file -i "${files[@]}"
