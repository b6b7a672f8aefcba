#!/usr/bin/env bash
# tests/e2e/demo_quick_test.sh MOE_ASR_BINARY OUT_DIR — runs `scripts/demo.sh --quick` with the given
# moe-asr binary and checks what a newcomer would look at: the RESULTS table exists and has a row for
# each of the four decoding modes with numbers in both chunk columns, the cv loss fell (last cv run
# below the first), and the loss-curve PNG exists.
set -euo pipefail
binary=$1
out=$2
root=$(cd "$(dirname "$0")/../.." && pwd)
rm -rf "$out"
MOEASR_DEMO_BINARY="$binary" "$root/scripts/demo.sh" --quick --out "$out"

results="$out/RESULTS.md"
[[ -s "$results" ]] || { echo "FAIL: $results missing or empty"; exit 1; }
for mode in ctc_greedy_search ctc_prefix_beam_search attention attention_rescoring; do
  row=$(grep "^| $mode |" "$results" || true)
  [[ -n "$row" ]] || { echo "FAIL: no row for $mode in $results"; exit 1; }
  # Four numeric cells: full CER, full WER, chunk-16 CER, chunk-16 WER.
  cells=$(echo "$row" | tr '|' '\n' | sed 's/ //g' | grep -cE '^[0-9]+(\.[0-9]+)?$' || true)
  ((cells == 4)) || { echo "FAIL: row for $mode has $cells numeric cells, want 4: $row"; exit 1; }
done
[[ -s "$out/loss_curves.png" ]] || { echo "FAIL: $out/loss_curves.png (training and cv loss curves) missing"; exit 1; }
log="$out/exp/log/train.rank000.log"
# The cv loss (a fixed set) must fall; the per-interval training loss is too noisy to compare (it is a
# sum per utterance and depends on which utterances a batch drew).
first=$(grep -oE "CV \| epoch [0-9]+ step [0-9]+ \| cv_loss [0-9.]+" "$log" | head -n 1 | awk '{print $NF}')
last=$(grep -oE "CV \| epoch [0-9]+ step [0-9]+ \| cv_loss [0-9.]+" "$log" | tail -n 1 | awk '{print $NF}')
count=$(grep -cE "CV \| epoch [0-9]+ step [0-9]+ \| cv_loss" "$log" || true)
((count >= 2)) || { echo "FAIL: $count cv run(s) in $log, need at least 2 to see the loss fall"; exit 1; }
python3 -c "import sys; f, l = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if l < f else 1)" "$first" "$last" ||
  { echo "FAIL: cv loss did not fall ($first -> $last)"; exit 1; }
echo "demo --quick: RESULTS has all four modes; cv loss $first -> $last over $count cv runs"
