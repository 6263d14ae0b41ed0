#pragma once
// LayerNorm over the channel dimension, statistics in double for accuracy.
// Memory-bound: one pass for the statistics, one for the output. Forward keeps
// mean and 1/σ per row for the backward. Backward accumulates into dx (the
// residual stream's gradient) and into dw, db.
//
// The pair forms are two LayerNorms of one input (a parallel-residual
// block's): one set of statistics, both outputs from one read of x, and one
// backward pass for both (dx is linear in the output gradients: g = Σ dout·w).
#include <array>
#include <cmath>
#include <cstddef>
#include <vector>

#include "doremi/backend/cpu/cpu.hpp"

namespace doremi::backend {

namespace cpu {

// K LayerNorms of x sharing its statistics: out[k] = x̂·w[k] + b[k].
template <std::size_t K, class T, class O>
void layernorm_forward_k(const std::array<O*, K>& out, T* mean, T* rstd, const T* x,
                         const std::array<const T*, K>& w, const std::array<const T*, K>& b, int N, int C,
                         double eps) {
#pragma omp parallel for schedule(static) if (std::size_t(N) * std::size_t(C) > 65536)  // few rows: one thread
  for (int n = 0; n < N; ++n) {
    const T* xn = x + std::size_t(n) * C;
    double s = 0;
    for (int c = 0; c < C; ++c) s += xn[c];
    const double m = s / C;
    double v = 0;
    for (int c = 0; c < C; ++c) v += (xn[c] - m) * (xn[c] - m);
    const double r = 1.0 / std::sqrt(v / C + eps);
    const T mt = T(m), rt = T(r);
    for (std::size_t k = 0; k < K; ++k) {
      O* on = out[k] + std::size_t(n) * C;
      for (int c = 0; c < C; ++c) on[c] = cpu::cast_to<O>(T((xn[c] - mt) * rt * w[k][c] + b[k][c]));
    }
    mean[n] = mt;
    rstd[n] = rt;
  }
}

// dx += (1/σ)·(g − mean(g) − x̂·mean(g·x̂)) with g = Σ_k dout[k]·w[k];
// dw[k] += Σ_n dout[k]·x̂, db[k] += Σ_n dout[k]. dout: T, or bf16 (bf16
// models keep the gradients of the outputs that feed products so).
template <std::size_t K, class T, class D>
void layernorm_backward_k(T* dx, const std::array<T*, K>& dw, const std::array<T*, K>& db,
                          const std::array<const D*, K>& douts, const T* x, const std::array<const T*, K>& w,
                          const T* mean, const T* rstd, int N, int C) {
  const auto dout = [&](std::size_t k, std::size_t o) { return cast_to<T>(douts[k][o]); };
  auto g = [&](std::size_t o, int c) {
    T s = dout(0, o) * w[0][c];
    for (std::size_t k = 1; k < K; ++k) s += dout(k, o) * w[k][c];
    return s;
  };
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const std::size_t row = std::size_t(n) * C;
    const T* xn = x + row;
    const T m = mean[n], r = rstd[n];
    double sg = 0, sgx = 0;
    for (int c = 0; c < C; ++c) {
      double gc = double(dout(0, row + c)) * w[0][c];
      for (std::size_t k = 1; k < K; ++k) gc += double(dout(k, row + c)) * w[k][c];
      sg += gc;
      sgx += gc * (double(xn[c] - m) * r);
    }
    const T mg = T(sg / C), mgx = T(sgx / C);
    T* dxn = dx + row;
    for (int c = 0; c < C; ++c) dxn[c] += r * (g(row + std::size_t(c), c) - mg - (xn[c] - m) * r * mgx);
  }
  // The parameters' sums, reduced deterministically: [dw[0], db[0], dw[1], ...].
  const std::size_t Cs = std::size_t(C);
  std::vector<double> acc(2 * K * Cs, 0.0);
  cpu::deterministic_row_reduce(N, std::ptrdiff_t(2 * K * Cs), acc.data(), [&](std::ptrdiff_t n, double* a) {
    const std::size_t row = std::size_t(n) * Cs;
    const T* xn = x + row;
    const T m = mean[n], r = rstd[n];
    for (std::size_t k = 0; k < K; ++k) {
      double* ak = a + 2 * k * Cs;
      for (std::size_t c = 0; c < Cs; ++c) {
        const T d = dout(k, row + c);
        ak[c] += double(d) * double((xn[c] - m) * r);
        ak[Cs + c] += d;
      }
    }
  });
  for (std::size_t k = 0; k < K; ++k)
    for (std::size_t c = 0; c < Cs; ++c) {
      dw[k][c] += T(acc[2 * k * Cs + c]);
      db[k][c] += T(acc[2 * k * Cs + Cs + c]);
    }
}

}  // namespace cpu

// out may be bf16 (Cpu::operand: it only feeds a matrix product), rounded once here.
template <class T, class O>
void layernorm_forward(Cpu, O* out, T* mean, T* rstd, const T* x, const T* w, const T* b, int N, int C,
                       double eps) {
  cpu::layernorm_forward_k<1>(std::array{out}, mean, rstd, x, std::array{w}, std::array{b}, N, C, eps);
}

template <class T, class D>
void layernorm_backward(Cpu, T* dx, T* dw, T* db, const D* dout, const T* x, const T* w, const T* mean,
                        const T* rstd, int N, int C) {
  cpu::layernorm_backward_k<1>(dx, std::array{dw}, std::array{db}, std::array{dout}, x, std::array{w}, mean, rstd,
                               N, C);
}

// Two LayerNorms of one x: the same outputs and statistics as two
// layernorm_forward calls (the statistics are x's alone), x read once.
template <class T, class O>
void layernorm_pair_forward(Cpu, O* out1, O* out2, T* mean, T* rstd, const T* x, const T* w1, const T* b1,
                            const T* w2, const T* b2, int N, int C, double eps) {
  cpu::layernorm_forward_k<2>(std::array{out1, out2}, mean, rstd, x, std::array{w1, w2}, std::array{b1, b2}, N, C,
                              eps);
}

// The backward of layernorm_pair_forward: dx gets both LayerNorms' shares
// (in one pass), dw1, db1, dw2, db2 their sums.
template <class T, class D>
void layernorm_pair_backward(Cpu, T* dx, T* dw1, T* db1, T* dw2, T* db2, const D* dout1, const D* dout2, const T* x,
                             const T* w1, const T* w2, const T* mean, const T* rstd, int N, int C) {
  cpu::layernorm_backward_k<2>(dx, std::array{dw1, dw2}, std::array{db1, db2}, std::array{dout1, dout2}, x,
                               std::array{w1, w2}, mean, rstd, N, C);
}

}  // namespace doremi::backend
