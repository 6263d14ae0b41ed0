#pragma once
// Tensor-core causal attention: the MatmulPrecision::bf16 path of
// attention_forward / attention_backward (attention.hpp), same inputs,
// outputs, layouts and semantics as the fp32 kernels there (read that
// header's comment first). The matrix products run on tensor cores through
// nvcuda::wmma (16×16×16, bf16 operands, fp32 accumulation, sm_80+): Q, K, V
// and dO are rounded to bf16 when a tile is loaded into shared memory, and so
// are P and dS before the products that take them. Scores, the softmax
// statistics (max, sum, lse, D), every accumulator and all outputs stay fp32.
//
// Deterministic like the fp32 path: fixed summation orders, no atomics.
// Shared memory is dynamic and exceeds 48 KB (hd 64: up to 90,624 B; hd 128:
// up to 123,392 B): the caller checks the device's opt-in limit and keeps the
// fp32 kernels where the tiles do not fit. Block layout, per-row work and
// shared-memory budgets: docs/cuda-performance.md, "Attention kernels".
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <mma.h>

#include "doremi/backend/cuda/attention_mma.hpp"  // the tile load and store helpers
#include "doremi/backend/cuda/cuda.hpp"
#include "doremi/backend/elementwise.hpp"

namespace doremi::backend::cuda {

// The dynamic shared memory of the tensor-core kernels.
__device__ __forceinline__ unsigned char* attention_tc_smem() { return mma::dynamic_smem(); }

// ---- kernels (tensor cores) ----

template <int HD>
struct AttentionTcTiles {
  static_assert(HD == 16 || HD == 32 || HD == 64 || HD == 128, "attention (tensor cores): hd 16, 32, 64 or 128");
  static constexpr int rows = 64;      // rows a block owns (queries; keys for dK/dV), 16 per warp
  static constexpr int tile = 64;      // rows of a streamed tile (keys; queries for dK/dV)
  static constexpr int warps = 4;
  static constexpr int threads = 32 * warps;
  static constexpr int ldh = HD + 8;   // bf16 pitch of [64][hd] tiles (WMMA: multiple of 8; +8 staggers banks)
  static constexpr int lds = tile + 4; // float pitch of score tiles [64][64]
  static constexpr int ldp = tile + 8; // bf16 pitch of P / dS tiles
  static constexpr int ldo = HD + 4;   // float pitch of the O accumulator and of the output stage
  static constexpr std::size_t hbytes = std::size_t(64) * ldh * 2;
  static constexpr std::size_t sbytes = std::size_t(64) * lds * 4;
  static constexpr std::size_t pbytes = std::size_t(64) * ldp * 2;
  static constexpr std::size_t obytes = std::size_t(64) * ldo * 4;
  static constexpr std::size_t vbytes = std::size_t(64) * 4;  // one float per row (lse, D)
  static constexpr std::size_t fwd_bytes = 3 * hbytes + sbytes + pbytes + obytes;
  static constexpr std::size_t dkv_bytes = 4 * hbytes + 2 * sbytes + 2 * pbytes + 2 * vbytes;
  static constexpr std::size_t dq_bytes = 4 * hbytes + 2 * sbytes + pbytes + 2 * vbytes;
  // Every buffer starts 32-byte aligned (WMMA pointers must be 256-bit aligned).
  static_assert(hbytes % 32 == 0 && sbytes % 32 == 0 && pbytes % 32 == 0 && obytes % 32 == 0 && vbytes % 32 == 0);
  static_assert(obytes <= dkv_bytes && obytes <= dq_bytes, "attention (tensor cores): the output stage must fit");
};

// Forward. Grid (B·H, query tiles); the longest (last) query tiles start
// first. scale_log2 = log2(e)/√hd.
// Long on purpose: one kernel whose tiles and accumulators stay in registers
// across its phases; device functions would have to pass them all.
template <int HD, class T, class In = T>
__global__ void __launch_bounds__(128)
    attention_tc_forward_kernel(T* out, float* lse, const In* qkvr, int Tn, int C, int H, float scale_log2) {
  namespace wmma = nvcuda::wmma;
  using bf16 = __nv_bfloat16;
  using L = AttentionTcTiles<HD>;
  constexpr int LDH = L::ldh, LDS = L::lds, LDP = L::ldp, LDO = L::ldo, KS = HD / 16;
  unsigned char* const sm = attention_tc_smem();
  bf16* const Qs = reinterpret_cast<bf16*>(sm);
  bf16* const Ks = reinterpret_cast<bf16*>(sm + L::hbytes);
  bf16* const Vs = reinterpret_cast<bf16*>(sm + 2 * L::hbytes);
  float* const Ss = reinterpret_cast<float*>(sm + 3 * L::hbytes);
  bf16* const Ps = reinterpret_cast<bf16*>(sm + 3 * L::hbytes + L::sbytes);
  float* const Os = reinterpret_cast<float*>(sm + 3 * L::hbytes + L::sbytes + L::pbytes);

  const int bh = int(blockIdx.x), b = bh / H, h = bh % H;
  const int q0 = int(gridDim.y - 1 - blockIdx.y) * 64;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, wr = 16 * warp;
  const int sr = wr + lane / 2, odd = lane % 2;  // softmax: this lane's row; its columns 2·cc + odd
  const int i = q0 + sr;                                // ... the row's query
  const std::size_t ld = std::size_t(3) * C;
  const In* base = qkvr + std::size_t(b) * Tn * ld + std::size_t(h) * 3 * HD;  // q of row 0; k at +HD, v at +2HD

  attention_mma::load_tile<HD, 64>(Qs, base, ld, q0, Tn);
  mma::cp_async_wait_all();  // load_tile copies bf16 tiles with cp.async
  for (int e = lane; e < 16 * HD; e += 32) Os[(wr + e / HD) * LDO + e % HD] = 0.0f;  // the warp's own rows
  __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> qf[KS];
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) wmma::load_matrix_sync(qf[kk], Qs + wr * LDH + 16 * kk, LDH);

