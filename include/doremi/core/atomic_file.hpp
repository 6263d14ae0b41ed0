#pragma once
// Crash-safe outputs: a reader (or a resumed run) sees either the old file or
// the complete new one, never a half-written file.
//
//   doremi::write_file_atomic("weights.json", [&](std::ostream& os) { os << j.dump(); });
//
//   doremi::AtomicDirectory dir("runs/step-1000");      // stages ".step-1000.tmp-..."
//   write_file_atomic(dir.path() / "model.safetensors", bytes);
//   dir.commit();                                       // now "runs/step-1000" is complete
//
// POSIX only (open/fsync/rename). Files are written to a temporary sibling
// name in the same directory (rename is only atomic within one file system),
// fsynced, renamed over the target, and the directory is fsynced so the
// rename itself survives a power cut.
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include "doremi/core/error.hpp"

namespace doremi {

namespace detail {

// ".<name>.<tag>-<pid>-<counter>" beside `path`: hidden, unique within and
// across processes, and on the same file system as the target.
inline std::filesystem::path sibling_temp_name(const std::filesystem::path& path, std::string_view tag) {
  static std::atomic<unsigned long> counter{0};
  const std::string name = fmt::format(".{}.{}-{}-{}", path.filename().string(), tag,
                                       static_cast<long>(::getpid()), counter++);
  return path.parent_path() / name;
}

// fsync a file or directory by path. fsync through a read-only descriptor is
// enough on Linux: it flushes the inode, whichever descriptor names it.
inline void fsync_path(const std::filesystem::path& path, bool directory) {
  const int flags = O_RDONLY | O_CLOEXEC | (directory ? O_DIRECTORY : 0);
  const int fd = ::open(path.c_str(), flags);
  if (fd < 0) fail("cannot open {} to fsync it: {}", path.string(), std::strerror(errno));
  int rc;
  do rc = ::fsync(fd); while (rc != 0 && errno == EINTR);
  const int err = errno;
  ::close(fd);
  // Some file systems cannot fsync a directory (EINVAL); nothing more can be done there.
  if (rc != 0 && !(directory && err == EINVAL)) fail("cannot fsync {}: {}", path.string(), std::strerror(err));
}

inline std::filesystem::path parent_or_dot(const std::filesystem::path& path) {
  auto parent = path.parent_path();
  return parent.empty() ? std::filesystem::path(".") : parent;
}

}  // namespace detail

// Writes `path` atomically: `write` fills a temporary sibling file, which is
// flushed, fsynced and renamed over `path`; then the directory is fsynced.
// If `write` throws or the stream fails, the temporary is removed, the old
// file (if any) is untouched, and a doremi::Error naming `path` is thrown.
// The new file gets default permissions (umask), not the old file's.
inline void write_file_atomic(const std::filesystem::path& path,
                              const std::function<void(std::ostream&)>& write) {
  namespace fs = std::filesystem;
  const fs::path temp = detail::sibling_temp_name(path, "tmp");
  auto discard = [&] {
    std::error_code ec;
    fs::remove(temp, ec);
  };
  try {
    {
      std::ofstream out(temp, std::ios::binary | std::ios::trunc);
      if (!out) fail("cannot create temporary file {}: {}", temp.string(), std::strerror(errno));
      write(out);
      out.flush();
      if (!out) fail("write error (disk full?)");
      out.close();
      if (out.fail()) fail("write error while closing the file (disk full?)");
    }
    detail::fsync_path(temp, false);
    std::error_code ec;
    fs::rename(temp, path, ec);
    if (ec) fail("cannot rename {} into place: {}", temp.string(), ec.message());
  } catch (const std::exception& e) {
    discard();
    fail("cannot write {}: {}", path.string(), e.what());
  } catch (...) {
    discard();
    throw;
  }
  // The rename happened: a failure here means only that durability is not certain.
  try {
    detail::fsync_path(detail::parent_or_dot(path), true);
  } catch (const Error& e) {
    fail("wrote {}, but the directory could not be synced (the new file may not survive a crash): {}",
         path.string(), e.what());
  }
}

inline void write_file_atomic(const std::filesystem::path& path, std::span<const std::byte> bytes) {
  write_file_atomic(path, [&](std::ostream& os) {
    os.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  });
}

inline void write_file_atomic(const std::filesystem::path& path, std::string_view text) {
  write_file_atomic(path, std::as_bytes(std::span(text.data(), text.size())));
}

// A staging directory for a multi-file output (a checkpoint folder) that
// appears under its final name only when complete.
//
// Guarantee: after commit() returns, `final_path()` holds exactly the staged
// files, durably. At every moment before, during and after commit, the final
// name holds either the old complete folder or the new complete one, except
// for the instant between commit's two renames, when the old folder sits at
// ".<name>.old-<pid>-<n>" beside it; recover() puts it back after a crash
// there. An uncommitted staging directory is removed by the destructor; one
// left by a killed process stays as ".<name>.tmp-<pid>-<n>" and can be deleted.
class AtomicDirectory {
 public:
  explicit AtomicDirectory(std::filesystem::path final_path) : final_(std::move(final_path)) {
    namespace fs = std::filesystem;
    if (final_.filename().empty()) final_ = final_.parent_path();  // "out/ckpt/" -> "out/ckpt"
    if (final_.filename().empty()) fail("AtomicDirectory: {} does not name a directory", final_.string());
    staging_ = detail::sibling_temp_name(final_, "tmp");
    std::error_code ec;
    if (!fs::create_directory(staging_, ec) || ec)
      fail("cannot create staging directory {} for {}: {}", staging_.string(), final_.string(),
           ec ? ec.message() : "it already exists");
  }

