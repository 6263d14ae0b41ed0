#pragma once
// The safetensors format (HuggingFace): an 8-byte little-endian header length
// N, N bytes of JSON header (space-padded), then one byte buffer that the
// tensors tile exactly:
//
//   {"__metadata__": {"k": "v"},
//    "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, ...}
//
// Offsets are relative to the end of the header; tensors are row-major.
//
//   doremi::SafetensorsFile f("model.safetensors");          // mmap, O(1) memory
//   std::vector<float> w(6);
//   f.read<float>("w", std::array<std::int64_t, 2>{2, 3}, w); // checks shape, converts BF16/F16/F64
//
//   doremi::SafetensorsWriter out;
//   out.add("w", {2, 3}, w);                                  // float -> F32
//   out.set_metadata("format", "pt");
//   out.write("model.safetensors");                           // atomic
//
// The reader validates the whole header up front (dtype, shape, offsets that
// tile the data region), so a truncated or corrupted file fails when opened,
// with an error naming the file and the tensor.
#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>


#include <nlohmann/json.hpp>

#include "doremi/core/atomic_file.hpp"
#include "doremi/core/error.hpp"
#include "doremi/core/mapped_file.hpp"

namespace doremi {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; this reader copies bytes as they are");

enum class DType { F64, F32, F16, BF16, I64, I32, I16, U16, I8, U8, BOOL };

inline constexpr std::array<DType, 11> all_dtypes{DType::F64, DType::F32, DType::F16, DType::BF16,
                                                   DType::I64, DType::I32, DType::I16, DType::U16,
                                                   DType::I8,  DType::U8,  DType::BOOL};

// The header's spelling ("F32", "BF16", ...).
constexpr std::string_view dtype_name(DType d) {
  switch (d) {
    case DType::F64: return "F64";
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::I16: return "I16";
    case DType::U16: return "U16";
    case DType::I8: return "I8";
    case DType::U8: return "U8";
    case DType::BOOL: return "BOOL";
  }
  return "?";
}

// Bytes per element.
constexpr std::size_t dtype_size(DType d) {
  switch (d) {
    case DType::F64: case DType::I64: return 8;
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: case DType::I16: case DType::U16: return 2;
    case DType::I8: case DType::U8: case DType::BOOL: return 1;
  }
  return 0;
}

constexpr bool is_floating(DType d) {
  return d == DType::F64 || d == DType::F32 || d == DType::F16 || d == DType::BF16;
}

// nullopt for a name this library does not handle (F8, U32, C64, ...).
constexpr std::optional<DType> parse_dtype(std::string_view name) {
  for (DType d : all_dtypes)
    if (dtype_name(d) == name) return d;
  return std::nullopt;
}

// As parse_dtype, but throws doremi::Error for an unknown name.
inline DType dtype_from_name(std::string_view name) {
  if (auto d = parse_dtype(name)) return *d;
  fail("unknown safetensors dtype '{}' (supported: F64, F32, F16, BF16, I64, I32, I16, U16, I8, U8, BOOL)", name);
}

// The C++ element types that map one-to-one onto a dtype.
template <class T>
concept SafetensorsElement =
    std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, std::int64_t> ||
    std::is_same_v<T, std::int32_t> || std::is_same_v<T, std::int16_t> || std::is_same_v<T, std::uint16_t> ||
    std::is_same_v<T, std::int8_t> || std::is_same_v<T, std::uint8_t> || std::is_same_v<T, bool>;

template <SafetensorsElement T>
inline constexpr DType dtype_of = std::is_same_v<T, float>          ? DType::F32
                                  : std::is_same_v<T, double>       ? DType::F64
                                  : std::is_same_v<T, std::int64_t> ? DType::I64
                                  : std::is_same_v<T, std::int32_t> ? DType::I32
                                  : std::is_same_v<T, std::int16_t> ? DType::I16
                                  : std::is_same_v<T, std::uint16_t> ? DType::U16
                                  : std::is_same_v<T, std::int8_t>  ? DType::I8
                                  : std::is_same_v<T, std::uint8_t> ? DType::U8
                                                                    : DType::BOOL;

// ---- 16-bit floats -------------------------------------------------------

// bfloat16 is the top half of a float32.
inline float bf16_to_float(std::uint16_t b) { return std::bit_cast<float>(std::uint32_t(b) << 16); }

// Round to nearest even, as torch's .to(torch.bfloat16); NaN stays a (quiet) NaN.
inline std::uint16_t float_to_bf16(float f) {
  std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return std::uint16_t((u >> 16) | 0x0040u);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return std::uint16_t(u >> 16);
}

// IEEE binary16 -> float (exact: every half is a float).
inline float f16_to_float(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1Fu;
  const std::uint32_t mant = h & 0x3FFu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24
    const float v = float(mant) * 5.9604644775390625e-08f;
    return std::bit_cast<float>(std::bit_cast<std::uint32_t>(v) | sign);
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7F800000u | (mant << 13));  // inf / NaN
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
}

