#pragma once
// LayerNorm over the channel dimension. Memory-bound: one warp per row reads
// the row twice (mean, then the centred variance: the two-pass form keeps
// precision without fp64), then writes it; each lane takes W = 4 adjacent
// values at a time (16-byte loads of fp32 rows, 8-byte of bf16) where every
// row starts aligned (fp32 models, C a multiple of 4), else W = 1. Forward keeps mean and 1/σ per row
// for the backward. Backward, like the CPU's, accumulates into dx (the
// residual stream's gradient) and into dw, db, in one pass over the rows: a
// block takes a chunk of rows of the deterministic column reduction
// (reduce.hpp) and leaves its partial parameter sums for column_finish.
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

template <class T, int K, class D = T>
struct LayerNormGrads {
  const D* douts[K];
  const T* w[K];
  // The output gradients of W adjacent channels at offset o (row·C + channel).
  template <int W>
  __device__ void load(T (&d)[K][W], std::size_t o) const {
#pragma unroll
    for (int k = 0; k < K; ++k) load_w<W>(d[k], douts[k] + o);
  }
  // g = Σ_k dout[k]·w[k] (as the CPU sums it) from those and the channels'
  // weights wv, in S.
  template <int W, class S>
  __device__ static void g(S (&out)[W], const T (&d)[K][W], const T (&wv)[K][W]) {
#pragma unroll
    for (int i = 0; i < W; ++i) out[i] = S(d[0][i]) * S(wv[0][i]);
#pragma unroll
    for (int k = 1; k < K; ++k)
#pragma unroll
      for (int i = 0; i < W; ++i) out[i] += S(d[k][i]) * S(wv[k][i]);
  }
};

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

// Rows whose statistics the backward reduces across its block at once (with
// G channel groups per thread: 8 / G, so that a round's values fit in registers).
inline constexpr int layernorm_backward_round = 8;

// The backward: dx += (1/σ)·(g − mean(g) − x̂·mean(g·x̂)) with g = Σ_k
// dout[k]·w[k], and the parameter sums dw[k] = Σ dout[k]·x̂, db[k] = Σ dout[k].
// Block b takes the rows of column chunk b (reduce.hpp), thread t the
// channels W·(t + blockDim·j), j < G. Per round of R = 8 / G rows: each row's Σg and
// Σg·x̂ over the thread's channels, added across the block in a fixed order;
// then, from the same rows (still in cache), dx, and the thread's sums of
// dout[k]·x̂ and dout[k] over the chunk in row order, which it leaves in
// partial[b, m, c] (m = 2k: dw[k], 2k + 1: db[k]) for column_finish.
// Branch-free over rows and channels, so that a round's loads are in flight
// together: rows past the chunk's end read its last row again, channels past
// C read channel 0, and neither is used or stored.
// Long on purpose: one kernel whose tiles and accumulators stay in registers
// across its phases; device functions would have to pass them all.
template <int W, int G, class T, int K, class D>
__global__ void layernorm_backward_kernel(T* dx, Acc<T>* partial, LayerNormGrads<T, K, D> p, const T* x,
                                          const T* mean, const T* rstd, int N, int C) {
  using A = Acc<T>;
  constexpr int R = layernorm_backward_round / G;
  __shared__ A warp_sums[32][2 * R];
  __shared__ A row_means[2 * R];
  const int tid = int(threadIdx.x), lane = tid % 32, warp = tid / 32, nwarps = int(blockDim.x) / 32;
  const int lo = int(blockIdx.x) * column_chunk_rows, hi = min(N, lo + column_chunk_rows);
  int c[G];
  bool on[G];
  T wv[G][K][W];  // the channels' LayerNorm weights
#pragma unroll
  for (int j = 0; j < G; ++j) {
    const int cj = W * (tid + int(blockDim.x) * j);
    on[j] = cj < C;
    c[j] = on[j] ? cj : 0;
#pragma unroll
    for (int k = 0; k < K; ++k)
#pragma unroll
      for (int i = 0; i < W; ++i) wv[j][k][i] = p.w[k][c[j] + i];
  }
  A acc[G][W][2 * K] = {};
  for (int r0 = lo; r0 < hi; r0 += R) {  // block-uniform: every thread reaches the barriers
    A s[2 * R] = {};
#pragma unroll
    for (int j = 0; j < G; ++j)
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int n = min(r0 + r, hi - 1);
        const std::size_t o = std::size_t(n) * C + c[j];
        T d[K][W], v[W];
        A g[W];
        p.load(d, o);
        p.g(g, d, wv[j]);
        load_w<W>(v, x + o);
        const T m = mean[n], rs = rstd[n];
#pragma unroll
        for (int i = 0; i < W; ++i) {
          s[2 * r] += on[j] ? g[i] : A(0);
          s[2 * r + 1] += on[j] ? g[i] * A((v[i] - m) * rs) : A(0);
        }
      }
#pragma unroll
    for (int q = 0; q < 2 * R; ++q) {
      const A t = warp_sum(s[q]);
      if (lane == 0) warp_sums[warp][q] = t;
    }
    __syncthreads();
    if (tid < 2 * R) {
      A t = warp_sums[0][tid];
      for (int w = 1; w < nwarps; ++w) t += warp_sums[w][tid];
      row_means[tid] = t / A(C);
    }
    __syncthreads();  // (the next writes of warp_sums, row_means come after the next round's first barrier)
    // A channel group at a time: the round's rows of dx loaded together, updated, then stored.
#pragma unroll
    for (int j = 0; j < G; ++j) {
      T out[R][W];
#pragma unroll
      for (int r = 0; r < R; ++r) load_w<W>(out[r], dx + std::size_t(min(r0 + r, hi - 1)) * C + c[j]);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int n = min(r0 + r, hi - 1);
        const bool use = on[j] && r0 + r < hi;
        const std::size_t o = std::size_t(n) * C + c[j];
        T d[K][W], g[W], v[W];
        p.load(d, o);
        p.g(g, d, wv[j]);
        load_w<W>(v, x + o);
        const T m = mean[n], rs = rstd[n], mg = T(row_means[2 * r]), mgx = T(row_means[2 * r + 1]);
#pragma unroll
        for (int i = 0; i < W; ++i) {
          const T xh = (v[i] - m) * rs;
          out[r][i] += rs * (g[i] - mg - xh * mgx);
#pragma unroll
          for (int k = 0; k < K; ++k) {
            acc[j][i][2 * k] += use ? A(d[k][i]) * A(xh) : A(0);
            acc[j][i][2 * k + 1] += use ? A(d[k][i]) : A(0);
          }
        }
      }
#pragma unroll
      for (int r = 0; r < R; ++r)
        if (on[j] && r0 + r < hi) store_w<W>(dx + std::size_t(r0 + r) * C + c[j], out[r]);
    }
  }
