#pragma once
// Unicode helpers for the tokenizers: UTF-8 validation and decoding, the
// character classes of the GPT-2 split pattern (\p{L}, \p{N}, \s) and NFC.
// Character data comes from libutf8proc; classes are cached in a two-level
// table built on first use (a few milliseconds).
//
//   unicode::utf8_sequence_length(s, i) length of the valid character at byte i, or 0
//   unicode::invalid_utf8_offset(s)     byte offset of the first invalid byte, or npos
//   unicode::require_utf8(s, what)      throws doremi::Error naming that offset
//   unicode::decode(s, i)               code point at byte i (valid UTF-8), advances i
//   unicode::char_class(cp)             letter / number / space / other
//   unicode::nfc_append(s, out)         appends NFC(s) (fast path for ASCII and inert runs)
//   unicode::utf8_lossy(s)              s with invalid sequences replaced by U+FFFD (as Rust and Python)
//
// \s is Oniguruma's (and Rust's char::is_whitespace): U+0009–U+000D, U+0020,
// U+0085 and the categories Zs, Zl, Zp. \p{L} is Lu Ll Lt Lm Lo, \p{N} is Nd Nl No.
//
// HF tokenizers 0.21 matches the split pattern with Oniguruma 6.9.8, whose
// tables are Unicode 14.0; letters and numbers assigned later (Unicode 15.0,
// 15.1) are unassigned there, hence "other". utf8proc 2.8 knows Unicode 15.0,
// so those code points are classed as other here too (kAfterUnicode14 below);
// tests/test_tokenizer.cpp compares the classes with HF's pre-tokenizer.
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <utf8proc.h>

#include "doremi/core/error.hpp"

namespace doremi::unicode {

inline constexpr std::size_t npos = std::string_view::npos;

// The library's one UTF-8 validator. The length (1 to 4) of the valid,
// shortest-form UTF-8 sequence starting at byte i < s.size(), or 0 when the
// bytes there are none: no overlong forms, no surrogates, nothing above
// U+10FFFF, no truncated sequence.
inline std::size_t utf8_sequence_length(std::string_view s, std::size_t i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  const unsigned c = p[i];
  if (c < 0x80) return 1;
  std::size_t len;
  unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) len = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;       // overlong
    else if (c == 0xED) hi = 0x9F;  // surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;       // overlong
    else if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else
    return 0;
  if (i + 1 >= n || p[i + 1] < lo || p[i + 1] > hi) return 0;
  for (std::size_t k = 2; k < len; ++k)
    if (i + k >= n || (p[i + k] & 0xC0) != 0x80) return 0;
  return len;
}

// The offset of the first byte that does not start (or continue) a valid
// UTF-8 sequence (utf8_sequence_length), or npos.
inline std::size_t invalid_utf8_offset(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  std::size_t i = 0;
  while (i < n) {
    // Eight ASCII bytes at a time.
    while (i + 8 <= n) {
      std::uint64_t w;
      __builtin_memcpy(&w, p + i, 8);
      if (w & 0x8080808080808080ULL) break;
      i += 8;
    }
    if (i >= n) break;
    const std::size_t len = utf8_sequence_length(s, i);
    if (len == 0) return i;
    i += len;
  }
  return npos;
}

// Throws doremi::Error when s is not valid UTF-8; `what` names the input.
inline void require_utf8(std::string_view s, std::string_view what = "text") {
  const std::size_t bad = invalid_utf8_offset(s);
  if (bad != npos)
    fail("{} is not valid UTF-8 at byte offset {} (byte 0x{:02X}; {} bytes in all)", what, bad,
         unsigned(static_cast<unsigned char>(s[bad])), s.size());
}

// Decodes the code point at byte i of valid UTF-8 and moves i past it.
inline char32_t decode(std::string_view s, std::size_t& i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const unsigned c = p[i];
  if (c < 0x80) {
    ++i;
    return c;
  }
  if (c < 0xE0) {
    const char32_t cp = ((c & 0x1F) << 6) | (p[i + 1] & 0x3F);
    i += 2;
    return cp;
  }
  if (c < 0xF0) {
    const char32_t cp = ((c & 0x0F) << 12) | ((p[i + 1] & 0x3F) << 6) | (p[i + 2] & 0x3F);
    i += 3;
    return cp;
  }
  const char32_t cp = ((c & 0x07) << 18) | ((p[i + 1] & 0x3F) << 12) | ((p[i + 2] & 0x3F) << 6) | (p[i + 3] & 0x3F);
  i += 4;
  return cp;
}

