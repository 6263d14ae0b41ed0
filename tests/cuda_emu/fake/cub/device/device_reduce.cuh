#pragma once
// cub::DeviceReduce::TransformReduce for the CPU emulator (tests/cuda_emu):
// device memory is host memory there, so the reduction is a host loop (in
// index order; CUB's own order differs, as the GPU tests allow).
#include <cstddef>

#include <cuda_runtime.h>

namespace cub {

struct DeviceReduce {
  template <class In, class Out, class Op, class Transform, class Init>
  static cudaError_t TransformReduce(void* temp, std::size_t& temp_bytes, In in, Out out, std::size_t n, Op op,
                                     Transform t, Init init, cudaStream_t = nullptr) {
    if (!temp) {
      temp_bytes = 1;
      return cudaSuccess;
    }
    auto acc = init;
    for (std::size_t i = 0; i < n; ++i) acc = op(acc, t(in[i]));
    *out = acc;
    return cudaSuccess;
  }
};

}  // namespace cub
