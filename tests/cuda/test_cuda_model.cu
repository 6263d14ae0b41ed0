// Whole models on backend::Cuda against backend::Cpu: the same weights and
// batches give the same per-token losses and gradients (fp32: different
// summation orders; bf16 products: bf16 tolerances), a short training run and
// DRO run follow the CPU's trajectory, and checkpoints move between the two.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <utility>

#include "../test_corpus.hpp"
#include "../generate_log.hpp"
#include "../test_util.hpp"
#include "cuda_test_util.hpp"
#include "doremi/doremi.hpp"
#include "doremi/eval/generate.hpp"
#include "doremi/pipeline/pipeline.hpp"
#include "doremi/train/dro_trainer.hpp"

using namespace cuda_test;

namespace {

// Rotary, parallel residual, untied (GPT-NeoX) and learned positions,
// sequential, tied (GPT-2): head dimension 16 and 32.
constexpr Spec neox_small{.name = "gpu-neox", .n_layer = 2, .n_embd = 64, .n_head = 4, .n_ctx = 64, .vocab = 300,
                          .vocab_multiple = 16, .rotary_pct = 0.25, .tied_embeddings = false,
                          .residual = Residual::parallel, .gelu = Gelu::exact};
constexpr Spec gpt2_small{.name = "gpu-gpt2", .n_layer = 2, .n_embd = 64, .n_head = 2, .n_ctx = 64, .vocab = 300,
                          .vocab_multiple = 16, .rotary_pct = 0.0, .tied_embeddings = true,
                          .residual = Residual::sequential, .gelu = Gelu::tanh};

// Batches with three domains: uniform random tokens, a repeated phrase, a
// fixed Markov-ish sequence; some padding targets.
std::vector<Batch> make_batches(int count, int B, int T, int vocab) {
  std::vector<Batch> out;
  for (int n = 0; n < count; ++n) {
    Batch b;
    b.B = B;
    b.T = T;
    for (int r = 0; r < B; ++r) {
      const int d = (n + r) % 3;
      b.domain.push_back(d);
      for (int t = 0; t <= T; ++t) {
        std::int32_t tok = 0;
        if (d == 0) tok = std::int32_t(Philox::below(vocab, 11, std::uint64_t(n * 100 + r), std::uint64_t(t)));
        if (d == 1) tok = std::int32_t(t % 9 + 20);
        if (d == 2) tok = std::int32_t((t * t + 7 * r) % 50 + 100);
        if (t < T) b.inputs.push_back(tok);
        if (t > 0) b.targets.push_back(r == 1 && t > T - 3 ? -1 : tok);
      }
    }
    out.push_back(std::move(b));
  }
  return out;
}

std::vector<float> to_vector(std::span<const float> s) { return {s.begin(), s.end()}; }

template <Spec S>
void compare_step(double atol, double rtol) {
  using Cfg = Config<S, float>;
  Model<Cfg, Cpu> cpu;
  Model<Cfg, Cuda> gpu_model(gpu());
  cpu.init(5);
  gpu_model.init(5);
  check_close(to_vector(gpu_model.host_parameters()), to_vector(cpu.host_parameters()), 0, 0, "init");
  const Batch b = make_batches(1, 3, 48, Cfg::vocab)[0];
  std::vector<float> w(b.inputs.size());
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = float(0.5 + Philox::uniform(3, 0, i)) / float(w.size());
  const auto rc = cpu.forward(b.inputs, b.targets, b.B, b.T);
  const auto rg = gpu_model.forward(b.inputs, b.targets, b.B, b.T);
  CHECK(rc.tokens == rg.tokens);
  check_close(to_vector(gpu_model.host_losses()), to_vector(rc.losses), atol, rtol, "per-token losses");
  cpu.zero_grad();
  gpu_model.zero_grad();
  cpu.backward(w);
  gpu_model.backward(w);
  std::vector<float> gg(gpu_model.num_parameters());
  backend::download(gpu(), gg.data(), gpu_model.gradients().data(), gg.size());
  const auto gc = to_vector(cpu.gradients());
  double scale = 0;  // gradients are compared relative to the largest one
  for (float g : gc) scale = std::max(scale, double(std::abs(g)));
  check_close(gg, gc, atol * scale, rtol, "gradients");
  // A smaller batch after it reuses the per-token buffers; the host views have its size.
  const std::span<const std::int32_t> in1(b.inputs.data(), std::size_t(b.T)), tg1(b.targets.data(), std::size_t(b.T));
  cpu.forward(in1, tg1, 1, b.T);
  gpu_model.forward(in1, tg1, 1, b.T);
  REQUIRE(gpu_model.host_losses().size() == std::size_t(b.T));
  check_close(to_vector(gpu_model.host_losses()), to_vector(cpu.host_losses()), atol, rtol, "losses, one row");
  const auto mask_g = gpu_model.host_mask(), mask_c = cpu.host_mask();
  CHECK(std::equal(mask_g.begin(), mask_g.end(), mask_c.begin(), mask_c.end()));
}

}  // namespace

