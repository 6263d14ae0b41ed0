// Full training step (forward, backward, AdamW) of the cpu-bench preset at
// batch 4 × 256, side by side with a PyTorch twin of the same model in the
// same run. Prints tokens per second for both, their ratio, and the GFLOP/s
// achieved against the machine's fp32 peak.
//
//   bench_train_step [--steps 10] [--rounds 3] [--python /usr/bin/python3] [--peak-gflops X (default: measured)]
//
// PyTorch runs as a subprocess (benchmarks/torch_twin.py), with whatever BLAS
// the environment gives it (scripts/install_python_deps.sh prepares OpenBLAS).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <immintrin.h>
#include <omp.h>

#include "bench_util.hpp"
#include "doremi/doremi.hpp"
#include "doremi/optim/adamw.hpp"
#include "doremi/train/trainer.hpp"

using namespace doremi;

namespace {

using bench::median;
using bench::run_command;

// The fp32 FMA peak of this machine with all OpenMP threads, measured: twelve
// independent FMA chains per thread keep both FMA pipes busy.
double measure_fp32_peak_gflops() {
#if defined(__AVX512F__)
  using V = __m512;
  constexpr int lanes = 16;
  auto fma = [](V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); };
  auto set = [](float x) { return _mm512_set1_ps(x); };
  auto sum = [](V a) { return _mm512_reduce_add_ps(a); };
#else
  using V = __m256;
  constexpr int lanes = 8;
  auto fma = [](V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); };
  auto set = [](float x) { return _mm256_set1_ps(x); };
  auto sum = [](V a) { alignas(32) float f[8]; _mm256_store_ps(f, a); return f[0] + f[7]; };
#endif
  // One thread, best of five short runs (a busy neighbour only slows a run),
  // times the thread count.
  constexpr long iters = 4'000'000;
  double best = 0, sink = 0;
  for (int trial = 0; trial < 5; ++trial) {
    V acc[12];
    for (int i = 0; i < 12; ++i) acc[i] = set(1.0f + 1e-3f * float(i));
    const V b = set(0.9999999f), c = set(1e-7f);
    const auto t0 = std::chrono::steady_clock::now();
    for (long k = 0; k < iters; ++k)
      for (int i = 0; i < 12; ++i) acc[i] = fma(acc[i], b, c);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (int i = 0; i < 12; ++i) sink += sum(acc[i]);
    best = std::max(best, 2.0 * lanes * 12.0 * double(iters) / dt / 1e9);
  }
  if (sink == 42.0) std::puts("");  // keeps the loop from being optimised away
  return best * omp_get_max_threads();
}

// Step times (`steps` after two warm-up steps) of Model<Cfg> at B×T.
template <class Cfg>
std::vector<double> time_ours(int steps, int B, int T) {
  const int N = B * T;
  Model<Cfg> model;
  model.init(1);
  AdamW<float> adam(model.num_parameters(), AdamWConfig{});
  const auto groups = param_groups<Model<Cfg>>();
  std::vector<std::int32_t> in(N), tg(N);
  for (int i = 0; i < N; ++i) {
    in[i] = std::int32_t(Philox::below(Cfg::vocab, 1, 0, std::uint64_t(i)));
    tg[i] = std::int32_t(Philox::below(Cfg::vocab, 1, 1, std::uint64_t(i)));
  }
  const std::vector<float> w(N, 1.0f / N);
  std::vector<double> times;
  for (int s = 0; s < steps + 2; ++s) {
    const auto t0 = std::chrono::steady_clock::now();
    model.zero_grad();
    model.forward(in, tg, B, T);
    model.backward(w);
    adam.step(model.parameters(), model.gradients(), groups, 1e-4);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s >= 2) times.push_back(dt);
  }
  return times;
}

