#pragma once
// Byte-level BPE tokenizers (GPT-2, GPT-NeoX) whose ids equal HuggingFace
// `tokenizers` exactly.
//
//   auto tok = BpeTokenizer::from_file(path);   // tokenizer.json, a folder holding one,
//                                               // or a folder with vocab.json + merges.txt
//   std::vector<std::int32_t> ids = tok.encode("Hello world");
//   std::string text = tok.decode(ids);
//   tok.vocab_size(); tok.token_to_id("Ġthe"); tok.id_to_token(42); tok.end_of_text_id();
//
// The pipeline is HF's: added tokens with normalized=false are cut out of the
// raw text; the pieces in between are normalized (NFC when the file says so)
// and added tokens with normalized=true are cut out of those; the rest goes
// through the ByteLevel pre-tokenizer (optional prefix space, the GPT-2 split
// pattern) and the BPE model. The ByteLevel post-processor adds nothing, so
// encode() returns exactly HF's `Tokenizer.encode(text).ids`.
//
// Supported tokenizer.json: model BPE (merges as "a b" strings or ["a", "b"]
// pairs, optional unk_token / fuse_unk / ignore_merges; no dropout, no
// subword prefix or suffix, no byte_fallback), normalizer null or NFC (alone
// or in a Sequence), pre_tokenizer ByteLevel (alone or in a Sequence),
// post_processor and decoder ByteLevel or null. Anything else is refused
// with an error naming the file and field. truncation and padding are ignored
// (encode never truncates or pads). vocab.json + merges.txt get GPT-2's
// setup: ByteLevel without prefix space, no normalizer, and <|endoftext|> as
// a special token when the vocabulary has it.
//
// Speed: the input is validated once; BPE runs on raw bytes with merges in an
// open-addressing table keyed by id pairs and HF's priority-queue merge loop;
// each word's ids are kept in a bounded cache (65536 direct-mapped slots,
// words up to 255 bytes) shared by copies of the tokenizer and safe to use
// from several threads.
//
// decode() concatenates each token's bytes (HF's ByteLevel decoder without
// the final lossy UTF-8 conversion): it returns exactly the bytes that were
// encoded, even when the ids cut a character in two. Unknown ids throw.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "doremi/core/error.hpp"
#include "doremi/core/json.hpp"
#include "doremi/data/added_tokens.hpp"
#include "doremi/data/byte_level.hpp"
#include "doremi/data/unicode.hpp"

namespace doremi {

namespace bpe_detail {

inline std::uint64_t mix64(std::uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ULL;
  k ^= k >> 33;
  return k;
}

inline std::uint64_t hash_bytes(std::string_view s) {
  std::uint64_t h = 0x9E3779B97F4A7C15ULL ^ s.size();
  std::size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    std::uint64_t w;
    __builtin_memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * 0x9FB21C651E98DF25ULL;
    h ^= h >> 29;
  }
  if (i < s.size()) {
    std::uint64_t w = 0;
    __builtin_memcpy(&w, s.data() + i, s.size() - i);
    h = (h ^ w) * 0x9FB21C651E98DF25ULL;
  }
  return mix64(h);
}

// Merge rules: (left id, right id) -> (rank, merged id), open addressing.
class PairMap {
 public:
  struct Entry {
    std::uint64_t key = kEmpty;
    std::int32_t rank = 0;
    std::int32_t id = 0;
  };
  static constexpr std::uint64_t kEmpty = ~std::uint64_t{0};

  static std::uint64_t key(std::int32_t a, std::int32_t b) {
    return (std::uint64_t(std::uint32_t(a)) << 32) | std::uint32_t(b);
  }
  void reserve(std::size_t n) {
    std::size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    table_.assign(cap, Entry{});
    mask_ = cap - 1;
  }
  // Later rules for the same pair replace earlier ones (as HF's HashMap collect).
  void insert_or_assign(std::int32_t a, std::int32_t b, std::int32_t rank, std::int32_t id) {
    if (2 * (size_ + 1) > table_.size()) grow();
    const std::uint64_t k = key(a, b);
    std::size_t i = mix64(k) & mask_;
    while (table_[i].key != kEmpty && table_[i].key != k) i = (i + 1) & mask_;
    if (table_[i].key == kEmpty) ++size_;
    table_[i] = Entry{k, rank, id};
  }
  const Entry* find(std::int32_t a, std::int32_t b) const {
    const std::uint64_t k = key(a, b);
    std::size_t i = mix64(k) & mask_;
    while (true) {
      const Entry& e = table_[i];
      if (e.key == k) return &e;
      if (e.key == kEmpty) return nullptr;
      i = (i + 1) & mask_;
    }
  }
  std::size_t size() const { return size_; }

