#pragma once
// Run-time choice among the compiled presets, in the FlashInfer style: one
// small dispatch that instantiates the supported set and names them all in
// the error when the requested one is not among them.
//
//   doremi::dispatch_preset<float>(name, [&]<class Cfg>() { Model<Cfg> m; ... });
#include <string>
#include <string_view>

#include "doremi/core/error.hpp"
#include "doremi/core/json.hpp"
#include "doremi/model/config.hpp"
#include "doremi/model/hf_config.hpp"

namespace doremi {

inline constexpr std::string_view preset_names = "tiny, cpu-bench, doremi-120m, gpt2-124m, pythia-70m, pythia-160m";

template <class Scalar, class F>
decltype(auto) dispatch_preset(std::string_view name, F&& f) {
  using namespace presets;
  if (name == "tiny") return f.template operator()<Tiny<Scalar>>();
  if (name == "cpu-bench") return f.template operator()<CpuBench<Scalar>>();
  if (name == "doremi-120m") return f.template operator()<Doremi120M<Scalar>>();
  if (name == "gpt2-124m") return f.template operator()<Gpt2_124M<Scalar>>();
  if (name == "pythia-70m") return f.template operator()<Pythia70M<Scalar>>();
  if (name == "pythia-160m") return f.template operator()<Pythia160M<Scalar>>();
  fail("unknown model preset '{}' (available: {})", name, preset_names);
}

// The compiled preset whose shapes a checkpoint's config.json describes (one
// written by this library or by transformers). The error lists the presets.
inline std::string preset_for_checkpoint(const std::filesystem::path& dir) {
  const auto path = dir / "config.json";
  const nlohmann::json j = read_json_file(path);
  std::string reasons;
  for (std::string_view name : {"tiny", "cpu-bench", "doremi-120m", "gpt2-124m", "pythia-70m", "pythia-160m"}) {
    try {
      dispatch_preset<float>(name, [&]<class Cfg>() { check_hf_config<Cfg>(j, path); });
      return std::string(name);
    } catch (const Error& e) {
      reasons += fmt::format("\n  {}: {}", name, e.what());
    }
  }
  fail("{} matches none of the compiled presets ({}); why each was rejected:{}", path.string(), preset_names, reasons);
}

}  // namespace doremi
