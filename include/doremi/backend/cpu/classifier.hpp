#pragma once
// The language-model head: logits = x·Wᵀ over the padded vocabulary, then
// per-token cross-entropy ℓ = logsumexp(logits) − logits[target].
//
// The [N, V] matrix is the largest buffer of a step, so it is touched as few
// times as possible. Forward turns each row in place into E = exp(logits − m)
// (m the row max) and keeps s = 1/Σ E per row: softmax = s·E. Backward never
// rewrites the matrix: with per-token weights w,
//   dlogits = diag(w·s)·E − w·onehot(target), so
//   dx  = diag(w·s)·(E·W) − w·W[target]       (row scaling after the GEMM)
//   dW += Eᵀ·(diag(w·s)·x) − Σ_n w_n·x_n at row target_n
// Two GEMMs over E and O(N·C) extra work. Targets < 0 are padding: loss 0,
// mask 0, weight 0.
//
// P = MatmulPrecision::bf16: the logits are computed 256 rows at a time into
// fp32 scratch (bf16 operands, fp32 accumulation), the softmax statistics and
// losses in fp32, and E is kept in bf16 in the first half of `probs` (the
// backward's GEMM operand), so the [N, V] matrix is written once and read
// twice in bf16 instead of rewritten in fp32.
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "doremi/backend/cpu/cpu.hpp"
#include "doremi/backend/cpu/gemm.hpp"
#include "doremi/backend/cpu/matmul.hpp"

namespace doremi::backend {

namespace cpu {

// One row of logits r[0..V), in place: r becomes E = exp(r − max); returns
// the row's loss (0 for padding) and sets inv_sum = 1/ΣE and the mask.
template <class T>
T softmax_row(T* r, std::int32_t target, int V, T& inv_sum, std::uint8_t& mask) {
  Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> row(r, V);
  const T mx = row.maxCoeff();
  const bool valid = target >= 0;
  const T target_logit = valid ? r[target] : T(0);
  row = (row - mx).exp();
  const double s = double(row.sum());
  inv_sum = T(1.0 / s);
  mask = valid;
  return valid ? T(double(mx) + std::log(s) - double(target_logit)) : T(0);
}

}  // namespace cpu

// `probs` receives E (the row-wise exp-shifted logits); `inv_sum` receives
// s. for_backward = false: only the losses are wanted (no backward follows),
// and the bf16 path skips writing E.
//
// P = bf16: E is kept in bf16 (E = cpu::bf16), x and w are bf16 or fp32
// (rounded to bf16 copies here), as the model's bf16 copies of the final
// LayerNorm's output and the output embedding are. Else every type is T.
template <MatmulPrecision P = MatmulPrecision::native, class T, class E, class X, class W>
void classifier_forward(Cpu, T* losses, std::uint8_t* mask, E* probs, T* inv_sum, const X* x, const W* w,
                        const std::int32_t* targets, int N, int C, int V, bool for_backward = true) {
  using namespace cpu;
  if constexpr (P == MatmulPrecision::bf16) {
    static_assert(std::is_same_v<E, bf16> && std::is_same_v<T, float>, "classifier (bf16): bf16 E, fp32 losses");
    const bf16* xb = operand<P, 0>(x, std::size_t(N) * C);
    const bf16* wb = operand<P, 1>(w, std::size_t(V) * C);
    constexpr int rows = 256;  // smaller chunks cost GEMM speed (64 rows: +25 % here)
    float* logits = scratch<float, 3>(std::size_t(rows) * V);
    for (int r0 = 0; r0 < N; r0 += rows) {
      const int m = std::min(rows, N - r0);
      gemm(false, true, m, V, C, xb + std::size_t(r0) * C, C, wb, C, logits, V, false);
#pragma omp parallel for schedule(static)
      for (int i = 0; i < m; ++i) {
        const int n = r0 + i;
        float* r = logits + std::size_t(i) * V;
        losses[n] = softmax_row(r, targets[n], V, inv_sum[n], mask[n]);
        if (!for_backward) continue;
        bf16* e = probs + std::size_t(n) * V;
#pragma omp simd
        for (int v = 0; v < V; ++v) e[v] = to_bf16(r[v]);
      }
    }
  } else {
    static_assert(std::is_same_v<E, T> && std::is_same_v<X, T> && std::is_same_v<W, T>,
                  "classifier: one element type without bf16 products");
    matmul_forward(Cpu{}, probs, x, w, static_cast<const T*>(nullptr), N, C, V);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; ++n)
      losses[n] = softmax_row(probs + std::size_t(n) * V, targets[n], V, inv_sum[n], mask[n]);
  }
}

