#!/usr/bin/python3
"""A PyTorch twin of the library's DRO proxy run (docs/algorithm.md, "The domain-weight update").

usage: dro_parity.py DIR [--rtol 1e-4] [--score-floor 1e-3] [--threads 2] [--perturb NAME] [--quiet]

DIR is written by tests/test_dro_parity.cpp:

  proxy_init/, reference/      checkpoints (config.json, model.safetensors) that
                               GPTNeoXForCausalLM.from_pretrained loads
  batches.safetensors          int32 input_ids, targets [steps*accum, B, T]
                               (targets -1 = padding), int32 domain [steps*accum, B]
  run.json                     domains, initial_weights, sampling_weights, eta,
                               smoothing, initial_score, steps, grad_accum, lr
                               (one value per step), schedule, adamw, max_grad_norm
  library_metrics.jsonl        the library's StepStats.to_json() per step
  proxy_final/                 (optional) the library's proxy after the last step
  out/avg_domain_weights.json  (optional) the library's written average weights

The twin follows the spec, not the C++ code: per-token cross-entropy of the
proxy (with gradients) and of the frozen reference (float32, eager attention,
ignore_index -1); excess e = max(l_proxy - l_ref, 0); per-domain means over
the step's tokens of all micro-batches, absent domains keep their score;
log-space exponentiated-gradient step, softmax, smoothing, running average
(alpha_0 counts once); importance-corrected loss weights
w_i = (alpha_i/s_i) / sum_j(alpha_j/s_j) from the *updated* alpha;
L = sum w[d]*l / sum w[d] over all the step's tokens, backward per
micro-batch; torch.nn.utils.clip_grad_norm_; torch.optim.AdamW with weight
decay off for biases and LayerNorm weights (HF Trainer's rule, via
transformers' own get_parameter_names) at the schedule's learning rate
(recomputed here from the spec's formula and checked against run.json).

Compared per step with the library's metrics: loss (the weighted L),
mean_loss, reference_loss, scores, alpha, avg_alpha, grad_norm, lr,
domain_loss, domain_reference_loss (relative to max(|twin|, floor)), and
domain_tokens (exactly). Then the final parameters (normwise relative per
tensor) and avg_domain_weights.json. The floor is 1e-12 everywhere except for
the scores, where it is --score-floor (default 1e-3 nats): a score is a mean of
clipped differences of two float32 losses of size ~1..6 nats, so its absolute
rounding error is ~1e-7..1e-6 whatever its size, and a score near zero (a
domain the reference predicts no better than the proxy) has no meaningful
relative error below that floor.

--perturb NAME deliberately breaks the twin (to check that the comparison has
the power to see such a mistake; the run must then FAIL): stale-alpha (loss
weighted with the pre-update alpha), no-importance (w = alpha), token-mean
(loss normalised by the token count instead of the summed weights),
zero-absent (absent domains get score 0), decay-all (weight decay on every
parameter), per-micro (scores and alpha updated per micro-batch, as the public
implementation does).

Exit status: 0 when everything agrees within rtol, 1 otherwise, 2 on bad usage.
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import neox_common as nc  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

PERTURBATIONS = ("none", "stale-alpha", "no-importance", "token-mean", "zero-absent", "decay-all", "per-micro")


def spec_lr(step, sched):
    """docs/algorithm.md's schedules (0-based step about to be taken)."""
    kind = sched["kind"]
    peak, end = float(sched["peak_lr"]), float(sched["end_lr"])
    w, T = int(sched["warmup_steps"]), int(sched["total_steps"])
    t = min(step, T)
    if t < w:
        return 1e-7 + (peak - 1e-7) * t / w
    if kind == "constant":
        return peak
    if kind == "linear":
        return peak + (end - peak) * (t - w) / max(T - w, 1)
    if kind == "cosine":
        return end + (peak - end) * (1 + math.cos(math.pi * (t - w) / (T - w))) / 2
    if kind == "linear_warmup_exponential":
        if peak == end:
            return end
        if T == w:
            return end + 1e-10
        gamma = (1e-10 / (peak - end)) ** (1.0 / (T - w))  # (peak - end) * gamma^(T-w) = 1e-10
        return end + (peak - end) * gamma ** (t - w)
    raise ValueError(f"unknown schedule kind {kind!r}")


