// The downstream task harness (eval/downstream.hpp) against references no one
// here wrote: numpy's permutation and datasets' shuffle, Python's str.strip /
// lower / bytes.decode("replace"), transformers' clean-up and decoding, and a
// Python twin of the public DoReMi protocol (tests/python/downstream_twin.py)
// run on task folders that the real `datasets` library writes in each task's
// real schema (tests/python/make_task_folders.py).
#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "doremi/core/json.hpp"
#include "doremi/core/numpy_random.hpp"
#include "doremi/data/arrow_text.hpp"
#include "doremi/doremi.hpp"
#include "doremi/eval/downstream.hpp"
#include "doremi/eval/generate.hpp"
#include "doremi/eval/task_text.hpp"
#include "doremi/model/checkpoint.hpp"
#include "python_runner.hpp"
#include "test_util.hpp"

using namespace doremi;
namespace fs = std::filesystem;

namespace {

fs::path neox_dir() { return test::shared_dir() / "fixtures/tokenizers/gpt-neox-20b"; }

// The task folders, written once per test run by make_task_folders.py (nullptr when python lacks datasets).
const fs::path* task_folders() {
  static std::unique_ptr<test::TempDir> dir;
  static bool tried = false;
  if (!tried) {
    tried = true;
    if (!test::python_has("datasets")) return nullptr;
    auto d = std::make_unique<test::TempDir>("tasks");
    const int rc = test::run_python_script("make_task_folders.py", (d->path / "t").string() + " >/dev/null");
    REQUIRE(rc == 0);
    dir = std::move(d);
  }
  if (!dir) return nullptr;
  static const fs::path root = dir->path / "t";
  return &root;
}

// Tricky strings for strip / lower / post-processing / clean-up.
const std::vector<std::string>& tricky_strings() {
  static const std::vector<std::string> strings = {
      "", " ", "Paris", "  Paris.  ", " Mars! ", "\n Paris\nLondon", "Ludwig van Beethoven\n\nQuestion: x",
      "\u00a0\u3000Zürich\u2003", "\u0085x\u001c", "İSTANBUL", "ΟΔΥΣΣΕΥΣ", "ΣΙΣΥΦΟΣ ΣΑΣ", "Σ", "aΣ", "aΣb", "aΣ.",
      "a'Σ", "ÀÉÎÕÜ ÇÑ ß ẞ", "ǅungla ǈ", "Ⅻ ⓐⒶ", "𐐀𐐁 Deseret", "A\u0301Σ", "\"Hello,\" she said.",
      "it 's a dog , isn 't it ?", " n't 'm 's 've 're ' x", "don ' t", "  . ? ! , ", "1,000,000 $", "é\u0301",
      "tab\tsep\x0b\x0c\r end", "Ω Ωmega ωmega", "Kelvin \u212a", "ﬃ ﬁ", "\u1e9e\u00df", "mixed\nnew\rline",
      "A grinning face 😀!", "12.5%", "~`!@#$%^&*()_+-={}[]|\\:;\"'<>,.?/", "\u2028line\u2029para\u2028"};
  return strings;
}

// Byte strings for lossy decoding: truncated, overlong, surrogate, out-of-range and stray
// bytes, and pseudo-random strings of the interesting bytes.
const std::vector<std::vector<int>>& lossy_cases() {
  static const std::vector<std::vector<int>> cases = [] {
    std::vector<std::vector<int>> c = {
        {0xE2, 0x82}, {0xE2, 0x82, 0x41}, {0xF0, 0x9F, 0x98}, {0xC0, 0xAF}, {0xED, 0xA0, 0x80},
        {0xF4, 0x90, 0x80, 0x80}, {0xF5, 0x80}, {0x80, 0x80, 0x41}, {0xE0, 0x80, 0x80}, {0xF0, 0x80, 0x80, 0x80},
        {0xC3}, {0xC3, 0xA9, 0xFF}, {0x61, 0xF0, 0x9F, 0x98, 0x80, 0x62}};
    static const int pick[] = {0x41, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC2, 0xDF, 0xE0, 0xE1, 0xED, 0xEF, 0xF0, 0xF1,
                               0xF4, 0xF5, 0xFF, 0x20, 0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98, 0x80, 0x0A, 0x7F, 0x00};
    std::uint64_t state = 12345;
    auto next = [&] { return state = state * 6364136223846793005ull + 1442695040888963407ull; };
    for (int k = 0; k < 300; ++k) {
      std::vector<int> b(next() >> 61);  // 0-7 bytes
      for (int& x : b) x = pick[next() >> 59];
      c.push_back(b);
    }
    return c;
  }();
  return cases;
}

// downstream_reference.py's answers, computed once per test run (one python
// start for all of them); nullptr when python lacks numpy/datasets/transformers.
const fs::path* reference() {
  static std::unique_ptr<test::TempDir> dir;
  static bool tried = false;
  if (!tried) {
    tried = true;
    if (!test::python_has("numpy, datasets, transformers")) return nullptr;
    auto d = std::make_unique<test::TempDir>("ref");
    test::write_bytes(d->path / "strings.json", nlohmann::json(tricky_strings()).dump());
    test::write_bytes(d->path / "lossy.json", nlohmann::json(lossy_cases()).dump());
    REQUIRE(test::run_python_script("downstream_reference.py", "all " + d->path.string()) == 0);
    dir = std::move(d);
  }
  return dir ? &dir->path : nullptr;
}

}  // namespace

