#pragma once
// numpy's `np.random.default_rng(seed).permutation(n)`, bit for bit, so that
// a seeded shuffle equals HuggingFace `datasets`' `Dataset.shuffle(seed=...)`
// (which is `default_rng(seed).permutation(len(ds))`).
//
//   std::vector<std::uint64_t> p = doremi::numpy_permutation(42, 1000);
//   doremi::NumpyPcg64 g(42);  g.next_uint64(); g.next_uint32(); g.random_interval(9);
//
// The parts, as numpy (1.17 and later) implements them:
// - SeedSequence(seed): the integer's 32-bit little-endian words (0 -> one word
//   0) are hashed into a pool of four 32-bit words (numpy's hashmix/mix with
//   its constants); generate_state(4, uint64) draws 8 words and pairs them
//   little-endian.
// - PCG64: a 128-bit LCG (multiplier 0x2360ED051FC65DA44385DF649FCCF645),
//   seeded as pcg_setseq_128_srandom_r(state = words 0-1, inc = words 2-3,
//   high word first); each 64-bit draw steps the state, then outputs XSL-RR.
//   32-bit draws use half of a 64-bit draw (low half first), buffered.
// - Generator.shuffle on a 1-d array: for i = n-1 down to 1, swap i with
//   j = random_interval(i) (a masked rejection draw: 32-bit when i < 2^32).
// Only integer seeds are supported (datasets passes one). tests/test_downstream.cpp
// compares against numpy for many seeds and sizes.
#include <cstddef>
#include <cstdint>
#include <vector>

namespace doremi {

// numpy.random.SeedSequence(seed).generate_state(n_words64, np.uint64), for an
// integer seed and no spawn key.
inline std::vector<std::uint64_t> numpy_seed_sequence_state(std::uint64_t seed, std::size_t n_words64) {
  constexpr std::uint32_t init_a = 0x43b0d7e5u, mult_a = 0x931e8875u, init_b = 0x8b51f9ddu, mult_b = 0x58f38dedu,
                          mix_mult_l = 0xca01f9ddu, mix_mult_r = 0x4973f715u;
  constexpr unsigned xshift = 16;
  // The seed's 32-bit words, least significant first (0 -> [0]).
  std::vector<std::uint32_t> entropy;
  for (std::uint64_t v = seed; v != 0; v >>= 32) entropy.push_back(std::uint32_t(v));
  if (entropy.empty()) entropy.push_back(0);

  std::uint32_t hash_const = init_a;
  auto hashmix = [&](std::uint32_t value) {
    value ^= hash_const;
    hash_const *= mult_a;
    value *= hash_const;
    value ^= value >> xshift;
    return value;
  };
  auto mix = [](std::uint32_t x, std::uint32_t y) {
    std::uint32_t r = mix_mult_l * x - mix_mult_r * y;
    r ^= r >> xshift;
    return r;
  };
  constexpr std::size_t pool_size = 4;
  std::uint32_t pool[pool_size];
  for (std::size_t i = 0; i < pool_size; ++i) pool[i] = hashmix(i < entropy.size() ? entropy[i] : 0u);
  for (std::size_t s = 0; s < pool_size; ++s)
    for (std::size_t d = 0; d < pool_size; ++d)
      if (s != d) pool[d] = mix(pool[d], hashmix(pool[s]));
  for (std::size_t s = pool_size; s < entropy.size(); ++s)
    for (std::size_t d = 0; d < pool_size; ++d) pool[d] = mix(pool[d], hashmix(entropy[s]));

  std::uint32_t hb = init_b;
  std::vector<std::uint64_t> out(n_words64);
  for (std::size_t i = 0; i < 2 * n_words64; ++i) {
    std::uint32_t v = pool[i % pool_size];
    v ^= hb;
    hb *= mult_b;
    v *= hb;
    v ^= v >> xshift;
    out[i / 2] |= std::uint64_t(v) << (32 * (i % 2));
  }
  return out;
}

// numpy's PCG64 bit generator seeded from an integer (np.random.PCG64(seed)).
class NumpyPcg64 {
 public:
  using u128 = unsigned __int128;

  explicit NumpyPcg64(std::uint64_t seed) {
    const auto w = numpy_seed_sequence_state(seed, 4);
    const u128 initstate = (u128(w[0]) << 64) | w[1];
    const u128 initseq = (u128(w[2]) << 64) | w[3];
    state_ = 0;
    inc_ = (initseq << 1) | 1u;
    step();
    state_ += initstate;
    step();
  }

  std::uint64_t next_uint64() {
    step();
    const auto hi = std::uint64_t(state_ >> 64), lo = std::uint64_t(state_);
    const unsigned rot = unsigned(state_ >> 122);
    const std::uint64_t x = hi ^ lo;
    return (x >> rot) | (x << ((64 - rot) & 63));
  }

  // numpy's buffered 32-bit draw: the low half of a 64-bit draw, then its high half.
  std::uint32_t next_uint32() {
    if (has_uint32_) {
      has_uint32_ = false;
      return uinteger_;
    }
    const std::uint64_t next = next_uint64();
    has_uint32_ = true;
    uinteger_ = std::uint32_t(next >> 32);
    return std::uint32_t(next);
  }

  // numpy's random_interval(max): uniform in [0, max] by masked rejection.
  std::uint64_t random_interval(std::uint64_t max) {
    if (max == 0) return 0;
    std::uint64_t mask = max;
    for (unsigned s = 1; s < 64; s <<= 1) mask |= mask >> s;
    std::uint64_t value;
    if (max <= 0xffffffffull) {
      while ((value = (next_uint32() & mask)) > max) {
      }
    } else {
      while ((value = (next_uint64() & mask)) > max) {
      }
    }
    return value;
  }

 private:
  void step() {
    constexpr u128 mult = (u128(2549297995355413924ull) << 64) | 4865540595714422341ull;
    state_ = state_ * mult + inc_;
  }
  u128 state_ = 0, inc_ = 0;
  bool has_uint32_ = false;
  std::uint32_t uinteger_ = 0;
};

// np.random.default_rng(seed).permutation(n).
inline std::vector<std::uint64_t> numpy_permutation(std::uint64_t seed, std::size_t n) {
  std::vector<std::uint64_t> p(n);
  for (std::size_t i = 0; i < n; ++i) p[i] = i;
  NumpyPcg64 g(seed);
  for (std::size_t i = n; i-- > 1;) {
    const auto j = std::size_t(g.random_interval(i));
    std::swap(p[i], p[j]);
  }
  return p;
}

}  // namespace doremi
