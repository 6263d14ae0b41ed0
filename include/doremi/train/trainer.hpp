#pragma once
// Trainer<Model, Sampler>: plain language-model training (the reference and
// main models of DoReMi). One step = `grad_accum` micro-batches whose summed
// token losses are divided by the step's total target tokens, so k
// micro-batches give the same gradient as one batch k times larger; then
// global-norm clipping and AdamW at the schedule's learning rate.
//
//   doremi::Trainer trainer(model, sampler, config);
//   trainer.resume_if_possible();          // picks up output_dir's last checkpoint
//   trainer.run();                         // metrics.jsonl, checkpoints, progress bar
//
// Checkpoints (`output_dir/checkpoint-00000100/`) hold the model as HuggingFace
// loads it, the AdamW moments and the trainer and sampler state; a run resumed
// from one continues bit-identically on the CPU (same thread count).
//
// Data-parallel (docs/distributed.md): under mpirun/srun with W ranks (the
// communicator is dist::world(), or set_communicator's), every rank draws the
// step's whole global batch from its own copy of the sampler (so the sampler's
// state is global and a checkpoint resumes on any number of ranks) and
// trains on its contiguous share of the step's sequences (local_share); the
// gradients are summed across ranks before the norm and AdamW, so every rank
// holds the same parameters and the trajectory does not depend on W beyond
// float rounding. Rank 0 alone writes metrics, checkpoints and progress;
// run() first compares the ranks' settings (check_consistency).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "doremi/core/atomic_file.hpp"
#include "doremi/core/error.hpp"
#include "doremi/core/json.hpp"
#include "doremi/core/progress.hpp"
#include "doremi/core/safetensors.hpp"
#include "doremi/data/batch.hpp"
#include "doremi/dist/world.hpp"
#include "doremi/model/checkpoint.hpp"
#include "doremi/optim/adamw.hpp"
#include "doremi/optim/clip.hpp"
#include "doremi/optim/schedule.hpp"
#include "doremi/train/trainer_state.hpp"

namespace doremi {

struct TrainConfig {
  long steps = 1000;
  int grad_accum = 1;            // micro-batches per optimizer step
  AdamWConfig adam{};
  LrSchedule schedule{};         // total_steps is set to `steps` when 0
  double max_grad_norm = 1.0;    // ≤ 0: no clipping
  std::filesystem::path output_dir;  // empty: no metrics or checkpoints on disk
  long checkpoint_every = 0;     // 0: only at the end
  int keep_checkpoints = 2;      // older checkpoints are removed
  long log_every = 10;           // progress lines when not on a terminal
  bool progress = true;

  void validate() const {
    if (steps <= 0) fail("train config: steps must be positive (got {})", steps);
    if (grad_accum <= 0) fail("train config: grad_accum must be positive (got {})", grad_accum);
    if (checkpoint_every < 0) fail("train config: checkpoint_every must be >= 0 (got {})", checkpoint_every);
    if (keep_checkpoints < 1) fail("train config: keep_checkpoints must be >= 1 (got {})", keep_checkpoints);
    adam.validate();
    schedule.validate();
  }
};

struct StepStats {
  long step = 0;          // optimizer steps completed, this one included
  double loss = 0;        // mean token cross-entropy over the step's batch
  double lr = 0;
  double grad_norm = 0;   // before clipping
  std::size_t tokens = 0;
  double seconds = 0;
  nlohmann::json extra = nlohmann::json::object();  // trainer-specific metrics (DRO: scores, weights)
  nlohmann::json to_json() const {
    nlohmann::json j{{"step", step}, {"loss", loss}, {"lr", lr}, {"grad_norm", grad_norm}, {"tokens", tokens},
                     {"tokens_per_s", seconds > 0 ? double(tokens) / seconds : 0.0}};
    j.update(extra);
    return j;
  }
};

// Names of a checkpoint folder and the parameter groups of a model.
inline std::string checkpoint_name(long step) { return fmt::format("checkpoint-{:08d}", step); }

template <class M>
std::vector<ParamGroup> param_groups() {
  std::vector<ParamGroup> g;
  for (const TensorInfo& t : M::tensors()) g.push_back({t.offset, t.size, t.decay});
  return g;
}

// The checkpoint folders under `dir`, oldest first (only complete ones: a
// folder appears under its final name only once fully written).
inline std::vector<std::filesystem::path> list_checkpoints(const std::filesystem::path& dir) {
  std::vector<std::filesystem::path> out;
  if (!std::filesystem::is_directory(dir)) return out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.starts_with("checkpoint-") && n.size() == 19 &&
        std::all_of(n.begin() + 11, n.end(), [](char c) { return c >= '0' && c <= '9'; }))
      out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// What every trainer shares: drawing micro-batches, clipping, AdamW at the
// schedule's rate, metrics, checkpoints and resuming. `Derived` supplies
//   void accumulate_gradients(const std::vector<Batch>& micro, std::size_t tokens, StepStats& s)
//     (gradients of the step's loss into model().gradients(); sets s.loss)
//   nlohmann::json extra_state() const; void restore_extra_state(const nlohmann::json&)
//     (what else a checkpoint must hold to resume bit-identically).
template <class Derived, class M, class S>
class TrainerBase {
 public:
  using scalar = typename M::scalar;
  using backend_type = typename M::backend_type;

