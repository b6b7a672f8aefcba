// cli/cmd_compute_cmvn.cc — `moe-asr compute_cmvn --manifest M --out global_cmvn`: WeNet's global
// CMVN JSON (tools/compute_cmvn_stats.py's output format) from the shards' stored sums (/cmvn_stats,
// double), so no features are read. Every shard is checked against its manifest line (size, and
// SHA-256 with --verify sha256); a missing or corrupt shard is an error naming it and the run fails
// when more than --max_bad_fraction of the shards are bad (default 0: any).
#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/logging.h"
#include "data_pipeline/cmvn.h"
#include "data_pipeline/shard.h"

namespace moeasr {
namespace {

namespace po = boost::program_options;

}  // namespace

int run_compute_cmvn(int argc, char** argv) {
  std::string manifest_path, out, verify = "size";
  double max_bad_fraction = 0.0;
  po::options_description desc("moe-asr compute_cmvn: global CMVN (WeNet JSON) from the shards' sums");
  desc.add_options()("help,h", "show this help")("manifest", po::value(&manifest_path),
                                                 "shard manifest (manifest.jsonl from make_shards)")(
      "out", po::value(&out), "output CMVN JSON, e.g. data/train/global_cmvn")(
      "out_cmvn", po::value(&out), "same as --out (WeNet's flag name)")(
      "verify", po::value(&verify)->default_value("size"), "shard check: none, size or sha256")(
      "max_bad_fraction", po::value(&max_bad_fraction)->default_value(0.0),
      "fail when more than this fraction of shards is missing or corrupt");
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::fprintf(stderr, "moe-asr compute_cmvn: %s\n", e.what());
    std::cerr << desc << "\n";
    return 2;
  }
  if (vm.count("help")) {
    std::cout << desc << "\n";
    return 0;
  }
  if (manifest_path.empty() || out.empty()) {
    LOG(ERROR) << "compute_cmvn: --manifest and --out are required";
    return 2;
  }
  if (verify != "none" && verify != "size" && verify != "sha256") {
    LOG(ERROR) << "compute_cmvn: --verify must be none, size or sha256 (got '" << verify << "')";
    return 2;
  }
  const auto t0 = std::chrono::steady_clock::now();
  StatusOr<std::vector<ManifestEntry>> entries = read_manifest(manifest_path);
  if (!entries.ok()) {
    LOG(ERROR) << "compute_cmvn: " << entries.status().message();
    return 1;
  }
  if (entries.value().empty()) {
    LOG(ERROR) << "compute_cmvn: manifest " << manifest_path << " lists no shards";
    return 1;
  }
  CmvnStats total;
  int64_t bad = 0, used = 0;
  for (const ManifestEntry& e : entries.value()) {
    Status s;
    if (verify != "none") s = verify_shard(manifest_path, e, verify == "sha256");
    if (s.ok()) {
      StatusOr<std::unique_ptr<ShardReader>> reader =
          ShardReader::open(manifest_entry_path(manifest_path, e));
      if (!reader.ok()) {
        s = reader.status();
      } else if (reader.value()->num_utts() != e.num_utts || reader.value()->num_frames() != e.num_frames) {
        s = data_loss_error(reader.value()->path() + " holds " + std::to_string(reader.value()->num_utts()) +
                            " utterances / " + std::to_string(reader.value()->num_frames()) + " frames but " +
                            manifest_path + " says " + std::to_string(e.num_utts) + " / " +
                            std::to_string(e.num_frames));
      } else {
        s = add_cmvn_stats(&total, reader.value()->cmvn_stats());
        if (!s.ok()) s = s.with_context(reader.value()->path());
      }
    }
    if (!s.ok()) {
      LOG(ERROR) << "compute_cmvn: skipping shard: " << s.message();
      ++bad;
      continue;
    }
    ++used;
  }
  const double n = static_cast<double>(entries.value().size());
  if (static_cast<double>(bad) > max_bad_fraction * n) {
    LOG(ERROR) << "compute_cmvn: " << bad << " of " << entries.value().size()
               << " shards are missing or corrupt (above --max_bad_fraction " << max_bad_fraction
               << "); rerun make_shards for them";
    return 1;
  }
  if (total.frames <= 0) {
    LOG(ERROR) << "compute_cmvn: the shards of " << manifest_path << " hold no frames";
    return 1;
  }
  if (Status s = write_cmvn_json(out, total); !s.ok()) {
    LOG(ERROR) << "compute_cmvn: " << s.message();
    return 1;
  }
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(
      "compute_cmvn: wrote %s from %lld shards (%lld skipped as bad), %lld frames, %zu dims, %.1f s\n",
      out.c_str(), static_cast<long long>(used), static_cast<long long>(bad),
      static_cast<long long>(total.frames), total.sum.size(), elapsed);
  return 0;
}

}  // namespace moeasr
