#pragma once
// Host-side references and checks shared by the GPU tests (tests/cuda) and
// the CPU-emulated kernel tests (tests/cuda_emu): random inputs, tolerance
// checks that report the worst element, attention's rotary tables and
// logsumexp computed here in double, and the CPU backend's attention as the
// reference for the GPU kernels.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <cuda_bf16.h>
#include <doctest/doctest.h>

#include "doremi/backend/cpu.hpp"  // backend::Cpu's attention: the reference
#include "doremi/core/rng.hpp"        // Philox: inputs as pure functions of (seed, stream, index)
#include "doremi/model/gpt.hpp"       // rotary_tables

namespace cuda_test {

inline std::vector<float> randn(std::size_t n, std::uint64_t seed, float scale = 1.0f, float shift = 0.0f) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = shift + scale * float(doremi::Philox::normal(seed, 7, i));
  return v;
}

// |got − want| ≤ allowed(i) everywhere, all finite; reports the worst element.
template <class Allowed>
void check_within(const std::vector<float>& got, const std::vector<float>& want, Allowed allowed, const char* what) {
  REQUIRE(got.size() == want.size());
  double worst = 0;
  std::size_t at = 0;
  bool finite = true;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) finite = false;
    const double excess = std::abs(double(got[i]) - double(want[i])) - double(allowed(i));
    if (excess > worst) {
      worst = excess;
      at = i;
    }
  }
  INFO(what << ": worst element " << at << " got " << got[at] << " want " << want[at] << " allowed "
            << (got.empty() ? 0.0 : double(allowed(at))));
  CHECK(finite);
  CHECK(worst <= 0.0);
}

// |got − want| ≤ atol + rtol·|want| everywhere.
inline void check_close(const std::vector<float>& got, const std::vector<float>& want, double atol, double rtol,
                        const char* what) {
  check_within(got, want, [&](std::size_t i) { return atol + rtol * std::abs(double(want[i])); }, what);
}

// Rotary tables as Model builds them (rotary_tables, model/gpt.hpp), base 10000.
using Rope = doremi::RotaryTables<float>;
inline Rope rope_tables(int n_ctx, int rot) { return doremi::rotary_tables<float>(n_ctx, rot, 10000.0); }

inline std::vector<float> round_bf16(std::vector<float> v) {
  for (float& f : v) f = float(__nv_bfloat16(f));
  return v;
}

// lse[(b·H + h)·T + i] = log Σ_{j ≤ i} exp(q_i·k_j / √hd) from (rotated) qkvr, in double.
inline std::vector<float> host_lse(const std::vector<float>& qkvr, int B, int T, int C, int H) {
  const int hd = C / H;
  const double scale = 1.0 / std::sqrt(double(hd));
  std::vector<float> lse(std::size_t(B) * H * T);
  std::vector<double> s(T);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < T; ++i) {
        const float* q = qkvr.data() + (std::size_t(b) * T + i) * 3 * C + std::size_t(h) * 3 * hd;
        double mx = -std::numeric_limits<double>::infinity();
        for (int j = 0; j <= i; ++j) {
          const float* k = qkvr.data() + (std::size_t(b) * T + j) * 3 * C + std::size_t(h) * 3 * hd + hd;
          double d = 0;
          for (int c = 0; c < hd; ++c) d += double(q[c]) * double(k[c]);
          s[j] = d * scale;
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (int j = 0; j <= i; ++j) sum += std::exp(s[j] - mx);
        lse[(std::size_t(b) * H + h) * T + i] = float(mx + std::log(sum));
      }
  return lse;
}

// max |got − want| ≤ tol · max |want| + floor over the elements that `pick`
// selects (by index); reports the worst element.
template <class Pick>
inline void check_rel_max(const std::vector<float>& got, const std::vector<float>& want, double tol, double floor,
                   const char* what, Pick pick) {
  REQUIRE(got.size() == want.size());
  double err = 0, mx = 0;
  std::size_t at = 0;
  bool finite = true;
  for (std::size_t e = 0; e < got.size(); ++e) {
    if (!pick(e)) continue;
    if (!std::isfinite(got[e])) finite = false;
    mx = std::max(mx, std::abs(double(want[e])));
    const double d = std::abs(double(got[e]) - double(want[e]));
    if (d > err) {
      err = d;
      at = e;
    }
  }
  INFO(what << ": max |error| " << err << " (element " << at << ": got " << got[at] << " want " << want[at]
            << "), max |want| " << mx << ", relative to the max " << (mx > 0 ? err / mx : 0.0));
  CHECK(finite);
  CHECK(err <= tol * mx + floor);
}

// backend::Cpu's attention forward and backward on qkv [B·T, 3C] and dout
// [B·T, C] (C = H·hd): out, the rotated qkvr, and dqkv.
struct CpuAttention {
  std::vector<float> out, qkvr, dqkv;
};
inline CpuAttention cpu_attention(const std::vector<float>& qkv, const std::vector<float>& dout, const Rope& rope,
                                  int B, int T, int H, int hd, int rot) {
  const int C = H * hd;
  const std::size_t N = std::size_t(B) * T;
  CpuAttention r{std::vector<float>(N * C), std::vector<float>(N * 3 * C), std::vector<float>(N * 3 * C)};
  std::vector<float> att(std::size_t(B) * H * T * T);
  doremi::backend::attention_forward(doremi::backend::Cpu{}, r.out.data(), r.qkvr.data(), att.data(), qkv.data(),
                                     rope.cos.data(), rope.sin.data(), B, T, C, H, rot);
  doremi::backend::attention_backward(doremi::backend::Cpu{}, r.dqkv.data(), dout.data(), r.out.data(),
                                      r.qkvr.data(), att.data(), rope.cos.data(), rope.sin.data(), B, T, C, H, rot);
  return r;
}

// check_rel_max on the dq, dk and dv parts of dqkv [B·T, 3C] separately
// (each head's row holds [q | k | v], hd values each); `what` names the kernels.
inline void check_dqkv_parts(const std::vector<float>& got, const std::vector<float>& want, int C, int hd, double tol,
                             double floor, const char* what) {
  const char* part_name[3] = {"dq", "dk", "dv"};
  for (int part = 0; part < 3; ++part) {
    INFO(part_name[part] << " (" << what << ")");
    check_rel_max(got, want, tol, floor, part_name[part],
                  [&](std::size_t e) { return int(e % std::size_t(3 * C)) % (3 * hd) / hd == part; });
  }
}

}  // namespace cuda_test
