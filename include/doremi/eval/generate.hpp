#pragma once
// Text generation with a key/value cache: greedy decoding or sampling
// (temperature, top-k, top-p, seeded), stopping at end-of-text ids, stop
// strings or a token budget. Works for Model<Cfg, Cpu> and any backend with
// backend::GenerationBackend (docs/generation.md: the cache, positions of
// prompts of different lengths, the sampling order, what differs from
// transformers).
//
//   doremi::GenerationConfig g;
//   g.max_new_tokens = 32;
//   g.eos_ids = {tokenizer.end_of_text_id()};
//   auto rows = doremi::generate(model, {tokenizer.encode("Hello")}, g, &tokenizer);
//   rows[0].text;   // the continuation
//
// Invariants: a row's result does not depend on the other rows of the call
// (each row keeps its own positions; finished rows leave the batch); greedy
// picks the lowest id among equal maxima (torch.argmax); sampling draws
// token i of row r from Philox(seed, stream r, index i), so a seed repeats
// whatever the batch or thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "doremi/core/error.hpp"
#include "doremi/core/rng.hpp"
#include "doremi/data/tokenizer.hpp"

namespace doremi {

struct GenerationConfig {
  int max_new_tokens = 20;
  bool do_sample = false;   // false: greedy (argmax; the lowest id on ties, as torch.argmax)
  double temperature = 1.0; // > 0 (sampling only)
  int top_k = 0;            // 0: off
  double top_p = 1.0;       // in (0, 1]
  std::uint64_t seed = 0;   // sampling repeats for the same seed
  std::vector<std::int32_t> eos_ids;      // a row stops at the first of these; the id is not returned
  std::vector<std::string> stop_strings;  // needs the tokenizer argument; text is cut before the match
  int prefill_tokens = 8192;  // most tokens (padding included) one prefill call runs: its activation memory

  // Raises doremi::Error naming the bad field.
  void validate() const {
    if (max_new_tokens < 0) fail("generation: max_new_tokens must be >= 0 (got {})", max_new_tokens);
    if (!(temperature > 0) || !std::isfinite(temperature))
      fail("generation: temperature must be a finite number > 0 (got {})", temperature);
    if (top_k < 0) fail("generation: top_k must be >= 0 (0: off; got {})", top_k);
    if (!(top_p > 0 && top_p <= 1)) fail("generation: top_p must lie in (0, 1] (got {})", top_p);
    if (prefill_tokens < 1) fail("generation: prefill_tokens must be >= 1 (got {})", prefill_tokens);
    for (const std::string& s : stop_strings)
      if (s.empty()) fail("generation: a stop string is empty");
  }
};

struct GeneratedRow {
  std::vector<std::int32_t> tokens;  // the new tokens only (without the eos id; with the one completing a stop string)
  std::string text;                  // decoded (only when a tokenizer was passed); cut before a stop string
  enum class Stop { length, eos, stop_string } stop = Stop::length;
};

inline const char* to_string(GeneratedRow::Stop s) {
  switch (s) {
    case GeneratedRow::Stop::length: return "length";
    case GeneratedRow::Stop::eos: return "eos";
    case GeneratedRow::Stop::stop_string: return "stop_string";
  }
  return "?";
}

// The next-token choice from one row of logits, exposed for tests.
namespace sampling {

// The lowest id among the largest logits (torch.argmax).
// NaNs are skipped (0 when logits[0] is NaN). Two passes (the maximum, then
// its first index) that vectorise: a decoding step's argmax reads B × vocab
// logits, a tenth of the step as one comparison chain.
template <class T>
std::int32_t argmax(std::span<const T> logits) {
  if (logits.empty() || logits[0] != logits[0]) return 0;
  T mx = logits[0];
#pragma omp simd reduction(max : mx)
  for (std::size_t i = 1; i < logits.size(); ++i) mx = logits[i] > mx ? logits[i] : mx;
  for (std::size_t i = 0; i < logits.size(); ++i)
    if (logits[i] == mx) return std::int32_t(i);
  return 0;
}

// The distribution sampling draws from, in transformers' order of logits
// warpers: logits / temperature; top-k keeps the logits >= the k-th largest
// (ties at the k-th kept, as TopKLogitsWarper); top-p sorts ascending and
// removes the tokens whose cumulative probability is <= 1 - top_p, always
// keeping the largest (TopPLogitsWarper): the smallest set of the most likely
// tokens with mass >= top_p. Returns softmax over the kept logits (0 for the
// removed), in double.
template <class T>
std::vector<double> probabilities(std::span<const T> logits, const GenerationConfig& g) {
  const std::size_t n = logits.size();
  std::vector<double> z(n);
  for (std::size_t i = 0; i < n; ++i) z[i] = double(logits[i]) / g.temperature;
  const double ninf = -std::numeric_limits<double>::infinity();
  if (g.top_k > 0 && std::size_t(g.top_k) < n) {
    std::vector<double> sorted = z;
    std::nth_element(sorted.begin(), sorted.begin() + (g.top_k - 1), sorted.end(), std::greater<>());
    const double kth = sorted[std::size_t(g.top_k - 1)];
    for (double& v : z)
      if (v < kth) v = ninf;
  }
  auto softmax = [&](std::vector<double>& p) {
    const double mx = *std::max_element(z.begin(), z.end());
    double sum = 0;
    for (std::size_t i = 0; i < n; ++i) sum += p[i] = z[i] == ninf ? 0.0 : std::exp(z[i] - mx);
    for (double& v : p) v /= sum;
  };
  std::vector<double> p(n);
  softmax(p);
  if (g.top_p < 1) {
    std::vector<std::size_t> order(n);
    std::iota(order.begin(), order.end(), std::size_t(0));
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return z[a] < z[b]; });
    double cum = 0;
    for (std::size_t r = 0; r + 1 < n; ++r) {  // the largest (last) is always kept
      cum += p[order[r]];
      if (cum <= 1 - g.top_p) z[order[r]] = ninf;
      else break;
    }
    softmax(p);
  }
  return p;
}

