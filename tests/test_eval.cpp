// Per-domain held-out log-perplexity: equals the token-by-token sum computed
// independently, reads every target once, and reports average and worst.
#include <doctest/doctest.h>

#include <cmath>

#include "doremi/data/source.hpp"
#include "doremi/doremi.hpp"
#include "doremi/eval/perplexity.hpp"

using namespace doremi;

TEST_CASE("eval: per-domain log-perplexity matches an independent token-by-token sum") {
  using Tiny = presets::Tiny<double>;
  Model<Tiny> model;
  model.init(3);
  std::vector<std::vector<std::int32_t>> a, b;
  for (int s = 0; s < 3; ++s) {
    std::vector<std::int32_t> seq;
    for (int t = 0; t < 10 + 7 * s; ++t) seq.push_back(std::int32_t(Philox::below(257, 1, s, t)));
    a.push_back(seq);
  }
  b.push_back({1, 2, 3, 4, 5, 6, 7, 8, 9});
  const std::vector<MemorySource> sources{MemorySource(a, "a"), MemorySource(b, "b")};
  const auto r = evaluate_perplexity(model, {"a", "b"}, sources, /*T=*/4, /*B=*/3);
  // Independent: each sequence scored as one window of its full length.
  auto score = [&](const std::vector<std::int32_t>& s) {
    std::vector<std::int32_t> in(s.begin(), s.end() - 1), tg(s.begin() + 1, s.end());
    // Context is limited to the T=4 window the evaluator used: score windows of 4.
    double sum = 0;
    for (std::size_t st = 0; st < in.size(); st += 4) {
      const std::size_t n = std::min<std::size_t>(4, in.size() - st);
      std::vector<std::int32_t> wi(in.begin() + std::ptrdiff_t(st), in.begin() + std::ptrdiff_t(st + n));
      std::vector<std::int32_t> wt(tg.begin() + std::ptrdiff_t(st), tg.begin() + std::ptrdiff_t(st + n));
      sum += model.forward(wi, wt, 1, int(n)).loss_sum;
    }
    return sum;
  };
  double sa = 0, na = 0;
  for (const auto& s : a) {
    sa += score(s);
    na += double(s.size() - 1);
  }
  CHECK(r.tokens[0] == std::uint64_t(na));
  CHECK(r.tokens[1] == 8);
  CHECK(r.log_perplexity[0] == doctest::Approx(sa / na).epsilon(1e-12));
  CHECK(r.log_perplexity[1] == doctest::Approx(score(b[0]) / 8).epsilon(1e-12));
  CHECK(r.average == doctest::Approx((r.log_perplexity[0] + r.log_perplexity[1]) / 2));
  CHECK(r.worst == std::max(r.log_perplexity[0], r.log_perplexity[1]));
  CHECK(r.to_json().at("log_perplexity").at("b").get<double>() == r.log_perplexity[1]);
}

TEST_CASE("eval: an empty domain and bad shapes are errors") {
  Model<presets::Tiny<float>> model;
  model.init(1);
  const std::vector<MemorySource> sources{MemorySource({{5}}, "one-token")};
  CHECK_THROWS_WITH_AS(evaluate_perplexity(model, {"x"}, sources, 4, 2), doctest::Contains("'x'"), Error);
  CHECK_THROWS_AS(evaluate_perplexity(model, {"x"}, sources, 0, 2), Error);
  CHECK_THROWS_AS(evaluate_perplexity(model, {"x", "y"}, sources, 4, 2), Error);
}
