#!/usr/bin/env bash
# End-to-end checks of the example program `doremi` as a user runs it: every
# subcommand's --help, tokenize, preprocess, baseline-weights, train, dro, eval
# (also of a checkpoint written by transformers), pipeline, and clear errors.
# usage: cli_smoke.sh PATH/TO/doremi SOURCE_DIR
set -euo pipefail
DOREMI=$1
SRC=$2
PY=${DOREMI_PYTHON:-/usr/bin/python3}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
passed=0
ok() { passed=$((passed + 1)); echo "ok: $1"; }
fail() { echo "FAILED: $1" >&2; echo "$passed passed, 1 failed"; exit 1; }

for c in quickstart tokenize preprocess baseline-weights train dro eval pipeline; do
  "$DOREMI" "$c" --help | grep -q -- "--help" || fail "$c --help"
done
ok "every subcommand has --help"

printf 'hi!' > "$W/t.txt"
[[ "$("$DOREMI" tokenize --tokenizer bytes --input "$W/t.txt")" == "[104,105,33]" ]] || fail "tokenize bytes"
ok "tokenize prints the ids as a JSON array"

# A small three-domain corpus.
for i in $(seq 1 60); do
  printf '{"text": "%s", "meta": {"set": "alpha"}}\n' "$(printf 'abcdefgh%.0s' $(seq 1 30))"
  printf '{"text": "%s %d", "meta": {"set": "beta"}}\n' "$(printf 'the cat sat on the mat %.0s' $(seq 1 8))" "$i"
  printf '{"text": "%s", "meta": {"set": "gamma"}}\n' "$(head -c 300 /dev/urandom | base64 -w0)"
done > "$W/corpus.jsonl"
"$DOREMI" preprocess --input "$W/corpus.jsonl" --domain-key meta.set --tokenizer bytes --seq-len 32 \
  --validation-share 0.2 --output "$W/data" > "$W/manifest.out"
grep -q '"alpha"' "$W/manifest.out" || fail "preprocess manifest"
ok "preprocess writes a manifest"

"$DOREMI" baseline-weights --data "$W/data" --output "$W/baseline.json" --mode nopack > /dev/null
grep -q train_domain_weights "$W/baseline.json" || fail "baseline-weights"
ok "baseline-weights writes a domain config"

"$DOREMI" train --data "$W/data" --weights "$W/baseline.json" --seq-len 32 --steps 10 --batch 4 \
  --output "$W/ref" > /dev/null 2>&1 || fail "train --data"
[[ -f "$W/ref/final/model.safetensors" ]] || fail "train wrote no final model"
ok "train on a dataset folder"

"$DOREMI" dro --data "$W/data" --reference "$W/ref" --seq-len 32 --steps 10 --batch 4 --output "$W/proxy" \
  > "$W/dro.out" 2>/dev/null || fail "dro"
[[ -f "$W/proxy/avg_domain_weights.json" && -f "$W/proxy/domain_config.json" ]] || fail "dro outputs"
ok "dro writes avg_domain_weights.json and a domain config"

"$DOREMI" eval --model "$W/ref" --data "$W/data" > "$W/eval.json" 2>/dev/null || fail "eval"
grep -q '"worst_domain"' "$W/eval.json" || fail "eval JSON"
ok "eval prints per-domain log-perplexity"

# The proxy's output feeds the next stage directly.
"$DOREMI" train --data "$W/data" --weights "$W/proxy/domain_config.json" --seq-len 32 --steps 3 --batch 2 \
  --output "$W/main" > /dev/null 2>&1 || fail "train on DoReMi weights"
ok "the domain config is the next stage's input"

if "$PY" -c 'import torch, transformers' 2>/dev/null; then
  "$PY" "$SRC/tests/python/save_hf_checkpoint.py" "$W/hf" --parallel --untied --layers 2 --hidden 64 --heads 4 \
    --vocab 264 --token-vocab 257 --ctx 128 --rotary-pct 0.25 --gelu gelu > /dev/null
  "$DOREMI" eval --model "$W/hf" --data "$W/data" > "$W/hf_eval.json" 2>/dev/null || fail "eval of a transformers checkpoint"
  grep -q '"log_perplexity"' "$W/hf_eval.json" || fail "eval JSON (transformers checkpoint)"
  ok "eval of a checkpoint saved by transformers (preset matched from its config.json)"
elif [[ "${DOREMI_REQUIRE_PYTHON:-0}" == 1 ]]; then
  fail "$PY cannot import torch and transformers but DOREMI_REQUIRE_PYTHON=1"
else
  echo "skipped: transformers checkpoint (no torch/transformers for $PY)"
fi

# Errors name what is wrong.
err=$("$DOREMI" train --data "$W/data" --preset nosuch --output "$W/x" 2>&1 || true)
grep -q "available: tiny" <<< "$err" || fail "unknown preset error: $err"
echo '{"data": "'"$W/data"'", "output": "'"$W/run"'", "proxy": {"stepz": 3}}' > "$W/bad.json"
err=$("$DOREMI" pipeline --config "$W/bad.json" 2>&1 || true)
grep -q "'stepz'" <<< "$err" || fail "bad run config error: $err"
err=$("$DOREMI" eval --model "$W/nowhere" --data "$W/data" 2>&1 || true)
grep -q "nowhere" <<< "$err" || fail "missing model error: $err"
ok "errors name the preset, the field and the file"

echo "$passed passed, 0 failed"
