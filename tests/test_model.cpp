// Model: finite-difference gradient checks in double precision over configs
// that together cover every switch (rotary vs learned positions, tied vs
// separate output embedding, parallel vs sequential residual, exact vs tanh
// GELU), plus the loss/mask contract and errors on bad input.
#include <doctest/doctest.h>

#include <cmath>
#include <utility>
#include <vector>

#include "doremi/doremi.hpp"

namespace {

using namespace doremi;

constexpr Spec rotary_untied_parallel_exact{.name = "gc-a", .n_layer = 2, .n_embd = 16, .n_head = 2, .n_ctx = 8,
                                            .vocab = 13, .vocab_multiple = 8, .rotary_pct = 0.5,
                                            .tied_embeddings = false, .residual = Residual::parallel,
                                            .gelu = Gelu::exact};
constexpr Spec learned_tied_sequential_tanh{.name = "gc-b", .n_layer = 2, .n_embd = 16, .n_head = 4, .n_ctx = 8,
                                            .vocab = 11, .vocab_multiple = 4, .rotary_pct = 0.0,
                                            .tied_embeddings = true, .residual = Residual::sequential,
                                            .gelu = Gelu::tanh};
constexpr Spec full_rotary_tied_parallel_tanh{.name = "gc-c", .n_layer = 1, .n_embd = 12, .n_head = 3,
                                              .n_ctx = 8, .vocab = 9, .vocab_multiple = 1, .rotary_pct = 1.0,
                                              .tied_embeddings = true, .residual = Residual::parallel,
                                              .gelu = Gelu::tanh, .ln_eps = 1e-6};

struct TokenBatch {
  int B = 2, T = 7;
  std::vector<std::int32_t> inputs, targets;
  std::vector<double> weights;
};

template <class Cfg>
TokenBatch make_batch(std::uint64_t seed) {
  TokenBatch b;
  const int N = b.B * b.T;
  for (int i = 0; i < N; ++i) {
    b.inputs.push_back(std::int32_t(Philox::below(Cfg::vocab, seed, 1, i)));
    b.targets.push_back(std::int32_t(Philox::below(Cfg::vocab, seed, 2, i)));
    b.weights.push_back(0.1 + Philox::uniform(seed, 3, i));
  }
  b.targets[3] = -1;  // padding: ignored by loss and gradient
  b.targets[N - 1] = -1;
  return b;
}

template <class M>
double weighted_loss(M& m, const TokenBatch& b) {
  auto out = m.forward(b.inputs, b.targets, b.B, b.T);
  double s = 0;
  for (std::size_t i = 0; i < out.losses.size(); ++i) s += b.weights[i] * out.losses[i];
  return s;
}

template <class Cfg>
void gradient_check() {
  using M = Model<Cfg>;
  M m;
  m.init(7);
  // Break the symmetry of the initial LayerNorm/bias values so every
  // parameter's gradient is generic.
  for (std::size_t i = 0; i < m.num_parameters(); ++i) m.parameters()[i] += 0.05 * Philox::normal(99, 0, i);
  const TokenBatch b = make_batch<Cfg>(3);
  m.zero_grad();
  weighted_loss(m, b);
  m.backward(b.weights);
  const std::vector<double> g(m.gradients().begin(), m.gradients().end());
  double worst = 0;
  for (std::size_t k = 0; k < M::tensors().size(); ++k) {
    const TensorInfo& t = M::tensors()[k];
    for (int probe = 0; probe < 4; ++probe) {
      const std::size_t i = t.offset + Philox::below(t.size, 5, k, probe);
      double& p = m.parameters()[i];
      const double h = 1e-5, saved = p;
      p = saved + h;
      const double up = weighted_loss(m, b);
      p = saved - h;
      const double down = weighted_loss(m, b);
      p = saved;
      const double fd = (up - down) / (2 * h);
      const double err = std::abs(fd - g[i]) / std::max(1e-6, std::abs(fd) + std::abs(g[i]));
      worst = std::max(worst, err);
      INFO(t.name, " element ", i - t.offset, ": analytic ", g[i], " finite difference ", fd);
      CHECK(err < 1e-5);
    }
  }
  MESSAGE(Cfg::name, ": worst relative gradient error ", worst);
}

}  // namespace

