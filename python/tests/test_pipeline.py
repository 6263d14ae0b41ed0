"""run_pipeline and evaluate on a tiny run (the library's CPU stages)."""
import json

import numpy as np
import pytest

import doremi


def stage(steps):
    return {"steps": steps, "batch_size": 4, "lr": 3e-3, "end_lr": 3e-4, "warmup": 0.1}


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("run")
    config = {"data": str(data_dir), "output": str(out / "run"), "preset": "tiny", "seq_len": 32,
              "reference_weights": "pack", "reference": stage(6), "proxy": dict(stage(6), eta=1.0, smoothing=1e-3),
              "main": stage(4), "baseline": True, "seed": 2}
    (out / "config.json").write_text(json.dumps(config))
    return out, config, doremi.run_pipeline(out / "config.json")


def test_run_pipeline(run):
    out, config, r = run
    assert r["domains"] == ["arxiv", "books", "code"]
    w = np.array(r["doremi_weights"])
    assert w.sum() == pytest.approx(1.0, abs=1e-12) and np.all(w > 0)
    written = json.loads((out / "run" / "round-1" / "proxy" / "avg_domain_weights.json").read_text())
    assert [written[d] for d in r["domains"]] == pytest.approx(list(w), rel=1e-12)
    # reference weights by size: the manifest's chunk counts
    counts = np.array([doremi.open_data(config["data"]).num_sequences()[i] for i in range(3)], float)
    assert r["reference_weights"] == pytest.approx(list(counts / counts.sum()), rel=1e-12)
    for key in ("doremi_perplexity", "baseline_perplexity"):
        lp = r[key]["log_perplexity"]
        assert set(lp) == set(r["domains"]) and all(0 < v < 10 for v in lp.values())
    # a second call reuses the finished stages and returns the same summary
    assert doremi.run_pipeline(config) == r


def test_evaluate_checkpoint(run):
    out, config, r = run
    e = doremi.evaluate(out / "run" / "main-doremi", config["data"], seq_len=32)
    assert e["log_perplexity"] == pytest.approx(r["doremi_perplexity"]["log_perplexity"], rel=1e-12)


def test_pipeline_errors(tmp_path, data_dir):
    with pytest.raises(doremi.Error, match="unknown field|'bogus'"):
        doremi.run_pipeline({"data": str(data_dir), "output": str(tmp_path), "bogus": 1})
    with pytest.raises(doremi.Error, match="unknown model preset 'huge'"):
        doremi.run_pipeline({"data": str(data_dir), "output": str(tmp_path), "preset": "huge"})
    with pytest.raises(doremi.Error, match="CPU"):
        doremi.run_pipeline({"data": str(data_dir), "output": str(tmp_path), "device": "cuda"})
