#pragma once
// Preprocessing: raw documents → per-domain Megatron indexed datasets.
//
// Inputs are JSONL files, plain or zstd-compressed (the Pile's
// `{"text": ..., "meta": {"pile_set_name": ...}}`, domain from a JSON key
// path), or folders whose subfolders are domains and whose files are
// documents. Each document is tokenized with the end-of-text token appended;
// per domain either packed into chunks of seq_len tokens (remainder of each
// input dropped, as the public runs) or kept as one sequence per document.
// Documents go to train or validation by a seeded draw per document.
//
// Output (one shard per input and domain, so the Pile's 30 files give 30
// shards a domain):
//   OUT/train/<domain>/<input-id>.bin/.idx     OUT/validation/<domain>/...
//   OUT/manifest.json    documents, sequences and tokens per domain and split
//   OUT/.progress/<input-id>.json   written after an input's shards are complete
// Every file is written under a temporary name and renamed; an input whose
// progress record exists is skipped, so an interrupted run leaves no
// half-written shard and a rerun continues with what is missing.
//
// Per-document problems (invalid JSON or UTF-8, a missing domain or text
// field, an empty document) are counted by kind with the first place each
// occurred, reported in the manifest and on stderr, or fail the run with
// `fail_on_bad_document`.
#include <algorithm>
#include <atomic>
#include <exception>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <omp.h>
#include <zstd.h>

#include "doremi/core/atomic_file.hpp"
#include "doremi/core/error.hpp"
#include "doremi/core/json.hpp"
#include "doremi/core/progress.hpp"
#include "doremi/core/rng.hpp"
#include "doremi/data/indexed_dataset.hpp"

namespace doremi {

struct PreprocessConfig {
  std::vector<std::filesystem::path> inputs;   // JSONL(.zst) files or folders of domain subfolders
  std::filesystem::path output;
  std::string domain_key = "meta.pile_set_name";  // dotted JSON key path (JSONL inputs)
  std::string text_key = "text";
  int seq_len = 1024;
  bool pack = true;                // false: one sequence per document ("nopack")
  double validation_share = 0.0;   // share of documents sent to validation
  std::uint64_t seed = 1234;
  int threads = 0;                 // 0: all OpenMP threads
  bool fail_on_bad_document = false;
  bool progress = true;

  void validate() const {
    if (inputs.empty()) fail("preprocess: no inputs given");
    if (output.empty()) fail("preprocess: no output folder given");
    if (seq_len < 2) fail("preprocess: seq_len must be at least 2 (got {})", seq_len);
    if (!(validation_share >= 0 && validation_share < 1))
      fail("preprocess: validation share must lie in [0, 1) (got {})", validation_share);
    if (text_key.empty()) fail("preprocess: empty text key");
    for (const auto& p : inputs)
      if (!std::filesystem::exists(p)) fail("preprocess: input {} does not exist", p.string());
  }
};

struct PreprocessReport {
  nlohmann::json manifest;
  std::size_t inputs_skipped = 0;  // already done by an earlier run
};

namespace detail {

// Reads a file line by line, decompressing zstd when the name ends in .zst.
class LineReader {
 public:
  explicit LineReader(const std::filesystem::path& path) : path_(path), in_(path, std::ios::binary) {
    if (!in_) fail("preprocess: cannot open {}", path.string());
    zstd_ = path.extension() == ".zst" || path.extension() == ".zstd";
    if (zstd_) {
      ds_ = ZSTD_createDStream();
      ZSTD_initDStream(ds_);
      inbuf_.resize(ZSTD_DStreamInSize());
      outbuf_.resize(ZSTD_DStreamOutSize());
    }
  }
  ~LineReader() {
    if (ds_) ZSTD_freeDStream(ds_);
  }
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  // Longer lines are an error (no real document is that large; a corrupt or
  // malicious .zst could otherwise decompress into all of memory).
  static constexpr std::size_t max_line_bytes = std::size_t(256) << 20;

