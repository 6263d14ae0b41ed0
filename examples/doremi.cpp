// doremi: the example command-line program.
//
//   doremi quickstart [--output DIR] [--device D]    the whole method on the embedded corpus
//   doremi tokenize --tokenizer PATH|bytes --input FILE
//   doremi preprocess --input PATH... --domain-key KEY --tokenizer PATH --seq-len N --output DIR
//   doremi baseline-weights --data DIR --output FILE [--mode pack|nopack] [--epochs pile|FILE]
//   doremi train (--text FILE | --data DIR [--weights FILE|uniform]) [--preset NAME] [--output DIR]
//   doremi dro --data DIR --reference DIR [--weights FILE|uniform] --output DIR
//   doremi eval --model DIR --data DIR
//   doremi generate --model DIR (--prompt TEXT... | --prompts-file FILE) [--max-new-tokens N] [--sample ...]
//   doremi pipeline --config FILE [--device D]
//   doremi downstream (--model DIR | --run DIR --all-checkpoints) --data DIR [--tasks a,b] [--shots 1]
//                     [--max-samples N] [--output FILE] [--predictions FILE]
//
// --device is cpu (default), cuda or cuda:N on train --data, dro, eval,
// generate, pipeline and quickstart; the GPU stages are compiled in when the build has
// the CUDA backend (cuda_stages.cu). Every subcommand has --help.
//
// Every failure prints one line "error: ..." (naming the file, field or flag)
// and exits 1; SIGINT/SIGTERM remove this run's unfinished checkpoint
// staging folders and exit 128 + the signal. Output folders are locked while
// a run writes them and record a fingerprint of what produced them
// (core/output_folder.hpp): a rerun resumes only with the same settings and
// data, else fails saying what differs; --overwrite starts afresh.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

#include <omp.h>
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <omp.h>
#include <fmt/format.h>

#include "doremi/doremi.hpp"                  // Model, presets, Error
#include "doremi/backend/device.hpp"          // Device
#include "doremi/core/output_folder.hpp"      // OutputLock, claim_output, fingerprints
#include "doremi/data/byte_tokenizer.hpp"     // ByteTokenizer
#include "doremi/data/dataset_folder.hpp"     // open_dataset_folder, AnySource
#include "doremi/data/domain_config.hpp"      // read/write domain configs, weights by size
#include "doremi/data/preprocess.hpp"         // preprocess
#include "doremi/data/tokenizer.hpp"          // load_tokenizer
#include "doremi/data/weight_spec.hpp"        // WeightSpec
#include "doremi/data/window_sampler.hpp"     // WindowSampler
#include "doremi/dist/world.hpp"              // dist::start, world, report_error
#include "doremi/eval/generate.hpp"           // generate, GenerationConfig
#include "doremi/model/dispatch.hpp"          // dispatch_preset, preset_for_checkpoint
#include "doremi/pipeline/pipeline.hpp"       // run_pipeline, StagesFor
#include "doremi/train/trainer.hpp"           // Trainer, TrainConfig

#ifdef DOREMI_CLI_CUDA
namespace doremi_cli {  // cuda_stages.cu
std::unique_ptr<doremi::ModelStages> make_cuda_stages(const std::string& preset, int device);
std::vector<doremi::GeneratedRow> generate_cuda(const std::string& preset, int device, const std::filesystem::path& dir,
                                                const std::vector<std::vector<std::int32_t>>& prompts,
                                                const doremi::GenerationConfig& config, const doremi::Tokenizer& tokenizer);
}
#endif

namespace {

using namespace doremi;
namespace fs = std::filesystem;

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open '{}'", path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs `f`, turning nlohmann's type and range errors (a field of the wrong
// type in a JSON file that parsed) into errors naming `file`.
template <class F>
auto in_file(const fs::path& file, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const nlohmann::json::exception& e) {
    fail("{}: a field has the wrong type or an out-of-range value ({})", file.string(), e.what());
  }
}

// --threads: 0 (all cores) up to a few times the cores (OpenMP aborts, and
// every thread holds a tokenizer copy, far beyond that).
void check_threads(int threads, const char* flag) {
  const int cores = int(std::max(1u, std::thread::hardware_concurrency()));
  const int most = std::max(64, 4 * cores);
  if (threads < 0 || threads > most)
    fail("{} {} is out of range: give 0 (all {} cores) up to {}", flag, threads, cores, most);
}

void check_seq_len(int seq_len, const char* flag = "--seq-len") {
  if (seq_len < 2) fail("{} must be at least 2 (got {})", flag, seq_len);
}

// The stage options' ranges, named by their flags (the rest: StageConfig::validate).
void check_stage_flags(const StageConfig& s, const char* command) {
  if (s.steps <= 0) fail("--steps must be positive (got {})", s.steps);
  if (s.batch_size <= 0) fail("--batch must be positive (got {})", s.batch_size);
  if (s.grad_accum <= 0) fail("--grad-accum must be positive (got {})", s.grad_accum);
  if (!(s.warmup >= 0 && s.warmup < 1)) fail("--warmup must lie in [0, 1) (got {})", s.warmup);
  if (s.checkpoint_every < 0) fail("--checkpoint-every must be >= 0 (got {})", s.checkpoint_every);
  s.validate(command);
  train_config_for(s, {}).validate();
}

// A stage's run, with a checkpoint's JSON state of the wrong type named.
template <class F>
auto in_output(const fs::path& output, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const nlohmann::json::exception& e) {
    fail("{}: a checkpoint's trainer_state.json or done.json has a field of the wrong type or out of range ({}); "
         "rerun with --overwrite to start afresh",
         output.string(), e.what());
  }
}

// --overwrite: empties a doremi output folder (under its lock) before a run.
// Under mpirun/srun rank 0 alone does it and the others wait.
void overwrite_folder(const fs::path& dir) {
  if (dist::world().is_root()) {
    OutputLock lock(dir);
    clear_output_folder(dir);
  }
  dist::world().barrier();
}

// The identity of a tokenizer spec: "bytes", or a hash of its files.
std::string tokenizer_identity(const std::string& spec) {
  if (spec == "bytes") return spec;
  if (!fs::is_directory(spec)) return content_hash(spec);
  std::string id;
  for (const char* f : {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                        "special_tokens_map.json", "added_tokens.json"})
    if (fs::exists(fs::path(spec) / f)) id += fmt::format("{}={};", f, content_hash(fs::path(spec) / f));
  return id;
}

