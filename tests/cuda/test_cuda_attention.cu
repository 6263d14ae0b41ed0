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

// ---- attention_cached (generation against a key/value cache) ----
//
// Against the definition, computed here in double: token t of row b at
// position p = start[b] + t, its k rotated (rotate-half on the first rot
// dims by the tables' row p) and its v written at p; out = Σ_{j ≤ p}
// softmax_j(q_rot·k_j / √hd) v_j over the cache after the writes. The cache
// starts with random "earlier" keys and values below each row's start and NaN
// from start + Tn on (a kernel that reads past a query's position poisons
// its output); cells the call must not write are compared bit for bit. And
// against backend::Cpu's attention_cached on the same inputs.

namespace {

struct CachedShape {
  int B, H, hd, Tn, capacity, rot;
  std::vector<std::int32_t> start;
};

struct CachedInputs {
  std::vector<float> qkv, k0, v0;
  Rope rope;
};

// qkv [B·Tn, 3C] (rounded to bf16 when the kernels read it so: exact on the
// device), the cache's initial contents and the tables.
CachedInputs cached_inputs(const CachedShape& s, bool bf16_qkv, std::uint64_t seed) {
  const int C = s.H * s.hd;
  CachedInputs in{randn(std::size_t(s.B) * s.Tn * 3 * C, seed), {}, {}, rope_tables(s.capacity, s.rot)};
  if (bf16_qkv) in.qkv = round_bf16(in.qkv);
  const std::size_t cells = std::size_t(s.B) * s.H * s.capacity * s.hd;
  in.k0 = randn(cells, seed + 1);
  in.v0 = randn(cells, seed + 2);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (std::size_t i = 0; i < cells; ++i) {
    const int b = int(i / (std::size_t(s.H) * s.capacity * s.hd)), pos = int(i / std::size_t(s.hd) % s.capacity);
    if (pos >= s.start[std::size_t(b)] + s.Tn) in.k0[i] = in.v0[i] = nan;
  }
  return in;
}

struct CachedExpect {
  std::vector<float> out, k, v;  // the double results, rounded once
};

CachedExpect cached_reference(const CachedShape& s, const CachedInputs& in) {
  const int C = s.H * s.hd, hd = s.hd, half = s.rot / 2;
  std::vector<double> k(in.k0.begin(), in.k0.end()), v(in.v0.begin(), in.v0.end());
  auto rotated = [&](const float* x, int p) {
    std::vector<double> y(x, x + hd);
    for (int i = 0; i < half; ++i) {
      const double c = in.rope.cos[std::size_t(p) * half + i], sn = in.rope.sin[std::size_t(p) * half + i];
      const double x1 = x[i], x2 = x[i + half];
      y[std::size_t(i)] = x1 * c - x2 * sn;
      y[std::size_t(i + half)] = x2 * c + x1 * sn;
    }
    return y;
  };
  auto head_of = [&](int b, int t, int h) { return in.qkv.data() + (std::size_t(b) * s.Tn + t) * 3 * C + std::size_t(h) * 3 * hd; };
  auto cell = [&](int b, int h, int p) { return ((std::size_t(b) * s.H + h) * s.capacity + p) * hd; };
  for (int b = 0; b < s.B; ++b)
    for (int t = 0; t < s.Tn; ++t)
      for (int h = 0; h < s.H; ++h) {
        const int p = s.start[std::size_t(b)] + t;
        const auto kr = rotated(head_of(b, t, h) + hd, p);
        for (int d = 0; d < hd; ++d) {
          k[cell(b, h, p) + d] = kr[std::size_t(d)];
          v[cell(b, h, p) + d] = head_of(b, t, h)[2 * hd + d];
        }
      }
  CachedExpect e{std::vector<float>(std::size_t(s.B) * s.Tn * C), std::vector<float>(k.begin(), k.end()),
                 std::vector<float>(v.begin(), v.end())};
  for (int b = 0; b < s.B; ++b)
    for (int t = 0; t < s.Tn; ++t)
      for (int h = 0; h < s.H; ++h) {
        const int p = s.start[std::size_t(b)] + t;
        const auto q = rotated(head_of(b, t, h), p);
        std::vector<double> sc(std::size_t(p) + 1);
        double mx = -std::numeric_limits<double>::infinity();
        for (int j = 0; j <= p; ++j) {
          double dot = 0;
          for (int d = 0; d < hd; ++d) dot += q[std::size_t(d)] * k[cell(b, h, j) + d];
          sc[std::size_t(j)] = dot / std::sqrt(double(hd));
          mx = std::max(mx, sc[std::size_t(j)]);
        }
        double sum = 0;
        for (double& x : sc) sum += (x = std::exp(x - mx));
        for (int d = 0; d < hd; ++d) {
          double o = 0;
          for (int j = 0; j <= p; ++j) o += sc[std::size_t(j)] * v[cell(b, h, j) + d];
          e.out[(std::size_t(b) * s.Tn + t) * C + std::size_t(h) * hd + d] = float(o / sum);
        }
      }
  return e;
}

struct CachedRun {
  std::vector<float> out, k, v;
};

// The CUDA call with qkv in In, out in O; the cache and tables in fp32.
template <class In, class O, MatmulPrecision P = MatmulPrecision::native, int HeadDim = 0>
CachedRun run_cached(const CachedShape& s, const CachedInputs& in) {
  const int C = s.H * s.hd;
  auto d_qkv = upload_as<In>(in.qkv);
  auto d_k = to_device(in.k0), d_v = to_device(in.v0);
  auto d_start = to_device(s.start);
  auto d_cos = to_device(in.rope.cos), d_sin = to_device(in.rope.sin);
  DeviceBuffer<O> d_out(std::size_t(s.B) * s.Tn * C);
  backend::attention_cached<P, HeadDim>(gpu(), d_out.data(), d_qkv.data(), d_k.data(), d_v.data(), d_start.data(),
                                        d_cos.data(), d_sin.data(), s.B, s.Tn, C, s.H, s.rot, s.capacity);
  return {download_float(d_out), to_host(d_k), to_host(d_v)};
}

// The cache after the call: the new tokens' cells within 1e-5 of the
// definition, every other cell unchanged bit for bit.
void check_cache(const CachedShape& s, const std::vector<float>& got, const std::vector<float>& want,
                 const std::vector<float>& before, const char* what) {
  std::size_t bad = 0, first = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const int b = int(i / (std::size_t(s.H) * s.capacity * s.hd)), pos = int(i / std::size_t(s.hd) % s.capacity);
    const int s0 = s.start[std::size_t(b)];
    const bool written = pos >= s0 && pos < s0 + s.Tn && pos < s.capacity && s0 >= 0;
    const bool ok = written ? std::abs(double(got[i]) - double(want[i])) <= 1e-5 + 1e-5 * std::abs(double(want[i]))
                            : std::memcmp(&got[i], &before[i], sizeof(float)) == 0;
    if (!ok && bad++ == 0) first = i;
  }
  INFO(what << ": " << bad << " cells wrong, the first " << first << " (got " << got[first] << ", want "
            << want[first] << ", before " << before[first] << ")");
  CHECK(bad == 0);
}

