#pragma once
// GELU over a flat buffer, copies and fills: memory-bound
// grid-stride loops. The GELU math is the shared DOREMI_HD function of
// backend/elementwise.hpp, the same formula the CPU backend evaluates.
// Backward overwrites dx (as the CPU's does; dx may alias dout).
#include <cstddef>

#include "doremi/backend/cuda/cuda.hpp"
#include "doremi/backend/elementwise.hpp"

namespace doremi::backend {

namespace cuda {

#define DOREMI_GRID_STRIDE(i, n)                                                                   \
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < (n); \
       i += std::size_t(gridDim.x) * blockDim.x)

template <Gelu G, class T, class O>
__global__ void gelu_forward_kernel(O* out, const T* x, std::size_t n) {
  DOREMI_GRID_STRIDE(i, n) out[i] = O(backend::gelu<G>(compute_t<T>(x[i])));
}

template <Gelu G, class T, class X>
__global__ void gelu_backward_kernel(T* dx, const X* x, const T* dout, std::size_t n) {
  DOREMI_GRID_STRIDE(i, n) dx[i] = dout[i] * backend::gelu_grad<G>(compute_t<X>(x[i]));
}

#undef DOREMI_GRID_STRIDE

}  // namespace cuda

// x and out may be bf16 (Cuda::operand: bf16 models keep the pre-activation and
// the output so): evaluated in float, rounded once.
template <Gelu G, class T, class O>
void gelu_forward(const Cuda& be, O* out, const T* x, std::size_t n) {
  if (!n) return;
  DOREMI_CUDA_LAUNCH(cuda::blocks_for(n, 256), 256, 0, be.stream(),
                     cuda::gelu_forward_kernel<G, cuda::plain_t<T>, cuda::plain_t<O>>)(out, x, n);
  DOREMI_CUDA_CHECK_LAUNCH("gelu_forward_kernel");
}

// dx = dout ⊙ gelu'(x); x may be bf16 (see gelu_forward).
template <Gelu G, class T, class X>
void gelu_backward(const Cuda& be, T* dx, const X* x, const T* dout, std::size_t n) {
  if (!n) return;
  DOREMI_CUDA_LAUNCH(cuda::blocks_for(n, 256), 256, 0, be.stream(), cuda::gelu_backward_kernel<G, T, cuda::plain_t<X>>)(
      dx, x, dout, n);
  DOREMI_CUDA_CHECK_LAUNCH("gelu_backward_kernel");
}

// Device-to-device copy on the backend's stream.
template <class T>
void copy(const Cuda& be, T* dst, const T* src, std::size_t n) {
  if (!n) return;
  DOREMI_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyDeviceToDevice, be.stream()));
}

namespace cuda {
template <class T>
__global__ void axpby_kernel(T* y, T a, const T* x, T b, std::size_t n) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x)
    y[i] = a * y[i] + b * x[i];
}
}  // namespace cuda

// y = a·y + b·x (the DRO trainer's per-domain gradient sums).
template <class T>
void axpby(const Cuda& be, T* y, T a, const T* x, T b, std::size_t n) {
  if (!n) return;
  DOREMI_CUDA_LAUNCH(cuda::blocks_for(n, 256), 256, 0, be.stream(), cuda::axpby_kernel)(y, a, x, b, n);
  DOREMI_CUDA_CHECK_LAUNCH("axpby_kernel");
}

template <class T>
void fill(const Cuda& be, T* dst, T value, std::size_t n) {
  if (!n) return;
  DOREMI_CUDA_LAUNCH(cuda::blocks_for(n, 256), 256, 0, be.stream(), cuda::fill_kernel)(dst, value, n);
  DOREMI_CUDA_CHECK_LAUNCH("fill_kernel");
}

}  // namespace doremi::backend
