#!/usr/bin/env bash
# Data-parallel training and evaluation under mpirun, against one process
# (doremi_dist_check; ctest's dist_mpi). The tiny preset in double, so the
# comparisons see the algorithm rather than float noise:
#   * Trainer and DROTrainer (3 micro-batches of 4 sequences per step, 6 steps)
#     on 2 and 3 ranks against 1 rank of the same global batch: per-step loss,
#     gradient norm, α, ᾱ, per-domain scores and losses to 1e-6 relative (they
#     agree to ~1e-14), parameters to 1e-10 relative L2 (reduction order only:
#     each rank sums its rows, then MPI sums the ranks); the DRO one-batch path
#     (1 micro-batch of 6 split over 3 ranks) and 2 sequences on 3 ranks (one
#     rank without any) likewise; in float the same run
#     agrees to 1e-4 (scores are small differences of float losses) and 1e-5;
#   * a 2-rank run repeats itself bit for bit; every rank ends with the same
#     parameters bit for bit (checked inside each run);
#   * a DRO run checkpointed by 2 ranks at step 3 resumes on 3 ranks and ends
#     where 1 rank's uninterrupted run does;
#   * only rank 0 writes: metrics.jsonl holds each step once, one checkpoint;
#   * a rank that raises an error, or is killed, ends the whole job with a
#     non-zero status within 60 s (an error's text on the output);
#   * ranks started with different settings stop at start-up with an error
#     naming the rank and the setting;
#   * evaluation split over 2 ranks gives one process's report.
#   * with the command-line program (optional 4th argument): `mpirun -np 2
#     doremi train|dro|eval|pipeline` run, print once, write each metric line
#     once, and agree with one process (float: 1e-5).
# Usage: dist_test.sh DOREMI_DIST_CHECK MPIRUN WORKDIR [DOREMI_CLI]
set -euo pipefail
BIN="$1"; MPIRUN="$2"; W="$3"; CLI="${4:-}"
rm -rf "$W"; mkdir -p "$W"
export OMP_NUM_THREADS=1
mpi() { local n="$1"; shift; timeout 120 "$MPIRUN" --oversubscribe --allow-run-as-root -x OMP_NUM_THREADS -np "$n" "$BIN" "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

"$BIN" prepare "$W"
for mode in train dro; do
  "$BIN" "$mode" "$W" "$W/${mode}1"
  for n in 2 3; do
    mpi "$n" "$mode" "$W" "$W/$mode$n"
    "$BIN" compare "$W/$mode$n" "$W/${mode}1" --rel 1e-6 --param-rel 1e-10
  done
  mpi 2 "$mode" "$W" "$W/${mode}2-again"
  "$BIN" compare "$W/${mode}2-again" "$W/${mode}2" --exact
  lines=$(wc -l < "$W/${mode}2/run/metrics.jsonl")
  [[ "$lines" == 6 ]] || fail "$mode on 2 ranks: metrics.jsonl has $lines lines for 6 steps"
  [[ "$(ls "$W/${mode}2/run")" == $'checkpoint-00000006\nmetrics.jsonl' ]] || fail "$mode on 2 ranks wrote: $(ls "$W/${mode}2/run")"
done

# DRO with one micro-batch per step (the one-batch path), split over 3 ranks.
"$BIN" dro "$W" "$W/one1" --accum 1 --batch 6
mpi 3 dro "$W" "$W/one3" --accum 1 --batch 6
"$BIN" compare "$W/one3" "$W/one1" --rel 1e-6 --param-rel 1e-10
# More ranks than sequences: 2 sequences per step on 3 ranks (one rank idle).
"$BIN" dro "$W" "$W/few1" --accum 2 --batch 1
mpi 3 dro "$W" "$W/few3" --accum 2 --batch 1
"$BIN" compare "$W/few3" "$W/few1" --rel 1e-6 --param-rel 1e-10
# The same in float.
"$BIN" dro "$W" "$W/f1" --fp32
mpi 3 dro "$W" "$W/f3" --fp32
"$BIN" compare "$W/f3" "$W/f1" --rel 1e-4 --param-rel 1e-5

# Checkpoint on 2 ranks, resume on 3.
mpi 2 dro "$W" "$W/resume" --stop-after 3
[[ -d "$W/resume/run/checkpoint-00000003" ]] || fail "no checkpoint after 3 steps on 2 ranks"
mpi 3 dro "$W" "$W/resume"
grep -q '"resumed": true' "$W/resume/result.json" || fail "the 3-rank run did not resume"
"$BIN" compare "$W/resume" "$W/dro1" --rel 1e-6 --param-rel 1e-10

# Evaluation over 2 ranks.
"$BIN" eval "$W" "$W/eval1"
mpi 2 eval "$W" "$W/eval2"
"$BIN" compare "$W/eval2" "$W/eval1" --rel 1e-12

# Failures end the job within bounded time.
expect_failure() {  # name, text expected on the output, mpirun arguments...
  local name="$1" text="$2"; shift 2
  local t0=$SECONDS rc=0
  mpi "$@" > "$W/$name.log" 2>&1 || rc=$?
  local took=$((SECONDS - t0))
  [[ $rc != 0 ]] || fail "$name: the job succeeded"
  [[ $rc != 124 ]] || fail "$name: the job hung (killed by timeout after ${took}s)"
  ((took <= 60)) || fail "$name: the job took ${took}s to end"
  grep -q -- "$text" "$W/$name.log" || { cat "$W/$name.log" >&2; fail "$name: '$text' not on the output"; }
  echo "$name: ended with status $rc after ${took}s"
}
expect_failure error "rank 1 fails on purpose after step 2" 2 dro "$W" "$W/error" --die 1:2:throw
expect_failure killed "exited on signal 9" 3 dro "$W" "$W/killed" --die 2:2:kill
expect_failure mismatch "rank 1 was started with other settings or inputs than rank 0: train config differs" \
  2 train "$W" "$W/mismatch" --lr-on 1:1e-3

if [[ -n "$CLI" ]]; then
  climpi() { local n="$1"; shift; timeout 120 "$MPIRUN" --oversubscribe --allow-run-as-root -x OMP_NUM_THREADS -np "$n" "$CLI" "$@"; }
  common=(--data "$W/data" --seq-len 32 --steps 4 --batch 4 --grad-accum 2)
  "$CLI" train "${common[@]}" --output "$W/cli-ref1" > /dev/null 2>&1
  climpi 2 train "${common[@]}" --output "$W/cli-ref2" > "$W/cli-train.out" 2> /dev/null
  [[ $(grep -c "model written to" "$W/cli-train.out") == 1 ]] || fail "cli train on 2 ranks: stdout not printed exactly once"
  [[ $(wc -l < "$W/cli-ref2/metrics.jsonl") == 4 ]] || fail "cli train on 2 ranks: metrics.jsonl"
  [[ -f "$W/cli-ref2/final/model.safetensors" ]] || fail "cli train on 2 ranks wrote no final model"
  "$CLI" dro "${common[@]}" --reference "$W/cli-ref1" --output "$W/cli-dro1" > /dev/null 2>&1
  climpi 3 dro "${common[@]}" --reference "$W/cli-ref1" --output "$W/cli-dro3" > /dev/null 2>&1
  "$BIN" compare-json "$W/cli-dro3/avg_domain_weights.json" "$W/cli-dro1/avg_domain_weights.json" --rel 1e-5
  "$CLI" eval --model "$W/cli-ref1" --data "$W/data" > "$W/cli-eval1.json" 2> /dev/null
  climpi 2 eval --model "$W/cli-ref1" --data "$W/data" > "$W/cli-eval2.json" 2> /dev/null
  "$BIN" compare-json "$W/cli-eval2.json" "$W/cli-eval1.json" --rel 1e-6
  for n in 1 2; do
    printf '{"data": "%s", "output": "%s", "seq_len": 32, "rounds": 1, "reference": {"steps": 3, "batch_size": 4},
      "proxy": {"steps": 3, "batch_size": 4}, "main": {"steps": 3, "batch_size": 4}}' "$W/data" "$W/cli-pl$n" > "$W/pl$n.json"
  done
  "$CLI" pipeline --config "$W/pl1.json" > /dev/null 2>&1
  climpi 2 pipeline --config "$W/pl2.json" > /dev/null 2>&1
  "$BIN" compare-json "$W/cli-pl2/doremi_weights.json" "$W/cli-pl1/doremi_weights.json" --rel 1e-5
  rc=0
  climpi 2 baseline-weights --data "$W/data" --output "$W/bw.json" > "$W/cli-refuse.log" 2>&1 || rc=$?
  [[ $rc != 0 && ! -e "$W/bw.json" ]] || fail "cli baseline-weights under mpirun should refuse to run"
  grep -q "only train, dro, eval and pipeline run data-parallel" "$W/cli-refuse.log" || fail "cli refusal message"
  echo "cli: train, dro, eval and pipeline under mpirun agree with one process; other subcommands refuse"
fi
echo "dist_test: all passed"
