#pragma once
// Token id range checks shared by the token sources. A wrong vocabulary (data
// tokenized for another model) shows up as ids >= vocab; checking them where
// a batch is read costs one pass over tokens already in cache, and turns an
// out-of-bounds embedding lookup into an error naming the file.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "doremi/core/error.hpp"

namespace doremi {

// Throws doremi::Error naming `where`, the sequence, the position and the id
// when a token lies outside [0, vocab_size). vocab_size <= 0 checks nothing.
inline void check_token_range(std::span<const std::int32_t> tokens, std::int64_t vocab_size, std::string_view where,
                              std::size_t sequence, std::size_t offset) {
  if (vocab_size <= 0) return;
  for (std::size_t j = 0; j < tokens.size(); ++j) {
    const std::int64_t t = tokens[j];
    if (t < 0 || t >= vocab_size)
      fail("{}: token id {} at position {} of sequence {} is outside the vocabulary [0, {})", where, t, offset + j,
           sequence, vocab_size);
  }
}

}  // namespace doremi
