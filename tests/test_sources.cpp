// Memory-mapped token sources: Megatron/GPT-NeoX indexed datasets (our writer
// and reader, and corrupted files), and HuggingFace `datasets` folders written
// by the real `datasets.save_to_disk` (tests/python/make_hf_datasets_fixture.py),
// read back sequence by sequence, plus corrupted copies of them.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "doremi/core/json.hpp"
#include "doremi/data/arrow_source.hpp"
#include "doremi/data/indexed_dataset.hpp"
#include "doremi/data/source.hpp"
#include "python_runner.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
namespace test = doremi::test;
using doremi::ArrowOptions;
using doremi::ArrowSource;
using doremi::IndexedDataset;
using doremi::IndexedDatasetWriter;
using doremi::IndexedSource;
using doremi::TokenDType;
using Seqs = std::vector<std::vector<std::int32_t>>;

namespace {

using doremi::test::read_bytes;
using doremi::test::write_bytes;

using doremi::test::contains;
using doremi::test::error_of;

// Every sequence of `src`, read whole and (for the longer ones) in two pieces.
template <doremi::TokenSource S>
Seqs read_all(const S& src) {
  Seqs out(src.size());
  for (std::size_t i = 0; i < src.size(); ++i) {
    out[i].resize(src.length(i));
    src.read(i, 0, out[i]);
    if (out[i].size() >= 3) {
      std::vector<std::int32_t> tail(out[i].size() - 2);
      src.read(i, 2, tail);
      REQUIRE(std::equal(tail.begin(), tail.end(), out[i].begin() + 2));
    }
  }
  return out;
}

std::uint64_t token_count(const Seqs& s) {
  std::uint64_t n = 0;
  for (const auto& x : s) n += x.size();
  return n;
}

Seqs make_seqs(int n, int seed, int max_token) {
  Seqs s;
  for (int i = 0; i < n; ++i) {
    std::vector<std::int32_t> t((i * 5 + seed) % 11 + (i % 9 == 4 ? 700 : 0));
    for (std::size_t j = 0; j < t.size(); ++j) t[j] = std::int32_t((seed * 7919 + i * 131 + int(j) * 17) % max_token);
    s.push_back(std::move(t));
  }
  return s;
}

void write_indexed(const fs::path& prefix, TokenDType dtype, const Seqs& seqs, int seqs_per_doc = 1) {
  IndexedDatasetWriter w(prefix, dtype);
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    w.add_sequence(std::span<const std::int32_t>(seqs[i]));
    if ((i + 1) % std::size_t(seqs_per_doc) == 0) w.end_document();
  }
  w.finish();
}

fs::path with_ext(fs::path p, const char* ext) {
  p += ext;
  return p;
}

}  // namespace

// ---- indexed datasets ---------------------------------------------------

TEST_CASE("indexed dataset: uint16 and int32 round trips through the writer and IndexedSource") {
  test::TempDir dir("indexed");
  for (auto [dtype, vocab] : {std::pair{TokenDType::u16, 50277}, std::pair{TokenDType::i32, 100000000}}) {
    CAPTURE(doremi::token_dtype_name(dtype));
    const auto seqs = make_seqs(60, int(dtype), vocab);
    const auto prefix = dir.path / fmt::format("d{}", int(dtype));
    write_indexed(prefix, dtype, seqs);
    const IndexedSource src(prefix);
    CHECK(src.size() == seqs.size());
    CHECK(src.total_tokens() == token_count(seqs));
    CHECK(read_all(src) == seqs);
    CHECK(src.shards()[0].dtype() == dtype);
    CHECK(fs::file_size(with_ext(prefix, ".bin")) == token_count(seqs) * doremi::token_dtype_size(dtype));
    CHECK(fs::file_size(with_ext(prefix, ".idx")) == 34 + 12 * seqs.size() + 8 * (seqs.size() + 1));
    CHECK(contains(src.describe(), prefix.string()));
    // Header bytes exactly as Megatron writes them.
    const auto idx = read_bytes(with_ext(prefix, ".idx"));
    CHECK(idx.substr(0, 9) == std::string("MMIDIDX\0\0", 9));
    CHECK(std::uint8_t(idx[17]) == std::uint8_t(dtype));
    // Out-of-range reads are errors naming the data.
    std::vector<std::int32_t> buf(3);
    CHECK(contains(error_of([&] { src.read(src.size(), 0, buf); }), prefix.string()));
    CHECK(contains(error_of([&] { src.read(0, seqs[0].size(), buf); }), "beyond its length"));
  }
  CHECK(doremi::best_token_dtype(50277) == TokenDType::u16);
  CHECK(doremi::best_token_dtype(65500) == TokenDType::i32);
}