// preprocess() under the output folder's lock and fingerprint (inputs by
// file_signature, the tokenizer by content, every setting that changes the shards).
PreprocessReport preprocess_claimed(const PreprocessConfig& pc, const std::string& tokenizer) {
  check_threads(pc.threads, "--threads");
  check_seq_len(pc.seq_len);
  pc.validate();
  nlohmann::json inputs = nlohmann::json::array();
  for (const auto& i : pc.inputs) inputs.push_back(file_signature(i));
  const nlohmann::json fp{{"stage", "preprocess"},
                          {"program", fmt::format("doremi {}", program_version)},
                          {"inputs", inputs},
                          {"tokenizer", tokenizer_identity(tokenizer)},
                          {"domain_key", pc.domain_key},
                          {"text_key", pc.text_key},
                          {"seq_len", pc.seq_len},
                          {"pack", pc.pack},
                          {"validation_share", pc.validation_share},
                          {"seed", pc.seed},
                          {"strict", pc.fail_on_bad_document}};
  const Tokenizer tok = load_tokenizer(tokenizer);
  OutputLock lock(pc.output);
  claim_output(pc.output, fp);
  return preprocess(pc, tok);
}

// A StageConfig's fields as command-line options.
void add_stage_options(CLI::App* app, StageConfig& s) {
  app->add_option("--steps", s.steps, "Optimizer steps")->capture_default_str();
  app->add_option("--batch", s.batch_size, "Sequences per micro-batch")->capture_default_str();
  app->add_option("--grad-accum", s.grad_accum, "Micro-batches per step")->capture_default_str();
  app->add_option("--lr", s.lr, "Peak learning rate")->capture_default_str();
  app->add_option("--end-lr", s.end_lr, "Final learning rate")->capture_default_str();
  app->add_option("--schedule", s.schedule, "constant, linear, cosine or linear_warmup_exponential")
      ->capture_default_str();
  app->add_option("--warmup", s.warmup, "Warmup share of the steps")->capture_default_str();
  app->add_option("--weight-decay", s.weight_decay, "AdamW weight decay")->capture_default_str();
  app->add_option("--clip", s.max_grad_norm, "Global gradient-norm clip (0: none)")->capture_default_str();
  app->add_option("--checkpoint-every", s.checkpoint_every, "Steps between checkpoints (0: at the end)")
      ->capture_default_str();
}

// ---- train on one text file ------------------------------------------------

struct TextTrainArgs {
  std::string text = std::string(DOREMI_EXAMPLE_DATA) + "/licenses.txt";
  std::string preset = "tiny", output;
  int seq_len = 128;
  std::uint64_t seed = 1;
  double holdout = 0.1;
  long log_every = 50;
};

double unigram_entropy(const std::vector<std::int32_t>& tokens) {
  std::map<std::int32_t, double> counts;
  for (auto t : tokens) counts[t] += 1;
  double h = 0;
  for (const auto& [_, c] : counts) h -= c / double(tokens.size()) * std::log(c / double(tokens.size()));
  return h;
}

int run_text_train(const TextTrainArgs& a, StageConfig stage) {
  const auto tokens = ByteTokenizer{}.encode(read_text(a.text));
  if (!(a.holdout > 0 && a.holdout < 0.5)) fail("--holdout must be in (0, 0.5) (got {})", a.holdout);
  if (a.log_every <= 0) fail("--log-every must be positive (got {})", a.log_every);
  std::optional<OutputLock> lock;
  if (!a.output.empty()) {
    lock.emplace(a.output);
    nlohmann::json settings = stage.to_json();
    for (const char* k : {"checkpoint_every", "eta", "smoothing"}) settings.erase(k);
    const nlohmann::json fp{{"stage", "train --text"}, {"program", fmt::format("doremi {}", program_version)},
                            {"preset", a.preset},      {"seq_len", a.seq_len},
                            {"seed", a.seed},          {"holdout", a.holdout},
                            {"text", content_hash(a.text)}, {"settings", settings}};
    claim_output(a.output, fp);
  }
  const auto split = std::ptrdiff_t(double(tokens.size()) * (1.0 - a.holdout));
  const std::vector<std::int32_t> train(tokens.begin(), tokens.begin() + split), heldout(tokens.begin() + split, tokens.end());
  return dispatch_preset<float>(a.preset, [&]<class Cfg>() {
    if (Cfg::vocab < ByteTokenizer::vocab_size)
      fail("preset '{}' has a vocabulary of {} < {} byte tokens", Cfg::name, Cfg::vocab, ByteTokenizer::vocab_size);
    if (a.seq_len > Cfg::n_ctx) fail("--seq-len {} exceeds preset '{}''s context {}", a.seq_len, Cfg::name, Cfg::n_ctx);
    Model<Cfg> model;
    model.init(a.seed);
    WindowSampler sampler(train, stage.batch_size, a.seq_len, a.seed);
    TrainConfig cfg = train_config_for(stage, a.output);
    cfg.log_every = a.log_every;
    cfg.progress = false;  // this program prints its own lines below
    Trainer trainer(model, sampler, cfg);
    if (trainer.resume_if_possible()) fmt::print("resumed from step {} in {}\n", trainer.step(), a.output);
    const std::vector<MemorySource> held{MemorySource({heldout}, "held-out text")};
    auto heldout_loss = [&] { return evaluate_perplexity(model, {"text"}, held, a.seq_len, 8).log_perplexity[0]; };
    fmt::print("model {} ({:.2f}M parameters), {} training bytes, {} held-out bytes\n", Cfg::name,
               double(model.num_parameters()) / 1e6, train.size(), heldout.size());
    const double h_unigram = unigram_entropy(train);
    fmt::print("held-out loss before: {:.4f} nats/byte   unigram entropy: {:.4f}\n", heldout_loss(), h_unigram);
    trainer.run([&](const StepStats& s) {
      if (s.step % a.log_every == 0 || s.step == stage.steps || s.step == 1)
        fmt::print("step {:5d}  loss {:.4f}  lr {:.2e}  grad-norm {:.3f}  {:.0f} tok/s\n", s.step, s.loss, s.lr,
                   s.grad_norm, s.seconds > 0 ? double(s.tokens) / s.seconds : 0.0);
    });
    const double after = heldout_loss();
    fmt::print("held-out loss after:  {:.4f} nats/byte ({:.1f}% of the unigram entropy {:.4f})\n", after,
               100.0 * after / h_unigram, h_unigram);
    return 0;
  });
}

// ---- data-folder stages (train, dro, eval) ------------------------------------

std::unique_ptr<ModelStages> stages_on(const std::string& preset, const Device& device) {
  if (!device.is_cuda()) return make_stages(preset);
#ifdef DOREMI_CLI_CUDA
  return doremi_cli::make_cuda_stages(preset, device.index);
#else
  fail("--device {}: this doremi was built without the CUDA backend (configure with -DDOREMI_CUDA=ON on a machine "
       "with nvcc)",
       device.str());
#endif
}

