#!/usr/bin/python3
"""Parity of the C++ library's GPT-NeoX against transformers.GPTNeoXForCausalLM.

usage: gptneox_parity.py DIR [--rtol 1e-5] [--float64] [--write-reference OUT] [--threads N]

DIR holds config.json, model.safetensors, batch.safetensors and (unless only
--write-reference is asked for) outputs.safetensors, as described in
neox_common.py. The model is loaded with GPTNeoXForCausalLM.from_pretrained(DIR)
(eager attention), so this also proves transformers can read the checkpoint.
HF computes per-token cross-entropy (ignore_index -1), L = sum(weights * loss)
and its gradients; every tensor is compared with the C++ one: max |a-b| and
the normwise relative error ||a-b|| / ||b|| (b = transformers).

Exit status: 0 when every relative error <= rtol, 1 when one is larger, a
tensor is missing or has the wrong shape, or the checkpoint does not load;
2 on bad usage.
"""
import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import neox_common as nc  # noqa: E402
import torch  # noqa: E402


def compare(name, a, b):
    a64, b64 = a.double(), b.double()
    diff = a64 - b64
    max_abs = diff.abs().max().item() if diff.numel() else 0.0
    nb = b64.norm().item()
    nd = diff.norm().item()
    rel = nd / nb if nb > 0 else (0.0 if nd == 0 else math.inf)
    if not (math.isfinite(max_abs) and math.isfinite(nd)):
        rel = math.inf
    return max_abs, rel, nb


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--rtol", type=float, default=1e-5, help="max normwise relative error (default 1e-5)")
    ap.add_argument("--float64", action="store_true",
                    help="compute the transformers side in float64 (from the fp32 weights)")
    ap.add_argument("--write-reference", metavar="OUT",
                    help="also write transformers' losses and gradients to OUT (outputs.safetensors format)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quiet", action="store_true", help="print only failures and the summary line")
    args = ap.parse_args(argv)

    torch.set_num_threads(max(1, args.threads))
    d = args.dir
    for f in ("config.json", "model.safetensors", "batch.safetensors"):
        if not os.path.isfile(os.path.join(d, f)):
            print(f"parity: FAIL: {os.path.join(d, f)} missing")
            return 1
    cfg = nc.read_json(os.path.join(d, "config.json"))
    problems = nc.check_config_consistency(cfg)
    if problems:
        for p in problems:
            print(f"parity: FAIL: {p}")
        return 1

    with nc.safe_open(os.path.join(d, "model.safetensors"), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "pt":
        print('parity: FAIL: model.safetensors needs "__metadata__": {"format": "pt"} in its header '
              f"(transformers {nc.transformers.__version__} refuses the file without it; found {meta})")
        return 1

    dtype = torch.float64 if args.float64 else torch.float32
    try:
        model, _ = nc.load_model(d, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - report any load failure as a parity failure
        print(f"parity: FAIL: transformers could not load {d}: {type(e).__name__}: {e}")
        return 1
    model = model.to(dtype)
    try:
        ids, tgt, w = nc.load_batch(d)
    except Exception as e:  # noqa: BLE001
        print(f"parity: FAIL: batch.safetensors: {e}")
        return 1
    c = model.config
    if int(ids.max()) >= c.vocab_size or int(ids.min()) < 0:
        print(f"parity: FAIL: input_ids outside [0, {c.vocab_size})")
        return 1
    if ids.shape[1] > c.max_position_embeddings:
        print(f"parity: FAIL: sequence length {ids.shape[1]} > max_position_embeddings {c.max_position_embeddings}")
        return 1

    losses, L, grads = nc.losses_and_grads(model, ids, tgt, w)
    if args.write_reference:
        nc.save_outputs(args.write_reference, losses, grads)
        print(f"parity: wrote transformers' losses and {len(grads)} gradients to {args.write_reference}")

    out_path = os.path.join(d, "outputs.safetensors")
    if not os.path.isfile(out_path):
        if args.write_reference:
            return 0
        print(f"parity: FAIL: {out_path} missing")
        return 1
    ours = nc.load_file(out_path)

    head = (f"parity: {d}: {nc.versions()}, {str(dtype).replace('torch.', '')}, "
            f"{c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} heads, "
            f"vocab {c.vocab_size}, rotary_pct {c.rotary_pct}, {c.hidden_act}, "
            f"{'parallel' if c.use_parallel_residual else 'sequential'} residual, "
            f"{'tied' if c.tie_word_embeddings else 'untied'}; batch {tuple(ids.shape)}, "
            f"{int((tgt != nc.IGNORE).sum())} scored tokens")
    print(head)

    ref = {"losses": losses}
    ref.update(grads)
    rows, failures = [], []
    for name, b in ref.items():
        if name not in ours:
            rows.append((name, tuple(b.shape), None, None, "MISSING"))
            failures.append(f"{name}: missing from outputs.safetensors")
            continue
        a = ours[name]
        if tuple(a.shape) != tuple(b.shape):
            rows.append((name, tuple(b.shape), None, None, f"SHAPE {tuple(a.shape)}"))
            failures.append(f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}")
            continue
        max_abs, rel, _ = compare(name, a, b)
        ok = rel <= args.rtol
        rows.append((name, tuple(b.shape), max_abs, rel, "ok" if ok else "FAIL"))
        if not ok:
            failures.append(f"{name}: relative error {rel:.3g} > {args.rtol:g}")
    extra = sorted(set(ours) - set(ref))

    if "losses" in ours and tuple(ours["losses"].shape) == tuple(losses.shape):
        L_ours = float((w.double() * ours["losses"].double())[tgt != nc.IGNORE].sum())
        print(f"  L = sum(weights * losses): transformers {float(L):.9g}, outputs.safetensors {L_ours:.9g}")
    width = max(len(r[0]) for r in rows)
    print(f"  {'tensor':<{width}}  {'shape':<14} {'max|a-b|':>10} {'||a-b||/||b||':>13}")
    for name, shape, max_abs, rel, status in rows:
        if args.quiet and status == "ok":
            continue
        ma = f"{max_abs:10.3e}" if max_abs is not None else f"{'-':>10}"
        re_ = f"{rel:13.3e}" if rel is not None else f"{'-':>13}"
        print(f"  {name:<{width}}  {str(list(shape)):<14} {ma} {re_}  {status}")
    for name in extra:
        print(f"  note: outputs.safetensors has {name!r}, which is not a parameter here (ignored)")
    worst = max((r[3] for r in rows if r[3] is not None), default=0.0)
    if failures:
        print(f"parity: FAIL ({len(failures)} of {len(rows)} tensors; rtol {args.rtol:g}; worst {worst:.3g})")
        for f in failures[:10]:
            print(f"  {f}")
        return 1
    print(f"parity: OK ({len(rows)} tensors, worst relative error {worst:.3g} <= {args.rtol:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
