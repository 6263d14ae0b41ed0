#pragma once
// Reading JSON files with errors that name the file (nlohmann's own messages
// say only where in the text the problem is), and typed field reads whose
// errors name the file, the field and the value (nlohmann's get<T>() throws
// its own exceptions on a wrong type and silently wraps or truncates a number
// out of the target's range).
//
//   const auto j = doremi::read_json_file(path);
//   int n = doremi::json_field<int>(j, "seq_len", path.string());         // required
//   double lr = doremi::json_field_or<double>(j, "lr", 1e-3, path.string());
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "doremi/core/error.hpp"

namespace doremi {

// Parses JSON text; `where` (a file name) starts every error. Invalid JSON
// and numbers beyond a double's range are doremi::Error.
inline nlohmann::json parse_json_text(std::string_view text, std::string_view where) {
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::parse_error& e) {
    fail("{}: invalid JSON at byte {}: {}", where, e.byte, e.what());
  } catch (const nlohmann::json::exception& e) {  // out_of_range 406: a number too large for a double
    fail("{}: invalid JSON: {}", where, e.what());
  }
}

// Parses the whole file. Throws doremi::Error naming the file when it cannot
// be read or is not valid JSON (with the parser's byte position).
inline nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail("cannot read JSON file {}: it is a directory", path.string());
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open JSON file {}: {}", path.string(), std::strerror(errno));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("cannot read JSON file {}: {}", path.string(), std::strerror(errno));
  return parse_json_text(text, path.string());
}

namespace detail {

// A JSON value shortened for messages.
inline std::string json_excerpt(const nlohmann::json& v) {
  std::string s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > 120) s = s.substr(0, 117) + "...";
  return s;
}

template <class T>
struct is_vector : std::false_type {};
template <class T>
struct is_vector<std::vector<T>> : std::true_type {};

}  // namespace detail

// `v` as T, or doremi::Error "WHERE: field 'FIELD' is VALUE, expected ...".
// T: bool, an integer type (the value must be an integer, or a float with an
// integral value, within T's range), float/double (any finite number),
// std::string, std::vector of those, nlohmann::json (anything).
template <class T>
T json_as(const nlohmann::json& v, std::string_view where, std::string_view field) {
  auto wrong = [&](std::string_view expected) -> void {
    fail("{}: field '{}' is {}, expected {}", where, field, detail::json_excerpt(v), expected);
  };
  if constexpr (std::is_same_v<T, nlohmann::json>) {
    return v;
  } else if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) wrong("true or false");
    return v.get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    constexpr auto lo = std::numeric_limits<T>::min();
    constexpr auto hi = std::numeric_limits<T>::max();
    const std::string range = fmt::format("an integer in [{}, {}]", lo, hi);
    if (v.is_number_unsigned()) {
      const auto u = v.get<std::uint64_t>();
      if (!std::in_range<T>(u)) wrong(range);
      return T(u);
    }
    if (v.is_number_integer()) {
      const auto s = v.get<std::int64_t>();
      if (!std::in_range<T>(s)) wrong(range);
      return T(s);
    }
    if (v.is_number_float()) {
      const double d = v.get<double>();
      // 2^63 and 2^64 are exact doubles; the bounds below exclude them.
      if (std::isfinite(d) && d == std::floor(d) && d >= double(lo) && d < 2.0 * (double(hi / 2) + 1)) {
        if constexpr (std::is_signed_v<T>) return T(std::int64_t(d));
        else return T(std::uint64_t(d));
      }
    }
    wrong(range);
    return T{};
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!v.is_number()) wrong("a number");
    const double d = v.get<double>();
    if (!std::isfinite(d) || (sizeof(T) < sizeof(double) && std::fabs(d) > double(std::numeric_limits<T>::max())))
      wrong("a finite number");
    return T(d);
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!v.is_string()) wrong("a string");
    return v.get<std::string>();
  } else if constexpr (detail::is_vector<T>::value) {
    if (!v.is_array()) wrong("an array");
    T out;
    out.reserve(v.size());
    for (std::size_t i = 0; i < v.size(); ++i)
      out.push_back(json_as<typename T::value_type>(v[i], where, fmt::format("{}[{}]", field, i)));
    return out;
  } else {
    static_assert(!sizeof(T), "json_as: unsupported type");
  }
}

// Field `key` of object `obj` as T; doremi::Error when `obj` is not an
// object, the field is missing or has the wrong type or range. `prefix` is
// prepended to the field name in messages ("reference.").
template <class T>
T json_field(const nlohmann::json& obj, std::string_view key, std::string_view where, std::string_view prefix = "") {
  if (!obj.is_object()) fail("{}: expected a JSON object{}, got {}", where, prefix.empty() ? "" : fmt::format(" at '{}'", prefix), detail::json_excerpt(obj));
  const auto it = obj.find(key);
  if (it == obj.end()) fail("{}: missing field '{}{}'", where, prefix, key);
  return json_as<T>(*it, where, fmt::format("{}{}", prefix, key));
}

// As json_field, but `fallback` when the field is absent (or null).
template <class T>
T json_field_or(const nlohmann::json& obj, std::string_view key, T fallback, std::string_view where,
                std::string_view prefix = "") {
  if (!obj.is_object()) fail("{}: expected a JSON object{}, got {}", where, prefix.empty() ? "" : fmt::format(" at '{}'", prefix), detail::json_excerpt(obj));
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  return json_as<T>(*it, where, fmt::format("{}{}", prefix, key));
}

}  // namespace doremi