TEST_CASE("model gradient check: rotary, untied, parallel residual, exact GELU") {
  gradient_check<Config<rotary_untied_parallel_exact, double>>();
}
TEST_CASE("model gradient check: learned positions, tied, sequential residual, tanh GELU") {
  gradient_check<Config<learned_tied_sequential_tanh, double>>();
}
TEST_CASE("model gradient check: full rotary, tied, parallel, one layer") {
  gradient_check<Config<full_rotary_tied_parallel_tanh, double>>();
}

TEST_CASE("model forward: padding targets give zero loss and no gradient, mask counts tokens") {
  using Cfg = Config<rotary_untied_parallel_exact, double>;
  Model<Cfg> m;
  m.init(1);
  TokenBatch b = make_batch<Cfg>(11);
  auto out = m.forward(b.inputs, b.targets, b.B, b.T);
  CHECK(out.tokens == std::size_t(b.B * b.T - 2));
  CHECK(out.losses[3] == 0.0);
  CHECK(out.mask[3] == 0);
  CHECK(out.mask[0] == 1);
  // The totals come from row_loss_sums: per sequence, in token order.
  double sum = 0;
  for (std::size_t j = 0; j < out.losses.size(); ++j) sum += out.losses[j];
  CHECK(out.loss_sum == doctest::Approx(sum).epsilon(1e-14));
  CHECK(m.host_losses().data() == out.losses.data());  // the CPU's buffers are host memory
  // Against a reference's losses (the DRO step): per-row excess max(ℓ − ℓ_ref, 0) over real tokens only.
  std::vector<double> ref(out.losses.begin(), out.losses.end());
  for (std::size_t j = 0; j < ref.size(); ++j) ref[j] += (j % 2 ? 0.25 : -0.5);
  const auto rows = backend::row_loss_sums(m.backend(), out.losses.data(), out.mask.data(), b.B, b.T, ref.data());
  REQUIRE(rows.size() == std::size_t(b.B));
  double tokens = 0, excess = 0, want_excess = 0;
  for (const auto& r : rows) {
    tokens += r.tokens;
    excess += r.excess;
  }
  for (std::size_t j = 0; j < ref.size(); ++j)
    if (out.mask[j]) want_excess += j % 2 ? 0.0 : 0.5;
  CHECK(tokens == double(out.tokens));
  CHECK(excess == doctest::Approx(want_excess).epsilon(1e-12));
  CHECK(std::isnan(backend::excess_loss(std::nan(""), 1.0)));  // a diverged proxy is not scored 0
  CHECK(backend::excess_loss(1.0, 2.0) == 0.0);
  // A fresh model predicts close to uniform over the padded vocabulary.
  CHECK(out.mean_loss() == doctest::Approx(std::log(double(Cfg::padded_vocab))).epsilon(0.05));
  // Weight on a padding position changes nothing.
  m.zero_grad();
  m.backward(b.weights);
  const std::vector<double> g1(m.gradients().begin(), m.gradients().end());
  b.weights[3] = 1000.0;
  m.forward(b.inputs, b.targets, b.B, b.T);
  m.zero_grad();
  m.backward(b.weights);
  for (std::size_t i = 0; i < g1.size(); ++i) REQUIRE(m.gradients()[i] == g1[i]);
  // A smaller batch after it (the buffers keep their size): the views have the batch's.
  const auto row = m.forward(std::span(b.inputs).first(std::size_t(b.T)), std::span(b.targets).first(std::size_t(b.T)),
                             1, b.T);
  CHECK(row.losses.size() == std::size_t(b.T));
  CHECK(m.host_losses().size() == std::size_t(b.T));
  CHECK(m.host_mask().size() == std::size_t(b.T));
  CHECK(row.losses[3] == 0.0);
}

