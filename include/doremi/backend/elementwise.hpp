#pragma once
// Elementwise math shared by every backend (plain inline functions on the CPU,
// __host__ __device__ under nvcc): GELU in both flavours, the rotary
// rotation of one (x1, x2) pair, the arithmetic type of stored elements and
// the per-row loss totals of the DRO step. Written once so the backends cannot
// drift.
#include <cmath>
#include <type_traits>

#include "doremi/core/hostdevice.hpp"
#include "doremi/backend/types.hpp"

namespace doremi::backend {

// The arithmetic type for elements stored as X: float for the backends'
// 2-byte storage type (bf16: cpu::bf16, __nv_bfloat16), X itself otherwise.
template <class X>
using compute_t = std::conditional_t<sizeof(X) == 2, float, X>;

// GELU, exact: x·Φ(x) with Φ the standard normal CDF (Pythia's "gelu").
template <class T>
DOREMI_HD T gelu_exact(T x) {
  return T(0.5) * x * (T(1) + std::erf(x * T(0.70710678118654752440)));
}
template <class T>
DOREMI_HD T gelu_exact_grad(T x) {
  const T cdf = T(0.5) * (T(1) + std::erf(x * T(0.70710678118654752440)));
  const T pdf = T(0.39894228040143267794) * std::exp(T(-0.5) * x * x);
  return cdf + x * pdf;
}

// GELU, tanh approximation (GPT-2's "gelu_new"): 0.5x(1 + tanh(√(2/π)(x + 0.044715x³))).
template <class T>
DOREMI_HD T gelu_tanh(T x) {
  const T u = T(0.79788456080286535588) * (x + T(0.044715) * x * x * x);
  return T(0.5) * x * (T(1) + std::tanh(u));
}
template <class T>
DOREMI_HD T gelu_tanh_grad(T x) {
  const T u = T(0.79788456080286535588) * (x + T(0.044715) * x * x * x);
  const T th = std::tanh(u);
  const T du = T(0.79788456080286535588) * (T(1) + T(3) * T(0.044715) * x * x);
  return T(0.5) * (T(1) + th) + T(0.5) * x * (T(1) - th * th) * du;
}

template <Gelu G, class T>
DOREMI_HD T gelu(T x) {
  if constexpr (G == Gelu::exact) return gelu_exact(x); else return gelu_tanh(x);
}
template <Gelu G, class T>
DOREMI_HD T gelu_grad(T x) {
  if constexpr (G == Gelu::exact) return gelu_exact_grad(x); else return gelu_tanh_grad(x);
}

// Rotary embedding of the pair (x1, x2) = (x[i], x[i + d/2]) by angle θ with
// (cos θ, sin θ) = (c, s), GPT-NeoX's rotate_half convention. The backward is
// the rotation by −θ.
template <class T>
DOREMI_HD void rotate(T& x1, T& x2, T c, T s) {
  const T a = x1 * c - x2 * s;
  const T b = x2 * c + x1 * s;
  x1 = a;
  x2 = b;
}
template <class T>
DOREMI_HD void rotate_back(T& x1, T& x2, T c, T s) { rotate(x1, x2, c, -s); }

// The DRO step's excess loss of one token, max(ℓ_θ − ℓ_ref, 0)
// (docs/algorithm.md, "The domain-weight update"); a NaN stays NaN, so a diverged model cannot pass for a good one.
DOREMI_HD double excess_loss(double proxy, double ref) {
  const double d = proxy - ref;
  return d < 0 ? 0.0 : d;
}

// One batch row's totals over its real (unmasked) tokens, in double: the
// losses' sum and count and, against a reference model's losses of the same
// tokens, theirs and the excess losses' (row_loss_sums in each backend). An
// aggregate: zero it with `RowLossSums s{}`.
struct RowLossSums {
  double loss, tokens, reference, excess;

  DOREMI_HD void add(double l) {
    loss += l;
    tokens += 1;
  }
  DOREMI_HD void add(double l, double ref) {
    add(l);
    reference += ref;
    excess += excess_loss(l, ref);
  }
};

}  // namespace doremi::backend
