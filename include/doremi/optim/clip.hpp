#pragma once
// Global gradient-norm clipping with torch.nn.utils.clip_grad_norm_'s rule
// (the public runs clip at 1.0): one L2 norm over the whole flat gradient
// buffer, then one common scale factor.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <vector>

#include "doremi/core/error.hpp"

namespace doremi {

namespace detail {
// Fixed chunk length of the norm reduction. The chunking, not the thread
// count, fixes the order of the additions, so the norm is bit-identical for
// any number of OpenMP threads.
inline constexpr std::size_t grad_norm_chunk = std::size_t{1} << 15;
}  // namespace detail

// ‖g‖₂ over all elements, accumulated in double: each fixed-size chunk is
// summed with eight interleaved accumulators (a fixed order the compiler can
// vectorise without reassociating), then the chunk sums are added serially.
template <class T>
double global_grad_norm(std::span<const T> grads) {
  const std::size_t n = grads.size();
  const std::size_t chunks = (n + detail::grad_norm_chunk - 1) / detail::grad_norm_chunk;
  std::vector<double> partial(chunks, 0.0);
  const T* g = grads.data();
#pragma omp parallel for schedule(static)
  for (std::ptrdiff_t c = 0; c < std::ptrdiff_t(chunks); ++c) {
    const std::size_t begin = std::size_t(c) * detail::grad_norm_chunk;
    const std::size_t end = std::min(n, begin + detail::grad_norm_chunk);
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    std::size_t i = begin;
    for (; i + 8 <= end; i += 8)
      for (std::size_t j = 0; j < 8; ++j) {
        const double x = double(g[i + j]);
        acc[j] += x * x;
      }
    for (; i < end; ++i) {
      const double x = double(g[i]);
      acc[0] += x * x;
    }
    partial[std::size_t(c)] =
        ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  }
  double sum = 0;
  for (double s : partial) sum += s;
  return std::sqrt(sum);
}

// The factor torch.nn.utils.clip_grad_norm_ scales gradients of norm `norm`
// by: max_norm / (norm + 1e-6) where that is below 1 (so clipping starts at
// ‖g‖ > max_norm − 1e-6), else 1. max_norm <= 0 disables clipping and a
// non-finite norm gives 1: the caller sees the norm and decides (PyTorch
// would instead turn every gradient into NaN or zero).
inline double clip_coefficient(double norm, double max_norm) {
  if (std::isnan(max_norm)) fail("clip_grad_norm: max_norm is NaN");
  if (max_norm <= 0 || !std::isfinite(norm)) return 1.0;
  const double coef = max_norm / (norm + 1e-6);
  return coef < 1.0 ? coef : 1.0;
}

// Scales grads in place by clip_coefficient(‖g‖, max_norm), as
// torch.nn.utils.clip_grad_norm_ does, and returns the pre-clip norm ‖g‖.
// (The trainers do not call this: they pass the coefficient to AdamW::step,
// which applies it as it reads each gradient, one pass over the buffer less.)
template <class T>
double clip_grad_norm(std::span<T> grads, double max_norm) {
  const double norm = global_grad_norm(std::span<const T>(grads));
  const double coef = clip_coefficient(norm, max_norm);
  if (coef == 1.0) return norm;
  const T scale = T(coef);
  T* g = grads.data();
  const auto n = std::ptrdiff_t(grads.size());
#pragma omp parallel for schedule(static)
  for (std::ptrdiff_t i = 0; i < n; ++i) g[i] = g[i] * scale;
  return norm;
}

// ‖g‖₂ of a model's gradient buffer wherever the backend keeps it: the CPU
// loop above, or the device's reduction (which blocks until the norm is on
// the host).
template <class Backend, class T>
double global_grad_norm(const Backend& be, std::span<const T> grads) {
  if constexpr (Backend::host_memory) return global_grad_norm(grads);
  else return global_grad_norm(be, grads.data(), grads.size());
}

}  // namespace doremi
