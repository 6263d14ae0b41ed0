#!/usr/bin/env python3
"""Reference values from PyTorch for tests/test_optim.cpp.

Prints JSON: torch.optim.AdamW trajectories (decay and no-decay param groups,
a different lr every step, as a scheduler sets it) and
torch.nn.utils.clip_grad_norm_ results, in float64 and float32. Inputs are
generated here and printed too, rounded to the dtype, so the C++ side reads
exactly the numbers PyTorch started from.
"""
import json
import math

import torch

torch.set_num_threads(1)

# The flat buffer the C++ side sees: w1 (decay) | b1 (no decay) | w2 (decay).
SIZES = [("w1", 4, True), ("b1", 3, False), ("w2", 5, True)]
STEPS = 5
LRS = [1e-3, 5e-2, 2e-2, 1e-1, 3e-3]

CONFIGS = [
    # The public 120M run's hyper-parameters (docs/algorithm.md).
    dict(lr=1e-3, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.01),
    # Stronger decay and other betas, so every term shows in the result.
    dict(lr=1e-3, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=0.3),
]


def initial_param(i):
    return 0.5 * math.cos(0.37 * i + 0.1)


def grad(i, step):
    g = math.sin(1.3 * i + 0.7 * step)
    if i % 6 == 5:
        g *= 1e-8  # gradients near eps exercise the denominator
    if i == 2 and step == 1:
        g = 0.0
    return g


def listed(t):
    return [float(x) for x in t.flatten().tolist()]


def adamw_case(dtype, config):
    n = sum(size for _, size, _ in SIZES)
    flat = torch.tensor([initial_param(i) for i in range(n)], dtype=dtype)
    tensors, offset, groups = [], 0, []
    for _, size, decay in SIZES:
        tensors.append(flat[offset:offset + size].clone().requires_grad_(True))
        groups.append([offset, size, decay])
        offset += size
    decayed = [t for t, (_, _, d) in zip(tensors, SIZES) if d]
    undecayed = [t for t, (_, _, d) in zip(tensors, SIZES) if not d]
    opt = torch.optim.AdamW(
        [dict(params=decayed, weight_decay=config["weight_decay"]),
         dict(params=undecayed, weight_decay=0.0)],
        lr=config["lr"], betas=(config["beta1"], config["beta2"]), eps=config["eps"])

    grads, params = [], []
    for step in range(STEPS):
        g = torch.tensor([grad(i, step) for i in range(n)], dtype=dtype)
        grads.append(listed(g))
        offset = 0
        for t, (_, size, _) in zip(tensors, SIZES):
            t.grad = g[offset:offset + size].clone()
            offset += size
        for group in opt.param_groups:
            group["lr"] = LRS[step]
        opt.step()
        params.append(listed(torch.cat([t.detach() for t in tensors])))

    m = torch.cat([opt.state[t]["exp_avg"] for t in tensors])
    v = torch.cat([opt.state[t]["exp_avg_sq"] for t in tensors])
    return dict(dtype=str(dtype).replace("torch.", ""), config=config, groups=groups,
                lrs=LRS, params0=listed(flat), grads=grads, params=params,
                exp_avg=listed(m), exp_avg_sq=listed(v),
                steps=int(opt.state[tensors[0]]["step"]))


def clip_case(dtype, scale, max_norm):
    sizes = [7, 1, 3000]  # several tensors: PyTorch takes the norm of norms
    tensors, offset = [], 0
    for size in sizes:
        t = torch.zeros(size, dtype=dtype, requires_grad=True)
        t.grad = torch.tensor([scale * math.sin(0.11 * (offset + i) + 0.3) for i in range(size)],
                              dtype=dtype)
        tensors.append(t)
        offset += size
    grads = listed(torch.cat([t.grad for t in tensors]))
    norm = torch.nn.utils.clip_grad_norm_(tensors, max_norm)
    return dict(dtype=str(dtype).replace("torch.", ""), max_norm=max_norm, grads=grads,
                norm=float(norm), clipped=listed(torch.cat([t.grad for t in tensors])))


def main():
    cases = [adamw_case(dtype, config) for dtype in (torch.float64, torch.float32)
             for config in CONFIGS]
    clips = [clip_case(dtype, scale, max_norm) for dtype in (torch.float64, torch.float32)
             for scale, max_norm in ((1.0, 1.0), (0.01, 1.0), (3.0, 0.5))]
    print(json.dumps(dict(torch_version=torch.__version__, adamw=cases, clip=clips)))


if __name__ == "__main__":
    main()
