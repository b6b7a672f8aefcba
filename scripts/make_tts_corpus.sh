#!/usr/bin/env bash
# scripts/make_tts_corpus.sh — a Kaldi data dir of synthetic spoken English for tests, benchmarks and
# the demo (issue 4, part 7).
#
#   scripts/make_tts_corpus.sh --out DIR (--utts N | --hours H) [--seed S] [--noise] [--splice F] [--jobs J]
#                              [--force]
#
# Text: only the fortune files of Debian's fortunes-min package (/usr/share/games/fortunes/{fortunes,
#   literature,riddles}, public domain), split on '%' lines, attribution lines ("-- Author") dropped,
#   riddles' "Q:"/"A:" markers removed, split into sentences; a sentence is kept if it has 3-25 words and no digits, symbols, initials or
#   abbreviations (which a TTS voice would read differently from its transcript). The transcript is
#   upper case letters, apostrophes and single spaces (hyphens become spaces); the voice reads the
#   lower-cased sentence with its punctuation (prosody).
# Voices: only espeak-ng en-us with variants m1-m6 and f1-f4 (speed -s 140-190 words/min, pitch
#   -p 30-70) and flite voices kal, awb, rms (duration_stretch 0.90-1.15). Speaker id = voice+variant
#   (espeak-m3, flite-kal, ...); all 13 speakers occur in every split that has >= 13 utterances.
# Audio: sox to 16 kHz mono 16-bit WAV, peak-normalised to -3 dBFS; with --noise, white noise (a
#   fixed 120 s sox whitenoise track at a random offset, volume 0.01-0.05, i.e. ~20-35 dB SNR) mixed in.
# Splits: sentences are shuffled and split first (dev and test 5% each, at least 1), so NO sentence
#   is shared between train, dev and test; utterances then draw sentences from their split's pool
#   (each once before any repeats) and voices in shuffled rounds of 13. With --splice F (0 <= F < 1,
#   default 0), each training utterance reads, with probability F, a spliced sentence instead: the first
#   words of one training sentence and the last words of another (each part >= 2 words, 3-25 in all,
#   never equal to any sentence of the pool), so the training text has new word contexts; dev and test
#   read only their own whole sentences. Sizes: --utts N total
#   (dev = test = max(1, round(N/20))) or --hours H (utterances added until the estimated duration
#   reaches H; the summary reports the measured hours).
# Deterministic: every choice comes from python's random.Random(seed) before synthesis; sox runs with
#   -R and -D (repeatable, no dither); the same --seed gives byte-identical wavs (with these tool
#   versions). Synthesis runs --jobs (default 2) workers via xargs -P.
# Output: DIR/{train,dev,test}/{wav.scp,text,utt2spk,spk2utt} (sorted, C locale; utterance ids start
#   with the speaker id), wavs under DIR/wav/<split>/, DIR/utts.tsv (every utterance's parameters;
#   the last column, kind, is "sentence" or "spliced").
# Quiet: tool output goes to DIR/make_tts_corpus.log; one summary line on stdout.
set -euo pipefail
export LC_ALL=C

usage() {
  sed -n '4,5p' "$0" | sed 's/^# *//' >&2
  exit 2
}

out="" utts="" hours="" seed=0 noise=0 splice=0 jobs=2 force=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --utts) utts="${2:?--utts needs a number}"; shift 2 ;;
    --hours) hours="${2:?--hours needs a number}"; shift 2 ;;
    --seed) seed="${2:?--seed needs a number}"; shift 2 ;;
    --noise) noise=1; shift ;;
    --splice) splice="${2:?--splice needs a fraction}"; shift 2 ;;
    --jobs) jobs="${2:?--jobs needs a number}"; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) usage ;;
    *) echo "make_tts_corpus.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
[[ -n "$out" ]] || { echo "make_tts_corpus.sh: --out DIR is required" >&2; usage; }
if [[ -n "$utts" && -n "$hours" ]] || [[ -z "$utts" && -z "$hours" ]]; then
  echo "make_tts_corpus.sh: give exactly one of --utts N or --hours H" >&2; usage
