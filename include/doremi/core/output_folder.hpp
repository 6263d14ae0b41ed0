#pragma once
// Output folders that cannot go stale or be shared by accident.
//
//   doremi::OutputLock lock(dir);            // flock on dir/.doremi.lock; a second
//                                            // holder gets an error naming our pid
//   bool done = doremi::claim_output(dir, fingerprint);
//
// claim_output records in dir/fingerprint.json what produces the folder's
// contents (settings that change the result, the identity of the input
// data, the program version). A later run may continue in the folder only
// when its fingerprint is equal; otherwise it fails with the differing fields
// and how to start afresh (`--overwrite` of the doremi program, which calls
// clear_output_folder, or another output folder). A non-empty folder without
// a fingerprint (written by another program or an older doremi) is refused
// the same way.
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "doremi/core/atomic_file.hpp"
#include "doremi/core/error.hpp"
#include "doremi/core/json.hpp"
#include "doremi/version.hpp"

namespace doremi {

// The version recorded in fingerprints.
inline constexpr std::string_view program_version = version;

inline constexpr std::string_view lock_file_name = ".doremi.lock";
inline constexpr std::string_view fingerprint_file_name = "fingerprint.json";

namespace detail {

inline std::uint64_t fnv1a64_update(std::uint64_t h, std::string_view bytes) {
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}
inline constexpr std::uint64_t fnv1a64_offset = 14695981039346656037ull;

// Makes `dir` a directory we can write, with errors that name it.
inline void create_output_directory(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(fs::symlink_status(dir, ec)) && !fs::is_directory(dir, ec))
    fail("output folder {} exists and is not a folder; choose another output path", dir.string());
  fs::create_directories(dir, ec);
  if (ec) fail("cannot create output folder {}: {}", dir.string(), ec.message());
}

// The regular files under `dir`, sorted, hidden entries (and what hidden
// folders hold) skipped.
inline std::vector<std::filesystem::path> visible_files(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  std::vector<fs::path> files;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (it->path().filename().string().starts_with(".")) {
      if (it->is_directory()) it.disable_recursion_pending();
      continue;
    }
    if (it->is_regular_file()) files.push_back(it->path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace detail

// A content hash (FNV-1a 64, hex) of a file, or of a folder's regular files
// (relative names, sizes and contents; hidden entries skipped). For large
// inputs see file_signature.
inline std::string content_hash(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  std::uint64_t h = detail::fnv1a64_offset;
  auto add_file = [&](const fs::path& f) {
    std::ifstream in(f, std::ios::binary);
    if (!in) fail("cannot read {} to fingerprint it: {}", f.string(), std::strerror(errno));
    char buf[1 << 16];
    while (in.read(buf, sizeof buf) || in.gcount() > 0) h = detail::fnv1a64_update(h, {buf, std::size_t(in.gcount())});
  };
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    const std::vector<fs::path> files = detail::visible_files(path);
    for (const auto& f : files) {
      h = detail::fnv1a64_update(h, fs::relative(f, path).string());
      add_file(f);
    }
  } else {
    add_file(path);
  }
  return fmt::format("{:016x}", h);
}

// A cheap identity of a large input: its absolute path, and for every
// regular file under it (or itself) the relative name, size and modification
// time, hashed. Changes when a file is replaced or edited.
inline std::string file_signature(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  std::uint64_t h = detail::fnv1a64_offset;
  std::error_code ec;
  const fs::path abs = fs::absolute(path, ec);
  h = detail::fnv1a64_update(h, abs.string());
  auto add = [&](const fs::path& f, const std::string& name) {
    std::error_code e;
    const auto size = fs::file_size(f, e);
    const auto time = fs::last_write_time(f, e).time_since_epoch().count();
    h = detail::fnv1a64_update(h, fmt::format("{}\n{}\n{}\n", name, e ? 0 : size, e ? 0 : time));
  };
  if (fs::is_directory(path, ec)) {
    const std::vector<fs::path> files = detail::visible_files(path);
    for (const auto& f : files) add(f, fs::relative(f, path).string());
  } else if (fs::exists(path, ec)) {
    add(path, "");
  } else {
    fail("cannot fingerprint {}: it does not exist", path.string());
  }
  return fmt::format("{:016x}", h);
}

// The identity of a dataset folder: a preprocessed one by its manifest.json
// and the fingerprint of the run that wrote it (both describe every shard);
// any other (HF datasets) by file_signature.
inline nlohmann::json dataset_identity(const std::filesystem::path& root) {
  namespace fs = std::filesystem;
  if (fs::exists(root / "manifest.json")) {
    nlohmann::json id{{"manifest", content_hash(root / "manifest.json")}};
    if (fs::exists(root / fingerprint_file_name)) id["producer"] = content_hash(root / fingerprint_file_name);
    return id;
  }
  return {{"files", file_signature(root)}};
}

// An exclusive advisory lock (flock) on dir/.doremi.lock, held for the
// object's lifetime (and released by the kernel when the process dies, so a
// killed run leaves no stale lock). The lock file holds the holder's pid.
// Creates `dir`. Throws when another process (or another OutputLock of this
// process) holds the folder, naming the holder's pid.
class OutputLock {
 public:
  explicit OutputLock(std::filesystem::path dir) : dir_(std::move(dir)) {
    detail::create_output_directory(dir_);
    const auto file = dir_ / std::string(lock_file_name);
    fd_ = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("cannot write in output folder {}: {}", dir_.string(), std::strerror(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      ::close(fd_);
      fd_ = -1;
      if (err != EWOULDBLOCK) fail("cannot lock output folder {}: {}", dir_.string(), std::strerror(err));
      fail("output folder {} is in use by another doremi run (process {}); wait for it to end, stop it, or choose "
           "another output folder",
           dir_.string(), holder_pid(file));
    }
    const std::string pid = std::to_string(long(::getpid())) + "\n";
    if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) != ssize_t(pid.size())) {
      const int err = errno;
      ::close(fd_);
      fd_ = -1;
      fail("cannot write in output folder {}: {}", dir_.string(), std::strerror(err));
    }
    {
      std::lock_guard g(registry_mutex());
      registry().insert(dir_);
    }
    remove_staging_leftovers(dir_);  // of killed runs: nobody else writes here while we hold the lock
  }
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;
  ~OutputLock() {
    if (fd_ < 0) return;
    {
      std::lock_guard g(registry_mutex());
      registry().erase(dir_);
    }
    ::close(fd_);  // releases the lock; the file stays (removing it would race with a new holder)
  }
  const std::filesystem::path& dir() const { return dir_; }

  // The folders this process holds now (for cleaning up on a signal).
  static std::vector<std::filesystem::path> held() {
    std::lock_guard g(registry_mutex());
    return {registry().begin(), registry().end()};
  }

 private:
  static std::string holder_pid(const std::filesystem::path& file) {
    for (int attempt = 0; attempt < 50; ++attempt) {  // the holder writes its pid just after locking
      std::ifstream in(file);
      std::string pid;
      if (in >> pid && !pid.empty()) return pid;
      ::usleep(10000);
    }
    return "unknown";
  }
  static std::mutex& registry_mutex() {
    static std::mutex m;
    return m;
  }
  static std::set<std::filesystem::path>& registry() {
    static std::set<std::filesystem::path> r;
    return r;
  }
  std::filesystem::path dir_;
  int fd_ = -1;
};

namespace detail {

// "key: recorded X, now Y" for every leaf that differs (nested objects by dotted keys).
inline void fingerprint_differences(const nlohmann::json& was, const nlohmann::json& now, const std::string& prefix,
                                    std::vector<std::string>& out) {
  if (was.is_object() && now.is_object()) {
    std::set<std::string> keys;
    for (const auto& [k, _] : was.items()) keys.insert(k);
    for (const auto& [k, _] : now.items()) keys.insert(k);
    for (const auto& k : keys) {
      const std::string name = prefix.empty() ? k : prefix + "." + k;
      const nlohmann::json a = was.contains(k) ? was.at(k) : nlohmann::json("(absent)");
      const nlohmann::json b = now.contains(k) ? now.at(k) : nlohmann::json("(absent)");
      fingerprint_differences(a, b, name, out);
    }
    return;
  }
  if (was == now) return;
  auto show = [](const nlohmann::json& j) {
    std::string s = j.dump();
    return s.size() > 80 ? s.substr(0, 77) + "..." : s;
  };
  out.push_back(fmt::format("{}: recorded {}, now {}", prefix, show(was), show(now)));
}

inline bool folder_is_empty(const std::filesystem::path& dir) {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec))
    if (e.path().filename() != std::string(lock_file_name)) return false;
  return true;
}

}  // namespace detail

