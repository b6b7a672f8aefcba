// cli/cmd_make_shards.cc — `moe-asr make_shards`: a Kaldi data dir (wav.scp, text, [segments]) or a
// WeNet data.list -> HDF5 fbank shards (data_pipeline/shard.h) + out_dir/manifest.jsonl. WeNet's
// tools/make_shard_list.py in spirit (--num_utts_per_shard, --num_threads), with stored features.
//
// Plan: utterances are dealt to shards in input order (the same input gives the same shards), by
// --num_utts_per_shard, or by --hours_per_shard using each file's header duration (a libsndfile
// header read per file; for very large corpora --num_utts_per_shard avoids it). Shard i is
// out_dir/shards/shard_%06d.h5. --shard_range a:b makes only shards a <= i < b (Slurm arrays:
// --shard_range $((ID*K)):$(((ID+1)*K)); b is clipped to the shard count).
//
// Features: audio read at 16 kHz in int16 scale (data_pipeline/audio.h), Kaldi fbank
// (data_pipeline/fbank.h) with --num_mel_bins and --dither. Stored features use dither 0 by default:
// WeNet applies dither 1.0 while training, on the fly; a stored dither would be frozen into every epoch.
// With --dither > 0 the noise is a Philox stream keyed by (--seed, utterance index), so reruns agree.
// --num_threads workers read audio and compute features; one thread writes HDF5 (it is not
// thread-safe), in input order (or, with --sort_by_length, in order of increasing duration inside
// each shard, as NeMo's --sort_in_shards).
//
// Resume and atomicity: a shard is written to "<shard>.tmp" and renamed when complete; then its
// manifest line (plus planned_utts and bad_utts) is written atomically to "<shard>.json". A rerun
// skips shard i when the final file exists and its record (the .json, or else its line in an existing
// manifest.jsonl) has the planned utterance count and the file's size; a final file with no valid record
// is opened and validated (ShardReader), then recorded. manifest.jsonl is (re)written, atomically, when
// every planned shard is done: by the run that finishes the last one, or by a rerun without
// --shard_range.
//
// Bad utterances (missing/unreadable audio, empty or all-zero audio, too short for one frame,
// NaN/inf features, empty text) are skipped with an error naming the key, its source line and the
// file, and counted; the run fails when the bad fraction over the planned shards' utterances exceeds
// --max_bad_fraction (it stops as soon as that is certain).
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <boost/program_options.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "cli/commands.h"
#include "core/logging.h"
#include "core/philox.h"
#include "data_pipeline/audio.h"
#include "data_pipeline/data_list.h"
#include "data_pipeline/fbank.h"
#include "data_pipeline/shard.h"