fi
[[ -z "$utts" || "$utts" =~ ^[0-9]+$ ]] || { echo "make_tts_corpus.sh: --utts must be a whole number, got '$utts'" >&2; exit 2; }
[[ -z "$hours" || "$hours" =~ ^[0-9]*\.?[0-9]+$ ]] || { echo "make_tts_corpus.sh: --hours must be a number, got '$hours'" >&2; exit 2; }
[[ "$seed" =~ ^[0-9]+$ ]] || { echo "make_tts_corpus.sh: --seed must be a whole number, got '$seed'" >&2; exit 2; }
[[ "$splice" =~ ^0*(\.[0-9]+)?$ ]] || { echo "make_tts_corpus.sh: --splice must be a fraction in [0, 1), got '$splice'" >&2; exit 2; }
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "make_tts_corpus.sh: --jobs must be >= 1, got '$jobs'" >&2; exit 2; }
for tool in espeak-ng flite sox soxi python3 xargs; do
  command -v "$tool" > /dev/null || { echo "make_tts_corpus.sh: '$tool' not found (apt-get install espeak-ng flite sox python3)" >&2; exit 1; }
done
fortune_dir=/usr/share/games/fortunes
for f in fortunes literature riddles; do
  [[ -r "$fortune_dir/$f" ]] || { echo "make_tts_corpus.sh: $fortune_dir/$f missing (apt-get install fortunes-min)" >&2; exit 1; }
done
if [[ -e "$out" && -n "$(ls -A "$out" 2> /dev/null)" ]]; then
  if [[ $force -eq 1 ]]; then
    rm -rf "${out:?}/train" "${out:?}/dev" "${out:?}/test" "${out:?}/wav" "${out:?}/.work" "${out:?}/utts.tsv" \
      "${out:?}/make_tts_corpus.log"
  else
    echo "make_tts_corpus.sh: $out exists and is not empty (use --force to overwrite)" >&2; exit 1
  fi
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"
log="$out/make_tts_corpus.log"
work="$out/.work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
: > "$log"
start=$(date +%s.%N)

# 1. Plan: sentences, splits, voices, parameters -> utts.tsv and job chunks.
python3 - "$fortune_dir" "$out" "$seed" "${utts:-0}" "${hours:-0}" "$noise" "$jobs" "$splice" << 'PYEOF'
import math, os, random, re, sys

fortune_dir, out, seed, n_utts, hours, noise, jobs, splice = sys.argv[1:]
seed, n_utts, hours, noise, jobs, splice = int(seed), int(n_utts), float(hours), int(noise), int(jobs), float(splice)
rng = random.Random(seed)

ABBREV = re.compile(r"\b(mr|mrs|ms|dr|st|jr|sr|vs|etc|inc|ltd|co|no|vol|ft|mt|prof|gen|col|capt|sgt|rev)\.",
                    re.IGNORECASE)
INITIAL = re.compile(r"(?<![A-Za-z'])(?![AaI]\.)[A-Za-z]\.")  # initials; not the words "a", "I"
ALLOWED = re.compile(r"^[A-Za-z ,.;:!?'\"\-]+$")

def sentences(text):
    text = re.sub(r".\x08", "", text)  # overstriking (X BS Y) -> Y
    lines = [re.sub(r"^\s*[QA]:\s*", "", l) for l in text.split("\n") if not l.strip().startswith("--")]
    text = " ".join(l.strip() for l in lines)
    text = text.replace("``", '"').replace("''", '"').replace("--", ", ")
    text = re.sub(r"\s+", " ", text).strip()
    for s in re.split(r"(?<=[.!?])[\"')]*\s+(?=[\"'(]*[A-Z])", text):
        yield s.strip()

def transcript(s):
    t = s.upper().replace("-", " ")
    t = re.sub(r"[^A-Z' ]", " ", t)
    words = [w.strip("'") for w in t.split()]
    return " ".join(w for w in words if w)

pool = {}
for name in ("fortunes", "literature", "riddles"):
    with open(os.path.join(fortune_dir, name), encoding="utf-8", errors="replace") as f:
        chunks = re.split(r"^%\s*$", f.read(), flags=re.MULTILINE)
    for chunk in chunks:
        for s in sentences(chunk):
            if not s or not ALLOWED.match(s) or ABBREV.search(s) or INITIAL.search(s):
                continue
            tr = transcript(s)
            n = len(tr.split())
            if 3 <= n <= 25 and tr not in pool:
                tts = s.lower().strip(" ,;:-\"'()")
                if tts:
                    pool[tr] = tts
texts = sorted(pool)  # deterministic order, independent of dict/file order
rng.shuffle(texts)
S = len(texts)
if S < 20:
    sys.exit("make_tts_corpus.sh: only %d usable sentences in %s" % (S, fortune_dir))

VOICES = [("espeak", v) for v in ("m1", "m2", "m3", "m4", "m5", "m6", "f1", "f2", "f3", "f4")] + \
         [("flite", v) for v in ("kal", "awb", "rms")]

