// doremi_dist_check: the data-parallel runs that tests/dist/dist_test.sh
// launches with mpirun at 1, 2 and 3 ranks and compares (tests/dist/README in
// the script's header). Modes:
//   prepare DIR                     the three-domain test corpus in DIR/data (one process)
//   train|dro DIR OUT [options]     trains the tiny preset on DIR/data; rank 0 writes OUT/result.json
//                                   (per-step loss, grad norm, α, ᾱ, scores), OUT/params.bin and the
//                                   trainer's files in OUT/run; every rank checks that all ranks
//                                   hold bit-identical parameters at the end
//       --steps N --accum K --batch B --lr X   (defaults 6, 3, 4, 2e-3)
//       --stop-after S     leave after S steps with a checkpoint (resume test)
//       --die RANK:STEP:throw|kill   that rank raises an error / SIGKILLs itself after STEP
//       --lr-on RANK:X     that rank uses another learning rate (consistency test)
//   eval DIR OUT                    rank 0 writes OUT/eval.json (validation split, untrained model)
//   compare A B [--rel R] [--param-rel P] [--exact]   (A/eval.json present: the evaluation reports)
//   compare-json FILE FILE [--rel R]  two JSON files' numbers
//                                   results A and B agree: α, ᾱ, scores, losses to R relative (1e-6),
//                                   parameters to P (relative L2 distance); --exact: bit for bit
#include <csignal>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "doremi/doremi.hpp"
#include "doremi/dist/world.hpp"
#include "../test_corpus.hpp"

namespace fs = std::filesystem;
using namespace doremi;
using Sampler = WeightedDomainSampler<AnySource>;

namespace {

struct Args {
  std::vector<std::string> pos;
  long steps = 6, stop_after = -1;
  int accum = 3, batch = 4;
  double lr = 2e-3;
  int die_rank = -1;
  long die_step = -1;
  std::string die_how;
  int lr_rank = -1;
  double lr_other = 0;
  double rel = 1e-6, param_rel = -1;
  bool exact = false;
  bool fp32 = false;  // the tiny preset in float (default: double, so 1e-6 checks see the algorithm, not float noise)
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) fail("{} needs a value", s);
      return argv[++i];
    };
    if (s == "--steps") a.steps = std::stol(val());
    else if (s == "--accum") a.accum = std::stoi(val());
    else if (s == "--batch") a.batch = std::stoi(val());
    else if (s == "--lr") a.lr = std::stod(val());
    else if (s == "--stop-after") a.stop_after = std::stol(val());
    else if (s == "--rel") a.rel = std::stod(val());
    else if (s == "--param-rel") a.param_rel = std::stod(val());
    else if (s == "--exact") a.exact = true;
    else if (s == "--fp32") a.fp32 = true;
    else if (s == "--die") {
      const std::string v = val();
      const auto c1 = v.find(':'), c2 = v.find(':', c1 + 1);
      a.die_rank = std::stoi(v.substr(0, c1));
      a.die_step = std::stol(v.substr(c1 + 1, c2 - c1 - 1));
      a.die_how = v.substr(c2 + 1);
    } else if (s == "--lr-on") {
      const std::string v = val();
      const auto c = v.find(':');
      a.lr_rank = std::stoi(v.substr(0, c));
      a.lr_other = std::stod(v.substr(c + 1));
    } else a.pos.push_back(s);
  }
  return a;
}

TrainConfig train_config(const Args& a, const fs::path& out) {
  TrainConfig c;
  c.steps = a.steps;
  c.grad_accum = a.accum;
  c.adam.lr = a.lr;
  c.schedule.kind = LrSchedule::Kind::constant;
  c.schedule.peak_lr = c.schedule.end_lr = (a.lr_rank == dist::world().rank() ? a.lr_other : a.lr);
  c.max_grad_norm = 0.5;  // small enough that clipping acts: the global norm must be global
  c.output_dir = out / "run";
  c.checkpoint_every = 0;
  c.progress = false;
  return c;
}

