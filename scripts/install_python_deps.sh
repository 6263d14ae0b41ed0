#!/usr/bin/env bash
# Installs the Python side used by the tests and benchmarks, for Debian's
# /usr/bin/python3 (not the pyenv python3 that may be first on PATH):
#
#   * PyTorch 1.13.1 from Debian (python3-torch, CPU only, no CUDA wheels),
#   * HuggingFace transformers 4.47.1 (the last release that supports
#     torch 1.x) and its pure-Python / abi3 dependencies from PyPI, pinned,
#   * HuggingFace datasets 3.2.0 with pyarrow 18.1.0 (and pandas, aiohttp and
#     their small dependencies), pinned, for the Arrow token-source tests
#     (tests/python/make_hf_datasets_fixture.py); these wheels work with
#     Debian's numpy 1.24,
#   * the build tools of the Python package (python/): Debian's pybind11-dev
#     and python3-pytest, scikit-build-core 0.10.7 (and pathspec) from PyPI,
#     and accelerate 0.34.2 (transformers.Trainer needs it; python3-psutil),
#   * OpenBLAS (OpenMP build) unpacked into a private folder, NOT installed
#     system-wide: Debian's torch links libblas.so.3, which is the slow
#     reference BLAS by default (~3.5 GFLOP/s on a 512^3 matmul); putting the
#     folder first on LD_LIBRARY_PATH makes torch use OpenBLAS instead.
#
# Usage: scripts/install_python_deps.sh [--openblas-dir DIR] [--no-openblas] [--check] [--bench-blas]
#   --openblas-dir DIR  where to unpack OpenBLAS (default: <repo>/build/openblas-openmp)
#   --no-openblas       skip OpenBLAS (correctness tests do not need it)
#   --check             install nothing; exit 1 if anything is missing
#   --bench-blas        afterwards, time torch's 512^3 fp32 matmul (2 threads) with the
#                       default BLAS and with OpenBLAS, print GFLOP/s (takes ~10 s)
#
# Idempotent and quiet: when everything is present it only runs one import
# check (about 2 s). It runs apt-get update only when a Debian package is
# missing. Needs root for apt-get and for pip's system-wide install.
# Last line printed on success:  LD_LIBRARY_PATH=<openblas dir>  (for the benchmark)
set -euo pipefail

PY=/usr/bin/python3
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OPENBLAS_DIR="$REPO/build/openblas-openmp"
WANT_OPENBLAS=1
CHECK_ONLY=0
BENCH_BLAS=0

while [[ $# -gt 0 ]]; do
  case "$1" in
    --openblas-dir) OPENBLAS_DIR="$2"; shift 2 ;;
    --openblas-dir=*) OPENBLAS_DIR="${1#*=}"; shift ;;
    --no-openblas) WANT_OPENBLAS=0; shift ;;
    --check) CHECK_ONLY=1; shift ;;
    --bench-blas) BENCH_BLAS=1; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "install_python_deps.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

TRANSFORMERS_VERSION=4.47.1
DATASETS_VERSION=3.2.0
# Exact pins, installed with --no-deps so pip never touches Debian's numpy,
# requests, yaml or typing-extensions (all of which satisfy these releases).
# Versions are contemporary with transformers 4.47.1; all have cp311 or abi3
# manylinux wheels (--only-binary: nothing is compiled).
PIP_PKGS=(
  "transformers==$TRANSFORMERS_VERSION"
  "tokenizers==0.21.0"
  "safetensors==0.4.5"
  "huggingface-hub==0.27.0"
  "regex==2024.11.6"
  "tqdm==4.67.1"
  "filelock==3.16.1"
  "fsspec==2024.12.0"
  "packaging==24.2"
  # datasets (Dataset.save_to_disk) for the ArrowSource tests. datasets 3.2.0
  # declares requests>=2.32.2 and fsspec<=2024.9.0; Debian's requests 2.28 and
  # the fsspec above work for save_to_disk/load_from_disk (checked by the tests).
  "datasets==$DATASETS_VERSION"
  "pyarrow==18.1.0"
  "pandas==2.2.3"
  "pytz==2024.2"
  "tzdata==2024.2"
  "dill==0.3.8"
  "multiprocess==0.70.16"
  "xxhash==3.5.0"
  "aiohttp==3.11.11"
  "aiohappyeyeballs==2.4.4"
  "aiosignal==1.3.2"
  "frozenlist==1.5.0"
  "multidict==6.1.0"
  "propcache==0.2.1"
  "yarl==1.18.3"
  # the Python package's build backend (python/pyproject.toml; pip install
  # --no-build-isolation uses these and Debian's pybind11-dev)
  "scikit-build-core==0.10.7"
  "pathspec==0.12.1"
  # transformers.Trainer needs accelerate (examples/python/hf_doremi.py and its
  # test); 0.34.2 still supports torch 1.x
  "accelerate==0.34.2"
)
# Debian packages: torch (pulls numpy, requests, typing-extensions, sympy),
# pip for the PyPI part, yaml for transformers.
# pybind11-dev and python3-pytest for the Python package (python/) and its tests.
APT_PKGS=(python3-torch python3-pip python3-yaml pybind11-dev python3-pytest python3-psutil)

