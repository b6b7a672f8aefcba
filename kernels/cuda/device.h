// kernels/cuda/device.h — CUDA device discovery for the backend and the gpu tests: how many devices
// this process can use, and why none when there are none (no driver, no device).
#pragma once

#include <string>

namespace moeasr {

// Number of usable CUDA devices; 0 when there is no driver or no device, with the reason in *why.
int cuda_usable_device_count(std::string* why);

}  // namespace moeasr
