#pragma once
// Element type conversion on the device: the bf16 copy of the fp32 master
// weights before a step's GEMMs, and bf16 results back to fp32. Memory-bound,
// one grid-stride pass; rounding to bf16 is round-to-nearest-even.
#include <cstddef>

#include <cuda_bf16.h>

#include "doremi/backend/cuda/cuda.hpp"

namespace doremi::backend {

namespace cuda {

template <class To, class From>
__global__ void convert_kernel(To* dst, const From* src, std::size_t n) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n;
       i += std::size_t(gridDim.x) * blockDim.x)
    dst[i] = To(float(src[i]));
}

}  // namespace cuda

// dst[i] = To(src[i]) through fp32 (float, double and __nv_bfloat16).
template <class To, class From>
void convert(const Cuda& be, To* dst, const From* src, std::size_t n) {
  if (!n) return;
  cuda::convert_kernel<<<cuda::blocks_for(n, 256), 256, 0, be.stream()>>>(dst, src, n);
  DOREMI_CUDA_CHECK_LAUNCH("convert_kernel");
}

}  // namespace doremi::backend
