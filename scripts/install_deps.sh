#!/usr/bin/env bash
# Installs the Debian packages the build needs, only those missing (apt-get
# update runs only when something is). With --python it also prepares the
# Python references the tests compare against (scripts/install_python_deps.sh).
#
# Usage: scripts/install_deps.sh [--python]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKGS=(build-essential cmake ccache libeigen3-dev libfmt-dev doctest-dev nlohmann-json3-dev libzstd-dev
      libutf8proc-dev libcli11-dev libopenblas-openmp-dev libdnnl-dev
      libopenmpi-dev openmpi-bin  # data-parallel runs (doremi::mpi, mpirun)
      ocl-icd-opencl-dev   # oneDNN's CMake package requires OpenCL (its GPU runtime), a recommend only
      clang libclang-rt-14-dev libomp-dev)  # the libFuzzer targets (fuzz/): clang, its fuzzer/sanitizer runtimes, OpenMP
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install_deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [[ "${1:-}" == "--python" ]]; then
  "$REPO/scripts/install_python_deps.sh"
fi
