// Byte-level BPE tokenizers: ids equal to HuggingFace `tokenizers` 0.21 on the
// shared GPT-NeoX-20B and GPT-2 files (and variants of them written by the
// reference script), round trips, the pieces (split pattern, byte table,
// NFC) on their own, and the errors.
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "doremi/data/tokenizer.hpp"
#include "python_runner.hpp"
#include "test_util.hpp"

using namespace doremi;
namespace fs = std::filesystem;

namespace {

fs::path neox_json() { return test::shared_dir() / "fixtures/tokenizers/gpt-neox-20b/tokenizer.json"; }
fs::path gpt2_dir() { return test::shared_dir() / "fixtures/tokenizers/gpt2"; }

bool have_fixtures() {
  if (fs::exists(neox_json()) && fs::exists(gpt2_dir() / "vocab.json") && fs::exists(gpt2_dir() / "merges.txt"))
    return true;
  MESSAGE("skipped: tokenizer fixtures not found under " << (test::shared_dir() / "fixtures/tokenizers").string());
  return false;
}

// Loading a real tokenizer takes a fraction of a second: load each once.
const BpeTokenizer& cached(const fs::path& path) {
  static std::map<std::string, std::unique_ptr<BpeTokenizer>> loaded;
  auto& slot = loaded[path.string()];
  if (!slot) slot = std::make_unique<BpeTokenizer>(BpeTokenizer::from_file(path));
  return *slot;
}

std::vector<std::string> split(std::string_view s) {
  std::vector<std::string> out;
  byte_level::split_gpt2(s, [&](std::string_view w) { out.emplace_back(w); });
  return out;
}

using doremi::test::error_of;
using doremi::test::write_bytes;

// A tiny tokenizer.json: the 256 byte symbols, then `merges` (strings "a b")
// with their results appended to the vocabulary in order.
nlohmann::json tiny_tokenizer(const std::vector<std::string>& merges) {
  nlohmann::json vocab = nlohmann::json::object();
  int next = 0;
  for (int b = 0; b < 256; ++b) vocab[byte_level::bytes_to_token(std::string(1, char(b)))] = next++;
  for (const auto& m : merges) {
    const auto sp = m.find(' ');
    const std::string merged = m.substr(0, sp) + m.substr(sp + 1);
    if (!vocab.contains(merged)) vocab[merged] = next++;
  }
  nlohmann::json j;
  j["version"] = "1.0";
  j["added_tokens"] = nlohmann::json::array(
      {{{"id", next}, {"content", "<|endoftext|>"}, {"special", true}, {"normalized", false}, {"lstrip", false},
        {"rstrip", false}, {"single_word", false}}});
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  j["post_processor"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}};
  j["decoder"] = {{"type", "ByteLevel"}};
  j["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"fuse_unk", false},
                {"vocab", vocab},   {"merges", merges}};
  return j;
}

}  // namespace

TEST_CASE("tokenizer: GPT-2 split pattern") {
  using V = std::vector<std::string>;
  CHECK(split("Hello world") == V{"Hello", " world"});
  CHECK(split("it's IT'S") == V{"it", "'s", " IT", "'", "S"});
  CHECK(split("we'll they're I've I'm he'd don't") ==
        V{"we", "'ll", " they", "'re", " I", "'ve", " I", "'m", " he", "'d", " don", "'t"});
  CHECK(split("'sup") == V{"'s", "up"});
  CHECK(split("hello   world") == V{"hello", "  ", " world"});
  CHECK(split("x\n\n\ny") == V{"x", "\n\n", "\n", "y"});
  CHECK(split(" \t x") == V{" \t", " x"});
  CHECK(split("end   ") == V{"end", "   "});
  CHECK(split(" ") == V{" "});
  CHECK(split("a\tb") == V{"a", "\t", "b"});
  CHECK(split("abc123!!! 45 ?? ") == V{"abc", "123", "!!!", " 45", " ??", " "});
  CHECK(split("Привет мир") == V{"Привет", " мир"});
  CHECK(split("a\u00a0b") == V{"a", "\u00a0", "b"});  // NBSP is \s
  CHECK(split("a\u200bb") == V{"a", "\u200b", "b"});  // ZWSP is not (category Cf)
  CHECK(split("½²") == V{"½²"});                      // No is \p{N}
  CHECK(split("").empty());
}

