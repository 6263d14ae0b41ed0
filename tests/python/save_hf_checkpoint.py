#!/usr/bin/python3
"""Writes a checkpoint saved by transformers itself, with a batch and
transformers' outputs for it, for the C++ side to load and compare.

usage: save_hf_checkpoint.py OUT [--parallel | --sequential] [--tied | --untied]
         [--layers 2] [--hidden 64] [--heads 4] [--intermediate 4*hidden]
         [--vocab 264] [--token-vocab 257] [--ctx 64] [--rotary-pct 0.25]
         [--rotary-base 10000] [--gelu gelu|gelu_new] [--eps 1e-5]
         [--batch 2] [--seq 16] [--seed 0] [--ignore-frac 0.2] [--ref-dtype float64]

OUT gets what GPTNeoXForCausalLM.save_pretrained(OUT, safe_serialization=True)
writes (config.json, model.safetensors with __metadata__ {"format": "pt"}, and
generation_config.json; no embed_out.weight when tied), plus
batch.safetensors and outputs.safetensors in the format of neox_common.py.
Every parameter is random (biases and LayerNorms too). The outputs are
computed from the stored fp32 weights in --ref-dtype (float64 by default, so
they are exact to fp32 rounding) and stored as float32.
Prints one line with the checkpoint's shape and L.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import neox_common as nc  # noqa: E402
import torch  # noqa: E402


def add_model_args(ap, *, defaults_only=False):
    g = ap.add_argument_group("model")
    res = g.add_mutually_exclusive_group()
    res.add_argument("--parallel", dest="parallel", action="store_true", default=True,
                     help="GPT-NeoX parallel residual (default)")
    res.add_argument("--sequential", dest="parallel", action="store_false", help="GPT-2 style residual")
    tie = g.add_mutually_exclusive_group()
    tie.add_argument("--tied", dest="tied", action="store_true", default=False)
    tie.add_argument("--untied", dest="tied", action="store_false", help="(default)")
    g.add_argument("--layers", type=int, default=2)
    g.add_argument("--hidden", type=int, default=64)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--intermediate", type=int, default=None, help="default 4*hidden")
    g.add_argument("--vocab", type=int, default=264, help="embedding rows (config vocab_size)")
    g.add_argument("--token-vocab", type=int, default=None,
                   help="token ids in the batch are below this (default: min(vocab, 257))")
    g.add_argument("--ctx", type=int, default=64, help="max_position_embeddings")
    g.add_argument("--rotary-pct", type=float, default=0.25)
    g.add_argument("--rotary-base", type=float, default=10000.0)
    g.add_argument("--gelu", choices=["gelu", "gelu_new"], default="gelu",
                   help="gelu = exact erf GELU, gelu_new = tanh approximation")
    g.add_argument("--eps", type=float, default=1e-5)
    b = ap.add_argument_group("batch")
    b.add_argument("--batch", type=int, default=2)
    b.add_argument("--seq", type=int, default=16)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--ignore-frac", type=float, default=0.2, help="share of targets set to -1")
    b.add_argument("--ref-dtype", choices=["float64", "float32"], default="float64")


def write_checkpoint(out, args):
    """Builds, saves and evaluates one model; returns (config, L)."""
    os.makedirs(out, exist_ok=True)
    cfg = nc.make_config(vocab=args.vocab, hidden=args.hidden, layers=args.layers, heads=args.heads,
                         intermediate=args.intermediate, ctx=args.ctx, rotary_pct=args.rotary_pct,
                         rotary_base=args.rotary_base, gelu=args.gelu, parallel=args.parallel,
                         tied=args.tied, eps=args.eps)
    if args.seq > args.ctx:
        raise SystemExit(f"--seq {args.seq} > --ctx {args.ctx}")
    torch.manual_seed(args.seed)
    try:
        model = nc.GPTNeoXForCausalLM._from_config(cfg, attn_implementation="eager", torch_dtype=torch.float32)
    except TypeError:
        model = nc.GPTNeoXForCausalLM(cfg)
    nc.randomize(model, args.seed)
    model.tie_weights()
    model.save_pretrained(out, safe_serialization=True)

    token_vocab = args.token_vocab or min(args.vocab, 257)
    ids, tgt, w = nc.make_batch(batch=args.batch, seq=args.seq, vocab=token_vocab, seed=args.seed,
                                ignore_frac=args.ignore_frac)
    nc.write_batch(out, ids, tgt, w)
    dtype = torch.float64 if args.ref_dtype == "float64" else torch.float32
    losses, L, grads = nc.reference_outputs(out, dtype=dtype)
    nc.save_outputs(os.path.join(out, "outputs.safetensors"), losses, grads)
    return cfg, float(L)


def describe(out, cfg, L):
    return (f"{out}: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads, "
            f"vocab {cfg.vocab_size}, rotary_pct {cfg.rotary_pct}, {cfg.hidden_act}, "
            f"{'parallel' if cfg.use_parallel_residual else 'sequential'}, "
            f"{'tied' if cfg.tie_word_embeddings else 'untied'}; L = {L:.9g} ({nc.versions()})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    add_model_args(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg, L = write_checkpoint(args.out, args)
    print(describe(args.out, cfg, L))
    return 0


if __name__ == "__main__":
    sys.exit(main())
