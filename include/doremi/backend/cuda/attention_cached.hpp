#pragma once
// Attention of new tokens against a per-row key/value cache (generation), the
// CUDA side of backend::Cpu's attention_cached: same layout and semantics.
// qkv [B·Tn, 3C] holds per token and head [q_h | k_h | v_h]; token t of row b
// sits at position p = start[b] + t (start: a device int32 array); q and k are
// rotated on their first `rot` dims by the position's row of the [n_ctx,
// rot/2] tables exactly as attention_forward rotates them (the shared
// rotate of backend/elementwise.hpp); k_cache, v_cache are [B, H, capacity,
// hd]. The call writes the rotated k and the v of every new token at its
// position, then out[b·Tn + t] (head-major, [C]) = Σ_{j ≤ p} softmax_j(q·k_j
// / √hd) v_j. The cache is fp32 (T = float) and all math fp32 whatever P.
//
// Two kernels after the cache write (docs/cuda-performance.md, "Cached
// attention"): few new tokens per row (decoding) run one block per (row,
// head, token), its warps reading the keys once, a group of hd/8 lanes per
// key (a coalesced 8-value slice each), an online softmax per group merged at
// the end; more (prefill) run flash-style tiles of 64 (hd ≤ 64) or 32 queries
// per block with the keys streamed from the cache through shared memory, as
// attention_forward's fp32 kernel does. Positions outside [0, capacity) (the
// caller's error: start is in device memory, so it is not checked on the
// host) write nothing to the cache and give NaN outputs instead of writing
// out of bounds.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>

#include "doremi/backend/cuda/attention.hpp"
#include "doremi/backend/cuda/cuda.hpp"
#include "doremi/backend/elementwise.hpp"
#include "doremi/backend/types.hpp"