TEST_CASE("tokenizer: character classes equal HF's pre-tokenizer (BMP and samples beyond)") {
  if (!test::python_has("tokenizers")) return;
  std::string out;
  REQUIRE(test::run_python_script_capture("tokenizer_reference.py", "--classes", out) == 0);
  const auto ref = nlohmann::json::parse(out);
  const auto cps = ref["cps"].get<std::vector<std::uint32_t>>();
  const auto classes = ref["classes"].get<std::string>();
  REQUIRE(cps.size() == classes.size());
  REQUIRE(cps.size() > 60000);
  int bad = 0;
  for (std::size_t i = 0; i < cps.size(); ++i) {
    const int ours = unicode::char_class(cps[i]);
    if (ours != classes[i] - '0' && bad++ < 10)
      FAIL_CHECK(fmt::format("U+{:04X}: class {} here, {} in HF", cps[i], ours, classes[i] - '0'));
  }
  CHECK(bad == 0);
}

TEST_CASE("tokenizer: byte-level table and UTF-8 helpers") {
  const auto& t = byte_level::byte_to_char();
  CHECK(t['A'] == U'A');
  CHECK(t[' '] == U'\u0120');  // Ġ
  CHECK(t['\n'] == U'\u010A');  // Ċ
  CHECK(t[0] == U'\u0100');
  CHECK(t[0xAD] == U'\u0143');
  for (int b = 0; b < 256; ++b) CHECK(byte_level::char_to_byte(t[std::size_t(b)]) == b);
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(char(b));
  std::string back;
  REQUIRE(byte_level::token_to_bytes(byte_level::bytes_to_token(all), back));
  CHECK(back == all);

  CHECK(unicode::invalid_utf8_offset("plain ascii and é 中 🙂") == unicode::npos);
  CHECK(unicode::invalid_utf8_offset("ab\xff") == 2);
  CHECK(unicode::invalid_utf8_offset("ab\xc3") == 2);            // truncated
  CHECK(unicode::invalid_utf8_offset("\xc0\xaf") == 0);          // overlong
  CHECK(unicode::invalid_utf8_offset("x\xed\xa0\x80") == 1);     // surrogate
  CHECK(unicode::invalid_utf8_offset("xy\xf4\x90\x80\x80") == 2);  // above U+10FFFF
  CHECK(unicode::invalid_utf8_offset("12345678901234\x80") == 14);
}

TEST_CASE("tokenizer: NFC fast path agrees with utf8proc on every input") {
  // Mixes of ASCII, inert non-ASCII, combining marks, Hangul jamo and singletons.
  const std::vector<std::string> atoms = {"a", "e", " ", "é", "中", "\u0301", "\u0323", "\u0308", "\u1100",
                                          "\u1161", "\u11a8", "\u212b", "A", "\u030a", "o", "ﬁ", "🙂", "\n"};
  std::mt19937 rng(7);
  for (int trial = 0; trial < 3000; ++trial) {
    std::string s;
    const int len = 1 + int(rng() % 12);
    for (int k = 0; k < len; ++k) s += atoms[rng() % atoms.size()];
    std::string slow;
    unicode::nfc_append_slow(s, slow);
    REQUIRE(unicode::nfc(s) == slow);
  }
  CHECK(unicode::nfc("Cafe\u0301") == "Café");
  CHECK(unicode::nfc("\u212b") == "\u00c5");
  CHECK(unicode::nfc("\u1100\u1161\u11a8") == "\uac01");
}

