// parallel/communicator.cc — what every communicator shares: names, options from the environment,
// collective fingerprints and their checker (c10d ProcessGroupWrapper's runCollectiveChecks), and
// argument checks (see communicator.h).
#include "parallel/communicator.h"

#include <cerrno>
#include <cstdlib>
#include <sstream>

namespace moeasr {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kMin: return "min";
  }
  return "?";
}

const char* collective_op_name(CollectiveOp op) {
  switch (op) {
    case CollectiveOp::kAllReduce: return "all_reduce";
    case CollectiveOp::kAllGather: return "all_gather";
    case CollectiveOp::kAllToAll: return "all_to_all";
    case CollectiveOp::kAllToAllV: return "all_to_all_v";
    case CollectiveOp::kBroadcast: return "broadcast";
    case CollectiveOp::kBarrier: return "barrier";
  }
  return "?";
}

StatusOr<CommunicatorOptions> communicator_options_from_env() {
  CommunicatorOptions options;
  if (const char* debug = std::getenv("MOEASR_COLLECTIVE_DEBUG")) {
    std::string v(debug);
    if (v == "1" || v == "true") {
      options.debug = true;
    } else if (!(v.empty() || v == "0" || v == "false")) {
      return invalid_argument_error("MOEASR_COLLECTIVE_DEBUG='" + v + "' must be 0 or 1");
    }
  }
  if (const char* timeout = std::getenv("MOEASR_COLLECTIVE_TIMEOUT_S")) {
    char* end = nullptr;
    errno = 0;
    double seconds = std::strtod(timeout, &end);
    if (end == timeout || *end != '\0' || errno != 0 || !(seconds > 0)) {
      return invalid_argument_error(std::string("MOEASR_COLLECTIVE_TIMEOUT_S='") + timeout +
                                    "' must be a positive number of seconds, e.g. 600");
    }
    options.timeout = std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000.0));
  }
  return options;
}

uint64_t group_name_hash(const std::string& name) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : name) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string describe_fingerprint(const CollectiveFingerprint& fp) {
  std::ostringstream out;
  out << "rank " << fp.group_rank << " (world " << fp.world_rank << "): seq " << fp.sequence << " "
      << collective_op_name(fp.op) << " " << dtype_name(fp.dtype) << " count " << fp.count;
  if (fp.op == CollectiveOp::kAllReduce) out << " op " << reduce_op_name(fp.reduce);
  if (fp.op == CollectiveOp::kBroadcast) out << " root " << fp.root;
  if (fp.op == CollectiveOp::kAllToAllV) {
    out << " send [";
    for (size_t i = 0; i < fp.send_counts.size(); ++i) out << (i ? " " : "") << fp.send_counts[i];
    out << "] recv [";
    for (size_t i = 0; i < fp.recv_counts.size(); ++i) out << (i ? " " : "") << fp.recv_counts[i];
    out << "]";
  }
  out << " group#" << std::hex << (fp.group_hash & 0xffffffu);
  return out.str();
}

int64_t fingerprint_record_size(int group_size) {
  return 10 + 2 * static_cast<int64_t>(group_size);
}

void pack_fingerprint(int64_t* record, const CollectiveFingerprint& fp, int group_size) {
  record[0] = fp.sequence;
  record[1] = static_cast<int64_t>(fp.op);
  record[2] = static_cast<int64_t>(fp.dtype);
  record[3] = static_cast<int64_t>(fp.group_hash);
  record[4] = fp.count;
  record[5] = fp.root;
  record[6] = fp.group_rank;
  record[7] = fp.world_rank;
  record[8] = static_cast<int64_t>(fp.reduce);
  const bool v = fp.op == CollectiveOp::kAllToAllV;
  record[9] = v ? 1 : 0;
  for (int i = 0; i < group_size; ++i) {
    record[10 + i] = v ? fp.send_counts[i] : 0;
    record[10 + group_size + i] = v ? fp.recv_counts[i] : 0;
  }
}

CollectiveFingerprint unpack_fingerprint(const int64_t* record, int group_size) {
  CollectiveFingerprint fp;
  fp.sequence = record[0];
  fp.op = static_cast<CollectiveOp>(record[1]);
  fp.dtype = static_cast<DType>(record[2]);
  fp.group_hash = static_cast<uint64_t>(record[3]);
  fp.count = record[4];
  fp.root = static_cast<int32_t>(record[5]);
  fp.group_rank = static_cast<int32_t>(record[6]);
  fp.world_rank = static_cast<int32_t>(record[7]);
  fp.reduce = static_cast<ReduceOp>(record[8]);
  if (record[9] != 0) {
    fp.send_counts.assign(record + 10, record + 10 + group_size);
    fp.recv_counts.assign(record + 10 + group_size, record + 10 + 2 * group_size);
  }
  return fp;
}

