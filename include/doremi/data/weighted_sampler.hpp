#pragma once
// WeightedDomainSampler<Source>: training batches drawn from k domains by
// domain weights (the data side of every DoReMi stage).
//
//   std::vector<doremi::IndexedSource> sources = ...;          // one per domain (it may combine shards)
//   doremi::WeightedDomainSampler sampler(names, std::move(sources), weights, /*B=*/8, /*T=*/1024, /*seed=*/1);
//   doremi::Batch b = sampler.next();       // b.domain[i] = index into names
//   sampler.set_weights(new_weights);       // from the next batch on; nothing lost or repeated
//   auto j = sampler.state();               // O(domains) JSON; restore(j) continues the same stream
//
// Sources: pass the vector as an rvalue to hand it over, or as an lvalue to
// lend it (the sampler then keeps a pointer: the vector must outlive it). A
// source's const read() must be safe while the caller also reads it, since a
// background thread reads ahead.
//
// Contract (docs/sampler.md gives the rules in full, with their proofs):
//   rows      pack (default): one source sequence per row, cut to T + 1 tokens;
//             nopack: each document cut into pieces starting every T tokens.
//             Missing positions are padded (inputs `pad_id`, targets −1).
//   domains   random: Philox inverse CDF of the weights in force;
//             deterministic: the earliest-due domain, so that a domain's count
//             never exceeds its cumulative target by a whole sequence and,
//             with fixed weights, stays within 1 of n·w_i; weight 0 is never drawn.
//   order     within a domain a fresh keyed permutation per epoch (Feistel),
//             independent of the other domains; changing weights skips and
//             repeats nothing.
//   state     O(domains) JSON; nopack keeps one u64 per 32 documents.
//   prefetch  a background thread prepares the next batch; the stream is
//             identical to prefetch = false, and a worker's exception is
//             rethrown by next() with the state unchanged.
#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "doremi/core/error.hpp"
#include "doremi/core/json.hpp"
#include "doremi/core/rng.hpp"
#include "doremi/data/batch.hpp"
#include "doremi/data/domain_config.hpp"
#include "doremi/data/source.hpp"

namespace doremi {

enum class SamplingMode { random, deterministic };

constexpr std::string_view sampling_mode_name(SamplingMode m) {
  return m == SamplingMode::random ? "random" : "deterministic";
}

inline SamplingMode parse_sampling_mode(std::string_view s) {
  if (s == "random") return SamplingMode::random;
  if (s == "deterministic") return SamplingMode::deterministic;
  fail("unknown sampling mode '{}' (expected \"random\" or \"deterministic\")", s);
}

struct SamplerOptions {
  SamplingMode mode = SamplingMode::random;
  Packing packing = Packing::pack;
  std::int32_t pad_id = 0;  // input id at padded positions (their targets are −1)
  bool prefetch = true;     // build the next batch on a background thread
};

// A keyed bijection on [0, n) that stores nothing per element: a balanced
// Feistel network on 2h bits (2^2h < 4n) with cycle walking — values ≥ n are
// encrypted again until they land in range, which keeps it a bijection on
// [0, n) and costs < 4 encryptions on average.
class FeistelPermutation {
 public:
  static constexpr int rounds = 6;

  FeistelPermutation() = default;
  FeistelPermutation(std::uint64_t n, std::uint64_t seed, std::uint64_t stream, std::uint64_t epoch) : n_(n) {
    const int bits = n > 2 ? int(std::bit_width(n - 1)) : 2;
    half_ = (bits + 1) / 2;
    mask_ = (std::uint64_t(1) << half_) - 1;
    for (int r = 0; r < rounds; r += 2) {
      const auto c = Philox::draw(seed, stream, epoch * (rounds / 2) + std::uint64_t(r / 2));
      keys_[r] = (std::uint64_t(c[0]) << 32) | c[1];
      keys_[r + 1] = (std::uint64_t(c[2]) << 32) | c[3];
    }
  }

  std::uint64_t size() const { return n_; }

  // π(i) for i < n.
  std::uint64_t operator()(std::uint64_t i) const {
    if (n_ <= 1) return 0;
    std::uint64_t x = encrypt(i);
    while (x >= n_) x = encrypt(x);
    return x;
  }

