// Text generation (eval/generate.hpp) with the key/value cache of
// Model::forward_cached:
// - the cached logits of every decoding step equal our full forward's
//   (forward_losses of the generated sequence: ℓ = logsumexp − logit for
//   several targets per step), for every kind of Cfg;
// - greedy continuations of prompts of different lengths equal transformers'
//   `generate`, and our cached logits its full-forward logits
//   (tests/python/generate_parity.py);
// - sampling: seeded, top-k = 1 and a tiny temperature are greedy, top-p
//   keeps the smallest set of mass >= p (by hand, and the empirical
//   distribution of many draws);
// - eos ids, stop strings, finished rows not changing the others; errors.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "doremi/core/safetensors.hpp"
#include "doremi/doremi.hpp"
#include "doremi/eval/generate.hpp"
#include "doremi/model/checkpoint.hpp"
#include "python_runner.hpp"
#include "test_util.hpp"

namespace {

using namespace doremi;

constexpr Spec gen_parallel{.name = "gen-parallel", .n_layer = 2, .n_embd = 64, .n_head = 4, .n_ctx = 64,
                            .vocab = 250, .vocab_multiple = 8, .rotary_pct = 0.25, .tied_embeddings = false,
                            .residual = Residual::parallel, .gelu = Gelu::exact};
constexpr Spec gen_sequential{.name = "gen-sequential", .n_layer = 2, .n_embd = 64, .n_head = 4, .n_ctx = 64,
                              .vocab = 250, .vocab_multiple = 8, .rotary_pct = 0.5, .tied_embeddings = true,
                              .residual = Residual::sequential, .gelu = Gelu::tanh};
constexpr Spec gen_learned{.name = "gen-learned", .n_layer = 2, .n_embd = 64, .n_head = 4, .n_ctx = 64,
                           .vocab = 256, .vocab_multiple = 8, .rotary_pct = 0.0, .tied_embeddings = true,
                           .residual = Residual::sequential, .gelu = Gelu::tanh};

// init(seed) with the weights scaled up (logits far from flat, so greedy
// choices are not near-ties) and random LayerNorm parameters.
template <class M>
void random_model(M& m, std::uint64_t seed) {
  using S = typename M::scalar;
  m.init(seed);
  std::vector<S> p(m.host_parameters().begin(), m.host_parameters().end());
  for (const TensorInfo& t : M::tensors())
    for (std::size_t i = 0; i < t.size; ++i) {
      S& v = p[t.offset + i];
      if (t.init == TensorInfo::Init::normal) v *= S(4);
      else v += S(0.1 * Philox::normal(seed + 1, t.offset, i));
    }
  m.upload_parameters(p);
}

std::vector<std::vector<std::int32_t>> random_prompts(const std::vector<int>& lengths, int vocab, std::uint64_t seed) {
  std::vector<std::vector<std::int32_t>> out;
  for (std::size_t r = 0; r < lengths.size(); ++r) {
    out.emplace_back();
    for (int i = 0; i < lengths[r]; ++i) out.back().push_back(std::int32_t(Philox::below(vocab, seed, r, i)));
  }
  return out;
}

// logits[prompt][step]: what the observer saw.
using StepLogits = std::vector<std::vector<std::vector<double>>>;

template <class M>
std::vector<GeneratedRow> generate_logged(M& m, const std::vector<std::vector<std::int32_t>>& prompts,
                                          const GenerationConfig& g, StepLogits& logits) {
  logits.assign(prompts.size(), {});
  return generate(m, prompts, g, nullptr, [&](std::size_t r, std::size_t step, std::span<const double> l) {
    REQUIRE(step == logits[r].size());
    logits[r].emplace_back(l.begin(), l.end());
  });
}

// Each row's prompt + continuation through forward_losses (no cache) with
// three targets per decoding step (the chosen token, the least likely one,
// a fixed other): ℓ must equal logsumexp(cached) − cached[target].
template <class Cfg>
void check_cached_equals_full_forward(double tol) {
  Model<Cfg> m;
  random_model(m, 31);
  const auto prompts = random_prompts({5, 17, 1, 11}, Cfg::vocab, 7);
  GenerationConfig g;
  g.max_new_tokens = 12;
  StepLogits logits;
  const auto rows = generate_logged(m, prompts, g, logits);
  double worst = 0;
  for (std::size_t r = 0; r < prompts.size(); ++r) {
    REQUIRE(rows[r].tokens.size() == 12);
    CHECK(rows[r].stop == GeneratedRow::Stop::length);
    std::vector<std::int32_t> seq = prompts[r];
    seq.insert(seq.end(), rows[r].tokens.begin(), rows[r].tokens.end() - 1);  // the inputs
    const int T = int(seq.size()), len = int(prompts[r].size());
    std::vector<std::int32_t> in, tg;
    for (int k = 0; k < 3; ++k)
      for (int t = 0; t < T; ++t) {
        in.push_back(seq[std::size_t(t)]);
        const int s = t - (len - 1);  // decoding step predicted at t
        if (s < 0) {
          tg.push_back(-1);
          continue;
        }
        const auto& l = logits[r][std::size_t(s)];
        if (k == 0) tg.push_back(rows[r].tokens[std::size_t(s)]);
        else if (k == 1) tg.push_back(std::int32_t(std::min_element(l.begin(), l.end()) - l.begin()));
        else tg.push_back(std::int32_t((7 * s + 3) % Cfg::vocab));
      }
    const auto out = m.forward_losses(in, tg, 3, T);
    for (int k = 0; k < 3; ++k)
      for (int t = len - 1; t < T; ++t) {
        const auto& l = logits[r][std::size_t(t - (len - 1))];
        // The full forward's softmax runs over the padded vocabulary too: the
        // observer sees [0, vocab); the padding rows' logits come from the
        // same product, so compare on the vocabulary's share only when there
        // is no padding, else through the chosen-token loss difference.
        double mx = -1e300;
        for (double v : l) mx = std::max(mx, v);
        double sum = 0;
        for (double v : l) sum += std::exp(v - mx);
        const std::size_t i = std::size_t(k) * T + std::size_t(t);
        const double ours = mx + std::log(sum) - l[std::size_t(tg[i])];
        const double full = double(out.losses[i]);
        if constexpr (Cfg::padded_vocab == Cfg::vocab) {
          worst = std::max(worst, std::abs(ours - full));
        } else {  // the padding rows add the same mass to both: compare differences of targets
          const double full0 = double(out.losses[std::size_t(t)]);
          const double ours0 = mx + std::log(sum) - l[std::size_t(tg[std::size_t(t)])];
          worst = std::max(worst, std::abs((ours - ours0) - (full - full0)));
        }
      }
  }
  INFO("worst |difference| " << worst);
  CHECK(worst <= tol);
}

}  // namespace

TEST_CASE("generate: cached logits equal the full forward's at every step") {
  SUBCASE("parallel residual, rotary, untied, fp32") { check_cached_equals_full_forward<Config<gen_parallel, float>>(1e-5); }
  SUBCASE("sequential residual, rotary, tied, fp32") { check_cached_equals_full_forward<Config<gen_sequential, float>>(1e-5); }
  SUBCASE("learned positions, fp32") { check_cached_equals_full_forward<Config<gen_learned, float>>(1e-5); }
  SUBCASE("fp64") { check_cached_equals_full_forward<Config<gen_parallel, double>>(1e-12); }
  SUBCASE("learned positions, fp64") { check_cached_equals_full_forward<Config<gen_learned, double>>(1e-12); }
  SUBCASE("bf16 products") { check_cached_equals_full_forward<Config<bf16_matmul(gen_parallel), float>>(2e-3); }
}
