// backend::Cuda's flash-style attention against backend::Cpu's on the same
// random inputs: qkvr (the rotated qkv), out, lse (against log Σ exp of the
// scaled scores computed here in double) and dqkv (the gradient w.r.t. the
// unrotated qkv). Sequence lengths below, at and past the kernels' tiles (1,
// 37, 64, 65, 100, 130, 256), every supported head dimension (16, 32, 64,
// 128), rot = 0, hd/4 and hd, B = 2, fp32 and bf16 storage, and the
// tensor-core kernels (MatmulPrecision::bf16, fp32 storage: bf16 tolerances,
// hd 16 to 128, T 1 to 256 with tail tiles); dqkv poisoned
// with NaN first (it must be overwritten everywhere); the backward repeated
// for bit-for-bit determinism. The argument checks run without a GPU; every
// other case skips with a MESSAGE when there is none.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda_test_util.hpp"

using namespace doremi;
using namespace cuda_test;
using backend::Cpu;
using backend::Cuda;
using backend::cuda::DeviceBuffer;

namespace {

using bf16 = __nv_bfloat16;

struct AttnShape {
  int B, T, H, hd, rot;
};

// Device copies in T (bf16: v must already be rounded, so the copy is exact) and back as float.
template <class T>
DeviceBuffer<T> upload_as(const std::vector<float>& v) {
  return to_device(std::vector<T>(v.begin(), v.end()));
}
template <class T>
std::vector<float> download_float(const DeviceBuffer<T>& d) {
  const auto h = to_host(d);
  std::vector<float> f(h.size());
  for (std::size_t i = 0; i < h.size(); ++i) f[i] = float(h[i]);
  return f;
}

// What the CUDA run produced, as floats.
struct GpuAttention {
  std::vector<float> out, qkvr, lse, dqkv;
  bool backward_repeats = false;  // a second backward gave the same bits
};

// Out: the output's storage (T, or bf16 as bf16 models keep it); Grad: dout's
// and dqkv's (likewise); In: qkv's (likewise).
template <class T, MatmulPrecision P = MatmulPrecision::native, class Out = T, class Grad = T, class In = T>
GpuAttention run_gpu(const AttnShape& s, const std::vector<float>& qkv, const std::vector<float>& dout,
                     const Rope& rope) {
  const int C = s.H * s.hd;
  const std::size_t N = std::size_t(s.B) * s.T;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto d_qkv = upload_as<In>(qkv);
  auto d_dout = upload_as<Grad>(dout);
  auto d_cos = to_device(rope.cos), d_sin = to_device(rope.sin);
  DeviceBuffer<Out> d_out(N * C);
  DeviceBuffer<T> d_qkvr(N * 3 * C);
  auto d_dqkv = to_device(std::vector<Grad>(N * 3 * C, Grad(nan)));
  auto d_dqkv2 = to_device(std::vector<Grad>(N * 3 * C, Grad(nan)));
  auto d_lse = to_device(std::vector<float>(std::size_t(s.B) * s.H * s.T, nan));
  backend::attention_forward<P>(gpu(), d_out.data(), d_qkvr.data(), d_lse.data(), d_qkv.data(), d_cos.data(),
                                d_sin.data(), s.B, s.T, C, s.H, s.rot);
  backend::attention_backward<P>(gpu(), d_dqkv.data(), d_dout.data(), d_out.data(), d_qkvr.data(), d_lse.data(),
                                 d_cos.data(), d_sin.data(), s.B, s.T, C, s.H, s.rot);
  backend::attention_backward<P>(gpu(), d_dqkv2.data(), d_dout.data(), d_out.data(), d_qkvr.data(), d_lse.data(),
                              d_cos.data(), d_sin.data(), s.B, s.T, C, s.H, s.rot);
  GpuAttention g{download_float(d_out), download_float(d_qkvr), to_host(d_lse), download_float(d_dqkv)};
  if (backend::cuda::attention_path<P, T>(s.hd) != backend::cuda::AttentionPath::fp32) {
    // The tensor-core path keeps the rotated qkv in bf16, in qkvr's first half.
    std::vector<__nv_bfloat16> bits(N * 3 * C);
    std::memcpy(static_cast<void*>(bits.data()), to_host(d_qkvr).data(), bits.size() * sizeof(__nv_bfloat16));
    for (std::size_t i = 0; i < bits.size(); ++i) g.qkvr[i] = float(bits[i]);
  }
  const auto again = download_float(d_dqkv2);
  g.backward_repeats = std::memcmp(again.data(), g.dqkv.data(), again.size() * sizeof(float)) == 0;
  return g;
}

void fp32_case(const AttnShape& s) {
  CAPTURE(s.B);
  CAPTURE(s.T);
  CAPTURE(s.H);
  CAPTURE(s.hd);
  CAPTURE(s.rot);
  const int C = s.H * s.hd;
  const std::size_t N = std::size_t(s.B) * s.T;
  const Rope rope = rope_tables(s.T, s.rot);
  const auto qkv = randn(N * 3 * C, 300 + std::uint64_t(s.hd)), dout = randn(N * C, 400 + std::uint64_t(s.T));
  const CpuAttention cpu = cpu_attention(qkv, dout, rope, s.B, s.T, s.H, s.hd, s.rot);
  const auto g = run_gpu<float>(s, qkv, dout, rope);
  check_close(g.qkvr, cpu.qkvr, 1e-6, 1e-6, "qkvr");
  check_close(g.out, cpu.out, 1e-4, 1e-4, "out");
  check_close(g.lse, host_lse(cpu.qkvr, s.B, s.T, C, s.H), 1e-5, 1e-5, "lse");
  check_close(g.dqkv, cpu.dqkv, 1e-4, 1e-4, "dqkv");
  CHECK(g.backward_repeats);
}

// bf16 storage: the inputs are bf16 values; the GPU stores qkvr, out and dqkv
// in bf16. qkvr is checked against the CPU's rounded to bf16 (one bf16 step at
// most: rounding near a tie), then the CPU reference for out and dqkv runs in
// fp32 on the GPU's own qkvr (rot = 0 in its forward: the values are already
// rotated), so what remains is fp32 summation order, the rounding of out and
// dqkv, and D computed from the rounded out.
void bf16_case(const AttnShape& s) {
  CAPTURE(s.B);
  CAPTURE(s.T);
  CAPTURE(s.H);
  CAPTURE(s.hd);
  CAPTURE(s.rot);
  const int C = s.H * s.hd;
  const std::size_t N = std::size_t(s.B) * s.T;
  const Rope rope = rope_tables(s.T, s.rot);
  const auto qkv = round_bf16(randn(N * 3 * C, 500 + std::uint64_t(s.hd)));
  const auto dout = round_bf16(randn(N * C, 600 + std::uint64_t(s.T)));
  std::vector<float> out(N * C), qkvr(N * 3 * C), att(std::size_t(s.B) * s.H * s.T * s.T), dqkv(N * 3 * C);
  backend::attention_forward(Cpu{}, out.data(), qkvr.data(), att.data(), qkv.data(), rope.cos.data(),
                             rope.sin.data(), s.B, s.T, C, s.H, s.rot);
  const auto g = run_gpu<bf16>(s, qkv, dout, rope);
  check_close(g.qkvr, round_bf16(qkvr), 1e-6, 1.0 / 128, "qkvr (bf16)");

  std::vector<float> qkvr_again(N * 3 * C);
  backend::attention_forward(Cpu{}, out.data(), qkvr_again.data(), att.data(), g.qkvr.data(), rope.cos.data(),
                             rope.sin.data(), s.B, s.T, C, s.H, 0);
  backend::attention_backward(Cpu{}, dqkv.data(), dout.data(), out.data(), g.qkvr.data(), att.data(),
                              rope.cos.data(), rope.sin.data(), s.B, s.T, C, s.H, s.rot);
  check_close(g.out, out, 1e-2, 1.0 / 128, "out (bf16)");
  check_close(g.lse, host_lse(g.qkvr, s.B, s.T, C, s.H), 1e-5, 1e-5, "lse (bf16 storage)");
  check_close(g.dqkv, dqkv, 2e-2, 2e-2, "dqkv (bf16)");
  CHECK(g.backward_repeats);
}

// Tensor cores (MatmulPrecision::bf16, fp32 storage): Q, K, V, dO, P and dS
// enter the products as bf16 (fp32 accumulation), so out, dq, dk and dv are
// held to 2e-2 of their largest magnitude (each part of dqkv separately) and
// lse to 2e-2 absolute, against the CPU's fp32 attention on the same inputs.
// qkvr is the CPU's rotated qkv rounded to bf16 (the kernels' operand).
void tc_case(const AttnShape& s) {
  CAPTURE(s.B);
  CAPTURE(s.T);
  CAPTURE(s.H);
  CAPTURE(s.hd);
  CAPTURE(s.rot);
  const int C = s.H * s.hd;
  const std::size_t N = std::size_t(s.B) * s.T;
  const Rope rope = rope_tables(s.T, s.rot);
  const auto qkv = randn(N * 3 * C, 700 + std::uint64_t(s.hd)), dout = randn(N * C, 800 + std::uint64_t(s.T));
  const CpuAttention cpu = cpu_attention(qkv, dout, rope, s.B, s.T, s.H, s.hd, s.rot);
  const auto g = run_gpu<float, MatmulPrecision::bf16>(s, qkv, dout, rope);
  check_close(g.qkvr, round_bf16(cpu.qkvr), 1e-6, 1.0 / 128, "qkvr (tensor cores: bf16)");
  const auto all = [](std::size_t) { return true; };
  check_rel_max(g.out, cpu.out, 2e-2, 1e-4, "out (tensor cores)", all);
  check_close(g.lse, host_lse(cpu.qkvr, s.B, s.T, C, s.H), 2e-2, 0.0, "lse (tensor cores)");
  check_dqkv_parts(g.dqkv, cpu.dqkv, C, s.hd, 2e-2, 1e-4, "tensor cores");
  CHECK(g.backward_repeats);
  // The output stored in bf16 (bf16 models: only the projection reads it):
  // the fp32 output rounded once, and a backward from it (D from the rounded
  // O) within the same bounds.
  const auto gb = run_gpu<float, MatmulPrecision::bf16, __nv_bfloat16>(s, qkv, dout, rope);
  check_close(gb.out, round_bf16(g.out), 0.0, 1.0 / 256, "out (tensor cores, bf16 storage)");
  check_dqkv_parts(gb.dqkv, cpu.dqkv, C, s.hd, 2e-2, 1e-4, "tensor cores, bf16 out");
  CHECK(gb.backward_repeats);
  // dout and dqkv in bf16 too (bf16 models keep these gradients so): the
  // kernels see the same rounded dO as above and round dqkv once.
  const auto gg = run_gpu<float, MatmulPrecision::bf16, __nv_bfloat16, __nv_bfloat16>(s, qkv, dout, rope);
  check_close(gg.dqkv, round_bf16(gb.dqkv), 0.0, 0.0, "dqkv in bf16 from a bf16 dout (tensor cores)");
  CHECK(gg.backward_repeats);
  // qkv in bf16 as well (bf16 models keep the product so; the rotary pass
  // then moves 16-byte chunks where rot/2 is a multiple of 8): on bf16
  // values, the same bits as from fp32 storage.
  const auto qkv_b = round_bf16(qkv);
  using bf16 = __nv_bfloat16;
  const auto from_f32 = run_gpu<float, MatmulPrecision::bf16, bf16, bf16, float>(s, qkv_b, dout, rope);
  const auto from_b16 = run_gpu<float, MatmulPrecision::bf16, bf16, bf16, bf16>(s, qkv_b, dout, rope);
  check_close(from_b16.qkvr, from_f32.qkvr, 0.0, 0.0, "qkvr from a bf16 qkv");
  check_close(from_b16.out, from_f32.out, 0.0, 0.0, "out from a bf16 qkv");
  check_close(from_b16.dqkv, from_f32.dqkv, 0.0, 0.0, "dqkv from a bf16 qkv");
}

// The message of the doremi::Error that f throws ("" when none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("cuda: attention argument checks name the bad value (before any CUDA call: runs without a GPU)") {
  using backend::cuda::attention_check;
  CHECK(attention_check(2, 37, 128, 2, 16) == 64);
  CHECK(attention_check(1, 1, 16, 1, 0) == 16);
  CHECK(attention_check(1, 5, 512, 4, 128) == 128);
  const struct {
    int B, T, C, H, rot;
    const char* says;
  } bad[] = {
      {0, 8, 64, 2, 0, "B = 0"},
      {2, -1, 64, 2, 0, "T = -1"},
      {2, 8, 64, 0, 0, "H = 0"},
      {2, 8, 100, 3, 0, "C = 100"},
      {2, 8, 96, 2, 0, "hd = C / H = 48"},     // unsupported head dimension
      {2, 8, 512, 2, 0, "16, 32, 64, 128"},    // hd = 256: the message lists the supported set
      {2, 8, 128, 2, 3, "rot = 3"},            // odd
      {2, 8, 128, 2, 66, "rot = 66"},          // > hd
      {2, 8, 128, 2, -2, "rot = -2"},
  };
  for (const auto& b : bad) {
    INFO("expected in the message: " << b.says);
    const std::string msg = error_of([&] { attention_check(b.B, b.T, b.C, b.H, b.rot); });
    INFO(msg);
    CHECK(msg.find(b.says) != std::string::npos);
    CHECK(msg.find("attention") != std::string::npos);
  }
  if (!backend::cuda_available()) {
    MESSAGE("no CUDA device: attention_forward/backward's own rejection of bad shapes is not exercised");
    return;
  }
  // The layer functions check first: null pointers are never touched.
  float* null = nullptr;
  const std::string fwd = error_of([&] {
    backend::attention_forward(gpu(), null, null, null, null, null, null, 2, 8, 96, 2, 0);
  });
  CHECK(fwd.find("48") != std::string::npos);
  const std::string bwd = error_of([&] {
    backend::attention_backward(gpu(), null, null, null, null, null, null, null, 2, 8, 128, 2, 3);
  });
  CHECK(bwd.find("rot = 3") != std::string::npos);
}

