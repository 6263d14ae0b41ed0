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
    out.manifest = read_json_file(root / "manifest.json");
    std::vector<std::string> available;
    for (const auto& [name, entry] : out.manifest.at("domains").items())
      if (entry.contains(split)) available.push_back(name);
    std::sort(available.begin(), available.end());
    std::vector<std::string> chosen = domains.empty() ? available : domains;
    std::sort(chosen.begin(), chosen.end());
    for (const auto& d : chosen) {
      if (!std::binary_search(available.begin(), available.end(), d))
        fail("dataset {} has no {} data for domain '{}' (it has: {})", root.string(), split, d,
             fmt::join(available, ", "));
      out.domains.push_back(d);
      // The folder as the manifest records it; manifests without one predate the escaping.
      const auto& entry = out.manifest.at("domains").at(d);
      std::string folder = detail::legacy_domain_folder(d);
      if (entry.contains("folder") && entry.at("folder").is_string()) folder = entry.at("folder").get<std::string>();
      if (folder.empty() || folder == "." || folder == ".." || folder.find('/') != std::string::npos)
        fail("{}: domain '{}' has an invalid folder name '{}'", (root / "manifest.json").string(), d, folder);
      out.sources.emplace_back(IndexedSource(preprocessed_shards(root, split, d, folder)));
    }
    return out;
  }
  ArrowSplit s = open_arrow_split(root, split, domains);
  out.domains = std::move(s.domains);
  for (auto& src : s.sources) out.sources.emplace_back(std::move(src));
  return out;
}

}  // namespace doremi
