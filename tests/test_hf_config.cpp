// GPT-NeoX config.json: what we write, and the check against a compiled Config.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "doremi/core/atomic_file.hpp"
#include "doremi/core/json.hpp"
#include "doremi/model/hf_config.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

template <class Cfg>
std::string check_error(const json& j, const fs::path& file = "ckpt/config.json") {
  try {
    doremi::check_hf_config<Cfg>(j, file);
  } catch (const doremi::Error& e) {
    return e.what();
  }
  return "";
}

bool mentions(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// EleutherAI/pythia-70m's config.json as published (transformers 4.24).
const char* pythia_70m_config = R"({
  "architectures": ["GPTNeoXForCausalLM"],
  "bos_token_id": 0,
  "eos_token_id": 0,
  "hidden_act": "gelu",
  "hidden_size": 512,
  "initializer_range": 0.02,
  "intermediate_size": 2048,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 2048,
  "model_type": "gpt_neox",
  "num_attention_heads": 8,
  "num_hidden_layers": 6,
  "rotary_emb_base": 10000,
  "rotary_pct": 0.25,
  "tie_word_embeddings": false,
  "torch_dtype": "float16",
  "transformers_version": "4.24.0",
  "use_cache": true,
  "use_parallel_residual": true,
  "vocab_size": 50304
})";

}  // namespace

TEST_CASE("hf_config: the config.json we write") {
  using Cfg = doremi::presets::Doremi120M<float>;
  const json j = doremi::hf_config_json<Cfg>();
  CHECK(j["architectures"] == json::array({"GPTNeoXForCausalLM"}));
  CHECK(j["model_type"] == "gpt_neox");
  CHECK(j["vocab_size"] == 50280);  // 50277 padded to a multiple of 8
  CHECK(j["hidden_size"] == 768);
  CHECK(j["num_hidden_layers"] == 12);
  CHECK(j["num_attention_heads"] == 12);
  CHECK(j["intermediate_size"] == 3072);
  CHECK(j["hidden_act"] == "gelu_new");
  CHECK(j["rotary_pct"] == 0.25);
  CHECK(j["partial_rotary_factor"] == 0.25);
  CHECK(j["rotary_emb_base"] == 10000.0);
  CHECK(j["rope_theta"] == 10000.0);
  CHECK(j["max_position_embeddings"] == 1024);
  CHECK(j["layer_norm_eps"] == 1e-5);
  CHECK(j["use_parallel_residual"] == true);
  CHECK(j["tie_word_embeddings"] == true);
  CHECK(j["attention_bias"] == true);
  CHECK(j["torch_dtype"] == "float32");
  CHECK(j["doremi"]["preset"] == "doremi-120m");
  CHECK(j["doremi"]["vocab"] == 50277);
  CHECK(j["doremi"]["vocab_multiple"] == 8);
  CHECK(j["doremi"]["learned_positions"] == false);

  CHECK(doremi::hf_config_json<doremi::presets::Pythia70M<float>>()["hidden_act"] == "gelu");
  const json gpt2 = doremi::hf_config_json<doremi::presets::Gpt2_124M<double>>();
  CHECK(gpt2["rotary_pct"] == 0.0);
  CHECK(gpt2["use_parallel_residual"] == false);
  CHECK(gpt2["doremi"]["learned_positions"] == true);
}

TEST_CASE("hf_config: round trip through a file") {
  doremi::test::TempDir dir("hf-config");
  const fs::path path = dir.path / "config.json";
  auto round_trip = [&]<class Cfg>() {
    doremi::write_file_atomic(path, doremi::hf_config_json<Cfg>().dump(2));
    CHECK_NOTHROW(doremi::check_hf_config<Cfg>(doremi::read_json_file(path), path));
  };
  round_trip.operator()<doremi::presets::Tiny<float>>();
  round_trip.operator()<doremi::presets::CpuBench<float>>();
  round_trip.operator()<doremi::presets::Doremi120M<float>>();
  round_trip.operator()<doremi::presets::Gpt2_124M<float>>();
  round_trip.operator()<doremi::presets::Pythia70M<float>>();
  round_trip.operator()<doremi::presets::Pythia160M<double>>();
}