TEST_CASE("tokenizer: a tiny tokenizer.json (merge order, both merge formats, special token)") {
  test::TempDir dir("tok");
  // Ranks decide: "a b" (rank 0) applies before "a a" (rank 1).
  const std::vector<std::string> merges = {"a b", "a a", "aa b", "Ġ a"};
  const nlohmann::json j = tiny_tokenizer(merges);
  write_bytes(dir.path / "tokenizer.json", j.dump());
  const auto tok = BpeTokenizer::from_file(dir.path);  // the folder form
  auto id = [&](std::string_view t) { return *tok.token_to_id(t); };
  CHECK(tok.encode("ab") == std::vector<std::int32_t>{id("ab")});
  CHECK(tok.encode("aab") == std::vector<std::int32_t>{id("a"), id("ab")});  // "a b" (rank 0) wins over "a a"
  CHECK(tok.encode("aaa") == std::vector<std::int32_t>{id("aa"), id("a")});  // leftmost first among equal ranks
  CHECK(tok.encode(" a<|endoftext|>b") == std::vector<std::int32_t>{id("Ġa"), tok.end_of_text_id(), id("b")});
  CHECK(tok.end_of_text_id() == 256 + 4);
  CHECK(tok.vocab_size() == 256 + 5);
  CHECK(tok.id_to_token(id("Ġa")) == "Ġa");
  CHECK(!tok.token_to_id("zzz").has_value());
  CHECK(tok.decode(tok.encode("a b\tab<|endoftext|>")) == "a b\tab<|endoftext|>");

  // The same with ["a", "b"] pairs.
  nlohmann::json jp = j;
  jp["model"]["merges"] = nlohmann::json::array();
  for (const auto& m : merges) jp["model"]["merges"].push_back({m.substr(0, m.find(' ')), m.substr(m.find(' ') + 1)});
  write_bytes(dir.path / "pairs.json", jp.dump());
  const auto tp = BpeTokenizer::from_file(dir.path / "pairs.json");
  for (const char* s : {"ab", "aab", "aaa", " a<|endoftext|>b", "baab aaab"}) CHECK(tp.encode(s) == tok.encode(s));
}

TEST_CASE("tokenizer: parity with HF tokenizers (GPT-NeoX-20B, GPT-2 and variants)") {
  if (!have_fixtures() || !test::python_has("tokenizers")) return;
  test::TempDir dir("tokref");
  std::string out;
  const int rc = test::run_python_script_capture(
      "tokenizer_reference.py",
      fmt::format("'{}' '{}'", test::shared_dir().string(), dir.path.string()), out);
  REQUIRE(rc == 0);
  const auto ref = nlohmann::json::parse(out);
  const auto texts = ref["texts"].get<std::vector<std::string>>();
  REQUIRE(texts.size() >= 60);
  std::size_t compared = 0, total_ids = 0;
  for (const auto& t : ref["tokenizers"]) {
    const std::string name = t["name"];
    CAPTURE(name);
    const auto tok = BpeTokenizer::from_file(t["path"].get<std::string>());
    CHECK(tok.vocab_size() == t["vocab_size"].get<int>());
    int failures = 0;
    for (std::size_t i = 0; i < texts.size(); ++i) {
      const auto want = t["ids"][i].get<std::vector<std::int32_t>>();
      const auto got = tok.encode(texts[i]);
      ++compared;
      total_ids += want.size();
      if (got != want && failures++ < 5) {
        std::size_t k = 0;
        while (k < got.size() && k < want.size() && got[k] == want[k]) ++k;
        FAIL_CHECK(fmt::format("{} text {} {:?}: ids differ at {}: ours {} vs HF {}", name, i,
                               texts[i].substr(0, 80), k,
                               std::vector<std::int32_t>(got.begin() + std::ptrdiff_t(k),
                                                         got.begin() + std::ptrdiff_t(std::min(got.size(), k + 8))),
                               std::vector<std::int32_t>(want.begin() + std::ptrdiff_t(k),
                                                         want.begin() + std::ptrdiff_t(std::min(want.size(), k + 8)))));
      }
    }
    CHECK(failures == 0);
  }
  MESSAGE(fmt::format("compared {} id sequences ({} ids) with HF tokenizers", compared, total_ids));
}

