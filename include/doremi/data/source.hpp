#pragma once
// Token sources: one domain's data as an indexed list of token sequences
// (packed chunks or whole documents). The sampler reads through this concept
// only, so Megatron indexed datasets, HuggingFace `datasets` folders and
// in-memory vectors are interchangeable.
//
//   s.size()                 number of sequences
//   s.length(i)              tokens in sequence i
//   s.read(i, offset, out)   copies tokens [offset, offset + out.size()) of
//                            sequence i into out (as int32), bounds-checked
//   s.total_tokens()         Σ length(i)
//   s.describe()             where the data lives, for error messages
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "doremi/core/error.hpp"

namespace doremi {

template <class S>
concept TokenSource = requires(const S& s, std::size_t i, std::span<std::int32_t> out) {
  { s.size() } -> std::convertible_to<std::size_t>;
  { s.length(i) } -> std::convertible_to<std::size_t>;
  { s.read(i, std::size_t{0}, out) };
  { s.total_tokens() } -> std::convertible_to<std::uint64_t>;
  { s.describe() } -> std::convertible_to<std::string>;
};

// Sequences held in memory (tests, small demos).
class MemorySource {
 public:
  explicit MemorySource(std::vector<std::vector<std::int32_t>> seqs, std::string name = "memory")
      : seqs_(std::move(seqs)), name_(std::move(name)) {
    for (const auto& s : seqs_) total_ += s.size();
  }
  std::size_t size() const { return seqs_.size(); }
  std::size_t length(std::size_t i) const { return at(i).size(); }
  std::uint64_t total_tokens() const { return total_; }
  std::string describe() const { return name_; }
  void read(std::size_t i, std::size_t offset, std::span<std::int32_t> out) const {
    const auto& s = at(i);
    if (offset > s.size() || out.size() > s.size() - offset)
      fail("{}: read of tokens [{}, {}) of sequence {} beyond its length {}", name_, offset, offset + out.size(), i,
           s.size());
    std::copy(s.begin() + std::ptrdiff_t(offset), s.begin() + std::ptrdiff_t(offset + out.size()), out.begin());
  }

 private:
  const std::vector<std::int32_t>& at(std::size_t i) const {
    if (i >= seqs_.size()) fail("{}: sequence {} out of range (size {})", name_, i, seqs_.size());
    return seqs_[i];
  }
  std::vector<std::vector<std::int32_t>> seqs_;
  std::string name_;
  std::uint64_t total_ = 0;
};

static_assert(TokenSource<MemorySource>);

}  // namespace doremi
