#pragma once
// A CPU emulator for the project's CUDA kernels, for tests on machines
// without a GPU (CI has the CUDA toolkit but no device). Compiled by the host
// compiler (not nvcc): include this header first, then the backend's headers.
// Their launches (DOREMI_CUDA_LAUNCH, defined here) run through emu::launch,
// which tests may also call directly:
//
//   emu::launch({grid_x, grid_y}, {128}, smem_bytes, [&] { kernel<64, float>(args...); });
//
// With fake_cudart.cpp (the CUDA runtime and cuBLASLt on host memory) the
// backend's host code runs as well.
//
// Blocks run one after another; a block's threads run as fibers on
// the calling thread, switching only at the synchronising calls below, warp
// by warp (see launch), so a run is deterministic. Emulated: threadIdx, blockIdx, blockDim, gridDim,
// __syncthreads, __syncwarp, __shfl_xor_sync, __ldg, atomicAdd, static __shared__
// arrays (one block's at a time), the dynamic shared
// memory (filled with NaN bytes at each block's start, so reads of unwritten
// memory show up), WMMA fragments (whole tiles per thread), and the primitives of doremi/backend/cuda/mma.hpp:
// mma.sync m16n8k16 (bf16 operands, fp32 sums in k order), ldmatrix .x4
// (plain and .trans; addresses checked for 16-byte alignment) and cp.async
// (landing at the issuing thread's wait, see cp_async), written from
// the PTX ISA's register tables independently of the kernels that use them.
// A barrier that can never complete (a deadlock) aborts with a message.
// emu::reverse_order() = true runs a block's warps (and a warp's threads) in
// descending order: a kernel whose results change with it, or that reads the
// NaN fill, reads memory another warp writes without a barrier in between.
#define DOREMI_CUDA_EMULATE 1

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <type_traits>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

#define __launch_bounds__(...)

