#pragma once
// A training batch: B sequences of T positions. targets[j] is the token that
// follows inputs[j] (−1 where there is none: padding, ignored by the loss);
// domain[b] is the domain id of sequence b (0 when there is a single domain).
#include <cstdint>
#include <vector>

namespace doremi {

struct Batch {
  int B = 0, T = 0;
  std::vector<std::int32_t> inputs, targets;  // [B·T]
  std::vector<std::int32_t> domain;           // [B]

  std::size_t target_tokens() const {
    std::size_t n = 0;
    for (auto t : targets) n += t >= 0;
    return n;
  }
};

}  // namespace doremi
