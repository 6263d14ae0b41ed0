#pragma once
// The pipeline's run configuration: one JSON file for the whole DoReMi run.
//
// {
//   "data": "data/pile",             // preprocessed folder or HF datasets layout (train/ + validation/)
//   "output": "runs/pile-120m",
//   "preset": "doremi-120m",         // reference and proxy models
//   "main_preset": "doremi-120m",    // main models (default: preset)
//   "device": "cpu" | "cuda" | "cuda:N",   // where the models train (default cpu)
//   "seq_len": 1024,
//   "reference_weights": "config.json" | "uniform" | "pack" | "nopack",
//   "domains": ["ArXiv", ...],       // optional subset (default: the reference config's or all)
//   "epochs": "pile" | {"Books3": 1.5, ...},   // multiplies "pack"/"nopack" counts (default 1)
//   "reference": {"steps": 200000, "batch_size": 64, "grad_accum": 8, "lr": 1e-3, ...},
//   "proxy": {...}, "main": {...},   // same fields; "proxy" also "eta", "smoothing"
//   "proxy_sampling": "uniform" | "reference",  // α₀ and s of the proxy (public runs: uniform)
//   "rounds": 1, "tolerance": 0.0,   // iterated DoReMi: stop when max |Δᾱ| < tolerance
//   "baseline": true,                // also train a main model on the reference weights
//   "eval_max_tokens": 0,            // per domain, 0 = whole validation split
//   "seed": 1,
//   "downstream": {                  // optional: one-shot task accuracy of the main models
//     "data": "tasks",               //   data/<task>/: datasets.save_to_disk folders or <split>.jsonl
//     "tokenizer": "bytes",          //   the one the data was preprocessed with ('bytes' or a path)
//     "tasks": ["trivia_qa", ...],   //   default: all five (trivia_qa, natural_questions,
//                                    //   web_questions, lambada, squad_v2)
//     "shots": 1, "max_samples": 500, "seed": 42, "batch_size": 16
//   }
// }
//
// Every field is checked; an unknown field or a wrong type is an error naming it.
// With "downstream", the main models keep every checkpoint they write and
// each is evaluated after its stage (pipeline.hpp, <stage>/downstream.json).
#include <algorithm>
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "doremi/backend/device.hpp"
#include "doremi/core/error.hpp"
#include "doremi/core/json.hpp"
#include "doremi/eval/downstream.hpp"
#include "doremi/optim/schedule.hpp"
#include "doremi/train/domain_weights.hpp"

namespace doremi {

struct StageConfig {
  long steps = 1000;
  int batch_size = 8;
  int grad_accum = 1;
  double lr = 1e-3;
  double end_lr = 1e-4;
  double warmup = 0.06;  // share of steps
  std::string schedule = "linear_warmup_exponential";
  double weight_decay = 0.01;
  double beta2 = 0.99;
  double max_grad_norm = 1.0;
  long checkpoint_every = 0;
  DroConfig dro{1.0, 1e-3};  // proxy only
  // How many checkpoints the stage keeps (not a config field: the pipeline
  // keeps them all for downstream evaluation). Changes no result.
  int keep_checkpoints = 2;

  // The fields on their own (the rest is checked with the preset: validate_run).
  void validate(const std::string& where) const {
    if (steps <= 0) fail("{}: field 'steps' must be positive (got {})", where, steps);
    if (batch_size <= 0) fail("{}: field 'batch_size' must be positive (got {})", where, batch_size);
    if (grad_accum <= 0) fail("{}: field 'grad_accum' must be positive (got {})", where, grad_accum);
    if (!(warmup >= 0 && warmup < 1)) fail("{}: field 'warmup' must lie in [0, 1) (got {})", where, warmup);
    if (checkpoint_every < 0) fail("{}: field 'checkpoint_every' must be >= 0 (got {})", where, checkpoint_every);
    try {
      LrSchedule::parse(schedule);  // names the valid schedules on a typo
      dro.validate();
    } catch (const Error& e) {
      fail("{}: {}", where, e.what());
    }
  }

