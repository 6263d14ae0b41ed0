// DoReMi's domain-weight update and the DRO trainer: the update rule against
// the spec's formulas evaluated independently (no log space), an absent
// domain, non-uniform sampling weights; exact gradient accumulation; and
// kill-and-resume equivalence.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <sstream>
#include <utility>

#include "doremi/data/byte_tokenizer.hpp"
#include "doremi/doremi.hpp"
#include "doremi/train/dro_trainer.hpp"
#include "test_util.hpp"

namespace {

using namespace doremi;
using Tiny = presets::Tiny<float>;

// α ← (1−c)·normalise(α·exp(ηλ)) + c/k, written directly.
std::vector<double> direct_update(const std::vector<double>& a, const std::vector<double>& lambda, double eta,
                                  double c) {
  std::vector<double> out(a.size());
  double z = 0;
  for (std::size_t i = 0; i < a.size(); ++i) z += a[i] * std::exp(eta * lambda[i]);
  for (std::size_t i = 0; i < a.size(); ++i)
    out[i] = (1 - c) * a[i] * std::exp(eta * lambda[i]) / z + c / double(a.size());
  return out;
}

// Three domains of known character: real text, random bytes, a repeated phrase.
std::vector<Batch> make_batches(int count, int B, int T) {
  const auto text = test::licenses_tokens();
  std::vector<Batch> out;
  for (int n = 0; n < count; ++n) {
    Batch b;
    b.B = B;
    b.T = T;
    for (int r = 0; r < B; ++r) {
      const int d = int(Philox::below(3, 77, std::uint64_t(n), std::uint64_t(r)));
      b.domain.push_back(d);
      const std::size_t start = Philox::below(text.size() - T - 1, 78, std::uint64_t(n), std::uint64_t(r));
      for (int t = 0; t <= T; ++t) {
        std::int32_t tok = 0;
        if (d == 0) tok = text[start + std::size_t(t)];
        if (d == 1) tok = std::int32_t(Philox::below(256, 79, std::uint64_t(n * 1000 + r), std::uint64_t(t)));
        if (d == 2) tok = "abcabd "[t % 7];
        if (t < T) b.inputs.push_back(tok);
        if (t > 0) b.targets.push_back(tok);
      }
    }
    out.push_back(std::move(b));
  }
  return out;
}

TrainConfig dro_config(long steps, int accum) {
  TrainConfig c;
  c.steps = steps;
  c.grad_accum = accum;
  c.adam.lr = 2e-3;
  c.schedule.kind = LrSchedule::Kind::constant;
  c.schedule.peak_lr = 2e-3;
  c.schedule.total_steps = steps;
  c.progress = false;
  return c;
}

DomainWeights uniform_weights(double eta = 1.0, double c = 1e-3) {
  return DomainWeights({"prose", "random", "repeat"}, {1, 1, 1}, {1, 1, 1},
                       DROTrainer<Model<Tiny>, test::ListSampler>::initial_score(), DroConfig{eta, c});
}

}  // namespace

TEST_CASE("dro update: matches the spec's formulas, absent domains keep their score, average counts alpha0") {
  const double l0 = std::log(264.0), eta = 0.7, c = 0.01;
  DomainWeights dw({"a", "b", "c"}, {2, 3, 5}, {2, 1, 1}, l0, DroConfig{eta, c});
  std::vector<double> a0{0.2, 0.3, 0.5};
  CHECK(dw.count() == 1);
  for (std::size_t i = 0; i < 3; ++i) CHECK(dw.average()[i] == doctest::Approx(a0[i]).epsilon(1e-15));

  // Step 1: domain b absent.
  dw.update(std::vector<double>{1.0, 0.0, 3.0}, std::vector<double>{4, 0, 2});
  const std::vector<double> lambda1{0.25, l0, 1.5};
  const auto a1 = direct_update(a0, lambda1, eta, c);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(dw.scores()[i] == doctest::Approx(lambda1[i]).epsilon(1e-14));
    CHECK(dw.alpha()[i] == doctest::Approx(a1[i]).epsilon(1e-12));
    CHECK(dw.average()[i] == doctest::Approx((a0[i] + a1[i]) / 2).epsilon(1e-12));
  }
  // Step 2: all present.
  dw.update(std::vector<double>{0.5, 2.0, 0.0}, std::vector<double>{5, 8, 3});
  const std::vector<double> lambda2{0.1, 0.25, 0.0};
  const auto a2 = direct_update(a1, lambda2, eta, c);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(dw.alpha()[i] == doctest::Approx(a2[i]).epsilon(1e-12));
    CHECK(dw.average()[i] == doctest::Approx((a0[i] + a1[i] + a2[i]) / 3).epsilon(1e-12));
  }
  // Importance correction by the sampling weights s = (0.5, 0.25, 0.25).
  const std::vector<double> s{0.5, 0.25, 0.25};
  double z = 0;
  for (std::size_t i = 0; i < 3; ++i) z += a2[i] / s[i];
  const auto w = dw.loss_weights();
  for (std::size_t i = 0; i < 3; ++i) CHECK(w[i] == doctest::Approx(a2[i] / s[i] / z).epsilon(1e-12));
  double sum = 0;
  for (double x : dw.alpha()) sum += x;
  CHECK(sum == doctest::Approx(1.0).epsilon(1e-14));
}

