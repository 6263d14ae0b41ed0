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
#include "generate_log.hpp"
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

using test::StepLogits;
using test::generate_logged;

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

namespace {

// Our greedy continuations and cached logits of prompts of different
// lengths, beside the checkpoint, for generate_parity.py.
template <class Cfg>
void write_generate_case(const std::filesystem::path& dir, double atol) {
  Model<Cfg> m;
  random_model(m, 41);
  const std::vector<int> lengths{7, 19, 1, 12};
  const auto prompts = random_prompts(lengths, Cfg::vocab, 43);
  GenerationConfig g;
  g.max_new_tokens = 16;
  StepLogits logits;
  const auto rows = generate_logged(m, prompts, g, logits);
  save_model(m, dir);
  std::vector<std::int32_t> ids, tokens;
  std::vector<double> flat;
  for (std::size_t r = 0; r < prompts.size(); ++r) {
    ids.insert(ids.end(), prompts[r].begin(), prompts[r].end());
    REQUIRE(rows[r].tokens.size() == 16);
    tokens.insert(tokens.end(), rows[r].tokens.begin(), rows[r].tokens.end());
    for (const auto& l : logits[r]) flat.insert(flat.end(), l.begin(), l.end());
  }
  const auto R = std::int64_t(prompts.size());
  SafetensorsWriter p;
  p.add("ids", {std::int64_t(ids.size())}, ids);
  p.add("lengths", {R}, lengths);
  p.write(dir / "prompts.safetensors");
  SafetensorsWriter o;
  o.add("tokens", {R, 16}, tokens);
  o.add("logits", {R, 16, Cfg::vocab}, flat);
  o.write(dir / "ours.safetensors");
  write_file_atomic(dir / "case.json",
                    nlohmann::json{{"float64", std::is_same_v<typename Cfg::scalar, double>}, {"atol", atol}}.dump());
}

}  // namespace

// Tolerances (max |logit difference|): fp32 1e-5 (seen: 1.2e-6); fp64 1e-7 (seen:
// 2e-8): transformers 4.47 computes the rotary cos/sin tables in float32 even
// for a float64 model, ours are rounded from double.
TEST_CASE("generate: greedy continuations and cached logits equal transformers' (both residual layouts, tied and "
          "untied, fp32 and fp64)") {
  if (!test::python_has("torch, transformers")) return;
  test::TempDir dir("genparity");
  write_generate_case<Config<gen_parallel, float>>(dir.path / "parallel32", 1e-5);
  write_generate_case<Config<gen_sequential, float>>(dir.path / "sequential32", 1e-5);
  write_generate_case<Config<gen_parallel, double>>(dir.path / "parallel64", 1e-7);
  write_generate_case<Config<gen_sequential, double>>(dir.path / "sequential64", 1e-7);
  std::string args;
  for (const char* c : {"parallel32", "sequential32", "parallel64", "sequential64"}) args += (dir.path / c).string() + " ";
  CHECK(test::run_python_script("generate_parity.py", args) == 0);
}

namespace {

using SmallModel = Model<Config<gen_parallel, double>>;

std::vector<std::vector<std::int32_t>> sample_prompts() { return random_prompts({3, 9, 5}, gen_parallel.vocab, 51); }

// A model whose logits are flat enough that sampling varies.
SmallModel& sampling_model() {
  static SmallModel m = [] {
    SmallModel s;
    s.init(61);
    return s;
  }();
  return m;
}

}  // namespace

