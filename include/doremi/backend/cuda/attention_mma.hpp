#pragma once
// Register-resident tensor-core causal attention (FlashAttention-2 style):
// the kernels of the MatmulPrecision::bf16 path built on mma.sync m16n8k16
// (mma.hpp), with the same inputs, outputs, layouts and semantics as the
// kernels of attention.hpp and attention_tc.hpp (read attention.hpp's comment
// first). Unlike the WMMA kernels, whose fragment layout is opaque, these keep
// scores, probabilities and every accumulator in registers (a score tile is a
// set of m16n8 accumulators whose element-to-lane map the PTX ISA fixes).
// Deterministic: fixed summation orders, no atomics (dQ has its own kernel).
// Tiles, pipelining and scaling: docs/cuda-performance.md, "Attention kernels".
//
// No launches here (attention.hpp launches them): this header builds with
// nvcc and, with DOREMI_CUDA_EMULATE, with the host compiler under the tests'
// CPU emulator (tests/cuda_emu), which is how they are tested without a GPU.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>

#include "doremi/backend/cuda/mma.hpp"
#include "doremi/backend/elementwise.hpp"

namespace doremi::backend::cuda {

// The kernels' tiling: a block owns ROWS rows (queries; keys for dK/dV) in
// warps of 16·MT rows (one MT per kernel). The defaults are the library's;
// the kernels are generic in them (benchmarks/bench_gpu_step.cu times others).
template <int HD, int ROWS = 64, int FWD_MT = (HD <= 64 ? 2 : 1), int DQ_MT = 2, int DKV_MT = (HD <= 64 ? 2 : 1)>
struct AttentionMmaTiles {
  static_assert(HD == 16 || HD == 32 || HD == 64 || HD == 128, "attention (mma): hd 16, 32, 64 or 128");
  static_assert(ROWS % (16 * FWD_MT) == 0 && ROWS % (16 * DQ_MT) == 0 && ROWS % (16 * DKV_MT) == 0,
                "attention (mma): a block's rows must split into whole warps");
  static constexpr int hd = HD;
  static constexpr int rows = ROWS;             // rows a block owns
  static constexpr int bn = HD <= 64 ? 64 : 32; // rows of a streamed tile
  static constexpr int dkv_mt = DKV_MT;         // the dK/dV kernel's 16-row (key) tiles per warp
  static constexpr int dkv_qc = bn < 32 ? bn : 32;  // and the queries it takes at a time
  static constexpr int dkv_threads = 32 * rows / (16 * dkv_mt);
  static constexpr int fwd_mt = FWD_MT;         // the forward's 16-row tiles per warp
  static constexpr int fwd_threads = 32 * rows / (16 * fwd_mt);
  static constexpr int dq_mt = DQ_MT;           // the dQ kernel's 16-row tiles per warp
  static constexpr int dq_threads = 32 * rows / (16 * dq_mt);
  static constexpr int ldh = HD + 8;            // bf16 pitch of every tile
  static constexpr int ldo = HD + 4;            // float pitch of the output stage
  static constexpr std::size_t own_bytes = std::size_t(rows) * ldh * 2;  // one [rows][hd] tile
  static constexpr std::size_t bn_bytes = std::size_t(bn) * ldh * 2;     // one [BN][hd] tile
  static constexpr std::size_t stage_bytes = std::size_t(rows) * ldo * 4;
  // Q | (K V) ×2, and two own | (two streamed) ×2 | (lse D) ×2.
  static constexpr std::size_t fwd_bytes = own_bytes + 4 * bn_bytes;
  static constexpr std::size_t bwd_bytes = 2 * own_bytes + 4 * bn_bytes + 2 * 2 * 4 * bn;
  static_assert(stage_bytes <= 2 * own_bytes, "attention (mma): the output stage must fit");
  static_assert(own_bytes % 16 == 0 && bn_bytes % 16 == 0);
};

namespace attention_mma {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ int lane_id() { return int(threadIdx.x) % 32; }

// dst[r·(HD + 8) + d] = bf16(src row (row0 + r), column d) for r < ROWS, zero
// rows at and past Tn. src points at row 0, rows ld apart. Block-wide; the
// tile is complete after every thread's mma::cp_async_wait_all and a barrier.
template <int HD, int ROWS, class T>
__device__ __forceinline__ void load_tile(bf16* dst, const T* src, std::size_t ld, int row0, int Tn) {
  constexpr int LDH = HD + 8, Q4 = HD / 4;
  if constexpr (std::is_same_v<T, bf16>) {  // 16-byte cp.async (8 values) where every row start is 16-byte aligned
    if ((reinterpret_cast<std::uintptr_t>(src) & 15u) == 0 && ld % 8 == 0) {
      constexpr int Q8 = HD / 8;
#pragma unroll 1
      for (int idx = int(threadIdx.x); idx < ROWS * Q8; idx += int(blockDim.x)) {
        const int r = idx / Q8, d = 8 * (idx % Q8);
        if (row0 + r < Tn)
          mma::cp_async<16>(dst + r * LDH + d, src + std::size_t(row0 + r) * ld + d);
        else
          *reinterpret_cast<uint4*>(dst + r * LDH + d) = uint4{0u, 0u, 0u, 0u};
      }
      return;
    }
  }
  bool vec = false;  // float4 loads where every row start is 16-byte aligned
  if constexpr (std::is_same_v<T, float>) vec = (reinterpret_cast<std::uintptr_t>(src) & 15u) == 0 && ld % 4 == 0;
  for (int idx = int(threadIdx.x); idx < ROWS * Q4; idx += int(blockDim.x)) {
    const int r = idx / Q4, d = 4 * (idx % Q4);
    float x[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (row0 + r < Tn) {
      const T* p = src + std::size_t(row0 + r) * ld + d;
      if constexpr (std::is_same_v<T, float>) {
        if (vec) {
          const float4 v = *reinterpret_cast<const float4*>(p);
          x[0] = v.x, x[1] = v.y, x[2] = v.z, x[3] = v.w;
        } else {
          for (int c = 0; c < 4; ++c) x[c] = p[c];
        }
      } else {
        for (int c = 0; c < 4; ++c) x[c] = float(p[c]);
      }
    }
    auto* q = reinterpret_cast<std::uint32_t*>(dst + r * LDH + d);
    q[0] = mma::pack_bf16(x[0], x[1]);
    q[1] = mma::pack_bf16(x[2], x[3]);
  }
}

// Writes rows row0 .. row0 + ROWS − 1 (those < Tn) of the float stage
// [ROWS][LDO] to dst (row 0 at dst, rows ld apart) as T, the first `rot` dims
// rotated back by the angle of position t = row (rot = 0: a plain store).
// Block-wide (also the fp32 kernels' store, attention.hpp).
template <int HD, int ROWS = 64, int LDO = HD + 4, class T>
__device__ __forceinline__ void store_rows(T* dst, std::size_t ld, const float* stage, int row0, int Tn, int rot,
                                           const float* rope_cos, const float* rope_sin) {
  const int half = rot / 2;
  for (int idx = int(threadIdx.x); idx < ROWS * HD; idx += int(blockDim.x)) {
    const int rr = idx / HD, d = idx % HD, t = row0 + rr;
    if (t >= Tn) continue;
    float v = stage[rr * LDO + d];
    if (d < rot) {
      const int p = d < half ? d : d - half;
      float x1 = stage[rr * LDO + p], x2 = stage[rr * LDO + p + half];
      const std::size_t a = std::size_t(t) * half + p;
      rotate_back(x1, x2, rope_cos[a], rope_sin[a]);
      v = d < half ? x1 : x2;
    }
    dst[std::size_t(t) * ld + d] = T(v);
  }
}

// A fragment (16×16) at (row0, col0) of a row-major bf16 tile.
__device__ __forceinline__ void load_a(std::uint32_t (&a)[4], const bf16* tile, int ld, int row0, int col0) {
  const int l = lane_id();
  mma::ldmatrix_x4(a, tile + (row0 + l % 16) * ld + col0 + 8 * (l / 16));
}

// B fragments of two n8 tiles for B[k][n] = M[n0 + n][k0 + k], M a row-major
// bf16 tile (rows n): b[0], b[1] for columns n0 .. n0 + 7, b[2], b[3] for n0 + 8 .. n0 + 15.
__device__ __forceinline__ void load_b_rows(std::uint32_t (&b)[4], const bf16* tile, int ld, int n0, int k0) {
  const int l = lane_id();
  mma::ldmatrix_x4(b, tile + (n0 + l % 8 + 8 * (l / 16)) * ld + k0 + 8 * ((l / 8) % 2));
}

// The same for B[k][n] = M[k0 + k][n0 + n] (M's rows are k: ldmatrix .trans).
__device__ __forceinline__ void load_b_cols(std::uint32_t (&b)[4], const bf16* tile, int ld, int k0, int n0) {
  const int l = lane_id();
  mma::ldmatrix_x4_trans(b, tile + (k0 + l % 8 + 8 * ((l / 8) % 2)) * ld + n0 + 8 * (l / 16));
}

// One k block of warp_abt below: a = the row tiles' A fragments for
// columns 16kk .. 16kk + 15.
template <int HD, int MT, int NT>
__device__ __forceinline__ void abt_step(float (&acc)[MT][NT][4], const std::uint32_t (&a)[MT][4], const bf16* Bm,
                                         int kk, int np_end) {
#pragma unroll
  for (int np = 0; np < NT / 2; ++np) {
    if (np < np_end) {
      std::uint32_t b[4];
      load_b_rows(b, Bm, HD + 8, 16 * np, 16 * kk);
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        mma::mma_bf16_16816(acc[m][2 * np], a[m], b[0], b[1]);
        mma::mma_bf16_16816(acc[m][2 * np + 1], a[m], b[2], b[3]);
      }
    }
  }
}
// acc = 0 (MT tiles of NT accumulators).
template <int MT, int NT>
__device__ __forceinline__ void zero(float (&acc)[MT][NT][4]) {
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int n = 0; n < NT; ++n) acc[m][n][0] = acc[m][n][1] = acc[m][n][2] = acc[m][n][3] = 0.0f;
}
// acc[m][n] = (A·Bᵀ)[16 rows, 8n .. 8n + 7] of row tile m for the n8 tiles
// of the first 16·np_end columns (the rest are left 0): A = rows
// a_row0 + 16m .. + 15 of tile A (k = its HD columns), B's rows from tile Bm
// (rows = columns of the result). Each B fragment loaded serves the MT row
// tiles (shared-memory reads per product fall as MT grows).
template <int HD, int MT, int NT>
__device__ __forceinline__ void warp_abt(float (&acc)[MT][NT][4], const bf16* A, int a_row0, const bf16* Bm,
                                         int np_end) {
  zero(acc);
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) {
    std::uint32_t a[MT][4];
#pragma unroll
    for (int m = 0; m < MT; ++m) load_a(a[m], A, HD + 8, a_row0 + 16 * m, 16 * kk);
    abt_step<HD>(acc, a, Bm, kk, np_end);
  }
}
// The same with A's fragments kept in registers: a[kk][m] for k block kk of row tile m.
template <int HD, int MT, int NT>
__device__ __forceinline__ void warp_abt(float (&acc)[MT][NT][4], const std::uint32_t (&a)[HD / 16][MT][4],
                                         const bf16* Bm, int np_end) {
  zero(acc);
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) abt_step<HD>(acc, a[kk], Bm, kk, np_end);
}

