#pragma once
// DROTrainer<Model, Sampler, Reference>: the DoReMi proxy
// (docs/algorithm.md, "The domain-weight update"). Each optimisation step:
//   1. draws the step's micro-batches (the sampler uses the sampling weights);
//   2. runs the frozen reference and the proxy on the same tokens;
//   3–6. turns the clipped per-token excess losses of *all* micro-batches into
//      per-domain scores and updates α and ᾱ once (DomainWeights);
//   7. weights every micro-batch's token losses with that same updated α,
//      importance-corrected by the sampling weights, normalised by the step's
//      total weight, and takes the AdamW step (via TrainerBase).
//
// Exact accumulation (docs/algorithm.md, "Improvements over the public
// implementation"): one update uses the scores of all micro-batches and every
// token's loss is weighted with that same updated α, so k micro-batches give
// the same α trajectory and parameters as one batch k times larger (up to
// float rounding), without a second forward. The step's sequences run in
// passes of one domain (at most a micro-batch each) with unit weights; each
// domain's gradient gᵢ joins A = Σ gᵢ/sᵢ and B = Σ exp(ℓᵢ − m)·gᵢ/sᵢ (ℓᵢ its
// logit, m the largest so far), from which the weighted gradient follows once
// α is known.
//
// Data-parallel (W ranks, see trainer.hpp): each rank scores and backpropagates
// its share of the step's sequences; the per-domain totals are summed across
// ranks before they are used (docs/distributed.md), so λ, α and ᾱ are computed
// from the whole global batch, identically on every rank; the combined
// gradient is summed once by TrainerBase.
//
//   doremi::DROTrainer dro(proxy, reference, sampler, train_config, domain_weights);
//   dro.run();
//   dro.write_domain_weights("out");   // avg_domain_weights.json + domain_config.json
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "doremi/backend/elementwise.hpp"
#include "doremi/core/atomic_file.hpp"
#include "doremi/core/error.hpp"
#include "doremi/data/domain_config.hpp"
#include "doremi/train/domain_weights.hpp"
#include "doremi/train/trainer.hpp"

namespace doremi {

// A step's per-domain totals: excess loss, target tokens, proxy and reference loss sums.
struct DomainTotals {
  std::vector<double> excess, tokens, loss, reference;
  explicit DomainTotals(std::size_t k) : excess(k, 0.0), tokens(k, 0.0), loss(k, 0.0), reference(k, 0.0) {}
  // Adds a batch's per-sequence totals (row_loss_sums) to their sequences' domains.
  void add(std::span<const backend::RowLossSums> rows, std::span<const std::int32_t> domain) {
    for (std::size_t r = 0; r < rows.size(); ++r) {
      const auto d = std::size_t(domain[r]);
      excess[d] += rows[r].excess;
      tokens[d] += rows[r].tokens;
      loss[d] += rows[r].loss;
      reference[d] += rows[r].reference;
    }
  }
};

template <class M, class S, class Ref = M>
class DROTrainer : public TrainerBase<DROTrainer<M, S, Ref>, M, S> {
 public:
  using Base = TrainerBase<DROTrainer<M, S, Ref>, M, S>;
  using scalar = typename M::scalar;
  static constexpr const char* label = "dro";

  DROTrainer(M& proxy, Ref& reference, S& sampler, TrainConfig config, DomainWeights weights)
      : Base(proxy, sampler, std::move(config)), ref_(reference), dw_(std::move(weights)) {}

  // λ₀ for a model: ln of its (padded) vocabulary, the loss of a uniform predictor.
  static double initial_score() { return std::log(double(M::config::padded_vocab)); }

  const DomainWeights& domain_weights() const { return dw_; }

  void accumulate_gradients(const std::vector<Batch>& micro, std::size_t tokens, StepStats& s) {
    const std::size_t k = dw_.names().size();
    for (const Batch& b : micro) check_domains(b, k);
    DomainTotals totals(k);
    const std::vector<Batch> local = this->local_share(micro);  // `micro` is the global batch
    const double u = micro.size() == 1 ? one_batch(local, totals) : by_domain(micro, local, tokens, totals);
    // L = Σ w[d]·ℓ / Σ w[d] over all the step's tokens (the loss the gradient is of).
    double weighted = 0, psum = 0, rsum = 0;
    std::vector<double> proxy_mean(k, 0.0), ref_mean(k, 0.0);
    for (std::size_t i = 0; i < k; ++i) {
      weighted += loss_weight(i) * totals.loss[i];
      psum += totals.loss[i];
      rsum += totals.reference[i];
      if (totals.tokens[i] > 0) {
        proxy_mean[i] = totals.loss[i] / totals.tokens[i];
        ref_mean[i] = totals.reference[i] / totals.tokens[i];
      }
    }
    s.loss = weighted / u;
    s.extra = {{"mean_loss", psum / double(tokens)},     {"reference_loss", rsum / double(tokens)},
               {"domains", dw_.names()},                {"scores", dw_.scores()},
               {"alpha", dw_.alpha()},                  {"avg_alpha", dw_.average()},
               {"domain_tokens", totals.tokens},        {"domain_loss", proxy_mean},
               {"domain_reference_loss", ref_mean}};
  }

