#pragma once
// Domain weights on disk and "by size" reference weights (docs/formats.md,
// "Domain weights"; docs/algorithm.md, "Reference weights by size").
//
//   auto cfg = doremi::read_domain_config("configs/pile_baseline.json");
//   auto names = doremi::select_domains(data.domains, cfg);       // the configured subset, sorted
//   auto w = cfg.train.weights_for(names, "configs/pile_baseline.json");
//   doremi::write_domain_config("out/domain_config.json", {{names, alpha}, {names, reference}});
//
//   // reference weights by size: packed chunks of T tokens × the Pile's epochs, normalised
//   auto ref = doremi::baseline_weights(names, sources, 1024, doremi::Packing::pack, "pile");
//
// A DomainMixture is a distribution over named domains with the names sorted
// (the library's fixed domain order) and the weights normalised. Every reader
// and writer validates: a weight that is negative, NaN, infinite or not a
// number, all weights zero, a missing map, an empty or duplicated name all
// raise doremi::Error naming the file and the domain or field.
#include <algorithm>
#include <array>
#include <cmath>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <numeric>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "doremi/core/atomic_file.hpp"
#include "doremi/core/error.hpp"
#include "doremi/data/source.hpp"

namespace doremi {

// How documents become training sequences (and how "by size" counts them):
// `pack` concatenates a domain's documents and cuts chunks of T tokens;
// `nopack` pads every document to a multiple of T (the paper's count).
enum class Packing { pack, nopack };

constexpr std::string_view packing_name(Packing p) { return p == Packing::pack ? "pack" : "nopack"; }

inline Packing parse_packing(std::string_view s) {
  if (s == "pack") return Packing::pack;
  if (s == "nopack") return Packing::nopack;
  fail("unknown packing mode '{}' (expected \"pack\" or \"nopack\")", s);
}

namespace detail {

// Checks names (non-empty, unique) and weights (as many, finite, ≥ 0, not all
// zero); returns the weights normalised to sum 1. `where` starts every message
// (a file name, "WeightedDomainSampler", ...).
inline std::vector<double> checked_normalised(const std::vector<std::string>& names, std::vector<double> weights,
                                              std::string_view where) {
  if (names.size() != weights.size())
    fail("{}: {} domain names but {} weights", where, names.size(), weights.size());
  if (names.empty()) fail("{}: no domains", where);
  std::set<std::string_view> seen;
  for (const auto& n : names) {
    if (n.empty()) fail("{}: a domain name is empty", where);
    if (!seen.insert(n).second) fail("{}: domain '{}' appears twice", where, n);
  }
  double sum = 0;
  for (std::size_t i = 0; i < names.size(); ++i) {
    const double w = weights[i];
    if (!std::isfinite(w)) fail("{}: weight of domain '{}' is {}; weights must be finite", where, names[i], w);
    if (w < 0) fail("{}: weight of domain '{}' is negative ({})", where, names[i], w);
    sum += w;
  }
  if (!(sum > 0)) fail("{}: all {} domain weights are zero; at least one must be positive", where, names.size());
  if (!std::isfinite(sum)) fail("{}: the weights sum to {}; they are too large to normalise", where, sum);
  for (auto& w : weights) w /= sum;
  return weights;
}

// Parses JSON text, rejecting duplicate keys in any object (nlohmann would
// silently keep the last one, and a duplicated domain is almost always a typo).
inline nlohmann::json parse_json_unique_keys(const std::string& text, std::string_view where) {
  std::vector<std::set<std::string>> keys;
  auto callback = [&](int, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (event == E::object_start) keys.emplace_back();
    else if (event == E::object_end && !keys.empty()) keys.pop_back();
    else if (event == E::key && !keys.empty()) {
      const auto& k = parsed.get_ref<const std::string&>();
      if (!keys.back().insert(k).second) fail("{}: key '{}' appears twice in one object", where, k);
    }
    return true;
  };
  try {
    return nlohmann::json::parse(text, callback);
  } catch (const nlohmann::json::parse_error& e) {
    fail("{}: invalid JSON at byte {}: {}", where, e.byte, e.what());
  } catch (const nlohmann::json::exception& e) {  // e.g. a number too large for a double
    fail("{}: invalid JSON: {}", where, e.what());
  }
}

inline std::string read_text_file(const std::filesystem::path& path, std::string_view what) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail("cannot read {} {}: it is a directory", what, path.string());
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open {} {}: {}", what, path.string(), std::strerror(errno));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("cannot read {} {}: {}", what, path.string(), std::strerror(errno));
  return text;
}

}  // namespace detail

