#!/usr/bin/python3
"""Writes the fuzz targets' seed corpus (fuzz/seeds/<target>/) with the
reference tools, not with this library: HF safetensors/torch, transformers'
GPTNeoXConfig, datasets/pyarrow, HF tokenizers, the zstd program, Python's
struct for Megatron's MMIDIDX layout, and hand-written JSON.

Debian's /usr/bin/python3 with scripts/install_python_deps.sh's packages.
Usage: fuzz/make_seeds.py  (rewrites fuzz/seeds; the output is committed)
"""
import io
import json
import os
import shutil
import struct
import subprocess
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "seeds")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def js(obj):
    return json.dumps(obj, indent=1)


def safetensors_seeds():
    import torch
    from safetensors.numpy import save as np_save
    from safetensors.torch import save as torch_save
    put("safetensors", "f32", np_save({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, metadata={"format": "pt"}))
    put("safetensors", "mixed", np_save({"a": np.array([1, 2], dtype=np.int64), "b": np.ones((2, 2), dtype=np.float16),
                                         "c": np.array([True, False]), "d": np.array([3], dtype=np.int32)}))
    put("safetensors", "bf16", torch_save({"x": torch.arange(4, dtype=torch.bfloat16)}, metadata={"steps": "7"}))
    put("safetensors", "empty", np_save({}))


def hf_config_seeds():
    from transformers import GPTNeoXConfig
    tiny = GPTNeoXConfig(vocab_size=264, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=256, max_position_embeddings=128, rotary_pct=0.25, hidden_act="gelu",
                         tie_word_embeddings=False, use_parallel_residual=True)
    put("hf_config", "tiny.json", tiny.to_json_string())
    put("hf_config", "pythia70m.json", GPTNeoXConfig(vocab_size=50304, hidden_size=512, num_hidden_layers=6,
                                                     num_attention_heads=8, intermediate_size=2048,
                                                     max_position_embeddings=2048).to_json_string())
    put("hf_config", "rope_parameters.json", js({"model_type": "gpt_neox", "vocab_size": 264, "hidden_size": 64,
                                                 "rope_parameters": {"rope_theta": 10000, "rope_type": "default",
                                                                     "partial_rotary_factor": 0.25}}))


def run_config_seeds():
    put("run_config", "small.json", js({"data": "data", "output": "runs/x", "preset": "tiny", "seq_len": 64,
                                        "reference_weights": "uniform", "domains": ["a", "b"],
                                        "reference": {"steps": 10, "batch_size": 2, "lr": 1e-3},
                                        "proxy": {"steps": 10, "eta": 1.0, "smoothing": 1e-3},
                                        "main": {"steps": 5, "schedule": "cosine", "warmup": 0.1},
                                        "rounds": 2, "tolerance": 0.01, "seed": 3}))
    put("run_config", "pile.json", js({"data": "pile", "output": "out", "device": "cuda:0", "epochs": "pile",
                                       "reference_weights": "pack", "proxy_sampling": "reference",
                                       "baseline": False, "eval_max_tokens": 100000,
                                       "main": {"steps": 100, "grad_accum": 4, "checkpoint_every": 10}}))
    put("run_config", "epochs.json", js({"data": "d", "output": "o", "epochs": {"ArXiv": 2, "a": 1.5},
                                         "comment": "x"}))


def domain_config_seeds():
    put("domain_config", "config.json", js({"train_domain_weights": {"a": 0.25, "b": 0.75},
                                            "eval_domain_weights": {"a": 1, "b": 1}}))
    put("domain_config", "weights.json", js({"ArXiv": 0.1, "Pile-CC": 0.9}))


def manifest_seeds():
    entry = {"documents": 1, "tokens": 5, "sequences": 1, "pack_chunks": 0, "nopack_chunks": 1, "folder": "a"}
    put("manifest", "manifest.json", js({"format": "doremi-preprocessed-1", "seq_len": 8, "pack": False,
                                         "validation_share": 0.5, "vocab_size": 257, "end_of_text_id": 256,
                                         "token_dtype": "uint16",
                                         "domains": {"a": {"train": entry, "validation": entry, "folder": "a"}},
                                         "skipped_documents": {}}))
    put("manifest", "minimal.json", js({"domains": {"a": {"train": {}}}}))


def mmidx(dtype_code, itemsize, seqs, seqs_per_doc=1):
    """Megatron-LM's MMIDIDX index and .bin, as the fuzz target reads them (4-byte index length first)."""
    fmt = {1: "B", 2: "b", 3: "h", 4: "i", 5: "q", 8: "H"}[dtype_code]
    sizes = [len(s) for s in seqs]
    pointers, p = [], 0
    for n in sizes:
        pointers.append(p)
        p += n * itemsize
    docs = list(range(0, len(seqs) + 1, seqs_per_doc))
    if docs[-1] != len(seqs):
        docs.append(len(seqs))
    idx = b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, dtype_code, len(seqs), len(docs))
    idx += struct.pack(f"<{len(sizes)}i", *sizes) + struct.pack(f"<{len(pointers)}q", *pointers)
    idx += struct.pack(f"<{len(docs)}q", *docs)
    bin_ = b"".join(struct.pack(f"<{len(s)}{fmt}", *s) for s in seqs)
    return struct.pack("<I", len(idx)) + idx + bin_


