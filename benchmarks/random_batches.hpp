#pragma once
// The benchmarks' sampler: random tokens below `Vocab`, sequence r of batch n
// from domain (n + r) mod 4. A pure function of n, so every rank of a
// data-parallel run draws the same global batch.
#include <cstdint>

#include <nlohmann/json.hpp>

#include "doremi/core/rng.hpp"
#include "doremi/data/batch.hpp"

namespace bench {

template <int Vocab>
struct RandomBatches {
  int B, T;
  std::uint64_t n = 0;
  doremi::Batch next() {
    doremi::Batch b;
    b.B = B;
    b.T = T;
    for (int r = 0; r < B; ++r) {
      b.domain.push_back(std::int32_t((n + std::uint64_t(r)) % 4));
      for (int t = 0; t <= T; ++t) {
        const auto tok = std::int32_t(
            doremi::Philox::below(Vocab, 3, n * std::uint64_t(B) + std::uint64_t(r), std::uint64_t(t)));
        if (t < T) b.inputs.push_back(tok);
        if (t > 0) b.targets.push_back(tok);
      }
    }
    ++n;
    return b;
  }
  nlohmann::json state() const { return {{"n", n}}; }
  void restore(const nlohmann::json& j) { n = j.at("n").get<std::uint64_t>(); }
};

}  // namespace bench
