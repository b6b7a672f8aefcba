// tests/common/h5_reader.cc — HDF5 fixture reading (see h5_reader.h).
#include "tests/common/h5_reader.h"

#include <hdf5.h>

#include "core/check.h"

namespace moeasr::testing {

H5Reader::H5Reader(const std::string& path) : path_(path) {
  file_ = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  CHECK(file_ >= 0) << "cannot open HDF5 fixture " << path;
}

H5Reader::~H5Reader() {
  if (file_ >= 0) H5Fclose(file_);
}

bool H5Reader::exists(const std::string& name) const {
  // Walk the path so that a missing intermediate group is "absent", not an error.
  std::string partial;
  size_t start = 1;
  while (start <= name.size()) {
    size_t slash = name.find('/', start);
    partial = name.substr(0, slash == std::string::npos ? name.size() : slash);
    if (H5Lexists(file_, partial.c_str(), H5P_DEFAULT) <= 0) return false;
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return true;
}

std::vector<int64_t> H5Reader::shape(const std::string& dataset) const {
  hid_t d = H5Dopen2(file_, dataset.c_str(), H5P_DEFAULT);
  CHECK(d >= 0) << path_ << ": no dataset " << dataset;
  hid_t space = H5Dget_space(d);
  int rank = H5Sget_simple_extent_ndims(space);
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  H5Sclose(space);
  H5Dclose(d);
  return std::vector<int64_t>(dims.begin(), dims.end());
}

namespace {

template <class V>
std::vector<V> read_as(int64_t file, const std::string& path, const std::string& dataset, hid_t mem_type) {
  hid_t d = H5Dopen2(file, dataset.c_str(), H5P_DEFAULT);
  CHECK(d >= 0) << path << ": no dataset " << dataset;
  hid_t space = H5Dget_space(d);
  hssize_t n = H5Sget_simple_extent_npoints(space);
  std::vector<V> out(static_cast<size_t>(n));
  herr_t status = H5Dread(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data());
  CHECK(status >= 0) << path << ": cannot read " << dataset;
  H5Sclose(space);
  H5Dclose(d);
  return out;
}

}  // namespace

std::vector<double> H5Reader::read_doubles(const std::string& dataset) const {
  return read_as<double>(file_, path_, dataset, H5T_NATIVE_DOUBLE);
}

std::vector<int32_t> H5Reader::read_ints(const std::string& dataset) const {
  return read_as<int32_t>(file_, path_, dataset, H5T_NATIVE_INT32);
}

double H5Reader::read_scalar(const std::string& dataset) const {
  std::vector<double> v = read_doubles(dataset);
  CHECK_EQ(v.size(), 1u) << path_ << ": " << dataset << " is not a scalar";
  return v[0];
}

std::string H5Reader::read_string_attribute(const std::string& object, const std::string& attribute) const {
  hid_t a = H5Aopen_by_name(file_, object.c_str(), attribute.c_str(), H5P_DEFAULT, H5P_DEFAULT);
  CHECK(a >= 0) << path_ << ": no attribute " << attribute << " on " << object;
  hid_t type = H5Aget_type(a);
  std::string result;
  if (H5Tis_variable_str(type) > 0) {
    char* text = nullptr;
    hid_t mem = H5Tcopy(H5T_C_S1);
    H5Tset_size(mem, H5T_VARIABLE);
    H5Tset_cset(mem, H5Tget_cset(type));  // h5py writes UTF-8 strings
    CHECK(H5Aread(a, mem, &text) >= 0);
    result = text ? text : "";
    H5free_memory(text);
    H5Tclose(mem);
  } else {
    size_t size = H5Tget_size(type);
    std::string buffer(size, '\0');
    CHECK(H5Aread(a, type, buffer.data()) >= 0);
    result = buffer.c_str();
  }
  H5Tclose(type);
  H5Aclose(a);
  return result;
}

std::vector<std::string> H5Reader::list(const std::string& group) const {
  hid_t g = H5Gopen2(file_, group.c_str(), H5P_DEFAULT);
  CHECK(g >= 0) << path_ << ": no group " << group;
  H5G_info_t info;
  H5Gget_info(g, &info);
  std::vector<std::string> names;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    ssize_t len = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    std::string name(static_cast<size_t>(len), '\0');
    H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), static_cast<size_t>(len) + 1,
                       H5P_DEFAULT);
    names.push_back(name);
  }
  H5Gclose(g);
  return names;
}

std::string fixture_path(const std::string& name) {
  return std::string(MOEASR_FIXTURE_DIR) + "/" + name;
}

}  // namespace moeasr::testing
