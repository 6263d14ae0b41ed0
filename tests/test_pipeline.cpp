// The pipeline end to end on a small corpus: reference, proxy, main and
// baseline models, iterated rounds, evaluation, outputs and report; a rerun
// skips finished stages; run configs are validated field by field.
#include <doctest/doctest.h>

#include <fstream>

#include "doremi/data/preprocess.hpp"
#include "doremi/data/tokenizer.hpp"
#include "doremi/pipeline/pipeline.hpp"
#include "test_corpus.hpp"
#include "test_util.hpp"

using namespace doremi;
namespace fs = std::filesystem;

namespace {

nlohmann::json run_config_json(const fs::path& data, const fs::path& out) {
  const nlohmann::json stage{{"steps", 12}, {"batch_size", 4}, {"lr", 3e-3}, {"schedule", "constant"}, {"warmup", 0.0}};
  return {{"data", data.string()}, {"output", out.string()}, {"preset", "tiny"}, {"seq_len", 32},
          {"reference_weights", "pack"}, {"reference", stage}, {"proxy", stage}, {"main", stage},
          {"rounds", 2}, {"eval_max_tokens", 2000}};
}

// Two small task folders in the JSONL form (eval/downstream.hpp): a
// LAMBADA-style last-word task and TriviaQA-style questions.
fs::path write_task_folders(const fs::path& dir) {
  const fs::path tasks = dir / "tasks";
  fs::create_directories(tasks / "lambada");
  fs::create_directories(tasks / "trivia_qa");
  auto write = [](const fs::path& f, const std::vector<nlohmann::json>& rows) {
    std::ofstream out(f);
    for (const auto& r : rows) out << r.dump() << "\n";
  };
  std::vector<nlohmann::json> text;
  for (int i = 0; i < 6; ++i) text.push_back({{"text", fmt::format("one two three four five six {}", i % 2 ? "seven" : "eight")}});
  write(tasks / "lambada" / "validation.jsonl", text);
  write(tasks / "lambada" / "test.jsonl", text);
  std::vector<nlohmann::json> qa;
  for (int i = 0; i < 5; ++i)
    qa.push_back({{"question", fmt::format("What follows {}?", i)}, {"answer", {{"aliases", {std::to_string(i + 1)}}}}});
  write(tasks / "trivia_qa" / "train.jsonl", qa);
  write(tasks / "trivia_qa" / "validation.jsonl", qa);
  return tasks;
}

}  // namespace

TEST_CASE("pipeline: two rounds, main and baseline models, outputs, and a rerun that skips finished stages") {
  test::TempDir dir("pipeline");
  const fs::path data = test::make_corpus(dir.path);
  const RunConfig cfg = RunConfig::from_json(run_config_json(data, dir.path / "run"), "test config");
  StagesFor<presets::Tiny<float>> tiny;
  const PipelineResult r = run_pipeline(cfg, tiny, tiny);
  REQUIRE(r.domains == std::vector<std::string>{"counting", "random", "repeat"});
  CHECK(r.round_weights.size() == 2);
  double sum = 0;
  for (double w : r.doremi_weights) sum += w;
  CHECK(sum == doctest::Approx(1.0));
  REQUIRE(r.doremi_perplexity);
  REQUIRE(r.baseline_perplexity);
  // The random domain is the hardest for both models.
  CHECK(r.baseline_perplexity->worst_domain == "random");
  for (const char* f : {"doremi_weights.json", "reference_weights.json", "summary.json", "report/report.html",
                        "round-2/proxy/avg_domain_weights.json", "round-2/reference/final/model.safetensors",
                        "main-doremi/perplexity.json", "main-baseline/final/config.json"})
    CHECK_MESSAGE(fs::exists(cfg.output / f), f);
  // The output is usable as the next stage's input.
  const DomainConfig dc = read_domain_config(cfg.output / "doremi_weights.json");
  CHECK(dc.train.weights_for(r.domains, "x")[1] == doctest::Approx(r.doremi_weights[1]));
  // Round 2's reference was trained on round 1's output weights.
  const auto done = read_json_file(cfg.output / "round-2/reference/done.json");
  CHECK(done.at("weights").get<std::vector<double>>() == r.round_weights[0]);
  // A rerun finds every stage done and gives the same answer.
  const PipelineResult again = run_pipeline(cfg, tiny, tiny);
  CHECK(again.doremi_weights == r.doremi_weights);
  CHECK(again.doremi_perplexity->log_perplexity == r.doremi_perplexity->log_perplexity);
  // Without "downstream": no task results, no such figure, two checkpoints at most.
  CHECK_FALSE(fs::exists(cfg.output / "main-doremi" / "downstream.json"));
  CHECK(read_json_file(cfg.output / "summary.json").count("doremi_downstream") == 0);
  CHECK(test::read_bytes(cfg.output / "report/report.html").find("Downstream accuracy") == std::string::npos);
}

