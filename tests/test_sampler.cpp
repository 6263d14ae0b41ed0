// WeightedDomainSampler (shares, resume, weight changes, deterministic
// blending, epochs, row layouts, prefetch) and the domain-config format with
// reference weights by size (data/domain_config.hpp).
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "doremi/core/rng.hpp"
#include "doremi/data/domain_config.hpp"
#include "doremi/data/source.hpp"
#include "doremi/data/weighted_sampler.hpp"
#include "test_util.hpp"

using namespace doremi;
namespace test = doremi::test;
using Seqs = std::vector<std::vector<std::int32_t>>;
using Sampler = WeightedDomainSampler<MemorySource>;

namespace {

// Sequence j of domain d: first token d·100000 + j (so a row names its
// source), then tokens that depend on (d, j, position).
constexpr std::int32_t kId = 100000;
MemorySource make_domain(int d, int n, int len) {
  Seqs s(static_cast<std::size_t>(n));
  for (int j = 0; j < n; ++j) {
    s[std::size_t(j)].push_back(d * kId + j);
    for (int t = 1; t < len; ++t) s[std::size_t(j)].push_back(7 * d + 3 * j + t);
  }
  return MemorySource(std::move(s), fmt::format("domain{}", d));
}

std::vector<MemorySource> make_domains(const std::vector<int>& sizes, int len) {
  std::vector<MemorySource> v;
  for (std::size_t d = 0; d < sizes.size(); ++d) v.push_back(make_domain(int(d), sizes[d], len));
  return v;
}

std::vector<std::string> names_for(std::size_t k) {
  std::vector<std::string> n;
  for (std::size_t d = 0; d < k; ++d) n.push_back(fmt::format("d{}", d));
  return n;
}

// (domain, sequence id) of each row, checked against batch.domain.
std::vector<std::pair<int, int>> row_ids(const Batch& b) {
  std::vector<std::pair<int, int>> ids;
  for (int r = 0; r < b.B; ++r) {
    const std::int32_t first = b.inputs[std::size_t(r) * std::size_t(b.T)];
    REQUIRE(first / kId == b.domain[std::size_t(r)]);
    ids.emplace_back(first / kId, first % kId);
  }
  return ids;
}

bool same_batch(const Batch& a, const Batch& b) {
  return a.B == b.B && a.T == b.T && a.inputs == b.inputs && a.targets == b.targets && a.domain == b.domain;
}

SamplerOptions opts(SamplingMode mode, bool prefetch = true, Packing p = Packing::pack) {
  SamplerOptions o;
  o.mode = mode;
  o.prefetch = prefetch;
  o.packing = p;
  return o;
}

// A source that throws on reading one sequence (to test error propagation).
class FaultySource {
 public:
  FaultySource(MemorySource inner, std::size_t bad) : inner_(std::move(inner)), bad_(bad) {}
  std::size_t size() const { return inner_.size(); }
  std::size_t length(std::size_t i) const { return inner_.length(i); }
  std::uint64_t total_tokens() const { return inner_.total_tokens(); }
  std::string describe() const { return "faulty"; }
  void read(std::size_t i, std::size_t offset, std::span<std::int32_t> out) const {
    if (i == bad_) fail("faulty: sequence {} is unreadable", i);
    inner_.read(i, offset, out);
  }

 private:
  MemorySource inner_;
  std::size_t bad_;
};
static_assert(TokenSource<FaultySource>);

}  // namespace

TEST_CASE("sampler: random-mode domain shares match the weights") {
  const std::vector<double> w{5, 3, 2};
  Sampler s(names_for(3), make_domains({400, 300, 200}, 5), w, 64, 4, 17, opts(SamplingMode::random));
  std::vector<double> seen(3, 0);
  const int batches = 300;
  for (int i = 0; i < batches; ++i)
    for (auto [d, j] : row_ids(s.next())) seen[std::size_t(d)] += 1;
  const double N = 64.0 * batches;
  for (std::size_t d = 0; d < 3; ++d) {
    const double p = w[d] / 10.0, se = std::sqrt(p * (1 - p) / N);
    CHECK(std::abs(seen[d] / N - p) < 4 * se);
    CHECK(double(s.counts()[d]) == seen[d]);
  }
  CHECK(s.sequences_drawn() == std::uint64_t(N));
  CHECK(s.weights()[0] == doctest::Approx(0.5));
}

