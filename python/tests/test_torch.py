"""The IterableDataset adaptor: the same batches with any number of DataLoader workers, exact resume."""
import numpy as np
import pytest

from conftest import need


def batches_of(loader, n=None):
    out = []
    for b in loader:
        out.append(b)
        if n is not None and len(out) == n:
            break
    return out


def rows(batch):
    """The step's multiset of sequences (input row, target row, domain)."""
    return sorted((bytes(i.numpy().tobytes()), bytes(t.numpy().tobytes()), int(d))
                  for i, t, d in zip(batch["input_ids"], batch["targets"], batch["domain_ids"]))


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_two_workers_match_one(data_dir):
    need("torch")
    from doremi.torch import DataLoader, SamplerDataset
    ds = SamplerDataset(data_dir, [0.5, 0.2, 0.3], 4, 32, 3, num_batches=11)
    one = batches_of(DataLoader(ds, num_workers=0))
    two = batches_of(DataLoader(ds, num_workers=2))
    three = batches_of(DataLoader(ds, num_workers=3))
    assert len(one) == len(two) == len(three) == 11
    for a, b, c in zip(one, two, three):
        assert rows(a) == rows(b) == rows(c)  # the same global multiset per step
        assert np.array_equal(a["input_ids"].numpy(), b["input_ids"].numpy())  # in fact the same order
        assert a["sampler_state"] == b["sampler_state"] == c["sampler_state"]
    assert any(rows(one[0]) != rows(x) for x in one[1:])


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_with_workers(data_dir, workers):
    need("torch")
    from doremi.torch import DataLoader, SamplerDataset
    full = batches_of(DataLoader(SamplerDataset(data_dir, [1, 1, 2], 4, 32, 5, num_batches=14)))
    ds = SamplerDataset(data_dir, [1, 1, 2], 4, 32, 5)
    loader = DataLoader(ds, num_workers=workers)
    first = batches_of(loader, 6)
    state = loader.state_dict()
    assert state["drawn"] == 6 * 4
    ds2 = SamplerDataset(data_dir, [1, 1, 2], 4, 32, 5)
    loader2 = DataLoader(ds2, num_workers=workers)
    loader2.load_state_dict(state)
    rest = batches_of(loader2, 8)
    for a, b in zip(full, first + rest):
        assert rows(a) == rows(b)
        assert np.array_equal(a["targets"].numpy(), b["targets"].numpy())


def test_bad_state_fails_in_main_process(data_dir):
    need("torch")
    import doremi
    from doremi.torch import SamplerDataset
    ds = SamplerDataset(data_dir, [1, 1, 1], 4, 32, 5)
    s = doremi.WeightedDomainSampler(data_dir, [1, 1, 1], 4, 16, 5)
    with pytest.raises(doremi.Error, match="seq_len"):
        ds.load_state_dict(s.state_dict())
