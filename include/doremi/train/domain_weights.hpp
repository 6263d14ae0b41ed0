#pragma once
// The DoReMi domain-weight update (docs/algorithm.md, same title):
//
//   λᵢ  = mean over domain i's tokens of max(ℓ_θ − ℓ_ref, 0)   (kept when absent)
//   log α'ᵢ = log αᵢ + η·λᵢ,  α' = softmax(log α')
//   α   = (1 − c)·α' + c/k
//   ᾱ   = running mean of α over all steps, counting α₀ as the first sample
//   wᵢ  = (αᵢ/sᵢ) / Σⱼ (αⱼ/sⱼ)   loss weights, s = the sampling distribution
//
// Everything is in double; one update per optimisation step from the summed
// excess losses and token counts of all its micro-batches (and ranks).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "doremi/core/error.hpp"
#include "doremi/core/json.hpp"

namespace doremi {

struct DroConfig {
  double eta = 1.0;         // η, `reweight_eta`
  double smoothing = 1e-4;  // c, `reweight_eps` (the public 120M Pile run: 1e-3)
  static constexpr double max_eta = 1e6;
  void validate() const {
    // η·λ (λ a per-token excess loss, a few nats) must stay far from overflow;
    // past η ≈ 1e3 the update is already a hard argmax.
    if (!(eta > 0 && eta <= max_eta))
      fail("DRO config: reweight_eta (--eta) must lie in (0, {:g}] (got {})", max_eta, eta);
    if (!(smoothing >= 0 && smoothing <= 1)) fail("DRO config: reweight_eps must lie in [0, 1] (got {})", smoothing);
  }
};

class DomainWeights {
 public:
  // alpha0: initial weights, sampling: the distribution batches are drawn
  // from (both normalised here), initial_score: λ₀ (ln vocabulary).
  DomainWeights(std::vector<std::string> names, std::vector<double> alpha0, std::vector<double> sampling,
                double initial_score, DroConfig config)
      : names_(std::move(names)), alpha_(normalised(std::move(alpha0), "initial domain weights")),
        sampling_(normalised(std::move(sampling), "sampling weights")), scores_(names_.size(), initial_score),
        average_(alpha_), config_(config) {
    config_.validate();
    if (alpha_.size() != names_.size() || sampling_.size() != names_.size())
      fail("DomainWeights: {} domains but {} initial and {} sampling weights", names_.size(), alpha_.size(),
           sampling_.size());
    for (std::size_t i = 0; i < names_.size(); ++i)
      if (sampling_[i] == 0 && alpha_[i] > 0)
        fail("DomainWeights: domain '{}' has sampling weight 0 but a positive initial weight; its loss could never "
             "be observed",
             names_[i]);
  }

  // Steps 4–6: excess_sum[i] = Σ max(ℓ_θ − ℓ_ref, 0) and tokens[i] = token
  // count of domain i over the whole step.
  void update(std::span<const double> excess_sum, std::span<const double> tokens) {
    const std::size_t k = names_.size();
    if (excess_sum.size() != k || tokens.size() != k)
      fail("DomainWeights::update: {} domains but {} sums and {} counts", k, excess_sum.size(), tokens.size());
    for (std::size_t i = 0; i < k; ++i)
      if (tokens[i] > 0) scores_[i] = excess_sum[i] / tokens[i];
    std::vector<double> logits(k);
    for (std::size_t i = 0; i < k; ++i) logits[i] = logit(i, scores_[i]);
    // Softmax in log space. η·λ may overflow to +∞ for a huge η: the limit is
    // then the uniform distribution over the domains whose logit is +∞.
    const double mx = *std::max_element(logits.begin(), logits.end());
    std::vector<double> p(k);
    double z = 0;
    for (std::size_t i = 0; i < k; ++i) {
      p[i] = std::isinf(mx) && mx > 0 ? (logits[i] == mx ? 1.0 : 0.0) : std::exp(logits[i] - mx);
      z += p[i];
    }
    lse_ = std::isinf(mx) ? mx : mx + std::log(z);
    for (std::size_t i = 0; i < k; ++i)
      alpha_[i] = (1 - config_.smoothing) * (p[i] / z) + config_.smoothing / double(k);
    ++count_;
    for (std::size_t i = 0; i < k; ++i) average_[i] = (average_[i] * double(count_ - 1) + alpha_[i]) / double(count_);
  }

