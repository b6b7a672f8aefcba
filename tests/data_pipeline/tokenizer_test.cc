// tests/data_pipeline/tokenizer_test.cc — units.txt reading/writing and validation (errors name the
// file and line), character units built from text (sorted, specials first/last), WeNet char
// tokenization (UTF-8 characters, space -> "▁", strip, <unk> counted), and sentencepiece BPE with a
// tiny model trained here through sentencepiece's trainer API (WeNet upper-casing, CJK split, pieces
// equal to the model's own encoding, <unk> counted, decode round trip).
#include "data_pipeline/tokenizer.h"

#include <gtest/gtest.h>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace moeasr {
namespace {

const std::string kBoundary = kWordBoundary;

class TempDir {
 public:
  explicit TempDir(const std::string& name) {
    path_ = std::filesystem::temp_directory_path() /
            ("moeasr_tokenizer_test_" + std::to_string(::getpid()) + "_" + name);
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

TEST(TokenizerTest, BuildCharUnitsSortedWithSpecials) {
  std::vector<std::string> units = build_char_units({"  ba c\n", "cab", "h\xC3\xA9"});  // "hé"
  std::vector<std::string> expected = {"<blank>", "<unk>",    "a",       "b",        "c",
                                       "h",       "\xC3\xA9", kBoundary, "<sos/eos>"};
  EXPECT_EQ(units, expected);
}

TEST(TokenizerTest, UnitsRoundTripAndCharEncodeCountsUnk) {
  TempDir dir("roundtrip");
  const std::string path = dir.file("units.txt");
  ASSERT_TRUE(write_units(path, build_char_units({"ab c", "h\xC3\xA9"})).ok());
  auto units = read_units(path);
  ASSERT_TRUE(units.ok()) << units.status().to_string();
  EXPECT_EQ(units.value().front(), "<blank>");
  EXPECT_EQ(units.value().back(), "<sos/eos>");

  auto tokenizer_or = Tokenizer::create_char(path);
  ASSERT_TRUE(tokenizer_or.ok()) << tokenizer_or.status().to_string();
  const Tokenizer& tok = *tokenizer_or.value();
  EXPECT_EQ(tok.mode(), TokenizerMode::kChar);
  EXPECT_EQ(tok.vocab_size(), 9);
  EXPECT_EQ(tok.blank_id(), 0);
  EXPECT_EQ(tok.unk_id(), 1);
  EXPECT_EQ(tok.sos_eos_id(), 8);

  // Leading/trailing whitespace stripped; inner space -> ▁; 'd', 'x' and 'ü' unknown.
  std::vector<std::string> tokens = tok.text_to_tokens("  ab cd x\xC3\xBC\n");
  std::vector<std::string> expected_tokens = {"a", "b", kBoundary, "c", "d", kBoundary, "x", "\xC3\xBC"};
  EXPECT_EQ(tokens, expected_tokens);
  std::vector<int32_t> ids = {42};  // encode appends
  int64_t unknown = tok.encode("  ab cd x\xC3\xBC\n", &ids);
  EXPECT_EQ(unknown, 3);
  const int32_t a = tok.id_of("a"), b = tok.id_of("b"), c = tok.id_of("c"), sp = tok.id_of(kBoundary);
  std::vector<int32_t> expected_ids = {42, a, b, sp, c, 1, sp, 1, 1};
  EXPECT_EQ(ids, expected_ids);
  EXPECT_EQ(a, 2);
  EXPECT_EQ(sp, 7);

  ids.clear();
  EXPECT_EQ(tok.encode("h\xC3\xA9 ab", &ids), 0);
  EXPECT_EQ(tok.decode(ids), "h\xC3\xA9 ab");
  ids.clear();
  EXPECT_EQ(tok.encode("   ", &ids), 0);
  EXPECT_TRUE(ids.empty());
}

TEST(TokenizerTest, InvalidUtf8BytesAreSingleTokens) {
  auto tok = Tokenizer::create_char_from_units({"<blank>", "<unk>", "a", "<sos/eos>"});
  ASSERT_TRUE(tok.ok());
  std::vector<int32_t> ids;
  EXPECT_EQ(tok.value()->encode("a\xC3", &ids), 1);  // truncated 2-byte sequence
  EXPECT_EQ(ids, (std::vector<int32_t>{2, 1}));
}

TEST(TokenizerTest, BadUnitsFilesNameFileAndLine) {
  TempDir dir("bad_units");
  struct Case {
    std::string text;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {"<blank> 0\n<unk> 1\na\n<sos/eos> 3\n", "units.txt:3"},
      {"<blank> 0\n<unk> 1\na 1\n<sos/eos> 3\n", "units.txt:3: id 1 given twice"},
      {"<blank> 0\n<unk> 1\n<sos/eos> 3\n", "id 2 is missing"},
      {"<blank> 0\na 1\n<sos/eos> 2\n", "no <unk>"},
      {"<unk> 0\n<blank> 1\n<sos/eos> 2\n", "id 0 must be <blank>"},
      {"<blank> 0\n<unk> 1\n<sos/eos> 2\na 3\n", "must be <sos/eos>"},
      {"<blank> 0\n<unk> 1\na 2\na 3\n<sos/eos> 4\n", "appears twice"},
      {"<blank> 0\n<unk> x\n<sos/eos> 2\n", "units.txt:2: bad id 'x'"},
  };
  for (const Case& c : cases) {
    const std::string path = dir.file("units.txt");
    write_text(path, c.text);
    auto tok = Tokenizer::create_char(path);
    ASSERT_FALSE(tok.ok()) << c.text;
    EXPECT_NE(tok.status().message().find(c.expect), std::string::npos) << tok.status().message();
    EXPECT_NE(tok.status().message().find(path), std::string::npos) << tok.status().message();
  }
  auto missing = Tokenizer::create_char(dir.file("nope.txt"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("nope.txt"), std::string::npos);
}

// A tiny BPE model trained in the test on a small English text.
class BpeTokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string corpus = dir_.file("corpus.txt");
    {
      std::ofstream out(corpus);
      const char* lines[] = {"the quick brown fox jumps over the lazy dog",
                             "hello world hello there",
                             "speech recognition with mixture of experts",
                             "the world is a stage",
                             "quick thinking wins the day",
                             "hello hello world wide web"};
      for (int repeat = 0; repeat < 20; ++repeat) {
        for (const char* line : lines) {
          std::string upper = line;
          for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
          out << upper << "\n";
        }
      }
    }
    model_prefix_ = dir_.file("bpe");
    auto status =
        sentencepiece::SentencePieceTrainer::Train("--input=" + corpus + " --model_prefix=" + model_prefix_ +
                                                   " --vocab_size=60 --model_type=bpe "
                                                   "--character_coverage=1.0 --minloglevel=2");
    ASSERT_TRUE(status.ok()) << status.ToString();
    model_ = model_prefix_ + ".model";
  }
  TempDir dir_{"bpe"};
  std::string model_prefix_;
  std::string model_;
};

TEST_F(BpeTokenizerTest, PiecesMatchModelAndUnkCounted) {
  auto units = build_bpe_units(model_);
  ASSERT_TRUE(units.ok()) << units.status().to_string();
  EXPECT_EQ(units.value()[0], "<blank>");
  EXPECT_EQ(units.value()[1], "<unk>");
  EXPECT_EQ(units.value().back(), "<sos/eos>");
  for (const std::string& u : units.value()) {
    EXPECT_NE(u, "<s>");
    EXPECT_NE(u, "</s>");
  }
  EXPECT_TRUE(std::is_sorted(units.value().begin() + 2, units.value().end() - 1));
  const std::string units_path = dir_.file("units.txt");
  ASSERT_TRUE(write_units(units_path, units.value()).ok());
  auto tokenizer_or = Tokenizer::create_bpe(units_path, model_);
  ASSERT_TRUE(tokenizer_or.ok()) << tokenizer_or.status().to_string();
  const Tokenizer& tok = *tokenizer_or.value();
  EXPECT_EQ(tok.mode(), TokenizerMode::kBpe);

  sentencepiece::SentencePieceProcessor sp;
  ASSERT_TRUE(sp.Load(model_).ok());
  std::vector<std::string> reference;
  ASSERT_TRUE(sp.Encode("HELLO WORLD THE QUICK DOG", &reference).ok());
  // Lower case is upper-cased first, as WeNet's tokenize_by_bpe_model does.
  EXPECT_EQ(tok.text_to_tokens("  hello world the Quick dog "), reference);
  std::vector<int32_t> ids;
  EXPECT_EQ(tok.encode("hello world the quick dog", &ids), 0);
  ASSERT_EQ(ids.size(), reference.size());
  for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(tok.symbol(ids[i]), reference[i]);
  EXPECT_EQ(tok.decode(ids), "HELLO WORLD THE QUICK DOG");

  // CJK ideographs are tokens of their own (and not in these units: <unk>, counted).
  std::vector<std::string> cjk = tok.text_to_tokens("\xE4\xBD\xA0\xE5\xA5\xBD hello");  // 你好 hello
  ASSERT_GE(cjk.size(), 3u);
  EXPECT_EQ(cjk[0], "\xE4\xBD\xA0");
  EXPECT_EQ(cjk[1], "\xE5\xA5\xBD");
  std::vector<std::string> hello;
  ASSERT_TRUE(sp.Encode("HELLO", &hello).ok());
  EXPECT_EQ(std::vector<std::string>(cjk.begin() + 2, cjk.end()), hello);
  ids.clear();
  EXPECT_EQ(tok.encode("\xE4\xBD\xA0\xE5\xA5\xBD hello", &ids), 2);
  EXPECT_EQ(ids[0], tok.unk_id());
  EXPECT_EQ(ids[1], tok.unk_id());

  // A piece missing from units.txt becomes <unk> and is counted.
  std::vector<std::string> fewer = {"<blank>", "<unk>", "<sos/eos>"};
  const std::string small_units = dir_.file("small_units.txt");
  ASSERT_TRUE(write_units(small_units, fewer).ok());
  auto small = Tokenizer::create_bpe(small_units, model_);
  ASSERT_TRUE(small.ok());
  ids.clear();
  int64_t unknown_small = small.value()->encode("hello world", &ids);
  EXPECT_FALSE(ids.empty());
  EXPECT_EQ(unknown_small, static_cast<int64_t>(ids.size()));
  for (int32_t id : ids) EXPECT_EQ(id, 1);

  auto no_model = Tokenizer::create_bpe(units_path, dir_.file("missing.model"));
  ASSERT_FALSE(no_model.ok());
  EXPECT_NE(no_model.status().message().find("missing.model"), std::string::npos);
}

}  // namespace
}  // namespace moeasr
