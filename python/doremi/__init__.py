"""doremi: DoReMi domain reweighting from PyTorch / HuggingFace code, built from the doremi-cpp headers.

    import doremi
    data = doremi.open_data("data/pile", "train")               # preprocessed, Megatron or save_to_disk folders
    sampler = doremi.WeightedDomainSampler(data, {"a": 0.5, "b": 0.5}, batch_size=8, seq_len=1024, seed=1)
    batch = next(sampler)            # Batch(inputs [B,T] int32, targets [B,T] int32 (-1 = ignore), domains [B])
    state = sampler.state_dict()     # O(domains), JSON-compatible; load_state_dict(state) continues the stream
    dw = doremi.DomainWeights(data.domains, initial_score=math.log(vocab))
    dw.update(excess_sum, tokens)    # per-domain sums of max(l_proxy - l_ref, 0) and token counts of one step
    w = dw.loss_weights()            # per-domain loss weights for the step's objective

Every error the library raises arrives as doremi.Error (a RuntimeError) carrying its message.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np

from . import _core
from ._core import DataFolder, Error, Tokenizer

__all__ = [
    "Batch",
    "DataFolder",
    "DomainTotals",
    "DomainWeights",
    "Error",
    "Tokenizer",
    "WeightedDomainSampler",
    "evaluate",
    "open_data",
    "preprocess",
    "run_pipeline",
]
__version__: str = _core.__version__

PathLike = Union[str, "os.PathLike[str]"]
Weights = Union[Mapping[str, float], Sequence[float], np.ndarray]


class Batch(NamedTuple):
    """One batch: inputs[b, t] predicts targets[b, t] (-1: padding, ignored); domains[b] indexes the domain names.

    The arrays share memory with the batch the library built (no copy)."""

    inputs: np.ndarray
    targets: np.ndarray
    domains: np.ndarray


def open_data(root: PathLike, split: str = "train", domains: Optional[Sequence[str]] = None) -> DataFolder:
    """Opens a data folder: one written by `doremi preprocess` (manifest.json and Megatron indexed shards), or
    <root>/<split>/<domain>/ folders written by HuggingFace `datasets.save_to_disk`. Domains are sorted by name;
    `domains` selects a subset (each must exist)."""
    return DataFolder(os.fspath(root), split, list(domains or []))


class WeightedDomainSampler:
    """Batches drawn from the domains of a data folder by domain weights (include/doremi/data/weighted_sampler.hpp).

    data:     a DataFolder or a folder path (opened with `split` and `domains`)
    weights:  {domain: weight} naming every domain, or a sequence in `data.domains` order (normalised)
    mode:     "random" (Philox draws by the weights) or "deterministic" (each domain's share tracks its
              cumulative target within one sequence)
    packing:  "pack" (each stored sequence is a row) or "nopack" (documents cut into seq_len pieces)

    Iterating yields Batch tuples forever (every domain starts a new permutation each epoch). The stream is
    a function of (data, weights and their changes, batch_size, seq_len, seed, mode, packing) only: the same
    as the C++ sampler's, and the same after state_dict() / load_state_dict().
    """

    def __init__(
        self,
        data: Union[DataFolder, PathLike],
        weights: Weights,
        batch_size: int,
        seq_len: int,
        seed: int = 1,
        *,
        mode: str = "random",
        packing: str = "pack",
        pad_id: int = 0,
        prefetch: bool = True,
        split: str = "train",
        domains: Optional[Sequence[str]] = None,
    ):
        if not isinstance(data, DataFolder):
            data = open_data(data, split, domains)
        self._s = _core.Sampler(data, _weights_arg(weights), int(batch_size), int(seq_len), int(seed), mode, packing,
                                int(pad_id), bool(prefetch))

    def __iter__(self) -> "WeightedDomainSampler":
        return self

    def __next__(self) -> Batch:
        return Batch(*self._s.next())

    def next(self) -> Batch:
        return Batch(*self._s.next())

    def skip(self, batches: int) -> None:
        """Draws and drops `batches` batches (the state advances exactly as by next())."""
        self._s.skip(int(batches))

    def set_weights(self, weights: Weights) -> None:
        """New weights from the next batch on; every domain's cursor continues (nothing lost or repeated)."""
        self._s.set_weights(_weights_arg(weights))

    def state_dict(self) -> dict:
        """The sampler's state (O(domains), JSON-compatible): counts, weights, targets, draw counter, seed."""
        return json.loads(self._s.state_json())

    def state_json(self) -> str:
        return self._s.state_json()

    def load_state_dict(self, state: Union[Mapping[str, Any], str]) -> None:
        """Continues the exact stream of the sampler that saved `state` (validated: a mismatch in mode, packing,
        seq_len, domains or their sizes raises doremi.Error naming the field)."""
        self._s.restore_json(state if isinstance(state, str) else json.dumps(state))

    data = property(lambda self: self._s.data)
    domains = property(lambda self: list(self._s.domains))
    weights = property(lambda self: list(self._s.weights))
    counts = property(lambda self: list(self._s.counts), doc="sequences drawn per domain")
    epochs = property(lambda self: list(self._s.epochs), doc="completed passes over each domain")
    targets = property(lambda self: list(self._s.targets), doc="cumulative targets (deterministic mode's C_i)")
    sequences_drawn = property(lambda self: self._s.sequences_drawn)
    domain_sizes = property(lambda self: list(self._s.domain_sizes), doc="sampling units per domain")
    batch_size = property(lambda self: self._s.batch_size)
    seq_len = property(lambda self: self._s.seq_len)
    mode = property(lambda self: self._s.mode)
    packing = property(lambda self: self._s.packing)