// Token drawn from probabilities p with the uniform u in [0, 1) (inverse CDF
// in id order; never a token of probability 0).
inline std::int32_t draw(std::span<const double> p, double u) {
  double cum = 0;
  std::int32_t last = -1;
  for (std::size_t i = 0; i < p.size(); ++i) {
    if (p[i] <= 0) continue;
    last = std::int32_t(i);
    cum += p[i];
    if (u < cum) return last;
  }
  return last;  // u beyond the rounded total: the last possible token
}

// The next token of prompt `row` at generation step `step` (0 = the first new token).
template <class T>
std::int32_t next_token(std::span<const T> logits, const GenerationConfig& g, std::size_t row, std::size_t step) {
  if (!g.do_sample) return argmax(logits);
  const std::vector<double> p = probabilities(logits, g);
  return draw(p, Philox::uniform(g.seed, row, step));
}

}  // namespace sampling

// Sees the logits (the vocabulary's ids, in double) of each new token before
// it is chosen: prompt index, step (0 = the first new token), logits.
using LogitsObserver = std::function<void(std::size_t prompt, std::size_t step, std::span<const double> logits)>;

// prompts: token ids, any lengths >= 1 (each prompt length + max_new_tokens <=
// the model's context, else doremi::Error naming the prompt). Candidates are
// the ids [0, Cfg::vocab) (the padded embedding rows beyond are never
// chosen). The model's key/value cache is (re)started for the call.
template <class M>
std::vector<GeneratedRow> generate(M& model, const std::vector<std::vector<std::int32_t>>& prompts,
                                   const GenerationConfig& config, const Tokenizer* tokenizer = nullptr,
                                   const LogitsObserver& observe = {}) {
  using Cfg = typename M::config;
  using S = typename M::scalar;
  config.validate();
  if (!config.stop_strings.empty() && !tokenizer)
    fail("generation: stop strings need a tokenizer to decode the generated text");
  for (const std::int32_t e : config.eos_ids)
    if (e < 0 || e >= Cfg::vocab) fail("generation: eos id {} is outside the vocabulary [0, {})", e, Cfg::vocab);
  const std::size_t R = prompts.size();
  int longest = 0;
  for (std::size_t r = 0; r < R; ++r) {
    const auto& p = prompts[r];
    if (p.empty()) fail("generation: prompt {} is empty (give at least one token)", r);
    if (std::size_t(p.size()) + std::size_t(config.max_new_tokens) > std::size_t(Cfg::n_ctx))
      fail("generation: prompt {} has {} tokens; with max_new_tokens {} that is {} > the model's context {}", r,
           p.size(), config.max_new_tokens, p.size() + std::size_t(config.max_new_tokens), Cfg::n_ctx);
    for (std::size_t i = 0; i < p.size(); ++i)
      if (p[i] < 0 || p[i] >= Cfg::vocab)
        fail("generation: prompt {} token {} is {}, outside the vocabulary [0, {})", r, i, p[i], Cfg::vocab);
    longest = std::max(longest, int(p.size()));
  }
  std::vector<GeneratedRow> out(R);
  if (R == 0 || config.max_new_tokens == 0) return out;

  // The cache holds every prompt token and every new token but the last
  // (never fed back); at least the longest prompt (prefill pads to it).
  int capacity = longest;
  for (const auto& p : prompts) capacity = std::max(capacity, int(p.size()) + config.max_new_tokens - 1);
  model.start_generation(int(R), capacity);
  constexpr int V = M::V, vocab = Cfg::vocab;
  std::vector<double> seen;
  auto choose = [&](std::span<const S> logits, std::size_t r, std::size_t step) {
    if (observe) {
      seen.assign(logits.begin(), logits.end());
      observe(r, step, seen);
    }
    return sampling::next_token(logits, config, r, step);
  };

  // Cache row i holds prompt order[i], the prompts sorted by length, so that
  // prompts of similar lengths prefill together: groups of consecutive rows,
  // each group padded to its longest prompt (padding at most an eighth of its
  // real tokens, at most config.prefill_tokens a call), long groups in chunks of
  // positions. A row's padding (its last token again) writes cache positions
  // beyond its prompt, which its own new tokens overwrite before anything
  // reads them. The chunk holding row i's last prompt token keeps its final
  // hidden row; one output product then gives every row's first logits.
  std::vector<int> order(R);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return prompts[std::size_t(a)].size() < prompts[std::size_t(b)].size(); });
  std::vector<std::int32_t> next(R);
  {
    const auto budget = std::size_t(config.prefill_tokens);
    std::vector<std::int32_t> tokens, start, pick;
    for (std::size_t g0 = 0; g0 < R;) {
      std::size_t g1 = g0 + 1, real = prompts[std::size_t(order[g0])].size();
      while (g1 < R) {
        const std::size_t len = prompts[std::size_t(order[g1])].size();
        const std::size_t padded = (g1 + 1 - g0) * len;
        if (8 * padded > 9 * (real + len) || padded > budget) break;
        real += len;
        ++g1;
      }
      const int k = int(g1 - g0), longest_g = int(prompts[std::size_t(order[g1 - 1])].size());
      const int chunk = std::max(1, std::min(longest_g, int(budget) / k));
      start.assign(std::size_t(k), 0);
      pick.assign(std::size_t(k), 0);
      for (int c0 = 0; c0 < longest_g; c0 += chunk) {
        const int Tn = std::min(chunk, longest_g - c0);
        tokens.assign(std::size_t(k) * Tn, 0);
        for (int i = 0; i < k; ++i) {
          const auto& p = prompts[std::size_t(order[g0 + std::size_t(i)])];
          for (int t = 0; t < Tn; ++t)
            tokens[std::size_t(i) * Tn + t] = p[std::min(std::size_t(c0 + t), p.size() - 1)];
          start[std::size_t(i)] = c0;
          const int last = int(p.size()) - 1 - c0;  // the chunk's index of the last prompt token
          pick[std::size_t(i)] = last >= 0 && last < Tn ? last : -1;
        }
        model.prefill_cached(tokens, start, pick, k, Tn, int(g0));
      }
      g0 = g1;
    }
    // Every row's first logits from one output product.
    const std::span<const S> logits = model.generation_logits(int(R));
    for (std::size_t i = 0; i < R; ++i) {
      const auto r = std::size_t(order[i]);
      next[r] = choose(logits.subspan(i * V, vocab), r, 0);
    }
  }

  // Decoding: the active rows at once (active[i]: the prompt in cache row i), each at its own position.
  std::vector<int> active = order;
  std::vector<std::int32_t> tokens, start, pick;
  auto text_of = [&](const GeneratedRow& row) { return tokenizer ? tokenizer->decode(row.tokens) : std::string(); };
  for (int step = 0;; ++step) {
    // Take each active row's new token; note which rows finish.
    std::vector<int> keep_rows, still;
    for (std::size_t i = 0; i < active.size(); ++i) {
      const int r = active[i];
      GeneratedRow& row = out[std::size_t(r)];
      const std::int32_t tok = next[std::size_t(r)];
      bool done = false;
      if (std::find(config.eos_ids.begin(), config.eos_ids.end(), tok) != config.eos_ids.end()) {
        row.stop = GeneratedRow::Stop::eos;
        done = true;
      } else {
        row.tokens.push_back(tok);
        if (!config.stop_strings.empty()) {
          const std::string text = text_of(row);
          std::size_t cut = std::string::npos;
          for (const std::string& s : config.stop_strings) cut = std::min(cut, text.find(s));
          if (cut != std::string::npos) {
            row.stop = GeneratedRow::Stop::stop_string;
            row.text = text.substr(0, cut);
            done = true;
          }
        }
        if (!done && int(row.tokens.size()) == config.max_new_tokens) {
          row.stop = GeneratedRow::Stop::length;
          done = true;
        }
      }
      if (!done) {
        keep_rows.push_back(int(i));
        still.push_back(r);
      }
    }
    if (still.empty()) break;
    if (still.size() != active.size()) model.keep_generation_rows(keep_rows);
    active = std::move(still);
    const std::size_t A = active.size();
    tokens.resize(A);
    start.resize(A);
    pick.assign(A, 0);
    for (std::size_t i = 0; i < A; ++i) {
      const auto r = std::size_t(active[i]);
      tokens[i] = out[r].tokens.back();
      start[i] = std::int32_t(prompts[r].size() + out[r].tokens.size() - 1);
    }
    const std::span<const S> logits = model.forward_cached(tokens, start, pick, int(A), 1);
    for (std::size_t i = 0; i < A; ++i) {
      const auto r = std::size_t(active[i]);
      next[r] = choose(logits.subspan(i * V, vocab), r, out[r].tokens.size());
    }
  }
  if (tokenizer)
    for (GeneratedRow& row : out)
      if (row.stop != GeneratedRow::Stop::stop_string) row.text = text_of(row);
  return out;
}

}  // namespace doremi
