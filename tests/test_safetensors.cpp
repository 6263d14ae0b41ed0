// safetensors reader/writer: round trips, layout, validation of corrupted files,
// and a cross-check against the Python `safetensors` package when it is installed.
#include <doctest/doctest.h>

#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "doremi/core/safetensors.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using doremi::DType;
using doremi::SafetensorsFile;
using doremi::SafetensorsWriter;

namespace {

using doremi::test::read_bytes;
using doremi::test::write_bytes;

// A file with this exact header text and `data_len` zero bytes of data (no padding).
void write_raw(const fs::path& p, const std::string& header, std::size_t data_len) {
  std::string bytes(8, '\0');
  const std::uint64_t n = header.size();
  std::memcpy(bytes.data(), &n, 8);
  bytes += header;
  bytes.append(data_len, '\0');
  write_bytes(p, bytes);
}

using doremi::test::contains;
using doremi::test::error_of;

}  // namespace

TEST_CASE("safetensors: dtype names and sizes") {
  for (DType d : doremi::all_dtypes) {
    CHECK(doremi::parse_dtype(doremi::dtype_name(d)) == d);
    CHECK(doremi::dtype_from_name(doremi::dtype_name(d)) == d);
  }
  CHECK(doremi::dtype_size(DType::F64) == 8);
  CHECK(doremi::dtype_size(DType::BF16) == 2);
  CHECK(doremi::dtype_size(DType::BOOL) == 1);
  CHECK_FALSE(doremi::parse_dtype("F8_E4M3").has_value());
  CHECK(contains(error_of([] { doremi::dtype_from_name("U32"); }), "U32"));
  static_assert(doremi::dtype_of<float> == DType::F32 && doremi::dtype_of<std::uint16_t> == DType::U16);
}

TEST_CASE("safetensors: 16-bit float conversions") {
  using doremi::bf16_to_float, doremi::f16_to_float, doremi::float_to_bf16, doremi::float_to_f16;
  CHECK(float_to_f16(1.0f) == 0x3C00);
  CHECK(float_to_f16(-2.0f) == 0xC000);
  CHECK(float_to_f16(65504.0f) == 0x7BFF);
  CHECK(float_to_f16(65519.0f) == 0x7BFF);  // below the midpoint to 65536
  CHECK(float_to_f16(65520.0f) == 0x7C00);  // ties to even: infinity
  CHECK(float_to_f16(std::ldexp(1.0f, -24)) == 0x0001);
  CHECK(float_to_f16(std::ldexp(1.0f, -25)) == 0x0000);         // tie between 0 and 1 -> 0
  CHECK(float_to_f16(std::ldexp(3.0f, -25)) == 0x0002);         // tie between 1 and 2 -> 2
  CHECK(float_to_f16(std::ldexp(1.0001f, -25)) == 0x0001);
  CHECK(float_to_f16(1.0f / 3.0f) == 0x3555);
  CHECK(float_to_f16(1.0f + std::ldexp(1.0f, -11)) == 0x3C00);  // tie -> even mantissa
  CHECK(float_to_f16(1.0f + std::ldexp(3.0f, -11)) == 0x3C02);
  CHECK(float_to_f16(std::numeric_limits<float>::infinity()) == 0x7C00);
  CHECK(std::isnan(f16_to_float(float_to_f16(std::nanf("")))));
  // Every non-NaN half survives half -> float -> half.
  int bad = 0;
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF)) continue;
    bad += float_to_f16(f16_to_float(std::uint16_t(h))) != h;
  }
  CHECK(bad == 0);
  CHECK(f16_to_float(0x0001) == std::ldexp(1.0f, -24));
  CHECK(f16_to_float(0x8000) == 0.0f);
  CHECK(std::signbit(f16_to_float(0x8000)));

  CHECK(float_to_bf16(1.0f) == 0x3F80);
  CHECK(float_to_bf16(3.14159265f) == 0x4049);
  CHECK(float_to_bf16(1.0f + std::ldexp(1.0f, -8)) == 0x3F80);  // tie -> even
  CHECK(float_to_bf16(1.0f + std::ldexp(3.0f, -8)) == 0x3F82);
  CHECK(bf16_to_float(0x4049) == 3.140625f);
  CHECK(std::isnan(bf16_to_float(float_to_bf16(std::nanf("")))));
}