TEST_CASE("cuda model: without a device, Model<Cfg, Cuda> raises doremi::Error naming the CPU alternative") {
  if (backend::cuda_available()) {
    MESSAGE("a CUDA device is present: the no-device path is not exercised");
    return;
  }
  CHECK_THROWS_AS((Model<Config<neox_small, float>, Cuda>()), Error);
  CHECK_THROWS_WITH_AS(Cuda(), doctest::Contains("--device cpu"), Error);
}

TEST_CASE("cuda model: forward losses and gradients match the CPU (fp32)") {
  REQUIRE_GPU();
  compare_step<neox_small>(1e-5, 1e-3);
  compare_step<gpt2_small>(1e-5, 1e-3);
}

TEST_CASE("cuda model: bf16 matrix products match the CPU's bf16 products") {
  REQUIRE_GPU();
  // GPT-NeoX shape (exact GELU, parallel residual) and GPT-2 shape (tanh
  // GELU: the fused GELU epilogue; sequential residual).
  for_each_attention_family([] {
    compare_step<bf16_matmul(neox_small)>(2e-3, 3e-2);
    compare_step<bf16_matmul(gpt2_small)>(2e-3, 3e-2);
  });
}

TEST_CASE("cuda model: a short training run and a DRO run follow the CPU's") {
  REQUIRE_GPU();
  using Cfg = Config<neox_small, float>;
  TrainConfig c;
  c.steps = 12;
  c.adam.lr = 3e-3;
  c.schedule.kind = LrSchedule::Kind::constant;
  c.schedule.peak_lr = 3e-3;
  c.progress = false;
  const auto batches = make_batches(4, 3, 48, Cfg::vocab);
  Model<Cfg, Cpu> cpu;
  Model<Cfg, Cuda> gpu_model(gpu());
  cpu.init(9);
  gpu_model.init(9);
  test::ListSampler sc{batches}, sg{batches};
  Trainer tc(cpu, sc, c);
  Trainer tg(gpu_model, sg, c);
  double first = 0, last = 0;
  for (long s = 0; s < c.steps; ++s) {
    const StepStats a = tc.train_step(), b = tg.train_step();
    INFO("step ", s);
    CHECK(b.loss == doctest::Approx(a.loss).epsilon(2e-3));
    CHECK(b.grad_norm == doctest::Approx(a.grad_norm).epsilon(1e-2));
    if (s == 0) first = b.loss;
    last = b.loss;
  }
  CHECK(last < first - 0.5);  // it learns

  // DRO: the proxies above keep training against fresh references.
  Model<Cfg, Cpu> ref_c;
  Model<Cfg, Cuda> ref_g(gpu());
  ref_c.init(3);
  ref_g.init(3);
  auto weights = [] {
    return DomainWeights({"random", "repeat", "pattern"}, {1, 1, 1}, {1, 1, 1},
                         std::log(double(Cfg::padded_vocab)), DroConfig{1.0, 1e-3});
  };
  c.steps = 6;
  DROTrainer dc(cpu, ref_c, sc, c, weights());
  DROTrainer dg(gpu_model, ref_g, sg, c, weights());
  for (long s = 0; s < c.steps; ++s) {
    const StepStats a = dc.train_step(), b = dg.train_step();
    INFO("dro step ", s);
    CHECK(b.loss == doctest::Approx(a.loss).epsilon(5e-3));
  }
  for (std::size_t d = 0; d < 3; ++d) {
    CHECK(dg.domain_weights().alpha()[d] == doctest::Approx(dc.domain_weights().alpha()[d]).epsilon(1e-3));
    CHECK(dg.domain_weights().average()[d] == doctest::Approx(dc.domain_weights().average()[d]).epsilon(1e-3));
  }
}