  nlohmann::json to_json() const {
    return {{"steps", steps},   {"batch_size", batch_size},     {"grad_accum", grad_accum},
            {"lr", lr},         {"end_lr", end_lr},             {"warmup", warmup},
            {"schedule", schedule}, {"weight_decay", weight_decay}, {"beta2", beta2},
            {"max_grad_norm", max_grad_norm}, {"checkpoint_every", checkpoint_every},
            {"eta", dro.eta},   {"smoothing", dro.smoothing}};
  }
};

// The run config's optional "downstream" object: which tasks, from where,
// and how the main models' checkpoints are evaluated on them.
struct DownstreamStageConfig {
  std::filesystem::path data;  // data/<task>/ per task
  std::string tokenizer;       // "bytes" or a tokenizer path: the one the training data was preprocessed with
  std::vector<std::string> tasks = downstream_task_names();
  int shots = 1;
  std::uint64_t max_samples = 0;  // 0: every evaluation example
  std::uint64_t seed = 42;
  int batch_size = 16;

  void validate(const std::string& where) const {
    if (data.empty()) fail("{}: field 'data' is required (the folder of the task folders)", where);
    if (tokenizer.empty())
      fail("{}: field 'tokenizer' is required (the tokenizer the training data was preprocessed with: \"bytes\" or "
           "a tokenizer.json path)",
           where);
    if (tasks.empty()) fail("{}: field 'tasks' must name at least one task", where);
    std::set<std::string> seen;
    for (const auto& t : tasks) {
      const auto& known = downstream_task_names();
      if (std::find(known.begin(), known.end(), t) == known.end())
        fail("{}: field 'tasks': unknown task '{}' (known: {})", where, t, fmt::join(known, ", "));
      if (!seen.insert(t).second) fail("{}: field 'tasks' names '{}' twice", where, t);
    }
    if (shots < 0) fail("{}: field 'shots' must be >= 0 (got {})", where, shots);
    if (batch_size <= 0) fail("{}: field 'batch_size' must be positive (got {})", where, batch_size);
  }
  // Every field that changes the results (batch_size too: batched decoding
  // may round differently).
  nlohmann::json to_json() const {
    return {{"data", data.string()}, {"tokenizer", tokenizer}, {"tasks", tasks},           {"shots", shots},
            {"max_samples", max_samples}, {"seed", seed},       {"batch_size", batch_size}};
  }
};

struct RunConfig {
  std::filesystem::path data, output;
  std::string preset = "tiny", main_preset;
  Device device;
  int seq_len = 128;
  std::string reference_weights = "uniform";  // a domain-config path, "uniform", "pack" or "nopack"
  std::vector<std::string> domains;
  nlohmann::json epochs;  // null, "pile" or {domain: epochs}
  StageConfig reference, proxy, main;
  std::string proxy_sampling = "uniform";
  int rounds = 1;
  double tolerance = 0.0;
  bool baseline = true;
  std::uint64_t eval_max_tokens = 0;
  std::uint64_t seed = 1;
  std::optional<DownstreamStageConfig> downstream;
  std::string source;  // the file it was read from (names it in errors)

  // Every field that changes a run's result (not `source`); "downstream"
  // only when set (it changes the downstream results, not the models).
  nlohmann::json to_json() const {
    nlohmann::json j = training_json();
    if (downstream) j["downstream"] = downstream->to_json();
    return j;
  }
  // The fields that change the trained models (to_json without "downstream").
  nlohmann::json training_json() const {
    return {{"data", data.string()},          {"output", output.string()},
            {"preset", preset},               {"main_preset", main_preset},
            {"device", device.str()},         {"seq_len", seq_len},
            {"reference_weights", reference_weights}, {"domains", domains},
            {"epochs", epochs},               {"reference", reference.to_json()},
            {"proxy", proxy.to_json()},       {"main", main.to_json()},
            {"proxy_sampling", proxy_sampling}, {"rounds", rounds},
            {"tolerance", tolerance},         {"baseline", baseline},
            {"eval_max_tokens", eval_max_tokens}, {"seed", seed}};
  }

