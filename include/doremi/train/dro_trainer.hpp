#pragma once
// DROTrainer<Model, Sampler, Reference>: the DoReMi proxy (doremi.md,
// Algorithm 1). Each optimisation step:
//   1. draws the step's micro-batches (the sampler uses the sampling weights);
//   2. runs the frozen reference and the proxy on the same tokens;
//   3–6. turns the clipped per-token excess losses of *all* micro-batches into
//      per-domain scores and updates α and ᾱ once (DomainWeights);
//   7. weights every micro-batch's token losses with that same updated α,
//      importance-corrected by the sampling weights, normalised by the step's
//      total weight, and takes the AdamW step (via TrainerBase).
//
// Exact accumulation. The public implementation updates α lazily per
// micro-batch, so k−1 of k micro-batches use stale weights. Here the update
// needs every micro-batch's losses first, so the proxy scores every
// micro-batch (forward_losses, no activations kept, except for the last
// micro-batch, whose activations serve its backward), and every other
// micro-batch runs its forward again right before its backward: k
// micro-batches give the same α trajectory as one batch k times larger, at
// the cost of k−1 extra proxy forwards per step (none without accumulation).
//
//   doremi::DROTrainer dro(proxy, reference, sampler, train_config, domain_weights);
//   dro.run();
//   dro.write_domain_weights("out");   // avg_domain_weights.json + domain_config.json
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "doremi/core/atomic_file.hpp"
#include "doremi/core/error.hpp"
#include "doremi/data/domain_config.hpp"
#include "doremi/train/domain_weights.hpp"
#include "doremi/train/trainer.hpp"

namespace doremi {

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
    // Per-domain totals: excess loss, tokens, proxy and reference loss sums.
    std::vector<double> excess(k, 0.0), count(k, 0.0), proxy_sum(k, 0.0), ref_sum(k, 0.0);
    // Pass 1: score every micro-batch (steps 2–4). The backend totals each
    // sequence's tokens where the losses are (on a GPU: B totals reach the
    // host, not B·T losses); a sequence belongs to one domain.
    for (std::size_t m = 0; m < micro.size(); ++m) {
      const Batch& b = micro[m];
      check_domains(b, k);
      const auto ref = ref_.forward_losses(b.inputs, b.targets, b.B, b.T);  // no backward: one layer of activations
      // Only the last micro-batch's activations survive to its backward; the
      // others are scored without keeping any (the same losses, bit for bit).
      const auto out = m + 1 == micro.size() ? this->model_.forward(b.inputs, b.targets, b.B, b.T)
                                             : this->model_.forward_losses(b.inputs, b.targets, b.B, b.T);
      const auto rows =
          row_loss_sums(this->model_.backend(), out.losses.data(), out.mask.data(), b.B, b.T, ref.losses.data());
      for (std::size_t r = 0; r < rows.size(); ++r) {
        const auto d = std::size_t(b.domain[r]);
        excess[d] += rows[r].excess;
        count[d] += rows[r].tokens;
        proxy_sum[d] += rows[r].loss;
        ref_sum[d] += rows[r].reference;
      }
    }
    // Steps 5–6, once per step.
    dw_.update(excess, count);
    // Step 7: L = Σ w[d]·ℓ / Σ w[d] over all the step's tokens.
    const std::vector<double> w = dw_.loss_weights();
    double denom = 0, weighted = 0;
    for (std::size_t d = 0; d < k; ++d) {
      denom += w[d] * count[d];
      weighted += w[d] * proxy_sum[d];
    }
    if (!(denom > 0))
      fail("DRO step {}: every token of the step belongs to a domain with loss weight 0", this->step_ + 1);
    for (std::size_t m = micro.size(); m-- > 0;) {
      const Batch& b = micro[m];
      if (m + 1 != micro.size()) this->model_.forward(b.inputs, b.targets, b.B, b.T);  // activations for backward
      // A sequence's tokens share its domain's weight (padding's is ignored).
      token_w_.resize(b.inputs.size());
      for (int r = 0; r < b.B; ++r)
        std::fill_n(token_w_.begin() + std::ptrdiff_t(r) * b.T, b.T,
                    scalar(w[std::size_t(b.domain[std::size_t(r)])] / denom));
      this->model_.backward(token_w_);
    }
    s.loss = weighted / denom;
    double psum = 0, rsum = 0;
    std::vector<double> proxy_mean(k, 0.0), ref_mean(k, 0.0);
    for (std::size_t i = 0; i < k; ++i) {
      psum += proxy_sum[i];
      rsum += ref_sum[i];
      if (count[i] > 0) {
        proxy_mean[i] = proxy_sum[i] / count[i];
        ref_mean[i] = ref_sum[i] / count[i];
      }
    }
    s.extra = {{"mean_loss", psum / double(tokens)},     {"reference_loss", rsum / double(tokens)},
               {"domains", dw_.names()},                {"scores", dw_.scores()},
               {"alpha", dw_.alpha()},                  {"avg_alpha", dw_.average()},
               {"domain_tokens", count},                {"domain_loss", proxy_mean},
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
  void write_domain_weights(const std::filesystem::path& dir, const std::vector<double>& eval_weights = {}) const {
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

  Ref& ref_;
  DomainWeights dw_;
  std::vector<scalar> token_w_;
};

}  // namespace doremi
