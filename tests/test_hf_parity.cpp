// Parity with HuggingFace transformers (a reference no one here wrote): the
// library writes its weights, a batch and its per-token losses and gradients;
// tests/python/gptneox_parity.py loads the checkpoint with
// GPTNeoXForCausalLM.from_pretrained and compares (normwise relative error
// ≤ 1e-5 per tensor in fp32). And the reverse: the library loads a checkpoint
// that transformers saved and reproduces its losses and gradients.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "doremi/core/safetensors.hpp"
#include "doremi/doremi.hpp"
#include "doremi/model/checkpoint.hpp"
#include "python_runner.hpp"
#include "test_util.hpp"

namespace {

using namespace doremi;

constexpr Spec neox_parallel{.name = "parity-parallel", .n_layer = 2, .n_embd = 64, .n_head = 4, .n_ctx = 64,
                             .vocab = 250, .vocab_multiple = 8, .rotary_pct = 0.25, .tied_embeddings = false,
                             .residual = Residual::parallel, .gelu = Gelu::exact};
constexpr Spec neox_sequential{.name = "parity-sequential", .n_layer = 2, .n_embd = 64, .n_head = 4,
                               .n_ctx = 64, .vocab = 250, .vocab_multiple = 8, .rotary_pct = 0.5,
                               .tied_embeddings = true, .residual = Residual::sequential, .gelu = Gelu::tanh};

// Writes model, batch and our outputs into dir, in the format the script reads.
template <class Cfg>
void write_parity_case(const std::filesystem::path& dir) {
  Model<Cfg> m;
  m.init(21);
  // Random LayerNorm weights and biases, so every parameter matters.
  for (const TensorInfo& t : Model<Cfg>::tensors())
    if (t.init != TensorInfo::Init::normal)
      for (std::size_t i = 0; i < t.size; ++i)
        m.parameters()[t.offset + i] += float(0.1 * Philox::normal(22, t.offset, i));
  const int B = 2, T = 32, N = B * T;
  std::vector<std::int32_t> in(N), tg(N);
  std::vector<float> w(N);
  for (int i = 0; i < N; ++i) {
    in[i] = std::int32_t(Philox::below(Cfg::vocab, 23, 0, i));
    tg[i] = i % 9 == 4 ? -1 : std::int32_t(Philox::below(Cfg::vocab, 23, 1, i));
    w[i] = float(0.2 + Philox::uniform(23, 2, i));
  }
  m.zero_grad();
  const auto out = m.forward(in, tg, B, T);
  const std::vector<float> losses(out.losses.begin(), out.losses.end());
  m.backward(w);
  save_model(m, dir);
  SafetensorsWriter batch;
  batch.add("input_ids", std::vector<std::int64_t>{B, T}, std::span<const std::int32_t>(in));
  batch.add("targets", std::vector<std::int64_t>{B, T}, std::span<const std::int32_t>(tg));
  batch.add("weights", std::vector<std::int64_t>{B, T}, std::span<const float>(w));
  batch.write(dir / "batch.safetensors");
  SafetensorsWriter outputs;
  outputs.add("losses", std::vector<std::int64_t>{B, T}, std::span<const float>(losses));
  for (const TensorInfo& t : Model<Cfg>::tensors())
    outputs.add(t.name, t.shape, std::span<const float>(m.gradients().subspan(t.offset, t.size)));
  outputs.write(dir / "outputs.safetensors");
}

template <class Cfg>
void check_against_transformers() {
  if (!test::python_has("torch, transformers")) return;
  test::TempDir dir("parity");
  write_parity_case<Cfg>(dir.path);
  CHECK(test::run_python_script("gptneox_parity.py", dir.path.string() + " --rtol 1e-5 --quiet") == 0);
}

// Loads what transformers saved; our losses and gradients must match its own.
template <class Cfg>
void load_transformers_checkpoint(const std::string& flags) {
  if (!test::python_has("torch, transformers")) return;
  test::TempDir dir("hfsave");
  const std::string args =
      fmt::format("{} {} --layers {} --hidden {} --heads {} --vocab {} --token-vocab {} --ctx {} --rotary-pct {} "
                  "--gelu {} --batch 2 --seq 24",
                  dir.path.string(), flags, Cfg::n_layer, Cfg::n_embd, Cfg::n_head, Cfg::padded_vocab, Cfg::vocab,
                  Cfg::n_ctx, Cfg::spec.rotary_pct, Cfg::gelu == Gelu::exact ? "gelu" : "gelu_new");
  REQUIRE(test::run_python_script("save_hf_checkpoint.py", args) == 0);
  Model<Cfg> m;
  load_model(m, dir.path);
  const SafetensorsFile batch(dir.path / "batch.safetensors"), ref(dir.path / "outputs.safetensors");
  const auto in = batch.read<std::int32_t>("input_ids", {2, 24});
  const auto tg = batch.read<std::int32_t>("targets", {2, 24});
  const auto w = batch.read<float>("weights", {2, 24});
  m.zero_grad();
  const auto out = m.forward(in, tg, 2, 24);
  m.backward(w);
  const auto ref_losses = ref.read<float>("losses", {2, 24});
  CHECK(test::relative_distance(out.losses, ref_losses) < 1e-5);
  for (const TensorInfo& t : Model<Cfg>::tensors()) {
    const auto g = ref.read<float>(t.name, t.shape);
    INFO(t.name);
    CHECK(test::relative_distance(m.gradients().subspan(t.offset, t.size), g) < 1e-5);
  }
}

}  // namespace

TEST_CASE("hf parity: transformers loads our parallel-residual checkpoint and agrees on losses and gradients") {
  check_against_transformers<Config<neox_parallel, float>>();
}
TEST_CASE("hf parity: transformers agrees on a sequential-residual, tied, tanh-GELU model") {
  check_against_transformers<Config<neox_sequential, float>>();
}
TEST_CASE("hf parity: we load a checkpoint transformers saved (parallel, untied)") {
  load_transformers_checkpoint<Config<neox_parallel, float>>("--parallel --untied");
}
TEST_CASE("hf parity: we load a checkpoint transformers saved (sequential, tied)") {
  load_transformers_checkpoint<Config<neox_sequential, float>>("--sequential --tied");
}