TEST_CASE("numpy_permutation equals numpy's default_rng(seed).permutation(n) and datasets' shuffle") {
  // Fixed values (numpy 1.24), so the test means something without python too.
  CHECK(numpy_permutation(42, 10) == std::vector<std::uint64_t>{5, 6, 0, 7, 3, 2, 4, 9, 1, 8});
  CHECK(numpy_permutation(1ull << 63, 7) == std::vector<std::uint64_t>{2, 4, 1, 6, 0, 3, 5});
  const fs::path* ref = reference();
  if (!ref) return;
  std::size_t compared = 0;
  for (const auto& row : read_json_file(*ref / "permutations.json")) {
    const auto seed = row[0].get<std::int64_t>() == -42 ? std::uint64_t(42) : row[0].get<std::uint64_t>();
    const auto n = row[1].get<std::size_t>();
    const auto expect = row[2].get<std::vector<std::uint64_t>>();
    INFO("seed " << seed << " n " << n);
    CHECK(numpy_permutation(seed, n) == expect);
    ++compared;
  }
  CHECK(compared > 2000);
}

TEST_CASE("strip, lower, post-processing, answer normalisation and clean-up equal Python's") {
  const auto& strings = tricky_strings();
  for (const auto& s : strings) REQUIRE(unicode::invalid_utf8_offset(s) == unicode::npos);
  // Fixed values.
  CHECK(postprocess_prediction(" Mars! \nmore") == "mars");
  CHECK(normalize_answer(" Mars! ") == "mars");
  CHECK(python::lower("İ") == "i\xCC\x87");
  CHECK(python::lower("ΣΑΣ") == "σας");
  CHECK(clean_up_tokenization("it 's here .") == "it's here.");
  const fs::path* ref_dir = reference();
  if (!ref_dir) return;
  const auto ref = read_json_file(*ref_dir / "strings.out.json");
  REQUIRE(ref.size() == strings.size());
  for (std::size_t i = 0; i < strings.size(); ++i) {
    INFO("string " << i << ": " << strings[i]);
    CHECK(python::strip(strings[i]) == ref[i]["strip"].get<std::string>());
    CHECK(python::lower(strings[i]) == ref[i]["lower"].get<std::string>());
    CHECK(postprocess_prediction(strings[i]) == ref[i]["post"].get<std::string>());
    CHECK(normalize_answer(strings[i]) == ref[i]["answer"].get<std::string>());
    CHECK(clean_up_tokenization(strings[i]) == ref[i]["clean"].get<std::string>());
  }
}

