#pragma once
// The per-step domain weights a DROTrainer logs to metrics.jsonl, read back
// for charts (docs/formats.md describes the file).
//
//   auto traj = doremi::read_weight_trajectory("proxy/metrics.jsonl");   // "alpha" per step
#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "doremi/core/error.hpp"

namespace doremi {

enum class TrajectoryWeights {
  alpha,      // α after each step's update ("alpha")
  avg_alpha,  // the running average ᾱ ("avg_alpha"), whose last row is the run's output
};

// Per-step domain weights of a DRO run.
struct WeightTrajectory {
  TrajectoryWeights kind = TrajectoryWeights::alpha;
  std::vector<std::string> domains;
  std::vector<long> steps;
  std::vector<std::vector<double>> weights;  // [step][domain]
};

// Reads a DROTrainer's metrics.jsonl: one JSON object per line with "step",
// "domains" and "alpha"/"avg_alpha". Blank lines are skipped. A resumed run
// appends, and may repeat steps it had logged before a crash: a step not
// after the previous line's replaces the rows from that step on (the later
// run wins). Throws doremi::Error naming the file and line for invalid JSON,
// a missing or mistyped field, a different domain list than the first line's,
// or a weight count that does not match the domains.
inline WeightTrajectory read_weight_trajectory(const std::filesystem::path& path,
                                               TrajectoryWeights which = TrajectoryWeights::alpha) {
  const char* key = which == TrajectoryWeights::alpha ? "alpha" : "avg_alpha";
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail("cannot read metrics {}: it is a directory", path.string());
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open metrics {}: {}", path.string(), std::strerror(errno));
  WeightTrajectory t;
  t.kind = which;
  std::string line;
  for (std::size_t lineno = 1; std::getline(in, line); ++lineno) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      fail("{}:{}: invalid JSON at column {}: {}", path.string(), lineno, e.byte, e.what());
    } catch (const nlohmann::json::exception& e) {  // a number beyond a double's range
      fail("{}:{}: invalid JSON: {}", path.string(), lineno, e.what());
    }
    if (!j.is_object()) fail("{}:{}: expected a JSON object, got {}", path.string(), lineno, j.type_name());
    const auto step = j.find("step");
    if (step == j.end() || !step->is_number_integer()) fail("{}:{}: no integer \"step\"", path.string(), lineno);
    const auto domains = j.find("domains");
    const auto w = j.find(key);
    if (domains == j.end() || w == j.end())
      fail("{}:{}: no \"domains\" or \"{}\" (is this a DRO run's metrics.jsonl?)", path.string(), lineno, key);
    if (!domains->is_array() || !std::all_of(domains->begin(), domains->end(), [](auto& d) { return d.is_string(); }))
      fail("{}:{}: \"domains\" must be an array of names", path.string(), lineno);
    if (!w->is_array() || !std::all_of(w->begin(), w->end(), [](auto& v) { return v.is_number(); }))
      fail("{}:{}: \"{}\" must be an array of numbers", path.string(), lineno, key);
    auto names = domains->get<std::vector<std::string>>();
    if (t.steps.empty() && t.domains.empty()) t.domains = names;
    else if (names != t.domains)
      fail("{}:{}: the domains differ from the first line's ({} names: {})", path.string(), lineno, names.size(),
           fmt::join(names, ", "));
    if (w->size() != names.size())
      fail("{}:{}: {} values in \"{}\" for {} domains", path.string(), lineno, w->size(), key, names.size());
    const long s = step->get<long>();
    if (!t.steps.empty() && s <= t.steps.back()) {  // a resumed run re-logging steps: keep the later values
      const auto from = std::lower_bound(t.steps.begin(), t.steps.end(), s) - t.steps.begin();
      t.steps.resize(std::size_t(from));
      t.weights.resize(std::size_t(from));
    }
    t.steps.push_back(s);
    t.weights.push_back(w->get<std::vector<double>>());
  }
  if (in.bad()) fail("cannot read metrics {}: {}", path.string(), std::strerror(errno));
  return t;
}

}  // namespace doremi