TEST_CASE("indexed dataset: every integer dtype, int64 input, multi-sequence documents") {
  test::TempDir dir("indexed-types");
  for (auto dtype : {TokenDType::u8, TokenDType::i8, TokenDType::i16, TokenDType::i64}) {
    CAPTURE(doremi::token_dtype_name(dtype));
    const auto seqs = make_seqs(20, 3, dtype == TokenDType::i8 ? 128 : 256);
    const auto prefix = dir.path / fmt::format("t{}", int(dtype));
    IndexedDatasetWriter w(prefix, dtype);
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      const std::vector<std::int64_t> wide(seqs[i].begin(), seqs[i].end());
      w.add_sequence(std::span<const std::int64_t>(wide));
      if (i % 3 == 2) w.end_document();
    }
    w.finish();  // ends the trailing document of 2 sequences
    const IndexedDataset ds(prefix);
    CHECK(ds.dtype() == dtype);
    CHECK(read_all(ds) == seqs);
    REQUIRE(ds.documents() == 7);
    for (std::size_t d = 0; d < 7; ++d) CHECK(ds.document_begin(d) == 3 * d);
    CHECK(ds.document_begin(7) == 20);
  }
}

TEST_CASE("indexed dataset: several shards form one source") {
  test::TempDir dir("indexed-shards");
  Seqs all;
  std::vector<fs::path> prefixes;
  for (int k = 0; k < 3; ++k) {
    const auto seqs = make_seqs(10 + 7 * k, 11 * k, 50000);
    prefixes.push_back(dir.path / fmt::format("shard_{:02}", k));
    write_indexed(prefixes.back(), k == 1 ? TokenDType::i32 : TokenDType::u16, seqs, 4);
    all.insert(all.end(), seqs.begin(), seqs.end());
  }
  const IndexedSource src(prefixes);
  CHECK(src.size() == all.size());
  CHECK(src.total_tokens() == token_count(all));
  CHECK(read_all(src) == all);
  CHECK(src.shards().size() == 3);
  CHECK(src.shards()[0].documents() == 3);  // 10 sequences, 4 per document: 4 + 4 + 2
  CHECK(contains(src.describe(), "+2 more shards"));
  CHECK(contains(error_of([] { IndexedSource(std::vector<fs::path>{}); }), "no indexed dataset"));
}

TEST_CASE("indexed dataset writer: values that do not fit, misuse, and no output without finish()") {
  test::TempDir dir("indexed-writer");
  const auto prefix = dir.path / "w";
  {
    IndexedDatasetWriter w(prefix, TokenDType::u16);
    const std::vector<std::int32_t> ok{1, 2, 65535}, big{1, 65536}, neg{-1};
    w.add_document(std::span<const std::int32_t>(ok));
    const auto e = error_of([&] { w.add_sequence(std::span<const std::int32_t>(big)); });
    CHECK(contains(e, "65536"));
    CHECK(contains(e, "uint16"));
    CHECK(contains(e, with_ext(prefix, ".bin").string()));
    CHECK(contains(error_of([&] { w.add_sequence(std::span<const std::int32_t>(neg)); }), "does not fit"));
    CHECK(w.sequences() == 1);  // the failed sequences were not added
  }  // destroyed without finish(): nothing is left behind
  CHECK(fs::is_empty(dir.path));

  IndexedDatasetWriter w(prefix, TokenDType::i8);
  const std::vector<std::int32_t> t{-128, 127};
  w.add_document(std::span<const std::int32_t>(t));
  CHECK(contains(error_of([&] { w.add_document(std::span<const std::int32_t>(std::vector<std::int32_t>{128})); }),
                 "int8"));
  w.finish();
  CHECK(contains(error_of([&] { w.finish(); }), "after finish"));
  CHECK(contains(error_of([&] { w.end_document(); }), "after finish"));
  CHECK(read_all(IndexedDataset(prefix)) == Seqs{{-128, 127}});
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir.path)) ++files;
  CHECK(files == 2);  // no temporaries left

  // An empty dataset is valid: no sequences, no documents, an empty .bin.
  IndexedDatasetWriter(dir.path / "empty", TokenDType::i32).finish();
  const IndexedSource empty(dir.path / "empty");
  CHECK(empty.size() == 0);
  CHECK(empty.total_tokens() == 0);
  CHECK(empty.shards()[0].documents() == 0);
}

