#pragma once
// Megatron-LM / GPT-NeoX "MMIDIDX" indexed datasets: NAME.bin holds the tokens
// of all sequences back to back (no header); NAME.idx, little-endian:
//
//   0   9 bytes  magic "MMIDIDX\0\0"
//   9   u64      version = 1
//   17  u8       dtype code
//   18  u64      S, sequence count
//   26  u64      D, document index entries (documents + 1: the list starts with 0)
//   34  i32 × S  sequence lengths in tokens
//       i64 × S  byte offset of each sequence in NAME.bin
//       i64 × D  document boundaries, as sequence indices
//      (i8 × S   sequence modes, multimodal Megatron only; ignored)
//
//   doremi::IndexedDatasetWriter w("data/arxiv_00", doremi::TokenDType::u16);
//   w.add_document(tokens);                 // or add_sequence(...) ... end_document()
//   w.finish();                             // data/arxiv_00.bin + .idx, atomically
//
//   doremi::IndexedSource src({"data/arxiv_00", "data/arxiv_01"});   // one domain, two shards
//   std::vector<std::int32_t> t(src.length(7));
//   src.read(7, 0, t);
//
// Dtype codes. Megatron-LM's table: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64,
// 6 float64, 7 float32, 8 uint16. GPT-NeoX's (from fairseq): the same but
// 6 float32 and 7 float64. The two tables agree on every integer code and
// differ only on 6 and 7, which are floating point in both; token ids are
// integers, so there is nothing to tell apart for reading tokens: codes 6 and
// 7 are rejected, and the error reports the element width found in the .bin
// (bytes / tokens), which says which table wrote the file. Every integer code
// is read (int64 ids must fit int32); the writer emits the shared codes, so
// its files load in both Megatron-LM and GPT-NeoX.
//
// Memory: both files are memory-mapped; the reader holds O(#shards) state.
// Opening scans the index once (12 bytes per sequence, sequential) to check
// lengths, offsets and document boundaries against the .bin, so a corrupt or
// mismatched pair fails at open, with the file named, not mid-training.
#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "doremi/core/atomic_file.hpp"
#include "doremi/core/error.hpp"
#include "doremi/core/mapped_file.hpp"
#include "doremi/data/source.hpp"
#include "doremi/data/token_check.hpp"

