// backend::Cuda's classifier (logits GEMM + fused softmax / cross-entropy /
// logits gradient, weights applied in the backward) against backend::Cpu's on
// the same inputs: losses, mask, the unweighted logits gradient G the forward
// leaves in `probs`, 1/Σexp, dx and the accumulated dW. Rows not a multiple
// of any block size, padding targets (with NaN weights that must be ignored),
// zero and non-uniform weights, a misaligned `probs` with an odd V (the
// kernel's scalar head and tail), the padded GPT-2 vocabulary, fp32 and bf16
// storage. Without a GPU every case that needs one skips with a MESSAGE.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
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

struct ClassifierShape {
  int N, C, V;
  std::size_t offset;       // elements between the allocation's start and `probs` (0: aligned)
  float logit_scale = 1.0f;  // standard deviation of the logits
};

// A device copy of v in T (bf16 values are exact: v is already rounded), `offset` elements in.
template <class T>
DeviceBuffer<T> upload(const std::vector<float>& v, std::size_t offset = 0) {
  std::vector<T> h(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) h[i] = T(v[i]);
  return to_device_at(h, offset);
}
template <class T>
std::vector<float> download(const DeviceBuffer<T>& d, std::size_t offset = 0) {
  const auto h = to_host_at(d, offset);
  std::vector<float> f(h.size());
  for (std::size_t i = 0; i < h.size(); ++i) f[i] = float(h[i]);
  return f;
}

// |got − want| ≤ atol + rel·bound elementwise, where bound is Σ|terms| of the
// product that made the element (the GEMM error bound): bf16 errors are
// relative to the terms, not to a sum that may cancel.
void check_bounded(const std::vector<float>& got, const std::vector<float>& want, const std::vector<float>& bound,
                   double atol, double rel, const char* what) {
  REQUIRE(bound.size() == want.size());
  check_within(got, want, [&](std::size_t i) { return atol + rel * double(bound[i]); }, what);
}

std::vector<float> abs_of(std::vector<float> v) {
  for (float& f : v) f = std::abs(f);
  return v;
}
// [cols, rows] from row-major [rows, cols].
std::vector<float> transposed(const std::vector<float>& a, int rows, int cols) {
  std::vector<float> t(a.size());
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) t[std::size_t(c) * rows + r] = a[std::size_t(r) * cols + c];
  return t;
}
// out[M, K2] = a[M, K]·bt[K2, K]ᵀ on the CPU.
std::vector<float> product_bt(const std::vector<float>& a, const std::vector<float>& bt, int M, int K, int K2) {
  std::vector<float> out(std::size_t(M) * K2);
  backend::matmul_forward(Cpu{}, out.data(), a.data(), bt.data(), static_cast<const float*>(nullptr), M, K, K2);
  return out;
}

// Distinct pseudo-random targets for the valid rows (7919 is a prime dividing
// none of the V used here), every fifth row padding, the first valid row at
// column 0 and another at V − 1 (the ends of a row).
std::vector<std::int32_t> make_targets(int N, int V, std::uint64_t seed) {
  std::vector<std::int32_t> t(static_cast<std::size_t>(N));
  const std::uint64_t start = Philox::below(std::uint64_t(V), seed, 3, 0);
  for (int n = 0; n < N; ++n) t[n] = std::int32_t((start + std::uint64_t(n) * 7919u) % std::uint64_t(V));
  t[0] = 0;
  if (std::find(t.begin(), t.end(), V - 1) == t.end()) t[std::size_t(N) - 2] = V - 1;
  for (int n = 0; n < N; ++n)
    if (n % 5 == 3) t[n] = -1;
  return t;
}

// Non-uniform weights in [0.25, ~4.5], every seventh 0, NaN on padding rows
// (must be ignored there).
std::vector<float> make_weights(const std::vector<std::int32_t>& targets, std::uint64_t seed) {
  const auto r = randn(targets.size(), seed);
  std::vector<float> w(targets.size());
  for (std::size_t n = 0; n < w.size(); ++n) {
    w[n] = 0.25f + std::abs(r[n]);
    if (n % 7 == 2) w[n] = 0.0f;
    if (targets[n] < 0) w[n] = std::nanf("");
  }
  return w;
}

