#pragma once
// Runs the repo's Python reference scripts from C++ tests. The interpreter is
// $DOREMI_PYTHON (default /usr/bin/python3, which has Debian's torch). When
// torch or transformers cannot be imported the test is skipped with a message,
// unless DOREMI_REQUIRE_PYTHON=1 (set by the README's test command and CI),
// where a missing reference is a failure: CI never passes by skipping.
#include <cstdio>
#include <cstdlib>
#include <string>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "test_util.hpp"

namespace doremi::test {

inline std::string python() {
  const char* p = std::getenv("DOREMI_PYTHON");
  return p && *p ? p : "/usr/bin/python3";
}

inline bool python_required() {
  const char* r = std::getenv("DOREMI_REQUIRE_PYTHON");
  return r && std::string(r) == "1";
}

// True when `python -c "import <modules>"` works; otherwise reports a skip
// (or a failure when the reference is required).
inline bool python_has(const std::string& modules) {
  const std::string cmd = fmt::format("{} -c 'import {}' >/dev/null 2>&1", python(), modules);
  if (std::system(cmd.c_str()) == 0) return true;
  if (python_required())
    FAIL_CHECK(fmt::format("{} cannot import {} but DOREMI_REQUIRE_PYTHON=1", python(), modules));
  else
    MESSAGE(fmt::format("skipped: {} cannot import {} (run scripts/install_python_deps.sh)", python(), modules));
  return false;
}

// Runs a script under tests/python/ with arguments; returns its exit status.
inline int run_python_script(const std::string& script, const std::string& args) {
  const std::string cmd =
      fmt::format("{} {} {} 2>&1", python(), (source_dir() / "tests/python" / script).string(), args);
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

// Runs a script under tests/python/ and captures its stdout (stderr passes
// through to the test log); returns the exit status.
inline int run_python_script_capture(const std::string& script, const std::string& args, std::string& out) {
  const std::string cmd = fmt::format("{} {} {}", python(), (source_dir() / "tests/python" / script).string(), args);
  out.clear();
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return 127;
  char buf[1 << 16];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int rc = pclose(p);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

}  // namespace doremi::test
