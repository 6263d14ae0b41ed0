#pragma once
// LayerNorm over the channel dimension. Memory-bound: one warp per row reads
// the row twice (mean, then the centred variance: the two-pass form keeps
// precision without fp64), then writes it; each lane takes W = 4 adjacent
// values at a time (16-byte loads of fp32 rows, 8-byte of bf16) where every
// row starts aligned (fp32 models, C a multiple of 4), else W = 1. Forward keeps mean and 1/σ per row
// for the backward. Backward, like the CPU's, accumulates into dx (the
// residual stream's gradient) and into dw, db; the parameter sums over rows
// go through the deterministic column reduction (reduce.hpp), dw and db in
// one pass over the rows.
//
// The pair forms are two LayerNorms of one input (a parallel-residual
// block's): one set of statistics, both outputs from one read of x, and one
// backward pass for both (dx is linear in the output gradients: g = Σ dout·w).
#include <cstdint>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include <cuda_bf16.h>

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

// W adjacent values from p as A (W = 4: one 16-byte fp32 or 8-byte bf16
// load; p aligned to it), and W values of A to p as E.
template <int W, class A, class E>
__device__ inline void load_w(A (&v)[W], const E* p) {
  if constexpr (W == 4 && std::is_same_v<E, float>) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
  } else if constexpr (W == 4 && std::is_same_v<E, __nv_bfloat16>) {
    const uint2 t = *reinterpret_cast<const uint2*>(p);
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&t.x));
    const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&t.y));
    v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
  } else {
#pragma unroll
    for (int i = 0; i < W; ++i) v[i] = A(p[i]);
  }
}
template <int W, class A, class E>
__device__ inline void store_w(E* p, const A (&v)[W]) {
  if constexpr (W == 4 && std::is_same_v<E, float>) {
    *reinterpret_cast<float4*>(p) = float4{v[0], v[1], v[2], v[3]};
  } else if constexpr (W == 4 && std::is_same_v<E, __nv_bfloat16>) {
    const __nv_bfloat162 a = __floats2bfloat162_rn(v[0], v[1]), b = __floats2bfloat162_rn(v[2], v[3]);
    uint2 t;
    t.x = *reinterpret_cast<const unsigned*>(&a);
    t.y = *reinterpret_cast<const unsigned*>(&b);
    *reinterpret_cast<uint2*>(p) = t;
  } else {
#pragma unroll
    for (int i = 0; i < W; ++i) p[i] = E(v[i]);
  }
}

// W = 4 where T is float, C a multiple of 4 and every row pointer (16-byte
// rows of fp32, 8-byte of bf16) aligned for it.
template <class T>
bool layernorm_vectorizable(int C, std::initializer_list<std::pair<const void*, std::size_t>> rows) {
  if (!std::is_same_v<T, float> || C % 4 != 0) return false;
  for (const auto& [p, elem] : rows)
    if (reinterpret_cast<std::uintptr_t>(p) % (4 * elem) != 0) return false;
  return true;
}

template <int W, class T, class O, int K>
__global__ void layernorm_forward_kernel(LayerNormOutputs<T, O, K> p, T* mean, T* rstd, const T* x, int N, int C,
                                         double eps) {
  using A = Acc<T>;
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const T* xn = x + std::size_t(row) * C;
  A s = 0;
  for (int c = W * lane; c < C; c += 32 * W) {
    A v[W];
    load_w<W>(v, xn + c);
#pragma unroll
    for (int i = 0; i < W; ++i) s += v[i];
  }
  const A m = warp_sum(s) / A(C);
  A var = 0;
  for (int c = W * lane; c < C; c += 32 * W) {
    A v[W];
    load_w<W>(v, xn + c);
#pragma unroll
    for (int i = 0; i < W; ++i) {
      const A d = v[i] - m;
      var += d * d;
    }
  }
  const A r = A(1) / sqrt(warp_sum(var) / A(C) + A(eps));
  const T mt = T(m), rt = T(r);
  for (int c = W * lane; c < C; c += 32 * W) {
    T v[W];
    load_w<W>(v, xn + c);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      T y[W];
#pragma unroll
      for (int i = 0; i < W; ++i) y[i] = T((v[i] - mt) * rt * p.w[k][c + i] + p.b[k][c + i]);
      store_w<W>(p.out[k] + std::size_t(row) * C + c, y);
    }
  }
  if (lane == 0) {
    mean[row] = mt;
    rstd[row] = rt;
  }
}