namespace emu {

// cudaMalloc calls so far (fake_cudart.cpp).
std::size_t device_allocations();
// The fake cuBLASLt's algorithms (fake_cudart.cpp): the heuristic offers up
// to `count` (default 1), numbered 0, 1, ...; every one but `fastest` spends
// an extra millisecond per call (none does when fastest < 0). And the number
// of the algorithm its last matrix product ran with.
void set_gemm_algorithms(int count, int fastest);
int last_gemm_algorithm();
// cudaMalloc of exactly `bytes` fails as out of memory (0: none does).
void refuse_allocations_of(std::size_t bytes);

struct Dim {
  unsigned x = 1, y = 1, z = 1;
  Dim(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  Dim(dim3 d) : x(d.x), y(d.y), z(d.z) {}
};

[[noreturn]] inline void die(const char* what) {
  std::fprintf(stderr, "cuda_emu: %s\n", what);
  std::abort();
}

// Fiber switches. x86-64: a few instructions (cuda_emu.cpp), where glibc's
// swapcontext makes a signal-mask system call at every switch; elsewhere
// ucontext.
#if defined(__x86_64__)
struct FiberContext {
  void* sp = nullptr;
};
extern "C" void emu_switch_stack(void** save_sp, void* to_sp);
inline void switch_fiber(FiberContext& from, FiberContext& to) { emu_switch_stack(&from.sp, to.sp); }
#else
using FiberContext = ucontext_t;
inline void switch_fiber(FiberContext& from, FiberContext& to) { swapcontext(&from, &to); }
#endif

struct Block {
  Dim grid, dim, idx;
  int threads = 0, current = 0;
  std::vector<unsigned char> smem;
  std::vector<FiberContext> ctx;
  std::vector<Dim> tid;
  std::vector<char> done;
  FiberContext scheduler{};
  const std::function<void()>* body = nullptr;
  int block_arrived = 0;
  std::uint64_t block_gen = 0;
  std::vector<std::uint64_t> block_wait;  // the __syncthreads generation a thread waits for to change (or ~0)
  std::vector<int> warp_arrived;
  std::vector<std::uint64_t> warp_gen;
  std::vector<std::array<std::uint64_t, 4>> slot;  // a thread's values for warp exchanges
  struct Copy {  // a cp.async in flight: its bytes, read at issue, land at the thread's wait
    unsigned char* dst;
    unsigned char bytes[16];
    int n;
  };
  std::vector<std::vector<Copy>> in_flight;  // per thread
  std::uint64_t events = 0;                        // completed barriers (progress, for deadlock detection)
};

inline bool& reverse_order() {
  static bool r = false;
  return r;
}

inline Block*& block() {
  static Block* b = nullptr;
  return b;
}

inline void yield() {
  Block& b = *block();
  switch_fiber(b.ctx[std::size_t(b.current)], b.scheduler);
}

// Waits until every thread of the block (warp = -1) or of warp `warp` arrived.
inline void barrier(int warp) {
  Block& b = *block();
  int& arrived = warp < 0 ? b.block_arrived : b.warp_arrived[std::size_t(warp)];
  std::uint64_t& gen = warp < 0 ? b.block_gen : b.warp_gen[std::size_t(warp)];
  const int need = warp < 0 ? b.threads : 32;
  const std::uint64_t g = gen;
  if (++arrived == need) {
    arrived = 0;
    ++gen;
    ++b.events;
    return;
  }
  if (warp < 0) b.block_wait[std::size_t(b.current)] = g;  // parked: the scheduler moves on to other warps
  while (gen == g) yield();
  if (warp < 0) b.block_wait[std::size_t(b.current)] = ~std::uint64_t(0);
}

inline int lane() { return block()->current % 32; }
inline int warp() { return block()->current / 32; }
inline std::array<std::uint64_t, 4>& my_slot() { return block()->slot[std::size_t(block()->current)]; }
inline std::array<std::uint64_t, 4>& lane_slot(int l) {
  return block()->slot[std::size_t(warp() * 32 + l)];
}

[[noreturn]] inline void fiber_entry() {
  Block& b = *block();
  (*b.body)();
  if (!b.in_flight[std::size_t(b.current)].empty()) die("a thread finished with cp.async copies not waited for");
  b.done[std::size_t(b.current)] = 1;
  switch_fiber(b.ctx[std::size_t(b.current)], b.scheduler);  // never resumed
  die("a finished thread was resumed");
}

// A fresh fiber on `stack` that starts in fiber_entry.
inline void make_fiber(FiberContext& c, char* stack, std::size_t bytes) {
#if defined(__SANITIZE_ADDRESS__)
  // Under AddressSanitizer: a finished fiber never returns from its frames,
  // so their redzones stay poisoned in the reused stack.
  ASAN_UNPOISON_MEMORY_REGION(stack, bytes);
#endif
#if defined(__x86_64__)
  // As emu_switch_stack leaves a suspended fiber: six callee-saved registers,
  // then the address it returns to; fiber_entry then sees a 16-byte-aligned
  // frame with a (never used) return address, as after a call.
  auto* top =
      reinterpret_cast<std::uintptr_t*>((reinterpret_cast<std::uintptr_t>(stack) + bytes) & ~std::uintptr_t(15));
  top[-1] = 0;
  top[-2] = reinterpret_cast<std::uintptr_t>(&fiber_entry);
  for (int r = 3; r <= 8; ++r) top[-r] = 0;
  c.sp = top - 8;
#else
  getcontext(&c);
  c.uc_stack.ss_sp = stack;
  c.uc_stack.ss_size = bytes;
  c.uc_link = nullptr;
  makecontext(&c, reinterpret_cast<void (*)()>(&fiber_entry), 0);
#endif
}

// Runs body once per thread of every block of the grid.
inline void launch(Dim grid, Dim dim, std::size_t smem_bytes, const std::function<void()>& body) {
  const int threads = int(dim.x * dim.y * dim.z);
  if (threads <= 0 || threads % 32 != 0) die("blocks must have a positive multiple of 32 threads");
  constexpr std::size_t stack_bytes = 256 * 1024;
  static std::vector<std::unique_ptr<char[]>> stacks;  // one per thread of a block, reused by every block
  while (stacks.size() < std::size_t(threads)) stacks.emplace_back(new char[stack_bytes]);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Block b;
        b.grid = grid;
        b.dim = dim;
        b.idx = {bx, by, bz};
        b.threads = threads;
        b.smem.assign(smem_bytes, 0xff);  // 0xffff… is a NaN in float and bf16
        b.ctx.resize(std::size_t(threads));
        b.done.assign(std::size_t(threads), 0);
        b.block_wait.assign(std::size_t(threads), ~std::uint64_t(0));
        b.warp_arrived.assign(std::size_t(threads / 32), 0);
        b.warp_gen.assign(std::size_t(threads / 32), 0);
        b.slot.resize(std::size_t(threads));
        b.in_flight.resize(std::size_t(threads));
        b.body = &body;
        for (int t = 0; t < threads; ++t) {
          const unsigned ut = unsigned(t);
          b.tid.push_back({ut % dim.x, (ut / dim.x) % dim.y, ut / (dim.x * dim.y)});
        }
        block() = &b;
        for (int t = 0; t < threads; ++t) make_fiber(b.ctx[std::size_t(t)], stacks[std::size_t(t)].get(), stack_bytes);
        // Warp by warp (ascending, or descending with reverse_order()): a warp
        // runs until each of its threads has finished or waits at
        // __syncthreads, then the next warp runs. So a warp reads shared
        // memory that other warps fill only if a block barrier separates the
        // two, as on a GPU where warps run in any order.
        const int warps = threads / 32;
        for (;;) {
          const std::uint64_t events = b.events;
          bool all_done = true, finished = false;
          for (int wi = 0; wi < warps; ++wi) {
            const int w = reverse_order() ? warps - 1 - wi : wi;
            std::uint64_t seen = b.events;
            int spins = 0;
            for (bool ran = true; ran;) {
              ran = false;
              if (b.events != seen) {
                seen = b.events;
                spins = 0;
              } else if (++spins > 1000) {  // lanes spin on a warp barrier that the others never reach
                die("deadlock: a warp's threads wait at different barriers");
              }
              for (int l = 0; l < 32; ++l) {
                const auto t = std::size_t(w * 32 + l);
                if (b.done[t] || (b.block_wait[t] == b.block_gen)) continue;  // finished, or parked at __syncthreads
                b.current = int(t);
                switch_fiber(b.scheduler, b.ctx[t]);
                ran = true;
                finished = finished || b.done[t];
              }
            }
            for (int l = 0; l < 32; ++l) all_done = all_done && b.done[std::size_t(w * 32 + l)];
          }
          if (all_done) break;
          if (b.events == events && !finished) die("deadlock: threads wait at a barrier that the others never reach");
        }
        block() = nullptr;
      }
}

// DOREMI_CUDA_LAUNCH(grid, block, smem, stream, kernel)(args...) (see
// doremi/backend/cuda/cuda.hpp): runs the kernel through launch; the stream
// is ignored (everything runs in order, at once).
template <class Call>
struct Launcher {
  Dim grid, dim;
  std::size_t smem;
  Call call;
  template <class... A>
  void operator()(A&&... a) const {
    launch(grid, dim, smem, [&] { call(a...); });
  }
};
template <class Call>
Launcher<Call> launcher(Dim grid, Dim dim, std::size_t smem, Call call) {
  return {grid, dim, smem, call};
}

}  // namespace emu

