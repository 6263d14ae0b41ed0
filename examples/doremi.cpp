// doremi: the example command-line program.
//
//   doremi quickstart [--output DIR] [--device D]    the whole method on the embedded corpus
//   doremi tokenize --tokenizer PATH|bytes --input FILE
//   doremi preprocess --input PATH... --domain-key KEY --tokenizer PATH --seq-len N --output DIR
//   doremi baseline-weights --data DIR --output FILE [--mode pack|nopack] [--epochs pile|FILE]
//   doremi train (--text FILE | --data DIR [--weights FILE|uniform]) [--preset NAME] [--output DIR]
//   doremi dro --data DIR --reference DIR [--weights FILE|uniform] --output DIR
//   doremi eval --model DIR --data DIR
//   doremi pipeline --config FILE [--device D]
//
// --device is cpu (default), cuda or cuda:N on train --data, dro, eval,
// pipeline and quickstart; the GPU stages are compiled in when the build has
// the CUDA backend (cuda_stages.cu). Every subcommand has --help. Errors print
// "error: ..." and exit 1.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "doremi/doremi.hpp"                  // Model, presets, Error
#include "doremi/backend/device.hpp"          // Device
#include "doremi/data/byte_tokenizer.hpp"     // ByteTokenizer
#include "doremi/data/dataset_folder.hpp"     // open_dataset_folder, AnySource
#include "doremi/data/domain_config.hpp"      // read/write domain configs, weights by size
#include "doremi/data/preprocess.hpp"         // preprocess
#include "doremi/data/tokenizer.hpp"          // load_tokenizer
#include "doremi/data/window_sampler.hpp"     // WindowSampler
#include "doremi/model/dispatch.hpp"          // dispatch_preset, preset_for_checkpoint
#include "doremi/pipeline/pipeline.hpp"       // run_pipeline, StagesFor
#include "doremi/train/trainer.hpp"           // Trainer, TrainConfig

#ifdef DOREMI_CLI_CUDA
namespace doremi_cli {  // cuda_stages.cu
std::unique_ptr<doremi::ModelStages> make_cuda_stages(const std::string& preset, int device);
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
  if (a.holdout <= 0 || a.holdout >= 0.5) fail("--holdout must be in (0, 0.5) (got {})", a.holdout);
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

// Weights for `data`'s domains: a domain config file, or "uniform".
std::vector<double> weights_for(const std::string& spec, const PipelineData& data) {
  if (spec == "uniform") return std::vector<double>(data.domains().size(), 1.0 / double(data.domains().size()));
  return read_domain_config(spec).train.weights_for(data.domains(), spec);
}

std::vector<std::string> domains_of(const std::string& weights_spec) {
  if (weights_spec == "uniform") return {};
  return read_domain_config(weights_spec).train.names;
}

PipelineData open_data(const std::string& dir, const std::vector<std::string>& domains, int seq_len, std::uint64_t seed) {
  PipelineData d{open_dataset_folder(dir, "train", domains), {}, seq_len, seed, 0};
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
  auto stages = stages_on(preset, device);  // no GPU: the error comes before any work
  fs::create_directories(output);
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
  preprocess(pc, Tokenizer{});

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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"doremi: DoReMi domain-weight optimisation for language-model pretraining"};
  app.require_subcommand(1);

  // quickstart
  std::string qs_output = "doremi-quickstart";
  int threads = 0;
  auto* quick = app.add_subcommand("quickstart", "Run the whole pipeline on the embedded multi-domain corpus");
  quick->add_option("--output", qs_output, "Output folder")->capture_default_str();
  quick->add_option("--threads", threads, "Preprocessing threads (0: all)");
  const char* device_help = "cpu, cuda or cuda:N";
  std::string qs_device = "cpu";
  quick->add_option("--device", qs_device, device_help)->capture_default_str();

  // tokenize
  std::string tok_spec, tok_input;
  auto* tokenize = app.add_subcommand("tokenize", "Print the token ids of a file's text as one JSON array");
  tokenize->add_option("--tokenizer", tok_spec, "tokenizer.json, a folder with one or vocab.json + merges.txt, or 'bytes'")
      ->required();
  tokenize->add_option("--input", tok_input, "Text file")->required();

  // preprocess
  PreprocessConfig pc;
  std::vector<std::string> pre_inputs;
  std::string pre_output, pre_tok = "bytes";
  bool nopack = false;
  auto* pre = app.add_subcommand("preprocess", "Tokenize JSONL(.zst) files or domain folders into indexed datasets");
  pre->add_option("--input", pre_inputs, "JSONL files (.jsonl, .jsonl.zst) or folders of domain subfolders")->required();
  pre->add_option("--domain-key", pc.domain_key, "Dotted JSON key of the domain name")->capture_default_str();
  pre->add_option("--text-key", pc.text_key, "JSON key of the text")->capture_default_str();
  pre->add_option("--tokenizer", pre_tok, "tokenizer.json, tokenizer folder, or 'bytes'")->capture_default_str();
  pre->add_option("--seq-len", pc.seq_len, "Tokens per packed chunk")->capture_default_str();
  pre->add_flag("--nopack", nopack, "Keep one sequence per document instead of packing");
  pre->add_option("--validation-share", pc.validation_share, "Share of documents for validation")->capture_default_str();
  pre->add_option("--threads", pc.threads, "Threads (0: all)");
  pre->add_flag("--strict", pc.fail_on_bad_document, "Fail on the first bad document instead of counting it");
  pre->add_option("--output", pre_output, "Output folder")->required();

