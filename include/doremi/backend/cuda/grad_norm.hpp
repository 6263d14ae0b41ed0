#pragma once
// Global gradient norm ‖g‖₂ over the flat gradient buffer: one CUB
// TransformReduce (square in fp64, sum in fp64) on the backend's stream, temp
// storage from the backend's scratch. CUB's device reduction is run-to-run
// deterministic on one GPU; its order differs from the CPU's fixed chunks, so
// the two backends agree to rounding, not bit for bit.
#include <cmath>
#include <cstddef>

#include <cub/device/device_reduce.cuh>

#include "doremi/backend/cuda/cuda.hpp"

namespace doremi::backend {

namespace cuda {

template <class T>
struct Square {
  __host__ __device__ double operator()(T x) const { return double(x) * double(x); }
};
struct AddDouble {
  __host__ __device__ double operator()(double a, double b) const { return a + b; }
};

}  // namespace cuda

// Blocks until the norm is on the host.
template <class T>
double global_grad_norm(const Cuda& be, const T* g, std::size_t n) {
  if (!n) return 0.0;
  std::size_t temp_bytes = 0;
  DOREMI_CUDA_CHECK(cub::DeviceReduce::TransformReduce(nullptr, temp_bytes, g, static_cast<double*>(nullptr), n,
                                                        cuda::AddDouble{}, cuda::Square<T>{}, 0.0, be.stream()));
  const std::size_t out_offset = (temp_bytes + 15) / 16 * 16;
  std::byte* base = static_cast<std::byte*>(be.ctx->scratch_bytes(out_offset + sizeof(double)));
  double* d_sum = reinterpret_cast<double*>(base + out_offset);
  DOREMI_CUDA_CHECK(cub::DeviceReduce::TransformReduce(base, temp_bytes, g, d_sum, n, cuda::AddDouble{},
                                                        cuda::Square<T>{}, 0.0, be.stream()));
  double sum = 0;
  cuda::copy_to_host(be, &sum, d_sum, 1);
  return std::sqrt(sum);
}

}  // namespace doremi::backend
