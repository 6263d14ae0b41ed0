#pragma once
// LayerNorm over the channel dimension. Memory-bound: one warp per row reads
// the row twice (mean, then the centred variance: the two-pass form keeps
// precision without fp64), then writes it. Forward keeps mean and 1/σ per row
// for the backward. Backward, like the CPU's, accumulates into dx (the
// residual stream's gradient) and into dw, db; the parameter sums over rows
// go through the deterministic column reduction (reduce.hpp), dw and db in
// one pass over the rows.
//
// The pair forms are two LayerNorms of one input (a parallel-residual
// block's): one set of statistics, both outputs from one read of x, and one
// backward pass for both (dx is linear in the output gradients: g = Σ dout·w).
#include "doremi/backend/cuda/cuda.hpp"
#include "doremi/backend/cuda/reduce.hpp"

namespace doremi::backend {

namespace cuda {

template <class A>
__device__ inline A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// K LayerNorms of one input: out[k] = x̂·w[k] + b[k] (forward); their
// outputs' gradients (D: T, or bf16 as bf16 models keep them) and weights
// (backward).
template <class T, class O, int K>
struct LayerNormOutputs {
  O* out[K];
  const T* w[K];
  const T* b[K];
};
template <class T, int K, class D = T>
struct LayerNormGrads {
  const D* douts[K];
  const T* w[K];
  __device__ T dout(int k, std::size_t o) const { return T(douts[k][o]); }
  __device__ T g(std::size_t o, int c) const {  // Σ_k dout[k]·w[k], as the CPU sums it
    T s = dout(0, o) * w[0][c];
#pragma unroll
    for (int k = 1; k < K; ++k) s += dout(k, o) * w[k][c];
    return s;
  }
};

template <class T, class O, int K>
__global__ void layernorm_forward_kernel(LayerNormOutputs<T, O, K> p, T* mean, T* rstd, const T* x, int N, int C,
                                         double eps) {
  using A = Acc<T>;
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const T* xn = x + std::size_t(row) * C;
  A s = 0;
  for (int c = lane; c < C; c += 32) s += A(xn[c]);
  const A m = warp_sum(s) / A(C);
  A v = 0;
  for (int c = lane; c < C; c += 32) {
    const A d = A(xn[c]) - m;
    v += d * d;
  }
  const A r = A(1) / sqrt(warp_sum(v) / A(C) + A(eps));
  const T mt = T(m), rt = T(r);
  for (int c = lane; c < C; c += 32) {
    const T xh = (xn[c] - mt) * rt;
#pragma unroll
    for (int k = 0; k < K; ++k) p.out[k][std::size_t(row) * C + c] = O(T(xh * p.w[k][c] + p.b[k][c]));
  }
  if (lane == 0) {
    mean[row] = mt;
    rstd[row] = rt;
  }
}

// dx += (1/σ)·(g − mean(g) − x̂·mean(g·x̂)) with g = Σ_k dout[k]·w[k], one warp per row.
template <class T, int K, class D>
__global__ void layernorm_backward_dx_kernel(T* dx, LayerNormGrads<T, K, D> p, const T* x, const T* mean,
                                             const T* rstd, int N, int C) {
  using A = Acc<T>;
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const std::size_t o = std::size_t(row) * C;
  const T* xn = x + o;
  const T m = mean[row], r = rstd[row];
  A sg = 0, sgx = 0;
  for (int c = lane; c < C; c += 32) {
    A g = A(p.dout(0, o + c)) * A(p.w[0][c]);
#pragma unroll
    for (int k = 1; k < K; ++k) g += A(p.dout(k, o + c)) * A(p.w[k][c]);
    sg += g;
    sgx += g * A((xn[c] - m) * r);
  }
  const T mg = T(warp_sum(sg) / A(C)), mgx = T(warp_sum(sgx) / A(C));
  T* dxn = dx + o;
  for (int c = lane; c < C; c += 32) dxn[c] += r * (p.g(o + c, c) - mg - (xn[c] - m) * r * mgx);
}

// Row n, column c of the parameters' sums: dout[k]·x̂ (dw[k]) and dout[k] (db[k]).
template <class T, int K, class D>
struct LayerNormParamGrads {
  LayerNormGrads<T, K, D> p;
  const T* x;
  const T* mean;
  const T* rstd;
  int C;
  __device__ ColumnSums<Acc<T>, 2 * K> operator()(int n, int c) const {
    const std::size_t o = std::size_t(n) * C + c;
    const Acc<T> xh = Acc<T>((x[o] - mean[n]) * rstd[n]);
    ColumnSums<Acc<T>, 2 * K> s;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const Acc<T> d = Acc<T>(p.dout(k, o));
      s.v[2 * k] = d * xh;
      s.v[2 * k + 1] = d;
    }
    return s;
  }
};

inline constexpr int layernorm_rows_per_block = 8;

template <int K, class T, class O>
void layernorm_forward_k(const Cuda& be, LayerNormOutputs<T, O, K> p, T* mean, T* rstd, const T* x, int N, int C,
                         double eps) {
  if (N <= 0) return;
  constexpr int rows = layernorm_rows_per_block;
  DOREMI_CUDA_LAUNCH((N + rows - 1) / rows, 32 * rows, 0, be.stream(), layernorm_forward_kernel<T, O, K>)(
      p, mean, rstd, x, N, C, eps);
  DOREMI_CUDA_CHECK_LAUNCH("layernorm_forward_kernel");
}

// dw and db are in order: dw[0], db[0], dw[1], ...
template <int K, class T, class D>
void layernorm_backward_k(const Cuda& be, T* dx, ColumnOuts<T, 2 * K> dwdb, LayerNormGrads<T, K, D> p, const T* x,
                          const T* mean, const T* rstd, int N, int C) {
  if (N <= 0) return;
  constexpr int rows = layernorm_rows_per_block;
  DOREMI_CUDA_LAUNCH((N + rows - 1) / rows, 32 * rows, 0, be.stream(), layernorm_backward_dx_kernel<T, K, D>)(
      dx, p, x, mean, rstd, N, C);
  DOREMI_CUDA_CHECK_LAUNCH("layernorm_backward_dx_kernel");
  column_reduce_add<Acc<T>, 2 * K>(be, dwdb, N, C, LayerNormParamGrads<T, K, D>{p, x, mean, rstd, C});
}

}  // namespace cuda

