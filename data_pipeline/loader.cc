// data_pipeline/loader.cc — the WeNet-style streaming loader with exact cursors (see loader.h).
#include "data_pipeline/loader.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <utility>

#include "core/logging.h"
#include "core/philox.h"

namespace moeasr {
namespace {

constexpr char kCursorMagic[8] = {'M', 'O', 'E', 'A', 'S', 'R', 'C', 'U'};
constexpr uint32_t kCursorVersion = 1;

uint64_t fnv1a(const void* data, size_t size, uint64_t hash = 0xcbf29ce484222325ull) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) {
    hash ^= bytes[i];
    hash *= 0x100000001b3ull;
  }
  return hash;
}

// Little-endian fixed-width writer/reader for the cursor.
class ByteWriter {
 public:
  template <class T>
  void put(T value) {
    static_assert(std::is_integral<T>::value || std::is_floating_point<T>::value, "scalar");
    unsigned char bytes[sizeof(T)];
    std::memcpy(bytes, &value, sizeof(T));
    // This code base targets little-endian hosts (x86-64, aarch64); the format is little-endian.
    out_.append(reinterpret_cast<const char*>(bytes), sizeof(T));
  }
  void put_ids(const std::vector<UttId>& ids) {
    put<uint64_t>(ids.size());
    for (const UttId& id : ids) {
      put<int32_t>(id.shard);
      put<int32_t>(id.utt);
    }
  }
  void raw(const void* data, size_t size) { out_.append(static_cast<const char*>(data), size); }
  std::string& str() { return out_; }

 private:
  std::string out_;
};