  float m = -INFINITY, l = 0.0f;  // the row's running max (log2 units) and sum; both lanes of a row keep them
  const int kend = Tn < q0 + 64 ? Tn : q0 + 64;
  for (int k0 = 0; k0 < kend; k0 += 64) {
    __syncthreads();  // every warp is done with the previous K, V tiles
    attention_mma::load_tile<HD, 64>(Ks, base + HD, ld, k0, Tn);
    attention_mma::load_tile<HD, 64>(Vs, base + 2 * HD, ld, k0, Tn);
    mma::cp_async_wait_all();  // load_tile copies bf16 tiles with cp.async
    __syncthreads();
    // 16-key column blocks with a visible key for some row of this warp (on the diagonal tile: n ≤ warp).
    const int nblk = k0 == q0 ? warp + 1 : 4;

    // S = Q·Kᵀ on the warp's 16 rows.
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      if (n < nblk) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.0f);
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> kf;
          wmma::load_matrix_sync(kf, Ks + 16 * n * LDH + 16 * kk, LDH);
          wmma::mma_sync(acc, qf[kk], kf, acc);
        }
        wmma::store_matrix_sync(Ss + wr * LDS + 16 * n, acc, LDS, wmma::mem_row_major);
      }
    }
    __syncwarp();

    // Online softmax: two lanes per row, the even or odd columns; P as bf16, O rows rescaled.
    const int cend = 16 * nblk;
    float mt = -INFINITY;
    for (int cc = 0; cc < 32; ++cc) {
      const int c = 2 * cc + odd;
      const int j = k0 + c;
      if (c < cend && j <= i && j < Tn) mt = fmaxf(mt, Ss[sr * LDS + c] * scale_log2);
    }
    mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
    const float mn = fmaxf(m, mt);
    // mn = −∞ only while a row has seen no visible key (never: key k0 ≤ i is
    // visible in every tile); subtracting 0 then keeps exp2(−∞) = 0, no NaN.
    const float ref = mn == -INFINITY ? 0.0f : mn;
    const float alpha = exp2f(m - ref);  // 0 on the first tile (m = −∞)
    float sum = 0.0f;
    for (int cc = 0; cc < 32; ++cc) {
      const int c = 2 * cc + odd;
      const int j = k0 + c;
      const float p = c < cend && j <= i && j < Tn ? exp2f(Ss[sr * LDS + c] * scale_log2 - ref) : 0.0f;
      sum += p;
      Ps[sr * LDP + c] = __float2bfloat16(p);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * alpha + sum;
    m = mn;
    if (alpha != 1.0f)
      for (int d = odd; d < HD; d += 2) Os[sr * LDO + d] *= alpha;
    __syncwarp();

    // O += P·V on the warp's rows (the key blocks past nblk hold only zeros of P).
    wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> pf[4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
      if (kk < nblk) wmma::load_matrix_sync(pf[kk], Ps + wr * LDP + 16 * kk, LDP);
#pragma unroll
    for (int dn = 0; dn < KS; ++dn) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> o;
      wmma::load_matrix_sync(o, Os + wr * LDO + 16 * dn, LDO, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        if (kk < nblk) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> vf;
          wmma::load_matrix_sync(vf, Vs + 16 * kk * LDH + 16 * dn, LDH);
          wmma::mma_sync(o, pf[kk], vf, o);
        }
      }
      wmma::store_matrix_sync(Os + wr * LDO + 16 * dn, o, LDO, wmma::mem_row_major);
    }
    __syncwarp();
  }

  // O / l and lse = (m + log2 l)·ln 2, then the block's rows leave through Os.
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  for (int d = odd; d < HD; d += 2) Os[sr * LDO + d] *= inv;
  if (lane % 2 == 0 && i < Tn) lse[std::size_t(bh) * Tn + i] = (m + log2f(l)) * 0.69314718055994531f;
  __syncthreads();
  attention_mma::store_rows<HD>(out + std::size_t(b) * Tn * C + std::size_t(h) * HD, std::size_t(C), Os, q0, Tn, 0,
                              nullptr, nullptr);
}