TEST_CASE("lower() of every code point and isspace() equal Python's; utf8_lossy equals bytes.decode(replace)") {
  const fs::path* ref_dir = reference();
  if (!ref_dir) return;
  const auto ref = read_json_file(*ref_dir / "unicode.json");
  std::map<char32_t, std::string> lower;
  for (const auto& [k, v] : ref["lower"].items()) lower[char32_t(std::stoul(k))] = v.get<std::string>();
  std::vector<char32_t> space;
  for (const auto& v : ref["space"]) space.push_back(char32_t(v.get<std::uint32_t>()));
  std::size_t lower_bad = 0, space_bad = 0;
  for (char32_t c = 0; c < 0x110000; ++c) {
    if (c >= 0xD800 && c <= 0xDFFF) continue;
    std::string s;
    unicode::append_utf8(s, c);
    const auto it = lower.find(c);
    const std::string expect = it == lower.end() ? s : it->second;
    if (python::lower(s) != expect && lower_bad++ < 10) CHECK_MESSAGE(false, "lower of U+" << std::hex << unsigned(c));
    const bool sp = std::find(space.begin(), space.end(), c) != space.end();
    if (python::isspace(c) != sp && space_bad++ < 10) CHECK_MESSAGE(false, "isspace of U+" << std::hex << unsigned(c));
  }
  CHECK(lower_bad == 0);
  CHECK(space_bad == 0);
  CHECK(lower.size() > 1400);

  const auto& cases = lossy_cases();
  const auto lossy = read_json_file(*ref_dir / "lossy.out.json");
  REQUIRE(lossy.size() == cases.size());
  for (std::size_t i = 0; i < cases.size(); ++i) {
    std::string s;
    for (int b : cases[i]) s.push_back(char(b));
    INFO("case " << i);
    CHECK(unicode::utf8_lossy(s) == lossy[i].get<std::string>());
  }
}

TEST_CASE("arrow_text reads strings, lists and struct fields of datasets folders; JSONL gives the same rows") {
  const fs::path* root = task_folders();
  if (!root) return;
  const auto a = *root / "arrow", j = *root / "jsonl";
  // trivia_qa: `answer` is a struct after two struct-of-list columns; validation is two shards.
  const auto tv = load_task_split(a / "trivia_qa", "trivia_qa", "validation", {"question", "answer.aliases"});
  REQUIRE(tv.rows() == 7);
  CHECK(tv.get(0, 1)[0] == "Which composer wrote the\n'Moonlight' Sonata?");
  CHECK(std::vector<std::string>(tv.get(1, 0).begin(), tv.get(1, 0).end()) ==
        std::vector<std::string>{"Mars", " Mars! "});
  const auto sq = load_task_split(a / "squad_v2", "squad_v2", "validation", {"title", "answers.text"});
  CHECK(sq.get(1, 2).empty());  // unanswerable
  CHECK(sq.get(1, 5).size() == 2);
  for (const auto& [task, split, fields] :
       std::vector<std::tuple<std::string, std::string, std::vector<std::string>>>{
           {"trivia_qa", "train", {"question", "answer.aliases", "answer.value"}},
           {"trivia_qa", "validation", {"question", "answer.aliases"}},
           {"natural_questions", "validation", {"question", "answers"}},
           {"web_questions", "test", {"question", "answers"}},
           {"lambada", "test", {"text"}},
           {"squad_v2", "validation", {"title", "context", "question", "answers.text"}}}) {
    INFO(task << " " << split);
    const auto x = load_task_split(a / task, task, split, fields), y = load_task_split(j / task, task, split, fields);
    REQUIRE(x.rows() == y.rows());
    for (std::size_t f = 0; f < fields.size(); ++f) {
      CHECK(x.columns[f].values == y.columns[f].values);
      CHECK(x.columns[f].offsets == y.columns[f].offsets);
    }
  }
  // Errors name the task, the file or folder, the split and the field.
  const auto bad = *root / "bad";
  auto e = test::error_of([&] { load_task_split(bad / "null_question/trivia_qa", "trivia_qa", "validation", {"question"}); });
  CHECK(test::contains(e, "trivia_qa"));
  CHECK(test::contains(e, "null in row 3"));
  CHECK(test::contains(e, "'question'"));
  e = test::error_of(
      [&] { load_task_split(bad / "missing_field/natural_questions", "natural_questions", "validation", {"answers"}); });
  CHECK(test::contains(e, "natural_questions"));
  CHECK(test::contains(e, "no column 'answers'"));
  CHECK(test::contains(e, "validation"));
  e = test::error_of([&] { load_task_split(bad / "missing_split/web_questions", "web_questions", "test", {"question"}); });
  CHECK(test::contains(e, "web_questions"));
  CHECK(test::contains(e, "no split 'test'"));
  e = test::error_of([&] { load_task_split(a / "trivia_qa", "trivia_qa", "validation", {"answer.nope"}); });
  CHECK(test::contains(e, "no field 'nope'"));
  e = test::error_of([&] { load_task_split(a / "trivia_qa", "trivia_qa", "validation", {"question_id.x"}); });
  CHECK(test::contains(e, "not a struct"));
  e = test::error_of([&] { load_task_split(a / "squad_v2", "squad_v2", "validation", {"answers.answer_start"}); });
  CHECK(test::contains(e, "not strings"));
  e = test::error_of([&] { load_task_split(j / "natural_questions", "natural_questions", "validation", {"nope"}); });
  CHECK(test::contains(e, "validation.jsonl line 1"));
  CHECK(test::contains(e, "missing field 'nope'"));
  e = test::error_of([&] { load_task_split(j / "natural_questions", "natural_questions", "test", {"question"}); });
  CHECK(test::contains(e, "split 'test' not found"));
}

