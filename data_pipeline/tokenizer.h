// data_pipeline/tokenizer.h — text to token ids at read time, as WeNet's wenet/text/char_tokenizer.py
// and bpe_tokenizer.py with a units.txt symbol table (wenet/utils/file_utils.py read_symbol_table).
//
// units.txt: one "<symbol> <id>" per line, ids 0..N-1 each exactly once; "<blank>" is 0, "<unk>" must
// exist (WeNet puts it at 1) and "<sos/eos>" is N-1 (the model uses vocab_size-1 for both sos and eos).
//
// Character mode (WeNet CharTokenizer, split_with_space=false, no non-language symbols): the text is
// stripped of leading/trailing ASCII whitespace and split into UTF-8 characters; a space becomes "▁"
// (U+2581), exactly as CharTokenizer.text2tokens does. Case is kept (WeNet does not change case in char
// mode; prepare the text as the units were built). Invalid UTF-8 bytes are taken one byte at a time
// (and will normally be <unk>).
//
// BPE mode (WeNet BpeTokenizer / tokenize_by_bpe_model): the text is stripped and upper-cased (ASCII
// letters only; Python's str.upper() also maps non-ASCII letters, which we do not), split around CJK
// ideographs U+4E00..U+9FFF (each such character is a token of its own), and every other non-blank
// part is encoded into pieces by the sentencepiece model; pieces are looked up in units.txt.
//
// Any token not in units.txt maps to <unk>; encode() returns how many did, and the loader sums them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/status.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace moeasr {

// U+2581 LOWER ONE EIGHTH BLOCK, sentencepiece's and WeNet's word-boundary symbol.
constexpr const char* kWordBoundary = "\xE2\x96\x81";

enum class TokenizerMode { kChar, kBpe };

class Tokenizer {
 public:
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Reads units.txt; errors name the file and line (bad line, duplicate symbol or id, ids not
  // 0..N-1, missing <blank>/<unk>/<sos/eos>, <blank> not 0, <sos/eos> not last).
  static StatusOr<std::unique_ptr<Tokenizer>> create_char(const std::string& units_path);
  // Also loads the sentencepiece model at `bpe_model_path`.
  static StatusOr<std::unique_ptr<Tokenizer>> create_bpe(const std::string& units_path,
                                                         const std::string& bpe_model_path);
  // From an in-memory symbol list (symbol i has id i), validated as a units.txt would be.
  static StatusOr<std::unique_ptr<Tokenizer>> create_char_from_units(const std::vector<std::string>& units);

  // The token strings of `text` (before the lookup), as WeNet's text2tokens.
  std::vector<std::string> text_to_tokens(const std::string& text) const;
  // Appends the ids of `text` to `ids`; returns the number of tokens that were not in units.txt and
  // became <unk>. Thread-safe (const; sentencepiece's Encode is const).
  int64_t encode(const std::string& text, std::vector<int32_t>* ids) const;
  // Joins the symbols of `ids` (WeNet tokens2text: "" joined; in BPE mode "▁" -> ' ' and stripped;
  // in char mode "▁" -> ' ').
  std::string decode(const std::vector<int32_t>& ids) const;

  TokenizerMode mode() const { return mode_; }
  int64_t vocab_size() const { return static_cast<int64_t>(units_.size()); }
  int32_t blank_id() const { return 0; }
  int32_t unk_id() const { return unk_id_; }
  int32_t sos_eos_id() const { return static_cast<int32_t>(units_.size()) - 1; }
  const std::string& symbol(int32_t id) const;
  // -1 when absent.
  int32_t id_of(const std::string& symbol) const;

 private:
  Tokenizer() = default;
  static StatusOr<std::unique_ptr<Tokenizer>> from_units(std::vector<std::string> units,
                                                         const std::string& origin);
  void append_char_tokens(const std::string& part, std::vector<std::string>* tokens) const;

  TokenizerMode mode_ = TokenizerMode::kChar;
  std::vector<std::string> units_;
  std::unordered_map<std::string, int32_t> ids_;
  int32_t unk_id_ = 1;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> bpe_;
};

// Reads units.txt into a symbol list indexed by id (same validation as create_char).
StatusOr<std::vector<std::string>> read_units(const std::string& units_path);
// Writes "<symbol> <id>" lines, atomically (tmp + rename).
Status write_units(const std::string& units_path, const std::vector<std::string>& units);

// The character units of a training text, as WeNet's recipes build units.txt: "<blank>" 0, "<unk>" 1,
// then every distinct character of `texts` (space as "▁", after the same strip as char mode) sorted
// by bytes (LC_ALL=C sort, i.e. code point order), then "<sos/eos>" last.
std::vector<std::string> build_char_units(const std::vector<std::string>& texts);
// The units of a sentencepiece model: "<blank>" 0, "<unk>" 1, every normal piece of the model
// (control, unknown and unused pieces left out) sorted by bytes, "<sos/eos>" last. A superset of
// WeNet's recipe (which keeps only the pieces that occur in the encoded training text).
StatusOr<std::vector<std::string>> build_bpe_units(const std::string& bpe_model_path);

}  // namespace moeasr
