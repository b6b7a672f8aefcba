// bench/data_loader.cc — the feature-shard data path at small scale, extrapolated to 160k hours:
// writes ~2 hours of synthetic fp16 fbank shards (random features, utterances of 2-15 s, character
// text), then measures shard writing, open + index time per shard, reading in input frames/s on one
// thread (synchronous loader: HDF5 read, fp16 -> float, tokenize, shuffle/sort buffers, dynamic
// batching, SpecAugment + SpecSub + SpecTrim, padding; target >= 1M frames/s per thread) and with the
// prefetch threads, the augmentation alone, cursor size and restore cost, and peak memory. The
// measured per-shard and per-utterance costs are then scaled to 160k hours at ~20 h per shard
// (shard count, manifest size, open + index cost, memory per rank, resume cost). Asserts nothing.
//
//   build/bench/bench_data_loader [--hours 2] [--hours_per_shard 0.25] [--bins 80] [--dir /tmp/...]
//                                 [--keep]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "core/logging.h"
#include "core/philox.h"
#include "data_pipeline/augment.h"
#include "data_pipeline/loader.h"
#include "data_pipeline/shard.h"
#include "data_pipeline/tokenizer.h"

namespace moeasr {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// CPU time of the calling thread (the machine may be shared: wall time alone over-states costs).
double thread_cpu_s() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// VmHWM / VmRSS of this process in MiB.
double proc_status_mib(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0) return std::atof(line.c_str() + std::strlen(field)) / 1024.0;
  }
  return 0.0;
}

struct Args {
  double hours = 2.0;
  double hours_per_shard = 0.25;
  int64_t bins = 80;
  std::string dir;
  bool keep = false;
};

Args parse_args(int argc, char** argv) {
  Args a;
  a.dir =
      (std::filesystem::temp_directory_path() / ("moeasr_bench_data_" + std::to_string(::getpid()))).string();
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", flag.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (flag == "--hours") {
      a.hours = std::atof(value().c_str());
    } else if (flag == "--hours_per_shard") {
      a.hours_per_shard = std::atof(value().c_str());
    } else if (flag == "--bins") {
      a.bins = std::atoll(value().c_str());
    } else if (flag == "--dir") {
      a.dir = value();
    } else if (flag == "--keep") {
      a.keep = true;
    } else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      std::exit(2);
    }
  }
  return a;
}

