// data_pipeline/tokenizer.cc — WeNet's CharTokenizer / BpeTokenizer over a units.txt (see tokenizer.h).
#include "data_pipeline/tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>

namespace moeasr {
namespace {

constexpr const char* kBlank = "<blank>";
constexpr const char* kUnk = "<unk>";
constexpr const char* kSosEos = "<sos/eos>";

bool is_ascii_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

std::string strip(const std::string& text) {
  size_t begin = 0;
  size_t end = text.size();
  while (begin < end && is_ascii_space(text[begin])) ++begin;
  while (end > begin && is_ascii_space(text[end - 1])) --end;
  return text.substr(begin, end - begin);
}

// Length in bytes of the UTF-8 character starting at text[i]; 1 for an invalid or truncated
// sequence (the byte is then taken on its own).
size_t utf8_char_length(const std::string& text, size_t i) {
  unsigned char lead = static_cast<unsigned char>(text[i]);
  size_t length = 1;
  if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
  } else if (lead >= 0xE0) {
    length = lead <= 0xEF ? 3 : 1;
  } else if (lead >= 0xC2) {
    length = 2;
  }
  if (i + length > text.size()) return 1;
  for (size_t k = 1; k < length; ++k) {
    if ((static_cast<unsigned char>(text[i + k]) & 0xC0) != 0x80) return 1;
  }
  return length;
}

// The code point of a (valid) UTF-8 character of `length` bytes at text[i].
uint32_t utf8_code_point(const std::string& text, size_t i, size_t length) {
  const auto byte = [&](size_t k) { return static_cast<uint32_t>(static_cast<unsigned char>(text[i + k])); };
  switch (length) {
    case 1: return byte(0);
    case 2: return ((byte(0) & 0x1F) << 6) | (byte(1) & 0x3F);
    case 3: return ((byte(0) & 0x0F) << 12) | ((byte(1) & 0x3F) << 6) | (byte(2) & 0x3F);
    default:
      return ((byte(0) & 0x07) << 18) | ((byte(1) & 0x3F) << 12) | ((byte(2) & 0x3F) << 6) | (byte(3) & 0x3F);
  }
}

bool is_cjk(uint32_t code_point) {
  return code_point >= 0x4E00 && code_point <= 0x9FFF;
}

bool all_space(const std::string& text) {
  return std::all_of(text.begin(), text.end(), [](char c) { return is_ascii_space(c); });
}

Status validate_units(const std::vector<std::string>& units, const std::string& origin) {
  if (units.size() < 3) {
    return invalid_argument_error(origin +
                                  ": a units table needs at least <blank>, <unk> and <sos/eos>, found " +
                                  std::to_string(units.size()) + " symbols");
  }
  if (units.front() != kBlank) {
    return invalid_argument_error(origin + ": id 0 must be <blank> (WeNet's CTC blank), found '" +
                                  units.front() + "'");
  }
  if (units.back() != kSosEos) {
    return invalid_argument_error(origin + ": the last id (" + std::to_string(units.size() - 1) +
                                  ") must be <sos/eos>, found '" + units.back() + "'");
  }
  std::set<std::string> seen;
  for (size_t id = 0; id < units.size(); ++id) {
    if (units[id].empty())
      return invalid_argument_error(origin + ": id " + std::to_string(id) + " has no symbol");
    if (!seen.insert(units[id]).second) {
      return invalid_argument_error(origin + ": symbol '" + units[id] + "' appears twice (second at id " +
                                    std::to_string(id) + ")");
    }
  }
  if (!seen.count(kUnk))
    return invalid_argument_error(origin + ": no <unk> symbol (needed for out-of-vocabulary)");
  return Status();
}

}  // namespace

