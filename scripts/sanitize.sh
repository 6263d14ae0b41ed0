#!/usr/bin/env bash
# The CPU test suite under AddressSanitizer + UndefinedBehaviorSanitizer (+ LeakSanitizer),
# CUDA off. Not in CI: the build alone takes about 25 minutes on 2 cores.
#
# Usage: scripts/sanitize.sh [build-dir] [doctest arguments...]
#   JOBS=2 scripts/sanitize.sh build-asan -tc="*safetensors*"
# Any sanitizer report fails the run (UBSan does not recover; ASan halts).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:-$REPO/build-asan}"
shift || true
FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cmake -S "$REPO" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DDOREMI_CUDA=OFF \
  -DDOREMI_BUILD_EXAMPLES=OFF -DDOREMI_BUILD_BENCHMARKS=OFF \
  -DCMAKE_CXX_FLAGS="$FLAGS" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined"
cmake --build "$BUILD" -j"${JOBS:-1}" --target doremi_tests
SUPP="$BUILD/lsan.supp"
printf 'leak:libdnnl\n' > "$SUPP"   # oneDNN keeps its JIT kernels until exit
# allocator_may_return_null: a test asks for an impossible allocation and expects
# the out-of-memory error.
export ASAN_OPTIONS="allocator_may_return_null=1:detect_leaks=1:abort_on_error=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export LSAN_OPTIONS="suppressions=$SUPP${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
cd "$BUILD/tests"
./doremi_tests "$@"