// Claims `dir` for a run with `fingerprint` (an object). Creates the folder
// and records the fingerprint when the folder is new or empty; returns
// whether dir/done.json exists (the run finished) when the recorded
// fingerprint equals this one; fails, naming what differs, otherwise.
inline bool claim_output(const std::filesystem::path& dir, const nlohmann::json& fingerprint) {
  namespace fs = std::filesystem;
  detail::create_output_directory(dir);
  const fs::path file = dir / std::string(fingerprint_file_name);
  const std::string afresh = fmt::format(
      "to start afresh, rerun with --overwrite (deletes what {} holds) or choose another output folder", dir.string());
  if (!fs::exists(file)) {
    if (!detail::folder_is_empty(dir))
      fail("output folder {} already holds files but no {} (written by another program or an older doremi), so "
           "they cannot be checked against this run; {}",
           dir.string(), fingerprint_file_name, afresh);
    write_file_atomic(file, fingerprint.dump(2) + "\n");
    return false;
  }
  nlohmann::json recorded;
  try {
    recorded = read_json_file(file);
  } catch (const Error& e) {
    fail("{}; {}", e.what(), afresh);
  }
  std::vector<std::string> diffs;
  detail::fingerprint_differences(recorded, fingerprint, "", diffs);
  if (!diffs.empty())
    fail("output folder {} holds the output of a run with other settings or data ({}); {}", dir.string(),
         fmt::join(diffs, "; "), afresh);
  return fs::exists(dir / "done.json");
}

// What --overwrite does: removes everything in `dir` but the lock file. To
// guard against a mistyped path, only a folder that looks like a doremi
// output (a fingerprint, a manifest, metrics, checkpoints, done.json) or is
// empty is cleared; the caller holds `dir`'s OutputLock.
inline void clear_output_folder(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(dir, ec)) return;
  if (!fs::is_directory(dir, ec)) fail("output folder {} exists and is not a folder", dir.string());
  bool ours = detail::folder_is_empty(dir);
  for (const char* marker : {"fingerprint.json", "done.json", "manifest.json", "metrics.jsonl", "run_config.json",
                             "final", ".progress"})
    ours = ours || fs::exists(dir / marker, ec);
  for (const auto& e : fs::directory_iterator(dir, ec))
    ours = ours || e.path().filename().string().starts_with("checkpoint-");
  if (!ours)
    fail("--overwrite: {} does not look like a doremi output folder (no fingerprint.json, manifest.json, "
         "metrics.jsonl or checkpoints); delete it yourself if it is",
         dir.string());
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().filename() == std::string(lock_file_name)) continue;
    fs::remove_all(e.path(), ec);
    if (ec) fail("--overwrite: cannot remove {}: {}", e.path().string(), ec.message());
  }
}

}  // namespace doremi
