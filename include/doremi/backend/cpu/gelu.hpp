#pragma once
// GELU over a flat buffer (memory-bound; the math is the shared elementwise
// function). Backward overwrites dx.
#include <cstddef>

#include "doremi/backend/cpu/cpu.hpp"
#include "doremi/backend/elementwise.hpp"

namespace doremi::backend {

template <Gelu G, class T>
void gelu_forward(Cpu, T* out, const T* x, std::size_t n) {
#pragma omp parallel for schedule(static)
  for (std::size_t i = 0; i < n; ++i) out[i] = gelu<G>(x[i]);
}

template <Gelu G, class T>
void gelu_backward(Cpu, T* dx, const T* x, const T* dout, std::size_t n) {
#pragma omp parallel for schedule(static)
  for (std::size_t i = 0; i < n; ++i) dx[i] = gelu_grad<G>(x[i]) * dout[i];
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