// dK, dV. Grid (B·H, key tiles); the first key tiles (which see the most
// queries) start first. Overwrites the k and v parts of dqkv. Dv: the row
// dots D of attention.hpp. scale = 1/√hd, scale_log2 = scale·log2(e).
// Long on purpose: one kernel whose tiles and accumulators stay in registers
// across its phases; device functions would have to pass them all.
template <int HD, class T, class In = T>
__global__ void __launch_bounds__(128)
    attention_tc_backward_dkv_kernel(T* dqkv, const In* dout, const In* qkvr, const float* lse, const float* Dv,
                                     const float* rope_cos, const float* rope_sin, int Tn, int C, int H, int rot,
                                     float scale, float scale_log2) {
  namespace wmma = nvcuda::wmma;
  using bf16 = __nv_bfloat16;
  using L = AttentionTcTiles<HD>;
  constexpr int LDH = L::ldh, LDS = L::lds, LDP = L::ldp, LDO = L::ldo, KS = HD / 16;
  constexpr float log2e = 1.4426950408889634f;
  unsigned char* const sm = attention_tc_smem();
  bf16* const Ks = reinterpret_cast<bf16*>(sm);
  bf16* const Vs = reinterpret_cast<bf16*>(sm + L::hbytes);
  bf16* const Qs = reinterpret_cast<bf16*>(sm + 2 * L::hbytes);
  bf16* const dOs = reinterpret_cast<bf16*>(sm + 3 * L::hbytes);
  float* const Ss = reinterpret_cast<float*>(sm + 4 * L::hbytes);  // Sᵀ: rows keys, columns queries
  float* const dPs = reinterpret_cast<float*>(sm + 4 * L::hbytes + L::sbytes);
  bf16* const Ps = reinterpret_cast<bf16*>(sm + 4 * L::hbytes + 2 * L::sbytes);
  bf16* const dSs = reinterpret_cast<bf16*>(sm + 4 * L::hbytes + 2 * L::sbytes + L::pbytes);
  float* const lse_s = reinterpret_cast<float*>(sm + 4 * L::hbytes + 2 * L::sbytes + 2 * L::pbytes);  // ·log2(e)
  float* const D_s = lse_s + 64;

  const int bh = int(blockIdx.x), b = bh / H, h = bh % H;
  const int k0 = int(blockIdx.y) * 64;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, wr = 16 * warp;
  const int sr = wr + lane / 2, odd = lane % 2;  // elementwise: this lane's key row; its columns 2·cc + odd
  const int j = k0 + sr;                                // ... the row's key
  const std::size_t ld = std::size_t(3) * C;
  const In* base = qkvr + std::size_t(b) * Tn * ld + std::size_t(h) * 3 * HD;
  const In* dO_base = dout + std::size_t(b) * Tn * C + std::size_t(h) * HD;
  const float* lse_bh = lse + std::size_t(bh) * Tn;
  const float* D_bh = Dv + std::size_t(bh) * Tn;

  attention_mma::load_tile<HD, 64>(Ks, base + HD, ld, k0, Tn);
  attention_mma::load_tile<HD, 64>(Vs, base + 2 * HD, ld, k0, Tn);
  mma::cp_async_wait_all();  // load_tile copies bf16 tiles with cp.async
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> dk[KS], dv[KS];
#pragma unroll
  for (int dn = 0; dn < KS; ++dn) {
    wmma::fill_fragment(dk[dn], 0.0f);
    wmma::fill_fragment(dv[dn], 0.0f);
  }

  for (int i0 = k0; i0 < Tn; i0 += 64) {  // queries before k0 see none of the block's keys
    __syncthreads();  // every warp is done with the previous Q, dO tiles
    attention_mma::load_tile<HD, 64>(Qs, base, ld, i0, Tn);
    attention_mma::load_tile<HD, 64>(dOs, dO_base, std::size_t(C), i0, Tn);
    mma::cp_async_wait_all();  // load_tile copies bf16 tiles with cp.async
    if (threadIdx.x < 64) {
      const int ii = int(threadIdx.x);
      lse_s[ii] = i0 + ii < Tn ? lse_bh[i0 + ii] * log2e : 0.0f;
      D_s[ii] = i0 + ii < Tn ? D_bh[i0 + ii] : 0.0f;
    }
    __syncthreads();
    // Query blocks before nlo see none of this warp's keys (only on the diagonal tile).
    const int nlo = i0 == k0 ? warp : 0;

    // Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ on the warp's 16 key rows.
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      if (n >= nlo) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> s, dp;
        wmma::fill_fragment(s, 0.0f);
        wmma::fill_fragment(dp, 0.0f);
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> bt;
          wmma::load_matrix_sync(a, Ks + wr * LDH + 16 * kk, LDH);
          wmma::load_matrix_sync(bt, Qs + 16 * n * LDH + 16 * kk, LDH);
          wmma::mma_sync(s, a, bt, s);
          wmma::load_matrix_sync(a, Vs + wr * LDH + 16 * kk, LDH);
          wmma::load_matrix_sync(bt, dOs + 16 * n * LDH + 16 * kk, LDH);
          wmma::mma_sync(dp, a, bt, dp);
        }
        wmma::store_matrix_sync(Ss + wr * LDS + 16 * n, s, LDS, wmma::mem_row_major);
        wmma::store_matrix_sync(dPs + wr * LDS + 16 * n, dp, LDS, wmma::mem_row_major);
      }
    }
    __syncwarp();

    // Pᵀ = exp(S − lse) (masked), dSᵀ = Pᵀ ⊙ (dPᵀ − D)·scale, as bf16.
    const int cbeg = 16 * nlo;
    for (int cc = 0; cc < 32; ++cc) {
      const int c = 2 * cc + odd;
      const int i = i0 + c;
      float p = 0.0f, ds = 0.0f;
      if (c >= cbeg && j <= i && i < Tn) {
        p = exp2f(Ss[sr * LDS + c] * scale_log2 - lse_s[c]);
        ds = p * (dPs[sr * LDS + c] - D_s[c]) * scale;
      }
      Ps[sr * LDP + c] = __float2bfloat16(p);
      dSs[sr * LDP + c] = __float2bfloat16(ds);
    }
    __syncwarp();

    // dV += Pᵀ·dO, dK += dSᵀ·Q over the query blocks from nlo.
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      if (kk >= nlo) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> pa, dsa;
        wmma::load_matrix_sync(pa, Ps + wr * LDP + 16 * kk, LDP);
        wmma::load_matrix_sync(dsa, dSs + wr * LDP + 16 * kk, LDP);
