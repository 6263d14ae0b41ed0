#pragma once
// The language-model head: logits = x·Wᵀ over the padded vocabulary, then
// per-token cross-entropy ℓ = logsumexp(logits) − logits[target].
//
// The [N, V] matrix is the largest buffer of a step, so it is touched as few
// times as possible. Forward turns each row in place into E = exp(logits − m)
// (m the row max) and keeps s = 1/Σ E per row: softmax = s·E. Backward never
// rewrites the matrix: with per-token weights w,
//   dlogits = diag(w·s)·E − w·onehot(target), so
//   dx  = diag(w·s)·(E·W) − w·W[target]       (row scaling after the GEMM)
//   dW += Eᵀ·(diag(w·s)·x) − Σ_n w_n·x_n at row target_n
// Two GEMMs over E and O(N·C) extra work. Targets < 0 are padding: loss 0,
// mask 0, weight 0.
#include <cmath>
#include <cstdint>
#include <vector>

#include "doremi/backend/cpu/cpu.hpp"
#include "doremi/backend/cpu/matmul.hpp"

namespace doremi::backend {

// `probs` receives E (the row-wise exp-shifted logits); `inv_sum` receives s.
template <class T>
void classifier_forward(Cpu be, T* losses, std::uint8_t* mask, T* probs, T* inv_sum, const T* x, const T* w,
                        const std::int32_t* targets, int N, int C, int V) {
  matmul_forward(be, probs, x, w, static_cast<const T*>(nullptr), N, C, V);
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> r(probs + std::size_t(n) * V, V);
    const T mx = r.maxCoeff();
    const bool valid = targets[n] >= 0;
    const T target_logit = valid ? r[targets[n]] : T(0);
    r = (r - mx).exp();
    const double s = double(r.sum());
    inv_sum[n] = T(1.0 / s);
    mask[n] = valid;
    losses[n] = valid ? T(double(mx) + std::log(s) - double(target_logit)) : T(0);
  }
}

// Overwrites dx; accumulates into dw.
template <class T>
void classifier_backward(Cpu, T* dx, T* dw, const T* probs, const T* inv_sum, const T* weights, const T* x,
                         const T* w, const std::int32_t* targets, int N, int C, int V) {
  using namespace cpu;
  std::vector<T> scale(static_cast<std::size_t>(N), T(0)), wn(static_cast<std::size_t>(N), T(0));
  for (int n = 0; n < N; ++n) {
    wn[n] = targets[n] >= 0 ? weights[n] : T(0);
    scale[n] = wn[n] * inv_sum[n];
  }
  const Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>> sv(scale.data(), N);
  CMatMap<T> E(probs, N, V), W(w, V, C), X(x, N, C);
  MatMap<T> DX(dx, N, C);
  DX.noalias() = E * W;
  RowMat<T> xs = sv.asDiagonal() * X;
  MatMap<T>(dw, V, C).noalias() += E.transpose() * xs;
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const T* wt = w + std::size_t(targets[n] >= 0 ? targets[n] : 0) * C;
    T* d = dx + std::size_t(n) * C;
    for (int c = 0; c < C; ++c) d[c] = scale[n] * d[c] - wn[n] * wt[c];
  }
  for (int n = 0; n < N; ++n) {  // serial: several tokens may share a target row
    if (wn[n] == T(0)) continue;
    T* d = dw + std::size_t(targets[n]) * C;
    const T* xn = x + std::size_t(n) * C;
    for (int c = 0; c < C; ++c) d[c] -= wn[n] * xn[c];
  }
}

}  // namespace doremi::backend