// out[m][n] += (P·M)[16 rows, 8n .. 8n + 7] of row tile m over all HD
// columns of M, with P given as accumulators p[MT][NT][4] (16 rows × 8·NT
// columns = the k of the product; k blocks from kb_begin to kb_end − 1, 16
// wide, the rest skipped) and M a row-major bf16 tile with rows k.
template <int HD, int MT, int NT>
__device__ __forceinline__ void warp_pm(float (&out)[MT][HD / 8][4], const float (&p)[MT][NT][4], const bf16* M,
                                        int kb_begin, int kb_end) {
  constexpr int LDH = HD + 8;
#pragma unroll
  for (int kb = 0; kb < NT / 2; ++kb) {
    if (kb >= kb_begin && kb < kb_end) {
      std::uint32_t a[MT][4];
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        a[m][0] = mma::pack_bf16(p[m][2 * kb][0], p[m][2 * kb][1]);
        a[m][1] = mma::pack_bf16(p[m][2 * kb][2], p[m][2 * kb][3]);
        a[m][2] = mma::pack_bf16(p[m][2 * kb + 1][0], p[m][2 * kb + 1][1]);
        a[m][3] = mma::pack_bf16(p[m][2 * kb + 1][2], p[m][2 * kb + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < HD / 16; ++dp) {
        std::uint32_t b[4];
        load_b_cols(b, M, LDH, 16 * kb, 16 * dp);
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          mma::mma_bf16_16816(out[m][2 * dp], a[m], b[0], b[1]);
          mma::mma_bf16_16816(out[m][2 * dp + 1], a[m], b[2], b[3]);
        }
      }
    }
  }
}