TEST_CASE("sampler: state()/restore() continue the batch stream bit-identically") {
  for (auto mode : {SamplingMode::random, SamplingMode::deterministic})
    for (auto packing : {Packing::pack, Packing::nopack})
      for (bool prefetch : {true, false}) {
        CAPTURE(int(mode));
        CAPTURE(int(packing));
        CAPTURE(prefetch);
        const int len = packing == Packing::pack ? 5 : 11;
        auto srcs = make_domains({13, 7, 29}, len);
        Sampler a(names_for(3), srcs, {1, 2, 3}, 5, 4, 99, opts(mode, prefetch, packing));
        std::vector<Batch> stream;
        nlohmann::json saved;
        for (int i = 0; i < 14; ++i) {
          if (i == 3) a.set_weights({3, 0, 1});
          if (i == 6) saved = nlohmann::json::parse(a.state().dump());  // through text, as a checkpoint
          if (i == 9) a.set_weights({1, 1, 5});
          stream.push_back(a.next());
        }
        // A fresh sampler (constructed with other weights) restored from the state.
        Sampler b(names_for(3), srcs, {1, 1, 1}, 5, 4, 99, opts(mode, !prefetch, packing));
        b.next();  // consumed before the restore: must not matter
        b.restore(saved);
        CHECK(b.weights() == std::vector<double>{0.75, 0.0, 0.25});
        for (int i = 6; i < 14; ++i) {
          if (i == 9) b.set_weights({1, 1, 5});
          CHECK(same_batch(b.next(), stream[std::size_t(i)]));
        }
        CHECK(b.counts() == a.counts());
        CHECK(b.state() == a.state());
        // Rewinding the same sampler (a prefetched batch must be dropped).
        a.restore(saved);
        CHECK(same_batch(a.next(), stream[6]));
      }
}

TEST_CASE("sampler: the prefetching stream equals the synchronous one") {
  auto srcs = make_domains({31, 17, 5, 9}, 6);
  Sampler p(names_for(4), srcs, {1, 1, 1, 1}, 8, 5, 3, opts(SamplingMode::random, true));
  Sampler q(names_for(4), srcs, {1, 1, 1, 1}, 8, 5, 3, opts(SamplingMode::random, false));
  nlohmann::json mid;
  for (int i = 0; i < 40; ++i) {
    if (i % 5 == 2) {
      const std::vector<double> w{double(i % 3), 1.0, double(i % 7), 0.5};
      p.set_weights(w);
      q.set_weights(w);
    }
    if (i == 11) mid = q.state();
    if (i == 30) {
      p.restore(mid);
      q.restore(mid);
    }
    REQUIRE(same_batch(p.next(), q.next()));
  }
  p.set_weights(p.weights());  // unchanged weights: a no-op that keeps the prefetched batch
  CHECK(same_batch(p.next(), q.next()));
}

TEST_CASE("sampler: weight changes skip and repeat nothing within a domain") {
  const std::vector<int> sizes{7, 11, 13};
  Sampler s(names_for(3), make_domains(sizes, 5), {1, 1, 1}, 6, 4, 5, opts(SamplingMode::random));
  std::vector<std::vector<int>> drawn(3);
  for (int i = 0; i < 60; ++i) {
    // Erratic weights, with each domain switched off now and then.
    std::vector<double> w(3);
    for (std::size_t d = 0; d < 3; ++d)
      w[d] = (i + int(d)) % 4 == 0 ? 0.0 : 0.1 + Philox::uniform(11, d, std::uint64_t(i));
    s.set_weights(w);
    for (auto [d, j] : row_ids(s.next())) drawn[std::size_t(d)].push_back(j);
  }
  for (std::size_t d = 0; d < 3; ++d) {
    CAPTURE(d);
    const std::size_t n = std::size_t(sizes[d]);
    REQUIRE(drawn[d].size() == s.counts()[d]);
    REQUIRE(drawn[d].size() > 2 * n);  // at least two epochs
    // Consecutive positions of the domain's shuffled order, in order.
    for (std::size_t k = 0; k < drawn[d].size(); ++k) CHECK(std::uint64_t(drawn[d][k]) == s.unit_at(d, k));
    // Each epoch is a permutation of [0, n); the partial last one has no repeats.
    for (std::size_t e = 0; e * n < drawn[d].size(); ++e) {
      const auto first = drawn[d].begin() + std::ptrdiff_t(e * n);
      const auto last = drawn[d].begin() + std::ptrdiff_t(std::min(drawn[d].size(), (e + 1) * n));
      const std::set<int> ids(first, last);
      CHECK(ids.size() == std::size_t(last - first));
      CHECK(*ids.rbegin() < int(n));
    }
    CHECK(s.epochs()[d] == drawn[d].size() / n);
  }
}

