#pragma once
// AdamW (Loshchilov & Hutter 2019) with PyTorch's exact semantics
// (torch.optim.AdamW, the optimiser of the public DoReMi runs): decoupled
// weight decay applied to θ before the moment update, bias-corrected moments.
//
// All parameters live in one flat buffer; ParamGroup ranges say which parts
// are decayed (HuggingFace's Trainer exempts biases and LayerNorm weights).
// The per-element update (backend/adamw_update.hpp) is one DOREMI_HD function
// shared with the CUDA backend, so both backends compute the same arithmetic
// in the same order.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <span>
#include <vector>

#include "doremi/backend/adamw_update.hpp"  // AdamWCoefficients, adamw_update, ParamGroup
#include "doremi/backend/backend.hpp"
#include "doremi/backend/cpu/cpu.hpp"
#include "doremi/core/error.hpp"

namespace doremi {

// Hyper-parameters; the defaults are the public 120M Pile run's (docs/algorithm.md).
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

// AdamW over one flat buffer of n parameters of type T (float or double).
// Holds the moments m, v (same layout as the parameters, in the backend's
// memory) and the step count t; all three are exposed so a checkpoint saves
// and restores them bit-exactly. On a device backend, pass the model's
// backend (model.backend()) so the update runs on the model's stream.
template <class T, class Backend = backend::Cpu>
class AdamW {
  static_assert(backend::OptimizerBackend<Backend, T>,
                "AdamW<T, Backend>: Backend lacks a function AdamW calls (backend/backend.hpp lists them)");

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