// Sets the hidden entries of a score tile s (the warp's rows; this lane's
// two are `rows`, its columns col0 + 8n + 2t + e % 2) to −∞: columns at or
// past Tn, and keys after their query (rows queries and columns keys; with
// Transposed, rows keys and columns queries).
template <bool Transposed, int NT>
__device__ __forceinline__ void mask_hidden(float (&s)[NT][4], int col0, const int (&rows)[2], int Tn) {
  const int t = lane_id() % 4;
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = col0 + 8 * n + 2 * t + e % 2, r = rows[e / 2];
      if ((Transposed ? r > c : c > r) || c >= Tn) s[n][e] = -INFINITY;
    }
}

// Max or sum over the 4 lanes of a quad (the lanes holding one row).
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// The warp's accumulators acc[MT][HD/8][4] (rows wr .. wr + 16·MT − 1),
// times `scale`, into the float stage [rows][HD + 4].
template <int HD, int MT>
__device__ __forceinline__ void stage_rows(float* stage, const float (&acc)[MT][HD / 8][4], int wr,
                                           float scale = 1.0f) {
  constexpr int LDO = HD + 4;
  const int g = lane_id() / 4, t = lane_id() % 4;
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int n = 0; n < HD / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        stage[(wr + 16 * m + g + 8 * (e / 2)) * LDO + 8 * n + 2 * t + e % 2] = acc[m][n][e] * scale;
}

}  // namespace attention_mma

