#!/usr/bin/python3
"""transformers' generate on the checkpoint and prompts bench_generate gives it.

usage: hf_generate_twin.py --model DIR --prompts FILE --new N [--rounds 1] [--threads 2]
                           [--blas-dir DIR | --no-blas-dir]

FILE: a JSON list of prompts (lists of token ids). The prompts run as one
left-padded batch with an attention mask (transformers derives the positions
from it), greedy (do_sample=False), no eos (every row makes N new tokens),
use_cache=True, torch.set_num_threads(threads), float32. Timed per round,
after one warm-up call: generate with max_new_tokens=1 (the prefill and the
first token) and with max_new_tokens=N.

Prints one JSON line on stdout:
  {"impl": "transformers", "prefill_s": [...], "total_s": [...], "tokens": [[...], ...] (the last
   round's continuations), "torch": ..., "transformers": ..., "blas": ...}

BLAS: as benchmarks/torch_twin.py (OpenBLAS from --blas-dir, default
<repo>/build/openblas-openmp as scripts/install_python_deps.sh leaves it).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_twin import blas_dir_default, loaded_blas, maybe_reexec  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--blas-dir", default=None)
    g.add_argument("--no-blas-dir", action="store_true")
    args = ap.parse_args()
    if not args.no_blas_dir:
        maybe_reexec(args.blas_dir or blas_dir_default())

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import warnings
    warnings.filterwarnings("ignore")
    import torch
    import transformers
    import transformers.generation.utils as gu
    from transformers import GPTNeoXForCausalLM

    # generate() imports torch.distributed.fsdp to ask whether the model is FSDP-managed, which fails
    # on Debian's torch 1.13 under Python 3.11; nothing here is.
    if hasattr(gu, "is_fsdp_managed_module"):
        gu.is_fsdp_managed_module = lambda module: False

    torch.set_num_threads(args.threads)
    model = GPTNeoXForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    model.eval()
    with open(args.prompts) as f:
        prompts = json.load(f)
    R, longest, pad = len(prompts), max(len(p) for p in prompts), 0
    ids = torch.full((R, longest), pad, dtype=torch.long)
    mask = torch.zeros((R, longest), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, longest - len(p):] = torch.tensor(p)
        mask[r, longest - len(p):] = 1
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = pad

    def run(n):
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
                                 pad_token_id=pad, eos_token_id=None, use_cache=True)
        return time.perf_counter() - t0, out[:, longest:]

    run(2)  # warm-up
    prefill, total, tokens = [], [], None
    for _ in range(args.rounds):
        prefill.append(run(1)[0])
        t, out = run(args.new)
        total.append(t)
        tokens = out.tolist()
    print(json.dumps({"impl": "transformers", "prefill_s": prefill, "total_s": total, "tokens": tokens,
                      "torch": torch.__version__, "transformers": transformers.__version__,
                      "blas": ", ".join(os.path.basename(p) for p in loaded_blas()) or "?"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