// Runs `trainer` (resuming from OUT/run when it holds a checkpoint) and writes the result.
template <class T, class M>
int drive(T& trainer, M& model, const Args& a, const fs::path& out, nlohmann::json extra_fn(T&)) {
  const dist::Comm& comm = dist::world();
  const bool resumed = trainer.resume_if_possible();
  nlohmann::json steps = nlohmann::json::array();
  auto on_step = [&](const StepStats& s) {
    steps.push_back({{"step", s.step}, {"loss", s.loss}, {"grad_norm", s.grad_norm}, {"extra", s.extra}});
    if (s.step == a.die_step && comm.rank() == a.die_rank) {
      if (a.die_how == "kill") std::raise(SIGKILL);
      fail("rank {} fails on purpose after step {} (test)", comm.rank(), s.step);
    }
  };
  if (a.stop_after > 0) {
    while (trainer.step() < a.stop_after) on_step(trainer.train_step());
    trainer.save_checkpoint();
  } else {
    trainer.run(on_step);
  }
  // Every rank holds the same parameters, bit for bit.
  const auto p = model.host_parameters();
  const std::uint64_t h = dist::fingerprint_bytes(std::span<const typename M::scalar>(p));
  const auto all = comm.all_gather(std::span<const std::uint64_t>(&h, 1));
  for (int r = 1; r < comm.size(); ++r)
    if (all[std::size_t(r)] != all[0]) fail("rank {} ends with other parameters than rank 0", r);
  if (comm.is_root()) {
    fs::create_directories(out);
    nlohmann::json res{{"ranks", comm.size()}, {"resumed", resumed}, {"final_step", trainer.step()},
                       {"steps", steps}, {"extra", extra_fn(trainer)}};
    write_file_atomic(out / "result.json", res.dump(1) + "\n");
    const std::vector<double> pd(p.begin(), p.end());
    write_file_atomic(out / "params.bin", std::string_view(reinterpret_cast<const char*>(pd.data()), pd.size() * 8));
  }
  return 0;
}

template <class Scalar>
int run_mode(const Args& a) {
  using M = Model<presets::Tiny<Scalar>>;
  const std::string mode = a.pos[0];
  const fs::path dir = a.pos.at(1), out = a.pos.at(2);
  DatasetFolder train = open_dataset_folder(dir / "data", "train");
  const std::size_t k = train.domains.size();
  const std::vector<double> uniform(k, 1.0);
  SamplerOptions so;
  Sampler sampler(train.domains, std::move(train.sources), {1.0, 2.0, 1.5}, a.batch, 32, 7, so);
  if (mode == "train") {
    M model;
    model.init(3);
    Trainer trainer(model, sampler, train_config(a, out));
    return drive<decltype(trainer), M>(trainer, model, a, out,
                                       [](decltype(trainer)&) { return nlohmann::json::object(); });
  }
  if (mode == "dro") {
    M model, ref;
    model.init(3);
    ref.init(4);
    DomainWeights dw(train.domains, uniform, {1.0, 2.0, 1.5}, DROTrainer<M, Sampler>::initial_score(),
                     DroConfig{1.0, 1e-3});
    DROTrainer trainer(model, ref, sampler, train_config(a, out), std::move(dw));
    return drive<decltype(trainer), M>(trainer, model, a, out, [](decltype(trainer)& t) {
      const auto& w = t.domain_weights();
      return nlohmann::json{{"alpha", w.alpha()}, {"avg_alpha", w.average()}, {"scores", w.scores()}};
    });
  }
  if (mode == "eval") {
    DatasetFolder val = open_dataset_folder(dir / "data", "validation");
    M model;
    model.init(3);
    const auto r = evaluate_perplexity(model, val.domains, val.sources, 24, 3, /*max_tokens_per_domain=*/200);
    const auto full = evaluate_perplexity(model, val.domains, val.sources, 32, 4);
    if (dist::world().is_root()) {
      fs::create_directories(out);
      write_file_atomic(out / "eval.json",
                        nlohmann::json{{"capped", r.to_json()}, {"full", full.to_json()}}.dump(1) + "\n");
    }
    return 0;
  }
  fail("unknown mode '{}'", mode);
}

// Relative agreement of two JSON trees' numbers (same shape).
void compare_json(const nlohmann::json& x, const nlohmann::json& y, double rel, bool exact, const std::string& where,
                  double& worst) {
  if (x.is_number() && y.is_number()) {
    const double a = x.get<double>(), b = y.get<double>();
    const double d = std::abs(a - b) / std::max(std::abs(b), 1e-300);
    if (exact ? a != b : d > rel) fail("{}: {} against {} (relative difference {:.3g})", where, a, b, d);
    worst = std::max(worst, a == b ? 0.0 : d);
    return;
  }
  if (x.type() != y.type() || x.size() != y.size()) fail("{}: the results differ in shape", where);
  if (x.is_array())
    for (std::size_t i = 0; i < x.size(); ++i)
      compare_json(x[i], y[i], rel, exact, fmt::format("{}[{}]", where, i), worst);
  else if (x.is_object())
    for (const auto& [key, v] : x.items())
      if (key != "ranks" && key != "resumed" && key != "domains")
        compare_json(v, y.at(key), rel, exact, where + "." + key, worst);
}

