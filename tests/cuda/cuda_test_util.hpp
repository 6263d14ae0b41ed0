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
#include "doremi/optim/adamw.hpp"           // AdamW (CPU optimiser), ParamGroup, adamw_coefficients
#include "doremi/optim/clip.hpp"            // global_grad_norm (CPU)
#include "../reference_util.hpp"            // randn, check_close (host side)

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

// bf16 device copies of host floats (rounded to nearest even) and back (exact).
inline DeviceBuffer<__nv_bfloat16> to_device_bf16(const std::vector<float>& v) {
  const auto f = to_device(v);
  DeviceBuffer<__nv_bfloat16> b(v.size());
  backend::convert(gpu(), b.data(), f.data(), v.size());
  return b;
}
inline std::vector<float> to_float(const DeviceBuffer<__nv_bfloat16>& b) {
  DeviceBuffer<float> f(b.size());
  backend::convert(gpu(), f.data(), b.data(), b.size());
  return to_host(f);
}

// Runs f() once with each tensor-core attention family (WMMA, then the
// register-resident mma.sync kernels), then restores the setting.
template <class F>
void for_each_attention_family(F&& f) {
  using backend::cuda::AttentionTcKernels;
  AttentionTcKernels& family = backend::cuda::attention_tc_kernels();
  const AttentionTcKernels saved = family;
  for (const AttentionTcKernels k : {AttentionTcKernels::wmma, AttentionTcKernels::mma}) {
    family = k;
    CAPTURE(k == AttentionTcKernels::mma ? "mma" : "wmma");
    f();
  }
  family = saved;
}

}  // namespace cuda_test