template <class T>
void classifier_case(const ClassifierShape& s) {
  constexpr bool is_bf16 = std::is_same_v<T, bf16>;
  const int N = s.N, C = s.C, V = s.V;
  const std::size_t off = s.offset;
  CAPTURE(N);
  CAPTURE(C);
  CAPTURE(V);
  CAPTURE(off);
  CAPTURE(s.logit_scale);
  CAPTURE(is_bf16);
  const std::uint64_t seed = 9000 + std::uint64_t(N) * 31 + std::uint64_t(C) * 7 + std::uint64_t(V);
  auto x = randn(std::size_t(N) * C, seed + 1);
  auto w = randn(std::size_t(V) * C, seed + 2, s.logit_scale / std::sqrt(float(C)));
  if (is_bf16) {  // the CPU reference gets the bf16 values the GPU stores
    x = round_bf16(x);
    w = round_bf16(w);
  }
  const auto targets = make_targets(N, V, seed + 3);
  const auto weights = make_weights(targets, seed + 4);
  const auto dw0 = randn(std::size_t(V) * C, seed + 5, 1e-3f);  // backward accumulates into dW

  // CPU reference (fp32).
  std::vector<float> losses(N), inv_sum(N), E(std::size_t(N) * V), dx(std::size_t(N) * C), dw = dw0;
  std::vector<std::uint8_t> mask(N);
  backend::classifier_forward(Cpu{}, losses.data(), mask.data(), E.data(), inv_sum.data(), x.data(), w.data(),
                              targets.data(), N, C, V);
  backend::classifier_backward(Cpu{}, dx.data(), dw.data(), E.data(), inv_sum.data(), weights.data(), x.data(),
                               w.data(), targets.data(), N, C, V);
  // What the GPU's forward leaves in probs: G = softmax − onehot, zero rows for padding.
  std::vector<float> g(E.size(), 0.0f), g_bound(E.size(), 0.0f);
  for (int n = 0; n < N; ++n) {
    if (targets[n] < 0) continue;
    for (int j = 0; j < V; ++j) {
      const std::size_t i = std::size_t(n) * V + j;
      const float p = E[i] * inv_sum[n];
      g[i] = p - (j == targets[n] ? 1.0f : 0.0f);
      g_bound[i] = p + (j == targets[n] ? 1.0f : 0.0f);
    }
  }

  // GPU.
  auto d_x = upload<T>(x), d_w = upload<T>(w);
  auto d_targets = to_device(targets);
  auto d_weights = to_device(weights);
  auto d_dw = to_device(dw0);
  DeviceBuffer<float> d_losses(N), d_inv_sum(N);
  DeviceBuffer<std::uint8_t> d_mask(N);
  DeviceBuffer<T> d_probs(E.size() + off), d_dx(dx.size());
  backend::classifier_forward(gpu(), d_losses.data(), d_mask.data(), d_probs.data() + off, d_inv_sum.data(),
                              d_x.data(), d_w.data(), d_targets.data(), N, C, V);
  const auto got_probs = download(d_probs, off);  // before the backward, which must not change it
  backend::classifier_backward(gpu(), d_dx.data(), d_dw.data(), static_cast<const T*>(d_probs.data() + off),
                               static_cast<const float*>(d_inv_sum.data()), d_weights.data(), d_x.data(),
                               d_w.data(), d_targets.data(), N, C, V);

  const auto got_mask = to_host(d_mask);
  CHECK(got_mask == mask);
  const auto got_inv = to_host(d_inv_sum);
  std::vector<float> inv_valid, want_inv_valid;  // the CPU's inv_sum of padding rows is not comparable (GPU: 0)
  for (int n = 0; n < N; ++n) {
    if (targets[n] < 0) {
      CHECK(got_inv[n] == 0.0f);
      continue;
    }
    inv_valid.push_back(got_inv[n]);
    want_inv_valid.push_back(inv_sum[n]);
  }
  CHECK(download(d_probs, off) == got_probs);  // the backward only reads G
  {  // Losses only (for_backward = false, Model::forward_losses): the same losses, mask and inv_sum.
    DeviceBuffer<float> d_losses2(N), d_inv2(N);
    DeviceBuffer<std::uint8_t> d_mask2(N);
    DeviceBuffer<T> d_probs2(E.size() + off);  // the same alignment: the same GEMM algorithm
    backend::classifier_forward(gpu(), d_losses2.data(), d_mask2.data(), d_probs2.data() + off, d_inv2.data(),
                                d_x.data(), d_w.data(), d_targets.data(), N, C, V, /*for_backward=*/false);
    CHECK(to_host(d_losses2) == to_host(d_losses));
    CHECK(to_host(d_mask2) == got_mask);
    CHECK(to_host(d_inv2) == got_inv);
  }

  if constexpr (!is_bf16) {
    // fp32: different summation orders only. Logits (and W) scaled by k carry
    // k times the GEMM's rounding into the exponent, hence tolerances × k.
    const double k = std::max(1.0f, s.logit_scale);
    check_close(to_host(d_losses), losses, 1e-4 * k, 1e-4 * k, "losses");
    check_close(inv_valid, want_inv_valid, 0, 1e-4 * k, "inv_sum");
    check_close(got_probs, g, 1e-6 * k, 1e-4 * k, "G = softmax - onehot");
    check_close(to_host(d_dx), dx, 1e-5 * k, 1e-4 * k, "dx");
    check_close(to_host(d_dw), dw, 1e-5 * k, 1e-4 * k, "dW");
  } else {
    // Bounds for bf16: the logits are rounded to bf16 (relative 2^-8, at most
    // ~0.02 absolute for logits up to 5), which moves each probability by up to
    // a few per cent and each loss by up to ~0.04; G, x·w and dx are rounded
    // to bf16 once more. 5 % of the GEMMs' Σ|terms| covers all of it.
    check_close(to_host(d_losses), losses, 5e-2, 1e-2, "losses (bf16 logits)");
    check_close(inv_valid, want_inv_valid, 0, 1e-1, "inv_sum (bf16 logits)");
    check_bounded(got_probs, g, g_bound, 1e-6, 5e-2, "G = softmax - onehot (bf16)");
    // dx bound: |w_n|·Σ_v |G_nv|·|W_vc|; dW bound: |dW0| + Σ_n |G_nv|·|w_n·x_nc|.
    std::vector<float> wn(N);
    for (int n = 0; n < N; ++n) wn[n] = targets[n] < 0 ? 0.0f : std::abs(weights[n]);
    auto dx_bound = product_bt(g_bound, transposed(abs_of(w), V, C), N, V, C);
    for (int n = 0; n < N; ++n)
      for (int c = 0; c < C; ++c) dx_bound[std::size_t(n) * C + c] *= wn[n];
    std::vector<float> xs_abs(x.size());
    for (int n = 0; n < N; ++n)
      for (int c = 0; c < C; ++c) xs_abs[std::size_t(n) * C + c] = wn[n] * std::abs(x[std::size_t(n) * C + c]);
    auto dw_bound = product_bt(transposed(g_bound, N, V), transposed(xs_abs, N, C), V, N, C);
    for (std::size_t i = 0; i < dw_bound.size(); ++i) dw_bound[i] += std::abs(dw0[i]);
    check_bounded(download(d_dx), dx, dx_bound, 1e-6, 5e-2, "dx (bf16)");
    check_bounded(to_host(d_dw), dw, dw_bound, 1e-6, 5e-2, "dW (fp32, from bf16 G and x)");
  }
}

