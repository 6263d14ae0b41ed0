// A DRO step (reference forward, proxy forward, domain-weight update, weighted
// backward, AdamW: DROTrainer) against a plain training step of the same model
// (Trainer), in one run, alternating rounds. The ideal ratio is about 4/3: the
// DRO step adds one forward of the reference model to forward + backward
// (≈ 3 forwards) of the proxy. Goal: at most 1.4x. With --accum K, both steps
// take K micro-batches: the DRO step's exact accumulation regroups the
// sequences into passes of one domain (no forward runs twice), so the ideal
// stays 4/3.
//
//   bench_dro_step [--steps 10] [--rounds 3] [--batch 4] [--seq 256] [--accum 1]
//
// Model: cpu-bench (fp32), 4 domains, random tokens, OpenMP threads as set
// by OMP_NUM_THREADS. Prints the median milliseconds per step of each and
// their ratio.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "bench_util.hpp"
#include "random_batches.hpp"
#include "doremi/doremi.hpp"
#include "doremi/train/dro_trainer.hpp"
#include "doremi/train/trainer.hpp"

using namespace doremi;

namespace {

using bench::median;

using Cfg = presets::CpuBench<float>;
using M = Model<Cfg>;

using RandomBatches = bench::RandomBatches<Cfg::vocab>;

}  // namespace

int main(int argc, char** argv) {
  int steps = 10, rounds = 3, B = 4, T = 256, accum = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const int v = std::atoi(argv[i + 1]);
    if (a == "--steps") steps = v;
    else if (a == "--rounds") rounds = v;
    else if (a == "--batch") B = v;
    else if (a == "--seq") T = v;
    else if (a == "--accum") accum = v;
    else {
      fmt::print(stderr, "usage: bench_dro_step [--steps 10] [--rounds 3] [--batch 4] [--seq 256] [--accum 1]\n");
      return 2;
    }
  }
  if (steps < 1 || rounds < 1 || B < 1 || accum < 1 || T < 2 || T > Cfg::n_ctx) {
    fmt::print(stderr, "bench_dro_step: need --steps, --rounds, --batch, --accum >= 1 and 2 <= --seq <= {}\n",
               Cfg::n_ctx);
    return 2;
  }
  TrainConfig c;
  c.steps = long(steps) * rounds + 1;
  c.grad_accum = accum;
  c.progress = false;
  M plain_model, proxy, reference;
  plain_model.init(1);
  proxy.init(1);
  reference.init(2);
  RandomBatches plain_data{B, T}, dro_data{B, T};
  Trainer plain(plain_model, plain_data, c);
  DROTrainer dro(proxy, reference, dro_data, c,
                 DomainWeights({"a", "b", "c", "d"}, {1, 1, 1, 1}, {1, 1, 1, 1},
                               DROTrainer<M, RandomBatches>::initial_score(), DroConfig{1.0, 1e-3}));
  plain.train_step();  // warm-up: first-touch of buffers, GEMM primitives
  dro.train_step();
  std::vector<double> t_plain, t_dro;
  for (int r = 0; r < rounds; ++r) {
    for (int s = 0; s < steps; ++s) t_plain.push_back(plain.train_step().seconds);
    for (int s = 0; s < steps; ++s) t_dro.push_back(dro.train_step().seconds);
  }
  const double p = median(t_plain), d = median(t_dro);
  fmt::print("{} (fp32), {} micro-batch(es) of {} x {} per step, {} rounds of {} steps each, medians:\n", Cfg::name,
             accum, B, T, rounds, steps);
  const double tokens = double(accum) * B * T;
  fmt::print("  plain training step  {:8.1f} ms  ({:.0f} tokens/s)\n", 1e3 * p, tokens / p);
  fmt::print("  DRO step             {:8.1f} ms  ({:.0f} tokens/s)\n", 1e3 * d, tokens / d);
  fmt::print("  ratio DRO / plain    {:8.3f}   (ideal about 4/3 = 1.333; goal <= 1.4: {})\n", d / p,
             d / p <= 1.4 ? "met" : "NOT met");
  return 0;
}
