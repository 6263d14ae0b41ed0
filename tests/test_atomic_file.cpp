// write_file_atomic and AtomicDirectory: the old output survives a failed write,
// and no temporary is left behind.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "doremi/core/atomic_file.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;

namespace {

std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

TEST_CASE("atomic_file: write_file_atomic writes and replaces") {
  doremi::test::TempDir dir("atomic");
  const fs::path path = dir.path / "state.json";
  doremi::write_file_atomic(path, std::string_view("first"));
  CHECK(doremi::test::read_bytes(path) == "first");
  doremi::write_file_atomic(path, [](std::ostream& os) { os << "second " << 2; });
  CHECK(doremi::test::read_bytes(path) == "second 2");
  const std::byte raw[3] = {std::byte{0}, std::byte{255}, std::byte{7}};
  doremi::write_file_atomic(path, std::span<const std::byte>(raw));
  CHECK(doremi::test::read_bytes(path) == std::string("\0\xff\x07", 3));
  CHECK(entries(dir.path) == std::vector<std::string>{"state.json"});
}

TEST_CASE("atomic_file: a failed write leaves the old file intact") {
  doremi::test::TempDir dir("atomic");
  const fs::path path = dir.path / "weights.bin";
  doremi::write_file_atomic(path, std::string_view("old contents"));

  SUBCASE("the writer throws") {
    std::string msg;
    try {
      doremi::write_file_atomic(path, [](std::ostream& os) {
        os << "half of the new";
        throw std::runtime_error("disk on fire");
      });
    } catch (const doremi::Error& e) {
      msg = e.what();
    }
    CHECK(msg.find("weights.bin") != std::string::npos);
    CHECK(msg.find("disk on fire") != std::string::npos);
  }
  SUBCASE("the stream fails") {
    CHECK_THROWS_AS(doremi::write_file_atomic(path, [](std::ostream& os) { os.setstate(std::ios::badbit); }),
                    doremi::Error);
  }
  CHECK(doremi::test::read_bytes(path) == "old contents");
  CHECK(entries(dir.path) == std::vector<std::string>{"weights.bin"});  // no temporary left
}

TEST_CASE("atomic_file: a missing directory is an error naming the path") {
  doremi::test::TempDir dir("atomic");
  const fs::path path = dir.path / "no-such-dir" / "out.txt";
  std::string msg;
  try {
    doremi::write_file_atomic(path, std::string_view("x"));
  } catch (const doremi::Error& e) {
    msg = e.what();
  }
  CHECK(msg.find("out.txt") != std::string::npos);
}

TEST_CASE("atomic_file: AtomicDirectory commit creates or replaces a folder") {
  doremi::test::TempDir dir("atomic");
  const fs::path final_path = dir.path / "checkpoint-10";

  {  // first commit: the folder did not exist
    doremi::AtomicDirectory staged(final_path);
    CHECK(staged.path() != final_path);
    CHECK(staged.path().parent_path() == dir.path);
    CHECK_FALSE(fs::exists(final_path));
    doremi::write_file_atomic(staged.path() / "a.txt", std::string_view("A1"));
    std::ofstream(staged.path() / "b.txt") << "B1";  // plain writes are synced by commit()
    fs::create_directory(staged.path() / "sub");
    std::ofstream(staged.path() / "sub" / "c.txt") << "C1";
    staged.commit();
    CHECK(staged.committed());
  }
  CHECK(doremi::test::read_bytes(final_path / "a.txt") == "A1");
  CHECK(doremi::test::read_bytes(final_path / "sub" / "c.txt") == "C1");

  {  // second commit replaces the whole folder: files not rewritten disappear
    doremi::AtomicDirectory staged(final_path / "");  // a trailing slash names the same folder
    doremi::write_file_atomic(staged.path() / "a.txt", std::string_view("A2"));
    CHECK(doremi::test::read_bytes(final_path / "a.txt") == "A1");  // the old one is untouched until commit
    staged.commit();
    CHECK_THROWS_AS(staged.commit(), doremi::Error);
  }
  CHECK(doremi::test::read_bytes(final_path / "a.txt") == "A2");
  CHECK_FALSE(fs::exists(final_path / "b.txt"));
  CHECK_FALSE(fs::exists(final_path / "sub"));
  CHECK(entries(dir.path) == std::vector<std::string>{"checkpoint-10"});  // nothing set aside remains
  CHECK_FALSE(doremi::AtomicDirectory::recover(final_path));              // nothing to recover
}

TEST_CASE("atomic_file: an uncommitted AtomicDirectory leaves nothing behind") {
  doremi::test::TempDir dir("atomic");
  const fs::path final_path = dir.path / "ckpt";
  SUBCASE("no folder before") {
    {
      doremi::AtomicDirectory staged(final_path);
      doremi::write_file_atomic(staged.path() / "model.safetensors", std::string_view("partial"));
    }
    CHECK(entries(dir.path).empty());
  }
  SUBCASE("an old folder stays as it was") {
    fs::create_directory(final_path);
    doremi::write_file_atomic(final_path / "model.safetensors", std::string_view("old"));
    try {
      doremi::AtomicDirectory staged(final_path);
      doremi::write_file_atomic(staged.path() / "model.safetensors", std::string_view("new"));
      throw std::runtime_error("crash before commit");
    } catch (const std::runtime_error&) {
    }
    CHECK(entries(dir.path) == std::vector<std::string>{"ckpt"});
    CHECK(doremi::test::read_bytes(final_path / "model.safetensors") == "old");
  }
}

TEST_CASE("atomic_file: AtomicDirectory::recover restores a folder moved aside") {
  doremi::test::TempDir dir("atomic");
  const fs::path final_path = dir.path / "ckpt";
  // As a crash between commit's two renames leaves things.
  const fs::path aside = dir.path / ".ckpt.old-123-0";
  fs::create_directory(aside);
  std::ofstream(aside / "x.txt") << "kept";
  CHECK(doremi::AtomicDirectory::recover(final_path));
  CHECK(doremi::test::read_bytes(final_path / "x.txt") == "kept");
  CHECK_FALSE(fs::exists(aside));
}
