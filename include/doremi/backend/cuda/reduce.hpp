#pragma once
// Deterministic column sums for parameter gradients (LayerNorm's dw, db and a
// linear layer's db): no atomics, so a run repeats bit for bit. Stage 1: each
// block sums a fixed chunk of rows for 256 columns into scratch; stage 2 adds
// the chunk partials in a fixed order into the output (column_finish_kernel).
// Memory-bound; the fixed chunk length (not the GPU) fixes the summation order.
// A functor may give M sums per column at once (LayerNorm: dw and db of each
// of its LayerNorms), so the rows they share are read once.
#include <cstddef>
#include <type_traits>

#include "doremi/backend/cuda/cuda.hpp"

namespace doremi::backend::cuda {

inline constexpr int column_chunk_rows = 64;
// The chunks (of column_chunk_rows rows) that `rows` rows make.
inline int column_chunks(int rows) { return (rows + column_chunk_rows - 1) / column_chunk_rows; }

// Accumulator type of sums: fp32 data sums in fp32, fp64 in fp64.
template <class T>
using Acc = std::conditional_t<(sizeof(T) >= 8), double, float>;

// M values of one (row, column), and the M outputs they are summed into.
template <class A, int M>
struct ColumnSums {
  A v[M];
};
template <class T, int M>
struct ColumnOuts {
  T* p[M];
};

// partial[chunk, m, j] = Σ_{rows of chunk} f(n, j).v[m] for j < width.
template <class A, int M, class F>
__global__ void column_partials_kernel(A* partial, int rows, int width, F f) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  const int chunk = blockIdx.y;
  if (j >= width) return;
  const int lo = chunk * column_chunk_rows;
  const int hi = min(rows, lo + column_chunk_rows);
  A s[M] = {};
#pragma unroll 8
  for (int n = lo; n < hi; ++n) {
    const ColumnSums<A, M> t = f(n, j);
#pragma unroll
    for (int m = 0; m < M; ++m) s[m] += t.v[m];
  }
#pragma unroll
  for (int m = 0; m < M; ++m) partial[(std::size_t(chunk) * M + m) * width + j] = s[m];
}

// out.p[m][j] += Σ_chunks partial[chunk, m, j]. Block (32 columns, sum m) of
// column_finish_threads: warp w adds the chunks w, w + W, w + 2W, ... (W warps;
// a warp reads 32 adjacent columns of a chunk at once), then the W partial
// sums are added in warp order. Fixed order, so deterministic; with one thread
// per column walking all chunks (rows / 64 of them) the kernel was bound by
// load latency on a few hundred threads.
inline constexpr int column_finish_threads = 256;

template <class A, int M, class T>
__global__ void column_finish_kernel(ColumnOuts<T, M> out, const A* partial, int chunks, int width) {
  constexpr int W = column_finish_threads / 32;
  __shared__ A sums[W][32];
  const int lane = int(threadIdx.x) % 32, w = int(threadIdx.x) / 32, m = int(blockIdx.y);
  const int j = int(blockIdx.x) * 32 + lane;
  A s = 0;
  if (j < width)
    for (int c = w; c < chunks; c += W) s += partial[(std::size_t(c) * M + m) * width + j];
  sums[w][lane] = s;
  __syncthreads();
  if (w == 0 && j < width) {
    A t = sums[0][lane];
#pragma unroll
    for (int k = 1; k < W; ++k) t += sums[k][lane];
    // out.p[m] by selects: indexing the parameter array with a run-time m
    // would copy it to local memory.
    T* dst = out.p[0];
#pragma unroll
    for (int k = 1; k < M; ++k) dst = m == k ? out.p[k] : dst;
    dst[j] += T(t);
  }
}

// Scratch for the chunk partials of M sums over `rows` rows of `width` columns.
template <class A, int M>
A* column_partials_scratch(const Cuda& be, int rows, int width) {
  return static_cast<A*>(be.ctx->scratch_bytes(std::size_t(column_chunks(rows)) * M * width * sizeof(A)));
}

// out.p[m][j] += Σ_chunks partial[chunk, m, j] (stage 2; partial from stage 1
// or a kernel that leaves the same layout, such as LayerNorm's backward).
template <class A, int M, class T>
void column_finish(const Cuda& be, ColumnOuts<T, M> out, const A* partial, int rows, int width) {
  DOREMI_CUDA_LAUNCH(dim3((width + 31) / 32, M), column_finish_threads, 0, be.stream(),
                     column_finish_kernel<A, M>)(out, partial, column_chunks(rows), width);
  DOREMI_CUDA_CHECK_LAUNCH("column_finish_kernel");
}

// out.p[m][j] += Σ_{n < rows} f(n, j).v[m] for j < width, deterministically.
// f is a __device__ functor (n, j) -> ColumnSums<A, M>.
template <class A, int M, class T, class F>
void column_reduce_add(const Cuda& be, ColumnOuts<T, M> out, int rows, int width, F f) {
  if (rows <= 0 || width <= 0) return;
  A* partial = column_partials_scratch<A, M>(be, rows, width);
  const dim3 grid((width + 255) / 256, column_chunks(rows));
  DOREMI_CUDA_LAUNCH(grid, 256, 0, be.stream(), column_partials_kernel<A, M>)(partial, rows, width, f);
  DOREMI_CUDA_CHECK_LAUNCH("column_partials_kernel");
  column_finish<A, M>(be, out, partial, rows, width);
}

// One sum per column: f(n, j) -> A.
template <class A, class F>
struct OneColumnSum {
  F f;
  __device__ ColumnSums<A, 1> operator()(int n, int j) const { return {{f(n, j)}}; }
};
template <class A, class T, class F>
void column_reduce_add(const Cuda& be, T* out, int rows, int width, F f) {
  column_reduce_add<A, 1>(be, ColumnOuts<T, 1>{{out}}, rows, width, OneColumnSum<A, F>{f});
}

}  // namespace doremi::backend::cuda