def params(engine, voice):
    if engine == "espeak":
        return dict(speed=rng.randint(140, 190), pitch=rng.randint(30, 70), stretch="-")
    return dict(speed="-", pitch="-", stretch="%.2f" % rng.uniform(0.90, 1.15))

def est_seconds(text, p):
    words = len(text.split())
    wpm = p["speed"] if p["stretch"] == "-" else 165.0 / float(p["stretch"])
    return 0.8 * (words * 60.0 / wpm + 0.5)  # fitted on 168 utterances: within ~5% per engine

# Sentence pools per split.
n_dev_s = n_test_s = max(1, round(S * 0.05))
pools = {"dev": texts[:n_dev_s], "test": texts[n_dev_s:n_dev_s + n_test_s], "train": texts[n_dev_s + n_test_s:]}

def spliced(sentences):
    """The first words of one sentence and the last words of another (TTS text spliced at a space, the
    transcript made from it), new to the pool; returns its transcript and adds it to `pool`. None after
    1000 draws without a new one (a pool of a few short sentences): the caller reads a whole sentence."""
    for _ in range(1000):
        a, b = pool[rng.choice(sentences)].split(), pool[rng.choice(sentences)].split()
        if len(a) < 3 or len(b) < 3:
            continue
        tts = " ".join(a[:rng.randint(2, len(a) - 1)] + b[rng.randint(1, len(b) - 2):])
        tr = transcript(tts)
        if 3 <= len(tr.split()) <= 25 and tr not in pool:
            pool[tr] = tts
            return tr
    return None

class Drawer:
    """Sentences of one split, each once per shuffled round (or, with probability `splice`, a spliced
    one); voices in shuffled rounds of 13."""
    def __init__(self, sentences, splice=0.0):
        self.sentences, self.splice, self.s_order, self.v_order = sentences, splice, [], []
    def next(self):
        text = None
        if self.splice > 0 and rng.random() < self.splice:
            text = spliced(self.sentences)
            if text is not None:
                kinds[text] = "spliced"
        if text is None:
            if not self.s_order:
                self.s_order = list(self.sentences); rng.shuffle(self.s_order)
            text = self.s_order.pop()
        if not self.v_order:
            self.v_order = list(VOICES); rng.shuffle(self.v_order)
        return text, self.v_order.pop()

kinds = {}  # transcript -> "spliced" for the spliced ones; whole sentences are "sentence"
drawers = {k: Drawer(v, splice if k == "train" else 0.0) for k, v in pools.items()}
plan = []  # (split, text, engine, voice, params)
if n_utts > 0:
    if n_utts < 3:
        sys.exit("make_tts_corpus.sh: --utts must be >= 3 (one each for train, dev, test)")
    n_dev = n_test = max(1, round(n_utts / 20))
    counts = {"train": n_utts - n_dev - n_test, "dev": n_dev, "test": n_test}
    for split in ("train", "dev", "test"):
        for _ in range(counts[split]):
            text, (engine, voice) = drawers[split].next()
            plan.append((split, text, engine, voice, params(engine, voice)))
else:
    target = hours * 3600.0
    total = {"train": 0.0, "dev": 0.0, "test": 0.0}
    share = {"train": 0.9, "dev": 0.05, "test": 0.05}
    while sum(total.values()) < target:
        # Add to the split furthest below its share (ties: train, dev, test).
        split = min(("train", "dev", "test"), key=lambda k: total[k] / share[k])
        text, (engine, voice) = drawers[split].next()
        p = params(engine, voice)
        total[split] += est_seconds(text, p)
        plan.append((split, text, engine, voice, p))

index = {"train": 0, "dev": 0, "test": 0}
rows = []
for split, text, engine, voice, p in plan:
    spk = "%s-%s" % (engine, voice)
    uid = "%s_%s_%06d" % (spk, split, index[split])
    index[split] += 1
    vol = "%.4f" % rng.uniform(0.01, 0.05) if noise else "-"
    off = str(rng.randint(0, 100 * 16000)) if noise else "-"
    wav = os.path.join(out, "wav", split, uid + ".wav")
    rows.append([uid, split, spk, engine, voice, str(p["speed"]), str(p["pitch"]), p["stretch"], vol, off, wav,
                 pool[text], text, kinds.get(text, "sentence")])

with open(os.path.join(out, "utts.tsv"), "w") as f:
    f.write("#uttid\tsplit\tspeaker\tengine\tvoice\tspeed\tpitch\tstretch\tnoise_vol\tnoise_offset\twav"
            "\ttts_text\ttranscript\tkind\n")
    for r in rows:
        f.write("\t".join(r) + "\n")
