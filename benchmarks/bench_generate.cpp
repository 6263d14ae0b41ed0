// Greedy generation with the key/value cache (eval/generate.hpp) of a
// pythia-70m-shaped model with random weights, side by side with
// transformers' generate on the same checkpoint and prompts in the same run
// (benchmarks/hf_generate_twin.py, a subprocess). A batch of 8 prompts of
// 100-200 tokens, 64 new tokens each. Prints tokens per second of the
// prefill (prompt tokens / the time of generate with 1 new token) and of the
// decoding (the 63 later new tokens of every row / the rest of the time of
// generate with 64), medians over rounds, the ratios, and whether the
// continuations are equal.
//
//   bench_generate [--rounds 3] [--new 64] [--batch 8] [--python /usr/bin/python3] [--ours-only 1]
//
// --ours-only 1: only our side (for profiling: perf record bench_generate --ours-only 1).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <omp.h>

#include "bench_util.hpp"
#include "doremi/core/atomic_file.hpp"
#include "doremi/doremi.hpp"
#include "doremi/eval/generate.hpp"
#include "doremi/model/checkpoint.hpp"

using namespace doremi;
using bench::median;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 3, new_tokens = 64, batch = 8;
  bool ours_only = false;
  std::string python = "/usr/bin/python3";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--rounds") rounds = std::max(1, std::atoi(argv[i + 1]));
    else if (a == "--new") new_tokens = std::max(2, std::atoi(argv[i + 1]));
    else if (a == "--batch") batch = std::max(1, std::atoi(argv[i + 1]));
    else if (a == "--python") python = argv[i + 1];
    else if (a == "--ours-only") ours_only = std::atoi(argv[i + 1]) != 0;
  }
  using Cfg = presets::Pythia70M<float>;
  using M = Model<Cfg>;
  M model;
  model.init(1);
  // The checkpoint and prompts both sides read.
  const auto dir = std::filesystem::temp_directory_path() / fmt::format("doremi-bench-generate-{}", ::getpid());
  save_model(model, dir);
  std::vector<std::vector<std::int32_t>> prompts;
  std::size_t prompt_tokens = 0;
  for (int r = 0; r < batch; ++r) {
    const int len = 100 + (100 * r) / std::max(1, batch - 1);
    prompts.emplace_back();
    for (int i = 0; i < len; ++i) prompts.back().push_back(std::int32_t(Philox::below(Cfg::vocab, 7, r, i)));
    prompt_tokens += std::size_t(len);
  }
  write_file_atomic(dir / "prompts.json", nlohmann::json(prompts).dump());

  GenerationConfig one, all;
  one.max_new_tokens = 1;
  all.max_new_tokens = new_tokens;
  generate(model, prompts, one);  // warm-up
  std::vector<double> ours_prefill, ours_total, hf_prefill, hf_total;
  std::vector<GeneratedRow> ours_rows;
  nlohmann::json hf;
  const std::string cmd =
      fmt::format("{} {}/hf_generate_twin.py --model {} --prompts {} --new {} --threads {} 2>&1", python,
                  DOREMI_BENCH_DIR, dir.string(), (dir / "prompts.json").string(), new_tokens, omp_get_max_threads());
  for (int round = 0; round < rounds; ++round) {
    auto t0 = std::chrono::steady_clock::now();
    generate(model, prompts, one);
    ours_prefill.push_back(seconds_since(t0));
    t0 = std::chrono::steady_clock::now();
    ours_rows = generate(model, prompts, all);
    ours_total.push_back(seconds_since(t0));
    if (ours_only) {
      fmt::print("round {}: prefill {:.3f} s, generate {} tokens {:.3f} s\n", round, ours_prefill.back(), new_tokens,
                 ours_total.back());
      continue;
    }
    const std::string out = bench::run_command(cmd);
    hf = nullptr;
    for (std::size_t pos = 0; pos < out.size();) {  // the JSON line the twin printed
      const std::size_t end = out.find('\n', pos);
      const auto j = nlohmann::json::parse(out.substr(pos, end - pos), nullptr, false);
      if (!j.is_discarded() && j.is_object() && j.contains("total_s")) hf = j;
      if (end == std::string::npos) break;
      pos = end + 1;
    }
    if (hf.is_null()) {
      fmt::print("transformers twin did not run ({}):\n{}\n", cmd, out);
      std::filesystem::remove_all(dir);
      return 1;
    }
    hf_prefill.push_back(hf.at("prefill_s").at(0).get<double>());
    hf_total.push_back(hf.at("total_s").at(0).get<double>());
  }
  std::filesystem::remove_all(dir);
  if (ours_only) return 0;
  bool equal = true;
  for (std::size_t r = 0; r < prompts.size(); ++r)
    equal &= hf.at("tokens").at(r).get<std::vector<std::int32_t>>() == ours_rows[r].tokens;

  const double later = double(batch) * (new_tokens - 1);
  const double op = double(prompt_tokens) / median(ours_prefill), hp = double(prompt_tokens) / median(hf_prefill);
  const double od = later / (median(ours_total) - median(ours_prefill));
  const double hd = later / (median(hf_total) - median(hf_prefill));
  fmt::print("pythia-70m shape (random weights), greedy, {} prompts of 100-200 tokens ({} in all), {} new tokens, {} "
             "threads, {} rounds\n",
             batch, prompt_tokens, new_tokens, omp_get_max_threads(), rounds);
  fmt::print("doremi-cpp: GEMM {}; transformers {} (torch {}, {})\n", backend::Cpu::gemm, hf.value("transformers", "?"),
             hf.value("torch", "?"), hf.value("blas", "?"));
  fmt::print("{:<10} {:>14} {:>14} {:>7}\n", "", "doremi-cpp", "transformers", "ratio");
  fmt::print("{:<10} {:>10.0f} t/s {:>10.0f} t/s {:>6.2f}x   (median {:.3f} s / {:.3f} s)\n", "prefill", op, hp, op / hp,
             median(ours_prefill), median(hf_prefill));
  fmt::print("{:<10} {:>10.0f} t/s {:>10.0f} t/s {:>6.2f}x   (median total {:.3f} s / {:.3f} s)\n", "decoding", od, hd,
             od / hd, median(ours_total), median(hf_total));
  fmt::print("continuations equal to transformers': {}\n", equal ? "yes" : "NO");
  return equal ? 0 : 1;
}
