// Data-parallel training steps on the CPU: N MPI ranks of T/N threads against
// one rank of T threads (the same cores, the same global batch), in one run,
// and the share of the N-rank step spent in communication (the gradient sum
// and the small per-step sums, timed inside the communicator).
//
//   bench_dist [--ranks 2] [--threads 2] [--steps 6] [--rounds 3] [--batch 4] [--seq 256] [--accum 2] [--dro]
//
// The parent (run it without mpirun) launches
//   mpirun -np 1 -x OMP_NUM_THREADS=T bench_dist --child ...
//   mpirun -np N -x OMP_NUM_THREADS=T/N bench_dist --child ...
// alternately `rounds` times, and prints the median milliseconds per step of
// each, their ratio, the communication's median share of the N-rank step and
// the bytes of one step's gradient sum for cpu-bench and doremi-120m.
// Model: cpu-bench (fp32), 4 domains, random tokens; each step's global batch
// is `accum` micro-batches of `batch` sequences of `seq` tokens.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bench_util.hpp"
#include "random_batches.hpp"
#include "doremi/doremi.hpp"
#include "doremi/dist/world.hpp"

using namespace doremi;

namespace {

using Cfg = presets::CpuBench<float>;
using M = Model<Cfg>;

using RandomBatches = bench::RandomBatches<Cfg::vocab>;

// A communicator that times its collectives (wall seconds since reset).
struct Timed {
  dist::Comm inner;
  std::shared_ptr<double> seconds = std::make_shared<double>(0);
  int rank() const { return inner.rank(); }
  int size() const { return inner.size(); }
  int local_rank() const { return inner.local_rank(); }
  std::string name() const { return "timed " + inner.name(); }
  template <class F>
  auto time(F&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    *seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  void all_reduce_sum(std::span<float> x) { time([&] { inner.all_reduce_sum(x); }); }
  void all_reduce_sum(std::span<double> x) { time([&] { inner.all_reduce_sum(x); }); }
  std::vector<std::uint64_t> all_gather(std::span<const std::uint64_t> w) { return inner.all_gather(w); }
  void barrier() { inner.barrier(); }
  [[noreturn]] void abort(int code) { inner.abort(code); }
};

struct Opt {
  int ranks = 2, threads = 2, steps = 6, rounds = 3, batch = 4, seq = 256, accum = 2;
  bool dro = false, child = false;
};

template <class T>
void steps(T& trainer, const Opt& o, const std::shared_ptr<double>& comm_s, std::vector<double>& ms,
           std::vector<double>& share) {
  trainer.train_step();  // warm-up (buffers, plans)
  for (int s = 0; s < o.steps; ++s) {
    *comm_s = 0;
    const auto t0 = std::chrono::steady_clock::now();
    trainer.train_step();
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ms.push_back(sec * 1e3);
    share.push_back(*comm_s / sec);
  }
}

int child(const Opt& o) {
  const dist::Comm& world = dist::world();
  Timed timed{world};
  const auto comm_s = timed.seconds;
  RandomBatches data{o.batch, o.seq};
  TrainConfig tc;
  tc.steps = 1000;
  tc.grad_accum = o.accum;
  tc.progress = false;
  M model;
  model.init(1);
  std::vector<double> ms, share;
  if (o.dro) {
    M ref;
    ref.init(2);
    DomainWeights dw({"a", "b", "c", "d"}, {1, 1, 1, 1}, {1, 1, 1, 1}, DROTrainer<M, RandomBatches>::initial_score(),
                     {});
    DROTrainer t(model, ref, data, tc, std::move(dw));
    t.set_communicator(dist::Comm(timed));
    steps(t, o, comm_s, ms, share);
  } else {
    Trainer t(model, data, tc);
    t.set_communicator(dist::Comm(timed));
    steps(t, o, comm_s, ms, share);
  }
  if (world.is_root())
    fmt::print("{}\n", nlohmann::json{{"ranks", world.size()}, {"ms", bench::median(ms)},
                                      {"comm_share", bench::median(share)}}
                           .dump());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return dist::guarded_main([&] {
    Opt o;
    std::string pass;  // options handed to the children
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto num = [&] {
        if (i + 1 >= argc) fail("{} needs a value", a);
        const int v = std::atoi(argv[++i]);
        if (v <= 0) fail("{} must be a positive integer", a);
        return v;
      };
      if (a == "--child") o.child = true;
      else if (a == "--dro") o.dro = true, pass += " --dro";
      else if (a == "--ranks") o.ranks = num();
      else if (a == "--threads") o.threads = num();
      else if (a == "--rounds") o.rounds = num();
      else if (a == "--steps") o.steps = num(), pass += fmt::format(" {} {}", a, o.steps);
      else if (a == "--batch") o.batch = num(), pass += fmt::format(" {} {}", a, o.batch);
      else if (a == "--seq") o.seq = num(), pass += fmt::format(" {} {}", a, o.seq);
      else if (a == "--accum") o.accum = num(), pass += fmt::format(" {} {}", a, o.accum);
      else fail("unknown option {}", a);
    }
    if (o.child) return child(o);
    if (o.threads % o.ranks) fail("--threads {} is not a multiple of --ranks {}", o.threads, o.ranks);
    const std::string self = argv[0];
    auto launch = [&](int n, int threads) {
      const std::string cmd = fmt::format(
          "mpirun --oversubscribe --allow-run-as-root --bind-to none -x OMP_NUM_THREADS={} -np {} {} --child{}",
          threads, n, self, pass);
      const std::string out = bench::run_command(cmd);
      const auto j = nlohmann::json::parse(out.substr(out.find('{')), nullptr, false);
      if (out.find('{') == std::string::npos || j.is_discarded()) fail("no result from: {}\n{}", cmd, out);
      return j;
    };
    std::vector<double> one, many, share;
    for (int r = 0; r < o.rounds; ++r) {
      one.push_back(launch(1, o.threads).at("ms").get<double>());
      const auto j = launch(o.ranks, o.threads / o.ranks);
      many.push_back(j.at("ms").get<double>());
      share.push_back(j.at("comm_share").get<double>());
    }
    const double a = bench::median(one), b = bench::median(many);
    fmt::print("{} step, cpu-bench fp32, global batch {} x {} x {} tokens, {} steps x {} rounds\n",
               o.dro ? "DRO" : "train", o.accum, o.batch, o.seq, o.steps, o.rounds);
    fmt::print("  1 rank  x {} threads: {:9.1f} ms/step (median)\n", o.threads, a);
    fmt::print("  {} ranks x {} threads: {:9.1f} ms/step (median), communication {:.1f} % of the step\n", o.ranks,
               o.threads / o.ranks, b, 100 * bench::median(share));
    fmt::print("  ratio {} ranks / 1 rank: {:.3f}\n", o.ranks, b / a);
    using Big = Model<presets::Doremi120M<float>>;
    fmt::print("  gradient sum per step: cpu-bench {:.1f} MB, doremi-120m {:.1f} MB (fp32)\n",
               double(M::layout().total) * 4 / 1e6, double(Big::layout().total) * 4 / 1e6);
    return 0;
  });
}