#pragma unroll
        for (int dn = 0; dn < KS; ++dn) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> bm;
          wmma::load_matrix_sync(bm, dOs + 16 * kk * LDH + 16 * dn, LDH);
          wmma::mma_sync(dv[dn], pa, bm, dv[dn]);
          wmma::load_matrix_sync(bm, Qs + 16 * kk * LDH + 16 * dn, LDH);
          wmma::mma_sync(dk[dn], dsa, bm, dk[dn]);
        }
      }
    }
    // The next iteration's __syncthreads orders these reads before the tiles are reloaded;
    // Ss/dPs/Ps/dSs rows are the warp's own and are rewritten only after it passed it.
  }

  T* dbase = dqkv + std::size_t(b) * Tn * ld + std::size_t(h) * 3 * HD;
  float* const stage = reinterpret_cast<float*>(sm);  // [64][hd + 4], over the tiles
  __syncthreads();
#pragma unroll
  for (int dn = 0; dn < KS; ++dn) wmma::store_matrix_sync(stage + wr * LDO + 16 * dn, dk[dn], LDO, wmma::mem_row_major);
  __syncthreads();
  attention_mma::store_rows<HD>(dbase + HD, ld, stage, k0, Tn, rot, rope_cos, rope_sin);
  __syncthreads();
