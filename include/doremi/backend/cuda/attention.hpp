#pragma once
// Causal multi-head self-attention, FlashAttention(-2) style: the T×T score
// matrix never goes to global memory. Same layout and semantics as the CPU's
// (backend/cpu/attention.hpp): qkv is [B·T, 3C], row n holding per head h
// [q_h | k_h | v_h] (3·hd values); rotary embedding (GPT-NeoX rotate_half,
// the shared rotate / rotate_back of backend/elementwise.hpp) on the first
// `rot` dims of q and k at position t = n mod T, tables [n_ctx, rot/2];
// softmax scale 1/√hd; `out` is [B·T, C] with head h in columns
// h·hd .. h·hd + hd − 1. Storage float or bf16; all math and sums in fp32.
//
// The forward keeps only lse (per (b, h, query): [B·H·T] floats, index
// (b·H + h)·T + t); the backward recomputes the probabilities from it, and is
// deterministic (fixed summation orders, no atomics). hd = 16, 32, 64 or 128
// (a template parameter). MatmulPrecision::bf16 with fp32 storage runs the
// tensor-core kernels of attention_tc.hpp (WMMA, the default) or
// attention_mma.hpp (mma.sync; DOREMI_CUDA_ATTENTION=mma) where the device
// holds their tiles, else these fp32 kernels. The math, the kernels' design
// and their status: docs/cuda-performance.md, "Attention kernels".
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <type_traits>

#include <cuda_bf16.h>

#include "doremi/backend/cuda/attention_mma.hpp"
#include "doremi/backend/cuda/attention_tc.hpp"
#include "doremi/backend/cuda/convert.hpp"
#include "doremi/backend/cuda/cuda.hpp"
#include "doremi/backend/elementwise.hpp"
#include "doremi/backend/types.hpp"