int compare(const Args& a) {
  const fs::path A = a.pos.at(1), B = a.pos.at(2);
  if (fs::exists(A / "eval.json")) {  // evaluation reports
    double worst = 0;
    compare_json(read_json_file(A / "eval.json"), read_json_file(B / "eval.json"), a.rel, a.exact, "eval", worst);
    fmt::print("{} vs {}: evaluation reports agree (worst relative {:.3g})\n", A.filename().string(),
               B.filename().string(), worst);
    return 0;
  }
  auto res = [](const fs::path& d) {
    nlohmann::json j = read_json_file(d / "result.json");
    // Only the steps both runs made (a resumed run logs the steps after its checkpoint).
    return j;
  };
  nlohmann::json x = res(A), y = res(B);
  auto tail = [](nlohmann::json steps, std::size_t n) {
    nlohmann::json t = nlohmann::json::array();
    for (std::size_t i = steps.size() - n; i < steps.size(); ++i) t.push_back(steps[i]);
    return t;
  };
  const std::size_t n = std::min(x["steps"].size(), y["steps"].size());
  double worst = 0;
  compare_json(tail(x["steps"], n), tail(y["steps"], n), a.rel, a.exact, "steps", worst);
  compare_json(x["extra"], y["extra"], a.rel, a.exact, "final", worst);
  if (x["final_step"] != y["final_step"]) fail("final steps {} and {}", x["final_step"].dump(), y["final_step"].dump());
  auto params = [](const fs::path& f) {
    std::ifstream in(f, std::ios::binary);
    std::vector<double> p;
    double v;
    while (in.read(reinterpret_cast<char*>(&v), sizeof v)) p.push_back(v);
    if (p.empty()) fail("{} holds no parameters", f.string());
    return p;
  };
  const auto p = params(A / "params.bin"), q = params(B / "params.bin");
  if (p.size() != q.size()) fail("parameter counts {} and {}", p.size(), q.size());
  double num = 0, den = 0, maxabs = 0;
  for (std::size_t i = 0; i < p.size(); ++i) {
    num += std::pow(double(p[i]) - q[i], 2);
    den += double(q[i]) * q[i];
    maxabs = std::max(maxabs, std::abs(double(p[i]) - q[i]));
  }
  const double dist_rel = std::sqrt(num / den);
  if (a.exact && num != 0) fail("parameters differ (relative L2 {:.3g}); expected bit for bit", dist_rel);
  if (!a.exact && a.param_rel >= 0 && dist_rel > a.param_rel)
    fail("parameters: relative L2 distance {:.3g} > {:.3g} (max |diff| {:.3g})", dist_rel, a.param_rel, maxabs);
  fmt::print("{} vs {}: {} steps agree (worst relative {:.3g}); parameters relative L2 {:.3g}, max |diff| {:.3g}\n",
             A.filename().string(), B.filename().string(), n, worst, dist_rel, maxabs);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return dist::guarded_main([&] {
    const Args a = parse(argc, argv);
    if (a.pos.empty()) fail("usage: doremi_dist_check prepare|train|dro|eval|compare ...");
    if (a.pos[0] == "compare") return compare(a);
    if (a.pos[0] == "compare-json") {  // two JSON files' numbers to --rel
      double worst = 0;
      compare_json(read_json_file(a.pos.at(1)), read_json_file(a.pos.at(2)), a.rel, a.exact, "json", worst);
      fmt::print("{} vs {}: agree (worst relative {:.3g})\n", a.pos[1], a.pos[2], worst);
      return 0;
    }
    if (a.pos[0] == "prepare") {
      fs::create_directories(a.pos.at(1));
      test::make_corpus(a.pos.at(1));
      return 0;
    }
    dist::world();  // MPI up before anything else
    return a.fp32 ? run_mode<float>(a) : run_mode<double>(a);
  });
}