const char kLetters[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ ";

LoaderOptions bench_options(uint64_t seed, bool augment, int prefetch) {
  LoaderOptions o;  // the WenetSpeech recipe's data section
  o.seed = seed;
  o.num_open_shards = 4;
  o.shuffle_size = 5000;
  o.sort_size = 1000;
  o.batch_type = BatchType::kDynamic;
  o.max_frames_in_batch = 36000;
  o.filter.max_frames = 4096;
  o.filter.max_tokens = 400;
  o.augment.spec_aug = augment;
  o.augment.spec_aug_conf.max_f = 30;
  o.augment.spec_sub = augment;
  o.augment.spec_trim = augment;
  o.prefetch_batches = prefetch;
  return o;
}

struct PassResult {
  double seconds = 0;
  double cpu_seconds = 0;  // of the calling thread
  int64_t batches = 0;
  int64_t input_frames = 0;
  int64_t padded_frames = 0;
};

PassResult run_pass(const std::string& manifest, const Tokenizer& tok, const LoaderOptions& options) {
  auto loader = Loader::from_manifest(manifest, &tok, options, 0, 1);
  CHECK(loader.ok()) << loader.status().to_string();
  PassResult r;
  double t0 = now_s();
  double c0 = thread_cpu_s();
  CHECK(loader.value()->start_epoch(0).ok());
  Batch batch;
  while (loader.value()->has_next()) {
    Status s = loader.value()->next(&batch);
    CHECK(s.ok()) << s.to_string();
    ++r.batches;
    r.padded_frames += batch.size() * batch.max_frames;
  }
  r.seconds = now_s() - t0;
  r.cpu_seconds = thread_cpu_s() - c0;
  r.input_frames = loader.value()->stats().frames;  // kept frames; input frames are set by the caller
  return r;
}

int run(int argc, char** argv) {
  set_log_level(LogLevel::kWarning);
  Args args = parse_args(argc, argv);
  std::filesystem::create_directories(args.dir);
  const int64_t bins = args.bins;
  std::printf("data loader benchmark: %.2f h of synthetic %lld-bin fp16 features in %s\n", args.hours,
              static_cast<long long>(bins), args.dir.c_str());

  // ---- write shards ---------------------------------------------------------------------------
  RngKey key;
  key.seed = 2024;
  key.purpose = RngPurpose::kTest;
  PhiloxStream rng = philox_stream(key);
  uint64_t draw = 0;
  const int64_t total_target = static_cast<int64_t>(args.hours * 3600 * 100);
  const int64_t shard_target = static_cast<int64_t>(args.hours_per_shard * 3600 * 100);
  std::vector<ManifestEntry> entries;
  std::vector<std::string> texts_for_units = {kLetters};
  std::vector<float> feats;
  int64_t written_frames = 0, written_utts = 0;
  double write_seconds = 0, sha_seconds = 0;
  int64_t written_bytes = 0;
  while (written_frames < total_target) {
    const std::string name = "shard_" + std::to_string(entries.size()) + ".h5";
    const std::string path = args.dir + "/" + name;
    double t0 = now_s();
    auto writer = ShardWriter::create(path, bins, "{\"num_mel_bins\": " + std::to_string(bins) + "}");
    CHECK(writer.ok()) << writer.status().to_string();
    ManifestEntry e;
    e.path = name;
    while (e.num_frames < shard_target && written_frames < total_target) {
      int64_t frames = 200 + static_cast<int64_t>(philox_below(rng, draw++, 1301));  // 2-15 s
      feats.resize(static_cast<size_t>(frames * bins));
      for (size_t i = 0; i < feats.size(); i += 4) {
        PhiloxCounter block = philox_block(rng, draw++);
        for (size_t k = 0; k < 4 && i + k < feats.size(); ++k) {
          feats[i + k] = philox_word_to_uniform(block[k]) * 16.0f - 4.0f;  // log-mel-like range
        }
      }
      std::string text;
      for (int64_t c = 0; c < frames / 8; ++c) text += kLetters[philox_below(rng, draw++, 27)];
      const std::string utt_key = "bench-" + std::to_string(written_utts);
      Status s = writer.value()->add(utt_key, text, feats.data(), frames, frames * 0.01f);
      CHECK(s.ok()) << s.to_string();
      e.num_frames += frames;
      ++e.num_utts;
      written_frames += frames;
      ++written_utts;
    }
    CHECK(writer.value()->finish().ok());
    write_seconds += now_s() - t0;
    e.bytes = static_cast<int64_t>(std::filesystem::file_size(path));
    written_bytes += e.bytes;
    double t1 = now_s();
    auto sha = sha256_file(path);
    CHECK(sha.ok());
    sha_seconds += now_s() - t1;
    e.sha256 = sha.value();
    entries.push_back(e);
  }
  const std::string manifest = args.dir + "/manifest.jsonl";
  CHECK(write_manifest(manifest, entries).ok());
  const double manifest_bytes_per_line =
      static_cast<double>(std::filesystem::file_size(manifest)) / static_cast<double>(entries.size());
  auto tok_or = Tokenizer::create_char_from_units(build_char_units(texts_for_units));
  CHECK(tok_or.ok());
  const Tokenizer& tok = *tok_or.value();
  const double utts_per_shard = static_cast<double>(written_utts) / entries.size();

  // ---- open + index per shard ----------------------------------------------------------------
  const int open_repeats = 5;
  double t0 = now_s();
  for (int rep = 0; rep < open_repeats; ++rep) {
    for (const ManifestEntry& e : entries) {
      auto reader = ShardReader::open(manifest_entry_path(manifest, e));
      CHECK(reader.ok()) << reader.status().to_string();
    }
  }
  const double open_s = (now_s() - t0) / (open_repeats * entries.size());
  const double open_per_utt_s = open_s / utts_per_shard;

  // ---- raw feature reads: index order vs shuffled order (chunk re-reads) ----------------------
  double seq_s = 0, rnd_s = 0;
  int64_t raw_frames = 0;
  {
    std::vector<float> buffer;
    for (const ManifestEntry& e : entries) {
      auto reader = ShardReader::open(manifest_entry_path(manifest, e));
      CHECK(reader.ok());
      std::vector<int64_t> order(reader.value()->num_utts());
      for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
      double c = thread_cpu_s();
      for (int64_t u : order) {
        buffer.resize(reader.value()->entry(u).num_frames * bins);
        CHECK(reader.value()->read_feats(u, buffer.data()).ok());
        raw_frames += reader.value()->entry(u).num_frames;
      }
      seq_s += thread_cpu_s() - c;
      for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[philox_below(rng, draw++, i)]);
      c = thread_cpu_s();
      for (int64_t u : order) {
        buffer.resize(reader.value()->entry(u).num_frames * bins);
        CHECK(reader.value()->read_feats(u, buffer.data()).ok());
      }
      rnd_s += thread_cpu_s() - c;
    }
  }

  // ---- reading ---------------------------------------------------------------------------------
  PassResult plain = run_pass(manifest, tok, bench_options(1, false, 0));
  PassResult augmented = run_pass(manifest, tok, bench_options(1, true, 0));
  PassResult threaded = run_pass(manifest, tok, bench_options(1, true, 4));
  const double input_frames = static_cast<double>(written_frames);

  // Augmentation alone on one 1000-frame utterance.
  std::vector<float> utt(static_cast<size_t>(1000 * bins), 1.0f), out(utt.size());
  AugmentOptions aug = bench_options(1, true, 0).augment;
  double t_aug = now_s();
  const int aug_reps = 2000;
  for (int i = 0; i < aug_reps; ++i) {
    augment_utterance(out.data(), utt.data(), aug, augment_stream(1, 0, "u" + std::to_string(i)), 1000, bins);
  }
  const double aug_fps = aug_reps * 1000.0 / (now_s() - t_aug);

  // ---- cursor and restore ----------------------------------------------------------------------
  LoaderOptions ro = bench_options(1, true, 0);
  auto loader = Loader::from_manifest(manifest, &tok, ro, 0, 1);
  CHECK(loader.ok());
  CHECK(loader.value()->start_epoch(0).ok());
  Batch batch;
  for (int64_t i = 0; i < augmented.batches / 2 && loader.value()->has_next(); ++i) {
    CHECK(loader.value()->next(&batch).ok());
  }
  const std::string cursor_bytes = loader.value()->cursor().serialize();
  const size_t in_flight = loader.value()->cursor().shards_in_flight().size();
  auto fresh = Loader::from_manifest(manifest, &tok, ro, 0, 1);
  CHECK(fresh.ok());
  double t_restore = now_s();
  auto parsed = LoaderCursor::parse(cursor_bytes);
  CHECK(parsed.ok());
  CHECK(fresh.value()->restore(parsed.value()).ok());
  const double restore_s = now_s() - t_restore;
  CHECK(fresh.value()->has_next());
  CHECK(fresh.value()->next(&batch).ok());
  const double first_batch_s = now_s() - t_restore;
  const double peak_rss_mib = proc_status_mib("VmHWM:");

  // ---- tables ----------------------------------------------------------------------------------
  const double gib = 1024.0 * 1024.0 * 1024.0;
  std::printf("\n%-52s %16s\n", "measured (this machine)", "value");
  std::printf("%-52s %16lld\n", "shards written", static_cast<long long>(entries.size()));
  std::printf("%-52s %16lld\n", "utterances", static_cast<long long>(written_utts));
  std::printf("%-52s %16.2f\n", "hours", written_frames / 360000.0);
  std::printf("%-52s %16.3f\n", "GiB on disk", written_bytes / gib);
  std::printf("%-52s %16.0f\n", "shard write: utterances/s (features given)", written_utts / write_seconds);
  std::printf("%-52s %16.2f\n", "shard write: M frames/s", written_frames / write_seconds / 1e6);
  std::printf("%-52s %16.0f\n", "sha256: MiB/s", written_bytes / sha_seconds / (1024.0 * 1024.0));
  std::printf("%-52s %16.3f\n", "open + index: ms per shard", open_s * 1e3);
  std::printf("%-52s %16.2f\n", "open + index: us per utterance", open_per_utt_s * 1e6);
  std::printf("%-52s %16.2f\n", "read_feats alone, index order: M frames/CPU-s", raw_frames / seq_s / 1e6);
  std::printf("%-52s %16.2f\n", "read_feats alone, shuffled order: M frames/CPU-s", raw_frames / rnd_s / 1e6);
  std::printf("%-52s %16.2f\n", "read, 1 thread, no augmentation: M input frames/s",
              input_frames / plain.seconds / 1e6);
  std::printf("%-52s %16.2f\n", "  same per CPU-second of the thread",
              input_frames / plain.cpu_seconds / 1e6);
  std::printf("%-52s %16.2f\n", "read, 1 thread, SpecAug+Sub+Trim: M input frames/s",
              input_frames / augmented.seconds / 1e6);
  std::printf("%-52s %16.2f\n", "  same per CPU-second of the thread",
              input_frames / augmented.cpu_seconds / 1e6);
  std::printf("%-52s %16.2f\n", "  ratio to the 1M frames/s/thread target (CPU-s)",
              input_frames / augmented.cpu_seconds / 1e6);
  std::printf("%-52s %16.2f\n", "read, I/O + worker threads, augmented: M frames/s",
              input_frames / threaded.seconds / 1e6);
  std::printf("%-52s %16.2f\n", "augmentation alone: M frames/s", aug_fps / 1e6);
  std::printf("%-52s %16.3f\n", "padding overhead (padded / kept frames)",
              static_cast<double>(augmented.padded_frames) / augmented.input_frames);
  std::printf("%-52s %16lld\n", "batches per epoch (max_frames_in_batch 36000)",
              static_cast<long long>(augmented.batches));
  std::printf("%-52s %16zu\n", "cursor bytes (mid-epoch, shuffle 5000 / sort 1000)", cursor_bytes.size());
  std::printf("%-52s %16zu\n", "shards in flight at the cursor", in_flight);
  std::printf("%-52s %16.3f\n", "restore: s (parse + reopen shards in flight)", restore_s);
  std::printf("%-52s %16.3f\n", "restore to first batch: s", first_batch_s);
  std::printf("%-52s %16.1f\n", "peak RSS of this process: MiB", peak_rss_mib);

  // ---- extrapolation to 160k hours --------------------------------------------------------------
  const double hours = 160000.0;
  const double hours_per_shard = 20.0;
  const double frames_total = hours * 3600 * 100;
  const double shards = hours / hours_per_shard;
  const double utt_frames_mean = static_cast<double>(written_frames) / written_utts;
  const double utts_per_big_shard = hours_per_shard * 360000.0 / utt_frames_mean;
  const double bytes_per_frame = static_cast<double>(written_bytes) / written_frames;
  // Open + index cost taken as proportional to the utterances of a shard (index columns, text and
  // keys are read whole at open), which over-estimates the fixed part.
  const double open_big_s = open_per_utt_s * utts_per_big_shard;
  const double text_bytes_per_utt = utt_frames_mean / 8 + 12;
  const double index_mib_per_shard = utts_per_big_shard * (40 + text_bytes_per_utt) / (1024.0 * 1024.0);
  const int open_shards = 4;
  const double prefetch_mib = 2.0 * 4 * 36000 * bins * 4 / (1024.0 * 1024.0);
  const double buffers_mib = (5000 + 1000 + 5000) * 8 / (1024.0 * 1024.0);
  const double rank_mib =
      open_shards * (index_mib_per_shard + 1.0 /*chunk cache*/) + prefetch_mib + buffers_mib;
  std::printf("\n%-52s %16s\n", "extrapolated to 160k hours, 20 h per shard", "value");
  std::printf("%-52s %16.3g\n", "frames", frames_total);
  std::printf("%-52s %16.0f\n", "shards", shards);
  std::printf("%-52s %16.0f\n", "utterances per shard", utts_per_big_shard);
  std::printf("%-52s %16.2f\n", "GiB per shard (fp16 + index)",
              hours_per_shard * 360000.0 * bytes_per_frame / gib);
  std::printf("%-52s %16.2f\n", "TiB in all", frames_total * bytes_per_frame / gib / 1024.0);
  std::printf("%-52s %16.2f\n", "manifest: MiB", shards * manifest_bytes_per_line / (1024.0 * 1024.0));
  std::printf("%-52s %16.1f\n", "open + index: ms per 20 h shard", open_big_s * 1e3);
  std::printf("%-52s %16.1f\n", "open + index for the whole epoch, 512 ranks: s/rank",
              shards / 512 * open_big_s);
  std::printf("%-52s %16.1f\n", "epoch read time at the measured rate, 512 ranks: s",
              frames_total / 512 / (input_frames / augmented.seconds));
  std::printf("%-52s %16.1f\n", "memory per rank: open shards' index + text, MiB",
              open_shards * index_mib_per_shard);
  std::printf("%-52s %16.1f\n", "memory per rank: prefetched batches, MiB", prefetch_mib);
  std::printf("%-52s %16.1f\n", "memory per rank: loader total (estimate), MiB", rank_mib);
  std::printf("%-52s %16.2f\n", "resume: reopen ~6 shards in flight, s", 6 * open_big_s);
  std::printf("%-52s %16.0f\n", "resume: cursor KiB per rank", cursor_bytes.size() / 1024.0);
  std::printf("%-52s %16.0f\n", "  vs O(epoch) replay of the index: s per rank", shards / 512 * open_big_s);
  if (!args.keep) std::filesystem::remove_all(args.dir);
  return 0;
}

}  // namespace
}  // namespace moeasr

int main(int argc, char** argv) {
  return moeasr::run(argc, argv);
}
