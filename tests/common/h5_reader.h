// tests/common/h5_reader.h — reads the committed HDF5 test fixtures (PyTorch reference dumps) with the
// HDF5 C API: any numeric dataset converted to double or int32, its shape, string attributes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moeasr::testing {

class H5Reader {
 public:
  explicit H5Reader(const std::string& path);  // CHECK-fails (naming the path) when unreadable
  ~H5Reader();
  H5Reader(const H5Reader&) = delete;
  H5Reader& operator=(const H5Reader&) = delete;

  bool exists(const std::string& name) const;  // a dataset or group path like "/moe/params/x"
  std::vector<int64_t> shape(const std::string& dataset) const;
  std::vector<double> read_doubles(const std::string& dataset) const;
  std::vector<int32_t> read_ints(const std::string& dataset) const;
  double read_scalar(const std::string& dataset) const;
  std::string read_string_attribute(const std::string& object, const std::string& attribute) const;
  // Names of the datasets directly inside a group.
  std::vector<std::string> list(const std::string& group) const;

 private:
  std::string path_;
  int64_t file_ = -1;
};

// Directory of the committed fixtures (tests/fixtures), set at build time.
std::string fixture_path(const std::string& name);

}  // namespace moeasr::testing
