#pragma once
// AdamW over the flat parameter buffer on the GPU: one memory-bound
// elementwise pass over every parameter, each element updated by the same
// DOREMI_HD adamw_update the CPU optimiser calls (so both backends compute
// the same arithmetic in the same order). The step's scalars are formed once
// on the host with adamw_coefficients, as the CPU AdamW does; decayed and
// undecayed parameters differ only in the decay factor, which the kernel
// takes from a table of the runs of each kind (one launch, where a launch per
// run made about ten per layer, most of them over a bias or a LayerNorm).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "doremi/backend/cuda/cuda.hpp"
#include "doremi/backend/adamw_update.hpp"

namespace doremi::backend {

namespace cuda {

// Elements per thread of a block's chunk: their loads are issued together.
inline constexpr int adamw_items = 4;

// runs[r] = end << 1 | decayed for the runs tiling [0, n) in order; c is the
// decayed coefficients, `undecayed` the decay factor of the other runs.
template <class T>
__global__ void adamw_kernel(T* p, const T* g, T* m, T* v, std::size_t n, AdamWCoefficients<T> c, T undecayed,
                             const std::uint64_t* runs, int nruns) {
  constexpr int E = adamw_items;
  const std::size_t chunk = std::size_t(blockDim.x) * E;
  for (std::size_t base = blockIdx.x * chunk; base < n; base += std::size_t(gridDim.x) * chunk) {
    // Element e of this thread: base + e·blockDim + threadIdx (coalesced);
    // past n it reads element n − 1 and stores nothing.
    std::size_t idx[E];
    T pv[E], gv[E], mv[E], vv[E];
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const std::size_t i = base + std::size_t(e) * blockDim.x + threadIdx.x;
      idx[e] = i < n ? i : n - 1;
      pv[e] = p[idx[e]];
      gv[e] = __ldg(g + idx[e]);
      mv[e] = m[idx[e]];
      vv[e] = v[idx[e]];
    }
    // The run holding the chunk's first element: the first that ends past it.
    int r = 0;
    for (int hi = nruns - 1; r < hi;) {
      const int mid = (r + hi) / 2;
      if ((runs[mid] >> 1) > base) hi = mid;
      else r = mid + 1;
    }
#pragma unroll
    for (int e = 0; e < E; ++e) {
      while (r + 1 < nruns && idx[e] >= (runs[r] >> 1)) ++r;
      AdamWCoefficients<T> ce = c;
      if (!(runs[r] & 1)) ce.decay = undecayed;
      adamw_update(pv[e], gv[e], mv[e], vv[e], ce);
    }
#pragma unroll
    for (int e = 0; e < E; ++e) {
      if (base + std::size_t(e) * blockDim.x + threadIdx.x >= n) continue;
      p[idx[e]] = pv[e];
      m[idx[e]] = mv[e];
      v[idx[e]] = vv[e];
    }
  }
}

}  // namespace cuda

// One AdamW step over the flat buffer: `decayed` applies to groups with
// decay = true, `undecayed` (weight decay 0) to the rest; the two may differ
// only in the decay factor (adamw_coefficients with and without weight
// decay). Groups must tile [0, n) (validate_param_groups).
template <class T>
void adamw_step(const Cuda& be, T* p, const T* g, T* m, T* v, std::size_t n, std::span<const ParamGroup> groups,
                const AdamWCoefficients<T>& decayed, const AdamWCoefficients<T>& undecayed) {
  validate_param_groups(groups, n);
  if (!n) return;
  AdamWCoefficients<T> same = undecayed;
  same.decay = decayed.decay;
  if (std::memcmp(&same, &decayed, sizeof(same)) != 0)
    fail("adamw_step(Cuda): the decayed and undecayed coefficients differ in more than the decay factor");
  // Runs of equally decayed groups, adjacent ones of one kind merged.
  std::vector<ParamGroup> sorted(groups.begin(), groups.end());
  std::sort(sorted.begin(), sorted.end(), [](const ParamGroup& a, const ParamGroup& b) { return a.offset < b.offset; });
  std::vector<std::uint64_t> runs;
  for (std::size_t i = 0; i < sorted.size(); ++i) {
    const std::uint64_t end = sorted[i].offset + sorted[i].size, flag = sorted[i].decay ? 1 : 0;
    if (!runs.empty() && (runs.back() & 1) == flag) runs.back() = end << 1 | flag;
    else runs.push_back(end << 1 | flag);
  }
  cuda::Context& ctx = *be.ctx;
  if (runs != ctx.adamw_runs) {  // (the first step, or another optimiser's groups on this context)
    if (ctx.adamw_runs_device.size() < runs.size()) ctx.adamw_runs_device.resize(runs.size());
    upload(be, ctx.adamw_runs_device.data(), runs.data(), runs.size());
    ctx.adamw_runs = runs;
  }
  const std::size_t threads = 256, chunks = (n + threads * cuda::adamw_items - 1) / (threads * cuda::adamw_items);
  DOREMI_CUDA_LAUNCH(cuda::blocks_for(chunks * threads, unsigned(threads)), unsigned(threads), 0, be.stream(),
                     cuda::adamw_kernel)(p, g, m, v, n, decayed, undecayed.decay, ctx.adamw_runs_device.data(),
                                         int(runs.size()));
  DOREMI_CUDA_CHECK_LAUNCH("adamw_kernel");
}

}  // namespace doremi::backend
