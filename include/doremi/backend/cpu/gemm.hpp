#pragma once
// The CPU backend's matrix product, C (+)= op(A)·op(B), with row-major
// operands, fp32 results and fp32 accumulation, for fp32 or bf16 inputs.
//
// Engine: oneDNN's matmul (Debian: libdnnl-dev; CMake option DOREMI_ONEDNN)
// when the build found it, Eigen otherwise (why: docs/backend.md, "The CPU
// backend"; neither Eigen nor Debian's OpenBLAS has a bf16 GEMM). Without oneDNN, or where oneDNN has no bf16 kernel for
// the CPU (oneDNN 2.6 needs AVX-512 for bf16), bf16 operands are widened to
// fp32 and multiplied in fp32: the same numbers up to summation order, slower.
//
// bf16 here is storage only (round to nearest even from fp32); the products
// accumulate in fp32, as on GPUs.
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "doremi/backend/cpu/cpu.hpp"

// The few-rows fp32 kernel below needs AVX-512 (CUDA translation units,
// whose host code nvcc's front end parses, take the general path).
#if defined(__AVX512F__) && !defined(__CUDACC__)
#define DOREMI_GEMM_FEW_ROWS 1
#include <immintrin.h>
#endif

#ifdef DOREMI_GEMM_ONEDNN
// oneDNN's C API: its C++ header crashes nvcc 13, and CUDA translation units
// include this file too (the same inline definitions in every unit).
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>
#if DNNL_VERSION_MAJOR != 2
#error "doremi's oneDNN GEMM is written for oneDNN 2.x (Debian 12's libdnnl-dev); configure with -DDOREMI_ONEDNN=OFF"
#endif
#include "doremi/core/error.hpp"
#endif

namespace doremi::backend::cpu {

// A growable per-thread scratch array (bf16 copies of operands).
template <class T, int Slot>
T* scratch(std::size_t n) {
  thread_local std::vector<T> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

template <class T>
inline constexpr bool gemm_input = std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, bf16>;

#ifdef DOREMI_GEMM_ONEDNN
namespace onednn {

inline void check(dnnl_status_t st, const char* call) {
  if (st != dnnl_success) fail("oneDNN: {} failed: {}", call, dnnl_status2str(st));
}
#define DOREMI_DNNL(call) ::doremi::backend::cpu::onednn::check((call), #call)

inline dnnl_engine_t engine() {
  static const dnnl_engine_t e = [] {
    dnnl_engine_t x = nullptr;
    DOREMI_DNNL(dnnl_engine_create(&x, dnnl_cpu, 0));
    return x;
  }();
  return e;
}

// One primitive per shape with its operand descriptions, created once
// (creation JIT-compiles code: milliseconds) and kept for the program's life.
// prim stays null where oneDNN has no implementation for the shape and types
// on this CPU (bf16 on CPUs without AVX-512): gemm() then widens to fp32.
struct Matmul {
  dnnl_memory_desc_t a, b, c;
  dnnl_primitive_t prim = nullptr;
};

template <class In>
const Matmul& primitive(bool ta, bool tb, int M, int N, int K, int lda, int ldb, int ldc, bool accumulate) {
  using Key = std::tuple<bool, bool, int, int, int, int, int, int, bool>;
  static std::mutex mu;
  static std::map<Key, Matmul> cache;  // references stay valid while others are added
  const Key key{ta, tb, M, N, K, lda, ldb, ldc, accumulate};
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  const dnnl_data_type_t in = std::is_same_v<In, bf16> ? dnnl_bf16 : dnnl_f32;
  Matmul m;
  const dnnl_dims_t da{M, K}, db{K, N}, dc{M, N};
  const dnnl_dims_t sa{ta ? 1 : lda, ta ? lda : 1}, sb{tb ? 1 : ldb, tb ? ldb : 1}, sc{ldc, 1};
  DOREMI_DNNL(dnnl_memory_desc_init_by_strides(&m.a, 2, da, in, sa));
  DOREMI_DNNL(dnnl_memory_desc_init_by_strides(&m.b, 2, db, in, sb));
  DOREMI_DNNL(dnnl_memory_desc_init_by_strides(&m.c, 2, dc, dnnl_f32, sc));
  dnnl_matmul_desc_t desc;
  DOREMI_DNNL(dnnl_matmul_desc_init(&desc, &m.a, &m.b, nullptr, &m.c));
  dnnl_primitive_attr_t attr = nullptr;
  dnnl_post_ops_t ops = nullptr;
  DOREMI_DNNL(dnnl_primitive_attr_create(&attr));
  DOREMI_DNNL(dnnl_post_ops_create(&ops));
  if (accumulate) DOREMI_DNNL(dnnl_post_ops_append_sum(ops, 1.0f));
  DOREMI_DNNL(dnnl_primitive_attr_set_post_ops(attr, ops));
  dnnl_primitive_desc_t pd = nullptr;
  const dnnl_status_t st = dnnl_primitive_desc_create(&pd, &desc, attr, engine(), nullptr);
  dnnl_post_ops_destroy(ops);
  dnnl_primitive_attr_destroy(attr);
  if (st == dnnl_unimplemented) return cache.emplace(key, m).first->second;  // no kernel here: prim stays null
  check(st, "dnnl_primitive_desc_create (matmul)");
  const dnnl_status_t st2 = dnnl_primitive_create(&m.prim, pd);
  dnnl_primitive_desc_destroy(pd);
  check(st2, "dnnl_primitive_create (matmul)");
  return cache.emplace(key, m).first->second;
}

// Runs the product on caller-owned memory.
template <class In, class Out>
void execute(const Matmul& p, const In* A, const In* B, Out* C) {
  dnnl_memory_t am = nullptr, bm = nullptr, cm = nullptr;
  dnnl_stream_t s = nullptr;
  dnnl_status_t st = dnnl_memory_create(&am, &p.a, engine(), const_cast<In*>(A));
  if (st == dnnl_success) st = dnnl_memory_create(&bm, &p.b, engine(), const_cast<In*>(B));
  if (st == dnnl_success) st = dnnl_memory_create(&cm, &p.c, engine(), C);
  if (st == dnnl_success) st = dnnl_stream_create(&s, engine(), dnnl_stream_default_flags);
  if (st == dnnl_success) {
    const dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}};
    st = dnnl_primitive_execute(p.prim, s, 3, args);
    if (st == dnnl_success) st = dnnl_stream_wait(s);
  }
  if (s) dnnl_stream_destroy(s);
  for (dnnl_memory_t m : {am, bm, cm})
    if (m) dnnl_memory_destroy(m);
  check(st, "matmul execution");
}

}  // namespace onednn
#endif