  TrainerBase(M& model, S& sampler, TrainConfig config)
      : model_(model), sampler_(sampler), config_(std::move(config)),
        adam_(model.num_parameters(), config_.adam, model.backend()), groups_(param_groups<M>()) {
    if (config_.schedule.total_steps == 0) config_.schedule.total_steps = config_.steps;
    config_.validate();
  }

  long step() const { return step_; }
  const TrainConfig& config() const { return config_; }
  AdamW<scalar, backend_type>& optimizer() { return adam_; }
  M& model() { return model_; }
  S& sampler() { return sampler_; }
  const dist::Comm& communicator() const { return comm_; }
  // The ranks this trainer spans (default dist::world()); every rank of `c`
  // must make the same calls.
  void set_communicator(dist::Comm c) { comm_ = std::move(c); }

  // This rank's share of a step's global micro-batches: the contiguous rows
  // [N·r/W, N·(r+1)/W) of their concatenation (N rows, rank r of W), regrouped
  // into batches of at most the largest micro-batch's rows (rows of different
  // lengths T are never merged). With W = 1: the micro-batches themselves.
  std::vector<Batch> local_share(const std::vector<Batch>& micro) const {
    const int W = comm_.size(), r = comm_.rank();
    if (W == 1) return micro;
    std::size_t total = 0;
    int rows = 0;
    for (const Batch& b : micro) {
      total += std::size_t(b.B);
      rows = std::max(rows, b.B);
    }
    const std::size_t lo = total * std::size_t(r) / std::size_t(W), hi = total * std::size_t(r + 1) / std::size_t(W);
    std::vector<Batch> out;
    std::size_t at = 0;
    for (const Batch& b : micro) {
      for (int i = 0; i < b.B; ++i, ++at) {
        if (at < lo || at >= hi) continue;
        if (out.empty() || out.back().B == rows || out.back().T != b.T) out.emplace_back().T = b.T;
        Batch& o = out.back();
        const auto from = std::ptrdiff_t(i) * b.T;
        o.inputs.insert(o.inputs.end(), b.inputs.begin() + from, b.inputs.begin() + from + b.T);
        o.targets.insert(o.targets.end(), b.targets.begin() + from, b.targets.begin() + from + b.T);
        if (!b.domain.empty()) o.domain.push_back(b.domain[std::size_t(i)]);
        ++o.B;
      }
    }
    return out;
  }

  // Start-up check of a data-parallel run: the ranks' train config, model
  // preset and parameters, sampler state, step and the derived trainer's state
  // must agree; else every rank raises an error naming the first rank that
  // differs and what. A no-op on one rank.
  void check_consistency() {
    if (comm_.size() == 1) return;
    const TrainConfig& c = config_;
    const std::string cfg = fmt::format(
        "steps={} grad_accum={} lr={} b1={} b2={} eps={} wd={} sched={} peak={} end={} warmup={} total={} clip={} "
        "ckpt={} keep={}",
        c.steps, c.grad_accum, c.adam.lr, c.adam.beta1, c.adam.beta2, c.adam.eps, c.adam.weight_decay,
        int(c.schedule.kind), c.schedule.peak_lr, c.schedule.end_lr, c.schedule.warmup_steps, c.schedule.total_steps,
        c.max_grad_norm, c.checkpoint_every, c.keep_checkpoints);
    const auto params = model_.host_parameters();
    dist::check_same(comm_, fmt::format("{} (data-parallel start-up)", Derived::label),
                     {{"train config", dist::fingerprint(cfg)},
                      {"output_dir", dist::fingerprint(c.output_dir.string())},
                      {"model preset", dist::fingerprint(M::config::name)},
                      {"model parameters", dist::fingerprint_bytes(std::span<const scalar>(params))},
                      {"sampler (data, weights, seed, position)", dist::fingerprint(sampler_.state().dump())},
                      {"step (resumed checkpoint)", dist::fingerprint(std::to_string(step_))},
                      {fmt::format("{} state", Derived::label), dist::fingerprint(derived().extra_state().dump())}});
  }