const ClassifierShape classifier_shapes[] = {
    {37, 64, 1000, 0},  {37, 256, 1000, 0},
    {37, 64, 1003, 3},  // odd V, probs 3 elements past an aligned start: scalar head and tail in every row
    {64, 64, 50304, 0}, {64, 256, 50304, 0},  // GPT-2's padded vocabulary
};

}  // namespace

TEST_CASE("cuda: classifier (fp32) forward and weighted backward match the CPU") {
  REQUIRE_GPU();
  for (const auto& s : classifier_shapes) classifier_case<float>(s);
  // Large logits (standard deviation 60): the max shift keeps exp finite.
  classifier_case<float>({37, 64, 1000, 0, 60.0f});
}

TEST_CASE("cuda: classifier (bf16 storage, fp32 losses and dW) matches the CPU on bf16-rounded inputs") {
  REQUIRE_GPU();
  for (const auto& s : classifier_shapes) classifier_case<bf16>(s);
}

TEST_CASE("cuda: classifier: a target >= V gives that row a NaN loss and NaN gradient, other rows unchanged") {
  REQUIRE_GPU();
  const int N = 5, C = 16, V = 40;
  const auto x = randn(std::size_t(N) * C, 71), w = randn(std::size_t(V) * C, 72, 0.25f);
  auto d_x = to_device(x), d_w = to_device(w);
  const std::vector<std::int32_t> bad{3, -1, 40, 39, 0}, padded{3, -1, -1, 39, 0};
  const auto run = [&](const std::vector<std::int32_t>& targets) {
    auto d_t = to_device(targets);
    DeviceBuffer<float> d_losses(N), d_inv(N), d_probs(std::size_t(N) * V);
    DeviceBuffer<std::uint8_t> d_mask(N);
    backend::classifier_forward(gpu(), d_losses.data(), d_mask.data(), d_probs.data(), d_inv.data(), d_x.data(),
                                d_w.data(), d_t.data(), N, C, V);
    return std::make_tuple(to_host(d_losses), to_host(d_mask), to_host(d_probs));
  };
  const auto [losses, mask, probs] = run(bad);
  const auto [losses_ref, mask_ref, probs_ref] = run(padded);
  CHECK(std::isnan(losses[2]));
  CHECK(mask[2] == 1);
  for (int j = 0; j < V; ++j) CHECK(std::isnan(probs[std::size_t(2) * V + j]));
  for (int n : {0, 1, 3, 4}) {
    CAPTURE(n);
    CHECK(losses[n] == losses_ref[n]);
    CHECK(mask[n] == mask_ref[n]);
    CHECK(std::equal(probs.begin() + std::ptrdiff_t(n) * V, probs.begin() + std::ptrdiff_t(n + 1) * V,
                     probs_ref.begin() + std::ptrdiff_t(n) * V));
    CHECK(std::isfinite(losses[n]));
  }
}