#define DOREMI_CUDA_LAUNCH(grid, block, smem, stream, ...) \
  ::emu::launcher(grid, block, smem, [&](auto&... emu_args) { __VA_ARGS__(emu_args...); })

// ---- CUDA names the kernels use ----

// Blocks run one at a time on one thread: a kernel's static shared arrays are
// one block's shared memory.
#undef __shared__
#define __shared__ static

#define threadIdx (::emu::block()->tid[std::size_t(::emu::block()->current)])
#define blockIdx (::emu::block()->idx)
#define blockDim (::emu::block()->dim)
#define gridDim (::emu::block()->grid)

inline void __syncthreads() { emu::barrier(-1); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::barrier(emu::warp()); }

template <class V>
inline V __shfl_xor_sync(unsigned, V v, int lane_mask) {
  static_assert(sizeof(V) <= 8 && std::is_trivially_copyable_v<V>);
  std::uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(V));
  emu::my_slot()[0] = u;
  emu::barrier(emu::warp());
  const std::uint64_t o = emu::lane_slot(emu::lane() ^ lane_mask)[0];
  emu::barrier(emu::warp());
  V r;
  std::memcpy(&r, &o, sizeof(V));
  return r;
}

template <class V>
inline V __ldg(const V* p) {  // read-only loads: plain loads here
  return *p;
}

