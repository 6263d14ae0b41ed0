#pragma once
// The language-model head: logits = x·Wᵀ over the padded vocabulary, then
// per-token cross-entropy ℓ = logsumexp(logits) − logits[target].
//
// Forward keeps the logits and each row's logsumexp; backward turns the logits
// buffer into its own gradient in place, w·(softmax − onehot), with a weight w
// per token (the DRO trainer weighs tokens by domain), so the V-wide rows are
// never copied. Targets < 0 are padding: loss 0, mask 0, no gradient.
#include <cmath>
#include <cstdint>

#include "doremi/backend/cpu/cpu.hpp"
#include "doremi/backend/cpu/matmul.hpp"

namespace doremi::backend {

template <class T>
void classifier_forward(Cpu be, T* losses, std::uint8_t* mask, T* logits, T* lse, const T* x, const T* w,
                        const std::int32_t* targets, int N, int C, int V) {
  matmul_forward(be, logits, x, w, static_cast<const T*>(nullptr), N, C, V);
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const T* row = logits + std::size_t(n) * V;
    Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>> r(row, V);
    const T mx = r.maxCoeff();
    const double s = double((r - mx).exp().sum());
    const T l = mx + T(std::log(s));
    lse[n] = l;
    const bool valid = targets[n] >= 0;
    mask[n] = valid;
    losses[n] = valid ? l - row[targets[n]] : T(0);
  }
}

// Overwrites dx; accumulates into dw. `logits` is consumed (becomes dlogits).
template <class T>
void classifier_backward(Cpu be, T* dx, T* dw, T* logits, const T* lse, const T* weights, const T* x, const T* w,
                         const std::int32_t* targets, int N, int C, int V) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> r(logits + std::size_t(n) * V, V);
    const T wn = targets[n] >= 0 ? weights[n] : T(0);
    if (wn == T(0)) {
      r.setZero();
      continue;
    }
    r = (r - lse[n]).exp() * wn;
    r[targets[n]] -= wn;
  }
  matmul_backward(be, dx, dw, static_cast<T*>(nullptr), logits, x, w, N, C, V);
}

}  // namespace doremi::backend
