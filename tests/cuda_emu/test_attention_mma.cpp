// The register-resident tensor-core attention kernels (backend/cuda/
// attention_mma.hpp) run under the CPU emulator (cuda_emu.hpp) against the
// CPU backend's fp32 attention on the same inputs: out, lse, dq, dk and dv
// within bf16 error (2e-2 of each part's largest magnitude, as the GPU suite
// holds the WMMA kernels), for every supported head dimension, sequence
// lengths below, at and past the tiles (1, 37, 64, 65, 100, 130), rot = 0,
// partial and full, B and H > 1; dqkv poisoned with NaN first (every element
// must be written). Every kernel runs twice, its warps scheduled in
// ascending and in descending order (each warp runs until it waits at
// __syncthreads), and must give the same bits both times: a warp that read
// shared memory other warps had not yet written (a missing barrier) would
// see NaN or other data in one of the two orders; the emulator lands each
// cp.async only at its thread's wait, so a tile read before its copies were
// waited for, or a prefetch into a buffer other warps still read, shows the
// same way. With inputs already in
// bf16 (as attention.hpp passes them) every kernel must give the same bits
// as with fp32 inputs. This
// checks the kernels' index logic, masking, online softmax, register layouts
// and synchronisation on machines without a GPU; the GPU suite (tests/cuda)
// runs the same kernels on a device.
#include "cuda_emu.hpp"  // first: the emulated CUDA names

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <vector>

#include "doremi/backend/cuda/attention_mma.hpp"
#include "../reference_util.hpp"

using namespace doremi;
using namespace cuda_test;

namespace {

struct Shape {
  int B, T, H, hd, rot;
};

// Runs `kernel` with the warps in ascending and in descending order, each
// time from the same contents of `outs`; checks that both runs leave the same
// bits and keeps them.
template <class Kernel>
void launch_both_orders(emu::Dim grid, unsigned threads, std::size_t smem,
                        std::initializer_list<std::vector<float>*> outs, const Kernel& kernel, const char* what) {
  std::vector<std::vector<float>> before, reversed;
  for (auto* o : outs) before.push_back(*o);
  emu::reverse_order() = true;
  emu::launch(grid, {threads}, smem, kernel);
  std::size_t k = 0;
  for (auto* o : outs) {
    reversed.push_back(*o);
    *o = before[k++];
  }
  emu::reverse_order() = false;
  emu::launch(grid, {threads}, smem, kernel);
  k = 0;
  for (auto* o : outs) {
    INFO(what);
    CHECK(std::memcmp(o->data(), reversed[k++].data(), o->size() * sizeof(float)) == 0);
  }
}

struct Outputs {
  std::vector<float> out, lse, dqkv;
};

template <int HD, class L = backend::cuda::AttentionMmaTiles<HD>>
Outputs run_case(const Shape& s) {
  CAPTURE(s.B);
  CAPTURE(s.T);
  CAPTURE(s.H);
  CAPTURE(s.hd);
  CAPTURE(s.rot);
  CAPTURE(L::rows);
  CAPTURE(L::fwd_mt);
  CAPTURE(L::dq_mt);
  CAPTURE(L::dkv_mt);
  const int C = s.H * HD;
  const std::size_t N = std::size_t(s.B) * s.T;
  const Rope rope = rope_tables(s.T, s.rot);
  const auto qkv = randn(N * 3 * C, 700 + std::uint64_t(HD)), dout = randn(N * C, 800 + std::uint64_t(s.T));
  const CpuAttention cpu = cpu_attention(qkv, dout, rope, s.B, s.T, s.H, HD, s.rot);
  const std::vector<float>& qkvr = cpu.qkvr;

  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float scale = 1.0f / std::sqrt(float(HD)), scale_log2 = 1.4426950408889634f * scale;
  const emu::Dim grid{unsigned(s.B * s.H), unsigned((s.T + L::rows - 1) / L::rows)};
  std::vector<float> g_out(N * C, nan), g_lse(std::size_t(s.B) * s.H * s.T, nan), g_dqkv(N * 3 * C, nan);
  launch_both_orders(grid, L::fwd_threads, L::fwd_bytes, {&g_out, &g_lse}, [&] {
    backend::cuda::attention_mma_forward_kernel<L, float>(g_out.data(), g_lse.data(), qkvr.data(), s.T, C, s.H,
                                                           scale_log2);
  }, "forward: the same out and lse in both thread orders");
  const auto all = [](std::size_t) { return true; };
  check_rel_max(g_out, cpu.out, 2e-2, 1e-4, "out (mma)", all);
  check_close(g_lse, host_lse(qkvr, s.B, s.T, C, s.H), 2e-2, 0.0, "lse (mma)");

  // D as attention.hpp's row-dot kernel makes it for the tensor-core path: Σ bf16(dO)·O.
  std::vector<float> Dv(std::size_t(s.B) * s.H * s.T);
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.H; ++h)
      for (int t = 0; t < s.T; ++t) {
        const std::size_t off = (std::size_t(b) * s.T + t) * C + std::size_t(h) * HD;
        float acc = 0.0f;
        for (int d = 0; d < HD; ++d) acc += float(__nv_bfloat16(dout[off + d])) * g_out[off + d];
        Dv[(std::size_t(b) * s.H + h) * s.T + t] = acc;
      }
  launch_both_orders(grid, L::dkv_threads, L::bwd_bytes, {&g_dqkv}, [&] {
    backend::cuda::attention_mma_backward_dkv_kernel<L, float>(g_dqkv.data(), dout.data(), qkvr.data(),
                                                                g_lse.data(), Dv.data(), rope.cos.data(),
                                                                rope.sin.data(), s.T, C, s.H, s.rot, scale, scale_log2);
  }, "dK, dV: the same bits in both thread orders");
  launch_both_orders(grid, L::dq_threads, L::bwd_bytes, {&g_dqkv}, [&] {
    backend::cuda::attention_mma_backward_dq_kernel<L, float>(g_dqkv.data(), dout.data(), qkvr.data(), g_lse.data(),
                                                               Dv.data(), rope.cos.data(), rope.sin.data(), s.T, C,
                                                               s.H, s.rot, scale, scale_log2);
  }, "dQ: the same bits in both thread orders");
  check_dqkv_parts(g_dqkv, cpu.dqkv, C, HD, 2e-2, 1e-4, "mma");

