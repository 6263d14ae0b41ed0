#pragma once
// GELU over a flat buffer (memory-bound; the math is the shared elementwise
// function). Backward overwrites dx.
#include <cstddef>

#include "doremi/backend/cpu/cpu.hpp"
#include <unsupported/Eigen/SpecialFunctions>  // vectorised erf

#include "doremi/backend/elementwise.hpp"

namespace doremi::backend {

// The CPU versions evaluate the shared formulas (backend/elementwise.hpp) on
// Eigen arrays, whose tanh/erf/exp are vectorised: a scalar std::tanh per
// element cost several percent of a whole training step.
// out may be bf16 (Cpu::operand: it only feeds a matrix product): each
// thread evaluates its part in T, then rounds it once.
template <Gelu G, class T, class O>
void gelu_forward(Cpu, O* out, const T* x, std::size_t n) {
  using A = Eigen::Array<T, Eigen::Dynamic, 1>;
  const auto eval = [](const auto& X, auto&& Y) {
    if constexpr (G == Gelu::tanh)
      Y = T(0.5) * X * (T(1) + (T(0.79788456080286535588) * (X + T(0.044715) * X.cube())).tanh());
    else
      Y = T(0.5) * X * (T(1) + (X * T(0.70710678118654752440)).erf());
  };
#pragma omp parallel
  {
    const std::size_t nt = std::size_t(omp_get_num_threads()), t = std::size_t(omp_get_thread_num());
    const std::size_t lo = n * t / nt, hi = n * (t + 1) / nt;
    Eigen::Map<const A> X(x + lo, Eigen::Index(hi - lo));
    if constexpr (std::is_same_v<O, T>) {
      eval(X, Eigen::Map<A>(out + lo, Eigen::Index(hi - lo)));
    } else {
      A y(hi - lo);
      eval(X, y);
      for (std::size_t i = lo; i < hi; ++i) out[i] = cpu::cast_to<O>(y[Eigen::Index(i - lo)]);
    }
  }
}

template <Gelu G, class T>
void gelu_backward(Cpu, T* dx, const T* x, const T* dout, std::size_t n) {
  using A = Eigen::Array<T, Eigen::Dynamic, 1>;
#pragma omp parallel
  {
    const std::size_t nt = std::size_t(omp_get_num_threads()), t = std::size_t(omp_get_thread_num());
    const std::size_t lo = n * t / nt, hi = n * (t + 1) / nt;
    Eigen::Map<const A> X(x + lo, Eigen::Index(hi - lo)), D(dout + lo, Eigen::Index(hi - lo));
    Eigen::Map<A> DX(dx + lo, Eigen::Index(hi - lo));
    if constexpr (G == Gelu::tanh) {
      const A th = (T(0.79788456080286535588) * (X + T(0.044715) * X.cube())).tanh();
      DX = D * (T(0.5) * (T(1) + th) +
                T(0.5) * X * (T(1) - th.square()) * T(0.79788456080286535588) * (T(1) + T(3 * 0.044715) * X.square()));
    } else {
      DX = D * (T(0.5) * (T(1) + (X * T(0.70710678118654752440)).erf()) +
                X * T(0.39894228040143267794) * (T(-0.5) * X.square()).exp());
    }
  }
}

// out = a + b (+ c): residual sums.
template <class T>
void add_forward(Cpu, T* out, const T* a, const T* b, const T* c, std::size_t n) {
#pragma omp parallel for schedule(static)
  for (std::size_t i = 0; i < n; ++i) out[i] = c ? a[i] + b[i] + c[i] : a[i] + b[i];
}

template <class T>
void copy(Cpu, T* dst, const T* src, std::size_t n) {
#pragma omp parallel for schedule(static)
  for (std::size_t i = 0; i < n; ++i) dst[i] = src[i];
}

template <class T>
void fill(Cpu, T* dst, T value, std::size_t n) {
#pragma omp parallel for schedule(static)
  for (std::size_t i = 0; i < n; ++i) dst[i] = value;
}

}  // namespace doremi::backend
