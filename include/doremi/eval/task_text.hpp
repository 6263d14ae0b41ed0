#pragma once
// The string operations of the public DoReMi downstream protocol, equal to
// Python's (3.11, Unicode 14.0) on valid UTF-8:
//
//   python::strip(s)     str.strip(): the 29 code points of str.isspace() from both ends
//   python::lower(s)     str.lower(): full lower-case mapping (U+0130 -> "i\u0307", final sigma)
//   python::remove_punctuation(s)   s.translate(str.maketrans('', '', string.punctuation)) (ASCII)
//   clean_up_tokenization(s)        transformers' clean_up_tokenization (4.47)
//   postprocess_prediction(s)       the public pred_postprocess_default
//   normalize_answer(s)             the public eval_func_default's answer normalisation
//
// lower() takes the simple mappings from utf8proc (Unicode 15.0; Unicode 15.0
// added no case pairs, so these equal Python's 14.0 tables) plus the one
// unconditional multi-character lower-case mapping (U+0130) and Python's
// final-sigma rule: U+03A3 becomes U+03C2 when a cased letter precedes it and
// none follows it, skipping case-ignorable characters. "Cased" here is a
// letter of category Lu/Ll/Lt or one with a case mapping; "case-ignorable" is
// categories Mn, Me, Cf, Lm, Sk plus the Word_Break MidLetter/MidNumLet/
// Single_Quote characters (' . : U+00B7 U+0387 U+05F4 U+2018 U+2019 U+2024
// U+2027 U+FE13 U+FE52 U+FE55 U+FF07 U+FF0E U+FF1A). tests/test_downstream.cpp
// checks lower() of every code point and strip() against Python.
// Input must be valid UTF-8 (the decoder's output always is); invalid input
// is a doremi::Error.
#include <string>
#include <string_view>

#include <utf8proc.h>

#include "doremi/data/unicode.hpp"

namespace doremi {

namespace python {

// Python's str.isspace() for one code point.
inline bool isspace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// str.strip() with no arguments.
inline std::string strip(std::string_view s) {
  unicode::require_utf8(s, "text to strip");
  std::size_t begin = 0, end = s.size();
  while (begin < end) {
    std::size_t i = begin;
    if (!isspace(unicode::decode(s, i))) break;
    begin = i;
  }
  while (end > begin) {
    std::size_t j = end - 1;  // step back to the start of the last character
    while (j > begin && (static_cast<unsigned char>(s[j]) & 0xC0) == 0x80) --j;
    std::size_t i = j;
    if (!isspace(unicode::decode(s, i))) break;
    end = j;
  }
  return std::string(s.substr(begin, end - begin));
}

namespace detail {
inline bool case_ignorable(char32_t c) {
  switch (c) {
    case 0x27: case 0x2E: case 0x3A: case 0xB7: case 0x387: case 0x5F4: case 0x2018: case 0x2019: case 0x2024:
    case 0x2027: case 0xFE13: case 0xFE52: case 0xFE55: case 0xFF07: case 0xFF0E: case 0xFF1A:
      return true;
    default: break;
  }
  const auto cat = utf8proc_category(utf8proc_int32_t(c));
  return cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_ME || cat == UTF8PROC_CATEGORY_CF ||
         cat == UTF8PROC_CATEGORY_LM || cat == UTF8PROC_CATEGORY_SK;
}
inline bool cased(char32_t c) {
  const auto cat = utf8proc_category(utf8proc_int32_t(c));
  if (cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT) return true;
  const auto i = utf8proc_int32_t(c);
  return utf8proc_tolower(i) != i || utf8proc_toupper(i) != i;
}
}  // namespace detail

// str.lower().
inline std::string lower(std::string_view s) {
  unicode::require_utf8(s, "text to lower-case");
  std::u32string cps;
  for (std::size_t i = 0; i < s.size();) cps.push_back(unicode::decode(s, i));
  std::string out;
  out.reserve(s.size());
  for (std::size_t k = 0; k < cps.size(); ++k) {
    const char32_t c = cps[k];
    if (c < 0x80) {
      out.push_back(c >= 'A' && c <= 'Z' ? char(c + 32) : char(c));
    } else if (c == 0x130) {
      out += "i\xCC\x87";  // U+0069 U+0307 (SpecialCasing)
    } else if (c == 0x3A3) {
      std::size_t j = k;
      while (j > 0 && detail::case_ignorable(cps[j - 1])) --j;
      bool final_sigma = j > 0 && detail::cased(cps[j - 1]);
      if (final_sigma) {
        std::size_t n = k + 1;
        while (n < cps.size() && detail::case_ignorable(cps[n])) ++n;
        final_sigma = n == cps.size() || !detail::cased(cps[n]);
      }
      unicode::append_utf8(out, final_sigma ? 0x3C2 : 0x3C3);
    } else {
      unicode::append_utf8(out, char32_t(utf8proc_tolower(utf8proc_int32_t(c))));
    }
  }
  return out;
}

// Removes Python's string.punctuation: the 32 ASCII characters !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~.
inline std::string remove_punctuation(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    const bool punct = (u >= 0x21 && u <= 0x2F) || (u >= 0x3A && u <= 0x40) || (u >= 0x5B && u <= 0x60) ||
                       (u >= 0x7B && u <= 0x7E);
    if (!punct) out.push_back(c);
  }
  return out;
}

// Python's s.replace(from, to): every non-overlapping occurrence, left to right.
inline std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  std::size_t pos = 0;
  for (std::size_t hit; (hit = s.find(from, pos)) != std::string_view::npos; pos = hit + from.size()) {
    out.append(s.substr(pos, hit - pos));
    out.append(to);
  }
  out.append(s.substr(pos));
  return out;
}

}  // namespace python

// transformers' PreTrainedTokenizerBase.clean_up_tokenization (4.47), which
// batch_decode applies with clean_up_tokenization_spaces=True (the default of
// the transformers versions the public code ran).
inline std::string clean_up_tokenization(std::string_view s) {
  static constexpr std::string_view pairs[][2] = {{" .", "."},     {" ?", "?"},     {" !", "!"},   {" ,", ","},
                                                  {" ' ", "'"},    {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"},
                                                  {" 've", "'ve"}, {" 're", "'re"}};
  std::string out(s);
  for (const auto& p : pairs) out = python::replace_all(out, p[0], p[1]);
  return out;
}

// The public pred_postprocess_default: strip().lower(), cut at the first '\n',
// strip().lower() again, remove ASCII punctuation.
inline std::string postprocess_prediction(std::string_view pred) {
  std::string s = python::lower(python::strip(pred));
  if (const auto nl = s.find('\n'); nl != std::string::npos) s.resize(nl);
  return python::remove_punctuation(python::lower(python::strip(s)));
}

// The public eval_func_default's answer normalisation: strip().lower(), remove punctuation.
inline std::string normalize_answer(std::string_view answer) {
  return python::remove_punctuation(python::lower(python::strip(answer)));
}

}  // namespace doremi
