// data_pipeline/data_list.h — the utterance lists make_shards reads: a Kaldi data dir (wav.scp, text,
// optional segments; as utils/validate_data_dir.sh expects them) or a WeNet data.list (JSON lines
// {"key", "wav", "txt"[, "start", "end"]}, as tools/make_raw_list.py writes). Errors name the file and
// line.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"

namespace moeasr {

struct Utterance {
  std::string key;
  std::string wav;     // audio file path (pipes "cmd |" are rejected)
  std::string text;    // transcript, may be empty (make_shards counts it as bad)
  double start = 0;    // seconds into `wav`
  double end = -1;     // seconds; < 0: to the end of the file
  std::string origin;  // "file:line" the utterance came from, for messages
};

// Kaldi data dir: `dir/wav.scp` ("<rec> <path>"), `dir/text` ("<utt> <transcript>") and, when present,
// `dir/segments` ("<utt> <rec> <start> <end>", end -1 = to the end). Utterances come in the order of
// segments (or wav.scp). Errors: missing file, malformed or duplicate line, a pipe in wav.scp, a
// segment naming an unknown recording, an utterance with no text line, a text line with no utterance.
StatusOr<std::vector<Utterance>> read_kaldi_data_dir(const std::string& dir);

// WeNet data.list: one JSON object per line with string "key", "wav", "txt" and optional numeric
// "start"/"end" (seconds). Errors: bad JSON, a missing/mistyped field, a duplicate key.
StatusOr<std::vector<Utterance>> read_data_list(const std::string& path);

// Seconds of audio in `path` from its header alone (libsndfile: frames / sample rate), for planning
// shards by hours without decoding. Errors name the file.
StatusOr<double> probe_audio_duration(const std::string& path);
// The planned duration of an utterance: end - start for a closed segment, else the file's duration
// (from probe_audio_duration) minus start.
StatusOr<double> utterance_duration(const Utterance& utt);

}  // namespace moeasr