// A distribution over named domains. Built from a file or a map it is
// sorted and normalised; built as an aggregate ({names, weights}) it is
// whatever was given, and the writers validate and normalise it.
struct DomainMixture {
  std::vector<std::string> names;  // sorted, unique, non-empty
  std::vector<double> weights;     // finite, ≥ 0, summing to 1

  // Validates, sorts by name and normalises. `where` names the origin in errors.
  static DomainMixture make(std::vector<std::string> names, std::vector<double> weights, std::string_view where) {
    weights = detail::checked_normalised(names, std::move(weights), where);
    std::vector<std::size_t> order(names.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return names[a] < names[b]; });
    DomainMixture m;
    for (auto i : order) {
      m.names.push_back(std::move(names[i]));
      m.weights.push_back(weights[i]);
    }
    return m;
  }

  // From a JSON object {domain: weight}. `where` is e.g. "config.json, train_domain_weights".
  static DomainMixture from_json(const nlohmann::json& map, std::string_view where) {
    if (!map.is_object()) fail("{}: expected an object mapping domain names to weights, got {}", where, map.type_name());
    std::vector<std::string> names;
    std::vector<double> weights;
    for (const auto& [name, w] : map.items()) {
      if (!w.is_number())
        fail("{}: weight of domain '{}' is not a number (got {} {})", where, name, w.type_name(), w.dump());
      names.push_back(name);
      weights.push_back(w.get<double>());
    }
    return make(std::move(names), std::move(weights), where);
  }

  // {domain: weight}, normalised; throws if the mixture is invalid.
  nlohmann::json to_json(std::string_view where = "domain weights") const {
    const DomainMixture m = make(names, weights, where);
    nlohmann::json j = nlohmann::json::object();
    for (std::size_t i = 0; i < m.names.size(); ++i) j[m.names[i]] = m.weights[i];
    return j;
  }

  std::size_t size() const { return names.size(); }

  std::optional<std::size_t> find(std::string_view name) const {
    for (std::size_t i = 0; i < names.size(); ++i)
      if (names[i] == name) return i;
    return std::nullopt;
  }

  // The weights of `domains`, in that order, renormalised over them (a run
  // on a subset). Throws naming `where` if a domain is missing or all of
  // the selected weights are zero.
  std::vector<double> weights_for(const std::vector<std::string>& domains, std::string_view where) const {
    std::vector<double> w;
    std::vector<std::string> missing;
    for (const auto& d : domains) {
      const auto i = find(d);
      if (!i) missing.push_back(d);
      else w.push_back(weights[*i]);
    }
    if (!missing.empty())
      fail("{}: no weight for domain(s) {} (it lists: {})", where, fmt::join(missing, ", "), fmt::join(names, ", "));
    return detail::checked_normalised(domains, std::move(w), where);
  }
};

// The interchange file: {"train_domain_weights": {...}, "eval_domain_weights": {...}}.
struct DomainConfig {
  DomainMixture train, eval;

  static DomainConfig from_json(const nlohmann::json& j, std::string_view where) {
    if (!j.is_object()) fail("{}: a domain config must be a JSON object, got {}", where, j.type_name());
    for (const char* key : {"train_domain_weights", "eval_domain_weights"})
      if (!j.contains(key))
        fail("{}: missing map \"{}\" (a domain config has \"train_domain_weights\" and \"eval_domain_weights\")",
             where, key);
    DomainConfig c;
    c.train = DomainMixture::from_json(j.at("train_domain_weights"), fmt::format("{}, train_domain_weights", where));
    c.eval = DomainMixture::from_json(j.at("eval_domain_weights"), fmt::format("{}, eval_domain_weights", where));
    if (c.train.names != c.eval.names) {
      std::vector<std::string> only_train, only_eval;
      std::set_difference(c.train.names.begin(), c.train.names.end(), c.eval.names.begin(), c.eval.names.end(),
                          std::back_inserter(only_train));
      std::set_difference(c.eval.names.begin(), c.eval.names.end(), c.train.names.begin(), c.train.names.end(),
                          std::back_inserter(only_eval));
      fail("{}: train_domain_weights and eval_domain_weights must list the same domains (only in train: [{}]; only "
           "in eval: [{}])",
           where, fmt::join(only_train, ", "), fmt::join(only_eval, ", "));
    }
    return c;
  }

  nlohmann::json to_json(std::string_view where = "domain config") const {
    return {{"train_domain_weights", train.to_json(fmt::format("{}, train_domain_weights", where))},
            {"eval_domain_weights", eval.to_json(fmt::format("{}, eval_domain_weights", where))}};
  }
};

