// data_pipeline/manifest.cc — the shard manifest of DESIGN.md §5 (JSON lines, one shard per line, in
// the manner of WeNet's data.list and NeMo's sharded manifests), and shard verification by size and
// SHA-256 (OpenSSL EVP).
#include <openssl/evp.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "data_pipeline/shard.h"

namespace moeasr {
namespace {

constexpr char kHex[] = "0123456789abcdef";

bool is_lower_hex(const std::string& s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

Status parse_manifest_line(const std::string& where, const std::string& line, ManifestEntry* entry) {
  nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return data_loss_error(where + ": not a JSON object");
  auto string_field = [&](const char* name, std::string* out) -> Status {
    auto it = j.find(name);
    if (it == j.end() || !it->is_string())
      return data_loss_error(where + ": missing string field \"" + name + "\"");
    *out = it->get<std::string>();
    return Status();
  };
  auto int_field = [&](const char* name, int64_t* out) -> Status {
    auto it = j.find(name);
    if (it == j.end() || !it->is_number_integer() || it->get<int64_t>() < 0) {
      return data_loss_error(where + ": missing or negative integer field \"" + name + "\"");
    }
    *out = it->get<int64_t>();
    return Status();
  };
  RETURN_IF_ERROR(string_field("path", &entry->path));
  if (entry->path.empty()) return data_loss_error(where + ": empty \"path\"");
  RETURN_IF_ERROR(int_field("num_utts", &entry->num_utts));
  RETURN_IF_ERROR(int_field("num_frames", &entry->num_frames));
  RETURN_IF_ERROR(int_field("bytes", &entry->bytes));
  RETURN_IF_ERROR(string_field("sha256", &entry->sha256));
  if (entry->sha256.size() != 64 || !is_lower_hex(entry->sha256)) {
    return data_loss_error(where + ": \"sha256\" is not 64 lower-case hex digits");
  }
  return Status();
}

}  // namespace

StatusOr<std::vector<ManifestEntry>> read_manifest(const std::string& manifest_path) {
  std::ifstream in(manifest_path);
  if (!in) {
    return not_found_error("cannot open manifest " + manifest_path + " (" + std::strerror(errno) +
                           "); make it with `moe-asr make_shards`");
  }
  std::vector<ManifestEntry> entries;
  std::string line;
  int64_t line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank line
    ManifestEntry entry;
    RETURN_IF_ERROR(parse_manifest_line(manifest_path + ":" + std::to_string(line_number), line, &entry));
    entries.push_back(std::move(entry));
  }
  if (in.bad()) return io_error("error reading manifest " + manifest_path);
  return entries;
}

Status write_manifest(const std::string& manifest_path, const std::vector<ManifestEntry>& entries) {
  const std::string tmp = manifest_path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) return io_error("cannot write " + tmp + " (" + std::strerror(errno) + ")");
    for (const ManifestEntry& e : entries) {
      nlohmann::ordered_json j;
      j["path"] = e.path;
      j["num_utts"] = e.num_utts;
      j["num_frames"] = e.num_frames;
      j["bytes"] = e.bytes;
      j["sha256"] = e.sha256;
      out << j.dump() << '\n';
    }
    out.flush();
    if (!out) return io_error("error writing " + tmp);
  }
  if (std::rename(tmp.c_str(), manifest_path.c_str()) != 0) {
    return io_error("cannot rename " + tmp + " to " + manifest_path + ": " + std::strerror(errno));
  }
  return Status();
}

std::string manifest_entry_path(const std::string& manifest_path, const ManifestEntry& entry) {
  if (!entry.path.empty() && entry.path.front() == '/') return entry.path;
  const size_t slash = manifest_path.rfind('/');
  if (slash == std::string::npos) return entry.path;
  return manifest_path.substr(0, slash + 1) + entry.path;
}

StatusOr<std::string> sha256_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return not_found_error("cannot open " + path + " (" + std::strerror(errno) + ")");
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  bool ok = ctx != nullptr && EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) == 1;
  std::vector<unsigned char> block(4 << 20);
  while (ok) {
    size_t n = std::fread(block.data(), 1, block.size(), f);
    if (n > 0) ok = EVP_DigestUpdate(ctx, block.data(), n) == 1;
    if (n < block.size()) break;
  }
  const bool read_error = std::ferror(f) != 0;
  std::fclose(f);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_size = 0;
  if (ok) ok = EVP_DigestFinal_ex(ctx, digest, &digest_size) == 1;
  EVP_MD_CTX_free(ctx);
  if (read_error) return io_error("error reading " + path + " for its SHA-256");
  if (!ok) return internal_error("OpenSSL SHA-256 failed on " + path);
  std::string hex;
  for (unsigned int i = 0; i < digest_size; ++i) {
    hex += kHex[digest[i] >> 4];
    hex += kHex[digest[i] & 15];
  }
  return hex;
}

Status verify_shard(const std::string& manifest_path, const ManifestEntry& entry, bool check_sha256) {
  const std::string path = manifest_entry_path(manifest_path, entry);
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return not_found_error("shard " + path + " listed in manifest " + manifest_path + " does not exist (" +
                           std::strerror(errno) + ")");
  }
  if (static_cast<int64_t>(st.st_size) != entry.bytes) {
    return data_loss_error("shard " + path + " has " + std::to_string(st.st_size) + " bytes but manifest " +
                           manifest_path + " says " + std::to_string(entry.bytes) +
                           " (truncated or rewritten; rerun make_shards)");
  }
  if (check_sha256) {
    ASSIGN_OR_RETURN(std::string sha, sha256_file(path));
    if (sha != entry.sha256) {
      return data_loss_error("shard " + path + " fails its checksum: sha256 " + sha + ", manifest " +
                             manifest_path + " says " + entry.sha256 + " (corrupted; rerun make_shards)");
    }
  }
  return Status();
}

}  // namespace moeasr