namespace doremi::backend {

namespace cuda {

// The decoding kernel's shape: `lanes` lanes per key, 8 dims each (one or two
// 16-byte loads), `groups` keys per warp and `keys` per block at once.
template <int HD>
struct CachedDecodeShape {
  static constexpr int vpt = 8;
  static constexpr int lanes = HD / vpt;  // 2, 4, 8, 16
  static constexpr int groups = 32 / lanes;
  static constexpr int warps = 4;
  static constexpr int threads = 32 * warps;
  static constexpr int keys = warps * groups;
  static_assert(HD % vpt == 0 && lanes >= 1 && lanes <= 32 && 32 % lanes == 0, "attention_cached: head dimension");
};

// Fewer new tokens per row than this: the per-token (decoding) kernel, else
// the tiled one. A guess (no GPU measured it yet): below it the per-token
// grid has more blocks in flight and reads the keys from L2 a few times.
inline constexpr int attention_cached_tiled_from = 16;

// Dimension d of a head's q or k (`row`: its hd values) rotated by the
// position whose table rows are cs, sn (rot/2 each): attention_rotary_kernel's
// arithmetic.
template <class In, class R>
__device__ __forceinline__ float cached_rotated(const In* row, int d, int rot, const R* cs, const R* sn) {
  if (d >= rot) return float(row[d]);
  const int half = rot / 2, p = d < half ? d : d - half;
  float x1 = float(row[p]), x2 = float(row[p + half]);
  rotate(x1, x2, float(cs[p]), float(sn[p]));
  return d < half ? x1 : x2;
}

// x = 8 consecutive floats at p (16-byte aligned).
__device__ __forceinline__ void cached_load8(float (&x)[8], const float* p) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
}

// (m, l, o) ← the merge of two online-softmax states (running max, Σ exp(s −
// m), Σ exp(s − m)·v) over disjoint key sets; commutative, so both lanes of a
// butterfly get the same bits.
__device__ __forceinline__ void cached_merge(float& m, float& l, float (&o)[8], float m2, float l2,
                                             const float (&o2)[8]) {
  const float mn = fmaxf(m, m2);
  if (mn == -INFINITY) return;  // both empty
  const float a = expf(m - mn), a2 = expf(m2 - mn);  // exp(−∞) = 0 for an empty side
  l = l * a + l2 * a2;
#pragma unroll
  for (int e = 0; e < 8; ++e) o[e] = o[e] * a + o2[e] * a2;
  m = mn;
}

// Writes the rotated k and the v of token n = blockIdx.x (row b = n / Tn,
// t = n mod Tn) at position start[b] + t of every head's cache rows.
template <int HD, class T, class In, class R>
__global__ void attention_cache_write_kernel(T* k_cache, T* v_cache, const In* qkv, const std::int32_t* start,
                                             const R* rope_cos, const R* rope_sin, int Tn, int C, int H, int rot,
                                             int capacity) {
  const int n = int(blockIdx.x), b = n / Tn, t = n % Tn;
  const long long s0 = start[b], pos = s0 + t;
  if (s0 < 0 || pos >= capacity) return;  // out of the cache: nothing written (the outputs become NaN)
  const int p = int(pos);
  const In* row = qkv + std::size_t(n) * 3 * C;
  const R* cs = rope_cos + std::size_t(p) * (rot / 2);
  const R* sn = rope_sin + std::size_t(p) * (rot / 2);
  for (int c = int(threadIdx.x); c < C; c += int(blockDim.x)) {
    const int h = c / HD, d = c % HD;
    const In* head = row + std::size_t(h) * 3 * HD;
    const std::size_t at = ((std::size_t(b) * H + h) * capacity + p) * HD + d;
    k_cache[at] = T(cached_rotated(head + HD, d, rot, cs, sn));
    v_cache[at] = T(float(head[2 * HD + d]));
  }
}

// Decoding: block (b·H + h, t) attends token t of row b over the cache
// positions 0 .. p of head h. Key j goes to group j mod `keys` of the block
// (warp-major): its `lanes` lanes each read 8 dims of k and v (a warp reads
// whole consecutive rows: coalesced), sum the dot product by shuffles and
// update the group's online softmax; the groups' states merge by shuffles
// within a warp, then across warps in shared memory.
template <int HD, class O, class T, class In, class R>
__global__ void __launch_bounds__(CachedDecodeShape<HD>::threads)
    attention_cached_decode_kernel(O* out, const In* qkv, const T* k_cache, const T* v_cache,
                                   const std::int32_t* start, const R* rope_cos, const R* rope_sin, int Tn, int C,
                                   int H, int rot, int capacity, float scale) {
  using S = CachedDecodeShape<HD>;
  __shared__ float part_m[S::warps], part_l[S::warps];
  __shared__ float4 part_o4[S::warps * HD / 4];
  float* const part_o = reinterpret_cast<float*>(part_o4);

  const int bh = int(blockIdx.x), b = bh / H, h = bh % H, t = int(blockIdx.y);
  const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
  const int grp = lane / S::lanes, d0 = (lane % S::lanes) * S::vpt;
  O* const o_row = out + (std::size_t(b) * Tn + t) * C + std::size_t(h) * HD;
  const long long s0 = start[b], pos = s0 + t;
  if (s0 < 0 || pos >= capacity) {  // block-uniform
    for (int d = int(threadIdx.x); d < HD; d += int(blockDim.x)) o_row[d] = O(NAN);
    return;
  }
  const int p = int(pos);

  const In* qrow = qkv + (std::size_t(b) * Tn + t) * 3 * C + std::size_t(h) * 3 * HD;
  const R* cs = rope_cos + std::size_t(p) * (rot / 2);
  const R* sn = rope_sin + std::size_t(p) * (rot / 2);
  float q[8], o[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) q[e] = cached_rotated(qrow, d0 + e, rot, cs, sn), o[e] = 0.0f;
  float m = -INFINITY, l = 0.0f;

  const std::size_t head = std::size_t(bh) * capacity * HD;
  const T* const K = k_cache + head + d0;
  const T* const V = v_cache + head + d0;
  // The loop bound is block-uniform: every lane takes part in the shuffles.
  for (int j0 = 0; j0 <= p; j0 += S::keys) {
    const int j = j0 + warp * S::groups + grp;
    const bool valid = j <= p;
    float k[8], v[8];
    if (valid) {
      cached_load8(k, K + std::size_t(j) * HD);
      cached_load8(v, V + std::size_t(j) * HD);
    }
    float dot = 0.0f;
    if (valid)
#pragma unroll
      for (int e = 0; e < 8; ++e) dot += q[e] * k[e];
    dot = attention_row_sum<S::lanes>(dot);
    if (valid) {
      const float sc = dot * scale, mn = fmaxf(m, sc);
      const float alpha = expf(m - mn), pj = expf(sc - mn);  // alpha = 0 at the group's first key
      l = l * alpha + pj;
#pragma unroll
      for (int e = 0; e < 8; ++e) o[e] = o[e] * alpha + pj * v[e];
      m = mn;
    }
  }

  // The warp's groups (lanes with the same dims, `lanes` apart).
#pragma unroll
  for (int off = S::lanes; off < 32; off *= 2) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, off), l2 = __shfl_xor_sync(0xffffffffu, l, off);
    float o2[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) o2[e] = __shfl_xor_sync(0xffffffffu, o[e], off);
    cached_merge(m, l, o, m2, l2, o2);
  }
  if (grp == 0) {
    if (d0 == 0) part_m[warp] = m, part_l[warp] = l;
#pragma unroll
    for (int e = 0; e < 8; ++e) part_o[warp * HD + d0 + e] = o[e];
  }
  __syncthreads();
  if (warp == 0 && grp == 0) {
    for (int w = 1; w < S::warps; ++w) {
      float o2[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) o2[e] = part_o[w * HD + d0 + e];
      cached_merge(m, l, o, part_m[w], part_l[w], o2);
    }
    const float inv = 1.0f / l;  // l ≥ 1: the maximum's own term
#pragma unroll
    for (int e = 0; e < 8; ++e) o_row[d0 + e] = O(o[e] * inv);
  }
}