namespace doremi::backend {

namespace cuda {

// Tile shape per head dimension.
template <int HD>
struct AttentionTiles {
  static_assert(HD == 16 || HD == 32 || HD == 64 || HD == 128, "attention: head dimension 16, 32, 64 or 128");
  static constexpr int rows = HD <= 64 ? 64 : 32;  // rows (queries or keys) a block owns
  static constexpr int tpr = HD / 16;               // threads per row, 16 values each
  static constexpr int threads = rows * tpr;        // 64, 128, 256, 256 (≤ 256: up to 255 registers a thread)
  static constexpr int tile = HD <= 64 ? 64 : 32;   // rows of a tile streamed through shared memory
  static constexpr int smem_floats = 2 * tile * HD; // two tile arrays; also the output stage
  static_assert(smem_floats * sizeof(float) <= 32 * 1024, "attention: tiles exceed the static shared memory plan");
  static_assert(smem_floats >= rows * HD, "attention: the output stage must fit in the tile buffers");
};

// Shape checks shared by attention_forward and attention_backward, made before
// any CUDA call. Returns hd = C / H.
[[noreturn]] inline void attention_unsupported_head_dim(int hd) {
  fail("attention (cuda): head dimension hd = C / H = {} is not supported (supported: 16, 32, 64, 128)", hd);
}
inline int attention_check(int B, int Tn, int C, int H, int rot) {
  if (B <= 0) fail("attention (cuda): batch size B = {} must be positive", B);
  if (Tn <= 0) fail("attention (cuda): sequence length T = {} must be positive", Tn);
  if (H <= 0) fail("attention (cuda): head count H = {} must be positive", H);
  if (C <= 0 || C % H != 0) fail("attention (cuda): C = {} is not a positive multiple of the head count H = {}", C, H);
  const int hd = C / H;
  if (hd != 16 && hd != 32 && hd != 64 && hd != 128) attention_unsupported_head_dim(hd);
  if (rot < 0 || rot % 2 != 0 || rot > hd)
    fail("attention (cuda): rotary dims rot = {} must be even and in [0, hd = {}]", rot, hd);
  if (static_cast<long long>(B) * H > 0x7fffffffLL) fail("attention (cuda): B·H = {}·{} is too large", B, H);
  if ((Tn + 31) / 32 > 65535) fail("attention (cuda): sequence length T = {} is too large (at most {})", Tn, 65535 * 32);
  return hd;
}

// ---- per-thread row vectors (16 values: the thread's slice of one row) ----

// Sum over the TPR lanes of a row (consecutive, TPR-aligned lanes); every lane
// gets the same total. All lanes of the warp must call it.
template <int TPR>
__device__ __forceinline__ float attention_row_sum(float v) {
#pragma unroll
  for (int o = TPR / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// x = this thread's slice of global row `row` (zeros when !valid).
template <int TPR, class T>
__device__ __forceinline__ void attention_load_row(float (&x)[16], const T* row, int s, bool valid) {
#pragma unroll
  for (int m = 0; m < 4; ++m)
#pragma unroll
    for (int c = 0; c < 4; ++c) x[4 * m + c] = valid ? float(row[4 * (s + TPR * m) + c]) : 0.0f;
}

// Partial dot product of x with the matching slice of the shared row `row`
// (16-byte aligned); attention_row_sum completes it.
template <int TPR>
__device__ __forceinline__ float attention_dot(const float (&x)[16], const float* row, int s) {
  const float4* r4 = reinterpret_cast<const float4*>(row);
  float acc = 0.0f;
#pragma unroll
  for (int m = 0; m < 4; ++m) {
    const float4 y = r4[s + TPR * m];
    acc += x[4 * m] * y.x + x[4 * m + 1] * y.y + x[4 * m + 2] * y.z + x[4 * m + 3] * y.w;
  }
  return acc;
}

// x += a · (the matching slice of the shared row `row`).
template <int TPR>
__device__ __forceinline__ void attention_axpy(float (&x)[16], float a, const float* row, int s) {
  const float4* r4 = reinterpret_cast<const float4*>(row);
#pragma unroll
  for (int m = 0; m < 4; ++m) {
    const float4 y = r4[s + TPR * m];
    x[4 * m] += a * y.x;
    x[4 * m + 1] += a * y.y;
    x[4 * m + 2] += a * y.z;
    x[4 * m + 3] += a * y.w;
  }
}

// dst[r·HD + d] = src row (row0 + r), column d, for r < ROWS (zeros past Tn):
// a tile into shared memory as fp32. src points at row 0, rows ld apart.
template <int HD, int NT, int ROWS, class T>
__device__ __forceinline__ void attention_load_tile(float* dst, const T* src, std::size_t ld, int row0, int Tn) {
  for (int idx = threadIdx.x; idx < ROWS * HD; idx += NT) {
    const int r = idx / HD, d = idx % HD;
    dst[idx] = row0 + r < Tn ? float(src[std::size_t(row0 + r) * ld + d]) : 0.0f;
  }
}

// Writes the block's rows row0 .. row0 + R − 1 (those < Tn) of a register-held
// vector to dst (row 0 at dst, rows ld apart) as T, the first `rot` dims
// rotated back by the angle of position t = row (rot = 0: a plain store).
// Goes through `stage` (R·HD floats of shared memory, the tile buffers) so
// that each (d, d + rot/2) pair meets in one thread and the writes coalesce.
// Every thread of the block must call it (it synchronises).
template <int HD, class T>
__device__ void attention_store_rows(T* dst, std::size_t ld, float* stage, const float (&x)[16], int row0, int Tn,
                                     int rot, const float* rope_cos, const float* rope_sin) {
  using L = AttentionTiles<HD>;
  constexpr int TPR = L::tpr;
  const int r = threadIdx.x / TPR, s = threadIdx.x % TPR;
  __syncthreads();  // the stage overlays the tile buffers, which other threads may still be reading
  float4* st4 = reinterpret_cast<float4*>(stage + r * HD);
#pragma unroll
  for (int m = 0; m < 4; ++m) st4[s + TPR * m] = make_float4(x[4 * m], x[4 * m + 1], x[4 * m + 2], x[4 * m + 3]);
  __syncthreads();
  attention_mma::store_rows<HD, L::rows, HD>(dst, ld, stage, row0, Tn, rot, rope_cos, rope_sin);
}

// ---- kernels ----

// The rotary kernels' row: block blockIdx.x's token, its [3C] input and
// output, and the cos and sin tables (rot/2 each) of its position.
template <class O, class T>
struct RotaryRow {
  const T* src;
  O* dst;
  const float* cs;
  const float* sn;
  __device__ RotaryRow(O* qkvr, const T* qkv, const float* rope_cos, const float* rope_sin, int Tn, int C, int rot) {
    const std::size_t row = blockIdx.x, width = 3 * std::size_t(C), at = std::size_t(row % unsigned(Tn)) * (rot / 2);
    src = qkv + row * width;
    dst = qkvr + row * width;
    cs = rope_cos + at;
    sn = rope_sin + at;
  }
};

// qkvr = qkv with the first rot dims of every q and k rotated by the angle of
// the row's position. One block per row (token), two adjacent columns per
// thread and step, stored together; the head dimension is a constant, so the
// column arithmetic is a few 32-bit instructions (a flat 64-bit index with
// divisions per element made this pass ALU-bound). qkvr must not alias qkv;
// its type O may be bf16 (the tensor-core path).
template <int HD, class O, class T>
__global__ void attention_rotary_kernel(O* qkvr, const T* qkv, const float* rope_cos, const float* rope_sin, int Tn,
                                        int C, int rot) {
  const int half = rot / 2, width = 3 * C;
  const RotaryRow<O, T> r(qkvr, qkv, rope_cos, rope_sin, Tn, C, rot);
  auto value = [&](int c) {
    const int w = c % (3 * HD), d = w % HD;  // within the head's [q | k | v]; w < 2·HD: q or k
    float v = float(r.src[c]);
    if (w < 2 * HD && d < rot) {
      const int p = d < half ? d : d - half;
      const int c1 = c - d + p;  // the pair (x1, x2) = (x[p], x[p + half])
      float x1 = float(r.src[c1]), x2 = float(r.src[c1 + half]);
      rotate(x1, x2, r.cs[p], r.sn[p]);
      v = d < half ? x1 : x2;
    }
    return v;
  };
  for (int c = 2 * int(threadIdx.x); c < width; c += 2 * int(blockDim.x)) {  // width is even (HD is)
    const float a = value(c), b = value(c + 1);
    if constexpr (std::is_same_v<O, __nv_bfloat16>)
      *reinterpret_cast<__nv_bfloat162*>(r.dst + c) = __floats2bfloat162_rn(a, b);
    else if constexpr (std::is_same_v<O, float>)
      *reinterpret_cast<float2*>(r.dst + c) = make_float2(a, b);
    else
      r.dst[c] = O(a), r.dst[c + 1] = O(b);
  }
}

// The same for bf16 in and out where every rotated half is whole 8-column
// (16-byte) chunks (rot/2 a multiple of 8) and rows are 16-byte aligned: a
// thread moves 8 columns with one 16-byte load and store (and, where they
// rotate, one load of the partner chunk), with the same arithmetic. (With 2
// columns per thread and 2-byte loads, by our estimate too few bytes are in
// flight to keep the memory busy; not measured.)
template <int HD>
__global__ void attention_rotary_bf16x8_kernel(__nv_bfloat16* qkvr, const __nv_bfloat16* qkv, const float* rope_cos,
                                               const float* rope_sin, int Tn, int C, int rot) {
  using bf16 = __nv_bfloat16;
  const int half = rot / 2, width = 3 * C;
  const RotaryRow<bf16, bf16> r(qkvr, qkv, rope_cos, rope_sin, Tn, C, rot);
  for (int c = 8 * int(threadIdx.x); c < width; c += 8 * int(blockDim.x)) {
    const int w = c % (3 * HD), d = w % HD;  // as in attention_rotary_kernel; the chunk lies in one half
    uint4 chunk = *reinterpret_cast<const uint4*>(r.src + c);
    if (w < 2 * HD && d < rot) {
      const bool first = d < half;  // this chunk holds x1 of its pairs, the partner x2 (or the reverse)
      const int p0 = first ? d : d - half;
      const uint4 partner = *reinterpret_cast<const uint4*>(r.src + (first ? c + half : c - half));
      unsigned words[4] = {chunk.x, chunk.y, chunk.z, chunk.w};  // two bf16 each, the lower column low
      const unsigned other[4] = {partner.x, partner.y, partner.z, partner.w};
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        unsigned out = 0;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float a = float(__ushort_as_bfloat16(static_cast<unsigned short>(words[q] >> (16 * h))));
          const float b = float(__ushort_as_bfloat16(static_cast<unsigned short>(other[q] >> (16 * h))));
          float x1 = first ? a : b, x2 = first ? b : a;
          rotate(x1, x2, r.cs[p0 + 2 * q + h], r.sn[p0 + 2 * q + h]);
          out |= unsigned(__bfloat16_as_ushort(__float2bfloat16_rn(first ? x1 : x2))) << (16 * h);
        }
        words[q] = out;
      }
      chunk = uint4{words[0], words[1], words[2], words[3]};
    }
    *reinterpret_cast<uint4*>(r.dst + c) = chunk;
  }
}

// Forward. Grid (B·H, query tiles); the longest (last) query tiles start first.
template <int HD, class T>
__global__ void __launch_bounds__(AttentionTiles<HD>::threads)
    attention_forward_kernel(T* out, float* lse, const T* qkvr, int Tn, int C, int H, float scale) {
  using L = AttentionTiles<HD>;
  constexpr int TPR = L::tpr, BC = L::tile;
  __shared__ float4 smem4[L::smem_floats / 4];
  float* const Ks = reinterpret_cast<float*>(smem4);
  float* const Vs = Ks + BC * HD;

  const int bh = blockIdx.x, b = bh / H, h = bh % H;
  const int q0 = int(gridDim.y - 1 - blockIdx.y) * L::rows;
  const int r = threadIdx.x / TPR, s = threadIdx.x % TPR, i = q0 + r;  // this thread's query row and slice
  const std::size_t ld = std::size_t(3) * C;
  const T* base = qkvr + std::size_t(b) * Tn * ld + std::size_t(h) * 3 * HD;  // q of row 0; k at +HD, v at +2HD

  float q[16], o[16];
  attention_load_row<TPR>(q, base + std::size_t(i) * ld, s, i < Tn);
#pragma unroll
  for (int e = 0; e < 16; ++e) o[e] = 0.0f;
  float m = -INFINITY, l = 0.0f;  // running max and sum of exp(S − m) over the keys seen so far

  const int kend = Tn < q0 + L::rows ? Tn : q0 + L::rows;  // later keys are masked for every row of the block
  for (int k0 = 0; k0 < kend; k0 += BC) {
    __syncthreads();  // everyone is done with the previous tile
    attention_load_tile<HD, L::threads, BC>(Ks, base + HD, ld, k0, Tn);
    attention_load_tile<HD, L::threads, BC>(Vs, base + 2 * HD, ld, k0, Tn);
    __syncthreads();

    float sc[BC];  // this row's scores against the tile
    float mt = -INFINITY;
#pragma unroll
    for (int jj = 0; jj < BC; ++jj) {
      const int j = k0 + jj;
      const float x = attention_row_sum<TPR>(attention_dot<TPR>(q, Ks + jj * HD, s)) * scale;
      sc[jj] = j <= i && j < Tn ? x : -INFINITY;
      mt = fmaxf(mt, sc[jj]);
    }
    const float mn = fmaxf(m, mt);
    // mn = −∞ only while a row has seen no visible key (never for a row < T:
    // key 0 is in the first tile); subtracting 0 then keeps exp(−∞) = 0, no NaN.
    const float ref = mn == -INFINITY ? 0.0f : mn;
    const float alpha = expf(m - ref);  // 0 on the first visible tile (m = −∞)
    l *= alpha;
#pragma unroll
    for (int e = 0; e < 16; ++e) o[e] *= alpha;
#pragma unroll
    for (int jj = 0; jj < BC; ++jj) {
      const float p = expf(sc[jj] - ref);  // masked: exp(−∞) = 0
      l += p;
      attention_axpy<TPR>(o, p, Vs + jj * HD, s);
    }
    m = mn;
  }

  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
  for (int e = 0; e < 16; ++e) o[e] *= inv;
  if (s == 0 && i < Tn) lse[std::size_t(bh) * Tn + i] = m + logf(l);
  attention_store_rows<HD>(out + std::size_t(b) * Tn * C + std::size_t(h) * HD, std::size_t(C), Ks, o, q0, Tn, 0,
                           nullptr, nullptr);
}

// D[(b·H + h)·T + t] = Σ_d dO·O over the head's hd columns of row n = b·T + t:
// a block per row (grid-stride), a warp per head (no 64-bit index division
// per (row, head): with one warp per (row, head) and a flat index those
// divisions cost more than the 2·hd loads). BF16_DOUT (the tensor-core path):
// dO rounded to bf16 first, as its products see it, so that D stays the row
// sum of P ⊙ dP (Σ_j dS_ij ≈ 0) up to the rounding of P and V alone; the
// rounded dO is also written to dout_bf16 ([B·T, C], the kernels' operand).
// O: the forward's output as stored (T, or bf16 where only products read it).
template <class T, bool BF16_DOUT = false, class O = T>
__global__ void attention_row_dot_kernel(float* Dv, __nv_bfloat16* dout_bf16, const T* dout, const O* out, int B,
                                         int Tn, int C, int H) {
  const int hd = C / H, lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32, warps = int(blockDim.x) / 32;
  const int N = B * Tn;
  for (int n = int(blockIdx.x); n < N; n += int(gridDim.x)) {
    const int b = n / Tn, t = n - b * Tn;
    for (int h = warp; h < H; h += warps) {  // warp-uniform: the shuffles below see all lanes
      const std::size_t off = std::size_t(n) * C + std::size_t(h) * hd;
      float acc = 0.0f;
      for (int d = lane; d < hd; d += 32) {
        float g = float(dout[off + d]);
        if constexpr (BF16_DOUT) {
          const __nv_bfloat16 gb = __float2bfloat16(g);
          dout_bf16[off + d] = gb;
          g = __bfloat162float(gb);
        }
        acc += g * float(out[off + d]);
      }
      acc = attention_row_sum<32>(acc);
      if (lane == 0) Dv[(std::size_t(b) * H + h) * Tn + t] = acc;
    }
  }
}

// dK, dV. Grid (B·H, key tiles); the first key tiles (which see the most
// queries) start first. Overwrites the k and v parts of dqkv.
template <int HD, class T>
__global__ void __launch_bounds__(AttentionTiles<HD>::threads)
    attention_backward_dkv_kernel(T* dqkv, const T* dout, const T* qkvr, const float* lse, const float* Dv,
                                  const float* rope_cos, const float* rope_sin, int Tn, int C, int H, int rot,
                                  float scale) {
  using L = AttentionTiles<HD>;
  constexpr int TPR = L::tpr, BQ = L::tile;
  __shared__ float4 smem4[L::smem_floats / 4];
  __shared__ float lse_s[BQ], D_s[BQ];
  float* const Qs = reinterpret_cast<float*>(smem4);
  float* const dOs = Qs + BQ * HD;

  const int bh = blockIdx.x, b = bh / H, h = bh % H;
  const int k0 = int(blockIdx.y) * L::rows;
  const int r = threadIdx.x / TPR, s = threadIdx.x % TPR, j = k0 + r;  // this thread's key row and slice
  const std::size_t ld = std::size_t(3) * C;
  const T* base = qkvr + std::size_t(b) * Tn * ld + std::size_t(h) * 3 * HD;
  const T* dO_base = dout + std::size_t(b) * Tn * C + std::size_t(h) * HD;
  const float* lse_bh = lse + std::size_t(bh) * Tn;
  const float* D_bh = Dv + std::size_t(bh) * Tn;

  float k[16], v[16], dk[16], dv[16];
  attention_load_row<TPR>(k, base + std::size_t(j) * ld + HD, s, j < Tn);
  attention_load_row<TPR>(v, base + std::size_t(j) * ld + 2 * HD, s, j < Tn);
#pragma unroll
  for (int e = 0; e < 16; ++e) dk[e] = dv[e] = 0.0f;

  for (int i0 = k0; i0 < Tn; i0 += BQ) {  // queries before k0 see none of the block's keys
    __syncthreads();
    attention_load_tile<HD, L::threads, BQ>(Qs, base, ld, i0, Tn);
    attention_load_tile<HD, L::threads, BQ>(dOs, dO_base, std::size_t(C), i0, Tn);
    for (int ii = threadIdx.x; ii < BQ; ii += L::threads) {
      lse_s[ii] = i0 + ii < Tn ? lse_bh[i0 + ii] : 0.0f;
      D_s[ii] = i0 + ii < Tn ? D_bh[i0 + ii] : 0.0f;
    }
    __syncthreads();
#pragma unroll 4
    for (int ii = 0; ii < BQ; ++ii) {
      const int i = i0 + ii;
      const float x = attention_row_sum<TPR>(attention_dot<TPR>(k, Qs + ii * HD, s)) * scale;  // S_ij
      const float dp = attention_row_sum<TPR>(attention_dot<TPR>(v, dOs + ii * HD, s));        // dP_ij
      const float p = j <= i && i < Tn ? expf(x - lse_s[ii]) : 0.0f;
      const float ds = p * (dp - D_s[ii]) * scale;
      attention_axpy<TPR>(dv, p, dOs + ii * HD, s);
      attention_axpy<TPR>(dk, ds, Qs + ii * HD, s);
    }
  }

  T* dbase = dqkv + std::size_t(b) * Tn * ld + std::size_t(h) * 3 * HD;
  attention_store_rows<HD>(dbase + HD, ld, Qs, dk, k0, Tn, rot, rope_cos, rope_sin);
  attention_store_rows<HD>(dbase + 2 * HD, ld, Qs, dv, k0, Tn, 0, nullptr, nullptr);
}

// dQ. Grid (B·H, query tiles); the longest (last) query tiles start first.
// Overwrites the q part of dqkv.
template <int HD, class T>
__global__ void __launch_bounds__(AttentionTiles<HD>::threads)
    attention_backward_dq_kernel(T* dqkv, const T* dout, const T* qkvr, const float* lse, const float* Dv,
                                 const float* rope_cos, const float* rope_sin, int Tn, int C, int H, int rot,
                                 float scale) {
  using L = AttentionTiles<HD>;
  constexpr int TPR = L::tpr, BC = L::tile;
  __shared__ float4 smem4[L::smem_floats / 4];
  float* const Ks = reinterpret_cast<float*>(smem4);
  float* const Vs = Ks + BC * HD;

  const int bh = blockIdx.x, b = bh / H, h = bh % H;
  const int q0 = int(gridDim.y - 1 - blockIdx.y) * L::rows;
  const int r = threadIdx.x / TPR, s = threadIdx.x % TPR, i = q0 + r;  // this thread's query row and slice
  const std::size_t ld = std::size_t(3) * C;
  const T* base = qkvr + std::size_t(b) * Tn * ld + std::size_t(h) * 3 * HD;

  float q[16], dO[16], dq[16];
  attention_load_row<TPR>(q, base + std::size_t(i) * ld, s, i < Tn);
  attention_load_row<TPR>(dO, dout + (std::size_t(b) * Tn + i) * C + std::size_t(h) * HD, s, i < Tn);
#pragma unroll
  for (int e = 0; e < 16; ++e) dq[e] = 0.0f;
  const float lse_i = i < Tn ? lse[std::size_t(bh) * Tn + i] : 0.0f;
  const float D_i = i < Tn ? Dv[std::size_t(bh) * Tn + i] : 0.0f;

  const int kend = Tn < q0 + L::rows ? Tn : q0 + L::rows;
  for (int k0 = 0; k0 < kend; k0 += BC) {
    __syncthreads();
    attention_load_tile<HD, L::threads, BC>(Ks, base + HD, ld, k0, Tn);
    attention_load_tile<HD, L::threads, BC>(Vs, base + 2 * HD, ld, k0, Tn);
    __syncthreads();
#pragma unroll 4
    for (int jj = 0; jj < BC; ++jj) {
      const int j = k0 + jj;
      const float x = attention_row_sum<TPR>(attention_dot<TPR>(q, Ks + jj * HD, s)) * scale;  // S_ij
      const float dp = attention_row_sum<TPR>(attention_dot<TPR>(dO, Vs + jj * HD, s));       // dP_ij
      const float p = j <= i && i < Tn ? expf(x - lse_i) : 0.0f;
      attention_axpy<TPR>(dq, p * (dp - D_i) * scale, Ks + jj * HD, s);
    }
  }

  attention_store_rows<HD>(dqkv + std::size_t(b) * Tn * ld + std::size_t(h) * 3 * HD, ld, Ks, dq, q0, Tn, rot,
                           rope_cos, rope_sin);
}

template <int HD, class T>
void attention_forward_launch(const Cuda& be, T* out, float* lse, const T* qkvr, int B, int Tn, int C, int H) {
  using L = AttentionTiles<HD>;
  const dim3 grid(unsigned(B) * unsigned(H), unsigned((Tn + L::rows - 1) / L::rows));
  const float scale = 1.0f / std::sqrt(float(HD));
  DOREMI_CUDA_LAUNCH(grid, L::threads, 0, be.stream(), attention_forward_kernel<HD, T>)(out, lse, qkvr, Tn, C, H,
      scale);
  DOREMI_CUDA_CHECK_LAUNCH("attention_forward_kernel");
}

template <int HD, class T>
void attention_backward_launch(const Cuda& be, T* dqkv, const T* dout, const T* qkvr, const float* lse,
                               const float* Dv, const float* rope_cos, const float* rope_sin, int B, int Tn, int C,
                               int H, int rot) {
  using L = AttentionTiles<HD>;
  const dim3 grid(unsigned(B) * unsigned(H), unsigned((Tn + L::rows - 1) / L::rows));
  const float scale = 1.0f / std::sqrt(float(HD));
  DOREMI_CUDA_LAUNCH(grid, L::threads, 0, be.stream(), attention_backward_dkv_kernel<HD, T>)(dqkv, dout, qkvr, lse, Dv,
      rope_cos, rope_sin, Tn, C, H, rot, scale);
  DOREMI_CUDA_CHECK_LAUNCH("attention_backward_dkv_kernel");
  DOREMI_CUDA_LAUNCH(grid, L::threads, 0, be.stream(), attention_backward_dq_kernel<HD, T>)(dqkv, dout, qkvr, lse, Dv,
      rope_cos, rope_sin, Tn, C, H, rot, scale);
  DOREMI_CUDA_CHECK_LAUNCH("attention_backward_dq_kernel");
}

// f(std::integral_constant<int, hd>{}) for the supported head dimensions;
// with HD > 0 (known at compile time, as a model's Cfg::head_dim) only for
// HD, so only its kernels are compiled (hd must equal it).
template <int HD = 0, class F>
void dispatch_head_dim(int hd, F&& f) {
  static_assert(HD == 0 || HD == 16 || HD == 32 || HD == 64 || HD == 128,
                "attention (cuda): head dimension 16, 32, 64 or 128");
  if constexpr (HD > 0) {
    if (hd != HD) fail("attention (cuda): head dimension C / H = {} but the kernels were chosen for {}", hd, HD);
    f(std::integral_constant<int, HD>{});
  } else {  // (an else: statements after an `if constexpr` are instantiated too)
    switch (hd) {
      case 16: f(std::integral_constant<int, 16>{}); return;
      case 32: f(std::integral_constant<int, 32>{}); return;
      case 64: f(std::integral_constant<int, 64>{}); return;
      case 128: f(std::integral_constant<int, 128>{}); return;
      default: attention_unsupported_head_dim(hd);
    }
  }
}

// The tensor-core kernel family: read once from DOREMI_CUDA_ATTENTION ("wmma",
// the default, or "mma"); tests and benchmarks may set it. Forward and
// backward must run the same family (they do unless it changes in between).
enum class AttentionTcKernels { wmma, mma };
inline AttentionTcKernels& attention_tc_kernels() {
  static AttentionTcKernels k = [] {
    const char* env = std::getenv("DOREMI_CUDA_ATTENTION");
    const std::string_view v = env ? env : "";
    if (v.empty() || v == "wmma") return AttentionTcKernels::wmma;
    if (v == "mma") return AttentionTcKernels::mma;
    fail("DOREMI_CUDA_ATTENTION = '{}' is not a tensor-core attention kernel family (wmma or mma)", v);
  }();
  return k;
}

enum class AttentionPath { fp32, wmma, mma };

// The kernels attention_forward / attention_backward<P> with storage T run for
// head dimension hd on the current device.
template <MatmulPrecision P, class T>
AttentionPath attention_path(int hd) {
  if constexpr (P == MatmulPrecision::bf16 && std::is_same_v<T, float>) {
    const AttentionTcKernels family = attention_tc_kernels();
    std::size_t need = 0;
    dispatch_head_dim(hd, [&](auto hdc) {
      constexpr int HD = decltype(hdc)::value;
      using W = AttentionTcTiles<HD>;
      using M = AttentionMmaTiles<HD>;
      need = family == AttentionTcKernels::mma ? std::max(M::fwd_bytes, M::bwd_bytes)
                                               : std::max({W::fwd_bytes, W::dkv_bytes, W::dq_bytes});
    });
    if (!tensor_cores_fit(need)) return AttentionPath::fp32;
    return family == AttentionTcKernels::mma ? AttentionPath::mma : AttentionPath::wmma;
  } else {
    return AttentionPath::fp32;
  }
}

// The register-resident kernels with tiling L (AttentionMmaTiles).
template <class L, class T, class In>
void attention_mma_forward_launch(const Cuda& be, T* out, float* lse, const In* qkvr, int B, int Tn, int C, int H) {
  const dim3 grid(unsigned(B) * unsigned(H), unsigned((Tn + L::rows - 1) / L::rows));
  const float scale_log2 = 1.4426950408889634f / std::sqrt(float(L::hd));
  attention_tc_allow_smem(attention_mma_forward_kernel<L, T, In>, L::fwd_bytes);
  DOREMI_CUDA_LAUNCH(grid, L::fwd_threads, L::fwd_bytes, be.stream(), attention_mma_forward_kernel<L, T, In>)(out, lse,
      qkvr, Tn, C, H, scale_log2);
  DOREMI_CUDA_CHECK_LAUNCH("attention_mma_forward_kernel");
}

template <class L, class T, class In>
void attention_mma_backward_launch(const Cuda& be, T* dqkv, const In* dout, const In* qkvr, const float* lse,
                                   const float* Dv, const float* rope_cos, const float* rope_sin, int B, int Tn, int C,
                                   int H, int rot) {
  const dim3 grid(unsigned(B) * unsigned(H), unsigned((Tn + L::rows - 1) / L::rows));
  const float scale = 1.0f / std::sqrt(float(L::hd));
  const float scale_log2 = 1.4426950408889634f * scale;
  attention_tc_allow_smem(attention_mma_backward_dkv_kernel<L, T, In>, L::bwd_bytes);
  DOREMI_CUDA_LAUNCH(grid, L::dkv_threads, L::bwd_bytes, be.stream(), attention_mma_backward_dkv_kernel<L, T, In>)(dqkv,
      dout, qkvr, lse, Dv, rope_cos, rope_sin, Tn, C, H, rot, scale, scale_log2);
  DOREMI_CUDA_CHECK_LAUNCH("attention_mma_backward_dkv_kernel");
  attention_tc_allow_smem(attention_mma_backward_dq_kernel<L, T, In>, L::bwd_bytes);
  DOREMI_CUDA_LAUNCH(grid, L::dq_threads, L::bwd_bytes, be.stream(), attention_mma_backward_dq_kernel<L, T, In>)(dqkv,
      dout, qkvr, lse, Dv, rope_cos, rope_sin, Tn, C, H, rot, scale, scale_log2);
  DOREMI_CUDA_CHECK_LAUNCH("attention_mma_backward_dq_kernel");
}

}  // namespace cuda

// Elements of T that attention_forward<P>'s qkvr needs for B·T tokens of
// width C and H heads on this device: 3·C per token, half as many bytes
// where the tensor-core kernels run (they keep qkvr in bf16).
template <MatmulPrecision P, class T>
std::size_t attention_qkvr_size(const Cuda&, int B, int Tn, int C, int H) {
  const std::size_t n = std::size_t(B) * Tn * 3 * C;
  if (cuda::attention_path<P, T>(cuda::attention_check(B, Tn, C, H, 0)) == cuda::AttentionPath::fp32) return n;
  return (n * sizeof(__nv_bfloat16) + sizeof(T) - 1) / sizeof(T);
}

// qkvr receives qkv with q and k rotated (it must not alias qkv; it holds
// attention_qkvr_size elements); lse the
// logsumexp of each query's scaled scores, [B·H·T] (index (b·H + h)·T + t),
// kept for the backward. rope_cos / rope_sin: [n_ctx, rot/2] device tables
// (unused when rot = 0). T = float or __nv_bfloat16. P = MatmulPrecision::bf16
// with T = float: the tensor-core kernels (bf16 operands, fp32 accumulation;
// see attention_tc.hpp); otherwise (and on devices they do not fit) fp32.
// The tensor-core kernels read bf16: qkvr then holds the rotated qkv rounded
// to bf16, in its first half (the same values they would round it to). out
// is T, or bf16 (Cuda::operand: it only feeds the output projection; the
// backward's D then sums dO·O over the rounded O, as FlashAttention does);
// qkv is T, or bf16 as bf16 models store it. HeadDim: the head dimension C / H
// when known at compile time (models pass Cfg::head_dim: only its kernels are
// compiled); 0: chosen at run time among 16, 32, 64 and 128.
template <MatmulPrecision P = MatmulPrecision::native, int HeadDim = 0, class T, class O, class In>
void attention_forward(const Cuda& be, O* out, T* qkvr, float* lse, const In* qkv, const float* rope_cos,
                       const float* rope_sin, int B, int Tn, int C, int H, int rot) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16>,
                "attention (cuda): storage float or __nv_bfloat16");
  const int hd = cuda::attention_check(B, Tn, C, H, rot);
  if (reinterpret_cast<std::uintptr_t>(qkvr) % 8 != 0)  // the rotary pass stores column pairs
    fail("attention_forward (cuda): qkvr must be 8-byte aligned");
  const cuda::AttentionPath path = cuda::attention_path<P, T>(hd);
  auto* const qkvr_bf16 = reinterpret_cast<__nv_bfloat16*>(qkvr);
  cuda::dispatch_head_dim<HeadDim>(hd, [&](auto hdc) {
    constexpr int HD = decltype(hdc)::value;
    const unsigned rows = unsigned(B) * unsigned(Tn);
    using Q = cuda::plain_t<In>;
    const bool x8 = std::is_same_v<Q, __nv_bfloat16> && path != cuda::AttentionPath::fp32 && rot % 16 == 0 &&
                    reinterpret_cast<std::uintptr_t>(qkv) % 16 == 0 &&
                    reinterpret_cast<std::uintptr_t>(qkvr) % 16 == 0;
    if (path == cuda::AttentionPath::fp32)
      DOREMI_CUDA_LAUNCH(rows, 128, 0, be.stream(), cuda::attention_rotary_kernel<HD, T, Q>)(qkvr, qkv, rope_cos,
                                                                                            rope_sin, Tn, C, rot);
    else if (x8)
      DOREMI_CUDA_LAUNCH(rows, 96, 0, be.stream(), cuda::attention_rotary_bf16x8_kernel<HD>)(
          qkvr_bf16, reinterpret_cast<const __nv_bfloat16*>(qkv), rope_cos, rope_sin, Tn, C, rot);
    else
      DOREMI_CUDA_LAUNCH(rows, 128, 0, be.stream(), cuda::attention_rotary_kernel<HD, __nv_bfloat16, Q>)(
          qkvr_bf16, qkv, rope_cos, rope_sin, Tn, C, rot);
  });
  DOREMI_CUDA_CHECK_LAUNCH("attention_rotary_kernel");
  const __nv_bfloat16* q = qkvr_bf16;
  using Out = cuda::plain_t<O>;
  cuda::dispatch_head_dim<HeadDim>(hd, [&](auto hdc) {
    constexpr int HD = decltype(hdc)::value;
    switch (path) {
      case cuda::AttentionPath::mma:
        cuda::attention_mma_forward_launch<cuda::AttentionMmaTiles<HD>, Out>(be, out, lse, q, B, Tn, C, H);
        break;
      case cuda::AttentionPath::wmma: cuda::attention_tc_forward_launch<HD, Out>(be, out, lse, q, B, Tn, C, H); break;
      case cuda::AttentionPath::fp32:
        if constexpr (std::is_same_v<Out, T>) {
          cuda::attention_forward_launch<HD>(be, out, lse, qkvr, B, Tn, C, H);
        } else {  // bf16 out without the tensor-core kernels (older devices): through T, then rounded
          const std::size_t n = std::size_t(B) * Tn * C;
          T* tmp = static_cast<T*>(be.ctx->scratch_bytes(n * sizeof(T)));
          cuda::attention_forward_launch<HD>(be, tmp, lse, qkvr, B, Tn, C, H);
          convert(be, out, static_cast<const T*>(tmp), n);
        }
        break;
    }
  });
}