 private:
  static constexpr std::uint64_t mix(std::uint64_t z) {  // splitmix64's finaliser
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  std::uint64_t encrypt(std::uint64_t x) const {
    std::uint64_t l = x >> half_, r = x & mask_;
    for (int k = 0; k < rounds; ++k) {
      const std::uint64_t t = l ^ (mix(r ^ keys_[std::size_t(k)]) & mask_);
      l = r;
      r = t;
    }
    return (l << half_) | r;
  }

  std::uint64_t n_ = 0, mask_ = 0;
  int half_ = 1;
  std::array<std::uint64_t, rounds> keys_{};
};

namespace detail {

inline std::uint64_t fnv1a64(std::string_view s) {
  std::uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001B3ull;
  return h;
}

// Pieces of a nopack document of `len` tokens: ⌈(len − 1)/T⌉, each holding at least one target.
constexpr std::uint64_t nopack_pieces(std::uint64_t len, std::uint64_t T) { return len >= 2 ? (len - 2) / T + 1 : 0; }

constexpr std::uint64_t kDomainStream = 0x646F6D61696E0001ull;  // random mode's domain draws
constexpr std::uint64_t kOrderStream = 0x6F72646572000000ull;   // per-domain permutations (^ name hash)

}  // namespace detail

template <TokenSource Source>
class WeightedDomainSampler {
 public:
  // Takes ownership of the sources.
  WeightedDomainSampler(std::vector<std::string> names, std::vector<Source>&& sources, std::vector<double> weights,
                        int batch_size, int seq_len, std::uint64_t seed, SamplerOptions options = {})
      : impl_(std::make_unique<Impl>()) {
    impl_->owned = std::move(sources);
    impl_->sources = &impl_->owned;
    impl_->init(std::move(names), std::move(weights), batch_size, seq_len, seed, options);
  }
  // Borrows the sources: `sources` must outlive the sampler.
  WeightedDomainSampler(std::vector<std::string> names, const std::vector<Source>& sources, std::vector<double> weights,
                        int batch_size, int seq_len, std::uint64_t seed, SamplerOptions options = {})
      : impl_(std::make_unique<Impl>()) {
    impl_->sources = &sources;
    impl_->init(std::move(names), std::move(weights), batch_size, seq_len, seed, options);
  }

  WeightedDomainSampler(WeightedDomainSampler&&) noexcept = default;
  WeightedDomainSampler& operator=(WeightedDomainSampler&&) noexcept = default;

  // The next batch: B rows of T positions, domain ids into domains().
  Batch next() { return impl_->next(); }

  // New weights from the next batch on (validated like the constructor's;
  // normalised). Per-domain cursors continue; the deterministic targets
  // accumulate the new weights from here.
  void set_weights(std::vector<double> weights) { impl_->set_weights(std::move(weights)); }

  // O(domains) JSON; restore() of it continues the exact same batch stream.
  nlohmann::json state() const { return impl_->to_json(); }
  // Validates (kind, mode, packing, T, domain names and sizes, counts,
  // weights) and throws doremi::Error naming the field on a mismatch.
  void restore(const nlohmann::json& j) { impl_->restore(j); }

  const std::vector<std::string>& domains() const { return impl_->names; }
  const std::vector<double>& weights() const { return impl_->state.weights; }
  // Sequences drawn per domain so far (in batches returned by next()).
  const std::vector<std::uint64_t>& counts() const { return impl_->state.counts; }
  // Completed passes over each domain (count / units; 0 for an empty domain).
  std::vector<std::uint64_t> epochs() const {
    std::vector<std::uint64_t> e(impl_->units.size());
    for (std::size_t i = 0; i < e.size(); ++i) e[i] = impl_->units[i] ? impl_->state.counts[i] / impl_->units[i] : 0;
    return e;
  }
  // The cumulative targets C_i = Σ over drawn sequences of the weight in force.
  std::vector<double> targets() const {
    std::vector<double> t(impl_->units.size());
    for (std::size_t i = 0; i < t.size(); ++i) t[i] = impl_->state.target(i, impl_->state.drawn);
    return t;
  }
  std::uint64_t sequences_drawn() const { return impl_->state.drawn; }
  // Sampling units per domain (sequences for pack, document pieces for nopack).
  const std::vector<std::uint64_t>& domain_sizes() const { return impl_->units; }
  // Which unit the k-th draw from domain d reads (its position in the shuffled order).
  std::uint64_t unit_at(std::size_t d, std::uint64_t k) const {
    if (d >= impl_->units.size()) fail("WeightedDomainSampler::unit_at: domain {} out of range", d);
    if (impl_->units[d] == 0) fail("WeightedDomainSampler::unit_at: domain '{}' is empty", impl_->names[d]);
    const std::uint64_t n = impl_->units[d];
    return impl_->permutation(d, k / n, impl_->state.seed)(k % n);
  }
  // Bytes of per-domain indexes built at construction (nopack only).
  std::size_t index_bytes() const {
    std::size_t b = 0;
    for (const auto& v : impl_->blocks) b += v.capacity() * sizeof(std::uint64_t);
    return b;
  }
  int batch_size() const { return impl_->B; }
  int seq_len() const { return impl_->T; }
  const SamplerOptions& options() const { return impl_->opt; }

