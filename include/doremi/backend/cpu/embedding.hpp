#pragma once
// Token embedding plus, for GPT-2-style models, learned absolute positions.
// Backward scatters into the embedding rows; threads split the channels, so no
// two threads touch the same element and the result is deterministic.
#include <cstdint>

#include "doremi/backend/cpu/cpu.hpp"

namespace doremi::backend {

template <class T>
void embedding_forward(Cpu, T* out, const std::int32_t* tokens, const T* wte, const T* wpe, int B, int Tn, int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < B * Tn; ++n) {
    const T* e = wte + std::size_t(tokens[n]) * C;
    T* o = out + std::size_t(n) * C;
    if (wpe) {
      const T* p = wpe + std::size_t(n % Tn) * C;
      for (int c = 0; c < C; ++c) o[c] = e[c] + p[c];
    } else {
      for (int c = 0; c < C; ++c) o[c] = e[c];
    }
  }
}

// Generation (GEN_INTERFACES §1): out[n] = wte[tokens[n]] (+ wpe[positions[n]]
// where wpe != nullptr), n < N. With wpe = nullptr it is also a row gather of
// any [rows, C] table.
template <class T>
void embedding_forward_at(Cpu, T* out, const std::int32_t* tokens, const std::int32_t* positions, const T* wte,
                          const T* wpe, int N, int C) {
#pragma omp parallel for schedule(static) if (std::size_t(N) * C > 65536)
  for (int n = 0; n < N; ++n) {
    const T* e = wte + std::size_t(tokens[n]) * C;
    T* o = out + std::size_t(n) * C;
    if (wpe) {
      const T* p = wpe + std::size_t(positions[n]) * C;
      for (int c = 0; c < C; ++c) o[c] = e[c] + p[c];
    } else {
      for (int c = 0; c < C; ++c) o[c] = e[c];
    }
  }
}

template <class T>
void embedding_backward(Cpu, T* dwte, T* dwpe, const T* dout, const std::int32_t* tokens, int B, int Tn, int C) {
#pragma omp parallel
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int c0 = C * t / nt, c1 = C * (t + 1) / nt;
    for (int n = 0; n < B * Tn; ++n) {
      const T* d = dout + std::size_t(n) * C;
      T* e = dwte + std::size_t(tokens[n]) * C;
      for (int c = c0; c < c1; ++c) e[c] += d[c];
      if (dwpe) {
        T* p = dwpe + std::size_t(n % Tn) * C;
        for (int c = c0; c < c1; ++c) p[c] += d[c];
      }
    }
  }
}

}  // namespace doremi::backend