TEST_CASE("cuda: attention forward and backward (flash-style) match the CPU, fp32") {
  REQUIRE_GPU();
  for (const AttnShape& s : {AttnShape{1, 1, 2, 16, 16}, AttnShape{2, 37, 3, 16, 4}, AttnShape{1, 130, 2, 64, 16},
                             AttnShape{2, 256, 2, 64, 0}, AttnShape{1, 64, 2, 64, 64}, AttnShape{1, 37, 2, 32, 32},
                             AttnShape{2, 100, 1, 32, 8}, AttnShape{1, 130, 1, 128, 32},
                             AttnShape{2, 65, 1, 128, 128}, AttnShape{1, 256, 1, 16, 0}})
    fp32_case(s);
}

TEST_CASE("cuda: attention forward and backward (flash-style) match the CPU, bf16 storage") {
  REQUIRE_GPU();
  for (const AttnShape& s : {AttnShape{2, 130, 2, 64, 16}, AttnShape{1, 37, 1, 128, 128}, AttnShape{1, 70, 2, 16, 0},
                             AttnShape{1, 256, 1, 32, 8}})
    bf16_case(s);
}

TEST_CASE("cuda: attention on tensor cores (MatmulPrecision::bf16, fp32 storage) matches the CPU within bf16 error") {
  REQUIRE_GPU();
  // Both kernel families: WMMA (attention_tc.hpp) and register-resident mma.sync (attention_mma.hpp).
  for_each_attention_family([] {
    for (const AttnShape& s : {AttnShape{1, 64, 2, 64, 16}, AttnShape{2, 100, 2, 64, 64}, AttnShape{1, 256, 3, 64, 32},
                               AttnShape{2, 64, 1, 128, 32}, AttnShape{1, 100, 2, 128, 128},
                               AttnShape{2, 256, 1, 128, 64}, AttnShape{1, 100, 2, 32, 8}, AttnShape{2, 37, 1, 16, 16},
                               AttnShape{1, 1, 1, 64, 16}, AttnShape{1, 65, 2, 64, 0}})
      tc_case(s);
#ifndef DOREMI_CUDA_EMULATE
    // On a GPU also doremi-120m's head shape at its full context: hundreds of
    // blocks in flight at once, where small grids could hide a race. (Too
    // slow for the CPU emulator, which runs blocks one at a time anyway.)
    tc_case(AttnShape{2, 1024, 4, 64, 16});
#endif
  });
}

TEST_CASE("cuda: attention MatmulPrecision::bf16 with bf16 storage keeps the fp32 kernels") {
  REQUIRE_GPU();
  // bf16 storage takes the native kernels whatever P: the results equal the native call's bit for bit.
  const AttnShape s{1, 70, 2, 64, 16};
  const int C = s.H * s.hd;
  const std::size_t N = std::size_t(s.B) * s.T;
  const Rope rope = rope_tables(s.T, s.rot);
  const auto qkv = round_bf16(randn(N * 3 * C, 900)), dout = round_bf16(randn(N * C, 901));
  const auto a = run_gpu<bf16, MatmulPrecision::native>(s, qkv, dout, rope);
  const auto b = run_gpu<bf16, MatmulPrecision::bf16>(s, qkv, dout, rope);
  CHECK(std::memcmp(a.out.data(), b.out.data(), a.out.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(a.dqkv.data(), b.dqkv.data(), a.dqkv.size() * sizeof(float)) == 0);
}
