#pragma once
// HuggingFace GPT-NeoX `config.json` for a compiled Config, and the check that
// a checkpoint's config.json describes the same model.
//
//   using Cfg = doremi::presets::Pythia70M<float>;
//   doremi::write_file_atomic(dir / "config.json", doremi::hf_config_json<Cfg>().dump(2));
//   doremi::check_hf_config<Cfg>(doremi::read_json_file(dir / "config.json"), dir / "config.json");
//
// Shapes are compile-time here, so a checkpoint for a different shape cannot
// be loaded: the check names the first field that differs, what the compiled
// Config expects and what the file says.
#include <cmath>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "doremi/core/error.hpp"
#include "doremi/model/config.hpp"

namespace doremi {

// What transformers' GPTNeoXConfig reads (both the old and the new names of the
// rotary fields, so any transformers version loads it), plus a "doremi" object
// for what HF has no field for.
template <class Cfg>
nlohmann::json hf_config_json() {
  nlohmann::json j;
  j["architectures"] = {"GPTNeoXForCausalLM"};
  j["model_type"] = "gpt_neox";
  j["vocab_size"] = Cfg::padded_vocab;
  j["hidden_size"] = Cfg::n_embd;
  j["num_hidden_layers"] = Cfg::n_layer;
  j["num_attention_heads"] = Cfg::n_head;
  j["intermediate_size"] = Cfg::d_mlp;
  j["hidden_act"] = Cfg::gelu == Gelu::exact ? "gelu" : "gelu_new";
  j["rotary_pct"] = Cfg::spec.rotary_pct;
  j["partial_rotary_factor"] = Cfg::spec.rotary_pct;
  j["rotary_emb_base"] = Cfg::rotary_base;
  j["rope_theta"] = Cfg::rotary_base;
  j["max_position_embeddings"] = Cfg::n_ctx;
  j["layer_norm_eps"] = Cfg::ln_eps;
  j["use_parallel_residual"] = Cfg::parallel_residual;
  j["tie_word_embeddings"] = Cfg::tied;
  j["attention_bias"] = true;
  j["hidden_dropout"] = 0.0;
  j["attention_dropout"] = 0.0;
  j["initializer_range"] = 0.02;
  j["torch_dtype"] = "float32";
  j["bos_token_id"] = 0;
  j["eos_token_id"] = 0;
  // transformers' GPT-NeoX has no learned position table: with rotary_pct 0 it
  // would run such a model without positions, so say so where doremi reads it.
  j["doremi"] = {{"preset", std::string(Cfg::name)},
                 {"vocab", Cfg::vocab},
                 {"vocab_multiple", Cfg::spec.vocab_multiple},
                 {"learned_positions", Cfg::learned_positions}};
  return j;
}

namespace detail {

// One config.json being checked: lookups that raise errors naming the file and field.
struct HfConfigReader {
  const nlohmann::json& j;
  const std::filesystem::path& file;
  std::string_view preset;

  [[noreturn]] void mismatch(std::string_view field, const std::string& expected, const std::string& found) const {
    fail("{}: field '{}' is {}, but the compiled config '{}' expects {}", file.string(), field, found, preset,
         expected);
  }

  const nlohmann::json* find(std::string_view field) const {
    if (!j.is_object()) return nullptr;
    auto it = j.find(field);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  }
  const nlohmann::json* find_nested(std::string_view outer, std::string_view field) const {
    const auto* o = find(outer);
    if (!o || !o->is_object()) return nullptr;
    auto it = o->find(field);
    return it == o->end() || it->is_null() ? nullptr : &*it;
  }

  void wrong_type(std::string_view field, const nlohmann::json& v, std::string_view want) const {
    fail("{}: field '{}' is {}, expected {}", file.string(), field, v.dump(), want);
  }

  // A required integer field must equal `expected`.
  void require_int(std::string_view field, long long expected) const {
    const auto* v = find(field);
    if (!v) fail("{}: missing field '{}' (the compiled config '{}' expects {})", file.string(), field, preset, expected);
    if (!v->is_number_integer()) wrong_type(field, *v, "an integer");
    if (v->get<long long>() != expected) mismatch(field, std::to_string(expected), v->dump());
  }

  void expect_bool(std::string_view field, const nlohmann::json* v, bool fallback, bool expected) const {
    if (v && !v->is_boolean()) wrong_type(field, *v, "true or false");
    const bool found = v ? v->get<bool>() : fallback;
    if (found != expected)
      mismatch(field, expected ? "true" : "false",
               v ? v->dump() : fmt::format("absent (transformers' default: {})", fallback));
  }

