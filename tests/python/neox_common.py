"""Shared helpers for the GPT-NeoX parity scripts (Debian's /usr/bin/python3).

The directory format, shared with the C++ tests:

  config.json          HF GPT-NeoX config (+ an optional "doremi" object)
  model.safetensors    fp32 weights under HF GPT-NeoX names
  batch.safetensors    int32 input_ids [B,T], int32 targets [B,T] (-1 = ignored),
                       float32 weights [B,T]
  outputs.safetensors  float32 losses [B,T] (per-token cross-entropy, 0 where
                       ignored) and, under the parameter names, the gradients of
                       L = sum(weights * losses) over non-ignored positions.
"""
from __future__ import annotations

import json
import math
import os
import warnings

import torch
import torch.nn.functional as F

IGNORE = -1


def quiet_transformers():
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


quiet_transformers()

import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM  # noqa: E402


def check_config_consistency(cfg: dict) -> list[str]:
    """Newer transformers read partial_rotary_factor/rope_theta, older ones
    rotary_pct/rotary_emb_base: the two spellings must agree."""
    problems = []
    for a, b in (("rotary_pct", "partial_rotary_factor"), ("rotary_emb_base", "rope_theta")):
        if a in cfg and b in cfg and not math.isclose(float(cfg[a]), float(cfg[b]), rel_tol=1e-12):
            problems.append(f"config.json: {a}={cfg[a]} but {b}={cfg[b]}")
    return problems


def load_model(directory: str, dtype: torch.dtype = torch.float32):
    """GPTNeoXForCausalLM.from_pretrained(directory) with eager attention.

    Returns (model, loading_info). Raises if any weight is missing, unexpected
    or of the wrong shape (from_pretrained would otherwise initialise it at
    random and only warn)."""
    kwargs = dict(torch_dtype=dtype, output_loading_info=True)
    try:
        model, info = GPTNeoXForCausalLM.from_pretrained(directory, attn_implementation="eager", **kwargs)
    except TypeError:  # transformers without attn_implementation
        model, info = GPTNeoXForCausalLM.from_pretrained(directory, **kwargs)
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise RuntimeError(f"checkpoint in {directory} does not match GPTNeoXForCausalLM: {bad}")
    model.eval()  # dropout off (the configs set 0 anyway)
    return model, info


def load_batch(directory: str):
    b = load_file(os.path.join(directory, "batch.safetensors"))
    for k in ("input_ids", "targets", "weights"):
        if k not in b:
            raise KeyError(f"batch.safetensors lacks {k!r}")
    ids, tgt, w = b["input_ids"].long(), b["targets"].long(), b["weights"]
    if ids.shape != tgt.shape or ids.shape != w.shape or ids.dim() != 2:
        raise ValueError(f"batch shapes differ: {tuple(ids.shape)} {tuple(tgt.shape)} {tuple(w.shape)}")
    return ids, tgt, w


def losses_and_grads(model, ids, targets, weights):
    """Per-token CE [B,T] (0 where ignored), the scalar L and d L / d param
    for every named parameter (tied weights appear once, under the input
    embedding's name, with the summed gradient)."""
    model.zero_grad(set_to_none=True)
    dtype = next(model.parameters()).dtype
    out = model(input_ids=ids, use_cache=False, return_dict=True)
    logits = out.logits
    B, T, V = logits.shape
    tok = F.cross_entropy(logits.reshape(B * T, V), targets.reshape(-1), ignore_index=IGNORE,
                          reduction="none").view(B, T)
    mask = targets != IGNORE
    tok = torch.where(mask, tok, torch.zeros_like(tok))
    L = (weights.to(dtype) * tok)[mask].sum()
    L.backward()
    grads = {}
    for name, p in model.named_parameters():
        grads[name] = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
    return tok.detach(), L.detach(), grads


def save_outputs(path: str, losses, grads):
    tensors = {"losses": losses.float().contiguous()}
    for k, g in grads.items():
        tensors[k] = g.float().contiguous()
    save_file(tensors, path)


def make_config(*, vocab=264, hidden=64, layers=2, heads=4, intermediate=None, ctx=64,
                rotary_pct=0.25, rotary_base=10000.0, gelu="gelu", parallel=True, tied=False,
                eps=1e-5) -> GPTNeoXConfig:
    return GPTNeoXConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate or 4 * hidden, hidden_act=gelu, rotary_pct=rotary_pct,
        rotary_emb_base=rotary_base, max_position_embeddings=ctx, layer_norm_eps=eps,
        use_parallel_residual=parallel, tie_word_embeddings=tied, attention_bias=True,
        hidden_dropout=0.0, attention_dropout=0.0, bos_token_id=0, eos_token_id=0,
        architectures=["GPTNeoXForCausalLM"], torch_dtype="float32")


@torch.no_grad()
def randomize(model, seed: int, std: float = 0.05):
    """Every parameter random (biases and LayerNorms too, so that a wrong bias
    or LayerNorm gradient shows), small enough to keep softmaxes soft."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        r = torch.randn(p.shape, generator=g, dtype=torch.float32)
        if "layernorm" in name or "layer_norm" in name:
            p.copy_(1.0 + 0.1 * r if name.endswith("weight") else 0.05 * r)
        elif "embed" in name:
            p.copy_(0.5 * r)  # embeddings feed a LayerNorm: scale matters little
        else:
            p.copy_(std * r)


def make_batch(*, batch=2, seq=16, vocab=257, seed=0, ignore_frac=0.2):
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, vocab, (batch, seq + 1), generator=g)
    inputs, targets = ids[:, :-1].clone(), ids[:, 1:].clone()
    drop = torch.rand(batch, seq, generator=g) < ignore_frac
    targets[drop] = IGNORE
    weights = 0.5 + torch.rand(batch, seq, generator=g)
    return inputs.int(), targets.int(), weights.float()


def write_batch(directory, ids, targets, weights):
    save_file({"input_ids": ids.int().contiguous(), "targets": targets.int().contiguous(),
               "weights": weights.float().contiguous()}, os.path.join(directory, "batch.safetensors"))


def reference_outputs(directory: str, dtype: torch.dtype = torch.float64):
    """Loads DIR as the C++ side would see it and returns HF's losses and
    gradients, computed in `dtype` from the stored fp32 weights."""
    model, _ = load_model(directory, dtype=torch.float32)
    model = model.to(dtype)
    ids, tgt, w = load_batch(directory)
    return losses_and_grads(model, ids, tgt, w)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def versions() -> str:
    return f"torch {torch.__version__}, transformers {transformers.__version__}"