TEST_CASE("sampler: deterministic mode keeps every count within 1 of its target") {
  auto check_run = [](std::vector<double> w0, int batches, auto change, bool lag_bound) {
    const std::size_t k = w0.size();
    std::vector<int> sizes(k, 50);
    Sampler s(names_for(k), make_domains(sizes, 5), w0, 7, 4, 1, opts(SamplingMode::deterministic));
    std::vector<double> target(k, 0.0), w = s.weights();
    std::vector<std::uint64_t> count(k, 0);
    double worst_ahead = -1, worst_lag = -1;
    for (int i = 0; i < batches; ++i) {
      if (i > 0 && change(i, w)) {
        s.set_weights(w);
        w = s.weights();
      }
      const Batch b = s.next();
      for (int r = 0; r < b.B; ++r) {
        ++count[std::size_t(b.domain[std::size_t(r)])];
        for (std::size_t d = 0; d < k; ++d) {
          target[d] += w[d];
          worst_ahead = std::max(worst_ahead, double(count[d]) - target[d]);
          worst_lag = std::max(worst_lag, target[d] - double(count[d]));
          if (w[d] == 0) CHECK(b.domain[std::size_t(r)] != int(d));
        }
      }
      for (std::size_t d = 0; d < k; ++d) CHECK(s.targets()[d] == doctest::Approx(target[d]).epsilon(1e-12));
    }
    CHECK(s.counts() == count);
    CHECK(worst_ahead < 1.0);             // guarantee (a): never a whole sequence ahead
    if (lag_bound) CHECK(worst_lag < 1.0);  // guarantee (b), and DRO-sized changes
    return worst_lag;
  };
  auto fixed = [](int, std::vector<double>&) { return false; };
  check_run({0.5, 0.3, 0.2}, 200, fixed, true);
  check_run({22, 22, 1, 30, 30, 1}, 200, fixed, true);  // Megatron's argmax rule lags by 1.0 here
  // Pile-like skew over 22 domains (the 120M run's weights span 0.0019 to 0.19).
  std::vector<double> skew;
  for (int d = 0; d < 22; ++d) skew.push_back(std::exp(-0.3 * d) + 0.002);
  check_run(skew, 300, fixed, true);
  // Smooth multiplicative (exponentiated-gradient-like) changes every batch.
  check_run(skew, 300,
            [](int i, std::vector<double>& w) {
              for (std::size_t d = 0; d < w.size(); ++d)
                w[d] *= std::exp(0.05 * (Philox::uniform(4, d, std::uint64_t(i)) - 0.5));
              return true;
            },
            true);
  // Abrupt changes (including zeros): only guarantee (a) holds.
  const double lag = check_run({1, 1, 1, 1}, 200,
                               [](int i, std::vector<double>& w) {
                                 if (i % 10) return false;
                                 for (std::size_t d = 0; d < w.size(); ++d)
                                   w[d] = (i / 10 + int(d)) % 4 == 0 ? 0.0 : Philox::uniform(5, d, std::uint64_t(i));
                                 return true;
                               },
                               false);
  MESSAGE("deterministic mode, abrupt changes: worst lag " << lag);
}

TEST_CASE("sampler: each epoch is a fresh permutation") {
  const int n = 50;
  Sampler s({"only"}, make_domains({n}, 5), {1}, 10, 4, 2024, opts(SamplingMode::random));
  std::vector<int> ids;
  for (int i = 0; i < 10; ++i)
    for (auto [d, j] : row_ids(s.next())) ids.push_back(j);
  const std::vector<int> e1(ids.begin(), ids.begin() + n), e2(ids.begin() + n, ids.end());
  std::vector<int> sorted1 = e1, sorted2 = e2, iota(n);
  std::sort(sorted1.begin(), sorted1.end());
  std::sort(sorted2.begin(), sorted2.end());
  std::iota(iota.begin(), iota.end(), 0);
  CHECK(sorted1 == iota);
  CHECK(sorted2 == iota);
  CHECK(e1 != e2);
  CHECK(e1 != iota);
  CHECK(s.epochs() == std::vector<std::uint64_t>{2});
  // Another seed, another order; the order depends on the domain's name, not its index.
  Sampler t({"only"}, make_domains({n}, 5), {1}, 10, 4, 2025, opts(SamplingMode::random));
  CHECK(t.unit_at(0, 0) * 1000 + t.unit_at(0, 1) != s.unit_at(0, 0) * 1000 + s.unit_at(0, 1));
  Sampler u({"a", "only"}, make_domains({3, n}, 5), {1, 1}, 10, 4, 2024, opts(SamplingMode::random));
  for (std::uint64_t k = 0; k < 2 * n; ++k) CHECK(u.unit_at(1, k) == s.unit_at(0, k));
}