  // baseline-weights
  std::string bw_data, bw_output, bw_mode = "pack", bw_epochs;
  auto* bw = app.add_subcommand("baseline-weights", "Reference weights by size, as a domain config JSON");
  bw->add_option("--data", bw_data, "Folder written by `doremi preprocess`")->required();
  bw->add_option("--output", bw_output, "Domain config file to write")->required();
  bw->add_option("--mode", bw_mode, "pack or nopack")->capture_default_str();
  bw->add_option("--epochs", bw_epochs, "'pile' (the Pile's epochs) or a JSON file {domain: epochs}");

  // train
  TextTrainArgs ta;
  StageConfig train_stage;
  train_stage.steps = 400;
  train_stage.batch_size = 16;
  train_stage.lr = 3e-3;
  train_stage.end_lr = 3e-4;
  train_stage.schedule = "cosine";
  std::string train_data, train_weights = "uniform";
  auto* train = app.add_subcommand("train", "Train a language model on a text file or a domain-split dataset");
  train->add_option("--text", ta.text, "UTF-8 text file (byte tokenizer)")->capture_default_str();
  train->add_option("--data", train_data, "Dataset folder (preprocessed or HF datasets); overrides --text");
  train->add_option("--weights", train_weights, "Domain config file or 'uniform' (with --data)")->capture_default_str();
  train->add_option("--preset", ta.preset, std::string("Model preset: ") + std::string(preset_names))->capture_default_str();
  train->add_option("--output", ta.output, "Folder for metrics.jsonl, checkpoints and final/ (resumes)");
  train->add_option("--seq-len", ta.seq_len, "Tokens per sequence")->capture_default_str();
  train->add_option("--seed", ta.seed, "Seed")->capture_default_str();
  train->add_option("--holdout", ta.holdout, "Share of the text held out (with --text)")->capture_default_str();
  train->add_option("--log-every", ta.log_every, "Steps between printed lines")->capture_default_str();
  add_stage_options(train, train_stage);
  std::string train_device = "cpu";
  train->add_option("--device", train_device, "cpu, cuda or cuda:N (with --data)")->capture_default_str();

  // dro
  StageConfig dro_stage;
  std::string dro_data, dro_ref, dro_output, dro_weights = "uniform", dro_preset;
  int dro_seq = 128;
  std::uint64_t dro_seed = 1;
  auto* dro = app.add_subcommand("dro", "Train a proxy with DRO against a reference model; writes the domain weights");
  dro->add_option("--data", dro_data, "Dataset folder")->required();
  dro->add_option("--reference", dro_ref, "Reference model folder (from `doremi train --output`)")->required();
  dro->add_option("--output", dro_output, "Output folder")->required();
  dro->add_option("--weights", dro_weights, "Initial and sampling weights: domain config file or 'uniform'")
      ->capture_default_str();
  dro->add_option("--preset", dro_preset, "Model preset (default: the reference's)");
  dro->add_option("--seq-len", dro_seq, "Tokens per sequence")->capture_default_str();
  dro->add_option("--seed", dro_seed, "Seed")->capture_default_str();
  dro->add_option("--eta", dro_stage.dro.eta, "Step size η")->capture_default_str();
  dro->add_option("--smoothing", dro_stage.dro.smoothing, "Smoothing c")->capture_default_str();
  add_stage_options(dro, dro_stage);
  std::string dro_device = "cpu";
  dro->add_option("--device", dro_device, device_help)->capture_default_str();

  // eval
  std::string ev_model, ev_data, ev_preset;
  int ev_seq = 0;
  std::uint64_t ev_max = 0;
  auto* ev = app.add_subcommand("eval", "Per-domain held-out log-perplexity of a checkpoint, as JSON");
  ev->add_option("--model", ev_model, "Checkpoint folder (model.safetensors + config.json)")->required();
  ev->add_option("--data", ev_data, "Dataset folder with a validation split")->required();
  ev->add_option("--preset", ev_preset, "Model preset (default: matched from config.json)");
  ev->add_option("--seq-len", ev_seq, "Window length (default: the data's seq_len or the context)");
  ev->add_option("--max-tokens", ev_max, "Target tokens per domain (0: all)");
  std::string ev_device = "cpu";
  ev->add_option("--device", ev_device, device_help)->capture_default_str();

  // pipeline
  std::string pl_config;
  auto* pl = app.add_subcommand("pipeline", "Run the whole DoReMi pipeline from a run config");
  pl->add_option("--config", pl_config, "Run config JSON (see include/doremi/pipeline/run_config.hpp)")->required();
  std::string pl_device;
  pl->add_option("--device", pl_device, "cpu, cuda or cuda:N (default: the config's \"device\", else cpu)");