StatusOr<std::vector<std::string>> read_units(const std::string& units_path) {
  std::ifstream in(units_path);
  if (!in)
    return not_found_error("cannot open units file " + units_path + " (pass --symbol_table / units.txt)");
  std::vector<std::string> units;
  std::vector<bool> filled;
  std::string line;
  int64_t line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (all_space(line)) continue;
    std::istringstream fields(line);
    std::string symbol;
    std::string id_text;
    std::string extra;
    fields >> symbol >> id_text;
    const std::string where = units_path + ":" + std::to_string(line_number);
    if (symbol.empty() || id_text.empty() || (fields >> extra)) {
      return invalid_argument_error(where + ": expected '<symbol> <id>', got '" + line + "'");
    }
    char* end = nullptr;
    long long id = std::strtoll(id_text.c_str(), &end, 10);
    if (*end != '\0' || id < 0 || id > 100000000) {
      return invalid_argument_error(where + ": bad id '" + id_text + "'");
    }
    if (static_cast<size_t>(id) >= units.size()) {
      units.resize(id + 1);
      filled.resize(id + 1, false);
    }
    if (filled[id]) return invalid_argument_error(where + ": id " + id_text + " given twice");
    units[id] = symbol;
    filled[id] = true;
  }
  for (size_t id = 0; id < filled.size(); ++id) {
    if (!filled[id]) {
      return invalid_argument_error(units_path + ": ids must be 0.." + std::to_string(filled.size() - 1) +
                                    " without gaps; id " + std::to_string(id) + " is missing");
    }
  }
  RETURN_IF_ERROR(validate_units(units, units_path));
  return units;
}

Status write_units(const std::string& units_path, const std::vector<std::string>& units) {
  RETURN_IF_ERROR(validate_units(units, units_path));
  const std::string tmp = units_path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return io_error("cannot write " + tmp + " (check the directory exists and is writable)");
    for (size_t id = 0; id < units.size(); ++id) out << units[id] << ' ' << id << '\n';
    out.flush();
    if (!out) return io_error("write failed for " + tmp);
  }
  if (std::rename(tmp.c_str(), units_path.c_str()) != 0) {
    return io_error("cannot rename " + tmp + " to " + units_path);
  }
  return Status();
}

std::vector<std::string> build_char_units(const std::vector<std::string>& texts) {
  std::set<std::string> chars;
  for (const std::string& raw : texts) {
    const std::string text = strip(raw);
    for (size_t i = 0; i < text.size();) {
      size_t length = utf8_char_length(text, i);
      std::string ch = text.substr(i, length);
      chars.insert(ch == " " ? std::string(kWordBoundary) : ch);
      i += length;
    }
  }
  chars.erase(kBlank);
  chars.erase(kUnk);
  chars.erase(kSosEos);
  std::vector<std::string> units = {kBlank, kUnk};
  units.insert(units.end(), chars.begin(), chars.end());  // std::set<std::string>: byte order
  units.push_back(kSosEos);
  return units;
}

StatusOr<std::vector<std::string>> build_bpe_units(const std::string& bpe_model_path) {
  sentencepiece::SentencePieceProcessor processor;
  auto status = processor.Load(bpe_model_path);
  if (!status.ok()) {
    return not_found_error("cannot load sentencepiece model " + bpe_model_path + ": " + status.ToString());
  }
  std::set<std::string> pieces;
  for (int id = 0; id < processor.GetPieceSize(); ++id) {
    if (processor.IsControl(id) || processor.IsUnknown(id) || processor.IsUnused(id)) continue;
    pieces.insert(processor.IdToPiece(id));
  }
  pieces.erase(kBlank);
  pieces.erase(kUnk);
  pieces.erase(kSosEos);
  std::vector<std::string> units = {kBlank, kUnk};
  units.insert(units.end(), pieces.begin(), pieces.end());
  units.push_back(kSosEos);
  return units;
}