#pragma unroll
  for (int dn = 0; dn < KS; ++dn) wmma::store_matrix_sync(stage + wr * LDO + 16 * dn, dv[dn], LDO, wmma::mem_row_major);
  __syncthreads();
  attention_mma::store_rows<HD>(dbase + 2 * HD, ld, stage, k0, Tn, 0, nullptr, nullptr);
}

// dQ. Grid (B·H, query tiles); the longest (last) query tiles start first.
// Overwrites the q part of dqkv.
// Long on purpose: one kernel whose tiles and accumulators stay in registers
// across its phases; device functions would have to pass them all.
template <int HD, class T, class In = T>
__global__ void __launch_bounds__(128)
    attention_tc_backward_dq_kernel(T* dqkv, const In* dout, const In* qkvr, const float* lse, const float* Dv,
                                    const float* rope_cos, const float* rope_sin, int Tn, int C, int H, int rot,
                                    float scale, float scale_log2) {
  namespace wmma = nvcuda::wmma;
  using bf16 = __nv_bfloat16;
  using L = AttentionTcTiles<HD>;
  constexpr int LDH = L::ldh, LDS = L::lds, LDP = L::ldp, LDO = L::ldo, KS = HD / 16;
  constexpr float log2e = 1.4426950408889634f;
  unsigned char* const sm = attention_tc_smem();
  bf16* const Qs = reinterpret_cast<bf16*>(sm);
  bf16* const dOs = reinterpret_cast<bf16*>(sm + L::hbytes);
  bf16* const Ks = reinterpret_cast<bf16*>(sm + 2 * L::hbytes);
  bf16* const Vs = reinterpret_cast<bf16*>(sm + 3 * L::hbytes);
  float* const Ss = reinterpret_cast<float*>(sm + 4 * L::hbytes);
  float* const dPs = reinterpret_cast<float*>(sm + 4 * L::hbytes + L::sbytes);
  bf16* const dSs = reinterpret_cast<bf16*>(sm + 4 * L::hbytes + 2 * L::sbytes);
  float* const lse_s = reinterpret_cast<float*>(sm + 4 * L::hbytes + 2 * L::sbytes + L::pbytes);  // ·log2(e)
  float* const D_s = lse_s + 64;

  const int bh = int(blockIdx.x), b = bh / H, h = bh % H;
  const int q0 = int(gridDim.y - 1 - blockIdx.y) * 64;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, wr = 16 * warp;
  const int sr = wr + lane / 2, odd = lane % 2;  // elementwise: this lane's query row; its columns 2·cc + odd
  const int i = q0 + sr;
  const std::size_t ld = std::size_t(3) * C;
  const In* base = qkvr + std::size_t(b) * Tn * ld + std::size_t(h) * 3 * HD;

  attention_mma::load_tile<HD, 64>(Qs, base, ld, q0, Tn);
  attention_mma::load_tile<HD, 64>(dOs, dout + std::size_t(b) * Tn * C + std::size_t(h) * HD, std::size_t(C), q0, Tn);
  mma::cp_async_wait_all();  // load_tile copies bf16 tiles with cp.async
  if (threadIdx.x < 64) {
    const int ii = int(threadIdx.x);
    lse_s[ii] = q0 + ii < Tn ? lse[std::size_t(bh) * Tn + q0 + ii] * log2e : 0.0f;
    D_s[ii] = q0 + ii < Tn ? Dv[std::size_t(bh) * Tn + q0 + ii] : 0.0f;
  }
  __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> qf[KS], dof[KS];
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> dq[KS];
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) {
    wmma::load_matrix_sync(qf[kk], Qs + wr * LDH + 16 * kk, LDH);
    wmma::load_matrix_sync(dof[kk], dOs + wr * LDH + 16 * kk, LDH);
    wmma::fill_fragment(dq[kk], 0.0f);
  }
  const float lse_i = lse_s[sr], D_i = D_s[sr];

  const int kend = Tn < q0 + 64 ? Tn : q0 + 64;
  for (int k0 = 0; k0 < kend; k0 += 64) {
    __syncthreads();  // every warp is done with the previous K, V tiles
    attention_mma::load_tile<HD, 64>(Ks, base + HD, ld, k0, Tn);
    attention_mma::load_tile<HD, 64>(Vs, base + 2 * HD, ld, k0, Tn);
    mma::cp_async_wait_all();  // load_tile copies bf16 tiles with cp.async
    __syncthreads();
    const int nblk = k0 == q0 ? warp + 1 : 4;

    // S = Q·Kᵀ and dP = dO·Vᵀ on the warp's 16 query rows.
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      if (n < nblk) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> s, dp;
        wmma::fill_fragment(s, 0.0f);
        wmma::fill_fragment(dp, 0.0f);
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> bt;
          wmma::load_matrix_sync(bt, Ks + 16 * n * LDH + 16 * kk, LDH);
          wmma::mma_sync(s, qf[kk], bt, s);
          wmma::load_matrix_sync(bt, Vs + 16 * n * LDH + 16 * kk, LDH);
          wmma::mma_sync(dp, dof[kk], bt, dp);
        }
        wmma::store_matrix_sync(Ss + wr * LDS + 16 * n, s, LDS, wmma::mem_row_major);
        wmma::store_matrix_sync(dPs + wr * LDS + 16 * n, dp, LDS, wmma::mem_row_major);
      }
    }
    __syncwarp();

    // dS = P ⊙ (dP − D)·scale as bf16 (masked: 0).
    const int cend = 16 * nblk;
    for (int cc = 0; cc < 32; ++cc) {
      const int c = 2 * cc + odd;
      const int j = k0 + c;
      float ds = 0.0f;
      if (c < cend && j <= i && j < Tn && i < Tn) {
        const float p = exp2f(Ss[sr * LDS + c] * scale_log2 - lse_i);
        ds = p * (dPs[sr * LDS + c] - D_i) * scale;
      }
      dSs[sr * LDP + c] = __float2bfloat16(ds);
    }
    __syncwarp();

    // dQ += dS·K over the key blocks before nblk.
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      if (kk < nblk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> dsa;
        wmma::load_matrix_sync(dsa, dSs + wr * LDP + 16 * kk, LDP);
#pragma unroll
        for (int dn = 0; dn < KS; ++dn) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> kb;
          wmma::load_matrix_sync(kb, Ks + 16 * kk * LDH + 16 * dn, LDH);
          wmma::mma_sync(dq[dn], dsa, kb, dq[dn]);
        }
      }
    }
  }

  float* const stage = reinterpret_cast<float*>(sm);  // [64][hd + 4], over the tiles
  __syncthreads();
