#!/usr/bin/env python3
"""PyTorch twin of the library's `doremi-120m` preset on a GPU, timing a plain
training step and a DoReMi (DRO) step. bench_gpu_step runs it as a subprocess
and reads the last JSON line it prints.

The model (include/doremi/model/config.hpp, preset doremi-120m; GPT-NeoX shape,
as hf_config.hpp writes it for transformers' GPTNeoXConfig): 12 layers, width
768, 12 heads (head size 64), context 1024, vocabulary 50277 padded to 50280
(a multiple of 8), rotary embedding on the first 25 % of each head's dims
(base 10000, GPT-NeoX's rotate-half form), parallel residual
(x + attn(ln1(x)) + mlp(ln2(x))), MLP width 4·768 with GELU (tanh), LayerNorm
eps 1e-5, biases everywhere, tied input/output embedding, no dropout.
Attention is F.scaled_dot_product_attention(is_causal=True); matrix products
run under torch.autocast(bfloat16) with fp32 master weights; AdamW (lr 1e-4,
betas 0.9/0.99, eps 1e-8, weight decay 0.01 on matrices only, as the library's
param groups) is fused where this torch has it; the gradient norm is clipped
at 1.0 (torch.nn.utils.clip_grad_norm_, as the public runs and the library's
trainers do; --max-grad-norm 0: off); the model is torch.compile'd unless
--no-compile (compilation happens in the warm-up steps, not timed).

One step, over --accum micro-batches (the same fixed batch each time):
  train: per micro-batch forward -> per-token losses -> mean / accum ->
         backward; then clipping -> AdamW
  dro:   per micro-batch reference forward (a second model, no_grad) + proxy
         forward -> per-domain mean excess loss max(l_proxy - l_ref, 0)
         (8 domains, round robin over the sequences) -> DoReMi update of the
         domain weights (log a += eta * score, softmax, smoothing c = 1e-4; on
         the GPU; once per micro-batch, as the public implementation) ->
         per-token weights w[domain] / sum -> backward of sum(w * l) / accum;
         then clipping -> AdamW
Each timed step ends with torch.cuda.synchronize(); the JSON reports medians.

usage: torch_gpu_twin.py [--batch 16] [--seq 1024] [--accum 1] [--steps 20] [--warmup 3] [--max-grad-norm 1]
                         [--mode both|train|dro] [--no-compile] [--compile-mode MODE]
                         [--impl manual|hf] [--device cuda|cpu] [--tiny] [--seed 0]

--tiny shrinks the model (1 layer, width 128, 2 heads of 64, vocabulary 509,
context 64: the shape of the emulator's smoke run of bench_gpu_step) to check
the code path on a CPU (--device cpu --tiny --batch 2 --seq 32).
--impl hf builds transformers' GPTNeoXForCausalLM (attn_implementation="sdpa")
from the same shape instead of the hand-written module (a cross-check).

Prints one JSON line on stdout:
  {"impl": "pytorch", "tokens_per_s_median": <train>, "step_s_median": <train>,
   "train": {...}, "dro": {...}, "torch": "...", "gpu": "...", ...}
"""
import argparse
import json
import math
import re
import statistics
import sys
import time