namespace {

// Deterministic continuations that exercise decoding and matching: the first
// answer (correct), an upper-cased answer with punctuation after a space, ids
// with special tokens, ids outside the tokenizer, cut UTF-8 and tokenisation
// artefacts, and an immediate end-of-text.
struct ScriptedGenerate {
  const Tokenizer* tok;
  std::vector<std::vector<std::string>> answers;  // per example, over all tasks in order
  std::size_t next = 0;
  std::vector<std::vector<std::int32_t>> prompts, outputs;

  std::vector<std::vector<std::int32_t>> operator()(const std::vector<std::vector<std::int32_t>>& in, int max_new) {
    std::vector<std::vector<std::int32_t>> out;
    for (const auto& p : in) {
      const std::size_t i = next++;
      const auto& a = answers.at(i);
      std::vector<std::int32_t> ids;
      switch (i % 4) {
        case 0: ids = tok->encode(" " + (a.empty() ? std::string("x") : a.back()) + "\nQuestion: more"); break;
        case 1: ids = tok->encode(" " + python::lower(a.empty() ? std::string("y") : a[0]) + " !\n"); break;
        case 2:
          if (tok->is_bytes()) {
            ids = {0xE2, 0x82, ' ', 'i', 't', ' ', '\'', 's', ' ', '.', 0xC3};
          } else {
            ids = tok->encode(" it 's me , isn 't it ?");
            ids.insert(ids.begin() + 1, 1);       // <|padding|>: special, skipped
            ids.insert(ids.begin() + 2, 50300);   // beyond the tokenizer's 50277 ids: dropped as HF does
            const auto euro = tok->encode("€");   // cut in the middle
            ids.push_back(euro.front());
          }
          break;
        default: break;  // immediate end-of-text
      }
      if (ids.size() > std::size_t(max_new)) ids.resize(std::size_t(max_new));
      prompts.push_back(p);
      outputs.push_back(ids);
      out.push_back(ids);
    }
    return out;
  }
};

// One C++ evaluation and the twin job that must reproduce it.
struct Run {
  std::string name;
  DownstreamOptions options;
  DownstreamResult result;
  std::vector<DownstreamPrediction> preds;
  std::vector<std::vector<std::int32_t>> prompts, outputs;  // per prediction: the ids the model saw and returned
  std::int32_t eos = 0;
  std::vector<std::string> job;  // the twin's arguments
};

std::vector<std::string> twin_args(const fs::path& twin_data, const DownstreamOptions& o, const std::string& tok_arg,
                                   int context, const fs::path& out) {
  std::vector<std::string> a = {"--data", twin_data.string(), "--tasks", fmt::format("{}", fmt::join(o.tasks, ",")),
                                "--tokenizer", tok_arg, "--context", std::to_string(context), "--shots",
                                std::to_string(o.shots), "--out", out.string()};
  if (o.max_samples) a.insert(a.end(), {"--max-samples", std::to_string(*o.max_samples)});
  return a;
}

// Scripted continuations: C++ reads `data` (arrow or JSONL); the twin reads the same rows from `twin_data`
// (arrow, with load_from_disk) and is handed the same continuation ids.
Run scripted_run(const std::string& name, const fs::path& data, const fs::path& twin_data, const Tokenizer& tok,
                 const std::string& tok_arg, int context, int shots, std::optional<std::size_t> max_samples,
                 const fs::path& dir) {
  Run r;
  r.name = name;
  r.eos = tok.end_of_text_id();
  r.options.tasks = downstream_task_names();
  r.options.data_dir = data;
  r.options.shots = shots;
  r.options.max_samples = max_samples;
  r.options.batch_size = 3;
  ScriptedGenerate g{&tok, {}, 0, {}, {}};
  for (const auto& t : r.options.tasks)
    for (const auto& p : downstream_prompts(r.options, t)) g.answers.push_back(p.answers);
  r.result = evaluate_downstream(
      r.options, tok, context, [&](const auto& p, int m) { return g(p, m); }, &r.preds, false);
  r.prompts = g.prompts;
  r.outputs = g.outputs;
  nlohmann::json cont = nlohmann::json::object();
  for (std::size_t i = 0; i < r.preds.size(); ++i) cont[r.preds[i].task].push_back(r.outputs[i]);
  test::write_bytes(dir / (name + ".cont.json"), cont.dump());
  r.job = twin_args(twin_data, r.options, tok_arg, context, dir / (name + ".twin.json"));
  r.job.insert(r.job.end(), {"--continuations", (dir / (name + ".cont.json")).string()});
  return r;
}

constexpr Spec downstream_neox{.name = "downstream-neox", .n_layer = 2, .n_embd = 64, .n_head = 4, .n_ctx = 128,
                               .vocab = 50277, .vocab_multiple = 128, .rotary_pct = 0.25, .tied_embeddings = false,
                               .residual = Residual::parallel, .gelu = Gelu::exact};
using NeoxCfg = Config<downstream_neox, float>;

// A tiny random GPT-NeoX generating with generate(): a first pass finds its
// predictions; then every other evaluation example of trivia_qa,
// natural_questions and web_questions gets its first-pass prediction as an extra
// answer (in new task folders written by datasets), so the second pass, the one
// compared with transformers' generate in the twin, has correct answers.
Run model_run(const fs::path& root, const Tokenizer& tok, const fs::path& dir) {
  Run r;
  r.name = "model";
  r.eos = tok.end_of_text_id();
  static Model<NeoxCfg> m;  // ~13 MB of weights: static, not on the stack
  m.init(3);
  {  // weights scaled up so that logits are far from flat and greedy choices not near-ties
    std::vector<float> p(m.host_parameters().begin(), m.host_parameters().end());
    for (const TensorInfo& t : Model<NeoxCfg>::tensors())
      if (t.init == TensorInfo::Init::normal)
        for (std::size_t i = 0; i < t.size; ++i) p[t.offset + i] *= 4.0f;
    m.upload_parameters(p);
  }
  save_model(m, dir / "model");
  auto gen = [&](const std::vector<std::vector<std::int32_t>>& prompts, int max_new) {
    GenerationConfig g;
    g.max_new_tokens = max_new;
    g.eos_ids = {tok.end_of_text_id()};
    std::vector<std::vector<std::int32_t>> out;
    for (auto& row : generate(m, prompts, g)) out.push_back(std::move(row.tokens));
    r.prompts.insert(r.prompts.end(), prompts.begin(), prompts.end());
    r.outputs.insert(r.outputs.end(), out.begin(), out.end());
    return out;
  };
  r.options.tasks = {"trivia_qa", "natural_questions", "web_questions"};
  r.options.data_dir = root / "arrow";
  r.options.max_samples = 4;  // keeps the test short: the other runs cover every example
  std::vector<DownstreamPrediction> first;
  evaluate_downstream(r.options, tok, NeoxCfg::n_ctx, gen, &first, false);
  r.prompts.clear();
  r.outputs.clear();

  // The first pass's predictions as extra answers of every other example.
  const std::map<std::string, std::pair<std::string, std::vector<std::string>>> answer_field = {
      {"trivia_qa", {"validation", {"answer", "aliases"}}},
      {"natural_questions", {"validation", {"answers"}}},
      {"web_questions", {"test", {"answers"}}}};
  std::size_t k = 0;
  for (const auto& task : downstream_task_names()) {
    fs::create_directories(dir / "jsonl" / task);
    for (const auto& e : fs::directory_iterator(root / "jsonl" / task)) {
      const auto split = e.path().stem().string();
      const auto it = answer_field.find(task);
      if (it == answer_field.end() || it->second.first != split) {
        fs::copy_file(e.path(), dir / "jsonl" / task / e.path().filename());
        continue;
      }
      std::ifstream in(e.path());
      std::string line, out;
      for (std::size_t row = 0; std::getline(in, line); ++row) {
        auto j = parse_json_text(line, e.path().string());
        if (row % 2 == 0 && row < *r.options.max_samples && !first.at(k + row).processed.empty()) {
          const auto& p = first.at(k + row);
          REQUIRE(p.task == task);
          nlohmann::json* a = &j;
          for (const auto& key : it->second.second) a = &(*a)[key];
          a->push_back(p.processed);
        }
        out += j.dump() + "\n";
      }
      test::write_bytes(dir / "jsonl" / task / e.path().filename(), out);
    }
    while (k < first.size() && first[k].task == task) ++k;
  }
  REQUIRE(test::run_python_script("make_task_folders.py", fmt::format("--from-jsonl {} {} >/dev/null",
                                                                      (dir / "jsonl").string(),
                                                                      (dir / "arrow").string())) == 0);
  r.options.data_dir = dir / "arrow";
  r.options.tasks = downstream_task_names();
  r.result = evaluate_downstream(r.options, tok, NeoxCfg::n_ctx, gen, &r.preds, false);
  r.job = twin_args(dir / "arrow", r.options, neox_dir().string(), NeoxCfg::n_ctx, dir / "model.twin.json");
  r.job.insert(r.job.end(), {"--model", (dir / "model").string()});
  return r;
}

void check_run(const Run& r, const fs::path& dir) {
  INFO("run " << r.name);
  const auto twin = read_json_file(dir / (r.name + ".twin.json"));
  std::size_t k = 0, correct = 0;
  for (std::size_t t = 0; t < r.options.tasks.size(); ++t) {
    const auto& task = r.options.tasks[t];
    const auto& tt = twin["tasks"][task];
    INFO("task " << task);
    REQUIRE(tt["details"].size() == r.result.tasks[t].examples);
    CHECK(tt["correct"].get<std::size_t>() == r.result.tasks[t].correct);
    CHECK(tt["accuracy"].get<double>() == doctest::Approx(r.result.tasks[t].accuracy).epsilon(1e-12));
    for (const auto& d : tt["details"]) {
      INFO("example " << k);
      const auto& p = r.preds.at(k);
      CHECK(p.prompt == d["prompt"].get<std::string>());
      CHECK(r.prompts.at(k) == d["input_ids"].get<std::vector<std::int32_t>>());
      auto gen_ids = d["gen_ids"].get<std::vector<std::int32_t>>();
      if (!gen_ids.empty() && gen_ids.back() == r.eos) gen_ids.pop_back();  // generate() returns no eos
      CHECK(r.outputs.at(k) == gen_ids);
      CHECK(p.answers == d["answers"].get<std::vector<std::string>>());
      CHECK(p.raw == d["raw"].get<std::string>());
      CHECK(p.processed == d["processed"].get<std::string>());
      CHECK(p.correct == d["correct"].get<bool>());
      correct += p.correct;
      ++k;
    }
  }
  CHECK(k == r.preds.size());
  CHECK(correct > 0);  // the scripted or planted answers make some correct
  CHECK(correct < k);
  CHECK(twin["average"].get<double>() == doctest::Approx(r.result.average).epsilon(1e-12));
}

}  // namespace

