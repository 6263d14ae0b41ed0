// Preprocessing JSONL (plain and zstd) and folders into per-domain indexed
// datasets: packing, nopack, validation split, counted bad documents,
// resumable reruns, deterministic output.
#include <doctest/doctest.h>

#include <fstream>
#include <zstd.h>

#include "doremi/data/indexed_dataset.hpp"
#include "doremi/data/preprocess.hpp"
#include "doremi/data/tokenizer.hpp"
#include "test_util.hpp"

using namespace doremi;
namespace fs = std::filesystem;

namespace {

std::string doc_json(const std::string& domain, const std::string& text) {
  return nlohmann::json{{"text", text}, {"meta", {{"pile_set_name", domain}}}}.dump();
}

void write_inputs(const fs::path& dir) {
  std::ofstream a(dir / "00.jsonl");
  for (int i = 0; i < 40; ++i) a << doc_json(i % 3 ? "Github" : "Pile-CC", fmt::format("document {} {}", i, std::string(std::size_t(i), 'x'))) << "\n";
  a << "{not json\n";                                   // invalid JSON
  a << R"({"text": "no domain here"})" << "\n";          // missing domain key
  a << doc_json("Github", "") << "\n";                  // empty document
  a.close();
  std::string plain;
  for (int i = 0; i < 30; ++i) plain += doc_json("ArXiv", fmt::format("theorem {} proof", i)) + "\n";
  std::string z(ZSTD_compressBound(plain.size()), '\0');
  z.resize(ZSTD_compress(z.data(), z.size(), plain.data(), plain.size(), 3));
  std::ofstream b(dir / "01.jsonl.zst", std::ios::binary);
  b << z;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

}  // namespace

TEST_CASE("preprocess: JSONL and zstd JSONL into packed per-domain shards with a manifest") {
  test::TempDir dir("prep");
  write_inputs(dir.path);
  PreprocessConfig cfg;
  cfg.inputs = {dir.path / "00.jsonl", dir.path / "01.jsonl.zst"};
  cfg.output = dir.path / "out";
  cfg.seq_len = 16;
  cfg.progress = false;
  const Tokenizer tok;  // bytes
  const auto r = preprocess(cfg, tok);
  const auto& m = r.manifest;
  CHECK(m.at("domains").at("ArXiv").at("train").at("documents") == 30);
  CHECK(m.at("domains").at("Github").at("train").at("documents") == 26);  // 26 of 40 + the empty one skipped
  CHECK(m.at("skipped_documents").at("invalid JSON") == 1);
  CHECK(m.at("skipped_documents").at("empty document") == 1);
  CHECK(m.at("skipped_documents").size() == 3);
  // Packed chunks: the concatenation of (document bytes + end-of-text), cut into 16s.
  std::vector<std::int32_t> expect;
  for (int i = 0; i < 30; ++i) {
    const auto ids = tok.encode(fmt::format("theorem {} proof", i));
    expect.insert(expect.end(), ids.begin(), ids.end());
    expect.push_back(tok.end_of_text_id());
  }
  IndexedSource arxiv(preprocessed_shards(cfg.output, "train", "ArXiv"));
  REQUIRE(arxiv.size() == expect.size() / 16);
  for (std::size_t i = 0; i < arxiv.size(); ++i) {
    std::vector<std::int32_t> got(16);
    arxiv.read(i, 0, got);
    CHECK(std::equal(got.begin(), got.end(), expect.begin() + std::ptrdiff_t(16 * i)));
  }
  CHECK(m.at("domains").at("ArXiv").at("train").at("pack_chunks") == expect.size() / 16);

  // A rerun skips finished inputs; losing one input's record redoes just it, identically.
  const std::string before = slurp(cfg.output / "train/ArXiv/00001-01.bin");
  CHECK(preprocess(cfg, tok).inputs_skipped == 2);
  fs::remove(cfg.output / ".progress/00001-01.json");
  CHECK(preprocess(cfg, tok).inputs_skipped == 1);
  CHECK(slurp(cfg.output / "train/ArXiv/00001-01.bin") == before);
  CHECK(read_json_file(cfg.output / "manifest.json") == m);
  // No temporaries are left behind.
  for (const auto& e : fs::recursive_directory_iterator(cfg.output))
    CHECK(e.path().filename().string().find(".tmp-") == std::string::npos);
}

TEST_CASE("preprocess: nopack keeps documents, validation share splits them, strict mode fails") {
  test::TempDir dir("prep2");
  write_inputs(dir.path);
  PreprocessConfig cfg;
  cfg.inputs = {dir.path / "01.jsonl.zst"};
  cfg.output = dir.path / "out";
  cfg.seq_len = 8;
  cfg.pack = false;
  cfg.validation_share = 0.3;
  cfg.progress = false;
  const Tokenizer tok;
  const auto m = preprocess(cfg, tok).manifest;
  const auto train = m.at("domains").at("ArXiv").at("train").at("documents").get<int>();
  const auto val = m.at("domains").at("ArXiv").at("validation").at("documents").get<int>();
  CHECK(train + val == 30);
  CHECK(val > 2);
  CHECK(val < 18);
  IndexedSource src(preprocessed_shards(cfg.output, "train", "ArXiv"));
  CHECK(src.size() == std::size_t(train));
  // "theorem 1 proof" + end of text = 16 tokens = 2 chunks of 8 in nopack counting.
  CHECK(m.at("domains").at("ArXiv").at("train").at("nopack_chunks").get<int>() >= 2 * train);

  // The output does not depend on the thread count.
  cfg.threads = 1;
  cfg.output = dir.path / "one-thread";
  preprocess(cfg, tok);
  CHECK(slurp(dir.path / "one-thread/train/ArXiv/00000-01.bin") == slurp(dir.path / "out/train/ArXiv/00000-01.bin"));

  cfg.inputs = {dir.path / "00.jsonl"};
  cfg.output = dir.path / "strict";
  cfg.fail_on_bad_document = true;
  CHECK_THROWS_WITH_AS(preprocess(cfg, tok), doctest::Contains("00.jsonl:41"), Error);
}

TEST_CASE("preprocess: folders of domain subfolders, one document per file") {
  test::TempDir dir("prep3");
  fs::create_directories(dir.path / "corpus/poems");
  fs::create_directories(dir.path / "corpus/code/sub");
  std::ofstream(dir.path / "corpus/poems/a.txt") << "roses are red";
  std::ofstream(dir.path / "corpus/code/sub/b.c") << "int main() { return 0; }";
  std::ofstream(dir.path / "corpus/code/c.c") << "void f();";
  PreprocessConfig cfg;
  cfg.inputs = {dir.path / "corpus"};
  cfg.output = dir.path / "out";
  cfg.seq_len = 4;
  cfg.pack = false;
  cfg.progress = false;
  const auto m = preprocess(cfg, Tokenizer{}).manifest;
  CHECK(m.at("domains").at("code").at("train").at("documents") == 2);
  CHECK(m.at("domains").at("poems").at("train").at("tokens") == 14);
  IndexedSource poems(preprocessed_shards(cfg.output, "train", "poems"));
  CHECK(poems.length(0) == 14);
}

TEST_CASE("preprocess: GPT-NeoX tokenizer ids, end-of-text appended") {
  const auto path = test::shared_dir() / "fixtures/tokenizers/gpt-neox-20b";
  if (!fs::exists(path)) {
    MESSAGE("skipped: ", path.string(), " is absent");
    return;
  }
  const Tokenizer tok = load_tokenizer(path.string());
  test::TempDir dir("prep5");
  std::ofstream(dir.path / "a.jsonl") << doc_json("Wikipedia (en)", "Hello world, it's DoReMi.") << "\n";
  PreprocessConfig cfg;
  cfg.inputs = {dir.path / "a.jsonl"};
  cfg.output = dir.path / "out";
  cfg.pack = false;
  cfg.progress = false;
  const auto m = preprocess(cfg, tok).manifest;
  CHECK(m.at("token_dtype") == "uint16");
  IndexedSource src(preprocessed_shards(cfg.output, "train", "Wikipedia (en)"));
  std::vector<std::int32_t> ids(src.length(0));
  src.read(0, 0, ids);
  auto expect = tok.encode("Hello world, it's DoReMi.");
  expect.push_back(tok.end_of_text_id());
  CHECK(ids == expect);
}

TEST_CASE("preprocess: bad configuration and corrupt zstd are errors naming the input") {
  test::TempDir dir("prep4");
  std::ofstream(dir.path / "bad.jsonl.zst", std::ios::binary) << "this is not zstd";
  PreprocessConfig cfg;
  cfg.inputs = {dir.path / "bad.jsonl.zst"};
  cfg.output = dir.path / "out";
  cfg.progress = false;
  CHECK_THROWS_WITH_AS(preprocess(cfg, Tokenizer{}), doctest::Contains("bad.jsonl.zst"), Error);
  cfg.inputs = {dir.path / "missing.jsonl"};
  CHECK_THROWS_WITH_AS(preprocess(cfg, Tokenizer{}), doctest::Contains("missing.jsonl"), Error);
  cfg.inputs = {dir.path / "bad.jsonl.zst"};
  cfg.validation_share = 1.5;
  CHECK_THROWS_AS(preprocess(cfg, Tokenizer{}), Error);
}
