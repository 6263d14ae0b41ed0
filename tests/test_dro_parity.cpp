// Parity of whole DRO steps with a PyTorch twin (docs/algorithm.md, "The domain-weight update").
//
// The library trains a small reference model (plain Trainer), saves it and a
// freshly initialised proxy with save_model, writes 24 steps of batches (4
// domains, NON-uniform sampling weights, gradient accumulation 2, some padded
// rows, domains absent from some steps) and runs DROTrainer over them,
// writing its per-step metrics. tests/python/dro_parity.py then loads both
// checkpoints into transformers.GPTNeoXForCausalLM, replays the same batches
// with the update written from the spec in Python (torch.optim.AdamW,
// clip_grad_norm_) and compares scores, α, ᾱ, losses, gradient norms, the
// final parameters and the written ᾱ to 1e-4 relative.
//
// Directory handed to the script (format described in dro_parity.py):
//   proxy_init/, reference/      save_model folders (config.json, model.safetensors)
//   batches.safetensors          input_ids, targets [steps*accum, B, T] int32 (-1 = padding),
//                                domain [steps*accum, B] int32
//   run.json                     domains, weights, η, c, λ₀, lr per step and schedule, AdamW, clip, accum
//   library_metrics.jsonl        StepStats::to_json() per step
//   proxy_final/                 the proxy after the last step
//   out/avg_domain_weights.json  DROTrainer::write_domain_weights
//
// Set DOREMI_DRO_PARITY_DIR=/some/dir to keep the directory for a manual run of
// the script (`/usr/bin/python3 tests/python/dro_parity.py /some/dir`).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "doremi/core/safetensors.hpp"
#include "doremi/data/byte_tokenizer.hpp"
#include "doremi/doremi.hpp"
#include "doremi/model/checkpoint.hpp"
#include "doremi/train/dro_trainer.hpp"
#include "python_runner.hpp"
#include "test_util.hpp"