def build_model_classes(tiny=False):
    """The twin's model classes and shape: (GPTNeoX, HFWrapper, shape dict)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    # doremi-120m (include/doremi/model/config.hpp), or a tiny model of the same kind.
    if tiny:
        n_layer, n_embd, n_head, n_ctx, vocab, vocab_multiple = 1, 128, 2, 64, 509, 8
    else:
        n_layer, n_embd, n_head, n_ctx, vocab, vocab_multiple = 12, 768, 12, 1024, 50277, 8
    padded_vocab = (vocab + vocab_multiple - 1) // vocab_multiple * vocab_multiple
    head_dim = n_embd // n_head
    rotary_pct, rotary_base, ln_eps, mlp_mult = 0.25, 10000.0, 1e-5, 4
    rot = int(head_dim * rotary_pct)
    d_mlp = mlp_mult * n_embd

    have_sdpa = hasattr(F, "scaled_dot_product_attention")

    def rotate(x, cos, sin):
        # GPT-NeoX partial rotary: the first `rot` dims of each head, rotate-half form.
        xr, xp = x[..., :rot], x[..., rot:]
        x1, x2 = xr[..., : rot // 2], xr[..., rot // 2:]
        rotated = torch.cat((-x2, x1), dim=-1)
        return torch.cat((xr * cos + rotated * sin, xp), dim=-1)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.query_key_value = nn.Linear(n_embd, 3 * n_embd)
            self.dense = nn.Linear(n_embd, n_embd)

        def forward(self, x, cos, sin):
            b, t, c = x.shape
            # GPT-NeoX layout: per head [q | k | v].
            qkv = self.query_key_value(x).view(b, t, n_head, 3 * head_dim).transpose(1, 2)
            q, k, v = qkv.split(head_dim, dim=-1)
            cos, sin = cos.to(q.dtype), sin.to(q.dtype)  # keep bf16 under autocast (flash attention)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            if have_sdpa:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:  # torch < 2.0 (the CPU check here)
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(head_dim))
                mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
                att = att.masked_fill(~mask, float("-inf"))
                y = F.softmax(att.float(), dim=-1).to(v.dtype) @ v
            return self.dense(y.transpose(1, 2).reshape(b, t, c))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense_h_to_4h = nn.Linear(n_embd, d_mlp)
            self.dense_4h_to_h = nn.Linear(d_mlp, n_embd)

        def forward(self, x):
            return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x), approximate="tanh"))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_layernorm = nn.LayerNorm(n_embd, eps=ln_eps)
            self.post_attention_layernorm = nn.LayerNorm(n_embd, eps=ln_eps)
            self.attention = Attention()
            self.mlp = MLP()

        def forward(self, x, cos, sin):  # parallel residual
            return x + self.attention(self.input_layernorm(x), cos, sin) + self.mlp(self.post_attention_layernorm(x))

    class GPTNeoX(nn.Module):
        """Per-token cross-entropy [B, T] (fp32) of next-token targets."""

        def __init__(self):
            super().__init__()
            self.embed_in = nn.Embedding(padded_vocab, n_embd)
            self.layers = nn.ModuleList(Block() for _ in range(n_layer))
            self.final_layer_norm = nn.LayerNorm(n_embd, eps=ln_eps)
            inv_freq = rotary_base ** (-torch.arange(0, rot, 2, dtype=torch.float64) / rot)
            ang = torch.arange(n_ctx, dtype=torch.float64)[:, None] * inv_freq[None, :]
            ang = torch.cat((ang, ang), dim=-1)
            self.register_buffer("cos", ang.cos().float(), persistent=False)
            self.register_buffer("sin", ang.sin().float(), persistent=False)
            std_out = 0.02 / math.sqrt(2.0 * n_layer)  # as params.hpp
            for name, p in self.named_parameters():
                if p.dim() == 2:
                    nn.init.normal_(p, std=std_out if name.endswith(("dense.weight", "dense_4h_to_h.weight")) else 0.02)
                elif name.endswith("bias"):
                    nn.init.zeros_(p)

        def forward(self, idx, targets):
            t = idx.size(1)
            x = self.embed_in(idx)
            cos, sin = self.cos[:t], self.sin[:t]
            for blk in self.layers:
                x = blk(x, cos, sin)
            logits = F.linear(self.final_layer_norm(x), self.embed_in.weight)  # tied
            return F.cross_entropy(logits.float().view(-1, padded_vocab), targets.view(-1),
                                   reduction="none").view(targets.shape)

    class HFWrapper(nn.Module):
        """transformers' GPTNeoXForCausalLM of the same shape, per-token losses."""

        def __init__(self):
            super().__init__()
            from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
            # rotary_pct / rotary_emb_base: the names transformers 4 takes and 5 converts.
            cfg = GPTNeoXConfig(vocab_size=padded_vocab, hidden_size=n_embd, num_hidden_layers=n_layer,
                                num_attention_heads=n_head, intermediate_size=d_mlp, hidden_act="gelu_new",
                                rotary_pct=rotary_pct, rotary_emb_base=rotary_base, max_position_embeddings=n_ctx,
                                layer_norm_eps=ln_eps, use_parallel_residual=True, tie_word_embeddings=True,
                                attention_bias=True, hidden_dropout=0.0, attention_dropout=0.0, use_cache=False)
            rope = getattr(cfg, "rope_parameters", None) or {}
            pct = rope.get("partial_rotary_factor", getattr(cfg, "rotary_pct", None))
            base = rope.get("rope_theta", getattr(cfg, "rotary_emb_base", None))
            if pct != rotary_pct or base != rotary_base:
                raise RuntimeError(f"GPTNeoXConfig took rotary fraction {pct} and base {base}, "
                                   f"not {rotary_pct} and {rotary_base}")
            version = tuple(int(v) for v in re.findall(r"\d+", torch.__version__)[:3])
            attn = "sdpa" if have_sdpa and version >= (2, 1, 1) else "eager"
            try:
                self.hf = GPTNeoXForCausalLM._from_config(cfg, attn_implementation=attn)
            except TypeError:
                self.hf = GPTNeoXForCausalLM(cfg)
            self.hf.tie_weights()
            self.attn_impl = getattr(self.hf.config, "_attn_implementation", attn)

        def forward(self, idx, targets):
            h = self.hf.gpt_neox(input_ids=idx).last_hidden_state
            logits = self.hf.embed_out(h)
            return F.cross_entropy(logits.float().view(-1, padded_vocab), targets.view(-1),
                                   reduction="none").view(targets.shape)

    shape = dict(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_ctx=n_ctx, vocab=vocab,
                 padded_vocab=padded_vocab, rot=rot, have_sdpa=have_sdpa)
    return GPTNeoX, HFWrapper, shape


