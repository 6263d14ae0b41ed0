#pragma once
// Shared by the CUDA test translation units: the GPU context, skipping without
// a device, host <-> device copies and the elementwise tolerance check.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <doctest/doctest.h>

#include "doremi/backend/cpu.hpp"           // the reference: backend::Cpu layers
#include "doremi/backend/cuda.hpp"          // the layers under test
#include "doremi/core/rng.hpp"              // Philox: inputs as pure functions of (seed, stream, index)
#include "doremi/optim/adamw.hpp"           // AdamW (CPU optimiser), ParamGroup, adamw_coefficients
#include "doremi/optim/clip.hpp"            // global_grad_norm (CPU)

using namespace doremi;
using backend::Cpu;
using backend::Cuda;
using backend::cuda::DeviceBuffer;

namespace cuda_test {

#define REQUIRE_GPU()                                                                                   \
  do {                                                                                                  \
    if (!backend::cuda_available()) {                                                                   \
      MESSAGE("skipped: no CUDA device (" << backend::cuda::unavailable_reason() << ")");               \
      return;                                                                                           \
    }                                                                                                   \
  } while (0)

inline Cuda& gpu() {
  static Cuda be;  // one context (stream, cuBLASLt handle) for the whole binary
  return be;
}

inline std::vector<float> randn(std::size_t n, std::uint64_t seed, float scale = 1.0f, float shift = 0.0f) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = shift + scale * float(Philox::normal(seed, 7, i));
  return v;
}

template <class T>
DeviceBuffer<T> to_device(const std::vector<T>& h) {
  DeviceBuffer<T> d(h.size());
  backend::cuda::copy_to_device(gpu(), d.data(), h.data(), h.size());
  return d;
}

template <class T>
std::vector<T> to_host(const DeviceBuffer<T>& d) {
  std::vector<T> h(d.size());
  backend::cuda::copy_to_host(gpu(), h.data(), d.data(), d.size());
  return h;
}

// h copied to a device buffer `offset` elements past its start (misaligned views).
template <class T>
DeviceBuffer<T> to_device_at(const std::vector<T>& h, std::size_t offset) {
  DeviceBuffer<T> d(h.size() + offset);
  backend::cuda::copy_to_device(gpu(), d.data() + offset, h.data(), h.size());
  return d;
}
template <class T>
std::vector<T> to_host_at(const DeviceBuffer<T>& d, std::size_t offset) {
  std::vector<T> h(d.size() - offset);
  backend::cuda::copy_to_host(gpu(), h.data(), d.data() + offset, h.size());
  return h;
}

// |gpu − cpu| ≤ atol + rtol·|cpu| everywhere; reports the worst element.
inline void check_close(const std::vector<float>& got, const std::vector<float>& want, double atol, double rtol,
                 const char* what) {
  REQUIRE(got.size() == want.size());
  double worst = 0;
  std::size_t at = 0;
  bool finite = true;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) finite = false;
    const double excess = std::abs(double(got[i]) - double(want[i])) - (atol + rtol * std::abs(double(want[i])));
    if (excess > worst) {
      worst = excess;
      at = i;
    }
  }
  INFO(what << ": worst element " << at << " gpu " << got[at] << " cpu " << want[at]);
  CHECK(finite);
  CHECK(worst <= 0.0);
}

}  // namespace cuda_test
