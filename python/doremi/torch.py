"""PyTorch adaptor: the sampler's batch stream as a torch.utils.data.IterableDataset.

    from doremi.torch import SamplerDataset, DataLoader
    ds = SamplerDataset("data/pile", weights, batch_size=8, seq_len=1024, seed=1)
    loader = DataLoader(ds, num_workers=2)          # batch_size=None: the dataset yields whole batches
    for step, batch in enumerate(loader):           # batch: input_ids, targets, domain_ids (int32 tensors)
        ...
        if step % 1000 == 0:
            save(loader.state_dict())               # the sampler's state after the last batch yielded
    # later: ds.load_state_dict(state) (or loader.load_state_dict(state)) and iterate again

Exactness with workers: worker w of n yields the global batches w, w + n, w + 2n, ... of the one sampler
stream (it draws the batches in between and drops them: their tokens are read, which costs n times the
reading, not the training), and DataLoader hands workers' batches out round-robin, so the loader yields the
same batches in the same order for any num_workers. Each batch carries "sampler_state", the state after it,
which is what state_dict() returns and what resumes the stream exactly.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import torch
import torch.utils.data

from . import DataFolder, WeightedDomainSampler, Weights, _weights_arg, open_data


class SamplerDataset(torch.utils.data.IterableDataset):
    """An IterableDataset of whole batches (use it with batch_size=None, as doremi.torch.DataLoader does).

    Arguments as WeightedDomainSampler's; `data` is a folder path (each worker opens it: nothing unpicklable
    is held). num_batches: stop after that many batches from the start state (None: never)."""

    def __init__(
        self,
        data: Union[str, "os.PathLike[str]"],
        weights: Weights,
        batch_size: int,
        seq_len: int,
        seed: int = 1,
        *,
        mode: str = "random",
        packing: str = "pack",
        pad_id: int = 0,
        split: str = "train",
        domains: Optional[Sequence[str]] = None,
        num_batches: Optional[int] = None,
        state: Optional[Mapping[str, Any]] = None,
    ):
        super().__init__()
        if isinstance(data, DataFolder):
            split, domains, data = data.split, data.domains, data.root
        self.root = os.fspath(data)
        self.split = split
        self.domains = list(domains) if domains else None
        w = _weights_arg(weights)
        self.weights = dict(w) if isinstance(w, dict) else [float(x) for x in w]
        self.batch_size, self.seq_len, self.seed = int(batch_size), int(seq_len), int(seed)
        self.mode, self.packing, self.pad_id = mode, packing, int(pad_id)
        self.num_batches = num_batches
        self._state = json.dumps(state) if state is not None else None
        # Fail here, in the main process, on bad arguments or a mismatched state (not inside a worker).
        self._sampler(prefetch=False)

    def _sampler(self, prefetch: bool = True) -> WeightedDomainSampler:
        s = WeightedDomainSampler(open_data(self.root, self.split, self.domains), self.weights, self.batch_size,
                                  self.seq_len, self.seed, mode=self.mode, packing=self.packing, pad_id=self.pad_id,
                                  prefetch=prefetch)
        if self._state is not None:
            s.load_state_dict(self._state)
        return s

    def load_state_dict(self, state: Union[Mapping[str, Any], str]) -> None:
        """Start the next iteration from `state` (a sampler state, e.g. DataLoader.state_dict())."""
        self._state = state if isinstance(state, str) else json.dumps(state)
        self._sampler(prefetch=False)  # validate now

    def state_dict(self) -> Optional[dict]:
        """The state iteration starts from (None: the sampler's beginning)."""
        return None if self._state is None else json.loads(self._state)

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        workers, me = (1, 0) if info is None else (info.num_workers, info.id)
        s = self._sampler()
        k = me  # global batch index relative to the start state
        s.skip(me)
        while self.num_batches is None or k < self.num_batches:
            b = s.next()
            yield {
                "input_ids": torch.from_numpy(b.inputs),
                "targets": torch.from_numpy(b.targets),
                "domain_ids": torch.from_numpy(b.domains),
                "sampler_state": s.state_json(),
            }
            k += workers
            if workers > 1 and (self.num_batches is None or k < self.num_batches):
                s.skip(workers - 1)


class DataLoader(torch.utils.data.DataLoader):
    """torch's DataLoader over a SamplerDataset (batch_size=None) that remembers the sampler state after the
    last batch it yielded: state_dict() / load_state_dict() resume the stream exactly, whatever num_workers."""

    def __init__(self, dataset: SamplerDataset, **kwargs: Any):
        if not isinstance(dataset, SamplerDataset):
            raise TypeError("doremi.torch.DataLoader takes a doremi.torch.SamplerDataset")
        kwargs.setdefault("batch_size", None)
        if kwargs["batch_size"] is not None:
            raise ValueError("doremi.torch.DataLoader: the dataset yields whole batches; leave batch_size=None")
        super().__init__(dataset, **kwargs)
        self._last_state: Optional[str] = None

    def __iter__(self) -> Iterator[dict]:  # type: ignore[override]
        for batch in super().__iter__():
            self._last_state = batch["sampler_state"]
            yield batch

    def state_dict(self) -> Optional[dict]:
        """The sampler state after the last batch yielded (the dataset's start state before any)."""
        if self._last_state is None:
            return self.dataset.state_dict()
        return json.loads(self._last_state)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.dataset.load_state_dict(state)
        self._last_state = None
