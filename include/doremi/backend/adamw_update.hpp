#pragma once
// AdamW's element math, shared by optim::AdamW on the CPU and the device
// backends' adamw_step (one DOREMI_HD function, so every backend computes the
// same arithmetic in the same order), and the parameter groups the step takes.
// Names in namespace doremi (doremi::AdamWCoefficients, doremi::ParamGroup),
// as optim/adamw.hpp had them.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numeric>
#include <span>
#include <vector>

#include "doremi/core/error.hpp"
#include "doremi/core/hostdevice.hpp"

namespace doremi {

// The per-step scalars of an AdamW update, formed once per step: PyTorch
// forms them in double on the host and rounds each once to the tensor's type.
template <class T>
struct AdamWCoefficients {
  T decay;            // 1 − lr·wd (decoupled weight decay)
  T beta1, one_minus_beta1, beta2, one_minus_beta2;
  T sqrt_bc2;         // √(1 − β₂ᵗ)
  T eps;
  T neg_step_size;    // −lr / (1 − β₁ᵗ)
  T grad_scale;       // each gradient's factor as it is read (gradient clipping's)
};

// bias_correction1/2 = 1 − β₁ᵗ, 1 − β₂ᵗ for the 1-based step t; scalars
// are combined in S before rounding to T.
template <class T, class S>
DOREMI_HD AdamWCoefficients<T> adamw_coefficients(S lr, S beta1, S beta2, S eps, S weight_decay,
                                                  S bias_correction1, S bias_correction2, S grad_scale = S(1)) {
  using std::sqrt;
  return {T(S(1) - lr * weight_decay), T(beta1),         T(S(1) - beta1),
          T(beta2),                    T(S(1) - beta2),  T(sqrt(bias_correction2)),
          T(eps),                      T(-(lr / bias_correction1)), T(grad_scale)};
}

// One AdamW update of one parameter θ with gradient g and moments m, v.
// Mirrors torch.optim.AdamW (single-tensor path) operation by operation,
// after clip_grad_norm_'s scaling g ← g·s (s = 1 without clipping: exact):
//   θ ← θ·(1 − lr·wd)
//   m ← β₁·m + (1 − β₁)·g
//   v ← β₂·v + (1 − β₂)·g²
//   θ ← θ − (lr / bc₁) · m / (√v / √bc₂ + ε)
// (On the CPU, √'s errno semantics keep g++ from vectorising this; with 2
// threads the step still runs at memory bandwidth.)
template <class T>
DOREMI_HD void adamw_update(T& p, T g, T& m, T& v, const AdamWCoefficients<T>& c) {
  using std::sqrt;
  g = g * c.grad_scale;
  p = p * c.decay;
  m = m * c.beta1 + c.one_minus_beta1 * g;
  v = v * c.beta2 + c.one_minus_beta2 * g * g;
  const T denom = sqrt(v) / c.sqrt_bc2 + c.eps;
  p = p + c.neg_step_size * (m / denom);
}

// The same with the scalars given one by one (forms the coefficients per
// call; loops should form them once with adamw_coefficients).
template <class T, class S>
DOREMI_HD void adamw_update(T& p, T g, T& m, T& v, S lr, S beta1, S beta2, S eps, S weight_decay,
                            S bias_correction1, S bias_correction2) {
  adamw_update(p, g, m, v,
               adamw_coefficients<T>(lr, beta1, beta2, eps, weight_decay, bias_correction1,
                                     bias_correction2));
}

// A range [offset, offset + size) of the flat parameter buffer and whether
// weight decay applies to it.
struct ParamGroup {
  std::size_t offset = 0;
  std::size_t size = 0;
  bool decay = true;
};

// Checks that groups tile [0, n) exactly: an overlap would update a parameter
// twice per step, a gap would leave it untrained, both silently.
inline void validate_param_groups(std::span<const ParamGroup> groups, std::size_t n) {
  std::vector<std::size_t> order(groups.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  for (std::size_t i : order) {
    const auto& g = groups[i];
    if (g.offset > n || g.size > n - g.offset)
      fail("AdamW: param group {} [{}, {}) lies outside the {} parameters", i, g.offset,
           g.offset + g.size, n);
  }
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return groups[a].offset < groups[b].offset;
  });
  std::size_t covered = 0;  // [0, covered) is tiled so far
  for (std::size_t i : order) {
    const auto& g = groups[i];
    if (g.size == 0) continue;
    if (g.offset < covered)
      fail("AdamW: param group {} [{}, {}) overlaps an earlier group ending at {}", i, g.offset,
           g.offset + g.size, covered);
    if (g.offset > covered)
      fail("AdamW: parameters [{}, {}) belong to no param group", covered, g.offset);
    covered = g.offset + g.size;
  }
  if (covered != n) fail("AdamW: parameters [{}, {}) belong to no param group", covered, n);
}

}  // namespace doremi
