// data_pipeline/data_list.cc — Kaldi data dir and WeNet data.list reading (see data_list.h), with the
// consistency checks of Kaldi's utils/validate_data_dir.sh.
#include "data_pipeline/data_list.h"

#include <sndfile.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include <utility>

namespace moeasr {
namespace {

struct Line {
  std::string where;  // "file:line"
  std::string first;  // first whitespace-separated field
  std::string rest;   // the remainder, trimmed
};

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && is_space(s[b])) ++b;
  while (e > b && is_space(s[e - 1])) --e;
  return s.substr(b, e - b);
}

// Reads "<first> <rest>" lines, skipping blank ones; a duplicate first field is an error.
Status read_keyed_lines(const std::string& path, std::vector<Line>* lines) {
  std::ifstream in(path);
  if (!in) return not_found_error("cannot open " + path + " (" + std::strerror(errno) + ")");
  std::unordered_map<std::string, int64_t> seen;
  std::string raw;
  int64_t number = 0;
  while (std::getline(in, raw)) {
    ++number;
    std::string s = trim(raw);
    if (s.empty()) continue;
    size_t split = 0;
    while (split < s.size() && !is_space(s[split])) ++split;
    Line line;
    line.where = path + ":" + std::to_string(number);
    line.first = s.substr(0, split);
    line.rest = trim(s.substr(split));
    auto [it, inserted] = seen.emplace(line.first, number);
    if (!inserted) {
      return invalid_argument_error(line.where + ": duplicate key '" + line.first + "' (first at line " +
                                    std::to_string(it->second) + ")");
    }
    lines->push_back(std::move(line));
  }
  if (in.bad()) return io_error("error reading " + path);
  return Status();
}

bool parse_double(const std::string& s, double* value) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  *value = std::strtod(s.c_str(), &end);
  return errno == 0 && end == s.c_str() + s.size() && std::isfinite(*value);
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace

StatusOr<std::vector<Utterance>> read_kaldi_data_dir(const std::string& dir) {
  const std::string wav_scp = dir + "/wav.scp";
  const std::string text_path = dir + "/text";
  const std::string segments_path = dir + "/segments";
  if (!file_exists(wav_scp))
    return not_found_error(dir + " is not a Kaldi data dir: " + wav_scp + " is missing");
  if (!file_exists(text_path))
    return not_found_error(dir + " is not a Kaldi data dir: " + text_path + " is missing");
  std::vector<Line> wavs, texts;
  RETURN_IF_ERROR(read_keyed_lines(wav_scp, &wavs));
  RETURN_IF_ERROR(read_keyed_lines(text_path, &texts));
  std::unordered_map<std::string, size_t> wav_of;
  for (size_t i = 0; i < wavs.size(); ++i) {
    const Line& w = wavs[i];
    if (w.rest.empty()) return invalid_argument_error(w.where + ": no path after key '" + w.first + "'");
    if (w.rest.back() == '|') {
      return invalid_argument_error(
          w.where + ": '" + w.rest +
          "' is a pipe command; make_shards reads audio files only (write the audio "
          "to files first, e.g. with Kaldi's wav-copy)");
    }
    wav_of[w.first] = i;
  }
  std::vector<Utterance> utts;
  if (file_exists(segments_path)) {
    std::vector<Line> segments;
    RETURN_IF_ERROR(read_keyed_lines(segments_path, &segments));
    for (const Line& s : segments) {
      // "<rec> <start> <end>"
      std::vector<std::string> fields;
      size_t p = 0;
      while (p < s.rest.size()) {
        while (p < s.rest.size() && is_space(s.rest[p])) ++p;
        size_t q = p;
        while (q < s.rest.size() && !is_space(s.rest[q])) ++q;
        if (q > p) fields.push_back(s.rest.substr(p, q - p));
        p = q;
      }
      double start = 0, end = 0;
      if (fields.size() != 3 || !parse_double(fields[1], &start) || !parse_double(fields[2], &end)) {
        return invalid_argument_error(s.where + ": expected '<utt> <recording> <start> <end>'");
      }
      if (start < 0 || (end >= 0 && end <= start) || (end < 0 && end != -1)) {
        return invalid_argument_error(s.where + ": bad times start " + fields[1] + ", end " + fields[2] +
                                      " (need 0 <= start < end, or end -1 for the end of the recording)");
      }
      auto it = wav_of.find(fields[0]);
      if (it == wav_of.end()) {
        return invalid_argument_error(s.where + ": recording '" + fields[0] + "' is not in " + wav_scp);
      }
      Utterance u;
      u.key = s.first;
      u.wav = wavs[it->second].rest;
      u.start = start;
      u.end = end;
      u.origin = s.where;
      utts.push_back(std::move(u));
    }
  } else {
    for (const Line& w : wavs) {
      Utterance u;
      u.key = w.first;
      u.wav = w.rest;
      u.origin = w.where;
      utts.push_back(std::move(u));
    }
  }
  std::unordered_map<std::string, size_t> utt_of;
  for (size_t i = 0; i < utts.size(); ++i) utt_of[utts[i].key] = i;
  std::vector<bool> has_text(utts.size(), false);
  for (const Line& t : texts) {
    auto it = utt_of.find(t.first);
    if (it == utt_of.end()) {
      return invalid_argument_error(t.where + ": utterance '" + t.first + "' has no audio (not in " +
                                    (file_exists(segments_path) ? segments_path : wav_scp) +
                                    "); fix the data dir, e.g. with Kaldi's utils/fix_data_dir.sh");
    }
    utts[it->second].text = t.rest;
    has_text[it->second] = true;
  }
  for (size_t i = 0; i < utts.size(); ++i) {
    if (!has_text[i]) {
      return invalid_argument_error(utts[i].origin + ": utterance '" + utts[i].key + "' has no line in " +
                                    text_path +
                                    "; fix the data dir, e.g. with Kaldi's utils/fix_data_dir.sh");
    }
  }
  return utts;
}