// Forward. Grid (B·H, query tiles), L::fwd_threads threads: each warp owns
// 16·L::fwd_mt query rows, so every K and V fragment read from shared memory
// serves fwd_mt row tiles. The longest (last) query tiles start first.
// scale_log2 = log2(e)/√hd.
// Long on purpose: one kernel whose tiles and accumulators stay in registers
// across its phases; device functions would have to pass them all.
template <class L, class T, class In = T>
__global__ void __launch_bounds__(L::fwd_threads)
    attention_mma_forward_kernel(T* out, float* lse, const In* qkvr, int Tn, int C, int H, float scale_log2) {
  using namespace attention_mma;
  constexpr int HD = L::hd, ROWS = L::rows;
  constexpr int BN = L::bn, NT = BN / 8, MT = L::fwd_mt;
  unsigned char* const sm = mma::dynamic_smem();
  bf16* const Qs = reinterpret_cast<bf16*>(sm);
  auto Ks = [&](int buf) { return reinterpret_cast<bf16*>(sm + L::own_bytes + buf * 2 * L::bn_bytes); };
  auto Vs = [&](int buf) { return reinterpret_cast<bf16*>(sm + L::own_bytes + (buf * 2 + 1) * L::bn_bytes); };

  const int bh = int(blockIdx.x), b = bh / H, h = bh % H;
  const int q0 = int(gridDim.y - 1 - blockIdx.y) * ROWS;
  const int warp = int(threadIdx.x) / 32, wr = 16 * MT * warp, g = lane_id() / 4, t = lane_id() % 4;
  const int last = q0 + wr + 16 * MT - 1;  // the warp's last query
  int rows[MT][2];                          // this lane's two query rows in each row tile
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) rows[mt][0] = q0 + wr + 16 * mt + g, rows[mt][1] = rows[mt][0] + 8;
  const std::size_t ld = std::size_t(3) * C;
  const In* base = qkvr + std::size_t(b) * Tn * ld + std::size_t(h) * 3 * HD;  // q of row 0; k at +HD, v at +2HD
  auto load_kv = [&](int buf, int k0) {
    load_tile<HD, BN>(Ks(buf), base + HD, ld, k0, Tn);
    load_tile<HD, BN>(Vs(buf), base + 2 * HD, ld, k0, Tn);
  };

  load_tile<HD, ROWS>(Qs, base, ld, q0, Tn);
  load_kv(0, 0);
  float o[MT][HD / 8][4];
  zero(o);
  // Per row: running max (score units; −∞ until a key is seen) and sum.
  float m[MT][2], l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) m[mt][0] = m[mt][1] = -INFINITY, l[mt][0] = l[mt][1] = 0.0f;

  // The warp's Q fragments stay in registers (Q is read from shared memory once).
  mma::cp_async_wait_all();
  __syncthreads();
  std::uint32_t qa[HD / 16][MT][4];
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) load_a(qa[kk][mt], Qs, L::ldh, wr + 16 * mt, 16 * kk);

  const int kend = Tn < q0 + ROWS ? Tn : q0 + ROWS;
  for (int k0 = 0, buf = 0; k0 < kend; k0 += BN, buf ^= 1) {
    mma::cp_async_wait_all();
    __syncthreads();  // tile k0 is in; every warp is done with the other buffers (tile k0 − BN)
    if (k0 + BN < kend) load_kv(buf ^ 1, k0 + BN);
    if (k0 > last) continue;  // every key of the tile is masked for the warp's rows (warp-uniform)
    // 16-key blocks with a key visible to some row of the warp.
    const int kb_end = (last - k0) / 16 + 1;

    float s[MT][NT][4];
    warp_abt<HD>(s, qa, Ks(buf), kb_end);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      // Masks only where the tile crosses the row tile's diagonal or the end (warp-uniform).
      if (k0 + BN - 1 > q0 + wr + 16 * mt || k0 + BN > Tn) mask_hidden<false>(s[mt], k0, rows[mt], Tn);
      float mt_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) mt_max[e / 2] = fmaxf(mt_max[e / 2], s[mt][n][e]);
      float alpha[2], ref[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float mn = fmaxf(m[mt][r], quad_max(mt_max[r]));
        // mn = −∞ only while a row has seen no visible key (never: key 0 is in
        // the first tile); a reference of 0 then keeps exp2(−∞) = 0, no NaN.
        ref[r] = mn == -INFINITY ? 0.0f : mn * scale_log2;
        alpha[r] = mma::exp2_approx(m[mt][r] * scale_log2 - ref[r]);  // 0 on the first tile (m = −∞)
        m[mt][r] = mn;
      }
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[mt][n][e] = mma::exp2_approx(fmaf(s[mt][n][e], scale_log2, -ref[e / 2]));
          sum[e / 2] += s[mt][n][e];
        }