// forward_losses (the DRO reference model, evaluation): every layer shares one
// set of activation buffers and no gradient buffers are laid out; a model
// that never runs a backward holds no parameter gradients either.
template <class Cfg>
void forward_losses_case() {
  const TokenBatch b = make_batch<Cfg>(5);
  const std::vector<typename Cfg::scalar> w(b.weights.begin(), b.weights.end());
  Model<Cfg> trains, evaluates;
  trains.init(3);
  evaluates.init(3);
  const auto a = trains.forward(b.inputs, b.targets, b.B, b.T);
  const auto e = evaluates.forward_losses(b.inputs, b.targets, b.B, b.T);
  REQUIRE(e.tokens == a.tokens);
  for (std::size_t i = 0; i < a.losses.size(); ++i) REQUIRE(e.losses[i] == a.losses[i]);  // the same bits
  CHECK(e.loss_sum == a.loss_sum);
  MESSAGE(Cfg::name, ": activation elements ", evaluates.activation_elements(), " (forward_losses) vs ",
          trains.activation_elements(), " (forward)");
  CHECK(evaluates.activation_elements() < trains.activation_elements());
  CHECK_THROWS_WITH_AS(evaluates.backward(w), doctest::Contains("forward_losses"), Error);
  CHECK(std::as_const(evaluates).gradients().empty());
  CHECK(std::as_const(trains).gradients().empty());
  // The training model evaluates too (its buffers are reused), and then needs a forward again to differentiate.
  const auto again = trains.forward_losses(b.inputs, b.targets, b.B, b.T);
  for (std::size_t i = 0; i < a.losses.size(); ++i) REQUIRE(again.losses[i] == e.losses[i]);
  CHECK_THROWS_AS(trains.backward(w), Error);
  trains.forward(b.inputs, b.targets, b.B, b.T);
  CHECK_NOTHROW(trains.backward(w));
  CHECK(std::as_const(trains).gradients().size() == trains.num_parameters());
}

TEST_CASE("model forward_losses: forward's losses bit for bit with one layer of activations, no backward") {
  forward_losses_case<Config<rotary_untied_parallel_exact, double>>();
  forward_losses_case<Config<learned_tied_sequential_tanh, double>>();
  forward_losses_case<Config<bf16_matmul(presets::tiny), float>>();
}

TEST_CASE("model init is deterministic and seed dependent") {
  using Cfg = presets::Tiny<float>;
  Model<Cfg> a, b, c;
  a.init(5);
  b.init(5);
  c.init(6);
  CHECK(std::equal(a.parameters().begin(), a.parameters().end(), b.parameters().begin()));
  CHECK(!std::equal(a.parameters().begin(), a.parameters().end(), c.parameters().begin()));
  // Standard deviation of the embedding is the GPT-NeoX 0.02.
  const auto& t = Model<Cfg>::tensors()[0];
  double ss = 0;
  for (std::size_t i = 0; i < t.size; ++i) ss += double(a.parameters()[t.offset + i]) * a.parameters()[t.offset + i];
  CHECK(std::sqrt(ss / double(t.size)) == doctest::Approx(0.02).epsilon(0.05));
}

TEST_CASE("model rejects bad batches with doremi::Error") {
  Model<presets::Tiny<float>> m;
  m.init(1);
  std::vector<std::int32_t> in(8, 1), tg(8, 2);
  CHECK_THROWS_AS(m.forward(in, tg, 2, 5), Error);       // size mismatch
  CHECK_THROWS_AS(m.forward(in, tg, 1, 8 * 100), Error);  // longer than the context
  in[3] = 100000;
  CHECK_THROWS_WITH_AS(m.forward(in, tg, 2, 4), doctest::Contains("position 3"), Error);
  in[3] = 1;
  tg[5] = -7;
  CHECK_THROWS_AS(m.forward(in, tg, 2, 4), Error);
  std::vector<float> w(8, 1.0f);
  Model<presets::Tiny<float>> fresh;
  CHECK_THROWS_AS(fresh.backward(w), Error);  // no forward yet
}

