#!/usr/bin/python3
"""Writes directories in the exact format the C++ parity test writes, with
transformers' own outputs, to test gptneox_parity.py without the C++ side.

usage: make_parity_fixture.py OUT [--seed 0]

Creates OUT/parallel  (parallel residual, exact GELU, untied embed_out) and
        OUT/sequential (sequential residual, tanh GELU, tied embeddings),
both 2 layers, hidden 64, 4 heads, vocab 264 (257 tokens padded to 8),
rotary_pct 0.25, batch 2 x 16. config.json holds only the fields the C++
side writes (plus its "doremi" object); model.safetensors is rewritten with a
plain safetensors writer ({"format": "pt"} metadata, which transformers 4.47
requires). outputs.safetensors comes from transformers in float64, so
gptneox_parity.py must pass on these directories.
"""
import argparse
import json
import os
import sys
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import neox_common as nc  # noqa: E402
import save_hf_checkpoint as shc  # noqa: E402
import torch  # noqa: E402

VARIANTS = {
    "parallel": dict(parallel=True, tied=False, gelu="gelu"),
    "sequential": dict(parallel=False, tied=True, gelu="gelu_new"),
}


def cpp_style_config(cfg, token_vocab):
    """The key set the C++ library writes (see the parity brief)."""
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": cfg.hidden_act,
        "rotary_pct": cfg.rotary_pct,
        "partial_rotary_factor": cfg.rotary_pct,
        "rotary_emb_base": cfg.rotary_emb_base,
        "rope_theta": cfg.rotary_emb_base,
        "max_position_embeddings": cfg.max_position_embeddings,
        "layer_norm_eps": cfg.layer_norm_eps,
        "use_parallel_residual": cfg.use_parallel_residual,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": True,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "torch_dtype": "float32",
        "doremi": {"preset": "fixture", "vocab": token_vocab, "writer": "make_parity_fixture.py"},
    }


def make(out, name, seed):
    args = SimpleNamespace(layers=2, hidden=64, heads=4, intermediate=None, vocab=264, token_vocab=257,
                           ctx=64, rotary_pct=0.25, rotary_base=10000.0, eps=1e-5, batch=2, seq=16,
                           seed=seed, ignore_frac=0.2, ref_dtype="float64", **VARIANTS[name])
    d = os.path.join(out, name)
    cfg, _ = shc.write_checkpoint(d, args)
    # Re-express it as the C++ side writes it, then recompute the outputs
    # from that form (they must not change).
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cpp_style_config(cfg, args.token_vocab), f, indent=2)
    for extra in ("generation_config.json",):
        p = os.path.join(d, extra)
        if os.path.exists(p):
            os.remove(p)
    w = nc.load_file(os.path.join(d, "model.safetensors"))
    nc.save_file({k: w[k].float().contiguous() for k in sorted(w)}, os.path.join(d, "model.safetensors"),
                 metadata={"format": "pt"})
    losses, L, grads = nc.reference_outputs(d, dtype=torch.float64)
    nc.save_outputs(os.path.join(d, "outputs.safetensors"), losses, grads)
    print(shc.describe(d, nc.load_model(d)[0].config, float(L)))
    return d


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    for name in VARIANTS:
        make(args.out, name, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
