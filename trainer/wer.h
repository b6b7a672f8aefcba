// trainer/wer.h — word and character error rates as WeNet's tools/compute-wer.py computes them
// (Levenshtein alignment, its costs and tie-breaking, its per-utterance and "Overall ->" report and
// its Mandarin/English/... clusters), plus Kaldi's compute-wer summary line ("%WER x [ E / N, I ins,
// D del, S sub ]", as `compute-wer --text --mode=all`).
//
// Alignment (WeNet's Calculator.calculate): costs correct 0, substitution/deletion/insertion 1.
// At each cell the deletion is taken first; the insertion replaces it only when strictly cheaper, then
// the diagonal (correct or substitution) only when strictly cheaper than both; the path is traced back
// from the end of both sequences. Row 0 is all insertions, column 0 all deletions. The total
// S + D + I is the edit distance; how it splits into S, D and I on ties is WeNet's. Kaldi's own
// compute-wer may split ties differently (its E and N are the same): we print one alignment, WeNet's.
//
// Tokens (WerOptions, applied in this order to each text):
//   remove_tags        delete "<...>" spans (to the next '>' or whitespace), as WeNet's --rt=1
//                      (<unk>, <noise>). Off by default (WeNet's default is on).
//   remove_punctuation delete Unicode punctuation (general category P*), as jiwer's
//                      RemovePunctuation: "don't" -> "dont", a lone "," disappears; symbols (S*:
//                      $ + < = > ^ ` | ~) stay. Table: all of Unicode 14 (checked against Python).
//   case_insensitive   fold to upper case (WeNet's default --cs=0 upper-cases; counts equal a
//                      lower-case fold) for ASCII, Latin-1, Latin Extended-A, Greek, Cyrillic and
//                      fullwidth Latin. 'ß' is left as it is (Python's upper() makes "SS").
//   mode word          split on whitespace (Python's str.split() set: ASCII whitespace, U+001C-001F,
//                      U+0085, U+00A0, U+1680, U+2000-200A, U+2028, U+2029, U+202F, U+205F, U+3000).
//   mode char          every non-whitespace code point is a token (UTF-8 aware: "你好" is 2 tokens,
//                      "héllo" 5). With keep_spaces each whitespace run between words is one " " token,
//                      which is jiwer's CER (process_characters). For Mandarin this equals WeNet's
//                      --char=1; WeNet's --char=1 differs for other scripts: it keeps runs of ASCII
//                      (English words, digits, <tags>) as one token each and always drops
//                      ! , ? 、 。 ！ ， ； ？ ： 「 」 ︰ 『 』 《 》 — use remove_punctuation for that
//                      part.
//
// Edge cases: a reference with no tokens has N = 0; WeNet prints its WER (per utterance, per cluster
// and overall) as 0.00 whatever the insertions, and so do we. Kaldi divides by zero and prints
// "inf" (E > 0) or "nan" (E = 0); so do we on the %WER/%SER lines. An empty hypothesis scores all
// deletions. A reference key missing from the hypotheses is scored as an empty hypothesis (all
// deletions: Kaldi's --mode=all, " [PARTIAL]" appended to %WER) with a warning — WeNet instead skips
// it. A hypothesis key missing from the references is reported and ignored (both tools ignore it).
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "core/status.h"

