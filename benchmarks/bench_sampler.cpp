// WeightedDomainSampler throughput (tokens of finished batches per second, as
// the trainer sees them through next()) against what a training step
// consumes: the cpu-bench step speed (a command-line figure) and the tiny
// model's step speed (measured here). The sampler must not be the bottleneck:
// the goal is > 100x.
//
//   bench_sampler [--seconds 1] [--batch 8] [--seq-len 1024] [--domains 4]
//                 [--train-tokens-per-s 1619] [--tiny-steps 5]
//
// Sources: MemorySource (tokens in RAM), and Megatron indexed datasets written
// to a temp folder (uint16 tokens, memory-mapped, page-cached by one read
// pass first). Modes: random and deterministic domain choice over packed
// chunks of T + 1 tokens; nopack over documents of 1..3T tokens.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <unistd.h>
#include <vector>

#include <fmt/format.h>
#include <omp.h>

#include "doremi/core/rng.hpp"
#include "doremi/data/indexed_dataset.hpp"
#include "doremi/data/source.hpp"
#include "doremi/data/weighted_sampler.hpp"
#include "doremi/model/gpt.hpp"
#include "doremi/optim/adamw.hpp"
#include "doremi/train/trainer.hpp"

using namespace doremi;

namespace {

using Clock = std::chrono::steady_clock;

struct Args {
  double seconds = 1.0;
  int B = 8, T = 1024, domains = 4, tiny_steps = 5;
  double train_tps = 1619;  // cpu-bench training step, tokens/s (README's machine)
};

// Token sequences per domain: `count` sequences of `len(j)` tokens (ids < 50000).
template <class Len>
std::vector<std::vector<std::int32_t>> make_seqs(int d, int count, Len len) {
  std::vector<std::vector<std::int32_t>> s(static_cast<std::size_t>(count));
  for (int j = 0; j < count; ++j) {
    const int n = len(j);
    s[std::size_t(j)].resize(std::size_t(n));
    for (int t = 0; t < n; ++t) s[std::size_t(j)][std::size_t(t)] = std::int32_t((d * 7919 + j * 31 + t) % 50000);
  }
  return s;
}

template <class Source>
double tokens_per_s(const std::vector<std::string>& names, const std::vector<Source>& sources, const Args& a,
                    SamplerOptions o) {
  std::vector<double> w(names.size());
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = 1.0 + double(i);
  WeightedDomainSampler<Source> s(names, sources, w, a.B, a.T, 1, o);
  std::uint64_t sink = 0;
  for (int i = 0; i < 3; ++i) sink += std::uint64_t(s.next().inputs[0]);  // warm-up
  long batches = 0;
  const auto t0 = Clock::now();
  double dt = 0;
  do {
    const Batch b = s.next();
    sink += std::uint64_t(b.targets[std::size_t(b.B) * std::size_t(b.T) - 1] + 1);
    ++batches;
    dt = std::chrono::duration<double>(Clock::now() - t0).count();
  } while (dt < a.seconds);
  if (sink == 42) fmt::print(" ");
  return double(batches) * a.B * a.T / dt;
}

// One full training step (forward, backward, AdamW) of the tiny preset at
// B = 8 × its context, median tokens/s over `steps` steps.
double tiny_tokens_per_s(int steps) {
  using Cfg = presets::Tiny<float>;
  constexpr int B = 8, T = Cfg::n_ctx, N = B * T;
  Model<Cfg> model;
  model.init(1);
  AdamW<float> adam(model.num_parameters(), AdamWConfig{});
  const auto groups = param_groups<Model<Cfg>>();
  std::vector<std::int32_t> in(N), tg(N);
  for (int i = 0; i < N; ++i) {
    in[std::size_t(i)] = std::int32_t(Philox::below(Cfg::vocab, 1, 0, std::uint64_t(i)));
    tg[std::size_t(i)] = std::int32_t(Philox::below(Cfg::vocab, 1, 1, std::uint64_t(i)));
  }
  const std::vector<float> w(N, 1.0f / N);
  std::vector<double> times;
  for (int s = 0; s < steps + 2; ++s) {
    const auto t0 = Clock::now();
    model.zero_grad();
    model.forward(in, tg, B, T);
    model.backward(w);
    adam.step(model.parameters(), model.gradients(), groups, 1e-4);
    if (s >= 2) times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  return N / times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const char* v = argv[i + 1];
    if (k == "--seconds") a.seconds = std::atof(v);
    else if (k == "--batch") a.B = std::atoi(v);
    else if (k == "--seq-len") a.T = std::atoi(v);
    else if (k == "--domains") a.domains = std::atoi(v);
    else if (k == "--train-tokens-per-s") a.train_tps = std::atof(v);
    else if (k == "--tiny-steps") a.tiny_steps = std::atoi(v);
    else {
      fmt::print(stderr, "unknown option {}\n", k);
      return 2;
    }
  }
  try {
    const double tiny = a.tiny_steps > 0 ? tiny_tokens_per_s(a.tiny_steps) : 0.0;
    fmt::print("training step: cpu-bench {:.0f} tokens/s (given), tiny {} (measured, B=8 T=128, {} threads)\n",
               a.train_tps, tiny > 0 ? fmt::format("{:.0f} tokens/s", tiny) : std::string("not measured"),
               omp_get_max_threads());
    fmt::print("sampler: B={} T={} domains={} weights 1:2:..:k, {:.1f} s per row\n", a.B, a.T, a.domains, a.seconds);
    auto report = [&](const std::string& what, double tps) {
      fmt::print("  {:<44} {:>12.0f} tokens/s  {:>9.0f}x cpu-bench", what, tps, tps / a.train_tps);
      if (tiny > 0) fmt::print("  {:>7.0f}x tiny", tps / tiny);
      fmt::print("\n");
    };

    std::vector<std::string> names;
    std::vector<MemorySource> chunks, docs;
    const int per_domain = 1024;
    for (int d = 0; d < a.domains; ++d) {
      names.push_back(fmt::format("domain{}", d));
      chunks.emplace_back(make_seqs(d, per_domain, [&](int) { return a.T + 1; }));
      docs.emplace_back(make_seqs(d, per_domain, [&](int j) { return 1 + int(Philox::below(3 * std::uint64_t(a.T), 7, std::uint64_t(d), std::uint64_t(j))); }));
    }
    auto opt = [](SamplingMode m, Packing p, bool prefetch) {
      SamplerOptions o;
      o.mode = m;
      o.packing = p;
      o.prefetch = prefetch;
      return o;
    };
    report("memory, pack, random, prefetch", tokens_per_s(names, chunks, a, opt(SamplingMode::random, Packing::pack, true)));
    report("memory, pack, random, no prefetch",
           tokens_per_s(names, chunks, a, opt(SamplingMode::random, Packing::pack, false)));
    report("memory, pack, deterministic, prefetch",
           tokens_per_s(names, chunks, a, opt(SamplingMode::deterministic, Packing::pack, true)));
    report("memory, nopack (documents), random, prefetch",
           tokens_per_s(names, docs, a, opt(SamplingMode::random, Packing::nopack, true)));

    // Indexed datasets on disk (page-cached).
    namespace fs = std::filesystem;
    const fs::path dir = fs::temp_directory_path() / fmt::format("doremi-bench-sampler-{}", ::getpid());
    fs::create_directories(dir);
    std::uint64_t bytes = 0;
    {
      std::vector<IndexedSource> indexed;
      for (int d = 0; d < a.domains; ++d) {
        const auto prefix = dir / names[std::size_t(d)];
        IndexedDatasetWriter w(prefix, TokenDType::u16);
        for (const auto& s : make_seqs(d, per_domain, [&](int) { return a.T + 1; })) w.add_document(s);
        w.finish();
        indexed.emplace_back(prefix);
        std::vector<std::int32_t> buf;
        for (std::size_t i = 0; i < indexed.back().size(); ++i) {  // into the page cache
          buf.resize(indexed.back().length(i));
          indexed.back().read(i, 0, buf);
        }
        bytes += fs::file_size(fs::path(prefix.string() + ".bin"));
      }
      fmt::print("  (indexed datasets: {} domains, {:.1f} MB of uint16 tokens in {})\n", a.domains, double(bytes) / 1e6,
                 dir.string());
      report("indexed (mmap), pack, random, prefetch",
             tokens_per_s(names, indexed, a, opt(SamplingMode::random, Packing::pack, true)));
      report("indexed (mmap), pack, random, no prefetch",
             tokens_per_s(names, indexed, a, opt(SamplingMode::random, Packing::pack, false)));
    }
    fs::remove_all(dir);
  } catch (const Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
