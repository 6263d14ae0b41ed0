#pragma once
// The library's version: the one place it is written. CMake's project()
// (CMakeLists.txt) and the Python package's metadata (python/pyproject.toml)
// read it from this file; output-folder fingerprints record it.
#include <string_view>

#define DOREMI_VERSION "0.1.0"

namespace doremi {
inline constexpr std::string_view version = DOREMI_VERSION;
}  // namespace doremi