def mmidx_seeds():
    put("mmidx", "u16", mmidx(8, 2, [[1, 2, 3], [4, 5], [6, 7, 8, 9]], 2))
    put("mmidx", "i32", mmidx(4, 4, [[100, 200], [300]]))
    put("mmidx", "u8", mmidx(1, 1, [[1] * 5]))
    put("mmidx", "i64", mmidx(5, 8, [[7, 8]]))


def arrow_seeds():
    import datasets
    import pyarrow as pa
    import pyarrow.ipc
    with tempfile.TemporaryDirectory() as tmp:
        for name, feats, rows in [
            ("list_i32", datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32")),
                                            "text": datasets.Value("string")}),
             {"input_ids": [[1, 2, 3], [4, 5]], "text": ["a", "b"]}),
            ("list_i64", datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int64"))}),
             {"input_ids": [[1, 2], [], [3]]}),
            ("fixed_u16", datasets.Features({"input_ids": datasets.Sequence(datasets.Value("uint16"), length=2)}),
             {"input_ids": [[1, 2], [3, 4]]}),
        ]:
            d = os.path.join(tmp, name)
            datasets.Dataset.from_dict(rows, features=feats).save_to_disk(d)
            arrow = [f for f in os.listdir(d) if f.endswith(".arrow")]
            with open(os.path.join(d, arrow[0]), "rb") as f:
                put("arrow", name, f.read())
    # Two record batches and a large_list column, written by pyarrow directly.
    schema = pa.schema([("input_ids", pa.large_list(pa.int32()))])
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, schema) as w:
        w.write_batch(pa.record_batch([pa.array([[1, 2], [3]], type=pa.large_list(pa.int32()))], schema=schema))
        w.write_batch(pa.record_batch([pa.array([[4, 5, 6]], type=pa.large_list(pa.int32()))], schema=schema))
    put("arrow", "large_list_2batches", sink.getvalue())


def tokenizer_seeds():
    from tokenizers import ByteLevelBPETokenizer
    text = ["Hello, world! 123 hello world", "naïve café, the quick brown fox", "<|endoftext|> jumps over"] * 20
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(text, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    put("tokenizer_json", "bytelevel.json", tok.to_str())
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_model(tmp)
        with open(os.path.join(tmp, "vocab.json"), "rb") as v, open(os.path.join(tmp, "merges.txt"), "rb") as m:
            put("vocab_merges", "gpt2_style", v.read() + b"\0" + m.read())
    tiny = ByteLevelBPETokenizer()
    tiny.train_from_iterator(["ab ab abc"], vocab_size=260, min_frequency=1)
    put("tokenizer_json", "tiny.json", tiny.to_str())
    with tempfile.TemporaryDirectory() as tmp:
        tiny.save_model(tmp)
        with open(os.path.join(tmp, "vocab.json"), "rb") as v, open(os.path.join(tmp, "merges.txt"), "rb") as m:
            put("vocab_merges", "tiny", v.read() + b"\0" + m.read())


def jsonl_seeds():
    lines = "\n".join(json.dumps(d) for d in [
        {"text": "Some text of domain a.", "meta": {"pile_set_name": "a"}},
        {"text": "Other words, domain b; longer than eight bytes.", "meta": {"pile_set_name": "b"}},
        {"text": "naïve ☃", "meta": {"pile_set_name": "a/b"}},
        {"text": "", "meta": {"pile_set_name": "a"}},
        {"meta": {"pile_set_name": "a"}},
    ]) + "\n{not json\n"
    put("jsonl", "plain", b"\0" + lines.encode())
    z = subprocess.run(["zstd", "-q", "-c"], input=lines.encode(), stdout=subprocess.PIPE, check=True).stdout
    put("jsonl", "zstd", b"\1" + z)


def trainer_state_seeds():
    sampler = {"kind": "weighted_domain_sampler", "version": 1, "mode": "random", "packing": "pack", "seq_len": 4,
               "seed": 1, "drawn": 6, "target_base_drawn": 0,
               "domains": [{"name": "a", "units": 2, "weight": 0.5, "count": 4, "epoch": 2, "cursor": 0,
                            "target_base": 0.0},
                           {"name": "b", "units": 1, "weight": 0.5, "count": 2, "epoch": 2, "cursor": 0,
                            "target_base": 0.0}]}
    dro = {"domains": ["a", "b"], "alpha": [0.4, 0.6], "scores": [1.0, 2.0], "average": [0.45, 0.55], "count": 3,
           "sampling": [0.5, 0.5]}
    put("trainer_state", "dro.json", js({"format": "doremi-trainer-1", "step": 3, "preset": "tiny",
                                         "sampler": sampler, "extra": {"domain_weights": dro}}))
    put("trainer_state", "train.json", js({"format": "doremi-trainer-1", "step": 3, "preset": "tiny",
                                           "sampler": sampler, "extra": {}}))
    put("trainer_state", "window.json", js({"format": "doremi-trainer-1", "step": 9, "preset": "tiny",
                                            "sampler": {"kind": "window", "step": 9, "seed": 5}}))


if __name__ == "__main__":
    shutil.rmtree(OUT, ignore_errors=True)
    for f in (safetensors_seeds, hf_config_seeds, run_config_seeds, domain_config_seeds, manifest_seeds,
              mmidx_seeds, arrow_seeds, tokenizer_seeds, jsonl_seeds, trainer_state_seeds):
        f()
    n = sum(len(fs) for _, _, fs in os.walk(OUT))
    print(f"wrote {n} seed files under {OUT}")
