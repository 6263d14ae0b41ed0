#pragma once
// The whole DoReMi pipeline (docs/algorithm.md, "The pipeline"), one call:
//
//   round r = 1..R:  reference model on w_ref(r)   (w_ref(1) = the reference
//                    weights, w_ref(r) = round r−1's output: iterated DoReMi)
//                    proxy with DRO against it → ᾱ_r
//                    stop early when max |ᾱ_r − ᾱ_{r−1}| < tolerance
//   main model on ᾱ_R, and a baseline main model on the reference weights
//   per-domain held-out log-perplexity of both, the report
//   with "downstream" in the config: every checkpoint of both main models
//   evaluated on the tasks (<stage>/downstream.json), a figure in the report
//
// Model shapes are compile-time, so each stage runs through a ModelStages
// object for one preset (StagesFor<Config>): the small (reference and proxy)
// and main presets are chosen independently without instantiating every pair.
// Every stage writes into its own folder, holds its lock while it runs
// (OutputLock) and records a fingerprint of what produces it (preset,
// settings, weights, data identity, version: claim_output); it marks
// completion with done.json. A rerun skips a finished stage and resumes an
// unfinished one from its last checkpoint only when the fingerprint matches,
// and fails naming what differs otherwise. All stages' settings are checked
// before any work starts (validate_run).
//
//   doremi::StagesFor<doremi::presets::Tiny<float>> small;
//   auto result = doremi::run_pipeline(config, small, small);
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "doremi/core/atomic_file.hpp"
#include "doremi/core/error.hpp"
#include "doremi/core/output_folder.hpp"
#include "doremi/core/json.hpp"
#include "doremi/data/dataset_folder.hpp"
#include "doremi/data/domain_config.hpp"
#include "doremi/data/weight_spec.hpp"
#include "doremi/data/tokenizer.hpp"
#include "doremi/data/weighted_sampler.hpp"
#include "doremi/eval/downstream.hpp"
#include "doremi/eval/generate.hpp"
#include "doremi/eval/perplexity.hpp"
#include "doremi/dist/world.hpp"
#include "doremi/eval/report.hpp"
#include "doremi/model/checkpoint.hpp"
#include "doremi/model/dispatch.hpp"
#include "doremi/model/gpt.hpp"
#include "doremi/pipeline/run_config.hpp"
#include "doremi/train/dro_trainer.hpp"
#include "doremi/train/trainer.hpp"

namespace doremi {

// The data every stage reads, opened once.
struct PipelineData {
  DatasetFolder train, validation;
  int seq_len = 128;
  std::uint64_t seed = 1;
  std::uint64_t eval_max_tokens = 0;
  nlohmann::json identity;  // of the data (dataset_identity), recorded in the stages' fingerprints
  const std::vector<std::string>& domains() const { return train.domains; }
};

inline TrainConfig train_config_for(const StageConfig& s, const std::filesystem::path& dir) {
  TrainConfig t;
  t.steps = s.steps;
  t.grad_accum = s.grad_accum;
  t.adam.lr = s.lr;
  t.adam.beta2 = s.beta2;
  t.adam.weight_decay = s.weight_decay;
  t.schedule.kind = LrSchedule::parse(s.schedule);
  t.schedule.peak_lr = s.lr;
  t.schedule.end_lr = std::min(s.end_lr, s.lr);
  t.schedule.total_steps = s.steps;
  t.schedule.warmup_steps = long(std::ceil(double(s.steps) * s.warmup));
  t.max_grad_norm = s.max_grad_norm;
  t.checkpoint_every = s.checkpoint_every;
  t.keep_checkpoints = s.keep_checkpoints;
  t.output_dir = dir;
  t.log_every = std::max<long>(1, s.steps / 20);
  return t;
}

// What a stage's result depends on (checkpoint_every excluded: it changes
// where a run can resume, not what it computes).
// evaluate_downstream's GenerateFn on `model`: greedy generate(), at most
// max_new_tokens, stopping at `eos` (not returned). `model` must outlive it.
template <class M>
GenerateFn greedy_generate_fn(M& model, std::int32_t eos) {
  return [&model, eos](const std::vector<std::vector<std::int32_t>>& prompts, int max_new_tokens) {
    GenerationConfig g;
    g.max_new_tokens = max_new_tokens;
    g.eos_ids = {eos};
    std::vector<GeneratedRow> rows = generate(model, prompts, g);
    std::vector<std::vector<std::int32_t>> out;
    out.reserve(rows.size());
    for (auto& r : rows) out.push_back(std::move(r.tokens));
    return out;
  };
}

inline nlohmann::json stage_fingerprint(std::string_view kind, const std::string& preset, std::string_view backend,
                                        const PipelineData& data, const StageConfig& s) {
  nlohmann::json settings = s.to_json();
  settings.erase("checkpoint_every");
  if (kind != "dro") {
    settings.erase("eta");
    settings.erase("smoothing");
  }
  return {{"stage", kind},           {"program", fmt::format("doremi {}", program_version)},
          {"preset", preset},        {"backend", backend},
          {"seq_len", data.seq_len}, {"seed", data.seed},
          {"data", data.identity},   {"settings", settings}};
}

// Data-parallel runs (dist::world() with several ranks): every rank runs every
// stage; rank 0 alone locks, claims and writes an output folder, and every rank
// learns from it whether the stage is already complete. mark_done returns on
// every rank once rank 0 has written the stage's files.
class RootClaim {
 public:
  RootClaim(const std::filesystem::path& dir, const nlohmann::json& fingerprint) {
    double done = 0;
    if (dist::world().is_root()) {
      lock_.emplace(dir);
      done = claim_output(dir, fingerprint) ? 1 : 0;
    }
    dist::world().all_reduce_sum(std::span<double>(&done, 1));
    done_ = done != 0;
  }
  bool done() const { return done_; }

