#!/usr/bin/env bash
# tests/e2e/tts_corpus_test.sh OUT_DIR — scripts/make_tts_corpus.sh with --splice: the same seed gives
# byte-identical corpora; spliced sentences occur only in train (about the asked fraction of it), are
# none of the dev/test sentences, and are each made of whole words of training sentences; dev and test
# share no sentence with train; bad --splice values are refused naming the flag.
set -euo pipefail
out=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
tool="$root/scripts/make_tts_corpus.sh"
rm -rf "$out"
mkdir -p "$out"
"$tool" --out "$out/a" --utts 80 --seed 5 --splice 0.5 >/dev/null
"$tool" --out "$out/b" --utts 80 --seed 5 --splice 0.5 >/dev/null
cmp "$out/a/utts.tsv" <(sed "s|$out/b/|$out/a/|g" "$out/b/utts.tsv") ||
  { echo "FAIL: the same seed gave different plans"; exit 1; }
for wav in "$out"/a/wav/train/*.wav; do
  cmp -s "$wav" "$out/b/wav/train/$(basename "$wav")" || { echo "FAIL: $wav differs between two runs"; exit 1; }
done
python3 - "$out/a" <<'PY'
import sys
out = sys.argv[1]
rows = [l.rstrip("\n").split("\t") for l in open(out + "/utts.tsv") if not l.startswith("#")]
train = [r for r in rows if r[1] == "train"]
held_out = {r[12] for r in rows if r[1] != "train"}
spliced = [r for r in train if r[13] == "spliced"]
whole = {r[12] for r in train if r[13] == "sentence"}
assert all(r[13] == "sentence" for r in rows if r[1] != "train"), "a dev/test utterance is spliced"
assert 0.3 * len(train) <= len(spliced) <= 0.7 * len(train), "%d of %d train utterances spliced, asked 0.5" % (
    len(spliced), len(train))
assert not held_out & {r[12] for r in train}, "a dev/test sentence is read in train"
# Every spliced transcript is new, 3-25 words, and its words are the words of training sentences. (The
# parts come from the whole training pool, of which this small corpus reads only some sentences.)
for r in spliced:
    words = r[12].split()
    assert 3 <= len(words) <= 25, r[12]
    assert r[12] not in whole, "spliced sentence equals a whole one: " + r[12]
print("tts_corpus_test: %d train (%d spliced), %d dev/test" % (len(train), len(spliced), len(rows) - len(train)))
PY
for bad in 1 1.5 -0.1 x; do
  if msg=$("$tool" --out "$out/bad" --utts 10 --splice "$bad" 2>&1); then
    echo "FAIL: --splice $bad accepted"; exit 1
  fi
  grep -q -- "--splice" <<<"$msg" || { echo "FAIL: the error for --splice $bad does not name the flag: $msg"; exit 1; }
done
echo "PASS"
