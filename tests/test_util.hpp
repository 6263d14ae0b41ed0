#pragma once
// Helpers shared by the tests: scratch directories and fixture paths.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "doremi/core/error.hpp"
#include "doremi/data/batch.hpp"
#include "doremi/data/byte_tokenizer.hpp"

namespace doremi::test {

// A fresh empty directory under the system temp folder, removed on scope exit.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag = "t") {
    static std::atomic<int> counter{0};
    path = std::filesystem::temp_directory_path() /
           ("doremi-test-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

// The message of the doremi::Error that `f` throws ("" when it throws none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const doremi::Error& e) {
    return e.what();
  }
  return "";
}

// Each batch cut into `parts` batches of B/parts consecutive rows, in order:
// the micro-batches of gradient accumulation `parts` over the same data.
inline std::vector<doremi::Batch> split_rows(const std::vector<doremi::Batch>& batches, int parts) {
  std::vector<doremi::Batch> out;
  for (const doremi::Batch& b : batches)
    for (int h = 0; h < parts; ++h) {
      const std::size_t rows = std::size_t(b.B / parts), n = rows * std::size_t(b.T), at = std::size_t(h);
      doremi::Batch part;
      part.B = b.B / parts;
      part.T = b.T;
      part.inputs.assign(b.inputs.begin() + at * n, b.inputs.begin() + (at + 1) * n);
      part.targets.assign(b.targets.begin() + at * n, b.targets.begin() + (at + 1) * n);
      part.domain.assign(b.domain.begin() + at * rows, b.domain.begin() + (at + 1) * rows);
      out.push_back(std::move(part));
    }
  return out;
}
inline std::vector<doremi::Batch> halves(const std::vector<doremi::Batch>& batches) { return split_rows(batches, 2); }

// A sampler replaying a fixed list of batches, round and round (state: the position).
struct ListSampler {
  std::vector<doremi::Batch> batches;
  std::size_t next_index = 0;
  doremi::Batch next() { return batches.at(next_index++ % batches.size()); }
  nlohmann::json state() const { return {{"next", next_index}}; }
  void restore(const nlohmann::json& j) { next_index = j.at("next").get<std::size_t>(); }
};

// ‖x − ref‖ / ‖ref‖ over two equally long ranges of numbers, in double.
template <class X, class R>
double relative_distance(const X& x, const R& ref) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < std::size(ref); ++i) {
    num += std::pow(double(x[i]) - double(ref[i]), 2);
    den += std::pow(double(ref[i]), 2);
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// A whole file's bytes, and a file written with exactly these bytes.
inline std::string read_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
inline void write_bytes(const std::filesystem::path& p, std::string_view bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

inline std::filesystem::path source_dir() { return DOREMI_SOURCE_DIR; }
inline std::filesystem::path shared_dir() { return DOREMI_SHARED_DIR; }

// The repository's licence texts (examples/data/licenses.txt, about 60 KB of
// English prose) as byte-tokenizer ids: the tests' real-text domain.
inline std::vector<std::int32_t> licenses_tokens() {
  const std::filesystem::path path = source_dir() / "examples/data/licenses.txt";
  std::ifstream in(path, std::ios::binary);
  if (!in) doremi::fail("test fixture {} is missing", path.string());
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return doremi::ByteTokenizer{}.encode(text);
}

}  // namespace doremi::test