 private:
  static constexpr std::size_t kStride = 32;  // documents per nopack prefix-sum entry

  struct State {
    std::uint64_t seed = 0;
    std::uint64_t drawn = 0;                // sequences drawn in total (n)
    std::vector<std::uint64_t> counts;      // per domain
    std::vector<double> weights;            // normalised, in force now
    std::vector<double> target_base;        // C_i(base_drawn)
    std::uint64_t base_drawn = 0;           // draw count at the last weight change
    double target(std::size_t i, std::uint64_t n) const {
      return target_base[i] + weights[i] * double(n - base_drawn);
    }
  };

  struct Impl {
    // ---- immutable after init (read by the worker thread) ----
    std::vector<std::string> names;
    std::vector<Source> owned;
    const std::vector<Source>* sources = nullptr;
    std::vector<std::uint64_t> units, name_keys;
    std::vector<std::vector<std::uint64_t>> blocks;  // nopack: pieces before document j·kStride, then the total
    int B = 0, T = 0;
    SamplerOptions opt;

    // ---- the caller's state (main thread only) ----
    State state;

    // ---- prefetch ----
    std::mutex m;
    std::condition_variable cv;
    bool job = false, running = false, ready = false, stop = false;
    State job_state, result_state;
    Batch result;
    std::exception_ptr error;
    std::atomic<bool> cancel{false};
    std::thread worker;

    ~Impl() {
      {
        std::lock_guard lk(m);
        stop = true;
        cancel = true;
      }
      cv.notify_all();
      if (worker.joinable()) worker.join();
    }

    void init(std::vector<std::string> n, std::vector<double> w, int batch_size, int seq_len, std::uint64_t seed,
              SamplerOptions o) {
      names = std::move(n);
      B = batch_size;
      T = seq_len;
      opt = o;
      const std::string_view where = "WeightedDomainSampler";
      if (B <= 0 || T <= 0) fail("{}: batch size {} and sequence length {} must be positive", where, B, T);
      if (opt.pad_id < 0) fail("{}: pad_id must be a token id ≥ 0 (got {})", where, opt.pad_id);
      if (names.size() != sources->size())
        fail("{}: {} domain names but {} sources", where, names.size(), sources->size());
      auto weights = detail::checked_normalised(names, std::move(w), where);
      const std::size_t k = names.size();
      units.resize(k);
      blocks.resize(k);
      for (std::size_t i = 0; i < k; ++i) {
        name_keys.push_back(detail::kOrderStream ^ detail::fnv1a64(names[i]));
        const Source& s = (*sources)[i];
        if (opt.packing == Packing::pack) {
          units[i] = s.size();
          continue;
        }
        const std::size_t docs = s.size();
        auto& b = blocks[i];
        b.reserve(docs / kStride + 2);
        std::uint64_t total = 0;
        for (std::size_t d = 0; d < docs; ++d) {
          if (d % kStride == 0) b.push_back(total);
          total += detail::nopack_pieces(s.length(d), std::uint64_t(T));
        }
        b.push_back(total);
        units[i] = total;
      }
      check_nonempty(weights, where);
      state.seed = seed;
      state.counts.assign(k, 0);
      state.weights = std::move(weights);
      state.target_base.assign(k, 0.0);
      if (opt.prefetch) {
        worker = std::thread([this] { loop(); });
        std::lock_guard lk(m);
        submit_locked();
      }
    }

    void check_nonempty(const std::vector<double>& w, std::string_view where) const {
      for (std::size_t i = 0; i < w.size(); ++i)
        if (w[i] > 0 && units[i] == 0)
          fail("{}: domain '{}' ({}) has weight {} but no {} (give it weight 0 or add data)", where, names[i],
               (*sources)[i].describe(), w[i],
               opt.packing == Packing::pack ? "sequences" : "document with at least 2 tokens");
    }