TEST_CASE("dro update: bad inputs are errors") {
  CHECK_THROWS_AS(DomainWeights({"a", "b"}, {1, -1}, {1, 1}, 1.0, {}), Error);
  CHECK_THROWS_AS(DomainWeights({"a", "b"}, {0, 0}, {1, 1}, 1.0, {}), Error);
  CHECK_THROWS_AS(DomainWeights({"a", "b"}, {1, NAN}, {1, 1}, 1.0, {}), Error);
  CHECK_THROWS_AS(DomainWeights({"a", "b"}, {1, 1}, {1, 0}, 1.0, {}), Error);
  CHECK_THROWS_AS(DomainWeights({"a", "b"}, {1, 1}, {1, 1}, 1.0, DroConfig{-1.0, 0.1}), Error);
  CHECK_THROWS_AS(DomainWeights({"a", "b"}, {1, 1}, {1, 1}, 1.0, DroConfig{1.0, 2.0}), Error);
  DomainWeights dw({"a", "b"}, {1, 1}, {1, 1}, 1.0, {});
  CHECK_THROWS_AS(dw.update(std::vector<double>{1.0}, std::vector<double>{1.0}), Error);
}

TEST_CASE("dro trainer: k micro-batches give the alpha trajectory of one batch k times larger") {
  const auto big = make_batches(4, 8, 32);
  test::ListSampler one{big}, two{test::halves(big)};
  Model<Tiny> ref_a, ref_b, proxy_a, proxy_b;
  ref_a.init(5);
  ref_b.init(5);
  proxy_a.init(6);
  proxy_b.init(6);
  DROTrainer a(proxy_a, ref_a, one, dro_config(4, 1), uniform_weights(3.0));
  DROTrainer b(proxy_b, ref_b, two, dro_config(4, 2), uniform_weights(3.0));
  for (int step = 0; step < 4; ++step) {
    const StepStats sa = a.train_step(), sb = b.train_step();
    CHECK(sb.loss == doctest::Approx(sa.loss).epsilon(1e-5));
    for (std::size_t i = 0; i < 3; ++i) {
      CHECK(b.domain_weights().alpha()[i] == doctest::Approx(a.domain_weights().alpha()[i]).epsilon(1e-5));
      CHECK(b.domain_weights().scores()[i] == doctest::Approx(a.domain_weights().scores()[i]).epsilon(1e-5));
    }
  }
  CHECK(test::relative_distance(proxy_b.parameters(), proxy_a.parameters()) < 1e-5);
  CHECK(std::as_const(ref_b).gradients().empty());  // the reference only runs forward: no gradient buffer
  // The weights moved: the update is not trivially the identity.
  CHECK(a.domain_weights().alpha()[0] != doctest::Approx(1.0 / 3).epsilon(1e-3));
}