// Overwrites dqkv [B·T, 3C] with the gradient with respect to the unrotated
// qkv, from dout, the forward's out, qkvr and lse. Needs B·H·T floats of the
// backend's scratch (D) and, for the tensor-core kernels with a T-typed dout,
// B·T·C bf16 of its operand area (dout rounded, made by the D pass). P as in
// attention_forward (use the same P for both). dqkv and dout may be bf16 with
// P = bf16 (bf16 models keep the gradients of activations that feed products
// so): the tensor-core kernels read that dout as it is and write dqkv rounded
// once; the fp32 kernels go through fp32 copies in the operand area.
template <MatmulPrecision P = MatmulPrecision::native, int HeadDim = 0, class T, class DQ, class DO, class O>
void attention_backward(const Cuda& be, DQ* dqkv, const DO* dout, const O* out, const T* qkvr, const float* lse,
                        const float* rope_cos, const float* rope_sin, int B, int Tn, int C, int H, int rot) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16>,
                "attention (cuda): storage float or __nv_bfloat16");
  static_assert((std::is_same_v<DQ, T> && std::is_same_v<DO, T>) || P == MatmulPrecision::bf16,
                "attention_backward (cuda): bf16 gradients need bf16 products");
  using Dq = cuda::plain_t<DQ>;
  using Do = cuda::plain_t<DO>;
  using Out = cuda::plain_t<O>;
  const int hd = cuda::attention_check(B, Tn, C, H, rot);
  const std::size_t rows = std::size_t(B) * H * Tn, n = std::size_t(B) * Tn * C;
  float* Dv = static_cast<float*>(be.ctx->scratch_bytes(rows * sizeof(float)));
  const cuda::AttentionPath path = cuda::attention_path<P, T>(hd);
  const unsigned grid = cuda::blocks_for(std::size_t(B) * Tn * 256, 256);  // a block per row
  if (path == cuda::AttentionPath::fp32) {
    // The fp32 kernels read and write T: bf16 gradients through T copies.
    T* const copies = std::is_same_v<Dq, T> && std::is_same_v<Do, T>
                          ? nullptr
                          : static_cast<T*>(be.ctx->operand_bytes(4 * n * sizeof(T)));
    const T* d = nullptr;
    if constexpr (std::is_same_v<Do, T>) {
      d = dout;
    } else {
      convert(be, copies, static_cast<const Do*>(dout), n);
      d = copies;
    }
    T* dq = nullptr;
    if constexpr (std::is_same_v<Dq, T>) dq = dqkv;
    else dq = copies + n;
    DOREMI_CUDA_LAUNCH(grid, 256, 0, be.stream(), cuda::attention_row_dot_kernel<T, false, Out>)(Dv, nullptr, d, out,
                                                                                              B, Tn, C, H);
    DOREMI_CUDA_CHECK_LAUNCH("attention_row_dot_kernel");
    cuda::dispatch_head_dim<HeadDim>(hd, [&](auto hdc) {
      cuda::attention_backward_launch<decltype(hdc)::value>(be, dq, d, qkvr, lse, Dv, rope_cos, rope_sin, B, Tn, C, H,
                                                            rot);
    });
    if constexpr (!std::is_same_v<Dq, T>) convert(be, static_cast<Dq*>(dqkv), static_cast<const T*>(dq), 3 * n);
    return;
  }
  // Tensor cores: dO as bf16, as it is or rounded by the D pass.
  const __nv_bfloat16* dO = nullptr;
  if constexpr (std::is_same_v<Do, __nv_bfloat16>) {
    dO = dout;
    DOREMI_CUDA_LAUNCH(grid, 256, 0, be.stream(), cuda::attention_row_dot_kernel<Do, false, Out>)(Dv, nullptr, dout,
                                                                                               out, B, Tn, C, H);
  } else {
    auto* const dout_bf16 = static_cast<__nv_bfloat16*>(be.ctx->operand_bytes(n * sizeof(__nv_bfloat16)));
    dO = dout_bf16;
    DOREMI_CUDA_LAUNCH(grid, 256, 0, be.stream(), cuda::attention_row_dot_kernel<Do, true, Out>)(Dv, dout_bf16, dout,
                                                                                              out, B, Tn, C, H);
  }
  DOREMI_CUDA_CHECK_LAUNCH("attention_row_dot_kernel");
  const auto* q = reinterpret_cast<const __nv_bfloat16*>(qkvr);
  auto* const dq = static_cast<Dq*>(dqkv);
  cuda::dispatch_head_dim<HeadDim>(hd, [&](auto hdc) {
    constexpr int HD = decltype(hdc)::value;
    if (path == cuda::AttentionPath::mma)
      cuda::attention_mma_backward_launch<cuda::AttentionMmaTiles<HD>>(be, dq, dO, q, lse, Dv, rope_cos, rope_sin, B, Tn,
                                                                      C, H, rot);
    else
      cuda::attention_tc_backward_launch<HD>(be, dq, dO, q, lse, Dv, rope_cos, rope_sin, B, Tn, C, H, rot);
  });
}

}  // namespace doremi::backend