// out may be bf16 (Cuda::operand: it only feeds a matrix product), rounded once here.
template <class T, class O>
void layernorm_forward(const Cuda& be, O* out, T* mean, T* rstd, const T* x, const T* w, const T* b, int N, int C,
                       double eps) {
  cuda::layernorm_forward_k<1>(be, cuda::LayerNormOutputs<T, cuda::plain_t<O>, 1>{{out}, {w}, {b}}, mean, rstd, x,
                               N, C, eps);
}

// dout: T, or bf16 (Cuda::operand: bf16 models keep the gradients of the
// outputs that feed products so).
template <class T, class D>
void layernorm_backward(const Cuda& be, T* dx, T* dw, T* db, const D* dout, const T* x, const T* w, const T* mean,
                        const T* rstd, int N, int C) {
  cuda::layernorm_backward_k<1>(be, dx, cuda::ColumnOuts<T, 2>{{dw, db}},
                                cuda::LayerNormGrads<T, 1, cuda::plain_t<D>>{{dout}, {w}}, x, mean, rstd, N, C);
}

// Two LayerNorms of one x (see backend/cpu/layernorm.hpp).
template <class T, class O>
void layernorm_pair_forward(const Cuda& be, O* out1, O* out2, T* mean, T* rstd, const T* x, const T* w1,
                            const T* b1, const T* w2, const T* b2, int N, int C, double eps) {
  cuda::layernorm_forward_k<2>(be, cuda::LayerNormOutputs<T, cuda::plain_t<O>, 2>{{out1, out2}, {w1, w2}, {b1, b2}},
                               mean, rstd, x, N, C, eps);
}

template <class T, class D>
void layernorm_pair_backward(const Cuda& be, T* dx, T* dw1, T* db1, T* dw2, T* db2, const D* dout1, const D* dout2,
                             const T* x, const T* w1, const T* w2, const T* mean, const T* rstd, int N, int C) {
  cuda::layernorm_backward_k<2>(be, dx, cuda::ColumnOuts<T, 4>{{dw1, db1, dw2, db2}},
                                cuda::LayerNormGrads<T, 2, cuda::plain_t<D>>{{dout1, dout2}, {w1, w2}}, x, mean, rstd,
                                N, C);
}

}  // namespace doremi::backend