TEST_CASE("safetensors: round trip of every dtype") {
  doremi::test::TempDir dir("safetensors");
  const fs::path path = dir.path / "all.safetensors";
  const std::vector<float> f32{1.5f, -2.25f, 3.0f, 0.0f, 1e-30f, -7.0f};
  const std::vector<double> f64{1.0 / 3.0, -1e300, 0.0};
  const std::vector<std::int64_t> i64{-(std::int64_t(1) << 62), 0, 42};
  const std::vector<std::int32_t> i32{-5, 2147483647};
  const std::vector<std::int16_t> i16{-32768, 32767, 1};
  const std::vector<std::uint16_t> u16{0, 65535};
  const std::vector<std::int8_t> i8{-128, 127, 0, 1};
  const std::vector<std::uint8_t> u8{255, 0, 7};
  const bool flags[3] = {true, false, true};
  const std::vector<double> as_f32{0.1, -0.2, 1e10};
  const std::vector<float> halves{1.0f, -0.5f, 1.0f / 3.0f, 1000.0f};

  SafetensorsWriter w;
  w.add("f32", {2, 3}, f32);
  w.add("f64", {3}, f64);
  w.add("i64", {3, 1}, i64);
  w.add("i32", {2}, i32);
  w.add("i16", {3}, i16);
  w.add("u16", {1, 2}, u16);
  w.add("i8", {2, 2}, i8);
  w.add("u8", {3}, u8);
  w.add("bool", {3}, std::span<const bool>(flags));
  w.add("scalar", {}, std::span<const float>(f32.data(), 1));
  w.add("empty", {0, 5}, std::span<const float>());
  w.add_tensor_as_f32("as_f32", {3}, as_f32);
  w.add_converted("as_f16", DType::F16, {4}, std::span<const float>(halves));
  w.add_converted("as_bf16", DType::BF16, {2, 2}, std::span<const float>(halves));
  CHECK(w.size() == 14);
  CHECK(w.contains("as_bf16"));
  w.write(path);

  const SafetensorsFile f(path);
  CHECK(f.size() == 14);
  CHECK(f.names().front() == "as_bf16");  // sorted
  CHECK(f.contains("i16"));
  CHECK_FALSE(f.contains("nope"));
  CHECK(f.info("f32").dtype == DType::F32);
  CHECK(f.info("f32").shape == std::vector<std::int64_t>{2, 3});
  CHECK(f.info("f32").numel() == 6);
  CHECK(f.info("scalar").shape.empty());
  CHECK(f.info("empty").bytes.empty());

  CHECK(f.read<float>("f32", {2, 3}) == f32);
  CHECK(f.read<double>("f64", {3}) == f64);
  CHECK(f.read<std::int64_t>("i64", {3, 1}) == i64);
  CHECK(f.read<std::int32_t>("i32", {2}) == i32);
  CHECK(f.read<std::int16_t>("i16", {3}) == i16);
  CHECK(f.read<std::uint16_t>("u16", {1, 2}) == u16);
  CHECK(f.read<std::int8_t>("i8", {2, 2}) == i8);
  CHECK(f.read<std::uint8_t>("u8", {3}) == u8);
  bool got_flags[3] = {};
  f.read<bool>("bool", {3}, std::span<bool>(got_flags));
  CHECK((got_flags[0] && !got_flags[1] && got_flags[2]));
  CHECK(f.read<float>("scalar", {}) == std::vector<float>{1.5f});
  CHECK(f.read<float>("empty", {0, 5}).empty());

  // Floating dtypes convert into either float or double.
  CHECK(f.read<double>("f32", {2, 3})[1] == -2.25);
  CHECK(f.read<float>("f64", {3})[0] == float(1.0 / 3.0));
  const auto back = f.read<double>("as_f32", {3});
  for (int i = 0; i < 3; ++i) CHECK(back[i] == double(float(as_f32[i])));
  const auto h = f.read<float>("as_f16", {4});
  CHECK(h[0] == 1.0f);
  CHECK(h[1] == -0.5f);
  CHECK(h[2] == doctest::Approx(1.0 / 3.0).epsilon(1e-3));
  CHECK(h[3] == 1000.0f);
  const auto b = f.read<double>("as_bf16", {2, 2});
  CHECK(b[0] == 1.0);
  CHECK(b[2] == doctest::Approx(1.0 / 3.0).epsilon(1e-2));

  // Reading into a caller's buffer, with the shape as a vector.
  std::vector<float> out(6);
  const std::vector<std::int64_t> shape{2, 3};
  f.read("f32", shape, std::span<float>(out));
  CHECK(out == f32);

  // The writer's in-memory image is the file.
  CHECK(read_bytes(path).size() == w.serialize().size());
  CHECK(std::memcmp(read_bytes(path).data(), w.serialize().data(), w.serialize().size()) == 0);
}

