#pragma once
// cub::DeviceRadixSort::SortPairs for the CPU emulator (tests/cuda_emu):
// device memory is host memory there, so the sort is a host stable sort by
// key (CUB's radix sort is stable too, so the order is the same).
#include <algorithm>
#include <cstddef>
#include <numeric>
#include <vector>

#include <cuda_runtime.h>

namespace cub {

struct DeviceRadixSort {
  template <class K, class V, class NumItems>
  static cudaError_t SortPairs(void* temp, std::size_t& temp_bytes, const K* keys_in, K* keys_out, const V* values_in,
                               V* values_out, NumItems n, int = 0, int = int(sizeof(K) * 8), cudaStream_t = nullptr) {
    if (!temp) {
      temp_bytes = 1;
      return cudaSuccess;
    }
    std::vector<std::size_t> order(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), std::size_t(0));
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return keys_in[a] < keys_in[b]; });
    std::vector<K> k(order.size());
    std::vector<V> v(order.size());
    for (std::size_t i = 0; i < order.size(); ++i) k[i] = keys_in[order[i]], v[i] = values_in[order[i]];
    std::copy(k.begin(), k.end(), keys_out);
    std::copy(v.begin(), v.end(), values_out);
    return cudaSuccess;
  }
};

}  // namespace cub
