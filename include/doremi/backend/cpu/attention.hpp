#pragma once
// Causal multi-head self-attention on the fused qkv projection, with rotary
// position embedding on the first `rot` dims of each head (GPT-NeoX).
//
// Layout: qkv row t holds, per head h, [q_h | k_h | v_h] (3·hd values), as
// GPT-NeoX's query_key_value weight produces. Forward rotates q and k into
// `qkvr`, then per (batch, head) computes P = softmax(QKᵀ/√hd + causal mask)
// (kept for the backward: B·H·T² values) and O = PV, written head-major into
// `out` [B·T, C]. The T×T products are small dense GEMMs done by Eigen inside
// one OpenMP loop over (batch, head).
#include <cmath>
#include <type_traits>
#include <cstdint>
#include <limits>

#include "doremi/backend/cpu/cpu.hpp"
#include "doremi/backend/cpu/gelu.hpp"
#include "doremi/backend/elementwise.hpp"
#include "doremi/backend/types.hpp"

namespace doremi::backend {

// cos/sin tables: [n_ctx, rot/2] each. Precision (the model's MatmulPrecision) is
// accepted for the backends' common signature; on the CPU attention's
// products always run in T (its FLOPs are small beside the GEMMs here).
// out may be bf16 (Cpu::operand: it only feeds the output projection),
// rounded once here; qkv may be bf16 (as bf16 models store it). HeadDim (the
// head dimension when known at compile time, for the backends' common
// signature): the CPU kernels take any C / H.
template <MatmulPrecision Precision = MatmulPrecision::native, int HeadDim = 0, class T, class O, class In>
void attention_forward(Cpu, O* out, T* qkvr, T* att, const In* qkv, const T* rope_cos, const T* rope_sin, int B,
                       int Tn, int C, int H, int rot) {
  using namespace cpu;
  const int hd = C / H, half = rot / 2;
  const std::size_t N = std::size_t(B) * Tn;
  convert(Cpu{}, qkvr, qkv, N * 3 * C);
  if (rot > 0) {
#pragma omp parallel for schedule(static)
    for (std::ptrdiff_t n = 0; n < std::ptrdiff_t(N); ++n) {
      const int t = int(n % Tn);
      for (int h = 0; h < H; ++h) {
        T* q = qkvr + std::size_t(n) * 3 * C + std::size_t(h) * 3 * hd;
        T* k = q + hd;
        for (int i = 0; i < half; ++i) {
          const T c = rope_cos[t * half + i], s = rope_sin[t * half + i];
          rotate(q[i], q[i + half], c, s);
          rotate(k[i], k[i + half], c, s);
        }
      }
    }
  }
  const T scale = T(1) / std::sqrt(T(hd));
#pragma omp parallel for schedule(static)
  for (int bh = 0; bh < B * H; ++bh) {
    const int b = bh / H, h = bh % H;
    const T* base = qkvr + std::size_t(b) * Tn * 3 * C + std::size_t(h) * 3 * hd;
    CStridedMap<T> Q(base, Tn, hd, Eigen::OuterStride<>(3 * C));
    CStridedMap<T> K(base + hd, Tn, hd, Eigen::OuterStride<>(3 * C));
    CStridedMap<T> V(base + 2 * hd, Tn, hd, Eigen::OuterStride<>(3 * C));
    MatMap<T> P(att + std::size_t(bh) * Tn * Tn, Tn, Tn);
    P.noalias() = (Q * K.transpose()) * scale;
    for (int i = 0; i < Tn; ++i) {
      T* row = P.data() + std::size_t(i) * Tn;
      T mx = -std::numeric_limits<T>::infinity();
      for (int j = 0; j <= i; ++j) mx = row[j] > mx ? row[j] : mx;
      T sum = 0;
      for (int j = 0; j <= i; ++j) {
        row[j] = std::exp(row[j] - mx);
        sum += row[j];
      }
      const T inv = T(1) / sum;
      for (int j = 0; j <= i; ++j) row[j] *= inv;
      for (int j = i + 1; j < Tn; ++j) row[j] = 0;
    }
    O* const ob = out + std::size_t(b) * Tn * C + std::size_t(h) * hd;
    if constexpr (std::is_same_v<O, T>) {
      StridedMap<T>(ob, Tn, hd, Eigen::OuterStride<>(C)).noalias() = P * V;
    } else {
      const RowMat<T> R = P * V;
      for (int i = 0; i < Tn; ++i)
        for (int d = 0; d < hd; ++d) ob[std::size_t(i) * C + d] = cast_to<O>(R(i, d));
    }
  }
}

namespace cpu {
inline constexpr int kCausalBlock = 32;  // query rows per block of attention_cached

// row[0, n) = softmax(row[0, n)), row[n, cols) = 0 (vectorised exp: Eigen's).
template <class T>
void softmax_prefix(T* row, int n, int cols) {
  Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>> r(row, n);
  r = (r - r.maxCoeff()).exp();
  r *= T(1) / r.sum();
  std::fill(row + n, row + cols, T(0));
}

// One decoding query q [hd] against the cache rows [0, n) of one (row, head):
// out [hd] = Σ_j softmax_j(q·k_j · scale) v_j, scores in s [n]. Dot products
// and axpys rather than BLAS calls (which cost more at this size), with the
// cache prefetched ahead: each step reads it once, and the hardware
// prefetcher alone left these reads at about half the bandwidth.
template <class T, class O>
void decode_query(O* out, const T* q, const T* k_cache, const T* v_cache, T* s, int n, int hd, T scale) {
  constexpr int ahead = 8;  // cache rows
  const auto prefetch_row = [hd](const T* p) {
    for (int i = 0; i < hd * int(sizeof(T)); i += 64) __builtin_prefetch(reinterpret_cast<const char*>(p) + i);
  };
  for (int j = 0; j < n; ++j) {
    const T* k = k_cache + std::size_t(j) * hd;
    prefetch_row(k + ahead * hd);
    prefetch_row(v_cache + std::size_t(j) * hd);  // for the sum below
    T d = 0;
#pragma omp simd reduction(+ : d)
    for (int i = 0; i < hd; ++i) d += q[i] * k[i];
    s[j] = d * scale;
  }
  softmax_prefix(s, n, n);
  constexpr int lanes = 64;  // accumulators held in registers, a block of dims at a time
  for (int i0 = 0; i0 < hd; i0 += lanes) {
    const int w = std::min(lanes, hd - i0);
    T acc[lanes] = {};
    for (int j = 0; j < n; ++j) {
      const T* v = v_cache + std::size_t(j) * hd + i0;
      const T pj = s[j];
#pragma omp simd
      for (int i = 0; i < w; ++i) acc[i] += pj * v[i];
    }
    for (int i = 0; i < w; ++i) out[i0 + i] = cast_to<O>(acc[i]);
  }
}
}  // namespace cpu

// Generation (docs/generation.md): attention of Tn new tokens in each of B
// rows against a per-row key/value cache k_cache, v_cache [B, H, capacity, hd]
// (T). start[b]: positions row b already holds; token t of row b sits at
// p = start[b] + t (< capacity) and is rotated with table row p on the first
// `rot` dims of q and k, as attention_forward rotates. Writes every new
// token's rotated k and its v at p, then out[b·Tn + t] (head-major [C], O) =
// Σ_{j ≤ p} softmax_j(q·k_j / √hd) v_j. One OpenMP loop over (row, head);
// per (row, head) and block of new tokens two small products (Q·Kᵀ over the
// cache rows the block sees, P·V) in T.
template <MatmulPrecision Precision = MatmulPrecision::native, int HeadDim = 0, class T, class O, class In>
void attention_cached(Cpu, O* out, const In* qkv, T* k_cache, T* v_cache, const std::int32_t* start,
                      const T* rope_cos, const T* rope_sin, int B, int Tn, int C, int H, int rot, int capacity) {
  using namespace cpu;
  const int hd = C / H, half = rot / 2;
  const T scale = T(1) / std::sqrt(T(hd));
#pragma omp parallel
  {
    RowMat<T> Q, S;
    // Round robin: the rows' lengths differ (generate sorts them), the heads of a row do not.
#pragma omp for schedule(static, 1)
    for (int bh = 0; bh < B * H; ++bh) {
      const int b = bh / H, h = bh % H, s0 = start[b], end = s0 + Tn;  // cache rows [0, end) after the writes
      T* kc = k_cache + std::size_t(bh) * capacity * hd;
      T* vc = v_cache + std::size_t(bh) * capacity * hd;
      Q.resize(Tn, hd);
      for (int t = 0; t < Tn; ++t) {
        const In* src = qkv + (std::size_t(b) * Tn + t) * 3 * C + std::size_t(h) * 3 * hd;
        T* q = Q.data() + std::size_t(t) * hd;
        T* k = kc + std::size_t(s0 + t) * hd;
        T* v = vc + std::size_t(s0 + t) * hd;
        for (int d = 0; d < hd; ++d) {
          q[d] = cast_to<T>(src[d]);
          k[d] = cast_to<T>(src[hd + d]);
          v[d] = cast_to<T>(src[2 * hd + d]);
        }
        if (rot > 0) {
          const T* cs = rope_cos + std::size_t(s0 + t) * half;
          const T* sn = rope_sin + std::size_t(s0 + t) * half;
          for (int i = 0; i < half; ++i) {
            rotate(q[i], q[i + half], cs[i], sn[i]);
            rotate(k[i], k[i + half], cs[i], sn[i]);
          }
        }
      }
      S.resize(Tn, end);
      O* const ob = out + std::size_t(b) * Tn * C + std::size_t(h) * hd;
      if (Tn == 1) {  // decoding: one query against the cache rows [0, end)
        decode_query(ob, Q.data(), kc, vc, S.data(), end, hd, scale);
        continue;
      }
      CMatMap<T> K(kc, end, hd), V(vc, end, hd);
      // Causal blocks: rows [t0, t0 + n) see the cache rows [0, s0 + t0 + n),
      // so a prefill computes about half of Q·Kᵀ.
      for (int t0 = 0; t0 < Tn; t0 += kCausalBlock) {
        const int n = std::min(kCausalBlock, Tn - t0), cols = s0 + t0 + n;
        auto Sb = S.block(t0, 0, n, cols);
        Sb.noalias() = (Q.middleRows(t0, n) * K.topRows(cols).transpose()) * scale;
        for (int t = 0; t < n; ++t) softmax_prefix(&Sb(t, 0), s0 + t0 + t + 1, cols);
        if constexpr (std::is_same_v<O, T>) {
          StridedMap<T>(ob + std::size_t(t0) * C, n, hd, Eigen::OuterStride<>(C)).noalias() = Sb * V.topRows(cols);
        } else {
          const RowMat<T> R = Sb * V.topRows(cols);
          for (int t = 0; t < n; ++t)
            for (int d = 0; d < hd; ++d) ob[std::size_t(t0 + t) * C + d] = cast_to<O>(R(t, d));
        }
      }
    }
  }
}

namespace cpu {

template <class T>
void attention_backward_t(T* dqkv, const T* dout, const T* qkvr, const T* att, const T* rope_cos, const T* rope_sin,
                          int B, int Tn, int C, int H, int rot) {
  const int hd = C / H, half = rot / 2;
  const T scale = T(1) / std::sqrt(T(hd));
#pragma omp parallel
  {
    RowMat<T> dP(Tn, Tn);
#pragma omp for schedule(static)
    for (int bh = 0; bh < B * H; ++bh) {
      const int b = bh / H, h = bh % H;
      const std::size_t off = std::size_t(b) * Tn * 3 * C + std::size_t(h) * 3 * hd;
      CStridedMap<T> Q(qkvr + off, Tn, hd, Eigen::OuterStride<>(3 * C));
      CStridedMap<T> K(qkvr + off + hd, Tn, hd, Eigen::OuterStride<>(3 * C));
      CStridedMap<T> V(qkvr + off + 2 * hd, Tn, hd, Eigen::OuterStride<>(3 * C));
      StridedMap<T> dQ(dqkv + off, Tn, hd, Eigen::OuterStride<>(3 * C));
      StridedMap<T> dK(dqkv + off + hd, Tn, hd, Eigen::OuterStride<>(3 * C));
      StridedMap<T> dV(dqkv + off + 2 * hd, Tn, hd, Eigen::OuterStride<>(3 * C));
      CMatMap<T> P(att + std::size_t(bh) * Tn * Tn, Tn, Tn);
      CStridedMap<T> dO(dout + std::size_t(b) * Tn * C + std::size_t(h) * hd, Tn, hd, Eigen::OuterStride<>(C));
      dV.noalias() = P.transpose() * dO;
      dP.noalias() = dO * V.transpose();
      // Softmax backward: dS = P ⊙ (dP − rowsum(P ⊙ dP)), then the 1/√hd scale.
      for (int i = 0; i < Tn; ++i) {
        const T* p = P.data() + std::size_t(i) * Tn;
        T* d = dP.data() + std::size_t(i) * Tn;
        T dot = 0;
        for (int j = 0; j <= i; ++j) dot += p[j] * d[j];
        for (int j = 0; j <= i; ++j) d[j] = p[j] * (d[j] - dot) * scale;
        for (int j = i + 1; j < Tn; ++j) d[j] = 0;
      }
      dQ.noalias() = dP * K;
      dK.noalias() = dP.transpose() * Q;
    }
  }
  if (rot > 0) {
    const std::size_t N = std::size_t(B) * Tn;
#pragma omp parallel for schedule(static)
    for (std::ptrdiff_t n = 0; n < std::ptrdiff_t(N); ++n) {
      const int t = int(n % Tn);
      for (int h = 0; h < H; ++h) {
        T* q = dqkv + std::size_t(n) * 3 * C + std::size_t(h) * 3 * hd;
        T* k = q + hd;
        for (int i = 0; i < half; ++i) {
          const T c = rope_cos[t * half + i], s = rope_sin[t * half + i];
          rotate_back(q[i], q[i + half], c, s);
          rotate_back(k[i], k[i + half], c, s);
        }
      }
    }
  }
}

}  // namespace cpu

// Overwrites dqkv with the gradient with respect to the (unrotated) qkv.
// `out` (the forward's output) is unused here: flash-style backends need it.
// dqkv and dout may be bf16 with bf16 products (bf16 models keep the
// gradients of activations that feed products so): computed in T from
// dout's values, dqkv rounded once.
template <MatmulPrecision Precision = MatmulPrecision::native, int HeadDim = 0, class T, class DQ, class DO, class O>
void attention_backward(Cpu, DQ* dqkv, const DO* dout, const O* /*out*/, const T* qkvr, const T* att,
                        const T* rope_cos, const T* rope_sin, int B, int Tn, int C, int H, int rot) {
  using namespace cpu;
  static_assert((std::is_same_v<DQ, T> && std::is_same_v<DO, T>) || Precision == MatmulPrecision::bf16,
                "attention_backward: bf16 gradients need bf16 products");
  const std::size_t N = std::size_t(B) * Tn;
  T* dq = nullptr;
  if constexpr (std::is_same_v<DQ, T>) dq = dqkv;
  else dq = scratch<T, 6>(3 * N * C);
  const T* d = nullptr;
  if constexpr (std::is_same_v<DO, T>) {
    d = dout;
  } else {
    T* copy = scratch<T, 7>(N * C);
    convert(Cpu{}, copy, dout, N * C);
    d = copy;
  }
  attention_backward_t(dq, d, qkvr, att, rope_cos, rope_sin, B, Tn, C, H, rot);
  if constexpr (!std::is_same_v<DQ, T>) convert(Cpu{}, dqkv, static_cast<const T*>(dq), 3 * N * C);
}

}  // namespace doremi::backend