  static RunConfig from_json(const nlohmann::json& j, const std::string& where) {
    if (!j.is_object()) fail("{}: the run config must be a JSON object", where);
    RunConfig c;
    const std::set<std::string> known{"data",    "output",          "preset", "main_preset",    "seq_len", "device",
                                      "reference_weights", "domains", "epochs", "reference",    "proxy",
                                      "main",    "proxy_sampling",  "rounds", "tolerance",      "baseline",
                                      "eval_max_tokens",   "seed",    "downstream", "comment"};
    check_known_fields(j, known, where);
    auto get = [&](const char* key, auto& out) { read_field(j, key, out, where); };
    std::string data, output;
    get("data", data);
    get("output", output);
    c.data = data;
    c.output = output;
    get("preset", c.preset);
    get("main_preset", c.main_preset);
    std::string device = "cpu";
    get("device", device);
    c.device = Device::parse(device, fmt::format("{}: field 'device'", where));
    get("seq_len", c.seq_len);
    get("reference_weights", c.reference_weights);
    get("domains", c.domains);
    if (j.contains("epochs")) c.epochs = j.at("epochs");
    get("proxy_sampling", c.proxy_sampling);
    get("rounds", c.rounds);
    get("tolerance", c.tolerance);
    get("baseline", c.baseline);
    get("eval_max_tokens", c.eval_max_tokens);
    get("seed", c.seed);
    for (auto [key, stage] : {std::pair{"reference", &c.reference}, {"proxy", &c.proxy}, {"main", &c.main}})
      if (j.contains(key)) *stage = stage_from_json(j.at(key), fmt::format("{}: {}", where, key));
    if (j.contains("downstream") && !j.at("downstream").is_null())
      c.downstream = downstream_from_json(j.at("downstream"), fmt::format("{}: downstream", where));
    if (c.main_preset.empty()) c.main_preset = c.preset;
    c.source = where;
    c.validate(where);
    return c;
  }

  void validate(const std::string& where) const {
    if (data.empty()) fail("{}: field 'data' is required", where);
    if (output.empty()) fail("{}: field 'output' is required", where);
    if (seq_len < 2) fail("{}: field 'seq_len' must be >= 2 (got {})", where, seq_len);
    if (rounds < 1) fail("{}: field 'rounds' must be >= 1 (got {})", where, rounds);
    if (!(tolerance >= 0)) fail("{}: field 'tolerance' must be >= 0 (got {})", where, tolerance);
    if (proxy_sampling != "uniform" && proxy_sampling != "reference")
      fail("{}: field 'proxy_sampling' must be \"uniform\" or \"reference\" (got \"{}\")", where, proxy_sampling);
    if (!epochs.is_null() && !epochs.is_object() && epochs != "pile")
      fail("{}: field 'epochs' must be \"pile\" or an object of domain epochs (got {})", where, epochs.dump());
  }

 private:
  template <class T>
  static void read_field(const nlohmann::json& j, const char* key, T& out, const std::string& where) {
    // Type and range checked: a wrong type, a fraction for an integer or a
    // number out of the field's range is an error naming the field and value.
    if (!j.contains(key)) return;
    out = json_as<T>(j.at(key), where, key);
  }
  static void check_known_fields(const nlohmann::json& j, const std::set<std::string>& known, const std::string& where) {
    for (const auto& [key, _] : j.items())
      if (!known.count(key)) fail("{}: unknown field '{}'", where, key);
  }

  static DownstreamStageConfig downstream_from_json(const nlohmann::json& j, const std::string& where) {
    if (!j.is_object()) fail("{} must be an object", where);
    DownstreamStageConfig d;
    check_known_fields(j, {"data", "tokenizer", "tasks", "shots", "max_samples", "seed", "batch_size"}, where);
    auto get = [&](const char* key, auto& out) { read_field(j, key, out, where); };
    std::string data;
    get("data", data);
    d.data = data;
    get("tokenizer", d.tokenizer);
    get("tasks", d.tasks);
    get("shots", d.shots);
    get("max_samples", d.max_samples);
    get("seed", d.seed);
    get("batch_size", d.batch_size);
    d.validate(where);
    return d;
  }

  static StageConfig stage_from_json(const nlohmann::json& j, const std::string& where) {
    if (!j.is_object()) fail("{} must be an object", where);
    StageConfig s;
    const std::set<std::string> known{"steps",        "batch_size",    "grad_accum",       "lr",   "end_lr",
                                      "warmup",       "schedule",      "weight_decay",     "beta2", "max_grad_norm",
                                      "checkpoint_every", "eta",       "smoothing"};
    check_known_fields(j, known, where);
    auto get = [&](const char* key, auto& out) { read_field(j, key, out, where); };
    get("steps", s.steps);
    get("batch_size", s.batch_size);
    get("grad_accum", s.grad_accum);
    get("lr", s.lr);
    get("end_lr", s.end_lr);
    get("warmup", s.warmup);
    get("schedule", s.schedule);
    get("weight_decay", s.weight_decay);
    get("beta2", s.beta2);
    get("max_grad_norm", s.max_grad_norm);
    get("checkpoint_every", s.checkpoint_every);
    get("eta", s.dro.eta);
    get("smoothing", s.dro.smoothing);
    s.validate(where);
    return s;
  }
};

}  // namespace doremi