// dx += (1/σ)·(g − mean(g) − x̂·mean(g·x̂)) with g = Σ_k dout[k]·w[k], one warp per row.
template <int W, class T, int K, class D>
__global__ void layernorm_backward_dx_kernel(T* dx, LayerNormGrads<T, K, D> p, const T* x, const T* mean,
                                             const T* rstd, int N, int C) {
  using A = Acc<T>;
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const std::size_t o = std::size_t(row) * C;
  const T* xn = x + o;
  const T m = mean[row], r = rstd[row];
  // g = Σ_k dout[k]·w[k] for W adjacent channels, in T (the second pass) or A (the sums).
  const auto g_of = [&]<class G>(G (&g)[W], int c) {
    T d[W];
    load_w<W>(d, p.douts[0] + o + c);
#pragma unroll
    for (int i = 0; i < W; ++i) g[i] = G(d[i]) * G(p.w[0][c + i]);
#pragma unroll
    for (int k = 1; k < K; ++k) {
      load_w<W>(d, p.douts[k] + o + c);
#pragma unroll
      for (int i = 0; i < W; ++i) g[i] += G(d[i]) * G(p.w[k][c + i]);
    }
  };
  A sg = 0, sgx = 0;
  for (int c = W * lane; c < C; c += 32 * W) {
    A g[W];
    T v[W];
    g_of(g, c);
    load_w<W>(v, xn + c);
#pragma unroll
    for (int i = 0; i < W; ++i) {
      sg += g[i];
      sgx += g[i] * A((v[i] - m) * r);
    }
  }
  const T mg = T(warp_sum(sg) / A(C)), mgx = T(warp_sum(sgx) / A(C));
  T* dxn = dx + o;
  for (int c = W * lane; c < C; c += 32 * W) {
    T g[W], v[W], d[W];
    g_of(g, c);
    load_w<W>(v, xn + c);
    load_w<W>(d, dxn + c);
#pragma unroll
    for (int i = 0; i < W; ++i) d[i] += r * (g[i] - mg - (v[i] - m) * r * mgx);
    store_w<W>(dxn + c, d);
  }
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
  bool vec = layernorm_vectorizable<T>(C, {{x, sizeof(T)}});
  for (int k = 0; k < K; ++k) vec = vec && layernorm_vectorizable<T>(C, {{p.out[k], sizeof(O)}});
  const auto launch = [&](auto kernel) {
    DOREMI_CUDA_LAUNCH((N + rows - 1) / rows, 32 * rows, 0, be.stream(), kernel)(p, mean, rstd, x, N, C, eps);
    DOREMI_CUDA_CHECK_LAUNCH("layernorm_forward_kernel");
  };
  if (vec) launch(layernorm_forward_kernel<4, T, O, K>);
  else launch(layernorm_forward_kernel<1, T, O, K>);
}

// dw and db are in order: dw[0], db[0], dw[1], ...
template <int K, class T, class D>
void layernorm_backward_k(const Cuda& be, T* dx, ColumnOuts<T, 2 * K> dwdb, LayerNormGrads<T, K, D> p, const T* x,
                          const T* mean, const T* rstd, int N, int C) {
  if (N <= 0) return;
  constexpr int rows = layernorm_rows_per_block;
  bool vec = layernorm_vectorizable<T>(C, {{x, sizeof(T)}, {dx, sizeof(T)}});
  for (int k = 0; k < K; ++k) vec = vec && layernorm_vectorizable<T>(C, {{p.douts[k], sizeof(D)}});
  const auto launch = [&](auto kernel) {
    DOREMI_CUDA_LAUNCH((N + rows - 1) / rows, 32 * rows, 0, be.stream(), kernel)(dx, p, x, mean, rstd, N, C);
    DOREMI_CUDA_CHECK_LAUNCH("layernorm_backward_dx_kernel");
  };
  if (vec) launch(layernorm_backward_dx_kernel<4, T, K, D>);
  else launch(layernorm_backward_dx_kernel<1, T, K, D>);
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
