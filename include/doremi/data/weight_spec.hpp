#pragma once
// WeightSpec: how a user names a set of domain weights, on the command line
// (`--weights`, `baseline-weights --mode`) and in a run config
// ("reference_weights"):
//
//   "uniform"          1/k for each of the k domains
//   "pack" | "nopack"  by size: each domain's chunk count in a preprocessed
//                      folder's manifest.json (see Packing), times its epochs
//   anything else      a domain-config file (read_domain_config; its train
//                      mixture, which also fixes the domains that are used)
//
//   const auto spec = doremi::WeightSpec::parse("pack");
//   auto w = spec.resolve(names, data.train.manifest, epochs, "reference_weights");
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "doremi/core/error.hpp"
#include "doremi/data/domain_config.hpp"

namespace doremi {

struct WeightSpec {
  enum class Kind { uniform, pack, nopack, file };
  Kind kind = Kind::uniform;
  std::filesystem::path file;  // Kind::file only

  static WeightSpec parse(std::string_view s) {
    if (s.empty()) fail("weight spec: empty (expected \"uniform\", \"pack\", \"nopack\" or a domain-config file)");
    if (s == "uniform") return {Kind::uniform, {}};
    if (s == "pack") return {Kind::pack, {}};
    if (s == "nopack") return {Kind::nopack, {}};
    return {Kind::file, std::filesystem::path(std::string(s))};
  }

  bool by_size() const { return kind == Kind::pack || kind == Kind::nopack; }
  Packing packing() const { return kind == Kind::nopack ? Packing::nopack : Packing::pack; }
  std::string str() const {
    switch (kind) {
      case Kind::uniform: return "uniform";
      case Kind::pack: return "pack";
      case Kind::nopack: return "nopack";
      case Kind::file: return file.string();
    }
    return {};
  }

  // The domains the spec restricts a run to: a file's train domains; empty
  // (all of the data's domains) otherwise.
  std::vector<std::string> domains() const {
    if (kind != Kind::file) return {};
    return read_domain_config(file).train.names;
  }

  // Weights for `names` (normalised). `manifest`: the data's manifest.json
  // (needed by "pack"/"nopack"); `epochs` as in epochs_for; `where` names the
  // option or field in errors.
  std::vector<double> resolve(const std::vector<std::string>& names, const nlohmann::json& manifest,
                              const nlohmann::json& epochs, std::string_view where) const {
    const std::size_t k = names.size();
    if (k == 0) fail("{}: no domains to weight", where);
    switch (kind) {
      case Kind::uniform: return std::vector<double>(k, 1.0 / double(k));
      case Kind::file: return read_domain_config(file).train.weights_for(names, file.string());
      case Kind::pack:
      case Kind::nopack: {
        if (manifest.is_null())
          fail("{} \"{}\" needs a folder written by `doremi preprocess` (its manifest.json counts)", where, str());
        return weights_by_size(names, size_counts(names, manifest, packing(), where), epochs);
      }
    }
    return {};
  }

  // Each domain's "pack_chunks" or "nopack_chunks" of the train split in a manifest.
  static std::vector<double> size_counts(const std::vector<std::string>& names, const nlohmann::json& manifest,
                                         Packing mode, std::string_view where) {
    const std::string key = std::string(packing_name(mode)) + "_chunks";
    std::vector<double> counts;
    for (const auto& d : names) {
      const auto* domains = manifest.is_object() && manifest.contains("domains") ? &manifest.at("domains") : nullptr;
      if (!domains || !domains->is_object() || !domains->contains(d) || !domains->at(d).is_object() ||
          !domains->at(d).contains("train") || !domains->at(d).at("train").is_object() ||
          !domains->at(d).at("train").contains(key) || !domains->at(d).at("train").at(key).is_number_unsigned())
        fail("{}: the manifest has no count domains.{}.train.{} (a non-negative integer)", where, d, key);
      counts.push_back(double(domains->at(d).at("train").at(key).get<std::uint64_t>()));
    }
    return counts;
  }
};

}  // namespace doremi
