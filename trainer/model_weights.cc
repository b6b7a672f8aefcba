// trainer/model_weights.cc — HDF5 weights files (see model_weights.h).
#include "trainer/model_weights.h"

#include <hdf5.h>

#include <cstdio>
#include <vector>

namespace moeasr {
namespace {

std::string shape_text(const std::vector<hsize_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

// Closes an HDF5 handle when leaving scope.
struct H5Handle {
  hid_t id;
  herr_t (*close)(hid_t);
  ~H5Handle() {
    if (id >= 0) close(id);
  }
};

herr_t collect_name(hid_t, const char* name, const H5L_info_t*, void* data) {
  static_cast<std::vector<std::string>*>(data)->push_back(name);
  return 0;
}

bool is_other_ranks_expert(const std::string& name, const ParameterTable& table) {
  // "<prefix>.experts.<id>.<suffix>": another rank's expert when the table has expert tensors for this
  // prefix but not this id.
  size_t pos = name.find(".experts.");
  if (pos == std::string::npos) return false;
  return table.find(name) == nullptr;
}

}  // namespace

Status load_model_weights(const std::string& path, ParameterStore<float>* store) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  H5Handle file{H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose};
  if (file.id < 0) return not_found_error("cannot open the weights file " + path);
  H5Handle params{H5Gopen2(file.id, "/params", H5P_DEFAULT), H5Gclose};
  if (params.id < 0) return data_loss_error(path + " has no /params group: not a moe-asr weights file");
  std::vector<std::string> names;
  H5Literate(params.id, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_name, &names);
  const ParameterTable& table = *store->table;
  for (const std::string& name : names) {
    if (table.find(name) == nullptr && !is_other_ranks_expert(name, table) &&
        name.find(".num_batches_tracked") == std::string::npos) {
      return invalid_argument_error(
          path + ": tensor '" + name +
          "' is not part of the configured model (a checkpoint from another model?)");
    }
  }
  for (const ParamEntry& e : table.entries()) {
    H5Handle d{H5Dopen2(params.id, e.name.c_str(), H5P_DEFAULT), H5Dclose};
    if (d.id < 0) {
      return invalid_argument_error(path + " lacks tensor '" + e.name +
                                    "' (a checkpoint from another model shape or config?)");
    }
    H5Handle space{H5Dget_space(d.id), H5Sclose};
    int rank = H5Sget_simple_extent_ndims(space.id);
    std::vector<hsize_t> dims(static_cast<size_t>(rank > 0 ? rank : 0));
    if (rank > 0) H5Sget_simple_extent_dims(space.id, dims.data(), nullptr);
    bool same = rank == e.shape.ndim();
    for (int i = 0; same && i < rank; ++i)
      same = static_cast<int64_t>(dims[static_cast<size_t>(i)]) == e.shape[i];
    if (!same) {
      return invalid_argument_error(path + ": tensor '" + e.name + "' has shape " + shape_text(dims) +
                                    " but the configured model expects " + e.shape.to_string() +
                                    " (a checkpoint from another model shape)");
    }
    if (H5Dread(d.id, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, store->host_value(e)) < 0) {
      return data_loss_error(path + ": cannot read tensor '" + e.name + "'");
    }
  }
  return Status();
}

Status save_model_weights(const std::string& path, const ParameterStore<float>& store,
                          const std::string& config_text) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const std::string tmp = path + ".tmp";
  {
    H5Handle file{H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose};
    if (file.id < 0)
      return io_error("cannot create " + tmp + " (check the directory exists and is writable)");
    H5Handle params{H5Gcreate2(file.id, "/params", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose};
    for (const ParamEntry& e : store.table->entries()) {
      std::vector<hsize_t> dims;
      for (int i = 0; i < e.shape.ndim(); ++i) dims.push_back(static_cast<hsize_t>(e.shape[i]));
      H5Handle space{H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose};
      H5Handle d{H5Dcreate2(params.id, e.name.c_str(), H5T_IEEE_F32LE, space.id, H5P_DEFAULT, H5P_DEFAULT,
                            H5P_DEFAULT),
                 H5Dclose};
      if (d.id < 0 ||
          H5Dwrite(d.id, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, store.host_value(e)) < 0) {
        return io_error("cannot write tensor '" + e.name + "' to " + tmp);
      }
    }
    auto write_attr = [&](const char* name, const std::string& text) {
      H5Handle type{H5Tcopy(H5T_C_S1), H5Tclose};
      H5Tset_size(type.id, text.size() + 1);
      H5Handle space{H5Screate(H5S_SCALAR), H5Sclose};
      H5Handle a{H5Acreate2(file.id, name, type.id, space.id, H5P_DEFAULT, H5P_DEFAULT), H5Aclose};
      return a.id >= 0 && H5Awrite(a.id, type.id, text.c_str()) >= 0;
    };
    if (!write_attr("format", "moe-asr-weights") ||
        !write_attr("format_version", std::to_string(kModelWeightsFormatVersion)) ||
        !write_attr("config", config_text)) {
      return io_error("cannot write attributes of " + tmp);
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) return io_error("cannot rename " + tmp + " to " + path);
  return Status();
}

StatusOr<std::string> read_model_weights_config(const std::string& path) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  H5Handle file{H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose};
  if (file.id < 0) return not_found_error("cannot open the weights file " + path);
  if (H5Aexists(file.id, "config") <= 0) return std::string();
  H5Handle a{H5Aopen(file.id, "config", H5P_DEFAULT), H5Aclose};
  H5Handle type{H5Aget_type(a.id), H5Tclose};
  std::string text;
  if (H5Tis_variable_str(type.id) > 0) {
    char* value = nullptr;
    H5Handle mem{H5Tcopy(H5T_C_S1), H5Tclose};
    H5Tset_size(mem.id, H5T_VARIABLE);
    H5Tset_cset(mem.id, H5Tget_cset(type.id));
    if (H5Aread(a.id, mem.id, &value) < 0) return data_loss_error(path + ": unreadable config attribute");
    text = value ? value : "";
    H5free_memory(value);
  } else {
    std::vector<char> buffer(H5Tget_size(type.id) + 1, '\0');
    if (H5Aread(a.id, type.id, buffer.data()) < 0)
      return data_loss_error(path + ": unreadable config attribute");
    text = buffer.data();
  }
  return text;
}

}  // namespace moeasr
