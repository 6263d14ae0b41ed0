// The doremi-120m preset on one GPU: a plain training step (forward, backward,
// clipping, AdamW: Trainer) and a DoReMi DRO step (reference forward, proxy
// forward, domain-weight update, weighted backward, clipping, AdamW:
// DROTrainer), beside a PyTorch twin of the same model on the same GPU
// (benchmarks/torch_gpu_twin.py: SDPA attention, bf16 autocast, torch.compile,
// fused AdamW, clip_grad_norm_ at 1.0). Prints tokens per second and model-FLOPs
// utilisation of both, and their ratio; then one layer's attention alone
// (forward + backward at the same shape) with each of our tensor-core kernel
// families beside PyTorch's scaled_dot_product_attention (FlashAttention on
// these GPUs), in ms and TFLOP/s, and the mma kernels at several tilings.
// Our steps run twice: as the library's default has them, then with GEMM
// tuning (cuBLASLt's candidate algorithms timed per GEMM shape; the table's
// "tuned" rows; --no-tuned skips it). --attention-only times one layer's
// attention alone and nothing else (gpu_check.sh --profile runs it under
// Nsight Compute for the attention kernels' hardware counters).
//
//   bench_gpu_step [--batch 16] [--seq 1024] [--accum 1] [--steps 20] [--warmup 3] [--device 0]
//                  [--domains 8] [--peak-tflops 989] [--python python3] [--no-twin] [--twin-args "--no-compile"]
//                  [--no-attention] [--no-tuned] [--attention-only]
//
// Ours: bf16 GEMM operands with fp32 accumulation and fp32 master weights
// (Config<bf16_matmul(doremi_120m), float>). A step takes --accum
// micro-batches of --batch x --seq tokens (the DRO step's exact accumulation
// against the twin's per-micro-batch update, as the public implementation
// does). Each step is timed on the host between two synchronisations of the
// backend's stream; the table gives the median of `steps` steps after
// `warmup` untimed ones. The twin runs after ours (our GPU memory freed
// first) as a subprocess; if it fails, ours are printed with the reason, and
// if ours fail, the twin still runs (exit status 1). The last line is the
// whole result as JSON. Built when DOREMI_CUDA is ON; benchmarks/gpu_check.sh
// builds it, runs the CUDA tests, then this. CI runs it under the CPU
// emulator on a small model (tests/cuda_emu/emu_bench_gpu_step.cpp).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <span>
#include <string>
#include <vector>

#include <cuda_runtime.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "bench_util.hpp"
#include "doremi/backend/cuda.hpp"
#include "doremi/doremi.hpp"

using namespace doremi;