template <class In, class Out>
void gemm(bool ta, bool tb, int M, int N, int K, const In* A, int lda, const In* B, int ldb, Out* C, int ldc,
          bool accumulate);

#ifdef DOREMI_GEMM_FEW_ROWS
// C[m0 + m, j0 + r] (+)= A[m0 + m, ·]·B[j0 + r, ·] for m < MB <= 8 and the
// weight rows b0, b1 (r < 2; b1 == b0 when j0 is the last row): the M·2
// 16-lane partial sums stay in registers. `ahead`: prefetch the weights 8 KB
// ahead into L2 (the first pass over a pair; a second finds them in L1).
template <int MB>
inline void few_rows_pair(int K, const float* A, int lda, const float* b0, const float* b1, float* C, int ldc,
                          int j0, bool accumulate, bool ahead) {
  __m512 acc0[MB], acc1[MB];
  for (int m = 0; m < MB; ++m) acc0[m] = acc1[m] = _mm512_setzero_ps();
  int k = 0;
  for (; k + 16 <= K; k += 16) {
    if (ahead) {
      _mm_prefetch(reinterpret_cast<const char*>(b0 + k + 2048), _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(b1 + k + 2048), _MM_HINT_T1);
    }
    const __m512 w0 = _mm512_loadu_ps(b0 + k), w1 = _mm512_loadu_ps(b1 + k);
    for (int m = 0; m < MB; ++m) {
      const __m512 a = _mm512_loadu_ps(A + std::size_t(m) * lda + k);
      acc0[m] = _mm512_fmadd_ps(a, w0, acc0[m]);
      acc1[m] = _mm512_fmadd_ps(a, w1, acc1[m]);
    }
  }
  if (const __mmask16 tail = __mmask16((1u << (K % 16)) - 1u)) {
    const __m512 w0 = _mm512_maskz_loadu_ps(tail, b0 + k), w1 = _mm512_maskz_loadu_ps(tail, b1 + k);
    for (int m = 0; m < MB; ++m) {
      const __m512 a = _mm512_maskz_loadu_ps(tail, A + std::size_t(m) * lda + k);
      acc0[m] = _mm512_fmadd_ps(a, w0, acc0[m]);
      acc1[m] = _mm512_fmadd_ps(a, w1, acc1[m]);
    }
  }
  for (int m = 0; m < MB; ++m) {
    float* c = C + std::size_t(m) * ldc;
    c[j0] = (accumulate ? c[j0] : 0.f) + _mm512_reduce_add_ps(acc0[m]);
    if (b1 != b0) c[j0 + 1] = (accumulate ? c[j0 + 1] : 0.f) + _mm512_reduce_add_ps(acc1[m]);
  }
}