namespace doremi {

// Integer token element types, by their dtype code (identical in Megatron-LM's
// and GPT-NeoX's tables).
enum class TokenDType : std::uint8_t { u8 = 1, i8 = 2, i16 = 3, i32 = 4, i64 = 5, u16 = 8 };

constexpr std::string_view token_dtype_name(TokenDType d) {
  switch (d) {
    case TokenDType::u8: return "uint8";
    case TokenDType::i8: return "int8";
    case TokenDType::i16: return "int16";
    case TokenDType::i32: return "int32";
    case TokenDType::i64: return "int64";
    case TokenDType::u16: return "uint16";
  }
  return "?";
}

constexpr std::size_t token_dtype_size(TokenDType d) {
  switch (d) {
    case TokenDType::u8: case TokenDType::i8: return 1;
    case TokenDType::i16: case TokenDType::u16: return 2;
    case TokenDType::i32: return 4;
    case TokenDType::i64: return 8;
  }
  return 0;
}

// The values a dtype holds, [min, max].
constexpr std::pair<std::int64_t, std::int64_t> token_dtype_range(TokenDType d) {
  switch (d) {
    case TokenDType::u8: return {0, 255};
    case TokenDType::i8: return {-128, 127};
    case TokenDType::i16: return {-32768, 32767};
    case TokenDType::u16: return {0, 65535};
    case TokenDType::i32: return {std::numeric_limits<std::int32_t>::min(), std::numeric_limits<std::int32_t>::max()};
    case TokenDType::i64: return {std::numeric_limits<std::int64_t>::min(), std::numeric_limits<std::int64_t>::max()};
  }
  return {0, 0};
}

// Megatron's choice for a vocabulary: uint16 below 65500 ids, else int32.
constexpr TokenDType best_token_dtype(std::int64_t vocab_size) {
  return vocab_size < 65500 ? TokenDType::u16 : TokenDType::i32;
}

struct IndexedDatasetOptions {
  // When > 0, read() checks every token it returns against [0, vocab_size).
  std::int64_t vocab_size = 0;
};

namespace detail {

inline constexpr std::array<char, 9> mmidx_magic{'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
inline constexpr std::size_t mmidx_header_bytes = 34;

template <class T>
T load_le(const std::byte* p) {  // the index's arrays start at byte 34: not aligned for int64
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Converts n elements of `dtype` at src into int32; an int64 id beyond int32
// is reported through `bad` (index, value).
template <class Bad>
void tokens_to_int32(TokenDType dtype, const std::byte* src, std::span<std::int32_t> out, Bad&& bad) {
  const std::size_t n = out.size();
  switch (dtype) {
    case TokenDType::u8:
      for (std::size_t j = 0; j < n; ++j) out[j] = std::int32_t(load_le<std::uint8_t>(src + j));
      return;
    case TokenDType::i8:
      for (std::size_t j = 0; j < n; ++j) out[j] = std::int32_t(load_le<std::int8_t>(src + j));
      return;
    case TokenDType::i16:
      for (std::size_t j = 0; j < n; ++j) out[j] = std::int32_t(load_le<std::int16_t>(src + 2 * j));
      return;
    case TokenDType::u16:
      for (std::size_t j = 0; j < n; ++j) out[j] = std::int32_t(load_le<std::uint16_t>(src + 2 * j));
      return;
    case TokenDType::i32:
      if (n) std::memcpy(out.data(), src, 4 * n);
      return;
    case TokenDType::i64:
      for (std::size_t j = 0; j < n; ++j) {
        const auto v = load_le<std::int64_t>(src + 8 * j);
        if (v < std::numeric_limits<std::int32_t>::min() || v > std::numeric_limits<std::int32_t>::max()) bad(j, v);
        out[j] = std::int32_t(v);
      }
      return;
  }
}

}  // namespace detail

// One NAME.bin / NAME.idx pair, memory-mapped and validated at open.
class IndexedDataset {
 public:
  // `prefix` is the path without the extension ("data/arxiv_00").
  explicit IndexedDataset(std::filesystem::path prefix, IndexedDatasetOptions options = {})
      : prefix_(std::move(prefix)), options_(options) {
    const auto idx_path = with_suffix(prefix_, ".idx");
    const auto bin_path = with_suffix(prefix_, ".bin");
    std::error_code ec;
    if (!std::filesystem::exists(idx_path, ec))
      fail("indexed dataset {}: index file {} does not exist (expected NAME.idx beside NAME.bin)", prefix_.string(),
           idx_path.string());
    if (!std::filesystem::exists(bin_path, ec))
      fail("indexed dataset {}: data file {} does not exist (expected NAME.bin beside NAME.idx)", prefix_.string(),
           bin_path.string());
    idx_ = MappedFile(idx_path, "indexed dataset index");
    bin_ = MappedFile(bin_path, "indexed dataset data file");
    parse_index();
  }

  const std::filesystem::path& prefix() const { return prefix_; }
  const std::filesystem::path& idx_path() const { return idx_.path(); }
  const std::filesystem::path& bin_path() const { return bin_.path(); }
  TokenDType dtype() const { return dtype_; }

  std::size_t size() const { return std::size_t(sequences_); }
  std::size_t length(std::size_t i) const {
    check_index(i);
    return std::size_t(size_at(i));
  }
  std::uint64_t total_tokens() const { return total_tokens_; }
  std::string describe() const { return fmt::format("indexed dataset {}", prefix_.string()); }

  void read(std::size_t i, std::size_t offset, std::span<std::int32_t> out) const {
    check_index(i);
    const auto n = std::size_t(size_at(i));
    if (offset > n || out.size() > n - offset)
      fail("{}: read of tokens [{}, {}) of sequence {} beyond its length {}", bin_.path().string(), offset,
           offset + out.size(), i, n);
    const std::byte* src = bin_.data() + pointer_at(i) + offset * elem_;
    detail::tokens_to_int32(dtype_, src, out, [&](std::size_t j, std::int64_t v) {
      fail("{}: token id {} at position {} of sequence {} does not fit int32", bin_.path().string(), v, offset + j, i);
    });
    check_token_range(out, options_.vocab_size, bin_.path().string(), i, offset);
  }

  // Documents: sequences [document_begin(d), document_begin(d + 1)) form
  // document d, for d < documents(). (Megatron stores D = documents + 1 entries.)
  std::size_t documents() const { return doc_entries_ ? std::size_t(doc_entries_ - 1) : 0; }
  std::size_t document_begin(std::size_t d) const {
    if (d >= doc_entries_)
      fail("{}: document boundary {} out of range ({} entries)", idx_.path().string(), d, doc_entries_);
    return std::size_t(detail::load_le<std::int64_t>(idx_.data() + docs_at_ + 8 * d));
  }

 private:
  static std::filesystem::path with_suffix(const std::filesystem::path& prefix, const char* ext) {
    auto p = prefix;
    p += ext;
    return p;
  }

  std::int32_t size_at(std::size_t i) const {
    return detail::load_le<std::int32_t>(idx_.data() + detail::mmidx_header_bytes + 4 * i);
  }
  std::uint64_t pointer_at(std::size_t i) const {
    return std::uint64_t(detail::load_le<std::int64_t>(idx_.data() + pointers_at_ + 8 * i));
  }
  void check_index(std::size_t i) const {
    if (i >= sequences_) fail("{}: sequence {} out of range (size {})", describe(), i, sequences_);
  }

  // Long on purpose: one check after another down the MMIDIDX header and
  // arrays, each naming its field; splitting it would scatter the layout.
  void parse_index() {
    const std::string idx = idx_.path().string(), bin = bin_.path().string();
    const std::byte* p = idx_.data();
    const std::uint64_t n = idx_.size();
    if (n < detail::mmidx_header_bytes)
      fail("{}: truncated index: {} bytes, expected at least the {}-byte MMIDIDX header", idx, n,
           detail::mmidx_header_bytes);
    if (std::memcmp(p, detail::mmidx_magic.data(), detail::mmidx_magic.size()) != 0) {
      if (std::memcmp(p, "TNTIDX\0\0", 8) == 0)
        fail("{}: this is fairseq's older non-mmap index (magic TNTIDX); expected an MMIDIDX index "
             "(convert with Megatron-LM's or GPT-NeoX's preprocessing)",
             idx);
      fail("{}: wrong magic: not an MMIDIDX index (expected the bytes \"MMIDIDX\\x00\\x00\" at offset 0)", idx);
    }
    const auto version = detail::load_le<std::uint64_t>(p + 9);
    if (version != 1) fail("{}: unsupported MMIDIDX version {}, expected 1", idx, version);
    const auto code = std::uint8_t(p[17]);
    sequences_ = detail::load_le<std::uint64_t>(p + 18);
    doc_entries_ = detail::load_le<std::uint64_t>(p + 26);

    // Sizes before products: 12 bytes per sequence and 8 per document entry must fit the file.
    const std::uint64_t body = n - detail::mmidx_header_bytes;
    if (sequences_ > body / 12 || doc_entries_ > (body - 12 * sequences_) / 8)
      fail("{}: truncated index: {} bytes, but the header announces {} sequences and {} document entries "
           "(expected {} bytes)",
           idx, n, sequences_, doc_entries_, expected_bytes_text());
    pointers_at_ = detail::mmidx_header_bytes + 4 * sequences_;
    docs_at_ = pointers_at_ + 8 * sequences_;
    const std::uint64_t expected = docs_at_ + 8 * doc_entries_;
    if (n != expected && n != expected + sequences_)  // + S: Megatron's optional multimodal sequence modes
      fail("{}: index has {} bytes, expected {} (or {} with sequence modes) for {} sequences and {} document "
           "entries: truncated or corrupt",
           idx, n, expected, expected + sequences_, sequences_, doc_entries_);

    // Lengths first: the element width of a float file is only known from them.
    std::uint64_t total = 0;
    for (std::uint64_t i = 0; i < sequences_; ++i) {
      const std::int32_t s = size_at(i);
      if (s < 0) fail("{}: sequence {} has negative length {}", idx, i, s);
      total += std::uint64_t(s);
    }
    total_tokens_ = total;

    switch (code) {
      case 1: case 2: case 3: case 4: case 5: case 8: dtype_ = TokenDType(code); break;
      case 6: case 7: {
        const std::string width =
            total ? fmt::format("{} bytes per element", double(bin_.size()) / double(total)) : "an empty .bin";
        fail("{}: dtype code {} is floating point (Megatron-LM: {}, GPT-NeoX: {}; {} has {}); token ids must be "
             "integers (codes 1-5 or 8)",
             idx, code, code == 6 ? "float64" : "float32", code == 6 ? "float32" : "float64", bin, width);
      }
      default:
        fail("{}: unknown dtype code {} (expected 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64 or 8 uint16)", idx,
             code);
    }
    elem_ = token_dtype_size(dtype_);
    const std::uint64_t bin_bytes = bin_.size();
    if (bin_bytes % elem_ != 0)
      fail("{}: {} bytes is not a multiple of the {}-byte {} tokens that {} declares", bin, bin_bytes, elem_,
           token_dtype_name(dtype_), idx);

    // The writers (Megatron-LM, GPT-NeoX, this library) store the sequences
    // back to back: sequence i starts where i - 1 ends and the last one ends
    // at the end of the .bin. A well-formed index with the wrong dtype or
    // wrong lengths breaks that chain, so it is checked, not only the bounds.
    std::uint64_t expected_ptr = 0;
    for (std::uint64_t i = 0; i < sequences_; ++i) {
      const auto ptr = detail::load_le<std::int64_t>(idx_.data() + pointers_at_ + 8 * i);
      const auto bytes = std::uint64_t(size_at(i)) * elem_;
      if (ptr < 0) fail("{}: sequence {} has negative byte offset {} into {}", idx, i, ptr, bin);
      if (std::uint64_t(ptr) > bin_bytes || bytes > bin_bytes - std::uint64_t(ptr))
        fail("{}: sequence {} ({} tokens at byte {}) ends at byte {}, beyond the end of {} ({} bytes): the .bin "
             "is truncated or belongs to another index",
             idx, i, size_at(i), ptr, std::uint64_t(ptr) + bytes, bin, bin_bytes);
      if (std::uint64_t(ptr) != expected_ptr)
        fail("{}: sequence {} starts at byte {} of {}, expected {} (where sequence {} ends, at {} {} tokens): the "
             "index's dtype or lengths do not match the .bin",
             idx, i, ptr, bin, expected_ptr, i == 0 ? std::string("-") : std::to_string(i - 1),
             token_dtype_size(dtype_), token_dtype_name(dtype_));
      expected_ptr += bytes;
    }
    if (expected_ptr != bin_bytes)
      fail("{}: the {} sequences hold {} bytes of {} tokens, but {} has {} bytes: the index's dtype or lengths do "
           "not match the .bin",
           idx, sequences_, expected_ptr, token_dtype_name(dtype_), bin, bin_bytes);
    std::int64_t prev = 0;
    for (std::uint64_t d = 0; d < doc_entries_; ++d) {
      const auto b = detail::load_le<std::int64_t>(idx_.data() + docs_at_ + 8 * d);
      if (b < prev || std::uint64_t(b) > sequences_)
        fail("{}: document boundary {} is {}, expected a non-decreasing sequence index in [{}, {}]", idx, d, b, prev,
             sequences_);
      prev = b;
    }
  }

  std::string expected_bytes_text() const {
    // 34 + 12 S + 8 D, computed without overflow for the message.
    const unsigned __int128 e = (unsigned __int128)detail::mmidx_header_bytes +
                                (unsigned __int128)12 * sequences_ + (unsigned __int128)8 * doc_entries_;
    if (e > std::numeric_limits<std::uint64_t>::max()) return "more than 2^64";
    return std::to_string(std::uint64_t(e));
  }

  std::filesystem::path prefix_;
  IndexedDatasetOptions options_;
  MappedFile idx_, bin_;
  TokenDType dtype_ = TokenDType::u16;
  std::size_t elem_ = 2;
  std::uint64_t sequences_ = 0, doc_entries_ = 0, total_tokens_ = 0;
  std::uint64_t pointers_at_ = 0, docs_at_ = 0;
};

static_assert(TokenSource<IndexedDataset>);

// One domain's data in one or several indexed datasets (shards), as one
// TokenSource: sequence indices run through the shards in the given order.
class IndexedSource {
 public:
  explicit IndexedSource(std::vector<std::filesystem::path> prefixes, IndexedDatasetOptions options = {}) {
    if (prefixes.empty()) fail("IndexedSource: no indexed dataset prefixes given");
    shards_.reserve(prefixes.size());
    starts_.reserve(prefixes.size() + 1);
    starts_.push_back(0);
    for (auto& p : prefixes) {
      shards_.emplace_back(std::move(p), options);
      starts_.push_back(starts_.back() + shards_.back().size());
      total_ += shards_.back().total_tokens();
    }
  }
  explicit IndexedSource(std::filesystem::path prefix, IndexedDatasetOptions options = {})
      : IndexedSource(std::vector<std::filesystem::path>{std::move(prefix)}, options) {}

  std::size_t size() const { return std::size_t(starts_.back()); }
  std::size_t length(std::size_t i) const {
    auto [k, j] = locate(i);
    return shards_[k].length(j);
  }
  void read(std::size_t i, std::size_t offset, std::span<std::int32_t> out) const {
    auto [k, j] = locate(i);
    shards_[k].read(j, offset, out);
  }
  std::uint64_t total_tokens() const { return total_; }
  std::string describe() const {
    if (shards_.size() == 1) return shards_[0].describe();
    return fmt::format("indexed dataset {} (+{} more shards)", shards_[0].prefix().string(), shards_.size() - 1);
  }

  const std::vector<IndexedDataset>& shards() const { return shards_; }

 private:
  // (shard, index within it) of global sequence i.
  std::pair<std::size_t, std::size_t> locate(std::size_t i) const {
    if (i >= size()) fail("{}: sequence {} out of range (size {})", describe(), i, size());
    const auto it = std::upper_bound(starts_.begin(), starts_.end(), std::uint64_t(i));
    const auto k = std::size_t(it - starts_.begin()) - 1;
    return {k, std::size_t(i - starts_[k])};
  }

  std::vector<IndexedDataset> shards_;
  std::vector<std::uint64_t> starts_;
  std::uint64_t total_ = 0;
};

static_assert(TokenSource<IndexedSource>);

// Writes NAME.bin and NAME.idx. Tokens stream to a temporary .bin as they are
// added (the writer keeps 12 bytes per sequence for the index); finish() syncs
// both files under temporary names, then renames the .bin and then the .idx
// into place, so NAME.idx never names a partial .bin. A writer destroyed
// without finish() leaves nothing behind.
class IndexedDatasetWriter {
 public:
  IndexedDatasetWriter(std::filesystem::path prefix, TokenDType dtype) : prefix_(std::move(prefix)), dtype_(dtype) {
    switch (dtype) {
      case TokenDType::u8: case TokenDType::i8: case TokenDType::i16: case TokenDType::i32: case TokenDType::i64:
      case TokenDType::u16: break;
      default: fail("IndexedDatasetWriter {}: unknown token dtype code {}", prefix_.string(), int(dtype));
    }
    bin_path_ = prefix_;
    bin_path_ += ".bin";
    idx_path_ = prefix_;
    idx_path_ += ".idx";
    bin_temp_ = detail::sibling_temp_name(bin_path_, "tmp");
    bin_.open(bin_temp_, std::ios::binary | std::ios::trunc);
    if (!bin_) fail("cannot create temporary file {} for {}: {}", bin_temp_.string(), bin_path_.string(),
                    std::strerror(errno));
    doc_idx_.push_back(0);
  }
  IndexedDatasetWriter(const IndexedDatasetWriter&) = delete;
  IndexedDatasetWriter& operator=(const IndexedDatasetWriter&) = delete;
  ~IndexedDatasetWriter() {
    if (!finished_) {
      bin_.close();
      std::error_code ec;
      std::filesystem::remove(bin_temp_, ec);
      std::filesystem::remove(idx_temp_, ec);
    }
  }

  const std::filesystem::path& prefix() const { return prefix_; }
  TokenDType dtype() const { return dtype_; }
  std::size_t sequences() const { return sizes_.size(); }
  std::size_t documents() const { return doc_idx_.size() - 1; }

  // Appends one sequence. Throws doremi::Error (and adds nothing) when a value
  // does not fit the dtype.
  void add_sequence(std::span<const std::int32_t> tokens) { add(tokens); }
  void add_sequence(std::span<const std::int64_t> tokens) { add(tokens); }
  // Closes the current document: the sequences added since the last call.
  void end_document() {
    check_open("end_document");
    doc_idx_.push_back(std::int64_t(sizes_.size()));
  }
  // One sequence that is a whole document.
  void add_document(std::span<const std::int32_t> tokens) {
    add_sequence(tokens);
    end_document();
  }
  void add_document(std::span<const std::int64_t> tokens) {
    add_sequence(tokens);
    end_document();
  }

  // Ends a trailing unfinished document, writes the index, publishes both files.
  void finish() {
    check_open("finish");
    if (doc_idx_.back() != std::int64_t(sizes_.size())) end_document();
    const std::string bin = bin_path_.string();
    bin_.flush();
    if (!bin_) fail("cannot write {}: write error (disk full?)", bin);
    bin_.close();
    if (bin_.fail()) fail("cannot write {}: write error while closing (disk full?)", bin);
    detail::fsync_path(bin_temp_, false);

    idx_temp_ = detail::sibling_temp_name(idx_path_, "tmp");
    {
      std::ofstream idx(idx_temp_, std::ios::binary | std::ios::trunc);
      if (!idx) fail("cannot create temporary file {} for {}: {}", idx_temp_.string(), idx_path_.string(),
                     std::strerror(errno));
      auto put = [&](const void* p, std::size_t n) { idx.write(static_cast<const char*>(p), std::streamsize(n)); };
      put(detail::mmidx_magic.data(), detail::mmidx_magic.size());
      const std::uint64_t version = 1, s = sizes_.size(), d = doc_idx_.size();
      const auto code = std::uint8_t(dtype_);
      put(&version, 8);
      put(&code, 1);
      put(&s, 8);
      put(&d, 8);
      put(sizes_.data(), 4 * sizes_.size());
      put(pointers_.data(), 8 * pointers_.size());
      put(doc_idx_.data(), 8 * doc_idx_.size());
      idx.flush();
      if (!idx) fail("cannot write {}: write error (disk full?)", idx_path_.string());
      idx.close();
      if (idx.fail()) fail("cannot write {}: write error while closing (disk full?)", idx_path_.string());
    }
    detail::fsync_path(idx_temp_, false);
    std::error_code ec;
    std::filesystem::rename(bin_temp_, bin_path_, ec);
    if (ec) fail("cannot rename {} to {}: {}", bin_temp_.string(), bin, ec.message());
    std::filesystem::rename(idx_temp_, idx_path_, ec);
    if (ec) fail("cannot rename {} to {}: {}", idx_temp_.string(), idx_path_.string(), ec.message());
    finished_ = true;
    detail::fsync_path(detail::parent_or_dot(idx_path_), true);
  }

 private:
  void check_open(const char* what) const {
    if (finished_) fail("IndexedDatasetWriter {}: {}() after finish()", prefix_.string(), what);
  }

  template <class T>
  void add(std::span<const T> tokens) {
    check_open("add_sequence");
    const auto [lo, hi] = token_dtype_range(dtype_);
    for (std::size_t j = 0; j < tokens.size(); ++j) {
      const std::int64_t v = tokens[j];
      if (v < lo || v > hi)
        fail("{}: token {} at position {} of sequence {} does not fit {} [{}, {}]", bin_path_.string(), v, j,
             sizes_.size(), token_dtype_name(dtype_), lo, hi);
    }
    if (tokens.size() > std::size_t(std::numeric_limits<std::int32_t>::max()))
      fail("{}: sequence {} has {} tokens; the index stores lengths as int32", bin_path_.string(), sizes_.size(),
           tokens.size());
    const std::size_t w = token_dtype_size(dtype_);
    buffer_.resize(tokens.size() * w);
    for (std::size_t j = 0; j < tokens.size(); ++j) {
      const std::int64_t v = tokens[j];
      switch (dtype_) {
        case TokenDType::u8: store(j, std::uint8_t(v)); break;
        case TokenDType::i8: store(j, std::int8_t(v)); break;
        case TokenDType::i16: store(j, std::int16_t(v)); break;
        case TokenDType::u16: store(j, std::uint16_t(v)); break;
        case TokenDType::i32: store(j, std::int32_t(v)); break;
        case TokenDType::i64: store(j, std::int64_t(v)); break;
      }
    }
    bin_.write(reinterpret_cast<const char*>(buffer_.data()), std::streamsize(buffer_.size()));
    if (!bin_) fail("cannot write {}: write error (disk full?)", bin_temp_.string());
    sizes_.push_back(std::int32_t(tokens.size()));
    pointers_.push_back(std::int64_t(offset_));
    offset_ += buffer_.size();
  }

  template <class U>
  void store(std::size_t j, U v) {
    std::memcpy(buffer_.data() + j * sizeof(U), &v, sizeof(U));
  }

  std::filesystem::path prefix_, bin_path_, idx_path_, bin_temp_, idx_temp_;
  TokenDType dtype_;
  std::ofstream bin_;
  std::vector<std::byte> buffer_;
  std::vector<std::int32_t> sizes_;
  std::vector<std::int64_t> pointers_;
  std::vector<std::int64_t> doc_idx_;
  std::uint64_t offset_ = 0;
  bool finished_ = false;
};

}  // namespace doremi