namespace moeasr {
namespace {

namespace po = boost::program_options;

struct Options {
  std::string data_dir;
  std::string data_list;
  std::string out_dir;
  int64_t num_utts_per_shard = 0;
  double hours_per_shard = 0;
  int num_threads = 1;
  std::string shard_range;
  int num_mel_bins = 80;
  double dither = 0.0;
  uint64_t seed = 0;
  bool sort_by_length = false;
  double max_bad_fraction = 0.01;
};

struct ShardPlan {
  int64_t index = 0;
  std::vector<int64_t> utts;  // indices into the utterance list, in writing order
  std::string rel_path;       // relative to out_dir
};

struct UttResult {
  std::string error;  // empty: good
  std::vector<float> feats;
  int64_t frames = 0;
  float duration = 0;
};

bool file_size(const std::string& path, int64_t* size) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return false;
  *size = static_cast<int64_t>(st.st_size);
  return true;
}

std::string shard_rel_path(int64_t index) {
  char name[64];
  std::snprintf(name, sizeof(name), "shards/shard_%06lld.h5", static_cast<long long>(index));
  return name;
}

// The per-shard record "<shard>.json": a manifest line plus planned_utts and bad_utts.
struct ShardRecord {
  ManifestEntry entry;
  int64_t planned_utts = 0;
  int64_t bad_utts = 0;
};

Status write_record(const std::string& path, const ShardRecord& r) {
  nlohmann::ordered_json j;
  j["path"] = r.entry.path;
  j["num_utts"] = r.entry.num_utts;
  j["num_frames"] = r.entry.num_frames;
  j["bytes"] = r.entry.bytes;
  j["sha256"] = r.entry.sha256;
  j["planned_utts"] = r.planned_utts;
  j["bad_utts"] = r.bad_utts;
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << j.dump() << '\n';
    out.flush();
    if (!out) return io_error("cannot write " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) return io_error("cannot rename " + tmp + " to " + path);
  return Status();
}

bool read_record(const std::string& path, ShardRecord* r) {
  std::ifstream in(path);
  if (!in) return false;
  std::string line;
  std::getline(in, line);
  nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return false;
  try {
    r->entry.path = j.at("path").get<std::string>();
    r->entry.num_utts = j.at("num_utts").get<int64_t>();
    r->entry.num_frames = j.at("num_frames").get<int64_t>();
    r->entry.bytes = j.at("bytes").get<int64_t>();
    r->entry.sha256 = j.at("sha256").get<std::string>();
    r->planned_utts = j.at("planned_utts").get<int64_t>();
    r->bad_utts = j.at("bad_utts").get<int64_t>();
  } catch (const nlohmann::json::exception&) {
    return false;
  }
  return true;
}

Status parse_shard_range(const std::string& text, int64_t num_shards, int64_t* begin, int64_t* end) {
  *begin = 0;
  *end = num_shards;
  if (text.empty()) return Status();
  const size_t colon = text.find(':');
  auto parse = [](const std::string& s, int64_t* v) {
    if (s.empty()) return false;
    char* e = nullptr;
    long long x = std::strtoll(s.c_str(), &e, 10);
    if (e != s.c_str() + s.size() || x < 0) return false;
    *v = x;
    return true;
  };
  const std::string a = colon == std::string::npos ? text : text.substr(0, colon);
  const std::string b = colon == std::string::npos ? "" : text.substr(colon + 1);
  if (colon == std::string::npos || !parse(a, begin) || (!b.empty() && !parse(b, end)) || *end < *begin) {
    return invalid_argument_error("--shard_range '" + text +
                                  "': expected a:b with 0 <= a <= b (shards a .. b-1; b may be omitted)");
  }
  *end = std::min(*end, num_shards);
  *begin = std::min(*begin, *end);
  return Status();
}

// Reads, checks and featurises one utterance (worker thread; `computer` is this thread's own).
UttResult compute_utterance(const Utterance& u, int64_t utt_index, FbankComputer* computer,
                            const Options& opt) {
  UttResult r;
  auto bad = [&](const std::string& why) {
    r.error = "bad utterance '" + u.key + "' (" + u.origin + ", " + u.wav + "): " + why;
    return r;
  };
  if (u.text.find_first_not_of(" \t\r\n") == std::string::npos) return bad("empty text");
  StatusOr<Audio> audio = read_audio(u.wav);
  if (!audio.ok()) return bad(audio.status().message());
  std::vector<float>& samples = audio.value().samples;
  const double rate = audio.value().sample_rate;
  int64_t first = 0, last = static_cast<int64_t>(samples.size());
  if (u.start > 0 || u.end >= 0) {
    first = std::llround(u.start * rate);
    if (u.end >= 0) last = std::min(last, static_cast<int64_t>(std::llround(u.end * rate)));
    if (first >= last) {
      return bad("segment [" + std::to_string(u.start) + ", " + std::to_string(u.end) +
                 "] s is outside the audio (" + std::to_string(samples.size() / rate) + " s)");
    }
  }
  const int64_t n = last - first;
  if (n <= 0) return bad("empty audio");
  const float* x = samples.data() + first;
  if (std::all_of(x, x + n, [](float v) { return v == 0.0f; }))
    return bad("silent audio (every sample is 0)");
  r.frames = computer->num_frames(n);
  if (r.frames <= 0) return bad("audio too short for one frame (" + std::to_string(n) + " samples)");
  PhiloxStream stream;
  if (opt.dither > 0) {
    RngKey key;
    key.seed = opt.seed;
    key.purpose = RngPurpose::kDither;
    key.stream = static_cast<uint64_t>(utt_index);
    stream = philox_stream(key);
  }
  r.feats = computer->compute(x, n, opt.dither > 0 ? &stream : nullptr);
  for (size_t i = 0; i < r.feats.size(); ++i) {
    if (!std::isfinite(r.feats[i]))
      return bad("non-finite feature at frame " + std::to_string(i / opt.num_mel_bins));
  }
  r.duration = static_cast<float>(static_cast<double>(n) / rate);
  return r;
}

int run(const Options& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  // Flag checks.
  if (opt.data_dir.empty() == opt.data_list.empty()) {
    LOG(ERROR) << "make_shards: give exactly one of --data_dir (Kaldi dir) or --data_list (WeNet data.list)";
    return 2;
  }
  if (opt.out_dir.empty()) {
    LOG(ERROR) << "make_shards: --out_dir is required";
    return 2;
  }
  if ((opt.num_utts_per_shard > 0) == (opt.hours_per_shard > 0)) {
    LOG(ERROR)
        << "make_shards: give exactly one of --num_utts_per_shard N (> 0) or --hours_per_shard H (> 0)";
    return 2;
  }
  if (opt.num_threads < 1 || !(opt.max_bad_fraction >= 0 && opt.max_bad_fraction <= 1) || opt.dither < 0) {
    LOG(ERROR) << "make_shards: need --num_threads >= 1, 0 <= --max_bad_fraction <= 1, --dither >= 0";
    return 2;
  }
  FbankConfig fbank;
  fbank.num_mel_bins = opt.num_mel_bins;
  fbank.dither = opt.dither;
  if (Status s = fbank.validate(); !s.ok()) {
    LOG(ERROR) << "make_shards: bad fbank settings: " << s.message();
    return 2;
  }
  const std::string fbank_json = fbank_config_to_json(fbank);

  StatusOr<std::vector<Utterance>> listed =
      opt.data_dir.empty() ? read_data_list(opt.data_list) : read_kaldi_data_dir(opt.data_dir);
  if (!listed.ok()) {
    LOG(ERROR) << "make_shards: " << listed.status().message();
    return 1;
  }
  const std::vector<Utterance>& utts = listed.value();
  if (utts.empty()) {
    LOG(ERROR) << "make_shards: no utterances in " << (opt.data_dir.empty() ? opt.data_list : opt.data_dir);
    return 1;
  }

  // Planned durations (only when needed): header reads, on the worker threads.
  std::vector<double> planned_seconds;
  if (opt.hours_per_shard > 0 || opt.sort_by_length) {
    planned_seconds.assign(utts.size(), 0.0);
    std::atomic<size_t> next{0};
    std::vector<std::thread> workers;
    for (int t = 0; t < opt.num_threads; ++t) {
      workers.emplace_back([&]() {
        for (size_t i = next++; i < utts.size(); i = next++) {
          StatusOr<double> d = utterance_duration(utts[i]);
          planned_seconds[i] = d.ok() ? d.value() : 0.0;  // unreadable: found bad later
        }
      });
    }
    for (std::thread& w : workers) w.join();
  }

  // The plan: utterances in input order.
  std::vector<ShardPlan> plan;
  {
    ShardPlan current;
    double seconds = 0;
    for (size_t i = 0; i < utts.size(); ++i) {
      current.utts.push_back(static_cast<int64_t>(i));
      if (opt.hours_per_shard > 0) seconds += planned_seconds[i];
      const bool full = opt.num_utts_per_shard > 0
                            ? static_cast<int64_t>(current.utts.size()) >= opt.num_utts_per_shard
                            : seconds >= opt.hours_per_shard * 3600.0;
      if (full || i + 1 == utts.size()) {
        current.index = static_cast<int64_t>(plan.size());
        current.rel_path = shard_rel_path(current.index);
        plan.push_back(std::move(current));
        current = ShardPlan();
        seconds = 0;
      }
    }
  }
  if (opt.sort_by_length) {
    for (ShardPlan& s : plan) {
      std::stable_sort(s.utts.begin(), s.utts.end(),
                       [&](int64_t a, int64_t b) { return planned_seconds[a] < planned_seconds[b]; });
    }
  }
  int64_t begin = 0, end = 0;
  if (Status s = parse_shard_range(opt.shard_range, static_cast<int64_t>(plan.size()), &begin, &end);
      !s.ok()) {
    LOG(ERROR) << "make_shards: " << s.message();
    return 2;
  }
  int64_t utts_in_range = 0;
  for (int64_t i = begin; i < end; ++i) utts_in_range += static_cast<int64_t>(plan[i].utts.size());
  LOG(INFO) << "make_shards: " << utts.size() << " utterances -> " << plan.size()
            << " shards; this run: shards [" << begin << ", " << end << "), " << utts_in_range
            << " utterances, " << opt.num_threads << " threads";

  const std::string shard_dir = opt.out_dir + "/shards";
  std::error_code mkdir_error;
  std::filesystem::create_directories(shard_dir, mkdir_error);  // parents too, like mkdir -p
  struct stat st;
  if (::stat(shard_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    LOG(ERROR) << "make_shards: cannot create directory " << shard_dir
               << (mkdir_error ? " (" + mkdir_error.message() + ")" : std::string());
    return 1;
  }
  const std::string manifest_path = opt.out_dir + "/manifest.jsonl";
  std::map<std::string, ManifestEntry> old_manifest;
  {
    StatusOr<std::vector<ManifestEntry>> old = read_manifest(manifest_path);
    if (old.ok()) {
      for (const ManifestEntry& e : old.value()) old_manifest[e.path] = e;
    } else if (old.status().code() != StatusCode::kNotFound) {
      LOG(WARNING) << "make_shards: ignoring the existing manifest: " << old.status().message();
    }
  }

  // One fbank computer per worker, made on this thread (FFTW planning is not thread-safe).
  std::vector<std::unique_ptr<FbankComputer>> computers;
  for (int t = 0; t < opt.num_threads; ++t) {
    StatusOr<std::unique_ptr<FbankComputer>> c = FbankComputer::create(fbank);
    if (!c.ok()) {
      LOG(ERROR) << "make_shards: " << c.status().message();
      return 1;
    }
    computers.push_back(std::move(c).value());
  }

  int64_t bad_total = 0;  // over the shards in range (skipped shards report theirs)
  int64_t shards_written = 0, shards_skipped = 0, utts_written = 0;
  double seconds_written = 0;
  const size_t window = static_cast<size_t>(std::max(16, 4 * opt.num_threads));
  auto too_many_bad = [&]() { return static_cast<double>(bad_total) > opt.max_bad_fraction * utts_in_range; };

  for (int64_t si = begin; si < end; ++si) {
    const ShardPlan& shard = plan[si];
    const std::string final_path = opt.out_dir + "/" + shard.rel_path;
    const std::string record_path = final_path + ".json";
    const int64_t planned = static_cast<int64_t>(shard.utts.size());
    int64_t size = 0;
    if (file_size(final_path, &size)) {
      ShardRecord record;
      if (read_record(record_path, &record) && record.planned_utts == planned && record.entry.bytes == size &&
          record.entry.path == shard.rel_path) {
        ++shards_skipped;
        bad_total += record.bad_utts;
        continue;
      }
      auto it = old_manifest.find(shard.rel_path);
      StatusOr<std::unique_ptr<ShardReader>> reader = ShardReader::open(final_path);
      if (reader.ok() && reader.value()->num_utts() <= planned &&
          (it == old_manifest.end() ||
           (it->second.bytes == size && it->second.num_utts == reader.value()->num_utts()))) {
        StatusOr<std::string> sha = sha256_file(final_path);
        if (sha.ok()) {
          record.entry.path = shard.rel_path;
          record.entry.num_utts = reader.value()->num_utts();
          record.entry.num_frames = reader.value()->num_frames();
          record.entry.bytes = size;
          record.entry.sha256 = sha.value();
          record.planned_utts = planned;
          record.bad_utts = planned - record.entry.num_utts;
          if (Status s = write_record(record_path, record); !s.ok()) {
            LOG(ERROR) << "make_shards: " << s.message();
            return 1;
          }
          LOG(INFO) << "make_shards: " << final_path << " is complete (validated), recorded and skipped";
          ++shards_skipped;
          bad_total += record.bad_utts;
          continue;
        }
      }
      LOG(WARNING) << "make_shards: rewriting " << final_path << ": "
                   << (reader.ok() ? std::string("it does not match this plan") : reader.status().message());
    }

    StatusOr<std::unique_ptr<ShardWriter>> writer =
        ShardWriter::create(final_path, opt.num_mel_bins, fbank_json);
    if (!writer.ok()) {
      LOG(ERROR) << "make_shards: " << writer.status().message();
      return 1;
    }
    int64_t shard_bad = 0, shard_frames = 0, shard_utts = 0;
    for (size_t w0 = 0; w0 < shard.utts.size(); w0 += window) {
      const size_t w1 = std::min(shard.utts.size(), w0 + window);
      std::vector<UttResult> results(w1 - w0);
      std::atomic<size_t> next{w0};
      std::vector<std::thread> workers;
      const int threads = static_cast<int>(std::min<size_t>(opt.num_threads, w1 - w0));
      for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&, t]() {
          for (size_t k = next++; k < w1; k = next++) {
            const int64_t u = shard.utts[k];
            results[k - w0] = compute_utterance(utts[static_cast<size_t>(u)], u, computers[t].get(), opt);
          }
        });
      }
      for (std::thread& w : workers) w.join();
      for (size_t k = w0; k < w1; ++k) {
        UttResult& r = results[k - w0];
        const Utterance& u = utts[static_cast<size_t>(shard.utts[k])];
        if (r.error.empty()) {
          Status s = writer.value()->add(u.key, u.text, r.feats.data(), r.frames, r.duration);
          if (s.ok()) {
            ++shard_utts;
            shard_frames += r.frames;
            seconds_written += r.duration;
            continue;
          }
          if (s.code() != StatusCode::kInvalidArgument) {
            LOG(ERROR) << "make_shards: " << s.message();
            return 1;
          }
          r.error = "bad utterance '" + u.key + "' (" + u.origin + "): " + s.message();
        }
        LOG(ERROR) << r.error;
        ++shard_bad;
        ++bad_total;
      }
      if (too_many_bad()) {
        LOG(ERROR) << "make_shards: " << bad_total << " bad utterances of " << utts_in_range
                   << " planned in this run exceed --max_bad_fraction " << opt.max_bad_fraction
                   << "; fix the data (see the errors above) or raise the flag";
        return 1;
      }
    }
    if (Status s = writer.value()->finish(); !s.ok()) {
      LOG(ERROR) << "make_shards: " << s.message();
      return 1;
    }
    writer.value().reset();
    ShardRecord record;
    record.entry.path = shard.rel_path;
    record.entry.num_utts = shard_utts;
    record.entry.num_frames = shard_frames;
    StatusOr<std::string> sha = sha256_file(final_path);
    if (!sha.ok() || !file_size(final_path, &record.entry.bytes)) {
      LOG(ERROR) << "make_shards: cannot checksum " << final_path
                 << (sha.ok() ? std::string() : ": " + sha.status().message());
      return 1;
    }
    record.entry.sha256 = sha.value();
    record.planned_utts = planned;
    record.bad_utts = shard_bad;
    if (Status s = write_record(record_path, record); !s.ok()) {
      LOG(ERROR) << "make_shards: " << s.message();
      return 1;
    }
    ++shards_written;
    utts_written += shard_utts;
    LOG(INFO) << "make_shards: wrote " << final_path << " (" << shard_utts << " utterances, " << shard_frames
              << " frames, " << shard_bad << " bad)";
  }

  // The manifest, once every planned shard is done.
  std::vector<ManifestEntry> entries;
  int64_t done = 0;
  for (const ShardPlan& shard : plan) {
    const std::string final_path = opt.out_dir + "/" + shard.rel_path;
    ShardRecord record;
    int64_t size = 0;
    if (!file_size(final_path, &size) || !read_record(final_path + ".json", &record) ||
        record.entry.bytes != size || record.planned_utts != static_cast<int64_t>(shard.utts.size())) {
      continue;
    }
    ++done;
    if (record.entry.num_utts == 0) {
      LOG(WARNING) << "make_shards: " << final_path
                   << " holds no utterances (all bad); left out of the manifest";
      continue;
    }
    entries.push_back(record.entry);
  }
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::string manifest_note;
  if (done == static_cast<int64_t>(plan.size())) {
    if (Status s = write_manifest(manifest_path, entries); !s.ok()) {
      LOG(ERROR) << "make_shards: " << s.message();
      return 1;
    }
    manifest_note = "wrote " + manifest_path + " (" + std::to_string(entries.size()) + " shards)";
  } else {
    manifest_note = std::to_string(done) + " of " + std::to_string(plan.size()) +
                    " shards done; manifest.jsonl is written when all are (rerun without --shard_range after "
                    "the array jobs finish)";
  }
  char line[512];
  std::snprintf(
      line, sizeof(line),
      "make_shards: %lld utterances written (%.3f h) in %lld shards, %lld shards skipped (done before), "
      "%lld bad utterances (%.4f of %lld planned), %.1f s",
      static_cast<long long>(utts_written), seconds_written / 3600.0, static_cast<long long>(shards_written),
      static_cast<long long>(shards_skipped), static_cast<long long>(bad_total),
      utts_in_range > 0 ? static_cast<double>(bad_total) / utts_in_range : 0.0,
      static_cast<long long>(utts_in_range), elapsed);
  std::printf("%s\n%s\n", line, manifest_note.c_str());
  std::fflush(stdout);
  return 0;
}

}  // namespace

