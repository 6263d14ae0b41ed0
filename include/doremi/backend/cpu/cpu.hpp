#pragma once
// backend::Cpu: the CPU policy of Model<Config, Backend>. Matrix products go to
// cpu::gemm (oneDNN or Eigen, multi-threaded through OpenMP; gemm.hpp), the
// rest are OpenMP loops. Each layer
// lives in its own header under backend/cpu/ with forward and backward side by
// side; Model calls them by tag dispatch (`layernorm_forward(be, ...)`), so the
// CUDA backend adds overloads for its own tag without touching the model.
//
// Determinism: every reduction uses a static split over a fixed thread count,
// so results are bit-identical run to run on the same machine and thread count.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include <Eigen/Core>
#include <omp.h>

#include "doremi/backend/elementwise.hpp"  // compute_t
#include "doremi/backend/types.hpp"

namespace doremi::backend {

namespace cpu {

// A bfloat16 value (the upper half of an fp32), as raw bits.
enum class bf16 : std::uint16_t {};

// Branch-free, so loops over arrays vectorise.
inline bf16 to_bf16(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  const std::uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // round to nearest even
  const std::uint32_t quiet_nan = (u >> 16) | 0x40u;                     // NaN stays NaN
  return bf16(std::uint16_t((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded));
}
inline float from_bf16(bf16 b) {
  const std::uint32_t u = std::uint32_t(b) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// v as element type O (bf16: rounded to nearest even).
template <class O, class T>
O cast_to(T v) {
  if constexpr (std::is_same_v<O, T>) return v;
  else if constexpr (std::is_same_v<O, bf16>) return to_bf16(float(v));
  else if constexpr (std::is_same_v<T, bf16>) return O(from_bf16(v));
  else return O(v);
}

// The CPU backend's buffer allocator: 64-byte aligned (Eigen's and AVX-512's
// alignment); buffers of 4 MiB or more are 2 MiB aligned and, on Linux,
// advised to use transparent huge pages (madvise, the kernel's default
// mode). Parameters and caches are read as long streams every decoding step;
// with 4 KiB pages the TLB misses cost about a tenth of that bandwidth
// (docs/backend.md, "Few rows").
template <class T>
struct Allocator {
  using value_type = T;
  static constexpr std::size_t huge = std::size_t(2) << 20, big = std::size_t(4) << 20;
  Allocator() = default;
  template <class U>
  Allocator(const Allocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    if (n > (std::size_t(PTRDIFF_MAX) - huge) / sizeof(T)) throw std::bad_alloc();
    const std::size_t bytes = n * sizeof(T), align = bytes >= big ? huge : 64;
    const std::size_t size = (bytes + align - 1) / align * align;
    if (size > std::size_t(PTRDIFF_MAX)) throw std::bad_alloc();
    void* p = std::aligned_alloc(align, size);
    if (!p) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    if (bytes >= big) madvise(p, size, MADV_HUGEPAGE);  // advice: failure is harmless
#endif
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t) noexcept { std::free(p); }
  template <class U>
  bool operator==(const Allocator<U>&) const noexcept { return true; }
};

}  // namespace cpu

struct Cpu {
  static constexpr const char* name = "cpu";
#if defined(DOREMI_GEMM_ONEDNN) && defined(DOREMI_GEMM_OPENBLAS)
  static constexpr const char* gemm = "oneDNN (fp32, bf16); Eigen -> OpenBLAS (fp64)";
#elif defined(DOREMI_GEMM_ONEDNN)
  static constexpr const char* gemm = "oneDNN (fp32, bf16); Eigen (fp64)";
#elif defined(DOREMI_GEMM_OPENBLAS)
  static constexpr const char* gemm = "Eigen -> OpenBLAS";  // EIGEN_USE_BLAS (CMake option DOREMI_BLAS)
#else
  static constexpr const char* gemm = "Eigen";
#endif
  template <class T>
  using Buffer = std::vector<T, cpu::Allocator<T>>;
  static constexpr bool host_memory = true;  // Buffers are readable on the host
  // The element type of activations that only feed matrix products (and of
  // the weights' copy the products read): bf16 when the products take bf16
  // operands, so they are rounded once where they are made.
  template <MatmulPrecision P, class T>
  using operand = std::conditional_t<P == MatmulPrecision::bf16 && std::is_same_v<T, float>, cpu::bf16, T>;
};

// The seam's memory moves: host <-> the backend's memory (plain copies here).
template <class T>
void upload(Cpu, T* dst, const T* src, std::size_t n) {
  std::copy(src, src + n, dst);
}
template <class T>
void download(Cpu, T* dst, const T* src, std::size_t n) {
  std::copy(src, src + n, dst);
}

// dst[i] = To(src[i]) (fp32 -> bf16: rounded to nearest even).
template <class To, class From>
void convert(Cpu, To* dst, const From* src, std::size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (std::ptrdiff_t i = 0; i < std::ptrdiff_t(n); ++i) dst[i] = cpu::cast_to<To>(src[i]);
}

// Elements of attention state the forward keeps per layer for the backward:
// the whole B·H·T×T probability matrix on the CPU.
inline std::size_t attention_state_size(Cpu, int B, int H, int T) { return std::size_t(B) * H * T * T; }

// Elements of T that attention_forward<P>'s qkvr (the rotated qkv, kept for
// the backward) needs for B·T tokens of width C: all 3·C values per token.
template <MatmulPrecision P, class T>
std::size_t attention_qkvr_size(Cpu, int B, int T_, int C, int /*H*/) {
  return std::size_t(B) * T_ * 3 * C;
}

namespace cpu {

template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using RowVec = Eigen::Matrix<T, 1, Eigen::Dynamic>;
template <class T>
using MatMap = Eigen::Map<RowMat<T>>;
template <class T>
using CMatMap = Eigen::Map<const RowMat<T>>;
template <class T>
using StridedMap = Eigen::Map<RowMat<T>, 0, Eigen::OuterStride<>>;
template <class T>
using CStridedMap = Eigen::Map<const RowMat<T>, 0, Eigen::OuterStride<>>;

// Column sums of `rows` rows of width C, accumulated per thread over a static
// split and then summed in thread order: deterministic, no atomics.
// f(n, acc) adds row n's contribution to acc[0..width).
template <class Acc, class F>
void deterministic_row_reduce(std::ptrdiff_t rows, std::ptrdiff_t width, Acc* out, F&& f) {
  const int nt = omp_get_max_threads();
  std::vector<Acc> partial(std::size_t(nt) * std::size_t(width), Acc(0));
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    const std::ptrdiff_t lo = rows * t / nt, hi = rows * (t + 1) / nt;
    Acc* acc = partial.data() + std::size_t(t) * std::size_t(width);
    for (std::ptrdiff_t n = lo; n < hi; ++n) f(n, acc);
  }
  for (int t = 0; t < nt; ++t)
    for (std::ptrdiff_t c = 0; c < width; ++c) out[c] += partial[std::size_t(t) * std::size_t(width) + std::size_t(c)];
}

}  // namespace cpu
}  // namespace doremi::backend
