#pragma once
// One-shot (k-shot) downstream evaluation reproducing the public DoReMi
// protocol (doremi/eval_datasets.py and evaluate_fewshot in doremi/trainer.py):
// trivia_qa, natural_questions, web_questions, lambada, squad_v2. Templates,
// few-shot selection, truncation, decoding, post-processing and exact match
// are described task by task in docs/downstream.md, with every deliberate
// difference from the public code.
//
//   DownstreamOptions o;  o.tasks = {"trivia_qa", "lambada"};  o.data_dir = "tasks";
//   auto result = evaluate_downstream(o, tokenizer, Cfg::n_ctx,
//       [&](const auto& prompts, int max_new) { ... greedy ids, eos excluded ... });
//   result.tasks[0].accuracy;  result.average;  to_json(result);
//
// Data: data_dir/<task>/ is a DatasetDict folder written by save_to_disk
// (dataset_dict.json + one folder per split) or holds <split>.jsonl files with
// the same fields. Missing tasks, splits, fields and rows with nulls are a
// doremi::Error naming the task, file, split and field.
//
// Invariants: prompts are the public code's strings byte for byte; the model
// sees the last (context - max_new_tokens) tokens of the prompt encoded
// without special tokens; a continuation is decoded with special tokens
// skipped, invalid UTF-8 replaced and transformers' clean-up applied;
// accuracy = 100 * correct / examples and the average is over tasks.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "doremi/core/error.hpp"
#include "doremi/core/json.hpp"
#include "doremi/core/numpy_random.hpp"
#include "doremi/core/progress.hpp"
#include "doremi/data/arrow_text.hpp"
#include "doremi/data/tokenizer.hpp"
#include "doremi/eval/task_text.hpp"

