#pragma once
// Helpers shared by the benchmarks: medians, a subprocess's output, and the
// model FLOPs of a training step.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

namespace bench {

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// Everything `cmd` prints on stdout ("" when it cannot be started).
inline std::string run_command(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  pclose(p);
  return out;
}

// Model FLOPs per token of a training step (forward + backward = 3 × forward):
// the GEMMs (12·C² per layer and V·C for the head) and the attention products
// over all T keys (what every implementation compared computes).
template <class Cfg>
double flops_per_token(int T) {
  const double C = Cfg::n_embd, L = Cfg::n_layer, V = Cfg::padded_vocab;
  return 6.0 * (L * 12.0 * C * C + V * C) + 12.0 * L * T * C;
}

}  // namespace bench