// float -> IEEE binary16, round to nearest even; overflow gives infinity.
inline std::uint16_t float_to_f16(float f) {
  std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  const std::uint16_t sign = std::uint16_t((u >> 16) & 0x8000u);
  u &= 0x7FFFFFFFu;
  if (u > 0x7F800000u) return sign | 0x7E00u;    // NaN
  if (u >= 0x477FF000u) return sign | 0x7C00u;   // >= 65520 rounds past 65504: infinity
  auto round_shift = [](std::uint32_t m, unsigned shift) {  // m >> shift, ties to even
    std::uint32_t q = m >> shift;
    const std::uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return q;
  };
  if (u < 0x38800000u) {                     // below 2^-14: a subnormal half (or zero)
    if (u <= 0x33000000u) return sign;       // <= 2^-25 rounds to zero (the tie goes to even 0)
    const std::uint32_t e = u >> 23, m = (u & 0x7FFFFFu) | 0x800000u;
    return sign | std::uint16_t(round_shift(m, 126u - e));
  }
  // Normal: rebias the exponent; a mantissa carry correctly bumps the exponent.
  const std::uint32_t h = (((u >> 23) - 112u) << 10) | ((u & 0x7FFFFFu) >> 13);
  const std::uint32_t rem = u & 0x1FFFu;
  return sign | std::uint16_t(h + ((rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ? 1u : 0u));
}

// ---- reading -------------------------------------------------------------

namespace detail {

inline std::string shape_string(std::span<const std::int64_t> shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Elements in `shape`, or nullopt on a negative dimension or overflow past 2^62.
inline std::optional<std::uint64_t> checked_numel(std::span<const std::int64_t> shape) {
  constexpr std::uint64_t limit = std::uint64_t(1) << 62;
  std::uint64_t n = 1;
  for (std::int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (d != 0 && n > limit / std::uint64_t(d)) return std::nullopt;
    n *= std::uint64_t(d);
  }
  return n;
}

template <class T>
T load_unaligned(const std::byte* p) {  // files from other writers need not align tensors
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

}  // namespace detail

struct SafetensorsTensor {
  DType dtype;
  std::vector<std::int64_t> shape;
  std::span<const std::byte> bytes;  // into the mapped file: valid while the SafetensorsFile lives

  std::int64_t numel() const { return std::int64_t(bytes.size() / dtype_size(dtype)); }
};

// A read-only, memory-mapped safetensors file. Opening validates the header;
// tensor data is paged in only when read.
class SafetensorsFile {
 public:
  // Headers beyond this are rejected before parsing (as the Python library does).
  static constexpr std::uint64_t max_header_bytes = 100'000'000;

  explicit SafetensorsFile(std::filesystem::path path)
      : path_(std::move(path)), file_(path_, "safetensors file"), data_(file_.data()), size_(file_.size()) {
    if (size_ < 8)
      fail("{}: not a safetensors file: it has {} bytes, fewer than the 8-byte header length", path_.string(), size_);
    parse_header();
  }

  const std::filesystem::path& path() const { return path_; }

  // Tensor names, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(tensors_.size());
    for (const auto& [name, _] : tensors_) out.push_back(name);
    return out;
  }
  std::size_t size() const { return tensors_.size(); }
  bool contains(std::string_view name) const { return tensors_.find(name) != tensors_.end(); }

  // Throws doremi::Error naming the file and the tensor when it is absent.
  const SafetensorsTensor& info(std::string_view name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) {
      std::string some;
      int shown = 0;
      for (const auto& [n, _] : tensors_) {
        if (shown++ == 8) { some += ", ..."; break; }
        some += (shown > 1 ? ", " : "") + n;
      }
      fail("{}: no tensor named '{}' (the file has {} tensors: {})", path_.string(), name, tensors_.size(), some);
    }
    return it->second;
  }

  // The "__metadata__" strings (empty when the file has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Copies tensor `name` into `out`, converting F64/F32/F16/BF16 into float or
  // double; integer and bool tensors are copied only into their own type.
  // The stored shape must equal `expected_shape` (else an error naming file,
  // tensor, both shapes), and `out` must hold exactly its elements.
  template <SafetensorsElement T>
  void read(std::string_view name, std::span<const std::int64_t> expected_shape, std::span<T> out) const {
    const SafetensorsTensor& t = info(name);
    if (!std::ranges::equal(t.shape, expected_shape))
      fail("{}: tensor '{}' has shape {}, expected {}", path_.string(), name, detail::shape_string(t.shape),
           detail::shape_string(expected_shape));
    const auto n = std::size_t(t.numel());
    if (out.size() != n)
      fail("{}: tensor '{}' has {} elements, but the output buffer holds {}", path_.string(), name, n, out.size());
    if (n == 0) return;
    const std::byte* src = t.bytes.data();
    if (t.dtype == dtype_of<T>) {
      std::memcpy(out.data(), src, t.bytes.size());
      if constexpr (std::is_same_v<T, bool>) {  // a byte other than 0/1 is not a valid bool
        for (std::size_t i = 0; i < n; ++i)
          if (std::to_integer<unsigned>(src[i]) > 1)
            fail("{}: BOOL tensor '{}' holds byte {} at element {}, expected 0 or 1", path_.string(), name,
                 std::to_integer<unsigned>(src[i]), i);
      }
      return;
    }
    if constexpr (std::is_floating_point_v<T>) {
      switch (t.dtype) {
        case DType::F64:
          for (std::size_t i = 0; i < n; ++i) out[i] = T(detail::load_unaligned<double>(src + 8 * i));
          return;
        case DType::F32:
          for (std::size_t i = 0; i < n; ++i) out[i] = T(detail::load_unaligned<float>(src + 4 * i));
          return;
        case DType::BF16:
          for (std::size_t i = 0; i < n; ++i) out[i] = T(bf16_to_float(detail::load_unaligned<std::uint16_t>(src + 2 * i)));
          return;
        case DType::F16:
          for (std::size_t i = 0; i < n; ++i) out[i] = T(f16_to_float(detail::load_unaligned<std::uint16_t>(src + 2 * i)));
          return;
        default:
          fail("{}: tensor '{}' has dtype {}, which cannot be read as floating point (expected F64, F32, F16 or BF16)",
               path_.string(), name, dtype_name(t.dtype));
      }
    } else {
      fail("{}: tensor '{}' has dtype {}, but it is being read as {} (integer tensors are read only into their own type)",
           path_.string(), name, dtype_name(t.dtype), dtype_name(dtype_of<T>));
    }
  }

  template <SafetensorsElement T>
  void read(std::string_view name, std::initializer_list<std::int64_t> expected_shape, std::span<T> out) const {
    read<T>(name, std::span<const std::int64_t>(expected_shape.begin(), expected_shape.size()), out);
  }

  // Allocating form: `auto w = f.read<float>("w", shape);`
  // (Not for bool: std::vector<bool> has no contiguous storage; read into a std::span<bool>.)
  template <SafetensorsElement T>
    requires(!std::is_same_v<T, bool>)
  std::vector<T> read(std::string_view name, std::span<const std::int64_t> expected_shape) const {
    const auto n = detail::checked_numel(expected_shape);
    if (!n) fail("{}: tensor '{}': invalid expected shape {}", path_.string(), name, detail::shape_string(expected_shape));
    std::vector<T> out(*n);
    read<T>(name, expected_shape, std::span<T>(out));
    return out;
  }
  template <SafetensorsElement T>
    requires(!std::is_same_v<T, bool>)
  std::vector<T> read(std::string_view name, std::initializer_list<std::int64_t> expected_shape) const {
    return read<T>(name, std::span<const std::int64_t>(expected_shape.begin(), expected_shape.size()));
  }

 private:
  // Long on purpose: one check after another down the header's fields, each
  // with its own message; splitting it would only scatter the list.
  void parse_header() {
    const std::string file = path_.string();
    const auto header_len = detail::load_unaligned<std::uint64_t>(data_);
    if (header_len > size_ - 8)
      fail("{}: header length {} runs past the end of the file ({} bytes): truncated, or not a safetensors file",
           file, header_len, size_);
    if (header_len > max_header_bytes)
      fail("{}: header length {} exceeds the limit of {} bytes", file, header_len, max_header_bytes);
    const char* text = reinterpret_cast<const char*>(data_ + 8);
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(text, text + header_len);
    } catch (const nlohmann::json::parse_error& e) {
      fail("{}: the header is not valid JSON (byte {} of the {}-byte header): {}", file, e.byte, header_len, e.what());
    } catch (const nlohmann::json::exception& e) {  // a number beyond a double's range
      fail("{}: the header is not valid JSON: {}", file, e.what());
    }
    if (!header.is_object()) fail("{}: the header is JSON {}, expected an object", file, header.type_name());

    const std::byte* buffer = data_ + 8 + header_len;
    const std::uint64_t buffer_len = size_ - 8 - header_len;
    struct Span { std::uint64_t begin, end; const std::string* name; };
    std::vector<Span> spans;
    for (const auto& item : header.items()) {
      // (not a structured binding: clang 14 cannot capture one in the lambdas below)
      const std::string& name = item.key();
      const nlohmann::json& value = item.value();
      if (name == "__metadata__") {
        if (!value.is_object()) fail("{}: '__metadata__' is JSON {}, expected an object of strings", file, value.type_name());
        for (const auto& [k, v] : value.items()) {
          if (!v.is_string())
            fail("{}: '__metadata__' entry '{}' is JSON {}, expected a string", file, k, v.type_name());
          metadata_.emplace(k, v.get<std::string>());
        }
        continue;
      }
      auto bad = [&](std::string_view what) { fail("{}: tensor '{}': {}", file, name, what); };
      if (!value.is_object()) bad(fmt::format("entry is JSON {}, expected an object", value.type_name()));
      auto field = [&](const char* key) -> const nlohmann::json& {
        auto it = value.find(key);
        if (it == value.end()) bad(fmt::format("missing field '{}'", key));
        return *it;
      };
      auto count = [&](const nlohmann::json& j, const char* what) -> std::uint64_t {
        if (!j.is_number_unsigned()) bad(fmt::format("{} holds {}, expected a non-negative integer", what, j.dump()));
        return j.get<std::uint64_t>();
      };
      const auto& jdtype = field("dtype");
      if (!jdtype.is_string()) bad(fmt::format("'dtype' is {}, expected a string", jdtype.dump()));
      const auto dtype = parse_dtype(jdtype.get_ref<const std::string&>());
      if (!dtype)
        bad(fmt::format("unknown dtype {} (supported: F64, F32, F16, BF16, I64, I32, I16, U16, I8, U8, BOOL)",
                        jdtype.dump()));
      const auto& jshape = field("shape");
      if (!jshape.is_array()) bad(fmt::format("'shape' is {}, expected an array", jshape.dump()));
      std::vector<std::int64_t> shape;
      for (const auto& d : jshape) {
        const auto v = count(d, "'shape'");
        if (v > std::uint64_t(std::numeric_limits<std::int64_t>::max())) bad("'shape' dimension too large");
        shape.push_back(std::int64_t(v));
      }
      const auto numel = detail::checked_numel(shape);
      if (!numel) bad(fmt::format("shape {} has too many elements", detail::shape_string(shape)));
      const auto& joff = field("data_offsets");
      if (!joff.is_array() || joff.size() != 2)
        bad(fmt::format("'data_offsets' is {}, expected [begin, end]", joff.dump()));
      const std::uint64_t begin = count(joff[0], "'data_offsets'"), end = count(joff[1], "'data_offsets'");
      if (end < begin) bad(fmt::format("data_offsets [{}, {}] end before they begin", begin, end));
      // numel < 2^62 but numel * 8 may wrap: a shape the data region could never hold.
      if (*numel > std::numeric_limits<std::uint64_t>::max() / dtype_size(*dtype))
        bad(fmt::format("shape {} of {} needs more than 2^64 bytes", detail::shape_string(shape), dtype_name(*dtype)));
      const std::uint64_t need = *numel * dtype_size(*dtype);
      if (end - begin != need)
        bad(fmt::format("data_offsets [{}, {}] hold {} bytes, but {} {} needs {}", begin, end, end - begin,
                        dtype_name(*dtype), detail::shape_string(shape), need));
      if (end > buffer_len)
        bad(fmt::format("data_offsets [{}, {}] run past the end of the file (its data region has {} bytes): "
                        "the file is truncated", begin, end, buffer_len));
      auto [it, fresh] = tensors_.emplace(name, SafetensorsTensor{*dtype, std::move(shape),
                                                           std::span(buffer + begin, std::size_t(end - begin))});
      spans.push_back({begin, end, &it->first});
    }

    // The tensors must tile [0, buffer_len) exactly: no gap, no overlap, no tail.
    std::sort(spans.begin(), spans.end(),
              [](const Span& a, const Span& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
    std::uint64_t covered = 0;
    const std::string* previous = nullptr;
    for (const Span& s : spans) {
      if (s.begin < covered)
        fail("{}: tensor '{}' (data_offsets [{}, {}]) overlaps tensor '{}', which ends at {}", file, *s.name, s.begin,
             s.end, *previous, covered);
      if (s.begin > covered)
        fail("{}: tensor '{}' starts at byte {} of the data region, leaving bytes [{}, {}) covered by no tensor", file,
             *s.name, s.begin, covered, s.begin);
      covered = s.end;
      previous = s.name;
    }
    if (covered != buffer_len)
      fail("{}: the data region has {} bytes, but the tensors cover only {} (trailing bytes, or a corrupted header)",
           file, buffer_len, covered);
  }

  std::filesystem::path path_;
  MappedFile file_;
  const std::byte* data_ = nullptr;  // file_'s bytes (stable when moved: the mapping moves, not the bytes)
  std::size_t size_ = 0;
  std::map<std::string, SafetensorsTensor, std::less<>> tensors_;
  std::map<std::string, std::string> metadata_;
};

// ---- writing -------------------------------------------------------------

// Collects tensors (copying their data) and writes one safetensors file.
// Layout matches the Python library byte for byte: tensors ordered by dtype
// (widest first: I64, F64, F32, I32, BF16, F16, U16, I16, I8, U8, BOOL), then
// by name; header padded with spaces to a multiple of 8. So every tensor in
// the file is aligned to its element size. (Metadata keys keep the order they
// were set in; Python's order for several keys comes from a hash map.)
class SafetensorsWriter {
 public:
  void add(std::string name, DType dtype, std::vector<std::int64_t> shape, std::span<const std::byte> data) {
    if (name.empty()) fail("safetensors writer: a tensor needs a non-empty name");
    if (name == "__metadata__") fail("safetensors writer: '__metadata__' is reserved and cannot name a tensor");
    if (tensors_.contains(name)) fail("safetensors writer: tensor '{}' was added twice", name);
    const auto numel = detail::checked_numel(shape);
    if (!numel) fail("safetensors writer: tensor '{}' has invalid shape {}", name, detail::shape_string(shape));
    if (*numel * dtype_size(dtype) != data.size())
      fail("safetensors writer: tensor '{}' is {} {} ({} bytes), but {} bytes of data were given", name,
           dtype_name(dtype), detail::shape_string(shape), *numel * dtype_size(dtype), data.size());
    tensors_.emplace(std::move(name), Entry{dtype, std::move(shape), {data.begin(), data.end()}});
  }

  // float -> F32, double -> F64, int64_t -> I64, int32_t -> I32, int16_t -> I16,
  // uint16_t -> U16, int8_t -> I8, uint8_t -> U8, bool -> BOOL.
  template <class T>
    requires SafetensorsElement<std::remove_const_t<T>>
  void add(std::string name, std::vector<std::int64_t> shape, std::span<T> data) {
    add(std::move(name), dtype_of<std::remove_const_t<T>>, std::move(shape), std::as_bytes(data));
  }
  template <SafetensorsElement T>
    requires(!std::is_same_v<T, bool>)  // std::vector<bool> is not contiguous
  void add(std::string name, std::vector<std::int64_t> shape, const std::vector<T>& data) {
    add(std::move(name), std::move(shape), std::span<const T>(data));
  }

  // Stores float or double data as F64, F32, F16 or BF16 (rounding to nearest even).
  template <class T>
    requires std::is_same_v<std::remove_const_t<T>, float> || std::is_same_v<std::remove_const_t<T>, double>
  void add_converted(std::string name, DType dtype, std::vector<std::int64_t> shape, std::span<T> data) {
    if (!is_floating(dtype))
      fail("safetensors writer: tensor '{}': cannot convert floating-point data to {}", name, dtype_name(dtype));
    std::vector<std::byte> bytes(data.size() * dtype_size(dtype));
    auto put = [&](std::size_t i, auto v) { std::memcpy(bytes.data() + i * sizeof(v), &v, sizeof(v)); };
    for (std::size_t i = 0; i < data.size(); ++i) {
      switch (dtype) {
        case DType::F64: put(i, double(data[i])); break;
        case DType::F32: put(i, float(data[i])); break;
        case DType::F16: put(i, float_to_f16(float(data[i]))); break;
        default: put(i, float_to_bf16(float(data[i]))); break;
      }
    }
    add(std::move(name), dtype, std::move(shape), bytes);
  }

  // Double-precision training state exported as F32 (what HF checkpoints hold).
  void add_tensor_as_f32(std::string name, std::vector<std::int64_t> shape, std::span<const double> data) {
    add_converted(std::move(name), DType::F32, std::move(shape), data);
  }

  // Later calls with the same key replace the value; keys keep their first order.
  void set_metadata(std::string key, std::string value) {
    for (auto& [k, v] : metadata_)
      if (k == key) {
        v = std::move(value);
        return;
      }
    metadata_.emplace_back(std::move(key), std::move(value));
  }

  bool contains(std::string_view name) const { return tensors_.find(name) != tensors_.end(); }
  std::size_t size() const { return tensors_.size(); }

  // The whole file in memory.
  std::vector<std::byte> serialize() const {
    std::vector<std::byte> out;
    const auto order = layout();
    const std::string header = header_text(order);
    out.resize(8 + header.size());
    const std::uint64_t n = header.size();
    std::memcpy(out.data(), &n, 8);
    std::memcpy(out.data() + 8, header.data(), header.size());
    for (const auto* e : order) out.insert(out.end(), e->second.data.begin(), e->second.data.end());
    return out;
  }

  // Writes the file atomically (see write_file_atomic).
  void write(const std::filesystem::path& path) const {
    const auto order = layout();
    const std::string header = header_text(order);
    write_file_atomic(path, [&](std::ostream& os) {
      const std::uint64_t n = header.size();
      os.write(reinterpret_cast<const char*>(&n), 8);
      os.write(header.data(), std::streamsize(header.size()));
      for (const auto* e : order)
        os.write(reinterpret_cast<const char*>(e->second.data.data()), std::streamsize(e->second.data.size()));
    });
  }

 private:
  struct Entry {
    DType dtype;
    std::vector<std::int64_t> shape;
    std::vector<std::byte> data;
  };
  using Item = std::pair<const std::string, Entry>;

  // The Python library's order (its Dtype enum, reversed): widest first.
  static int layout_rank(DType d) {
    switch (d) {
      case DType::I64: return 0;
      case DType::F64: return 1;
      case DType::F32: return 2;
      case DType::I32: return 3;
      case DType::BF16: return 4;
      case DType::F16: return 5;
      case DType::U16: return 6;
      case DType::I16: return 7;
      case DType::I8: return 8;
      case DType::U8: return 9;
      case DType::BOOL: return 10;
    }
    return 11;
  }

  std::vector<const Item*> layout() const {
    std::vector<const Item*> order;
    for (const auto& item : tensors_) order.push_back(&item);
    std::stable_sort(order.begin(), order.end(), [](const Item* a, const Item* b) {
      return layout_rank(a->second.dtype) < layout_rank(b->second.dtype);  // names already sorted by the map
    });
    return order;
  }

  std::string header_text(const std::vector<const Item*>& order) const {
    nlohmann::ordered_json h = nlohmann::ordered_json::object();
    if (!metadata_.empty()) {
      auto& m = h["__metadata__"] = nlohmann::ordered_json::object();
      for (const auto& [k, v] : metadata_) m[k] = v;
    }
    std::uint64_t offset = 0;
    for (const Item* item : order) {
      const Entry& e = item->second;
      nlohmann::ordered_json t = nlohmann::ordered_json::object();
      t["dtype"] = dtype_name(e.dtype);
      t["shape"] = nlohmann::ordered_json::array();
      for (auto d : e.shape) t["shape"].push_back(d);
      t["data_offsets"] = {offset, offset + e.data.size()};
      offset += e.data.size();
      h[item->first] = std::move(t);
    }
    std::string text = h.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    return text;
  }

  std::map<std::string, Entry, std::less<>> tensors_;
  std::vector<std::pair<std::string, std::string>> metadata_;
};

}  // namespace doremi
