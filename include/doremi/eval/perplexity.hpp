#pragma once
// Per-domain held-out log-perplexity (docs/algorithm.md, "Evaluation"): for each
// domain, the summed token cross-entropy over its validation sequences divided
// by its number of target tokens; plus the uniform average over domains and
// the worst case. Sequences are read in order, each cut into consecutive
// windows of T inputs whose targets are the next tokens (every token but a
// sequence's first is predicted exactly once), batched B windows at a time.
//
//   auto r = doremi::evaluate_perplexity(model, names, sources, /*T=*/128, /*B=*/8);
//   fmt::print("{}\n", r.to_json().dump(2));
//
// Data-parallel (dist::world() with W ranks): each domain's evaluated
// sequences (the same set as one process evaluates, max_tokens_per_domain
// included: its cut is found from the sequences' lengths) are split into W
// contiguous blocks, one per rank, and the loss sums and token counts are
// summed across ranks: every rank returns the same report, equal to one
// process's up to the order of the float sums.
#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "doremi/core/error.hpp"
#include "doremi/core/progress.hpp"
#include "doremi/data/source.hpp"
#include "doremi/dist/world.hpp"

namespace doremi {

struct PerplexityReport {
  std::vector<std::string> domains;
  std::vector<double> log_perplexity;  // nats per target token, per domain
  std::vector<std::uint64_t> tokens;   // target tokens per domain
  double average = 0;                  // uniform mean over domains
  double worst = 0;                    // maximum over domains
  std::string worst_domain;

  nlohmann::json to_json() const {
    nlohmann::json per = nlohmann::json::object(), tok = nlohmann::json::object();
    for (std::size_t i = 0; i < domains.size(); ++i) {
      per[domains[i]] = log_perplexity[i];
      tok[domains[i]] = tokens[i];
    }
    return {{"log_perplexity", per}, {"average", average}, {"worst", worst}, {"worst_domain", worst_domain},
            {"target_tokens", tok}};
  }
};

namespace detail {
// The sequences [0, end) one process evaluates under a token budget: it stops
// before a sequence once the batches of B windows of T run so far hold the
// budget. Several ranks split [0, end) and so evaluate what one process would.
template <TokenSource Source>
std::size_t budget_end(const Source& src, int T, int B, std::uint64_t max_tokens) {
  std::uint64_t run = 0, pending = 0;
  int filled = 0;
  for (std::size_t i = 0; i < src.size(); ++i) {
    if (run >= max_tokens) return i;
    const std::size_t L = src.length(i);
    for (std::size_t start = 0; start + 1 < L; start += std::size_t(T)) {
      pending += std::min<std::size_t>(std::size_t(T), L - 1 - start);
      if (++filled == B) run += std::exchange(pending, 0), filled = 0;
    }
  }
  return src.size();
}
}  // namespace detail

// max_tokens_per_domain > 0 stops a domain after about that many target
// tokens (whole windows), for quick evaluations of large validation sets.
template <class M, TokenSource Source>
PerplexityReport evaluate_perplexity(M& model, const std::vector<std::string>& names,
                                     const std::vector<Source>& sources, int T, int B,
                                     std::uint64_t max_tokens_per_domain = 0, bool progress = false) {
  if (names.size() != sources.size())
    fail("evaluate_perplexity: {} domain names for {} sources", names.size(), sources.size());
  if (T <= 0 || T > M::config::n_ctx || B <= 0)
    fail("evaluate_perplexity: windows of {} tokens in batches of {} (need 0 < T <= {} and B > 0)", T, B,
         M::config::n_ctx);
  PerplexityReport r;
  r.domains = names;
  const dist::Comm& comm = dist::world();
  std::vector<std::int32_t> inputs(std::size_t(B) * T), targets(std::size_t(B) * T), seq;
  ProgressBar bar("eval", long(names.size()), 1);
  std::vector<double> sums(2 * names.size(), 0.0);  // per domain: loss sum, target tokens
  for (std::size_t d = 0; d < names.size(); ++d) {
    const Source& src = sources[d];
    double sum = 0;
    std::uint64_t count = 0;
    int rows = 0;
    const std::size_t end =
        max_tokens_per_domain && comm.size() > 1 ? detail::budget_end(src, T, B, max_tokens_per_domain) : src.size();
    const std::size_t W = std::size_t(comm.size()), rk = std::size_t(comm.rank());
    const std::size_t lo = end * rk / W, hi = end * (rk + 1) / W;
    auto flush = [&] {
      if (rows == 0) return;
      std::fill(inputs.begin() + std::ptrdiff_t(rows) * T, inputs.end(), 0);
      std::fill(targets.begin() + std::ptrdiff_t(rows) * T, targets.end(), -1);
      const auto out = model.forward_losses(inputs, targets, B, T);
      sum += out.loss_sum;
      count += out.tokens;
      rows = 0;
    };
    for (std::size_t i = lo; i < hi; ++i) {
      if (comm.size() == 1 && max_tokens_per_domain && count >= max_tokens_per_domain) break;
      seq.resize(src.length(i));
      src.read(i, 0, seq);
      for (std::size_t start = 0; start + 1 < seq.size(); start += std::size_t(T)) {
        std::int32_t* in = inputs.data() + std::size_t(rows) * T;
        std::int32_t* tg = targets.data() + std::size_t(rows) * T;
        for (int t = 0; t < T; ++t) {
          const std::size_t p = start + std::size_t(t);
          in[t] = p < seq.size() ? seq[p] : 0;
          tg[t] = p + 1 < seq.size() ? seq[p + 1] : -1;
        }
        if (++rows == B) flush();
      }
    }
    flush();
    sums[2 * d] = sum;
    sums[2 * d + 1] = double(count);
    if (progress && comm.is_root()) bar.update(long(d + 1), names[d]);
  }
  comm.all_reduce_sum(std::span<double>(sums));
  for (std::size_t d = 0; d < names.size(); ++d) {
    const auto count = std::uint64_t(sums[2 * d + 1]);
    if (count == 0)
      fail("evaluate_perplexity: domain '{}' ({}) has no target tokens", names[d], sources[d].describe());
    r.log_perplexity.push_back(sums[2 * d] / double(count));
    r.tokens.push_back(count);
  }
  double total = 0;
  std::size_t worst = 0;
  for (std::size_t d = 0; d < names.size(); ++d) {
    total += r.log_perplexity[d];
    if (r.log_perplexity[d] > r.log_perplexity[worst]) worst = d;
  }
  r.average = total / double(names.size());
  r.worst = r.log_perplexity[worst];
  r.worst_domain = names[worst];
  return r;
}

}  // namespace doremi
