#!/usr/bin/env bash
# Runs one program of examples/ on tiny data, as a user would, and checks
# that what it prints makes sense (losses fall, weights sum to one, files
# are where it says). Exit status 77: skipped (train_cuda without a GPU).
# usage: run_example.sh NAME PATH/TO/PROGRAM SOURCE_DIR
set -euo pipefail
NAME=$1
PROG=$2
SRC=$3
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
fail() { echo "FAILED: $NAME: $1" >&2; exit 1; }
# The number after "KEY" on the line of $W/out that contains it.
value() { awk -v key="$1" 'index($0, key) { sub(/.*: */, ""); print $1; exit }' "$W/out"; }
# A condition on numbers, by awk: holds 'a < b' a=1 b=2
holds() {
  local cond=$1 args=()
  shift
  for a in "$@"; do args+=(-v "$a"); done
  awk "${args[@]}" "BEGIN { exit !($cond) }" </dev/null
}

run() {
  local status=0
  "$PROG" "$@" > "$W/out" 2> "$W/err" || status=$?
  cat "$W/out"
  ((status == 0)) || { cat "$W/err"; fail "exit status $status of $(basename "$PROG") $*"; }
}

case "$NAME" in
  train | train_cuda)
    text="$SRC/examples/data/licenses.txt"
    if [[ "$NAME" == train_cuda ]]; then
      if ! "$PROG" "$text" "$W/run" 60 > "$W/out" 2> "$W/err"; then
        cat "$W/out" "$W/err"
        grep -q "no usable GPU" "$W/err" && { echo "skipped: no usable GPU"; exit 77; }
        fail "exit status (see above)"
      fi
      cat "$W/out"
    else
      run "$text" "$W/run" 60
    fi
    before=$(value "held-out loss at initialisation")
    after=$(value "held-out loss after 60 steps")
    [[ -n "$before" && -n "$after" ]] || fail "no held-out losses printed"
    # ln 264 (the padded vocabulary) at initialisation; 60 steps take it well below.
    holds 'b > 5.3 && b < 5.8' b="$before" || fail "initial held-out loss $before is not about ln 264"
    holds 'a < b - 0.8' a="$after" b="$before" || fail "held-out loss did not fall: $before -> $after"
    [[ -f "$W/run/final/model.safetensors" && -f "$W/run/final/config.json" ]] || fail "no checkpoint in run/final"
    if [[ "$NAME" == train_cuda ]]; then
      cpu=$(value "held-out loss of the checkpoint on the CPU")
      holds 'c - a < 0.03 * a && a - c < 0.03 * a' a="$after" c="$cpu" ||
        fail "the checkpoint's loss on the CPU ($cpu) differs from the GPU's ($after)"
    else
      # Run again: it resumes at the last checkpoint, trains nothing, gives the same model.
      run "$text" "$W/run" 60
      [[ "$(value "held-out loss after 60 steps")" == "$after" ]] || fail "the resumed run changed the model"
    fi
    ;;
  dro)
    run 150 "$W/weights"
    sum=0
    for d in counting sentences random; do
      w=$(awk -v d="$d" '$1 == d && NF == 4 { print $4 }' "$W/out")
      [[ -n "$w" ]] || fail "no weight printed for domain $d"
      holds 'w > 0 && w < 1' w="$w" || fail "weight $w of $d is not in (0, 1)"
      sum=$(awk -v s="$sum" -v w="$w" 'BEGIN { printf "%.9f", s + w }')
      eval "w_$d=$w"
    done
    holds 's > 0.99999 && s < 1.00001' s="$sum" || fail "the weights sum to $sum"
    # DRO moves weight away from the domain nothing can be learned from.
    holds 'r < c && r < s && r < 1/3' r="$w_random" c="$w_counting" s="$w_sentences" ||
      fail "the random domain's weight $w_random is not the smallest"
    for f in avg_domain_weights.json domain_config.json; do
      grep -q '"sentences"' "$W/weights/$f" || fail "no $f with the domains written"
    done
    ;;
  compose)
    run --steps 30 "$W/out-dir" "$SRC"/examples/data/quickstart/*.jsonl
    domains=(code docs licenses literature math)
    for col in 2 3; do
      s=$(awk -v c="$col" '$1 ~ /^(code|docs|licenses|literature|math)$/ { s += $c } END { printf "%.9f", s }' "$W/out")
      holds 's > 0.9995 && s < 1.0005' s="$s" || fail "weights in column $col sum to $s"
    done
    [[ $(awk '$1 ~ /^(code|docs|licenses|literature|math)$/ && NF == 5' "$W/out" | wc -l) == "${#domains[@]}" ]] ||
      fail "not one row per domain"
    # Held-out log-perplexities: finite, below ln 264 (an untrained model) after 30 steps.
    awk '$1 ~ /^(code|docs|licenses|literature|math|average|worst)$/ {
           for (i = NF - 1; i <= NF; ++i) if (!($i > 0.5 && $i < 5.4)) exit 1 }' "$W/out" ||
      fail "a log-perplexity is outside (0.5, 5.4)"
    for f in run/summary.json run/doremi_weights.json run/report/report.html data/manifest.json; do
      [[ -s "$W/out-dir/$f" ]] || fail "no $f"
    done
    ;;
  *)
    fail "unknown example"
    ;;
esac
echo "ok: $NAME"
