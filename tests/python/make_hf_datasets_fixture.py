#!/usr/bin/python3
"""Writes HuggingFace `datasets` folders with known token lists, for the C++
ArrowSource tests, using the real `datasets.Dataset.save_to_disk` (datasets
3.2.0, pyarrow 18.1.0 from scripts/install_python_deps.sh).

Usage: make_hf_datasets_fixture.py OUT

OUT/
  data/{train,validation}/alpha/      one dataset, 2 .arrow files (num_shards=2), list<int32>
                                      input_ids after a `text` column; train has 2 record
                                      batches per file (save_to_disk writes 1000 rows a batch)
  data/{train,validation}/beta/       one dataset, list<int64> input_ids between a
                                      `domain_id` int32 and an `attention_mask` list<int8>
  data/{train,validation}/gamma/      a folder of 2 shard datasets (shard_00, shard_01), list<int32>
  extra/large_list/                   LargeList(Value("int64")) input_ids (large_list<int64>)
  extra/fixed/                        Sequence(Value("int32"), length=4) (fixed_size_list<int32>[4])
  extra/no_input_ids/                 columns `text` and `tokens`, no input_ids
  extra/wrong_type/                   input_ids is a plain int32 column
  extra/float_ids/                    input_ids is list<float>
  extra/compressed/                   alpha/validation's rows re-written by pyarrow's stream
                                      writer with LZ4-compressed bodies (datasets never does
                                      this; the reader must refuse it)
OUT/expected.json                     {"data": {split: {domain: [[ids...], ...]}},
                                       "extra": {"large_list": [...], "fixed": [...]}}

Every folder is checked by loading it back with datasets.load_from_disk.
"""
import json
import os
import sys

import datasets
import pyarrow as pa
import pyarrow.ipc

datasets.disable_progress_bars()

VOCAB = 50277


def tokens(domain_key, i):
    """Row i of a domain: a deterministic list, some rows empty, a few long."""
    n = (i * 7 + domain_key) % 13
    if i % 97 == 5:
        n = 1500 + (i % 11)  # long rows: reads that span pages
    if i % 50 == 3:
        n = 0
    return [(domain_key * 100003 + i * 31 + j * 17) % VOCAB for j in range(n)]


def save(ds, path, num_shards=None):
    ds.save_to_disk(path, num_shards=num_shards)
    back = datasets.load_from_disk(path)
    assert len(back) == len(ds), path
    if "input_ids" in ds.column_names and isinstance(ds.features["input_ids"], (datasets.Sequence, datasets.LargeList)):
        assert back["input_ids"] == ds["input_ids"], path


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    expected = {"data": {}, "extra": {}}
    seq32 = datasets.Sequence(datasets.Value("int32"))
    seq64 = datasets.Sequence(datasets.Value("int64"))
    rows = {"train": {"alpha": 2500, "beta": 1200, "gamma": (700, 300)},
            "validation": {"alpha": 40, "beta": 25, "gamma": (9, 4)}}
    for split, counts in rows.items():
        base = os.path.join(out, "data", split)
        exp = expected["data"][split] = {}
        key = 0 if split == "train" else 10

        ids = [tokens(key + 1, i) for i in range(counts["alpha"])]
        ds = datasets.Dataset.from_dict(
            {"text": [f"doc {i}" for i in range(len(ids))], "input_ids": ids},
            features=datasets.Features({"text": datasets.Value("string"), "input_ids": seq32}))
        save(ds, os.path.join(base, "alpha"), num_shards=2)
        exp["alpha"] = ids

        ids = [tokens(key + 2, i) for i in range(counts["beta"])]
        ds = datasets.Dataset.from_dict(
            {"domain_id": [1] * len(ids), "input_ids": ids, "attention_mask": [[1] * len(t) for t in ids]},
            features=datasets.Features({"domain_id": datasets.Value("int32"), "input_ids": seq64,
                                        "attention_mask": datasets.Sequence(datasets.Value("int8"))}))
        save(ds, os.path.join(base, "beta"))
        exp["beta"] = ids

        exp["gamma"] = []
        start = 0
        for s, n in enumerate(counts["gamma"]):
            ids = [tokens(key + 3, start + i) for i in range(n)]
            start += n
            ds = datasets.Dataset.from_dict({"input_ids": ids, "domain_id": [2] * n},
                                            features=datasets.Features({"input_ids": seq32,
                                                                        "domain_id": datasets.Value("int32")}))
            save(ds, os.path.join(base, "gamma", f"shard_{s:02d}"))
            exp["gamma"].extend(ids)

    extra = os.path.join(out, "extra")
    ids = [tokens(7, i) for i in range(30)]
    ds = datasets.Dataset.from_dict({"input_ids": ids},
                                    features=datasets.Features({"input_ids": datasets.LargeList(datasets.Value("int64"))}))
    save(ds, os.path.join(extra, "large_list"))
    expected["extra"]["large_list"] = ids

    ids = [[(i * 4 + j) % VOCAB for j in range(4)] for i in range(20)]
    ds = datasets.Dataset.from_dict({"input_ids": ids},
                                    features=datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32"), length=4)}))
    save(ds, os.path.join(extra, "fixed"))
    expected["extra"]["fixed"] = ids

    ds = datasets.Dataset.from_dict({"text": ["a", "b"], "tokens": [[1, 2], [3]]},
                                    features=datasets.Features({"text": datasets.Value("string"), "tokens": seq32}))
    save(ds, os.path.join(extra, "no_input_ids"))
    ds = datasets.Dataset.from_dict({"input_ids": [1, 2, 3]}, features=datasets.Features({"input_ids": datasets.Value("int32")}))
    save(ds, os.path.join(extra, "wrong_type"))
    ds = datasets.Dataset.from_dict({"input_ids": [[1.5], [2.5]]},
                                    features=datasets.Features({"input_ids": datasets.Sequence(datasets.Value("float32"))}))
    save(ds, os.path.join(extra, "float_ids"))

    # The same layout as save_to_disk (state.json + one stream file), but LZ4-compressed bodies.
    src = os.path.join(out, "data", "validation", "alpha")
    table = datasets.load_from_disk(src).data.table
    dst = os.path.join(extra, "compressed")
    os.makedirs(dst, exist_ok=True)
    with pa.OSFile(os.path.join(dst, "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="lz4")) as w:
            w.write_table(table)
    with open(os.path.join(src, "state.json")) as f:
        state = json.load(f)
    state["_data_files"] = [{"filename": "data-00000-of-00001.arrow"}]
    with open(os.path.join(dst, "state.json"), "w") as f:
        json.dump(state, f)

    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f)
    print(f"datasets {datasets.__version__}, pyarrow {pa.__version__}: fixture in {out}")


if __name__ == "__main__":
    main()