// backend::Cpu's attention_cached on the same inputs (qkv as floats): its out and cache.
CachedRun run_cpu_cached(const CachedShape& s, const CachedInputs& in) {
  const int C = s.H * s.hd;
  CachedRun r{std::vector<float>(std::size_t(s.B) * s.Tn * C), in.k0, in.v0};
  backend::attention_cached(Cpu{}, r.out.data(), in.qkv.data(), r.k.data(), r.v.data(), s.start.data(),
                            in.rope.cos.data(), in.rope.sin.data(), s.B, s.Tn, C, s.H, s.rot, s.capacity);
  return r;
}

void cached_case(const CachedShape& s, std::uint64_t seed) {
  CAPTURE(s.B);
  CAPTURE(s.H);
  CAPTURE(s.hd);
  CAPTURE(s.Tn);
  CAPTURE(s.rot);
  CAPTURE(s.capacity);
  CAPTURE(s.start[0]);
  CAPTURE(s.start[1]);
  {  // fp32 throughout
    const CachedInputs in = cached_inputs(s, false, seed);
    const CachedExpect e = cached_reference(s, in);
    const CachedRun g = run_cached<float, float>(s, in);
    check_close(g.out, e.out, 2e-5, 1e-4, "out (fp32)");
    check_cache(s, g.k, e.k, in.k0, "k cache (fp32)");
    check_cache(s, g.v, e.v, in.v0, "v cache (fp32)");
    const CachedRun cpu = run_cpu_cached(s, in);
    check_close(g.out, cpu.out, 2e-5, 1e-4, "out (fp32) against the CPU backend");
    check_cache(s, g.k, cpu.k, in.k0, "k cache (fp32) against the CPU backend");
    check_cache(s, g.v, cpu.v, in.v0, "v cache (fp32) against the CPU backend");
  }
  {  // bf16 operands (a MatmulPrecision::bf16 model's qkv and attention output), fp32 cache
    const CachedInputs in = cached_inputs(s, true, seed + 10);
    const CachedExpect e = cached_reference(s, in);
    const CachedRun g = run_cached<bf16, bf16, MatmulPrecision::bf16>(s, in);
    check_close(g.out, e.out, 1e-5, 1.0 / 256, "out (bf16 qkv and out)");
    check_close(g.out, run_cpu_cached(s, in).out, 1e-5, 1.0 / 256, "out (bf16 qkv and out) against the CPU backend");
    check_cache(s, g.k, e.k, in.k0, "k cache (bf16 qkv)");
    check_cache(s, g.v, e.v, in.v0, "v cache (bf16 qkv)");
  }
}

}  // namespace

