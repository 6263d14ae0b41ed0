// Readers of user files against well-formed but wrong input: each case here
// once ended in an nlohmann exception (std::terminate in the CLI), a silently
// wrapped number, heap corruption or training on garbage; now each is a
// doremi::Error naming the file, the field and the value. (The fuzz targets in
// fuzz/ try the same parsers on arbitrary bytes.)
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "doremi/core/json.hpp"
#include "doremi/core/safetensors.hpp"
#include "doremi/data/bpe_tokenizer.hpp"
#include "doremi/data/dataset_folder.hpp"
#include "doremi/data/indexed_dataset.hpp"
#include "doremi/data/source.hpp"
#include "doremi/data/weighted_sampler.hpp"
#include "doremi/eval/report.hpp"
#include "doremi/data/window_sampler.hpp"
#include "doremi/model/dispatch.hpp"
#include "doremi/pipeline/run_config.hpp"
#include "doremi/train/domain_weights.hpp"
#include "doremi/train/trainer_state.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using doremi::test::error_of;
using doremi::test::write_bytes;

bool has(const std::string& s, std::string_view part) { return s.find(part) != std::string::npos; }

fs::path hardening_write(const fs::path& p, const std::string& text) {
  write_bytes(p, text);
  return p;
}

}  // namespace

TEST_CASE("hardening: a JSON number beyond a double is a doremi::Error naming the file") {
  doremi::test::TempDir dir("hard-json");
  const auto p = hardening_write(dir.path / "config.json", R"({"vocab_size": 1e400})");
  const auto e = error_of([&] { (void)doremi::read_json_file(p); });
  CHECK(has(e, p.string()));
  // Through the readers that use it: a checkpoint's config.json, a run config.
  const auto e2 = error_of([&] { (void)doremi::preset_for_checkpoint(dir.path); });
  CHECK(has(e2, p.string()));
}

TEST_CASE("hardening: run config numbers of the wrong type or out of range name the field and value") {
  const std::string where = "run.json";
  auto run_error = [&](const std::string& text) {
    return error_of([&] { (void)doremi::RunConfig::from_json(nlohmann::json::parse(text), where); });
  };
  const std::string base = R"("data": "d", "output": "o")";
  struct Case {
    std::string fields, field, value;
  };
  for (const Case& c : std::vector<Case>{
           {R"("seed": -1)", "seed", "-1"},                              // once wrapped to 2^64 - 1
           {R"("seq_len": 4294967298)", "seq_len", "4294967298"},        // once wrapped to 2
           {R"("eval_max_tokens": 1e30)", "eval_max_tokens", "1e+30"},  // once undefined behaviour
           {R"("rounds": 2.5)", "rounds", "2.5"},                       // once truncated to 2
           {R"("reference": {"batch_size": 1.5})", "batch_size", "1.5"},
           {R"("main": {"steps": "100"})", "steps", "\"100\""},
           {R"("proxy": {"eta": -1})", "eta", "-1"},
       }) {
    CAPTURE(c.fields);
    const auto e = run_error("{" + base + ", " + c.fields + "}");
    CHECK(has(e, where));
    CHECK(has(e, c.field));
    CHECK(has(e, c.value));
  }
  // Integral floats are integers; the limits themselves are accepted.
  const auto ok = doremi::RunConfig::from_json(
      nlohmann::json::parse("{" + base + R"(, "seq_len": 1024.0, "seed": 18446744073709551615})"), where);
  CHECK(ok.seq_len == 1024);
  CHECK(ok.seed == std::numeric_limits<std::uint64_t>::max());
}

TEST_CASE("hardening: a DRO state with arrays shorter than the domain count is an error, not heap corruption") {
  const std::vector<std::string> names{"a", "b", "c"};
  auto fresh = [&] { return doremi::DomainWeights(names, {1, 1, 1}, {1, 1, 1}, 1.0, doremi::DroConfig{1.0, 1e-3}); };
  const nlohmann::json good = fresh().state();
  for (const char* key : {"alpha", "scores", "average"}) {
    CAPTURE(key);
    auto dw = fresh();
    nlohmann::json s = good;
    s[key] = {0.5};
    const auto e = error_of([&] { dw.restore(s); });
    CHECK(has(e, key));
    CHECK(has(e, "1 entries"));
    CHECK(dw.alpha().size() == 3);  // unchanged
    s[key] = "x";
    CHECK(has(error_of([&] { dw.restore(s); }), key));
  }
  auto dw = fresh();
  nlohmann::json s = good;
  s["count"] = "3";
  CHECK(has(error_of([&] { dw.restore(s); }), "count"));
  s = good;
  s["alpha"] = {0.9, 0.9, 0.9};
  CHECK(has(error_of([&] { dw.restore(s); }), "sums to"));
  dw.restore(good);  // the saved state restores
  CHECK(dw.alpha() == fresh().alpha());
}