  nlohmann::json extra_state() const { return {{"domain_weights", dw_.state()}}; }
  void restore_extra_state(const nlohmann::json& j) {
    if (!j.contains("domain_weights")) fail("DROTrainer: the checkpoint holds no DRO state (domain_weights)");
    dw_.restore(j.at("domain_weights"));
  }

  // The proxy's output: ᾱ as `avg_domain_weights.json` ({domain: weight}) and
  // as a domain config (train_domain_weights = ᾱ; eval_domain_weights as
  // given, e.g. the reference weights) usable as the next stage's input.
  // With several ranks, rank 0 writes (ᾱ is the same on all).
  void write_domain_weights(const std::filesystem::path& dir, const std::vector<double>& eval_weights = {}) const {
    if (!this->comm_.is_root()) return;
    std::filesystem::create_directories(dir);
    const DomainMixture avg{dw_.names(), dw_.average()};
    doremi::write_domain_weights(dir / "avg_domain_weights.json", avg);
    write_domain_config(dir / "domain_config.json",
                        DomainConfig{avg, eval_weights.empty() ? avg : DomainMixture{dw_.names(), eval_weights}});
  }

 private:
  static void check_domains(const Batch& b, std::size_t k) {
    if (b.domain.size() != std::size_t(b.B))
      fail("DRO: a batch of {} sequences carries {} domain ids", b.B, b.domain.size());
    for (auto d : b.domain)
      if (d < 0 || std::size_t(d) >= k) fail("DRO: batch domain id {} outside [0, {})", d, k);
  }

  // Steps 2–4 for one batch: the reference's and the proxy's losses (the
  // proxy keeps its activations for a backward), totalled per sequence where
  // the losses are (on a GPU: B totals reach the host, not B·T losses).
  void score(const Batch& b, DomainTotals& totals) {
    const auto ref = ref_.forward_losses(b.inputs, b.targets, b.B, b.T);  // no backward: one layer of activations
    const auto out = this->model_.forward(b.inputs, b.targets, b.B, b.T);
    totals.add(row_loss_sums(this->model_.backend(), out.losses.data(), out.mask.data(), b.B, b.T, ref.losses.data()),
               b.domain);
  }

  // Domain i's loss weight αᵢ/sᵢ with the updated α, up to the factor
  // common to all domains (0 where s is 0; DomainWeights::loss_weights
  // divides by Σⱼ αⱼ/sⱼ).
  double loss_weight(std::size_t i) const {
    const double s = dw_.sampling()[i];
    return s > 0 ? dw_.alpha()[i] / s : 0.0;
  }

  // The step loss's normaliser Σᵢ (αᵢ/sᵢ)·nᵢ.
  double weight_normaliser(const DomainTotals& totals) const {
    double u = 0;
    for (std::size_t i = 0; i < totals.tokens.size(); ++i) u += loss_weight(i) * totals.tokens[i];
    if (!(u > 0))
      fail("DRO step {}: every token of the step belongs to a domain with loss weight 0", this->step_ + 1);
    return u;
  }

  // Sums the totals of all ranks (in place).
  void reduce_totals(DomainTotals& t, bool excess_tokens, bool losses) const {
    if (this->comm_.size() == 1) return;
    const std::size_t k = t.excess.size();
    std::vector<std::vector<double>*> parts;
    if (excess_tokens) parts.insert(parts.end(), {&t.excess, &t.tokens});
    if (losses) parts.insert(parts.end(), {&t.loss, &t.reference});
    std::vector<double> buf;
    for (const auto* v : parts) buf.insert(buf.end(), v->begin(), v->end());
    this->comm_.all_reduce_sum(std::span<double>(buf));
    for (std::size_t p = 0; p < parts.size(); ++p)
      std::copy_n(buf.begin() + std::ptrdiff_t(p * k), k, parts[p]->begin());
  }

  // One micro-batch (this rank's share `local`: one batch or none): score,
  // update, backward with the updated weights. Returns the step loss's normaliser.
  double one_batch(const std::vector<Batch>& local, DomainTotals& totals) {
    if (!local.empty()) score(local.front(), totals);
    reduce_totals(totals, true, true);
    dw_.update(totals.excess, totals.tokens);
    const double u = weight_normaliser(totals);
    if (local.empty()) return u;
    const Batch& b = local.front();
    // A sequence's tokens share its domain's weight (padding's is ignored).
    token_w_.resize(b.inputs.size());
    for (int r = 0; r < b.B; ++r)
      std::fill_n(token_w_.begin() + std::ptrdiff_t(r) * b.T, b.T,
                  scalar(loss_weight(std::size_t(b.domain[std::size_t(r)])) / u));
    this->model_.backward(token_w_);
    return u;
  }