def token_losses(model, ids, targets):
    logits = model(input_ids=ids, use_cache=False, return_dict=True).logits
    B, T, V = logits.shape
    return F.cross_entropy(logits.reshape(B * T, V).float(), targets.reshape(-1), ignore_index=nc.IGNORE,
                           reduction="none").view(B, T)


def rel_err(a, b, floor):
    """max over elements of |a - b| / max(|b|, floor); b = the twin."""
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape:
        return math.inf
    d = ((a - b).abs() / torch.clamp(b.abs(), min=floor))
    if not bool(torch.isfinite(d).all()):
        return math.inf
    return float(d.max()) if d.numel() else 0.0


class Twin:
    """The DRO state of Algorithm 1, in float64."""

    def __init__(self, run, perturb):
        self.k = len(run["domains"])
        a0 = torch.tensor(run["initial_weights"], dtype=torch.float64)
        s = torch.tensor(run["sampling_weights"], dtype=torch.float64)
        self.alpha = a0 / a0.sum()
        self.sampling = s / s.sum()
        self.scores = torch.full((self.k,), float(run["initial_score"]), dtype=torch.float64)
        self.avg = self.alpha.clone()
        self.count = 1
        self.eta, self.c = float(run["eta"]), float(run["smoothing"])
        self.perturb = perturb

    def update(self, excess_sum, tokens):
        present = tokens > 0
        self.scores = torch.where(present, excess_sum / torch.clamp(tokens, min=1), self.scores)
        if self.perturb == "zero-absent":
            self.scores = torch.where(present, self.scores, torch.zeros_like(self.scores))
        logits = torch.log(self.alpha) + self.eta * self.scores
        new = torch.exp(logits - torch.logsumexp(logits, 0))
        self.alpha = (1 - self.c) * new + self.c / self.k
        self.count += 1
        self.avg = (self.avg * (self.count - 1) + self.alpha) / self.count

    def loss_weights(self, alpha=None):
        a = self.alpha if alpha is None else alpha
        if self.perturb == "no-importance":
            return a / a.sum()
        r = a / self.sampling
        return r / r.sum()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--score-floor", type=float, default=1e-3,
                    help="floor (nats) of the denominator for the scores' relative error (default 1e-3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--perturb", choices=PERTURBATIONS, default="none")
    ap.add_argument("--quiet", action="store_true", help="no per-step table")
    ap.add_argument("--write-final", metavar="FILE", help="also save the twin's final parameters (safetensors)")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(0)
    d = args.dir

    failures = []

    def fail(msg):
        failures.append(msg)

    for f in ("run.json", "batches.safetensors", "library_metrics.jsonl", "proxy_init/config.json",
              "reference/config.json"):
        if not os.path.isfile(os.path.join(d, f)):
            print(f"dro parity: FAIL: {os.path.join(d, f)} missing")
            return 1
    run = nc.read_json(os.path.join(d, "run.json"))
    with open(os.path.join(d, "library_metrics.jsonl")) as f:
        lib = [json.loads(line) for line in f if line.strip()]
    b = nc.load_file(os.path.join(d, "batches.safetensors"))
    ids, tgt, dom = b["input_ids"].long(), b["targets"].long(), b["domain"].long()
    steps, accum, k = int(run["steps"]), int(run["grad_accum"]), len(run["domains"])
    if ids.shape[0] != steps * accum or tgt.shape != ids.shape or dom.shape != ids.shape[:2]:
        print(f"dro parity: FAIL: batch shapes {tuple(ids.shape)} {tuple(tgt.shape)} {tuple(dom.shape)} "
              f"do not fit {steps} steps x {accum} micro-batches")
        return 1
    if len(lib) != steps:
        print(f"dro parity: FAIL: library_metrics.jsonl has {len(lib)} steps, run.json says {steps}")
        return 1
    if int(dom.min()) < 0 or int(dom.max()) >= k:
        print(f"dro parity: FAIL: domain ids outside [0, {k})")
        return 1

    try:
        proxy, _ = nc.load_model(os.path.join(d, "proxy_init"))
        ref, _ = nc.load_model(os.path.join(d, "reference"))
    except Exception as e:  # noqa: BLE001 - a load failure is a parity failure
        print(f"dro parity: FAIL: transformers could not load the checkpoints: {type(e).__name__}: {e}")
        return 1
    proxy.train()  # dropout is 0 in these configs; train() as the Trainer would
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    V = proxy.config.vocab_size
    lam0 = math.log(V)
    if not math.isclose(lam0, float(run["initial_score"]), rel_tol=1e-12):
        fail(f"initial_score {run['initial_score']} != ln(vocab_size {V}) = {lam0}")

    # HF Trainer's grouping: no decay for biases and nn.LayerNorm parameters.
    from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
    from transformers.trainer_pt_utils import get_parameter_names
    decay_names = {n for n in get_parameter_names(proxy, ALL_LAYERNORM_LAYERS) if "bias" not in n}
    if args.perturb == "decay-all":
        decay_names = {n for n, _ in proxy.named_parameters()}
    adam = run["adamw"]
    named = list(proxy.named_parameters())
    groups = [{"params": [p for n, p in named if n in decay_names], "weight_decay": float(adam["weight_decay"])},
              {"params": [p for n, p in named if n not in decay_names], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=float(run["lr"][0]), betas=(float(adam["beta1"]), float(adam["beta2"])),
                            eps=float(adam["eps"]), weight_decay=float(adam["weight_decay"]))
    params = [p for _, p in named]
    max_norm = float(run["max_grad_norm"])

    twin = Twin(run, args.perturb)
    floors = {"loss": 1e-12, "mean_loss": 1e-12, "reference_loss": 1e-12, "scores": args.score_floor,
              "alpha": 1e-12, "avg_alpha": 1e-12, "grad_norm": 1e-12, "lr": 1e-30, "domain_loss": 1e-12,
              "domain_reference_loss": 1e-12}
    worst = {q: (0.0, 0) for q in floors}
    rows = []
    clipped = 0
    absent_total = 0
    score_abs = 0.0
    for step in range(steps):
        lo, hi = step * accum, (step + 1) * accum
        # Steps 2-4: losses of every micro-batch of the step (proxy with graph).
        losses, masks, doms = [], [], []
        excess = torch.zeros(k, dtype=torch.float64)
        count = torch.zeros(k, dtype=torch.float64)
        psum = torch.zeros(k, dtype=torch.float64)
        rsum = torch.zeros(k, dtype=torch.float64)
        for m in range(lo, hi):
            with torch.no_grad():
                lr_ = token_losses(ref, ids[m], tgt[m])
            lp = token_losses(proxy, ids[m], tgt[m])
            mask = tgt[m] != nc.IGNORE
            dtok = dom[m].unsqueeze(1).expand_as(tgt[m])
            lp64, lr64 = lp.detach().double(), lr_.double()
            e = torch.clamp(lp64 - lr64, min=0.0)
            sel = dtok[mask]
            excess.index_add_(0, sel, e[mask])
            count.index_add_(0, sel, torch.ones_like(e[mask]))
            psum.index_add_(0, sel, lp64[mask])
            rsum.index_add_(0, sel, lr64[mask])
            losses.append(lp)
            masks.append(mask)
            doms.append(dtok)
            if args.perturb == "per-micro":
                # The public implementation's lazy update: alpha moves after each micro-batch.
                em, cm = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
                em.index_add_(0, sel, e[mask])
                cm.index_add_(0, sel, torch.ones_like(e[mask]))
                twin.update(em, cm)
        absent = int((count == 0).sum())
        absent_total += absent
        old_alpha = twin.alpha.clone()
        # Steps 5-6.
        if args.perturb != "per-micro":
            twin.update(excess, count)
        # Step 7 with the updated alpha (one weight vector for every micro-batch).
        w = twin.loss_weights(old_alpha if args.perturb == "stale-alpha" else None)
        tok_w = [torch.where(mk, w[dt], torch.zeros((), dtype=torch.float64)) for mk, dt in zip(masks, doms)]
        denom = float(sum(t.sum() for t in tok_w))
        total_tokens = float(sum(mk.sum() for mk in masks))
        if args.perturb == "token-mean":
            denom = total_tokens
        weighted = sum(float((tw * l.detach().double()).sum()) for tw, l in zip(tok_w, losses))
        L = weighted / denom
        opt.zero_grad(set_to_none=True)
        for tw, l in zip(tok_w, losses):
            ((tw / denom).float() * l).sum().backward()
        gn = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        clipped += gn > max_norm
        lr = spec_lr(step, run["schedule"])
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()

        zero = torch.zeros(k, dtype=torch.float64)
        mine = {"loss": L, "mean_loss": float(psum.sum()) / total_tokens,
                "reference_loss": float(rsum.sum()) / total_tokens, "scores": twin.scores.tolist(),
                "alpha": twin.alpha.tolist(), "avg_alpha": twin.avg.tolist(), "grad_norm": gn, "lr": lr,
                "domain_loss": torch.where(count > 0, psum / torch.clamp(count, min=1), zero).tolist(),
                "domain_reference_loss": torch.where(count > 0, rsum / torch.clamp(count, min=1), zero).tolist()}
        theirs = lib[step]
        if int(theirs.get("step", -1)) != step + 1:
            fail(f"library_metrics.jsonl line {step + 1} is step {theirs.get('step')}")
        if theirs.get("domains") != run["domains"]:
            fail(f"step {step + 1}: library domains {theirs.get('domains')} != run.json {run['domains']}")
        if [float(x) for x in theirs.get("domain_tokens", [])] != count.tolist():
            fail(f"step {step + 1}: domain_tokens {theirs.get('domain_tokens')} != {count.tolist()}")
        if not math.isclose(float(run["lr"][step]), lr, rel_tol=1e-12):
            fail(f"step {step + 1}: run.json lr {run['lr'][step]} != the spec's schedule {lr}")
        row = {}
        for q, floor in floors.items():
            if q not in theirs:
                fail(f"step {step + 1}: library metrics lack {q!r}")
                row[q] = math.inf
                continue
            r = rel_err(theirs[q], mine[q], floor)
            row[q] = r
            if r > worst[q][0] or not math.isfinite(r):
                worst[q] = (r, step + 1)
            if not r <= args.rtol:
                fail(f"step {step + 1}: {q}: library {theirs[q]} vs twin {mine[q]} (relative {r:.3g})")
        if len(theirs.get("scores", [])) == k:
            lib_scores = torch.tensor(theirs["scores"], dtype=torch.float64)
            score_abs = max(score_abs, float((lib_scores - twin.scores).abs().max()))
        rows.append((step + 1, lr, gn > max_norm, absent, row))

    print(f"dro parity: {d}: {nc.versions()}; {steps} steps x {accum} micro-batches of "
          f"{tuple(ids.shape[1:])}, {k} domains {run['domains']}, sampling {twin.sampling.numpy().round(4).tolist()}, "
          f"eta {twin.eta}, c {twin.c}, lambda0 {lam0:.6f}; {clipped} of {steps} steps clipped at {max_norm}; "
          f"{absent_total} (step, domain) absences; perturb={args.perturb}")
    if not args.quiet:
        short = {"loss": "loss", "mean_loss": "mean", "reference_loss": "ref", "scores": "scores",
                 "alpha": "alpha", "avg_alpha": "avg", "grad_norm": "gnorm", "lr": "lr",
                 "domain_loss": "dloss", "domain_reference_loss": "dref"}
        print("  max relative difference, library vs twin (scores: floor %g nats)" % args.score_floor)
        print(f"  {'step':>4} {'lr':>9} {'clip':>4} {'abs':>3} " + " ".join(f"{short[q]:>8}" for q in floors))
        for s, lr, clip, absent, row in rows:
            print(f"  {s:>4} {lr:9.3e} {'y' if clip else '':>4} {absent:>3} " +
                  " ".join(f"{row[q]:8.1e}" for q in floors))

    # The final parameters.
    if args.write_final:
        nc.save_file({n: p.detach().contiguous() for n, p in proxy.named_parameters()}, args.write_final)
    final_path = os.path.join(d, "proxy_final", "model.safetensors")
    if os.path.isfile(final_path):
        theirs = nc.load_file(final_path)
        sd = proxy.state_dict()
        worst_p = (0.0, "")
        null_drift = 0.0
        cfg = proxy.config
        head = cfg.hidden_size // cfg.num_attention_heads
        rot = int(head * cfg.rotary_pct)
        for name, t in theirs.items():
            if name not in sd:
                fail(f"proxy_final: tensor {name!r} is not a parameter of the twin")
                continue
            mine = sd[name].detach().double()
            t = t.double()
            if tuple(t.shape) != tuple(mine.shape):
                fail(f"proxy_final: {name} shape {tuple(t.shape)} != {tuple(mine.shape)}")
                continue
            if name.endswith("attention.query_key_value.bias"):
                # The key bias outside the rotary dims adds the same q.b to every
                # score of a query row, which the softmax ignores: its gradient
                # is exactly 0 and what either side computes there is rounding
                # noise that Adam normalises into steps. Compared apart.
                null = torch.zeros(cfg.num_attention_heads, 3, head, dtype=torch.bool)
                null[:, 1, rot:] = True
                null = null.reshape(-1)
                null_drift = max(null_drift, float((t - mine)[null].abs().max()))
                t, mine = t[~null], mine[~null]
            r = float((t - mine).norm() / max(float(mine.norm()), 1e-30))
            if r > worst_p[0] or not math.isfinite(r):
                worst_p = (r, name)
            if not r <= args.rtol:
                fail(f"proxy_final: {name}: normwise relative difference {r:.3g}")
        print(f"  final parameters: worst normwise relative difference {worst_p[0]:.2e} ({worst_p[1]}); "
              f"key biases outside the rotary dims (zero gradient, not compared): max |diff| {null_drift:.1e}")
    avg_path = os.path.join(d, "out", "avg_domain_weights.json")
    if os.path.isfile(avg_path):
        written = nc.read_json(avg_path)
        r = rel_err([written.get(n, math.nan) for n in run["domains"]], twin.avg.tolist(), 1e-12)
        print(f"  avg_domain_weights.json: max relative difference {r:.2e}")
        if not r <= args.rtol:
            fail(f"avg_domain_weights.json {written} vs twin {dict(zip(run['domains'], twin.avg.tolist()))}")

    print("  worst over the steps: " + ", ".join(f"{q} {v:.2e} (step {s})" for q, (v, s) in worst.items()))
    print(f"  scores: max |library - twin| {score_abs:.2e} nats over all steps")
    print("  twin's final avg_alpha: " + ", ".join(f"{n} {a:.6f}" for n, a in zip(run["domains"], twin.avg.tolist())))
    if failures:
        print(f"dro parity: FAIL ({len(failures)} mismatches; rtol {args.rtol:g})")
        for f in failures[:12]:
            print(f"  {f}")
        return 1
    print(f"dro parity: OK (rtol {args.rtol:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
