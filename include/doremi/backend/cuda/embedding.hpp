#pragma once
// Token embedding plus, for GPT-2-style models, learned absolute positions.
// Memory-bound gathers and scatters. Forward: a block per token row.
// Backward, deterministic (no atomics: a run repeats bit for bit): position
// rows are summed over the batch by one thread per (t, c) in batch order;
// token rows, which several positions may share, go through a sort: CUB's
// radix sort (stable) orders the positions by token, then one block per run
// of equal tokens sums that run's rows of dout in a fixed order (eight
// interleaved partial sums per channel, so a frequent token's long run keeps
// eight loads in flight) and adds the sum to the token's row.
#include <cstddef>
#include <cstdint>

#include <cub/device/device_radix_sort.cuh>

#include "doremi/backend/cuda/cuda.hpp"

namespace doremi::backend {

namespace cuda {

// A block per row (grid-stride over rows), threads over the row's channels:
// no index division per element.
template <class T>
__global__ void embedding_forward_kernel(T* out, const std::int32_t* tokens, const T* wte, const T* wpe, int Tn,
                                         int C, int N) {
  for (int n = int(blockIdx.x); n < N; n += int(gridDim.x)) {
    const T* e = wte + std::size_t(tokens[n]) * C;
    const T* pos = wpe ? wpe + std::size_t(n % Tn) * C : nullptr;
    T* o = out + std::size_t(n) * C;
    for (int c = int(threadIdx.x); c < C; c += int(blockDim.x)) o[c] = pos ? e[c] + pos[c] : e[c];
  }
}

// The same at given positions (generation: each token at its own position).
template <class T>
__global__ void embedding_forward_at_kernel(T* out, const std::int32_t* tokens, const std::int32_t* positions,
                                            const T* wte, const T* wpe, int C, int N) {
  for (int n = int(blockIdx.x); n < N; n += int(gridDim.x)) {
    const T* e = wte + std::size_t(tokens[n]) * C;
    const T* pos = wpe ? wpe + std::size_t(positions[n]) * C : nullptr;
    T* o = out + std::size_t(n) * C;
    for (int c = int(threadIdx.x); c < C; c += int(blockDim.x)) o[c] = pos ? e[c] + pos[c] : e[c];
  }
}

template <class I>
__global__ void iota_kernel(I* out, I n) {
  for (I i = I(blockIdx.x * blockDim.x + threadIdx.x); i < n; i += I(gridDim.x * blockDim.x)) out[i] = i;
}

// Block b (a position in sorted order) that starts a run of equal tokens:
// dwte[token] += Σ over the run's positions p of dout[p] (channels over the
// block's threads; the run's end found by binary search in the sorted tokens).
template <class T>
__global__ void embedding_backward_tokens_kernel(T* dwte, const T* dout, const std::int32_t* sorted_tokens,
                                                 const std::int32_t* sorted_positions, int C, int N) {
  const int first = int(blockIdx.x);
  const std::int32_t token = sorted_tokens[first];
  if (first > 0 && sorted_tokens[first - 1] == token) return;  // not the start of a run (block-uniform)
  int lo = first + 1, hi = N;  // the run ends at the first sorted token > token
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (sorted_tokens[mid] <= token) lo = mid + 1;
    else hi = mid;
  }
  const int end = lo;
  constexpr int U = 8;
  for (int c = int(threadIdx.x); c < C; c += int(blockDim.x)) {
    T s[U] = {};
    int j = first;
    for (; j + U <= end; j += U)
#pragma unroll
      for (int u = 0; u < U; ++u) s[u] += dout[std::size_t(sorted_positions[j + u]) * C + c];
    for (int u = 0; j < end; ++j, ++u) s[u] += dout[std::size_t(sorted_positions[j]) * C + c];
    dwte[std::size_t(token) * C + c] += ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  }
}

template <class T>
__global__ void embedding_backward_positions_kernel(T* dwpe, const T* dout, int B, int Tn, int C) {
  const std::size_t total = std::size_t(Tn) * C;
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < total;
       i += std::size_t(gridDim.x) * blockDim.x) {
    T s = 0;
    for (int b = 0; b < B; ++b) s += dout[std::size_t(b) * total + i];
    dwpe[i] += s;
  }
}

}  // namespace cuda