  // Several micro-batches: passes of one domain each, gradients folded per
  // domain into A and B (see the comment at the top), combined after the
  // update. Returns the step loss's normaliser.
  double by_domain(const std::vector<Batch>& micro, const std::vector<Batch>& local, std::size_t tokens,
                   DomainTotals& totals) {
    auto& be = this->model_.backend();
    const std::size_t n = this->model_.num_parameters();
    scalar* g = this->model_.gradients().data();
    const double c = dw_.config().smoothing;
    const auto& s = dw_.sampling();
    sum_a_.resize(c > 0 ? n : 0);
    sum_b_.resize(n);
    fill(be, sum_a_.data(), scalar(0), sum_a_.size());
    fill(be, sum_b_.data(), scalar(0), n);
    double m = -INFINITY;  // B's scale: its terms are exp(ℓᵢ − m)·gᵢ/sᵢ
    const std::vector<std::vector<Batch>> passes =
        local.empty() ? std::vector<std::vector<Batch>>(s.size()) : passes_by_domain(local, s.size());
    std::vector<char> present(s.size(), 0);  // domains in the global batch (the same on every rank)
    for (const Batch& b : micro)
      for (auto d : b.domain) present[std::size_t(d)] = 1;
    for (std::size_t i = 0; i < passes.size(); ++i) {
      if (!present[i]) continue;
      for (const Batch& b : passes[i]) {
        score(b, totals);
        token_w_.assign(b.inputs.size(), scalar(1.0 / double(tokens)));  // gᵢ/tokens: the usual magnitudes
        this->model_.backward(token_w_);
      }
      if (this->comm_.size() > 1) {  // domain i's excess and token sums over all ranks
        double et[2] = {totals.excess[i], totals.tokens[i]};
        this->comm_.all_reduce_sum(std::span<double>(et, 2));
        totals.excess[i] = et[0];
        totals.tokens[i] = et[1];
      }
      if (s[i] > 0 && totals.tokens[i] > 0) {  // else the domain's weight or gradient is 0
        if (c > 0) axpby(be, sum_a_.data(), scalar(1), g, scalar(1 / s[i]), n);
        const double l = dw_.logit(i, totals.excess[i] / totals.tokens[i]);
        if (l > -INFINITY) {  // B = exp(m − m')·B + exp(ℓᵢ − m')·gᵢ/sᵢ with m' = max(m, ℓᵢ)
          const double shrink = l > m ? std::exp(m - l) : 1.0;
          m = std::max(m, l);
          axpby(be, sum_b_.data(), scalar(shrink), g, scalar(std::exp(l - m) / s[i]), n);
        }
      }
      this->model_.zero_grad();
    }
    reduce_totals(totals, false, true);
    dw_.update(totals.excess, totals.tokens);
    // Σ (αᵢ/sᵢ)·gᵢ / u with αᵢ = (1 − c)·exp(ℓᵢ − lse) + c/k, the sums holding gᵢ/tokens.
    const double u = weight_normaliser(totals), f = double(tokens) / u;
    if (m > -INFINITY)
      axpby(be, g, scalar(0), sum_b_.data(), scalar(f * (1 - c) * std::exp(m - dw_.log_normaliser())), n);
    if (c > 0) axpby(be, g, scalar(1), sum_a_.data(), scalar(f * c / double(s.size())), n);
    return u;
  }

  // Each domain's sequences of the step (by domain id), in passes of at most
  // one micro-batch (the per-token buffers never outgrow a micro-batch).
  static std::vector<std::vector<Batch>> passes_by_domain(const std::vector<Batch>& micro, std::size_t k) {
    int rows = 0;
    for (const Batch& b : micro) {
      if (b.T != micro.front().T)
        fail("DRO: the micro-batches of one step have sequence lengths {} and {} (they must agree)", micro.front().T,
             b.T);
      rows = std::max(rows, b.B);
    }
    const int T = micro.front().T;
    std::vector<std::vector<Batch>> passes(k);
    for (const Batch& b : micro)
      for (int r = 0; r < b.B; ++r) {
        const std::int32_t d = b.domain[std::size_t(r)];
        std::vector<Batch>& own = passes[std::size_t(d)];
        if (own.empty() || own.back().B == rows) own.emplace_back().T = T;
        Batch& p = own.back();
        const auto at = std::ptrdiff_t(r) * T;
        p.inputs.insert(p.inputs.end(), b.inputs.begin() + at, b.inputs.begin() + at + T);
        p.targets.insert(p.targets.end(), b.targets.begin() + at, b.targets.begin() + at + T);
        p.domain.push_back(d);
        ++p.B;
      }
    return passes;
  }

  Ref& ref_;
  DomainWeights dw_;
  std::vector<scalar> token_w_;
  typename M::template Buffer<scalar> sum_a_, sum_b_;  // A and B of by_domain
};

}  // namespace doremi