TEST_CASE("dro trainer: exact accumulation with non-uniform weights, smoothing, padding and split domains") {
  // 4 micro-batches of 2 rows: a domain with 3+ sequences in a step takes
  // several passes; non-uniform sampling and initial weights, a large c (so
  // the c/k part of the weights matters), a fully padded sequence (its
  // domain may have no tokens in that step) and a partly padded one.
  auto big = make_batches(3, 8, 32);
  std::fill_n(big[0].targets.begin() + 1 * 32, 32, -1);
  std::fill_n(big[1].targets.begin() + 5 * 32 + 20, 12, -1);
  const auto weights = [] {
    return DomainWeights({"prose", "random", "repeat"}, {1, 2, 3}, {0.5, 0.3, 0.2},
                         DROTrainer<Model<Tiny>, test::ListSampler>::initial_score(), DroConfig{2.0, 0.2});
  };
  test::ListSampler one{big}, four{test::split_rows(big, 4)};
  Model<Tiny> ref_a, ref_b, proxy_a, proxy_b;
  ref_a.init(7);
  ref_b.init(7);
  proxy_a.init(8);
  proxy_b.init(8);
  DROTrainer a(proxy_a, ref_a, one, dro_config(3, 1), weights());
  DROTrainer b(proxy_b, ref_b, four, dro_config(3, 4), weights());
  for (int step = 0; step < 3; ++step) {
    INFO("step ", step);
    const StepStats sa = a.train_step(), sb = b.train_step();
    CHECK(sb.loss == doctest::Approx(sa.loss).epsilon(1e-5));
    CHECK(sb.grad_norm == doctest::Approx(sa.grad_norm).epsilon(1e-4));
    for (std::size_t i = 0; i < 3; ++i)
      CHECK(b.domain_weights().alpha()[i] == doctest::Approx(a.domain_weights().alpha()[i]).epsilon(1e-5));
  }
  CHECK(test::relative_distance(proxy_b.parameters(), proxy_a.parameters()) < 1e-5);
}

TEST_CASE("dro trainer: micro-batches of one step with different lengths are an error") {
  auto mixed = make_batches(1, 2, 32);
  mixed.push_back(make_batches(1, 2, 16).front());
  test::ListSampler sampler{mixed};
  Model<Tiny> ref, proxy;
  ref.init(1);
  proxy.init(2);
  DROTrainer t(proxy, ref, sampler, dro_config(1, 2), uniform_weights());
  CHECK_THROWS_WITH_AS(t.train_step(), doctest::Contains("sequence lengths 32 and 16"), Error);
}

TEST_CASE("dro trainer: a run resumed from its checkpoint continues bit-identically") {
  const auto batches = make_batches(10, 4, 32);
  test::TempDir dir("dro-resume");
  std::vector<nlohmann::json> full;
  {
    Model<Tiny> ref, proxy;
    ref.init(1);
    proxy.init(2);
    test::ListSampler sampler{batches};
    DROTrainer t(proxy, ref, sampler, dro_config(8, 2), uniform_weights());
    t.run([&](const StepStats& s) { full.push_back(s.to_json()); });
  }
  {
    Model<Tiny> ref, proxy;
    ref.init(1);
    proxy.init(2);
    test::ListSampler sampler{batches};
    auto cfg = dro_config(8, 2);
    cfg.output_dir = dir.path;
    cfg.checkpoint_every = 5;
    DROTrainer t(proxy, ref, sampler, cfg, uniform_weights());
    struct Killed {};
    CHECK_THROWS_AS(t.run([&](const StepStats& s) {
      if (s.step == 6) throw Killed{};
    }),
                    Killed);
  }
  Model<Tiny> ref, proxy;
  ref.init(1);
  proxy.init(99);
  test::ListSampler sampler{batches};
  auto cfg = dro_config(8, 2);
  cfg.output_dir = dir.path;
  DROTrainer t(proxy, ref, sampler, cfg, uniform_weights());
  REQUIRE(t.resume_if_possible());
  CHECK(t.step() == 5);
  std::vector<nlohmann::json> resumed;
  t.run([&](const StepStats& s) { resumed.push_back(s.to_json()); });
  REQUIRE(resumed.size() == 3);
  for (std::size_t i = 0; i < 3; ++i) {
    for (const char* key : {"loss", "alpha", "avg_alpha", "scores", "mean_loss"})
      CHECK(resumed[i].at(key) == full[5 + i].at(key));
  }
  t.write_domain_weights(dir.path / "out", {0.2, 0.3, 0.5});
  const auto avg = read_json_file(dir.path / "out/avg_domain_weights.json");
  // ᾱ as written: normalised again by the writer (sum 1 up to rounding), so equal to the last ulps.
  CHECK(avg.at("random").get<double>() == doctest::Approx(t.domain_weights().average()[1]).epsilon(1e-15));
  const auto config = read_json_file(dir.path / "out/domain_config.json");
  CHECK(config.at("eval_domain_weights").at("repeat").get<double>() == 0.5);
}