namespace {

using namespace doremi;

// The DoReMi 120M shape scaled down (rotary 25 %, tied embeddings, parallel
// residual, tanh GELU); 259 tokens (bytes + 3 specials) padded to 264.
constexpr Spec dro_spec{.name = "dro-parity", .n_layer = 2, .n_embd = 64, .n_head = 4, .n_ctx = 64,
                        .vocab = 259, .vocab_multiple = 8, .rotary_pct = 0.25, .tied_embeddings = true,
                        .residual = Residual::parallel, .gelu = Gelu::tanh};
using Cfg = Config<dro_spec, float>;
using M = Model<Cfg>;

constexpr int kSteps = 24, kAccum = 2, kB = 4, kT = 32;
constexpr std::int32_t kPad = 256;  // input id at padded positions (an end-of-text id)

// Domain names sorted, as the library orders domains.
const std::vector<std::string> kDomains{"counting", "prose", "random", "repeat"};
const std::vector<double> kSampling{0.15, 0.45, 0.25, 0.15};  // s: what batches are drawn from
const std::vector<double> kAlpha0{1, 2, 2, 1};                // α₀ before normalisation

int draw_domain(std::uint64_t seed, std::uint64_t n, std::uint64_t r) {
  const double u = Philox::uniform(seed, n, r);
  double acc = 0;
  for (std::size_t d = 0; d < kSampling.size(); ++d) {
    acc += kSampling[d];
    if (u < acc) return int(d);
  }
  return int(kSampling.size()) - 1;
}

// `count` micro-batches of B rows whose domains are drawn with kSampling.
// Domains: counting ("4711 4712 ..."), prose (license texts), random bytes, a
// repeated phrase. About a quarter of the rows are shorter documents whose
// tail targets are padding (-1).
std::vector<Batch> make_batches(std::uint64_t seed, int count, int B, int T) {
  const auto text = test::licenses_tokens();
  REQUIRE(text.size() > std::size_t(T) + 1);
  static const char* phrases[] = {"abcabd ", "the cat sat. ", "xyzzy! "};
  std::vector<Batch> out;
  for (int n = 0; n < count; ++n) {
    Batch b;
    b.B = B;
    b.T = T;
    for (int r = 0; r < B; ++r) {
      const auto nn = std::uint64_t(n), rr = std::uint64_t(r);
      const int d = draw_domain(seed, nn, rr);
      b.domain.push_back(d);
      std::vector<std::int32_t> seq;
      if (d == 0) {
        long v = long(Philox::below(90000, seed + 1, nn, rr)) + 1000;
        while (int(seq.size()) < T + 1) {
          for (char c : std::to_string(v++) + " ") seq.push_back(std::uint8_t(c));
        }
      } else if (d == 1) {
        const std::size_t start = Philox::below(text.size() - T - 1, seed + 2, nn, rr);
        for (int t = 0; t <= T; ++t) seq.push_back(text[start + std::size_t(t)]);
      } else if (d == 2) {
        for (int t = 0; t <= T; ++t)
          seq.push_back(std::int32_t(Philox::below(256, seed + 3, nn * 1000 + rr, std::uint64_t(t))));
      } else {
        const std::string p = phrases[Philox::below(3, seed + 4, nn, rr)];
        const std::size_t phase = Philox::below(p.size(), seed + 5, nn, rr);
        for (int t = 0; t <= T; ++t) seq.push_back(std::uint8_t(p[(phase + std::size_t(t)) % p.size()]));
      }
      seq.resize(std::size_t(T) + 1);
      // A shorter document: `len` real tokens, then padding.
      int len = T + 1;
      if (Philox::uniform(seed + 6, nn, rr) < 0.25)
        len = 2 + int(Philox::below(std::uint64_t(T - 2), seed + 7, nn, rr));
      for (int t = 0; t < T; ++t) {
        b.inputs.push_back(t < len ? seq[std::size_t(t)] : kPad);
        b.targets.push_back(t + 1 < len ? seq[std::size_t(t) + 1] : -1);
      }
    }
    out.push_back(std::move(b));
  }
  return out;
}

void write_batches(const std::vector<Batch>& batches, const std::filesystem::path& path) {
  std::vector<std::int32_t> ids, tg, dom;
  for (const Batch& b : batches) {
    ids.insert(ids.end(), b.inputs.begin(), b.inputs.end());
    tg.insert(tg.end(), b.targets.begin(), b.targets.end());
    dom.insert(dom.end(), b.domain.begin(), b.domain.end());
  }
  const auto n = std::int64_t(batches.size());
  SafetensorsWriter w;
  w.add("input_ids", std::vector<std::int64_t>{n, kB, kT}, ids);
  w.add("targets", std::vector<std::int64_t>{n, kB, kT}, tg);
  w.add("domain", std::vector<std::int64_t>{n, kB}, dom);
  w.write(path);
}

// Cosine schedule with warmup (the proxy learns: loss 5.5 -> 3.8 nats), weight
// decay 0.1 so the decay groups matter, clipping at 2.25 so about half the
// steps are clipped.
TrainConfig proxy_config() {
  TrainConfig c;
  c.steps = kSteps;
  c.grad_accum = kAccum;
  c.adam = AdamWConfig{.lr = 4e-3, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.1};
  c.schedule.kind = LrSchedule::Kind::cosine;
  c.schedule.peak_lr = 4e-3;
  c.schedule.end_lr = 4e-4;
  c.schedule.warmup_steps = 2;
  c.schedule.total_steps = kSteps;
  c.max_grad_norm = 2.25;
  c.progress = false;
  return c;
}

// The reference: a few steps of plain training on batches drawn with the
// sampling weights, so excess losses are positive on some domains only.
void train_reference(M& ref) {
  test::ListSampler sampler{make_batches(900, 30, 8, kT)};
  TrainConfig c;
  c.steps = 30;
  c.adam.lr = 4e-3;
  c.adam.weight_decay = 0.01;
  c.schedule.kind = LrSchedule::Kind::constant;
  c.schedule.peak_lr = 4e-3;
  c.schedule.total_steps = c.steps;
  c.max_grad_norm = 1.0;
  c.progress = false;
  Trainer trainer(ref, sampler, c);
  trainer.run();
}

}  // namespace

