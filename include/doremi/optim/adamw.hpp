#pragma once
// AdamW (Loshchilov & Hutter 2019) with PyTorch's exact semantics
// (torch.optim.AdamW, the optimiser of the public DoReMi runs): decoupled
// weight decay applied to θ before the moment update, bias-corrected moments.
//
// All parameters live in one flat buffer; ParamGroup ranges say which parts
// are decayed (HuggingFace's Trainer exempts biases and LayerNorm weights).
// The per-element update is one DOREMI_HD function shared with the CUDA
// backend, so both backends compute the same arithmetic in the same order.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <span>
#include <vector>

#include "doremi/backend/cpu/cpu.hpp"
#include "doremi/core/error.hpp"
#include "doremi/core/hostdevice.hpp"

namespace doremi {

// The per-step scalars of an AdamW update, formed once per step: PyTorch
// forms them in double on the host and rounds each once to the tensor's type.
template <class T>
struct AdamWCoefficients {
  T decay;            // 1 − lr·wd (decoupled weight decay)
  T beta1, one_minus_beta1, beta2, one_minus_beta2;
  T sqrt_bc2;         // √(1 − β₂ᵗ)
  T eps;
  T neg_step_size;    // −lr / (1 − β₁ᵗ)
  T grad_scale;       // each gradient's factor as it is read (gradient clipping's)
};

// bias_correction1/2 = 1 − β₁ᵗ, 1 − β₂ᵗ for the 1-based step t; scalars
// are combined in S before rounding to T.
template <class T, class S>
DOREMI_HD AdamWCoefficients<T> adamw_coefficients(S lr, S beta1, S beta2, S eps, S weight_decay,
                                                  S bias_correction1, S bias_correction2, S grad_scale = S(1)) {
  using std::sqrt;
  return {T(S(1) - lr * weight_decay), T(beta1),         T(S(1) - beta1),
          T(beta2),                    T(S(1) - beta2),  T(sqrt(bias_correction2)),
          T(eps),                      T(-(lr / bias_correction1)), T(grad_scale)};
}

// One AdamW update of one parameter θ with gradient g and moments m, v.
// Mirrors torch.optim.AdamW (single-tensor path) operation by operation,
// after clip_grad_norm_'s scaling g ← g·s (s = 1 without clipping: exact):
//   θ ← θ·(1 − lr·wd)
//   m ← β₁·m + (1 − β₁)·g
//   v ← β₂·v + (1 − β₂)·g²
//   θ ← θ − (lr / bc₁) · m / (√v / √bc₂ + ε)
// (On the CPU, √'s errno semantics keep g++ from vectorising this; with 2
// threads the step still runs at memory bandwidth.)
template <class T>
DOREMI_HD void adamw_update(T& p, T g, T& m, T& v, const AdamWCoefficients<T>& c) {
  using std::sqrt;
  g = g * c.grad_scale;
  p = p * c.decay;
  m = m * c.beta1 + c.one_minus_beta1 * g;
  v = v * c.beta2 + c.one_minus_beta2 * g * g;
  const T denom = sqrt(v) / c.sqrt_bc2 + c.eps;
  p = p + c.neg_step_size * (m / denom);
}

// The same with the scalars given one by one (forms the coefficients per
// call; loops should form them once with adamw_coefficients).
template <class T, class S>
DOREMI_HD void adamw_update(T& p, T g, T& m, T& v, S lr, S beta1, S beta2, S eps, S weight_decay,
                            S bias_correction1, S bias_correction2) {
  adamw_update(p, g, m, v,
               adamw_coefficients<T>(lr, beta1, beta2, eps, weight_decay, bias_correction1,
                                     bias_correction2));
}

// Hyper-parameters; the defaults are the public 120M Pile run's (doremi.md).
struct AdamWConfig {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.99;
  double eps = 1e-8;
  double weight_decay = 0.01;

  void validate() const {
    const auto finite = [](double x) { return std::isfinite(x); };
    if (!finite(lr) || lr < 0) fail("AdamW: lr = {} must be finite and >= 0", lr);
    if (!finite(beta1) || beta1 < 0 || beta1 >= 1)
      fail("AdamW: beta1 = {} must lie in [0, 1)", beta1);
    if (!finite(beta2) || beta2 < 0 || beta2 >= 1)
      fail("AdamW: beta2 = {} must lie in [0, 1)", beta2);
    if (!finite(eps) || eps <= 0) fail("AdamW: eps = {} must be finite and > 0", eps);
    if (!finite(weight_decay) || weight_decay < 0)
      fail("AdamW: weight_decay = {} must be finite and >= 0", weight_decay);
  }
};

// A range [offset, offset + size) of the flat parameter buffer and whether
// weight decay applies to it.
struct ParamGroup {
  std::size_t offset = 0;
  std::size_t size = 0;
  bool decay = true;
};

// Checks that groups tile [0, n) exactly: an overlap would update a parameter
// twice per step, a gap would leave it untrained, both silently.
inline void validate_param_groups(std::span<const ParamGroup> groups, std::size_t n) {
  std::vector<std::size_t> order(groups.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  for (std::size_t i : order) {
    const auto& g = groups[i];
    if (g.offset > n || g.size > n - g.offset)
      fail("AdamW: param group {} [{}, {}) lies outside the {} parameters", i, g.offset,
           g.offset + g.size, n);
  }
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return groups[a].offset < groups[b].offset;
  });
  std::size_t covered = 0;  // [0, covered) is tiled so far
  for (std::size_t i : order) {
    const auto& g = groups[i];
    if (g.size == 0) continue;
    if (g.offset < covered)
      fail("AdamW: param group {} [{}, {}) overlaps an earlier group ending at {}", i, g.offset,
           g.offset + g.size, covered);
    if (g.offset > covered)
      fail("AdamW: parameters [{}, {}) belong to no param group", covered, g.offset);
    covered = g.offset + g.size;
  }
  if (covered != n) fail("AdamW: parameters [{}, {}) belong to no param group", covered, n);
}