  // Domain i's logit in the next update() if its score becomes `score`:
  // log αᵢ + η·score (−∞ where αᵢ = 0). That update sets
  // αᵢ = (1 − c)·exp(logitᵢ − log_normaliser()) + c/k.
  double logit(std::size_t i, double score) const {
    return alpha_[i] > 0 ? std::log(alpha_[i]) + config_.eta * score : -INFINITY;
  }
  // log Σᵢ exp(logitᵢ) of the last update() (0 before the first in this process).
  double log_normaliser() const { return lse_; }

  // Step 7's per-domain loss weights wᵢ = (αᵢ/sᵢ)/Σⱼ(αⱼ/sⱼ) (0 where s is 0).
  std::vector<double> loss_weights() const {
    std::vector<double> w(names_.size(), 0.0);
    double z = 0;
    for (std::size_t i = 0; i < w.size(); ++i) {
      w[i] = sampling_[i] > 0 ? alpha_[i] / sampling_[i] : 0.0;
      z += w[i];
    }
    for (double& x : w) x /= z;
    return w;
  }

  const std::vector<std::string>& names() const { return names_; }
  const std::vector<double>& alpha() const { return alpha_; }
  const std::vector<double>& scores() const { return scores_; }
  const std::vector<double>& average() const { return average_; }
  const std::vector<double>& sampling() const { return sampling_; }
  long count() const { return count_; }  // samples in the average, α₀ included
  const DroConfig& config() const { return config_; }

  nlohmann::json state() const {
    return {{"domains", names_}, {"alpha", alpha_},     {"scores", scores_},
            {"average", average_}, {"count", count_},   {"sampling", sampling_}};
  }
  // Checks the whole state before changing anything: the domains must be
  // this run's, every array must hold one finite entry per domain, α and ᾱ
  // must be distributions, count >= 1. Errors name the field and the value.
  void restore(const nlohmann::json& j) {
    constexpr std::string_view where = "DomainWeights: the saved DRO state";
    if (!j.is_object() || j.value("domains", nlohmann::json()) != nlohmann::json(names_))
      fail("DomainWeights: the saved DRO state is for domains {} but this run has {}",
           j.is_object() && j.contains("domains") ? detail::json_excerpt(j.at("domains")) : "none",
           nlohmann::json(names_).dump());
    auto array = [&](const char* key) {
      auto v = json_field<std::vector<double>>(j, key, where);
      if (v.size() != names_.size())
        fail("{}: field '{}' has {} entries, but there are {} domains", where, key, v.size(), names_.size());
      return v;
    };
    auto distribution = [&](const char* key) {
      auto v = array(key);
      double sum = 0;
      for (std::size_t i = 0; i < v.size(); ++i) {
        if (v[i] < 0 || v[i] > 1) fail("{}: field '{}[{}]' is {}, expected a weight in [0, 1]", where, key, i, v[i]);
        sum += v[i];
      }
      if (std::fabs(sum - 1.0) > 1e-6) fail("{}: field '{}' sums to {}, expected 1", where, key, sum);
      return v;
    };
    auto alpha = distribution("alpha");
    auto scores = array("scores");
    auto average = distribution("average");
    const long count = json_field<long>(j, "count", where);
    if (count < 1) fail("{}: field 'count' is {}, expected >= 1", where, count);
    for (std::size_t i = 0; i < names_.size(); ++i)
      if (sampling_[i] == 0 && alpha[i] > 0)
        fail("{}: domain '{}' has weight {} in field 'alpha' but sampling weight 0 in this run", where, names_[i],
             alpha[i]);
    alpha_ = std::move(alpha);
    scores_ = std::move(scores);
    average_ = std::move(average);
    count_ = count;
  }

 private:
  static std::vector<double> normalised(std::vector<double> w, const char* what) {
    double z = 0;
    for (double x : w) {
      if (!std::isfinite(x) || x < 0) fail("DomainWeights: {} must be finite and >= 0 (got {})", what, x);
      z += x;
    }
    if (!(z > 0)) fail("DomainWeights: {} are all zero", what);
    for (double& x : w) x /= z;
    return w;
  }

  std::vector<std::string> names_;
  std::vector<double> alpha_, sampling_, scores_, average_;
  long count_ = 1;  // ᾱ starts as α₀, one sample
  double lse_ = 0;
  DroConfig config_;
};

}  // namespace doremi