// The PyTorch twin's tokens/s and its JSON line (null when it did not run).
nlohmann::json run_twin(const std::string& python, int steps, const char* extra) {
  const std::string cmd = fmt::format("{} {}/torch_twin.py --steps {} --threads {} {} 2>&1", python,
                                      DOREMI_BENCH_DIR, steps, omp_get_max_threads(), extra);
  const std::string out = run_command(cmd);
  nlohmann::json peer;
  for (std::size_t pos = 0; pos < out.size();) {  // the last JSON line the twin printed
    const std::size_t end = out.find('\n', pos);
    const std::string line = out.substr(pos, end - pos);
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.is_object() && j.contains("tokens_per_s_median")) peer = j;
    if (end == std::string::npos) break;
    pos = end + 1;
  }
  if (peer.is_null()) fmt::print("pytorch twin did not run ({}):\n{}\n", cmd, out);
  return peer;
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 10, rounds = 3;
  std::string python = "/usr/bin/python3";
  double peak = 0;  // measured unless given
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--steps") steps = std::atoi(argv[i + 1]);
    else if (a == "--rounds") rounds = std::max(1, std::atoi(argv[i + 1]));
    else if (a == "--python") python = argv[i + 1];
    else if (a == "--peak-gflops") peak = std::atof(argv[i + 1]);
  }
  if (peak <= 0) peak = measure_fp32_peak_gflops();
  using Cfg = presets::CpuBench<float>;
  using CfgBf16 = Config<bf16_matmul(presets::cpu_bench), float>;
  constexpr int B = 4, T = 256;
  const double fpt = bench::flops_per_token<Cfg>(T);
  // Rounds alternate the four runs, so a busy spell on the shared machine
  // slows all of them rather than one: tokens/s from the median step over all
  // rounds (ours) and the median of the twin's per-run medians (PyTorch).
  std::vector<double> ours_t, ours_bf16_t, theirs_t, theirs_bf16_t;
  nlohmann::json peer;
  for (int round = 0; round < rounds; ++round) {
    for (double t : time_ours<Cfg>(steps, B, T)) ours_t.push_back(t);
    peer = run_twin(python, steps, "");
    for (double t : time_ours<CfgBf16>(steps, B, T)) ours_bf16_t.push_back(t);
    const nlohmann::json peer_bf16 = run_twin(python, steps, "--bf16");
    if (peer.is_null() || peer_bf16.is_null()) return 1;
    theirs_t.push_back(peer.at("step_s_median").get<double>());
    theirs_bf16_t.push_back(peer_bf16.at("step_s_median").get<double>());
  }
  const double N = B * T;
  const double ours = N / median(ours_t), ours_bf16 = N / median(ours_bf16_t);
  const double theirs = N / median(theirs_t), theirs_bf16 = N / median(theirs_bf16_t);

  fmt::print("cpu-bench, full training step (forward, backward, AdamW), B={} T={}, {} threads, {} rounds of {} steps\n",
             B, T, omp_get_max_threads(), rounds, steps);
  fmt::print("doremi-cpp: GEMM {}; pytorch {}: {}\n", backend::Cpu::gemm, peer.value("torch", "?"),
             peer.value("blas", "?"));
  fmt::print("{:<34} {:>12} {:>12} {:>7}   doremi-cpp GFLOP/s (share of the measured {:.0f} GFLOP/s fp32 peak)\n",
             "matrix products", "doremi-cpp", "pytorch", "ratio", peak);
  auto row = [&](const char* what, double a, double b) {
    fmt::print("{:<34} {:>8.0f} t/s {:>8.0f} t/s {:>6.2f}x   {:.1f} ({:.0f}%)\n", what, a, b, a / b, a * fpt / 1e9,
               100.0 * a * fpt / 1e9 / peak);
  };
  row("fp32 / fp32", ours, theirs);
  row("bf16 / bf16 (torch autocast)", ours_bf16, theirs_bf16);
  row("bf16 / fp32", ours_bf16, theirs);
  return 0;
}
