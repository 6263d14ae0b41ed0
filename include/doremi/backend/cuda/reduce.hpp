#pragma once
// Deterministic column sums for parameter gradients (LayerNorm's dw, db and a
// linear layer's db): no atomics, so a run repeats bit for bit. Stage 1: each
// block sums a fixed chunk of rows for 256 columns into scratch; stage 2: one
// thread per column adds the chunk partials in chunk order into the output.
// Memory-bound; the fixed chunk length (not the GPU) fixes the summation order.
#include <cstddef>
#include <type_traits>

#include "doremi/backend/cuda/cuda.hpp"

namespace doremi::backend::cuda {

inline constexpr int column_chunk_rows = 64;

// Accumulator type of sums: fp32 data sums in fp32, fp64 in fp64.
template <class T>
using Acc = std::conditional_t<(sizeof(T) >= 8), double, float>;

// partial[chunk, j] = Σ_{rows of chunk} f(n, j) for j < width.
template <class A, class F>
__global__ void column_partials_kernel(A* partial, int rows, int width, F f) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  const int chunk = blockIdx.y;
  if (j >= width) return;
  const int lo = chunk * column_chunk_rows;
  const int hi = min(rows, lo + column_chunk_rows);
  A s = 0;
  for (int n = lo; n < hi; ++n) s += f(n, j);
  partial[std::size_t(chunk) * width + j] = s;
}

// out[j] += Σ_chunks partial[chunk, j], in chunk order.
template <class A, class T>
__global__ void column_finish_kernel(T* out, const A* partial, int chunks, int width) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= width) return;
  A s = 0;
  for (int c = 0; c < chunks; ++c) s += partial[std::size_t(c) * width + j];
  out[j] += T(s);
}

// out[j] += Σ_{n < rows} f(n, j) for j < width, deterministically. f is a
// __device__ functor (n, j) -> A.
template <class A, class T, class F>
void column_reduce_add(const Cuda& be, T* out, int rows, int width, F f) {
  if (rows <= 0 || width <= 0) return;
  const int chunks = (rows + column_chunk_rows - 1) / column_chunk_rows;
  A* partial = static_cast<A*>(be.ctx->scratch_bytes(std::size_t(chunks) * width * sizeof(A)));
  const dim3 grid((width + 255) / 256, chunks);
  column_partials_kernel<<<grid, 256, 0, be.stream()>>>(partial, rows, width, f);
  DOREMI_CUDA_CHECK_LAUNCH("column_partials_kernel");
  column_finish_kernel<<<(width + 255) / 256, 256, 0, be.stream()>>>(out, partial, chunks, width);
  DOREMI_CUDA_CHECK_LAUNCH("column_finish_kernel");
}

}  // namespace doremi::backend::cuda