  // False at the end of the file. A final line without '\n' is returned.
  bool next(std::string& line) {
    line.clear();
    for (;;) {
      const auto nl = pending_.find('\n', pos_);
      if (nl != std::string::npos) {
        line.assign(pending_, pos_, nl - pos_);
        pos_ = nl + 1;
        return true;
      }
      pending_.erase(0, pos_);
      pos_ = 0;
      if (pending_.size() > max_line_bytes)  // a compressed file can expand without bound
        fail("preprocess: {}: a line longer than {} MiB (before byte {} of the file); JSONL holds one document "
             "per line",
             path_.string(), max_line_bytes >> 20, consumed_);
      if (!fill()) {
        if (pending_.empty()) return false;
        line.swap(pending_);
        pending_.clear();
        return true;
      }
    }
  }
  std::uint64_t bytes_read() const { return consumed_; }

 private:
  bool fill() {
    if (!zstd_) {
      char buf[1 << 16];
      in_.read(buf, sizeof buf);
      const auto n = in_.gcount();
      consumed_ += std::uint64_t(n);
      pending_.append(buf, std::size_t(n));
      return n > 0;
    }
    for (;;) {
      if (zin_.pos == zin_.size) {
        in_.read(inbuf_.data(), std::streamsize(inbuf_.size()));
        const auto n = in_.gcount();
        if (n <= 0) {
          if (!frame_done_) fail("preprocess: {} ends inside a zstd frame (truncated file)", path_.string());
          return false;
        }
        consumed_ += std::uint64_t(n);
        zin_ = {inbuf_.data(), std::size_t(n), 0};
      }
      ZSTD_outBuffer out{outbuf_.data(), outbuf_.size(), 0};
      const std::size_t r = ZSTD_decompressStream(ds_, &out, &zin_);
      if (ZSTD_isError(r)) fail("preprocess: {} is not valid zstd data: {}", path_.string(), ZSTD_getErrorName(r));
      frame_done_ = r == 0;
      if (out.pos > 0) {
        pending_.append(outbuf_.data(), out.pos);
        return true;
      }
    }
  }