TEST_CASE("hardening: trainer_state.json and sampler states of the wrong type are errors naming the field") {
  const std::string where = "ckpt/trainer_state.json";
  auto state_error = [&](const std::string& text) {
    return error_of([&] { (void)doremi::parse_trainer_state(nlohmann::json::parse(text), where); });
  };
  CHECK(has(state_error(R"({"format": 5, "step": 1, "sampler": {}})"), where));
  const auto e = state_error(R"({"format": "doremi-trainer-1", "step": "12", "sampler": {}})");
  CHECK(has(e, "'step'"));
  CHECK(has(e, "\"12\""));
  CHECK(has(state_error(R"({"format": "doremi-trainer-1", "step": 1e300, "sampler": {}})"), "'step'"));
  CHECK(has(state_error(R"({"format": "doremi-trainer-1", "step": 1, "sampler": {}, "extra": 3})"), "'extra'"));
  CHECK(has(error_of([&] { (void)doremi::parse_optimizer_steps("12x", "optimizer.safetensors"); }), "12x"));
  CHECK(doremi::parse_optimizer_steps("42", "x") == 42);

  std::vector<doremi::MemorySource> sources;
  sources.emplace_back(std::vector<std::vector<std::int32_t>>{{1, 2, 3, 4, 5}}, "a");
  doremi::SamplerOptions opt;
  opt.prefetch = false;
  doremi::WeightedDomainSampler<doremi::MemorySource> sampler({"a"}, std::move(sources), {1.0}, 1, 4, 1, opt);
  CHECK(has(error_of([&] { sampler.restore(nlohmann::json{{"kind", 5}}); }), "kind"));

  doremi::WindowSampler w(std::vector<std::int32_t>(64, 1), 2, 4, 1);
  CHECK(has(error_of([&] { w.restore(nlohmann::json{{"kind", 1}, {"step", 1}}); }), "window"));
  CHECK(has(error_of([&] { w.restore(nlohmann::json{{"kind", "window"}, {"step", -1}}); }), "step"));
}

TEST_CASE("hardening: an index whose dtype or lengths do not match its .bin is an error") {
  doremi::test::TempDir dir("hard-idx");
  const auto good = dir.path / "good";
  {
    doremi::IndexedDatasetWriter w(good, doremi::TokenDType::u16);
    for (const std::vector<std::int32_t>& s : {std::vector<std::int32_t>{1, 2, 3, 4}, {5, 6}, {7, 8, 9, 10}})
      w.add_document(std::span<const std::int32_t>(s));
    w.finish();
  }
  const std::string idx = doremi::test::read_bytes(fs::path(good.string() + ".idx"));
  const std::string bin = doremi::test::read_bytes(fs::path(good.string() + ".bin"));
  auto open = [&](const std::string& name, std::string idx_bytes) {
    write_bytes(dir.path / (name + ".idx"), idx_bytes);
    write_bytes(dir.path / (name + ".bin"), bin);
    return error_of([&] { doremi::IndexedSource s(dir.path / name); });
  };
  CHECK(open("same", idx).empty());
  // uint8 instead of uint16: every sequence still lies inside the .bin.
  std::string wrong_dtype = idx;
  wrong_dtype[17] = 1;
  const auto e = open("dtype", wrong_dtype);
  CHECK(has(e, "dtype.idx"));
  CHECK(has(e, "do not match the .bin"));
  // Two lengths swapped (4, 2 -> 2, 4): the total still fits.
  std::string swapped = idx;
  const std::int32_t two = 2, four = 4;
  std::memcpy(swapped.data() + 34, &two, 4);
  std::memcpy(swapped.data() + 38, &four, 4);
  CHECK(has(open("lengths", swapped), "do not match the .bin"));
}

TEST_CASE("hardening: manifest.json fields are checked against the shards") {
  doremi::test::TempDir dir("hard-manifest");
  const auto root = dir.path;
  fs::create_directories(root / "train" / "a");
  {
    doremi::IndexedDatasetWriter w(root / "train" / "a" / "00000-x", doremi::TokenDType::u16);
    const std::vector<std::int32_t> doc{1, 2, 300};
    w.add_document(std::span<const std::int32_t>(doc));
    w.finish();
  }
  const auto manifest = root / "manifest.json";
  auto open_error = [&](const std::string& text) {
    write_bytes(manifest, text);
    return error_of([&] {
      auto f = doremi::open_dataset_folder(root, "train");
      std::vector<std::int32_t> t(f.sources[0].length(0));
      f.sources[0].read(0, 0, t);
    });
  };
  const std::string domains = R"("domains": {"a": {"train": {}}})";
  CHECK(open_error("{" + domains + "}").empty());
  CHECK(has(open_error(R"({"domain": {}})"), "'domains'"));  // once nlohmann's out_of_range
  CHECK(has(open_error(R"({"domains": {"a": 3}})"), "domains.a"));  // once a type_error
  const auto e = open_error("{" + domains + R"(, "token_dtype": "int32"})");
  CHECK(has(e, "uint16"));
  CHECK(has(e, "int32"));
  const auto v = open_error("{" + domains + R"(, "vocab_size": 257})");  // token 300 >= 257
  CHECK(has(v, "300"));
  CHECK(has(v, "00000-x.bin"));
  CHECK(has(open_error("{" + domains + R"(, "vocab_size": "257"})"), "vocab_size"));
}