TEST_CASE("generate: sampling repeats for a seed, differs across seeds; top-k 1 and a tiny temperature are greedy") {
  SmallModel& m = sampling_model();
  const auto prompts = sample_prompts();
  GenerationConfig greedy;
  greedy.max_new_tokens = 10;
  GenerationConfig s = greedy;
  s.do_sample = true;
  s.seed = 5;
  const auto a = generate(m, prompts, s), b = generate(m, prompts, s);
  s.seed = 6;
  const auto c = generate(m, prompts, s);
  const auto g = generate(m, prompts, greedy);
  bool differ = false, differ_from_greedy = false;
  for (std::size_t r = 0; r < prompts.size(); ++r) {
    CHECK(a[r].tokens == b[r].tokens);
    differ |= a[r].tokens != c[r].tokens;
    differ_from_greedy |= a[r].tokens != g[r].tokens;
  }
  CHECK(differ);
  CHECK(differ_from_greedy);
  // A row's draws do not depend on the other rows (prompt r draws from stream r): without prompt 2, prompt 1
  // draws what it drew beside it.
  s.seed = 5;
  CHECK(generate(m, {prompts[0], prompts[1]}, s)[1].tokens == a[1].tokens);
  GenerationConfig k1 = s;
  k1.top_k = 1;
  GenerationConfig cold = s;
  cold.temperature = 1e-9;
  GenerationConfig p_small = s;
  p_small.top_p = 1e-9;  // keeps only the most likely token
  const auto rk = generate(m, prompts, k1), rc = generate(m, prompts, cold), rp = generate(m, prompts, p_small);
  for (std::size_t r = 0; r < prompts.size(); ++r) {
    CHECK(rk[r].tokens == g[r].tokens);
    CHECK(rc[r].tokens == g[r].tokens);
    CHECK(rp[r].tokens == g[r].tokens);
  }
}

TEST_CASE("generate: temperature, top-k and top-p filter as transformers' warpers (by hand and by many draws)") {
  const std::vector<double> logits{1, 2, 3, 4, 0.5};
  const std::vector<double> e{std::exp(1.0), std::exp(2.0), std::exp(3.0), std::exp(4.0), std::exp(0.5)};
  const double total = e[0] + e[1] + e[2] + e[3] + e[4];
  GenerationConfig g;
  auto probs = [&](const GenerationConfig& c) { return sampling::probabilities(std::span<const double>(logits), c); };
  // Plain softmax.
  auto p = probs(g);
  for (int i = 0; i < 5; ++i) CHECK(p[std::size_t(i)] == doctest::Approx(e[std::size_t(i)] / total).epsilon(1e-12));
  // Masses: 4: 0.6337, 3: 0.2331, 2: 0.0858, 1: 0.0315, 0.5: 0.0191. top_p 0.8 keeps {4, 3} (0.867 >= 0.8),
  // 0.9 keeps {4, 3, 2} (0.953), 0.5 keeps {4}.
  g.top_p = 0.8;
  p = probs(g);
  CHECK(p[3] == doctest::Approx(e[3] / (e[3] + e[2])).epsilon(1e-12));
  CHECK(p[2] == doctest::Approx(e[2] / (e[3] + e[2])).epsilon(1e-12));
  CHECK(p[0] == 0);
  CHECK(p[1] == 0);
  CHECK(p[4] == 0);
  g.top_p = 0.9;
  p = probs(g);
  CHECK(p[1] == doctest::Approx(e[1] / (e[3] + e[2] + e[1])).epsilon(1e-12));
  CHECK(p[0] == 0);
  g.top_p = 0.5;
  p = probs(g);
  CHECK(p[3] == 1.0);
  // top-k before top-p, after the temperature: T = 2, k = 3 keeps {4, 3, 2}; then top-p 0.7 on
  // softmax({2, 1.5, 1}) = {0.506, 0.307, 0.186}: keeps {4, 3} (0.813 >= 0.7).
  g = {};
  g.temperature = 2;
  g.top_k = 3;
  p = probs(g);
  const double t4 = std::exp(2.0), t3 = std::exp(1.5), t2 = std::exp(1.0);
  CHECK(p[1] == doctest::Approx(t2 / (t4 + t3 + t2)).epsilon(1e-12));
  CHECK(p[0] == 0);
  CHECK(p[4] == 0);
  g.top_p = 0.7;
  p = probs(g);
  CHECK(p[3] == doctest::Approx(t4 / (t4 + t3)).epsilon(1e-12));
  CHECK(p[1] == 0);
  // Ties at the k-th value are kept (TopKLogitsWarper compares with the k-th largest).
  const std::vector<double> tied{1, 3, 3, 2};
  g = {};
  g.top_k = 1;
  p = sampling::probabilities(std::span<const double>(tied), g);
  CHECK(p[1] == doctest::Approx(0.5));
  CHECK(p[2] == doctest::Approx(0.5));
  // Many draws through next_token follow the filtered distribution within 4.5 standard errors.
  g = {};
  g.do_sample = true;
  g.top_p = 0.9;
  g.seed = 3;
  p = probs(g);
  const int draws = 20000;
  std::vector<int> count(5, 0);
  for (int i = 0; i < draws; ++i) ++count[std::size_t(sampling::next_token(std::span<const double>(logits), g, 0, std::size_t(i)))];
  for (std::size_t i = 0; i < 5; ++i) {
    const double se = std::sqrt(p[i] * (1 - p[i]) / draws);
    INFO("token " << i << ": " << count[i] << " draws, p " << p[i]);
    if (p[i] == 0) CHECK(count[i] == 0);
    else CHECK(std::abs(count[i] / double(draws) - p[i]) <= 4.5 * se);
  }
  // Greedy: the lowest id among equal maxima.
  CHECK(sampling::argmax(std::span<const double>(tied)) == 1);
}