Device parse_device(const std::string& s) { return Device::parse(s, "--device"); }

// Weights for `data`'s domains from a --weights value (a WeightSpec).
std::vector<double> weights_for(const std::string& spec, const PipelineData& data) {
  return WeightSpec::parse(spec).resolve(data.domains(), data.train.manifest, nullptr, "--weights");
}

std::vector<std::string> domains_of(const std::string& weights_spec) { return WeightSpec::parse(weights_spec).domains(); }

PipelineData open_data(const std::string& dir, const std::vector<std::string>& domains, int seq_len, std::uint64_t seed) {
  PipelineData d{in_file(fs::path(dir) / "manifest.json", [&] { return open_dataset_folder(dir, "train", domains); }),
                 {}, seq_len, seed, 0, dataset_identity(dir)};
  if (d.domains().empty()) fail("dataset {} has no train data", dir);
  return d;
}

void print_perplexity_table(const std::vector<std::string>& domains, const std::vector<double>& ref,
                            const std::vector<double>& doremi, const PerplexityReport* base,
                            const PerplexityReport* dr) {
  std::size_t w = 6;
  for (const auto& d : domains) w = std::max(w, d.size());
  fmt::print("\n{:<{}}  {:>10}  {:>10}  {:>14}  {:>14}\n", "domain", w, "reference", "DoReMi", "baseline ppl", "DoReMi ppl");
  for (std::size_t i = 0; i < domains.size(); ++i)
    fmt::print("{:<{}}  {:>10.4f}  {:>10.4f}  {:>14.4f}  {:>14.4f}\n", domains[i], w, ref[i], doremi[i],
               base ? base->log_perplexity[i] : NAN, dr ? dr->log_perplexity[i] : NAN);
  if (base && dr) {
    fmt::print("{:<{}}  {:>10}  {:>10}  {:>14.4f}  {:>14.4f}\n", "average", w, "", "", base->average, dr->average);
    fmt::print("{:<{}}  {:>10}  {:>10}  {:>14.4f}  {:>14.4f}\n", "worst", w, "", "", base->worst, dr->worst);
  }
  fmt::print("(log-perplexity in nats per token on the validation split; lower is better)\n");
}

// ---- quickstart -----------------------------------------------------------------

// Writes the synthetic control domain: printable characters drawn uniformly,
// which no model can predict better than ln(95) nats per byte.
void write_random_domain(const fs::path& file, int documents, int length, std::uint64_t seed) {
  std::string out;
  for (int d = 0; d < documents; ++d) {
    std::string text;
    for (int i = 0; i < length; ++i) text.push_back(char(32 + Philox::below(95, seed, std::uint64_t(d), std::uint64_t(i))));
    out += nlohmann::json{{"text", text}, {"meta", {{"domain", "random"}}}}.dump() + "\n";
  }
  if (fs::exists(file) && read_text(file.string()) == out) return;  // unchanged: the data's fingerprint holds
  write_file_atomic(file, out);
}

int run_quickstart(const fs::path& output, int threads, const Device& device) {
  const fs::path corpus = fs::path(DOREMI_EXAMPLE_DATA) / "quickstart";
  std::vector<fs::path> inputs;
  for (const auto& e : fs::directory_iterator(corpus))
    if (e.path().extension() == ".jsonl") inputs.push_back(e.path());
  std::sort(inputs.begin(), inputs.end());
  if (inputs.empty()) fail("no quickstart corpus in {}", corpus.string());
  const std::string preset = "tiny";
  check_threads(threads, "--threads");
  auto stages = stages_on(preset, device);  // no GPU: the error comes before any work
  OutputLock lock(output);
  write_random_domain(output / "random.jsonl", 200, 2000, 7);
  inputs.push_back(output / "random.jsonl");

  fmt::print("doremi quickstart: DoReMi on {} domains of real text plus a random control domain\n", inputs.size() - 1);
  PreprocessConfig pc;
  pc.inputs = inputs;
  pc.output = output / "data";
  pc.domain_key = "meta.domain";
  pc.seq_len = 128;
  pc.validation_share = 0.1;
  pc.threads = threads;
  preprocess_claimed(pc, "bytes");

  RunConfig rc;
  rc.data = pc.output;
  rc.output = output / "run";
  rc.preset = rc.main_preset = preset;
  rc.device = device;
  rc.seq_len = 128;
  rc.reference_weights = "pack";  // by size, as the paper's default
  StageConfig base;
  base.steps = 500;
  base.batch_size = 16;
  base.lr = 3e-3;
  base.end_lr = 3e-4;
  base.schedule = "cosine";
  rc.reference = rc.main = rc.proxy = base;
  rc.proxy.dro = DroConfig{1.0, 1e-3};
  rc.eval_max_tokens = 40000;
  const PipelineResult r = run_pipeline(rc, *stages, *stages);
  print_perplexity_table(r.domains, r.reference_weights, r.doremi_weights, &*r.baseline_perplexity,
                         &*r.doremi_perplexity);
  fmt::print("\nweights: {}\nperplexities: {}\nreport: {}\n", (rc.output / "doremi_weights.json").string(),
             (rc.output / "summary.json").string(), (rc.output / "report/report.html").string());
  return 0;
}

// ---- the subcommands: each registers its options and, once parsed, its action --

using Action = std::function<int()>;
constexpr const char* device_help = "cpu, cuda or cuda:N";