inline void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(char(cp));
  } else if (cp < 0x800) {
    out.push_back(char(0xC0 | (cp >> 6)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(char(0xE0 | (cp >> 12)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(char(0xF0 | (cp >> 18)));
    out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  }
}

// `s` made valid UTF-8 the way Rust's String::from_utf8_lossy (HF
// tokenizers' decoders) and Python's bytes.decode("utf-8", "replace") do it:
// valid sequences are kept, and each maximal subpart of an invalid one (a lead
// byte followed by the continuation bytes that could still complete it) becomes
// one U+FFFD.
inline std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (std::size_t i = 0; i < s.size();) {
    if (const std::size_t n = utf8_sequence_length(s, i)) {
      out.append(s.substr(i, n));
      i += n;
      continue;
    }
    const unsigned c = p[i];
    std::size_t need = 0;
    unsigned lo = 0x80, hi = 0xBF;  // range of the second byte
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
      need = 2;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      need = 3;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    }
    std::size_t k = 1;
    while (k <= need && i + k < s.size()) {
      const unsigned b = p[i + k];
      if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) break;
      ++k;
    }
    out += "\xEF\xBF\xBD";
    i += k;
  }
  return out;
}

enum CharClass : std::uint8_t { other = 0, letter = 1, number = 2, space = 3 };

namespace detail {

inline constexpr std::uint8_t kClassMask = 3;
inline constexpr std::uint8_t kNfcSensitive = 4;  // may change under NFC (with its neighbours)
inline constexpr std::uint8_t kAlnum = 8;          // approximates Rust's char::is_alphanumeric

// Letters and numbers assigned after Unicode 14.0 (15.0: Kawi, Nag Mundari,
// CJK Ext. H, ...; 15.1: CJK Ext. I), found by comparing with HF's pre-tokenizer.
inline constexpr char32_t kAfterUnicode14[][2] = {
    {0x1123F, 0x11240}, {0x11F02, 0x11F02}, {0x11F04, 0x11F33}, {0x11F50, 0x11F59}, {0x1342F, 0x1342F},
    {0x13441, 0x13446}, {0x1B132, 0x1B132}, {0x1B155, 0x1B155}, {0x1D2C0, 0x1D2D3}, {0x1DF25, 0x1DF2A},
    {0x1E030, 0x1E06D}, {0x1E4D0, 0x1E4EB}, {0x1E4F0, 0x1E4F9}, {0x2B739, 0x2B739}, {0x31350, 0x323AF},
    {0x2EBF0, 0x2EE5D}};

inline bool after_unicode14(char32_t c) {
  for (const auto& r : kAfterUnicode14)
    if (c >= r[0] && c <= r[1]) return true;
  return false;
}

inline bool is_white_space(char32_t c, int category) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x85 || category == UTF8PROC_CATEGORY_ZS ||
         category == UTF8PROC_CATEGORY_ZL || category == UTF8PROC_CATEGORY_ZP;
}

inline std::uint8_t compute_info(char32_t c) {
  const utf8proc_property_t* p = utf8proc_get_property(utf8proc_int32_t(c));
  const int cat = p->category;
  std::uint8_t info = other;
  if (is_white_space(c, cat)) info = space;
  else if (c >= 0x10000 && after_unicode14(c)) info = other;
  else if (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) info = letter;
  else if (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO) info = number;
  if (info == letter || info == number) info |= kAlnum;
  if (c >= 0x80) {
    const bool canonical_decomposition = p->decomp_seqindex != UINT16_MAX && p->decomp_type == 0;
    const bool composes_as_second = p->comb_index != UINT16_MAX && p->comb_index >= 0x8000;
    const bool hangul_jamo = c >= 0x1100 && c <= 0x11FF;
    if (p->combining_class != 0 || canonical_decomposition || composes_as_second || hangul_jamo)
      info |= kNfcSensitive;
  }
  return info;
}

