#pragma once
// One tokenizer type for programs that take `--tokenizer PATH|bytes`:
// either the plain ByteTokenizer (ids 0–255 are bytes, 256 ends a document)
// or a byte-level BPE tokenizer loaded from a file (see bpe_tokenizer.hpp).
//
//   Tokenizer tok = load_tokenizer("bytes");            // or a tokenizer.json / folder path
//   std::vector<std::int32_t> ids = tok.encode(text);
//   tok.decode(ids); tok.vocab_size(); tok.end_of_text_id(); tok.describe();
//   tok.decode_text(ids, /*skip_special_tokens=*/true);   // generated text, as HF decodes it
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "doremi/core/error.hpp"
#include "doremi/data/bpe_tokenizer.hpp"
#include "doremi/data/byte_tokenizer.hpp"

namespace doremi {

class Tokenizer {
 public:
  explicit Tokenizer(ByteTokenizer t = {}) : impl_(t) {}
  explicit Tokenizer(BpeTokenizer t) : impl_(std::move(t)) {}

  std::vector<std::int32_t> encode(std::string_view text) const {
    return std::visit([&](const auto& t) { return t.encode(text); }, impl_);
  }
  void encode_append(std::string_view text, std::vector<std::int32_t>& out) const {
    if (const auto* b = std::get_if<BpeTokenizer>(&impl_)) return b->encode_append(text, out);
    for (unsigned char c : text) out.push_back(c);
  }
  std::string decode(std::span<const std::int32_t> ids) const {
    if (const auto* b = std::get_if<BpeTokenizer>(&impl_)) return b->decode(ids);
    std::string s;
    s.reserve(ids.size());
    for (const std::int32_t id : ids) {
      if (id < 0 || id > ByteTokenizer::end_of_text)
        fail("cannot decode id {}: the byte tokenizer has ids 0-{}", id, ByteTokenizer::end_of_text);
      if (id < 256) s.push_back(char(id));
    }
    return s;
  }
  // Text of generated ids as HF's `decode(ids, skip_special_tokens=...)` gives
  // it (BpeTokenizer::decode_text; for the byte tokenizer, the end-of-text id
  // is the special token and other ids must be in 0-256): invalid UTF-8 becomes U+FFFD.
  std::string decode_text(std::span<const std::int32_t> ids, bool skip_special_tokens = true) const {
    if (const auto* b = std::get_if<BpeTokenizer>(&impl_)) return b->decode_text(ids, skip_special_tokens);
    std::string s;
    for (const std::int32_t id : ids) {
      if (id < 0 || id > ByteTokenizer::end_of_text)
        fail("cannot decode id {}: the byte tokenizer has ids 0-{}", id, ByteTokenizer::end_of_text);
      if (id < 256) s.push_back(char(id));
      else if (!skip_special_tokens) s += "<|endoftext|>";
    }
    return unicode::utf8_lossy(s);
  }
  int vocab_size() const {
    if (const auto* b = std::get_if<BpeTokenizer>(&impl_)) return b->vocab_size();
    return ByteTokenizer::vocab_size;
  }
  std::int32_t end_of_text_id() const {
    if (const auto* b = std::get_if<BpeTokenizer>(&impl_)) return b->end_of_text_id();
    return ByteTokenizer::end_of_text;
  }
  std::string describe() const {
    if (const auto* b = std::get_if<BpeTokenizer>(&impl_)) return b->describe();
    return "byte tokenizer (257 ids)";
  }
  bool is_bytes() const { return std::holds_alternative<ByteTokenizer>(impl_); }
  const BpeTokenizer* bpe() const { return std::get_if<BpeTokenizer>(&impl_); }

 private:
  std::variant<ByteTokenizer, BpeTokenizer> impl_;
};

// "bytes" -> the byte tokenizer; anything else is a path for BpeTokenizer::from_file.
inline Tokenizer load_tokenizer(std::string_view spec) {
  if (spec == "bytes") return Tokenizer(ByteTokenizer{});
  if (spec.empty()) fail("empty tokenizer spec: give \"bytes\" or a path to tokenizer.json / a tokenizer folder");
  return Tokenizer(BpeTokenizer::from_file(std::filesystem::path(std::string(spec))));
}

}  // namespace doremi
