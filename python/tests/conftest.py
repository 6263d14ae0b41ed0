"""Fixtures for the doremi package's tests: small data folders written by the package's own preprocess and by
HuggingFace datasets, and the C++ reference (tests/test_python_reference.cpp in the doremi_tests binary)."""
import json
import os
import subprocess

import numpy as np
import pytest

import doremi

DOMAINS = [("arxiv", 40), ("books", 25), ("code", 60)]


def required() -> bool:
    return os.environ.get("DOREMI_REQUIRE_PYTHON") == "1"


def need(module: str):
    """Imports a module the test needs; skips without it, fails under DOREMI_REQUIRE_PYTHON=1."""
    try:
        return __import__(module)
    except ImportError as e:
        if required():
            pytest.fail(f"cannot import {module} but DOREMI_REQUIRE_PYTHON=1: {e}")
        pytest.skip(f"{module} not installed (scripts/install_python_deps.sh)")


def write_corpus(path, seed=0):
    rng = np.random.default_rng(seed)
    lines = []
    for dom, n in DOMAINS:
        for i in range(n):
            length = int(rng.integers(10, 200))
            text = "".join(chr(int(c)) for c in rng.integers(97, 123, size=length))
            lines.append(json.dumps({"text": f"{dom} {i} {text}", "meta": {"domain": dom}}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("pack") / "data"
    doremi.preprocess(corpus, out, "bytes", domain_key="meta.domain", seq_len=32, validation_share=0.2, seed=3,
                      threads=1, progress=False)
    return out


@pytest.fixture(scope="session")
def nopack_dir(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("nopack") / "data"
    doremi.preprocess(corpus, out, "bytes", domain_key="meta.domain", seq_len=32, pack=False, seed=3, threads=1,
                      progress=False)
    return out


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory):
    """<root>/train/<domain>/ folders written by datasets.save_to_disk (input_ids lists)."""
    datasets = need("datasets")
    datasets.disable_progress_bars()
    root = tmp_path_factory.mktemp("hf") / "data"
    rng = np.random.default_rng(5)
    for d, (name, n) in enumerate(DOMAINS):
        rows = [[int(x) for x in rng.integers(0, 50000, size=int(rng.integers(5, 80)))] for _ in range(n)]
        datasets.Dataset.from_dict({"input_ids": rows}).save_to_disk(str(root / "train" / name))
    return root


@pytest.fixture
def reference(tmp_path):
    """reference(job) -> bytes the library's C++ writes for the job (see tests/test_python_reference.cpp)."""
    exe = os.environ.get("DOREMI_TESTS_BIN")
    if not exe:
        if required():
            pytest.fail("DOREMI_TESTS_BIN is not set but DOREMI_REQUIRE_PYTHON=1 (ctest sets it)")
        pytest.skip("DOREMI_TESTS_BIN (the doremi_tests binary) not set: no C++ reference")

    def run(job):
        job_file, out_file = tmp_path / "job.json", tmp_path / "out.bin"
        job_file.write_text(json.dumps(job))
        env = dict(os.environ, DOREMI_PY_REFERENCE_JOB=str(job_file), DOREMI_PY_REFERENCE_OUT=str(out_file))
        r = subprocess.run([exe, "--no-skip", "-tc=python package reference"], env=env, capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "1 passed" in r.stdout or "| 1 passed" in r.stdout, r.stdout  # the case ran (not filtered out)
        return out_file.read_bytes()

    return run