TEST_CASE("indexed dataset: optional lazy vocabulary check when reading") {
  test::TempDir dir("indexed-vocab");
  const auto prefix = dir.path / "v";
  write_indexed(prefix, TokenDType::u16, {{1, 2, 3}, {4, 900, 5}});
  const IndexedSource ok(prefix, {.vocab_size = 901});
  CHECK(read_all(ok) == Seqs{{1, 2, 3}, {4, 900, 5}});
  const IndexedSource small(prefix, {.vocab_size = 900});
  std::vector<std::int32_t> a(3), b(3);
  small.read(0, 0, a);  // fine: the check is per read
  const auto e = error_of([&] { small.read(1, 0, b); });
  CHECK(contains(e, "token id 900 at position 1 of sequence 1"));
  CHECK(contains(e, with_ext(prefix, ".bin").string()));
}

TEST_CASE("indexed dataset: corrupt and mismatched files are errors naming the file") {
  test::TempDir dir("indexed-bad");
  const auto good = dir.path / "good";
  write_indexed(good, TokenDType::u16, make_seqs(12, 1, 1000), 3);
  const std::string idx = read_bytes(with_ext(good, ".idx")), bin = read_bytes(with_ext(good, ".bin"));
  int case_no = 0;
  // Writes a variant of the pair and returns the error opening it.
  auto open_variant = [&](const std::string& idx_bytes, const std::string& bin_bytes) {
    const auto p = dir.path / fmt::format("case{}", case_no++);
    write_bytes(with_ext(p, ".idx"), idx_bytes);
    write_bytes(with_ext(p, ".bin"), bin_bytes);
    return std::pair{p, error_of([&] { IndexedSource s(p); })};
  };
  auto patched = [&](std::size_t at, const void* v, std::size_t n) {
    std::string s = idx;
    std::memcpy(s.data() + at, v, n);
    return s;
  };
  {
    auto [p, e] = open_variant(idx, bin);
    CHECK(e.empty());
  }
  SUBCASE("truncated .idx") {
    for (std::size_t n : {std::size_t(0), std::size_t(20), std::size_t(40), idx.size() - 1}) {
      auto [p, e] = open_variant(idx.substr(0, n), bin);
      CAPTURE(e);
      CHECK(contains(e, with_ext(p, ".idx").string()));
      CHECK(contains(e, "truncated"));
    }
  }
  SUBCASE("wrong magic, old TNTIDX index") {
    auto [p, e] = open_variant("MMIDIDY" + idx.substr(7), bin);
    CHECK(contains(e, with_ext(p, ".idx").string()));
    CHECK(contains(e, "magic"));
    auto [p2, e2] = open_variant(std::string("TNTIDX\0\0", 8) + idx.substr(8), bin);
    CHECK(contains(e2, "TNTIDX"));
  }
  SUBCASE("unsupported version") {
    const std::uint64_t v = 2;
    auto [p, e] = open_variant(patched(9, &v, 8), bin);
    CHECK(contains(e, with_ext(p, ".idx").string()));
    CHECK(contains(e, "version 2"));
  }
  SUBCASE("dtype codes: floating point (both tables) and unknown") {
    const std::uint8_t f64 = 6, f32 = 7, bad = 9;
    auto [p, e] = open_variant(patched(17, &f64, 1), bin);
    CHECK(contains(e, "dtype code 6 is floating point"));
    CHECK(contains(e, "GPT-NeoX: float32"));
    CHECK(contains(e, "2 bytes per element"));
    auto [p2, e2] = open_variant(patched(17, &f32, 1), bin);
    CHECK(contains(e2, "Megatron-LM: float32"));
    auto [p3, e3] = open_variant(patched(17, &bad, 1), bin);
    CHECK(contains(e3, "unknown dtype code 9"));
  }
  SUBCASE(".bin too short or not a multiple of the dtype") {
    auto [p, e] = open_variant(idx, bin.substr(0, bin.size() - 2));
    CHECK(contains(e, with_ext(p, ".idx").string()));
    CHECK(contains(e, with_ext(p, ".bin").string()));
    CHECK(contains(e, "beyond the end"));
    auto [p2, e2] = open_variant(idx, bin.substr(0, bin.size() - 1));
    CHECK(contains(e2, with_ext(p2, ".bin").string()));
    CHECK(contains(e2, "not a multiple"));
  }
  SUBCASE("negative size, negative pointer, bad document index, sequence count beyond the file") {
    const std::int32_t neg = -5;
    auto [p, e] = open_variant(patched(34 + 4 * 3, &neg, 4), bin);
    CHECK(contains(e, "sequence 3 has negative length -5"));
    const std::int64_t negp = -2;
    auto [p2, e2] = open_variant(patched(34 + 4 * 12 + 8 * 2, &negp, 8), bin);
    CHECK(contains(e2, "negative byte offset"));
    const std::int64_t doc = 99;
    auto [p3, e3] = open_variant(patched(34 + 12 * 12 + 8 * 1, &doc, 8), bin);
    CHECK(contains(e3, "document boundary 1 is 99"));
    const std::uint64_t huge = std::uint64_t(1) << 62;
    auto [p4, e4] = open_variant(patched(18, &huge, 8), bin);
    CHECK(contains(e4, "truncated"));
    CHECK(contains(e4, with_ext(p4, ".idx").string()));
  }
  SUBCASE("missing .bin or .idx") {
    const auto p = dir.path / "lonely";
    write_bytes(with_ext(p, ".idx"), idx);
    auto e = error_of([&] { IndexedSource s(p); });
    CHECK(contains(e, with_ext(p, ".bin").string()));
    CHECK(contains(e, "does not exist"));
    e = error_of([&] { IndexedSource s(dir.path / "nothing"); });
    CHECK(contains(e, (dir.path / "nothing.idx").string()));
  }
}