log() { echo "install_python_deps: $*" >&2; }

python_ok() {
  [[ -x "$PY" ]] || return 1
  "$PY" - "$TRANSFORMERS_VERSION" "$DATASETS_VERSION" <<'EOF' >/dev/null 2>&1 || return 1
import sys
import torch, numpy, yaml, safetensors.torch, tokenizers, huggingface_hub
import transformers
from transformers import GPTNeoXForCausalLM, GPTNeoXConfig
assert transformers.__version__ == sys.argv[1], transformers.__version__
import datasets, pyarrow, pyarrow.ipc
assert datasets.__version__ == sys.argv[2], datasets.__version__
import scikit_build_core, pathspec, pytest, accelerate
EOF
  [[ -f /usr/lib/cmake/pybind11/pybind11Config.cmake ]]
}

openblas_ok() {
  [[ -f "$OPENBLAS_DIR/libblas.so.3" && -f "$OPENBLAS_DIR/libopenblas.so.0" ]]
}

apt_missing() {
  local p missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
  done
  echo "${missing[@]:-}"
}

apt_updated=0
apt_update_once() {
  if [[ $apt_updated == 0 ]]; then
    log "apt-get update"
    apt-get update -qq >/dev/null
    apt_updated=1
  fi
}

export DEBIAN_FRONTEND=noninteractive

# --- Python packages --------------------------------------------------------
if python_ok; then
  :
elif [[ $CHECK_ONLY == 1 ]]; then
  log "missing: torch/transformers $TRANSFORMERS_VERSION or datasets $DATASETS_VERSION for $PY"; exit 1
else
  missing="$(apt_missing "${APT_PKGS[@]}")"
  if [[ -n "${missing// /}" ]]; then
    apt_update_once
    log "apt-get install $missing"
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
  log "pip install ${PIP_PKGS[*]}"
  "$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    --break-system-packages --no-deps --only-binary=:all: --no-warn-script-location \
    "${PIP_PKGS[@]}"
  if ! python_ok; then
    log "import check failed after install:"
    "$PY" -c "import torch, transformers; from transformers import GPTNeoXForCausalLM; print(transformers.__version__)" >&2 || true
    "$PY" -c "import datasets, pyarrow; print(datasets.__version__, pyarrow.__version__)" >&2 || true
    exit 1
  fi
fi

# --- OpenBLAS for the benchmark peer ----------------------------------------
if [[ $WANT_OPENBLAS == 1 ]]; then
  if openblas_ok; then
    :
  elif [[ $CHECK_ONLY == 1 ]]; then
    log "missing: OpenBLAS in $OPENBLAS_DIR"; exit 1
  else
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    chmod 755 "$tmp"  # apt's _apt user may then write there (else a harmless warning)
    fetch() { (cd "$tmp" && apt-get download -qq libopenblas0-openmp >/dev/null 2>&1); }
    if ! fetch; then apt_update_once; fetch || { log "apt-get download libopenblas0-openmp failed"; exit 1; }; fi
    dpkg-deb -x "$tmp"/libopenblas0-openmp_*.deb "$tmp/root"
    src="$(dirname "$(find "$tmp/root" -name libblas.so.3 -path '*openblas-openmp*' | head -n1)")"
    mkdir -p "$OPENBLAS_DIR"
    cp -a "$src"/. "$OPENBLAS_DIR"/
    openblas_ok || { log "OpenBLAS unpack failed"; exit 1; }
  fi
  if [[ $BENCH_BLAS == 1 ]]; then
    bench='
import os, time, torch
torch.set_num_threads(2)
n = 512
a, b = torch.randn(n, n), torch.randn(n, n)
for _ in range(3): a @ b
reps, t = 0, time.perf_counter()
while time.perf_counter() - t < 2.0 or reps < 5:
    a @ b; reps += 1
dt = (time.perf_counter() - t) / reps
lib = sorted({l.split()[-1] for l in open("/proc/self/maps") if "blas" in l})
print("%.1f GFLOP/s  %s" % (2 * n**3 / dt / 1e9, os.path.basename(lib[-1]) if lib else "?"))'
    echo "torch 512^3 matmul, 2 threads, default BLAS:  $("$PY" -c "$bench")" >&2
    echo "torch 512^3 matmul, 2 threads, with OpenBLAS: $(LD_LIBRARY_PATH="$OPENBLAS_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$PY" -c "$bench")" >&2
  fi
  echo "LD_LIBRARY_PATH=$OPENBLAS_DIR"
fi
