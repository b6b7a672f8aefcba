// tests/trainer/wer_test.cc — WER/CER scoring (trainer/wer.h) against hand-worked cases, WeNet's
// tools/compute-wer.py output (byte for byte on a small case) and jiwer on a committed fixture of
// random pairs (tests/fixtures/wer_pairs.txt, from tests/reference/make_wer_fixture.py).
//
// What the fixture test compares, and why: jiwer (rapidfuzz) and WeNet break alignment ties
// differently, so for each pair N and S + D + I must equal jiwer's, and C, S, D, I must equal WeNet's
// (the fixture script's port of WeNet's rule, checked there against WeNet's own compute-wer.py). Each
// set's totals N and S + D + I, and its corpus WER, must equal jiwer's.
#include "trainer/wer.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "tests/common/h5_reader.h"

namespace moeasr {
namespace {

std::vector<std::string> words(const std::string& text) {
  return tokenize_for_wer(text, WerOptions{});
}

std::vector<std::string> chars(const std::string& text) {
  WerOptions o;
  o.mode = WerMode::kChar;
  return tokenize_for_wer(text, o);
}

void expect_counts(const WerCounts& c, int64_t n, int64_t cor, int64_t s, int64_t d, int64_t i) {
  EXPECT_EQ(c.n, n);
  EXPECT_EQ(c.c, cor);
  EXPECT_EQ(c.s, s);
  EXPECT_EQ(c.d, d);
  EXPECT_EQ(c.i, i);
}

// The alignment as "op:ref/hyp" strings, e.g. "C:a/a S:b/x D:c/ I:/d".
std::string describe(const Alignment& a, const std::vector<std::string>& ref,
                     const std::vector<std::string>& hyp) {
  std::string out;
  for (const AlignedPair& p : a.pairs) {
    const char* op = p.op == EditOp::kCorrect        ? "C"
                     : p.op == EditOp::kSubstitution ? "S"
                     : p.op == EditOp::kDeletion     ? "D"
                                                     : "I";
    out += std::string(out.empty() ? "" : " ") + op + ":" + (p.ref >= 0 ? ref[p.ref] : "") + "/" +
           (p.hyp >= 0 ? hyp[p.hyp] : "");
  }
  return out;
}

Alignment align(const std::vector<std::string>& ref, const std::vector<std::string>& hyp, std::string* text) {
  Alignment a = align_tokens(ref, hyp);
  *text = describe(a, ref, hyp);
  return a;
}

TEST(WerAlign, Identical) {
  std::string t;
  const Alignment a = align(words("a b c"), words("a b c"), &t);
  expect_counts(a.counts, 3, 3, 0, 0, 0);
  EXPECT_EQ(t, "C:a/a C:b/b C:c/c");
  EXPECT_EQ(a.counts.wer_percent(), 0.0);
}

TEST(WerAlign, AllSubstitutions) {
  std::string t;
  const Alignment a = align(words("a b c"), words("x y z"), &t);
  expect_counts(a.counts, 3, 0, 3, 0, 0);
  EXPECT_EQ(t, "S:a/x S:b/y S:c/z");
  EXPECT_EQ(a.counts.wer_percent(), 100.0);
}

TEST(WerAlign, InsertionAtStartAndEnd) {
  std::string t;
  expect_counts(align(words("b c"), words("a b c"), &t).counts, 2, 2, 0, 0, 1);
  EXPECT_EQ(t, "I:/a C:b/b C:c/c");
  expect_counts(align(words("a b"), words("a b c"), &t).counts, 2, 2, 0, 0, 1);
  EXPECT_EQ(t, "C:a/a C:b/b I:/c");
}

TEST(WerAlign, Deletion) {
  std::string t;
  const Alignment a = align(words("a b c"), words("a c"), &t);
  expect_counts(a.counts, 3, 2, 0, 1, 0);
  EXPECT_EQ(t, "C:a/a D:b/ C:c/c");
  EXPECT_NEAR(a.counts.wer_percent(), 100.0 / 3.0, 1e-12);
}

// a b c d e / a x c e f: distance 3 either as S D I or as S S S; WeNet's rule (deletion first, then
// insertion, then the diagonal, each only when strictly cheaper) gives S D I.
TEST(WerAlign, MixedEditsTieBrokenAsWenet) {
  std::string t;
  const Alignment a = align(words("a b c d e"), words("a x c e f"), &t);
  expect_counts(a.counts, 5, 3, 1, 1, 1);
  EXPECT_EQ(t, "C:a/a S:b/x C:c/c D:d/ C:e/e I:/f");
  EXPECT_EQ(a.counts.wer_percent(), 60.0);
}

// "a b" / "b a": S S, or I C D, or D C I all cost 2; WeNet's rule takes I C D.
TEST(WerAlign, SwapTieBrokenAsWenet) {
  std::string t;
  const Alignment a = align(words("a b"), words("b a"), &t);
  expect_counts(a.counts, 2, 1, 0, 1, 1);
  EXPECT_EQ(t, "I:/b C:a/a D:b/");
}

TEST(WerAlign, EmptyReferenceHasZeroRateLikeWenet) {
  std::string t;
  const Alignment a = align({}, words("a b"), &t);
  expect_counts(a.counts, 0, 0, 0, 0, 2);
  EXPECT_EQ(t, "I:/a I:/b");
  EXPECT_EQ(a.counts.wer_percent(), 0.0);  // WeNet prints 0.00 when N = 0
  expect_counts(align({}, {}, &t).counts, 0, 0, 0, 0, 0);
  EXPECT_EQ(t, "");
}

TEST(WerAlign, EmptyHypothesis) {
  std::string t;
  const Alignment a = align(words("a b c"), words(""), &t);
  expect_counts(a.counts, 3, 0, 0, 3, 0);
  EXPECT_EQ(t, "D:a/ D:b/ D:c/");
  EXPECT_EQ(a.counts.wer_percent(), 100.0);
}

TEST(WerAlign, Utf8CharacterMode) {
  std::string t;
  // 你好世界 / 你们好世界: one inserted character, each CJK character (3 bytes) one token.
  expect_counts(align(chars("你好世界"), chars("你们好世界"), &t).counts, 4, 4, 0, 0, 1);
  EXPECT_EQ(t, "C:你/你 I:/们 C:好/好 C:世/世 C:界/界");
  // é (2 bytes) and 𠀀 (U+20000, 4 bytes) are single tokens.
  expect_counts(align(chars("héllo𠀀"), chars("hello𠀀"), &t).counts, 6, 5, 1, 0, 0);
  EXPECT_EQ(t, "C:h/h S:é/e C:l/l C:l/l C:o/o C:𠀀/𠀀");
}

TEST(WerTokenize, WordAndCharModes) {
  EXPECT_EQ(words("  a\tbb  ccc \r"), (std::vector<std::string>{"a", "bb", "ccc"}));
  EXPECT_EQ(words("你好\u3000世界\u00a0ok"),
            (std::vector<std::string>{"你好", "世界", "ok"}));  // Unicode spaces
  EXPECT_EQ(words(""), std::vector<std::string>{});
  EXPECT_EQ(chars("ab 你好"), (std::vector<std::string>{"a", "b", "你", "好"}));
  WerOptions spaces;
  spaces.mode = WerMode::kChar;
  spaces.keep_spaces = true;
  EXPECT_EQ(tokenize_for_wer("  ab   c ", spaces), (std::vector<std::string>{"a", "b", " ", "c"}));
}

TEST(WerTokenize, Normalisation) {
  WerOptions o;
  o.remove_punctuation = true;
  EXPECT_EQ(tokenize_for_wer("Don't , stop! 你好，世界。 «ok»", o),
            (std::vector<std::string>{"Dont", "stop", "你好世界", "ok"}));
  EXPECT_EQ(tokenize_for_wer("a+b $5 <x>", o),
            (std::vector<std::string>{"a+b", "$5", "<x>"}));  // symbols stay
  o = WerOptions{};
  o.case_insensitive = true;
  EXPECT_EQ(tokenize_for_wer("Héllo wörld straße Ωμέγα привет ｆｕｌｌ", o),
            (std::vector<std::string>{"HÉLLO", "WÖRLD", "STRAßE", "ΩΜΈΓΑ", "ПРИВЕТ", "ＦＵＬＬ"}));
  o = WerOptions{};
  o.remove_tags = true;
  EXPECT_EQ(tokenize_for_wer("<unk> a<noise> b <sil>c <open", o), (std::vector<std::string>{"a", "b", "c"}));
}

TEST(WerUnicode, ValidityClustersAndWidth) {
  EXPECT_TRUE(is_valid_utf8("plain 你好 𠀀"));
  EXPECT_FALSE(is_valid_utf8("\xC0\x80"));      // overlong
  EXPECT_FALSE(is_valid_utf8("\xED\xA0\x80"));  // surrogate
  EXPECT_FALSE(is_valid_utf8("\xE4\xBD"));      // truncated
  EXPECT_FALSE(is_valid_utf8("\xFF"));
  EXPECT_EQ(wenet_token_cluster("你好"), "Mandarin");
  EXPECT_EQ(wenet_token_cluster("HELLO"), "English");
  EXPECT_EQ(wenet_token_cluster("héllo"), "English");
  EXPECT_EQ(wenet_token_cluster("it's"), "English");  // the apostrophe is ignored
  EXPECT_EQ(wenet_token_cluster("123"), "Number");
  EXPECT_EQ(wenet_token_cluster("ひらがな"), "Japanese");
  EXPECT_EQ(wenet_token_cluster("a1"), "Other");
  EXPECT_EQ(wenet_token_cluster("Ｘ"), "Other");
  EXPECT_EQ(wenet_token_cluster("-"), "Other");
  EXPECT_EQ(display_width("abc"), 3);
  EXPECT_EQ(display_width("你好"), 4);
  EXPECT_EQ(display_width("Ｘ"), 2);
  EXPECT_EQ(display_width("é"), 2);  // East Asian width "A", which WeNet counts as 2
}

std::vector<TextEntry> entries(const std::vector<std::pair<std::string, std::string>>& lines) {
  std::vector<TextEntry> out;
  for (const auto& [key, text] : lines)
    out.push_back(TextEntry{key, text, static_cast<int64_t>(out.size() + 1)});
  return out;
}

// Produced by WeNet's tools/compute-wer.py --cs=1 --rt=0 on the same two files, byte for byte.
TEST(WerReport, WenetFormatMatchesComputeWerPy) {
  const auto refs = entries({{"u1", " THE CAT SAT ON MAT"}, {"u2", " 你好 世界 HELLO 123"}, {"u4", ""}});
  const auto hyps =
      entries({{"u1", " THE BAT SAT ON THE MAT"}, {"u2", " 你好 HELLO 124 世"}, {"u4", " EXTRA WORDS"}});
  std::ostringstream out;
  write_wenet_report(score_wer(refs, hyps, WerOptions{}), out);
  const std::string expected =
      "\nutt: u1\n"
      "WER: 40.00 % N=5 C=4 S=1 D=0 I=1\n"
      "lab: THE CAT SAT ON     MAT \n"
      "rec: THE BAT SAT ON THE MAT \n\n"
      "\nutt: u2\n"
      "WER: 75.00 % N=4 C=2 S=1 D=1 I=1\n"
      "lab: 你好 世界 HELLO 123    \n"
      "rec: 你好      HELLO 124 世 \n\n"
      "\nutt: u4\n"
      "WER: 0.00 % N=0 C=0 S=0 D=0 I=2\n"
      "lab:             \n"
      "rec: EXTRA WORDS \n\n"
      "===========================================================================\n\n"
      "Overall -> 77.78 % N=9 C=6 S=2 D=1 I=4\n"
      "English -> 66.67 % N=6 C=5 S=1 D=0 I=3\n"
      "Mandarin -> 100.00 % N=2 C=1 S=0 D=1 I=1\n"
      "Number -> 100.00 % N=1 C=0 S=1 D=0 I=0\n"
      "\n===========================================================================\n";
  EXPECT_EQ(out.str(), expected);
}

TEST(WerReport, KaldiFormat) {
  WerReport report = score_wer(entries({{"a", "x y z w"}, {"b", "p q"}}),
                               entries({{"a", "x y"}, {"b", "p q r"}}), WerOptions{});
  std::ostringstream out;
  write_kaldi_report(report, out);
  EXPECT_EQ(out.str(),
            "%WER 50.00 [ 3 / 6, 1 ins, 2 del, 0 sub ]\n%SER 100.00 [ 2 / 2 ]\nScored 2 sentences, 0 not "
            "present in hyp.\n");

  // A missing hypothesis: all deletions, [PARTIAL], and counted as not present.
  report = score_wer(entries({{"a", "x y z"}, {"b", "p q"}}), entries({{"a", "x y z"}}), WerOptions{});
  ASSERT_EQ(report.missing_hyp_keys, std::vector<std::string>{"b"});
  expect_counts(report.total, 5, 3, 0, 2, 0);
  out.str("");
  write_kaldi_report(report, out);
  EXPECT_EQ(out.str(),
            "%WER 40.00 [ 2 / 5, 0 ins, 2 del, 0 sub ] [PARTIAL]\n%SER 50.00 [ 1 / 2 ]\n"
            "Scored 2 sentences, 1 not present in hyp.\n");

  // N = 0: Kaldi divides by zero (inf with errors, nan without); WeNet prints 0.00.
  report = score_wer(entries({{"a", ""}}), entries({{"a", "oops"}}), WerOptions{});
  out.str("");
  write_kaldi_report(report, out);
  EXPECT_EQ(out.str(),
            "%WER inf [ 1 / 0, 1 ins, 0 del, 0 sub ]\n%SER 100.00 [ 1 / 1 ]\nScored 1 sentences, 0 not "
            "present in hyp.\n");
  report = score_wer(entries({{"a", ""}}), entries({{"a", ""}}), WerOptions{});
  out.str("");
  write_kaldi_report(report, out);
  EXPECT_EQ(out.str(),
            "%WER nan [ 0 / 0, 0 ins, 0 del, 0 sub ]\n%SER 0.00 [ 0 / 1 ]\nScored 1 sentences, 0 not present "
            "in hyp.\n");
  out.str("");
  write_wenet_report(report, out);
  EXPECT_NE(out.str().find("Overall -> 0.00 % N=0 C=0 S=0 D=0 I=0\n"), std::string::npos);
}

// ---- The jiwer fixture --------------------------------------------------------------------------

std::vector<std::string> split_tabs(const std::string& line) {
  std::vector<std::string> fields;
  size_t start = 0;
  for (size_t pos; (pos = line.find('\t', start)) != std::string::npos; start = pos + 1) {
    fields.push_back(line.substr(start, pos - start));
  }
  fields.push_back(line.substr(start));
  return fields;
}

std::vector<int64_t> ints(const std::string& s) {
  std::istringstream in(s);
  std::vector<int64_t> v;
  for (int64_t x; in >> x;) v.push_back(x);
  return v;
}

WerOptions options_for_set(const std::string& set) {
  WerOptions o;
  if (set == "word_norm") o.case_insensitive = o.remove_punctuation = true;
  if (set == "char" || set == "char_spaces") o.mode = WerMode::kChar;
  if (set == "char_spaces") o.keep_spaces = true;
  return o;
}

TEST(WerFixture, RandomPairsMatchJiwerTotalsAndWenetSplits) {
  std::ifstream in(testing::fixture_path("wer_pairs.txt"));
  ASSERT_TRUE(in) << "missing tests/fixtures/wer_pairs.txt (tests/reference/make_wer_fixture.py writes it)";
  struct Corpus {
    std::vector<int64_t> jiwer;  // S D I H
    double rate = 0.0;
    WerCounts ours;
    int64_t pairs = 0;
    int64_t wenet_checked = 0;
  };
  std::map<std::string, Corpus> corpora;
  std::string line;
  int64_t pairs = 0;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const std::vector<std::string> f = split_tabs(line);
    if (f[0] == "corpus") {
      ASSERT_EQ(f.size(), 7u) << line;
      Corpus& c = corpora[f[1]];
      c.jiwer = {std::stoll(f[2]), std::stoll(f[3]), std::stoll(f[4]), std::stoll(f[5])};
      c.rate = std::stod(f[6]);
      continue;
    }
    ASSERT_EQ(f.size(), 6u) << line;
    ASSERT_EQ(f[0], "pair");
    const WerOptions o = options_for_set(f[1]);
    const Alignment a = align_tokens(tokenize_for_wer(f[2], o), tokenize_for_wer(f[3], o));
    const std::vector<int64_t> j = ints(f[4]);  // jiwer S D I H
    ASSERT_EQ(j.size(), 4u);
    EXPECT_EQ(a.counts.n, j[0] + j[1] + j[3]) << line;
    EXPECT_EQ(a.counts.errors(), j[0] + j[1] + j[2]) << line;
    Corpus& c = corpora[f[1]];
    if (f[5] != "-") {
      const std::vector<int64_t> w = ints(f[5]);  // WeNet N C S D I
      ASSERT_EQ(w.size(), 5u);
      expect_counts(a.counts, w[0], w[1], w[2], w[3], w[4]);
      ++c.wenet_checked;
    }
    c.ours += a.counts;
    ++c.pairs;
    ++pairs;
  }
  EXPECT_GE(pairs, 300);
  ASSERT_EQ(corpora.size(), 4u);
  for (const auto& [name, c] : corpora) {
    SCOPED_TRACE(name);
    ASSERT_EQ(c.jiwer.size(), 4u);
    EXPECT_GT(c.pairs, 0);
    EXPECT_EQ(c.ours.n, c.jiwer[0] + c.jiwer[1] + c.jiwer[3]);
    EXPECT_EQ(c.ours.errors(), c.jiwer[0] + c.jiwer[1] + c.jiwer[2]);
    EXPECT_NEAR(c.ours.wer_percent() / 100.0, c.rate, 1e-15);
    if (name != "char_spaces") {
      EXPECT_EQ(c.wenet_checked, c.pairs);
    }
  }
}

// ---- Files and the command ----------------------------------------------------------------------

class WerFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/moeasr_wer_test_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    for (const std::string& f : files_) std::remove(f.c_str());
    ::rmdir((dir_ + "/subdir").c_str());
    ::rmdir(dir_.c_str());
  }
  std::string write(const std::string& name, const std::string& content) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << content;
    files_.push_back(path);
    return path;
  }
  Status run(const std::string& ref, const std::string& hyp, const WerOptions& o = WerOptions{},
             WerFormat format = WerFormat::kBoth) {
    out_.str("");
    err_.str("");
    return compute_wer_files(ref, hyp, o, format, out_, err_);
  }
  std::string dir_;
  std::vector<std::string> files_;
  std::ostringstream out_, err_;
};