// C[M, N] (+)= A[M, K]·B[N, K]ᵀ in fp32 for M <= 16 rows: a decoding step's
// products, which only stream the weights B. Each pair of B rows is read
// from memory once and meets up to 8 rows of A at a time in registers
// (few_rows_pair). oneDNN 2.6's fp32 kernels ran these shapes slower on the
// machines measured (docs/backend.md, "Few rows").
template <int M>
void gemm_few_rows(int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
                   bool accumulate) {
  constexpr int first = M < 8 ? M : 8;
#pragma omp parallel for schedule(static) if (std::size_t(N) * K > 16384)
  for (int j0 = 0; j0 < N; j0 += 2) {
    const float* b0 = B + std::size_t(j0) * ldb;
    const float* b1 = j0 + 1 < N ? b0 + ldb : b0;
    few_rows_pair<first>(K, A, lda, b0, b1, C, ldc, j0, accumulate, true);
    if constexpr (M > 8)
      few_rows_pair<M - 8>(K, A + std::size_t(8) * lda, lda, b0, b1, C + std::size_t(8) * ldc, ldc, j0, accumulate,
                           false);
  }
}

// gemm_few_rows for a runtime M in [1, 16].
inline void gemm_few_rows(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
                          bool accumulate) {
  [&]<int... I>(std::integer_sequence<int, I...>) {
    ((M == I + 1 ? gemm_few_rows<I + 1>(N, K, A, lda, B, ldb, C, ldc, accumulate) : void()), ...);
  }(std::make_integer_sequence<int, 16>{});
}
#endif

// gemm's bf16 product where there is no bf16 kernel (no oneDNN, or none for
// this CPU): the operands widened to fp32, then the fp32 product.
inline void gemm_widened(bool ta, bool tb, int M, int N, int K, const bf16* A, int lda, const bf16* B, int ldb,
                         float* C, int ldc, bool accumulate) {
  const std::size_t na = std::size_t((ta ? K : M) - 1) * lda + (ta ? M : K);
  const std::size_t nb = std::size_t((tb ? N : K) - 1) * ldb + (tb ? K : N);
  std::vector<float> a(na), b(nb);
  for (std::size_t i = 0; i < na; ++i) a[i] = from_bf16(A[i]);
  for (std::size_t i = 0; i < nb; ++i) b[i] = from_bf16(B[i]);
  gemm(ta, tb, M, N, K, a.data(), lda, b.data(), ldb, C, ldc, accumulate);
}

// C[M, N] = op(A)·op(B) (accumulate: C +=), op(X) = Xᵀ when the flag is set;
// A is [M, K] (or [K, M] when ta), B is [K, N] (or [N, K] when tb), row-major
// with leading dimensions lda, ldb, ldc. Uses every OpenMP thread; call it
// from outside parallel regions.
template <class In, class Out>
void gemm(bool ta, bool tb, int M, int N, int K, const In* A, int lda, const In* B, int ldb, Out* C, int ldc,
          bool accumulate) {
  static_assert(gemm_input<In>);
  static_assert(std::is_same_v<Out, std::conditional_t<std::is_same_v<In, bf16>, float, In>>,
                "fp32 results for fp32 and bf16 inputs, fp64 for fp64");
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate)
      for (int i = 0; i < M; ++i) std::fill(C + std::size_t(i) * ldc, C + std::size_t(i) * ldc + N, Out(0));
    return;
  }
#ifdef DOREMI_GEMM_FEW_ROWS
  if constexpr (std::is_same_v<In, float>)
    if (M <= 16 && !ta && tb) return gemm_few_rows(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
#endif
#ifdef DOREMI_GEMM_ONEDNN
  if constexpr (!std::is_same_v<In, double>) {
    const onednn::Matmul& p = onednn::primitive<In>(ta, tb, M, N, K, lda, ldb, ldc, accumulate);
    if (p.prim) {
      onednn::execute(p, A, B, C);
      return;
    }  // else no oneDNN kernel for it on this CPU (bf16 without AVX-512): as without oneDNN
  }
#endif
  if constexpr (std::is_same_v<In, bf16>) {
    gemm_widened(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, accumulate);
  } else {
    using Map = Eigen::Map<const RowMat<In>, 0, Eigen::OuterStride<>>;
    Eigen::Map<RowMat<Out>, 0, Eigen::OuterStride<>> c(C, M, N, Eigen::OuterStride<>(ldc));
    const Map a(A, ta ? K : M, ta ? M : K, Eigen::OuterStride<>(lda));
    const Map b(B, tb ? N : K, tb ? K : N, Eigen::OuterStride<>(ldb));
    auto run = [&](const auto& x, const auto& y) {
      if (accumulate) c.noalias() += x * y; else c.noalias() = x * y;
    };
    if (ta && tb) run(a.transpose(), b.transpose());
    else if (ta) run(a.transpose(), b);
    else if (tb) run(a, b.transpose());
    else run(a, b);
  }
}

}  // namespace doremi::backend::cpu
