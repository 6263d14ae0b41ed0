#pragma once
// Opening a domain-split dataset folder, whichever format it is in:
//   * a folder written by `doremi preprocess` (manifest.json; per-domain
//     Megatron indexed shards under <root>/<split>/<domain>/), or
//   * a HuggingFace `datasets` layout as the public DoReMi uses
//     (<root>/<split>/<domain>/ written by save_to_disk).
// AnySource erases the difference so one sampler type serves both.
//
//   auto data = doremi::open_dataset_folder("data", "train");   // all domains, sorted
//   doremi::WeightedDomainSampler<doremi::AnySource> sampler(data.domains, data.sources, ...);
#include <filesystem>
#include <string>
#include <variant>

#include <fmt/ranges.h>
#include <vector>

#include "doremi/core/error.hpp"
#include "doremi/core/json.hpp"
#include "doremi/data/arrow_source.hpp"
#include "doremi/data/indexed_dataset.hpp"
#include "doremi/data/preprocess.hpp"
#include "doremi/data/source.hpp"

namespace doremi {

class AnySource {
 public:
  template <class S>
    requires TokenSource<S>
  AnySource(S s) : impl_(std::move(s)) {}  // NOLINT: implicit on purpose

  std::size_t size() const { return std::visit([](const auto& s) { return std::size_t(s.size()); }, impl_); }
  std::size_t length(std::size_t i) const {
    return std::visit([&](const auto& s) { return std::size_t(s.length(i)); }, impl_);
  }
  void read(std::size_t i, std::size_t offset, std::span<std::int32_t> out) const {
    std::visit([&](const auto& s) { s.read(i, offset, out); }, impl_);
  }
  std::uint64_t total_tokens() const {
    return std::visit([](const auto& s) { return std::uint64_t(s.total_tokens()); }, impl_);
  }
  std::string describe() const { return std::visit([](const auto& s) { return std::string(s.describe()); }, impl_); }

 private:
  std::variant<IndexedSource, ArrowSource, MemorySource> impl_;
};
static_assert(TokenSource<AnySource>);

struct DatasetFolder {
  std::vector<std::string> domains;  // sorted
  std::vector<AnySource> sources;
  nlohmann::json manifest;           // preprocessed folders only (null otherwise)
};

// `domains` empty: every domain of the split; otherwise exactly those (each
// must exist; the error lists what does).
inline DatasetFolder open_dataset_folder(const std::filesystem::path& root, const std::string& split,
                                         const std::vector<std::string>& domains = {}) {
  DatasetFolder out;
  if (!std::filesystem::is_directory(root)) fail("dataset folder {} does not exist", root.string());
  if (std::filesystem::exists(root / "manifest.json")) {
    const auto manifest_path = root / "manifest.json";
    const std::string where = manifest_path.string();
    out.manifest = read_json_file(manifest_path);
    const auto& m = out.manifest;
    if (!m.is_object()) fail("{}: expected a JSON object, got {}", where, detail::json_excerpt(m));
    if (const auto format = json_field_or<std::string>(m, "format", "doremi-preprocessed-1", where);
        format != "doremi-preprocessed-1")
      fail("{}: field 'format' is \"{}\", expected \"doremi-preprocessed-1\"", where, format);
    // What the shards must agree with: ids below vocab_size (checked on every
    // read, naming the shard), and the token dtype preprocess chose for it.
    IndexedDatasetOptions options;
    options.vocab_size = json_field_or<std::int64_t>(m, "vocab_size", 0, where);
    if (options.vocab_size < 0 || options.vocab_size > (std::int64_t(1) << 31))
      fail("{}: field 'vocab_size' is {}, expected an integer in [1, 2^31]", where, options.vocab_size);
    const auto token_dtype = json_field_or<std::string>(m, "token_dtype", "", where);
    const auto domains_it = m.find("domains");
    if (domains_it == m.end() || !domains_it->is_object())
      fail("{}: field 'domains' must be an object {{domain: {{split: counts}}}} (got {})", where,
           domains_it == m.end() ? "nothing" : detail::json_excerpt(*domains_it));
    std::vector<std::string> available;
    for (const auto& [name, entry] : domains_it->items()) {
      if (!entry.is_object())
        fail("{}: field 'domains.{}' is {}, expected an object", where, name, detail::json_excerpt(entry));
      if (entry.contains(split)) available.push_back(name);
    }
    std::sort(available.begin(), available.end());
    std::vector<std::string> chosen = domains.empty() ? available : domains;
    std::sort(chosen.begin(), chosen.end());
    for (const auto& d : chosen) {
      if (!std::binary_search(available.begin(), available.end(), d))
        fail("dataset {} has no {} data for domain '{}' (it has: {})", root.string(), split, d,
             fmt::join(available, ", "));
      out.domains.push_back(d);
      // The folder as the manifest records it; manifests without one predate the escaping.
      const auto folder = json_field_or<std::string>(domains_it->at(d), "folder", detail::legacy_domain_folder(d), where);
      if (folder.empty() || folder == "." || folder == ".." || folder.find('/') != std::string::npos)
        fail("{}: domain '{}' has an invalid folder name '{}'", where, d, folder);
      IndexedSource source(preprocessed_shards(root, split, d, folder), options);
      for (const auto& shard : source.shards())
        if (!token_dtype.empty() && token_dtype_name(shard.dtype()) != token_dtype)
          fail("{}: shard {} holds {} tokens, but {} says token_dtype \"{}\" (the shard belongs to another "
               "preprocessing run or tokenizer)",
               root.string(), shard.idx_path().string(), token_dtype_name(shard.dtype()), where, token_dtype);
      out.sources.emplace_back(std::move(source));
    }
    return out;
  }
  ArrowSplit s = open_arrow_split(root, split, domains);
  out.domains = std::move(s.domains);
  for (auto& src : s.sources) out.sources.emplace_back(std::move(src));
  return out;
}

}  // namespace doremi