TEST_F(WerFiles, ScoresMissingExtraAndEmptyHypotheses) {
  const std::string ref = write("ref", "\xEF\xBB\xBFu1 the cat sat\r\nu2 on the mat\n\nu3 a dog\nu4 ran\n");
  const std::string hyp = write("hyp", "u1 the bat sat\nu2\nu4 ran away\nx9 stray line\n");
  const Status s = run(ref, hyp);
  ASSERT_TRUE(s.ok()) << s.to_string();
  // u1 S1, u2 empty hypothesis D3, u3 missing D2, u4 I1: N = 9, errors 7.
  EXPECT_NE(out_.str().find("\nOverall -> 77.78 % N=9 C=3 S=1 D=5 I=1\n"), std::string::npos) << out_.str();
  EXPECT_NE(out_.str().find("\n%WER 77.78 [ 7 / 9, 1 ins, 5 del, 1 sub ] [PARTIAL]\n"), std::string::npos);
  EXPECT_NE(out_.str().find("Scored 4 sentences, 1 not present in hyp.\n"), std::string::npos);
  EXPECT_NE(out_.str().find("utt: u3\nWER: 100.00 % N=2 C=0 S=0 D=2 I=0\n"), std::string::npos);
  EXPECT_NE(err_.str().find("no hypothesis"), std::string::npos) << err_.str();
  EXPECT_NE(err_.str().find("u3"), std::string::npos);
  EXPECT_NE(err_.str().find("no reference"), std::string::npos);
  EXPECT_NE(err_.str().find("x9"), std::string::npos);
  EXPECT_EQ(out_.str().find("x9"), std::string::npos);  // ignored

  ASSERT_TRUE(run(ref, hyp, WerOptions{}, WerFormat::kKaldi).ok());
  EXPECT_EQ(out_.str().find("Overall"), std::string::npos);
  ASSERT_TRUE(run(ref, hyp, WerOptions{}, WerFormat::kWenet).ok());
  EXPECT_EQ(out_.str().find("%WER"), std::string::npos);
}