namespace {

using bench::median;
using bench::run_command;

// bf16 GEMM operands, fp32 master weights. DOREMI_BENCH_GPU_SPEC: another
// preset (the emulator's smoke run of this program takes a small one).
#ifndef DOREMI_BENCH_GPU_SPEC
#define DOREMI_BENCH_GPU_SPEC presets::doremi_120m
#endif
using Cfg = Config<bf16_matmul(DOREMI_BENCH_GPU_SPEC), float>;
using GpuModel = Model<Cfg, backend::Cuda>;

struct Options {
  int batch = 16, seq = 1024, accum = 1, steps = 20, warmup = 3, device = 0, domains = 8;
  double peak_tflops = 989;  // dense bf16, H100 SXM (and H200: the same compute die)
  std::string python = "python3";
  std::string twin_args;
  bool twin = true;
  bool attention = true;  // also time one layer's attention alone
  bool run_steps = true;  // time our training and DRO steps (--attention-only: no)
  bool tuned = true;      // also time our steps with GEMM tuning (Cuda::set_gemm_tuning)
};

std::string tail_lines(const std::string& s, int n) {
  std::size_t pos = s.size();
  for (int i = 0; i <= n && pos > 0; ++i) pos = s.rfind('\n', pos - 1);
  return pos == std::string::npos || pos == 0 ? s : s.substr(pos + 1);
}

struct Timing {
  std::vector<double> times;  // seconds per timed step
  double loss_first = 0, loss_last = 0, ref_loss = 0;
  std::vector<double> alpha;
};

// One GEMM plan of a run: its shape (matmul.hpp's LtShape), calls, and with
// tuning the times per call of the heuristic's first algorithm and of the one kept.
struct GemmPlan {
  backend::cuda::LtShape shape{};
  std::int64_t calls = 0;
  int candidates = 0, chosen = 0;
  double first_ms = 0, chosen_ms = 0;
};

struct Ours {
  Timing train, dro;
  backend::cuda::LtPlanCounts gemms;  // which fused epilogues cuBLASLt took
  std::vector<GemmPlan> plans;
  bool gemm_tuning = false;           // whether the run tuned its GEMMs
};

// The same batch at every draw: the benchmark times the trainers' steps, not
// data loading (the twin's batch is fixed too).
struct FixedBatch {
  Batch batch;
  Batch next() const { return batch; }
};

// Both step kinds as the library's trainers take them (Trainer, then
// DROTrainer; AdamW, clipping at 1.0, the DRO update), on one proxy model;
// tune_gemms: with GEMM tuning (else as DOREMI_CUDA_GEMM_TUNING says).
Ours time_ours(const Options& o, bool tune_gemms = false) {
  const int B = o.batch, T = o.seq, k = o.domains;
  backend::Cuda gpu(o.device);
  if (tune_gemms) gpu.set_gemm_tuning(true);
  GpuModel proxy(gpu), reference(gpu);
  proxy.init(1);
  reference.init(2);

  FixedBatch data{{B, T, {}, {}, {}}};
  for (int i = 0; i < B * T; ++i) {
    data.batch.inputs.push_back(std::int32_t(Philox::below(Cfg::vocab, 1, 0, std::uint64_t(i))));
    data.batch.targets.push_back(std::int32_t(Philox::below(Cfg::vocab, 1, 1, std::uint64_t(i))));
  }
  for (int b = 0; b < B; ++b) data.batch.domain.push_back(b % k);  // round robin over the sequences

  TrainConfig tc;
  tc.steps = o.warmup + o.steps;
  tc.grad_accum = o.accum;
  tc.schedule = {.kind = LrSchedule::Kind::constant, .peak_lr = 1e-4};
  tc.progress = false;
  auto clock = [&] {
    gpu.synchronize();
    return std::chrono::steady_clock::now();
  };
  // Runs the trainer's steps, timing each; loss(s) is what the table reports of step s.
  auto time_steps = [&](auto& trainer, Timing& t, auto loss) {
    for (int s = 0; s < o.warmup + o.steps; ++s) {
      const auto t0 = clock();
      const StepStats st = trainer.train_step();
      const auto t1 = clock();
      if (s == 0) t.loss_first = loss(st);
      t.loss_last = loss(st);
      if (s >= o.warmup) t.times.push_back(std::chrono::duration<double>(t1 - t0).count());
    }
  };

  Ours r;
  {
    Trainer train(proxy, data, tc);
    time_steps(train, r.train, [](const StepStats& st) { return st.loss; });
  }
  std::vector<std::string> names;
  for (int i = 0; i < k; ++i) names.push_back(fmt::format("domain{}", i));
  const auto kz = std::size_t(k);
  DROTrainer dro(proxy, reference, data, tc,
                 DomainWeights(names, std::vector<double>(kz, 1.0), std::vector<double>(kz, 1.0),
                               DROTrainer<GpuModel, FixedBatch>::initial_score(), DroConfig{}));
  time_steps(dro, r.dro, [&](const StepStats& st) {
    r.dro.ref_loss = st.extra.at("reference_loss").get<double>();
    return st.extra.at("mean_loss").get<double>();
  });
  r.dro.alpha = dro.domain_weights().alpha();
  r.gemms = backend::cuda::lt_plan_counts(gpu);
  r.gemm_tuning = gpu.gemm_tuning();
  for (const auto& [key, plan] : gpu.ctx->lt_plans)
    r.plans.push_back({backend::cuda::lt_shape(key), plan->calls, plan->candidates, plan->chosen, plan->first_ms,
                       plan->chosen_ms});
  return r;
}  // GPU memory of both models and the optimiser freed here, before the twin runs

// The tuned run's GEMM plans, most time per step first: shape, calls per
// step (of both kinds), and the tuning's time per call and TFLOP/s for the
// heuristic's first algorithm and the one kept.
void print_gemm_plans(std::vector<GemmPlan> plans, int steps_per_kind) {
  const auto per_step = [&](const GemmPlan& p) { return double(p.calls) / (2.0 * steps_per_kind); };
  std::sort(plans.begin(), plans.end(), [&](const GemmPlan& a, const GemmPlan& b) {
    return per_step(a) * a.first_ms > per_step(b) * b.first_ms;
  });
  fmt::print("GEMM plans (cuBLASLt's column-major m x n x k; epilogue: 1 bias, 2 GELU, 4 GELU backward, 8 bias "
             "gradient), tuned run, by time per step:\n");
  fmt::print("  {:>22} {:>4} {:>10} {:>12} {:>8} {:>12} {:>8} {:>10}\n", "m x n x k", "epi", "calls/step",
             "first ms", "TFLOP/s", "kept ms", "TFLOP/s", "kept");
  for (const GemmPlan& p : plans) {
    const auto& [m, n, k, epilogue] = p.shape;
    const double flop = 2.0 * double(m) * double(n) * double(k);
    auto ms_cells = [&](double ms) {  // ms per call and TFLOP/s; "-" where not timed
      return ms > 0 ? fmt::format("{:>12.4f} {:>8.0f}", ms, flop / ms / 1e9) : fmt::format("{:>12} {:>8}", "-", "-");
    };
    fmt::print("  {:>22} {:>4} {:>10.1f} {} {} {:>10}\n", fmt::format("{} x {} x {}", m, n, k), epilogue,
               per_step(p), ms_cells(p.first_ms), ms_cells(p.chosen_ms),
               p.candidates ? fmt::format("{} of {}", p.chosen, p.candidates) : std::string("untuned"));
  }
}

// The median seconds of `steps` runs of f after `warmup` untimed ones, each
// timed on the host between two synchronisations of gpu's stream.
template <class F>
double median_seconds(const Options& o, const backend::Cuda& gpu, F&& f) {
  std::vector<double> times;
  for (int s = 0; s < o.warmup + o.steps; ++s) {
    gpu.synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    f();
    gpu.synchronize();
    if (s >= o.warmup) times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return median(times);
}

// N(0, 1) values rounded to bf16 on the device (q, k, v: softmax rows neither flat nor one-hot).
backend::cuda::DeviceBuffer<__nv_bfloat16> random_bf16(const backend::Cuda& gpu, std::size_t n, std::uint64_t stream) {
  namespace cu = backend::cuda;
  std::vector<float> h(n);
  for (std::size_t i = 0; i < n; ++i) h[i] = float(Philox::normal(7, stream, i));
  cu::DeviceBuffer<float> f(n);
  cu::copy_to_device(gpu, f.data(), h.data(), n);
  cu::DeviceBuffer<__nv_bfloat16> d(n);
  backend::convert(gpu, d.data(), static_cast<const float*>(f.data()), n);
  gpu.synchronize();
  return d;
}

// The rotary tables of the preset on the device (cos, sin).
struct DeviceRope {
  backend::cuda::DeviceBuffer<float> cos, sin;
};
DeviceRope device_rope(const backend::Cuda& gpu, int T) {
  namespace cu = backend::cuda;
  const auto rope = rotary_tables<float>(T, Cfg::rotary_dim, Cfg::rotary_base);
  DeviceRope r{cu::DeviceBuffer<float>(rope.cos.size()), cu::DeviceBuffer<float>(rope.sin.size())};
  cu::copy_to_device(gpu, r.cos.data(), rope.cos.data(), rope.cos.size());
  cu::copy_to_device(gpu, r.sin.data(), rope.sin.data(), rope.sin.size());
  return r;
}

// One layer's attention at the benchmark's shape (the preset's heads,
// --batch x --seq) on the GPU: random bf16 inputs (qkv, the output's gradient;
// from `seed`), the rotary tables, and bf16 buffers for the output and qkv's
// gradient. Both attention timers below start from it.
struct AttentionSetup {
  int B, T, C = Cfg::n_embd, H = Cfg::n_head, rot = Cfg::rotary_dim;
  std::size_t N;
  backend::Cuda gpu;
  backend::cuda::DeviceBuffer<__nv_bfloat16> qkv, dout;
  DeviceRope rope;
  backend::cuda::DeviceBuffer<__nv_bfloat16> out, dqkv;
  AttentionSetup(const Options& o, std::uint64_t seed)
      : B(o.batch), T(o.seq), N(std::size_t(B) * T), gpu(o.device), qkv(random_bf16(gpu, N * 3 * C, seed)),
        dout(random_bf16(gpu, N * C, seed + 1)), rope(device_rope(gpu, T)), out(N * C), dqkv(N * 3 * C) {}
};

// One layer's attention alone, as the model calls it (bf16 qkv in; rotary on
// the first rot dims; bf16 output, output gradient and qkv gradient; the
// backward's D pass): the median seconds of a forward + backward with the
// given tensor-core kernel family.
double time_attention(const Options& o, backend::cuda::AttentionTcKernels family) {
  namespace cu = backend::cuda;
  using bf16 = __nv_bfloat16;
  constexpr auto P = MatmulPrecision::bf16;
  AttentionSetup s(o, 0);
  const int B = s.B, T = s.T, C = s.C, H = s.H, rot = s.rot;
  const cu::AttentionTcKernels before = cu::attention_tc_kernels();
  cu::attention_tc_kernels() = family;
  const backend::Cuda& gpu = s.gpu;
  const DeviceRope& rope = s.rope;
  const auto &qkv = s.qkv, &dout = s.dout;
  auto &out = s.out, &dqkv = s.dqkv;
  cu::DeviceBuffer<float> qkvr(backend::attention_qkvr_size<P, float>(gpu, B, T, C, H));
  cu::DeviceBuffer<float> lse(backend::attention_state_size(gpu, B, H, T));
  const double t = median_seconds(o, gpu, [&] {
    backend::attention_forward<P, Cfg::head_dim>(gpu, out.data(), qkvr.data(), lse.data(), qkv.data(),
                                                 rope.cos.data(), rope.sin.data(), B, T, C, H, rot);
    backend::attention_backward<P, Cfg::head_dim>(gpu, dqkv.data(), dout.data(), static_cast<const bf16*>(out.data()),
                                                  static_cast<const float*>(qkvr.data()),
                                                  static_cast<const float*>(lse.data()), rope.cos.data(),
                                                  rope.sin.data(), B, T, C, H, rot);
  });
  cu::attention_tc_kernels() = before;
  return t;
}

// The mma attention kernels alone (forward, dK/dV, dQ; no rotary pass, no D
// pass) at several tilings (AttentionMmaTiles: rows per block, rows per warp
// in each kernel), the library's default first, so that one GPU run says
// which tiling to make the default. Each tiling's outputs are compared with
// the default's (the emulator tests hold them bit-identical; on a GPU the
// compiler's FMA contraction could differ by instantiation).
struct TilingTime {
  std::string name;
  int rows = 0, fwd_mt = 0, dq_mt = 0, dkv_mt = 0;
  double seconds = 0;
  double max_diff = 0;  // largest |difference| from the default's out, lse and dqkv (0: the same bits)
};
std::vector<TilingTime> time_mma_tilings(const Options& o) {
  namespace cu = backend::cuda;
  using bf16 = __nv_bfloat16;
  constexpr int HD = Cfg::head_dim;
  AttentionSetup s(o, 2);  // qkv stands for the rotated qkv the kernels read
  const int B = s.B, T = s.T, C = s.C, H = s.H, rot = s.rot;
  const backend::Cuda& gpu = s.gpu;
  const DeviceRope& rope = s.rope;
  const auto &qkvr = s.qkv, &dout = s.dout;
  auto &out = s.out, &dqkv = s.dqkv;
  cu::DeviceBuffer<float> Dv(std::size_t(B) * H * T, 0.1f), lse(std::size_t(B) * H * T);
  std::vector<bf16> first_out, first_dqkv;
  std::vector<float> first_lse;
  std::vector<TilingTime> r;
  // The kernels' types spelled as attention.hpp spells them (plain_t): nvcc's
  // host stubs spell a kernel by the alias of its first instantiation.
  using Bf = cu::plain_t<bf16>;
  auto run = [&]<class L>(L) {
    const double t = median_seconds(o, gpu, [&] {
      cu::attention_mma_forward_launch<L, Bf, Bf>(gpu, out.data(), lse.data(), qkvr.data(), B, T, C, H);
      cu::attention_mma_backward_launch<L, Bf, Bf>(gpu, dqkv.data(), dout.data(), qkvr.data(),
                                                   static_cast<const float*>(lse.data()),
                                                   static_cast<const float*>(Dv.data()), rope.cos.data(),
                                                   rope.sin.data(), B, T, C, H, rot);
    });
    std::vector<bf16> h_out(out.size()), h_dqkv(dqkv.size());
    std::vector<float> h_lse(lse.size());
    cu::copy_to_host(gpu, h_out.data(), out.data(), out.size());
    cu::copy_to_host(gpu, h_dqkv.data(), dqkv.data(), dqkv.size());
    cu::copy_to_host(gpu, h_lse.data(), lse.data(), lse.size());
    if (r.empty()) first_out = h_out, first_dqkv = h_dqkv, first_lse = h_lse;
    double diff = 0;
    for (std::size_t i = 0; i < h_out.size(); ++i)
      diff = std::max(diff, std::abs(double(float(h_out[i])) - double(float(first_out[i]))));
    for (std::size_t i = 0; i < h_dqkv.size(); ++i)
      diff = std::max(diff, std::abs(double(float(h_dqkv[i])) - double(float(first_dqkv[i]))));
    for (std::size_t i = 0; i < h_lse.size(); ++i)
      diff = std::max(diff, std::abs(double(h_lse[i]) - double(first_lse[i])));
    r.push_back({fmt::format("{} rows/block, rows/warp fwd {} dq {} dkv {}{}", L::rows, 16 * L::fwd_mt,
                             16 * L::dq_mt, 16 * L::dkv_mt, r.empty() ? " (default)" : ""),
                 L::rows, L::fwd_mt, L::dq_mt, L::dkv_mt, t, diff});
  };
  run(cu::AttentionMmaTiles<HD>{});
  if constexpr (HD == 64) {
    run(cu::AttentionMmaTiles<64, 128, 2, 2, 2>{});  // FlashAttention-2's forward: 4 warps of 32 rows
    run(cu::AttentionMmaTiles<64, 64, 1, 1, 1>{});   // 4 warps of 16 rows (more warps per SM)
    run(cu::AttentionMmaTiles<64, 128, 1, 1, 1>{});  // 8 warps of 16 rows
    run(cu::AttentionMmaTiles<64, 64, 2, 2, 1>{});   // dK/dV in 16-row warps (fewer registers)
  }
  return r;
}

// The twin's JSON line (null when it did not run; `why` says what happened).
nlohmann::json run_twin(const Options& o, std::string& why) {
  const std::string cmd =
      fmt::format("{} {}/torch_gpu_twin.py --batch {} --seq {} --accum {} --steps {} --warmup {} --domains {} {} 2>&1",
                  o.python, DOREMI_BENCH_DIR, o.batch, o.seq, o.accum, o.steps, o.warmup, o.domains, o.twin_args);
  fmt::print("running the PyTorch twin: {}\n", cmd);
  std::fflush(stdout);
  const auto t0 = std::chrono::steady_clock::now();
  const std::string out = run_command(cmd);
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::json peer;
  for (std::size_t pos = 0; pos < out.size();) {  // the last JSON object the twin printed
    const std::size_t end = out.find('\n', pos);
    const std::string line = out.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.is_object() && j.value("impl", "") == "pytorch") peer = j;
    if (end == std::string::npos) break;
    pos = end + 1;
  }
  if (peer.is_object() && peer.contains("error")) {
    why = peer.at("error").get<std::string>();
    return nullptr;
  }
  if (peer.is_null() || !peer.contains("train") || !peer.contains("dro")) {
    why = fmt::format("no result line from `{}`; its output ends:\n{}", cmd, tail_lines(out, 25));
    return nullptr;
  }
  fmt::print("PyTorch twin done in {:.0f} s (warm-up/compile {:.0f} s + {:.0f} s)\n", dt,
             peer["train"].value("warmup_s", 0.0), peer["dro"].value("warmup_s", 0.0));
  return peer;
}

std::string now_utc() {
  const std::time_t t = std::time(nullptr);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M UTC", std::gmtime(&t));
  return buf;
}

int run(const Options& o) {
  if (!backend::cuda_available()) {
    fmt::print(stderr, "bench_gpu_step: no usable CUDA device: {}\n", backend::cuda::unavailable_reason());
    return 1;
  }
  cudaDeviceProp prop{};
  DOREMI_CUDA_CHECK(cudaGetDeviceProperties(&prop, o.device));
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  const int B = o.batch, T = o.seq;
  const double tokens = double(B) * T * o.accum;
  const double fpt = bench::flops_per_token<Cfg>(T), fpt_dro = fpt * 4.0 / 3.0;
  const double peak = o.peak_tflops * 1e12;

  fmt::print("GPU {}: {} ({} SMs, {:.0f} GiB, compute capability {}.{}), driver {}.{}, runtime {}.{}; {}\n", o.device,
             prop.name, prop.multiProcessorCount, double(prop.totalGlobalMem) / double(1ull << 30), prop.major,
             prop.minor, driver / 1000, driver % 1000 / 10, runtime / 1000, runtime % 1000 / 10, now_utc());
  fmt::print("model {}: {} layers, width {}, {} heads, vocabulary {} (padded {}), rotary {:.0f} %, {} residual, "
             "{} embeddings; {} parameters\n",
             Cfg::name, Cfg::n_layer, Cfg::n_embd, Cfg::n_head, Cfg::vocab, Cfg::padded_vocab,
             100.0 * Cfg::spec.rotary_pct, Cfg::parallel_residual ? "parallel" : "sequential",
             Cfg::tied ? "tied" : "untied", GpuModel::layout().total);
  fmt::print("{} micro-batch{} of {} x {}: {} tokens per step; median of {} steps after {} warm-up steps\n", o.accum,
             o.accum == 1 ? "" : "es", B, T, tokens, o.steps, o.warmup);
  std::fflush(stdout);

  // Ours; on failure the twin still runs (its numbers are the baseline) and the exit status is 1.
  const auto t0 = std::chrono::steady_clock::now();
  Ours ours;
  std::string our_error;
  if (!o.run_steps) {
    our_error = "not run (--attention-only)";
  } else {
    try {
      ours = time_ours(o);
      fmt::print("doremi-cpp done in {:.0f} s; loss (fixed batch): training steps {:.3f} -> {:.3f}, DRO steps "
                 "{:.3f} -> {:.3f} (reference {:.3f}), domain weights after DRO [{:.3f}]\n",
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), ours.train.loss_first,
                 ours.train.loss_last, ours.dro.loss_first, ours.dro.loss_last, ours.dro.ref_loss,
                 fmt::join(ours.dro.alpha, ", "));
      const auto& g = ours.gemms;
      fmt::print("cuBLASLt: {} GEMM plans; bias epilogue found {}, refused {} (then a bias pass); GELU epilogue found "
                 "{}, refused {} (then a GELU pass); bias-gradient epilogue found {}, refused {} (then a column-sum "
                 "pass)\n",
                 g.plans, g.bias_found, g.bias_refused, g.gelu_found, g.gelu_refused, g.bgrad_found, g.bgrad_refused);
    } catch (const std::exception& e) {
      our_error = e.what();
      fmt::print("doremi-cpp FAILED: {}\n", our_error);
    }
  }
  std::fflush(stdout);