TEST_CASE("cuda: classifier rejects non-positive shapes before any CUDA call, naming the value") {
  const auto message = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  // The shape check is host code: it runs without a device.
  using backend::cuda::check_classifier_shape;
  CHECK_NOTHROW(check_classifier_shape("f", 1, 1, 1));
  auto m = message([] { check_classifier_shape("classifier_forward(Cuda)", 0, 64, 1000); });
  INFO(m);
  CHECK(m.find("classifier_forward(Cuda)") != std::string::npos);
  CHECK(m.find("N = 0") != std::string::npos);
  m = message([] { check_classifier_shape("classifier_backward(Cuda)", 8, -3, 1000); });
  CHECK(m.find("C = -3") != std::string::npos);
  m = message([] { check_classifier_shape("classifier_backward(Cuda)", 8, 64, 0); });
  CHECK(m.find("V = 0") != std::string::npos);

  if (!backend::cuda_available()) {
    MESSAGE("skipped the calls through classifier_forward/backward: they need a Cuda backend, hence a device ("
            << backend::cuda::unavailable_reason() << "); the shape check itself ran above");
    return;
  }
  // Null pointers: nothing may be touched before the check raises.
  m = message([] {
    backend::classifier_forward(gpu(), static_cast<float*>(nullptr), nullptr, static_cast<float*>(nullptr), nullptr,
                                static_cast<const float*>(nullptr), static_cast<const float*>(nullptr), nullptr, 0,
                                64, 1000);
  });
  CHECK(m.find("N = 0") != std::string::npos);
  m = message([] {
    backend::classifier_backward(gpu(), static_cast<bf16*>(nullptr), static_cast<float*>(nullptr),
                                 static_cast<const bf16*>(nullptr), nullptr, nullptr,
                                 static_cast<const bf16*>(nullptr), static_cast<const bf16*>(nullptr), nullptr, 4, 64,
                                 -1);
  });
  CHECK(m.find("V = -1") != std::string::npos);
  gpu().synchronize();  // and the stream is still usable
}