TEST_CASE("prompts, ids, generation, decoding and accuracy equal the Python twin of the public protocol") {
  const fs::path* root = task_folders();
  if (!root || !test::python_has("torch, transformers, datasets")) return;
  test::TempDir dir("twin");
  std::vector<Run> runs;
  // The byte tokenizer: 1 shot on the datasets folders; 0 shots, 4 samples from the JSONL files.
  runs.push_back(scripted_run("bytes1", *root / "arrow", *root / "arrow", Tokenizer(ByteTokenizer{}), "bytes", 256, 1,
                              std::nullopt, dir.path));
  runs.push_back(scripted_run("bytes0", *root / "jsonl", *root / "arrow", Tokenizer(ByteTokenizer{}), "bytes", 300, 0,
                              4, dir.path));
  if (fs::exists(neox_dir() / "tokenizer.json")) {
    const auto tok = load_tokenizer(neox_dir().string());
    runs.push_back(scripted_run("neox1", *root / "arrow", *root / "arrow", tok, neox_dir().string(), 128, 1,
                                std::nullopt, dir.path));
    runs.push_back(model_run(*root, tok, dir.path));
  } else {
    MESSAGE("skipped the GPT-NeoX runs: no tokenizer fixture under " << neox_dir().string());
  }
  nlohmann::json jobs = nlohmann::json::array();
  for (const auto& r : runs) jobs.push_back(r.job);
  test::write_bytes(dir.path / "jobs.json", jobs.dump());
  REQUIRE(test::run_python_script("downstream_twin.py", "--jobs " + (dir.path / "jobs.json").string() +
                                                            " >/dev/null") == 0);
  for (const auto& r : runs) check_run(r, dir.path);
}

