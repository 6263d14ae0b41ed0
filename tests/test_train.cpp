// Trainer: a tiny model learns real text (the loss ends well below the
// unigram entropy), and a run resumed from a checkpoint continues
// bit-identically; accumulation equals one big batch; failures are named.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>

#include "doremi/data/byte_tokenizer.hpp"
#include "doremi/data/window_sampler.hpp"
#include "doremi/doremi.hpp"
#include "doremi/train/trainer.hpp"
#include "test_util.hpp"

namespace {

using namespace doremi;
using Tiny = presets::Tiny<float>;

std::vector<std::int32_t> corpus() { return test::licenses_tokens(); }

TrainConfig small_config(long steps) {
  TrainConfig c;
  c.steps = steps;
  c.adam.lr = 3e-3;
  c.schedule.kind = LrSchedule::Kind::cosine;
  c.schedule.peak_lr = 3e-3;
  c.schedule.end_lr = 3e-4;
  c.schedule.warmup_steps = steps / 10;
  c.schedule.total_steps = steps;
  c.progress = false;
  return c;
}

}  // namespace

TEST_CASE("train: a tiny model's loss on real text ends well below the unigram entropy") {
  const auto tokens = corpus();
  std::map<std::int32_t, double> counts;
  for (auto t : tokens) counts[t] += 1;
  double unigram = 0;
  for (const auto& [_, c] : counts) unigram -= c / double(tokens.size()) * std::log(c / double(tokens.size()));

  Model<Tiny> model;
  model.init(1);
  WindowSampler sampler(tokens, 8, 64, 1);
  Trainer trainer(model, sampler, small_config(300));
  double first = 0, last = 0;
  trainer.run([&](const StepStats& s) {
    if (s.step == 1) first = s.loss;
    last = s.loss;
  });
  MESSAGE("unigram entropy ", unigram, " nats; loss ", first, " -> ", last);
  CHECK(first == doctest::Approx(std::log(double(Tiny::padded_vocab))).epsilon(0.05));
  CHECK(last < 0.75 * unigram);
}

TEST_CASE("train: resuming from a checkpoint continues bit-identically") {
  const auto tokens = corpus();
  test::TempDir dir("resume");
  std::vector<double> uninterrupted;
  std::vector<float> final_params;
  {
    Model<Tiny> model;
    model.init(3);
    WindowSampler sampler(tokens, 4, 32, 9);
    Trainer trainer(model, sampler, small_config(12));
    trainer.run([&](const StepStats& s) { uninterrupted.push_back(s.loss); });
    final_params.assign(model.parameters().begin(), model.parameters().end());
  }
  {  // the interrupted run: checkpoint at step 7, then it dies during step 9
    Model<Tiny> model;
    model.init(3);
    WindowSampler sampler(tokens, 4, 32, 9);
    auto cfg = small_config(12);
    cfg.output_dir = dir.path;
    cfg.checkpoint_every = 7;
    Trainer trainer(model, sampler, cfg);
    struct Killed {};
    CHECK_THROWS_AS(trainer.run([&](const StepStats& s) {
      CHECK(s.loss == uninterrupted[std::size_t(s.step - 1)]);
      if (s.step == 9) throw Killed{};
    }),
                    Killed);
  }
  Model<Tiny> model;
  model.init(12345);  // different weights: everything must come from the checkpoint
  WindowSampler sampler(tokens, 4, 32, 9);
  auto cfg = small_config(12);
  cfg.output_dir = dir.path;
  Trainer trainer(model, sampler, cfg);
  REQUIRE(trainer.resume_if_possible());
  CHECK(trainer.step() == 7);
  std::vector<double> resumed;
  trainer.run([&](const StepStats& s) { resumed.push_back(s.loss); });
  REQUIRE(resumed.size() == 5);
  for (std::size_t i = 0; i < resumed.size(); ++i) CHECK(resumed[i] == uninterrupted[7 + i]);
  CHECK(std::equal(final_params.begin(), final_params.end(), model.parameters().begin()));
  // The final checkpoint is there, loads, and metrics.jsonl lists steps 1..12 once.
  CHECK(std::filesystem::exists(dir.path / checkpoint_name(12) / "model.safetensors"));
  std::ifstream metrics(dir.path / "metrics.jsonl");
  std::string line;
  long expect = 1;
  while (std::getline(metrics, line)) CHECK(nlohmann::json::parse(line).at("step").get<long>() == expect++);
  CHECK(expect == 13);
}