TEST_CASE("cpu buffers: 64-byte aligned; 4 MiB and more 2 MiB-aligned (huge pages)") {
  for (const std::size_t n : {std::size_t(1), std::size_t(1000), std::size_t(1) << 20, (std::size_t(3) << 20) + 5}) {
    backend::Cpu::Buffer<float> b(n, 1.5f);
    const auto at = reinterpret_cast<std::uintptr_t>(b.data());
    CHECK(at % 64 == 0);
    if (n * sizeof(float) >= (std::size_t(4) << 20)) CHECK(at % (std::size_t(2) << 20) == 0);
    CHECK(b[n - 1] == 1.5f);
    b.resize(2 * n, 2.5f);  // reallocation keeps the values
    CHECK(b[n - 1] == 1.5f);
    CHECK(b[2 * n - 1] == 2.5f);
  }
}

TEST_CASE("cpu gemm: bf16 rounding is to nearest even and keeps inf and NaN") {
  using backend::cpu::bf16;
  using backend::cpu::from_bf16;
  using backend::cpu::to_bf16;
  CHECK(std::uint16_t(to_bf16(1.0f)) == 0x3f80);
  CHECK(from_bf16(to_bf16(-2.5f)) == -2.5f);
  // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
  CHECK(from_bf16(to_bf16(1.0f + 0x1p-8f)) == 1.0f);
  CHECK(from_bf16(to_bf16(1.0f + 0x1p-7f + 0x1p-8f)) == 1.0f + 0x1p-6f);  // tie, odd below: rounds up
  CHECK(from_bf16(to_bf16(1.0f + 0x1p-8f + 0x1p-12f)) == 1.0f + 0x1p-7f);  // above the tie: up
  CHECK(std::isinf(from_bf16(to_bf16(INFINITY))));
  CHECK(std::isnan(from_bf16(to_bf16(NAN))));
  CHECK(std::isinf(from_bf16(to_bf16(3.4e38f))));  // beyond bf16's largest finite value
}

TEST_CASE("cpu gemm: every transpose, strides and accumulation against a double reference, fp32 and bf16") {
  using backend::cpu::bf16;
  struct Shape {
    int M, N, K;
  };
  // {8, 301, 70}, {13, 301, 37}: the few-rows kernel's threaded path (odd N, K with a tail; 13 rows: 8 + 5).
  for (const Shape s :
       {Shape{5, 7, 300}, Shape{64, 130, 257}, Shape{1, 50, 3}, Shape{8, 301, 70}, Shape{13, 301, 37}}) {
    for (int variant = 0; variant < 8; ++variant) {
      const bool ta = variant & 1, tb = variant & 2, acc = variant & 4;
      const int ar = ta ? s.K : s.M, ac = ta ? s.M : s.K, br = tb ? s.N : s.K, bc = tb ? s.K : s.N;
      const int lda = ac + 3, ldb = bc + 1, ldc = s.N + 2;  // padded rows
      std::vector<float> A(std::size_t(ar) * lda), B(std::size_t(br) * ldb), C0(std::size_t(s.M) * ldc);
      for (std::size_t i = 0; i < A.size(); ++i) A[i] = float(Philox::normal(1, variant, i));
      for (std::size_t i = 0; i < B.size(); ++i) B[i] = float(Philox::normal(2, variant, i));
      for (std::size_t i = 0; i < C0.size(); ++i) C0[i] = float(Philox::normal(3, variant, i));
      std::vector<bf16> Ab(A.size()), Bb(B.size());
      backend::convert(backend::Cpu{}, Ab.data(), A.data(), A.size());
      backend::convert(backend::Cpu{}, Bb.data(), B.data(), B.size());
      for (const int path : {0, 1, 2}) {  // fp32; bf16 (oneDNN's kernel where the CPU has one); bf16 widened
        const bool use_bf16 = path > 0;
        auto a = [&](int i, int k) {
          const std::size_t at = ta ? std::size_t(k) * lda + i : std::size_t(i) * lda + k;
          return use_bf16 ? double(backend::cpu::from_bf16(Ab[at])) : double(A[at]);
        };
        auto b = [&](int k, int j) {
          const std::size_t at = tb ? std::size_t(j) * ldb + k : std::size_t(k) * ldb + j;
          return use_bf16 ? double(backend::cpu::from_bf16(Bb[at])) : double(B[at]);
        };
        std::vector<float> C = C0;
        if (path == 2)
          backend::cpu::gemm_widened(ta, tb, s.M, s.N, s.K, Ab.data(), lda, Bb.data(), ldb, C.data(), ldc, acc);
        else if (use_bf16)
          backend::cpu::gemm(ta, tb, s.M, s.N, s.K, Ab.data(), lda, Bb.data(), ldb, C.data(), ldc, acc);
        else
          backend::cpu::gemm(ta, tb, s.M, s.N, s.K, A.data(), lda, B.data(), ldb, C.data(), ldc, acc);
        double worst = 0;
        for (int i = 0; i < s.M; ++i)
          for (int j = 0; j < ldc; ++j) {
            const std::size_t at = std::size_t(i) * ldc + j;
            if (j >= s.N) {  // padding of C's rows is never written
              CHECK(C[at] == C0[at]);
              continue;
            }
            double ref = acc ? double(C0[at]) : 0.0;
            for (int k = 0; k < s.K; ++k) ref += a(i, k) * b(k, j);
            worst = std::max(worst, std::abs(double(C[at]) - ref) / (1.0 + std::abs(ref)));
          }
        INFO("M N K ", s.M, " ", s.N, " ", s.K, " ta ", ta, " tb ", tb, " accumulate ", acc, " path ", path);
        CHECK(worst < 2e-5);  // fp32 accumulation of exactly representable products
      }
    }
  }
}