  // The same steps with GEMM tuning (cuBLASLt's candidates timed per GEMM shape on its first call).
  Ours tuned;
  std::string tuned_error = "not run (--no-tuned, or DOREMI_CUDA_GEMM_TUNING=1: the run above was tuned)";
  if (o.tuned && our_error.empty() && !ours.gemm_tuning) {
    try {
      tuned = time_ours(o, true);
      tuned_error.clear();
      const auto& g = tuned.gemms;
      fmt::print("GEMM tuning: {} of {} plans tuned (cuBLASLt offered more than one algorithm), {} kept another "
                 "than the heuristic's first{}\n",
                 g.tuned, g.plans, g.switched,
                 g.first_ms > 0 ? fmt::format("; by the tuning's timings the tuned plans' calls take {:.3f}x the "
                                              "time of the heuristic's first",
                                              g.chosen_ms / g.first_ms)
                                : std::string());
      print_gemm_plans(tuned.plans, o.warmup + o.steps);
    } catch (const std::exception& e) {
      tuned_error = e.what();
      fmt::print("doremi-cpp with GEMM tuning FAILED: {}\n", tuned_error);
    }
  }
  std::fflush(stdout);

  // One layer's attention alone, both tensor-core kernel families (the twin times SDPA beside them).
  double att_wmma = 0, att_mma = 0;
  std::vector<TilingTime> tilings;
  std::string att_error;
  try {
    if (o.attention) {
      att_wmma = time_attention(o, backend::cuda::AttentionTcKernels::wmma);
      att_mma = time_attention(o, backend::cuda::AttentionTcKernels::mma);
      tilings = time_mma_tilings(o);
    }
  } catch (const std::exception& e) {
    att_error = e.what();
    fmt::print("attention alone FAILED: {}\n", att_error);
  }
  std::fflush(stdout);