TEST_CASE("train: k accumulated micro-batches equal one batch k times larger") {
  const auto tokens = corpus();
  Model<Tiny> a, b;
  a.init(4);
  b.init(4);
  WindowSampler big(tokens, 8, 32, 5);
  // The 2 micro-batches of 4 sequences hold the same windows as one batch of 8?
  // WindowSampler draws per (step, row), so instead compare gradients directly.
  const Batch batch = big.next();
  auto half = [&](int part) {
    Batch h;
    h.B = 4;
    h.T = 32;
    h.inputs.assign(batch.inputs.begin() + part * 128, batch.inputs.begin() + (part + 1) * 128);
    h.targets.assign(batch.targets.begin() + part * 128, batch.targets.begin() + (part + 1) * 128);
    return h;
  };
  a.zero_grad();
  a.forward(batch.inputs, batch.targets, 8, 32);
  a.backward(std::vector<float>(256, 1.0f / 256));
  b.zero_grad();
  for (int p = 0; p < 2; ++p) {
    const Batch h = half(p);
    b.forward(h.inputs, h.targets, 4, 32);
    b.backward(std::vector<float>(128, 1.0f / 256));
  }
  CHECK(test::relative_distance(b.gradients(), a.gradients()) < 1e-5);
}

TEST_CASE("train: a clipped step is clip_grad_norm then AdamW, bit for bit") {
  // The trainer applies the clipping factor in AdamW's reads of the gradients;
  // the result must be that of PyTorch's order (scale the buffer, then step).
  const auto tokens = corpus();
  Model<Tiny> a, b;
  a.init(6);
  b.init(6);
  WindowSampler sa(tokens, 4, 32, 9), sb(tokens, 4, 32, 9);
  TrainConfig c = small_config(2);
  c.max_grad_norm = 0.05;  // far below the first steps' norms
  Trainer trainer(a, sa, c);
  AdamW<float> adam(b.num_parameters(), c.adam);
  const auto groups = param_groups<Model<Tiny>>();
  for (long step = 0; step < 2; ++step) {
    const StepStats st = trainer.train_step();
    const Batch batch = sb.next();
    b.zero_grad();
    b.forward(batch.inputs, batch.targets, batch.B, batch.T);
    b.backward(std::vector<float>(batch.inputs.size(), 1.0f / float(batch.target_tokens())));
    const double norm = clip_grad_norm(b.gradients(), c.max_grad_norm);
    CHECK(norm == st.grad_norm);
    CHECK(norm > 10 * c.max_grad_norm);
    adam.step(b.parameters(), b.gradients(), groups, c.schedule.at(step));
    const auto pa = a.parameters(), pb = b.parameters();
    CHECK(std::equal(pa.begin(), pa.end(), pb.begin(), pb.end()));
  }
}

TEST_CASE("train: a diverging run stops with an error naming the step") {
  const auto tokens = corpus();
  Model<Tiny> model;
  model.init(1);
  model.parameters()[5] = std::numeric_limits<float>::quiet_NaN();  // embedding row of byte 0
  std::vector<std::int32_t> zeros(200, 0);
  WindowSampler sampler(zeros, 2, 16, 1);
  Trainer trainer(model, sampler, small_config(3));
  CHECK_THROWS_WITH_AS(trainer.train_step(), doctest::Contains("step 1"), Error);
}
