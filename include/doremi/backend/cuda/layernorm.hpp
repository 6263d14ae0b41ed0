#pragma once
// LayerNorm over the channel dimension. Memory-bound: one warp per row reads
// the row twice (mean, then the centred variance: the two-pass form keeps
// precision without fp64), then writes it. Forward keeps mean and 1/σ per row
// for the backward. Backward, like the CPU's, accumulates into dx (the
// residual stream's gradient) and into dw, db; the parameter sums over rows
// go through the deterministic column reduction (reduce.hpp).
#include "doremi/backend/cuda/cuda.hpp"
#include "doremi/backend/cuda/reduce.hpp"

namespace doremi::backend {

namespace cuda {

template <class A>
__device__ inline A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <class T, class O>
__global__ void layernorm_forward_kernel(O* out, T* mean, T* rstd, const T* x, const T* w, const T* b, int N, int C,
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
  O* on = out + std::size_t(row) * C;
  for (int c = lane; c < C; c += 32) on[c] = O(T((xn[c] - mt) * rt * w[c] + b[c]));
  if (lane == 0) {
    mean[row] = mt;
    rstd[row] = rt;
  }
}

// dx += (1/σ)·(g − mean(g) − x̂·mean(g·x̂)) with g = dout·w, one warp per row.
template <class T>
__global__ void layernorm_backward_dx_kernel(T* dx, const T* dout, const T* x, const T* w, const T* mean,
                                             const T* rstd, int N, int C) {
  using A = Acc<T>;
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const T* xn = x + std::size_t(row) * C;
  const T* dn = dout + std::size_t(row) * C;
  const T m = mean[row], r = rstd[row];
  A sg = 0, sgx = 0;
  for (int c = lane; c < C; c += 32) {
    const A g = A(dn[c]) * A(w[c]);
    sg += g;
    sgx += g * A((xn[c] - m) * r);
  }
  const T mg = T(warp_sum(sg) / A(C)), mgx = T(warp_sum(sgx) / A(C));
  T* dxn = dx + std::size_t(row) * C;
  for (int c = lane; c < C; c += 32) dxn[c] += r * (dn[c] * w[c] - mg - (xn[c] - m) * r * mgx);
}

// Row n, column c of the sums for dw (dout·x̂) or db (dout).
template <class T, bool ForWeight>
struct LayerNormParamGrad {
  const T* dout;
  const T* x;
  const T* mean;
  const T* rstd;
  int C;
  __device__ Acc<T> operator()(int n, int c) const {
    const std::size_t o = std::size_t(n) * C + c;
    if constexpr (ForWeight) return Acc<T>(dout[o]) * Acc<T>((x[o] - mean[n]) * rstd[n]);
    else return Acc<T>(dout[o]);
  }
};

}  // namespace cuda

// out may be bf16 (Cuda::operand: it only feeds a matrix product), rounded once here.
template <class T, class O>
void layernorm_forward(const Cuda& be, O* out, T* mean, T* rstd, const T* x, const T* w, const T* b, int N, int C,
                       double eps) {
  if (N <= 0) return;
  constexpr int rows_per_block = 8;
  cuda::layernorm_forward_kernel<T, cuda::plain_t<O>>
      <<<(N + rows_per_block - 1) / rows_per_block, 32 * rows_per_block, 0, be.stream()>>>(
      out, mean, rstd, x, w, b, N, C, eps);
  DOREMI_CUDA_CHECK_LAUNCH("layernorm_forward_kernel");
}

template <class T>
void layernorm_backward(const Cuda& be, T* dx, T* dw, T* db, const T* dout, const T* x, const T* w, const T* mean,
                        const T* rstd, int N, int C) {
  if (N <= 0) return;
  constexpr int rows_per_block = 8;
  cuda::layernorm_backward_dx_kernel<<<(N + rows_per_block - 1) / rows_per_block, 32 * rows_per_block, 0,
                                       be.stream()>>>(dx, dout, x, w, mean, rstd, N, C);
  DOREMI_CUDA_CHECK_LAUNCH("layernorm_backward_dx_kernel");
  // dw += Σ_n dout·x̂, db += Σ_n dout, each summed in the accumulator type and added once.
  using A = cuda::Acc<T>;
  cuda::column_reduce_add<A>(be, dw, N, C, cuda::LayerNormParamGrad<T, true>{dout, x, mean, rstd, C});
  cuda::column_reduce_add<A>(be, db, N, C, cuda::LayerNormParamGrad<T, false>{dout, x, mean, rstd, C});
}

}  // namespace doremi::backend
