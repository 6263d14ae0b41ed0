#pragma once
// Linear layer y = x·Wᵀ + b with W stored [out, in] (HuggingFace's layout).
// Compute-bound: all three products go to cpu::gemm (oneDNN or Eigen), which
// uses every OpenMP thread. Backward overwrites dx and accumulates into dW, db
// (parameter gradients add up across micro-batches).
//
// P = MatmulPrecision::bf16 rounds the operands of each product to bf16 (into
// per-thread scratch) and accumulates in fp32; weights, activations and
// gradients stay fp32 everywhere else.
#include <array>

#include "doremi/backend/cpu/cpu.hpp"
#include "doremi/backend/cpu/gelu.hpp"
#include "doremi/backend/cpu/gemm.hpp"
#include "doremi/core/error.hpp"
#include "doremi/backend/types.hpp"

namespace doremi::backend {

namespace cpu {

// The operand as the product wants it: itself, or (P = bf16, fp32 input) a
// bf16 copy in scratch slot `Slot`. Inputs already bf16 (Cpu::operand
// activations and weight copies) pass as they are.
template <MatmulPrecision P, int Slot, class T>
const auto* operand(const T* p, std::size_t n) {
  if constexpr (P == MatmulPrecision::bf16 && !std::is_same_v<T, bf16>) {
    static_assert(std::is_same_v<T, float>, "bf16 matrix products need fp32 or bf16 operands");
    bf16* b = scratch<bf16, Slot>(n);
    convert(Cpu{}, b, p, n);
    return static_cast<const bf16*>(b);
  } else {
    static_assert(P == MatmulPrecision::bf16 || !std::is_same_v<T, bf16>, "bf16 operands need MatmulPrecision::bf16");
    return p;
  }
}

}  // namespace cpu

// x and w: the model's type T, or bf16 when P is bf16 (each independently).
// out and bias: T, or both bf16 (P = bf16: an output that only feeds the
// next layer's products, as autocast keeps it): the fp32 sum plus the bf16
// bias, rounded once (what the GPU's GEMM epilogue computes).
// residual (T outputs only; may be out itself): out = residual + x·Wᵀ + b,
// the residual stream's add folded into the product (the GPU's GEMM reads it
// as its C matrix).
template <MatmulPrecision P = MatmulPrecision::native, class O, class X, class W, class Bias>
void matmul_forward(Cpu, O* out, const X* x, const W* w, const Bias* bias, int N, int in, int out_dim,
                    const O* residual = nullptr) {
  using namespace cpu;
  static_assert(std::is_same_v<Bias, O>, "matmul_forward: the bias has the output's type");
  using T = compute_t<O>;
  static_assert(std::is_same_v<O, T> || P == MatmulPrecision::bf16, "bf16 outputs need MatmulPrecision::bf16");
  T* acc = nullptr;
  if constexpr (std::is_same_v<O, T>) {
    acc = out;
    if (residual && residual != out) copy(Cpu{}, out, residual, std::size_t(N) * out_dim);
  } else {
    if (residual) fail("matmul_forward: a residual needs an output of the model's type");
    acc = scratch<T, 4>(std::size_t(N) * out_dim);
  }
  gemm(false, true, N, out_dim, in, operand<P, 0>(x, std::size_t(N) * in), in,
       operand<P, 1>(w, std::size_t(out_dim) * in), in, acc, out_dim, residual != nullptr);
  if constexpr (std::is_same_v<O, T>) {
    if (bias) {
#pragma omp parallel for schedule(static) if (std::size_t(N) * out_dim > 65536)
      for (int n = 0; n < N; ++n)
        Eigen::Map<RowVec<T>>(out + std::size_t(n) * out_dim, out_dim) += Eigen::Map<const RowVec<T>>(bias, out_dim);
    }
  } else {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; ++n)
      for (int j = 0; j < out_dim; ++j) {
        const std::size_t o = std::size_t(n) * out_dim + j;
        out[o] = cast_to<O>(bias ? acc[o] + cast_to<T>(bias[j]) : acc[o]);
      }
  }
}

// out = GELU(x·Wᵀ + b) with the GELU's input kept in pre (the MLP's first
// layer), pre and out of one type (T, or bf16 with P = bf16): the product,
// then the GELU of the stored pre. (The GPU fuses both into one GEMM where
// it can; see backend/cuda/matmul.hpp.)
template <MatmulPrecision P, Gelu G, class O, class X, class W>
void matmul_gelu_forward(Cpu, O* out, O* pre, const X* x, const W* w, const O* bias, int N, int in, int out_dim) {
  matmul_forward<P>(Cpu{}, pre, x, w, bias, N, in, out_dim);
  gelu_forward<G>(Cpu{}, out, static_cast<const O*>(pre), std::size_t(N) * out_dim);
}