 private:
  std::optional<OutputLock> lock_;
  bool done_ = false;
};

inline bool stage_done(const std::filesystem::path& dir) { return std::filesystem::exists(dir / "done.json"); }
inline void mark_done(const std::filesystem::path& dir, const nlohmann::json& info) {
  if (dist::world().is_root()) write_file_atomic(dir / "done.json", info.dump(2) + "\n");
  dist::world().barrier();
}

struct ModelStages {
  virtual ~ModelStages() = default;
  virtual std::string preset() const = 0;
  virtual int context() const = 0;  // the preset's context length in tokens
  virtual int vocab() const = 0;    // the preset's vocabulary size
  // Trains a model on data drawn with `weights`; the result in dir/final.
  virtual void train(const PipelineData& data, const StageConfig& stage, const std::vector<double>& weights,
                     const std::filesystem::path& dir) = 0;
  // The DRO proxy against the model in reference_dir/final; returns ᾱ and
  // writes dir/avg_domain_weights.json, dir/domain_config.json, dir/metrics.jsonl.
  virtual std::vector<double> dro(const PipelineData& data, const StageConfig& stage, const std::vector<double>& alpha0,
                                  const std::vector<double>& sampling, const std::vector<double>& eval_weights,
                                  const std::filesystem::path& reference_dir, const std::filesystem::path& dir) = 0;
  // Per-domain held-out log-perplexity of the checkpoint in `checkpoint`
  // (safetensors + config.json), windows of min(data.seq_len, context) tokens
  // (the context when data.seq_len is 0).
  virtual PerplexityReport evaluate_checkpoint(const PipelineData& data, const std::filesystem::path& checkpoint) = 0;
  // One-shot task accuracy (eval/downstream.hpp) of the checkpoint in
  // `checkpoint` (doremi's or transformers'), greedy decoding that stops at the
  // tokenizer's end-of-text. Fails on a backend without generation.
  virtual DownstreamResult evaluate_downstream_checkpoint(const DownstreamOptions& options, const Tokenizer& tokenizer,
                                                          const std::filesystem::path& checkpoint,
                                                          std::vector<DownstreamPrediction>* predictions = nullptr,
                                                          bool show_progress = true) = 0;
  // The same for model_dir/final, also written to model_dir/perplexity.json.
  PerplexityReport evaluate(const PipelineData& data, const std::filesystem::path& model_dir) {
    auto r = evaluate_checkpoint(data, model_dir / "final");
    if (dist::world().is_root()) write_file_atomic(model_dir / "perplexity.json", r.to_json().dump(2) + "\n");
    return r;
  }
};

template <class Cfg, class Backend = backend::Cpu>
class StagesFor final : public ModelStages {
 public:
  using M = Model<Cfg, Backend>;
  using Sampler = WeightedDomainSampler<AnySource>;

