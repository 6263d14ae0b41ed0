#!/usr/bin/env python3
"""HF `tokenizers` side of bench_tokenizer: single-threaded encode throughput.

Usage: hf_tokenizer_bench.py TOKENIZER_JSON DOCS_FILE [--reps 5]

DOCS_FILE holds UTF-8 documents separated by NUL bytes. Each repetition
encodes every document once, in two ways, both on one thread
(RAYON_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false, set before the import):
  loop   [tok.encode(d) for d in docs]
  batch  tok.encode_batch(docs)  (rayon pool of one thread: no Python loop overhead)
Prints one JSON line: seconds per repetition for each way, the total token
count and the CRC-32 of all ids (int32 little-endian), for the C++ side to
check that both produced the same ids.
"""
import os

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import array  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402

import tokenizers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tokenizer")
    ap.add_argument("docs")
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    tok = Tokenizer.from_file(a.tokenizer)
    with open(a.docs, "rb") as f:
        docs = f.read().decode("utf-8").split("\0")

    loop, batch = [], []
    ids = None
    for rep in range(a.reps + 1):  # the first repetition warms up
        t = time.perf_counter()
        encs = [tok.encode(d) for d in docs]
        dt_loop = time.perf_counter() - t
        t = time.perf_counter()
        tok.encode_batch(docs)
        dt_batch = time.perf_counter() - t
        if rep > 0:
            loop.append(dt_loop)
            batch.append(dt_batch)
        if ids is None:
            ids = array.array("i")
            for e in encs:
                ids.extend(e.ids)
    if sys.byteorder != "little":
        ids.byteswap()
    print(
        json.dumps(
            {
                "tokenizers": tokenizers.__version__,
                "loop_s": loop,
                "batch_s": batch,
                "tokens": len(ids),
                "crc32": zlib.crc32(ids.tobytes()),
            }
        )
    )


if __name__ == "__main__":
    main()
