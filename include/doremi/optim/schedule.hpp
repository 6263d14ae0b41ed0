#pragma once
// Learning-rate schedules of the public DoReMi runs (docs/algorithm.md,
// "Defaults"): a linear warmup from 1e-7 over w steps, then
// constant, linear, cosine or exponential decay from the peak to lr_end at T.
#include <cmath>
#include <numbers>
#include <string_view>

#include "doremi/core/error.hpp"

namespace doremi {

struct LrSchedule {
  enum class Kind { constant, linear, cosine, linear_warmup_exponential };

  Kind kind = Kind::linear_warmup_exponential;
  double peak_lr = 1e-3;  // lr reached at the end of warmup
  double end_lr = 1e-4;   // lr_end, reached at total_steps (ignored by constant)
  long warmup_steps = 0;  // w
  long total_steps = 0;   // T; 0 is invalid, so an unset schedule fails loudly

  // Where the warmup starts (the public implementation's lr_start).
  static constexpr double warmup_start_lr = 1e-7;
  // The exponential decay's distance from lr_end at T: γ solves
  // (peak − lr_end)·γ^(T−w) = 1e-10.
  static constexpr double exponential_final_gap = 1e-10;

  // The learning rate for optimiser step t (0-based: the step about to be
  // taken). Steps t > T keep the value at t = T, the end of the schedule (for
  // the exponential decay lr_end + 1e-10, otherwise lr_end, or the peak for
  // constant). Negative t and an invalid schedule raise doremi::Error.
  double at(long step) const {
    validate();
    if (step < 0) fail("LrSchedule::at: step {} must be >= 0", step);
    const long t = step > total_steps ? total_steps : step;
    const double peak = peak_lr, end = end_lr;
    const long w = warmup_steps, T = total_steps;

    if (t < w)  // w > 0 here
      return warmup_start_lr + (peak - warmup_start_lr) * double(t) / double(w);
    if (kind == Kind::constant) return peak;

    // Progress through the decay, 0 at w and 1 at T. T == w (warmup fills
    // the run) leaves only t = T here, the decay's endpoint.
    const double p = T == w ? 1.0 : double(t - w) / double(T - w);
    switch (kind) {
      case Kind::linear:
        return peak + (end - peak) * p;
      case Kind::cosine:
        return end + (peak - end) * (1.0 + std::cos(std::numbers::pi * p)) / 2.0;
      case Kind::linear_warmup_exponential: {
        // γ^(t−w) = (1e-10 / (peak − lr_end))^p. With peak == lr_end there is
        // nothing to decay (and no γ): the lr stays at lr_end.
        const double gap = peak - end;
        if (gap == 0) return end;
        return end + gap * std::pow(exponential_final_gap / gap, p);
      }
      case Kind::constant:
        break;
    }
    return peak;
  }

  void validate() const {
    if (total_steps <= 0) fail("LrSchedule: total_steps = {} must be > 0", total_steps);
    if (warmup_steps < 0) fail("LrSchedule: warmup_steps = {} must be >= 0", warmup_steps);
    if (warmup_steps > total_steps)
      fail("LrSchedule: warmup_steps = {} exceeds total_steps = {}", warmup_steps, total_steps);
    if (!std::isfinite(peak_lr) || peak_lr < 0)
      fail("LrSchedule: peak_lr = {} must be finite and >= 0", peak_lr);
    if (!std::isfinite(end_lr) || end_lr < 0)
      fail("LrSchedule: end_lr = {} must be finite and >= 0", end_lr);
    if (kind != Kind::constant && end_lr > peak_lr)
      fail("LrSchedule: end_lr = {} exceeds peak_lr = {}; the {} schedule decays from the peak",
           end_lr, peak_lr, name(kind));
  }

  static constexpr std::string_view name(Kind kind) {
    switch (kind) {
      case Kind::constant: return "constant";
      case Kind::linear: return "linear";
      case Kind::cosine: return "cosine";
      case Kind::linear_warmup_exponential: return "linear_warmup_exponential";
    }
    return "?";
  }

  static Kind parse(std::string_view text) {
    for (Kind k : {Kind::constant, Kind::linear, Kind::cosine, Kind::linear_warmup_exponential})
      if (text == name(k)) return k;
    fail("unknown learning-rate schedule '{}'; expected one of: constant, linear, cosine, "
         "linear_warmup_exponential",
         text);
  }

  // The public 120M Pile run: exponential decay from 1e-3 to 1e-4 after a
  // warmup of 6% of the steps, rounded up as HuggingFace's warmup_ratio is.
  static LrSchedule doremi_default(long total_steps) {
    if (total_steps <= 0) fail("LrSchedule::doremi_default: total_steps = {} must be > 0", total_steps);
    LrSchedule s;
    s.kind = Kind::linear_warmup_exponential;
    s.peak_lr = 1e-3;
    s.end_lr = 1e-4;
    s.total_steps = total_steps;
    s.warmup_steps = (total_steps / 100) * 6 + ((total_steps % 100) * 6 + 99) / 100;  // ⌈0.06·T⌉ without overflow
    s.validate();
    return s;
  }
};

}  // namespace doremi