TEST_CASE("sampler: Feistel permutations are bijections for every size") {
  for (std::uint64_t n : {1ull, 2ull, 3ull, 4ull, 5ull, 17ull, 64ull, 65ull, 1000ull, 4097ull}) {
    FeistelPermutation p(n, 9, 1, 0), q(n, 9, 1, 1);
    std::vector<char> hit(n, 0);
    bool differs = false;
    for (std::uint64_t i = 0; i < n; ++i) {
      const auto v = p(i);
      REQUIRE(v < n);
      CHECK(!hit[v]);
      hit[v] = 1;
      differs |= v != q(i);
    }
    if (n > 3) CHECK(differs);
  }
  // Across epochs (keys), where 0 lands is uniform: chi-square over 10 values,
  // 9 degrees of freedom (the 99.99% quantile is 33.7).
  const int epochs = 5000;
  std::vector<double> hits(10, 0);
  for (int e = 0; e < epochs; ++e) hits[FeistelPermutation(10, 3, 4, std::uint64_t(e))(0)] += 1;
  double chi2 = 0;
  for (double h : hits) chi2 += (h - epochs / 10.0) * (h - epochs / 10.0) / (epochs / 10.0);
  CHECK(chi2 < 33.7);
}

TEST_CASE("sampler: rows from packed chunks, exact-T chunks and nopack documents") {
  const int T = 4;
  auto rows_of = [&](MemorySource src, Packing p, std::int32_t pad) {
    SamplerOptions o = opts(SamplingMode::deterministic, true, p);
    o.pad_id = pad;
    Sampler s({"x"}, std::vector<MemorySource>{std::move(src)}, {1}, 1, T, 3, o);
    std::set<std::pair<std::vector<std::int32_t>, std::vector<std::int32_t>>> rows;
    const auto n = s.domain_sizes()[0];
    for (std::uint64_t i = 0; i < n; ++i) {
      const Batch b = s.next();
      CHECK(b.B == 1);
      CHECK(b.T == T);
      rows.insert({b.inputs, b.targets});
    }
    CHECK(rows.size() == n);  // one epoch: every unit once
    return rows;
  };
  using Rows = std::set<std::pair<std::vector<std::int32_t>, std::vector<std::int32_t>>>;
  // Packed chunks of T + 1, exactly T, and a short one.
  CHECK(rows_of(MemorySource({{10, 11, 12, 13, 14}, {20, 21, 22, 23}, {30, 31}}), Packing::pack, 0) ==
        Rows{{{10, 11, 12, 13}, {11, 12, 13, 14}},
             {{20, 21, 22, 23}, {21, 22, 23, -1}},
             {{30, 31, 0, 0}, {31, -1, -1, -1}}});
  // nopack: 10 tokens → ⌈9/4⌉ = 3 pieces; 9 → 2; 5 → 1; 1 → none (no target).
  std::vector<std::int32_t> d10(10), d9(9), d5(5);
  std::iota(d10.begin(), d10.end(), 100);
  std::iota(d9.begin(), d9.end(), 200);
  std::iota(d5.begin(), d5.end(), 300);
  const Rows nopack = rows_of(MemorySource({d10, {7}, d9, d5}), Packing::nopack, 50256);
  CHECK(nopack == Rows{{{100, 101, 102, 103}, {101, 102, 103, 104}},
                       {{104, 105, 106, 107}, {105, 106, 107, 108}},
                       {{108, 109, 50256, 50256}, {109, -1, -1, -1}},
                       {{200, 201, 202, 203}, {201, 202, 203, 204}},
                       {{204, 205, 206, 207}, {205, 206, 207, 208}},
                       {{300, 301, 302, 303}, {301, 302, 303, 304}}});
  // Many documents (more than one prefix-sum block) map every piece exactly once.
  Seqs docs;
  std::uint64_t pieces = 0;
  for (int j = 0; j < 300; ++j) {
    const int len = 1 + (j * 7) % 23;
    docs.push_back(std::vector<std::int32_t>(std::size_t(len), j));
    pieces += len >= 2 ? std::uint64_t((len - 2) / T + 1) : 0;
  }
  Sampler big({"docs"}, std::vector<MemorySource>{MemorySource(docs)}, {1}, 1, T, 8,
              opts(SamplingMode::random, false, Packing::nopack));
  REQUIRE(big.domain_sizes()[0] == pieces);
  CHECK(big.index_bytes() >= (300 / 32 + 2) * 8);
  std::map<int, int> per_doc;
  std::size_t target_tokens = 0;
  for (std::uint64_t i = 0; i < pieces; ++i) {
    const Batch b = big.next();
    ++per_doc[b.inputs[0]];
    target_tokens += b.target_tokens();
  }
  std::size_t expected_targets = 0;
  for (int j = 0; j < 300; ++j) {
    const int len = 1 + (j * 7) % 23;
    CHECK(per_doc[j] == (len >= 2 ? (len - 2) / T + 1 : 0));
    expected_targets += std::size_t(len - 1);
  }
  CHECK(target_tokens == expected_targets);  // every next-token target exactly once per epoch
}

