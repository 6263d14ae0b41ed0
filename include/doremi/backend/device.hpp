#pragma once
// A run-time device choice, as the command line and the run config spell it:
// "cpu", "cuda" (GPU 0) or "cuda:N". Parsing needs no CUDA; whether a GPU is
// there is checked when a backend::Cuda is made for it.
//
//   const doremi::Device d = doremi::Device::parse("cuda:1", "--device");
#include <charconv>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "doremi/core/error.hpp"

namespace doremi {

struct Device {
  enum class Kind { cpu, cuda };
  Kind kind = Kind::cpu;
  int index = 0;  // the GPU, for cuda

  static Device parse(std::string_view s, std::string_view where) {
    if (s == "cpu") return {};
    if (s == "cuda") return {Kind::cuda, 0};
    if (s.starts_with("cuda:")) {
      const std::string_view n = s.substr(5);
      int index = -1;
      const auto [end, ec] = std::from_chars(n.data(), n.data() + n.size(), index);
      if (ec == std::errc{} && end == n.data() + n.size() && !n.empty() && index >= 0) return {Kind::cuda, index};
    }
    fail("{}: unknown device '{}' (expected cpu, cuda or cuda:N)", where, s);
  }

  bool is_cuda() const { return kind == Kind::cuda; }
  std::string str() const { return is_cuda() ? fmt::format("cuda:{}", index) : std::string("cpu"); }
};

}  // namespace doremi