inline DomainConfig read_domain_config(const std::filesystem::path& path) {
  const std::string where = path.string();
  return DomainConfig::from_json(detail::parse_json_unique_keys(detail::read_text_file(path, "domain config"), where),
                                 where);
}

// Validates, normalises and writes atomically (names sorted, 2-space indent).
inline void write_domain_config(const std::filesystem::path& path, const DomainConfig& config) {
  write_file_atomic(path, config.to_json(path.string()).dump(2) + "\n");
}

// The plain {domain: weight} map (e.g. avg_domain_weights.json).
inline DomainMixture read_domain_weights(const std::filesystem::path& path) {
  const std::string where = path.string();
  return DomainMixture::from_json(detail::parse_json_unique_keys(detail::read_text_file(path, "domain weights"), where),
                                  where);
}

inline void write_domain_weights(const std::filesystem::path& path, const DomainMixture& weights) {
  write_file_atomic(path, weights.to_json(path.string()).dump(2) + "\n");
}

// The configured domains, sorted, each checked to exist in `available` (the
// dataset's domains). Only these are loaded: deleting a domain from the
// config runs on a subset.
inline std::vector<std::string> select_domains(const std::vector<std::string>& available, const DomainMixture& config,
                                               std::string_view where = "domain config") {
  std::vector<std::string> sorted_available = available, unknown;
  std::sort(sorted_available.begin(), sorted_available.end());
  std::vector<std::string> chosen = config.names;
  std::sort(chosen.begin(), chosen.end());
  for (const auto& d : chosen)
    if (!std::binary_search(sorted_available.begin(), sorted_available.end(), d)) unknown.push_back(d);
  if (!unknown.empty())
    fail("{}: unknown domain(s) {} (the dataset has: {})", where, fmt::join(unknown, ", "),
         fmt::join(sorted_available, ", "));
  return chosen;
}

// `where` names the config (its file) in the error.
inline std::vector<std::string> select_domains(const std::vector<std::string>& available, const DomainConfig& config,
                                               std::string_view where = "domain config") {
  return select_domains(available, config.train, where);
}

// ---- Reference weights by size ---------------------------------------------

// The Pile's 22 domains (meta.pile_set_name, sorted) and the epochs the Pile
// paper gives each component.
struct PileDomain {
  std::string_view name;
  double epochs;
};

inline constexpr std::array<PileDomain, 22> pile_domains{{
    {"ArXiv", 2.0},
    {"BookCorpus2", 1.5},
    {"Books3", 1.5},
    {"DM Mathematics", 2.0},
    {"Enron Emails", 2.0},
    {"EuroParl", 2.0},
    {"FreeLaw", 1.5},
    {"Github", 1.0},
    {"Gutenberg (PG-19)", 2.5},
    {"HackerNews", 2.0},
    {"NIH ExPorter", 2.0},
    {"OpenSubtitles", 1.5},
    {"OpenWebText2", 2.0},
    {"PhilPapers", 2.0},
    {"Pile-CC", 1.0},
    {"PubMed Abstracts", 2.0},
    {"PubMed Central", 2.0},
    {"StackExchange", 2.0},
    {"USPTO Backgrounds", 2.0},
    {"Ubuntu IRC", 2.0},
    {"Wikipedia (en)", 3.0},
    {"YoutubeSubtitles", 2.0},
}};

inline std::optional<double> pile_epochs(std::string_view name) {
  for (const auto& d : pile_domains)
    if (d.name == name) return d.epochs;
  return std::nullopt;
}

// Per-domain epochs from a run config's "epochs" value: null → 1 for every
// domain; "pile" → the Pile table (a domain not in the Pile is an error);
// {domain: epochs} → those values, 1 for a domain the map does not list
// (so one map serves runs on subsets). Epochs must be finite and > 0.
inline std::vector<double> epochs_for(const std::vector<std::string>& names, const nlohmann::json& spec) {
  std::vector<double> e(names.size(), 1.0);
  if (spec.is_null()) return e;
  if (spec.is_string()) {
    if (spec.get<std::string>() != "pile")
      fail("epochs: unknown table \"{}\" (expected \"pile\" or a {{domain: epochs}} map)", spec.get<std::string>());
    for (std::size_t i = 0; i < names.size(); ++i) {
      const auto p = pile_epochs(names[i]);
      if (!p) fail("epochs \"pile\": domain '{}' is not one of the Pile's 22 domains", names[i]);
      e[i] = *p;
    }
    return e;
  }
  if (!spec.is_object()) fail("epochs: expected null, \"pile\" or a {{domain: epochs}} map, got {}", spec.dump());
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (!spec.contains(names[i])) continue;
    const auto& v = spec.at(names[i]);
    if (!v.is_number()) fail("epochs: value for domain '{}' is not a number ({})", names[i], v.dump());
    e[i] = v.get<double>();
    if (!(e[i] > 0) || !std::isfinite(e[i]))
      fail("epochs: value for domain '{}' must be positive and finite (got {})", names[i], e[i]);
  }
  return e;
}