  CLI11_PARSE(app, argc, argv);
  try {
    dist::start(argc, argv);  // data-parallel under mpirun/srun (docs/distributed.md); one process otherwise
    if (dist::world().size() > 1 && !(train->parsed() || dro->parsed() || ev->parsed() || pl->parsed()))
      fail("only train, dro, eval and pipeline run data-parallel; run this subcommand without mpirun/srun");
    if (quick->parsed()) return run_quickstart(qs_output, threads, parse_device(qs_device));
    if (tokenize->parsed()) {
      const Tokenizer tok = load_tokenizer(tok_spec);
      fmt::print("{}\n", nlohmann::json(tok.encode(read_text(tok_input))).dump());
      return 0;
    }
    if (pre->parsed()) {
      for (const auto& i : pre_inputs) pc.inputs.emplace_back(i);
      pc.output = pre_output;
      pc.pack = !nopack;
      const auto r = preprocess(pc, load_tokenizer(pre_tok));
      fmt::print("{}\n", r.manifest.dump(2));
      return 0;
    }
    if (bw->parsed()) {
      const auto manifest = read_json_file(fs::path(bw_data) / "manifest.json");
      const Packing mode = parse_packing(bw_mode);
      std::vector<std::string> names;
      std::vector<double> counts;
      for (const auto& [name, e] : manifest.at("domains").items()) {
        names.push_back(name);
        counts.push_back(double(e.at("train").at(mode == Packing::pack ? "pack_chunks" : "nopack_chunks").get<std::uint64_t>()));
      }
      nlohmann::json epochs;
      if (bw_epochs == "pile") epochs = "pile";
      else if (!bw_epochs.empty()) epochs = read_json_file(bw_epochs);
      const auto w = weights_by_size(names, counts, epochs);
      write_domain_config(bw_output, DomainConfig{{names, w}, {names, w}});
      fmt::print("{}\n", read_json_file(bw_output).dump(2));
      return 0;
    }
    if (train->parsed()) {
      const Device device = parse_device(train_device);
      if (train_data.empty()) {
        if (device.is_cuda()) fail("train --text runs on the CPU; --device {} needs --data", device.str());
        return run_text_train(ta, train_stage);
      }
      if (ta.output.empty()) fail("train --data needs --output");
      auto stages = stages_on(ta.preset, device);
      const PipelineData data = open_data(train_data, domains_of(train_weights), ta.seq_len, ta.seed);
      stages->train(data, train_stage, weights_for(train_weights, data), ta.output);
      fmt::print("model written to {}\n", (fs::path(ta.output) / "final").string());
      return 0;
    }
    if (dro->parsed()) {
      if (dro_preset.empty()) dro_preset = preset_for_checkpoint(fs::path(dro_ref) / "final");
      auto stages = stages_on(dro_preset, parse_device(dro_device));
      const PipelineData data = open_data(dro_data, domains_of(dro_weights), dro_seq, dro_seed);
      const auto w = weights_for(dro_weights, data);
      const auto avg = stages->dro(data, dro_stage, w, w, w, dro_ref, dro_output);
      nlohmann::json out = nlohmann::json::object();
      for (std::size_t i = 0; i < avg.size(); ++i) out[data.domains()[i]] = avg[i];
      fmt::print("{}\n", out.dump(2));
      return 0;
    }
    if (ev->parsed()) {
      fs::path model_dir = ev_model;
      if (!fs::exists(model_dir / "config.json") && fs::exists(model_dir / "final/config.json")) model_dir /= "final";
      if (ev_preset.empty()) ev_preset = preset_for_checkpoint(model_dir);
      PipelineData data{{}, open_dataset_folder(ev_data, "validation"), ev_seq, 1, ev_max};
      if (data.seq_len == 0)
        data.seq_len = data.validation.manifest.is_null() ? 0 : data.validation.manifest.value("seq_len", 0);
      const auto r = stages_on(ev_preset, parse_device(ev_device))->evaluate_checkpoint(data, model_dir);
      fmt::print("{}\n", r.to_json().dump(2));
      return 0;
    }
    if (pl->parsed()) {
      RunConfig rc = RunConfig::from_json(read_json_file(pl_config), pl_config);
      if (!pl_device.empty()) rc.device = parse_device(pl_device);
      auto small = stages_on(rc.preset, rc.device);
      auto main_stages = rc.main_preset == rc.preset ? nullptr : stages_on(rc.main_preset, rc.device);
      const PipelineResult r = run_pipeline(rc, *small, main_stages ? *main_stages : *small);
      print_perplexity_table(r.domains, r.reference_weights, r.doremi_weights,
                             r.baseline_perplexity ? &*r.baseline_perplexity : nullptr,
                             r.doremi_perplexity ? &*r.doremi_perplexity : nullptr);
      return 0;
    }
  } catch (const doremi::Error& e) {
    return dist::fail_job(e);  // "error: ..."; under mpirun it names the rank and ends every rank
  }
  return 0;
}