    FeistelPermutation permutation(std::size_t d, std::uint64_t epoch, std::uint64_t seed) const {
      return FeistelPermutation(units[d], seed, name_keys[d], epoch);
    }

    // The document and first token of unit u of domain d.
    std::pair<std::size_t, std::uint64_t> locate(std::size_t d, std::uint64_t u) const {
      if (opt.packing == Packing::pack) return {std::size_t(u), 0};
      const auto& b = blocks[d];
      const std::size_t j = std::size_t(std::upper_bound(b.begin(), b.end(), u) - b.begin()) - 1;
      const Source& s = (*sources)[d];
      std::uint64_t acc = b[j];
      for (std::size_t doc = j * kStride;; ++doc) {
        const std::uint64_t p = detail::nopack_pieces(s.length(doc), std::uint64_t(T));
        if (u < acc + p) return {doc, (u - acc) * std::uint64_t(T)};
        acc += p;
      }
    }

    void fill_row(std::size_t d, std::uint64_t u, std::int32_t* in, std::int32_t* tg) const {
      const Source& s = (*sources)[d];
      const auto [doc, start] = locate(d, u);
      const std::uint64_t len = s.length(doc), t = std::uint64_t(T);
      const std::uint64_t rest = len > start ? len - start : 0;
      const std::size_t n_in = std::size_t(std::min(rest, t));
      const std::size_t n_tg = std::size_t(rest > 1 ? std::min(rest - 1, t) : 0);
      if (n_in) s.read(doc, std::size_t(start), std::span<std::int32_t>(in, n_in));
      std::fill(in + n_in, in + T, opt.pad_id);
      if (n_tg) s.read(doc, std::size_t(start + 1), std::span<std::int32_t>(tg, n_tg));
      std::fill(tg + n_tg, tg + T, std::int32_t(-1));
    }

    std::size_t choose(const State& s, const std::vector<double>& cdf) const {
      const std::size_t k = units.size();
      if (opt.mode == SamplingMode::random) {
        const double u = Philox::uniform(s.seed, detail::kDomainStream, s.drawn);
        for (std::size_t i = 0; i < k; ++i)
          if (u < cdf[i]) return i;
        for (std::size_t i = k; i-- > 0;)  // u ≥ the rounded total: the last domain with weight
          if (s.weights[i] > 0) return i;
      }
      // Deterministic: earliest due among the domains behind their target.
      const std::uint64_t n1 = s.drawn + 1;
      std::size_t best = k, fallback = k;
      double best_key = 0, best_lag = 0;
      for (std::size_t i = 0; i < k; ++i) {
        if (!(s.weights[i] > 0)) continue;
        const double lag = s.target(i, n1) - double(s.counts[i]);
        if (fallback == k || lag > best_lag) fallback = i, best_lag = lag;
        if (!(lag > 0)) continue;
        const double key = (1.0 - lag) / s.weights[i];
        if (best == k || key < best_key) best = i, best_key = key;
      }
      return best < k ? best : fallback;  // the fallback only under extreme rounding
    }

    // Draws B sequences from state s (advanced in place) into out. Returns
    // early (out incomplete) when `cancel` is set.
    void build(State& s, Batch& out, const std::atomic<bool>* cancel_flag) const {
      const std::size_t k = units.size();
      out.B = B;
      out.T = T;
      out.inputs.resize(std::size_t(B) * std::size_t(T));
      out.targets.resize(std::size_t(B) * std::size_t(T));
      out.domain.resize(std::size_t(B));
      std::vector<double> cdf(k);
      double acc = 0;
      for (std::size_t i = 0; i < k; ++i) cdf[i] = acc += s.weights[i];
      std::vector<std::uint64_t> perm_epoch(k, ~std::uint64_t(0));
      std::vector<FeistelPermutation> perms(k);
      for (int b = 0; b < B; ++b) {
        if (cancel_flag && cancel_flag->load(std::memory_order_relaxed)) return;
        const std::size_t d = choose(s, cdf);
        const std::uint64_t n = units[d], c = s.counts[d], epoch = c / n;
        if (perm_epoch[d] != epoch) {
          perms[d] = permutation(d, epoch, s.seed);
          perm_epoch[d] = epoch;
        }
        const std::size_t row = std::size_t(b) * std::size_t(T);
        fill_row(d, perms[d](c % n), out.inputs.data() + row, out.targets.data() + row);
        out.domain[std::size_t(b)] = std::int32_t(d);
        ++s.counts[d];
        ++s.drawn;
      }
    }

