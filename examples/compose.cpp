// The whole DoReMi method in one translation unit, composed from the
// library's templates as a researcher would in their own code: documents
// from JSON lines to per-domain token datasets, then a reference model and a
// DRO proxy of a custom compile-time shape, main models of a preset on the
// DoReMi weights and on the reference weights, and the per-domain held-out
// log-perplexity of both (what `doremi quickstart` runs, without the CLI).
//
//   compose [--steps N] OUTPUT_DIR INPUT.jsonl...     (N steps per stage, 200 by default)
//
// Inputs: JSON lines {"text": ..., "meta": {"domain": ...}}, such as
// examples/data/quickstart/*.jsonl. Writes OUTPUT_DIR/data (the datasets) and
// OUTPUT_DIR/run (models, weights, summary.json, report/report.html); run
// again, it skips finished stages and resumes unfinished ones.
#include <doremi/doremi.hpp>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

// A 3-layer, 96-wide GPT-NeoX-style model for the reference and the proxy:
// every shape is a compile-time constant.
constexpr doremi::Spec small_proxy{.name = "small-proxy", .n_layer = 3, .n_embd = 96, .n_head = 4, .n_ctx = 128,
                                   .vocab = 257, .vocab_multiple = 8, .rotary_pct = 0.25,
                                   .tied_embeddings = true, .residual = doremi::Residual::parallel,
                                   .gelu = doremi::Gelu::tanh};

namespace {

struct Args {
  long steps = 200;
  std::filesystem::path output;
  std::vector<std::filesystem::path> inputs;
};

Args parse_args(int argc, char** argv) {
  Args a;
  int i = 1;
  if (i + 1 < argc && std::string(argv[i]) == "--steps") {
    char* end = nullptr;
    a.steps = std::strtol(argv[i + 1], &end, 10);
    if (*end != '\0' || a.steps <= 0) doremi::fail("--steps must be a positive integer (got '{}')", argv[i + 1]);
    i += 2;
  }
  if (argc - i < 2) doremi::fail("usage: {} [--steps N] OUTPUT_DIR INPUT.jsonl...", argv[0]);
  a.output = argv[i++];
  for (; i < argc; ++i) a.inputs.emplace_back(argv[i]);
  return a;
}

void print_results(const doremi::PipelineResult& r) {
  fmt::print("{:<12} {:>10} {:>10} {:>10} {:>10}\n", "domain", "reference", "doremi", "baseline", "doremi");
  fmt::print("{:<12} {:>10} {:>10} {:>10} {:>10}\n", "", "weight", "weight", "log-ppl", "log-ppl");
  for (std::size_t i = 0; i < r.domains.size(); ++i)
    fmt::print("{:<12} {:>10.4f} {:>10.4f} {:>10.4f} {:>10.4f}\n", r.domains[i], r.reference_weights[i],
               r.doremi_weights[i], r.baseline_perplexity->log_perplexity[i], r.doremi_perplexity->log_perplexity[i]);
  fmt::print("{:<12} {:>10} {:>10} {:>10.4f} {:>10.4f}\n", "average", "", "", r.baseline_perplexity->average,
             r.doremi_perplexity->average);
  fmt::print("{:<12} {:>10} {:>10} {:>10.4f} {:>10.4f}\n", "worst", "", "", r.baseline_perplexity->worst,
             r.doremi_perplexity->worst);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args args = parse_args(argc, argv);

    doremi::PreprocessConfig data;  // JSON lines -> per-domain indexed datasets
    data.inputs = args.inputs;
    data.output = args.output / "data";
    data.domain_key = "meta.domain";
    data.seq_len = 128;
    data.validation_share = 0.1;
    doremi::preprocess(data, doremi::Tokenizer{});  // bytes as tokens; or load_tokenizer("tokenizer.json")

    doremi::RunConfig cfg;  // or RunConfig::from_json(...)
    cfg.data = data.output;
    cfg.output = args.output / "run";
    cfg.reference_weights = "pack";  // by size
    cfg.reference.steps = cfg.proxy.steps = cfg.main.steps = args.steps;
    cfg.proxy.dro = doremi::DroConfig{.eta = 1.0, .smoothing = 1e-3};
    cfg.eval_max_tokens = 20000;  // per domain
    doremi::StagesFor<doremi::Config<small_proxy, float>> small;  // reference + proxy (DROTrainer)
    doremi::StagesFor<doremi::presets::Tiny<float>> main_model;     // main models
    const auto result = doremi::run_pipeline(cfg, small, main_model);  // weights, perplexities, report

    print_results(result);
    fmt::print("(log-perplexity: nats per byte on the held-out documents; lower is better)\n");
    fmt::print("summary: {}\n", (cfg.output / "summary.json").string());
  } catch (const doremi::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
}