// Prefill: attention_forward_kernel's tiling (grid (B·H, query tiles), the
// longest tiles first; AttentionTiles<HD> rows per block, TPR threads per
// row) with the queries rotated on load at positions start[b] + t and the
// keys and values streamed from the cache (positions 0 .. the block's last
// query's), each query masked to the keys at or before its position.
template <int HD, class O, class T, class In, class R>
__global__ void __launch_bounds__(AttentionTiles<HD>::threads)
    attention_cached_tiled_kernel(O* out, const In* qkv, const T* k_cache, const T* v_cache,
                                  const std::int32_t* start, const R* rope_cos, const R* rope_sin, int Tn, int C,
                                  int H, int rot, int capacity, float scale) {
  using L = AttentionTiles<HD>;
  constexpr int TPR = L::tpr, BC = L::tile;
  __shared__ float4 smem4[L::smem_floats / 4];
  float* const Ks = reinterpret_cast<float*>(smem4);
  float* const Vs = Ks + BC * HD;

  const int bh = int(blockIdx.x), b = bh / H, h = bh % H;
  const int q0 = int(gridDim.y - 1 - blockIdx.y) * L::rows;
  const int r = int(threadIdx.x) / TPR, s = int(threadIdx.x) % TPR, i = q0 + r;  // this thread's query and slice
  const long long s0 = start[b];
  const bool row_ok = s0 >= 0 && i < Tn && s0 + i < capacity;
  const int pos = row_ok ? int(s0 + i) : -1;  // −1: no visible key (NaN output)

  float q[16], o[16];
  if (row_ok) {
    const In* qrow = qkv + (std::size_t(b) * Tn + i) * 3 * C + std::size_t(h) * 3 * HD;
    const R* cs = rope_cos + std::size_t(pos) * (rot / 2);
    const R* sn = rope_sin + std::size_t(pos) * (rot / 2);
#pragma unroll
    for (int mm = 0; mm < 4; ++mm)
#pragma unroll
      for (int c = 0; c < 4; ++c) q[4 * mm + c] = cached_rotated(qrow, 4 * (s + TPR * mm) + c, rot, cs, sn);
  } else {
#pragma unroll
    for (int e = 0; e < 16; ++e) q[e] = 0.0f;
  }
#pragma unroll
  for (int e = 0; e < 16; ++e) o[e] = 0.0f;
  float m = -INFINITY, l = 0.0f;

  // Keys 0 .. kend − 1: up to the block's last query's position, within the cache.
  long long kend = 0;
  if (s0 >= 0) {
    const long long last = s0 + (Tn < q0 + L::rows ? Tn : q0 + L::rows);
    kend = last < capacity ? last : capacity;
  }
  const std::size_t head = std::size_t(bh) * capacity * HD;
  for (int k0 = 0; k0 < kend; k0 += BC) {
    __syncthreads();  // everyone is done with the previous tile
    attention_load_tile<HD, L::threads, BC>(Ks, k_cache + head, HD, k0, int(kend));
    attention_load_tile<HD, L::threads, BC>(Vs, v_cache + head, HD, k0, int(kend));
    __syncthreads();

    float sc[BC];
    float mt = -INFINITY;
#pragma unroll
    for (int jj = 0; jj < BC; ++jj) {
      const float x = attention_row_sum<TPR>(attention_dot<TPR>(q, Ks + jj * HD, s)) * scale;
      sc[jj] = k0 + jj <= pos ? x : -INFINITY;
      mt = fmaxf(mt, sc[jj]);
    }
    const float mn = fmaxf(m, mt);
    const float ref = mn == -INFINITY ? 0.0f : mn;  // no visible key yet: exp(−∞ − 0) = 0, no NaN
    const float alpha = expf(m - ref);
    l *= alpha;
#pragma unroll
    for (int e = 0; e < 16; ++e) o[e] *= alpha;
#pragma unroll
    for (int jj = 0; jj < BC; ++jj) {
      const float pj = expf(sc[jj] - ref);
      l += pj;
      attention_axpy<TPR>(o, pj, Vs + jj * HD, s);
    }
    m = mn;
  }

  const float inv = l > 0.0f ? 1.0f / l : NAN;  // l = 0 only for rows outside the cache
#pragma unroll
  for (int e = 0; e < 16; ++e) o[e] *= inv;
  attention_store_rows<HD>(out + std::size_t(b) * Tn * C + std::size_t(h) * HD, std::size_t(C), Ks, o, q0, Tn, 0,
                           nullptr, nullptr);
}

}  // namespace cuda

