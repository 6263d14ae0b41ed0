#pragma once
// Token embedding plus, for GPT-2-style models, learned absolute positions.
// Memory-bound gathers and scatters. Forward: one thread per output element.
// Backward: position rows are summed over the batch by one thread per (t, c)
// in batch order (deterministic); token rows receive atomicAdd, because two
// positions may share a token — the order of those additions, and so the last
// bits of dwte, may differ run to run (a sorted, bucketed scatter as in llm.c
// would fix that; to do).
#include <cstdint>

#include "doremi/backend/cuda/cuda.hpp"

namespace doremi::backend {

namespace cuda {

template <class T>
__global__ void embedding_forward_kernel(T* out, const std::int32_t* tokens, const T* wte, const T* wpe, int Tn,
                                         int C, std::size_t total) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < total;
       i += std::size_t(gridDim.x) * blockDim.x) {
    const std::size_t n = i / C;
    const int c = int(i % C);
    T v = wte[std::size_t(tokens[n]) * C + c];
    if (wpe) v += wpe[std::size_t(n % Tn) * C + c];
    out[i] = v;
  }
}

template <class T>
__global__ void embedding_backward_tokens_kernel(T* dwte, const T* dout, const std::int32_t* tokens, int C,
                                                 std::size_t total) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < total;
       i += std::size_t(gridDim.x) * blockDim.x) {
    const std::size_t n = i / C;
    const int c = int(i % C);
    atomicAdd(dwte + std::size_t(tokens[n]) * C + c, dout[i]);
  }
}

template <class T>
__global__ void embedding_backward_positions_kernel(T* dwpe, const T* dout, int B, int Tn, int C) {
  const std::size_t total = std::size_t(Tn) * C;
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < total;
       i += std::size_t(gridDim.x) * blockDim.x) {
    T s = 0;
    for (int b = 0; b < B; ++b) s += dout[std::size_t(b) * total + i];
    dwpe[i] += s;
  }
}

}  // namespace cuda

// out[n] = wte[tokens[n]] (+ wpe[n mod T]); tokens is a device array of B·T ids.
template <class T>
void embedding_forward(const Cuda& be, T* out, const std::int32_t* tokens, const T* wte, const T* wpe, int B, int Tn,
                       int C) {
  const std::size_t total = std::size_t(B) * Tn * C;
  if (!total) return;
  DOREMI_CUDA_LAUNCH(cuda::blocks_for(total, 256), 256, 0, be.stream(), cuda::embedding_forward_kernel)(out, tokens,
      wte, wpe, Tn, C, total);
  DOREMI_CUDA_CHECK_LAUNCH("embedding_forward_kernel");
}

// dwte[tokens[n]] += dout[n]; dwpe[t] += Σ_b dout[b, t] (when dwpe is given).
template <class T>
void embedding_backward(const Cuda& be, T* dwte, T* dwpe, const T* dout, const std::int32_t* tokens, int B, int Tn,
                        int C) {
  const std::size_t total = std::size_t(B) * Tn * C;
  if (!total) return;
  DOREMI_CUDA_LAUNCH(cuda::blocks_for(total, 256), 256, 0, be.stream(), cuda::embedding_backward_tokens_kernel)(dwte,
      dout, tokens, C, total);
  DOREMI_CUDA_CHECK_LAUNCH("embedding_backward_tokens_kernel");
  if (dwpe) {
    const std::size_t tc = std::size_t(Tn) * C;
    DOREMI_CUDA_LAUNCH(cuda::blocks_for(tc, 256), 256, 0, be.stream(), cuda::embedding_backward_positions_kernel)(dwpe,
        dout, B, Tn, C);
    DOREMI_CUDA_CHECK_LAUNCH("embedding_backward_positions_kernel");
  }
}

}  // namespace doremi::backend