// Two-level table over all code points: 4352 pages of 256, identical pages shared.
struct InfoTable {
  std::vector<std::uint16_t> page_of;  // code point >> 8 -> page index
  std::vector<std::uint8_t> pages;     // 256 bytes per distinct page

  InfoTable() {
    constexpr std::size_t kPages = 0x110000 >> 8;
    page_of.resize(kPages);
    std::unordered_map<std::string, std::uint16_t> seen;
    std::string page(256, '\0');
    for (std::size_t pg = 0; pg < kPages; ++pg) {
      for (std::size_t k = 0; k < 256; ++k) page[k] = char(compute_info(char32_t((pg << 8) | k)));
      auto [it, fresh] = seen.try_emplace(page, std::uint16_t(seen.size()));
      if (fresh) pages.insert(pages.end(), page.begin(), page.end());
      page_of[pg] = it->second;
    }
  }
  std::uint8_t operator()(char32_t c) const {
    if (c >= 0x110000) return other;
    return pages[(std::size_t(page_of[c >> 8]) << 8) | (c & 0xFF)];
  }
};

inline const InfoTable& info_table() {
  static const InfoTable table;
  return table;
}

struct AsciiTable {
  std::array<std::uint8_t, 128> info{};
  constexpr AsciiTable() {
    for (int c = 0; c < 128; ++c) {
      std::uint8_t v = other;
      if ((c >= 0x09 && c <= 0x0D) || c == ' ') v = space;
      else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) v = letter | kAlnum;
      else if (c >= '0' && c <= '9') v = number | kAlnum;
      info[std::size_t(c)] = v;
    }
  }
};
inline constexpr AsciiTable kAscii{};

}  // namespace detail

// Class and flags of a code point (see detail::k* for the flag bits).
inline std::uint8_t char_info(char32_t c) {
  return c < 0x80 ? detail::kAscii.info[c] : detail::info_table()(c);
}
inline CharClass char_class(char32_t c) { return CharClass(char_info(c) & detail::kClassMask); }
inline bool is_whitespace(char32_t c) { return char_class(c) == space; }
inline bool is_alphanumeric(char32_t c) { return (char_info(c) & detail::kAlnum) != 0; }

// NFC of valid UTF-8 through utf8proc, appended to out.
inline void nfc_append_slow(std::string_view s, std::string& out) {
  if (s.empty()) return;
  utf8proc_uint8_t* result = nullptr;
  const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), utf8proc_ssize_t(s.size()),
                              &result, utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) fail("NFC normalization failed: {}", utf8proc_errmsg(n));
  std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> guard(result, &std::free);
  out.append(reinterpret_cast<const char*>(result), std::size_t(n));
}

// Appends NFC(s) to out; s must be valid UTF-8. ASCII is copied as is; a run of
// non-ASCII characters goes through utf8proc (with the ASCII character before
// it, which it may compose with) only when one of them may change under NFC.
// ASCII characters are starters that never compose with what precedes them, so
// the runs normalize independently.
inline void nfc_append(std::string_view s, std::string& out) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  std::size_t i = 0;
  while (i < n) {
    std::size_t a = i;
    while (a < n && p[a] < 0x80) ++a;
    if (a == n) {
      out.append(s.substr(i));
      return;
    }
    // Non-ASCII run [a, b).
    std::size_t b = a;
    bool sensitive = false;
    while (b < n && p[b] >= 0x80) {
      const char32_t cp = decode(s, b);
      if (detail::info_table()(cp) & detail::kNfcSensitive) sensitive = true;
    }
    if (!sensitive) {
      out.append(s.substr(i, b - i));
    } else {
      const std::size_t from = a > i ? a - 1 : a;  // the ASCII starter before the run
      out.append(s.substr(i, from - i));
      nfc_append_slow(s.substr(from, b - from), out);
    }
    i = b;
  }
}

inline std::string nfc(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  nfc_append(s, out);
  return out;
}

}  // namespace doremi::unicode