#pragma unroll
  for (int j = 0; j < G; ++j) {
    if (!on[j]) continue;
#pragma unroll
    for (int q = 0; q < 2 * K; ++q)
#pragma unroll
      for (int i = 0; i < W; ++i) partial[(std::size_t(blockIdx.x) * (2 * K) + q) * C + c[j] + i] = acc[j][i][q];
  }
}

inline constexpr int layernorm_forward_rows_per_block = 8;  // a warp per row

template <int K, class T, class O>
void layernorm_forward_k(const Cuda& be, LayerNormOutputs<T, O, K> p, T* mean, T* rstd, const T* x, int N, int C,
                         double eps) {
  if (N <= 0) return;
  constexpr int rows = layernorm_forward_rows_per_block;
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
  using A = Acc<T>;
  bool vec = layernorm_vectorizable<T>(C, {{x, sizeof(T)}, {dx, sizeof(T)}});
  for (int k = 0; k < K; ++k) vec = vec && layernorm_vectorizable<T>(C, {{p.douts[k], sizeof(D)}});
  const int W = vec ? 4 : 1, groups = (C + W - 1) / W;  // a thread's channels: G groups of W
  const int G = groups <= 1024 ? 1 : 4;  // 1024 threads at most
  if (groups > 1024 * G)
    fail("layernorm_backward(Cuda): C = {} channels; at most {} ({})", C, 1024 * G * W,
         vec ? "16 channels for each of 1024 threads"
             : "4 channels for each of 1024 threads where C is not a multiple of 4 or rows are unaligned");
  const int threads = ((groups + G - 1) / G + 31) / 32 * 32;
  A* partial = column_partials_scratch<A, 2 * K>(be, N, C);
  const auto launch = [&](auto kernel) {
    DOREMI_CUDA_LAUNCH(column_chunks(N), threads, 0, be.stream(), kernel)(dx, partial,
        p, x, mean, rstd, N, C);
    DOREMI_CUDA_CHECK_LAUNCH("layernorm_backward_kernel");
  };
  if (vec && G == 1) launch(layernorm_backward_kernel<4, 1, T, K, D>);
  else if (vec) launch(layernorm_backward_kernel<4, 4, T, K, D>);
  else if (G == 1) launch(layernorm_backward_kernel<1, 1, T, K, D>);
  else launch(layernorm_backward_kernel<1, 4, T, K, D>);
  column_finish<A, 2 * K>(be, dwdb, partial, N, C);
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