TEST_F(WerFiles, BadInputsGiveClearErrors) {
  const std::string good = write("good", "u1 a b\n");
  Status s = run(dir_ + "/absent", good);
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_NE(s.message().find("reference file '" + dir_ + "/absent'"), std::string::npos) << s.message();

  s = run(good, write("empty", ""));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("hypothesis file '" + dir_ + "/empty' has no utterances"), std::string::npos)
      << s.message();
  s = run(write("blank", "\n  \n\t\n"), good);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("reference file"), std::string::npos) << s.message();

  ASSERT_EQ(::mkdir((dir_ + "/subdir").c_str(), 0700), 0);
  s = run(good, dir_ + "/subdir");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("is a directory"), std::string::npos) << s.message();

  s = run(write("latin1", "u1 ok\nu2 caf\xE9\n"), good);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("line 2 is not valid UTF-8"), std::string::npos) << s.message();

  s = run(good, write("dup", "u1 a\nu2 b\nu1 c\n"));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("line 3: key 'u1' already appeared on line 1"), std::string::npos)
      << s.message();

  WerOptions o;
  o.keep_spaces = true;
  EXPECT_EQ(run(good, good, o).code(), StatusCode::kInvalidArgument);
}

// Runs the built `moe-asr` binary (build/cli/moe-asr next to build/tests/) end to end: flags, output,
// exit codes. The binary is part of the default build.
std::string moe_asr_binary() {
  char exe[4096];
  const ssize_t len = ::readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (len <= 0) return "";
  std::string path(exe, static_cast<size_t>(len));
  for (int up = 0; up < 2; ++up) path = path.substr(0, path.rfind('/'));  // build/tests/x -> build
  return path + "/cli/moe-asr";
}