Tokenizer::~Tokenizer() = default;

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::from_units(std::vector<std::string> units,
                                                           const std::string& origin) {
  RETURN_IF_ERROR(validate_units(units, origin));
  std::unique_ptr<Tokenizer> tokenizer(new Tokenizer());
  tokenizer->units_ = std::move(units);
  for (size_t id = 0; id < tokenizer->units_.size(); ++id) {
    tokenizer->ids_.emplace(tokenizer->units_[id], static_cast<int32_t>(id));
  }
  tokenizer->unk_id_ = tokenizer->ids_.at(kUnk);
  return tokenizer;
}

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::create_char(const std::string& units_path) {
  ASSIGN_OR_RETURN(std::vector<std::string> units, read_units(units_path));
  return from_units(std::move(units), units_path);
}

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::create_char_from_units(
    const std::vector<std::string>& units) {
  return from_units(units, "units table");
}

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::create_bpe(const std::string& units_path,
                                                           const std::string& bpe_model_path) {
  ASSIGN_OR_RETURN(std::vector<std::string> units, read_units(units_path));
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, from_units(std::move(units), units_path));
  tokenizer->bpe_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  auto status = tokenizer->bpe_->Load(bpe_model_path);
  if (!status.ok()) {
    return not_found_error("cannot load sentencepiece model " + bpe_model_path +
                           " (pass --bpe_model): " + status.ToString());
  }
  tokenizer->mode_ = TokenizerMode::kBpe;
  return tokenizer;
}

void Tokenizer::append_char_tokens(const std::string& part, std::vector<std::string>* tokens) const {
  for (size_t i = 0; i < part.size();) {
    size_t length = utf8_char_length(part, i);
    if (length == 1 && part[i] == ' ') {
      tokens->emplace_back(kWordBoundary);
    } else {
      tokens->push_back(part.substr(i, length));
    }
    i += length;
  }
}

std::vector<std::string> Tokenizer::text_to_tokens(const std::string& text) const {
  std::vector<std::string> tokens;
  std::string line = strip(text);
  if (mode_ == TokenizerMode::kChar) {
    append_char_tokens(line, &tokens);
    return tokens;
  }
  for (char& c : line) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  }
  // Split around CJK ideographs; encode the other parts (when not blank) with sentencepiece.
  std::string part;
  const auto flush = [&]() {
    if (!part.empty() && !all_space(part)) {
      std::vector<std::string> pieces;
      auto status = bpe_->Encode(part, &pieces);
      CHECK(status.ok()) << "sentencepiece Encode failed: " << status.ToString();
      tokens.insert(tokens.end(), pieces.begin(), pieces.end());
    }
    part.clear();
  };
  for (size_t i = 0; i < line.size();) {
    size_t length = utf8_char_length(line, i);
    if (length == 3 && is_cjk(utf8_code_point(line, i, length))) {
      flush();
      tokens.push_back(line.substr(i, length));
    } else {
      part.append(line, i, length);
    }
    i += length;
  }
  flush();
  return tokens;
}

int64_t Tokenizer::encode(const std::string& text, std::vector<int32_t>* ids) const {
  int64_t unknown = 0;
  for (const std::string& token : text_to_tokens(text)) {
    auto it = ids_.find(token);
    if (it == ids_.end()) {
      ids->push_back(unk_id_);
      ++unknown;
    } else {
      ids->push_back(it->second);
    }
  }
  return unknown;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string text;
  for (int32_t id : ids) text += symbol(id);
  std::string out;
  const std::string boundary = kWordBoundary;
  for (size_t i = 0; i < text.size();) {
    if (text.compare(i, boundary.size(), boundary) == 0) {
      out += ' ';
      i += boundary.size();
    } else {
      out += text[i++];
    }
  }
  return mode_ == TokenizerMode::kBpe ? strip(out) : out;
}

const std::string& Tokenizer::symbol(int32_t id) const {
  CHECK(id >= 0 && id < static_cast<int32_t>(units_.size()))
      << "token id " << id << " out of [0, " << units_.size() << ")";
  return units_[id];
}

int32_t Tokenizer::id_of(const std::string& symbol) const {
  auto it = ids_.find(symbol);
  return it == ids_.end() ? -1 : it->second;
}

}  // namespace moeasr