  std::filesystem::path path_;
  std::ifstream in_;
  bool zstd_ = false, frame_done_ = true;
  ZSTD_DStream* ds_ = nullptr;
  std::vector<char> inbuf_, outbuf_;
  ZSTD_inBuffer zin_{nullptr, 0, 0};
  std::string pending_;
  std::size_t pos_ = 0;
  std::uint64_t consumed_ = 0;
};

inline const nlohmann::json* find_key_path(const nlohmann::json& j, const std::string& path) {
  const nlohmann::json* cur = &j;
  std::size_t start = 0;
  while (start <= path.size()) {
    const std::size_t dot = path.find('.', start);
    const std::string key = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (!cur->is_object()) return nullptr;
    const auto it = cur->find(key);
    if (it == cur->end()) return nullptr;
    cur = &*it;
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return cur;
}

// A domain name as a folder name, injectively: every byte outside
// [A-Za-z0-9._-], and a leading '.', becomes %XX (so distinct names never
// share a folder, and no name is hidden, "." or ".."); the empty name is "%".
// The manifest records each domain's folder.
inline std::string domain_folder(const std::string& domain) {
  if (domain.empty()) return "%";
  std::string s;
  for (std::size_t i = 0; i < domain.size(); ++i) {
    const auto c = static_cast<unsigned char>(domain[i]);
    const bool plain = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
                       c == '-' || (c == '.' && i > 0);
    if (plain) s.push_back(char(c));
    else s += fmt::format("%{:02X}", c);
  }
  return s;
}

// The mapping of manifests written before domain_folder escaped (for those
// without a "folder" entry) and of input ids: '/', '\\' and control characters
// replaced by '_'.
inline std::string legacy_domain_folder(const std::string& domain) {
  std::string s = domain;
  for (char& c : s)
    if (c == '/' || c == '\\' || static_cast<unsigned char>(c) < 32) c = '_';
  if (s.empty() || s == "." || s == "..") s = "_" + s;
  return s;
}

// One unit of work: a JSONL file, or a folder of domain subfolders.
inline std::string input_id(std::size_t index, const std::filesystem::path& p) {
  std::string stem = p.filename().string();
  if (stem.empty()) stem = p.parent_path().filename().string();
  for (const char* ext : {".zst", ".zstd", ".jsonl", ".json"})
    if (stem.size() > std::strlen(ext) && stem.ends_with(ext)) stem.resize(stem.size() - std::strlen(ext));
  return fmt::format("{:05d}-{}", index, legacy_domain_folder(stem));
}

struct Problems {
  std::map<std::string, std::uint64_t> count;
  std::map<std::string, std::string> first;
  void add(const std::string& kind, const std::string& where) {
    if (count[kind]++ == 0) first[kind] = where;
  }
};

}  // namespace detail

// `Tok` needs encode(std::string_view) -> std::vector<std::int32_t>,
// end_of_text_id() and vocab_size(), and must be copyable (one copy per thread).
template <class Tok>
// Long on purpose: one pass over the inputs that shares the writers, the
// per-domain counters and the progress record between its phases (read,
// tokenize in parallel, write in order, record).
PreprocessReport preprocess(const PreprocessConfig& cfg, const Tok& tokenizer) {
  namespace fs = std::filesystem;
  cfg.validate();
  const int threads = cfg.threads > 0 ? cfg.threads : omp_get_max_threads();
  const std::int32_t eot = tokenizer.end_of_text_id();
  const TokenDType dtype = best_token_dtype(std::int64_t(tokenizer.vocab_size()));
  fs::create_directories(cfg.output / ".progress");
  std::vector<Tok> toks(std::size_t(threads), tokenizer);
  PreprocessReport report;

  std::uint64_t total_bytes = 0;
  for (const auto& p : cfg.inputs) total_bytes += fs::is_regular_file(p) ? fs::file_size(p) : 0;
  ProgressBar bar("preprocess", long(std::max<std::uint64_t>(total_bytes >> 20, 1)), 64);
  std::uint64_t done_bytes = 0;

  for (std::size_t in_index = 0; in_index < cfg.inputs.size(); ++in_index) {
    const fs::path& input = cfg.inputs[in_index];
    const std::string id = detail::input_id(in_index, input);
    const fs::path record = cfg.output / ".progress" / (id + ".json");
    if (fs::exists(record)) {
      ++report.inputs_skipped;
      if (fs::is_regular_file(input)) done_bytes += fs::file_size(input);
      continue;
    }
    struct Sink {
      std::unique_ptr<IndexedDatasetWriter> writer;
      std::vector<std::int32_t> pending;  // pack mode: tokens not yet in a full chunk
      std::uint64_t documents = 0, tokens = 0;
      std::uint64_t nopack_chunks = 0;  // Σ ⌈len/seq_len⌉: the paper's "nopack" size count
    };
    std::map<std::pair<std::string, std::string>, Sink> sinks;  // (split, domain)
    detail::Problems problems;
    std::uint64_t doc_index = 0;

    auto emit = [&](const std::string& domain, bool validation, std::vector<std::int32_t>&& ids) {
      const std::string split = validation ? "validation" : "train";
      Sink& s = sinks[{split, domain}];
      if (!s.writer) {
        const fs::path dir = cfg.output / split / detail::domain_folder(domain);
        fs::create_directories(dir);
        s.writer = std::make_unique<IndexedDatasetWriter>(dir / id, dtype);
      }
      ++s.documents;
      s.tokens += ids.size();
      s.nopack_chunks += (ids.size() + std::size_t(cfg.seq_len) - 1) / std::size_t(cfg.seq_len);
      if (!cfg.pack) {
        s.writer->add_document(std::span<const std::int32_t>(ids));
        return;
      }
      s.pending.insert(s.pending.end(), ids.begin(), ids.end());
      std::size_t off = 0;
      for (; off + std::size_t(cfg.seq_len) <= s.pending.size(); off += std::size_t(cfg.seq_len))
        s.writer->add_document(std::span<const std::int32_t>(s.pending.data() + off, std::size_t(cfg.seq_len)));
      s.pending.erase(s.pending.begin(), s.pending.begin() + std::ptrdiff_t(off));
    };

    // A block of raw documents is parsed and tokenized in parallel, then
    // written in order, so the output does not depend on the thread count.
    struct Doc {
      std::string raw, where, domain, problem;
      std::vector<std::int32_t> ids;
      std::exception_ptr error;  // not a document problem (out of memory, ...): rethrown after the block
    };
    std::vector<Doc> block;
    auto process_block = [&](bool json) {
#pragma omp parallel for schedule(dynamic, 8) num_threads(threads)
      for (std::ptrdiff_t i = 0; i < std::ptrdiff_t(block.size()); ++i) {
        Doc& d = block[std::size_t(i)];
        try {
          std::string text;
          if (json) {
            const auto j = nlohmann::json::parse(d.raw, nullptr, false);
            if (j.is_discarded()) {
              d.problem = "invalid JSON";
              continue;
            }
            const auto* dom = detail::find_key_path(j, cfg.domain_key);
            if (!dom || !dom->is_string()) {
              d.problem = fmt::format("no string at domain key '{}'", cfg.domain_key);
              continue;
            }
            const auto* t = detail::find_key_path(j, cfg.text_key);
            if (!t || !t->is_string()) {
              d.problem = fmt::format("no string at text key '{}'", cfg.text_key);
              continue;
            }
            d.domain = dom->template get<std::string>();
            text = t->template get<std::string>();
          } else {
            text.swap(d.raw);
          }
          if (text.empty()) {
            d.problem = "empty document";
            continue;
          }
          d.ids = toks[std::size_t(omp_get_thread_num())].encode(text);
          d.ids.push_back(eot);
        } catch (const Error& e) {
          d.problem = std::string(e.what()).find("UTF-8") != std::string::npos ? "invalid UTF-8" : "tokenizer error";
        } catch (...) {  // an exception must not leave the OpenMP region (std::terminate)
          d.error = std::current_exception();
        }
        d.raw.clear();
        d.raw.shrink_to_fit();
      }
      for (Doc& d : block)
        if (d.error) std::rethrow_exception(d.error);
      for (Doc& d : block) {
        const bool validation = Philox::uniform(cfg.seed, in_index, doc_index++) < cfg.validation_share;
        if (!d.problem.empty()) {
          if (cfg.fail_on_bad_document) fail("preprocess: {}: {}", d.where, d.problem);
          problems.add(d.problem, d.where);
          continue;
        }
        emit(d.domain, validation, std::move(d.ids));
      }
      block.clear();
    };

    if (fs::is_directory(input)) {
      std::vector<fs::path> domains;
      for (const auto& e : fs::directory_iterator(input))
        if (e.is_directory()) domains.push_back(e.path());
      std::sort(domains.begin(), domains.end());
      if (domains.empty()) fail("preprocess: folder {} has no domain subfolders", input.string());
      for (const auto& dom : domains) {
        std::vector<fs::path> files;
        for (const auto& e : fs::recursive_directory_iterator(dom))
          if (e.is_regular_file()) files.push_back(e.path());
        std::sort(files.begin(), files.end());
        for (const auto& f : files) {
          std::ifstream in(f, std::ios::binary);
          Doc d;
          d.raw.assign(std::istreambuf_iterator<char>(in), {});
          d.where = f.string();
          d.domain = dom.filename().string();
          block.push_back(std::move(d));
          if (block.size() >= 256) process_block(false);
        }
      }
      process_block(false);
    } else {
      detail::LineReader reader(input);
      std::string line;
      std::uint64_t line_no = 0;
      while (reader.next(line)) {
        ++line_no;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        Doc d;
        d.raw = std::move(line);
        d.where = fmt::format("{}:{}", input.string(), line_no);
        block.push_back(std::move(d));
        if (block.size() >= 1024) {
          process_block(true);
          if (cfg.progress) bar.update(long((done_bytes + reader.bytes_read()) >> 20), input.filename().string());
        }
      }
      process_block(true);
      if (fs::is_regular_file(input)) done_bytes += fs::file_size(input);
    }

    nlohmann::json rec{{"input", input.string()}, {"domains", nlohmann::json::object()}};
    for (auto& [key, s] : sinks) {
      const auto& [split, domain] = key;
      const std::uint64_t sequences = s.writer->sequences();
      s.writer->finish();
      auto& entry = rec["domains"][domain][split];
      entry = {{"documents", s.documents}, {"tokens", s.tokens}, {"sequences", sequences},
               {"pack_chunks", s.tokens / std::uint64_t(cfg.seq_len)}, {"nopack_chunks", s.nopack_chunks},
               {"folder", detail::domain_folder(domain)}};
    }
    nlohmann::json probs = nlohmann::json::object();
    for (const auto& [kind, n] : problems.count) {
      probs[kind] = {{"count", n}, {"first", problems.first[kind]}};
      fmt::print(stderr, "preprocess: {}: {} document(s) skipped ({}), first at {}\n", input.string(), n, kind,
                 problems.first[kind]);
    }
    rec["skipped"] = probs;
    write_file_atomic(record, rec.dump(2) + "\n");
    if (cfg.progress) bar.update(long(done_bytes >> 20), input.filename().string());
  }

  // The manifest sums the progress records of every input.
  nlohmann::json domains = nlohmann::json::object(), skipped = nlohmann::json::object();
  for (std::size_t i = 0; i < cfg.inputs.size(); ++i) {
    const auto rec_path = cfg.output / ".progress" / (detail::input_id(i, cfg.inputs[i]) + ".json");
    const auto rec = read_json_file(rec_path);
    try {  // written by this function; a record edited or damaged since is an error naming it
      for (const auto& [domain, splits] : rec.at("domains").items())
        for (const auto& [split, e] : splits.items()) {
          auto& t = domains[domain][split];
          if (t.is_null()) t = nlohmann::json::object();
          for (const char* k : {"documents", "tokens", "sequences", "pack_chunks", "nopack_chunks"})
            t[k] = t.value(k, std::uint64_t(0)) + e.at(k).template get<std::uint64_t>();
          domains[domain]["folder"] = e.at("folder");
        }
      for (const auto& [kind, v] : rec.at("skipped").items())
        skipped[kind] = skipped.value(kind, std::uint64_t(0)) + v.at("count").template get<std::uint64_t>();
    } catch (const nlohmann::json::exception& e) {
      fail("preprocess: progress record {} is damaged ({}); delete it to preprocess that input again",
           rec_path.string(), e.what());
    }
  }
  report.manifest = {{"format", "doremi-preprocessed-1"},
                     {"seq_len", cfg.seq_len},
                     {"pack", cfg.pack},
                     {"validation_share", cfg.validation_share},
                     {"vocab_size", tokenizer.vocab_size()},
                     {"end_of_text_id", eot},
                     {"token_dtype", token_dtype_name(dtype)},
                     {"domains", domains},
                     {"skipped_documents", skipped}};
  write_file_atomic(cfg.output / "manifest.json", report.manifest.dump(2) + "\n");
  return report;
}

// The shards of one domain and split of a preprocessed folder, in order.
// `folder`: the domain's folder as its manifest records it (default: this
// version's domain_folder).
inline std::vector<std::filesystem::path> preprocessed_shards(const std::filesystem::path& root,
                                                              const std::string& split, const std::string& domain,
                                                              const std::string& folder = {}) {
  const auto dir = root / split / (folder.empty() ? detail::domain_folder(domain) : folder);
  std::vector<std::filesystem::path> prefixes;
  if (std::filesystem::is_directory(dir))
    for (const auto& e : std::filesystem::directory_iterator(dir))
      if (e.path().extension() == ".idx" && !e.path().filename().string().starts_with("."))
        prefixes.push_back(e.path().parent_path() / e.path().stem());
  std::sort(prefixes.begin(), prefixes.end());
  if (prefixes.empty()) fail("no {} shards for domain '{}' under {}", split, domain, dir.string());
  return prefixes;
}

}  // namespace doremi