StatusOr<std::vector<Utterance>> read_data_list(const std::string& path) {
  std::ifstream in(path);
  if (!in) return not_found_error("cannot open data list " + path + " (" + std::strerror(errno) + ")");
  std::vector<Utterance> utts;
  std::unordered_map<std::string, int64_t> seen;
  std::string raw;
  int64_t number = 0;
  while (std::getline(in, raw)) {
    ++number;
    const std::string where = path + ":" + std::to_string(number);
    if (trim(raw).empty()) continue;
    nlohmann::json j = nlohmann::json::parse(raw, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      return invalid_argument_error(where + ": not a JSON object (expected {\"key\", \"wav\", \"txt\"})");
    }
    Utterance u;
    u.origin = where;
    const std::pair<const char*, std::string*> strings[] = {
        {"key", &u.key}, {"wav", &u.wav}, {"txt", &u.text}};
    for (auto [name, field] : strings) {
      auto it = j.find(name);
      if (it == j.end() || !it->is_string()) {
        return invalid_argument_error(where + ": missing string field \"" + name + "\"");
      }
      *field = it->get<std::string>();
    }
    if (u.key.empty() || u.wav.empty()) return invalid_argument_error(where + ": empty \"key\" or \"wav\"");
    const std::pair<const char*, double*> numbers[] = {{"start", &u.start}, {"end", &u.end}};
    for (auto [name, field] : numbers) {
      auto it = j.find(name);
      if (it == j.end()) continue;
      if (!it->is_number()) return invalid_argument_error(where + ": \"" + name + "\" is not a number");
      *field = it->get<double>();
    }
    if (u.start < 0 || (u.end >= 0 && u.end <= u.start)) {
      return invalid_argument_error(where + ": bad \"start\"/\"end\" (need 0 <= start < end)");
    }
    auto [it, inserted] = seen.emplace(u.key, number);
    if (!inserted) {
      return invalid_argument_error(where + ": duplicate key '" + u.key + "' (first at line " +
                                    std::to_string(it->second) + ")");
    }
    utts.push_back(std::move(u));
  }
  if (in.bad()) return io_error("error reading " + path);
  return utts;
}

StatusOr<double> probe_audio_duration(const std::string& path) {
  if (!file_exists(path)) return not_found_error("audio file " + path + " does not exist");
  SF_INFO info;
  std::memset(&info, 0, sizeof(info));
  SNDFILE* file = sf_open(path.c_str(), SFM_READ, &info);
  if (file == nullptr) {
    return data_loss_error("cannot open audio file " + path + " (" + sf_strerror(nullptr) + ")");
  }
  sf_close(file);
  if (info.samplerate <= 0) return data_loss_error("audio file " + path + " has no sample rate");
  return static_cast<double>(info.frames) / info.samplerate;
}

StatusOr<double> utterance_duration(const Utterance& utt) {
  if (utt.end >= 0) return utt.end - utt.start;
  ASSIGN_OR_RETURN(double total, probe_audio_duration(utt.wav));
  return std::max(0.0, total - utt.start);
}

}  // namespace moeasr