TEST_CASE("safetensors: metadata") {
  doremi::test::TempDir dir("safetensors");
  SafetensorsWriter w;
  const std::vector<float> x{1, 2};
  w.add("x", {2}, x);
  w.set_metadata("format", "pt");
  w.set_metadata("steps", "1");
  w.set_metadata("steps", "12");  // replaces
  w.write(dir.path / "m.safetensors");
  const SafetensorsFile f(dir.path / "m.safetensors");
  CHECK(f.metadata().size() == 2);
  CHECK(f.metadata().at("format") == "pt");
  CHECK(f.metadata().at("steps") == "12");

  SafetensorsWriter none;
  none.add("x", {2}, x);
  none.write(dir.path / "n.safetensors");
  CHECK(SafetensorsFile(dir.path / "n.safetensors").metadata().empty());
  CHECK_FALSE(contains(read_bytes(dir.path / "n.safetensors"), "__metadata__"));
}

TEST_CASE("safetensors: header padding, tensor order and alignment") {
  doremi::test::TempDir dir("safetensors");
  const fs::path path = dir.path / "a.safetensors";
  SafetensorsWriter w;
  const std::vector<std::uint8_t> u8{1, 2, 3};
  const std::vector<float> f32{1, 2, 3};
  const std::vector<std::int16_t> i16{1};
  const std::vector<double> f64{1, 2};
  w.add("a_bytes", {3}, u8);
  w.add("b_f32", {3}, f32);
  w.add("c_i16", {1}, i16);
  w.add("d_f64", {2}, f64);
  w.set_metadata("k", "v");
  w.write(path);

  const std::string bytes = read_bytes(path);
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  CHECK(n % 8 == 0);
  const std::string header = bytes.substr(8, n);
  const auto last = header.find_last_not_of(' ');
  CHECK(header[last] == '}');
  CHECK(n - (last + 1) < 8);
  CHECK(bytes.size() == 8 + n + 3 + 12 + 2 + 16);
  // Widest dtype first, as the Python library lays files out.
  CHECK(header.find("\"d_f64\"") < header.find("\"b_f32\""));
  CHECK(header.find("\"b_f32\"") < header.find("\"c_i16\""));
  CHECK(header.find("\"c_i16\"") < header.find("\"a_bytes\""));
  CHECK(header.find("__metadata__") < header.find("\"d_f64\""));

  const SafetensorsFile f(path);
  for (const auto& name : f.names()) {
    const auto& t = f.info(name);
    CAPTURE(name);  // the mapping is page-aligned, so the address shows the file offset's alignment
    CHECK(reinterpret_cast<std::uintptr_t>(t.bytes.data()) % doremi::dtype_size(t.dtype) == 0);
  }
}

TEST_CASE("safetensors: writer rejects bad input") {
  SafetensorsWriter w;
  const std::vector<float> x{1, 2, 3};
  w.add("x", {3}, x);
  CHECK(contains(error_of([&] { w.add("x", {3}, x); }), "'x' was added twice"));
  CHECK(contains(error_of([&] { w.add("y", {2, 2}, x); }), "'y'"));
  CHECK(contains(error_of([&] { w.add("z", {-3}, x); }), "'z'"));
  CHECK(contains(error_of([&] { w.add("", {3}, x); }), "non-empty"));
  CHECK(contains(error_of([&] { w.add("__metadata__", {3}, x); }), "reserved"));
  CHECK(contains(error_of([&] { w.add_converted("i", DType::I32, {3}, std::span<const float>(x)); }), "'i'"));
  CHECK(w.size() == 1);
}

TEST_CASE("safetensors: reading with the wrong shape, type or name") {
  doremi::test::TempDir dir("safetensors");
  const fs::path path = dir.path / "weights.safetensors";
  SafetensorsWriter w;
  const std::vector<float> x(6, 1.0f);
  const std::vector<std::int64_t> ids{1, 2};
  w.add("layer.weight", {2, 3}, x);
  w.add("ids", {2}, ids);
  w.write(path);
  SafetensorsFile f(path);

  std::string msg = error_of([&] { f.read<float>("layer.weight", {3, 2}); });
  CHECK(contains(msg, "weights.safetensors"));
  CHECK(contains(msg, "layer.weight"));
  CHECK(contains(msg, "[2, 3]"));
  CHECK(contains(msg, "[3, 2]"));

  msg = error_of([&] { f.read<float>("missing.bias", {3}); });
  CHECK(contains(msg, "weights.safetensors"));
  CHECK(contains(msg, "missing.bias"));

  msg = error_of([&] { f.read<std::int32_t>("ids", {2}); });
  CHECK(contains(msg, "ids"));
  CHECK(contains(msg, "I64"));
  msg = error_of([&] { f.read<float>("ids", {2}); });
  CHECK(contains(msg, "floating point"));

  std::vector<float> small(5);
  msg = error_of([&] { f.read("layer.weight", {2, 3}, std::span<float>(small)); });
  CHECK(contains(msg, "output buffer"));

  // A moved-to file keeps its tensors.
  SafetensorsFile g(std::move(f));
  CHECK(g.read<std::int64_t>("ids", {2}) == ids);
}

