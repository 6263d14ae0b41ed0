#pragma once
// Added tokens (HuggingFace's AddedVocabulary): strings such as <|endoftext|>
// that are cut out of the text before pre-tokenization and map straight to
// their id. Matching is leftmost-longest over the bytes (HF uses an
// Aho-Corasick automaton with MatchKind::LeftmostLongest), then each match is
// filtered and widened by the token's flags exactly as HF's find_matches does:
//
//   single_word  the match is dropped unless no alphanumeric character touches it
//   lstrip       whitespace before the match is swallowed into it
//   rstrip       whitespace after the match is swallowed into it
//
// One AddedTokenMatcher holds the tokens of one kind: HF matches tokens with
// normalized=false on the raw text, then normalizes the remaining pieces and
// matches tokens with normalized=true on those.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "doremi/data/unicode.hpp"

namespace doremi {

struct AddedToken {
  std::string content;
  std::int32_t id = -1;
  bool special = false;
  bool normalized = true;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
};

class AddedTokenMatcher {
 public:
  bool empty() const { return tokens_.empty(); }

  // `pattern` is what is searched for (the normalized content for normalized
  // tokens); a later pattern equal to an earlier one replaces it.
  void add(const AddedToken& token, std::string pattern) {
    if (pattern.empty()) return;
    if (nodes_.empty()) nodes_.emplace_back();
    std::int32_t node = 0;
    for (unsigned char b : pattern) {
      std::int32_t next = child(node, b);
      if (next < 0) {
        next = std::int32_t(nodes_.size());
        nodes_.emplace_back();
        nodes_[std::size_t(node)].next.emplace_back(b, next);
      }
      node = next;
    }
    auto& slot = nodes_[std::size_t(node)].token;
    if (slot < 0) {
      slot = std::int32_t(tokens_.size());
      tokens_.push_back(token);
    } else {
      tokens_[std::size_t(slot)] = token;
    }
    first_byte_[static_cast<unsigned char>(pattern[0])] = true;
  }

  // Splits s (valid UTF-8) into text pieces and tokens, in order:
  // on_text(std::string_view) for each non-empty stretch without tokens,
  // on_token(std::int32_t id) for each match.
  template <class OnText, class OnToken>
  void split(std::string_view s, OnText&& on_text, OnToken&& on_token) const {
    if (tokens_.empty()) {
      if (!s.empty()) on_text(s);
      return;
    }
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const std::size_t n = s.size();
    std::size_t start_offset = 0;  // end of the last emitted piece
    std::size_t i = 0;
    while (i < n) {
      if (!first_byte_[p[i]]) {
        ++i;
        continue;
      }
      // Longest pattern starting at i.
      std::int32_t node = 0, best = -1;
      std::size_t best_end = 0;
      for (std::size_t j = i; j < n; ++j) {
        node = child(node, p[j]);
        if (node < 0) break;
        if (nodes_[std::size_t(node)].token >= 0) {
          best = nodes_[std::size_t(node)].token;
          best_end = j + 1;
        }
      }
      if (best < 0) {
        ++i;
        continue;
      }
      const AddedToken& tok = tokens_[std::size_t(best)];
      std::size_t start = i, stop = best_end;
      i = best_end;  // the automaton resumes after the match, kept or not
      if (tok.single_word) {
        const bool start_space = start == 0 || !last_is_alnum(s.substr(0, start));
        const bool stop_space = stop == n || !first_is_alnum(s.substr(stop));
        if (!start_space || !stop_space) continue;
      }
      if (tok.lstrip) start = std::max(leftmost_space_at_end(s.substr(0, start)), start_offset);
      if (tok.rstrip) stop += rightmost_space_at_start(s.substr(stop));
      if (start_offset < start) on_text(s.substr(start_offset, start - start_offset));
      on_token(tok.id);
      start_offset = stop;
    }
    if (start_offset < n) on_text(s.substr(start_offset));
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, std::int32_t>> next;
    std::int32_t token = -1;
  };

  std::int32_t child(std::int32_t node, unsigned char b) const {
    for (const auto& [byte, to] : nodes_[std::size_t(node)].next)
      if (byte == b) return to;
    return -1;
  }

  static char32_t last_char(std::string_view s) {
    std::size_t i = s.size() - 1;
    while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
    return unicode::decode(s, i);
  }
  static bool last_is_alnum(std::string_view s) { return !s.empty() && unicode::is_alphanumeric(last_char(s)); }
  static bool first_is_alnum(std::string_view s) {
    std::size_t i = 0;
    return !s.empty() && unicode::is_alphanumeric(unicode::decode(s, i));
  }
  // Start of the whitespace that ends s (s.size() when none).
  static std::size_t leftmost_space_at_end(std::string_view s) {
    std::size_t left = s.size();
    while (left > 0) {
      std::size_t i = left - 1;
      while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
      std::size_t j = i;
      if (!unicode::is_whitespace(unicode::decode(s, j))) break;
      left = i;
    }
    return left;
  }
  // Length of the whitespace that starts s.
  static std::size_t rightmost_space_at_start(std::string_view s) {
    std::size_t i = 0;
    while (i < s.size()) {
      std::size_t j = i;
      if (!unicode::is_whitespace(unicode::decode(s, j))) break;
      i = j;
    }
    return i;
  }

  std::vector<Node> nodes_;
  std::vector<AddedToken> tokens_;
  std::array<bool, 256> first_byte_{};
};

}  // namespace doremi