def _weights_arg(weights: Weights) -> Any:
    if isinstance(weights, Mapping):
        return {str(k): float(v) for k, v in weights.items()}
    return np.asarray(weights, dtype=np.float64)


def _as_float64(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().double().numpy()
    return np.ascontiguousarray(x, dtype=np.float64)


class DomainWeights:
    """The DoReMi domain-weight update (include/doremi/train/domain_weights.hpp), in double precision:

        scores_i = excess_sum_i / tokens_i       (kept from the last step when tokens_i == 0: absent domains)
        alpha'   = softmax(log alpha + eta * scores)
        alpha    = (1 - smoothing) * alpha' + smoothing / k
        average  = running mean of alpha over all steps, alpha_0 counted as the first sample
        loss_weights_i = (alpha_i / s_i) / sum_j (alpha_j / s_j), s = the sampling weights

    One update() per optimisation step, with the sums over all its micro-batches (and ranks): see DomainTotals.
    initial_weights and sampling_weights default to uniform; initial_score is the score before a domain is
    seen (the library uses ln of the padded vocabulary size).
    """

    def __init__(
        self,
        names: Sequence[str],
        initial_weights: Optional[Weights] = None,
        sampling_weights: Optional[Weights] = None,
        *,
        initial_score: float,
        eta: float = 1.0,
        smoothing: float = 1e-4,
    ):
        names = [str(n) for n in names]
        self._w = _core.DomainWeights(names, self._vector(names, initial_weights), self._vector(names, sampling_weights),
                                      float(initial_score), float(eta), float(smoothing))

    @staticmethod
    def _vector(names: Sequence[str], w: Optional[Weights]) -> np.ndarray:
        if w is None:
            return np.full(len(names), 1.0 / max(len(names), 1))
        if isinstance(w, Mapping):
            unknown = sorted(set(map(str, w)) - set(names))
            if unknown:
                raise Error(f"DomainWeights: weights name unknown domains {unknown} (domains: {list(names)})")
            missing = [n for n in names if n not in w]
            if missing:
                raise Error(f"DomainWeights: no weight for domains {missing} (give every domain, 0 to leave one out)")
            return np.array([float(w[n]) for n in names])
        return np.asarray(w, dtype=np.float64)

    def update(self, excess_sum: Any, tokens: Any) -> None:
        """One step: excess_sum[i] = sum of max(l_proxy - l_ref, 0) over domain i's target tokens in the step,
        tokens[i] = their count (arrays or tensors; used as float64)."""
        self._w.update(_as_float64(excess_sum, "excess_sum"), _as_float64(tokens, "tokens"))

    def loss_weights(self) -> np.ndarray:
        return self._w.loss_weights()

    def logit(self, domain: int, score: float) -> float:
        return self._w.logit(int(domain), float(score))

    def log_normaliser(self) -> float:
        return self._w.log_normaliser()

    names = property(lambda self: list(self._w.names))
    alpha = property(lambda self: np.array(self._w.alpha))
    scores = property(lambda self: np.array(self._w.scores))
    average = property(lambda self: np.array(self._w.average))
    sampling = property(lambda self: np.array(self._w.sampling))
    count = property(lambda self: self._w.count, doc="samples in the running average, alpha_0 included")
    eta = property(lambda self: self._w.eta)
    smoothing = property(lambda self: self._w.smoothing)

    def state_dict(self) -> dict:
        return json.loads(self._w.state_json())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._w.restore_json(json.dumps(state))


class DomainTotals:
    """A step's per-domain sums in float64, accumulated over micro-batches (and ranks: add the other ranks'
    totals, or all-reduce `excess` and `tokens`), for DomainWeights.update().

        totals = doremi.DomainTotals(k)
        for micro in step:
            totals.add_tokens(excess_per_token, domain_per_token, mask)   # tensors or arrays, any shape
        dw.update(totals.excess, totals.tokens)
    """

    def __init__(self, domains: int):
        self.excess = np.zeros(int(domains))
        self.tokens = np.zeros(int(domains))

    def add(self, excess_sum: Any, tokens: Any) -> None:
        self.excess += _as_float64(excess_sum, "excess_sum")
        self.tokens += _as_float64(tokens, "tokens")

    def add_tokens(self, excess: Any, domain: Any, mask: Any = None) -> None:
        """excess: per-token max(l_proxy - l_ref, 0); domain: per-token domain id (same shape, or one per row
        of a 2-D excess); mask: per-token bool/0-1 (targets >= 0), None = all."""
        e = _as_float64(excess, "excess")
        d = np.asarray(domain.detach().cpu().numpy() if hasattr(domain, "detach") else domain)
        if d.ndim == 1 and e.ndim == 2:
            d = np.broadcast_to(d[:, None], e.shape)
        if d.shape != e.shape:
            raise Error(f"DomainTotals.add_tokens: excess has shape {e.shape} but domain ids {d.shape}")
        m = np.ones(e.shape, bool) if mask is None else np.asarray(
            mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask).astype(bool)
        k = len(self.excess)
        ids = d[m].astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= k):
            raise Error(f"DomainTotals.add_tokens: domain id {int(ids.min() if ids.min() < 0 else ids.max())} "
                        f"out of range for {k} domains")
        self.excess += np.bincount(ids, weights=e[m], minlength=k)
        self.tokens += np.bincount(ids, minlength=k).astype(np.float64)


