#pragma once
// Warp-level tensor-core primitives (sm_80+) through inline PTX: mma.sync
// m16n8k16 with bf16 operands and fp32 accumulation, ldmatrix, cp.async
// (global → shared copies that overlap computation) and ex2. Register
// layouts (PTX ISA, "Matrix fragments for mma.m16n8k16"), with g = lane / 4
// and t = lane % 4, each .b32 register holding two bf16 (low half first):
//   A 16×16 (rows × k):  a[0] = A[g][2t, 2t+1]     a[1] = A[g+8][2t, 2t+1]
//                        a[2] = A[g][2t+8, 2t+9]   a[3] = A[g+8][2t+8, 2t+9]
//   B 16×8 (k × cols):   b0 = B[2t, 2t+1][g]       b1 = B[2t+8, 2t+9][g]
//   C 16×8 fp32:         c[0], c[1] = C[g][2t, 2t+1]   c[2], c[3] = C[g+8][2t, 2t+1]
// ldmatrix .x4: lanes 8j .. 8j+7 give the addresses of rows 0 .. 7 of the 8×8
// bf16 matrix j (16-byte aligned shared memory); lane l receives in r[j] row
// l/4, columns 2(l%4), 2(l%4)+1 of matrix j; .trans: column l/4, rows
// 2(l%4), 2(l%4)+1. All 32 lanes of the warp must call each of them.
//
// The tests' CPU emulator of these kernels (tests/cuda_emu/cuda_emu.hpp)
// implements the same functions from the same table, so that the kernels
// built on them run on machines without a GPU.
#include <cstdint>
#include <cstring>

#include <cuda_bf16.h>

namespace doremi::backend::cuda::mma {

// Two floats rounded to bf16 (round to nearest even) in one register, lo first.
__host__ __device__ __forceinline__ std::uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  std::uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  return u;
}

#ifndef DOREMI_CUDA_EMULATE

// The launch's dynamic shared memory (128-byte aligned).
__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(128) unsigned char doremi_mma_smem[];
  return doremi_mma_smem;
}

// c += A·B (one m16n8k16 product, fp32 accumulation).
__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                               std::uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();  // callers check the compute capability (8.0+) before launching
#endif
}

__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], const void* row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const auto p = static_cast<std::uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(p));
#else
  (void)row;
  r[0] = r[1] = r[2] = r[3] = 0;
  __trap();
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t (&r)[4], const void* row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const auto p = static_cast<std::uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(p));
#else
  (void)row;
  r[0] = r[1] = r[2] = r[3] = 0;
  __trap();
#endif
}

// Asynchronous copies global → shared (cp.async, sm_80+): BYTES (4 or 16)
// from src (BYTES-aligned) to dst (shared memory, BYTES-aligned). The data
// lands at the latest when the issuing thread's cp_async_wait_all returns;
// other threads see it after a barrier that follows that wait.
template <int BYTES>
__device__ __forceinline__ void cp_async(void* dst, const void* src) {
  static_assert(BYTES == 4 || BYTES == 16, "cp.async: 4 or 16 bytes");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const auto d = static_cast<std::uint32_t>(__cvta_generic_to_shared(dst));
  if constexpr (BYTES == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(d), "l"(src) : "memory");
#else
  (void)dst, (void)src;
  __trap();
#endif
}

// Waits until every cp_async this thread issued has landed.
__device__ __forceinline__ void cp_async_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#else
  __trap();
#endif
}

// 2^x (MUFU.EX2, subnormal results flushed to 0; relative error about 2^-22).
__device__ __forceinline__ float exp2_approx(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
#else
  return exp2f(x);
#endif
}

#endif  // DOREMI_CUDA_EMULATE

}  // namespace doremi::backend::cuda::mma
