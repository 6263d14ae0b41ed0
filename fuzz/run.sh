#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/CMakeLists.txt, clang) and runs each one
# for a bounded time on a copy of its seed corpus (fuzz/seeds/<target>).
# Any crash, sanitizer report, exception other than doremi::Error, hang or
# huge allocation fails the run; libFuzzer saves the input as crash-*/oom-*/
# timeout-* in the work folder and prints it.
#
# Usage: fuzz/run.sh [WORK_DIR] [SECONDS_PER_TARGET] [TARGET...]
#   ctest runs it as the test `fuzz_parsers` (5 s per target, all targets).
#   fuzz/run.sh build-fuzz 600 mmidx      # a longer session on one parser
set -euo pipefail
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="${1:-$SRC/../build-fuzz}"
SECONDS_EACH="${2:-5}"
shift $(( $# > 2 ? 2 : $# ))
TARGETS=("$@")
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
if ((${#TARGETS[@]} == 0)); then
  TARGETS=(safetensors hf_config run_config domain_config manifest mmidx arrow tokenizer_json vocab_merges jsonl
           trainer_state)
fi
CXX_FUZZ="${DOREMI_FUZZ_CXX:-clang++}"
command -v "$CXX_FUZZ" >/dev/null || { echo "fuzz: $CXX_FUZZ not found (scripts/install_deps.sh installs clang)"; exit 1; }

cmake -S "$SRC" -B "$WORK" -DCMAKE_CXX_COMPILER="$CXX_FUZZ" -DCMAKE_BUILD_TYPE=Release >"$WORK/configure.log" 2>&1 ||
  { cat "$WORK/configure.log"; exit 1; }
cmake --build "$WORK" -j"${DOREMI_FUZZ_JOBS:-2}"

total=0
for t in "${TARGETS[@]}"; do
  corpus="$WORK/corpus/$t"
  mkdir -p "$corpus" "$WORK/artifacts/$t"
  log="$WORK/artifacts/$t/log.txt"
  dict=()
  case "$t" in safetensors|mmidx|arrow|jsonl) ;; *) dict=(-dict="$SRC/json.dict") ;; esac
  # New inputs go to the first folder (scratch); the seeds are only read.
  if ! (cd "$WORK/artifacts/$t" && DOREMI_FUZZ_TARGET="$t" "$WORK/doremi_fuzz" -max_total_time="$SECONDS_EACH" \
        -timeout=20 -rss_limit_mb=3072 -malloc_limit_mb=2048 -max_len=65536 -print_final_stats=1 "${dict[@]}" \
        "$corpus" "$SRC/seeds/$t") >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz: target $t FAILED (input saved under $WORK/artifacts/$t)"
    exit 1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  total=$((total + ${execs:-0}))
  printf 'fuzz: %-15s %8s executions, %s corpus files, no failure\n' "$t" "${execs:-?}" "$(ls "$corpus" | wc -l)"
done
echo "fuzz: ${#TARGETS[@]} targets, $total executions in all, no failure"