    // ---- prefetch machinery ----
    void loop() {
      std::unique_lock lk(m);
      for (;;) {
        cv.wait(lk, [&] { return job || stop; });
        if (stop) return;
        State s = std::move(job_state);
        job = false;
        running = true;
        lk.unlock();
        Batch b;
        std::exception_ptr e;
        try {
          build(s, b, &cancel);
        } catch (...) {
          e = std::current_exception();
        }
        lk.lock();
        running = false;
        if (!cancel.load()) {
          result = std::move(b);
          result_state = std::move(s);
          error = e;
          ready = true;
        }
        cv.notify_all();
      }
    }

    void submit_locked() {
      job_state = state;
      job = true;
      cv.notify_all();
    }

    // Drops a queued, running or finished prefetch (waiting for a running one).
    void discard() {
      if (!opt.prefetch) return;
      std::unique_lock lk(m);
      cancel = true;
      job = false;
      cv.wait(lk, [&] { return !running; });
      ready = false;
      error = nullptr;
      cancel = false;
    }

    void resubmit() {
      if (!opt.prefetch) return;
      std::lock_guard lk(m);
      submit_locked();
    }

    Batch next() {
      if (!opt.prefetch) {
        State s = state;
        Batch b;
        build(s, b, nullptr);
        state = std::move(s);
        return b;
      }
      std::unique_lock lk(m);
      if (!job && !running && !ready) submit_locked();
      cv.wait(lk, [&] { return ready; });
      ready = false;
      if (error) {
        auto e = std::exchange(error, nullptr);
        lk.unlock();
        std::rethrow_exception(e);
      }
      Batch b = std::move(result);
      state = std::move(result_state);
      submit_locked();
      return b;
    }

    void set_weights(std::vector<double> w) {
      const std::string_view where = "WeightedDomainSampler::set_weights";
      auto nw = detail::checked_normalised(names, std::move(w), where);
      check_nonempty(nw, where);
      if (nw == state.weights) return;  // nothing changes: keep the prefetched batch
      discard();
      for (std::size_t i = 0; i < nw.size(); ++i) state.target_base[i] = state.target(i, state.drawn);
      state.base_drawn = state.drawn;
      state.weights = std::move(nw);
      resubmit();
    }

    nlohmann::json to_json() const {
      nlohmann::json doms = nlohmann::json::array();
      for (std::size_t i = 0; i < names.size(); ++i) {
        const std::uint64_t n = units[i], c = state.counts[i];
        doms.push_back({{"name", names[i]},
                        {"units", n},
                        {"weight", state.weights[i]},
                        {"count", c},
                        {"epoch", n ? c / n : 0},
                        {"cursor", n ? c % n : 0},
                        {"target_base", state.target_base[i]}});
      }
      return {{"kind", "weighted_domain_sampler"},
              {"version", 1},
              {"mode", sampling_mode_name(opt.mode)},
              {"packing", packing_name(opt.packing)},
              {"seq_len", T},
              {"seed", state.seed},
              {"drawn", state.drawn},
              {"target_base_drawn", state.base_drawn},
              {"domains", doms}};
    }

