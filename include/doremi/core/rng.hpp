#pragma once
// Counter-based random numbers (Philox4x32-10, Salmon et al. 2011).
// Every draw is a pure function of (seed, stream, index): initialisation,
// shuffles and sampling need no hidden state, so a resumed run draws exactly
// what an uninterrupted one would. The same function runs on host and device.
#include <array>
#include <cmath>
#include <cstdint>

#include "doremi/core/hostdevice.hpp"

namespace doremi {

struct Philox {
  using Counter = std::array<std::uint32_t, 4>;
  using Key = std::array<std::uint32_t, 2>;

  DOREMI_HD static constexpr Counter round(Counter c, Key k) {
    constexpr std::uint64_t m0 = 0xD2511F53u, m1 = 0xCD9E8D57u;
    const std::uint64_t p0 = m0 * c[0], p1 = m1 * c[2];
    return {std::uint32_t(p1 >> 32) ^ c[1] ^ k[0], std::uint32_t(p1),
            std::uint32_t(p0 >> 32) ^ c[3] ^ k[1], std::uint32_t(p0)};
  }

  // Ten rounds of Philox4x32 on counter c with key k.
  DOREMI_HD static constexpr Counter bijection(Counter c, Key k) {
    for (int i = 0; i < 10; ++i) {
      c = round(c, k);
      k[0] += 0x9E3779B9u;
      k[1] += 0xBB67AE85u;
    }
    return c;
  }

  // Four independent 32-bit words for (seed, stream, index).
  DOREMI_HD static constexpr Counter draw(std::uint64_t seed, std::uint64_t stream,
                                          std::uint64_t index) {
    return bijection({std::uint32_t(index), std::uint32_t(index >> 32), std::uint32_t(stream),
                      std::uint32_t(stream >> 32)},
                     {std::uint32_t(seed), std::uint32_t(seed >> 32)});
  }

  // A uniform double in [0, 1) from 53 random bits.
  DOREMI_HD static constexpr double uniform(std::uint64_t seed, std::uint64_t stream,
                                            std::uint64_t index) {
    const Counter c = draw(seed, stream, index);
    const std::uint64_t bits = (std::uint64_t(c[0]) << 21) ^ std::uint64_t(c[1] >> 11);
    return double(bits & ((std::uint64_t(1) << 53) - 1)) * 0x1.0p-53;
  }

  // A uniform integer in [0, n), n > 0 (Lemire's multiply-shift; the bias for
  // n far below 2^64 is negligible and, above all, deterministic).
  DOREMI_HD static constexpr std::uint64_t below(std::uint64_t n, std::uint64_t seed,
                                                 std::uint64_t stream, std::uint64_t index) {
    const Counter c = draw(seed, stream, index);
    const std::uint64_t r = (std::uint64_t(c[0]) << 32) | c[1];
    return std::uint64_t((static_cast<unsigned __int128>(r) * n) >> 64);
  }

  // A standard normal draw (Box-Muller on two 53-bit uniforms).
  DOREMI_HD static double normal(std::uint64_t seed, std::uint64_t stream, std::uint64_t index) {
    const Counter c = draw(seed, stream, index);
    const std::uint64_t a = ((std::uint64_t(c[0]) << 21) ^ (c[1] >> 11)) & ((std::uint64_t(1) << 53) - 1);
    const std::uint64_t b = ((std::uint64_t(c[2]) << 21) ^ (c[3] >> 11)) & ((std::uint64_t(1) << 53) - 1);
    const double u1 = (double(a) + 1.0) * 0x1.0p-53;  // (0, 1]: log is finite
    const double u2 = double(b) * 0x1.0p-53;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
};

}  // namespace doremi