TEST_CASE("model with bf16 matrix products: losses and gradients follow the fp32 model") {
  using F32 = presets::Tiny<float>;
  using B16 = Config<bf16_matmul(presets::tiny), float>;
  Model<F32> a;
  Model<B16> b;
  a.init(11);
  b.init(11);
  REQUIRE(std::equal(a.parameters().begin(), a.parameters().end(), b.parameters().begin()));
  const int B = 2, T = 64, N = B * T;
  std::vector<std::int32_t> in(N), tg(N);
  for (int i = 0; i < N; ++i) {
    in[i] = std::int32_t(Philox::below(F32::vocab, 5, 0, i));
    tg[i] = i % 17 == 3 ? -1 : std::int32_t(Philox::below(F32::vocab, 5, 1, i));
  }
  std::vector<float> w(N);
  for (int i = 0; i < N; ++i) w[i] = float(0.5 + Philox::uniform(5, 2, i)) / N;
  const auto ra = a.forward(in, tg, B, T);
  const auto rb = b.forward(in, tg, B, T);
  CHECK(ra.tokens == rb.tokens);
  double worst_loss = 0;
  for (int i = 0; i < N; ++i) {
    CHECK(ra.mask[i] == rb.mask[i]);
    worst_loss = std::max(worst_loss, std::abs(double(ra.losses[i]) - double(rb.losses[i])) / double(ra.losses[i] + 1));
  }
  a.zero_grad();
  b.zero_grad();
  a.backward(w);
  b.backward(w);
  double dot = 0, na = 0, nb = 0;
  for (std::size_t i = 0; i < a.num_parameters(); ++i) {
    dot += double(a.gradients()[i]) * b.gradients()[i];
    na += double(a.gradients()[i]) * a.gradients()[i];
    nb += double(b.gradients()[i]) * b.gradients()[i];
  }
  const double cosine = dot / std::sqrt(na * nb), norm_ratio = std::sqrt(nb / na);
  MESSAGE("bf16 vs fp32 products: worst per-token loss difference ", worst_loss, ", gradient cosine ", cosine,
          ", norm ratio ", norm_ratio);
  CHECK(worst_loss < 1e-2);
  CHECK(cosine > 0.999);
  CHECK(std::abs(norm_ratio - 1) < 1e-2);
}