TEST_CASE("sampler: zero-weight domains are never drawn; empty ones need weight 0") {
  for (auto mode : {SamplingMode::random, SamplingMode::deterministic}) {
    auto srcs = make_domains({20, 20, 20}, 5);
    srcs.push_back(MemorySource({}, "empty"));
    Sampler s(names_for(4), std::move(srcs), {1, 0, 2, 0}, 16, 4, 7, opts(mode));
    for (int i = 0; i < 100; ++i) s.next();
    CHECK(s.counts()[1] == 0);
    CHECK(s.counts()[3] == 0);
    CHECK(s.counts()[0] + s.counts()[2] == 1600);
    CHECK(s.epochs()[3] == 0);
    CHECK_THROWS_WITH_AS(s.set_weights({1, 1, 1, 1}), doctest::Contains("'d3' (empty) has weight 0.25 but no sequences"),
                         Error);
  }
  CHECK_THROWS_WITH_AS(Sampler({"a", "b"}, std::vector<MemorySource>{make_domain(0, 3, 5), MemorySource({}, "void")},
                               {1, 1}, 2, 4, 1),
                       doctest::Contains("domain 'b' (void) has weight 0.5 but no sequences"), Error);
  // nopack: documents without a target token do not count.
  CHECK_THROWS_WITH_AS(Sampler({"a"}, std::vector<MemorySource>{MemorySource({{1}, {2}}, "ones")}, {1}, 2, 4, 1,
                               opts(SamplingMode::random, true, Packing::nopack)),
                       doctest::Contains("no document with at least 2 tokens"), Error);
}

TEST_CASE("sampler: a subset of domains chosen by the domain config") {
  test::TempDir dir("sampler-subset");
  const auto path = dir.path / "config.json";
  {
    std::ofstream(path) << R"({"train_domain_weights": {"d2": 3, "d0": 1},
                               "eval_domain_weights": {"d0": 1, "d2": 1}})";
  }
  const auto cfg = read_domain_config(path);
  const std::vector<std::string> available{"d1", "d2", "d0"};
  const auto chosen = select_domains(available, cfg, path.string());
  CHECK(chosen == std::vector<std::string>{"d0", "d2"});
  std::vector<MemorySource> srcs{make_domain(0, 30, 5), make_domain(2, 30, 5)};
  Sampler s(chosen, std::move(srcs), cfg.train.weights_for(chosen, path.string()), 8, 4, 1,
            opts(SamplingMode::deterministic));
  CHECK(s.weights() == std::vector<double>{0.25, 0.75});
  for (int i = 0; i < 4; ++i) s.next();
  CHECK(s.counts() == std::vector<std::uint64_t>{8, 24});
  // A configured domain the dataset lacks: the error lists it and what exists.
  const std::vector<std::string> fewer{"d0", "d1"};
  CHECK_THROWS_WITH_AS(select_domains(fewer, cfg, path.string()),
                       doctest::Contains((path.string() + ": unknown domain(s) d2 (the dataset has: d0, d1)").c_str()),
                       Error);
  CHECK_THROWS_WITH_AS(cfg.train.weights_for({"d0", "d9"}, "cfg"), doctest::Contains("no weight for domain(s) d9"),
                       Error);
}