TEST_CASE("hf_config: a published Pythia config matches the Pythia preset") {
  const json j = json::parse(pythia_70m_config);
  CHECK(check_error<doremi::presets::Pythia70M<float>>(j) == "");
  // Only the required fields: the rest take transformers' defaults, which are Pythia's.
  json minimal = j;
  for (const char* f : {"hidden_act", "layer_norm_eps", "rotary_emb_base", "rotary_pct", "tie_word_embeddings",
                        "use_parallel_residual"})
    minimal.erase(f);
  CHECK(check_error<doremi::presets::Pythia70M<float>>(minimal) == "");
  // Newer transformers spell the rotary fields differently.
  json renamed = minimal;
  renamed["partial_rotary_factor"] = 0.25;
  renamed["rope_theta"] = 10000.0;
  CHECK(check_error<doremi::presets::Pythia70M<float>>(renamed) == "");
  json v5 = minimal;
  v5["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 10000.0}, {"partial_rotary_factor", 0.25}};
  CHECK(check_error<doremi::presets::Pythia70M<float>>(v5) == "");
}

TEST_CASE("hf_config: mismatches name the file, the field and both values") {
  using Pythia = doremi::presets::Pythia70M<float>;
  const json good = json::parse(pythia_70m_config);

  json j = good;
  j["hidden_size"] = 768;
  std::string msg = check_error<Pythia>(j);
  CHECK(mentions(msg, "ckpt/config.json"));
  CHECK(mentions(msg, "'hidden_size'"));
  CHECK(mentions(msg, "768"));
  CHECK(mentions(msg, "512"));
  CHECK(mentions(msg, "pythia-70m"));

  j = good;
  j.erase("num_hidden_layers");
  msg = check_error<Pythia>(j);
  CHECK(mentions(msg, "missing field 'num_hidden_layers'"));
  CHECK(mentions(msg, "6"));

  j = good;
  j["num_attention_heads"] = "8";
  CHECK(mentions(check_error<Pythia>(j), "'num_attention_heads'"));

  j = good;
  j["hidden_act"] = "gelu_new";
  msg = check_error<Pythia>(j);
  CHECK(mentions(msg, "'hidden_act'"));
  CHECK(mentions(msg, "gelu_new"));

  j = good;
  j["rotary_pct"] = 0.5;
  msg = check_error<Pythia>(j);
  CHECK(mentions(msg, "'rotary_pct'"));
  CHECK(mentions(msg, "0.5"));
  CHECK(mentions(msg, "0.25"));

  j = good;
  j["rope_theta"] = 500000;  // beside a matching rotary_emb_base: every spelling is checked
  CHECK(mentions(check_error<Pythia>(j), "'rope_theta'"));

  j = good;
  j["use_parallel_residual"] = false;
  CHECK(mentions(check_error<Pythia>(j), "'use_parallel_residual'"));

  j = good;
  j["tie_word_embeddings"] = true;
  CHECK(mentions(check_error<Pythia>(j), "'tie_word_embeddings'"));

  j = good;
  j["layer_norm_eps"] = 1e-6;
  CHECK(mentions(check_error<Pythia>(j), "'layer_norm_eps'"));

  j = good;
  j["vocab_size"] = 50277;
  msg = check_error<Pythia>(j);
  CHECK(mentions(msg, "'vocab_size'"));
  CHECK(mentions(msg, "50304"));

  j = good;
  j["model_type"] = "llama";
  CHECK(mentions(check_error<Pythia>(j), "'model_type'"));

  j = good;
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  CHECK(mentions(check_error<Pythia>(j), "'rope_scaling'"));

  j = good;
  j["attention_bias"] = false;
  CHECK(mentions(check_error<Pythia>(j), "'attention_bias'"));

  CHECK(mentions(check_error<Pythia>(json::array()), "expected an object"));
}

TEST_CASE("hf_config: tanh GELU spellings and defaults for a tied tanh preset") {
  using Cfg = doremi::presets::Doremi120M<float>;
  json j = doremi::hf_config_json<Cfg>();
  for (const char* act : {"gelu_new", "gelu_pytorch_tanh", "gelu_fast"}) {
    j["hidden_act"] = act;
    CHECK(check_error<Cfg>(j) == "");
  }
  j["hidden_act"] = "gelu";
  CHECK(mentions(check_error<Cfg>(j), "'hidden_act'"));
  j.erase("hidden_act");  // transformers' default is the exact GELU
  CHECK(mentions(check_error<Cfg>(j), "absent"));

  j = doremi::hf_config_json<Cfg>();
  j.erase("tie_word_embeddings");  // transformers' default: untied
  const std::string msg = check_error<Cfg>(j);
  CHECK(mentions(msg, "'tie_word_embeddings'"));
  CHECK(mentions(msg, "absent"));
}

TEST_CASE("hf_config: learned positions") {
  using Gpt2 = doremi::presets::Gpt2_124M<float>;
  json j = doremi::hf_config_json<Gpt2>();
  CHECK(check_error<Gpt2>(j) == "");
  j["doremi"]["learned_positions"] = false;
  CHECK(mentions(check_error<Gpt2>(j), "'doremi.learned_positions'"));
  j = doremi::hf_config_json<Gpt2>();
  j.erase("rotary_pct");
  j.erase("partial_rotary_factor");  // absent means transformers' 0.25: rotary, not learned
  CHECK(mentions(check_error<Gpt2>(j), "'rotary_pct'"));
}

TEST_CASE("hf_config: read_json_file errors name the file") {
  doremi::test::TempDir dir("hf-config");
  std::string msg;
  try {
    doremi::read_json_file(dir.path / "missing-config.json");
  } catch (const doremi::Error& e) {
    msg = e.what();
  }
  CHECK(mentions(msg, "missing-config.json"));

  const fs::path bad = dir.path / "bad-config.json";
  std::ofstream(bad) << "{\"hidden_size\": 512,\n \"vocab_size\": }";
  msg.clear();
  try {
    doremi::read_json_file(bad);
  } catch (const doremi::Error& e) {
    msg = e.what();
  }
  CHECK(mentions(msg, "bad-config.json"));
  CHECK(mentions(msg, "byte 37"));

  CHECK_THROWS_AS(doremi::read_json_file(dir.path), doremi::Error);  // a directory
  const fs::path ok = dir.path / "ok.json";
  std::ofstream(ok) << R"({"a": [1, 2]})";
  CHECK(doremi::read_json_file(ok)["a"][1] == 2);
}