  AtomicDirectory(AtomicDirectory&& other) noexcept
      : final_(std::move(other.final_)), staging_(std::exchange(other.staging_, {})),
        committed_(other.committed_) {}
  AtomicDirectory& operator=(AtomicDirectory&&) = delete;
  AtomicDirectory(const AtomicDirectory&) = delete;
  AtomicDirectory& operator=(const AtomicDirectory&) = delete;

  ~AtomicDirectory() {
    if (!committed_ && !staging_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(staging_, ec);
    }
  }

  // Where to write the files; valid until commit().
  const std::filesystem::path& path() const { return staging_; }
  const std::filesystem::path& final_path() const { return final_; }
  bool committed() const { return committed_; }

  // Syncs every staged file and directory, then moves the staging directory
  // to the final name (replacing an existing folder there; see the class note).
  void commit() {
    namespace fs = std::filesystem;
    if (committed_) fail("AtomicDirectory for {}: commit() called twice", final_.string());
    if (staging_.empty()) fail("AtomicDirectory for {}: commit() on a moved-from object", final_.string());
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(staging_, ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec)) {
      if (it->is_symlink()) continue;
      if (it->is_regular_file()) detail::fsync_path(it->path(), false);
      else if (it->is_directory()) detail::fsync_path(it->path(), true);
    }
    if (ec) fail("cannot list staging directory {} for {}: {}", staging_.string(), final_.string(), ec.message());
    detail::fsync_path(staging_, true);

    fs::path old;
    if (fs::exists(fs::symlink_status(final_))) {
      old = detail::sibling_temp_name(final_, "old");
      fs::rename(final_, old, ec);
      if (ec) fail("cannot move the existing {} aside to {}: {}", final_.string(), old.string(), ec.message());
    }
    fs::rename(staging_, final_, ec);
    if (ec) {
      std::error_code back;
      if (!old.empty()) fs::rename(old, final_, back);
      fail("cannot rename {} to {}: {}{}", staging_.string(), final_.string(), ec.message(),
           back ? fmt::format(" (and the old folder is left at {})", old.string()) : "");
    }
    committed_ = true;
    detail::fsync_path(detail::parent_or_dot(final_), true);
    if (!old.empty()) fs::remove_all(old, ec);  // best effort: a leftover is harmless
  }

  // After a crash inside commit(): if the final folder is missing but an old
  // one was moved aside, moves the newest such folder back. Returns whether it did.
  static bool recover(const std::filesystem::path& final_path) {
    namespace fs = std::filesystem;
    fs::path target = final_path.filename().empty() ? final_path.parent_path() : final_path;
    if (fs::exists(fs::symlink_status(target))) return false;
    const std::string prefix = "." + target.filename().string() + ".old-";
    fs::path best;
    fs::file_time_type best_time{};
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(detail::parent_or_dot(target), ec)) {
      const std::string name = entry.path().filename().string();
      if (name.rfind(prefix, 0) != 0 || !entry.is_directory()) continue;
      const auto time = fs::last_write_time(entry.path(), ec);
      if (!ec && (best.empty() || time > best_time)) {
        best = entry.path();
        best_time = time;
      }
    }
    if (best.empty()) return false;
    fs::rename(best, target, ec);
    if (ec) fail("cannot restore {} from {}: {}", target.string(), best.string(), ec.message());
    return true;
  }

 private:
  std::filesystem::path final_;
  std::filesystem::path staging_;
  bool committed_ = false;
};

// Removes the staging files and folders (".<name>.tmp-<pid>-<n>") under
// `root`, at any depth, of process `pid` (0: of every process). For a
// process stopping on a signal, and for the holder of a folder's lock after
// a killed run. ".old-" folders (see AtomicDirectory::recover) are kept.
// Returns how many it found; best effort: entries that vanish or cannot be
// read are skipped, and a folder another thread is still writing into may
// survive one call (call again until it returns 0).
inline std::size_t remove_staging_leftovers(const std::filesystem::path& root, long pid = 0) {
  namespace fs = std::filesystem;
  const std::string mark = pid > 0 ? fmt::format(".tmp-{}-", pid) : std::string(".tmp-");
  std::vector<fs::path> found, pending{root};
  while (!pending.empty()) {
    const fs::path dir = pending.back();
    pending.pop_back();
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      std::error_code e;
      if (name.starts_with(".") && name.find(mark) != std::string::npos) found.push_back(it->path());
      else if (it->is_directory(e) && !it->is_symlink(e)) pending.push_back(it->path());
    }
  }
  for (const auto& p : found) {
    std::error_code e;
    fs::remove_all(p, e);
  }
  return found.size();
}

}  // namespace doremi