class ByteReader {
 public:
  ByteReader(const std::string& bytes, size_t end) : bytes_(bytes), end_(end) {}
  template <class T>
  bool get(T* value) {
    if (pos_ + sizeof(T) > end_) return false;
    std::memcpy(value, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  // A count of items of `item_bytes` each that must fit in what is left.
  bool get_count(uint64_t* count, size_t item_bytes) {
    if (!get(count)) return false;
    return *count <= (end_ - pos_) / std::max<size_t>(item_bytes, 1);
  }
  bool get_ids(std::vector<UttId>* ids) {
    uint64_t n = 0;
    if (!get_count(&n, 8)) return false;
    ids->resize(n);
    for (UttId& id : *ids) {
      if (!get(&id.shard) || !get(&id.utt)) return false;
    }
    return true;
  }
  size_t pos() const { return pos_; }

 private:
  const std::string& bytes_;
  size_t end_;
  size_t pos_ = 0;
};

// A blocking queue of at most `capacity` items; close() wakes everyone and makes push fail.
template <class T>
class BoundedQueue {
 public:
  explicit BoundedQueue(size_t capacity) : capacity_(std::max<size_t>(capacity, 1)) {}
  bool push(T item) {
    std::unique_lock<std::mutex> lock(mutex_);
    not_full_.wait(lock, [&] { return closed_ || items_.size() < capacity_; });
    if (closed_) return false;
    items_.push_back(std::move(item));
    not_empty_.notify_one();
    return true;
  }
  bool pop(T* item) {
    std::unique_lock<std::mutex> lock(mutex_);
    not_empty_.wait(lock, [&] { return closed_ || !items_.empty(); });
    if (items_.empty()) return false;
    *item = std::move(items_.front());
    items_.pop_front();
    not_full_.notify_one();
    return true;
  }
  void close() {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
    not_full_.notify_all();
    not_empty_.notify_all();
  }

 private:
  size_t capacity_;
  std::mutex mutex_;
  std::condition_variable not_full_;
  std::condition_variable not_empty_;
  std::deque<T> items_;
  bool closed_ = false;
};

uint64_t manifest_fingerprint(const std::vector<ManifestEntry>& entries) {
  ByteWriter w;
  w.put<uint64_t>(entries.size());
  for (const ManifestEntry& e : entries) {
    w.put<int64_t>(e.num_utts);
    w.put<int64_t>(e.num_frames);
    w.put<uint64_t>(e.sha256.size());
    w.raw(e.sha256.data(), e.sha256.size());
  }
  return fnv1a(w.str().data(), w.str().size());
}

uint64_t options_fingerprint(const LoaderOptions& o) {
  ByteWriter w;
  w.put<int32_t>(o.num_open_shards);
  w.put<uint8_t>(o.shuffle);
  w.put<int64_t>(o.shuffle_size);
  w.put<uint8_t>(o.sort);
  w.put<int64_t>(o.sort_size);
  w.put<int64_t>(o.filter.min_frames);
  w.put<int64_t>(o.filter.max_frames);
  w.put<int64_t>(o.filter.min_tokens);
  w.put<int64_t>(o.filter.max_tokens);
  w.put<double>(o.filter.min_token_frame_ratio);
  w.put<double>(o.filter.max_token_frame_ratio);
  w.put<int32_t>(static_cast<int32_t>(o.batch_type));
  w.put<int64_t>(o.batch_size);
  w.put<int64_t>(o.max_frames_in_batch);
  const AugmentOptions& a = o.augment;
  w.put<uint8_t>(a.spec_aug);
  w.put<int32_t>(a.spec_aug_conf.num_t_mask);
  w.put<int32_t>(a.spec_aug_conf.max_t);
  w.put<int32_t>(a.spec_aug_conf.num_f_mask);
  w.put<int32_t>(a.spec_aug_conf.max_f);
  w.put<uint8_t>(a.spec_sub);
  w.put<int32_t>(a.spec_sub_conf.num_t_sub);
  w.put<int32_t>(a.spec_sub_conf.max_t);
  w.put<uint8_t>(a.spec_trim);
  w.put<int32_t>(a.spec_trim_conf.max_t);
  return fnv1a(w.str().data(), w.str().size());
}

bool text_is_blank(const std::string& text) {
  return std::all_of(text.begin(), text.end(), [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
  });
}

Status validate_options(const LoaderOptions& o, int rank, int world) {
  const auto bad = [](const std::string& what) { return invalid_argument_error("loader options: " + what); };
  if (world < 1 || rank < 0 || rank >= world) {
    return bad("rank " + std::to_string(rank) + " not in a world of " + std::to_string(world));
  }
  if (o.num_open_shards < 1)
    return bad("num_open_shards must be >= 1, got " + std::to_string(o.num_open_shards));
  if (o.shuffle_size < 1)
    return bad("shuffle_conf.shuffle_size must be >= 1, got " + std::to_string(o.shuffle_size));
  if (o.sort_size < 1) return bad("sort_conf.sort_size must be >= 1, got " + std::to_string(o.sort_size));
  if (o.batch_type == BatchType::kStatic && o.batch_size < 1) {
    return bad("batch_conf.batch_size must be >= 1, got " + std::to_string(o.batch_size));
  }
  if (o.batch_type == BatchType::kDynamic && o.max_frames_in_batch < 1) {
    return bad("batch_conf.max_frames_in_batch must be >= 1, got " + std::to_string(o.max_frames_in_batch));
  }
  if (!(o.max_bad_fraction >= 0.0 && o.max_bad_fraction <= 1.0)) {
    return bad("max_bad_fraction must be in [0, 1], got " + std::to_string(o.max_bad_fraction));
  }
  if (o.prefetch_batches < 0) return bad("prefetch_batches must be >= 0");
  const AugmentOptions& a = o.augment;
  if (a.spec_aug && (a.spec_aug_conf.max_t < 1 || a.spec_aug_conf.max_f < 1 ||
                     a.spec_aug_conf.num_t_mask < 0 || a.spec_aug_conf.num_f_mask < 0 ||
                     a.spec_aug_conf.num_t_mask > 256 || a.spec_aug_conf.num_f_mask > 256)) {
    return bad("spec_aug_conf needs max_t, max_f >= 1 and 0 <= num_t_mask, num_f_mask <= 256");
  }
  if (a.spec_sub &&
      (a.spec_sub_conf.max_t < 1 || a.spec_sub_conf.num_t_sub < 0 || a.spec_sub_conf.num_t_sub > 256)) {
    return bad("spec_sub_conf needs max_t >= 1 and 0 <= num_t_sub <= 256");
  }
  if (a.spec_trim && a.spec_trim_conf.max_t < 1) return bad("spec_trim_conf.max_t must be >= 1");
  return Status();
}

}  // namespace

bool filter_keeps(const FilterOptions& f, int64_t frames, int64_t tokens) {
  if (frames < f.min_frames || frames > f.max_frames) return false;
  if (tokens < f.min_tokens || tokens > f.max_tokens) return false;
  if (frames != 0) {
    double ratio = static_cast<double>(tokens) / static_cast<double>(frames);
    if (ratio < f.min_token_frame_ratio || ratio > f.max_token_frame_ratio) return false;
  }
  return true;
}

std::vector<int32_t> rank_shards(int64_t num_shards, uint64_t seed, int64_t epoch, bool shuffle, int rank,
                                 int world) {
  CHECK(world >= 1 && rank >= 0 && rank < world) << "rank " << rank << " world " << world;
  std::vector<int32_t> order(static_cast<size_t>(num_shards));
  std::iota(order.begin(), order.end(), 0);
  if (shuffle) {
    RngKey key;
    key.seed = seed;
    key.purpose = RngPurpose::kShuffle;
    key.epoch = static_cast<uint64_t>(epoch);
    PhiloxStream stream = philox_stream(key);
    for (int64_t i = num_shards - 1; i > 0; --i) {
      int64_t j =
          static_cast<int64_t>(philox_below(stream, static_cast<uint64_t>(i), static_cast<uint64_t>(i + 1)));
      std::swap(order[i], order[j]);
    }
  }
  std::vector<int32_t> mine;
  for (int64_t pos = rank; pos < num_shards; pos += world) mine.push_back(order[pos]);
  return mine;
}

// ---------------------------------------------------------------------------------------------
// Cursor serialization.

std::string LoaderCursor::serialize() const {
  ByteWriter w;
  w.raw(kCursorMagic, sizeof(kCursorMagic));
  w.put<uint32_t>(kCursorVersion);
  w.put<uint64_t>(seed);
  w.put<int64_t>(epoch);
  w.put<int32_t>(rank);
  w.put<int32_t>(world);
  w.put<int64_t>(num_shards);
  w.put<uint64_t>(manifest_fingerprint);
  w.put<uint64_t>(options_fingerprint);
  w.put<uint64_t>(shard_list.size());
  for (int32_t s : shard_list) w.put<int32_t>(s);
  w.put<int32_t>(next_list_pos);
  w.put<uint64_t>(slots.size());
  for (const ShardSlot& slot : slots) {
    w.put<int32_t>(slot.shard);
    w.put<int32_t>(slot.next_utt);
  }
  w.put<int32_t>(next_slot);
  w.put<int64_t>(shuffle_blocks);
  w.put_ids(shuffle_buffer);
  w.put_ids(sort_buffer);
  w.put_ids(batch_buffer);
  w.put<uint64_t>(ready_batches.size());
  for (const auto& batch : ready_batches) w.put_ids(batch);
  w.put<uint8_t>(flushed ? 1 : 0);
  const int64_t counters[] = {
      stats.shards_opened, stats.bad_shards, stats.bad_shard_utts, stats.utts_read, stats.bad_utts,
      stats.filtered_utts, stats.tokens,     stats.unk_tokens,     stats.batches,   stats.frames};
  for (int64_t c : counters) w.put<int64_t>(c);
  uint64_t checksum = fnv1a(w.str().data(), w.str().size());
  w.put<uint64_t>(checksum);
  return std::move(w.str());
}

StatusOr<LoaderCursor> LoaderCursor::parse(const std::string& bytes) {
  const auto corrupt = [](const std::string& what) {
    return data_loss_error("loader cursor: " + what +
                           " (the checkpoint's data cursor is damaged; resume from "
                           "another checkpoint or start the epoch afresh)");
  };
  if (bytes.size() < sizeof(kCursorMagic) + 4 + 8)
    return corrupt("only " + std::to_string(bytes.size()) + " bytes");
  if (std::memcmp(bytes.data(), kCursorMagic, sizeof(kCursorMagic)) != 0) return corrupt("bad magic");
  const size_t body = bytes.size() - 8;
  uint64_t stored = 0;
  std::memcpy(&stored, bytes.data() + body, 8);
  if (stored != fnv1a(bytes.data(), body)) return corrupt("checksum mismatch");
  ByteReader r(bytes, body);
  char magic[sizeof(kCursorMagic)];
  for (char& c : magic) r.get(&c);
  uint32_t version = 0;
  r.get(&version);
  if (version != kCursorVersion) {
    return corrupt("version " + std::to_string(version) + ", this build reads " +
                   std::to_string(kCursorVersion));
  }
  LoaderCursor c;
  uint64_t n = 0;
  bool ok = r.get(&c.seed) && r.get(&c.epoch) && r.get(&c.rank) && r.get(&c.world) && r.get(&c.num_shards) &&
            r.get(&c.manifest_fingerprint) && r.get(&c.options_fingerprint) && r.get_count(&n, 4);
  if (!ok) return corrupt("truncated header");
  c.shard_list.resize(n);
  for (int32_t& s : c.shard_list) ok = ok && r.get(&s);
  ok = ok && r.get(&c.next_list_pos) && r.get_count(&n, 8);
  if (!ok) return corrupt("truncated shard list");
  c.slots.resize(n);
  for (ShardSlot& slot : c.slots) ok = ok && r.get(&slot.shard) && r.get(&slot.next_utt);
  ok = ok && r.get(&c.next_slot) && r.get(&c.shuffle_blocks) && r.get_ids(&c.shuffle_buffer) &&
       r.get_ids(&c.sort_buffer) && r.get_ids(&c.batch_buffer) && r.get_count(&n, 8);
  if (!ok) return corrupt("truncated buffers");
  c.ready_batches.resize(n);
  for (auto& batch : c.ready_batches) ok = ok && r.get_ids(&batch);
  uint8_t flushed = 0;
  ok = ok && r.get(&flushed);
  int64_t* counters[] = {&c.stats.shards_opened, &c.stats.bad_shards, &c.stats.bad_shard_utts,
                         &c.stats.utts_read,     &c.stats.bad_utts,   &c.stats.filtered_utts,
                         &c.stats.tokens,        &c.stats.unk_tokens, &c.stats.batches,
                         &c.stats.frames};
  for (int64_t* counter : counters) ok = ok && r.get(counter);
  if (!ok) return corrupt("truncated");
  if (r.pos() != body) return corrupt(std::to_string(body - r.pos()) + " trailing bytes");
  c.flushed = flushed != 0;
  // Consistency.
  if (c.world < 1 || c.rank < 0 || c.rank >= c.world) return corrupt("rank/world out of range");
  if (c.num_shards < 0 || c.num_shards > INT32_MAX) return corrupt("bad shard count");
  const auto shard_ok = [&](int32_t s) { return s >= 0 && s < c.num_shards; };
  for (int32_t s : c.shard_list) {
    if (!shard_ok(s)) return corrupt("shard list names shard " + std::to_string(s));
  }
  if (c.next_list_pos < 0 || c.next_list_pos > static_cast<int64_t>(c.shard_list.size())) {
    return corrupt("shard list position out of range");
  }
  if (c.slots.empty() || c.next_slot < 0 || c.next_slot >= static_cast<int32_t>(c.slots.size())) {
    return corrupt("slot position out of range");
  }
  for (const ShardSlot& slot : c.slots) {
    if ((slot.shard != -1 && !shard_ok(slot.shard)) || slot.next_utt < 0) return corrupt("bad slot");
  }
  const auto ids_ok = [&](const std::vector<UttId>& ids) {
    return std::all_of(ids.begin(), ids.end(),
                       [&](const UttId& id) { return shard_ok(id.shard) && id.utt >= 0; });
  };
  if (!ids_ok(c.shuffle_buffer) || !ids_ok(c.sort_buffer) || !ids_ok(c.batch_buffer))
    return corrupt("bad id");
  for (const auto& batch : c.ready_batches) {
    if (!ids_ok(batch) || batch.empty()) return corrupt("bad ready batch");
  }
  return c;
}

std::vector<int32_t> LoaderCursor::shards_in_flight() const {
  std::set<int32_t> shards;
  for (const ShardSlot& slot : slots) {
    if (slot.shard >= 0) shards.insert(slot.shard);
  }
  for (const auto* ids : {&shuffle_buffer, &sort_buffer, &batch_buffer}) {
    for (const UttId& id : *ids) shards.insert(id.shard);
  }
  for (const auto& batch : ready_batches) {
    for (const UttId& id : batch) shards.insert(id.shard);
  }
  return std::vector<int32_t>(shards.begin(), shards.end());
}

StatusOr<std::vector<LoaderCursor>> remap_cursors(const std::vector<LoaderCursor>& cursors, int new_world) {
  if (cursors.empty()) return invalid_argument_error("remap_cursors: no cursors given");
  if (new_world < 1) return invalid_argument_error("remap_cursors: new world " + std::to_string(new_world));
  const LoaderCursor& first = cursors.front();
  const int old_world = first.world;
  if (static_cast<int>(cursors.size()) != old_world) {
    return invalid_argument_error("remap_cursors: " + std::to_string(cursors.size()) +
                                  " cursors for a world of " + std::to_string(old_world) +
                                  " (every rank's cursor is needed)");
  }
  std::vector<const LoaderCursor*> by_rank(old_world, nullptr);
  for (const LoaderCursor& c : cursors) {
    if (c.world != old_world || c.epoch != first.epoch || c.seed != first.seed ||
        c.num_shards != first.num_shards || c.manifest_fingerprint != first.manifest_fingerprint ||
        c.options_fingerprint != first.options_fingerprint || c.slots.size() != first.slots.size()) {
      return invalid_argument_error("remap_cursors: cursors of rank " + std::to_string(c.rank) +
                                    " and rank " + std::to_string(first.rank) +
                                    " differ in world, epoch, seed, manifest or options");
    }
    if (c.rank < 0 || c.rank >= old_world || by_rank[c.rank] != nullptr) {
      return invalid_argument_error("remap_cursors: rank " + std::to_string(c.rank) +
                                    " missing or given twice");
    }
    by_rank[c.rank] = &c;
  }
  std::vector<std::set<int32_t>> in_flight(old_world);
  size_t longest_list = 0;
  for (int r = 0; r < old_world; ++r) {
    std::vector<int32_t> shards = by_rank[r]->shards_in_flight();
    in_flight[r].insert(shards.begin(), shards.end());
    longest_list = std::max(longest_list, by_rank[r]->shard_list.size());
  }
  // The epoch's shard order is position-major over ranks (rank_shards deals position p of the
  // permutation to rank p % world), so walking (position, rank) restores it.
  std::vector<int32_t> remaining;
  for (size_t pos = 0; pos < longest_list; ++pos) {
    for (int r = 0; r < old_world; ++r) {
      const LoaderCursor& c = *by_rank[r];
      if (pos >= c.shard_list.size()) continue;
      int32_t shard = c.shard_list[pos];
      if (static_cast<int64_t>(pos) >= c.next_list_pos || in_flight[r].count(shard))
        remaining.push_back(shard);
    }
  }
  std::vector<LoaderCursor> out(new_world);
  for (int r = 0; r < new_world; ++r) {
    LoaderCursor& c = out[r];
    c.seed = first.seed;
    c.epoch = first.epoch;
    c.rank = r;
    c.world = new_world;
    c.num_shards = first.num_shards;
    c.manifest_fingerprint = first.manifest_fingerprint;
    c.options_fingerprint = first.options_fingerprint;
    for (size_t i = r; i < remaining.size(); i += new_world) c.shard_list.push_back(remaining[i]);
    c.slots.assign(first.slots.size(), ShardSlot());
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The loader.

struct Loader::Impl {
  // One utterance read for a batch (I/O thread -> worker).
  struct RawUtt {
    std::string key;
    int64_t frames = 0;        // stored length
    int64_t kept_frames = 0;   // after SpecTrim
    std::vector<float> feats;  // [frames, F]
    std::vector<int32_t> tokens;
  };
  struct RawItem {
    Status status;
    bool end = false;
    int64_t index = 0;
    std::vector<RawUtt> utts;
    std::shared_ptr<const LoaderCursor> cursor;
  };
  struct Item {
    Status status;
    bool end = false;
    Batch batch;
    std::shared_ptr<const LoaderCursor> cursor;
  };
  struct OpenShard {
    std::unique_ptr<ShardReader> reader;
    int64_t holds = 0;  // the slot reading it + ids not yet materialized
  };

  std::vector<ManifestEntry> entries;
  const Tokenizer* tokenizer = nullptr;
  LoaderOptions options;
  int rank = 0;
  int world = 1;
  uint64_t manifest_fp = 0;
  uint64_t options_fp = 0;

  // I/O-side state (the I/O thread's, or the caller's without threads).
  LoaderCursor state;
  std::map<int32_t, OpenShard> open;
  int64_t longest = 0;  // longest kept frames in state.batch_buffer
  int64_t planned_utts = 0;
  int64_t bins = 0;
  std::vector<float> scratch;

  // Caller-side state.
  std::shared_ptr<const LoaderCursor> published;
  std::optional<Item> peeked;
  bool started = false;

  // Threads.
  std::unique_ptr<BoundedQueue<RawItem>> raw_queue;
  std::unique_ptr<BoundedQueue<Item>> out_queue;
  std::thread io_thread;
  std::thread worker_thread;
  std::atomic<bool> stop{false};

  ~Impl() {
    stop_threads();
    close_all();
  }

  std::unique_lock<std::mutex> hdf5_lock() { return std::unique_lock<std::mutex>(*options.hdf5_mutex); }

  // --- shards -----------------------------------------------------------------------------------

  Status open_and_validate(int32_t shard, ShardReader** out) {
    const ManifestEntry& e = entries[shard];
    if (e.bytes > 0) {
      std::error_code ec;
      uintmax_t size = std::filesystem::file_size(e.path, ec);
      if (ec) return not_found_error(e.path + ": " + ec.message() + " (the manifest names a missing shard)");
      if (static_cast<int64_t>(size) != e.bytes) {
        return data_loss_error(e.path + ": " + std::to_string(size) + " bytes, the manifest says " +
                               std::to_string(e.bytes) + " (truncated or rewritten shard)");
      }
    }
    if (options.verify_sha256 && !e.sha256.empty()) {
      ASSIGN_OR_RETURN(std::string sha, sha256_file(e.path));
      if (sha != e.sha256) {
        return data_loss_error(e.path + ": SHA-256 " + sha + ", the manifest says " + e.sha256 +
                               " (corrupted shard)");
      }
    }
    std::unique_ptr<ShardReader> reader;
    {
      auto lock = hdf5_lock();
      StatusOr<std::unique_ptr<ShardReader>> opened = options.open_shard(e.path);
      if (!opened.ok()) return opened.status();
      reader = std::move(opened).value();
    }
    Status bad;
    if (reader->num_utts() != e.num_utts || reader->num_frames() != e.num_frames) {
      bad = data_loss_error(e.path + ": holds " + std::to_string(reader->num_utts()) + " utterances / " +
                            std::to_string(reader->num_frames()) + " frames, the manifest says " +
                            std::to_string(e.num_utts) + " / " + std::to_string(e.num_frames));
    } else if (bins != 0 && reader->num_mel_bins() != bins) {
      bad = data_loss_error(e.path + ": " + std::to_string(reader->num_mel_bins()) +
                            " mel bins, the loader reads " + std::to_string(bins));
    }
    if (!bad.ok()) {
      auto lock = hdf5_lock();
      reader.reset();
      return bad;
    }
    if (bins == 0) bins = reader->num_mel_bins();
    OpenShard& slot = open[shard];
    slot.reader = std::move(reader);
    *out = slot.reader.get();
    return Status();
  }

  // The open reader of `shard`, opening it when needed (after a restore); null when it cannot be.
  ShardReader* reader_of(int32_t shard) {
    auto it = open.find(shard);
    if (it != open.end() && it->second.reader) return it->second.reader.get();
    ShardReader* reader = nullptr;
    Status status = open_and_validate(shard, &reader);
    if (!status.ok()) {
      LOG(ERROR) << "cannot reopen shard " << entries[shard].path << ": " << status.to_string();
      return nullptr;
    }
    return reader;
  }

  void hold(int32_t shard) { ++open[shard].holds; }
  void release(int32_t shard) {
    auto it = open.find(shard);
    CHECK(it != open.end() && it->second.holds > 0) << "release of shard " << shard << " not held";
    if (--it->second.holds == 0) {
      auto lock = hdf5_lock();
      open.erase(it);
    }
  }
  void close_all() {
    auto lock = hdf5_lock();
    open.clear();
  }

  // --- composition (steps 1-6) ------------------------------------------------------------------

  void fill_slots() {
    for (ShardSlot& slot : state.slots) {
      while (slot.shard < 0 && state.next_list_pos < static_cast<int32_t>(state.shard_list.size())) {
        int32_t shard = state.shard_list[state.next_list_pos++];
        ShardReader* reader = nullptr;
        Status status = open_and_validate(shard, &reader);
        if (!status.ok()) {
          LOG(ERROR) << "skipping shard " << entries[shard].path << ": " << status.to_string();
          ++state.stats.bad_shards;
          state.stats.bad_shard_utts += entries[shard].num_utts;
          continue;
        }
        ++state.stats.shards_opened;
        if (reader->num_utts() == 0) {
          auto lock = hdf5_lock();
          open.erase(shard);
          continue;
        }
        slot.shard = shard;
        slot.next_utt = 0;
        slot.num_utts = static_cast<int32_t>(reader->num_utts());
        hold(shard);
      }
    }
  }

  // The next utterance of the interleaved shards, or false when they are all read.
  bool source_next(UttId* id) {
    fill_slots();
    const int k = static_cast<int>(state.slots.size());
    for (int step = 0; step < k; ++step) {
      int s = (state.next_slot + step) % k;
      ShardSlot& slot = state.slots[s];
      if (slot.shard < 0) continue;
      id->shard = slot.shard;
      id->utt = slot.next_utt++;
      state.next_slot = (s + 1) % k;
      if (slot.next_utt >= slot.num_utts) {
        int32_t finished = slot.shard;
        slot.shard = -1;
        slot.next_utt = 0;
        slot.num_utts = 0;
        hold(id->shard);  // the id keeps the reader alive past the slot
        release(finished);
        return true;
      }
      hold(id->shard);
      return true;
    }
    return false;
  }

  // The next utterance that passes the index-level checks and the filter (holding its shard).
  bool pull(UttId* id) {
    std::vector<int32_t> tokens;
    while (source_next(id)) {
      ShardReader* reader = open.at(id->shard).reader.get();
      ++state.stats.utts_read;
      std::string key;
      std::string text;
      int64_t frames = 0;
      {
        auto lock = hdf5_lock();
        key = reader->key(id->utt);
        text = reader->text(id->utt);
        frames = reader->entry(id->utt).num_frames;
      }
      if (text_is_blank(text)) {
        LOG(ERROR) << "skipping utterance '" << key << "' of " << reader->path() << ": empty text";
        ++state.stats.bad_utts;
        release(id->shard);
        continue;
      }
      tokens.clear();
      int64_t unknown = tokenizer->encode(text, &tokens);
      if (!filter_keeps(options.filter, frames, static_cast<int64_t>(tokens.size()))) {
        ++state.stats.filtered_utts;
        release(id->shard);
        continue;
      }
      state.stats.tokens += static_cast<int64_t>(tokens.size());
      state.stats.unk_tokens += unknown;
      id->frames = static_cast<int32_t>(
          augmented_frames(options.augment, augment_stream(options.seed, state.epoch, key), frames));
      return true;
    }
    return false;
  }

  void push_batch(const UttId& id) {
    if (options.batch_type == BatchType::kStatic) {
      state.batch_buffer.push_back(id);
      if (static_cast<int64_t>(state.batch_buffer.size()) >= options.batch_size) {
        state.ready_batches.push_back(std::move(state.batch_buffer));
        state.batch_buffer.clear();
      }
      return;
    }
    // WeNet's DynamicBatchWindow.
    int64_t new_longest = std::max<int64_t>(longest, id.frames);
    int64_t padded = new_longest * (static_cast<int64_t>(state.batch_buffer.size()) + 1);
    if (padded > options.max_frames_in_batch && !state.batch_buffer.empty()) {
      state.ready_batches.push_back(std::move(state.batch_buffer));
      state.batch_buffer.assign(1, id);
      longest = id.frames;
    } else {
      state.batch_buffer.push_back(id);
      longest = new_longest;
    }
  }

  void sort_and_pass(std::vector<UttId>* block) {
    std::stable_sort(block->begin(), block->end(),
                     [](const UttId& a, const UttId& b) { return a.frames < b.frames; });
    for (const UttId& id : *block) push_batch(id);
    block->clear();
  }

  void push_sort(const UttId& id) {
    if (!options.sort) {
      push_batch(id);
      return;
    }
    state.sort_buffer.push_back(id);
    if (static_cast<int64_t>(state.sort_buffer.size()) >= options.sort_size)
      sort_and_pass(&state.sort_buffer);
  }

  void shuffle_and_pass(std::vector<UttId>* block) {
    RngKey key;
    key.seed = options.seed;
    key.purpose = RngPurpose::kShuffle;
    key.epoch = static_cast<uint64_t>(state.epoch);
    key.step = static_cast<uint64_t>(state.shuffle_blocks) + 1;  // step 0 is the shard order
    key.rank = static_cast<uint32_t>(state.rank);
    key.stream = 1;
    PhiloxStream stream = philox_stream(key);
    ++state.shuffle_blocks;
    for (int64_t i = static_cast<int64_t>(block->size()) - 1; i > 0; --i) {
      int64_t j =
          static_cast<int64_t>(philox_below(stream, static_cast<uint64_t>(i), static_cast<uint64_t>(i + 1)));
      std::swap((*block)[i], (*block)[j]);
    }
    std::vector<UttId> shuffled = std::move(*block);
    block->clear();
    for (const UttId& id : shuffled) push_sort(id);
  }

  void push_shuffle(const UttId& id) {
    if (!options.shuffle) {
      push_sort(id);
      return;
    }
    state.shuffle_buffer.push_back(id);
    if (static_cast<int64_t>(state.shuffle_buffer.size()) >= options.shuffle_size) {
      shuffle_and_pass(&state.shuffle_buffer);
    }
  }

  void flush() {
    if (!state.shuffle_buffer.empty()) shuffle_and_pass(&state.shuffle_buffer);
    if (!state.sort_buffer.empty()) sort_and_pass(&state.sort_buffer);
    if (!state.batch_buffer.empty()) {
      state.ready_batches.push_back(std::move(state.batch_buffer));
      state.batch_buffer.clear();
    }
    longest = 0;
    state.flushed = true;
  }

  bool compose(std::vector<UttId>* batch) {
    while (state.ready_batches.empty()) {
      if (state.flushed) return false;
      UttId id;
      if (pull(&id)) {
        push_shuffle(id);
      } else {
        flush();
      }
    }
    *batch = std::move(state.ready_batches.front());
    state.ready_batches.erase(state.ready_batches.begin());
    ++state.stats.batches;
    return true;
  }

  // --- materialization (step 7, the I/O part) ---------------------------------------------------

  Status check_bad_fraction() const {
    const LoaderStats& s = state.stats;
    int64_t bad = s.bad_utts + s.bad_shard_utts;
    if (bad > 0 && static_cast<double>(bad) > options.max_bad_fraction * static_cast<double>(planned_utts)) {
      std::ostringstream m;
      m << "rank " << state.rank << " epoch " << state.epoch << ": " << bad << " of " << planned_utts
        << " planned utterances are bad (" << s.bad_shards << " shards failed to open or validate, holding "
        << s.bad_shard_utts << " utterances; " << s.bad_utts
        << " utterances had empty text or unreadable/non-finite features), above max_bad_fraction "
        << options.max_bad_fraction << ". The errors logged above name each one; fix or remove them from the "
        << "manifest, or raise max_bad_fraction.";
      return data_loss_error(m.str());
    }
    return Status();
  }

  bool read_utterance(const UttId& id, RawUtt* out) {
    ShardReader* reader = reader_of(id.shard);
    if (reader == nullptr || id.utt >= reader->num_utts()) {
      LOG(ERROR) << "skipping utterance " << id.utt << " of shard " << entries[id.shard].path
                 << ": shard unreadable or utterance out of range";
      return false;
    }
    std::string text;
    Status status;
    {
      auto lock = hdf5_lock();
      out->key = reader->key(id.utt);
      text = reader->text(id.utt);
      out->frames = reader->entry(id.utt).num_frames;
      out->feats.resize(static_cast<size_t>(out->frames * bins));
      status = reader->read_feats(id.utt, out->feats.data());
    }
    if (!status.ok()) {
      LOG(ERROR) << "skipping utterance '" << out->key << "' of " << reader->path() << ": "
                 << status.to_string();
      return false;
    }
    for (float v : out->feats) {
      if (!std::isfinite(v)) {
        LOG(ERROR) << "skipping utterance '" << out->key << "' of " << reader->path()
                   << ": non-finite features (NaN or inf)";
        return false;
      }
    }
    out->tokens.clear();
    tokenizer->encode(text, &out->tokens);
    out->kept_frames =
        augmented_frames(options.augment, augment_stream(options.seed, state.epoch, out->key), out->frames);
    return true;
  }

  // Composes and reads the next batch, with the cursor after it; end or an error otherwise.
  RawItem produce() {
    RawItem item;
    std::vector<UttId> ids;
    while (true) {
      if (!compose(&ids)) {
        item.status = check_bad_fraction();
        item.end = item.status.ok();
        item.cursor = std::make_shared<LoaderCursor>(state);
        return item;
      }
      item.index = state.stats.batches - 1;
      // Read in (shard, utterance) order, i.e. file order, so utterances sharing an HDF5 chunk are
      // read while it is in the chunk cache; the batch keeps its composed order.
      std::vector<size_t> read_order(ids.size());
      std::iota(read_order.begin(), read_order.end(), 0);
      std::sort(read_order.begin(), read_order.end(), [&](size_t a, size_t b) {
        return ids[a].shard != ids[b].shard ? ids[a].shard < ids[b].shard : ids[a].utt < ids[b].utt;
      });
      std::vector<RawUtt> utts(ids.size());
      std::vector<bool> good(ids.size(), false);
      for (size_t i : read_order) {
        good[i] = read_utterance(ids[i], &utts[i]);
        if (good[i]) {
          state.stats.frames += utts[i].kept_frames;
        } else {
          ++state.stats.bad_utts;
        }
        release(ids[i].shard);
      }
      item.utts.clear();
      for (size_t i = 0; i < ids.size(); ++i) {
        if (good[i]) item.utts.push_back(std::move(utts[i]));
      }
      item.status = check_bad_fraction();
      if (!item.status.ok() || !item.utts.empty()) break;
    }
    item.cursor = std::make_shared<LoaderCursor>(state);
    return item;
  }

  // --- augmentation and padding (step 7, the worker part) ---------------------------------------

  Batch build_batch(RawItem* raw) const {
    Batch batch;
    const int64_t n = static_cast<int64_t>(raw->utts.size());
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return raw->utts[a].kept_frames > raw->utts[b].kept_frames;
    });
    batch.epoch = raw->cursor->epoch;
    batch.index = raw->index;
    batch.num_mel_bins = bins;
    for (const RawUtt& u : raw->utts) {
      batch.max_frames = std::max(batch.max_frames, u.kept_frames);
      batch.max_tokens = std::max<int64_t>(batch.max_tokens, static_cast<int64_t>(u.tokens.size()));
    }
    const int64_t t = batch.max_frames;
    const int64_t l = batch.max_tokens;
    batch.feats.assign(static_cast<size_t>(n * t * bins), 0.0f);
    batch.tokens.assign(static_cast<size_t>(n * l), -1);
    for (int64_t b = 0; b < n; ++b) {
      RawUtt& u = raw->utts[order[b]];
      PhiloxStream stream = augment_stream(options.seed, batch.epoch, u.key);
      int64_t kept = augment_utterance(batch.feats.data() + b * t * bins, u.feats.data(), options.augment,
                                       stream, u.frames, bins);
      CHECK_EQ(kept, u.kept_frames) << "utterance " << u.key;
      std::copy(u.tokens.begin(), u.tokens.end(), batch.tokens.begin() + b * l);
      batch.keys.push_back(std::move(u.key));
      batch.feat_lengths.push_back(static_cast<int32_t>(kept));
      batch.token_lengths.push_back(static_cast<int32_t>(u.tokens.size()));
    }
    return batch;
  }

  Item finish_item(RawItem raw) const {
    Item item;
    item.status = raw.status;
    item.end = raw.end;
    item.cursor = raw.cursor;
    if (raw.status.ok() && !raw.end) item.batch = build_batch(&raw);
    return item;
  }

  // --- threads ----------------------------------------------------------------------------------

  void start_threads() {
    if (options.prefetch_batches == 0) return;
    stop = false;
    raw_queue = std::make_unique<BoundedQueue<RawItem>>(options.prefetch_batches);
    out_queue = std::make_unique<BoundedQueue<Item>>(options.prefetch_batches);
    io_thread = std::thread([this] {
      while (!stop) {
        RawItem item = produce();
        bool last = item.end || !item.status.ok();
        if (!raw_queue->push(std::move(item)) || last) return;
      }
    });
    worker_thread = std::thread([this] {
      RawItem raw;
      while (raw_queue->pop(&raw)) {
        bool last = raw.end || !raw.status.ok();
        if (!out_queue->push(finish_item(std::move(raw))) || last) return;
      }
    });
  }

  void stop_threads() {
    stop = true;
    if (raw_queue) raw_queue->close();
    if (out_queue) out_queue->close();
    if (io_thread.joinable()) io_thread.join();
    if (worker_thread.joinable()) worker_thread.join();
    raw_queue.reset();
    out_queue.reset();
    peeked.reset();
  }

  void compute_planned() {
    planned_utts = 0;
    for (int32_t shard : state.shard_list) planned_utts += entries[shard].num_utts;
  }
};

Loader::Loader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Loader::~Loader() = default;

StatusOr<std::unique_ptr<Loader>> Loader::create(std::vector<ManifestEntry> shards,
                                                 const Tokenizer* tokenizer, LoaderOptions options, int rank,
                                                 int world) {
  RETURN_IF_ERROR(validate_options(options, rank, world));
  if (tokenizer == nullptr) return invalid_argument_error("loader: no tokenizer given");
  if (shards.size() > static_cast<size_t>(INT32_MAX))
    return invalid_argument_error("loader: too many shards");
  auto impl = std::make_unique<Impl>();
  impl->manifest_fp = manifest_fingerprint(shards);
  impl->options_fp = options_fingerprint(options);
  impl->entries = std::move(shards);
  impl->tokenizer = tokenizer;
  if (!options.hdf5_mutex) options.hdf5_mutex = std::make_shared<std::mutex>();
  if (!options.open_shard)
    options.open_shard = [](const std::string& path) { return ShardReader::open(path); };
  impl->bins = options.num_mel_bins;
  impl->options = std::move(options);
  impl->rank = rank;
  impl->world = world;
  return std::unique_ptr<Loader>(new Loader(std::move(impl)));
}

StatusOr<std::unique_ptr<Loader>> Loader::from_manifest(const std::string& manifest_path,
                                                        const Tokenizer* tokenizer, LoaderOptions options,
                                                        int rank, int world) {
  ASSIGN_OR_RETURN(std::vector<ManifestEntry> entries, read_manifest(manifest_path));
  for (ManifestEntry& e : entries) e.path = manifest_entry_path(manifest_path, e);
  return create(std::move(entries), tokenizer, std::move(options), rank, world);
}

Status Loader::start_epoch(int64_t epoch) {
  Impl& m = *impl_;
  m.stop_threads();
  m.close_all();
  LoaderCursor c;
  c.seed = m.options.seed;
  c.epoch = epoch;
  c.rank = m.rank;
  c.world = m.world;
  c.num_shards = static_cast<int64_t>(m.entries.size());
  c.manifest_fingerprint = m.manifest_fp;
  c.options_fingerprint = m.options_fp;
  c.shard_list = rank_shards(c.num_shards, c.seed, epoch, m.options.shuffle, m.rank, m.world);
  c.slots.assign(static_cast<size_t>(m.options.num_open_shards), ShardSlot());
  m.state = std::move(c);
  m.longest = 0;
  m.compute_planned();
  m.published = std::make_shared<LoaderCursor>(m.state);
  m.started = true;
  m.start_threads();
  return Status();
}

Status Loader::restore(const LoaderCursor& cursor) {
  Impl& m = *impl_;
  const auto mismatch = [&](const std::string& what) {
    return failed_precondition_error(
        "loader restore: the cursor's " + what +
        "; resume with the same manifest and data options, use remap_cursors() for "
        "another world size, or start the epoch afresh");
  };
  if (cursor.num_shards != static_cast<int64_t>(m.entries.size()) ||
      cursor.manifest_fingerprint != m.manifest_fp) {
    return mismatch("manifest differs from this one (" + std::to_string(cursor.num_shards) + " vs " +
                    std::to_string(m.entries.size()) + " shards, or other counts/checksums)");
  }
  if (cursor.seed != m.options.seed) {
    return mismatch("seed is " + std::to_string(cursor.seed) + ", the loader's " +
                    std::to_string(m.options.seed));
  }
  if (cursor.rank != m.rank || cursor.world != m.world) {
    return mismatch("rank/world is " + std::to_string(cursor.rank) + "/" + std::to_string(cursor.world) +
                    ", this loader's " + std::to_string(m.rank) + "/" + std::to_string(m.world));
  }
  if (static_cast<int>(cursor.slots.size()) != m.options.num_open_shards) {
    return mismatch("num_open_shards is " + std::to_string(cursor.slots.size()) + ", the loader's " +
                    std::to_string(m.options.num_open_shards));
  }
  if (cursor.options_fingerprint != m.options_fp) {
    LOG(WARNING)
        << "loader restore: the data options (buffers, filter, batching or augmentation) changed since the "
           "cursor was saved; the continuation follows the new options";
  }
  m.stop_threads();
  m.close_all();
  m.state = cursor;
  m.state.options_fingerprint = m.options_fp;
  m.compute_planned();
  // Re-open the shards in flight (index only) and rebuild the caches: slot sizes, kept frames of the
  // ids that sort and batching still look at, and the holds.
  for (int32_t shard : m.state.shards_in_flight()) {
    ShardReader* reader = nullptr;
    Status status = m.open_and_validate(shard, &reader);
    if (!status.ok())
      LOG(ERROR) << "restore: cannot reopen shard " << m.entries[shard].path << ": " << status.to_string();
  }
  for (ShardSlot& slot : m.state.slots) {
    if (slot.shard < 0) continue;
    auto it = m.open.find(slot.shard);
    if (it == m.open.end() || slot.next_utt >= it->second.reader->num_utts()) {
      if (it == m.open.end()) {
        ++m.state.stats.bad_shards;
        m.state.stats.bad_shard_utts += m.entries[slot.shard].num_utts - slot.next_utt;
      }
      slot = ShardSlot();
      continue;
    }
    slot.num_utts = static_cast<int32_t>(it->second.reader->num_utts());
    m.hold(slot.shard);
  }
  for (std::vector<UttId>* ids : {&m.state.shuffle_buffer, &m.state.sort_buffer, &m.state.batch_buffer}) {
    std::vector<UttId> kept;
    for (UttId id : *ids) {
      auto it = m.open.find(id.shard);
      if (it == m.open.end() || !it->second.reader || id.utt >= it->second.reader->num_utts()) {
        ++m.state.stats.bad_utts;
        continue;
      }
      std::string key;
      int64_t frames = 0;
      {
        auto lock = m.hdf5_lock();
        key = it->second.reader->key(id.utt);
        frames = it->second.reader->entry(id.utt).num_frames;
      }
      id.frames = static_cast<int32_t>(
          augmented_frames(m.options.augment, augment_stream(m.options.seed, m.state.epoch, key), frames));
      m.hold(id.shard);
      kept.push_back(id);
    }
    *ids = std::move(kept);
  }
  for (const auto& batch : m.state.ready_batches) {
    for (const UttId& id : batch) m.hold(id.shard);  // a missing shard is reported at materialization
  }
  // Shards that failed to reopen were registered by hold() without a reader; reader_of() retries them.
  m.longest = 0;
  for (const UttId& id : m.state.batch_buffer) m.longest = std::max<int64_t>(m.longest, id.frames);
  m.published = std::make_shared<LoaderCursor>(m.state);
  m.started = true;
  m.start_threads();
  return Status();
}

bool Loader::has_next() {
  Impl& m = *impl_;
  CHECK(m.started) << "Loader::has_next() before start_epoch() or restore()";
  if (!m.peeked) {
    if (m.options.prefetch_batches == 0) {
      m.peeked = m.finish_item(m.produce());
    } else {
      Impl::Item item;
      if (!m.out_queue->pop(&item)) {
        item.status = internal_error("loader threads stopped unexpectedly");
      }
      m.peeked = std::move(item);
    }
  }
  return !(m.peeked->end && m.peeked->status.ok());
}

Status Loader::next(Batch* batch) {
  Impl& m = *impl_;
  if (!has_next()) {
    return out_of_range_error("Loader::next() past the end of epoch " + std::to_string(m.state.epoch) +
                              " on rank " + std::to_string(m.rank) +
                              "; check has_next() (all-reduced) first");
  }
  if (!m.peeked->status.ok()) return m.peeked->status;  // kept: later calls fail the same way
  *batch = std::move(m.peeked->batch);
  m.published = std::move(m.peeked->cursor);
  m.peeked.reset();
  return Status();
}

const LoaderCursor& Loader::cursor() const {
  CHECK(impl_->published) << "Loader::cursor() before start_epoch() or restore()";
  return *impl_->published;
}

int64_t Loader::num_shards() const {
  return static_cast<int64_t>(impl_->entries.size());
}

}  // namespace moeasr