TEST_CASE("safetensors: corrupted and truncated files") {
  doremi::test::TempDir dir("safetensors");
  const fs::path path = dir.path / "broken.safetensors";
  auto open_error = [&] { return error_of([&] { SafetensorsFile f(path); }); };

  SUBCASE("missing file") {
    const std::string msg = open_error();
    CHECK(contains(msg, "broken.safetensors"));
  }
  SUBCASE("shorter than 8 bytes") {
    write_bytes(path, "abc");
    const std::string msg = open_error();
    CHECK(contains(msg, "broken.safetensors"));
    CHECK(contains(msg, "8-byte"));
  }
  SUBCASE("header length beyond the file") {
    write_raw(path, R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4);
    std::string bytes = read_bytes(path);
    bytes[5] = 1;  // a header length of 2^40 + ...
    write_bytes(path, bytes);
    const std::string msg = open_error();
    CHECK(contains(msg, "broken.safetensors"));
    CHECK(contains(msg, "header length"));
  }
  SUBCASE("invalid JSON") {
    write_raw(path, R"({"x":{"dtype":"F32",,}})", 0);
    const std::string msg = open_error();
    CHECK(contains(msg, "broken.safetensors"));
    CHECK(contains(msg, "not valid JSON"));
  }
  SUBCASE("header is not an object") {
    write_raw(path, "[1, 2]", 0);
    CHECK(contains(open_error(), "expected an object"));
  }
  SUBCASE("unknown dtype") {
    write_raw(path, R"({"w.q":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}})", 1);
    const std::string msg = open_error();
    CHECK(contains(msg, "broken.safetensors"));
    CHECK(contains(msg, "w.q"));
    CHECK(contains(msg, "F8_E4M3"));
  }
  SUBCASE("missing field") {
    write_raw(path, R"({"w.q":{"dtype":"F32","data_offsets":[0,4]}})", 4);
    const std::string msg = open_error();
    CHECK(contains(msg, "w.q"));
    CHECK(contains(msg, "'shape'"));
  }
  SUBCASE("negative dimension") {
    write_raw(path, R"({"w.q":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4);
    CHECK(contains(open_error(), "w.q"));
  }
  SUBCASE("offsets that do not match the shape") {
    write_raw(path, R"({"w.k":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", 12);
    const std::string msg = open_error();
    CHECK(contains(msg, "broken.safetensors"));
    CHECK(contains(msg, "w.k"));
    CHECK(contains(msg, "needs 16"));
  }
  SUBCASE("offsets ending before they begin") {
    write_raw(path, R"({"w.k":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})", 4);
    CHECK(contains(open_error(), "w.k"));
  }
  SUBCASE("overlapping tensors") {
    write_raw(path,
              R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
              R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
              12);
    const std::string msg = open_error();
    CHECK(contains(msg, "broken.safetensors"));
    CHECK(contains(msg, "'b'"));
    CHECK(contains(msg, "overlaps"));
  }
  SUBCASE("a gap between tensors") {
    write_raw(path,
              R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
              R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
              12);
    const std::string msg = open_error();
    CHECK(contains(msg, "'b'"));
    CHECK(contains(msg, "covered by no tensor"));
  }
  SUBCASE("trailing bytes no tensor covers") {
    write_raw(path, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 9);
    const std::string msg = open_error();
    CHECK(contains(msg, "broken.safetensors"));
    CHECK(contains(msg, "cover only 4"));
  }
  SUBCASE("metadata that is not strings") {
    write_raw(path, R"({"__metadata__":{"steps":12}})", 0);
    CHECK(contains(open_error(), "steps"));
  }
  SUBCASE("a file cut short") {
    SafetensorsWriter w;
    const std::vector<double> big(100, 0.5);
    const std::vector<float> small(3, 1.0f);
    w.add("model.big", {100}, big);
    w.add("model.small", {3}, small);
    w.write(path);
    CHECK_NOTHROW(SafetensorsFile{path});
    fs::resize_file(path, fs::file_size(path) - 5);
    const std::string msg = open_error();
    CHECK(contains(msg, "broken.safetensors"));
    CHECK(contains(msg, "model.small"));  // the last tensor in the file
    CHECK(contains(msg, "truncated"));
  }
  SUBCASE("a BOOL byte other than 0 or 1") {
    write_raw(path, R"({"m":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})", 0);
    std::string bytes = read_bytes(path) + std::string("\x01\x02", 2);
    write_bytes(path, bytes);
    const SafetensorsFile f(path);
    bool out[2];
    CHECK(contains(error_of([&] { f.read<bool>("m", {2}, std::span<bool>(out)); }), "'m'"));
  }
}

// ---- cross-check with the Python package ------------------------------------

namespace {

// The tensors of tests/python/safetensors_crosscheck.py (keep in step).
SafetensorsWriter crosscheck_tensors() {
  SafetensorsWriter w;
  std::vector<float> emb(12);
  for (int i = 0; i < 12; ++i) emb[std::size_t(i)] = float(i - 5) * 0.25f;
  w.add("emb.weight", {3, 4}, emb);
  w.add("bias", {3}, std::vector<double>{-1.0, 0.5, 2.0});
  const std::vector<std::uint16_t> half{0x3C00, 0xC000, 0x7BFF, 0x0001}, brain{0x3F80, 0x4049, 0xBF80};
  w.add("half", DType::F16, {2, 2}, std::as_bytes(std::span(half)));
  w.add("brain", DType::BF16, {3}, std::as_bytes(std::span(brain)));
  w.add("ids", {2, 2}, std::vector<std::int64_t>{-3, 0, 7, std::int64_t(1) << 40});
  w.add("i32", {3}, std::vector<std::int32_t>{-1, 2, 2147483647});
  w.add("i16", {2}, std::vector<std::int16_t>{-32768, 5});
  w.add("u16", {3}, std::vector<std::uint16_t>{0, 1, 65535});
  w.add("i8", {4}, std::vector<std::int8_t>{-128, -1, 0, 127});
  w.add("u8", {2}, std::vector<std::uint8_t>{0, 255});
  const bool mask[3] = {true, false, true};
  w.add("mask", {3}, std::span<const bool>(mask));
  w.add("scalar", {}, std::vector<float>{42.5f});
  w.add("empty", {0, 3}, std::vector<float>{});
  w.set_metadata("note", "doremi cross-check");
  return w;
}

}  // namespace

TEST_CASE("safetensors: cross-check with the Python safetensors package") {
  const fs::path script = doremi::test::source_dir() / "tests/python/safetensors_crosscheck.py";
  if (std::system("python3 -c 'import safetensors' >/dev/null 2>&1") != 0) {
    MESSAGE("skipped: python3 with the safetensors package is not available (pip install safetensors)");
    return;
  }
  doremi::test::TempDir dir("safetensors-py");
  const fs::path from_python = dir.path / "python.safetensors", from_cpp = dir.path / "cpp.safetensors";
  const std::string write_cmd = "python3 '" + script.string() + "' write '" + from_python.string() + "'";
  REQUIRE(std::system(write_cmd.c_str()) == 0);

  // We read what Python wrote.
  const SafetensorsFile f(from_python);
  CHECK(f.size() == 13);
  CHECK(f.metadata().at("note") == "doremi cross-check");
  CHECK(f.read<float>("emb.weight", {3, 4})[0] == -1.25f);
  CHECK(f.read<double>("bias", {3}) == std::vector<double>{-1.0, 0.5, 2.0});
  CHECK(f.read<float>("half", {2, 2}) == std::vector<float>{1.0f, -2.0f, 65504.0f, std::ldexp(1.0f, -24)});
  CHECK(f.read<float>("brain", {3}) == std::vector<float>{1.0f, 3.140625f, -1.0f});
  CHECK(f.read<std::int64_t>("ids", {2, 2})[3] == std::int64_t(1) << 40);
  CHECK(f.read<std::uint16_t>("u16", {3})[2] == 65535);
  CHECK(f.read<std::int8_t>("i8", {4})[0] == -128);
  CHECK(f.read<float>("scalar", {}) == std::vector<float>{42.5f});
  CHECK(f.info("empty").shape == std::vector<std::int64_t>{0, 3});

  // We write the same bytes Python does, and Python reads what we wrote.
  crosscheck_tensors().write(from_cpp);
  CHECK(read_bytes(from_cpp) == read_bytes(from_python));
  const std::string check_cmd = "python3 '" + script.string() + "' check '" + from_cpp.string() + "'";
  CHECK(std::system(check_cmd.c_str()) == 0);
}