// Training sequences a domain yields with sequence length T, from its
// documents' lengths: `pack` = ⌊Σ len / T⌋ (documents concatenated, cut into
// chunks, the remainder dropped; for a source that already stores chunks of
// T tokens this is the chunk count); `nopack` = Σ ⌈len / T⌉ (each document
// padded to a multiple of T).
inline std::uint64_t count_chunks(std::span<const std::uint64_t> lengths, int T, Packing mode) {
  if (T <= 0) fail("count_chunks: sequence length must be positive (got {})", T);
  const std::uint64_t t = std::uint64_t(T);
  std::uint64_t n = 0;
  if (mode == Packing::pack) {
    for (auto l : lengths) n += l;
    return n / t;
  }
  for (auto l : lengths) n += (l + t - 1) / t;
  return n;
}

// The same from a TokenSource (each sequence one document). `pack` needs only
// total_tokens(); `nopack` reads every sequence's length (O(size) calls).
template <TokenSource S>
std::uint64_t count_chunks(const S& source, int T, Packing mode) {
  if (T <= 0) fail("count_chunks: sequence length must be positive (got {})", T);
  if (mode == Packing::pack) return std::uint64_t(source.total_tokens()) / std::uint64_t(T);
  std::uint64_t n = 0;
  const std::size_t size = source.size();
  for (std::size_t i = 0; i < size; ++i) n += (std::uint64_t(source.length(i)) + std::uint64_t(T) - 1) / std::uint64_t(T);
  return n;
}

// counts[i]·epochs[i], normalised. Counts ≥ 0 and not all zero; epochs > 0.
inline std::vector<double> weights_by_size(std::span<const double> counts, std::span<const double> epochs) {
  if (counts.size() != epochs.size()) fail("weights_by_size: {} counts but {} epochs", counts.size(), epochs.size());
  std::vector<double> w(counts.size());
  double sum = 0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    if (!(counts[i] >= 0) || !std::isfinite(counts[i]))
      fail("weights_by_size: count of domain {} is {} (must be finite and ≥ 0)", i, counts[i]);
    if (!(epochs[i] > 0) || !std::isfinite(epochs[i]))
      fail("weights_by_size: epochs of domain {} is {} (must be positive and finite)", i, epochs[i]);
    w[i] = counts[i] * epochs[i];
    sum += w[i];
  }
  if (!(sum > 0)) fail("weights_by_size: every domain counts zero sequences; no weights by size exist");
  for (auto& x : w) x /= sum;
  return w;
}

// Named version; `epochs` as in epochs_for (null, "pile" or a map). Errors name the domain.
inline std::vector<double> weights_by_size(const std::vector<std::string>& names, const std::vector<double>& counts,
                                           const nlohmann::json& epochs = nullptr) {
  if (names.size() != counts.size()) fail("weights_by_size: {} domains but {} counts", names.size(), counts.size());
  for (std::size_t i = 0; i < names.size(); ++i)
    if (!(counts[i] >= 0) || !std::isfinite(counts[i]))
      fail("weights_by_size: count of domain '{}' is {} (must be finite and ≥ 0)", names[i], counts[i]);
  double total = 0;
  for (auto c : counts) total += c;
  if (!(total > 0))
    fail("weights_by_size: every domain ({}) counts zero sequences; no weights by size exist", fmt::join(names, ", "));
  const auto e = epochs_for(names, epochs);
  return weights_by_size(counts, e);
}

// Reference weights by size straight from the domains' sources (each
// sequence one document): count_chunks(source, T, mode) × epochs, normalised.
template <TokenSource S>
std::vector<double> baseline_weights(const std::vector<std::string>& names, const std::vector<S>& sources, int T,
                                     Packing mode, const nlohmann::json& epochs = nullptr) {
  if (names.size() != sources.size())
    fail("baseline_weights: {} domain names but {} sources", names.size(), sources.size());
  std::vector<double> counts;
  for (const auto& s : sources) counts.push_back(double(count_chunks(s, T, mode)));
  return weights_by_size(names, counts, epochs);
}

}  // namespace doremi