TEST_CASE("pipeline: with \"downstream\", every main-model checkpoint is evaluated, reused on a rerun, and drawn") {
  test::TempDir dir("pipeline-downstream");
  const fs::path data = test::make_corpus(dir.path);
  const fs::path tasks = write_task_folders(dir.path);
  nlohmann::json j = run_config_json(data, dir.path / "run");
  j["rounds"] = 1;
  j["main"]["checkpoint_every"] = 4;  // checkpoints at steps 4, 8 and 12: all kept
  j["downstream"] = {{"data", tasks.string()}, {"tokenizer", "bytes"}, {"tasks", {"lambada", "trivia_qa"}},
                     {"batch_size", 4}};
  const RunConfig cfg = RunConfig::from_json(j, "test config");
  StagesFor<presets::Tiny<float>> tiny;
  const PipelineResult r = run_pipeline(cfg, tiny, tiny);
  for (const char* stage : {"main-doremi", "main-baseline"}) {
    CAPTURE(stage);
    const fs::path sd = cfg.output / stage;
    CHECK(list_checkpoints(sd).size() == 3);
    const auto d = read_json_file(sd / "downstream.json");
    REQUIRE(d.at("checkpoints").size() == 3);  // final/ is checkpoint 12's model: not evaluated twice
    std::vector<long> steps;
    for (const auto& e : d.at("checkpoints")) {
      steps.push_back(e.at("step").get<long>());
      CHECK(e.at("tasks").at("lambada").at("examples") == 6);
      CHECK(e.at("tasks").at("trivia_qa").at("examples") == 5);
      const double a = e.at("tasks").at("lambada").at("accuracy"), b = e.at("tasks").at("trivia_qa").at("accuracy");
      CHECK(e.at("average").get<double>() == doctest::Approx((a + b) / 2));
    }
    CHECK(steps == std::vector<long>{4, 8, 12});
  }
  // The stage's results as evaluate_downstream gives them for the final model.
  const DownstreamResult direct = tiny.evaluate_downstream_checkpoint(downstream_options(*cfg.downstream),
                                                                      load_tokenizer("bytes"),
                                                                      cfg.output / "main-doremi/final", nullptr, false);
  CHECK(r.doremi_downstream.at("checkpoints").back().at("average").get<double>() == direct.average);
  const std::string html = test::read_bytes(cfg.output / "report/report.html");
  CHECK(html.find("Downstream accuracy over training") != std::string::npos);
  for (const char* f : {"downstream_lambada.svg", "downstream_trivia_qa.svg", "downstream_average.svg"})
    CHECK_MESSAGE(fs::exists(cfg.output / "report" / f), f);
  CHECK(read_json_file(cfg.output / "summary.json").at("baseline_downstream").size() == 3);

  // A rerun reuses the recorded results: a marked value survives.
  const fs::path file = cfg.output / "main-doremi/downstream.json";
  auto marked = read_json_file(file);
  marked["checkpoints"][0]["average"] = 123.5;
  write_file_atomic(file, marked.dump(2));
  run_pipeline(cfg, tiny, tiny);
  CHECK(read_json_file(file).at("checkpoints")[0].at("average").get<double>() == 123.5);
  // Other downstream settings: the models are reused (the run's fingerprint
  // leaves them out), the tasks evaluated again.
  j["downstream"]["max_samples"] = 3;
  const PipelineResult fewer = run_pipeline(RunConfig::from_json(j, "test config"), tiny, tiny);
  const auto d = read_json_file(file);
  CHECK(d.at("checkpoints")[0].at("average").get<double>() != 123.5);
  CHECK(d.at("checkpoints")[0].at("tasks").at("lambada").at("examples") == 3);
  CHECK(fewer.doremi_weights == r.doremi_weights);

  SUBCASE("bad downstream settings fail before any work, naming the field") {
    auto bad = j;
    bad["output"] = (dir.path / "other").string();
    bad["downstream"]["tasks"] = {"lambada", "trivia"};
    CHECK_THROWS_WITH_AS(RunConfig::from_json(bad, "cfg"), doctest::Contains("unknown task 'trivia'"), Error);
    bad["downstream"]["tasks"] = {"lambada", "squad_v2"};  // no such folder
    CHECK_THROWS_WITH_AS(run_pipeline(RunConfig::from_json(bad, "cfg"), tiny, tiny),
                         doctest::Contains("cfg: downstream: field 'tasks'"), Error);
    bad["downstream"]["tasks"] = {"lambada"};
    bad["downstream"]["data"] = (dir.path / "nowhere").string();
    CHECK_THROWS_WITH_AS(run_pipeline(RunConfig::from_json(bad, "cfg"), tiny, tiny),
                         doctest::Contains("cfg: downstream: field 'data'"), Error);
    CHECK_FALSE(fs::exists(dir.path / "other"));
    bad["downstream"].erase("tokenizer");
    CHECK_THROWS_WITH_AS(RunConfig::from_json(bad, "cfg"), doctest::Contains("'tokenizer'"), Error);
    bad["downstream"]["tokenizer"] = "bytes";
    bad["downstream"]["shot"] = 1;
    CHECK_THROWS_WITH_AS(RunConfig::from_json(bad, "cfg"), doctest::Contains("unknown field 'shot'"), Error);
  }
}