TEST_CASE("cuda model: DRO with 2 micro-batches follows one batch twice as large") {
  REQUIRE_GPU();
  // The DRO trainer's exact accumulation on the GPU: the scores of both
  // micro-batches (padding included) set one update; the sequences run in
  // passes of one domain each, whose gradients are folded into the two
  // per-domain sums (axpby) and combined after the update.
  using Cfg = Config<neox_small, float>;
  const auto big = make_batches(3, 6, 32, Cfg::vocab);
  test::ListSampler one{big}, two{test::halves(big)};
  auto config = [](int accum) {
    TrainConfig c;
    c.steps = 3;
    c.grad_accum = accum;
    c.adam.lr = 3e-3;
    c.schedule.kind = LrSchedule::Kind::constant;
    c.schedule.peak_lr = 3e-3;
    c.progress = false;
    return c;
  };
  auto weights = [] {
    return DomainWeights({"random", "repeat", "pattern"}, {1, 1, 1}, {1, 1, 1},
                         std::log(double(Cfg::padded_vocab)), DroConfig{3.0, 1e-3});
  };
  Model<Cfg, Cuda> ref_a(gpu()), ref_b(gpu()), proxy_a(gpu()), proxy_b(gpu());
  ref_a.init(5);
  ref_b.init(5);
  proxy_a.init(6);
  proxy_b.init(6);
  DROTrainer a(proxy_a, ref_a, one, config(1), weights());
  DROTrainer b(proxy_b, ref_b, two, config(2), weights());
  for (int step = 0; step < 3; ++step) {
    INFO("step ", step);
    const StepStats sa = a.train_step(), sb = b.train_step();
    CHECK(sb.loss == doctest::Approx(sa.loss).epsilon(1e-4));
    for (std::size_t d = 0; d < 3; ++d)
      CHECK(b.domain_weights().alpha()[d] == doctest::Approx(a.domain_weights().alpha()[d]).epsilon(1e-4));
  }
  CHECK(test::relative_distance(to_vector(proxy_b.host_parameters()), to_vector(proxy_a.host_parameters())) < 1e-4);
  CHECK(a.domain_weights().alpha()[0] != doctest::Approx(1.0 / 3).epsilon(1e-3));  // the weights moved
}

TEST_CASE("cuda model: after their first step, training and DRO steps allocate no device memory") {
  REQUIRE_GPU();
  // Everything a step needs (activations, operand copies, scratch, cuBLASLt
  // plans and workspace) is laid out by the first step of a shape and reused:
  // no cudaMalloc (and no cudaFree) in the steady state, as the issue asks.
  // Free device memory is the witness (the emulator's runtime counts bytes;
  // on a GPU, a step that allocated would move it by the driver's page).
  using Cfg = Config<bf16_matmul(neox_small), float>;
  const auto free_bytes = [] {
    std::size_t free = 0, total = 0;
    DOREMI_CUDA_CHECK(cudaStreamSynchronize(gpu().stream()));
    DOREMI_CUDA_CHECK(cudaMemGetInfo(&free, &total));
    return free;
  };
  TrainConfig c;
  c.steps = 8;
  c.progress = false;
  const auto batches = make_batches(4, 3, 48, Cfg::vocab);
  Model<Cfg, Cuda> proxy(gpu()), ref(gpu());
  proxy.init(1);
  ref.init(2);
  test::ListSampler s{batches};
  Trainer trainer(proxy, s, c);
  const DomainWeights weights({"random", "repeat", "pattern"}, {1, 1, 1}, {1, 1, 1},
                              std::log(double(Cfg::padded_vocab)), DroConfig{1.0, 1e-3});
  DROTrainer dro(proxy, ref, s, c, weights);
  TrainConfig c2 = c;
  c2.grad_accum = 2;  // passes of one domain (here 2 sequences each) and the per-domain sums
  DROTrainer dro2(proxy, ref, s, c2, weights);
  trainer.train_step();
  dro.train_step();
  dro2.train_step();
  const std::size_t before = free_bytes();
#ifdef DOREMI_CUDA_EMULATE
  const std::size_t calls = emu::device_allocations();  // also no buffer freed and made again at its size
#endif
  for (int k = 0; k < 3; ++k) {
    trainer.train_step();
    dro.train_step();
    dro2.train_step();
  }
  CHECK(free_bytes() == before);
#ifdef DOREMI_CUDA_EMULATE
  CHECK(emu::device_allocations() == calls);
#endif
  CHECK(std::as_const(ref).gradients().empty());  // the reference only runs forward: no gradient buffer
}