  explicit StagesFor(Backend be = {}) : be_(std::move(be)) {}

  std::string preset() const override { return std::string(Cfg::name); }
  int context() const override { return Cfg::n_ctx; }
  int vocab() const override { return Cfg::vocab; }

  void train(const PipelineData& data, const StageConfig& stage, const std::vector<double>& weights,
             const std::filesystem::path& dir) override {
    check_data(data);
    nlohmann::json fp = stage_fingerprint("train", preset(), backend_name(), data, stage);
    fp["weights"] = weights;
    const RootClaim claim(dir, fp);
    if (claim.done()) return;
    M model(be_);
    model.init(data.seed);
    Sampler sampler = make_sampler(data, weights, stage.batch_size, data.seed + 11);
    Trainer trainer(model, sampler, train_config_for(stage, dir));
    if (trainer.resume_if_possible()) fmt::print(stderr, "{}: resumed at step {}\n", dir.string(), trainer.step());
    trainer.run();
    if (dist::world().is_root()) save_model(model, dir / "final");
    mark_done(dir, {{"preset", preset()}, {"steps", stage.steps}, {"weights", weights}});
  }

  std::vector<double> dro(const PipelineData& data, const StageConfig& stage, const std::vector<double>& alpha0,
                          const std::vector<double>& sampling, const std::vector<double>& eval_weights,
                          const std::filesystem::path& reference_dir, const std::filesystem::path& dir) override {
    check_data(data);
    nlohmann::json fp = stage_fingerprint("dro", preset(), backend_name(), data, stage);
    fp["alpha0"] = alpha0;
    fp["sampling"] = sampling;
    fp["eval_weights"] = eval_weights;
    const auto ref_fp = reference_dir / std::string(fingerprint_file_name);
    fp["reference"] = std::filesystem::exists(ref_fp) ? content_hash(ref_fp) : file_signature(reference_dir / "final");
    const RootClaim claim(dir, fp);
    if (claim.done()) {
      const auto done = read_json_file(dir / "done.json");
      if (!done.contains("avg_domain_weights") || !done.at("avg_domain_weights").is_array())
        fail("{}: no array 'avg_domain_weights'", (dir / "done.json").string());
      try {
        return done.at("avg_domain_weights").get<std::vector<double>>();
      } catch (const nlohmann::json::exception&) {
        fail("{}: 'avg_domain_weights' is not an array of numbers", (dir / "done.json").string());
      }
    }
    M reference(be_), proxy(be_);
    load_model(reference, reference_dir / "final");
    proxy.init(data.seed + 1);
    Sampler sampler = make_sampler(data, sampling, stage.batch_size, data.seed + 12);
    DomainWeights dw(data.domains(), alpha0, sampling, DROTrainer<M, Sampler>::initial_score(), stage.dro);
    DROTrainer trainer(proxy, reference, sampler, train_config_for(stage, dir), std::move(dw));
    if (trainer.resume_if_possible()) fmt::print(stderr, "{}: resumed at step {}\n", dir.string(), trainer.step());
    trainer.run();
    trainer.write_domain_weights(dir, eval_weights);  // rank 0 only
    if (dist::world().is_root()) save_model(proxy, dir / "final");
    const auto avg = trainer.domain_weights().average();
    mark_done(dir, {{"preset", preset()}, {"steps", stage.steps}, {"avg_domain_weights", avg}});
    return avg;
  }

  PerplexityReport evaluate_checkpoint(const PipelineData& data, const std::filesystem::path& checkpoint) override {
    M model(be_);
    load_model(model, checkpoint);
    const int T = data.seq_len > 0 ? std::min(data.seq_len, Cfg::n_ctx) : Cfg::n_ctx;
    return evaluate_perplexity(model, data.validation.domains, data.validation.sources, T, 8, data.eval_max_tokens);
  }