  // One optimizer step over `grad_accum` micro-batches.
  StepStats train_step() {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<Batch> micro;
    std::size_t tokens = 0;
    for (int k = 0; k < config_.grad_accum; ++k) {
      micro.push_back(sampler_.next());
      tokens += micro.back().target_tokens();
    }
    if (tokens == 0) fail("training step {}: the batch has no target tokens", step_ + 1);
    model_.zero_grad();
    StepStats s;
    derived().accumulate_gradients(micro, tokens, s);  // this rank's share of `micro`; `tokens` is global
    dist::all_reduce_gradients(comm_, model_.backend(), model_.gradients());
    if (!std::isfinite(s.loss))
      fail("training step {}: the loss is not finite ({}); lower the learning rate or check the data", step_ + 1,
           s.loss);
    s.grad_norm = global_grad_norm(model_.backend(), std::span<const scalar>(model_.gradients()));
    if (!std::isfinite(s.grad_norm))
      fail("training step {}: the gradient norm is not finite ({})", step_ + 1, s.grad_norm);
    s.lr = config_.schedule.at(step_);
    // Clipping happens in AdamW's reads of the gradients (clip_grad_norm's
    // arithmetic, without a pass that scales the buffer).
    adam_.step(model_.parameters(), model_.gradients(), groups_, s.lr,
               clip_coefficient(s.grad_norm, config_.max_grad_norm));
    ++step_;
    s.step = step_;
    s.tokens = tokens;
    s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return s;
  }

  // Trains until `config.steps`, logging metrics.jsonl and checkpointing into
  // output_dir. `on_step` (optional) sees every step's stats.
  template <class F = void (*)(const StepStats&)>
  void run(F&& on_step = [](const StepStats&) {}) {
    check_consistency();
    const bool root = comm_.is_root();
    ProgressBar bar(Derived::label, config_.steps, config_.log_every);
    bar.resumed_at(step_);
    std::ofstream metrics;
    if (root && !config_.output_dir.empty()) {
      std::filesystem::create_directories(config_.output_dir);
      truncate_metrics();  // lines past the resumed step (all of them without a checkpoint) are a killed run's
      metrics.open(config_.output_dir / "metrics.jsonl", std::ios::app);
    }
    while (step_ < config_.steps) {
      const StepStats s = train_step();
      on_step(s);
      if (metrics.is_open()) metrics << s.to_json().dump() << "\n" << std::flush;
      if (root && config_.progress)
        bar.update(s.step, fmt::format("loss {:.4f} lr {:.2e} {:.0f} tok/s", s.loss, s.lr,
                                       s.seconds > 0 ? double(s.tokens) / s.seconds : 0.0));
      const bool due = config_.checkpoint_every > 0 && step_ % config_.checkpoint_every == 0;
      if (!config_.output_dir.empty() && (due || step_ == config_.steps)) save_checkpoint();
    }
  }

  // Writes output_dir/checkpoint-<step>/ atomically and prunes old ones. With
  // several ranks: rank 0 writes, and every rank returns once it has.
  std::filesystem::path save_checkpoint() {
    if (config_.output_dir.empty()) fail("save_checkpoint: the train config has no output_dir");
    const auto final_path = config_.output_dir / checkpoint_name(step_);
    if (!comm_.is_root()) {
      comm_.barrier();
      return final_path;
    }
    std::filesystem::create_directories(config_.output_dir);
    AtomicDirectory dir(final_path);
    save_model(model_, dir.path());
    SafetensorsWriter opt;
    const std::vector<std::int64_t> shape{std::int64_t(adam_.size())};
    const std::vector<scalar> m = adam_.host_state_m(), v = adam_.host_state_v();
    opt.add("exp_avg", shape, std::span<const scalar>(m));
    opt.add("exp_avg_sq", shape, std::span<const scalar>(v));
    opt.set_metadata("steps", std::to_string(adam_.steps()));
    opt.write(dir.path() / "optimizer.safetensors");
    const nlohmann::json state{{"format", "doremi-trainer-1"},
                               {"step", step_},
                               {"sampler", sampler_.state()},
                               {"preset", std::string(M::config::name)},
                               {"extra", derived().extra_state()}};
    write_file_atomic(dir.path() / "trainer_state.json", state.dump(2) + "\n");
    dir.commit();
    auto all = list_checkpoints(config_.output_dir);
    for (std::size_t i = 0; i + std::size_t(config_.keep_checkpoints) < all.size(); ++i)
      std::filesystem::remove_all(all[i]);
    comm_.barrier();
    return final_path;
  }

