// Tests for optim/: AdamW, gradient clipping, learning-rate schedules.
// Reference values come from closed forms worked out by hand and, when
// /usr/bin/python3 has torch, from torch.optim.AdamW and clip_grad_norm_
// themselves (tests/python/adamw_reference.py).
#include <doctest/doctest.h>

#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numbers>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "doremi/optim/adamw.hpp"
#include "doremi/optim/clip.hpp"
#include "doremi/optim/schedule.hpp"
#include "test_util.hpp"

using doremi::AdamW;
using doremi::AdamWConfig;
using doremi::LrSchedule;
using doremi::ParamGroup;

namespace {

// Sets the OpenMP thread count for one scope and restores it after.
struct ThreadCount {
  int saved = omp_get_max_threads();
  explicit ThreadCount(int n) { omp_set_num_threads(n); }
  ~ThreadCount() { omp_set_num_threads(saved); }
};

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// A textbook AdamW step in long double, written from the formulas (not from
// adamw_update), to check the library against.
struct ReferenceAdamW {
  long double lr, b1, b2, eps, wd;
  long double m = 0, v = 0;
  int t = 0;
  long double step(long double p, long double g, bool decay, long double step_lr) {
    ++t;
    if (decay) p -= step_lr * wd * p;
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    const long double m_hat = m / (1 - std::pow(b1, (long double)t));
    const long double v_hat = v / (1 - std::pow(b2, (long double)t));
    return p - step_lr * m_hat / (std::sqrt(v_hat) + eps);
  }
};

using doremi::test::contains;
using doremi::test::error_of;

// Runs the PyTorch reference script; empty when torch is not importable.
nlohmann::json torch_reference() {
  if (std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0) return {};
  const auto script = doremi::test::source_dir() / "tests/python/adamw_reference.py";
  const std::string cmd = "/usr/bin/python3 '" + script.string() + "'";
  FILE* pipe = ::popen(cmd.c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::string out;
  char buf[4096];
  for (std::size_t got; (got = std::fread(buf, 1, sizeof buf, pipe)) > 0;) out.append(buf, got);
  REQUIRE(::pclose(pipe) == 0);
  return nlohmann::json::parse(out);
}

const nlohmann::json& torch_reference_cached() {
  static const nlohmann::json j = torch_reference();
  return j;
}

template <class T>
std::vector<T> as_vector(const nlohmann::json& j) {
  std::vector<T> out;
  for (const auto& x : j) out.push_back(T(x.get<double>()));
  return out;
}

// |a − b| relative to the larger magnitude, or to `scale` when both are small.
double rel_diff(double a, double b, double scale) {
  return std::abs(a - b) / std::max({std::abs(a), std::abs(b), scale});
}

template <class T>
void check_against_torch(const nlohmann::json& c, double tol) {
  AdamWConfig cfg;
  cfg.lr = c["config"]["lr"];
  cfg.beta1 = c["config"]["beta1"];
  cfg.beta2 = c["config"]["beta2"];
  cfg.eps = c["config"]["eps"];
  cfg.weight_decay = c["config"]["weight_decay"];
  std::vector<ParamGroup> groups;
  for (const auto& g : c["groups"])
    groups.push_back({g[0].get<std::size_t>(), g[1].get<std::size_t>(), g[2].get<bool>()});

  auto params = as_vector<T>(c["params0"]);
  AdamW<T> opt(params.size(), cfg);
  double worst_p = 0, worst_m = 0, worst_v = 0;
  for (std::size_t s = 0; s < c["grads"].size(); ++s) {
    const auto grads = as_vector<T>(c["grads"][s]);
    opt.step(params, grads, groups, c["lrs"][s].get<double>());
    const auto expected = as_vector<T>(c["params"][s]);
    for (std::size_t i = 0; i < params.size(); ++i)
      worst_p = std::max(worst_p, rel_diff(params[i], expected[i], 1.0));
  }
  const auto m = as_vector<T>(c["exp_avg"]), v = as_vector<T>(c["exp_avg_sq"]);
  for (std::size_t i = 0; i < params.size(); ++i) {
    worst_m = std::max(worst_m, rel_diff(opt.state_m()[i], m[i], 1e-30));
    worst_v = std::max(worst_v, rel_diff(opt.state_v()[i], v[i], 1e-30));
  }
  MESSAGE("torch ", c["dtype"].get<std::string>(), " wd=", cfg.weight_decay,
          ": max relative difference params ", worst_p, ", m ", worst_m, ", v ", worst_v);
  CHECK(opt.steps() == c["steps"].get<std::int64_t>());
  CHECK(worst_p <= tol);
  CHECK(worst_m <= tol);
  CHECK(worst_v <= tol);
}

template <class T>
void check_clip_against_torch(const nlohmann::json& c, double tol) {
  auto grads = as_vector<T>(c["grads"]);
  const double norm = doremi::clip_grad_norm(std::span<T>(grads), c["max_norm"].get<double>());
  const auto expected = as_vector<T>(c["clipped"]);
  double worst = 0;
  for (std::size_t i = 0; i < grads.size(); ++i)
    worst = std::max(worst, rel_diff(grads[i], expected[i], 1e-30));
  MESSAGE("torch clip ", c["dtype"].get<std::string>(), " max_norm=", c["max_norm"].get<double>(),
          ": norm ", norm, " vs ", c["norm"].get<double>(), ", max relative difference ", worst);
  CHECK(rel_diff(norm, c["norm"].get<double>(), 1e-30) <= tol);
  CHECK(worst <= tol);
}

}  // namespace

// ---------------------------------------------------------------- AdamW

TEST_CASE("optim: AdamW first two steps match values worked out by hand") {
  // lr 0.1, β = (0.9, 0.99), ε = 1e-8, wd 0.1; θ₀ = 1, g₁ = 0.5, g₂ = −0.25.
  AdamWConfig cfg{.lr = 0.1, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.1};
  const std::vector<ParamGroup> groups{{0, 1, true}, {1, 1, false}};
  AdamW<double> opt(2, cfg);
  std::vector<double> p{1.0, 1.0};

  opt.step(p, std::vector<double>{0.5, 0.5}, groups);
  // m₁ = 0.1·0.5, v₁ = 0.01·0.25; bias correction makes m̂ = g, v̂ = g², so
  // the step is lr·g/(|g| + ε) ≈ lr whatever the gradient's scale.
  CHECK(opt.state_m()[0] == doctest::Approx(0.05).epsilon(1e-15));
  CHECK(opt.state_v()[0] == doctest::Approx(0.0025).epsilon(1e-15));
  const double step1 = 0.1 * 0.5 / (0.5 + 1e-8);
  CHECK(p[0] == doctest::Approx(1.0 * (1 - 0.1 * 0.1) - step1).epsilon(1e-15));  // decayed
  CHECK(p[1] == doctest::Approx(1.0 - step1).epsilon(1e-15));                    // not decayed

  const double p0 = p[0], p1 = p[1];
  opt.step(p, std::vector<double>{-0.25, -0.25}, groups);
  // m₂ = 0.9·0.05 + 0.1·(−0.25) = 0.02; v₂ = 0.99·0.0025 + 0.01·0.0625 = 0.0031;
  // bc₁ = 1 − 0.9² = 0.19, bc₂ = 1 − 0.99² = 0.0199.
  CHECK(opt.state_m()[1] == doctest::Approx(0.02).epsilon(1e-14));
  CHECK(opt.state_v()[1] == doctest::Approx(0.0031).epsilon(1e-14));
  const double step2 = 0.1 * (0.02 / 0.19) / (std::sqrt(0.0031 / 0.0199) + 1e-8);
  CHECK(p[0] == doctest::Approx(p0 * (1 - 0.01) - step2).epsilon(1e-14));
  CHECK(p[1] == doctest::Approx(p1 - step2).epsilon(1e-14));
  CHECK(opt.steps() == 2);
}

TEST_CASE("optim: AdamW follows the textbook formulas over many steps and groups") {
  // Three groups, decay on/off/on, a changing lr, gradients of mixed scale.
  AdamWConfig cfg{.lr = 1e-3, .beta1 = 0.8, .beta2 = 0.95, .eps = 1e-6, .weight_decay = 0.3};
  const std::vector<ParamGroup> groups{{0, 4, true}, {4, 3, false}, {7, 5, true}};
  const std::size_t n = 12;
  AdamW<double> opt(n, cfg);
  std::vector<double> p(n);
  std::vector<long double> ref_p(n);
  std::vector<ReferenceAdamW> ref(n, ReferenceAdamW{1e-3L, 0.8L, 0.95L, 1e-6L, 0.3L});
  for (std::size_t i = 0; i < n; ++i) p[i] = ref_p[i] = 0.5 * std::cos(0.37 * double(i));
  const std::array<double, 6> lrs{1e-3, 5e-2, 2e-2, 1e-1, 3e-3, 0.0};
  for (int s = 0; s < 6; ++s) {
    std::vector<double> g(n);
    for (std::size_t i = 0; i < n; ++i)
      g[i] = std::sin(1.3 * double(i) + 0.7 * s) * (i % 5 == 4 ? 1e-7 : 1.0);
    opt.step(p, g, groups, lrs[s]);
    for (std::size_t i = 0; i < n; ++i) {
      const bool decay = i < 4 || i >= 7;
      ref_p[i] = ref[i].step(ref_p[i], g[i], decay, lrs[s]);
    }
  }
  for (std::size_t i = 0; i < n; ++i) {
    CAPTURE(i);
    CHECK(rel_diff(p[i], double(ref_p[i]), 1.0) < 1e-14);
    CHECK(rel_diff(opt.state_m()[i], double(ref[i].m), 1e-300) < 1e-13);
    CHECK(rel_diff(opt.state_v()[i], double(ref[i].v), 1e-300) < 1e-13);
  }
}

TEST_CASE("optim: AdamW weight decay is decoupled and follows the group flag") {
  // Zero gradients: the Adam term is 0/(0 + ε) = 0, so only decay moves θ,
  // by exactly the factor (1 − lr·wd); undecayed groups stay bit-identical.
  AdamWConfig cfg;  // the public run's defaults: wd = 0.01
  const std::vector<ParamGroup> groups{{0, 3, false}, {3, 2, true}};
  AdamW<float> opt(5, cfg);
  std::vector<float> p{1.5f, -2.0f, 0.25f, 3.0f, -4.0f};
  const auto before = p;
  opt.step(p, std::vector<float>(5, 0.0f), groups, 0.5);
  for (int i = 0; i < 3; ++i) CHECK(p[i] == before[i]);
  const float factor = float(1.0 - 0.5 * 0.01);
  CHECK(p[3] == before[3] * factor);
  CHECK(p[4] == before[4] * factor);
}

TEST_CASE("optim: AdamW bias correction makes the first step lr-sized for any gradient scale") {
  for (double scale : {1e-4, 1.0, 1e4}) {
    AdamW<double> opt(1, AdamWConfig{.weight_decay = 0.0});
    std::vector<double> p{0.0};
    opt.step(p, std::vector<double>{-scale}, std::vector<ParamGroup>{{0, 1, true}}, 1e-3);
    CHECK(p[0] == doctest::Approx(1e-3).epsilon(1e-7));
  }
}

TEST_CASE("optim: AdamW's shared elementwise adamw_update is what AdamW::step computes") {
  // The CUDA backend calls adamw_update per element; it must give the bits
  // AdamW<T>::step gives on the CPU.
  AdamWConfig cfg{.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.01};
  const std::size_t n = 64;
  const std::vector<ParamGroup> groups{{0, 40, true}, {40, 24, false}};
  AdamW<float> opt(n, cfg);
  std::vector<float> p(n), q(n), m(n, 0.0f), v(n, 0.0f);
  for (std::size_t i = 0; i < n; ++i) p[i] = q[i] = float(std::cos(0.2 * double(i)));
  for (int t = 1; t <= 3; ++t) {
    std::vector<float> g(n);
    for (std::size_t i = 0; i < n; ++i) g[i] = float(std::sin(0.5 * double(i) * t));
    const double lr = 2e-3 * t;
    opt.step(p, g, groups, lr);
    const double bc1 = 1 - std::pow(0.9, t), bc2 = 1 - std::pow(0.99, t);
    for (std::size_t i = 0; i < n; ++i)
      doremi::adamw_update(q[i], g[i], m[i], v[i], lr, 0.9, 0.99, 1e-8, i < 40 ? 0.01 : 0.0, bc1,
                           bc2);
  }
  CHECK(same_bits(p, q));
  CHECK(same_bits(m, std::vector<float>(opt.state_m().begin(), opt.state_m().end())));
  CHECK(same_bits(v, std::vector<float>(opt.state_v().begin(), opt.state_v().end())));
}

TEST_CASE("optim: AdamW's grad_scale is the step on gradients clip_grad_norm scaled, bit for bit") {
  const std::size_t n = 501;
  const std::vector<ParamGroup> groups{{0, 300, true}, {300, 201, false}};
  const AdamWConfig cfg{.lr = 3e-3, .weight_decay = 0.1};
  AdamW<float> folded(n, cfg), scaled(n, cfg);
  std::vector<float> p(n), q;
  for (std::size_t i = 0; i < n; ++i) p[i] = float(std::cos(0.3 * double(i)));
  q = p;
  for (int t = 1; t <= 3; ++t) {
    std::vector<float> g(n);
    for (std::size_t i = 0; i < n; ++i) g[i] = float(std::sin(0.7 * double(i) * t)) * float(t);
    const double max_norm = t == 2 ? 1e3 : 0.5;  // step 2 is not clipped
    const double coef = doremi::clip_coefficient(doremi::global_grad_norm(std::span<const float>(g)), max_norm);
    CHECK((coef == 1.0) == (t == 2));
    folded.step(p, g, groups, 1e-3 * t, coef);
    doremi::clip_grad_norm(std::span<float>(g), max_norm);
    scaled.step(q, g, groups, 1e-3 * t);
  }
  CHECK(same_bits(p, q));
  CHECK(same_bits(std::vector<float>(folded.state_m().begin(), folded.state_m().end()),
                  std::vector<float>(scaled.state_m().begin(), scaled.state_m().end())));
  CHECK(same_bits(std::vector<float>(folded.state_v().begin(), folded.state_v().end()),
                  std::vector<float>(scaled.state_v().begin(), scaled.state_v().end())));
}

TEST_CASE("optim: AdamW float and double agree") {
  const std::size_t n = 1000;
  const std::vector<ParamGroup> groups{{0, 600, true}, {600, 400, false}};
  AdamW<float> of(n, AdamWConfig{});
  AdamW<double> od(n, AdamWConfig{});
  std::vector<float> pf(n);
  std::vector<double> pd(n);
  for (std::size_t i = 0; i < n; ++i) pd[i] = pf[i] = float(std::sin(0.01 * double(i)));
  for (int s = 0; s < 10; ++s) {
    std::vector<float> gf(n);
    std::vector<double> gd(n);
    for (std::size_t i = 0; i < n; ++i) gd[i] = gf[i] = float(std::cos(0.03 * double(i) * (s + 1)));
    of.step(pf, gf, groups, 1e-2);
    od.step(pd, gd, groups, 1e-2);
  }
  double worst = 0;
  for (std::size_t i = 0; i < n; ++i) worst = std::max(worst, std::abs(double(pf[i]) - pd[i]));
  CHECK(worst < 1e-6);
}

TEST_CASE("optim: AdamW is bit-identical across thread counts and after a checkpoint restore") {
  const std::size_t n = 200003;  // odd, so chunks end mid-vector
  const std::vector<ParamGroup> groups{{0, 1000, false}, {1000, n - 1000, true}};
  auto grads_at = [&](int s) {
    std::vector<float> g(n);
    for (std::size_t i = 0; i < n; ++i) g[i] = float(std::sin(0.001 * double(i) + s));
    return g;
  };
  auto run = [&](int threads) {
    ThreadCount tc(threads);
    AdamW<float> opt(n, AdamWConfig{});
    std::vector<float> p(n, 0.1f);
    for (int s = 0; s < 4; ++s) opt.step(p, grads_at(s), groups, 1e-3 * (s + 1));
    return p;
  };
  const auto p1 = run(1), p2 = run(2), p3 = run(3);
  CHECK(same_bits(p1, p2));
  CHECK(same_bits(p1, p3));

  // Save m, v, t after two steps, restore into a fresh optimiser, continue.
  AdamW<float> a(n, AdamWConfig{});
  std::vector<float> pa(n, 0.1f);
  for (int s = 0; s < 2; ++s) a.step(pa, grads_at(s), groups, 1e-3 * (s + 1));
  const std::vector<float> m(a.state_m().begin(), a.state_m().end());
  const std::vector<float> v(a.state_v().begin(), a.state_v().end());
  AdamW<float> b(n, AdamWConfig{});
  b.restore(m, v, a.steps());
  auto pb = pa;
  for (int s = 2; s < 4; ++s) {
    a.step(pa, grads_at(s), groups, 1e-3 * (s + 1));
    b.step(pb, grads_at(s), groups, 1e-3 * (s + 1));
  }
  CHECK(same_bits(pa, pb));
  CHECK(same_bits(pa, p1));
  CHECK(b.steps() == 4);
}

TEST_CASE("optim: AdamW rejects bad configs, sizes and groups with messages naming them") {
  CHECK(contains(error_of([] { AdamW<float>(1, AdamWConfig{.lr = -1}); }), "lr = -1"));
  CHECK(contains(error_of([] { AdamW<float>(1, AdamWConfig{.beta1 = 1.0}); }), "beta1 = 1"));
  CHECK(contains(error_of([] { AdamW<float>(1, AdamWConfig{.beta2 = -0.1}); }), "beta2 = -0.1"));
  CHECK(contains(error_of([] { AdamW<float>(1, AdamWConfig{.eps = 0}); }), "eps = 0"));
  CHECK(contains(error_of([] { AdamW<float>(1, AdamWConfig{.weight_decay = -0.01}); }),
                 "weight_decay = -0.01"));
  CHECK(contains(error_of([] { AdamW<float>(1, AdamWConfig{.beta1 = NAN}); }), "beta1"));
  CHECK(contains(error_of([] { AdamW<float>(1, AdamWConfig{.lr = INFINITY}); }), "lr = inf"));

  AdamW<float> opt(4, AdamWConfig{});
  std::vector<float> p(4, 1.0f), g(4, 1.0f), short_(3, 1.0f);
  const std::vector<ParamGroup> all{{0, 4, true}};
  CHECK(contains(error_of([&] { opt.step(short_, g, all, 1e-3); }), "3 parameters given"));
  CHECK(contains(error_of([&] { opt.step(p, short_, all, 1e-3); }), "3 gradients given"));
  CHECK(contains(error_of([&] { opt.step(p, g, all, -1e-3); }), "lr = -0.001 at step 1"));
  CHECK(contains(error_of([&] { opt.step(p, g, all, NAN); }), "lr = nan"));
  CHECK(contains(error_of([&] { opt.step(p, g, all, 1e-3, 0.0); }), "grad_scale = 0 at step 1"));
  CHECK(contains(error_of([&] { opt.step(p, g, all, 1e-3, -0.5); }), "grad_scale = -0.5"));
  CHECK(contains(error_of([&] { opt.step(p, g, all, 1e-3, NAN); }), "grad_scale = nan"));
  const std::vector<ParamGroup> gap{{0, 1, true}, {2, 2, false}};
  CHECK(contains(error_of([&] { opt.step(p, g, gap, 1e-3); }), "parameters [1, 2) belong to no"));
  const std::vector<ParamGroup> tail{{0, 3, true}};
  CHECK(contains(error_of([&] { opt.step(p, g, tail, 1e-3); }), "parameters [3, 4) belong to no"));
  const std::vector<ParamGroup> overlap{{0, 3, true}, {2, 2, false}};
  CHECK(contains(error_of([&] { opt.step(p, g, overlap, 1e-3); }), "param group 1 [2, 4) overlaps"));
  const std::vector<ParamGroup> outside{{0, 4, true}, {4, 1, false}};
  CHECK(contains(error_of([&] { opt.step(p, g, outside, 1e-3); }), "lies outside the 4 parameters"));
  const std::vector<ParamGroup> huge{{1, SIZE_MAX, true}};
  CHECK(contains(error_of([&] { opt.step(p, g, huge, 1e-3); }), "lies outside"));
  // Nothing failed above was applied: state and parameters are untouched.
  CHECK(opt.steps() == 0);
  CHECK(p == std::vector<float>(4, 1.0f));

  // Groups may come in any order and include empty ones.
  const std::vector<ParamGroup> shuffled{{2, 2, false}, {0, 0, true}, {0, 2, true}};
  opt.step(p, g, shuffled, 1e-3);
  CHECK(opt.steps() == 1);

  CHECK(contains(error_of([&] { opt.set_steps(-1); }), "step count -1"));
  CHECK(contains(error_of([&] { opt.restore(short_, g, 1); }), "sizes 3 and 4"));
}

TEST_CASE("optim: AdamW matches torch.optim.AdamW") {
  const auto& ref = torch_reference_cached();
  if (ref.is_null()) {
    MESSAGE("skipped: /usr/bin/python3 cannot import torch");
    return;
  }
  MESSAGE("torch ", ref["torch_version"].get<std::string>());
  for (const auto& c : ref["adamw"]) {
    if (c["dtype"] == "float64")
      check_against_torch<double>(c, 1e-14);
    else
      check_against_torch<float>(c, 5e-7);
  }
}

// ---------------------------------------------------------------- clipping

TEST_CASE("optim: clip_grad_norm scales by max_norm/(norm + 1e-6) and returns the pre-clip norm") {
  std::vector<double> g{3.0, 4.0};
  CHECK(doremi::global_grad_norm(std::span<const double>(g)) == 5.0);
  const double norm = doremi::clip_grad_norm(std::span<double>(g), 1.0);
  CHECK(norm == 5.0);
  CHECK(g[0] == doctest::Approx(3.0 / (5.0 + 1e-6)).epsilon(1e-15));
  CHECK(g[1] == doctest::Approx(4.0 / (5.0 + 1e-6)).epsilon(1e-15));

  // Below the threshold, or clipping off: untouched, norm still reported.
  std::vector<float> small{0.3f, -0.4f};
  const auto before = small;
  CHECK(doremi::clip_grad_norm(std::span<float>(small), 1.0) == doctest::Approx(0.5));
  CHECK(same_bits(small, before));
  std::vector<float> big{30.0f, 40.0f};
  CHECK(doremi::clip_grad_norm(std::span<float>(big), 0.0) == 50.0);
  CHECK(doremi::clip_grad_norm(std::span<float>(big), -1.0) == 50.0);
  CHECK(big == std::vector<float>{30.0f, 40.0f});

  // PyTorch's rule clips as soon as max_norm/(norm + 1e-6) < 1, i.e. also
  // just below max_norm.
  std::vector<double> edge{1.0 - 1e-7};
  doremi::clip_grad_norm(std::span<double>(edge), 1.0);
  CHECK(edge[0] == doctest::Approx((1.0 - 1e-7) / (1.0 - 1e-7 + 1e-6)).epsilon(1e-15));

  // Empty buffer: norm 0.
  std::vector<float> none;
  CHECK(doremi::clip_grad_norm(std::span<float>(none), 1.0) == 0.0);

  // The factor alone (what the trainers pass to AdamW::step).
  CHECK(doremi::clip_coefficient(5.0, 1.0) == 1.0 / (5.0 + 1e-6));
  CHECK(doremi::clip_coefficient(0.5, 1.0) == 1.0);
  CHECK(doremi::clip_coefficient(50.0, 0.0) == 1.0);
  CHECK(doremi::clip_coefficient(INFINITY, 1.0) == 1.0);
  CHECK(doremi::clip_coefficient(NAN, 1.0) == 1.0);
}

TEST_CASE("optim: clip_grad_norm leaves non-finite gradients to the caller and rejects a NaN max_norm") {
  std::vector<float> g{1.0f, INFINITY, 2.0f};
  const double norm = doremi::clip_grad_norm(std::span<float>(g), 1.0);
  CHECK(std::isinf(norm));
  CHECK(g == std::vector<float>{1.0f, INFINITY, 2.0f});
  std::vector<float> n{1.0f, NAN};
  CHECK(std::isnan(doremi::clip_grad_norm(std::span<float>(n), 1.0)));
  CHECK(n[0] == 1.0f);
  CHECK(contains(error_of([&] { doremi::clip_grad_norm(std::span<float>(g), NAN); }), "max_norm"));
}

TEST_CASE("optim: clip global_grad_norm is accurate and bit-identical for any thread count") {
  const std::size_t n = 1'000'003;  // ~31 chunks, the last one partial
  std::vector<float> g(n);
  long double exact = 0;
  for (std::size_t i = 0; i < n; ++i) {
    g[i] = float(std::sin(0.37 * double(i)) * (1 + i % 7));
    exact += (long double)g[i] * g[i];
  }
  std::vector<double> norms;
  for (int threads : {1, 2, 3, 4}) {
    ThreadCount tc(threads);
    norms.push_back(doremi::global_grad_norm(std::span<const float>(g)));
  }
  for (double x : norms) CHECK(same_bits(x, norms[0]));
  CHECK(rel_diff(norms[0], double(std::sqrt(exact)), 0) < 1e-13);

  // The clipped buffer is bit-identical too.
  auto run = [&](int threads) {
    ThreadCount tc(threads);
    auto copy = g;
    doremi::clip_grad_norm(std::span<float>(copy), 1.0);
    return copy;
  };
  CHECK(same_bits(run(1), run(2)));
}

TEST_CASE("optim: clip_grad_norm matches torch.nn.utils.clip_grad_norm_") {
  const auto& ref = torch_reference_cached();
  if (ref.is_null()) {
    MESSAGE("skipped: /usr/bin/python3 cannot import torch");
    return;
  }
  for (const auto& c : ref["clip"]) {
    if (c["dtype"] == "float64")
      check_clip_against_torch<double>(c, 1e-13);
    else
      check_clip_against_torch<float>(c, 1e-6);
  }
}

// ---------------------------------------------------------------- schedules

TEST_CASE("optim: schedule doremi_default warms up linearly from 1e-7 and decays exponentially") {
  const auto s = LrSchedule::doremi_default(200'000);
  CHECK(s.kind == LrSchedule::Kind::linear_warmup_exponential);
  CHECK(s.warmup_steps == 12'000);  // 6% of T
  CHECK(s.at(0) == 1e-7);
  CHECK(s.at(6'000) == doctest::Approx(1e-7 + (1e-3 - 1e-7) * 0.5).epsilon(1e-15));
  CHECK(s.at(11'999) == doctest::Approx(1e-7 + (1e-3 - 1e-7) * (11'999.0 / 12'000.0)).epsilon(1e-15));
  CHECK(s.at(12'000) == 1e-3);  // peak at t = w
  // (peak − lr_end)·γ^(T−w) = 1e-10: the decay lands on lr_end + 1e-10 at T.
  CHECK(std::abs(s.at(200'000) - (1e-4 + 1e-10)) < 1e-19);
  CHECK(s.at(199'999) > s.at(200'000));
  // Geometric: consecutive gaps above lr_end shrink by the same γ.
  const double gamma = std::pow(1e-10 / (1e-3 - 1e-4), 1.0 / 188'000.0);
  for (long t : {12'000L, 50'000L, 150'000L}) {
    CAPTURE(t);
    CHECK((s.at(t + 1) - 1e-4) / (s.at(t) - 1e-4) == doctest::Approx(gamma).epsilon(1e-9));
  }
  // Steps past T keep the final value.
  CHECK(s.at(200'001) == s.at(200'000));
  CHECK(s.at(10'000'000) == s.at(200'000));
  // Warmup is ⌈6%⌉, as HuggingFace's warmup_ratio rounds.
  CHECK(LrSchedule::doremi_default(1).warmup_steps == 1);
  CHECK(LrSchedule::doremi_default(17).warmup_steps == 2);
  CHECK(LrSchedule::doremi_default(100).warmup_steps == 6);
}

TEST_CASE("optim: schedule cosine, linear and constant after the same warmup") {
  LrSchedule s{.kind = LrSchedule::Kind::cosine, .peak_lr = 1e-3, .end_lr = 1e-4,
               .warmup_steps = 10, .total_steps = 110};
  CHECK(s.at(0) == 1e-7);
  CHECK(s.at(5) == doctest::Approx(1e-7 + (1e-3 - 1e-7) * 0.5).epsilon(1e-15));
  CHECK(s.at(10) == 1e-3);
  CHECK(s.at(60) == doctest::Approx((1e-3 + 1e-4) / 2).epsilon(1e-15));  // midpoint
  CHECK(s.at(35) == doctest::Approx(1e-4 + 0.9e-3 * (1 + std::cos(std::numbers::pi / 4)) / 2).epsilon(1e-15));
  CHECK(s.at(110) == doctest::Approx(1e-4).epsilon(1e-15));
  CHECK(s.at(500) == s.at(110));

  s.kind = LrSchedule::Kind::linear;
  CHECK(s.at(10) == 1e-3);
  CHECK(s.at(60) == doctest::Approx(0.55e-3).epsilon(1e-15));
  CHECK(s.at(110) == doctest::Approx(1e-4).epsilon(1e-15));

  s.kind = LrSchedule::Kind::constant;
  CHECK(s.at(5) == doctest::Approx(1e-7 + (1e-3 - 1e-7) * 0.5).epsilon(1e-15));
  CHECK(s.at(10) == 1e-3);
  CHECK(s.at(110) == 1e-3);
  s.end_lr = 5e-3;  // ignored, so allowed, for constant
  CHECK(s.at(50) == 1e-3);

  // No warmup: every kind starts at the peak.
  for (auto kind : {LrSchedule::Kind::constant, LrSchedule::Kind::linear, LrSchedule::Kind::cosine,
                    LrSchedule::Kind::linear_warmup_exponential}) {
    LrSchedule z{.kind = kind, .peak_lr = 2e-3, .end_lr = 1e-4, .warmup_steps = 0, .total_steps = 7};
    CHECK(z.at(0) == 2e-3);
  }
  // Warmup filling the whole run: every step warms up; t = T is the endpoint.
  LrSchedule full{.kind = LrSchedule::Kind::linear, .peak_lr = 1e-3, .end_lr = 1e-4,
                  .warmup_steps = 4, .total_steps = 4};
  CHECK(full.at(3) == doctest::Approx(1e-7 + (1e-3 - 1e-7) * 0.75).epsilon(1e-15));
  CHECK(full.at(4) == doctest::Approx(1e-4).epsilon(1e-15));
  // No gap to decay: exponential stays at lr_end = peak.
  LrSchedule flat{.kind = LrSchedule::Kind::linear_warmup_exponential, .peak_lr = 1e-3,
                  .end_lr = 1e-3, .warmup_steps = 0, .total_steps = 10};
  CHECK(flat.at(5) == 1e-3);
}

TEST_CASE("optim: schedule parse and validate name what is wrong") {
  using K = LrSchedule::Kind;
  CHECK(LrSchedule::parse("constant") == K::constant);
  CHECK(LrSchedule::parse("linear") == K::linear);
  CHECK(LrSchedule::parse("cosine") == K::cosine);
  CHECK(LrSchedule::parse("linear_warmup_exponential") == K::linear_warmup_exponential);
  const auto bad = error_of([] { LrSchedule::parse("exponential"); });
  CHECK(contains(bad, "'exponential'"));
  CHECK(contains(bad, "constant, linear, cosine, linear_warmup_exponential"));
  for (auto k : {K::constant, K::linear, K::cosine, K::linear_warmup_exponential})
    CHECK(LrSchedule::parse(LrSchedule::name(k)) == k);

  const LrSchedule ok{.kind = K::cosine, .peak_lr = 1e-3, .end_lr = 1e-4, .warmup_steps = 5,
                      .total_steps = 50};
  auto with = [&](auto change) {
    LrSchedule s = ok;
    change(s);
    return error_of([&] { s.validate(); });
  };
  CHECK(contains(with([](LrSchedule& s) { s.total_steps = 0; }), "total_steps = 0"));
  CHECK(contains(with([](LrSchedule& s) { s.warmup_steps = -1; }), "warmup_steps = -1"));
  CHECK(contains(with([](LrSchedule& s) { s.warmup_steps = 51; }), "warmup_steps = 51 exceeds total_steps = 50"));
  CHECK(contains(with([](LrSchedule& s) { s.peak_lr = -1e-3; }), "peak_lr = -0.001"));
  CHECK(contains(with([](LrSchedule& s) { s.peak_lr = NAN; }), "peak_lr = nan"));
  CHECK(contains(with([](LrSchedule& s) { s.end_lr = -1e-4; }), "end_lr = -0.0001"));
  CHECK(contains(with([](LrSchedule& s) { s.end_lr = 2e-3; }), "end_lr = 0.002 exceeds peak_lr = 0.001"));
  CHECK(contains(with([](LrSchedule& s) { s.end_lr = 2e-3; }), "cosine"));
  CHECK(contains(error_of([&] { ok.at(-1); }), "step -1"));
  // at() refuses an invalid schedule instead of returning garbage.
  CHECK(contains(error_of([] { LrSchedule{}.at(0); }), "total_steps = 0"));
  CHECK(contains(error_of([] { LrSchedule::doremi_default(0); }), "total_steps = 0"));
}