// The per-row totals the trainers read of a forward (row_loss_sums): the GPU's
// block reduction against the CPU's token-order sums, over rows longer than a
// block (T = 300: every thread adds two or three tokens), a row with every
// target padding, a row where the proxy is better everywhere (excess 0), and
// a NaN loss, which must reach that row's loss and excess and no other row.
TEST_CASE("cuda: row_loss_sums (DRO per-sequence totals) matches the CPU; masks, T past the block, NaN") {
  REQUIRE_GPU();
  const int B = 5, T = 300;
  const std::size_t N = std::size_t(B) * T;
  const auto a = randn(N, 77), b = randn(N, 78);
  std::vector<float> losses(N), ref(N);
  std::vector<std::uint8_t> mask(N);
  for (std::size_t j = 0; j < N; ++j) {
    const std::size_t row = j / T;
    mask[j] = row != 1 && j % 11 != 4;  // row 1: all padding
    losses[j] = mask[j] ? 3.0f + std::abs(a[j]) : 0.0f;
    ref[j] = mask[j] ? (row == 2 ? losses[j] + 0.5f : 3.0f + std::abs(b[j])) : 0.0f;  // row 2: proxy better
  }
  losses[3 * std::size_t(T) + 18] = std::nanf("");  // row 3, a real token (918 % 11 != 4)
  REQUIRE(mask[3 * std::size_t(T) + 18] == 1);
  const auto d_losses = to_device(losses), d_ref = to_device(ref);
  const auto d_mask = to_device(mask);
  for (const bool with_ref : {true, false}) {
    CAPTURE(with_ref);
    const float* cref = with_ref ? ref.data() : nullptr;
    const float* gref = with_ref ? d_ref.data() : nullptr;
    const auto want = backend::row_loss_sums(Cpu{}, losses.data(), mask.data(), B, T, cref);
    const auto got = backend::row_loss_sums(gpu(), d_losses.data(), d_mask.data(), B, T, gref);
    REQUIRE(got.size() == std::size_t(B));
    for (int r = 0; r < B; ++r) {
      CAPTURE(r);
      const auto& g = got[std::size_t(r)];
      const auto& w = want[std::size_t(r)];
      CHECK(g.tokens == w.tokens);  // counts are exact
      const auto close = [](double x, double y) {
        return std::isnan(y) ? std::isnan(x) : std::abs(x - y) <= 1e-12 * std::abs(y);
      };
      CHECK(close(g.loss, w.loss));
      CHECK(close(g.reference, w.reference));
      CHECK(close(g.excess, w.excess));
    }
    CHECK(got[1].tokens == 0);
    CHECK(got[1].loss == 0);
    CHECK(std::isnan(got[3].loss));
    CHECK(std::isfinite(got[4].loss));
    if (with_ref) {
      CHECK(got[2].excess == 0);
      CHECK(got[0].excess > 0);
      CHECK(std::isnan(got[3].excess));
    } else {
      CHECK(got[0].excess == 0);  // nothing to compare with
      CHECK(got[0].reference == 0);
    }
  }
}