TEST_CASE("sampler: bad weights, arguments and states raise doremi::Error naming the field") {
  auto srcs = make_domains({10, 10}, 5);
  const auto names = names_for(2);
  using doctest::Contains;
  CHECK_THROWS_WITH_AS(Sampler(names, srcs, {1, -1}, 2, 4, 1), Contains("weight of domain 'd1' is negative"), Error);
  CHECK_THROWS_WITH_AS(Sampler(names, srcs, {NAN, 1}, 2, 4, 1), Contains("weight of domain 'd0' is nan"), Error);
  CHECK_THROWS_WITH_AS(Sampler(names, srcs, {INFINITY, 1}, 2, 4, 1), Contains("weight of domain 'd0' is inf"), Error);
  CHECK_THROWS_WITH_AS(Sampler(names, srcs, {0, 0}, 2, 4, 1), Contains("all 2 domain weights are zero"), Error);
  CHECK_THROWS_WITH_AS(Sampler(names, srcs, {1}, 2, 4, 1), Contains("2 domain names but 1 weights"), Error);
  CHECK_THROWS_WITH_AS(Sampler({"a", "a"}, srcs, {1, 1}, 2, 4, 1), Contains("domain 'a' appears twice"), Error);
  CHECK_THROWS_WITH_AS(Sampler({"a"}, srcs, {1}, 2, 4, 1), Contains("1 domain names but 2 sources"), Error);
  CHECK_THROWS_WITH_AS(Sampler(names, srcs, {1, 1}, 0, 4, 1), Contains("batch size 0"), Error);

  Sampler s(names, srcs, {1, 1}, 2, 4, 1);
  s.next();
  CHECK_THROWS_WITH_AS(s.set_weights({1, NAN}), Contains("set_weights: weight of domain 'd1' is nan"), Error);
  CHECK_THROWS_WITH_AS(s.set_weights({-1, 2}), Contains("weight of domain 'd0' is negative"), Error);
  CHECK_THROWS_WITH_AS(s.set_weights({0, 0}), Contains("weights are zero"), Error);

  const nlohmann::json good = s.state();
  const Batch expected = s.next();
  auto bad = [&](auto edit, const char* message) {
    nlohmann::json j = good;
    edit(j);
    CHECK_THROWS_WITH_AS(s.restore(j), Contains(message), Error);
  };
  bad([](nlohmann::json& j) { j["kind"] = "window"; }, "not a weighted domain sampler state");
  bad([](nlohmann::json& j) { j.erase("drawn"); }, "missing field 'drawn'");
  bad([](nlohmann::json& j) { j["domains"][1]["name"] = "d7"; }, "field 'domains[1].name' is \"d7\"");
  bad([](nlohmann::json& j) { j["domains"].erase(1); }, "must list this sampler's 2 domains");
  bad([](nlohmann::json& j) { j["domains"][0]["units"] = 11; }, "domain 'd0' was saved with 11 sampling units");
  bad([](nlohmann::json& j) { j["domains"][0]["count"] = 5; }, "disagree with count 5");
  bad([](nlohmann::json& j) { j["drawn"] = 3; }, "field 'drawn' is 3 but the domains' counts sum to 2");
  bad([](nlohmann::json& j) { j["domains"][1]["weight"] = -0.5; }, "weight of domain 'd1' is negative");
  bad([](nlohmann::json& j) { j["domains"][0]["weight"] = "x"; }, "field 'domains[0].weight' must be a number");
  bad([](nlohmann::json& j) { j["domains"][0]["count"] = -1; }, "field 'domains[0].count' must be an unsigned integer");
  bad([](nlohmann::json& j) { j["mode"] = "deterministic"; }, "saved in deterministic mode but this sampler uses random");
  bad([](nlohmann::json& j) { j["packing"] = "nopack"; }, "saved with nopack");
  bad([](nlohmann::json& j) { j["seq_len"] = 8; }, "saved with sequence length 8");
  // A failed restore changes nothing (the prefetched batch is still the next one).
  CHECK(same_batch(s.next(), expected) == false);  // the state advanced by one batch since `good`
  s.restore(good);
  CHECK(same_batch(s.next(), expected));
}

TEST_CASE("sampler: an exception in the prefetch thread reaches next()") {
  std::vector<FaultySource> srcs;
  srcs.emplace_back(make_domain(0, 10, 5), 3);
  WeightedDomainSampler<FaultySource> s({"f"}, std::move(srcs), {1}, 4, 4, 1);
  bool thrown = false;
  for (int i = 0; i < 5 && !thrown; ++i) {
    try {
      s.next();
    } catch (const Error& e) {
      thrown = true;
      CHECK(std::string(e.what()).find("sequence 3 is unreadable") != std::string::npos);
    }
  }
  CHECK(thrown);
  CHECK_THROWS_AS(s.next(), Error);  // the state did not advance past the bad batch
}