TEST_CASE("evaluate_downstream refuses bad options with a clear error") {
  const fs::path* root = task_folders();
  if (!root) return;
  const Tokenizer tok(ByteTokenizer{});
  GenerateFn none = [](const auto& p, int) { return std::vector<std::vector<std::int32_t>>(p.size()); };
  DownstreamOptions o;
  o.data_dir = *root / "arrow";
  CHECK(test::contains(test::error_of([&] { evaluate_downstream(o, tok, 64, none, nullptr, false); }), "no tasks"));
  o.tasks = {"hellaswag"};
  CHECK(test::contains(test::error_of([&] { evaluate_downstream(o, tok, 64, none, nullptr, false); }),
                       "unknown downstream task 'hellaswag'"));
  o.tasks = {"lambada"};
  CHECK(test::contains(test::error_of([&] { evaluate_downstream(o, tok, 20, none, nullptr, false); }),
                       "leaves no room"));
  o.shots = 4;  // lambada's few-shot split has 3 rows
  CHECK(test::contains(test::error_of([&] { evaluate_downstream(o, tok, 64, none, nullptr, false); }),
                       "4 shots need at least 4"));
  o.tasks = {"squad_v2"};
  o.shots = 2;
  CHECK(test::contains(test::error_of([&] { evaluate_downstream(o, tok, 64, none, nullptr, false); }),
                       "per-title pairing breaks"));
  o.shots = 1;
  GenerateFn too_long = [](const auto& p, int m) {
    return std::vector<std::vector<std::int32_t>>(p.size(), std::vector<std::int32_t>(std::size_t(m) + 1, 'a'));
  };
  CHECK(test::contains(test::error_of([&] { evaluate_downstream(o, tok, 64, too_long, nullptr, false); }),
                       "more than max_new_tokens"));
  o.data_dir = *root / "nowhere";
  CHECK(test::contains(test::error_of([&] { evaluate_downstream(o, tok, 64, none, nullptr, false); }),
                       "task squad_v2: folder"));
  // JSON shapes.
  DownstreamResult r;
  r.tasks.push_back({"lambada", 1, 4, 25.0});
  r.average = 25.0;
  CHECK(to_json(r).dump() ==
        R"({"average":25.0,"tasks":[{"accuracy":25.0,"correct":1,"examples":4,"task":"lambada"}]})");
}