  // Restores model, optimizer, sampler, step and the derived trainer's state.
  void load_checkpoint(const std::filesystem::path& dir) {
    const auto state_path = dir / "trainer_state.json";
    const TrainerState state = parse_trainer_state(read_json_file(state_path), state_path.string());
    load_model(model_, dir);
    const SafetensorsFile opt(dir / "optimizer.safetensors");
    const std::vector<std::int64_t> shape{std::int64_t(adam_.size())};
    std::vector<scalar> m(adam_.size()), v(adam_.size());
    opt.read("exp_avg", shape, std::span<scalar>(m));
    opt.read("exp_avg_sq", shape, std::span<scalar>(v));
    const auto& meta = opt.metadata();
    const auto it = meta.find("steps");
    if (it == meta.end()) fail("load_checkpoint: {} has no 'steps' metadata", (dir / "optimizer.safetensors").string());
    adam_.restore(m, v, parse_optimizer_steps(it->second, (dir / "optimizer.safetensors").string()));
    sampler_.restore(state.sampler);
    derived().restore_extra_state(state.extra);
    step_ = state.step;
    if (comm_.is_root()) truncate_metrics();
  }

  // Resumes from the newest checkpoint in output_dir; false when there is none.
  bool resume_if_possible() {
    if (config_.output_dir.empty()) return false;
    const auto all = list_checkpoints(config_.output_dir);
    if (all.empty()) return false;
    load_checkpoint(all.back());
    if (step_ > config_.steps)
      fail("{}: the checkpoint is at step {}, past this run's {} steps; resume with at least {} steps, or start "
           "afresh in an empty folder",
           all.back().string(), step_, config_.steps, step_);
    return true;
  }

 protected:
  Derived& derived() { return static_cast<Derived&>(*this); }

  // Drops metric lines of steps after the resumed one (written by the run that
  // was interrupted), so metrics.jsonl lists every step exactly once.
  void truncate_metrics() {
    if (config_.output_dir.empty()) return;
    const auto path = config_.output_dir / "metrics.jsonl";
    if (!std::filesystem::exists(path)) return;
    std::ifstream in(path);
    std::string kept, line;
    while (std::getline(in, line)) {
      const auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.is_object()) continue;  // a line cut short by the interruption
      const auto it = j.find("step");
      if (it == j.end() || !it->is_number_integer() || it->get<std::int64_t>() <= step_) kept += line + "\n";
    }
    write_file_atomic(path, kept);
  }

  M& model_;
  S& sampler_;
  TrainConfig config_;
  dist::Comm comm_ = dist::world();
  AdamW<scalar, backend_type> adam_;
  std::vector<ParamGroup> groups_;
  long step_ = 0;
};

// Plain language-model training: the mean token cross-entropy over the step.
template <class M, class S>
class Trainer : public TrainerBase<Trainer<M, S>, M, S> {
 public:
  using Base = TrainerBase<Trainer<M, S>, M, S>;
  using scalar = typename M::scalar;
  static constexpr const char* label = "train";
  using Base::Base;

  void accumulate_gradients(const std::vector<Batch>& micro, std::size_t tokens, StepStats& s) {
    double loss_sum = 0;
    for (const Batch& b : this->local_share(micro)) {
      const auto out = this->model_.forward(b.inputs, b.targets, b.B, b.T);
      loss_sum += out.loss_sum;
      weights_.assign(out.losses.size(), scalar(1.0 / double(tokens)));
      this->model_.backward(weights_);
    }
    this->comm_.all_reduce_sum(std::span<double>(&loss_sum, 1));
    s.loss = loss_sum / double(tokens);
  }
  nlohmann::json extra_state() const { return nlohmann::json::object(); }
  void restore_extra_state(const nlohmann::json&) {}

 private:
  std::vector<scalar> weights_;
};

template <class M, class S>
Trainer(M&, S&, TrainConfig) -> Trainer<M, S>;

}  // namespace doremi