TEST_CASE("pipeline: run configs are checked field by field") {
  const nlohmann::json good = run_config_json("d", "o");
  CHECK_NOTHROW(RunConfig::from_json(good, "cfg"));
  auto bad = good;
  bad["stpes"] = 3;
  CHECK_THROWS_WITH_AS(RunConfig::from_json(bad, "cfg"), doctest::Contains("'stpes'"), Error);
  bad = good;
  bad["proxy"]["steps"] = -1;
  CHECK_THROWS_WITH_AS(RunConfig::from_json(bad, "cfg"), doctest::Contains("proxy"), Error);
  bad = good;
  bad["seq_len"] = "long";
  CHECK_THROWS_WITH_AS(RunConfig::from_json(bad, "cfg"), doctest::Contains("'seq_len'"), Error);
  bad = good;
  bad["main"]["schedule"] = "cosin";
  CHECK_THROWS_WITH_AS(RunConfig::from_json(bad, "cfg"), doctest::Contains("cosine"), Error);
  bad = good;
  bad.erase("data");
  CHECK_THROWS_WITH_AS(RunConfig::from_json(bad, "cfg"), doctest::Contains("'data'"), Error);
  bad = good;
  bad["proxy"]["eta"] = 0;
  CHECK_THROWS_AS(RunConfig::from_json(bad, "cfg"), Error);
  // The device: cpu by default, cuda or cuda:N; anything else names the field.
  CHECK(!RunConfig::from_json(good, "cfg").device.is_cuda());
  auto on_gpu = good;
  on_gpu["device"] = "cuda:1";
  const Device d = RunConfig::from_json(on_gpu, "cfg").device;
  CHECK((d.is_cuda() && d.index == 1 && d.str() == "cuda:1"));
  for (const char* wrong : {"gpu", "cuda:", "cuda:-1", "cuda:1x", "CPU"}) {
    bad = good;
    bad["device"] = wrong;
    CHECK_THROWS_WITH_AS(RunConfig::from_json(bad, "cfg"), doctest::Contains("field 'device'"), Error);
  }
  CHECK(Device::parse("cuda", "x").index == 0);
}

TEST_CASE("pipeline: the bundled Pile run config has the public 120M runs' settings") {
  const fs::path path = fs::path(DOREMI_SOURCE_DIR) / "examples" / "pile" / "pile-120m.json";
  const RunConfig c = RunConfig::from_json(read_json_file(path), path.string());
  CHECK(c.preset == "doremi-120m");
  CHECK(c.main_preset == "doremi-120m");
  CHECK(c.device.is_cuda());
  CHECK(c.seq_len == 1024);
  CHECK(c.reference_weights == "nopack");
  CHECK(c.epochs == "pile");
  CHECK(c.proxy_sampling == "uniform");
  CHECK(c.rounds == 1);
  for (const StageConfig* s : {&c.reference, &c.proxy, &c.main}) {
    CHECK(s->steps == 200000);
    CHECK(s->batch_size * s->grad_accum == 512);
    CHECK(s->lr == 1e-3);
    CHECK(s->end_lr == 1e-4);
    CHECK(s->warmup == 0.06);
    CHECK(s->schedule == "linear_warmup_exponential");
    CHECK(s->weight_decay == 0.01);
    CHECK(s->beta2 == 0.99);
    CHECK(s->max_grad_norm == 1.0);
  }
  CHECK(c.proxy.dro.eta == 1.0);
  CHECK(c.proxy.dro.smoothing == 1e-3);
  CHECK(dispatch_preset<float>(c.preset, []<class Cfg>() { return Cfg::name; }) == c.preset);  // a compiled preset
}

// (make_stages is this dispatch around StagesFor: the command-line program
// compiles every preset's stages through it, and tests/cli_smoke.sh runs it,
// the unknown preset's error included; all six here would double that compile.)
TEST_CASE("pipeline: presets are dispatched by name, and an unknown one's error lists them") {
  CHECK(dispatch_preset<float>("pythia-70m", []<class Cfg>() { return Cfg::name; }) == std::string_view("pythia-70m"));
  CHECK_THROWS_WITH_AS(dispatch_preset<float>("pythia-7b", []<class Cfg>() { return 0; }),
                       doctest::Contains("doremi-120m"), Error);
}