#pragma unroll
      for (int r = 0; r < 2; ++r) l[mt][r] = l[mt][r] * alpha[r] + quad_sum(sum[r]);
#pragma unroll
      for (int n = 0; n < HD / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[mt][n][e] *= alpha[e / 2];
    }
    warp_pm<HD>(o, s, Vs(buf), 0, kb_end);
  }

  // O / l and lse = (m·scale·log2(e) + log2 l)·ln 2, straight from registers (a quad writes 8 consecutive values of a row).
  T* const obase = out + std::size_t(b) * Tn * C + std::size_t(h) * HD;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int i = rows[mt][r];
      if (i >= Tn) continue;
      const float inv = l[mt][r] > 0.0f ? 1.0f / l[mt][r] : 0.0f;
#pragma unroll
      for (int n = 0; n < HD / 8; ++n)
#pragma unroll
        for (int e = 0; e < 2; ++e) obase[std::size_t(i) * C + 8 * n + 2 * t + e] = T(o[mt][n][2 * r + e] * inv);
      if (t == 0) lse[std::size_t(bh) * Tn + i] = (m[mt][r] * scale_log2 + log2f(l[mt][r])) * 0.69314718055994531f;
    }
}

// dK, dV. Grid (B·H, key tiles), L::dkv_threads threads: each warp owns
// 16·L::dkv_mt keys and takes a streamed query tile L::dkv_qc queries at a
// time (so that the accumulators of its row tiles fit in registers); the
// first key tiles (which see the most queries) start first. Overwrites the k
// and v parts of dqkv. Dv: the row dots D of attention.hpp. scale = 1/√hd,
// scale_log2 = scale·log2(e).
// Long on purpose: one kernel whose tiles and accumulators stay in registers
// across its phases; device functions would have to pass them all.
template <class L, class T, class In = T>
__global__ void __launch_bounds__(L::dkv_threads)
    attention_mma_backward_dkv_kernel(T* dqkv, const In* dout, const In* qkvr, const float* lse, const float* Dv,
                                      const float* rope_cos, const float* rope_sin, int Tn, int C, int H, int rot,
                                      float scale, float scale_log2) {
  using namespace attention_mma;
  constexpr int HD = L::hd, ROWS = L::rows;
  constexpr int BN = L::bn, MT = L::dkv_mt, QC = L::dkv_qc, NQ = QC / 8, LDH = L::ldh;
  constexpr float log2e = 1.4426950408889634f;
  unsigned char* const sm = mma::dynamic_smem();
  bf16* const Ks = reinterpret_cast<bf16*>(sm);
  bf16* const Vs = reinterpret_cast<bf16*>(sm + L::own_bytes);
  auto Qs = [&](int buf) { return reinterpret_cast<bf16*>(sm + 2 * L::own_bytes + buf * 2 * L::bn_bytes); };
  auto dOs = [&](int buf) { return reinterpret_cast<bf16*>(sm + 2 * L::own_bytes + (buf * 2 + 1) * L::bn_bytes); };
  auto lse_s = [&](int buf) { return reinterpret_cast<float*>(sm + 2 * L::own_bytes + 4 * L::bn_bytes) + buf * 2 * BN; };
  auto D_s = [&](int buf) { return lse_s(buf) + BN; };

  const int bh = int(blockIdx.x), b = bh / H, h = bh % H;
  const int k0 = int(blockIdx.y) * ROWS;
  const int warp = int(threadIdx.x) / 32, wr = 16 * MT * warp, g = lane_id() / 4, t = lane_id() % 4;
  const int first = k0 + wr;  // the warp's first key
  int keys[MT][2];            // this lane's two key rows in each row tile
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) keys[mt][0] = first + 16 * mt + g, keys[mt][1] = keys[mt][0] + 8;
  const std::size_t ld = std::size_t(3) * C;
  const In* base = qkvr + std::size_t(b) * Tn * ld + std::size_t(h) * 3 * HD;
  const In* dO_base = dout + std::size_t(b) * Tn * C + std::size_t(h) * HD;
  auto load_q = [&](int buf, int i0) {  // Q, dO, lse and D of the queries i0 .. i0 + BN − 1
    load_tile<HD, BN>(Qs(buf), base, ld, i0, Tn);
    load_tile<HD, BN>(dOs(buf), dO_base, std::size_t(C), i0, Tn);
    for (int ii = int(threadIdx.x); ii < BN; ii += int(blockDim.x)) {
      if (i0 + ii < Tn) {
        mma::cp_async<4>(lse_s(buf) + ii, lse + std::size_t(bh) * Tn + i0 + ii);
        mma::cp_async<4>(D_s(buf) + ii, Dv + std::size_t(bh) * Tn + i0 + ii);
      } else {
        lse_s(buf)[ii] = D_s(buf)[ii] = 0.0f;
      }
    }
  };

  load_tile<HD, ROWS>(Ks, base + HD, ld, k0, Tn);
  load_tile<HD, ROWS>(Vs, base + 2 * HD, ld, k0, Tn);
  load_q(0, k0);
  float dk[MT][HD / 8][4], dv[MT][HD / 8][4];
  zero(dk);
  zero(dv);

  for (int i0 = k0, buf = 0; i0 < Tn; i0 += BN, buf ^= 1) {  // queries before k0 see none of the block's keys
    mma::cp_async_wait_all();
    __syncthreads();  // tile i0 is in; every warp is done with the other buffers (tile i0 − BN)
    if (i0 + BN < Tn) load_q(buf ^ 1, i0 + BN);
#pragma unroll
    for (int c0 = 0; c0 < BN; c0 += QC) {  // the queries ic .. ic + QC − 1 of the tile
      const int ic = i0 + c0;
      if (ic + QC <= first) continue;  // every query of the chunk precedes the warp's keys (warp-uniform)
      // 16-query blocks before qb_begin see none of the warp's keys.
      const int qb_begin = first > ic ? (first - ic) / 16 : 0;
      const bf16* const Q = Qs(buf) + c0 * LDH;
      const bf16* const dO = dOs(buf) + c0 * LDH;
      const float* const ls = lse_s(buf) + c0;
      const float* const Ds = D_s(buf) + c0;

      float st[MT][NQ][4], dpt[MT][NQ][4];
      warp_abt<HD>(st, Ks, wr, Q, NQ / 2);   // Sᵀ = K·Qᵀ (blocks before qb_begin: computed, then masked)
      warp_abt<HD>(dpt, Vs, wr, dO, NQ / 2); // dPᵀ = V·dOᵀ
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        // Masks only where the chunk crosses the row tile's diagonal or the end (warp-uniform).
        if (ic < first + 16 * mt + 15 || ic + QC > Tn) mask_hidden<true>(st[mt], ic, keys[mt], Tn);
#pragma unroll
        for (int n = 0; n < NQ; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int c = 8 * n + 2 * t + e % 2;
            const float p = mma::exp2_approx(fmaf(st[mt][n][e], scale_log2, -ls[c] * log2e));
            st[mt][n][e] = p;                              // Pᵀ
            dpt[mt][n][e] = p * (dpt[mt][n][e] - Ds[c]);  // dSᵀ·√hd
          }
      }
      warp_pm<HD>(dv, st, dO, qb_begin, NQ / 2);  // dV += Pᵀ·dO
      warp_pm<HD>(dk, dpt, Q, qb_begin, NQ / 2);  // dK·√hd += dSᵀ·√hd·Q
    }
  }

  T* const dbase = dqkv + std::size_t(b) * Tn * ld + std::size_t(h) * 3 * HD;
  float* const stage = reinterpret_cast<float*>(sm);  // [ROWS][hd + 4], over K and V (no copy is in flight)
  __syncthreads();
  stage_rows<HD>(stage, dk, wr, scale);
  __syncthreads();
  store_rows<HD, ROWS>(dbase + HD, ld, stage, k0, Tn, rot, rope_cos, rope_sin);
  __syncthreads();
  stage_rows<HD>(stage, dv, wr);
  __syncthreads();
  store_rows<HD, ROWS>(dbase + 2 * HD, ld, stage, k0, Tn, 0, rope_cos, rope_sin);
}