TEST_CASE("hardening: a safetensors shape whose byte size wraps around 2^64 is rejected") {
  doremi::test::TempDir dir("hard-st");
  // 2^61 F64 elements = 2^64 bytes, which wraps to 0 = the span [0, 0).
  const std::string header = R"({"w":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,0]}})";
  std::string file(8, '\0');
  const std::uint64_t n = header.size();
  std::memcpy(file.data(), &n, 8);
  file += header;
  const auto p = hardening_write(dir.path / "x.safetensors", file);
  const auto e = error_of([&] { doremi::SafetensorsFile f(p); });
  CHECK(has(e, p.string()));
  CHECK(has(e, "'w'"));
}

TEST_CASE("hardening: tokenizer.json components whose type is not a string are errors") {
  doremi::test::TempDir dir("hard-tok");
  const std::string model = R"("model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]})";
  for (const std::string& bad : {std::string(R"("pre_tokenizer": {"type": 5})"),
                                 std::string(R"("pre_tokenizer": {"type": "ByteLevel"}, "normalizer": {"type": []})"),
                                 std::string(R"("pre_tokenizer": {"type": "ByteLevel"}, "decoder": {"type": 1})")}) {
    CAPTURE(bad);
    const auto p = hardening_write(dir.path / "tokenizer.json", "{" + model + ", " + bad + "}");
    const auto e = error_of([&] { (void)doremi::BpeTokenizer::from_tokenizer_json(p); });
    CHECK(has(e, p.string()));
  }
}

TEST_CASE("hardening: a vocabulary whose ids are mostly unused is an error, not gigabytes of tables") {
  doremi::test::TempDir dir("hard-vocab");
  hardening_write(dir.path / "vocab.json", R"({"a": 0, "b": 16777215})");  // once ~1 GB and seconds to load
  hardening_write(dir.path / "merges.txt", "#version: 0.2\n");
  const auto e = error_of([&] { (void)doremi::BpeTokenizer::from_file(dir.path); });
  CHECK(has(e, (dir.path / "vocab.json").string()));
  CHECK(has(e, "16777215"));
  hardening_write(dir.path / "vocab.json", R"({"a": 0, "b": 1000})");  // small holes are fine
  CHECK(doremi::BpeTokenizer::from_file(dir.path).vocab_size() == 1001);
}

TEST_CASE("hardening: sampler counts whose sum wraps around 2^64 are an error") {
  std::vector<doremi::MemorySource> sources;
  sources.emplace_back(std::vector<std::vector<std::int32_t>>{{1, 2, 3, 4, 5}}, "a");
  sources.emplace_back(std::vector<std::vector<std::int32_t>>{{6, 7, 8, 9, 10}}, "b");
  doremi::SamplerOptions opt;
  opt.prefetch = false;
  doremi::WeightedDomainSampler<doremi::MemorySource> sampler({"a", "b"}, std::move(sources), {0.5, 0.5}, 1, 4, 1,
                                                              opt);
  nlohmann::json s = sampler.state();
  for (auto& d : s["domains"]) {
    d["count"] = std::uint64_t(1) << 63;  // 2^63 + 2^63 wraps to 0 = drawn
    d.erase("epoch");
    d.erase("cursor");
  }
  s["drawn"] = 0;
  s["target_base_drawn"] = 0;
  CHECK(has(doremi::test::error_of([&] { sampler.restore(s); }), "2^64"));
}

TEST_CASE("hardening: a metrics.jsonl number beyond a double is an error naming the file and line") {
  doremi::test::TempDir dir("hard-metrics");
  const auto p = hardening_write(dir.path / "metrics.jsonl",
                                 "{\"step\": 1, \"domains\": [\"a\"], \"alpha\": [1]}\n"
                                 "{\"step\": 2, \"domains\": [\"a\"], \"alpha\": [1e999]}\n");
  const auto e = error_of([&] { (void)doremi::read_weight_trajectory(p); });
  CHECK(has(e, p.string() + ":2"));
}