  std::string why;
  nlohmann::json peer;
  if (o.twin) {
    peer = run_twin(o, why);
    if (!peer.is_null())
      fmt::print("pytorch {}: {}, {}, {}, fused AdamW {}, loss (fixed batch): training {:.3f} -> {:.3f}, DRO "
                 "{:.3f} -> {:.3f}, peak memory {} GiB\n",
                 peer.value("torch", "?"), peer.value("attention", "?"), peer.value("precision", "?"),
                 peer.value("compile_note", "?"), peer.value("fused_adamw", false) ? "yes" : "no",
                 peer["train"].value("loss_first", 0.0), peer["train"].value("loss_last", 0.0),
                 peer["dro"].value("loss_first", 0.0), peer["dro"].value("loss_last", 0.0),
                 peer.value("max_memory_gib", 0.0));
    if (!peer.is_null() && peer.value("params", std::size_t(0)) != GpuModel::layout().total)
      fmt::print("WARNING: the twin has {} parameters, doremi-cpp {}: not the same model\n",
                 peer.value("params", std::size_t(0)), GpuModel::layout().total);
  } else {
    why = "--no-twin";
  }

  const bool ran = our_error.empty();
  const double ours_train = ran ? tokens / median(ours.train.times) : 0.0;
  const double ours_dro = ran ? tokens / median(ours.dro.times) : 0.0;
  const double mfu_train = ours_train * fpt / peak, mfu_dro = ours_dro * fpt_dro / peak;
  double theirs_train = 0, theirs_dro = 0;
  if (!peer.is_null()) {
    theirs_train = tokens / peer["train"].at("step_s_median").get<double>();
    theirs_dro = tokens / peer["dro"].at("step_s_median").get<double>();
  }