 private:
  void grow() {
    std::vector<Entry> old = std::move(table_);
    reserve(std::max<std::size_t>(16, old.size()));
    size_ = 0;
    for (const Entry& e : old)
      if (e.key != kEmpty) insert_or_assign(std::int32_t(e.key >> 32), std::int32_t(e.key & 0xFFFFFFFFu), e.rank, e.id);
  }
  std::vector<Entry> table_ = std::vector<Entry>(16);
  std::size_t mask_ = 15;
  std::size_t size_ = 0;
};

// Bounded cache of word -> ids: direct-mapped slots behind sharded mutexes.
class WordCache {
 public:
  static constexpr std::size_t kShards = 64;
  static constexpr std::size_t kSlotsPerShard = 1024;
  static constexpr std::size_t kMaxWordBytes = 255;

  // Appends the cached ids of `word` to out; false on a miss.
  bool lookup(std::uint64_t hash, std::string_view word, std::vector<std::int32_t>& out) {
    Shard& sh = shards_[hash & (kShards - 1)];
    std::lock_guard<std::mutex> lock(sh.mutex);
    if (sh.slots.empty()) return false;
    const Slot& s = sh.slots[(hash >> 6) & (kSlotsPerShard - 1)];
    if (s.hash != hash || s.word != word) return false;
    out.insert(out.end(), s.ids.begin(), s.ids.end());
    return true;
  }
  void insert(std::uint64_t hash, std::string_view word, std::span<const std::int32_t> ids) {
    Shard& sh = shards_[hash & (kShards - 1)];
    std::lock_guard<std::mutex> lock(sh.mutex);
    if (sh.slots.empty()) sh.slots.resize(kSlotsPerShard);
    Slot& s = sh.slots[(hash >> 6) & (kSlotsPerShard - 1)];
    s.hash = hash;
    s.word.assign(word);
    s.ids.assign(ids.begin(), ids.end());
  }

 private:
  struct Slot {
    std::uint64_t hash = 0;
    std::string word;
    std::vector<std::int32_t> ids;
  };
  struct Shard {
    std::mutex mutex;
    std::vector<Slot> slots;  // allocated on first insert
  };
  std::array<Shard, kShards> shards_;
};

}  // namespace bpe_detail

class BpeTokenizer {
 public:
  // A tokenizer.json file, a folder holding tokenizer.json, or a folder
  // holding vocab.json and merges.txt (or the path of that vocab.json).
  static BpeTokenizer from_file(const std::filesystem::path& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (fs::is_directory(path, ec)) {
      if (fs::exists(path / "tokenizer.json", ec)) return from_tokenizer_json(path / "tokenizer.json");
      if (fs::exists(path / "vocab.json", ec) && fs::exists(path / "merges.txt", ec))
        return from_vocab_merges(path / "vocab.json", path / "merges.txt");
      fail("tokenizer folder {} has neither tokenizer.json nor vocab.json + merges.txt", path.string());
    }
    if (!fs::exists(path, ec)) fail("tokenizer file {} does not exist", path.string());
    if (path.filename() == "vocab.json" && fs::exists(path.parent_path() / "merges.txt", ec))
      return from_vocab_merges(path, path.parent_path() / "merges.txt");
    return from_tokenizer_json(path);
  }

