#pragma once
// generate() with every step's logits recorded, for the CPU and CUDA
// generation tests. Include doctest first.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "doremi/eval/generate.hpp"

namespace doremi::test {

// logits[prompt][step]: what the observer saw.
using StepLogits = std::vector<std::vector<std::vector<double>>>;

template <class M>
std::vector<GeneratedRow> generate_logged(M& m, const std::vector<std::vector<std::int32_t>>& prompts,
                                          const GenerationConfig& g, StepLogits& logits) {
  logits.assign(prompts.size(), {});
  return generate(m, prompts, g, nullptr, [&](std::size_t r, std::size_t step, std::span<const double> l) {
    REQUIRE(step == logits[r].size());
    logits[r].emplace_back(l.begin(), l.end());
  });
}

}  // namespace doremi::test
