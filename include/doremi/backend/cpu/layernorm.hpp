#pragma once
// LayerNorm over the channel dimension, statistics in double for accuracy.
// Memory-bound: one pass for the statistics, one for the output. Forward keeps
// mean and 1/σ per row for the backward. Backward accumulates into dx (the
// residual stream's gradient) and into dw, db.
#include <cmath>

#include "doremi/backend/cpu/cpu.hpp"

namespace doremi::backend {

// out may be bf16 (Cpu::operand: it only feeds a matrix product), rounded once here.
template <class T, class O>
void layernorm_forward(Cpu, O* out, T* mean, T* rstd, const T* x, const T* w, const T* b, int N, int C,
                       double eps) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const T* xn = x + std::size_t(n) * C;
    double s = 0;
    for (int c = 0; c < C; ++c) s += xn[c];
    const double m = s / C;
    double v = 0;
    for (int c = 0; c < C; ++c) v += (xn[c] - m) * (xn[c] - m);
    const double r = 1.0 / std::sqrt(v / C + eps);
    O* on = out + std::size_t(n) * C;
    const T mt = T(m), rt = T(r);
    for (int c = 0; c < C; ++c) on[c] = cpu::cast_to<O>(T((xn[c] - mt) * rt * w[c] + b[c]));
    mean[n] = mt;
    rstd[n] = rt;
  }
}

template <class T>
void layernorm_backward(Cpu, T* dx, T* dw, T* db, const T* dout, const T* x, const T* w, const T* mean,
                        const T* rstd, int N, int C) {
  // dx += (1/σ)·(g − mean(g) − x̂·mean(g·x̂)) with g = dout·w.
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const T* xn = x + std::size_t(n) * C;
    const T* dn = dout + std::size_t(n) * C;
    const T m = mean[n], r = rstd[n];
    double sg = 0, sgx = 0;
    for (int c = 0; c < C; ++c) {
      const double g = double(dn[c]) * w[c];
      sg += g;
      sgx += g * (double(xn[c] - m) * r);
    }
    const T mg = T(sg / C), mgx = T(sgx / C);
    T* dxn = dx + std::size_t(n) * C;
    for (int c = 0; c < C; ++c) dxn[c] += r * (dn[c] * w[c] - mg - (xn[c] - m) * r * mgx);
  }
  // dw += Σ_n dout·x̂, db += Σ_n dout, reduced deterministically.
  std::vector<double> acc(2 * std::size_t(C), 0.0);
  cpu::deterministic_row_reduce(N, 2 * C, acc.data(), [&](std::ptrdiff_t n, double* a) {
    const T* xn = x + std::size_t(n) * C;
    const T* dn = dout + std::size_t(n) * C;
    const T m = mean[n], r = rstd[n];
    for (int c = 0; c < C; ++c) {
      a[c] += double(dn[c]) * double((xn[c] - m) * r);
      a[C + c] += dn[c];
    }
  });
  for (int c = 0; c < C; ++c) {
    dw[c] += T(acc[c]);
    db[c] += T(acc[C + c]);
  }
}

}  // namespace doremi::backend