#pragma unroll
  for (int dn = 0; dn < KS; ++dn) wmma::store_matrix_sync(stage + wr * LDO + 16 * dn, dq[dn], LDO, wmma::mem_row_major);
  __syncthreads();
  attention_mma::store_rows<HD>(dqkv + std::size_t(b) * Tn * ld + std::size_t(h) * 3 * HD, ld, stage, q0, Tn, rot,
                              rope_cos, rope_sin);
}

// ---- launches (tensor cores) ----

// True when the current device runs tensor-core kernels whose largest launch
// needs `bytes` of dynamic shared memory: compute capability 8.0 or later and
// an opt-in shared-memory limit that holds them. Otherwise the callers keep
// the fp32 kernels (forward and backward decide alike on the same device).
inline bool tensor_cores_fit(std::size_t bytes) {
  int dev = 0, major = 0, optin = 0;
  DOREMI_CUDA_CHECK(cudaGetDevice(&dev));
  DOREMI_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  DOREMI_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return major >= 8 && bytes <= std::size_t(optin);
}

template <class K>
void attention_tc_allow_smem(K* kernel, std::size_t bytes) {
  if (bytes > 48 * 1024)
    DOREMI_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

template <int HD, class T, class In>
void attention_tc_forward_launch(const Cuda& be, T* out, float* lse, const In* qkvr, int B, int Tn, int C, int H) {
  using L = AttentionTcTiles<HD>;
  const dim3 grid(unsigned(B) * unsigned(H), unsigned((Tn + 63) / 64));
  const float scale_log2 = 1.4426950408889634f / std::sqrt(float(HD));
  attention_tc_allow_smem(attention_tc_forward_kernel<HD, T, In>, L::fwd_bytes);
  DOREMI_CUDA_LAUNCH(grid, L::threads, L::fwd_bytes, be.stream(), attention_tc_forward_kernel<HD, T, In>)(out, lse,
      qkvr, Tn, C, H, scale_log2);
  DOREMI_CUDA_CHECK_LAUNCH("attention_tc_forward_kernel");
}

template <int HD, class T, class In>
void attention_tc_backward_launch(const Cuda& be, T* dqkv, const In* dout, const In* qkvr, const float* lse,
                                  const float* Dv, const float* rope_cos, const float* rope_sin, int B, int Tn, int C,
                                  int H, int rot) {
  using L = AttentionTcTiles<HD>;
  const dim3 grid(unsigned(B) * unsigned(H), unsigned((Tn + 63) / 64));
  const float scale = 1.0f / std::sqrt(float(HD));
  const float scale_log2 = 1.4426950408889634f * scale;
  attention_tc_allow_smem(attention_tc_backward_dkv_kernel<HD, T, In>, L::dkv_bytes);
  DOREMI_CUDA_LAUNCH(grid, L::threads, L::dkv_bytes, be.stream(), attention_tc_backward_dkv_kernel<HD, T, In>)(dqkv,
      dout, qkvr, lse, Dv, rope_cos, rope_sin, Tn, C, H, rot, scale, scale_log2);
  DOREMI_CUDA_CHECK_LAUNCH("attention_tc_backward_dkv_kernel");
  attention_tc_allow_smem(attention_tc_backward_dq_kernel<HD, T, In>, L::dq_bytes);
  DOREMI_CUDA_LAUNCH(grid, L::threads, L::dq_bytes, be.stream(), attention_tc_backward_dq_kernel<HD, T, In>)(dqkv, dout,
      qkvr, lse, Dv, rope_cos, rope_sin, Tn, C, H, rot, scale, scale_log2);
  DOREMI_CUDA_CHECK_LAUNCH("attention_tc_backward_dq_kernel");
}

}  // namespace doremi::backend::cuda