TEST_CASE("domain config: round trip, normalisation and sorting") {
  test::TempDir dir("domain-config");
  const auto path = dir.path / "cfg.json";
  {
    std::ofstream(path) << R"({"train_domain_weights": {"Pile-CC": 2, "ArXiv": 1, "Books3": 1},
                               "eval_domain_weights": {"Books3": 0, "ArXiv": 3, "Pile-CC": 1}, "note": "extra keys are ignored"})";
  }
  const DomainConfig c = read_domain_config(path);
  CHECK(c.train.names == std::vector<std::string>{"ArXiv", "Books3", "Pile-CC"});
  CHECK(c.train.weights == std::vector<double>{0.25, 0.25, 0.5});
  CHECK(c.eval.weights == std::vector<double>{0.75, 0.0, 0.25});
  const auto out = dir.path / "out.json";
  write_domain_config(out, c);
  const DomainConfig d = read_domain_config(out);
  CHECK(d.train.names == c.train.names);
  CHECK(d.train.weights == c.train.weights);
  CHECK(d.eval.weights == c.eval.weights);
  // Built in code, unsorted and unnormalised: written sorted and normalised.
  write_domain_config(out, DomainConfig{{{"b", "a"}, {3, 1}}, {{"b", "a"}, {1, 1}}});
  const auto j = nlohmann::json::parse(std::ifstream(out));
  CHECK(j.at("train_domain_weights").at("a").get<double>() == 0.25);
  CHECK(j.at("train_domain_weights").begin().key() == "a");
  // The plain map.
  const auto map_path = dir.path / "avg.json";
  write_domain_weights(map_path, DomainMixture::make({"z", "y"}, {1, 3}, "code"));
  const DomainMixture m = read_domain_weights(map_path);
  CHECK(m.names == std::vector<std::string>{"y", "z"});
  CHECK(m.weights == std::vector<double>{0.75, 0.25});
  CHECK(*m.find("z") == 1);
  CHECK(m.weights_for({"z"}, "x") == std::vector<double>{1.0});
}

TEST_CASE("domain config: invalid files raise doremi::Error naming the file and domain") {
  test::TempDir dir("domain-config-bad");
  int n = 0;
  auto check_bad = [&](const std::string& text, const std::string& message) {
    const auto path = dir.path / ("bad" + std::to_string(n++) + ".json");
    std::ofstream(path) << text;
    CAPTURE(text);
    CHECK_THROWS_WITH_AS(read_domain_config(path), doctest::Contains(message.c_str()), Error);
    CHECK_THROWS_WITH_AS(read_domain_config(path), doctest::Contains(path.string().c_str()), Error);
  };
  const std::string eval = R"("eval_domain_weights": {"a": 1, "b": 1})";
  check_bad(R"({"train_domain_weights": {"a": -1, "b": 1}, )" + eval + "}",
            "train_domain_weights: weight of domain 'a' is negative");
  check_bad(R"({"train_domain_weights": {"a": "0.5", "b": 1}, )" + eval + "}",
            "weight of domain 'a' is not a number (got string \"0.5\")");
  check_bad(R"({"train_domain_weights": {"a": null, "b": 1}, )" + eval + "}", "weight of domain 'a' is not a number");
  check_bad(R"({"train_domain_weights": {"a": 0, "b": 0}, )" + eval + "}", "all 2 domain weights are zero");
  check_bad(R"({"train_domain_weights": {"a": 1e999, "b": 1}, )" + eval + "}", "number overflow parsing '1e999'");
  check_bad(R"({)" + eval + "}", "missing map \"train_domain_weights\"");
  check_bad(R"({"train_domain_weights": {"a": 1, "b": 1}})", "missing map \"eval_domain_weights\"");
  check_bad(R"({"train_domain_weights": [1, 2], )" + eval + "}", "expected an object mapping domain names");
  check_bad(R"({"train_domain_weights": {"a": 1, "b": 1, "a": 2}, )" + eval + "}", "key 'a' appears twice");
  check_bad(R"({"train_domain_weights": {"": 1, "b": 1}, )" + eval + "}", "a domain name is empty");
  check_bad(R"({"train_domain_weights": {"a": 1, "c": 1}, )" + eval + "}", "only in train: [c]; only in eval: [b]");
  check_bad(R"({"train_domain_weights": {}, )" + eval + "}", "no domains");
  check_bad(R"([1, 2])", "a domain config must be a JSON object");
  check_bad(R"({"train_domain_weights": {"a": 1)", "invalid JSON");
  CHECK_THROWS_WITH_AS(read_domain_config(dir.path / "missing.json"), doctest::Contains("cannot open domain config"),
                       Error);
  // Writing an invalid mixture fails and leaves no file.
  const auto out = dir.path / "never.json";
  CHECK_THROWS_WITH_AS(write_domain_config(out, DomainConfig{{{"a"}, {NAN}}, {{"a"}, {1}}}),
                       doctest::Contains("weight of domain 'a' is nan"), Error);
  CHECK(!std::filesystem::exists(out));
}