  const double tuned_train = tuned_error.empty() ? tokens / median(tuned.train.times) : 0.0;
  const double tuned_dro = tuned_error.empty() ? tokens / median(tuned.dro.times) : 0.0;
  fmt::print("\n=== {} on {}, B={} T={}{}, {} ===\n", Cfg::name, prop.name, B, T,
             o.accum == 1 ? std::string() : fmt::format(" x {} micro-batches", o.accum), now_utc());
  if (o.run_steps) {  // the step table (--attention-only: none)
    fmt::print("model FLOPs per token: training step 6*(12*L*C^2 + V*C) + 12*L*T*C = {:.1f} MFLOP "
               "(L={}, C={}, V={}, T={}); DRO step adds the reference forward (1/3 of that): {:.1f} MFLOP\n",
               fpt / 1e6, Cfg::n_layer, Cfg::n_embd, Cfg::padded_vocab, T, fpt_dro / 1e6);
    fmt::print("MFU against a bf16 dense peak of {:.0f} TFLOP/s (nominal; --peak-tflops)\n", o.peak_tflops);
    fmt::print("doremi-cpp attention: {} tensor-core kernels (DOREMI_CUDA_ATTENTION)\n",
               backend::cuda::attention_tc_kernels() == backend::cuda::AttentionTcKernels::mma ? "mma" : "wmma");
    fmt::print("{:<15} {:>14} {:>7} {:>9}   {:>14} {:>7} {:>9}   {:>6}\n", "", "doremi-cpp t/s", "MFU", "ms/step",
               "pytorch t/s", "MFU", "ms/step", "ratio");
    // "-" where a side did not run.
    auto cells = [&](double tps, double f) {
      if (!(tps > 0)) return fmt::format("{:>14} {:>7} {:>9}", "-", "-", "-");
      return fmt::format("{:>14.0f} {:>6.1f}% {:>9.2f}", tps, 100.0 * tps * f / peak, 1e3 * tokens / tps);
    };
    auto row = [&](const char* what, double a, double b, double f) {
      fmt::print("{:<15} {}   {}   {:>6}\n", what, cells(a, f), cells(b, f),
                 a > 0 && b > 0 ? fmt::format("{:.2f}x", a / b) : std::string("-"));
    };
    row("training step", ours_train, theirs_train, fpt);
    row("DRO step", ours_dro, theirs_dro, fpt_dro);
    if (tuned_error.empty()) {
      row("training, tuned", tuned_train, theirs_train, fpt);
      row("DRO, tuned", tuned_dro, theirs_dro, fpt_dro);
      fmt::print("(tuned: GEMM tuning, DOREMI_CUDA_GEMM_TUNING=1; training step {:.3f}x, DRO step {:.3f}x the "
                 "untuned tokens/s)\n",
                 ran ? tuned_train / ours_train : 0.0, ran ? tuned_dro / ours_dro : 0.0);
    }
    if (!ran) fmt::print("doremi-cpp: failed: {}\n", our_error);
    if (peer.is_null()) fmt::print("pytorch: not run: {}\n", why);
  }