// Generation's attention (see the top of this file): writes the rotated k
// and the v of the B·Tn new tokens into k_cache / v_cache [B, H, capacity,
// hd] (T = float; both 16-byte aligned) at positions start[b] + t,
// then out [B·Tn, C] (O: T or bf16) from qkv [B·Tn, 3C] (In: T or bf16).
// start: B device ints. rope_cos / rope_sin: [n_ctx, rot/2] device tables
// with n_ctx ≥ capacity (unused when rot = 0). hd = C / H = 16, 32, 64 or
// 128; HeadDim as in attention_forward (0: chosen at run time). P is the
// model's matmul precision, accepted for the seam's uniformity: the math is
// fp32 either way. Shapes are checked on the host (doremi::Error); start is
// not (device memory): see the top of the file for positions out of range.
template <MatmulPrecision P = MatmulPrecision::native, int HeadDim = 0, class T, class O, class In>
void attention_cached(const Cuda& be, O* out, const In* qkv, T* k_cache, T* v_cache, const std::int32_t* start,
                      const T* rope_cos, const T* rope_sin, int B, int Tn, int C, int H, int rot, int capacity) {
  using Tp = cuda::plain_t<T>;
  using Op = cuda::plain_t<O>;
  using Ip = cuda::plain_t<In>;
  static_assert(std::is_same_v<Tp, float>, "attention_cached (cuda): a float cache (the models' scalar type)");
  static_assert(std::is_same_v<Op, Tp> || std::is_same_v<Op, __nv_bfloat16>,
                "attention_cached (cuda): out of the cache's type or bf16");
  static_assert(std::is_same_v<Ip, Tp> || std::is_same_v<Ip, __nv_bfloat16>,
                "attention_cached (cuda): qkv of the cache's type or bf16");
  const int hd = cuda::attention_check(B, Tn, C, H, rot);
  if (capacity <= 0) fail("attention_cached (cuda): cache capacity = {} must be positive", capacity);
  if (Tn > capacity)
    fail("attention_cached (cuda): {} new tokens per row do not fit a cache of {} positions", Tn, capacity);
  if (static_cast<long long>(B) * Tn > 0x7fffffffLL)
    fail("attention_cached (cuda): B·Tn = {}·{} is too large", B, Tn);
  if (reinterpret_cast<std::uintptr_t>(k_cache) % 16 != 0 || reinterpret_cast<std::uintptr_t>(v_cache) % 16 != 0)
    fail("attention_cached (cuda): k_cache and v_cache must be 16-byte aligned (the kernels read 16-byte slices)");
  const float scale = 1.0f / std::sqrt(float(hd));
  Tp* const kc = k_cache;
  Tp* const vc = v_cache;
  cuda::dispatch_head_dim<HeadDim>(hd, [&](auto hdc) {
    constexpr int HD = decltype(hdc)::value;
    const unsigned rows = unsigned(B) * unsigned(Tn);
    DOREMI_CUDA_LAUNCH(rows, 128, 0, be.stream(), cuda::attention_cache_write_kernel<HD, Tp, Ip, Tp>)(
        kc, vc, qkv, start, rope_cos, rope_sin, Tn, C, H, rot, capacity);
    DOREMI_CUDA_CHECK_LAUNCH("attention_cache_write_kernel");
    const unsigned bh = unsigned(B) * unsigned(H);
    if (Tn < cuda::attention_cached_tiled_from) {
      using S = cuda::CachedDecodeShape<HD>;
      DOREMI_CUDA_LAUNCH(dim3(bh, unsigned(Tn)), S::threads, 0, be.stream(),
                         cuda::attention_cached_decode_kernel<HD, Op, Tp, Ip, Tp>)(
          out, qkv, static_cast<const Tp*>(kc), static_cast<const Tp*>(vc), start, rope_cos, rope_sin, Tn, C, H, rot,
          capacity, scale);
      DOREMI_CUDA_CHECK_LAUNCH("attention_cached_decode_kernel");
    } else {
      using L = cuda::AttentionTiles<HD>;
      DOREMI_CUDA_LAUNCH(dim3(bh, unsigned((Tn + L::rows - 1) / L::rows)), L::threads, 0, be.stream(),
                         cuda::attention_cached_tiled_kernel<HD, Op, Tp, Ip, Tp>)(
          out, qkv, static_cast<const Tp*>(kc), static_cast<const Tp*>(vc), start, rope_cos, rope_sin, Tn, C, H, rot,
          capacity, scale);
      DOREMI_CUDA_CHECK_LAUNCH("attention_cached_tiled_kernel");
    }
  });
}

}  // namespace doremi::backend