// AdamW over one flat buffer of n parameters of type T (float or double).
// Holds the moments m, v (same layout as the parameters, in the backend's
// memory) and the step count t; all three are exposed so a checkpoint saves
// and restores them bit-exactly. On a device backend, pass the model's
// backend (model.backend()) so the update runs on the model's stream.
template <class T, class Backend = backend::Cpu>
class AdamW {
 public:
  AdamW(std::size_t n, AdamWConfig config, Backend be = {}) : config_(config), be_(be), m_(n, T(0)), v_(n, T(0)) {
    config_.validate();
  }

  // One optimiser step at learning rate lr (the schedule's value for this
  // step; config().lr is only its default), each gradient taken times
  // grad_scale (gradient clipping's clip_coefficient: bit for bit the step
  // on gradients scaled by clip_grad_norm, without a pass to scale them).
  // Elementwise, so the result does not depend on the thread count.
  // Non-finite gradients are not checked here: the trainer tests the norm.
  void step(std::span<T> params, std::span<const T> grads, std::span<const ParamGroup> groups,
            double lr, double grad_scale = 1.0) {
    const std::size_t n = m_.size();
    if (params.size() != n)
      fail("AdamW::step: {} parameters given, the optimiser holds state for {}", params.size(), n);
    if (grads.size() != n)
      fail("AdamW::step: {} gradients given for {} parameters", grads.size(), n);
    if (!std::isfinite(lr) || lr < 0)
      fail("AdamW::step: lr = {} at step {} must be finite and >= 0", lr, steps_ + 1);
    if (!std::isfinite(grad_scale) || grad_scale <= 0)
      fail("AdamW::step: grad_scale = {} at step {} must be finite and > 0", grad_scale, steps_ + 1);
    validate_param_groups(groups, n);

    ++steps_;
    // PyTorch: bias_correction = 1 − β**step with step a float, in double.
    const double t = double(steps_);
    const double bc1 = 1.0 - std::pow(config_.beta1, t);
    const double bc2 = 1.0 - std::pow(config_.beta2, t);
    const auto coefficients = [&](double wd) {
      return adamw_coefficients<T>(lr, config_.beta1, config_.beta2, config_.eps, wd, bc1, bc2, grad_scale);
    };
    const AdamWCoefficients<T> decayed = coefficients(config_.weight_decay);
    const AdamWCoefficients<T> undecayed = coefficients(0.0);

    T* p = params.data();
    const T* g = grads.data();
    T* m = m_.data();
    T* v = v_.data();
    if constexpr (!Backend::host_memory) {
      adamw_step(be_, p, g, m, v, n, groups, decayed, undecayed);  // backend/<device>/adamw.hpp
    } else {
#pragma omp parallel
      for (const ParamGroup& group : groups) {
        const AdamWCoefficients<T> c = group.decay ? decayed : undecayed;
        const auto begin = std::ptrdiff_t(group.offset);
        const auto end = begin + std::ptrdiff_t(group.size);
        // Groups are disjoint, so no barrier between them.
#pragma omp for schedule(static) nowait
        for (std::ptrdiff_t i = begin; i < end; ++i)
          adamw_update(p[i], g[i], m[i], v[i], c);
      }
    }
  }

  // Same, at config().lr.
  void step(std::span<T> params, std::span<const T> grads, std::span<const ParamGroup> groups) {
    step(params, grads, groups, config_.lr);
  }

  std::size_t size() const { return m_.size(); }
  const AdamWConfig& config() const { return config_; }

  // First and second moments m, v (PyTorch's exp_avg, exp_avg_sq), in the
  // backend's memory, and copied to the host.
  std::span<T> state_m() { return {m_.data(), m_.size()}; }
  std::span<const T> state_m() const { return {m_.data(), m_.size()}; }
  std::span<T> state_v() { return {v_.data(), v_.size()}; }
  std::span<const T> state_v() const { return {v_.data(), v_.size()}; }
  std::vector<T> host_state_m() const { return to_host(m_); }
  std::vector<T> host_state_v() const { return to_host(v_); }

  // Steps taken so far (PyTorch's state["step"]); the next step is steps() + 1.
  std::int64_t steps() const { return steps_; }
  void set_steps(std::int64_t steps) {
    if (steps < 0) fail("AdamW: step count {} must be >= 0", steps);
    steps_ = steps;
  }

  // Restores m, v and t from a checkpoint, checking the sizes.
  void restore(std::span<const T> m, std::span<const T> v, std::int64_t steps) {
    if (m.size() != m_.size() || v.size() != v_.size())
      fail("AdamW::restore: moments of sizes {} and {} given, the optimiser holds {}", m.size(),
           v.size(), m_.size());
    set_steps(steps);
    upload(be_, m_.data(), m.data(), m.size());
    upload(be_, v_.data(), v.data(), v.size());
  }

 private:
  template <class B>
  std::vector<T> to_host(const B& buf) const {
    std::vector<T> h(buf.size());
    download(be_, h.data(), buf.data(), buf.size());
    return h;
  }

  AdamWConfig config_;
  Backend be_;
  typename Backend::template Buffer<T> m_, v_;
  std::int64_t steps_ = 0;
};

}  // namespace doremi