TEST_CASE("baseline weights: pack and nopack counts times epochs, by hand") {
  const int T = 4;
  // "Wikipedia (en)": documents of 10, 3, 4 tokens; "Pile-CC": 8, 1.
  const std::vector<std::uint64_t> wiki{10, 3, 4}, cc{8, 1};
  CHECK(count_chunks(wiki, T, Packing::pack) == 4);    // ⌊17/4⌋
  CHECK(count_chunks(wiki, T, Packing::nopack) == 5);  // 3 + 1 + 1
  CHECK(count_chunks(cc, T, Packing::pack) == 2);      // ⌊9/4⌋
  CHECK(count_chunks(cc, T, Packing::nopack) == 3);    // 2 + 1
  auto src = [](const std::vector<std::uint64_t>& lens) {
    Seqs s;
    for (auto l : lens) s.push_back(std::vector<std::int32_t>(l, 1));
    return MemorySource(s);
  };
  const std::vector<std::string> names{"Pile-CC", "Wikipedia (en)"};
  std::vector<MemorySource> sources;
  sources.push_back(src(cc));
  sources.push_back(src(wiki));
  CHECK(count_chunks(sources[1], T, Packing::pack) == 4);
  CHECK(count_chunks(sources[1], T, Packing::nopack) == 5);
  // The Pile's epochs: Pile-CC 1.0, Wikipedia (en) 3.0.
  auto pack = baseline_weights(names, sources, T, Packing::pack, "pile");  // 2·1 : 4·3
  CHECK(pack[0] == doctest::Approx(2.0 / 14));
  CHECK(pack[1] == doctest::Approx(12.0 / 14));
  auto nopack = baseline_weights(names, sources, T, Packing::nopack, "pile");  // 3·1 : 5·3
  CHECK(nopack[0] == doctest::Approx(3.0 / 18));
  CHECK(nopack[1] == doctest::Approx(15.0 / 18));
  auto plain = baseline_weights(names, sources, T, Packing::nopack);  // epochs 1
  CHECK(plain[0] == doctest::Approx(3.0 / 8));
  auto custom = weights_by_size(names, {2, 4}, nlohmann::json{{"Pile-CC", 3.0}});  // Wikipedia defaults to 1
  CHECK(custom[0] == doctest::Approx(0.6));
  // The table: 22 sorted names, with the epochs docs/algorithm.md lists.
  CHECK(pile_domains.size() == 22);
  CHECK(std::is_sorted(pile_domains.begin(), pile_domains.end(),
                       [](const PileDomain& a, const PileDomain& b) { return a.name < b.name; }));
  const std::map<std::string, double> expect{{"Pile-CC", 1.0},     {"Books3", 1.5},       {"Wikipedia (en)", 3.0},
                                             {"Gutenberg (PG-19)", 2.5}, {"Github", 1.0}, {"FreeLaw", 1.5},
                                             {"OpenSubtitles", 1.5}, {"BookCorpus2", 1.5}, {"ArXiv", 2.0},
                                             {"Ubuntu IRC", 2.0}};
  for (const auto& [name, e] : expect) CHECK(pile_epochs(name) == e);
  double total = 0;
  for (const auto& d : pile_domains) total += d.epochs;
  CHECK(total == doctest::Approx(1.0 + 1.5 + 3.0 + 2.5 + 1.0 + 1.5 + 1.5 + 1.5 + 14 * 2.0));
  // Errors.
  using doctest::Contains;
  CHECK_THROWS_WITH_AS(weights_by_size({"Mine"}, {3}, "pile"), Contains("domain 'Mine' is not one of the Pile's"),
                       Error);
  CHECK_THROWS_WITH_AS(weights_by_size(names, {0, 0}), Contains("counts zero sequences"), Error);
  CHECK_THROWS_WITH_AS(weights_by_size(names, {1, -2}), Contains("count of domain 'Wikipedia (en)' is -2"), Error);
  CHECK_THROWS_WITH_AS(weights_by_size(names, {1, 1}, nlohmann::json{{"Pile-CC", -1}}),
                       Contains("epochs: value for domain 'Pile-CC' must be positive"), Error);
  CHECK_THROWS_WITH_AS(weights_by_size(names, {1, 1}, "books"), Contains("unknown table \"books\""), Error);
  CHECK(parse_packing("nopack") == Packing::nopack);
  CHECK_THROWS_AS(parse_packing("packed"), Error);
}
