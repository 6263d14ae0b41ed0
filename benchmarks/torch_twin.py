#!/usr/bin/python3
"""PyTorch twin of the library's `cpu-bench` preset, timing full training steps.

The model (as llm.c's GPT-2): 4 layers, width 256, 4 heads, context 256,
vocabulary 50304, learned absolute positions, tied input/output embedding,
sequential pre-LN residual, GELU (tanh), LayerNorm eps 1e-5, biases
everywhere, no dropout, fp32. One step = forward, mean cross-entropy,
backward, AdamW step, at batch 4 x 256 with torch.set_num_threads(2).

usage: torch_twin.py [--steps 10] [--warmup 2] [--batch 4] [--seq 256] [--threads 2]
                     [--blas-dir DIR | --no-blas-dir]

Prints one JSON line on stdout:
  {"impl": "pytorch", "tokens_per_s_median": ..., "step_s_median": ..., "steps": N,
   "torch": "...", "blas": "...", ...}

BLAS: Debian's torch links libblas.so.3, the slow reference BLAS unless
OpenBLAS comes first on LD_LIBRARY_PATH. With --blas-dir DIR (default: the
environment's DOREMI_TORCH_BLAS_DIR, else <repo>/build/openblas-openmp when it
holds libblas.so.3, as scripts/install_python_deps.sh leaves it) the script
re-executes itself with DIR prepended to LD_LIBRARY_PATH. "blas" in the JSON
names the library actually loaded; a warning goes to stderr when it is the
reference BLAS (then one step takes about 45 s here, 23 tokens/s).

Timings need idle cores: with OpenMP's busy-waiting, 2 threads on 2 cores
that other processes also use run many times slower. "loadavg_1m_before"
in the JSON tells whether the machine was busy.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REEXEC_MARK = "DOREMI_TORCH_TWIN_REEXEC"


def blas_dir_default():
    d = os.environ.get("DOREMI_TORCH_BLAS_DIR")
    if d:
        return d
    d = os.path.join(REPO, "build", "openblas-openmp")
    return d if os.path.isfile(os.path.join(d, "libblas.so.3")) else None


def maybe_reexec(blas_dir):
    """The dynamic loader reads LD_LIBRARY_PATH only at start: re-run ourselves."""
    if not blas_dir or os.environ.get(REEXEC_MARK):
        return
    blas_dir = os.path.abspath(blas_dir)
    if not os.path.isfile(os.path.join(blas_dir, "libblas.so.3")):
        print(f"torch_twin: no libblas.so.3 in {blas_dir}; using the default BLAS", file=sys.stderr)
        return
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    if paths[:1] == [blas_dir]:
        return
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join([blas_dir] + paths)
    env[REEXEC_MARK] = "1"
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


def loaded_blas():
    """The BLAS shared object really mapped into this process."""
    libs = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                base = os.path.basename(path)
                if ("blas" in base or "mkl" in base) and path not in libs:
                    libs.append(path)
    except OSError:
        pass
    return libs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", action="store_true",
                    help="run forward and loss under torch.autocast('cpu', bfloat16): bf16 matrix products "
                         "(oneDNN), fp32 master weights and AdamW")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--blas-dir", default=None, help="folder with OpenBLAS's libblas.so.3")
    g.add_argument("--no-blas-dir", action="store_true", help="use whatever BLAS the loader finds")
    args = ap.parse_args()
    if not args.no_blas_dir:
        maybe_reexec(args.blas_dir or blas_dir_default())

    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    # cpu-bench preset (include/doremi/model/config.hpp)
    n_layer, n_embd, n_head, n_ctx, vocab, eps = 4, 256, 4, 256, 50304, 1e-5
    assert args.seq <= n_ctx

    have_sdpa = hasattr(F, "scaled_dot_product_attention")

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Linear(n_embd, 3 * n_embd)
            self.c_proj = nn.Linear(n_embd, n_embd)
            self.register_buffer("causal", torch.ones(n_ctx, n_ctx, dtype=torch.bool).tril(), persistent=False)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.c_attn(x).split(C, dim=2)
            q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
            if have_sdpa:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
                att = att.masked_fill(~self.causal[:T, :T], float("-inf"))
                y = F.softmax(att, dim=-1) @ v
            return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc = nn.Linear(n_embd, 4 * n_embd)
            self.c_proj = nn.Linear(4 * n_embd, n_embd)

        def forward(self, x):
            return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(n_embd, eps=eps)
            self.attn = Attention()
            self.ln_2 = nn.LayerNorm(n_embd, eps=eps)
            self.mlp = MLP()

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(vocab, n_embd)
            self.wpe = nn.Embedding(n_ctx, n_embd)
            self.h = nn.ModuleList(Block() for _ in range(n_layer))
            self.ln_f = nn.LayerNorm(n_embd, eps=eps)
            for name, p in self.named_parameters():
                if p.dim() == 2:
                    nn.init.normal_(p, std=0.02)
                elif "ln" not in name:
                    nn.init.zeros_(p)

        def forward(self, idx, targets):
            T = idx.size(1)
            x = self.wte(idx) + self.wpe(torch.arange(T))
            for blk in self.h:
                x = blk(x)
            logits = F.linear(self.ln_f(x), self.wte.weight)  # tied
            return F.cross_entropy(logits.view(-1, vocab), targets.view(-1))

    model = GPT()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)
    g = torch.Generator().manual_seed(args.seed)
    data = torch.randint(0, vocab, (args.batch, args.seq + 1), generator=g)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()

    blas = loaded_blas()
    blas.sort(key=lambda p: "openblas" not in p)
    blas_name = ", ".join(os.path.basename(p) for p in blas) or "unknown"
    blas_info = "?"
    for part in torch.__config__.show().replace(",", "\n").splitlines():
        if "BLAS_INFO=" in part:
            blas_info = part.split("=", 1)[1].strip()
    if any(os.path.basename(p).startswith("libblas.so") for p in blas) and not any("openblas" in p for p in blas):
        print("torch_twin: WARNING: torch is using the reference BLAS (slow); run "
              "scripts/install_python_deps.sh and pass --blas-dir", file=sys.stderr)

    try:
        load_before = os.getloadavg()[0]
    except OSError:
        load_before = None
    times, losses = [], []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if args.bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(x, y)
        else:
            loss = model(x, y)
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        losses.append(loss.item())
        if i >= args.warmup:
            times.append(dt)

    step = statistics.median(times)
    tokens = args.batch * args.seq
    print(json.dumps({
        "impl": "pytorch",
        "precision": "bf16 autocast" if args.bf16 else "fp32",
        "tokens_per_s_median": round(tokens / step, 2),
        "step_s_median": round(step, 6),
        "step_s_min": round(min(times), 6),
        "steps": args.steps,
        "warmup": args.warmup,
        "batch": args.batch,
        "seq": args.seq,
        "threads": torch.get_num_threads(),
        "params": n_params,
        "attention": "sdpa" if have_sdpa else "manual",
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "torch": torch.__version__,
        "blas": f"{blas_info} ({blas_name})",
        "blas_path": next((p for p in blas if "openblas" in p), blas[0] if blas else None),
        "loadavg_1m_before": round(load_before, 2) if load_before is not None else None,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