TEST_CASE("dro parity: whole DRO steps agree with a PyTorch twin (transformers, torch AdamW)") {
  if (!test::python_has("torch, transformers, safetensors")) return;
  std::unique_ptr<test::TempDir> tmp;
  std::filesystem::path dir;
  if (const char* keep = std::getenv("DOREMI_DRO_PARITY_DIR"); keep && *keep) {
    dir = keep;
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
  } else {
    tmp = std::make_unique<test::TempDir>("dro-parity");
    dir = tmp->path;
  }

  M reference, proxy;
  reference.init(31);
  train_reference(reference);
  proxy.init(32);
  save_model(reference, dir / "reference");
  save_model(proxy, dir / "proxy_init");

  const auto batches = make_batches(7, kSteps * kAccum, kB, kT);
  write_batches(batches, dir / "batches.safetensors");

  // The data must exercise what the test is for: every domain seen, some
  // domain absent from some step (scores carried over), padded rows.
  {
    int absent_steps = 0, padded = 0;
    std::vector<int> seen(kDomains.size(), 0);
    for (int s = 0; s < kSteps; ++s) {
      std::vector<int> here(kDomains.size(), 0);
      for (int a = 0; a < kAccum; ++a) {
        const Batch& b = batches[std::size_t(s * kAccum + a)];
        for (int r = 0; r < kB; ++r) {
          here[std::size_t(b.domain[std::size_t(r)])] = 1;
          seen[std::size_t(b.domain[std::size_t(r)])] = 1;
        }
        for (auto t : b.targets) padded += t < 0;
      }
      for (int h : here) absent_steps += h == 0;
    }
    for (int x : seen) REQUIRE(x == 1);
    REQUIRE(absent_steps > 0);
    REQUIRE(padded > 0);
    MESSAGE(fmt::format("dro parity data: {} steps x {} micro-batches of {}x{}; {} (step, domain) absences, {} "
                        "padded targets",
                        kSteps, kAccum, kB, kT, absent_steps, padded));
  }

  const TrainConfig cfg = proxy_config();
  // η = 0.2 (not the default 1): an untrained proxy's excess losses are 1–3
  // nats, so with η = 1 α collapses onto one domain within ~8 steps and the
  // later steps would barely depend on the scores; 0.2 keeps α inside the
  // simplex for all 24 steps. c = 1e-3 as in the public 120M run.
  const DroConfig dro{.eta = 0.2, .smoothing = 1e-3};
  const double lambda0 = DROTrainer<M, test::ListSampler>::initial_score();
  std::vector<double> lrs;
  for (long t = 0; t < kSteps; ++t) lrs.push_back(cfg.schedule.at(t));
  const nlohmann::json run{
      {"format", "doremi-dro-parity-1"},
      {"domains", kDomains},
      {"initial_weights", kAlpha0},
      {"sampling_weights", kSampling},
      {"eta", dro.eta},
      {"smoothing", dro.smoothing},
      {"initial_score", lambda0},
      {"steps", kSteps},
      {"grad_accum", kAccum},
      {"micro_batch", kB},
      {"seq_len", kT},
      {"lr", lrs},
      {"schedule",
       {{"kind", std::string(LrSchedule::name(cfg.schedule.kind))},
        {"peak_lr", cfg.schedule.peak_lr},
        {"end_lr", cfg.schedule.end_lr},
        {"warmup_steps", cfg.schedule.warmup_steps},
        {"total_steps", cfg.schedule.total_steps}}},
      {"adamw",
       {{"beta1", cfg.adam.beta1},
        {"beta2", cfg.adam.beta2},
        {"eps", cfg.adam.eps},
        {"weight_decay", cfg.adam.weight_decay}}},
      {"max_grad_norm", cfg.max_grad_norm}};
  write_file_atomic(dir / "run.json", run.dump(2) + "\n");

  test::ListSampler sampler{batches};
  DROTrainer trainer(proxy, reference, sampler, cfg, DomainWeights(kDomains, kAlpha0, kSampling, lambda0, dro));
  std::ofstream metrics(dir / "library_metrics.jsonl");
  trainer.run([&](const StepStats& s) { metrics << s.to_json().dump() << "\n"; });
  metrics.close();
  REQUIRE(trainer.step() == kSteps);
  save_model(proxy, dir / "proxy_final");
  trainer.write_domain_weights(dir / "out");

  CHECK(test::run_python_script("dro_parity.py", dir.string() + " --rtol 1e-4") == 0);
}
