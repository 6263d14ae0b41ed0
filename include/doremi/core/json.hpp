#pragma once
// Reading JSON files with errors that name the file (nlohmann's own messages
// say only where in the text the problem is).
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>

#include <nlohmann/json.hpp>

#include "doremi/core/error.hpp"

namespace doremi {

// Parses the whole file. Throws doremi::Error naming the file when it cannot
// be read or is not valid JSON (with the parser's byte position).
inline nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail("cannot read JSON file {}: it is a directory", path.string());
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open JSON file {}: {}", path.string(), std::strerror(errno));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("cannot read JSON file {}: {}", path.string(), std::strerror(errno));
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    fail("{}: invalid JSON at byte {}: {}", path.string(), e.byte, e.what());
  }
}

}  // namespace doremi