template <class V>
inline V atomicAdd(V* p, V v) {  // threads never run at once
  const V old = *p;
  *p = old + v;
  return old;
}

// ---- doremi/backend/cuda/mma.hpp ----
#include "doremi/backend/cuda/mma.hpp"  // pack_bf16 (the device primitives are skipped under DOREMI_CUDA_EMULATE)

namespace doremi::backend::cuda::mma {

inline unsigned char* dynamic_smem() { return emu::block()->smem.data(); }

namespace detail {
inline float bf16_half(std::uint32_t reg, int half) {
  const std::uint16_t bits = std::uint16_t(half ? reg >> 16 : reg & 0xffffu);
  const std::uint32_t f = std::uint32_t(bits) << 16;
  float r;
  std::memcpy(&r, &f, 4);
  return r;
}
inline std::uint16_t bf16_bits(const void* p) {
  std::uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
}  // namespace detail

// c += A·B, from the register tables of the PTX ISA (see mma.hpp).
inline void mma_bf16_16816(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
  auto& s = emu::my_slot();
  s[0] = a[0] | (std::uint64_t(a[1]) << 32);
  s[1] = a[2] | (std::uint64_t(a[3]) << 32);
  s[2] = b0 | (std::uint64_t(b1) << 32);
  emu::barrier(emu::warp());
  auto A = [](int row, int k) {  // lane (row % 8)·4 + (k % 8)/2, register (row ≥ 8) + 2·(k ≥ 8)
    const auto& sl = emu::lane_slot((row % 8) * 4 + (k % 8) / 2);
    const int reg = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
    const auto r = std::uint32_t(sl[std::size_t(reg / 2)] >> (32 * (reg % 2)));
    return detail::bf16_half(r, k % 2);
  };
  auto B = [](int k, int col) {  // lane col·4 + (k % 8)/2, register b0 (k < 8) or b1
    const auto& sl = emu::lane_slot(col * 4 + (k % 8) / 2);
    const auto r = std::uint32_t(sl[2] >> (k >= 8 ? 32 : 0));
    return detail::bf16_half(r, k % 2);
  };
  const int g = emu::lane() / 4, t = emu::lane() % 4;
  float d[4];
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
    float acc = c[i];
    for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);
    d[i] = acc;
  }
  emu::barrier(emu::warp());
  for (int i = 0; i < 4; ++i) c[i] = d[i];
}

namespace detail {
template <bool Trans>
void ldmatrix(std::uint32_t (&r)[4], const void* row) {
  if (reinterpret_cast<std::uintptr_t>(row) % 16 != 0) emu::die("ldmatrix: a row address is not 16-byte aligned");
  const unsigned char* base = emu::block()->smem.data();
  const auto* p = static_cast<const unsigned char*>(row);
  if (p < base || p + 16 > base + emu::block()->smem.size()) emu::die("ldmatrix: a row is outside shared memory");
  emu::my_slot()[0] = reinterpret_cast<std::uintptr_t>(row);
  emu::barrier(emu::warp());
  const int l = emu::lane();
  for (int j = 0; j < 4; ++j) {
    auto rowp = [&](int rr) { return reinterpret_cast<const unsigned char*>(emu::lane_slot(8 * j + rr)[0]); };
    std::uint16_t lo, hi;
    if (!Trans) {
      lo = bf16_bits(rowp(l / 4) + 2 * (2 * (l % 4)));
      hi = bf16_bits(rowp(l / 4) + 2 * (2 * (l % 4) + 1));
    } else {
      lo = bf16_bits(rowp(2 * (l % 4)) + 2 * (l / 4));
      hi = bf16_bits(rowp(2 * (l % 4) + 1) + 2 * (l / 4));
    }
    r[j] = std::uint32_t(lo) | (std::uint32_t(hi) << 16);
  }
  emu::barrier(emu::warp());
}
}  // namespace detail