TEST_CASE("tokenizer: round trips and the end-of-text id") {
  if (!have_fixtures()) return;
  const auto& neox = cached(neox_json());
  const auto& gpt2 = cached(gpt2_dir());
  CHECK(neox.end_of_text_id() == 0);
  CHECK(neox.vocab_size() == 50277);
  CHECK(gpt2.end_of_text_id() == 50256);
  CHECK(gpt2.vocab_size() == 50257);
  CHECK(neox.id_to_token(0) == "<|endoftext|>");
  CHECK(gpt2.token_to_id("Ġthe") == 262);
  const std::vector<std::string> texts = {
      "", "Hello world", "  spaced   out  ", "line\n\n\tindent", "Café Привет 你好 مرحبا नमस्ते 👩‍💻👍🏽",
      "doc one<|endoftext|>doc two", std::string(1000, ' '), "x\u0301\u0323 precomposed é vs e\u0301",
      "\x01\x02 controls \x7f", "1234567890123456789"};
  for (const auto& s : texts) {
    CHECK(neox.decode(neox.encode(s)) == unicode::nfc(s));  // GPT-NeoX normalizes to NFC
    CHECK(gpt2.decode(gpt2.encode(s)) == s);
  }
  // decode returns the bytes even when ids split a character.
  const auto ids = gpt2.encode("🙂");
  REQUIRE(ids.size() > 1);
  std::string joined;
  for (auto id : ids) joined += gpt2.decode(std::span<const std::int32_t>(&id, 1));
  CHECK(joined == "🙂");
  // Several threads share one tokenizer (and its word cache).
  {
    const std::string text = "Threads share the cache: Ωμέγα, 你好, ✓ — " + std::string(200, 'z') + " <|endoftext|>";
    const auto want = neox.encode(text);
    std::vector<int> ok(4, 0);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&, t] {
        bool same = true;
        for (int k = 0; k < 200; ++k) same = same && neox.encode(text + std::to_string(k % 7)) ==
                                                         neox.encode(text + std::to_string(k % 7));
        ok[std::size_t(t)] = same && neox.encode(text) == want;
      });
    for (auto& th : threads) th.join();
    CHECK(std::count(ok.begin(), ok.end(), 1) == 4);
  }
  // The vocab.json path itself also loads the pair.
  CHECK(BpeTokenizer::from_file(gpt2_dir() / "vocab.json").encode("Hello world") ==
        std::vector<std::int32_t>{15496, 995});
  // The licence text survives a round trip through both.
  std::ifstream f(test::source_dir() / "examples/data/licenses.txt", std::ios::binary);
  const std::string lic((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  REQUIRE(lic.size() > 50000);
  CHECK(neox.decode(neox.encode(lic)) == lic);
  CHECK(gpt2.decode(gpt2.encode(lic)) == lic);
}

TEST_CASE("tokenizer: load_tokenizer for bytes and paths") {
  const Tokenizer bytes = load_tokenizer("bytes");
  CHECK(bytes.is_bytes());
  CHECK(bytes.vocab_size() == 257);
  CHECK(bytes.end_of_text_id() == 256);
  CHECK(bytes.encode("hé") == std::vector<std::int32_t>{'h', 0xC3, 0xA9});
  const std::vector<std::int32_t> ids{'o', 'k', 256};
  CHECK(bytes.decode(ids) == "ok");
  CHECK(error_of([&] { load_tokenizer(""); }).find("empty tokenizer spec") != std::string::npos);
  if (!have_fixtures()) return;
  const Tokenizer neox = load_tokenizer(neox_json().string());
  const Tokenizer neox_dir = load_tokenizer(neox_json().parent_path().string());
  const Tokenizer gpt2 = load_tokenizer(gpt2_dir().string());
  CHECK(!neox.is_bytes());
  CHECK(neox.encode("Hello world") == neox_dir.encode("Hello world"));
  CHECK(neox.encode("Hello world") == std::vector<std::int32_t>{12092, 1533});
  CHECK(gpt2.encode("Hello world") == std::vector<std::int32_t>{15496, 995});
  CHECK(gpt2.vocab_size() == 50257);
  CHECK(neox.describe().find("tokenizer.json") != std::string::npos);
}

TEST_CASE("tokenizer: errors name the offset, file and field") {
  test::TempDir dir("tokerr");
  const nlohmann::json good = tiny_tokenizer({"a b"});
  write_bytes(dir.path / "tokenizer.json", good.dump());
  const auto tok = BpeTokenizer::from_file(dir.path / "tokenizer.json");

  // Invalid UTF-8 names the byte offset.
  std::string e = error_of([&] { tok.encode("ok so far \xC3\x28 then"); });
  CHECK(e.find("not valid UTF-8 at byte offset 10") != std::string::npos);
  CHECK(error_of([&] { load_tokenizer("bytes").encode("\xff"); }).empty());  // bytes take anything
  // Unknown ids.
  const std::vector<std::int32_t> bad_ids{1, 999999};
  CHECK(error_of([&] { tok.decode(bad_ids); }).find("999999") != std::string::npos);
  CHECK(error_of([&] { tok.id_to_token(-1); }).find("-1") != std::string::npos);

  // Missing files and folders.
  e = error_of([&] { BpeTokenizer::from_file(dir.path / "nope.json"); });
  CHECK(e.find("nope.json") != std::string::npos);
  CHECK(e.find("does not exist") != std::string::npos);
  fs::create_directories(dir.path / "empty");
  e = error_of([&] { BpeTokenizer::from_file(dir.path / "empty"); });
  CHECK(e.find("neither tokenizer.json nor vocab.json") != std::string::npos);

  // Malformed JSON names the file.
  write_bytes(dir.path / "broken.json", "{\"model\": {\"vocab\": {\"a\": 0,}}");
  e = error_of([&] { BpeTokenizer::from_file(dir.path / "broken.json"); });
  CHECK(e.find("broken.json") != std::string::npos);
  CHECK(e.find("invalid JSON") != std::string::npos);

  // Wrong fields name the file and the field.
  auto field_error = [&](auto edit) {
    nlohmann::json j = good;
    edit(j);
    write_bytes(dir.path / "bad.json", j.dump());
    return error_of([&] { BpeTokenizer::from_file(dir.path / "bad.json"); });
  };
  e = field_error([](nlohmann::json& j) { j.erase("model"); });
  CHECK(e.find("bad.json: field model: is missing") != std::string::npos);
  e = field_error([](nlohmann::json& j) { j["model"]["merges"].push_back("q z9"); });
  CHECK(e.find("bad.json: field model.merges[1]") != std::string::npos);
  e = field_error([](nlohmann::json& j) { j["model"]["merges"].push_back(42); });
  CHECK(e.find("model.merges[1]") != std::string::npos);
  e = field_error([](nlohmann::json& j) { j["model"]["merges"].push_back("nospace"); });
  CHECK(e.find("model.merges[1]") != std::string::npos);
  e = field_error([](nlohmann::json& j) { j["model"]["vocab"]["x"] = "seven"; });
  CHECK(e.find("model.vocab[\"x\"]") != std::string::npos);
  e = field_error([](nlohmann::json& j) { j["model"]["type"] = "WordPiece"; });
  CHECK(e.find("model.type") != std::string::npos);
  e = field_error([](nlohmann::json& j) { j["normalizer"] = {{"type", "Lowercase"}}; });
  CHECK(e.find("field normalizer") != std::string::npos);
  e = field_error([](nlohmann::json& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; });
  CHECK(e.find("field pre_tokenizer") != std::string::npos);
  e = field_error([](nlohmann::json& j) { j["post_processor"] = {{"type", "TemplateProcessing"}}; });
  CHECK(e.find("field post_processor") != std::string::npos);
  e = field_error([](nlohmann::json& j) { j["added_tokens"][0].erase("content"); });
  CHECK(e.find("added_tokens[0].content") != std::string::npos);
  e = field_error([](nlohmann::json& j) { j["model"]["dropout"] = 0.1; });
  CHECK(e.find("model.dropout") != std::string::npos);

  // vocab.json + merges.txt: a bad merges line names the file and line.
  fs::create_directories(dir.path / "classic");
  nlohmann::json classic_vocab = good["model"]["vocab"];
  classic_vocab["<|endoftext|>"] = 257;
  write_bytes(dir.path / "classic/vocab.json", classic_vocab.dump());
  write_bytes(dir.path / "classic/merges.txt", "#version: 0.2\na b\na b c\n");
  e = error_of([&] { BpeTokenizer::from_file(dir.path / "classic"); });
  CHECK(e.find("merges.txt") != std::string::npos);
  CHECK(e.find("line 3") != std::string::npos);
  write_bytes(dir.path / "classic/merges.txt", "#version: 0.2\na b\n");
  const auto classic = BpeTokenizer::from_file(dir.path / "classic");
  CHECK(classic.encode("ab<|endoftext|>") == std::vector<std::int32_t>{256, 257});
  CHECK(classic.end_of_text_id() == 257);
  write_bytes(dir.path / "classic/vocab.json", "[1, 2");
  e = error_of([&] { BpeTokenizer::from_file(dir.path / "classic"); });
  CHECK(e.find("vocab.json") != std::string::npos);
}
