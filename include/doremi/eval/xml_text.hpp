#pragma once
// Text for SVG and HTML: escaping (any domain name is safe in an attribute or
// element) and shortening to whole characters with "…".
#include <cstddef>
#include <string>
#include <string_view>

#include "doremi/data/unicode.hpp"

namespace doremi {

namespace report_detail {

// The length of the character starting at s[i] (unicode::utf8_sequence_length,
// the library's one UTF-8 validator), or 0 when the bytes there are not valid
// UTF-8 or encode U+FFFE or U+FFFF, which XML does not allow.
inline std::size_t utf8_char_len(std::string_view s, std::size_t i) {
  const std::size_t n = unicode::utf8_sequence_length(s, i);
  if (n == 3 && static_cast<unsigned char>(s[i]) == 0xEF && static_cast<unsigned char>(s[i + 1]) == 0xBF &&
      (static_cast<unsigned char>(s[i + 2]) & 0xFE) == 0xBE)
    return 0;
  return n;
}

// Number of characters (code points) in valid UTF-8; invalid bytes count one each.
inline std::size_t utf8_length(std::string_view s) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < s.size(); ++n) {
    const std::size_t len = utf8_char_len(s, i);
    i += len ? len : 1;
  }
  return n;
}

// The first `max_chars` characters of s, with "…" replacing the rest when cut.
inline std::string utf8_shorten(std::string_view s, std::size_t max_chars) {
  if (max_chars == 0 || utf8_length(s) <= max_chars) return std::string(s);
  std::size_t i = 0, n = 0;
  while (i < s.size() && n + 1 < max_chars) {
    const std::size_t len = utf8_char_len(s, i);
    i += len ? len : 1;
    ++n;
  }
  return std::string(s.substr(0, i)) + "\u2026";
}

}  // namespace report_detail

// Text made safe for XML and HTML element content and quoted attribute values:
// & < > " ' become entities; bytes that are not valid UTF-8, and control
// characters XML forbids (all below U+0020 but tab, newline, return), become
// U+FFFD.
inline std::string xml_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 16);
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t len = report_detail::utf8_char_len(s, i);
    if (len == 0) {
      out += "\uFFFD";
      ++i;
      continue;
    }
    if (len > 1) {
      out.append(s.substr(i, len));
      i += len;
      continue;
    }
    const char c = s[i++];
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      case '\t':
      case '\n':
      case '\r': out += c; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) out += "\uFFFD";
        else out += c;
    }
  }
  return out;
}

}  // namespace doremi