inline void ldmatrix_x4(std::uint32_t (&r)[4], const void* row) { detail::ldmatrix<false>(r, row); }
inline void ldmatrix_x4_trans(std::uint32_t (&r)[4], const void* row) { detail::ldmatrix<true>(r, row); }

// cp.async lands as late as the hardware allows: at the issuing thread's
// cp_async_wait_all. A kernel that reads the destination before its wait and
// a barrier sees the shared memory's previous contents (NaN fill or an older
// tile), and a copy into a buffer other warps still read overwrites it
// before they run (warps run in turn between barriers).
template <int BYTES>
inline void cp_async(void* dst, const void* src) {
  static_assert(BYTES == 4 || BYTES == 16, "cp.async: 4 or 16 bytes");
  auto* d = static_cast<unsigned char*>(dst);
  const unsigned char* base = emu::block()->smem.data();
  if (d < base || d + BYTES > base + emu::block()->smem.size()) emu::die("cp.async: destination outside shared memory");
  if (reinterpret_cast<std::uintptr_t>(dst) % BYTES != 0 || reinterpret_cast<std::uintptr_t>(src) % BYTES != 0)
    emu::die("cp.async: source or destination not aligned to the copy size");
  emu::Block::Copy c{d, {}, BYTES};
  std::memcpy(c.bytes, src, BYTES);
  emu::block()->in_flight[std::size_t(emu::block()->current)].push_back(c);
}
inline void cp_async_wait_all() {
  auto& mine = emu::block()->in_flight[std::size_t(emu::block()->current)];
  for (const auto& c : mine) std::memcpy(c.dst, c.bytes, std::size_t(c.n));
  mine.clear();
}

inline float exp2_approx(float x) { return std::exp2(x); }

}  // namespace doremi::backend::cuda::mma

// ---- nvcuda::wmma (<mma.h> declares it for nvcc only) ----
// A fragment holds its whole 16×16 tile in every thread (the hardware's
// layout is unspecified, and the kernels only load, multiply, fill and store
// whole fragments); products sum over k in order in fp32.
namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  float v[16][16];  // [row][col] of the tile (A: m×k, B: k×n, C: m×n)
};

namespace detail {
template <class Layout>
inline bool row_major_layout() {
  return std::is_same_v<Layout, row_major>;
}
inline float to_f(float x) { return x; }
inline float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
}  // namespace detail

template <class Use, class T, class Layout, class P>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const P* p, unsigned ldm) {
  const bool rm = detail::row_major_layout<Layout>();
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.v[r][c] = detail::to_f(rm ? p[r * ldm + c] : p[c * ldm + r]);
}

template <class T>
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, T>& f, const T* p, unsigned ldm, layout_t l) {
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.v[r][c] = l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
}

template <class Use, class T, class Layout>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, float x) {
  for (auto& row : f.v)
    for (float& e : row) e = x;
}

template <class TA, class LA, class TB, class LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, TA, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, TB, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[16][16];
  for (int r = 0; r < 16; ++r)
    for (int col = 0; col < 16; ++col) {
      float s = c.v[r][col];
      for (int k = 0; k < 16; ++k) s += a.v[r][k] * b.v[k][col];
      out[r][col] = s;
    }
  std::memcpy(d.v, out, sizeof(out));
}

// The warp's lanes store a share each, between warp barriers (as a collective store).
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t l) {
  emu::barrier(emu::warp());
  for (int i = emu::lane(); i < 256; i += 32) {
    const int r = i / 16, c = i % 16;
    (l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.v[r][c];
  }
  emu::barrier(emu::warp());
}

}  // namespace nvcuda::wmma

// Device-side min and max of the kernels' index arithmetic.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