// dx and dout may be bf16 with P = bf16 (gradients of activations kept in
// bf16, as autocast keeps them): dx is the fp32 sums rounded once.
template <MatmulPrecision P = MatmulPrecision::native, class T, class DX, class DO, class X, class W>
void matmul_backward(Cpu, DX* dx, T* dw, T* dbias, const DO* dout, const X* x, const W* w, int N, int in,
                     int out_dim) {
  using namespace cpu;
  static_assert(std::is_same_v<DX, T> || (P == MatmulPrecision::bf16 && std::is_same_v<DX, bf16>),
                "matmul_backward: dx of the model's type, or bf16 with bf16 products");
  static_assert(std::is_same_v<DO, T> || (P == MatmulPrecision::bf16 && std::is_same_v<DO, bf16>),
                "matmul_backward: dout of the model's type, or bf16 with bf16 products");
  const auto* dy = operand<P, 0>(dout, std::size_t(N) * out_dim);
  if (dx) {
    T* acc = nullptr;
    if constexpr (std::is_same_v<DX, T>) acc = dx;
    else acc = scratch<T, 4>(std::size_t(N) * in);
    gemm(false, false, N, in, out_dim, dy, out_dim, operand<P, 1>(w, std::size_t(out_dim) * in), in, acc, in, false);
    if constexpr (!std::is_same_v<DX, T>) convert(Cpu{}, dx, static_cast<const T*>(acc), std::size_t(N) * in);
  }
  gemm(true, false, out_dim, in, N, dy, out_dim, operand<P, 2>(x, std::size_t(N) * in), in, dw, in, true);
  if (!dbias) return;
  if constexpr (std::is_same_v<DO, T>) {
    Eigen::Map<RowVec<T>>(dbias, out_dim) += CMatMap<T>(dout, N, out_dim).colwise().sum();
  } else {
    const std::size_t n = std::size_t(N) * out_dim;
    T* d = scratch<T, 6>(n);
    convert(Cpu{}, d, dout, n);
    Eigen::Map<RowVec<T>>(dbias, out_dim) += CMatMap<T>(d, N, out_dim).colwise().sum();
  }
}

// The bias gradients of layers that read one output gradient (a
// parallel-residual block's attention projection and MLP output):
// dbias[k] += Σ_n dout[n, ·] for each k, from one sum. Returns dout as the
// layers' products read it: dout itself where O is T, else its copy in
// `copy`, rounded to O (P = bf16; pass it to matmul_backward with no bias).
template <class T, class O, std::size_t M>
const O* bias_grads(Cpu, const std::array<T*, M>& dbias, O* copy, const T* dout, int N, int width) {
  using namespace cpu;
  const RowVec<T> sums = CMatMap<T>(dout, N, width).colwise().sum();
  for (T* d : dbias) Eigen::Map<RowVec<T>>(d, width) += sums;
  if constexpr (std::is_same_v<O, T>) {
    return dout;
  } else {
    convert(Cpu{}, copy, dout, std::size_t(N) * width);
    return copy;
  }
}

// The backward of the MLP's second layer y = GELU(pre)·Wᵀ (+ b: the caller
// sums its gradient): dW += doutᵀ·gel and dh = dout·W, the gradient of the
// GELU's output; returns false (the GELU's backward is left to
// gelu_matmul_backward; the CUDA backend may fuse it here and return true).
template <MatmulPrecision P, Gelu G, class T, class DH, class DO, class X, class Pre, class W>
bool matmul_backward_into_gelu(Cpu, DH* dh, T* dw, const DO* dout, const X* gel, const Pre* /*pre*/, const W* w,
                               int N, int in, int out_dim) {
  matmul_backward<P>(Cpu{}, dh, dw, static_cast<T*>(nullptr), dout, gel, w, N, in, out_dim);
  return false;
}

// The backward of y = x·Wᵀ + b followed by a GELU (pre = the GELU's input,
// T or bf16 as the forward stored it): dgelu becomes dy = dgelu ⊙ gelu'(pre),
// then matmul_backward with dout = dy. dgelu is scratch afterwards (the CUDA
// backend fuses the two). through_gelu: dgelu already holds dy.
template <MatmulPrecision P, Gelu G, class T, class DX, class DY, class Pre, class X, class W>
void gelu_matmul_backward(Cpu, DX* dx, T* dw, T* dbias, DY* dgelu, const Pre* pre, const X* x, const W* w, int N,
                          int in, int out_dim, bool through_gelu = false) {
  if (through_gelu) {
    matmul_backward<P>(Cpu{}, dx, dw, dbias, static_cast<const DY*>(dgelu), x, w, N, in, out_dim);
    return;
  }
  const std::size_t n = std::size_t(N) * out_dim;
  T* dy = nullptr;  // dgelu itself, or (bf16 dgelu) an fp32 copy
  if constexpr (std::is_same_v<DY, T>) {
    dy = dgelu;
  } else {
    dy = cpu::scratch<T, 5>(n);
    convert(Cpu{}, dy, static_cast<const DY*>(dgelu), n);
  }
  gelu_backward<G>(Cpu{}, dy, pre, static_cast<const T*>(dy), n);
  matmul_backward<P>(Cpu{}, dx, dw, dbias, static_cast<const T*>(dy), x, w, N, in, out_dim);
}

}  // namespace doremi::backend