  // bf16 inputs (what attention.hpp passes: qkvr and dO rounded once, read
  // with 16-byte copies) give the same bits as fp32 inputs rounded on load.
  const auto to_bf16 = [](const std::vector<float>& v) {
    return std::vector<__nv_bfloat16>(v.begin(), v.end());
  };
  const std::vector<__nv_bfloat16> qkvr_b = to_bf16(qkvr), dout_b = to_bf16(dout);
  std::vector<float> b_out(N * C, nan), b_lse(g_lse.size(), nan), b_dqkv(N * 3 * C, nan);
  emu::launch(grid, {L::fwd_threads}, L::fwd_bytes, [&] {
    backend::cuda::attention_mma_forward_kernel<L, float>(b_out.data(), b_lse.data(), qkvr_b.data(), s.T, C, s.H,
                                                           scale_log2);
  });
  emu::launch(grid, {L::dkv_threads}, L::bwd_bytes, [&] {
    backend::cuda::attention_mma_backward_dkv_kernel<L, float>(b_dqkv.data(), dout_b.data(), qkvr_b.data(),
                                                                g_lse.data(), Dv.data(), rope.cos.data(),
                                                                rope.sin.data(), s.T, C, s.H, s.rot, scale, scale_log2);
  });
  emu::launch(grid, {L::dq_threads}, L::bwd_bytes, [&] {
    backend::cuda::attention_mma_backward_dq_kernel<L, float>(b_dqkv.data(), dout_b.data(), qkvr_b.data(),
                                                               g_lse.data(), Dv.data(), rope.cos.data(),
                                                               rope.sin.data(), s.T, C, s.H, s.rot, scale, scale_log2);
  });
  CHECK(std::memcmp(b_out.data(), g_out.data(), g_out.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(b_lse.data(), g_lse.data(), g_lse.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(b_dqkv.data(), g_dqkv.data(), g_dqkv.size() * sizeof(float)) == 0);
  return {g_out, g_lse, g_dqkv};
}

// Another tiling on shape s: within bf16 error of the CPU (run_case) and the
// same bits as the default tiling (each row's arithmetic does not depend on
// how rows are grouped into warps and blocks).
template <class L>
void same_as_default(const Shape& s) {
  const Outputs a = run_case<L::hd>(s), b = run_case<L::hd, L>(s);
  CHECK(std::memcmp(a.out.data(), b.out.data(), a.out.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(a.dqkv.data(), b.dqkv.data(), a.dqkv.size() * sizeof(float)) == 0);
}

}  // namespace

TEST_CASE("cuda (emulated): register-resident tensor-core attention matches the CPU within bf16 error") {
  run_case<64>({1, 64, 2, 64, 16});
  run_case<64>({2, 130, 2, 64, 64});
  run_case<64>({1, 65, 1, 64, 0});
  run_case<64>({1, 1, 1, 64, 16});
  run_case<128>({1, 100, 2, 128, 128});
  run_case<128>({2, 65, 1, 128, 32});
  run_case<32>({1, 100, 2, 32, 8});
  run_case<16>({2, 37, 1, 16, 16});
}

TEST_CASE("cuda (emulated): other tilings of the mma attention kernels give the default's bits (bench_gpu_step times them)") {
  using backend::cuda::AttentionMmaTiles;
  same_as_default<AttentionMmaTiles<64, 128, 2, 2, 2>>({1, 130, 2, 64, 16});  // 4 warps of 32 rows
  same_as_default<AttentionMmaTiles<64, 64, 1, 1, 1>>({1, 100, 1, 64, 64});   // 4 warps of 16 rows
  same_as_default<AttentionMmaTiles<64, 128, 1, 2, 1>>({2, 65, 1, 64, 0});    // mixed: 8 and 4 warps
}