// ---- HuggingFace datasets folders -----------------------------------------

namespace {

// The fixture written once per test run by the real `datasets` (null when the
// Python packages are missing: the tests then skip, or fail under
// DOREMI_REQUIRE_PYTHON=1).
struct HfFixture {
  test::TempDir dir{"hf-datasets"};
  nlohmann::json expected;
  fs::path data() const { return dir.path / "data"; }
  fs::path extra(const char* name) const { return dir.path / "extra" / name; }
};

const HfFixture* hf_fixture() {
  static std::unique_ptr<HfFixture> fixture;
  static bool tried = false;
  if (!tried) {
    tried = true;
    if (!test::python_has("datasets, pyarrow")) return nullptr;
    auto f = std::make_unique<HfFixture>();
    const int rc = test::run_python_script("make_hf_datasets_fixture.py", f->dir.path.string());
    REQUIRE_MESSAGE(rc == 0, "make_hf_datasets_fixture.py failed");
    f->expected = doremi::read_json_file(f->dir.path / "expected.json");
    fixture = std::move(f);
  }
  if (!fixture && test::python_required()) FAIL("the datasets fixture is unavailable");
  return fixture.get();
}

Seqs as_seqs(const nlohmann::json& j) { return j.get<Seqs>(); }

// A writable copy of a fixture dataset folder.
fs::path copy_dataset(const fs::path& from, const fs::path& to) {
  fs::create_directories(to.parent_path());
  fs::copy(from, to, fs::copy_options::recursive);
  return to;
}

}  // namespace