namespace moeasr {

enum class WerMode { kWord, kChar };
enum class WerFormat { kWenet, kKaldi, kBoth };

struct WerOptions {
  WerMode mode = WerMode::kWord;    // kWord: whitespace-separated words; kChar: code points
  bool case_insensitive = false;    // fold letters to upper case before comparing
  bool remove_punctuation = false;  // delete Unicode punctuation characters before splitting
  bool keep_spaces = false;         // kChar only: a " " token between words (jiwer's CER)
  bool remove_tags = false;         // delete <...> spans, e.g. <unk>
};

enum class EditOp : uint8_t { kCorrect, kSubstitution, kDeletion, kInsertion };

// One column of an alignment: indices into the reference and hypothesis token lists.
struct AlignedPair {
  EditOp op = EditOp::kCorrect;
  int32_t ref = -1;  // reference token index; -1 for an insertion
  int32_t hyp = -1;  // hypothesis token index; -1 for a deletion
};

struct WerCounts {
  int64_t n = 0;  // reference tokens, = c + s + d
  int64_t c = 0;  // correct
  int64_t s = 0;  // substitutions
  int64_t d = 0;  // deletions
  int64_t i = 0;  // insertions
  int64_t errors() const { return s + d + i; }
  // 100 * errors / n, and 0 when n == 0 (WeNet's convention).
  double wer_percent() const { return n == 0 ? 0.0 : 100.0 * static_cast<double>(errors()) / n; }
  WerCounts& operator+=(const WerCounts& o) {
    n += o.n, c += o.c, s += o.s, d += o.d, i += o.i;
    return *this;
  }
};

struct Alignment {
  WerCounts counts;
  std::vector<AlignedPair> pairs;  // left to right
};

// WeNet's Levenshtein alignment of two token sequences (see the top of this file).
Alignment align_tokens(const std::vector<std::string>& ref, const std::vector<std::string>& hyp);

// The tokens of one text under `options`. `text` should be valid UTF-8 (read_kaldi_text checks);
// an invalid byte reads as U+FFFD.
std::vector<std::string> tokenize_for_wer(const std::string& text, const WerOptions& options);

// True when `text` is valid UTF-8 (no overlong forms, surrogates or code points past U+10FFFF).
bool is_valid_utf8(const std::string& text);

// WeNet's default_cluster of a token: "Number", "Mandarin", "English", "Japanese" or "Other".
std::string wenet_token_cluster(const std::string& token);

// Columns a token takes when printed, as WeNet's width(): 2 for each code point of East Asian
// width A, F or W (Unicode 14; "é" is A), 1 otherwise. Only pads the lab:/rec: rows.
int64_t display_width(const std::string& token);

// One line of a Kaldi-style text file: "key text...".
struct TextEntry {
  std::string key;
  std::string text;  // the rest of the line after the key (may be empty)
  int64_t line = 0;  // 1-based line number, for messages
};

// Reads "key text" lines (UTF-8). Blank lines are skipped. `what` names the file in messages, e.g.
// "reference". Errors: unreadable file or a directory, no utterance at all, invalid UTF-8, a key
// given twice.
StatusOr<std::vector<TextEntry>> read_kaldi_text(const std::string& path, const std::string& what);

struct UtteranceWer {
  std::string key;
  std::vector<std::string> ref;  // normalised tokens
  std::vector<std::string> hyp;
  Alignment alignment;
  bool hyp_missing = false;  // no hypothesis line: scored as an empty hypothesis
};

struct ClusterWer {
  std::string name;  // WeNet's default cluster name
  WerCounts counts;  // n, c, s, d from reference tokens of the cluster; i from inserted tokens
};

struct WerReport {
  std::vector<UtteranceWer> utterances;         // in reference order
  WerCounts total;                              // sum over utterances
  int64_t sentence_errors = 0;                  // utterances whose token lists differ (Kaldi's %SER)
  std::vector<ClusterWer> clusters;             // in WeNet's order: first seen in hyp + ref tokens
  std::vector<std::string> missing_hyp_keys;    // reference keys with no hypothesis
  std::vector<std::string> unmatched_hyp_keys;  // hypothesis keys with no reference (ignored)
};

WerReport score_wer(const std::vector<TextEntry>& refs, const std::vector<TextEntry>& hyps,
                    const WerOptions& options);

// WeNet's compute-wer.py --v=1 output: per utterance "utt:", "WER: ... N= C= S= D= I=", "lab:" and
// "rec:" rows; then "Overall -> x % N= C= S= D= I=" and one line per cluster.
void write_wenet_report(const WerReport& report, std::ostream& out);

// Kaldi's compute-wer lines: "%WER x [ E / N, I ins, D del, S sub ]" (" [PARTIAL]" when a
// hypothesis was missing), "%SER x [ E / N ]", "Scored N sentences, M not present in hyp.".
void write_kaldi_report(const WerReport& report, std::ostream& out);

// The whole of `moe-asr compute_wer` after flag parsing: reads both files, scores, writes the
// report(s) to `out` and warnings (missing / unmatched keys) to `err`.
Status compute_wer_files(const std::string& ref_path, const std::string& hyp_path, const WerOptions& options,
                         WerFormat format, std::ostream& out, std::ostream& err);

}  // namespace moeasr