TEST_CASE("cuda: attention_cached (decoding and prefill) matches the definition; the cache holds rotated k and v") {
  REQUIRE_GPU();
  // Tn < attention_cached_tiled_from: the per-token kernel; Tn ≥ it: the tiled one.
  static_assert(backend::cuda::attention_cached_tiled_from > 3 && backend::cuda::attention_cached_tiled_from <= 20);
  // hd = 64: two query tiles and two key tiles in the tiled kernel (Tn = 70; keys up to 80).
  struct Layout {
    int hd, B, H, capacity, prefill;
    std::vector<std::int32_t> decode_start, few_start, chunk_start;
  };
  for (const Layout& c : {Layout{64, 3, 2, 100, 70, {0, 5, 33}, {2, 0, 41}, {0, 7, 60}},
                          Layout{16, 2, 3, 48, 37, {20, 0}, {0, 44}, {11, 0}}}) {
    const int hd = c.hd;
    for (const int rot : {0, hd / 4, hd}) {
      const auto seed = std::uint64_t(1000 + 10 * rot + hd);
      cached_case({c.B, c.H, hd, 1, c.capacity, rot, c.decode_start}, seed);       // decoding
      cached_case({c.B, c.H, hd, 3, c.capacity, rot, c.few_start}, seed + 100);    // a few new tokens
      cached_case({c.B, c.H, hd, c.prefill, c.capacity, rot, std::vector<std::int32_t>(std::size_t(c.B), 0)},
                  seed + 200);                                                      // prefill
      cached_case({c.B, c.H, hd, 20, c.capacity, rot, c.chunk_start}, seed + 300);  // a later chunk
    }
  }
}

