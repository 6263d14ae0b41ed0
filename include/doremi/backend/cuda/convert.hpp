#pragma once
// Element type conversion on the device: the bf16 copy of the fp32 master
// weights before a step's GEMMs, and bf16 results back to fp32. Memory-bound,
// one grid-stride pass (fp32 -> bf16 vectorised where aligned); rounding to
// bf16 is round-to-nearest-even.
#include <cstddef>
#include <cstdint>
#include <type_traits>

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

// fp32 -> bf16 four at a time (16-byte loads, 8-byte stores), the same
// round-to-nearest-even as the scalar kernel: n4 groups of four. (A template
// only so that the header can define it in several translation units.)
template <class To = __nv_bfloat16, class From = float>
__global__ void convert_f32_bf16x4_kernel(To* dst, const From* src, std::size_t n4) {
  static_assert(std::is_same_v<To, __nv_bfloat16> && std::is_same_v<From, float>);
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n4;
       i += std::size_t(gridDim.x) * blockDim.x) {
    const float4 v = reinterpret_cast<const float4*>(src)[i];
    auto* d = reinterpret_cast<__nv_bfloat162*>(dst) + 2 * i;
    d[0] = __floats2bfloat162_rn(v.x, v.y);
    d[1] = __floats2bfloat162_rn(v.z, v.w);
  }
}

}  // namespace cuda

// dst[i] = To(src[i]) through fp32 (float, double and __nv_bfloat16).
template <class To, class From>
void convert(const Cuda& be, To* dst, const From* src, std::size_t n) {
  if (!n) return;
  if constexpr (std::is_same_v<To, __nv_bfloat16> && std::is_same_v<From, float>) {
    const std::size_t n4 = n / 4;
    if (n4 && reinterpret_cast<std::uintptr_t>(src) % 16 == 0 && reinterpret_cast<std::uintptr_t>(dst) % 8 == 0) {
      DOREMI_CUDA_LAUNCH(cuda::blocks_for(n4, 256), 256, 0, be.stream(),
                         cuda::convert_f32_bf16x4_kernel<__nv_bfloat16, float>)(dst, src, n4);
      DOREMI_CUDA_CHECK_LAUNCH("convert_f32_bf16x4_kernel");
      dst += 4 * n4;
      src += 4 * n4;
      n -= 4 * n4;
      if (!n) return;
    }
  }
  DOREMI_CUDA_LAUNCH(cuda::blocks_for(n, 256), 256, 0, be.stream(),
                     cuda::convert_kernel<cuda::plain_t<To>, cuda::plain_t<From>>)(dst, src, n);
  DOREMI_CUDA_CHECK_LAUNCH("convert_kernel");
}

}  // namespace doremi::backend
