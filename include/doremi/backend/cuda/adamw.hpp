#pragma once
// AdamW over the flat parameter buffer on the GPU: one memory-bound
// elementwise pass per run of equally-decayed parameters, each element
// updated by the same DOREMI_HD adamw_update the CPU optimiser calls (so both
// backends compute the same arithmetic in the same order). The step's scalars
// are formed once on the host with adamw_coefficients, as the CPU AdamW does.
#include <cstddef>
#include <algorithm>
#include <span>
#include <vector>

#include "doremi/backend/cuda/cuda.hpp"
#include "doremi/optim/adamw.hpp"

namespace doremi::backend {

namespace cuda {

template <class T>
__global__ void adamw_kernel(T* p, const T* g, T* m, T* v, std::size_t n, AdamWCoefficients<T> c) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n;
       i += std::size_t(gridDim.x) * blockDim.x)
    adamw_update(p[i], g[i], m[i], v[i], c);
}

}  // namespace cuda

// One AdamW update of the n parameters p (device) with gradients g and moments m, v.
template <class T>
void adamw_update(const Cuda& be, T* p, const T* g, T* m, T* v, std::size_t n, const AdamWCoefficients<T>& c) {
  if (!n) return;
  DOREMI_CUDA_LAUNCH(cuda::blocks_for(n, 256), 256, 0, be.stream(), cuda::adamw_kernel)(p, g, m, v, n, c);
  DOREMI_CUDA_CHECK_LAUNCH("adamw_kernel");
}

// One AdamW step over the flat buffer: `decayed` applies to groups with
// decay = true, `undecayed` (weight decay 0) to the rest. Groups must tile
// [0, n) (validate_param_groups); adjacent groups with the same flag are
// merged so the pass is a handful of launches, not one per tensor.
template <class T>
void adamw_step(const Cuda& be, T* p, const T* g, T* m, T* v, std::size_t n, std::span<const ParamGroup> groups,
                const AdamWCoefficients<T>& decayed, const AdamWCoefficients<T>& undecayed) {
  validate_param_groups(groups, n);
  std::vector<ParamGroup> runs(groups.begin(), groups.end());
  std::sort(runs.begin(), runs.end(), [](const ParamGroup& a, const ParamGroup& b) { return a.offset < b.offset; });
  std::size_t i = 0;
  while (i < runs.size()) {
    std::size_t j = i + 1, end = runs[i].offset + runs[i].size;
    for (; j < runs.size() && runs[j].decay == runs[i].decay; ++j) end = runs[j].offset + runs[j].size;
    const std::size_t off = runs[i].offset;
    adamw_update(be, p + off, g + off, m + off, v + off, end - off, runs[i].decay ? decayed : undecayed);
    i = j;
  }
}

}  // namespace doremi::backend