TEST_CASE("arrow source: every sequence of real save_to_disk folders, both splits, three domains") {
  const auto* fx = hf_fixture();
  if (!fx) return;
  for (const char* split : {"train", "validation"}) {
    CAPTURE(split);
    const auto sp = doremi::open_arrow_split(fx->data(), split);
    REQUIRE(sp.domains == std::vector<std::string>{"alpha", "beta", "gamma"});
    for (std::size_t d = 0; d < sp.domains.size(); ++d) {
      CAPTURE(sp.domains[d]);
      const auto want = as_seqs(fx->expected["data"][split][sp.domains[d]]);
      const ArrowSource& src = sp.sources[d];
      CHECK(src.size() == want.size());
      CHECK(src.total_tokens() == token_count(want));
      CHECK(read_all(src) == want);
      CHECK(contains(src.describe(), sp.domains[d]));
    }
    // alpha: 2 files; gamma: 2 shard datasets of one file each, in sorted order.
    CHECK(sp.sources[0].files().size() == 2);
    CHECK(sp.sources[2].files().size() == 2);
    CHECK(sp.sources[2].files()[0].parent_path().filename() == "shard_00");
  }
  // train/alpha: 2500 rows in 2 files of 1000 + 250 rows: 4 record batches.
  const ArrowSource alpha(fx->data() / "train" / "alpha");
  CHECK(alpha.record_batches() == 4);
  // A subset of domains, by name.
  const auto only = doremi::open_arrow_split(fx->data(), "validation", {"gamma", "alpha"});
  CHECK(only.domains == std::vector<std::string>{"alpha", "gamma"});
  CHECK(contains(error_of([&] { doremi::open_arrow_split(fx->data(), "validation", {"delta"}); }), "delta"));
  CHECK(contains(error_of([&] { doremi::open_arrow_split(fx->data(), "test"); }), "test"));
}

TEST_CASE("arrow source: large_list<int64> and fixed_size_list<int32> columns, vocabulary check") {
  const auto* fx = hf_fixture();
  if (!fx) return;
  const ArrowSource large(fx->extra("large_list"));
  CHECK(read_all(large) == as_seqs(fx->expected["extra"]["large_list"]));
  const ArrowSource fixed(fx->extra("fixed"));
  const auto want = as_seqs(fx->expected["extra"]["fixed"]);
  CHECK(fixed.total_tokens() == token_count(want));
  CHECK(read_all(fixed) == want);

  const auto ids = as_seqs(fx->expected["data"]["validation"]["beta"]);
  std::int32_t top = 0;
  for (const auto& s : ids)
    for (auto t : s) top = std::max(top, t);
  const ArrowSource ok(fx->data() / "validation" / "beta", {.vocab_size = top + 1});
  CHECK(read_all(ok) == ids);
  const ArrowSource small(fx->data() / "validation" / "beta", {.vocab_size = top});
  const auto e = error_of([&] { read_all(small); });
  CHECK(contains(e, fmt::format("token id {}", top)));
  CHECK(contains(e, "data-00000-of-00001.arrow"));
}

TEST_CASE("arrow source: missing files, missing or mistyped input_ids, compressed bodies") {
  const auto* fx = hf_fixture();
  if (!fx) return;
  test::TempDir dir("hf-bad");
  SUBCASE("no input_ids column") {
    const auto e = error_of([&] { ArrowSource s(fx->extra("no_input_ids")); });
    CHECK(contains(e, "no column 'input_ids'"));
    CHECK(contains(e, "'text', 'tokens'"));
    CHECK(contains(e, (fx->extra("no_input_ids") / "data-00000-of-00001.arrow").string()));
    // ... but another list column can be named instead.
    const ArrowSource tokens(fx->extra("no_input_ids"), {.column = "tokens"});
    CHECK(read_all(tokens) == Seqs{{1, 2}, {3}});
  }
  SUBCASE("wrong column types") {
    for (const char* name : {"wrong_type", "float_ids"}) {
      const auto e = error_of([&] { ArrowSource s(fx->extra(name)); });
      CAPTURE(e);
      CHECK(contains(e, "column 'input_ids' has type"));
      CHECK(contains(e, (fx->extra(name) / "data-00000-of-00001.arrow").string()));
    }
  }
  SUBCASE("compressed record batches") {
    const auto e = error_of([&] { ArrowSource s(fx->extra("compressed")); });
    CHECK(contains(e, "compressed"));
    CHECK(contains(e, (fx->extra("compressed") / "data-00000-of-00001.arrow").string()));
  }
  SUBCASE("missing state.json, in a dataset and in a shard") {
    const auto ds = copy_dataset(fx->data() / "validation" / "beta", dir.path / "beta");
    fs::remove(ds / "state.json");
    auto e = error_of([&] { ArrowSource s(ds); });
    CHECK(contains(e, (ds / "state.json").string()));
    CHECK(contains(e, "missing state.json"));
    const auto sh = copy_dataset(fx->data() / "validation" / "gamma", dir.path / "gamma");
    fs::remove(sh / "shard_01" / "state.json");
    e = error_of([&] { ArrowSource s(sh); });
    CHECK(contains(e, (sh / "shard_01" / "state.json").string()));
    fs::create_directories(dir.path / "empty");
    CHECK(contains(error_of([&] { ArrowSource s(dir.path / "empty"); }), "missing state.json"));
    CHECK(contains(error_of([&] { ArrowSource s(dir.path / "absent"); }), "does not exist"));
  }
  SUBCASE("missing data file, bad state.json") {
    const auto ds = copy_dataset(fx->data() / "validation" / "alpha", dir.path / "alpha");
    fs::remove(ds / "data-00001-of-00002.arrow");
    auto e = error_of([&] { ArrowSource s(ds); });
    CHECK(contains(e, (ds / "data-00001-of-00002.arrow").string()));
    CHECK(contains(e, "does not exist"));
    write_bytes(ds / "state.json", "{\"_data_files\": [{\"filename\": \"../x.arrow\"}]}");
    CHECK(contains(error_of([&] { ArrowSource s(ds); }), "plain file name"));
    write_bytes(ds / "state.json", "{\"_data_files\": 3");
    CHECK(contains(error_of([&] { ArrowSource s(ds); }), (ds / "state.json").string()));
  }
}

