// The downstream task harness (eval/downstream.hpp) against references no one
// here wrote: numpy's permutation and datasets' shuffle, Python's str.strip /
// lower / bytes.decode("replace"), transformers' clean-up and decoding, and a
// Python twin of the public DoReMi protocol (tests/python/downstream_twin.py)
// run on task folders that the real `datasets` library writes in each task's
// real schema (tests/python/make_task_folders.py).
#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "doremi/core/json.hpp"
#include "doremi/core/numpy_random.hpp"
#include "doremi/data/arrow_text.hpp"
#include "doremi/eval/downstream.hpp"
#include "doremi/eval/task_text.hpp"
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

// Runs downstream_reference.py with arguments that name its output file.
void run_reference_to_file(const std::string& args) {
  REQUIRE(test::run_python_script("downstream_reference.py", args) == 0);
}

nlohmann::json run_reference(const std::string& args) {
  std::string out;
  REQUIRE(test::run_python_script_capture("downstream_reference.py", args, out) == 0);
  return parse_json_text(out, "downstream_reference.py output");
}

}  // namespace

TEST_CASE("numpy_permutation equals numpy's default_rng(seed).permutation(n) and datasets' shuffle") {
  // Fixed values (numpy 1.24), so the test means something without python too.
  CHECK(numpy_permutation(42, 10) == std::vector<std::uint64_t>{5, 6, 0, 7, 3, 2, 4, 9, 1, 8});
  CHECK(numpy_permutation(1ull << 63, 7) == std::vector<std::uint64_t>{2, 4, 1, 6, 0, 3, 5});
  if (!test::python_has("numpy, datasets")) return;
  const auto ref = run_reference("permutations");
  std::size_t compared = 0;
  for (const auto& row : ref) {
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
  const std::vector<std::string> strings = {
      "", " ", "Paris", "  Paris.  ", " Mars! ", "\n Paris\nLondon", "Ludwig van Beethoven\n\nQuestion: x",
      "\u00a0\u3000Zürich\u2003", "\u0085x\u001c", "İSTANBUL", "ΟΔΥΣΣΕΥΣ", "ΣΙΣΥΦΟΣ ΣΑΣ", "Σ", "aΣ", "aΣb", "aΣ.",
      "a'Σ", "ÀÉÎÕÜ ÇÑ ß ẞ", "ǅungla ǈ", "Ⅻ ⓐⒶ", "𐐀𐐁 Deseret", "A\u0301Σ", "\"Hello,\" she said.",
      "it 's a dog , isn 't it ?", " n't 'm 's 've 're ' x", "don ' t", "  . ? ! , ", "1,000,000 $", "é\u0301",
      "tab\tsep\x0b\x0c\r end", "Ω Ωmega ωmega", "Kelvin \u212a", "ﬃ ﬁ", "\u1e9e\u00df", "mixed\nnew\rline",
      "A grinning face 😀!", "12.5%", "~`!@#$%^&*()_+-={}[]|\\:;\"'<>,.?/", "\u2028line\u2029para\u2028"};
  for (const auto& s : strings) REQUIRE(unicode::invalid_utf8_offset(s) == unicode::npos);
  // Fixed values.
  CHECK(postprocess_prediction(" Mars! \nmore") == "mars");
  CHECK(normalize_answer(" Mars! ") == "mars");
  CHECK(python::lower("İ") == "i\xCC\x87");
  CHECK(python::lower("ΣΑΣ") == "σας");
  CHECK(clean_up_tokenization("it 's here .") == "it's here.");
  if (!test::python_has("transformers")) return;
  test::TempDir dir("strings");
  test::write_bytes(dir.path / "in.json", nlohmann::json(strings).dump());
  run_reference_to_file(fmt::format("strings {} {}", (dir.path / "in.json").string(), (dir.path / "out.json").string()));
  const auto ref = read_json_file(dir.path / "out.json");
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
  if (!test::python_has("json")) return;
  test::TempDir dir("unicode");
  run_reference_to_file(fmt::format("unicode {}", (dir.path / "u.json").string()));
  const auto ref = read_json_file(dir.path / "u.json");
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

  // Lossy decoding: truncated, overlong, surrogate, out-of-range and stray bytes, and random byte strings.
  std::vector<std::vector<int>> cases = {
      {0xE2, 0x82}, {0xE2, 0x82, 0x41}, {0xF0, 0x9F, 0x98}, {0xC0, 0xAF}, {0xED, 0xA0, 0x80}, {0xF4, 0x90, 0x80, 0x80},
      {0xF5, 0x80}, {0x80, 0x80, 0x41}, {0xE0, 0x80, 0x80}, {0xF0, 0x80, 0x80, 0x80}, {0xC3}, {0xC3, 0xA9, 0xFF},
      {0x61, 0xF0, 0x9F, 0x98, 0x80, 0x62}};
  std::uint64_t state = 12345;
  for (int k = 0; k < 300; ++k) {
    std::vector<int> b;
    const int n = int(state % 9);
    for (int j = 0; j < n; ++j) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      const int r = int(state >> 59);  // 0..31: favour the interesting bytes
      static const int pick[] = {0x41, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC2, 0xDF, 0xE0, 0xE1,
                                 0xED, 0xEF, 0xF0, 0xF1, 0xF4, 0xF5, 0xFF, 0x20, 0xC3, 0xA9, 0xE2, 0x82,
                                 0xAC, 0xF0, 0x9F, 0x98, 0x80, 0x0A, 0x7F, 0x00};
      b.push_back(pick[r]);
    }
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    cases.push_back(b);
  }
  test::write_bytes(dir.path / "b.json", nlohmann::json(cases).dump());
  run_reference_to_file(fmt::format("lossy {} {}", (dir.path / "b.json").string(), (dir.path / "l.json").string()));
  const auto lossy = read_json_file(dir.path / "l.json");
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

// C++ reads `data` (arrow or JSONL); the twin reads the same rows from `twin_data` (arrow: load_from_disk).
void compare_with_twin(const fs::path& data, const fs::path& twin_data, const Tokenizer& tok, const std::string& tok_arg, int context,
                       int shots, std::optional<std::size_t> max_samples) {
  DownstreamOptions o;
  o.tasks = downstream_task_names();
  o.data_dir = data;
  o.shots = shots;
  o.max_samples = max_samples;
  o.batch_size = 3;
  ScriptedGenerate g{&tok, {}, 0, {}, {}};
  for (const auto& t : o.tasks)
    for (const auto& p : downstream_prompts(o, t)) g.answers.push_back(p.answers);
  std::vector<DownstreamPrediction> preds;
  const auto result = evaluate_downstream(
      o, tok, context, [&](const auto& p, int m) { return g(p, m); }, &preds, false);
  REQUIRE(preds.size() == g.outputs.size());
  // The continuations per task, for the twin.
  nlohmann::json cont = nlohmann::json::object();
  for (std::size_t i = 0; i < preds.size(); ++i) cont[preds[i].task].push_back(g.outputs[i]);
  test::TempDir dir("twin");
  test::write_bytes(dir.path / "cont.json", cont.dump());
  const std::string args =
      fmt::format("--data {} --tasks {} --tokenizer {} --context {} --shots {} {} --continuations {} --out {}",
                  twin_data.string(), fmt::join(o.tasks, ","), tok_arg, context, shots,
                  max_samples ? fmt::format("--max-samples {}", *max_samples) : "", (dir.path / "cont.json").string(),
                  (dir.path / "twin.json").string());
  REQUIRE(test::run_python_script("downstream_twin.py", args + " >/dev/null") == 0);
  const auto twin = read_json_file(dir.path / "twin.json");
  std::size_t k = 0, correct = 0;
  for (std::size_t t = 0; t < o.tasks.size(); ++t) {
    const auto& task = o.tasks[t];
    const auto& tt = twin["tasks"][task];
    INFO("task " << task);
    REQUIRE(tt["details"].size() == result.tasks[t].examples);
    CHECK(tt["correct"].get<std::size_t>() == result.tasks[t].correct);
    CHECK(tt["accuracy"].get<double>() == doctest::Approx(result.tasks[t].accuracy).epsilon(1e-12));
    for (const auto& d : tt["details"]) {
      INFO("example " << k);
      const auto& p = preds[k];
      CHECK(p.prompt == d["prompt"].get<std::string>());
      CHECK(g.prompts[k] == d["input_ids"].get<std::vector<std::int32_t>>());
      CHECK(p.answers == d["answers"].get<std::vector<std::string>>());
      CHECK(p.raw == d["raw"].get<std::string>());
      CHECK(p.processed == d["processed"].get<std::string>());
      CHECK(p.correct == d["correct"].get<bool>());
      correct += p.correct;
      ++k;
    }
  }
  CHECK(k == preds.size());
  CHECK(correct > 0);  // the scripted answers make some correct
  CHECK(correct < k);
  CHECK(twin["average"].get<double>() == doctest::Approx(result.average).epsilon(1e-12));
}

}  // namespace

TEST_CASE("prompts, truncation, decoding and accuracy equal the Python twin of the public protocol") {
  const fs::path* root = task_folders();
  if (!root || !test::python_has("transformers, datasets")) return;
  SUBCASE("byte tokenizer, 1 shot, arrow folders") {
    compare_with_twin(*root / "arrow", *root / "arrow", Tokenizer(ByteTokenizer{}), "bytes", 256, 1, std::nullopt);
  }
  SUBCASE("byte tokenizer, 0 shots, max_samples 4, JSONL") {
    compare_with_twin(*root / "jsonl", *root / "arrow", Tokenizer(ByteTokenizer{}), "bytes", 300, 0, 4);
  }
  SUBCASE("GPT-NeoX tokenizer, 1 shot") {
    if (!fs::exists(neox_dir() / "tokenizer.json")) {
      MESSAGE("skipped: no GPT-NeoX tokenizer fixture under " << neox_dir().string());
      return;
    }
    const auto tok = load_tokenizer(neox_dir().string());
    compare_with_twin(*root / "arrow", *root / "arrow", tok, neox_dir().string(), 128, 1, std::nullopt);
  }
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