int run_make_shards(int argc, char** argv) {
  Options opt;
  po::options_description desc(
      "moe-asr make_shards: Kaldi data dir or WeNet data.list -> HDF5 fbank shards + manifest");
  desc.add_options()("help,h", "show this help")("data_dir", po::value(&opt.data_dir),
                                                 "Kaldi data dir: wav.scp, text, optional segments")(
      "data_list", po::value(&opt.data_list), "WeNet data.list: JSON lines {\"key\",\"wav\",\"txt\"}")(
      "out_dir", po::value(&opt.out_dir),
      "output: out_dir/shards/shard_NNNNNN.h5 and out_dir/manifest.jsonl")(
      "num_utts_per_shard", po::value(&opt.num_utts_per_shard), "utterances per shard (WeNet: 1000)")(
      "hours_per_shard", po::value(&opt.hours_per_shard), "hours of audio per shard (10-40 at scale)")(
      "num_threads", po::value(&opt.num_threads)->default_value(1),
      "feature threads (HDF5 is written by one)")("shard_range", po::value(&opt.shard_range),
                                                  "a:b: make only shards a..b-1 (Slurm array jobs)")(
      "num_mel_bins", po::value(&opt.num_mel_bins)->default_value(80), "mel bins")(
      "dither", po::value(&opt.dither)->default_value(0.0),
      "dither of stored features (0: WeNet dithers at training time instead)")(
      "seed", po::value(&opt.seed)->default_value(0), "seed of the dither noise (with --dither > 0)")(
      "sort_by_length", po::bool_switch(&opt.sort_by_length),
      "order utterances by duration inside each shard")(
      "max_bad_fraction", po::value(&opt.max_bad_fraction)->default_value(0.01),
      "fail when more than this fraction of utterances is bad");
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::fprintf(stderr, "moe-asr make_shards: %s\n", e.what());
    std::cerr << desc << "\n";
    return 2;
  }
  if (vm.count("help")) {
    std::cout << desc << "\n";
    return 0;
  }
  return run(opt);
}

}  // namespace moeasr
