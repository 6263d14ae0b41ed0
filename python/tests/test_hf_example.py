"""The HF example's DoReMiTrainer (examples/python/hf_doremi.py: a transformers Trainer subclass on the package's
DomainWeights) against the library's DROTrainer: the same checkpoints and batches as tests/test_dro_parity.cpp
writes them, alpha after each of 20 steps within the bound that test's PyTorch twin uses (relative 1e-4)."""
import json
import math
import os
import subprocess
import sys

import pytest

import doremi
from conftest import need, required

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RTOL = 1e-4  # tests/test_dro_parity.cpp runs tests/python/dro_parity.py with --rtol 1e-4 (alpha's floor: 1e-12)
STEPS = 20


def rel_err(a, b, floor=1e-12):
    return max(abs(x - y) / max(abs(y), floor) for x, y in zip(a, b))


def test_alpha_trajectory_matches_dro_trainer(tmp_path):
    torch = need("torch")
    need("transformers")
    need("accelerate")
    need("safetensors")
    exe = os.environ.get("DOREMI_TESTS_BIN")
    if not exe:
        if required():
            pytest.fail("DOREMI_TESTS_BIN is not set but DOREMI_REQUIRE_PYTHON=1 (ctest sets it)")
        pytest.skip("DOREMI_TESTS_BIN (the doremi_tests binary) not set")
    d = tmp_path / "parity"
    r = subprocess.run([exe, "-tc=dro parity: whole DRO steps*"], env=dict(os.environ, DOREMI_DRO_PARITY_DIR=str(d)),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = json.loads((d / "run.json").read_text())
    lib = [json.loads(line) for line in (d / "library_metrics.jsonl").read_text().splitlines() if line.strip()]

    from safetensors.torch import load_file
    from torch.optim.lr_scheduler import LambdaLR
    from transformers import GPTNeoXForCausalLM, TrainingArguments
    sys.path.insert(0, os.path.join(REPO, "examples", "python"))
    import hf_doremi

    torch.set_num_threads(2)
    b = load_file(str(d / "batches.safetensors"))
    ids, tgt, dom = b["input_ids"], b["targets"], b["domain"]
    accum, B, T = int(run["grad_accum"]), int(run["micro_batch"]), int(run["seq_len"])
    steps = min(STEPS, int(run["steps"]))
    batches = [{"input_ids": ids[s * accum:(s + 1) * accum].reshape(accum * B, T),
                "targets": tgt[s * accum:(s + 1) * accum].reshape(accum * B, T),
                "domain_ids": dom[s * accum:(s + 1) * accum].reshape(accum * B)} for s in range(steps)]
    loader = torch.utils.data.DataLoader(batches, batch_size=None)

    def load(name):
        return GPTNeoXForCausalLM.from_pretrained(str(d / name), attn_implementation="eager",
                                                  torch_dtype=torch.float32)

    lrs = [float(x) for x in run["lr"]]
    base = max(lrs)

    class Parity(hf_doremi.DoReMiTrainer):
        def create_scheduler(self, num_training_steps, optimizer=None):  # the library's schedule, per step
            self.lr_scheduler = LambdaLR(optimizer or self.optimizer, lambda s: lrs[min(s, len(lrs) - 1)] / base)
            return self.lr_scheduler

    adam = run["adamw"]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=steps, learning_rate=base,
                             weight_decay=float(adam["weight_decay"]), adam_beta1=float(adam["beta1"]),
                             adam_beta2=float(adam["beta2"]), adam_epsilon=float(adam["eps"]),
                             max_grad_norm=float(run["max_grad_norm"]), optim="adamw_torch", use_cpu=True,
                             report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True,
                             dataloader_num_workers=0)
    dw = doremi.DomainWeights(run["domains"], run["initial_weights"], run["sampling_weights"],
                              initial_score=float(run["initial_score"]), eta=float(run["eta"]),
                              smoothing=float(run["smoothing"]))
    trainer = Parity(model=load("proxy_init"), args=args, loader=loader, reference_model=load("reference"),
                     domain_weights=dw, micro_batches=accum)
    trainer.train()
    assert len(trainer.alpha_history) == steps
    worst = 0.0
    for s in range(steps):
        err = rel_err(trainer.alpha_history[s], lib[s]["alpha"])
        worst = max(worst, err)
        assert err <= RTOL, f"step {s + 1}: alpha {list(trainer.alpha_history[s])} vs library {lib[s]['alpha']}"
    assert rel_err(dw.average, lib[steps - 1]["avg_alpha"]) <= RTOL
    # alpha moved: the comparison is not of constants
    assert rel_err(lib[steps - 1]["alpha"], [x / sum(run["initial_weights"]) for x in run["initial_weights"]]) > 0.01
    print(f"HF DoReMiTrainer vs library DROTrainer: {steps} steps, max relative alpha difference {worst:.2e}")
