// doremi: the example command-line program.
//
//   doremi train [--text FILE] [--preset tiny] [--steps 400] [--output DIR]
//
// `train` fits a language model on one text file with the byte tokenizer and
// prints the loss going down, the held-out loss before and after, and the
// unigram entropy a model without context could reach. With --output it
// writes metrics.jsonl and checkpoints there and resumes from the newest one.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "doremi/doremi.hpp"                 // Model, presets, Error
#include "doremi/data/byte_tokenizer.hpp"    // ByteTokenizer
#include "doremi/data/window_sampler.hpp"    // WindowSampler
#include "doremi/model/dispatch.hpp"         // dispatch_preset
#include "doremi/train/trainer.hpp"          // Trainer, TrainConfig

namespace {

using namespace doremi;

struct TrainArgs {
  std::string text = std::string(DOREMI_EXAMPLE_DATA) + "/licenses.txt";
  std::string preset = "tiny";
  std::string output;
  std::string schedule = "cosine";
  long steps = 400;
  int batch = 16, seq_len = 128, grad_accum = 1;
  double lr = 3e-3, end_lr = 3e-4, warmup = 0.06, weight_decay = 0.01, clip = 1.0;
  std::uint64_t seed = 1;
  long checkpoint_every = 0, log_every = 50;
  double holdout = 0.1;
};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open text file '{}'", path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Entropy (nats) of the token distribution: the best loss without context.
double unigram_entropy(const std::vector<std::int32_t>& tokens) {
  std::map<std::int32_t, double> counts;
  for (auto t : tokens) counts[t] += 1;
  double h = 0;
  for (const auto& [_, c] : counts) {
    const double p = c / double(tokens.size());
    h -= p * std::log(p);
  }
  return h;
}

// Mean loss over consecutive windows of `tokens` (read in order).
template <class M>
double heldout_loss(M& model, const std::vector<std::int32_t>& tokens, int T) {
  double sum = 0;
  std::size_t n = 0;
  for (std::size_t s = 0; s + std::size_t(T) < tokens.size(); s += std::size_t(T)) {
    std::vector<std::int32_t> in(tokens.begin() + std::ptrdiff_t(s), tokens.begin() + std::ptrdiff_t(s) + T);
    std::vector<std::int32_t> tg(tokens.begin() + std::ptrdiff_t(s) + 1, tokens.begin() + std::ptrdiff_t(s) + T + 1);
    const auto out = model.forward(in, tg, 1, T);
    sum += out.loss_sum;
    n += out.tokens;
  }
  return n ? sum / double(n) : 0.0;
}

int run_train(const TrainArgs& a) {
  const auto tokens = ByteTokenizer{}.encode(read_text(a.text));
  if (a.holdout <= 0 || a.holdout >= 0.5) fail("--holdout must be in (0, 0.5) (got {})", a.holdout);
  const std::size_t split = std::size_t(double(tokens.size()) * (1.0 - a.holdout));
  std::vector<std::int32_t> train(tokens.begin(), tokens.begin() + std::ptrdiff_t(split));
  std::vector<std::int32_t> heldout(tokens.begin() + std::ptrdiff_t(split), tokens.end());
  return dispatch_preset<float>(a.preset, [&]<class Cfg>() {
    if (Cfg::vocab < ByteTokenizer::vocab_size)
      fail("preset '{}' has a vocabulary of {} < {} byte tokens", Cfg::name, Cfg::vocab, ByteTokenizer::vocab_size);
    if (a.seq_len > Cfg::n_ctx) fail("--seq-len {} exceeds preset '{}''s context {}", a.seq_len, Cfg::name, Cfg::n_ctx);
    Model<Cfg> model;
    model.init(a.seed);
    WindowSampler sampler(train, a.batch, a.seq_len, a.seed);
    TrainConfig cfg;
    cfg.steps = a.steps;
    cfg.grad_accum = a.grad_accum;
    cfg.adam.lr = a.lr;
    cfg.adam.weight_decay = a.weight_decay;
    cfg.max_grad_norm = a.clip;
    cfg.schedule.kind = LrSchedule::parse(a.schedule);
    cfg.schedule.peak_lr = a.lr;
    cfg.schedule.end_lr = a.end_lr;
    cfg.schedule.total_steps = a.steps;
    cfg.schedule.warmup_steps = long(double(a.steps) * a.warmup);
    cfg.output_dir = a.output;
    cfg.checkpoint_every = a.checkpoint_every;
    cfg.log_every = a.log_every;
    cfg.progress = false;  // this program prints its own lines below
    Trainer trainer(model, sampler, cfg);
    if (trainer.resume_if_possible()) fmt::print("resumed from step {} in {}\n", trainer.step(), a.output);
    fmt::print("model {} ({:.2f}M parameters), {} training bytes, {} held-out bytes\n", Cfg::name,
               double(model.num_parameters()) / 1e6, train.size(), heldout.size());
    const double h_unigram = unigram_entropy(train);
    const double before = heldout_loss(model, heldout, a.seq_len);
    fmt::print("held-out loss before: {:.4f} nats/byte   unigram entropy: {:.4f}\n", before, h_unigram);
    trainer.run([&](const StepStats& s) {
      if (s.step % a.log_every == 0 || s.step == a.steps || s.step == 1)
        fmt::print("step {:5d}  loss {:.4f}  lr {:.2e}  grad-norm {:.3f}  {:.0f} tok/s\n", s.step, s.loss, s.lr,
                   s.grad_norm, s.seconds > 0 ? double(s.tokens) / s.seconds : 0.0);
    });
    const double after = heldout_loss(model, heldout, a.seq_len);
    fmt::print("held-out loss after:  {:.4f} nats/byte ({:.1f}% of the unigram entropy {:.4f})\n", after,
               100.0 * after / h_unigram, h_unigram);
    return 0;
  });
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"doremi: DoReMi domain-weight optimisation for language-model pretraining"};
  app.require_subcommand(1);
  TrainArgs t;
  auto* train = app.add_subcommand("train", "Train a language model on one text file (byte tokenizer)");
  train->add_option("--text", t.text, "UTF-8 text file")->capture_default_str();
  train->add_option("--preset", t.preset, std::string("Model preset: ") + std::string(preset_names))
      ->capture_default_str();
  train->add_option("--output", t.output, "Folder for metrics.jsonl and checkpoints (resumes from the newest)");
  train->add_option("--steps", t.steps, "Optimizer steps")->capture_default_str();
  train->add_option("--batch", t.batch, "Sequences per micro-batch")->capture_default_str();
  train->add_option("--seq-len", t.seq_len, "Tokens per sequence")->capture_default_str();
  train->add_option("--grad-accum", t.grad_accum, "Micro-batches per step")->capture_default_str();
  train->add_option("--lr", t.lr, "Peak learning rate")->capture_default_str();
  train->add_option("--end-lr", t.end_lr, "Final learning rate")->capture_default_str();
  train->add_option("--schedule", t.schedule, "constant, linear, cosine or linear_warmup_exponential")
      ->capture_default_str();
  train->add_option("--warmup", t.warmup, "Warmup share of the steps")->capture_default_str();
  train->add_option("--weight-decay", t.weight_decay, "AdamW weight decay")->capture_default_str();
  train->add_option("--clip", t.clip, "Global gradient-norm clip (0: none)")->capture_default_str();
  train->add_option("--seed", t.seed, "Seed for initialisation and sampling")->capture_default_str();
  train->add_option("--checkpoint-every", t.checkpoint_every, "Steps between checkpoints (0: at the end)")
      ->capture_default_str();
  train->add_option("--log-every", t.log_every, "Steps between printed lines")->capture_default_str();
  train->add_option("--holdout", t.holdout, "Share of the text held out for evaluation")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    if (train->parsed()) return run_train(t);
  } catch (const doremi::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