TEST_CASE("generate: eos ids and stop strings end a row without changing the others") {
  SmallModel& m = sampling_model();
  const auto prompts = sample_prompts();
  const Tokenizer bytes;  // ids 0-255 decode to bytes (the model's ids 250-255 are never chosen: vocab 250)
  GenerationConfig g;
  g.max_new_tokens = 12;
  const auto free = generate(m, prompts, g, &bytes);
  for (const auto& row : free) {
    CHECK(row.stop == GeneratedRow::Stop::length);
    CHECK(row.text == bytes.decode(row.tokens));
  }
  // Row 1's fourth token as the eos id: row 1 stops before it, the others at its first occurrence or run on.
  const std::int32_t eos = free[1].tokens[3];
  g.eos_ids = {eos};
  const auto stopped = generate(m, prompts, g, &bytes);
  for (std::size_t r = 0; r < prompts.size(); ++r) {
    const auto& t = free[r].tokens;
    const auto at = std::find(t.begin(), t.end(), eos) - t.begin();
    INFO("prompt " << r);
    CHECK(stopped[r].tokens == std::vector<std::int32_t>(t.begin(), t.begin() + at));
    CHECK(stopped[r].stop == (at < std::ptrdiff_t(t.size()) ? GeneratedRow::Stop::eos : GeneratedRow::Stop::length));
  }
  CHECK(stopped[1].tokens.size() <= 3);
  // A stop string taken from row 0's text: the text is cut before its first match, the tokens end with the
  // token that completed it, and the other rows are as before (unless the string appears in them too).
  g.eos_ids.clear();
  const std::string text0 = free[0].text;
  REQUIRE(text0.size() >= 6);
  const std::string stop = text0.substr(4, 2);
  g.stop_strings = {"\x01\x02\x03 never", stop};
  const auto cut = generate(m, prompts, g, &bytes);
  for (std::size_t r = 0; r < prompts.size(); ++r) {
    INFO("prompt " << r);
    const std::size_t found = free[r].text.find(stop);
    if (found == std::string::npos) {
      CHECK(cut[r].tokens == free[r].tokens);
      CHECK(cut[r].stop == GeneratedRow::Stop::length);
      continue;
    }
    CHECK(cut[r].stop == GeneratedRow::Stop::stop_string);
    CHECK(cut[r].text == free[r].text.substr(0, found));
    // Byte tokens: the match completes at byte found + 2 (the tokens decode one byte each, or none for 250+).
    CHECK(bytes.decode(cut[r].tokens).size() == found + stop.size());
    CHECK(std::equal(cut[r].tokens.begin(), cut[r].tokens.end(), free[r].tokens.begin()));
  }
  CHECK(cut[0].stop == GeneratedRow::Stop::stop_string);
}