TEST_CASE("cuda model: GPU training repeats bit for bit") {
  REQUIRE_GPU();
  // No atomics anywhere in a step (column sums in a fixed order, the token
  // embedding's gradient through a sort): two runs from the same seed on the
  // same batches end with the same bits. (Under the emulator blocks run in
  // order, so only a GPU can fail this.)
  using Cfg = Config<bf16_matmul(neox_small), float>;
  TrainConfig c;
  c.steps = 3;
  c.progress = false;
  const auto batches = make_batches(3, 3, 48, Cfg::vocab);
  auto run = [&] {
    Model<Cfg, Cuda> m(gpu());
    m.init(4);
    test::ListSampler s{batches};
    Trainer t(m, s, c);
    for (long k = 0; k < c.steps; ++k) t.train_step();
    return to_vector(m.host_parameters());
  };
  const std::vector<float> a = run(), b = run();
  REQUIRE(a.size() == b.size());
  CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

TEST_CASE("cuda model: checkpoints written from the GPU load on the CPU and back") {
  REQUIRE_GPU();
  using Cfg = Config<neox_small, float>;
  const auto dir = std::filesystem::temp_directory_path() / "doremi_cuda_checkpoint_test";
  std::filesystem::remove_all(dir);
  Model<Cfg, Cuda> a(gpu());
  a.init(21);
  save_model(a, dir);
  Model<Cfg, Cpu> b;
  load_model(b, dir);
  CHECK(to_vector(a.host_parameters()) == to_vector(b.host_parameters()));
  Model<Cfg, Cuda> c(gpu());
  load_model(c, dir);
  CHECK(to_vector(c.host_parameters()) == to_vector(b.host_parameters()));
  std::filesystem::remove_all(dir);
}

TEST_CASE("cuda pipeline: the tiny stages on the GPU give the CPU's domain weights and perplexities") {
  REQUIRE_GPU();
  test::TempDir dir("cuda-pipeline");
  const auto data = test::make_corpus(dir.path);
  const nlohmann::json stage{{"steps", 16}, {"batch_size", 4}, {"lr", 3e-3}, {"schedule", "constant"}, {"warmup", 0.0}};
  auto config = [&](const char* device) {
    return RunConfig::from_json({{"data", data.string()}, {"output", (dir.path / device).string()},
                                 {"preset", "tiny"}, {"seq_len", 32}, {"reference_weights", "pack"},
                                 {"reference", stage}, {"proxy", stage}, {"main", stage}, {"device", device},
                                 {"eval_max_tokens", 2000}},
                                device);
  };
  // The stages make_stages("tiny") and make_stages("tiny", Cuda()) give (bf16
  // products on the GPU), named directly: make_stages instantiates every
  // preset's stages, the heaviest compile of the suite.
  StagesFor<presets::Tiny<float>, Cpu> cpu_stages;
  StagesFor<Config<bf16_matmul(presets::tiny), float>, Cuda> gpu_stages(gpu());
  const PipelineResult c = run_pipeline(config("cpu"), cpu_stages, cpu_stages);
  const PipelineResult g = run_pipeline(config("cuda"), gpu_stages, gpu_stages);
  REQUIRE(g.domains == c.domains);
  for (std::size_t d = 0; d < c.domains.size(); ++d) {
    INFO("domain ", c.domains[d]);
    CHECK(g.doremi_weights[d] == doctest::Approx(c.doremi_weights[d]).epsilon(0.05));
    CHECK(g.doremi_perplexity->log_perplexity[d] == doctest::Approx(c.doremi_perplexity->log_perplexity[d]).epsilon(0.02));
    CHECK(g.baseline_perplexity->log_perplexity[d] ==
          doctest::Approx(c.baseline_perplexity->log_perplexity[d]).epsilon(0.02));
  }
  CHECK(read_json_file(dir.path / "cuda/run_config.json").at("device") == "cuda:0");
}

// ---- generation (eval/generate.hpp) with the GPU's key/value cache ----

namespace {

// init(seed) with the weights scaled up (logits far from flat, so greedy
// choices are not near-ties) and random LayerNorm parameters, as
// tests/test_generate.cpp makes them: the one parameter vector both models get.
template <class Cfg>
std::vector<float> generation_weights(std::uint64_t seed) {
  using M = Model<Cfg, Cpu>;
  M m;
  m.init(seed);
  std::vector<float> p(m.host_parameters().begin(), m.host_parameters().end());
  for (const TensorInfo& t : M::tensors())
    for (std::size_t i = 0; i < t.size; ++i) {
      float& v = p[t.offset + i];
      if (t.init == TensorInfo::Init::normal) v *= 4.0f;
      else v += float(0.1 * Philox::normal(seed + 1, t.offset, i));
    }
  return p;
}

using test::StepLogits;
using test::generate_logged;

// Greedy generation of prompts of different lengths on both backends: the
// same tokens, and the logits of every step within tol of the CPU's largest
// (up to a near-tie between two tokens, which rounding may decide either way:
// bf16 products meet one here).
// generate() prefills the prompts sorted by length in groups: 3 and 9 tokens
// alone (the per-token kernel), 18 and 20 together (the tiled kernel, one row
// padded), each group at its own cache rows; decoding runs the per-token
// kernel. With an eos id that one row meets early, rows
// finish at different steps and the cache's rows are compacted
// (keep_generation_rows: device copies).
template <class Cfg>
void generation_case(double tol) {
  const auto p = generation_weights<Cfg>(17);
  Model<Cfg, Cpu> cpu;
  Model<Cfg, Cuda> gpu_model(gpu());
  cpu.upload_parameters(p);
  gpu_model.upload_parameters(p);
  std::vector<std::vector<std::int32_t>> prompts;
  for (const int n : {20, 3, 9, 18}) {
    prompts.emplace_back();
    for (int i = 0; i < n; ++i)
      prompts.back().push_back(std::int32_t(Philox::below(Cfg::vocab, 23, prompts.size(), std::uint64_t(i))));
  }
  GenerationConfig g;
  g.max_new_tokens = 10;
  StepLogits lc, lg;
  const auto first = generate_logged(cpu, prompts, g, lc);
  // An eos id: row 1's fourth new token (rows stop at its first occurrence, the others maybe never).
  REQUIRE(first[1].tokens.size() == 10);
  for (const bool with_eos : {false, true}) {
    CAPTURE(with_eos);
    if (!with_eos) g.eos_ids.clear();
    else g.eos_ids = {first[1].tokens[3]};
    const auto rc = generate_logged(cpu, prompts, g, lc);
    const auto rg = generate_logged(gpu_model, prompts, g, lg);
    REQUIRE(rg.size() == rc.size());
    std::size_t same_rows = 0;
    for (std::size_t r = 0; r < rc.size(); ++r) {
      CAPTURE(r);
      // Step by step while the tokens agree: the logits within tol; where the
      // choices part, the CPU's logits of the two within tol of each other (a
      // near-tie that rounding decides), and the rest of the row is not compared.
      // The token chosen at step s (the eos id where the row stopped there: it is not returned).
      auto choice = [&](const GeneratedRow& row, std::size_t s) {
        if (s < row.tokens.size()) return row.tokens[s];
        return row.stop == GeneratedRow::Stop::eos && s == row.tokens.size() ? g.eos_ids[0] : std::int32_t(-1);
      };
      std::size_t s = 0;
      for (; s < lc[r].size() && s < lg[r].size(); ++s) {
        CAPTURE(s);
        const std::vector<float> want(lc[r][s].begin(), lc[r][s].end()), got(lg[r][s].begin(), lg[r][s].end());
        check_rel_max(got, want, tol, 0.0, "cached logits", [](std::size_t) { return true; });
        const std::int32_t a = choice(rg[r], s), b = choice(rc[r], s);
        REQUIRE(a >= 0);
        REQUIRE(b >= 0);
        if (a != b) {
          double mx = 0;
          for (float x : want) mx = std::max(mx, std::abs(double(x)));
          INFO("the choices part at step " << s << ": GPU " << a << ", CPU " << b);
          CHECK(std::abs(lc[r][s][std::size_t(a)] - lc[r][s][std::size_t(b)]) <= tol * mx);
          break;
        }
      }
      if (s == lc[r].size()) {
        CHECK(rg[r].tokens == rc[r].tokens);
        CHECK(rg[r].stop == rc[r].stop);
        CHECK(lg[r].size() == lc[r].size());
        ++same_rows;
      }
    }
    CHECK(same_rows >= 3);  // a near-tie may part one row, not most
    if (with_eos) CHECK(rc[1].stop == GeneratedRow::Stop::eos);
  }
}

}  // namespace

TEST_CASE("cuda generation: greedy generation with the key/value cache gives the CPU's tokens and logits") {
  REQUIRE_GPU();
  generation_case<Config<neox_small, float>>(1e-4);
  generation_case<Config<gpt2_small, float>>(1e-4);
  // bf16 products: both backends round the same operands to bf16; their sums
  // and the attention's rounding differ.
  generation_case<Config<bf16_matmul(neox_small), float>>(2e-2);
  generation_case<Config<bf16_matmul(gpt2_small), float>>(2e-2);
}