def time_sdpa(torch, dev, B, T, H, hd, n_warm, n_steps, sync):
    """One layer's attention alone: F.scaled_dot_product_attention(is_causal=True)
    forward + backward on bf16 q, k, v [B, H, T, hd] (contiguous, its best case;
    no rotary), with a fixed output gradient. Median seconds (bench_gpu_step
    sets our kernels beside it)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(1)
    q, k, v, dout = (torch.randn(B, H, T, hd, generator=g).to(dev, torch.bfloat16) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_(True)
    times = []
    for i in range(n_warm + n_steps):
        sync()
        t0 = time.perf_counter()
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        o.backward(dout)
        sync()
        if i >= n_warm:
            times.append(time.perf_counter() - t0)
        q.grad = k.grad = v.grad = None
    backend = "?"
    if dev.type == "cuda" and hasattr(torch.backends.cuda, "flash_sdp_enabled"):
        backend = "flash allowed" if torch.backends.cuda.flash_sdp_enabled() else "flash disabled"
    return {"step_s_median": round(statistics.median(times), 7), "shape": [B, H, T, hd], "sdpa": backend}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--accum", type=int, default=1, help="micro-batches per step (default 1)")
    ap.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient-norm clip (default 1; 0: off)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps of each kind (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps of each kind first (compilation happens here)")
    ap.add_argument("--mode", choices=["both", "train", "dro"], default="both")
    ap.add_argument("--no-compile", action="store_true", help="eager mode (no torch.compile)")
    ap.add_argument("--compile-mode", default=None,
                    help="torch.compile mode (default: torch's default; e.g. max-autotune-no-cudagraphs)")
    ap.add_argument("--impl", choices=["manual", "hf"], default="manual")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a tiny model of the same architecture (code-path check)")
    ap.add_argument("--domains", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"impl": "pytorch", "error": f"torch {torch.__version__} sees no CUDA device"}))
        return 1
    torch.manual_seed(args.seed)

    GPTNeoX, HFWrapper, shape = build_model_classes(args.tiny)
    n_ctx, vocab, padded_vocab = shape["n_ctx"], shape["vocab"], shape["padded_vocab"]
    have_sdpa = shape["have_sdpa"]
    if args.seq > n_ctx:
        ap.error(f"--seq {args.seq} exceeds the context {n_ctx}")
    if args.accum < 1:
        ap.error(f"--accum must be at least 1 (got {args.accum})")
    B, T = args.batch, args.seq

    Net = HFWrapper if args.impl == "hf" else GPTNeoX
    model = Net().to(dev)
    reference = Net().to(dev)
    for p in reference.parameters():
        p.requires_grad_(False)
    reference.eval()
    n_params = sum(p.numel() for p in model.parameters())  # tied: counted once

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    opt_kw = dict(lr=1e-4, betas=(0.9, 0.99), eps=1e-8)
    fused = False
    try:
        opt = torch.optim.AdamW(groups, fused=True, **opt_kw)
        fused = True
    except (TypeError, RuntimeError, ValueError):
        opt = torch.optim.AdamW(groups, **opt_kw)

    compiled, compile_note = False, "off (--no-compile)"
    fwd, ref_fwd = model, reference
    if not args.no_compile:
        if hasattr(torch, "compile"):
            kw = {"mode": args.compile_mode} if args.compile_mode else {}
            fwd, ref_fwd = torch.compile(model, **kw), torch.compile(reference, **kw)
            compiled, compile_note = True, f"torch.compile (mode {args.compile_mode or 'default'})"
        else:
            compile_note = f"unavailable in torch {torch.__version__}"

    use_autocast = dev.type == "cuda" or hasattr(torch, "autocast")

    def autocast():
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_autocast)

    g = torch.Generator().manual_seed(args.seed)
    data = torch.randint(0, vocab, (B, T + 1), generator=g)
    x, y = data[:, :-1].contiguous().to(dev), data[:, 1:].contiguous().to(dev)
    k = args.domains
    domain = (torch.arange(B) % k).to(dev)  # round robin, as bench_gpu_step

    # DoReMi state (docs/algorithm.md; include/doremi/train/domain_weights.hpp), on the device.
    f64 = torch.float64
    alpha = torch.full((k,), 1.0 / k, dtype=f64, device=dev)
    sampling = torch.full((k,), 1.0 / k, dtype=f64, device=dev)
    scores = torch.full((k,), math.log(padded_vocab), dtype=f64, device=dev)
    avg_alpha = alpha.clone()
    eta, smoothing = 1.0, 1e-4
    seq_tokens = torch.full((B,), float(T), dtype=f64, device=dev)
    state = {"count": 1}

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def clip_and_step():
        if args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        opt.step()

    def train_step():
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(args.accum):
            with autocast():
                losses = fwd(x, y)
            loss = losses.mean() / args.accum
            loss.backward()
            total = total + loss.detach()
        clip_and_step()
        return total

    def dro_step():
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(args.accum):
            total = total + dro_micro_batch().detach() / args.accum
        clip_and_step()
        return total

    def dro_micro_batch():
        nonlocal alpha, scores, avg_alpha
        with torch.no_grad(), autocast():
            ref_losses = ref_fwd(x, y)
        with autocast():
            losses = fwd(x, y)
        with torch.no_grad():
            excess = (losses.detach() - ref_losses).clamp_min(0).sum(dim=1).to(f64)  # per sequence
            excess_sum = torch.zeros(k, dtype=f64, device=dev).index_add_(0, domain, excess)
            count = torch.zeros(k, dtype=f64, device=dev).index_add_(0, domain, seq_tokens)
            scores = torch.where(count > 0, excess_sum / count.clamp_min(1), scores)
            alpha = (1 - smoothing) * torch.softmax(alpha.log() + eta * scores, dim=0) + smoothing / k
            state["count"] += 1
            avg_alpha = avg_alpha + (alpha - avg_alpha) / state["count"]
            w = alpha / sampling
            w = w / w.sum()
            seq_w = w[domain]
            token_w = (seq_w / (seq_w.sum() * T)).to(torch.float32)  # sum over all tokens = 1
        loss = (losses * token_w[:, None]).sum()
        (loss / args.accum).backward()
        return loss

    def timed(step, n_warm, n_steps):
        t_warm = time.perf_counter()
        losses, times = [], []
        for i in range(n_warm + n_steps):
            if i == n_warm:
                t_warm = time.perf_counter() - t_warm
            sync()
            t0 = time.perf_counter()
            loss = step()
            sync()
            dt = time.perf_counter() - t0
            losses.append(float(loss.detach()))
            if i >= n_warm:
                times.append(dt)
        if n_warm == 0:
            t_warm = 0.0
        med = statistics.median(times)
        return {
            "step_s_median": round(med, 6),
            "step_s_min": round(min(times), 6),
            "tokens_per_s_median": round(args.accum * B * T / med, 1),
            "warmup_s": round(t_warm, 2),
            "loss_first": round(losses[0], 4),
            "loss_last": round(losses[-1], 4),
        }

    out = {
        "impl": "pytorch",
        "model": "tiny" if args.tiny else "doremi-120m",
        "model_impl": "transformers GPTNeoXForCausalLM" if args.impl == "hf" else "hand-written GPT-NeoX",
        "precision": "bf16 autocast, fp32 master weights" if use_autocast else "fp32",
        "attention": (f"transformers {model.attn_impl}" if args.impl == "hf"
                      else "sdpa (is_causal)" if have_sdpa else "manual"),
        "compile": compiled,
        "compile_note": compile_note,
        "fused_adamw": fused,
        "batch": B,
        "seq": T,
        "accum": args.accum,
        "max_grad_norm": args.max_grad_norm,
        "steps": args.steps,
        "warmup": args.warmup,
        "params": n_params,
        "torch": torch.__version__,
        "device": args.device,
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
    }
    if args.mode in ("both", "train"):
        out["train"] = timed(train_step, args.warmup, args.steps)
        out["tokens_per_s_median"] = out["train"]["tokens_per_s_median"]
        out["step_s_median"] = out["train"]["step_s_median"]
    if args.mode in ("both", "dro"):
        out["dro"] = timed(dro_step, args.warmup, args.steps)
        out["dro"]["alpha"] = [round(a, 5) for a in alpha.tolist()]
        if "tokens_per_s_median" not in out:
            out["tokens_per_s_median"] = out["dro"]["tokens_per_s_median"]
            out["step_s_median"] = out["dro"]["step_s_median"]
    if have_sdpa:
        out["attention_alone"] = time_sdpa(torch, dev, B, T, shape["n_head"], shape["n_embd"] // shape["n_head"],
                                           args.warmup, args.steps, sync)
    if dev.type == "cuda":
        out["max_memory_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