chunk = max(1, min(50, math.ceil(len(rows) / (4 * jobs))))
for c in range(0, len(rows), chunk):
    with open(os.path.join(out, ".work", "chunk_%06d.tsv" % (c // chunk)), "w") as f:
        for r in rows[c:c + chunk]:
            f.write("\t".join(r) + "\n")
for split in ("train", "dev", "test"):
    d = os.path.join(out, split)
    os.makedirs(d, exist_ok=True)
    os.makedirs(os.path.join(out, "wav", split), exist_ok=True)
    mine = sorted(r for r in rows if r[1] == split)
    with open(os.path.join(d, "wav.scp"), "w") as f:
        f.writelines("%s %s\n" % (r[0], r[10]) for r in mine)
    with open(os.path.join(d, "text"), "w") as f:
        f.writelines("%s %s\n" % (r[0], r[12]) for r in mine)
    with open(os.path.join(d, "utt2spk"), "w") as f:
        f.writelines("%s %s\n" % (r[0], r[2]) for r in mine)
    spk2utt = {}
    for r in mine:
        spk2utt.setdefault(r[2], []).append(r[0])
    with open(os.path.join(d, "spk2utt"), "w") as f:
        f.writelines("%s %s\n" % (s, " ".join(u)) for s, u in sorted(spk2utt.items()))
PYEOF

# 2. Synthesis, --jobs workers, one chunk of utterances per call.
noise_wav="$work/noise.wav"
if [[ $noise -eq 1 ]]; then
  sox -R -D -q -n -r 16000 -b 16 -c 1 "$noise_wav" synth 120 whitenoise 2>> "$log"
fi
synth_chunk() {
  local chunk="$1" work="$2" noise_wav="$3" log="$4"
  local uid engine voice speed pitch stretch vol off wav tts raw clean n
  while IFS=$'\t' read -r uid _ _ engine voice speed pitch stretch vol off wav tts _; do
    raw="$work/$uid.raw.wav"
    clean="$work/$uid.clean.wav"
    if [[ "$engine" == espeak ]]; then
      espeak-ng -v "en-us+$voice" -s "$speed" -p "$pitch" -w "$raw" "$tts" 2>> "$log"
    else
      flite -voice "$voice" --setf duration_stretch="$stretch" -t "$tts" -o "$raw" 2>> "$log" >> "$log"
    fi
    if [[ "$vol" == - ]]; then
      sox -R -D -q "$raw" -r 16000 -c 1 -b 16 "$wav" gain -n -3 2>> "$log"
    else
      sox -R -D -q "$raw" -r 16000 -c 1 -b 16 "$clean" gain -n -3 2>> "$log"
      n=$(soxi -s "$clean")
      sox -R -D -q "$noise_wav" -t sox - trim "${off}s" "${n}s" 2>> "$log" |
        sox -R -D -q -m -v 1 "$clean" -v "$vol" -t sox - -b 16 "$wav" 2>> "$log"
      rm -f "$clean"
    fi
    rm -f "$raw"
    [[ -s "$wav" ]] || { echo "synthesis failed for $uid (see $log)" >&2; return 1; }
  done < "$chunk"
}
export -f synth_chunk
# shellcheck disable=SC2016,SC2094  # $1..$4 expand in the worker shell; the log is only appended to
if ! find "$work" -name 'chunk_*.tsv' -print0 | sort -z |
  xargs -0 -n 1 -P "$jobs" bash -c 'set -eo pipefail; synth_chunk "$4" "$1" "$2" "$3" || exit 255' _ \
    "$work" "$noise_wav" "$log" 2>> "$log"; then
  echo "make_tts_corpus.sh: synthesis failed; last lines of $log:" >&2
  tail -5 "$log" >&2
  exit 1
fi

# 3. Summary: measured duration from the WAV headers.
python3 - "$out" "$start" "$(date +%s.%N)" << 'PYEOF'
import os, sys, wave
out, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
seconds, counts = 0.0, {}
for split in ("train", "dev", "test"):
    with open(os.path.join(out, split, "wav.scp")) as f:
        for line in f:
            path = line.split(" ", 1)[1].strip()
            with wave.open(path) as w:
                assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2, path
                seconds += w.getnframes() / 16000.0
            counts[split] = counts.get(split, 0) + 1
n = sum(counts.values())
took = end - start
print("make_tts_corpus: %d utterances (train %d, dev %d, test %d), %.3f hours, %.1f s (%.2f utt/s, %.0fx real time) -> %s"
      % (n, counts.get("train", 0), counts.get("dev", 0), counts.get("test", 0), seconds / 3600, took, n / took,
         seconds / took, out))
PYEOF