  // Attention alone: FLOPs as FlashAttention counts them for a causal layer
  // (forward 2 products, backward 5, each half of the T×T square), not
  // counting our dQ kernel's recomputed S and dP.
  const double att_flops = 3.5 * 2.0 * B * Cfg::n_head * double(T) * T * Cfg::head_dim;
  const double att_sdpa =
      !peer.is_null() && peer.contains("attention_alone") ? peer["attention_alone"].value("step_s_median", 0.0) : 0.0;
  if (o.attention) {
    fmt::print("\nattention alone, one layer forward + backward (B={} H={} T={} hd={}, causal; ours with rotary and "
               "the D pass, SDPA without):\n",
               B, Cfg::n_head, T, Cfg::head_dim);
    auto att_row = [&](const char* what, double sec) {
      if (!(sec > 0)) return fmt::print("  {:<22} -\n", what);
      fmt::print("  {:<22} {:>8.3f} ms {:>7.1f} TFLOP/s{}\n", what, 1e3 * sec, att_flops / sec / 1e12,
                 att_sdpa > 0 ? fmt::format("   {:.2f}x SDPA's speed", att_sdpa / sec) : std::string());
    };
    att_row("doremi-cpp wmma", att_wmma);
    att_row("doremi-cpp mma", att_mma);
    att_row("pytorch SDPA", att_sdpa);
    if (!att_error.empty()) fmt::print("  doremi-cpp: failed: {}\n", att_error);
    if (!tilings.empty()) {
      fmt::print("mma kernels alone (no rotary, no D pass) by tiling (AttentionMmaTiles):\n");
      for (const TilingTime& t : tilings)
        fmt::print("  {:<52} {:>8.3f} ms {:>7.1f} TFLOP/s  {:.2f}x the default  {}\n", t.name, 1e3 * t.seconds,
                   att_flops / t.seconds / 1e12, tilings.front().seconds / t.seconds,
                   t.max_diff == 0 ? std::string("same bits")
                                   : fmt::format("differs from the default's by up to {:.2g}", t.max_diff));
    }
  }
  if (o.run_steps)
    fmt::print("goals (H100/H200): training-step MFU >= 45%: {}; training-step tokens/s >= 1.3x pytorch: {}\n",
               ran ? fmt::format("{} ({:.1f}%)", mfu_train >= 0.45 ? "met" : "NOT met", 100.0 * mfu_train)
                   : std::string("unknown (doremi-cpp failed)"),
               ran && theirs_train > 0
                   ? fmt::format("{} ({:.2f}x)", ours_train >= 1.3 * theirs_train ? "met" : "NOT met",
                                 ours_train / theirs_train)
                   : std::string("unknown"));