// out[n] = wte[tokens[n]] (+ wpe[n mod T]); tokens is a device array of B·T ids.
template <class T>
void embedding_forward(const Cuda& be, T* out, const std::int32_t* tokens, const T* wte, const T* wpe, int B, int Tn,
                       int C) {
  const std::size_t total = std::size_t(B) * Tn * C;
  if (!total) return;
  const int N = B * Tn;
  DOREMI_CUDA_LAUNCH(cuda::blocks_for(std::size_t(N) * 256, 256), 256, 0, be.stream(), cuda::embedding_forward_kernel)(
      out, tokens, wte, wpe, Tn, C, N);
  DOREMI_CUDA_CHECK_LAUNCH("embedding_forward_kernel");
}

// out[n] = wte[tokens[n]] (+ wpe[positions[n]] where wpe is given; positions
// is then read, else it may be null), n < N; tokens and positions are device
// arrays of N ids (not range-checked: the caller's, as in embedding_forward).
template <class T>
void embedding_forward_at(const Cuda& be, T* out, const std::int32_t* tokens, const std::int32_t* positions,
                          const T* wte, const T* wpe, int N, int C) {
  if (N <= 0 || C <= 0) return;
  DOREMI_CUDA_LAUNCH(cuda::blocks_for(std::size_t(N) * 256, 256), 256, 0, be.stream(),
                     cuda::embedding_forward_at_kernel)(out, tokens, positions, wte, wpe, C, N);
  DOREMI_CUDA_CHECK_LAUNCH("embedding_forward_at_kernel");
}

// dwte[tokens[n]] += dout[n]; dwpe[t] += Σ_b dout[b, t] (when dwpe is given).
// Uses 3·B·T ints and CUB's temporary storage of the backend's scratch.
template <class T>
void embedding_backward(const Cuda& be, T* dwte, T* dwpe, const T* dout, const std::int32_t* tokens, int B, int Tn,
                        int C) {
  const std::size_t total = std::size_t(B) * Tn * C;
  if (!total) return;
  const int N = B * Tn;
  std::size_t temp_bytes = 0;
  DOREMI_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, tokens, static_cast<std::int32_t*>(nullptr),
                                                    static_cast<const std::int32_t*>(nullptr),
                                                    static_cast<std::int32_t*>(nullptr), N, 0, 32, be.stream()));
  const std::size_t ints_at = (temp_bytes + 255) / 256 * 256;  // CUB's storage first, then the three arrays
  auto* temp = static_cast<std::byte*>(be.ctx->scratch_bytes(ints_at + 3 * std::size_t(N) * sizeof(std::int32_t)));
  auto* const positions = reinterpret_cast<std::int32_t*>(temp + ints_at);
  std::int32_t *const sorted_positions = positions + N, *const sorted_tokens = positions + 2 * std::size_t(N);
  DOREMI_CUDA_LAUNCH(cuda::blocks_for(std::size_t(N), 256), 256, 0, be.stream(), cuda::iota_kernel<std::int32_t>)(
      positions, N);
  DOREMI_CUDA_CHECK_LAUNCH("iota_kernel");
  DOREMI_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, tokens, sorted_tokens,
                                                    static_cast<const std::int32_t*>(positions), sorted_positions, N,
                                                    0, 32, be.stream()));
  DOREMI_CUDA_LAUNCH(unsigned(N), C < 256 ? 32 * ((C + 31) / 32) : 256, 0, be.stream(),
                     cuda::embedding_backward_tokens_kernel<T>)(dwte, dout, sorted_tokens, sorted_positions, C, N);
  DOREMI_CUDA_CHECK_LAUNCH("embedding_backward_tokens_kernel");
  if (dwpe) {
    const std::size_t tc = std::size_t(Tn) * C;
    DOREMI_CUDA_LAUNCH(cuda::blocks_for(tc, 256), 256, 0, be.stream(), cuda::embedding_backward_positions_kernel)(dwpe,
        dout, B, Tn, C);
    DOREMI_CUDA_CHECK_LAUNCH("embedding_backward_positions_kernel");
  }
}

}  // namespace doremi::backend
