#pragma once
// Run-time choice among the compiled presets, in the FlashInfer style: one
// small dispatch that instantiates the supported set and names them all in
// the error when the requested one is not among them.
//
//   doremi::dispatch_preset<float>(name, [&]<class Cfg>() { Model<Cfg> m; ... });
#include <array>
#include <cstddef>
#include <string>
#include <string_view>

#include "doremi/core/error.hpp"
#include "doremi/core/json.hpp"
#include "doremi/model/config.hpp"
#include "doremi/model/hf_config.hpp"

namespace doremi {

// The compiled presets: the one table dispatch_preset, preset_names and
// preset_for_checkpoint read (a new preset is one entry here).
inline constexpr std::array compiled_presets{presets::tiny,      presets::cpu_bench,  presets::doremi_120m,
                                             presets::gpt2_124m, presets::pythia_70m, presets::pythia_160m};

namespace detail {
constexpr std::size_t preset_names_length() {
  std::size_t n = 0;
  for (const Spec& s : compiled_presets) n += s.name.view().size() + 2;
  return n - 2;
}
inline constexpr auto preset_names_text = [] {
  std::array<char, preset_names_length()> out{};
  std::size_t k = 0;
  for (std::size_t i = 0; i < compiled_presets.size(); ++i) {
    if (i) out[k++] = ',', out[k++] = ' ';
    for (char c : compiled_presets[i].name.view()) out[k++] = c;
  }
  return out;
}();

// f<Config<compiled_presets[index], Scalar>>().
template <class Scalar, std::size_t I = 0, class F>
decltype(auto) dispatch_preset_at(std::size_t index, F& f) {
  if constexpr (I + 1 < compiled_presets.size()) {
    if (index != I) return dispatch_preset_at<Scalar, I + 1>(index, f);
  }
  return f.template operator()<Config<compiled_presets[I], Scalar>>();
}
}  // namespace detail

// "tiny, cpu-bench, ...": the compiled presets' names, for help and errors.
inline constexpr std::string_view preset_names{detail::preset_names_text.data(), detail::preset_names_text.size()};

template <class Scalar, class F>
decltype(auto) dispatch_preset(std::string_view name, F&& f) {
  for (std::size_t i = 0; i < compiled_presets.size(); ++i)
    if (name == compiled_presets[i].name.view()) return detail::dispatch_preset_at<Scalar>(i, f);
  fail("unknown model preset '{}' (available: {})", name, preset_names);
}

// The compiled preset whose shapes a checkpoint's config.json describes (one
// written by this library or by transformers). The error lists the presets.
inline std::string preset_for_checkpoint(const std::filesystem::path& dir) {
  const auto path = dir / "config.json";
  const nlohmann::json j = read_json_file(path);
  std::string reasons;
  for (const Spec& preset : compiled_presets) {
    const std::string_view name = preset.name.view();
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