TEST_CASE("cpu layernorm pair: two LayerNorms of one input in one pass equal two separate ones") {
  const int N = 37, C = 24;
  auto randn = [](std::size_t n, std::uint64_t seed, float scale = 1.0f, float shift = 0.0f) {
    std::vector<float> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = shift + scale * float(Philox::normal(seed, 7, i));
    return v;
  };
  const auto x = randn(std::size_t(N) * C, 31, 2.0f, 0.5f), w1 = randn(C, 32, 0.5f, 1.0f), b1 = randn(C, 33, 0.1f);
  const auto w2 = randn(C, 34, 0.5f, 1.0f), b2 = randn(C, 35, 0.1f);
  const auto d1 = randn(std::size_t(N) * C, 36), d2 = randn(std::size_t(N) * C, 37);
  const auto dx0 = randn(std::size_t(N) * C, 38);
  using backend::Cpu;
  // Separately: two forwards (the same statistics), two backwards accumulating into dx.
  std::vector<float> o1(x.size()), o2(x.size()), mean(N), rstd(N), mean2(N), rstd2(N), dx = dx0;
  std::vector<float> dw1(C, 0.1f), db1(C, 0.2f), dw2(C, 0.3f), db2(C, 0.4f);
  backend::layernorm_forward(Cpu{}, o1.data(), mean.data(), rstd.data(), x.data(), w1.data(), b1.data(), N, C, 1e-5);
  backend::layernorm_forward(Cpu{}, o2.data(), mean2.data(), rstd2.data(), x.data(), w2.data(), b2.data(), N, C,
                             1e-5);
  backend::layernorm_backward(Cpu{}, dx.data(), dw1.data(), db1.data(), d1.data(), x.data(), w1.data(), mean.data(),
                              rstd.data(), N, C);
  backend::layernorm_backward(Cpu{}, dx.data(), dw2.data(), db2.data(), d2.data(), x.data(), w2.data(), mean.data(),
                              rstd.data(), N, C);
  // As a pair.
  std::vector<float> p1(x.size()), p2(x.size()), pm(N), pr(N), pdx = dx0;
  std::vector<float> pdw1(C, 0.1f), pdb1(C, 0.2f), pdw2(C, 0.3f), pdb2(C, 0.4f);
  backend::layernorm_pair_forward(Cpu{}, p1.data(), p2.data(), pm.data(), pr.data(), x.data(), w1.data(), b1.data(),
                                  w2.data(), b2.data(), N, C, 1e-5);
  backend::layernorm_pair_backward(Cpu{}, pdx.data(), pdw1.data(), pdb1.data(), pdw2.data(), pdb2.data(), d1.data(),
                                   d2.data(), x.data(), w1.data(), w2.data(), pm.data(), pr.data(), N, C);
  CHECK(p1 == o1);
  CHECK(p2 == o2);
  CHECK(pm == mean);
  CHECK(pr == rstd);
  for (std::size_t i = 0; i < dx.size(); ++i)  // the shares summed before rounding instead of after
    REQUIRE(std::abs(pdx[i] - dx[i]) <= 1e-5f * (1 + std::abs(dx[i])));
  CHECK(pdw1 == dw1);
  CHECK(pdb1 == db1);
  CHECK(pdw2 == dw2);
  CHECK(pdb2 == db2);
}

namespace backend_concept_check {
// A tag with backend::Cpu's members but outside namespace doremi::backend, so
// argument-dependent lookup finds none of the layer functions: not a backend.
struct NoLayers {
  static constexpr const char* name = "none";
  template <class T>
  using Buffer = doremi::backend::Cpu::Buffer<T>;
  static constexpr bool host_memory = true;
  template <doremi::MatmulPrecision P, class T>
  using operand = T;
};
static_assert(doremi::backend::ModelBackend<doremi::backend::Cpu, doremi::presets::Tiny<float>>);
static_assert(doremi::backend::OptimizerBackend<doremi::backend::Cpu, double>);
static_assert(!doremi::backend::Backend<NoLayers>);
static_assert(!doremi::backend::ModelBackend<NoLayers, doremi::presets::Tiny<float>>);
}  // namespace backend_concept_check
