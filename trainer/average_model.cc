// trainer/average_model.cc — checkpoint averaging, as WeNet's average_model.py (see average_model.h).
#include "trainer/average_model.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <memory>

#include "core/logging.h"
#include "model/parameter_table.h"
#include "trainer/checkpoint.h"
#include "trainer/model_weights.h"

namespace moeasr {

namespace {

Shape shape_from_dims(const google::protobuf::RepeatedField<int64_t>& d) {
  switch (d.size()) {
    case 0: return Shape{};
    case 1: return Shape{d[0]};
    case 2: return Shape{d[0], d[1]};
    case 3: return Shape{d[0], d[1], d[2]};
    case 4: return Shape{d[0], d[1], d[2], d[3]};
    case 5: return Shape{d[0], d[1], d[2], d[3], d[4]};
    case 6: return Shape{d[0], d[1], d[2], d[3], d[4], d[5]};
    default: break;
  }
  CHECK(false) << "a tensor of " << d.size() << " dimensions (at most 6 are supported)";
  return Shape{};
}

bool same_dims(const proto::CheckpointTensor& a, const proto::CheckpointTensor& b) {
  if (a.shape_size() != b.shape_size()) return false;
  for (int i = 0; i < a.shape_size(); ++i) {
    if (a.shape(i) != b.shape(i)) return false;
  }
  return true;
}

std::string dims_text(const proto::CheckpointTensor& t) {
  std::string s = "[";
  for (int i = 0; i < t.shape_size(); ++i) s += (i ? ", " : "") + std::to_string(t.shape(i));
  return s + "]";
}

}  // namespace

StatusOr<CheckpointScore> read_checkpoint_sidecar(const std::string& checkpoint_dir) {
  const int64_t step_from_name = checkpoint_step_from_path(checkpoint_dir);
  if (step_from_name < 0)
    return invalid_argument_error(checkpoint_dir + " is not a step_<N> checkpoint directory");
  const std::string path =
      (std::filesystem::path(checkpoint_dir) / checkpoint_sidecar_name(step_from_name)).string();
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return not_found_error("no sidecar " + path);
  CheckpointScore score;
  score.dir = checkpoint_dir;
  score.tag = checkpoint_dir_name(step_from_name);
  std::string key;
  try {
    YAML::Node y = YAML::LoadFile(path);
    key = "epoch";
    if (y["epoch"]) score.epoch = y["epoch"].as<int64_t>();
    key = "step";
    score.step = y["step"] ? y["step"].as<int64_t>() : step_from_name;
    key = "batches_in_epoch";
    if (y["batches_in_epoch"]) score.batches_in_epoch = y["batches_in_epoch"].as<int64_t>();
    key = "loss_dict.loss";
    if (y["loss_dict"] && y["loss_dict"]["loss"]) {
      score.cv_loss = y["loss_dict"]["loss"].as<double>();
      score.has_cv_loss = true;
    } else if (y["cv_loss"]) {
      key = "cv_loss";
      score.cv_loss = y["cv_loss"].as<double>();
      score.has_cv_loss = true;
    }
  } catch (const YAML::Exception& e) {
    return invalid_argument_error(path + ": bad value for '" + key + "' (" + e.what() + ")");
  }
  return score;
}

StatusOr<std::vector<CheckpointScore>> select_checkpoints_to_average(const AverageModelOptions& options) {
  if (options.num <= 0)
    return invalid_argument_error("--num must be positive, got " + std::to_string(options.num));
  if (options.mode != "hybrid" && options.mode != "step" && options.mode != "epoch") {
    return invalid_argument_error("--mode must be hybrid, step or epoch, got '" + options.mode + "'");
  }
  std::error_code ec;
  if (!std::filesystem::is_directory(options.src_path, ec)) {
    return not_found_error("--src_path " + options.src_path + " is not a directory");
  }
  std::vector<CheckpointScore> candidates;
  for (const std::string& dir : list_complete_checkpoints(options.src_path, false)) {
    ASSIGN_OR_RETURN(proto::CheckpointMeta meta, read_checkpoint_meta(dir));
    CheckpointScore score;
    score.dir = dir;
    score.tag = checkpoint_dir_name(meta.step());
    score.epoch = meta.epoch();
    score.step = meta.step();
    score.batches_in_epoch = meta.batches_in_epoch();
    if (options.val_best) {
      StatusOr<CheckpointScore> sidecar = read_checkpoint_sidecar(dir);
      if (!sidecar.ok()) {
        LOG(WARNING) << "skipping " << dir << " for --val_best: " << sidecar.status().message();
        continue;
      }
      if (!sidecar.value().has_cv_loss) {
        LOG(WARNING) << "skipping " << dir
                     << " for --val_best: its sidecar has no cv loss (no cv run before it)";
        continue;
      }
      score = sidecar.value();
    }
    if (options.mode == "epoch" && score.batches_in_epoch != 0) continue;
    if (score.epoch < options.min_epoch || score.epoch > options.max_epoch) continue;
    if (score.step < options.min_step || score.step > options.max_step) continue;
    candidates.push_back(score);
  }
  if (options.val_best) {
    std::stable_sort(candidates.begin(), candidates.end(),
                     [](const CheckpointScore& a, const CheckpointScore& b) {
                       return a.cv_loss != b.cv_loss ? a.cv_loss < b.cv_loss : a.step < b.step;
                     });
    if (static_cast<int64_t>(candidates.size()) > options.num)
      candidates.resize(static_cast<size_t>(options.num));
  } else if (static_cast<int64_t>(candidates.size()) > options.num) {
    candidates.erase(candidates.begin(), candidates.end() - options.num);
  }
  if (static_cast<int64_t>(candidates.size()) < options.num) {
    return invalid_argument_error(
        "--num " + std::to_string(options.num) + " but only " + std::to_string(candidates.size()) +
        " complete checkpoint(s) in " + options.src_path + " match (mode " + options.mode +
        (options.val_best ? ", with a cv loss" : "") + ", step/epoch windows); lower --num");
  }
  return candidates;
}

Status average_checkpoints(const std::vector<std::string>& checkpoint_dirs, const std::string& dst_model) {
  if (checkpoint_dirs.empty()) return invalid_argument_error("no checkpoints to average");
  std::vector<std::unique_ptr<CheckpointReader>> readers;
  for (const std::string& dir : checkpoint_dirs) {
    ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> r, CheckpointReader::open(dir));
    readers.push_back(std::move(r));
  }
  const proto::CheckpointMeta& first = readers[0]->meta();
  size_t newest = 0;
  for (size_t i = 1; i < readers.size(); ++i) {
    if (readers[i]->meta().step() > readers[newest]->meta().step()) newest = i;
  }
  // Every checkpoint must hold exactly the first one's tensors.
  for (size_t i = 1; i < readers.size(); ++i) {
    const proto::CheckpointMeta& m = readers[i]->meta();
    for (const proto::CheckpointTensor& t : first.tensors()) {
      const proto::CheckpointTensor* u = readers[i]->find(t.name());
      if (u == nullptr) {
        return invalid_argument_error(readers[i]->dir() + " lacks tensor '" + t.name() + "' that " +
                                      readers[0]->dir() +
                                      " holds (checkpoints of different models cannot be averaged)");
      }
      if (!same_dims(t, *u)) {
        return invalid_argument_error("tensor '" + t.name() + "' has shape " + dims_text(t) + " in " +
                                      readers[0]->dir() + " but " + dims_text(*u) + " in " +
                                      readers[i]->dir());
      }
    }
    if (m.tensors_size() != first.tensors_size()) {
      for (const proto::CheckpointTensor& u : m.tensors()) {
        if (readers[0]->find(u.name()) == nullptr) {
          return invalid_argument_error(readers[i]->dir() + " holds tensor '" + u.name() + "' that " +
                                        readers[0]->dir() + " lacks (checkpoints of different models)");
        }
      }
    }
  }
  // Every tensor goes into the buffer region of the output table: a store without gradients.
  ParameterTable table;
  for (const proto::CheckpointTensor& t : first.tensors()) {
    table.add(t.name(), shape_from_dims(t.shape()), ParamRegion::kBuffer, ParamInit::kZeros, 0, 0,
              t.expert());
  }
  ParameterStore<float> store(table);
  std::vector<double> sum;
  std::vector<float> one;
  const double n = static_cast<double>(readers.size());
  for (const ParamEntry& e : table.entries()) {
    sum.assign(static_cast<size_t>(e.numel), 0.0);
    one.resize(static_cast<size_t>(e.numel));
    for (auto& reader : readers) {
      RETURN_IF_ERROR(reader->read(*reader->find(e.name), CheckpointData::kValues, one.data()));
      for (size_t i = 0; i < one.size(); ++i) sum[i] += one[i];
    }
    float* out = store.value(e);
    for (size_t i = 0; i < sum.size(); ++i) out[i] = static_cast<float>(sum[i] / n);
  }
  return save_model_weights(dst_model, store, readers[newest]->meta().config_yaml());
}

StatusOr<std::vector<CheckpointScore>> average_model(const AverageModelOptions& options) {
  if (options.dst_model.empty()) return invalid_argument_error("--dst_model is required");
  ASSIGN_OR_RETURN(std::vector<CheckpointScore> chosen, select_checkpoints_to_average(options));
  std::vector<std::string> dirs;
  for (const CheckpointScore& c : chosen) dirs.push_back(c.dir);
  RETURN_IF_ERROR(average_checkpoints(dirs, options.dst_model));
  return chosen;
}

}  // namespace moeasr
