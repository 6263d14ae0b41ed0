#pragma once
// doremi::Error: the one exception type for bad input and failed runs.
// Messages name what was wrong and where (file, tensor, field, step).
#include <stdexcept>
#include <string>
#include <utility>

#include <fmt/format.h>

namespace doremi {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Throws doremi::Error with a compile-time-checked format string.
template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace doremi