int run_command(const std::string& command, std::string* output) {
  output->clear();
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) return -1;
  std::array<char, 4096> buf;
  for (size_t n; (n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0;) output->append(buf.data(), n);
  const int status = ::pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST_F(WerFiles, CommandLine) {
  const std::string bin = moe_asr_binary();
  struct stat st;
  ASSERT_EQ(::stat(bin.c_str(), &st), 0) << "build the moe-asr target first: " << bin << " not found";
  const std::string ref = write("ref", "u1 你好 世界\nu2 Hello, World\n");
  const std::string hyp = write("hyp", "u1 你好 世\nu2 hello world\n");
  std::string out;
  EXPECT_EQ(run_command(bin + " compute_wer --ref " + ref + " --hyp " + hyp + " 2>&1", &out), 0) << out;
  EXPECT_NE(out.find("Overall -> 75.00 % N=4 C=1 S=3 D=0 I=0\n"), std::string::npos) << out;
  EXPECT_NE(out.find("%WER 75.00 [ 3 / 4, 0 ins, 0 del, 3 sub ]\n"), std::string::npos) << out;

  EXPECT_EQ(run_command(bin + " compute_wer " + ref + " " + hyp +
                            " --mode char --case_insensitive --remove_punctuation --format kaldi 2>&1",
                        &out),
            0)
      << out;
  EXPECT_EQ(out,
            "%WER 7.14 [ 1 / 14, 0 ins, 1 del, 0 sub ]\n%SER 50.00 [ 1 / 2 ]\nScored 2 sentences, 0 not "
            "present in hyp.\n");

  EXPECT_EQ(run_command(bin + " compute_wer --ref " + dir_ + "/nope --hyp " + hyp + " 2>&1", &out), 1);
  EXPECT_NE(out.find("reference file '" + dir_ + "/nope' cannot be read"), std::string::npos) << out;
  EXPECT_EQ(run_command(bin + " compute_wer --ref " + ref + " --hyp " + write("e", "") + " 2>&1", &out), 1);
  EXPECT_NE(out.find("has no utterances"), std::string::npos) << out;
  EXPECT_EQ(run_command(bin + " compute_wer --ref " + ref + " --hyp " + hyp + " --mode syllable 2>&1", &out),
            1);
  EXPECT_NE(out.find("--mode must be"), std::string::npos) << out;
  EXPECT_EQ(run_command(bin + " compute_wer --ref " + ref + " 2>&1", &out), 1);
  EXPECT_EQ(run_command(bin + " compute_wer --bogus 2>&1", &out), 1);
}

}  // namespace
}  // namespace moeasr
