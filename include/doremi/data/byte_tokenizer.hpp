#pragma once
// The plain byte tokenizer for demos: each UTF-8 byte is its own id (0–255),
// and id 256 ends a document. Vocabulary 257, matching presets::tiny.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace doremi {

struct ByteTokenizer {
  static constexpr std::int32_t end_of_text = 256;
  static constexpr int vocab_size = 257;

  std::vector<std::int32_t> encode(std::string_view text) const {
    std::vector<std::int32_t> ids;
    ids.reserve(text.size());
    for (unsigned char c : text) ids.push_back(c);
    return ids;
  }
  std::string decode(const std::vector<std::int32_t>& ids) const {
    std::string s;
    for (auto id : ids)
      if (id >= 0 && id < 256) s.push_back(char(id));
    return s;
  }
};

}  // namespace doremi