void add_quickstart(CLI::App& app, Action& action) {
  struct Args {
    std::string output = "doremi-quickstart", device = "cpu";
    int threads = 0;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("quickstart", "Run the whole pipeline on the embedded multi-domain corpus");
  cmd->add_option("--output", a->output, "Output folder")->capture_default_str();
  cmd->add_option("--threads", a->threads, "Preprocessing threads (0: all)");
  cmd->add_option("--device", a->device, device_help)->capture_default_str();
  cmd->callback([a, &action] { action = [a] { return run_quickstart(a->output, a->threads, parse_device(a->device)); }; });
}

void add_tokenize(CLI::App& app, Action& action) {
  struct Args {
    std::string tokenizer, input;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("tokenize", "Print the token ids of a file's text as one JSON array");
  cmd->add_option("--tokenizer", a->tokenizer, "tokenizer.json, a folder with one or vocab.json + merges.txt, or 'bytes'")
      ->required();
  cmd->add_option("--input", a->input, "Text file")->required();
  cmd->callback([a, &action] {
    action = [a] {
      const Tokenizer tok = load_tokenizer(a->tokenizer);
      fmt::print("{}\n", nlohmann::json(tok.encode(read_text(a->input))).dump());
      return 0;
    };
  });
}

void add_preprocess(CLI::App& app, Action& action) {
  struct Args {
    PreprocessConfig pc;
    std::vector<std::string> inputs;
    std::string output, tokenizer = "bytes";
    bool nopack = false, overwrite = false;
  };
  auto a = std::make_shared<Args>();
  PreprocessConfig& pc = a->pc;
  auto* cmd = app.add_subcommand("preprocess", "Tokenize JSONL(.zst) files or domain folders into indexed datasets");
  cmd->add_option("--input", a->inputs, "JSONL files (.jsonl, .jsonl.zst) or folders of domain subfolders")->required();
  cmd->add_option("--domain-key", pc.domain_key, "Dotted JSON key of the domain name")->capture_default_str();
  cmd->add_option("--text-key", pc.text_key, "JSON key of the text")->capture_default_str();
  cmd->add_option("--tokenizer", a->tokenizer, "tokenizer.json, tokenizer folder, or 'bytes'")->capture_default_str();
  cmd->add_option("--seq-len", pc.seq_len, "Tokens per packed chunk")->capture_default_str();
  cmd->add_flag("--nopack", a->nopack, "Keep one sequence per document instead of packing");
  cmd->add_option("--validation-share", pc.validation_share, "Share of documents for validation")->capture_default_str();
  cmd->add_option("--threads", pc.threads, "Threads (0: all)");
  cmd->add_flag("--strict", pc.fail_on_bad_document, "Fail on the first bad document instead of counting it");
  cmd->add_option("--output", a->output, "Output folder")->required();
  cmd->add_flag("--overwrite", a->overwrite, "Delete what --output holds and start afresh");
  cmd->callback([a, &action] {
    action = [a] {
      for (const auto& i : a->inputs) a->pc.inputs.emplace_back(i);
      a->pc.output = a->output;
      a->pc.pack = !a->nopack;
      if (a->overwrite) overwrite_folder(a->output);
      const auto r = preprocess_claimed(a->pc, a->tokenizer);
      fmt::print("{}\n", r.manifest.dump(2));
      return 0;
    };
  });
}

int run_baseline_weights(const std::string& data, const std::string& output, const std::string& mode,
                         const std::string& epochs_spec) {
  const auto manifest_path = fs::path(data) / "manifest.json";
  const auto manifest = read_json_file(manifest_path);
  const Packing packing = parse_packing(mode);
  std::vector<std::string> names;
  if (manifest.is_object() && manifest.contains("domains") && manifest.at("domains").is_object())
    for (const auto& [name, e] : manifest.at("domains").items()) names.push_back(name);
  const auto counts = WeightSpec::size_counts(names, manifest, packing, manifest_path.string());
  nlohmann::json epochs;
  if (epochs_spec == "pile") epochs = "pile";
  else if (!epochs_spec.empty()) epochs = read_json_file(epochs_spec);
  const auto w = weights_by_size(names, counts, epochs);
  write_domain_config(output, DomainConfig{{names, w}, {names, w}});
  fmt::print("{}\n", read_json_file(output).dump(2));
  return 0;
}

void add_baseline_weights(CLI::App& app, Action& action) {
  struct Args {
    std::string data, output, mode = "pack", epochs;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("baseline-weights", "Reference weights by size, as a domain config JSON");
  cmd->add_option("--data", a->data, "Folder written by `doremi preprocess`")->required();
  cmd->add_option("--output", a->output, "Domain config file to write")->required();
  cmd->add_option("--mode", a->mode, "pack or nopack")->capture_default_str();
  cmd->add_option("--epochs", a->epochs, "'pile' (the Pile's epochs) or a JSON file {domain: epochs}");
  cmd->callback([a, &action] { action = [a] { return run_baseline_weights(a->data, a->output, a->mode, a->epochs); }; });
}

struct TrainArgs {
  TextTrainArgs text;
  StageConfig stage;
  std::string data, weights = "uniform", device = "cpu";
  bool overwrite = false;
};

int run_train(TrainArgs& a) {
  const Device device = parse_device(a.device);
  check_stage_flags(a.stage, "train");
  check_seq_len(a.text.seq_len);
  if (a.overwrite) {
    if (a.text.output.empty()) fail("--overwrite needs --output");
    overwrite_folder(a.text.output);
  }
  if (a.data.empty()) {
    if (device.is_cuda()) fail("train --text runs on the CPU; --device {} needs --data", device.str());
    if (dist::world().size() > 1) fail("train --text runs in one process; use --data to train data-parallel");
    return in_output(a.text.output, [&] { return run_text_train(a.text, a.stage); });
  }
  if (a.text.output.empty()) fail("train --data needs --output");
  auto stages = stages_on(a.text.preset, device);
  const PipelineData data = open_data(a.data, domains_of(a.weights), a.text.seq_len, a.text.seed);
  const auto weights = weights_for(a.weights, data);
  in_output(a.text.output, [&] { stages->train(data, a.stage, weights, a.text.output); });
  fmt::print("model written to {}\n", (fs::path(a.text.output) / "final").string());
  return 0;
}

void add_train(CLI::App& app, Action& action) {
  auto a = std::make_shared<TrainArgs>();
  TextTrainArgs& ta = a->text;
  a->stage.steps = 400;
  a->stage.batch_size = 16;
  a->stage.lr = 3e-3;
  a->stage.end_lr = 3e-4;
  a->stage.schedule = "cosine";
  auto* cmd = app.add_subcommand("train", "Train a language model on a text file or a domain-split dataset");
  cmd->add_option("--text", ta.text, "UTF-8 text file (byte tokenizer)")->capture_default_str();
  cmd->add_option("--data", a->data, "Dataset folder (preprocessed or HF datasets); overrides --text");
  cmd->add_option("--weights", a->weights, "Domain config file, 'uniform', 'pack' or 'nopack' (with --data)")
      ->capture_default_str();
  cmd->add_option("--preset", ta.preset, std::string("Model preset: ") + std::string(preset_names))->capture_default_str();
  cmd->add_option("--output", ta.output, "Folder for metrics.jsonl, checkpoints and final/ (resumes)");
  cmd->add_option("--seq-len", ta.seq_len, "Tokens per sequence")->capture_default_str();
  cmd->add_option("--seed", ta.seed, "Seed")->capture_default_str();
  cmd->add_option("--holdout", ta.holdout, "Share of the text held out (with --text)")->capture_default_str();
  cmd->add_option("--log-every", ta.log_every, "Steps between printed lines")->capture_default_str();
  add_stage_options(cmd, a->stage);
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N (with --data)")->capture_default_str();
  cmd->add_flag("--overwrite", a->overwrite, "Delete what --output holds and start afresh");
  cmd->callback([a, &action] { action = [a] { return run_train(*a); }; });
}

struct DroArgs {
  StageConfig stage;
  std::string data, reference, output, weights = "uniform", preset, device = "cpu";
  int seq_len = 128;
  std::uint64_t seed = 1;
  bool overwrite = false;
};

int run_dro(DroArgs& a) {
  check_stage_flags(a.stage, "dro");
  check_seq_len(a.seq_len);
  const fs::path ref_config = fs::path(a.reference) / "final" / "config.json";
  if (!fs::exists(ref_config))
    fail("--reference {}: no final/config.json (is it a finished `doremi train --output` folder?)", a.reference);
  if (a.preset.empty()) a.preset = in_file(ref_config, [&] { return preset_for_checkpoint(fs::path(a.reference) / "final"); });
  if (a.overwrite) overwrite_folder(a.output);
  auto stages = stages_on(a.preset, parse_device(a.device));
  const PipelineData data = open_data(a.data, domains_of(a.weights), a.seq_len, a.seed);
  const auto w = weights_for(a.weights, data);
  const auto avg = in_output(a.output, [&] { return stages->dro(data, a.stage, w, w, w, a.reference, a.output); });
  nlohmann::json out = nlohmann::json::object();
  for (std::size_t i = 0; i < avg.size(); ++i) out[data.domains()[i]] = avg[i];
  fmt::print("{}\n", out.dump(2));
  return 0;
}

void add_dro(CLI::App& app, Action& action) {
  auto a = std::make_shared<DroArgs>();
  auto* cmd = app.add_subcommand("dro", "Train a proxy with DRO against a reference model; writes the domain weights");
  cmd->add_option("--data", a->data, "Dataset folder")->required();
  cmd->add_option("--reference", a->reference, "Reference model folder (from `doremi train --output`)")->required();
  cmd->add_option("--output", a->output, "Output folder")->required();
  cmd->add_option("--weights", a->weights, "Initial and sampling weights: domain config file, 'uniform', 'pack' or 'nopack'")
      ->capture_default_str();
  cmd->add_option("--preset", a->preset, "Model preset (default: the reference's)");
  cmd->add_option("--seq-len", a->seq_len, "Tokens per sequence")->capture_default_str();
  cmd->add_option("--seed", a->seed, "Seed")->capture_default_str();
  cmd->add_option("--eta", a->stage.dro.eta, "Step size η")->capture_default_str();
  cmd->add_option("--smoothing", a->stage.dro.smoothing, "Smoothing c")->capture_default_str();
  add_stage_options(cmd, a->stage);
  cmd->add_option("--device", a->device, device_help)->capture_default_str();
  cmd->add_flag("--overwrite", a->overwrite, "Delete what --output holds and start afresh");
  cmd->callback([a, &action] { action = [a] { return run_dro(*a); }; });
}

struct EvalArgs {
  std::string model, data, preset, device = "cpu";
  int seq_len = 0;
  std::uint64_t max_tokens = 0;
};

int run_eval(EvalArgs& a) {
  fs::path model_dir = a.model;
  if (!fs::exists(model_dir / "config.json") && fs::exists(model_dir / "final/config.json")) model_dir /= "final";
  if (!fs::exists(model_dir / "config.json"))
    fail("--model {}: no config.json there or in its final/ (give a checkpoint folder)", a.model);
  if (a.seq_len < 0 || a.seq_len == 1) fail("--seq-len must be 0 (the data's) or at least 2 (got {})", a.seq_len);
  if (a.preset.empty()) a.preset = in_file(model_dir / "config.json", [&] { return preset_for_checkpoint(model_dir); });
  const fs::path manifest = fs::path(a.data) / "manifest.json";
  PipelineData data{{}, in_file(manifest, [&] { return open_dataset_folder(a.data, "validation"); }), a.seq_len, 1,
                    a.max_tokens, {}};
  if (data.validation.domains.empty())
    fail("dataset {} has no validation split (preprocess it with --validation-share above 0, e.g. 0.05)", a.data);
  if (data.seq_len == 0)
    data.seq_len = in_file(manifest, [&] {
      return data.validation.manifest.is_null() ? 0 : data.validation.manifest.value("seq_len", 0);
    });
  auto stages = stages_on(a.preset, parse_device(a.device));
  const auto r = in_file(model_dir / "config.json", [&] { return stages->evaluate_checkpoint(data, model_dir); });
  fmt::print("{}\n", r.to_json().dump(2));
  return 0;
}

void add_eval(CLI::App& app, Action& action) {
  auto a = std::make_shared<EvalArgs>();
  auto* cmd = app.add_subcommand("eval", "Per-domain held-out log-perplexity of a checkpoint, as JSON");
  cmd->add_option("--model", a->model, "Checkpoint folder (model.safetensors + config.json)")->required();
  cmd->add_option("--data", a->data, "Dataset folder with a validation split")->required();
  cmd->add_option("--preset", a->preset, "Model preset (default: matched from config.json)");
  cmd->add_option("--seq-len", a->seq_len, "Window length (default: the data's seq_len or the context)");
  cmd->add_option("--max-tokens", a->max_tokens, "Target tokens per domain (0: all)");
  cmd->add_option("--device", a->device, device_help)->capture_default_str();
  cmd->callback([a, &action] { action = [a] { return run_eval(*a); }; });
}

// ---- generate -------------------------------------------------------------------

struct GenerateArgs {
  std::string model, tokenizer, prompts_file, device = "cpu";
  std::vector<std::string> prompts, stops;
  GenerationConfig g;
  bool ignore_eos = false, json = false;
  int threads = 0;
};

// --prompts-file: one JSON string per line (so a prompt may hold newlines);
// blank lines are skipped.
std::vector<std::string> read_prompts_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("--prompts-file: cannot open '{}'", path);
  std::vector<std::string> out;
  std::string line;
  for (std::size_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_string())
      fail("--prompts-file {} line {}: not a JSON string (give one JSON string per line, e.g. \"Once upon a time\")",
           path, number);
    out.push_back(j.get<std::string>());
  }
  return out;
}

int run_generate(GenerateArgs& a) {
  fs::path model_dir = a.model;
  if (!fs::exists(model_dir / "config.json") && fs::exists(model_dir / "final/config.json")) model_dir /= "final";
  if (!fs::exists(model_dir / "config.json"))
    fail("--model {}: no config.json there or in its final/ (give a checkpoint folder)", a.model);
  check_threads(a.threads, "--threads");
  if (a.threads > 0) omp_set_num_threads(a.threads);
  if (a.g.max_new_tokens < 1) fail("--max-new-tokens must be at least 1 (got {})", a.g.max_new_tokens);
  if (!(a.g.temperature > 0) || !std::isfinite(a.g.temperature))
    fail("--temperature must be a number > 0 (got {})", a.g.temperature);
  if (a.g.top_k < 0) fail("--top-k must be >= 0 (0: off; got {})", a.g.top_k);
  if (!(a.g.top_p > 0 && a.g.top_p <= 1)) fail("--top-p must lie in (0, 1] (got {})", a.g.top_p);
  for (const std::string& s : a.stops)
    if (s.empty()) fail("--stop: a stop string is empty");
  std::vector<std::string> texts = a.prompts;
  if (!a.prompts_file.empty())
    for (std::string& t : read_prompts_file(a.prompts_file)) texts.push_back(std::move(t));
  if (texts.empty()) fail("no prompt: give --prompt TEXT (repeatable) or --prompts-file FILE");
  const Device device = parse_device(a.device);
  const std::string preset = in_file(model_dir / "config.json", [&] { return preset_for_checkpoint(model_dir); });
  std::string spec = a.tokenizer;
  if (spec.empty()) spec = fs::exists(model_dir / "tokenizer.json") ? (model_dir / "tokenizer.json").string() : "bytes";
  const Tokenizer tokenizer = load_tokenizer(spec);
  std::vector<std::vector<std::int32_t>> prompts;
  for (std::size_t i = 0; i < texts.size(); ++i) {
    prompts.push_back(tokenizer.encode(texts[i]));
    if (prompts.back().empty()) fail("prompt {} is empty (it encodes to no token)", i);
  }
  a.g.stop_strings = a.stops;
  if (!a.ignore_eos) a.g.eos_ids = {tokenizer.end_of_text_id()};
  std::vector<GeneratedRow> rows;
  if (device.is_cuda()) {
#ifdef DOREMI_CLI_CUDA
    rows = doremi_cli::generate_cuda(preset, device.index, model_dir, prompts, a.g, tokenizer);
#else
    fail("--device {}: this doremi was built without the CUDA backend (configure with -DDOREMI_CUDA=ON on a machine "
         "with nvcc)",
         device.str());
#endif
  } else {
    rows = dispatch_preset<float>(preset, [&]<class Cfg>() {
      Model<Cfg> model;
      load_model(model, model_dir);
      return generate(model, prompts, a.g, &tokenizer);
    });
  }
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const GeneratedRow& r = rows[i];
    if (a.json) {
      const nlohmann::json j{{"prompt", texts[i]}, {"text", r.text}, {"tokens", r.tokens}, {"stop", to_string(r.stop)}};
      fmt::print("{}\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    } else {
      if (rows.size() > 1) fmt::print("--- prompt {} ({} new tokens, stop: {})\n", i, r.tokens.size(), to_string(r.stop));
      fmt::print("{}\n", r.text);
    }
  }
  return 0;
}

void add_generate(CLI::App& app, Action& action) {
  auto a = std::make_shared<GenerateArgs>();
  auto* cmd = app.add_subcommand("generate", "Continue prompts with a checkpoint (greedy, or sampled with --sample)");
  cmd->add_option("--model", a->model, "Checkpoint folder (model.safetensors + config.json; doremi's or transformers')")
      ->required();
  cmd->add_option("--tokenizer", a->tokenizer,
                  "tokenizer.json, a tokenizer folder, or 'bytes' (default: the model folder's tokenizer.json if "
                  "present, else bytes)");
  cmd->add_option("--prompt", a->prompts, "Prompt text (repeatable; the prompts run as one batch)");
  cmd->add_option("--prompts-file", a->prompts_file, "File of prompts, one JSON string per line (after any --prompt)");
  cmd->add_option("--max-new-tokens", a->g.max_new_tokens, "New tokens per prompt at most")->capture_default_str();
  cmd->add_flag("--sample", a->g.do_sample, "Sample instead of greedy decoding");
  cmd->add_option("--temperature", a->g.temperature, "Sampling temperature (> 0)")->capture_default_str();
  cmd->add_option("--top-k", a->g.top_k, "Sample among the k most likely tokens (0: off)")->capture_default_str();
  cmd->add_option("--top-p", a->g.top_p, "Sample among the most likely tokens of mass >= p (1: off)")
      ->capture_default_str();
  cmd->add_option("--seed", a->g.seed, "Sampling seed (the same seed repeats)")->capture_default_str();
  cmd->add_option("--stop", a->stops, "Stop string (repeatable): the text is cut before it");
  cmd->add_flag("--ignore-eos", a->ignore_eos, "Do not stop at the tokenizer's end-of-text token");
  cmd->add_flag("--json", a->json, "One JSON object per prompt: prompt, text, tokens, stop (length, eos, stop_string)");
  cmd->add_option("--device", a->device, device_help)->capture_default_str();
  cmd->add_option("--threads", a->threads, "CPU threads (0: OMP_NUM_THREADS or all cores)");
  cmd->callback([a, &action] { action = [a] { return run_generate(*a); }; });
}

struct PipelineArgs {
  std::string config, device;
  bool overwrite = false;
};

int run_pipeline_command(const PipelineArgs& a) {
  RunConfig rc = RunConfig::from_json(read_json_file(a.config), a.config);
  if (!a.device.empty()) rc.device = parse_device(a.device);
  if (a.overwrite) overwrite_folder(rc.output);
  auto small = stages_on(rc.preset, rc.device);
  auto main_stages = rc.main_preset == rc.preset ? nullptr : stages_on(rc.main_preset, rc.device);
  const PipelineResult r = run_pipeline(rc, *small, main_stages ? *main_stages : *small);
  print_perplexity_table(r.domains, r.reference_weights, r.doremi_weights,
                         r.baseline_perplexity ? &*r.baseline_perplexity : nullptr,
                         r.doremi_perplexity ? &*r.doremi_perplexity : nullptr);
  return 0;
}

void add_pipeline(CLI::App& app, Action& action) {
  auto a = std::make_shared<PipelineArgs>();
  auto* cmd = app.add_subcommand("pipeline", "Run the whole DoReMi pipeline from a run config");
  cmd->add_option("--config", a->config, "Run config JSON (see include/doremi/pipeline/run_config.hpp)")->required();
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N (default: the config's \"device\", else cpu)");
  cmd->add_flag("--overwrite", a->overwrite, "Delete what the config's output folder holds and start afresh");
  cmd->callback([a, &action] { action = [a] { return run_pipeline_command(*a); }; });
}

// ---- downstream: one-shot task accuracy of checkpoints ------------------------

struct DownstreamArgs {
  std::string model, run, data, tokenizer, device = "cpu", output, predictions, tasks;
  bool all_checkpoints = false;
  int shots = 1, batch = 16, threads = 0;
  std::uint64_t seed = 42;
  long long max_samples = 0;
};

// An output file we can create: its folder exists and is writable (checked
// before the evaluation, so a typo does not cost the run).
void check_writable_file(const std::string& path, const char* flag) {
  if (path.empty()) return;
  const fs::path p(path);
  std::error_code ec;
  if (fs::is_directory(p, ec)) fail("{} {}: is a folder; give a file name", flag, path);
  const fs::path dir = p.parent_path().empty() ? fs::path(".") : p.parent_path();
  if (!fs::is_directory(dir, ec)) fail("{} {}: the folder {} does not exist", flag, path, dir.string());
  // The file is written as a temporary beside it, then renamed: try that.
  const fs::path probe = dir / fmt::format(".doremi-probe-{}", long(::getpid()));
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) fail("{} {}: cannot write in {}: {}", flag, path, dir.string(), std::strerror(errno));
  ::close(fd);
  ::unlink(probe.c_str());
}

// The step a checkpoint folder was written at (trainer_state.json), if known.
std::optional<long> checkpoint_step(const fs::path& dir) {
  const fs::path state = dir / "trainer_state.json";
  if (!fs::exists(state)) return std::nullopt;
  const auto j = read_json_file(state);
  if (!j.is_object() || !j.contains("step") || !j.at("step").is_number_integer()) return std::nullopt;
  return j.at("step").get<long>();
}

// The folders to evaluate with their steps: --model's (DIR or DIR/final), or
// every checkpoint of --run in step order and its final/ unless a checkpoint
// holds the same weights.
std::vector<std::pair<fs::path, std::optional<long>>> downstream_models(const DownstreamArgs& a) {
  std::vector<std::pair<fs::path, std::optional<long>>> out;
  if (!a.model.empty()) {
    fs::path dir = a.model;
    if (!fs::exists(dir / "config.json") && fs::exists(dir / "final/config.json")) dir /= "final";
    if (!fs::exists(dir / "config.json"))
      fail("--model {}: no config.json there or in its final/ (give a checkpoint folder)", a.model);
    out.emplace_back(dir, checkpoint_step(dir));
    return out;
  }
  if (!fs::is_directory(a.run)) fail("--run {}: not a folder", a.run);
  for (const auto& c : list_checkpoints(a.run)) out.emplace_back(c, std::stol(c.filename().string().substr(11)));
  const fs::path final_dir = fs::path(a.run) / "final";
  if (fs::exists(final_dir / "model.safetensors")) {
    const bool same = !out.empty() && fs::file_size(out.back().first / "model.safetensors") ==
                                          fs::file_size(final_dir / "model.safetensors") &&
                      content_hash(out.back().first / "model.safetensors") == content_hash(final_dir / "model.safetensors");
    if (!same) out.emplace_back(final_dir, out.empty() ? std::nullopt : std::optional<long>());
  }
  if (out.empty())
    fail("--run {}: no checkpoints (checkpoint-NNNNNNNN folders) and no final/ model; give the output folder of "
         "`doremi train` or of a pipeline stage",
         a.run);
  return out;
}

// The tokenizer of a checkpoint, as `doremi generate` picks it: the folder's
// tokenizer.json (a transformers checkpoint's), else the byte tokenizer.
std::string default_tokenizer_for(const fs::path& dir) {
  return fs::exists(dir / "tokenizer.json") ? (dir / "tokenizer.json").string() : "bytes";
}

int run_downstream(const DownstreamArgs& a) {
  if (a.model.empty() == a.run.empty()) fail("give either --model DIR or --run DIR --all-checkpoints");
  if (!a.run.empty() && !a.all_checkpoints)
    fail("--run {} needs --all-checkpoints (to evaluate one checkpoint, give it as --model)", a.run);
  if (a.all_checkpoints && a.run.empty()) fail("--all-checkpoints needs --run DIR (a training output folder)");
  if (a.shots < 0) fail("--shots must be >= 0 (got {})", a.shots);
  if (a.batch <= 0) fail("--batch must be positive (got {})", a.batch);
  if (a.max_samples < 0) fail("--max-samples must be positive (got {})", a.max_samples);
  check_threads(a.threads, "--threads");
  if (a.threads > 0) omp_set_num_threads(a.threads);
  check_writable_file(a.output, "--output");
  check_writable_file(a.predictions, "--predictions");
  if (!fs::is_directory(a.data)) fail("--data {}: not a folder (it holds one folder per task)", a.data);
  DownstreamOptions options;
  options.tasks = downstream_task_names();
  if (!a.tasks.empty()) {
    options.tasks.clear();
    std::stringstream ss(a.tasks);
    for (std::string t; std::getline(ss, t, ',');)
      if (!t.empty()) options.tasks.push_back(t);
    if (options.tasks.empty()) fail("--tasks {}: no task named", a.tasks);
  }
  options.data_dir = a.data;
  options.shots = a.shots;
  if (a.max_samples > 0) options.max_samples = std::size_t(a.max_samples);
  options.seed = a.seed;
  options.batch_size = a.batch;
  const auto models = downstream_models(a);
  const std::string tokenizer_spec = a.tokenizer.empty() ? default_tokenizer_for(models.front().first) : a.tokenizer;
  const Tokenizer tokenizer = load_tokenizer(tokenizer_spec);
  const Device device = parse_device(a.device);
  const std::string preset = in_file(models.front().first / "config.json", [&] { return preset_for_checkpoint(models.front().first); });
  auto stages = stages_on(preset, device);

  nlohmann::json results{{"tasks", options.tasks},
                         {"settings", {{"data", a.data}, {"tokenizer", tokenizer_spec}, {"shots", a.shots},
                                       {"max_samples", a.max_samples}, {"seed", a.seed}, {"batch_size", a.batch},
                                       {"preset", preset}}},
                         {"checkpoints", nlohmann::json::array()}};
  std::string predictions;
  std::vector<std::pair<std::string, DownstreamResult>> table;
  for (const auto& [dir, step] : models) {
    std::vector<DownstreamPrediction> preds;
    if (models.size() > 1) fmt::print(stderr, "{}\n", dir.string());
    const DownstreamResult r = in_file(dir / "config.json", [&] {
      return stages->evaluate_downstream_checkpoint(options, tokenizer, dir, a.predictions.empty() ? nullptr : &preds);
    });
    table.emplace_back(dir.filename().string(), r);
    nlohmann::json entry = to_json(r);
    entry["checkpoint"] = dir.string();
    entry["step"] = step ? nlohmann::json(*step) : nlohmann::json();
    results["checkpoints"].push_back(entry);
    for (const auto& p : preds) {
      nlohmann::json line = to_json(p);
      if (models.size() > 1) line["checkpoint"] = dir.filename().string();
      predictions += line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    }
  }
  if (!a.predictions.empty()) write_file_atomic(a.predictions, predictions);
  const std::string text = results.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  if (!a.output.empty()) write_file_atomic(a.output, text);
  else fmt::print("{}", text);
  // A table on stderr: accuracy per task and checkpoint.
  for (const auto& [name, r] : table) {
    fmt::print(stderr, "{:<20}", name);
    for (const auto& t : r.tasks) fmt::print(stderr, "  {} {:.2f}%", t.task, t.accuracy);
    fmt::print(stderr, "  average {:.2f}%\n", r.average);
  }
  return 0;
}

void add_downstream(CLI::App& app, Action& action) {
  auto a = std::make_shared<DownstreamArgs>();
  auto* cmd = app.add_subcommand("downstream", "One-shot task accuracy (TriviaQA, NQ, WebQuestions, LAMBADA, SQuAD v2) "
                                               "of a checkpoint or of every checkpoint of a run, as JSON");
  cmd->add_option("--model", a->model, "Checkpoint folder (doremi's or transformers')");
  cmd->add_option("--run", a->run, "Training output folder (with --all-checkpoints)");
  cmd->add_flag("--all-checkpoints", a->all_checkpoints, "Every checkpoint of --run in step order, and its final/");
  cmd->add_option("--data", a->data, "Folder of task folders (datasets.save_to_disk or <split>.jsonl)")->required();
  cmd->add_option("--tasks", a->tasks, "Comma-separated tasks (default: all five)");
  cmd->add_option("--shots", a->shots, "Examples in each prompt")->capture_default_str();
  cmd->add_option("--max-samples", a->max_samples, "The first N evaluation examples per task (0: all)");
  cmd->add_option("--seed", a->seed, "Seed of the shot selection")->capture_default_str();
  cmd->add_option("--batch", a->batch, "Prompts decoded at once")->capture_default_str();
  cmd->add_option("--tokenizer", a->tokenizer, "tokenizer.json, a tokenizer folder, or 'bytes' (default: the (first) model folder's tokenizer.json if present, else bytes)");
  cmd->add_option("--device", a->device, device_help)->capture_default_str();
  cmd->add_option("--threads", a->threads, "CPU threads (0: all)");
  cmd->add_option("--output", a->output, "Results JSON file (default: standard output)");
  cmd->add_option("--predictions", a->predictions, "JSONL file: one line per example");
  cmd->callback([a, &action] { action = [a] { return run_downstream(*a); }; });
}

// Runs the chosen subcommand; errors print one line "error: ..." and exit 1.
std::atomic<bool> interrupted{false};  // set by the signal thread, which then exits the process

// Waits for the signal thread's exit when it is stopping the process (an
// error or a return here would race with its cleanup and exit status).
void wait_if_interrupted() {
  while (interrupted.load()) ::pause();
}

// The subcommands that run data-parallel (every rank runs them; rank 0 writes).
const std::set<std::string> distributed_subcommands{"train", "dro", "eval", "pipeline"};

int run_action(const Action& action, const std::string& subcommand, int argc, char** argv) {
  auto report = [](const std::string& message) {
    wait_if_interrupted();
    std::string line = message;
    std::replace(line.begin(), line.end(), '\n', ' ');
    return dist::report_error(line);  // under mpirun/srun: names the rank and ends every rank
  };
  try {
    dist::start(argc, argv);  // data-parallel under mpirun/srun (docs/distributed.md); one process otherwise
    if (dist::world().size() > 1 && !distributed_subcommands.contains(subcommand))
      fail("only train, dro, eval and pipeline run data-parallel; run {} without mpirun/srun", subcommand);
    const int rc = action();
    wait_if_interrupted();
    return rc;
  } catch (const doremi::Error& e) {
    return report(e.what());
  } catch (const std::bad_alloc&) {
    return report("out of memory: the model, batch or data do not fit in this machine's memory; reduce --batch "
                  "(raise --grad-accum to keep the step size), --seq-len or the preset");
  } catch (const std::length_error& e) {
    return report(fmt::format("a buffer would be larger than memory can hold ({}); reduce --batch, --seq-len or "
                              "the preset",
                              e.what()));
  } catch (const std::filesystem::filesystem_error& e) {
    return report(fmt::format("{}: {}{}", e.path1().string(), e.code().message(),
                              e.path2().empty() ? "" : " (" + e.path2().string() + ")"));
  } catch (const nlohmann::json::exception& e) {
    return report(fmt::format("a JSON file has a field of the wrong type or out of range ({})", e.what()));
  } catch (const std::exception& e) {
    return report(e.what());
  }
}

// SIGINT and SIGTERM: a thread waits for them (blocked in every other thread,
// which inherit the mask), removes this process's staging folders and files
// in the output folders it holds, and exits 128 + the signal.
void handle_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread([set] {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) return;
    interrupted = true;
    std::size_t removed = 0;  // the run may still be writing into one as we remove it: again until none is found
    for (int pass = 0; pass < 100; ++pass) {
      std::size_t now = 0;
      for (const auto& dir : OutputLock::held()) now += remove_staging_leftovers(dir, long(::getpid()));
      if (pass == 0) removed = now;
      if (now == 0) break;
      ::usleep(5000);
    }
    fmt::print(stderr, "error: interrupted by {}; removed {} unfinished checkpoint folder(s) or temporary file(s); rerun the "
               "same command to resume from the last checkpoint\n",
               sig == SIGINT ? "SIGINT" : "SIGTERM", removed);
    std::fflush(stderr);
    std::_Exit(128 + sig);
  }).detach();
}

}  // namespace

int main(int argc, char** argv) {
  handle_signals();
  CLI::App app{"doremi: DoReMi domain-weight optimisation for language-model pretraining"};
  app.require_subcommand(1);
  Action action;
  add_quickstart(app, action);
  add_tokenize(app, action);
  add_preprocess(app, action);
  add_baseline_weights(app, action);
  add_train(app, action);
  add_dro(app, action);
  add_eval(app, action);
  add_generate(app, action);
  add_pipeline(app, action);
  add_downstream(app, action);
  CLI11_PARSE(app, argc, argv);
  return action ? run_action(action, app.get_subcommands().front()->get_name(), argc, argv) : 0;
}
