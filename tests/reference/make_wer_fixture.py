#!/usr/bin/env python3
"""Writes tests/fixtures/wer_pairs.txt: random reference/hypothesis pairs scored by jiwer (PyPI) and by
the alignment rule of WeNet's tools/compute-wer.py, for tests/trainer/wer_test.cc (CI reads the file,
it never runs this script).

    /work/venv-torch/bin/pip install jiwer
    /work/venv-torch/bin/python tests/reference/make_wer_fixture.py [--wenet_script compute-wer.py]

Sets (name: how the C++ side tokenises; what jiwer scores):
  word        English words (a few CJK words) split on spaces; jiwer.process_words.
  word_norm   mixed case and punctuation, --case_insensitive --remove_punctuation; jiwer.process_words
              with ToLowerCase + RemovePunctuation (+ jiwer's default word transform).
  char        Mandarin words, one token per character, spaces dropped; jiwer.process_characters on the
              texts with spaces removed (WeNet's --char=1 splits these texts the same way).
  char_spaces English (some accented) and CJK words, one token per character, each space between words
              one " " token (--keep_spaces); jiwer.process_characters on the texts as they are.

jiwer (rapidfuzz) and WeNet break alignment ties differently, so per pair the fixture holds jiwer's
S D I H and, for word/word_norm/char, WeNet's N C S D I. The C++ test requires N and S+D+I equal to
jiwer's for every pair and for each set's totals (and the corpus WER), and C S D I equal to WeNet's
for every pair. With --wenet_script the per-pair WeNet numbers are also taken from WeNet's own
compute-wer.py (run on temporary files) and must equal this script's port of its rule.

Format: '#' comments; tab-separated lines
  corpus <set> <S> <D> <I> <H> <wer>                      jiwer on the whole set
  pair <set> <ref> <hyp> <S D I H> <N C S D I | ->         one pair (hyp may be empty)
"""
import argparse
import os
import random
import re
import subprocess
import sys
import tempfile

import jiwer
from importlib.metadata import version

SEED = 20240611
EN_VOCAB = ["the", "a", "cat", "sat", "on", "mat", "dog", "ran", "to", "and", "in", "it", "is", "was", "at",
            "he", "she", "not", "go", "red"]
ZH_VOCAB = ["你好", "世界", "今天", "天气", "很", "好", "我们", "去", "北京", "上海", "的", "是", "不", "人",
            "中国", "语音", "识别", "模型"]
ACCENTED = ["café", "naïve", "über", "größe", "señor", "élan"]
PUNCT = [",", ".", "!", "?", "'s", "-", ";"]