TEST_CASE("cuda: attention_cached with the head dimension fixed at compile time gives the same bits") {
  REQUIRE_GPU();
  for (const int Tn : {1, 20}) {
    CAPTURE(Tn);
    const CachedShape s{2, 2, 64, Tn, 40, 16, {3, 17}};
    const CachedInputs in = cached_inputs(s, false, 1400);
    const CachedRun a = run_cached<float, float>(s, in);
    const CachedRun b = run_cached<float, float, MatmulPrecision::native, 64>(s, in);
    CHECK(std::memcmp(a.out.data(), b.out.data(), a.out.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(a.k.data(), b.k.data(), a.k.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("cuda: attention_cached positions outside the cache write nothing there and give NaN outputs") {
  REQUIRE_GPU();
  // Row 1 runs past the capacity (its last tokens), row 2 has a negative start: no cell of theirs beyond the
  // cache is written (the bit-for-bit check covers every other cell), their outputs there are NaN, and row
  // 0 is unaffected.
  for (const int Tn : {3, 20}) {
    CAPTURE(Tn);
    const int cap = Tn + 4, hd = 16, H = 2, C = H * hd;
    const CachedShape s{3, H, hd, Tn, cap, 8, {1, 6, -1}};
    CachedInputs in = cached_inputs(s, false, 1500);
    CachedShape row0 = s;
    row0.B = 1;
    CachedInputs in0 = in;
    in0.qkv.resize(std::size_t(Tn) * 3 * C);
    in0.k0.resize(std::size_t(H) * cap * hd);
    in0.v0.resize(in0.k0.size());
    const CachedExpect e0 = cached_reference(row0, in0);
    const CachedRun g = run_cached<float, float>(s, in);
    std::vector<float> out0(g.out.begin(), g.out.begin() + std::ptrdiff_t(Tn) * C);
    check_close(out0, e0.out, 2e-5, 1e-4, "row 0");
    std::size_t nan_rows = 0, finite_rows = 0;
    for (int b = 1; b < 3; ++b)
      for (int t = 0; t < Tn; ++t) {
        const bool outside = s.start[std::size_t(b)] < 0 || s.start[std::size_t(b)] + t >= cap;
        for (int c = 0; c < C; ++c) {
          const float x = g.out[(std::size_t(b) * Tn + t) * C + std::size_t(c)];
          if (outside) nan_rows += std::isnan(x);
          else finite_rows += std::isfinite(x);
        }
      }
    CHECK(nan_rows == std::size_t(C) * (Tn + (Tn - (cap - 6))));
    CHECK(finite_rows == std::size_t(C) * (cap - 6));
    // Cells: row 1's positions 6 .. cap − 1 are written (all changed), row 2's none.
    std::size_t changed = 0;
    for (std::size_t i = 0; i < g.k.size(); ++i) {
      const int b = int(i / (std::size_t(H) * cap * hd)), pos = int(i / std::size_t(hd) % cap);
      if (b == 0) continue;
      const bool written = b == 1 && pos >= 6;
      const bool same = std::memcmp(&g.k[i], &in.k0[i], 4) == 0 && std::memcmp(&g.v[i], &in.v0[i], 4) == 0;
      changed += written == same;  // a written cell that kept its value, or an unwritten one that changed
    }
    CHECK(changed == 0);
  }
}

TEST_CASE("cuda: attention_cached argument checks name the bad value (before any CUDA call)") {
  float* null = nullptr;
  auto* misaligned = reinterpret_cast<float*>(std::uintptr_t(4));
  const std::int32_t* start = nullptr;
  if (!backend::cuda_available()) {
    MESSAGE("no CUDA device: attention_cached's argument checks are not exercised");
    return;
  }
  const struct {
    int B, Tn, C, H, rot, capacity;
    float* cache;
    const char* says;
  } bad[] = {
      {2, 1, 96, 2, 0, 16, null, "hd = C / H = 48"},
      {2, 1, 128, 2, 3, 16, null, "rot = 3"},
      {2, 1, 128, 2, 0, 0, null, "capacity = 0"},
      {2, 17, 128, 2, 0, 16, null, "17 new tokens"},
      {2, 1, 128, 2, 0, 16, misaligned, "16-byte aligned"},
  };
  for (const auto& b : bad) {
    INFO("expected in the message: " << b.says);
    const std::string msg = error_of([&] {
      backend::attention_cached(gpu(), null, static_cast<const float*>(null), b.cache, b.cache, start, null, null, b.B,
                                b.Tn, b.C, b.H, b.rot, b.capacity);
    });
    INFO(msg);
    CHECK(msg.find(b.says) != std::string::npos);
  }
}
