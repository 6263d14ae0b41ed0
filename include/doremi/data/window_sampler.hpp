#pragma once
// WindowSampler: batches of random contiguous windows from one token stream,
// for training a language model on a single corpus. Window b of step s starts
// at Philox(seed, s, b) mod (n − T), so the batch stream is a pure function of
// (seed, step): the sampler's whole state is the step counter, and saving and
// restoring it continues the exact same stream.
#include <cstdint>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "doremi/core/error.hpp"
#include "doremi/core/json.hpp"
#include "doremi/core/rng.hpp"
#include "doremi/data/batch.hpp"

namespace doremi {

class WindowSampler {
 public:
  WindowSampler(std::vector<std::int32_t> tokens, int batch_size, int seq_len, std::uint64_t seed)
      : tokens_(std::move(tokens)), B_(batch_size), T_(seq_len), seed_(seed) {
    if (B_ <= 0 || T_ <= 0) fail("WindowSampler: batch size {} and sequence length {} must be positive", B_, T_);
    if (tokens_.size() < std::size_t(T_) + 1)
      fail("WindowSampler: {} tokens are too few for windows of {} (+1 target) tokens", tokens_.size(), T_);
  }

  Batch next() {
    Batch b;
    b.B = B_;
    b.T = T_;
    b.inputs.resize(std::size_t(B_) * T_);
    b.targets.resize(std::size_t(B_) * T_);
    b.domain.assign(std::size_t(B_), 0);
    const std::uint64_t starts = tokens_.size() - std::size_t(T_);
    for (int i = 0; i < B_; ++i) {
      const std::size_t s = Philox::below(starts, seed_, step_, std::uint64_t(i));
      for (int t = 0; t < T_; ++t) {
        b.inputs[std::size_t(i) * T_ + t] = tokens_[s + t];
        b.targets[std::size_t(i) * T_ + t] = tokens_[s + t + 1];
      }
    }
    ++step_;
    return b;
  }

  nlohmann::json state() const { return {{"kind", "window"}, {"step", step_}, {"seed", seed_}}; }
  void restore(const nlohmann::json& s) {
    if (!s.is_object() || !s.contains("kind") || s.at("kind") != "window" || !s.contains("step"))
      fail("WindowSampler: sampler state {} is not a window sampler's state", detail::json_excerpt(s));
    const auto step = json_field<std::uint64_t>(s, "step", "WindowSampler state");
    seed_ = json_field_or<std::uint64_t>(s, "seed", seed_, "WindowSampler state");
    step_ = step;
  }

 private:
  std::vector<std::int32_t> tokens_;
  int B_, T_;
  std::uint64_t seed_, step_ = 0;
};

}  // namespace doremi