def wenet_align(lab, rec):
    """N C S D I by WeNet's Calculator rule: costs 1; at each cell deletion first, insertion only if
    strictly cheaper, then the diagonal only if strictly cheaper; trace back from the end."""
    n, m = len(lab), len(rec)
    dist = [[0] * (m + 1) for _ in range(n + 1)]
    op = [[""] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        dist[i][0], op[i][0] = i, "del"
    for j in range(m + 1):
        dist[0][j], op[0][j] = j, "ins"
    op[0][0] = "start"
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            best, choice = dist[i - 1][j] + 1, "del"
            if dist[i][j - 1] + 1 < best:
                best, choice = dist[i][j - 1] + 1, "ins"
            same = lab[i - 1] == rec[j - 1]
            diag = dist[i - 1][j - 1] + (0 if same else 1)
            if diag < best:
                best, choice = diag, ("cor" if same else "sub")
            dist[i][j], op[i][j] = best, choice
    counts = {"cor": 0, "sub": 0, "del": 0, "ins": 0}
    i, j = n, m
    while op[i][j] != "start":
        o = op[i][j]
        counts[o] += 1
        if o in ("cor", "sub"):
            i, j = i - 1, j - 1
        elif o == "del":
            i -= 1
        else:
            j -= 1
    return (n, counts["cor"], counts["sub"], counts["del"], counts["ins"])


def edit(rng, words, vocab, p_sub, p_del, p_ins):
    out = []
    for w in words:
        if rng.random() < p_ins:
            out.append(rng.choice(vocab))
        r = rng.random()
        if r < p_del:
            continue
        out.append(rng.choice(vocab) if r < p_del + p_sub else w)
    if rng.random() < p_ins:
        out.append(rng.choice(vocab))
    return out


def make_pairs(rng, count, vocab, joiner, max_len):
    pairs = []
    for k in range(count):
        ref = [rng.choice(vocab) for _ in range(rng.randint(1, max_len))]
        if k % 25 == 0:
            hyp = []  # an empty hypothesis now and then
        elif k % 25 == 1:
            hyp = list(ref)  # and an exact match
        else:
            p = rng.choice([0.05, 0.15, 0.3, 0.5])
            hyp = edit(rng, ref, vocab, p, p / 2, p / 2)
        pairs.append((joiner.join(ref), joiner.join(hyp)))
    return pairs


def noisy(rng, text):
    """Random case and punctuation for the word_norm set."""
    words = []
    for w in text.split():
        w = w.upper() if rng.random() < 0.2 else (w.capitalize() if rng.random() < 0.2 else w)
        if rng.random() < 0.25:
            w += rng.choice(PUNCT)
        words.append(w)
    return " ".join(words)


def run_wenet_script(script, pairs, char):
    """Per-pair N C S D I from WeNet's compute-wer.py (case-sensitive, no tag removal)."""
    with tempfile.TemporaryDirectory() as tmp:
        ref_path, hyp_path = os.path.join(tmp, "ref"), os.path.join(tmp, "hyp")
        with open(ref_path, "w", encoding="utf-8") as r, open(hyp_path, "w", encoding="utf-8") as h:
            for k, (ref, hyp) in enumerate(pairs):
                r.write("utt%04d %s\n" % (k, ref))
                h.write("utt%04d %s\n" % (k, hyp))
        args = [sys.executable, script, "--cs=1", "--rt=0", "--char=%d" % int(char), "--v=1", ref_path, hyp_path]
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    found = re.findall(r"WER: [0-9.]+ % N=(\d+) C=(\d+) S=(\d+) D=(\d+) I=(\d+)", out)
    return [tuple(int(x) for x in f) for f in found]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "fixtures", "wer_pairs.txt"))
    ap.add_argument("--wenet_script", default="", help="path to WeNet's tools/compute-wer.py (optional check)")
    args = ap.parse_args()
    rng = random.Random(SEED)

    norm = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                          jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])
    sets = {
        "word": make_pairs(rng, 160, EN_VOCAB + ZH_VOCAB[:3], " ", 14),
        "word_norm": [(noisy(rng, r), noisy(rng, h)) for r, h in make_pairs(rng, 60, EN_VOCAB, " ", 12)],
        "char": make_pairs(rng, 100, ZH_VOCAB, " ", 8),
        "char_spaces": make_pairs(rng, 80, EN_VOCAB[:10] + ACCENTED + ZH_VOCAB[:4], " ", 6),
    }
    lines = ["# Generated by tests/reference/make_wer_fixture.py (seed %d, jiwer %s); do not edit."
             % (SEED, version("jiwer"))]
    for name, pairs in sets.items():
        refs = [r for r, _ in pairs]
        hyps = [h for _, h in pairs]
        if name in ("word", "word_norm"):
            kw = {"reference_transform": norm, "hypothesis_transform": norm} if name == "word_norm" else {}
            per = [jiwer.process_words(r, h, **kw) for r, h in pairs]
            corpus = jiwer.process_words(refs, hyps, **kw)
            rate = corpus.wer
            tok = [([w for w in norm(r)[0]], [w for w in norm(h)[0]]) if name == "word_norm"
                   else (r.split(), h.split()) for r, h in pairs]
        elif name == "char":
            strip = lambda s: s.replace(" ", "")  # noqa: E731
            per = [jiwer.process_characters(strip(r), strip(h)) for r, h in pairs]
            corpus = jiwer.process_characters([strip(r) for r in refs], [strip(h) for h in hyps])
            rate = corpus.cer
            tok = [(list(strip(r)), list(strip(h))) for r, h in pairs]
        else:
            per = [jiwer.process_characters(r, h) for r, h in pairs]
            corpus = jiwer.process_characters(refs, hyps)
            rate = corpus.cer
            tok = None
        wenet = [wenet_align(lab, rec) for lab, rec in tok] if tok is not None else None
        if wenet is not None and args.wenet_script and name != "word_norm":
            theirs = run_wenet_script(args.wenet_script, pairs, name == "char")
            assert theirs == wenet, "WeNet's compute-wer.py disagrees with the port on set %s" % name
            print("set %s: WeNet's compute-wer.py agrees on all %d pairs" % (name, len(pairs)))
        lines.append("corpus\t%s\t%d\t%d\t%d\t%d\t%.17g" % (name, corpus.substitutions, corpus.deletions,
                                                            corpus.insertions, corpus.hits, rate))
        differ = 0
        for k, ((r, h), o) in enumerate(zip(pairs, per)):
            j = (o.substitutions, o.deletions, o.insertions, o.hits)
            w = "-"
            if wenet is not None:
                w = "%d %d %d %d %d" % wenet[k]
                assert wenet[k][0] == j[0] + j[1] + j[3] and sum(wenet[k][2:]) == sum(j[:3]), (r, h, j, wenet[k])
                differ += (wenet[k][2], wenet[k][3], wenet[k][4]) != j[:3]
            lines.append("pair\t%s\t%s\t%s\t%d %d %d %d\t%s" % ((name, r, h) + j + (w,)))
        note = ", %d where jiwer and WeNet split S/D/I differently" % differ if wenet is not None else ""
        print("set %s: %d pairs%s" % (name, len(pairs), note))
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", os.path.normpath(args.out))


if __name__ == "__main__":
    main()