  // One machine-readable line for logs.
  nlohmann::json j = {{"bench", "bench_gpu_step"},
                      {"gpu", prop.name},
                      {"date", now_utc()},
                      {"batch", B},
                      {"accum", o.accum},
                      {"seq", T},
                      {"steps", o.steps},
                      {"peak_tflops", o.peak_tflops},
                      {"flops_per_token_train", fpt},
                      {"flops_per_token_dro", fpt_dro},
                      {"doremi", {{"train_tokens_per_s", ours_train}, {"train_mfu", mfu_train},
                                  {"dro_tokens_per_s", ours_dro}, {"dro_mfu", mfu_dro},
                                  {"train_step_s", ours.train.times}, {"dro_step_s", ours.dro.times}}},
                      {"doremi_tuned", tuned_error.empty()
                                           ? nlohmann::json{{"train_tokens_per_s", tuned_train},
                                                            {"dro_tokens_per_s", tuned_dro},
                                                            {"plans", tuned.gemms.plans},
                                                            {"tuned", tuned.gemms.tuned},
                                                            {"switched", tuned.gemms.switched}}
                                           : nlohmann::json{{"error", tuned_error}}},
                      {"attention_alone", {{"flops", att_flops}, {"wmma_s", att_wmma}, {"mma_s", att_mma},
                                           {"sdpa_s", att_sdpa}}}};
  for (const TilingTime& t : tilings)
    j["attention_alone"]["mma_tilings"].push_back({{"rows", t.rows}, {"fwd_mt", t.fwd_mt}, {"dq_mt", t.dq_mt},
                                                   {"dkv_mt", t.dkv_mt}, {"s", t.seconds},
                                                   {"max_diff", t.max_diff}});
  if (!ran) j["doremi"] = {{"error", our_error}};
  if (!peer.is_null())
    j["pytorch"] = {{"train_tokens_per_s", theirs_train}, {"train_mfu", theirs_train * fpt / peak},
                    {"dro_tokens_per_s", theirs_dro}, {"dro_mfu", theirs_dro * fpt_dro / peak}, {"twin", peer}};
  else
    j["pytorch"] = {{"error", why}};
  fmt::print("{}\n", j.dump());
  return (ran || !o.run_steps) && att_error.empty() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        fmt::print(stderr, "bench_gpu_step: {} needs a value\n", a);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--batch") o.batch = std::atoi(next().c_str());
    else if (a == "--seq") o.seq = std::atoi(next().c_str());
    else if (a == "--accum") o.accum = std::atoi(next().c_str());
    else if (a == "--steps") o.steps = std::max(1, std::atoi(next().c_str()));
    else if (a == "--warmup") o.warmup = std::max(0, std::atoi(next().c_str()));
    else if (a == "--device") o.device = std::atoi(next().c_str());
    else if (a == "--domains") o.domains = std::max(1, std::atoi(next().c_str()));
    else if (a == "--peak-tflops") o.peak_tflops = std::atof(next().c_str());
    else if (a == "--python") o.python = next();
    else if (a == "--twin-args") o.twin_args = next();
    else if (a == "--no-twin") o.twin = false;
    else if (a == "--no-attention") o.attention = false;
    else if (a == "--no-tuned") o.tuned = false;
    else if (a == "--attention-only") o.run_steps = o.twin = o.tuned = false, o.attention = true;
    else {
      fmt::print(stderr,
                 "usage: bench_gpu_step [--batch 16] [--seq 1024] [--accum 1] [--steps 20] [--warmup 3] [--device 0] "
                 "[--domains 8] [--peak-tflops 989] [--python python3] [--no-twin] [--twin-args ARGS] "
                 "[--no-attention] [--no-tuned] [--attention-only]\n");
      return a == "--help" || a == "-h" ? 0 : 2;
    }
  }
  if (o.batch <= 0 || o.accum <= 0 || o.seq <= 0 || o.seq > Cfg::n_ctx || !(o.peak_tflops > 0)) {
    fmt::print(stderr, "bench_gpu_step: need --batch > 0, --accum > 0, 0 < --seq <= {} and --peak-tflops > 0\n",
               Cfg::n_ctx);
    return 2;
  }
  try {
    return run(o);
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_gpu_step: {}\n", e.what());
    return 1;
  }
}