  double number(std::string_view field, const nlohmann::json& v) const {
    if (!v.is_number()) wrong_type(field, v, "a number");
    return v.get<double>();
  }
};

inline bool close_to(double a, double b, double rel = 1e-9) {
  return std::fabs(a - b) <= rel * std::fmax(std::fabs(a), std::fabs(b));
}

}  // namespace detail

// Raises doremi::Error naming `file`, the field, the expected and the found
// value when config.json `j` does not describe the compiled Config `Cfg`.
// Absent optional fields take transformers' GPTNeoXConfig defaults.
// Long on purpose: one check after another down the config's fields, each
// with its own message; splitting it would only scatter the list.
template <class Cfg>
void check_hf_config(const nlohmann::json& j, const std::filesystem::path& file) {
  const detail::HfConfigReader r{j, file, Cfg::name};
  if (!j.is_object()) fail("{}: config.json is JSON {}, expected an object", file.string(), j.type_name());

  if (const auto* v = r.find("model_type"); !v || *v != "gpt_neox")
    r.mismatch("model_type", "\"gpt_neox\"", v ? v->dump() : "absent");
  r.require_int("vocab_size", Cfg::padded_vocab);
  r.require_int("hidden_size", Cfg::n_embd);
  r.require_int("num_hidden_layers", Cfg::n_layer);
  r.require_int("num_attention_heads", Cfg::n_head);
  r.require_int("intermediate_size", Cfg::d_mlp);
  r.require_int("max_position_embeddings", Cfg::n_ctx);

  {  // hidden_act: several spellings of the tanh approximation compute the same function
    const auto* v = r.find("hidden_act");
    if (v && !v->is_string()) r.wrong_type("hidden_act", *v, "a string");
    const std::string act = v ? v->get<std::string>() : "gelu";
    const bool ok = Cfg::gelu == Gelu::exact
                        ? act == "gelu"
                        : act == "gelu_new" || act == "gelu_pytorch_tanh" || act == "gelu_fast";
    if (!ok)
      r.mismatch("hidden_act",
                 Cfg::gelu == Gelu::exact ? "\"gelu\" (exact erf GELU)"
                                          : "\"gelu_new\", \"gelu_pytorch_tanh\" or \"gelu_fast\" (tanh GELU)",
                 v ? v->dump() : "absent (transformers' default: \"gelu\")");
  }

  {  // Rotary share: every spelling present must give the compiled number of rotary dims.
    bool any = false;
    auto check_pct = [&](std::string_view field, const nlohmann::json* v) {
      if (!v) return;
      any = true;
      const double pct = r.number(field, *v);
      if (!(pct >= 0 && pct <= 1)) r.wrong_type(field, *v, "a share in [0, 1]");  // (and int() below stays defined)
      if (int(Cfg::head_dim * pct) != Cfg::rotary_dim)
        r.mismatch(field, fmt::format("{} ({} of {} head dims rotary)", Cfg::spec.rotary_pct, Cfg::rotary_dim, Cfg::head_dim),
                   v->dump());
    };
    check_pct("rotary_pct", r.find("rotary_pct"));
    check_pct("partial_rotary_factor", r.find("partial_rotary_factor"));
    check_pct("rope_parameters.partial_rotary_factor", r.find_nested("rope_parameters", "partial_rotary_factor"));
    if (!any && int(Cfg::head_dim * 0.25) != Cfg::rotary_dim)
      r.mismatch("rotary_pct", fmt::format("{}", Cfg::spec.rotary_pct), "absent (transformers' default: 0.25)");
  }

  if (!Cfg::learned_positions) {  // the base matters only when something rotates
    bool any = false;
    auto check_base = [&](std::string_view field, const nlohmann::json* v) {
      if (!v) return;
      any = true;
      if (!detail::close_to(r.number(field, *v), Cfg::rotary_base))
        r.mismatch(field, fmt::format("{}", Cfg::rotary_base), v->dump());
    };
    check_base("rotary_emb_base", r.find("rotary_emb_base"));
    check_base("rope_theta", r.find("rope_theta"));
    check_base("rope_parameters.rope_theta", r.find_nested("rope_parameters", "rope_theta"));
    if (!any && !detail::close_to(10000.0, Cfg::rotary_base))
      r.mismatch("rotary_emb_base", fmt::format("{}", Cfg::rotary_base), "absent (transformers' default: 10000)");
  }
  // Scaled RoPE variants (linear, dynamic, yarn, ...) are not implemented.
  if (const auto* v = r.find("rope_scaling"))
    r.mismatch("rope_scaling", "null (no RoPE scaling)", v->dump());
  if (const auto* v = r.find_nested("rope_parameters", "rope_type"); v && *v != "default")
    r.mismatch("rope_parameters.rope_type", "\"default\"", v->dump());

  {
    const auto* v = r.find("layer_norm_eps");
    const double eps = v ? r.number("layer_norm_eps", *v) : 1e-5;
    if (!detail::close_to(eps, Cfg::ln_eps, 1e-6))
      r.mismatch("layer_norm_eps", fmt::format("{}", Cfg::ln_eps),
                 v ? v->dump() : "absent (transformers' default: 1e-05)");
  }
  r.expect_bool("use_parallel_residual", r.find("use_parallel_residual"), true, Cfg::parallel_residual);
  r.expect_bool("tie_word_embeddings", r.find("tie_word_embeddings"), false, Cfg::tied);
  r.expect_bool("attention_bias", r.find("attention_bias"), true, true);  // the model has q/k/v and dense biases

  // Our own additions, checked when present (a plain HF checkpoint has none).
  r.expect_bool("doremi.learned_positions", r.find_nested("doremi", "learned_positions"), Cfg::learned_positions,
                Cfg::learned_positions);
  if (const auto* v = r.find_nested("doremi", "vocab")) {
    if (!v->is_number_integer()) r.wrong_type("doremi.vocab", *v, "an integer");
    if (v->get<long long>() != Cfg::vocab) r.mismatch("doremi.vocab", std::to_string(Cfg::vocab), v->dump());
  }
}

}  // namespace doremi
