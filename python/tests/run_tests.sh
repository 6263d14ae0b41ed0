#!/usr/bin/env bash
# ctest's python_package test: pip-installs the package (python/) into a scratch
# folder, as a user's `pip install ./python` builds it, and runs its pytest suite
# against the C++ reference in the doremi_tests binary.
#
# usage: run_tests.sh DOREMI_TESTS_BIN WORK_DIR NATIVE(ON|OFF) [CCACHE]
# NATIVE: -march=native or not, as doremi_tests was built (the bit-for-bit
# comparisons need the same floating-point contraction on both sides).
# The interpreter is $DOREMI_PYTHON (default /usr/bin/python3, which
# scripts/install_python_deps.sh equips). Without what the build or the tests
# need the test is skipped (exit 77), unless DOREMI_REQUIRE_PYTHON=1, where it fails.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${DOREMI_PYTHON:-/usr/bin/python3}"
BIN="$1"
WORK="$2"
NATIVE="$3"
CCACHE="${4:-}"

problem=""
if ! "$PY" -c "import numpy, pytest, scikit_build_core, torch, datasets" 2>/dev/null; then
  problem="$PY cannot import numpy, pytest, scikit_build_core, torch and datasets"
elif ! "$PY" -c "import pybind11" 2>/dev/null && ! ls /usr/lib/cmake/pybind11/pybind11Config.cmake >/dev/null 2>&1 \
     && ! ls /usr/share/cmake/pybind11/pybind11Config.cmake >/dev/null 2>&1; then
  problem="no pybind11 (Debian pybind11-dev or PyPI pybind11)"
fi
if [[ -n "$problem" ]]; then
  if [[ "${DOREMI_REQUIRE_PYTHON:-}" == 1 ]]; then
    echo "python_package: $problem but DOREMI_REQUIRE_PYTHON=1 (run scripts/install_python_deps.sh)" >&2
    exit 1
  fi
  echo "python_package: skipped: $problem (run scripts/install_python_deps.sh)"
  exit 77
fi

mkdir -p "$WORK"
rm -rf "$WORK/site"
args=(--quiet --no-build-isolation --no-deps --disable-pip-version-check --root-user-action=ignore
      --target "$WORK/site" "--config-settings=build-dir=$WORK/build"
      "--config-settings=cmake.define.DOREMI_PYTHON_NATIVE=$NATIVE")
[[ -n "$CCACHE" ]] && args+=("--config-settings=cmake.define.CMAKE_CXX_COMPILER_LAUNCHER=$CCACHE")
echo "python_package: pip install ./python (into $WORK/site)"
start=$SECONDS
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" "$PY" -m pip install "${args[@]}" "$REPO/python"
echo "python_package: built in $((SECONDS - start)) s"
cd "$WORK"
DOREMI_TESTS_BIN="$BIN" PYTHONPATH="$WORK/site" exec "$PY" -m pytest -q -p no:cacheprovider --durations=5 "$REPO/python/tests"
