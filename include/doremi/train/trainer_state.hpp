#pragma once
// A checkpoint's trainer_state.json, checked before anything is restored:
//
//   {"format": "doremi-trainer-1", "step": 1200, "preset": "tiny",
//    "sampler": {...}, "extra": {...}}
//
// and the optimizer's step count from optimizer.safetensors' metadata. Every
// error names the file, the field and the value (a checkpoint edited by hand
// or cut short must fail with a message, never with a type error).
#include <charconv>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "doremi/core/error.hpp"
#include "doremi/core/json.hpp"

namespace doremi {

struct TrainerState {
  long step = 0;
  std::string preset;
  nlohmann::json sampler;                           // the sampler's own state (its restore() checks it)
  nlohmann::json extra = nlohmann::json::object();  // the derived trainer's state (e.g. DRO weights)
};

inline TrainerState parse_trainer_state(const nlohmann::json& state, const std::string& where) {
  if (!state.is_object() || !state.contains("format") || state.at("format") != "doremi-trainer-1")
    fail("load_checkpoint: {} is not a doremi trainer state (format doremi-trainer-1 with step and sampler)", where);
  TrainerState s;
  s.step = json_field<long>(state, "step", where);
  if (s.step < 0) fail("{}: field 'step' is {}, expected >= 0", where, s.step);
  s.preset = json_field_or<std::string>(state, "preset", "", where);
  if (!state.contains("sampler")) fail("{}: missing field 'sampler'", where);
  s.sampler = state.at("sampler");
  s.extra = json_field_or<nlohmann::json>(state, "extra", nlohmann::json::object(), where);
  if (!s.extra.is_object()) fail("{}: field 'extra' is {}, expected an object", where, detail::json_excerpt(s.extra));
  return s;
}

// The optimizer's step count as optimizer.safetensors' metadata "steps" spells it.
inline std::int64_t parse_optimizer_steps(std::string_view text, const std::string& where) {
  std::int64_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size() || v < 0)
    fail("{}: metadata 'steps' is \"{}\", expected a non-negative integer", where, text.substr(0, 40));
  return v;
}

}  // namespace doremi