Status check_collective_fingerprints(const std::string& group_name,
                                     const std::vector<std::optional<CollectiveFingerprint>>& prints) {
  const int n = static_cast<int>(prints.size());
  std::vector<int> missing;
  const CollectiveFingerprint* first = nullptr;
  for (int i = 0; i < n; ++i) {
    if (!prints[i].has_value()) {
      missing.push_back(i);
    } else if (first == nullptr) {
      first = &*prints[i];
    }
  }
  std::ostringstream problem;
  if (!missing.empty()) {
    problem << "group ranks that did not arrive:";
    for (int i : missing) problem << " " << i;
  } else {
    for (int i = 0; i < n && problem.tellp() == 0; ++i) {
      const CollectiveFingerprint& a = *first;
      const CollectiveFingerprint& b = *prints[i];
      if (b.group_rank != i) {
        problem << "member " << i << " sent a fingerprint as rank " << b.group_rank;
      } else if (b.group_hash != a.group_hash) {
        problem << "rank " << i << " is in another group than rank " << first->group_rank;
      } else if (b.sequence != a.sequence) {
        problem << "sequence numbers differ: rank " << a.group_rank << " is at " << a.sequence << ", rank "
                << i << " at " << b.sequence << " (a rank skipped or added a collective)";
      } else if (b.op != a.op) {
        problem << "operations differ: rank " << a.group_rank << " calls " << collective_op_name(a.op)
                << ", rank " << i << " calls " << collective_op_name(b.op);
      } else if (b.dtype != a.dtype) {
        problem << "dtypes differ: " << dtype_name(a.dtype) << " on rank " << a.group_rank << ", "
                << dtype_name(b.dtype) << " on rank " << i;
      } else if (a.op == CollectiveOp::kAllReduce && b.reduce != a.reduce) {
        problem << "reduce ops differ between rank " << a.group_rank << " and rank " << i;
      } else if (a.op == CollectiveOp::kBroadcast && b.root != a.root) {
        problem << "broadcast roots differ: " << a.root << " on rank " << a.group_rank << ", " << b.root
                << " on rank " << i;
      } else if (a.op != CollectiveOp::kAllToAllV && b.count != a.count) {
        problem << "counts differ: " << a.count << " on rank " << a.group_rank << ", " << b.count
                << " on rank " << i;
      }
    }
    if (problem.tellp() == 0 && first->op == CollectiveOp::kAllToAllV) {
      for (int i = 0; i < n && problem.tellp() == 0; ++i) {
        for (int j = 0; j < n; ++j) {
          const auto& si = prints[i]->send_counts;
          const auto& rj = prints[j]->recv_counts;
          if (static_cast<int>(si.size()) != n || static_cast<int>(rj.size()) != n) {
            problem << "all_to_all_v count vectors are not of the group size " << n;
            break;
          }
          if (si[j] != rj[i]) {
            problem << "all_to_all_v counts are not transposes: rank " << i << " sends " << si[j]
                    << " elements to rank " << j << ", which expects " << rj[i] << " from rank " << i;
            break;
          }
        }
      }
    }
  }
  if (problem.tellp() == 0) return Status();
  std::ostringstream message;
  message << "collective check failed on group '" << group_name << "': " << problem.str()
          << "\n  fingerprints:";
  for (int i = 0; i < n; ++i) {
    message << "\n    ";
    if (prints[i].has_value()) {
      message << describe_fingerprint(*prints[i]);
    } else {
      message << "rank " << i << ": <did not arrive>";
    }
  }
  return Status(missing.empty() ? StatusCode::kInternal : StatusCode::kDeadlineExceeded, message.str());
}

std::string collective_context(const Communicator& comm, CollectiveOp op, int64_t sequence) {
  std::ostringstream out;
  out << "[group " << comm.name() << " rank " << comm.rank() << "/" << comm.size() << " (world "
      << comm.world_rank_of(comm.rank()) << ") seq " << sequence << " " << collective_op_name(op) << "]";
  return out.str();
}

Status check_all_to_all_v_counts(const Communicator& comm, const int64_t* out_counts,
                                 const int64_t* in_counts) {
  const int n = comm.size();
  if (n > 0 && (out_counts == nullptr || in_counts == nullptr)) {
    return invalid_argument_error("all_to_all_v on group " + comm.name() + ": null count arrays");
  }
  for (int i = 0; i < n; ++i) {
    if (out_counts[i] < 0 || in_counts[i] < 0) {
      std::ostringstream m;
      m << "all_to_all_v on group " << comm.name() << ": negative count for peer " << i << " (send "
        << in_counts[i] << ", receive " << out_counts[i] << ")";
      return invalid_argument_error(m.str());
    }
  }
  if (n == 1 && out_counts[0] != in_counts[0]) {
    std::ostringstream m;
    m << "all_to_all_v on one-member group " << comm.name() << ": sends " << in_counts[0]
      << " elements to itself but expects " << out_counts[0];
    return invalid_argument_error(m.str());
  }
  return Status();
}

}  // namespace moeasr
