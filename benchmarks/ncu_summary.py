#!/usr/bin/env python3
"""Per-kernel GPU time from an Nsight Compute CSV (gpu_check.sh --profile).

    ncu --csv --print-units base --metrics gpu__time_duration.sum PROGRAM > run.csv
    python3 benchmarks/ncu_summary.py run.csv [--top 25]

Prints the kernels by total time (share, launches, mean) and the same grouped
into the step's parts (attention, GEMMs, classifier, LayerNorm, ...), so a
profile of bench_gpu_step says where the step's time goes. Only the standard
library; lines ncu prints around the CSV ("==PROF==" and the like) are skipped.
"""
import argparse
import csv
import re
import sys
from collections import defaultdict

UNIT_NS = {"nsecond": 1.0, "ns": 1.0, "usecond": 1e3, "us": 1e3, "msecond": 1e6, "ms": 1e6, "second": 1e9, "s": 1e9}

# (part, pattern on the short kernel name), first match wins.
PARTS = [
    ("attention: rotary", r"rotary"),
    ("attention: D row dots", r"row_dot"),
    ("attention", r"attention"),
    ("classifier softmax / rows", r"classifier"),
    ("GEMM (cuBLASLt)", r"gemm|cutlass|xmma|sm\d+_|cublas|Kernel2?$|splitK|reduce_kernel"),
    ("LayerNorm", r"layernorm"),
    ("bias and parameter sums", r"column_|add_bias"),  # (GeluDout: with the GELU backward)
    ("GELU", r"gelu"),
    ("residual adds", r"^add_kernel"),
    ("fp32/bf16 conversion", r"convert"),
    ("embedding", r"embedding"),
    ("AdamW", r"adamw"),
    ("gradient norm", r"norm|cub|Reduce"),
    ("fills, copies, scaling", r"fill|scale|copy|memset"),
]


def short_name(name):
    """'void ns::foo_kernel<64, float>(float *, ...)' -> 'foo_kernel'."""
    s = re.sub(r"^(void|auto)\s+", "", name.strip())
    depth, cut = 0, len(s)
    for i, ch in enumerate(s):  # drop template arguments and parameters
        if ch in "<(":
            if depth == 0:
                cut = min(cut, i)
            depth += 1
        elif ch in ">)":
            depth -= 1
    short = s[:cut].rsplit("::", 1)[-1] or name
    if short == "column_partials_kernel":  # which sums: name the functor
        m = re.search(r"(GeluDout|StoredDout|LayerNormParamGrad|RowOf)", name)
        short += f" ({m.group(1)})" if m else ""
    return short


def part_of(short):
    for part, pattern in PARTS:
        if re.search(pattern, short):
            return part
    return "other"


def read_rows(lines):
    body = [line for line in lines if line.startswith('"')]
    if not body:
        raise SystemExit("ncu_summary: no CSV rows (was ncu run with --csv?)")
    rows = list(csv.DictReader(body))
    needed = {"Kernel Name", "Metric Name", "Metric Unit", "Metric Value"}
    if not needed <= set(rows[0].keys()):
        raise SystemExit(f"ncu_summary: the CSV lacks columns {sorted(needed - set(rows[0].keys()))}")
    out = []
    for r in rows:
        if r["Metric Name"] != "gpu__time_duration.sum":
            continue
        unit = r["Metric Unit"].strip()
        if unit not in UNIT_NS:
            raise SystemExit(f"ncu_summary: unknown time unit '{unit}' for {r['Kernel Name']}")
        value = float(r["Metric Value"].replace(",", ""))
        out.append((r["Kernel Name"], value * UNIT_NS[unit]))
    if not out:
        raise SystemExit("ncu_summary: no gpu__time_duration.sum rows (pass --metrics gpu__time_duration.sum)")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", help="ncu --csv output ('-' for standard input)")
    ap.add_argument("--top", type=int, default=25, help="kernels to list (default 25)")
    a = ap.parse_args()
    with (sys.stdin if a.csv == "-" else open(a.csv, encoding="utf-8", errors="replace")) as f:
        launches = read_rows(f.read().splitlines())

    total = sum(t for _, t in launches)
    by_kernel = defaultdict(lambda: [0.0, 0])
    by_part = defaultdict(lambda: [0.0, 0])
    for name, t in launches:
        k = short_name(name)
        by_kernel[k][0] += t
        by_kernel[k][1] += 1
        p = by_part[part_of(k)]
        p[0] += t
        p[1] += 1

    print(f"{len(launches)} kernel launches, {total / 1e6:.2f} ms of GPU time in all")
    print(f"\n{'kernel':<48} {'share':>7} {'ms':>9} {'launches':>9} {'mean us':>9}")
    for k, (t, n) in sorted(by_kernel.items(), key=lambda kv: -kv[1][0])[: a.top]:
        print(f"{k[:48]:<48} {100 * t / total:6.1f}% {t / 1e6:9.3f} {n:9d} {t / n / 1e3:9.1f}")
    print(f"\n{'part':<32} {'share':>7} {'ms':>9} {'launches':>9}")
    for p, (t, n) in sorted(by_part.items(), key=lambda kv: -kv[1][0]):
        print(f"{p:<32} {100 * t / total:6.1f}% {t / 1e6:9.3f} {n:9d}")


if __name__ == "__main__":
    main()
