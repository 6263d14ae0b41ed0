"""Errors arrive as doremi.Error carrying the library's message."""
import pytest

import doremi


def test_error_class():
    assert issubclass(doremi.Error, RuntimeError)


def test_missing_folder(tmp_path):
    with pytest.raises(doremi.Error, match=r"dataset folder .*nowhere does not exist"):
        doremi.open_data(tmp_path / "nowhere")


def test_unknown_domain(data_dir):
    with pytest.raises(doremi.Error, match=r"no train data for domain 'poetry' \(it has: arxiv, books, code\)"):
        doremi.open_data(data_dir, "train", ["poetry"])


def test_bad_weights(data_dir):
    with pytest.raises(doremi.Error, match="2 weights for 3 domains"):
        doremi.WeightedDomainSampler(data_dir, [1, 1], 4, 32)
    with pytest.raises(doremi.Error, match="no weight for domain 'code'"):
        doremi.WeightedDomainSampler(data_dir, {"arxiv": 1, "books": 1}, 4, 32)
    with pytest.raises(doremi.Error, match="unknown sampling mode 'greedy'"):
        doremi.WeightedDomainSampler(data_dir, [1, 1, 1], 4, 32, mode="greedy")
    with pytest.raises(doremi.Error, match="batch size 0 and sequence length 32 must be positive"):
        doremi.WeightedDomainSampler(data_dir, [1, 1, 1], 0, 32)


def test_bad_state(data_dir):
    s = doremi.WeightedDomainSampler(data_dir, [1, 1, 1], 4, 32, mode="deterministic")
    with pytest.raises(doremi.Error, match="field 'mode'"):
        s.load_state_dict(doremi.WeightedDomainSampler(data_dir, [1, 1, 1], 4, 32).state_dict())
    with pytest.raises(doremi.Error, match="not valid JSON"):
        s.load_state_dict("{not json")


def test_domain_weights_config():
    with pytest.raises(doremi.Error, match=r"reweight_eta \(--eta\) must lie in \(0, "):
        doremi.DomainWeights(["a"], initial_score=1.0, eta=0.0)
    with pytest.raises(doremi.Error, match="sampling weight 0 but a positive initial weight"):
        doremi.DomainWeights(["a", "b"], [1, 1], [1, 0], initial_score=1.0)
    w = doremi.DomainWeights(["a", "b"], initial_score=1.0)
    with pytest.raises(doremi.Error, match="2 domains but 3 sums and 2 counts"):
        w.update([1, 2, 3], [1, 1])


def test_tokenizer_and_preprocess_errors(tmp_path):
    with pytest.raises(doremi.Error):
        doremi.Tokenizer(str(tmp_path / "missing.json"))
    with pytest.raises(doremi.Error, match="does not exist"):
        doremi.preprocess(tmp_path / "missing.jsonl", tmp_path / "out", progress=False)


def test_domain_weights_mapping():
    with pytest.raises(doremi.Error, match=r"no weight for domains \['b'\]"):
        doremi.DomainWeights(["a", "b"], {"a": 1.0}, initial_score=1.0)
    with pytest.raises(doremi.Error, match=r"unknown domains \['z'\]"):
        doremi.DomainWeights(["a", "b"], {"a": 1.0, "b": 1.0, "z": 1.0}, initial_score=1.0)
    w = doremi.DomainWeights(["a", "b"], {"b": 3.0, "a": 1.0}, initial_score=1.0)
    assert list(w.alpha) == [0.25, 0.75]
