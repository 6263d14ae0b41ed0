#pragma once
// Linear layer y = x·Wᵀ + b with W stored [out, in] (HuggingFace's layout).
// Compute-bound: all three products go to Eigen's blocked GEMM, which uses
// every OpenMP thread. Backward overwrites dx and accumulates into dW, db
// (parameter gradients add up across micro-batches).
#include "doremi/backend/cpu/cpu.hpp"

namespace doremi::backend {

template <class T>
void matmul_forward(Cpu, T* out, const T* x, const T* w, const T* bias, int N, int in, int out_dim) {
  using namespace cpu;
  MatMap<T> y(out, N, out_dim);
  y.noalias() = CMatMap<T>(x, N, in) * CMatMap<T>(w, out_dim, in).transpose();
  if (bias) y.rowwise() += Eigen::Map<const RowVec<T>>(bias, out_dim);
}

template <class T>
void matmul_backward(Cpu, T* dx, T* dw, T* dbias, const T* dout, const T* x, const T* w, int N, int in,
                     int out_dim) {
  using namespace cpu;
  CMatMap<T> dy(dout, N, out_dim);
  if (dx) MatMap<T>(dx, N, in).noalias() = dy * CMatMap<T>(w, out_dim, in);
  MatMap<T>(dw, out_dim, in).noalias() += dy.transpose() * CMatMap<T>(x, N, in);
  if (dbias) Eigen::Map<RowVec<T>>(dbias, out_dim) += dy.colwise().sum();
}

}  // namespace doremi::backend