// dQ. Grid (B·H, query tiles), L::dq_threads threads (16·L::dq_mt query
// rows per warp, as the forward); the longest (last) query tiles start
// first. Overwrites the q part of dqkv.
template <class L, class T, class In = T>
__global__ void __launch_bounds__(L::dq_threads)
    attention_mma_backward_dq_kernel(T* dqkv, const In* dout, const In* qkvr, const float* lse, const float* Dv,
                                     const float* rope_cos, const float* rope_sin, int Tn, int C, int H, int rot,
                                     float scale, float scale_log2) {
  using namespace attention_mma;
  constexpr int HD = L::hd, ROWS = L::rows;
  constexpr int BN = L::bn, NT = BN / 8, MT = L::dq_mt;
  constexpr float log2e = 1.4426950408889634f;
  unsigned char* const sm = mma::dynamic_smem();
  bf16* const Qs = reinterpret_cast<bf16*>(sm);
  bf16* const dOs = reinterpret_cast<bf16*>(sm + L::own_bytes);
  auto Ks = [&](int buf) { return reinterpret_cast<bf16*>(sm + 2 * L::own_bytes + buf * 2 * L::bn_bytes); };
  auto Vs = [&](int buf) { return reinterpret_cast<bf16*>(sm + 2 * L::own_bytes + (buf * 2 + 1) * L::bn_bytes); };

  const int bh = int(blockIdx.x), b = bh / H, h = bh % H;
  const int q0 = int(gridDim.y - 1 - blockIdx.y) * ROWS;
  const int warp = int(threadIdx.x) / 32, wr = 16 * MT * warp, g = lane_id() / 4;
  const int last = q0 + wr + 16 * MT - 1;
  int rows[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) rows[mt][0] = q0 + wr + 16 * mt + g, rows[mt][1] = rows[mt][0] + 8;
  const std::size_t ld = std::size_t(3) * C;
  const In* base = qkvr + std::size_t(b) * Tn * ld + std::size_t(h) * 3 * HD;
  auto load_kv = [&](int buf, int k0) {
    load_tile<HD, BN>(Ks(buf), base + HD, ld, k0, Tn);
    load_tile<HD, BN>(Vs(buf), base + 2 * HD, ld, k0, Tn);
  };

  load_tile<HD, ROWS>(Qs, base, ld, q0, Tn);
  load_tile<HD, ROWS>(dOs, dout + std::size_t(b) * Tn * C + std::size_t(h) * HD, std::size_t(C), q0, Tn);
  load_kv(0, 0);
  float lse_r[MT][2], D_r[MT][2];  // lse·log2(e) and D of the lane's rows (0 past the end: their dS is 0)
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const bool in = rows[mt][r] < Tn;
      lse_r[mt][r] = in ? lse[std::size_t(bh) * Tn + rows[mt][r]] * log2e : 0.0f;
      D_r[mt][r] = in ? Dv[std::size_t(bh) * Tn + rows[mt][r]] : 0.0f;
    }
  float dq[MT][HD / 8][4];
  zero(dq);

  const int kend = Tn < q0 + ROWS ? Tn : q0 + ROWS;
  for (int k0 = 0, buf = 0; k0 < kend; k0 += BN, buf ^= 1) {
    mma::cp_async_wait_all();
    __syncthreads();  // tile k0 is in; every warp is done with the other buffers (tile k0 − BN)
    if (k0 + BN < kend) load_kv(buf ^ 1, k0 + BN);
    if (k0 > last) continue;
    const int kb_end = (last - k0) / 16 + 1;

    float s[MT][NT][4], dp[MT][NT][4];
    warp_abt<HD>(s, Qs, wr, Ks(buf), kb_end);   // S = Q·Kᵀ
    warp_abt<HD>(dp, dOs, wr, Vs(buf), kb_end); // dP = dO·Vᵀ
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      // Masks only where the tile crosses the row tile's diagonal or the end (warp-uniform).
      if (k0 + BN - 1 > q0 + wr + 16 * mt || k0 + BN > Tn) mask_hidden<false>(s[mt], k0, rows[mt], Tn);
      // Rows past the end: Q, dO, lse and D are 0 there, so dS = 1·(0 − 0) = 0.
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e / 2;
          const float p = mma::exp2_approx(fmaf(s[mt][n][e], scale_log2, -lse_r[mt][r]));
          s[mt][n][e] = p * (dp[mt][n][e] - D_r[mt][r]);  // dS·√hd
        }
    }
    warp_pm<HD>(dq, s, Ks(buf), 0, kb_end);  // dQ·√hd += dS·√hd·K
  }

  float* const stage = reinterpret_cast<float*>(sm);  // over Q and dO (no copy is in flight)
  __syncthreads();
  stage_rows<HD>(stage, dq, wr, scale);
  __syncthreads();
  store_rows<HD, ROWS>(dqkv + std::size_t(b) * Tn * ld + std::size_t(h) * 3 * HD, ld, stage, q0, Tn, rot, rope_cos,
                       rope_sin);
}

}  // namespace doremi::backend::cuda