    State parse_state(const nlohmann::json& j) const {
      constexpr std::string_view where = "WeightedDomainSampler::restore";
      if (!j.is_object() || !j.contains("kind") || j.at("kind") != "weighted_domain_sampler")
        fail("{}: not a weighted domain sampler state (field 'kind' must be \"weighted_domain_sampler\"): {:.200}",
             where, j.dump());
      auto field = [&](const nlohmann::json& o, const char* key, const std::string& path) -> const nlohmann::json& {
        if (!o.is_object() || !o.contains(key)) fail("{}: missing field '{}{}'", where, path, key);
        return o.at(key);
      };
      auto u64 = [&](const nlohmann::json& o, const char* key, const std::string& path) {
        const nlohmann::json& v = field(o, key, path);
        if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<std::int64_t>() >= 0))
          fail("{}: field '{}{}' must be an unsigned integer (got {})", where, path, key, v.dump());
        return v.get<std::uint64_t>();
      };
      auto text = [&](const nlohmann::json& o, const char* key) {
        const nlohmann::json& v = field(o, key, "");
        if (!v.is_string()) fail("{}: field '{}' must be a string (got {})", where, key, v.dump());
        return v.get<std::string>();
      };
      auto number = [&](const nlohmann::json& o, const char* key, const std::string& path) {
        const nlohmann::json& v = field(o, key, path);
        if (!v.is_number()) fail("{}: field '{}{}' must be a number (got {})", where, path, key, v.dump());
        const double x = v.get<double>();
        if (!std::isfinite(x)) fail("{}: field '{}{}' is not finite ({})", where, path, key, x);
        return x;
      };
      if (u64(j, "version", "") != 1) fail("{}: unsupported state version {}", where, j.at("version").dump());
      if (const auto mode = text(j, "mode"); mode != sampling_mode_name(opt.mode))
        fail("{}: field 'mode': the state was saved in {} mode but this sampler uses {} mode", where, mode,
             sampling_mode_name(opt.mode));
      if (const auto p = text(j, "packing"); p != packing_name(opt.packing))
        fail("{}: field 'packing': the state was saved with {} but this sampler uses {}", where, p,
             packing_name(opt.packing));
      if (const auto t = u64(j, "seq_len", ""); t != std::uint64_t(T))
        fail("{}: field 'seq_len': the state was saved with sequence length {} but this sampler uses {}", where, t, T);
      State s;
      s.seed = u64(j, "seed", "");
      s.drawn = u64(j, "drawn", "");
      s.base_drawn = u64(j, "target_base_drawn", "");
      const nlohmann::json& doms = field(j, "domains", "");
      if (!doms.is_array() || doms.size() != names.size())
        fail("{}: field 'domains' must list this sampler's {} domains (got {})", where, names.size(),
             doms.is_array() ? fmt::format("{} entries", doms.size()) : std::string(doms.type_name()));
      std::uint64_t total = 0;
      for (std::size_t i = 0; i < names.size(); ++i) {
        const std::string path = fmt::format("domains[{}].", i);
        const nlohmann::json& d = doms[i];
        const nlohmann::json& name = field(d, "name", path);
        if (!name.is_string() || name.get<std::string>() != names[i])
          fail("{}: field '{}name' is {} but this sampler's domain {} is '{}' (the domains or their order differ)",
               where, path, name.dump(), i, names[i]);
        if (const auto n = u64(d, "units", path); n != units[i])
          fail("{}: domain '{}' was saved with {} sampling units but now has {}: its data changed", where, names[i],
               n, units[i]);
        const std::uint64_t c = u64(d, "count", path);
        if (units[i] && d.contains("epoch") && d.contains("cursor") &&
            (u64(d, "epoch", path) != c / units[i] || u64(d, "cursor", path) != c % units[i]))
          fail("{}: domain '{}': epoch {} and cursor {} disagree with count {} over {} units", where, names[i],
               d.at("epoch").dump(), d.at("cursor").dump(), c, units[i]);
        if (units[i] == 0 && c != 0) fail("{}: domain '{}' is empty but field '{}count' is {}", where, names[i], path, c);
        if (c > std::numeric_limits<std::uint64_t>::max() - total)  // the sum must not wrap to match 'drawn'
          fail("{}: the domains' counts sum past 2^64 (domain '{}' has {})", where, names[i], c);
        s.counts.push_back(c);
        total += c;
        s.weights.push_back(number(d, "weight", path));
        s.target_base.push_back(number(d, "target_base", path));
      }
      if (total != s.drawn)
        fail("{}: field 'drawn' is {} but the domains' counts sum to {}", where, s.drawn, total);
      if (s.base_drawn > s.drawn)
        fail("{}: field 'target_base_drawn' ({}) exceeds 'drawn' ({})", where, s.base_drawn, s.drawn);
      const auto normalised = detail::checked_normalised(names, s.weights, fmt::format("{}: field 'domains[].weight'", where));
      double sum = 0;
      for (auto w : s.weights) sum += w;
      if (std::abs(sum - 1.0) > 1e-9) s.weights = normalised;  // keep saved bits when already normalised
      check_nonempty(s.weights, where);
      return s;
    }

    void restore(const nlohmann::json& j) {
      State s = parse_state(j);  // throws before anything changes
      discard();
      state = std::move(s);
      resubmit();
    }
  };

  std::unique_ptr<Impl> impl_;
};

}  // namespace doremi