  // Long on purpose: tokenizer.json's sections (model, normalizer,
  // pre-tokenizer, decoder, added tokens) checked in order, each with its
  // own message; the sections are marked below.
  static BpeTokenizer from_tokenizer_json(const std::filesystem::path& file) {
    const nlohmann::json j = read_json_file(file);
    Loader ld(file.string());
    Model& m = *ld.m;
    m.source = file.string();
    if (!j.is_object()) ld.bad("(top level)", "is not a JSON object");

    // Model.
    const auto& model = ld.member(j, "model", "model");
    if (!model.is_object()) ld.bad("model", "is not an object");
    if (model.contains("type") && model["type"] != "BPE")
      ld.bad("model.type", "is {}, only BPE is supported", model["type"].dump());
    ld.require_null_or(model, "dropout", "model.dropout", [](const nlohmann::json& v) {
      return v.is_number() && v.get<double>() == 0.0;
    });
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
      ld.require_null_or(model, key, std::string("model.") + key,
                         [](const nlohmann::json& v) { return v.is_string() && v.get<std::string>().empty(); });
    ld.require_null_or(model, "byte_fallback", "model.byte_fallback",
                       [](const nlohmann::json& v) { return v.is_boolean() && !v.get<bool>(); });
    m.fuse_unk = ld.flag(model, "fuse_unk", "model.fuse_unk", false);
    m.ignore_merges = ld.flag(model, "ignore_merges", "model.ignore_merges", false);
    ld.load_vocab(ld.member(model, "vocab", "model.vocab"), "model.vocab");
    const auto& merges = ld.member(model, "merges", "model.merges");
    if (!merges.is_array()) ld.bad("model.merges", "is not an array");
    std::vector<std::pair<std::string, std::string>> pairs;
    pairs.reserve(merges.size());
    for (std::size_t r = 0; r < merges.size(); ++r) {
      const auto& e = merges[r];
      const std::string where = fmt::format("model.merges[{}]", r);
      if (e.is_string()) {
        const std::string& s = e.get_ref<const std::string&>();
        const auto sp = s.find(' ');
        if (sp == std::string::npos) ld.bad(where, "\"{}\" is not two tokens separated by a space", s);
        pairs.emplace_back(s.substr(0, sp), s.substr(sp + 1));
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
        pairs.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
      } else {
        ld.bad(where, "is neither a string \"a b\" nor a pair [\"a\", \"b\"]");
      }
    }
    ld.load_merges(pairs, [](std::size_t r) { return fmt::format("model.merges[{}]", r); });
    if (model.contains("unk_token") && !model["unk_token"].is_null()) {
      if (!model["unk_token"].is_string()) ld.bad("model.unk_token", "is not a string");
      const auto it = m.token_ids.find(model["unk_token"].get<std::string>());
      if (it == m.token_ids.end()) ld.bad("model.unk_token", "{} is not in model.vocab", model["unk_token"].dump());
      m.unk = it->second;
    }

    // Normalizer.
    if (j.contains("normalizer")) ld.load_normalizer(j["normalizer"], "normalizer");

    // Pre-tokenizer.
    const auto pre = j.contains("pre_tokenizer") ? j["pre_tokenizer"] : nlohmann::json();
    const nlohmann::json* byte_level = nullptr;
    if (pre.is_object() && type_of(pre) == "ByteLevel") {
      byte_level = &pre;
    } else if (pre.is_object() && type_of(pre) == "Sequence" && pre.contains("pretokenizers") &&
               pre["pretokenizers"].is_array() && pre["pretokenizers"].size() == 1 &&
               pre["pretokenizers"][0].is_object() && type_of(pre["pretokenizers"][0]) == "ByteLevel") {
      byte_level = &pre["pretokenizers"][0];
    } else {
      ld.bad("pre_tokenizer", "is {}, only ByteLevel is supported", pre.dump().substr(0, 200));
    }
    m.add_prefix_space = ld.flag(*byte_level, "add_prefix_space", "pre_tokenizer.add_prefix_space", true);
    m.use_regex = ld.flag(*byte_level, "use_regex", "pre_tokenizer.use_regex", true);
    (void)ld.flag(*byte_level, "trim_offsets", "pre_tokenizer.trim_offsets", true);  // offsets only

    for (const char* key : {"post_processor", "decoder"}) {
      if (!j.contains(key) || j[key].is_null()) continue;
      if (!j[key].is_object() || type_of(j[key]) != "ByteLevel")
        ld.bad(key, "is {}, only ByteLevel or null is supported", j[key].dump().substr(0, 200));
    }

    // Added tokens.
    if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
      const auto& added = j["added_tokens"];
      if (!added.is_array()) ld.bad("added_tokens", "is not an array");
      for (std::size_t k = 0; k < added.size(); ++k) {
        const std::string where = fmt::format("added_tokens[{}]", k);
        const auto& a = added[k];
        if (!a.is_object()) ld.bad(where, "is not an object");
        AddedToken t;
        const auto& content = ld.member(a, "content", where + ".content");
        if (!content.is_string() || content.get_ref<const std::string&>().empty())
          ld.bad(where + ".content", "is not a non-empty string");
        t.content = content.get<std::string>();
        if (unicode::invalid_utf8_offset(t.content) != unicode::npos) ld.bad(where + ".content", "is not valid UTF-8");
        t.id = ld.id_value(ld.member(a, "id", where + ".id"), where + ".id");
        t.special = ld.flag(a, "special", where + ".special", false);
        t.normalized = ld.flag(a, "normalized", where + ".normalized", !t.special);
        t.lstrip = ld.flag(a, "lstrip", where + ".lstrip", false);
        t.rstrip = ld.flag(a, "rstrip", where + ".rstrip", false);
        t.single_word = ld.flag(a, "single_word", where + ".single_word", false);
        ld.add_token(std::move(t));
      }
    }
    ld.finish();
    return BpeTokenizer(std::move(ld.m));
  }

  // The classic GPT-2 pair: vocab.json {token: id} and merges.txt ("#version"
  // line, then one "a b" merge per line).
  static BpeTokenizer from_vocab_merges(const std::filesystem::path& vocab_file,
                                        const std::filesystem::path& merges_file) {
    Loader ld(vocab_file.string());
    Model& m = *ld.m;
    m.source = vocab_file.parent_path().string();
    ld.load_vocab(read_json_file(vocab_file), "(vocabulary)");

    std::ifstream in(merges_file, std::ios::binary);
    if (!in) fail("cannot open merges file {}", merges_file.string());
    std::vector<std::pair<std::string, std::string>> pairs;
    std::vector<std::size_t> line_of;
    std::string line;
    std::size_t line_no = 0;
    while (std::getline(in, line)) {
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.starts_with("#version") || line.empty()) continue;
      const auto sp = line.find(' ');
      if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
        fail("merges file {}: line {} is not two tokens separated by one space: \"{}\"", merges_file.string(),
             line_no, line.substr(0, 200));
      pairs.emplace_back(line.substr(0, sp), line.substr(sp + 1));
      line_of.push_back(line_no);
    }
    if (in.bad()) fail("cannot read merges file {}", merges_file.string());
    ld.file = merges_file.string();
    ld.load_merges(pairs, [&](std::size_t r) { return fmt::format("line {}", line_of[r]); });
    ld.file = vocab_file.string();
    m.add_prefix_space = false;
    m.use_regex = true;
    if (const auto it = m.token_ids.find("<|endoftext|>"); it != m.token_ids.end()) {
      AddedToken t;
      t.content = "<|endoftext|>";
      t.id = it->second;
      t.special = true;
      t.normalized = false;
      ld.add_token(std::move(t));
    }
    ld.finish();
    return BpeTokenizer(std::move(ld.m));
  }

  std::vector<std::int32_t> encode(std::string_view text) const {
    std::vector<std::int32_t> ids;
    ids.reserve(text.size() / 3 + 8);
    encode_append(text, ids);
    return ids;
  }

  // Appends the ids of `text` to `out` (out is unchanged when text is not valid UTF-8).
  void encode_append(std::string_view text, std::vector<std::int32_t>& out) const {
    unicode::require_utf8(text, "text to encode");
    const Model& m = *m_;
    Scratch scratch;
    auto on_token = [&](std::int32_t id) { out.push_back(id); };
    auto on_normalized = [&](std::string_view piece) {
      m.normalized_added.split(piece, [&](std::string_view t) { pre_tokenize(t, scratch, out); }, on_token);
    };
    m.raw_added.split(
        text,
        [&](std::string_view segment) {
          if (!m.nfc) return on_normalized(segment);
          scratch.normalized.clear();
          unicode::nfc_append(segment, scratch.normalized);
          on_normalized(scratch.normalized);
        },
        on_token);
  }

  std::string decode(std::span<const std::int32_t> ids) const {
    const Model& m = *m_;
    std::string out;
    for (const std::int32_t id : ids) {
      if (id < 0 || std::size_t(id) >= m.bytes.size() || !m.defined[std::size_t(id)])
        fail("cannot decode id {}: not in the vocabulary of {} (size {})", id, m.source, m.bytes.size());
      out += m.bytes[std::size_t(id)];
    }
    return out;
  }

  // HF's `tokenizer.decode(ids, skip_special_tokens=skip_special)` (before
  // transformers' clean-up): ids outside the vocabulary are dropped (HF's
  // decode skips ids it has no token for), special added tokens too when
  // skip_special, and the bytes become text through unicode::utf8_lossy.
  std::string decode_text(std::span<const std::int32_t> ids, bool skip_special) const {
    const Model& m = *m_;
    std::string out;
    for (const std::int32_t id : ids) {
      if (id < 0 || std::size_t(id) >= m.bytes.size() || !m.defined[std::size_t(id)]) continue;
      if (skip_special && is_special(id)) continue;
      out += m.bytes[std::size_t(id)];
    }
    return unicode::utf8_lossy(out);
  }

  // True for the ids of added tokens marked special ("<|endoftext|>").
  bool is_special(std::int32_t id) const {
    for (const auto& t : m_->added)
      if (t.id == id && t.special) return true;
    return false;
  }

  // One more than the largest id (model vocabulary and added tokens).
  int vocab_size() const { return int(m_->tokens.size()); }

  // The id of a token as the vocabulary spells it ("Ġthe", "<|endoftext|>").
  std::optional<std::int32_t> token_to_id(std::string_view token) const {
    const auto it = m_->token_ids.find(std::string(token));
    if (it == m_->token_ids.end()) return std::nullopt;
    return it->second;
  }

  const std::string& id_to_token(std::int32_t id) const {
    const Model& m = *m_;
    if (id < 0 || std::size_t(id) >= m.tokens.size() || !m.defined[std::size_t(id)])
      fail("id {} is not in the vocabulary of {} (size {})", id, m.source, m.tokens.size());
    return m.tokens[std::size_t(id)];
  }

  // The id of <|endoftext|>.
  std::int32_t end_of_text_id() const {
    if (const auto id = token_to_id("<|endoftext|>")) return *id;
    fail("tokenizer {} has no <|endoftext|> token", m_->source);
  }

  const std::string& source() const { return m_->source; }
  std::string describe() const { return fmt::format("BPE tokenizer {} ({} ids)", m_->source, vocab_size()); }

 private:
  struct Model {
    std::string source;
    std::vector<std::string> tokens;  // id -> vocabulary spelling
    std::vector<std::string> bytes;   // id -> decoded bytes
    std::vector<std::uint8_t> defined;
    std::unordered_map<std::string, std::int32_t> token_ids;  // model vocabulary, then added tokens
    std::array<std::int32_t, 256> byte_ids{};                 // id of each single byte, -1 if none
    bpe_detail::PairMap merges;
    std::unordered_map<std::string, std::int32_t> raw_vocab;  // bytes -> id, only for ignore_merges
    std::optional<std::int32_t> unk;
    bool fuse_unk = false;
    bool ignore_merges = false;
    bool nfc = false;
    bool add_prefix_space = false;
    bool use_regex = true;
    AddedTokenMatcher raw_added;         // normalized = false: matched on the raw text
    AddedTokenMatcher normalized_added;  // normalized = true: matched after normalization
    std::vector<AddedToken> added;
  };

  // The "type" string of a component object ("" when absent, not a string, or not an object).
  static std::string type_of(const nlohmann::json& o) {
    if (!o.is_object()) return "";
    const auto it = o.find("type");
    return it != o.end() && it->is_string() ? it->get<std::string>() : "";
  }

  // Builds a Model; every error names the file and the field.
  struct Loader {
    explicit Loader(std::string f) : file(std::move(f)), m(std::make_shared<Model>()) {}
    std::string file;
    std::shared_ptr<Model> m;
    std::size_t model_vocab = 0;        // one more than the largest model id
    std::size_t model_vocab_count = 0;  // entries in the model vocabulary
    std::unordered_map<std::string, std::int32_t> added_ids;
    std::optional<std::int32_t> max_added;

    template <class... Args>
    [[noreturn]] void bad(std::string_view field, fmt::format_string<Args...> f, Args&&... args) const {
      fail("{}: field {}: {}", file, field, fmt::format(f, std::forward<Args>(args)...));
    }
    const nlohmann::json& member(const nlohmann::json& obj, const char* key, std::string_view where) const {
      if (!obj.is_object() || !obj.contains(key)) bad(where, "is missing");
      return obj[key];
    }
    bool flag(const nlohmann::json& obj, const char* key, std::string_view where, bool fallback) const {
      if (!obj.contains(key) || obj[key].is_null()) return fallback;
      if (!obj[key].is_boolean()) bad(where, "is {}, expected true or false", obj[key].dump());
      return obj[key].get<bool>();
    }
    template <class Ok>
    void require_null_or(const nlohmann::json& obj, const char* key, std::string_view where, Ok ok) const {
      if (!obj.contains(key) || obj[key].is_null() || ok(obj[key])) return;
      bad(where, "is {}, which is not supported", obj[key].dump());
    }
    std::int32_t id_value(const nlohmann::json& v, std::string_view where) const {
      if (!v.is_number_integer() || v.get<std::int64_t>() < 0 || v.get<std::int64_t>() >= (1 << 24))
        bad(where, "is {}, expected an id in [0, 2^24)", v.dump());
      return std::int32_t(v.get<std::int64_t>());
    }
    void define(std::int32_t id, const std::string& token) {
      const std::size_t i = std::size_t(id);
      if (i >= m->tokens.size()) {
        m->tokens.resize(i + 1);
        m->bytes.resize(i + 1);
        m->defined.resize(i + 1, 0);
      }
      m->tokens[i] = token;
      m->bytes[i].clear();
      // HF's ByteLevel decoder: a token maps through the byte table when all its
      // characters are in it, otherwise its UTF-8 is taken as is.
      if (!byte_level::token_to_bytes(token, m->bytes[i])) m->bytes[i] = token;
      m->defined[i] = 1;
    }
    void load_vocab(const nlohmann::json& vocab, std::string_view where) {
      if (!vocab.is_object()) bad(where, "is not an object of token: id");
      // The id tables are sized by the largest id: a few bytes of JSON must not
      // claim gigabytes ({"a": 16777215}). Real vocabularies are dense; up to
      // 65536 unused ids are accepted.
      std::int64_t max_id = -1;
      for (auto it = vocab.begin(); it != vocab.end(); ++it)
        max_id = std::max<std::int64_t>(max_id, id_value(it.value(), fmt::format("{}[\"{}\"]", where, it.key())));
      if (max_id >= std::int64_t(vocab.size()) + 65536)
        bad(where, "its largest id is {} but it has only {} entries; more than 65536 ids would be unused", max_id,
            vocab.size());
      m->token_ids.reserve(vocab.size() * 2);
      for (auto it = vocab.begin(); it != vocab.end(); ++it) {
        const std::string field = fmt::format("{}[\"{}\"]", where, it.key());
        const std::int32_t id = id_value(it.value(), field);
        if (std::size_t(id) < m->defined.size() && m->defined[std::size_t(id)])
          bad(field, "id {} is also used by \"{}\"", id, m->tokens[std::size_t(id)]);
        define(id, it.key());
        m->token_ids.emplace(it.key(), id);
      }
      model_vocab = m->tokens.size();
      model_vocab_count = vocab.size();
      m->byte_ids.fill(-1);
      for (int b = 0; b < 256; ++b) {
        std::string spelled;
        unicode::append_utf8(spelled, byte_level::byte_to_char()[std::size_t(b)]);
        if (const auto it = m->token_ids.find(spelled); it != m->token_ids.end()) m->byte_ids[std::size_t(b)] = it->second;
      }
    }
    template <class Where>
    void load_merges(const std::vector<std::pair<std::string, std::string>>& pairs, Where where) {
      m->merges.reserve(pairs.size());
      auto id_of = [&](const std::string& t, std::size_t r) {
        const auto it = m->token_ids.find(t);
        if (it == m->token_ids.end()) bad(where(r), "token \"{}\" is not in the vocabulary", t);
        return it->second;
      };
      for (std::size_t r = 0; r < pairs.size(); ++r) {
        const auto& [a, b] = pairs[r];
        const std::int32_t ia = id_of(a, r), ib = id_of(b, r), merged = id_of(a + b, r);
        m->merges.insert_or_assign(ia, ib, std::int32_t(r), merged);
      }
    }
    void load_normalizer(const nlohmann::json& n, std::string_view where) {
      if (n.is_null()) return;
      const std::string type = type_of(n);
      if (type == "NFC") {
        m->nfc = true;
      } else if (type == "Sequence" && n.contains("normalizers") && n["normalizers"].is_array()) {
        for (std::size_t k = 0; k < n["normalizers"].size(); ++k)
          load_normalizer(n["normalizers"][k], fmt::format("{}.normalizers[{}]", where, k));
      } else {
        bad(where, "is {}, only NFC (or none) is supported", n.dump().substr(0, 200));
      }
    }
    // HF's AddedVocabulary::add_tokens for one token: the id is the one the
    // content already has (an earlier added token, then the model vocabulary),
    // else the next free id after the model vocabulary and earlier added
    // tokens. The id written in the file is not used (HF only warns when it differs).
    void add_token(AddedToken t) {
      for (const AddedToken& o : m->added)
        if (o.content == t.content && o.special == t.special && o.normalized == t.normalized &&
            o.lstrip == t.lstrip && o.rstrip == t.rstrip && o.single_word == t.single_word)
          return;
      if (const auto it = added_ids.find(t.content); it != added_ids.end()) {
        t.id = it->second;
      } else if (const auto jt = m->token_ids.find(t.content); jt != m->token_ids.end()) {
        t.id = jt->second;
      } else if (!max_added) {
        t.id = std::int32_t(model_vocab_count);
      } else {
        t.id = (std::size_t(*max_added) >= model_vocab_count || model_vocab_count == 0)
                   ? *max_added + 1
                   : std::int32_t(model_vocab_count);
      }
      added_ids[t.content] = t.id;
      max_added = max_added ? std::max(*max_added, t.id) : t.id;
      define(t.id, t.content);
      m->token_ids[t.content] = t.id;
      // HF keeps one entry per content: the special list, else the added list.
      auto same = [&](const AddedToken& o) { return o.content == t.content; };
      if (std::find_if(m->added.begin(), m->added.end(), same) == m->added.end()) m->added.push_back(t);
      else for (AddedToken& o : m->added) if (same(o)) o.id = t.id;
    }
    void finish() {
      Model& mm = *m;
      for (const AddedToken& t : mm.added) {
        if (t.normalized) mm.normalized_added.add(t, mm.nfc ? unicode::nfc(t.content) : t.content);
        else mm.raw_added.add(t, t.content);
      }
      if (mm.ignore_merges)
        for (std::size_t i = 0; i < model_vocab; ++i)
          if (mm.defined[i]) mm.raw_vocab.emplace(mm.bytes[i], std::int32_t(i));
    }
  };

  struct Scratch {
    std::string normalized;
    std::string prefixed;
    struct Symbol {
      std::int32_t id, prev, next;
    };
    struct Merge {
      std::int32_t rank, pos, id;
      bool operator<(const Merge& o) const {  // for a min-heap on (rank, pos) via std::*_heap
        return rank != o.rank ? rank > o.rank : pos > o.pos;
      }
    };
    std::vector<Symbol> symbols;
    std::vector<Merge> heap;
    std::vector<std::int32_t> word_ids;
  };

  explicit BpeTokenizer(std::shared_ptr<Model> m)
      : m_(std::move(m)), cache_(std::make_shared<bpe_detail::WordCache>()) {}

  // ByteLevel pre-tokenizer on one normalized piece, then BPE on each word.
  void pre_tokenize(std::string_view piece, Scratch& sc, std::vector<std::int32_t>& out) const {
    if (piece.empty()) return;
    const Model& m = *m_;
    if (m.add_prefix_space && piece.front() != ' ') {
      sc.prefixed.assign(1, ' ');
      sc.prefixed.append(piece);
      piece = sc.prefixed;
    }
    if (!m.use_regex) return encode_word(piece, sc, out);
    byte_level::split_gpt2(piece, [&](std::string_view word) { encode_word(word, sc, out); });
  }

  void encode_word(std::string_view word, Scratch& sc, std::vector<std::int32_t>& out) const {
    const Model& m = *m_;
    if (word.size() == 1) {
      const std::int32_t id = m.byte_ids[static_cast<unsigned char>(word[0])];
      if (id >= 0) {
        out.push_back(id);
        return;
      }
    }
    if (m.ignore_merges) {
      if (const auto it = m.raw_vocab.find(std::string(word)); it != m.raw_vocab.end()) {
        out.push_back(it->second);
        return;
      }
    }
    const bool cacheable = word.size() <= bpe_detail::WordCache::kMaxWordBytes;
    std::uint64_t hash = 0;
    if (cacheable) {
      hash = bpe_detail::hash_bytes(word);
      if (cache_->lookup(hash, word, out)) return;
    }
    merge_word(word, sc);
    out.insert(out.end(), sc.word_ids.begin(), sc.word_ids.end());
    if (cacheable) cache_->insert(hash, word, sc.word_ids);
  }

  // HF's Word::merge_all: a min-heap of candidate merges ordered by (rank,
  // position); stale entries are skipped when the pair at that position no
  // longer produces the same token.
  void merge_word(std::string_view word, Scratch& sc) const {
    const Model& m = *m_;
    auto& sym = sc.symbols;
    sym.clear();
    bool last_unk = false;
    for (unsigned char b : word) {
      const std::int32_t id = m.byte_ids[b];
      if (id >= 0) {
        sym.push_back({id, 0, 0});
        last_unk = false;
      } else if (m.unk) {
        if (!(m.fuse_unk && last_unk)) sym.push_back({*m.unk, 0, 0});
        last_unk = true;
      }
    }
    const std::int32_t n = std::int32_t(sym.size());
    for (std::int32_t i = 0; i < n; ++i) {
      sym[std::size_t(i)].prev = i - 1;
      sym[std::size_t(i)].next = i + 1 < n ? i + 1 : -1;
    }
    auto& heap = sc.heap;
    heap.clear();
    for (std::int32_t i = 0; i + 1 < n; ++i)
      if (const auto* e = m.merges.find(sym[std::size_t(i)].id, sym[std::size_t(i + 1)].id))
        heap.push_back({e->rank, i, e->id});
    std::make_heap(heap.begin(), heap.end());
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end());
      const Scratch::Merge top = heap.back();
      heap.pop_back();
      auto& cur = sym[std::size_t(top.pos)];
      if (cur.id < 0 || cur.next < 0) continue;  // removed, or last symbol
      const std::int32_t right_pos = cur.next;
      const auto right = sym[std::size_t(right_pos)];
      const auto* e = m.merges.find(cur.id, right.id);
      if (!e || e->id != top.id) continue;  // stale entry
      cur.id = top.id;
      cur.next = right.next;
      sym[std::size_t(right_pos)].id = -1;
      if (right.next >= 0) sym[std::size_t(right.next)].prev = top.pos;
      if (cur.prev >= 0)
        if (const auto* p = m.merges.find(sym[std::size_t(cur.prev)].id, cur.id)) {
          heap.push_back({p->rank, cur.prev, p->id});
          std::push_heap(heap.begin(), heap.end());
        }
      if (cur.next >= 0)
        if (const auto* q = m.merges.find(cur.id, sym[std::size_t(cur.next)].id)) {
          heap.push_back({q->rank, top.pos, q->id});
          std::push_heap(heap.begin(), heap.end());
        }
    }
    sc.word_ids.clear();
    for (const auto& s : sym)
      if (s.id >= 0) sc.word_ids.push_back(s.id);
  }

  std::shared_ptr<const Model> m_;
  std::shared_ptr<bpe_detail::WordCache> cache_;
};

}  // namespace doremi