// Overwrites dx; accumulates into dw. P = bf16: dx may be bf16 (the fp32
// result rounded once), and probs, x, w as the forward had them.
template <MatmulPrecision P = MatmulPrecision::native, class T, class DX, class E, class X, class W>
void classifier_backward(Cpu, DX* dx, T* dw, const E* probs, const T* inv_sum, const T* weights, const X* x,
                         const W* w, const std::int32_t* targets, int N, int C, int V) {
  using namespace cpu;
  static_assert(std::is_same_v<DX, T> || P == MatmulPrecision::bf16, "classifier: bf16 dx needs bf16 products");
  std::vector<T> scale(static_cast<std::size_t>(N), T(0)), wn(static_cast<std::size_t>(N), T(0));
  for (int n = 0; n < N; ++n) {
    wn[n] = targets[n] >= 0 ? weights[n] : T(0);
    scale[n] = wn[n] * inv_sum[n];
  }
  // xs = diag(scale)·x, in T.
  RowMat<T> xs(N, C);
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) xs(n, c) = scale[n] * cast_to<T>(x[std::size_t(n) * C + c]);
  T* acc = nullptr;  // dx before its rounding to DX
  if constexpr (std::is_same_v<DX, T>) acc = dx;
  else acc = scratch<T, 4>(std::size_t(N) * C);
  if constexpr (P == MatmulPrecision::bf16) {
    static_assert(std::is_same_v<E, bf16>, "classifier (bf16): bf16 E");
    gemm(false, false, N, C, V, probs, V, operand<P, 1>(w, std::size_t(V) * C), C, acc, C, false);
    gemm(true, false, V, C, N, probs, V, operand<P, 0>(xs.data(), std::size_t(N) * C), C, dw, C, true);
  } else {
    gemm(false, false, N, C, V, probs, V, w, C, acc, C, false);
    gemm(true, false, V, C, N, probs, V, static_cast<const T*>(xs.data()), C, dw, C, true);
  }
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const W* wt = w + std::size_t(targets[n] >= 0 ? targets[n] : 0) * C;
    T* d = acc + std::size_t(n) * C;
    for (int c = 0; c < C; ++c) d[c] = scale[n] * d[c] - wn[n] * cast_to<T>(wt[c]);
  }
  if constexpr (!std::is_same_v<DX, T>) convert(Cpu{}, dx, static_cast<const T*>(acc), std::size_t(N) * C);
  for (int n = 0; n < N; ++n) {  // serial: several tokens may share a target row
    if (wn[n] == T(0)) continue;
    T* d = dw + std::size_t(targets[n]) * C;
    const X* xn = x + std::size_t(n) * C;
    for (int c = 0; c < C; ++c) d[c] -= wn[n] * cast_to<T>(xn[c]);
  }
}

// Per row r of a [B × Tn] batch, over its tokens whose mask is set: the
// losses' sum and count and, with ref (another model's losses of the same
// tokens: the DRO reference), ref's sum and the excess losses' (else 0); in
// double, in token order. What the trainers read of a forward pass, so that
// per-token losses need not leave the device on a GPU.
template <class T>
std::vector<RowLossSums> row_loss_sums(Cpu, const T* losses, const std::uint8_t* mask, int B, int Tn,
                                       const T* ref = nullptr) {
  std::vector<RowLossSums> out(static_cast<std::size_t>(B));
  for (int b = 0; b < B; ++b)
    for (std::size_t j = std::size_t(b) * Tn; j < std::size_t(b + 1) * Tn; ++j) {
      if (!mask[j]) continue;
      if (ref) out[std::size_t(b)].add(double(losses[j]), double(ref[j]));
      else out[std::size_t(b)].add(double(losses[j]));
    }
  return out;
}

}  // namespace doremi::backend