TEST_CASE("generate: prefill in groups and chunks of positions gives the same continuations and logits") {
  SmallModel& m = sampling_model();
  // 45 tokens: a prefill of two causal blocks of queries (32 + 13), against one token a call.
  const auto prompts = random_prompts({3, 17, 1, 9, 9, 30, 45}, gen_parallel.vocab, 71);
  GenerationConfig g;
  g.max_new_tokens = 8;
  StepLogits whole, parts;
  const auto a = generate_logged(m, prompts, g, whole);
  for (int budget : {40, 7, 1}) {  // groups of a few rows; single rows in chunks of 7 positions; one token a call
    g.prefill_tokens = budget;
    const auto b = generate_logged(m, prompts, g, parts);
    for (std::size_t r = 0; r < prompts.size(); ++r) {
      INFO("budget " << budget << ", prompt " << r);
      CHECK(b[r].tokens == a[r].tokens);
      double worst = 0;
      for (std::size_t s = 0; s < whole[r].size(); ++s)
        for (std::size_t v = 0; v < whole[r][s].size(); ++v)
          worst = std::max(worst, std::abs(whole[r][s][v] - parts[r][s][v]));
      CHECK(worst < 1e-12);
    }
  }
}

TEST_CASE("generate: bad prompts and settings are errors naming what is wrong") {
  SmallModel& m = sampling_model();
  GenerationConfig g;
  using test::error_of;
  auto has = [](const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; };
  CHECK(has(error_of([&] { generate(m, {{1, 2}, {}}, g); }), "prompt 1 is empty"));
  {  // the model's generation calls: -1 (no pick) is for prefill_cached only; logits need kept rows
    SmallModel fresh;
    CHECK(has(error_of([&] { fresh.generation_logits(1); }), "generation_logits: 1 rows"));
    fresh.start_generation(2, 8);
    const std::vector<std::int32_t> tok{1, 2}, start{0, 0}, pick{-1, 0};
    CHECK(has(error_of([&] { fresh.forward_cached(tok, start, pick, 2, 1); }), "row 0 picks token -1 of 1"));
    fresh.prefill_cached(tok, start, pick, 2, 1);
    CHECK(fresh.generation_logits(2).size() == 2 * std::size_t(SmallModel::V));
  }
  CHECK(has(error_of([&] { generate(m, {{1, 2, 250}}, g); }), "prompt 0 token 2 is 250"));
  CHECK(has(error_of([&] { generate(m, {{1, -1}}, g); }), "prompt 0 token 1 is -1"));
  g.max_new_tokens = 60;
  CHECK(has(error_of([&] { generate(m, {{1}, {1, 2, 3, 4, 5}}, g); }),
            "prompt 1 has 5 tokens; with max_new_tokens 60 that is 65 > the model's context 64"));
  g = {};
  for (double t : {0.0, -1.0, std::nan("")}) {
    g.temperature = t;
    CHECK(has(error_of([&] { generate(m, {{1}}, g); }), "temperature"));
  }
  g = {};
  for (double p : {0.0, 1.5, -0.1}) {
    g.top_p = p;
    CHECK(has(error_of([&] { generate(m, {{1}}, g); }), "top_p must lie in (0, 1]"));
  }
  g = {};
  g.top_k = -1;
  CHECK(has(error_of([&] { generate(m, {{1}}, g); }), "top_k"));
  g = {};
  g.max_new_tokens = -1;
  CHECK(has(error_of([&] { generate(m, {{1}}, g); }), "max_new_tokens"));
  g = {};
  g.prefill_tokens = 0;
  CHECK(has(error_of([&] { generate(m, {{1}}, g); }), "prefill_tokens"));
  g = {};
  g.stop_strings = {"x"};
  CHECK(has(error_of([&] { generate(m, {{1}}, g); }), "stop strings need a tokenizer"));
  g = {};
  g.eos_ids = {250};
  CHECK(has(error_of([&] { generate(m, {{1}}, g); }), "eos id 250"));
  // max_new_tokens 0: nothing generated, nothing run.
  g = {};
  g.max_new_tokens = 0;
  const auto none = generate(m, {{1, 2}}, g);
  REQUIRE(none.size() == 1);
  CHECK(none[0].tokens.empty());
}
