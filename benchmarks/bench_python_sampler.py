#!/usr/bin/python3
"""The doremi package's WeightedDomainSampler beside HuggingFace `datasets` sampling domains by weight, on the
same data, from Python.

Peer: as the public DoReMi implementation builds its training stream: one `datasets` dataset per domain
(save_to_disk folders, load_from_disk), each turned into an IterableDataset, mixed by
`datasets.interleave_datasets(..., probabilities=weights, seed=seed, stopping_strategy="all_exhausted")`,
rows collected into batches of B (NumPy int32). Ours: doremi.WeightedDomainSampler on the same folders (the library
reads the Arrow files itself), batches of B x T int32 inputs/targets and domain ids.

Measured (median of --repeats runs each):
  throughput      sequences per second over --seconds of iteration (after a warm-up batch)
  resume          time from a saved state at step --resume-step to the first batch after it:
                    ours: WeightedDomainSampler(...) + load_state_dict(state) + next()
                    HF:   interleave_datasets(...) + load_state_dict(state) + next()  (IterableDataset.state_dict,
                          datasets >= 2.18), and, as HF Trainer resumes a stream by default, by skipping
                          the steps' batches (measured over --skip-measure steps and scaled, printed as such)

usage: bench_python_sampler.py [--domains 8] [--rows 4000] [--seq-len 1024] [--batch 8] [--seconds 3]
                               [--repeats 3] [--resume-step 100000] [--workdir DIR]
Needs the doremi package (pip install ./python) and datasets (scripts/install_python_deps.sh).
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

import datasets
import doremi

datasets.disable_progress_bars()


def make_data(root, domains, rows, seq_len, seed=0):
    """<root>/train/<domain>/ save_to_disk folders of `rows` chunks of seq_len + 1 tokens (int32 input_ids)."""
    rng = np.random.default_rng(seed)
    names = [f"domain{d:02d}" for d in range(domains)]
    for name in names:
        ids = rng.integers(0, 50000, size=(rows, seq_len + 1), dtype=np.int32)
        feats = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32"))})
        datasets.Dataset.from_dict({"input_ids": list(ids)}, features=feats).save_to_disk(
            os.path.join(root, "train", name))
    return names


def hf_stream(root, names, weights, seed):
    parts = [datasets.load_from_disk(os.path.join(root, "train", n)).to_iterable_dataset(num_shards=1)
             for n in names]
    # No output format: rows come as Python lists (with_format("numpy") measured 3-4x slower per row here).
    return datasets.interleave_datasets(parts, probabilities=list(weights), seed=seed,
                                        stopping_strategy="all_exhausted")


def hf_batches(ds, B):
    """Batches of B rows: inputs [B, T], targets [B, T] (the same layout as ours)."""
    it = iter(ds)
    while True:
        rows = np.asarray([next(it)["input_ids"] for _ in range(B)], dtype=np.int32)
        yield rows[:, :-1], rows[:, 1:]


def rate(next_batch, B, seconds):
    next_batch()  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        next_batch()
        n += B
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--domains", type=int, default=8)
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--resume-step", type=int, default=100000)
    ap.add_argument("--skip-measure", type=int, default=500, help="HF steps skipped to time skipping")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()

    work = a.workdir or tempfile.mkdtemp(prefix="bench-python-sampler-")
    B, T, seed = a.batch, a.seq_len, 1
    try:
        names = make_data(work, a.domains, a.rows, T)
        rng = np.random.default_rng(3)
        weights = rng.random(a.domains) + 0.1
        weights /= weights.sum()
        print(f"data: {a.domains} domains x {a.rows} rows of {T + 1} tokens (save_to_disk, int32); "
              f"B={B}, T={T}; {a.repeats} runs each, median")

        # ---- throughput ----
        ours, hf = [], []
        for _ in range(a.repeats):
            s = doremi.WeightedDomainSampler(work, weights, B, T, seed)
            ours.append(rate(s.next, B, a.seconds))
            g = hf_batches(hf_stream(work, names, weights, seed), B)
            hf.append(rate(lambda: next(g), B, a.seconds))
        o, h = statistics.median(ours), statistics.median(hf)
        print(f"throughput  doremi {o:12.0f} seq/s   HF interleave_datasets {h:10.0f} seq/s   ratio {o / h:8.1f}x")

        # ---- resume at step N ----
        N = a.resume_step
        s = doremi.WeightedDomainSampler(work, weights, B, T, seed)
        t0 = time.perf_counter()
        s.skip(N)
        reach = time.perf_counter() - t0
        state = s.state_dict()
        expected = s.next()
        ours = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            r = doremi.WeightedDomainSampler(work, [1.0] * a.domains, B, T, seed)
            r.load_state_dict(state)
            b = r.next()
            ours.append(time.perf_counter() - t0)
            assert np.array_equal(b.inputs, expected.inputs), "resumed stream differs"
        o = statistics.median(ours)

        # HF: the state after N steps needs N*B rows iterated; time a prefix and scale (skipping is linear)
        K = min(a.skip_measure, N)
        ds = hf_stream(work, names, weights, seed)
        it = iter(ds)
        t0 = time.perf_counter()
        for _ in range(K * B):
            next(it)
        skip_rate = K / (time.perf_counter() - t0)
        hf_skip = N / skip_rate
        # HF's own state_dict resume, at the step reached here (K); its cost does not grow with N for
        # Arrow-backed iterables beyond re-reading the shard position (measured at K, printed as such)
        ds = hf_stream(work, names, weights, seed)
        it = iter(ds)
        for _ in range(K * B):
            next(it)
        hf_state = ds.state_dict()
        want = np.asarray(next(it)["input_ids"])
        hs = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            d2 = hf_stream(work, names, weights, seed)
            d2.load_state_dict(hf_state)
            got = np.asarray(next(iter(d2))["input_ids"])
            hs.append(time.perf_counter() - t0)
        hf_resume_ok = np.array_equal(got, want)
        h = statistics.median(hs)
        print(f"resume at step {N}: doremi load_state_dict + next {o * 1e3:.2f} ms "
              f"(reaching step {N} by drawing took {reach:.1f} s)")
        print(f"  HF skipping {N} steps as Trainer does: {hf_skip:.1f} s (measured {K} steps at {skip_rate:.0f} "
              f"steps/s, scaled)   ratio {hf_skip / o:.0f}x")
        print(f"  HF IterableDataset.load_state_dict + next at step {K}: {h * 1e3:.1f} ms "
              f"(resumed stream {'identical' if hf_resume_ok else 'DIFFERENT'})   ratio {h / o:.1f}x")
    finally:
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
