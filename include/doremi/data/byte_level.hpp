#pragma once
// GPT-2's byte-level scheme, as HuggingFace's ByteLevel pre-tokenizer and
// decoder apply it:
//
//   byte_level::byte_to_char()      GPT-2's bytes_to_unicode table (byte -> code point)
//   byte_level::char_to_byte(cp)    its inverse (-1 for code points outside it)
//   byte_level::bytes_to_token(b)   raw bytes -> vocabulary spelling ("Ġthe")
//   byte_level::token_to_bytes(t)   vocabulary spelling -> raw bytes (false when a
//                                   character is outside the table)
//   byte_level::split_gpt2(s, emit) the GPT-2 split pattern
//       's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//     written out by hand (leftmost-first alternation, greedy runs), calling
//     emit(std::string_view) for each piece in order; s must be valid UTF-8.
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "doremi/data/unicode.hpp"

namespace doremi::byte_level {

namespace detail {

struct Tables {
  std::array<char32_t, 256> to_char{};
  std::array<std::int16_t, 512> to_byte{};  // code points < 512 (the table maps into [0x21, 0x143])
  constexpr Tables() {
    for (auto& b : to_byte) b = -1;
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_char[std::size_t(b)] = printable ? char32_t(b) : char32_t(256 + extra++);
      to_byte[to_char[std::size_t(b)]] = std::int16_t(b);
    }
  }
};
inline constexpr Tables kTables{};

}  // namespace detail

inline const std::array<char32_t, 256>& byte_to_char() { return detail::kTables.to_char; }

inline int char_to_byte(char32_t cp) { return cp < 512 ? detail::kTables.to_byte[cp] : -1; }

inline std::string bytes_to_token(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) unicode::append_utf8(out, detail::kTables.to_char[b]);
  return out;
}

// Appends the raw bytes spelled by a vocabulary token; returns false (leaving
// out unspecified) when the token is not valid UTF-8 or has a character
// outside the table.
inline bool token_to_bytes(std::string_view token, std::string& out) {
  if (unicode::invalid_utf8_offset(token) != unicode::npos) return false;
  std::size_t i = 0;
  while (i < token.size()) {
    const int b = char_to_byte(unicode::decode(token, i));
    if (b < 0) return false;
    out.push_back(char(b));
  }
  return true;
}

template <class Emit>
void split_gpt2(std::string_view s, Emit&& emit) {
  using unicode::CharClass;
  const std::size_t n = s.size();
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  // Class of the character at byte i; `next` receives the byte after it.
  auto class_at = [&](std::size_t i, std::size_t& next) -> CharClass {
    if (p[i] < 0x80) {
      next = i + 1;
      return CharClass(unicode::detail::kAscii.info[p[i]] & unicode::detail::kClassMask);
    }
    next = i;
    return unicode::char_class(unicode::decode(s, next));
  };
  std::size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    // 's 't 're 've 'm 'll 'd (ASCII lowercase only, as the pattern is case-sensitive)
    if (c == '\'' && i + 1 < n) {
      const unsigned char d = p[i + 1];
      if (d == 's' || d == 't' || d == 'm' || d == 'd') {
        emit(s.substr(i, 2));
        i += 2;
        continue;
      }
      if (i + 2 < n) {
        const unsigned char e = p[i + 2];
        if ((d == 'r' && e == 'e') || (d == 'v' && e == 'e') || (d == 'l' && e == 'l')) {
          emit(s.substr(i, 3));
          i += 3;
          continue;
        }
      }
    }
    // " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+": an optional space, then a run of one class.
    std::size_t after = 0;
    CharClass k;
    if (c == ' ' && i + 1 < n) {
      k = class_at(i + 1, after);
      if (k == unicode::space) k = class_at(i, after);  // the space opens a whitespace run
    } else {
      k = class_at(i, after);
    }
    if (k != unicode::space) {
      std::size_t e = after, next = 0;
      while (e < n && class_at(e, next) == k) e = next;
      emit(s.substr(i, e - i));
      i = e;
      continue;
    }
    // "\s+(?!\S)|\s+": a whitespace run; when a non-space follows it, its last
    // character is left to start the next piece (unless it is the only one).
    std::size_t e = i, last = i, next = 0;
    while (e < n && class_at(e, next) == unicode::space) {
      last = e;
      e = next;
    }
    if (e < n && last > i) e = last;
    emit(s.substr(i, e - i));
    i = e;
  }
}

}  // namespace doremi::byte_level