namespace doremi {

// Greedy continuation of each prompt, at most max_new_tokens tokens, stopping
// at end-of-text (the id excluded). The CLI wires it to generate(); tests may
// wire it to anything.
using GenerateFn = std::function<std::vector<std::vector<std::int32_t>>(
    const std::vector<std::vector<std::int32_t>>& prompts, int max_new_tokens)>;

struct DownstreamOptions {
  std::vector<std::string> tasks;          // trivia_qa, natural_questions, web_questions, lambada, squad_v2
  std::filesystem::path data_dir;          // data_dir/<task>/: a save_to_disk DatasetDict folder or <split>.jsonl
  int shots = 1;                           // >= 0
  std::optional<std::size_t> max_samples;  // the first N evaluation examples (after any pairing); all when fewer
  std::uint64_t seed = 42;                 // the public code's default
  int max_new_tokens = 20;
  int batch_size = 16;  // prompts handed to GenerateFn at once
};
struct TaskResult {
  std::string task;
  std::size_t correct = 0, examples = 0;
  double accuracy = 0;  // percent
};
struct DownstreamResult {
  std::vector<TaskResult> tasks;
  double average = 0;  // average of the tasks' accuracies
};
struct DownstreamPrediction {
  std::string task, prompt, raw, processed;  // prompt: the whole prompt (before truncation)
  std::vector<std::string> answers;          // as the data lists them (compared after normalize_answer)
  bool correct = false;
};

inline nlohmann::json to_json(const TaskResult& r) {
  return {{"task", r.task}, {"correct", r.correct}, {"examples", r.examples}, {"accuracy", r.accuracy}};
}
inline nlohmann::json to_json(const DownstreamResult& r) {
  nlohmann::json tasks = nlohmann::json::array();
  for (const auto& t : r.tasks) tasks.push_back(to_json(t));
  return {{"tasks", tasks}, {"average", r.average}};
}
inline nlohmann::json to_json(const DownstreamPrediction& p) {
  return {{"task", p.task},       {"prompt", p.prompt},   {"raw", p.raw},
          {"processed", p.processed}, {"answers", p.answers}, {"correct", p.correct}};
}

// The task names evaluate_downstream knows, in the public code's order.
inline const std::vector<std::string>& downstream_task_names() {
  static const std::vector<std::string> names = {"trivia_qa", "natural_questions", "web_questions", "lambada",
                                                 "squad_v2"};
  return names;
}

// The fields of one split of a task: columns[f] holds field f's strings per row.
struct TaskSplit {
  std::string task, split, source;  // source: the folder or file read
  std::vector<std::string> fields;
  std::vector<TextColumn> columns;
  std::size_t rows() const { return columns.empty() ? 0 : columns[0].rows(); }
  std::span<const std::string> get(std::size_t field, std::size_t row) const { return columns[field].row(row); }
};

namespace downstream_detail {

// Field f of a JSONL row: a string (one value) or a list of strings; '.' walks into objects.
inline void jsonl_field(const nlohmann::json& row, const std::string& path, const std::string& where,
                        TextColumn& out) {
  const nlohmann::json* v = &row;
  std::size_t a = 0;
  for (;;) {
    const auto b = path.find('.', a);
    const std::string key = path.substr(a, b == std::string::npos ? std::string::npos : b - a);
    if (!v->is_object() || !v->contains(key))
      fail("{}: missing field '{}' (reading '{}')", where, key, path);
    v = &(*v)[key];
    if (b == std::string::npos) break;
    a = b + 1;
  }
  if (v->is_string()) {
    out.values.push_back(v->get<std::string>());
  } else if (v->is_array()) {
    for (const auto& e : *v) {
      if (!e.is_string()) fail("{}: field '{}' is {}, expected a list of strings", where, path, detail::json_excerpt(*v));
      out.values.push_back(e.get<std::string>());
    }
  } else {
    fail("{}: field '{}' is {}, expected a string or a list of strings", where, path, detail::json_excerpt(*v));
  }
  out.end_row();
}

}  // namespace downstream_detail

// Reads `fields` of split `split` of task folder `dir` (see the top of this file).
inline TaskSplit load_task_split(const std::filesystem::path& dir, const std::string& task, const std::string& split,
                                 const std::vector<std::string>& fields) {
  namespace fs = std::filesystem;
  TaskSplit out;
  out.task = task;
  out.split = split;
  out.fields = fields;
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    fail("task {}: folder {} does not exist (expected a datasets save_to_disk folder or <split>.jsonl files)", task,
         dir.string());
  const fs::path arrow = dir / split, jsonl = dir / (split + ".jsonl");
  if (fs::exists(dir / "dataset_dict.json", ec)) {
    const auto dd = read_json_file(dir / "dataset_dict.json");
    const auto splits = json_field<std::vector<std::string>>(dd, "splits", (dir / "dataset_dict.json").string());
    if (std::find(splits.begin(), splits.end(), split) == splits.end())
      fail("task {}: {} has no split '{}' (splits: {}); the protocol reads it", task,
           (dir / "dataset_dict.json").string(), split, fmt::join(splits, ", "));
  }
  if (fs::exists(arrow / "state.json", ec)) {
    out.source = arrow.string();
    try {
      out.columns = read_arrow_text_columns(arrow, fields);
    } catch (const Error& e) {
      fail("task {}, split {}: {}", task, split, e.what());
    }
  } else if (fs::exists(jsonl, ec)) {
    out.source = jsonl.string();
    out.columns.resize(fields.size());
    std::ifstream in(jsonl, std::ios::binary);
    if (!in) fail("task {}: cannot open {}", task, jsonl.string());
    std::string line;
    std::size_t line_no = 0;
    while (std::getline(in, line)) {
      ++line_no;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = fmt::format("task {}, split {}: {} line {}", task, split, jsonl.string(), line_no);
      const auto row = parse_json_text(line, where);
      for (std::size_t f = 0; f < fields.size(); ++f)
        downstream_detail::jsonl_field(row, fields[f], where, out.columns[f]);
    }
    if (in.bad()) fail("task {}: cannot read {}", task, jsonl.string());
  } else {
    fail("task {}: split '{}' not found: expected {} (a datasets folder with state.json) or {}", task, split,
         arrow.string(), jsonl.string());
  }
  return out;
}

namespace downstream_detail {

// One evaluation example: its prompt and answers.
struct Prompt {
  std::string prompt;
  std::vector<std::string> answers;
};

// The first value of a list field, or an error naming the row (the public code raises IndexError).
inline const std::string& first_of(const TaskSplit& s, std::size_t field, std::size_t row) {
  const auto v = s.get(field, row);
  if (v.empty())
    fail("task {}: {} row {}: field '{}' is an empty list, the template needs its first element", s.task, s.source,
         row, s.fields[field]);
  return v[0];
}

// Python's ' '.join(text.split(' ')[:-1]) and text.split(' ')[-1].
inline std::pair<std::string, std::string> lambada_split(const std::string& text) {
  const auto sp = text.rfind(' ');
  if (sp == std::string::npos) return {"", text};
  return {text.substr(0, sp), text.substr(sp + 1)};
}

// The examples of one task in evaluation order, each with its few-shot rows.
struct TaskPlan {
  TaskSplit train, eval;
  std::vector<std::size_t> eval_rows;   // eval split row of evaluation example i
  std::vector<std::size_t> train_rows;  // the few-shot order (train split rows)
};

inline TaskPlan plan_task(const DownstreamOptions& o, const std::string& task) {
  const auto dir = o.data_dir / task;
  TaskPlan p;
  auto identity = [](std::size_t n) {
    std::vector<std::size_t> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = i;
    return v;
  };
  auto shuffled = [&](std::size_t n, std::uint64_t seed) {
    const auto perm = numpy_permutation(seed, n);
    return std::vector<std::size_t>(perm.begin(), perm.end());
  };
  if (task == "squad_v2") {
    p.eval = load_task_split(dir, task, "validation", {"title", "context", "question", "answers.text"});
    p.train = p.eval;
    // Titles in order of first appearance (the public code iterates set(titles), whose order changes per run).
    std::vector<std::string> titles;
    std::vector<std::vector<std::size_t>> rows_of;
    for (std::size_t r = 0; r < p.eval.rows(); ++r) {
      const auto& t = p.eval.get(0, r)[0];
      auto it = std::find(titles.begin(), titles.end(), t);
      if (it == titles.end()) {
        titles.push_back(t);
        rows_of.emplace_back();
        it = titles.end() - 1;
      }
      rows_of[std::size_t(it - titles.begin())].push_back(r);
    }
    for (std::size_t i = 0; i < titles.size(); ++i) {
      const auto& rows = rows_of[i];
      const auto perm = numpy_permutation(o.seed + i, rows.size());
      std::vector<std::size_t> chunk;
      for (const auto k : perm) chunk.push_back(rows[k]);
      p.eval_rows.insert(p.eval_rows.end(), chunk.begin(), chunk.end());
      p.train_rows.insert(p.train_rows.end(), chunk.rbegin(), chunk.rend());
    }
  } else {
    std::string train_split = "train", eval_split = "validation";
    std::vector<std::string> fields;
    if (task == "trivia_qa") fields = {"question", "answer.aliases"};
    else if (task == "natural_questions") fields = {"question", "answers"};
    else if (task == "web_questions") {
      fields = {"question", "answers"};
      eval_split = "test";
    } else if (task == "lambada") {
      fields = {"text"};
      train_split = "validation";
      eval_split = "test";
    } else {
      fail("unknown downstream task '{}' (known: {})", task, fmt::join(downstream_task_names(), ", "));
    }
    p.train = load_task_split(dir, task, train_split, fields);
    p.eval = load_task_split(dir, task, eval_split, fields);
    p.train_rows = shuffled(p.train.rows(), o.seed);
    p.eval_rows = identity(p.eval.rows());
  }
  if (o.max_samples && *o.max_samples < p.eval_rows.size()) p.eval_rows.resize(*o.max_samples);
  if (o.shots > 0 && !p.eval_rows.empty() && p.train_rows.size() < std::size_t(o.shots))
    fail("task {}: {} shots need at least {} few-shot examples, but {} has {} rows", task, o.shots, o.shots,
         p.train.source, p.train_rows.size());
  return p;
}

// Evaluation example i with its few-shot rows: the public generator takes the
// shuffled train rows in groups of k, restarting (and dropping a partial group)
// when they run out.
inline Prompt make_prompt(const TaskPlan& p, const std::string& task, std::size_t i, int shots) {
  const std::size_t k = std::size_t(shots);
  std::vector<std::size_t> ctx;
  if (k > 0) {
    const std::size_t groups = p.train_rows.size() / k, g = i % groups;
    for (std::size_t j = 0; j < k; ++j) ctx.push_back(p.train_rows[g * k + j]);
  }
  const std::size_t ex = p.eval_rows[i];
  const TaskSplit& tr = p.train;
  const TaskSplit& ev = p.eval;
  Prompt out;
  auto join = [](const std::vector<std::string>& parts) { return fmt::format("{}", fmt::join(parts, "\n\n")); };
  std::vector<std::string> parts;
  if (task == "trivia_qa" || task == "web_questions") {
    for (const auto c : ctx)
      parts.push_back(fmt::format("Question: {}\nAnswer: {}", tr.get(0, c)[0], first_of(tr, 1, c)));
    out.prompt = join(parts) + fmt::format("\n\nQuestion: {}\nAnswer:", ev.get(0, ex)[0]);
    const auto a = ev.get(1, ex);
    out.answers.assign(a.begin(), a.end());
  } else if (task == "natural_questions") {
    for (const auto c : ctx) parts.push_back(fmt::format("Q: {}?\n\nA: {}", tr.get(0, c)[0], first_of(tr, 1, c)));
    out.prompt = join(parts) + fmt::format("\n\nQ: {}?\n\nA:", ev.get(0, ex)[0]);
    const auto a = ev.get(1, ex);
    out.answers.assign(a.begin(), a.end());
  } else if (task == "lambada") {
    for (const auto c : ctx) {
      const auto [input, output] = lambada_split(tr.get(0, c)[0]);
      parts.push_back(fmt::format("Input: {}\nOutput: {}", input, output));
    }
    const auto [input, output] = lambada_split(ev.get(0, ex)[0]);
    out.prompt = "Complete the following sentences.\n\n" + join(parts) + fmt::format("\n\nInput: {}\nOutput:", input);
    out.answers = {output};
  } else {  // squad_v2
    const auto& title = ev.get(0, ex)[0];
    auto answers_of = [&](std::size_t row) {
      const auto a = ev.get(3, row);
      return a.empty() ? std::vector<std::string>{"unanswerable"} : std::vector<std::string>(a.begin(), a.end());
    };
    for (const auto c : ctx)
      if (tr.get(0, c)[0] != title)
        fail("task squad_v2: evaluation example {} (title '{}') got a few-shot example with title '{}': with {} "
             "shots the public per-title pairing breaks (its assert fails); use 0 or 1 shot",
             i, title, tr.get(0, c)[0], shots);
    // The public template formats only the last of [ex] + context_exs (Python's
    // loop variable left over from the "unanswerable" loop): with k = 1, the one
    // few-shot example; with k = 0, the evaluation example itself.
    const std::size_t last = ctx.empty() ? ex : ctx.back();
    out.prompt = fmt::format("Title: {}\n\nBackground: {}\n\n", title, ev.get(1, ex)[0]);
    out.prompt += fmt::format("Question: {}\n\nAnswer (use Background or answer \"unanswerable\"): {}",
                              ev.get(2, last)[0], answers_of(last)[0]);
    out.prompt += fmt::format("\n\nQuestion: {}\n\nAnswer (use Background or answer \"unanswerable\"):",
                              ev.get(2, ex)[0]);
    out.answers = answers_of(ex);
  }
  return out;
}

}  // namespace downstream_detail

// The prompts of one task in evaluation order (for inspection and tests).
inline std::vector<DownstreamPrediction> downstream_prompts(const DownstreamOptions& options, const std::string& task) {
  if (options.shots < 0) fail("downstream: shots must be >= 0, got {}", options.shots);
  const auto plan = downstream_detail::plan_task(options, task);
  std::vector<DownstreamPrediction> out;
  for (std::size_t i = 0; i < plan.eval_rows.size(); ++i) {
    auto p = downstream_detail::make_prompt(plan, task, i, options.shots);
    DownstreamPrediction d;
    d.task = task;
    d.prompt = std::move(p.prompt);
    d.answers = std::move(p.answers);
    out.push_back(std::move(d));
  }
  return out;
}

// The prediction text of a continuation: decoded with special tokens skipped,
// then transformers' clean-up (clean_up_tokenization_spaces=True).
inline std::string decode_continuation(const Tokenizer& tokenizer, std::span<const std::int32_t> ids) {
  return clean_up_tokenization(tokenizer.decode_text(ids, /*skip_special_tokens=*/true));
}

// True when the processed prediction equals one of the normalised answers.
inline bool downstream_match(const std::string& processed, const std::vector<std::string>& answers) {
  for (const auto& a : answers)
    if (normalize_answer(a) == processed) return true;
  return false;
}

// context: the model's n_ctx (prompts keep their last context - max_new_tokens tokens).
inline DownstreamResult evaluate_downstream(const DownstreamOptions& options, const Tokenizer& tokenizer, int context,
                                            const GenerateFn& generate,
                                            std::vector<DownstreamPrediction>* predictions = nullptr,
                                            bool show_progress = true) {
  if (options.tasks.empty()) fail("downstream: no tasks given (known: {})", fmt::join(downstream_task_names(), ", "));
  for (const auto& t : options.tasks)
    if (std::find(downstream_task_names().begin(), downstream_task_names().end(), t) == downstream_task_names().end())
      fail("unknown downstream task '{}' (known: {})", t, fmt::join(downstream_task_names(), ", "));
  if (options.max_new_tokens < 1) fail("downstream: max_new_tokens must be >= 1, got {}", options.max_new_tokens);
  if (options.batch_size < 1) fail("downstream: batch_size must be >= 1, got {}", options.batch_size);
  if (context - options.max_new_tokens < 1)
    fail("downstream: the model's context {} leaves no room for a prompt with {} new tokens", context,
         options.max_new_tokens);
  if (!generate) fail("downstream: no generate function");
  const std::size_t keep = std::size_t(context - options.max_new_tokens);
  const std::int32_t eos = tokenizer.end_of_text_id();
  DownstreamResult result;
  for (const auto& task : options.tasks) {
    auto examples = downstream_prompts(options, task);
    TaskResult tr;
    tr.task = task;
    tr.examples = examples.size();
    std::optional<ProgressBar> bar;
    if (show_progress) bar.emplace(fmt::format("downstream {}", task), long(examples.size()));
    for (std::size_t b = 0; b < examples.size(); b += std::size_t(options.batch_size)) {
      const std::size_t e = std::min(examples.size(), b + std::size_t(options.batch_size));
      std::vector<std::vector<std::int32_t>> prompts;
      for (std::size_t i = b; i < e; ++i) {
        auto ids = tokenizer.encode(examples[i].prompt);
        if (ids.size() > keep) ids.erase(ids.begin(), ids.end() - std::ptrdiff_t(keep));
        prompts.push_back(std::move(ids));
      }
      const auto outs = generate(prompts, options.max_new_tokens);
      if (outs.size() != prompts.size())
        fail("downstream {}: the generate function returned {} continuations for {} prompts", task, outs.size(),
             prompts.size());
      for (std::size_t i = b; i < e; ++i) {
        auto ids = outs[i - b];
        if (const auto it = std::find(ids.begin(), ids.end(), eos); it != ids.end()) ids.erase(it, ids.end());
        if (ids.size() > std::size_t(options.max_new_tokens))
          fail("downstream {}: the generate function returned {} tokens for example {}, more than max_new_tokens {}",
               task, ids.size(), i, options.max_new_tokens);
        auto& ex = examples[i];
        ex.raw = decode_continuation(tokenizer, ids);
        ex.processed = postprocess_prediction(ex.raw);
        ex.correct = downstream_match(ex.processed, ex.answers);
        tr.correct += ex.correct ? 1 : 0;
      }
      if (bar)
        bar->update(long(e), fmt::format("accuracy {:.1f}%", 100.0 * double(tr.correct) / double(e)));
    }
    tr.accuracy = tr.examples ? 100.0 * double(tr.correct) / double(tr.examples) : 0.0;
    result.tasks.push_back(tr);
    if (predictions)
      for (auto& ex : examples) predictions->push_back(std::move(ex));
  }
  double sum = 0;
  for (const auto& t : result.tasks) sum += t.accuracy;
  result.average = sum / double(result.tasks.size());
  return result;
}

}  // namespace doremi