TEST_CASE("arrow source: corrupt Arrow streams are errors naming the file, never out-of-bounds reads") {
  const auto* fx = hf_fixture();
  if (!fx) return;
  test::TempDir dir("hf-corrupt");
  const auto ds = copy_dataset(fx->data() / "validation" / "beta", dir.path / "beta");
  const auto file = ds / "data-00000-of-00001.arrow";
  const std::string good = read_bytes(file);
  auto open_with = [&](const std::string& bytes) {
    write_bytes(file, bytes);
    return error_of([&] { read_all(ArrowSource(ds)); });
  };
  REQUIRE(open_with(good).empty());
  SUBCASE("truncated anywhere, or just before the end-of-stream marker") {
    for (std::size_t n : {std::size_t(0), std::size_t(5), std::size_t(100), good.size() / 2, good.size() - 8,
                          good.size() - 1}) {
      CAPTURE(n);
      const auto e = open_with(good.substr(0, n));
      CHECK(contains(e, file.string()));
    }
    CHECK(contains(open_with(good.substr(0, good.size() - 8)), "without the end-of-stream marker"));
  }
  SUBCASE("flipped continuation marker") {
    std::string bad = good;
    bad[0] = '\x7f';
    auto e = open_with(bad);
    CHECK(contains(e, file.string()));
    CHECK(contains(e, "continuation marker"));
    // The second message's marker (after the schema).
    std::int32_t meta = 0;
    std::memcpy(&meta, good.data() + 4, 4);
    bad = good;
    bad[8 + std::size_t(meta)] = '\0';
    e = open_with(bad);
    CHECK(contains(e, file.string()));
    CHECK(contains(e, fmt::format("at byte {}", 8 + meta)));
  }
  SUBCASE("bad flatbuffer offsets and lengths") {
    std::string bad = good;
    const std::uint32_t far = 0x7fff0000;
    std::memcpy(bad.data() + 8, &far, 4);  // root table offset
    auto e = open_with(bad);
    CHECK(contains(e, file.string()));
    CHECK(contains(e, "flatbuffer"));
    bad = good;
    const std::int32_t huge = 0x7ffffff0;
    std::memcpy(bad.data() + 4, &huge, 4);  // metadata length
    e = open_with(bad);
    CHECK(contains(e, file.string()));
    CHECK(contains(e, "beyond the end of the file"));
  }
  SUBCASE("random byte corruption: errors or valid data, nothing else") {
    // Deterministic mutations of the metadata and the start of the body.
    std::uint64_t state = 0x9E3779B97F4A7C15ull;
    auto next = [&] {
      state ^= state << 13;
      state ^= state >> 7;
      state ^= state << 17;
      return state;
    };
    const std::size_t span = std::min<std::size_t>(good.size(), 1200);
    int errors = 0;
    for (int trial = 0; trial < 400; ++trial) {
      std::string bad = good;
      const int flips = 1 + int(next() % 4);
      for (int k = 0; k < flips; ++k) bad[next() % span] = char(next() & 0xff);
      const auto e = open_with(bad);
      if (!e.empty()) {
        ++errors;
        CHECK(contains(e, file.string()));
      }
    }
    CHECK(errors > 0);
  }
}
