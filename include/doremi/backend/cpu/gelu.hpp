#pragma once
// GELU over a flat buffer (memory-bound; the math is the shared elementwise
// function). Backward overwrites dx.
#include <cstddef>

#include "doremi/backend/cpu/cpu.hpp"
#include <unsupported/Eigen/SpecialFunctions>  // vectorised erf

#include "doremi/backend/elementwise.hpp"

namespace doremi::backend {

namespace cpu {

// Runs f(X) on each OpenMP thread's part [lo, hi) of x, with X an Eigen array
// (map) of compute_t<Xs>: x itself, or (bf16 storage) its part converted.
template <class Xs, class F>
void for_each_part(const Xs* x, std::size_t n, F&& f) {
  using T = compute_t<Xs>;
  using A = Eigen::Array<T, Eigen::Dynamic, 1>;
  // Small buffers (a decoding step's few tokens) on one thread: a parallel
  // region costs more than the work there, and far more on a busy machine.
#pragma omp parallel if (n > 65536)
  {
    const std::size_t nt = std::size_t(omp_get_num_threads()), t = std::size_t(omp_get_thread_num());
    const std::size_t lo = n * t / nt, hi = n * (t + 1) / nt;
    if constexpr (std::is_same_v<Xs, T>) {
      f(Eigen::Map<const A>(x + lo, Eigen::Index(hi - lo)), lo, hi);
    } else {
      A xs(Eigen::Index(hi - lo));
      for (std::size_t i = lo; i < hi; ++i) xs[Eigen::Index(i - lo)] = cast_to<T>(x[i]);
      f(xs, lo, hi);
    }
  }
}

}  // namespace cpu

// The CPU versions evaluate the shared formulas (backend/elementwise.hpp) on
// Eigen arrays, whose tanh/erf/exp are vectorised: a scalar std::tanh per
// element cost several percent of a whole training step.
// x and out may be bf16 (Cpu::operand: bf16 models keep the pre-activation and
// the output so): evaluated in float, rounded once.
template <Gelu G, class Xs, class O>
void gelu_forward(Cpu, O* out, const Xs* x, std::size_t n) {
  using T = compute_t<Xs>;
  using A = Eigen::Array<T, Eigen::Dynamic, 1>;
  cpu::for_each_part(x, n, [&](const auto& X, std::size_t lo, std::size_t hi) {
    const auto eval = [&](auto&& Y) {
      if constexpr (G == Gelu::tanh)
        Y = T(0.5) * X * (T(1) + (T(0.79788456080286535588) * (X + T(0.044715) * X.cube())).tanh());
      else
        Y = T(0.5) * X * (T(1) + (X * T(0.70710678118654752440)).erf());
    };
    if constexpr (std::is_same_v<O, T>) {
      eval(Eigen::Map<A>(out + lo, Eigen::Index(hi - lo)));
    } else {
      A y(Eigen::Index(hi - lo));
      eval(y);
      for (std::size_t i = lo; i < hi; ++i) out[i] = cpu::cast_to<O>(y[Eigen::Index(i - lo)]);
    }
  });
}

// dx = dout ⊙ gelu'(x); x may be bf16 (see gelu_forward).
template <Gelu G, class T, class Xs>
void gelu_backward(Cpu, T* dx, const Xs* x, const T* dout, std::size_t n) {
  static_assert(std::is_same_v<compute_t<Xs>, T>, "gelu_backward: x stored as T or (T = float) bf16");
  using A = Eigen::Array<T, Eigen::Dynamic, 1>;
  cpu::for_each_part(x, n, [&](const auto& X, std::size_t lo, std::size_t hi) {
    Eigen::Map<const A> D(dout + lo, Eigen::Index(hi - lo));
    Eigen::Map<A> DX(dx + lo, Eigen::Index(hi - lo));
    if constexpr (G == Gelu::tanh) {
      const A th = (T(0.79788456080286535588) * (X + T(0.044715) * X.cube())).tanh();
      DX = D * (T(0.5) * (T(1) + th) +
                T(0.5) * X * (T(1) - th.square()) * T(0.79788456080286535588) * (T(1) + T(3 * 0.044715) * X.square()));
    } else {
      DX = D * (T(0.5) * (T(1) + (X * T(0.70710678118654752440)).erf()) +
                X * T(0.39894228040143267794) * (T(-0.5) * X.square()).exp());
    }
  });
}

template <class T>
void copy(Cpu, T* dst, const T* src, std::size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (std::size_t i = 0; i < n; ++i) dst[i] = src[i];
}

template <class T>
void fill(Cpu, T* dst, T value, std::size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (std::size_t i = 0; i < n; ++i) dst[i] = value;
}

// y = a·y + b·x (the DRO trainer's per-domain gradient sums).
template <class T>
void axpby(Cpu, T* y, T a, const T* x, T b, std::size_t n) {
#pragma omp parallel for schedule(static)
  for (std::size_t i = 0; i < n; ++i) y[i] = a * y[i] + b * x[i];
}

}  // namespace doremi::backend