def preprocess(
    inputs: Union[PathLike, Sequence[PathLike]],
    output: PathLike,
    tokenizer: Union[Tokenizer, str] = "bytes",
    *,
    domain_key: str = "meta.pile_set_name",
    text_key: str = "text",
    seq_len: int = 1024,
    pack: bool = True,
    validation_share: float = 0.0,
    seed: int = 1234,
    threads: int = 0,
    fail_on_bad_document: bool = False,
    progress: bool = True,
) -> dict:
    """Tokenizes JSONL(.zst) files (or folders of domain subfolders) into a data folder of per-domain indexed
    datasets, as `doremi preprocess` does; returns the manifest (dict) with "inputs_skipped" added (inputs an
    earlier interrupted run had finished). tokenizer: a Tokenizer, "bytes", or a tokenizer.json path/folder."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer(os.fspath(tokenizer))
    manifest, skipped = _core.preprocess([os.fspath(p) for p in inputs], os.fspath(output), tok, domain_key, text_key,
                                         int(seq_len), bool(pack), float(validation_share), int(seed), int(threads),
                                         bool(fail_on_bad_document), bool(progress))
    manifest = dict(manifest)
    manifest["inputs_skipped"] = skipped
    return manifest


def _load_pipeline():
    import importlib
    try:
        p = importlib.import_module("doremi._pipeline")
    except ImportError as e:  # built with -DDOREMI_PYTHON_PIPELINE=OFF
        raise Error(f"this doremi package was built without the pipeline module ({e})") from None
    return p


def run_pipeline(config: Union[Mapping[str, Any], PathLike]) -> dict:
    """Runs the whole DoReMi pipeline (reference model, DRO proxy, main models; CPU) from a run config (a dict,
    or a JSON file; fields in include/doremi/pipeline/run_config.hpp). Progress goes to stderr. Returns the
    summary: domains, reference_weights, round_weights, doremi_weights, and the per-domain perplexities of the
    main models (doremi_perplexity, baseline_perplexity). Finished stages of an earlier run are reused."""
    if isinstance(config, Mapping):
        text, where = json.dumps(config), "run config"
    else:
        with open(config, encoding="utf-8") as f:
            text, where = f.read(), os.fspath(config)
    return _load_pipeline().run_pipeline(text, where)


def evaluate(checkpoint: PathLike, data: PathLike, *, split: str = "validation", preset: str = "", seq_len: int = 0,
             max_tokens: int = 0) -> dict:
    """Per-domain held-out log-perplexity (nats per target token) of a checkpoint folder (config.json +
    model.safetensors, ours or transformers'; a folder holding final/ is taken as final/), as `doremi eval`.
    The preset is found from config.json unless given; seq_len 0 takes the data folder's (else the context)."""
    return _load_pipeline().evaluate(os.fspath(checkpoint), os.fspath(data), split, preset, int(seq_len), int(max_tokens))
