#!/usr/bin/python3
"""Greedy generation of the C++ library against transformers' GPTNeoXForCausalLM.

usage: generate_parity.py DIR [DIR...] [--threads N]

Each DIR holds (written by tests/test_generate.cpp):
  config.json, model.safetensors  the checkpoint (doremi's save_model)
  prompts.safetensors             ids [total] int32 (the prompts one after another), lengths [R] int32
  ours.safetensors                tokens [R, n] int32: our greedy continuations (n new tokens each);
                                  logits [R, n, vocab] float64: our cached logits before each new token
  case.json                       {"float64": bool, "atol": float}

Two checks per DIR, against references no one here wrote:
  1. model.generate(do_sample=False, max_new_tokens=n) on the prompts left-padded into one
     batch with an attention mask (transformers derives the positions from the mask), no eos,
     the padded embedding rows beyond the tokenizer's vocabulary suppressed (suppress_tokens;
     the library never proposes them): the continuations must equal ours token for token.
  2. A full forward without cache (use_cache=False) of each prompt + our continuation: its
     logits at the last prompt token and every new token but the last must equal our cached
     logits within atol (max absolute difference).
float64: the model computed in float64 (the checkpoint holds float64 weights).
Exit status 0 when every DIR passes, 1 otherwise.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import neox_common as nc  # noqa: E402
import torch  # noqa: E402


def no_fsdp_probe():
    """transformers' generate asks whether the model is FSDP-managed by importing
    torch.distributed.fsdp, which fails on Debian's torch 1.13 under Python 3.11
    (a dataclass with a mutable default in torch.distributed._shard). Nothing here
    is FSDP-managed: answer without the import."""
    try:
        import transformers.generation.utils as gu
    except ImportError:
        return
    if hasattr(gu, "is_fsdp_managed_module"):
        gu.is_fsdp_managed_module = lambda module: False


def check(d):
    case = nc.read_json(os.path.join(d, "case.json"))
    dtype = torch.float64 if case["float64"] else torch.float32
    model, _ = nc.load_model(d, dtype=dtype)
    c = model.config
    p = nc.load_file(os.path.join(d, "prompts.safetensors"))
    o = nc.load_file(os.path.join(d, "ours.safetensors"))
    ids, lengths = p["ids"].long().tolist(), p["lengths"].long().tolist()
    prompts, at = [], 0
    for n in lengths:
        prompts.append(ids[at:at + n])
        at += n
    ours_tokens = o["tokens"].long()
    ours_logits = o["logits"].double()
    R, n = ours_tokens.shape
    vocab = ours_logits.shape[2]
    head = (f"generate parity: {d}: {nc.versions()}, {str(dtype).replace('torch.', '')}, "
            f"{'parallel' if c.use_parallel_residual else 'sequential'} residual, "
            f"{'tied' if c.tie_word_embeddings else 'untied'}, rotary_pct {c.rotary_pct}; "
            f"{R} prompts of lengths {lengths}, {n} new tokens")
    ok = True

    # 1. transformers' generate on the left-padded batch.
    longest = max(lengths)
    pad = 0
    input_ids = torch.full((R, longest), pad, dtype=torch.long)
    mask = torch.zeros((R, longest), dtype=torch.long)
    for r, pr in enumerate(prompts):
        input_ids[r, longest - len(pr):] = torch.tensor(pr)
        mask[r, longest - len(pr):] = 1
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = pad
    suppress = list(range(vocab, c.vocab_size)) or None
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
                             min_new_tokens=None, suppress_tokens=suppress, pad_token_id=pad, eos_token_id=None)
    hf_tokens = out[:, longest:]
    if hf_tokens.shape != ours_tokens.shape or not torch.equal(hf_tokens, ours_tokens):
        ok = False
        for r in range(R):
            a, b = ours_tokens[r].tolist(), hf_tokens[r].tolist()
            if a != b:
                k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                print(f"generate parity: FAIL: prompt {r}: continuations differ from step {k}: ours {a}, "
                      f"transformers {b}")

    # 2. Full forward (no cache) logits against our cached ones.
    worst = 0.0
    with torch.no_grad():
        for r, pr in enumerate(prompts):
            seq = torch.tensor(pr + ours_tokens[r, :-1].tolist())[None]
            logits = model(input_ids=seq, use_cache=False).logits[0, len(pr) - 1:, :vocab].double()
            worst = max(worst, (logits - ours_logits[r]).abs().max().item())
    if not worst <= case["atol"]:
        ok = False
        print(f"generate parity: FAIL: cached logits differ from transformers' full forward by up to {worst:.3e} "
              f"> {case['atol']:.1e}")
    print(f"{head}: tokens {'equal' if torch.equal(hf_tokens, ours_tokens) else 'DIFFER'}, "
          f"max |logit difference| {worst:.3e} (atol {case['atol']:.0e}): {'ok' if ok else 'FAIL'}")
    return ok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    nc.quiet_transformers()
    no_fsdp_probe()
    results = []
    for d in args.dirs:
        try:
            results.append(check(d))
        except Exception as e:  # noqa: BLE001 - any failure to load or run is a parity failure
            print(f"generate parity: FAIL: {d}: {type(e).__name__}: {e}")
            results.append(False)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
