"""The package's sampler against the C++ WeightedDomainSampler (byte-identical streams), resume, weight
changes, zero-copy batches."""
import json

import numpy as np
import pytest

import doremi


def python_stream(data, weights, B, T, seed, mode, packing, batches, changes=()):
    s = doremi.WeightedDomainSampler(data, weights, B, T, seed, mode=mode, packing=packing)
    out = bytearray()
    at = dict(changes)
    for k in range(batches):
        if k in at:
            s.set_weights(at[k])
        b = next(s)
        assert b.inputs.shape == (B, T) and b.targets.shape == (B, T) and b.domains.shape == (B,)
        assert b.inputs.dtype == np.int32 and b.targets.dtype == np.int32 and b.domains.dtype == np.int32
        out += b.inputs.tobytes() + b.targets.tobytes() + b.domains.tobytes()
    return bytes(out)


@pytest.mark.parametrize("mode", ["random", "deterministic"])
@pytest.mark.parametrize("folder", ["data_dir", "nopack_dir", "hf_dir"])
def test_stream_equals_cpp(request, reference, mode, folder):
    data = request.getfixturevalue(folder)
    packing = "nopack" if folder == "nopack_dir" else "pack"
    weights = [0.5, 0.2, 0.3]
    changes = [(4, [0.1, 0.6, 0.3]), (9, [0.0, 0.5, 0.5])]
    B, T, seed, batches = 5, 16, 11, 30
    job = {"kind": "sampler", "data": str(data), "split": "train", "weights": weights, "batch_size": B,
           "seq_len": T, "seed": seed, "mode": mode, "packing": packing, "batches": batches,
           "changes": [{"at": k, "weights": w} for k, w in changes]}
    expected = reference(job)
    got = python_stream(str(data), weights, B, T, seed, mode, packing, batches, changes)
    assert len(expected) == batches * (2 * B * T + B) * 4
    assert got == expected
    # a different seed gives a different stream (the comparison can fail)
    assert python_stream(str(data), weights, B, T, seed + 1, mode, packing, batches, changes) != expected


@pytest.mark.parametrize("mode", ["random", "deterministic"])
def test_resume_from_state_dict(data_dir, mode):
    a = doremi.WeightedDomainSampler(data_dir, {"arxiv": 1, "books": 2, "code": 3}, 4, 32, 7, mode=mode)
    for _ in range(9):
        next(a)
    a.set_weights({"arxiv": 3, "books": 0, "code": 1})
    next(a)
    state = json.loads(json.dumps(a.state_dict()))  # as saved in a checkpoint
    rest = [next(a) for _ in range(15)]
    b = doremi.WeightedDomainSampler(data_dir, [1, 1, 1], 4, 32, 999, mode=mode)  # seed and weights from the state
    b.load_state_dict(state)
    assert b.weights == pytest.approx([0.75, 0.0, 0.25])
    for x, y in zip(rest, [next(b) for _ in range(15)]):
        assert np.array_equal(x.inputs, y.inputs) and np.array_equal(x.targets, y.targets)
        assert np.array_equal(x.domains, y.domains)
        assert not np.any(y.domains == 1)  # books has weight 0


def test_counts_follow_weights_deterministic(data_dir):
    s = doremi.WeightedDomainSampler(data_dir, [0.5, 0.25, 0.25], 8, 32, 1, mode="deterministic")
    seen = np.zeros(3)
    for _ in range(25):
        seen += np.bincount(next(s).domains, minlength=3)
    assert list(seen) == [100, 50, 50]
    assert s.counts == [100, 50, 50] and s.sequences_drawn == 200


def test_batches_share_memory(data_dir):
    s = doremi.WeightedDomainSampler(data_dir, [1, 1, 1], 4, 32, 1)
    b = next(s)
    for a in b:
        assert not a.flags.owndata and a.base is not None  # a view of the library's buffer
    keep = b.inputs.copy()
    del s
    assert np.array_equal(b.inputs, keep)  # the arrays own the batch: alive after the sampler


def test_rows_are_the_stored_chunks(data_dir):
    s = doremi.WeightedDomainSampler(data_dir, [1, 1, 1], 6, 31, 2)
    data = s.data
    b = next(s)
    chunks = {(d, i): data.sequence(d, i) for d in range(3) for i in range(data.num_sequences()[d])}
    for r in range(6):
        d = int(b.domains[r])
        row = np.concatenate([b.inputs[r], b.targets[r][-1:]])
        assert any(np.array_equal(row, c) for (dd, _), c in chunks.items() if dd == d)