  DownstreamResult evaluate_downstream_checkpoint(const DownstreamOptions& options, const Tokenizer& tokenizer,
                                                  const std::filesystem::path& checkpoint,
                                                  std::vector<DownstreamPrediction>* predictions,
                                                  bool show_progress) override {
    if constexpr (backend::GenerationBackend<Backend, Cfg>) {
      if (tokenizer.vocab_size() > Cfg::vocab)
        fail("{}: the tokenizer has {} tokens, more than the model's vocabulary of {}", checkpoint.string(),
             tokenizer.vocab_size(), Cfg::vocab);
      M model(be_);
      load_model(model, checkpoint);
      return evaluate_downstream(options, tokenizer, Cfg::n_ctx, greedy_generate_fn(model, tokenizer.end_of_text_id()),
                                 predictions, show_progress);
    } else {
      fail("downstream evaluation of {}: this backend has no text generation", checkpoint.string());
    }
  }

 private:
  Backend be_;

  static constexpr std::string_view backend_name() { return Backend::host_memory ? "cpu" : "device"; }
  static void check_data(const PipelineData& data) {
    if (data.seq_len > Cfg::n_ctx)
      fail("seq_len {} exceeds preset '{}''s context of {} tokens", data.seq_len, Cfg::name, Cfg::n_ctx);
    // Data-parallel: every rank must read the same data (another node's copy
    // of the folder, a missing shard).
    if (dist::world().size() > 1) {
      std::string sizes;
      for (const auto* split : {&data.train, &data.validation})
        for (std::size_t i = 0; i < split->sources.size(); ++i)
          sizes += fmt::format("{}:{};", split->domains[i], split->sources[i].size());
      dist::check_same(dist::world(), "data-parallel start-up",
                       {{"data (domains and sequence counts)", dist::fingerprint(sizes)},
                        {"data (manifest.json)", dist::fingerprint(data.train.manifest.dump())}});
    }
  }
  static Sampler make_sampler(const PipelineData& data, const std::vector<double>& weights, int batch_size,
                              std::uint64_t seed) {
    SamplerOptions options;  // documents kept whole by `preprocess --nopack` are cut into pieces
    if (!data.train.manifest.is_null() && !data.train.manifest.value("pack", true)) options.packing = Packing::nopack;
    return Sampler(data.train.domains, data.train.sources, weights, batch_size, data.seq_len, seed, options);
  }
};

// The stages of a compiled preset, by name, on a backend (error listing the
// presets for an unknown name). On a GPU the matrix products take bf16
// operands with fp32 accumulation, fp32 master weights and optimizer state;
// on the CPU the preset's own scalar type throughout. Backends other than
// the CPU need their header first and a translation unit compiled for them
// (backend::Cuda: doremi/backend/cuda.hpp, nvcc).
//
//   auto cpu = doremi::make_stages("tiny");
//   auto gpu = doremi::make_stages("doremi-120m", doremi::backend::Cuda(0));
template <class Backend = backend::Cpu>
std::unique_ptr<ModelStages> make_stages(std::string_view preset, Backend be = {}) {
  return dispatch_preset<float>(preset, [&]<class Cfg>() -> std::unique_ptr<ModelStages> {
    if constexpr (Backend::host_memory) return std::make_unique<StagesFor<Cfg, Backend>>(be);
    else return std::make_unique<StagesFor<Config<bf16_matmul(Cfg::spec), float>, Backend>>(be);
  });
}

struct PipelineResult {
  std::vector<std::string> domains;
  std::vector<double> reference_weights;
  std::vector<std::vector<double>> round_weights;  // ᾱ of each round
  std::vector<double> doremi_weights;              // the last round's
  std::optional<PerplexityReport> doremi_perplexity, baseline_perplexity;
  // The main models' downstream.json (with "downstream" in the run config), else null.
  nlohmann::json doremi_downstream, baseline_downstream;
  nlohmann::json to_json() const {
    nlohmann::json j{{"domains", domains},
                     {"reference_weights", reference_weights},
                     {"round_weights", round_weights},
                     {"doremi_weights", doremi_weights}};
    if (doremi_perplexity) j["doremi_perplexity"] = doremi_perplexity->to_json();
    if (baseline_perplexity) j["baseline_perplexity"] = baseline_perplexity->to_json();
    auto results = [](const nlohmann::json& d) {  // per checkpoint: step, accuracies, average
      nlohmann::json out = nlohmann::json::array();
      for (const auto& e : d.at("checkpoints"))
        out.push_back({{"step", e.at("step")}, {"tasks", e.at("tasks")}, {"average", e.at("average")}});
      return out;
    };
    if (!doremi_downstream.is_null()) j["doremi_downstream"] = results(doremi_downstream);
    if (!baseline_downstream.is_null()) j["baseline_downstream"] = results(baseline_downstream);
    return j;
  }
};

// ---- downstream evaluation of a main stage's checkpoints ----------------------

inline DownstreamOptions downstream_options(const DownstreamStageConfig& d) {
  DownstreamOptions o;
  o.tasks = d.tasks;
  o.data_dir = d.data;
  o.shots = d.shots;
  if (d.max_samples > 0) o.max_samples = std::size_t(d.max_samples);
  o.seed = d.seed;
  o.batch_size = d.batch_size;
  return o;
}

// One model's per-checkpoint results as downstream.json stores them.
inline nlohmann::json downstream_entry(const std::string& checkpoint, long step, const std::string& signature,
                                       const DownstreamResult& r) {
  nlohmann::json tasks = nlohmann::json::object();
  for (const auto& t : r.tasks)
    tasks[t.task] = {{"accuracy", t.accuracy}, {"correct", t.correct}, {"examples", t.examples}};
  return {{"checkpoint", checkpoint}, {"step", step}, {"signature", signature}, {"tasks", tasks}, {"average", r.average}};
}

// What a stage's downstream.json depends on: the settings, the task data
// (file_signature per task folder), the tokenizer and the trained stage (its
// fingerprint). Each checkpoint is also recorded by its weights' signature.
inline nlohmann::json downstream_fingerprint(const DownstreamStageConfig& d, const std::filesystem::path& stage_dir) {
  nlohmann::json settings = d.to_json();
  settings.erase("data");  // its contents are in "task_data"
  nlohmann::json task_data = nlohmann::json::object();
  for (const auto& t : d.tasks) task_data[t] = file_signature(d.data / t);
  const auto stage_fp = stage_dir / std::string(fingerprint_file_name);
  return {{"stage", "downstream"},
          {"program", fmt::format("doremi {}", program_version)},
          {"settings", settings},
          {"task_data", task_data},
          {"tokenizer", d.tokenizer == "bytes" ? std::string("bytes") : file_signature(d.tokenizer)},
          {"model", std::filesystem::exists(stage_fp) ? content_hash(stage_fp) : std::string()}};
}

// The checkpoints of a finished training stage in step order, with their
// steps: every checkpoint-NNNNNNNN, and final/ when no checkpoint is at the
// stage's last step (the trainer always writes one there, equal to final/).
inline std::vector<std::pair<std::filesystem::path, long>> stage_checkpoints(const std::filesystem::path& dir,
                                                                             long final_step) {
  std::vector<std::pair<std::filesystem::path, long>> out;
  for (const auto& c : list_checkpoints(dir)) out.emplace_back(c, std::stol(c.filename().string().substr(11)));
  if (std::filesystem::exists(dir / "final") && (out.empty() || out.back().second != final_step))
    out.emplace_back(dir / "final", final_step);
  return out;
}

// Evaluates every checkpoint of the finished main stage in `dir` on the
// downstream tasks into dir/downstream.json (atomically, after each
// checkpoint, so an interrupted run keeps what it measured). A rerun reuses
// the recorded results of checkpoints whose weights are unchanged when the
// fingerprint matches, and evaluates all again (saying why) otherwise.
// Rank 0 alone evaluates; every rank returns the file's contents.
inline nlohmann::json evaluate_stage_downstream(const DownstreamStageConfig& d, ModelStages& stages,
                                                const std::filesystem::path& dir, long final_step) {
  namespace fs = std::filesystem;
  const fs::path file = dir / "downstream.json";
  if (dist::world().is_root()) {
    OutputLock lock(dir);
    const Tokenizer tokenizer = load_tokenizer(d.tokenizer);
    const nlohmann::json fp = downstream_fingerprint(d, dir);
    std::map<std::string, nlohmann::json> reusable;  // by checkpoint name
    if (fs::exists(file)) {
      const nlohmann::json old = read_json_file(file);
      if (old.value("fingerprint", nlohmann::json()) == fp && old.contains("checkpoints") &&
          old.at("checkpoints").is_array()) {
        for (const auto& e : old.at("checkpoints"))
          if (e.is_object() && e.contains("checkpoint") && e.at("checkpoint").is_string())
            reusable[e.at("checkpoint").get<std::string>()] = e;
      } else {
        std::vector<std::string> diffs;
        detail::fingerprint_differences(old.value("fingerprint", nlohmann::json::object()), fp, "", diffs);
        fmt::print(stderr, "{}: recorded with other settings ({}); evaluating again\n", file.string(),
                   fmt::join(diffs, "; "));
      }
    }
    nlohmann::json out{{"format", "doremi-downstream-1"}, {"fingerprint", fp}, {"tasks", d.tasks},
                       {"checkpoints", nlohmann::json::array()}};
    const DownstreamOptions options = downstream_options(d);
    for (const auto& [path, step] : stage_checkpoints(dir, final_step)) {
      const std::string name = path.filename().string();
      const std::string signature = file_signature(path / "model.safetensors");
      const auto it = reusable.find(name);
      if (it != reusable.end() && it->second.value("signature", std::string()) == signature) {
        out["checkpoints"].push_back(it->second);
        continue;
      }
      fmt::print(stderr, "{}: downstream tasks at step {}\n", (dir / name).string(), step);
      const DownstreamResult r = stages.evaluate_downstream_checkpoint(options, tokenizer, path);
      out["checkpoints"].push_back(downstream_entry(name, step, signature, r));
      write_file_atomic(file, out.dump(2) + "\n");
    }
    write_file_atomic(file, out.dump(2) + "\n");
  }
  dist::world().barrier();
  return read_json_file(file);
}

// A downstream.json's results as a report curve over `tasks` (a task it lacks: NaN).
inline DownstreamCurve downstream_curve(const nlohmann::json& j, const std::vector<std::string>& tasks,
                                        const std::string& name, const std::string& where) {
  DownstreamCurve c;
  c.name = name;
  try {
    for (const auto& e : j.at("checkpoints")) {
      c.steps.push_back(e.at("step").get<long>());
      std::vector<double> row;
      for (const auto& t : tasks)
        row.push_back(e.at("tasks").contains(t) ? e.at("tasks").at(t).at("accuracy").get<double>()
                                                : std::numeric_limits<double>::quiet_NaN());
      c.accuracy.push_back(std::move(row));
    }
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not a downstream results file ({})", where, e.what());
  }
  return c;
}

// Reference weights as the config says (a WeightSpec: a domain-config file,
// "uniform", or by size from a preprocessed folder's manifest times epochs).
inline std::vector<double> resolve_reference_weights(const RunConfig& cfg, const PipelineData& data) {
  return WeightSpec::parse(cfg.reference_weights).resolve(data.domains(), data.train.manifest, cfg.epochs,
                                                          "reference_weights");
}

// The report of a run: weights over the last round's proxy steps, final
// against reference weights, and per-domain perplexity of both main models.
inline void write_pipeline_report(const RunConfig& cfg, const PipelineResult& r, const std::string& small_preset,
                                  const std::string& main_preset) {
  ReportData d;
  d.title = "DoReMi report";
  d.settings = {{"data", cfg.data.string()},
                {"reference/proxy preset", small_preset},
                {"main preset", main_preset},
                {"device", cfg.device.str()},
                {"sequence length", std::to_string(cfg.seq_len)},
                {"reference weights", cfg.reference_weights},
                {"rounds run", std::to_string(r.round_weights.size())},
                {"proxy steps", std::to_string(cfg.proxy.steps)},
                {"η, c", fmt::format("{}, {}", cfg.proxy.dro.eta, cfg.proxy.dro.smoothing)}};
  d.domains = r.domains;
  d.reference_weights = r.reference_weights;
  d.doremi_weights = r.doremi_weights;
  const auto metrics = cfg.output / fmt::format("round-{}", r.round_weights.size()) / "proxy" / "metrics.jsonl";
  if (std::filesystem::exists(metrics)) {
    const WeightTrajectory t = read_weight_trajectory(metrics);
    d.steps = t.steps;
    d.step_weights = t.weights;
    d.step_average_weights = read_weight_trajectory(metrics, TrajectoryWeights::avg_alpha).weights;
  }
  if (r.baseline_perplexity) d.baseline_log_perplexity = r.baseline_perplexity->log_perplexity;
  if (r.doremi_perplexity) d.doremi_log_perplexity = r.doremi_perplexity->log_perplexity;
  if (cfg.downstream) {
    d.downstream_tasks = cfg.downstream->tasks;
    d.settings.emplace_back("downstream tasks", fmt::format("{} ({}-shot{})", fmt::join(cfg.downstream->tasks, ", "),
                                                            cfg.downstream->shots,
                                                            cfg.downstream->max_samples
                                                                ? fmt::format(", first {} examples",
                                                                              cfg.downstream->max_samples)
                                                                : std::string()));
    if (!r.baseline_downstream.is_null())
      d.downstream.push_back(downstream_curve(r.baseline_downstream, d.downstream_tasks, d.baseline_name,
                                              (cfg.output / "main-baseline/downstream.json").string()));
    if (!r.doremi_downstream.is_null())
      d.downstream.push_back(downstream_curve(r.doremi_downstream, d.downstream_tasks, d.doremi_name,
                                              (cfg.output / "main-doremi/downstream.json").string()));
  }
  write_report(cfg.output / "report", d);
}

// Every stage's settings against its preset, before any work: errors name
// the run config (cfg.source) and the stage.
inline void validate_run(const RunConfig& cfg, const ModelStages& small, const ModelStages& main) {
  const std::string where = cfg.source.empty() ? std::string("run config") : cfg.source;
  for (auto [name, stage, stages] : {std::tuple{"reference", &cfg.reference, &small}, std::tuple{"proxy", &cfg.proxy, &small},
                                     std::tuple{"main", &cfg.main, &main}}) {
    try {
      train_config_for(*stage, {}).validate();
      if (std::string_view(name) == "proxy") stage->dro.validate();
    } catch (const Error& e) {
      fail("{}: stage '{}': {}", where, name, e.what());
    }
    if (cfg.seq_len > stages->context())
      fail("{}: stage '{}': seq_len {} exceeds preset '{}''s context of {} tokens", where, name, cfg.seq_len,
           stages->preset(), stages->context());
  }
  WeightSpec::parse(cfg.reference_weights);
  if (cfg.downstream) {
    const auto& d = *cfg.downstream;
    const std::string at = fmt::format("{}: downstream", where);
    std::error_code ec;
    if (!std::filesystem::is_directory(d.data, ec))
      fail("{}: field 'data': {} is not a folder (it holds one folder per task)", at, d.data.string());
    for (const auto& t : d.tasks)
      if (!std::filesystem::is_directory(d.data / t, ec))
        fail("{}: field 'tasks': no folder {} for task '{}' (write it with datasets' save_to_disk, or as "
             "<split>.jsonl files; see docs/downstream.md)",
             at, (d.data / t).string(), t);
    try {
      const Tokenizer tok = load_tokenizer(d.tokenizer);
      if (tok.vocab_size() > main.vocab())
        fail("the tokenizer has {} tokens, more than main preset '{}''s vocabulary of {}", tok.vocab_size(),
             main.preset(), main.vocab());
    } catch (const Error& e) {
      fail("{}: field 'tokenizer': {}", at, e.what());
    }
  }
}

inline PipelineResult run_pipeline(const RunConfig& cfg, ModelStages& small, ModelStages& main) {
  namespace fs = std::filesystem;
  validate_run(cfg, small, main);
  nlohmann::json fp = cfg.training_json();  // "downstream" changes no model: its own fingerprint (downstream.json)
  fp.erase("output");
  fp["device"] = cfg.device.is_cuda() ? "cuda" : "cpu";  // any GPU index resumes
  fp["preset"] = small.preset();
  fp["main_preset"] = main.preset();
  fp["program"] = fmt::format("doremi {}", program_version);
  fp["data_identity"] = dataset_identity(cfg.data);
  const RootClaim claim(cfg.output, fp);  // held until the run ends
  const bool root = dist::world().is_root();  // rank 0 alone writes
  if (root) write_file_atomic(cfg.output / "run_config.json", nlohmann::json{{"preset", small.preset()},
                                                                   {"main_preset", main.preset()},
                                                                   {"device", cfg.device.str()},
                                                                   {"data", cfg.data.string()}}
                                                           .dump(2) + "\n");
  std::vector<std::string> domains = cfg.domains;
  if (domains.empty()) domains = WeightSpec::parse(cfg.reference_weights).domains();  // only the configured domains
  PipelineData data{open_dataset_folder(cfg.data, "train", domains), open_dataset_folder(cfg.data, "validation", domains),
                    cfg.seq_len, cfg.seed, cfg.eval_max_tokens, dataset_identity(cfg.data)};
  if (data.validation.domains != data.train.domains)
    fail("{}: the validation split's domains differ from the train split's", cfg.data.string());
  PipelineResult r;
  r.domains = data.domains();
  r.reference_weights = resolve_reference_weights(cfg, data);
  const std::size_t k = r.domains.size();
  if (root) write_domain_config(cfg.output / "reference_weights.json",
                      DomainConfig{{r.domains, r.reference_weights}, {r.domains, r.reference_weights}});

  std::vector<double> w_ref = r.reference_weights;
  for (int round = 1; round <= cfg.rounds; ++round) {
    const fs::path rd = cfg.output / fmt::format("round-{}", round);
    fmt::print(stderr, "round {}: reference model ({}) on {}\n", round, small.preset(),
               round == 1 ? "the reference weights" : "the previous round's weights");
    small.train(data, cfg.reference, w_ref, rd / "reference");
    const std::vector<double> uniform(k, 1.0 / double(k));
    const auto& start = cfg.proxy_sampling == "uniform" ? uniform : w_ref;
    fmt::print(stderr, "round {}: proxy with DRO\n", round);
    r.round_weights.push_back(small.dro(data, cfg.proxy, start, start, r.reference_weights, rd / "reference",
                                        rd / "proxy"));
    if (round > 1) {
      double change = 0;
      for (std::size_t i = 0; i < k; ++i)
        change = std::max(change, std::abs(r.round_weights[std::size_t(round - 1)][i] -
                                           r.round_weights[std::size_t(round - 2)][i]));
      fmt::print(stderr, "round {}: weights changed by at most {:.4g}\n", round, change);
      if (change < cfg.tolerance) break;
    }
    w_ref = r.round_weights.back();
  }
  r.doremi_weights = r.round_weights.back();
  if (root) write_domain_config(cfg.output / "doremi_weights.json",
                      DomainConfig{{r.domains, r.doremi_weights}, {r.domains, r.reference_weights}});

  StageConfig main_stage = cfg.main;
  if (cfg.downstream) main_stage.keep_checkpoints = std::numeric_limits<int>::max();  // each one is evaluated
  fmt::print(stderr, "main model ({}) on the DoReMi weights\n", main.preset());
  main.train(data, main_stage, r.doremi_weights, cfg.output / "main-doremi");
  r.doremi_perplexity = main.evaluate(data, cfg.output / "main-doremi");
  if (cfg.downstream) r.doremi_downstream = evaluate_stage_downstream(*cfg.downstream, main, cfg.output / "main-doremi",
                                                                      cfg.main.steps);
  if (cfg.baseline) {
    fmt::print(stderr, "baseline main model ({}) on the reference weights\n", main.preset());
    main.train(data, main_stage, r.reference_weights, cfg.output / "main-baseline");
    r.baseline_perplexity = main.evaluate(data, cfg.output / "main-baseline");
    if (cfg.downstream)
      r.baseline_downstream = evaluate_stage_downstream(*cfg.downstream, main, cfg.output / "main-baseline",
                                                        cfg.main.steps);
  }
  if (root) write_file_atomic(cfg.output / "summary.json", r.to_json().dump(2) + "\n");
  if (root) write_pipeline_report(cfg, r, small.preset(), main.preset());
  return r;
}

}  // namespace doremi
