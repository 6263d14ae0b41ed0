#!/usr/bin/python3
"""DoReMi with HuggingFace transformers and the doremi package.

A GPT-NeoX reference model is trained on the reference weights, a GPT-NeoX proxy is trained with DRO against
it by DoReMiTrainer (a transformers.Trainer subclass whose batches come from doremi's WeightedDomainSampler and
whose domain weights move by doremi.DomainWeights: the library's exact update), and a main model is trained on
the proxy's averaged weights, beside a baseline on the reference weights; per-domain validation losses of both
are printed. Everything runs on the CPU in a few minutes with the defaults.

    pip install ./python            # the doremi package (from the repository root)
    python3 examples/python/hf_doremi.py --data DATA --output runs/hf   # DATA: a doremi preprocess folder
    python3 examples/python/hf_doremi.py --demo --output runs/hf        # writes a small data folder first

DoReMiTrainer.training_step is one step of Algorithm 1 on a batch split into `micro_batches` pieces: the
per-token excess losses max(l_proxy - l_ref, 0) of all pieces are summed per domain in float64
(doremi.DomainTotals) and DomainWeights.update runs once per step (the library's exact accumulation, not the
public implementation's update per micro-batch); each piece's loss is then sum_t w[d_t] l_t / sum over the
step's tokens of w[d_t], with w = DomainWeights.loss_weights(). With one piece the first forward's graph is
used; with several, a second forward per piece computes the gradient (one extra forward pass).

The sampler state and the DomainWeights state are saved in every Trainer checkpoint (doremi_state.json) and
restored with --resume, so a resumed run continues the exact batch stream (Trainer's own batch skipping is off).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, Trainer, TrainerCallback, TrainingArguments

import doremi
from doremi.torch import DataLoader, SamplerDataset

IGNORE = -1  # the sampler's target at padded positions


def token_losses(model, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy [B, T] in float32 (0 where targets are IGNORE)."""
    logits = model(input_ids=ids, use_cache=False, return_dict=True).logits
    B, T, V = logits.shape
    return F.cross_entropy(logits.reshape(B * T, V).float(), targets.reshape(-1), ignore_index=IGNORE,
                           reduction="none").view(B, T)


class SamplerTrainer(Trainer):
    """A Trainer whose batches are a doremi DataLoader's (input_ids, targets, domain_ids); the loss is the mean
    cross-entropy over target tokens (targets are already shifted: the model is not given labels)."""

    def __init__(self, *args, loader, **kwargs):
        super().__init__(*args, **kwargs)
        self.doremi_loader = loader

    def get_train_dataloader(self):
        return self.doremi_loader

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        targets = inputs["targets"].long()
        losses = token_losses(model, inputs["input_ids"].long(), targets)
        mask = targets != IGNORE
        return losses.sum() / mask.sum().clamp(min=1)


class DoReMiTrainer(SamplerTrainer):
    """The DRO proxy: see the module's docstring. `domain_weights` is a doremi.DomainWeights over the sampler's
    domains (in its order); `reference_model` is frozen. alpha_history holds alpha after every step."""

    def __init__(self, *args, reference_model, domain_weights: doremi.DomainWeights, micro_batches: int = 1,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.reference_model = reference_model.eval()
        for p in self.reference_model.parameters():
            p.requires_grad_(False)
        self.domain_weights = domain_weights
        self.micro_batches = int(micro_batches)
        self.alpha_history = []
        self.step_metrics = {}

    def training_step(self, model, inputs, num_items_in_batch=None):
        model.train()
        inputs = self._prepare_inputs(inputs)
        ids, targets, domain = inputs["input_ids"].long(), inputs["targets"].long(), inputs["domain_ids"].long()
        if ids.shape[0] % self.micro_batches:
            raise doremi.Error(f"DoReMiTrainer: a batch of {ids.shape[0]} rows does not split into "
                               f"{self.micro_batches} micro-batches")
        pieces = list(zip(ids.chunk(self.micro_batches), targets.chunk(self.micro_batches),
                          domain.chunk(self.micro_batches)))
        dw = self.domain_weights
        k = len(dw.names)
        totals = doremi.DomainTotals(k)
        kept = []
        # Steps 2-4: excess losses of every piece of the step.
        for i, t, d in pieces:
            with torch.no_grad():
                l_ref = token_losses(self.reference_model, i, t)
            if self.micro_batches == 1:
                l_proxy = token_losses(model, i, t)
                kept.append(l_proxy)
            else:
                with torch.no_grad():
                    l_proxy = token_losses(model, i, t)
            mask = t != IGNORE
            excess = torch.clamp(l_proxy.detach().double() - l_ref.double(), min=0.0)
            totals.add_tokens(excess, d.unsqueeze(1).expand_as(t), mask)
        # Steps 5-6: one update from the whole step's sums.
        dw.update(totals.excess, totals.tokens)
        self.alpha_history.append(dw.alpha.copy())
        # Step 7: the step's objective with the updated weights.
        w = torch.from_numpy(dw.loss_weights()).to(ids.device)
        denom = float(np.dot(dw.loss_weights(), totals.tokens))
        total = 0.0
        for n, (i, t, d) in enumerate(pieces):
            l_proxy = kept[n] if kept else token_losses(model, i, t)
            mask = t != IGNORE
            tok_w = torch.where(mask, w[d].unsqueeze(1).expand_as(t), torch.zeros((), dtype=torch.float64,
                                                                                  device=ids.device))
            loss = ((tok_w / denom).float() * l_proxy).sum()
            loss.backward()
            total += float((tok_w * l_proxy.detach().double()).sum()) / denom
        self.step_metrics = {"dro_loss": total,
                             **{f"alpha/{n}": float(a) for n, a in zip(dw.names, dw.alpha)}}
        return torch.tensor(total)

    def log(self, logs, *args, **kwargs):
        logs.update(self.step_metrics)
        super().log(logs, *args, **kwargs)


class DoremiStateCallback(TrainerCallback):
    """Saves the sampler's state (and DomainWeights') beside each Trainer checkpoint: doremi_state.json."""

    def __init__(self, loader: DataLoader, domain_weights: Optional[doremi.DomainWeights] = None):
        self.loader, self.domain_weights = loader, domain_weights

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        os.makedirs(folder, exist_ok=True)
        doc = {"sampler": self.loader.state_dict(),
               "domain_weights": self.domain_weights.state_dict() if self.domain_weights else None}
        tmp = os.path.join(folder, "doremi_state.json.tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, os.path.join(folder, "doremi_state.json"))


def last_checkpoint(folder: str) -> Optional[str]:
    cks = [d for d in os.listdir(folder) if d.startswith("checkpoint-")] if os.path.isdir(folder) else []
    return os.path.join(folder, max(cks, key=lambda d: int(d.split("-")[1]))) if cks else None


def training_args(out: str, a, steps: int, lr: float) -> TrainingArguments:
    return TrainingArguments(output_dir=out, max_steps=steps, learning_rate=lr, lr_scheduler_type="cosine",
                             warmup_ratio=0.05, weight_decay=0.01, adam_beta2=0.99, max_grad_norm=1.0,
                             logging_steps=max(1, steps // 10), save_steps=a.save_every or steps,
                             save_strategy="steps", report_to=[], disable_tqdm=True, use_cpu=True,
                             ignore_data_skip=True, seed=a.seed, dataloader_num_workers=0)


def new_model(vocab: int, seq_len: int, seed: int) -> GPTNeoXForCausalLM:
    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=256, max_position_embeddings=max(seq_len, 128), rotary_pct=0.25,
                        use_parallel_residual=True, hidden_dropout=0.0, attention_dropout=0.0, tie_word_embeddings=False)
    return GPTNeoXForCausalLM(cfg)


def train_lm(name, a, weights, vocab, seed):
    """A reference, main or baseline model trained on `weights`; returns the model."""
    out = os.path.join(a.output, name)
    model = new_model(vocab, a.seq_len, seed)
    ds = SamplerDataset(a.data, weights, a.batch_size, a.seq_len, a.seed, mode=a.mode)
    loader = DataLoader(ds, num_workers=a.workers)
    ck = last_checkpoint(out) if a.resume else None
    if ck:
        ds.load_state_dict(json.load(open(os.path.join(ck, "doremi_state.json")))["sampler"])
    trainer = SamplerTrainer(model=model, args=training_args(out, a, a.steps, a.lr), loader=loader,
                             callbacks=[DoremiStateCallback(loader)])
    trainer.train(resume_from_checkpoint=ck)
    return model


def train_proxy(a, reference, names, vocab):
    out = os.path.join(a.output, "proxy")
    k = len(names)
    uniform = [1.0 / k] * k  # the public runs: the proxy samples uniformly, alpha_0 uniform
    dw = doremi.DomainWeights(names, uniform, uniform, initial_score=math.log(vocab), eta=a.eta,
                              smoothing=a.smoothing)
    ds = SamplerDataset(a.data, uniform, a.batch_size * a.micro_batches, a.seq_len, a.seed, mode=a.mode)
    loader = DataLoader(ds, num_workers=a.workers)
    ck = last_checkpoint(out) if a.resume else None
    if ck:
        saved = json.load(open(os.path.join(ck, "doremi_state.json")))
        ds.load_state_dict(saved["sampler"])
        dw.load_state_dict(saved["domain_weights"])
    proxy = new_model(vocab, a.seq_len, a.seed + 1)
    trainer = DoReMiTrainer(model=proxy, args=training_args(out, a, a.steps, a.lr), loader=loader,
                            reference_model=reference, domain_weights=dw, micro_batches=a.micro_batches,
                            callbacks=[DoremiStateCallback(loader, dw)])
    trainer.train(resume_from_checkpoint=ck)
    return dw


@torch.no_grad()
def validation_losses(model, data_dir, names, seq_len, max_rows=64):
    """Mean per-token loss on each domain's validation chunks (nats/token)."""
    model.eval()
    val = doremi.open_data(data_dir, "validation")
    out = {}
    for d, name in enumerate(val.domains):
        total, n = 0.0, 0
        for i in range(min(val.num_sequences()[d], max_rows)):
            seq = torch.from_numpy(val.sequence(d, i)[: seq_len + 1]).long()
            if len(seq) < 2:
                continue
            l = token_losses(model, seq[None, :-1], seq[None, 1:])
            total += float(l.sum())
            n += len(seq) - 1
        out[name] = total / max(n, 1)
    return out


def write_demo_data(folder: str) -> str:
    """Three small domains of text (tokenized by bytes) with a validation split."""
    rng = np.random.default_rng(0)
    words = {"prose": "the of and a to in is was he for it with as his on be at by".split(),
             "code": "def return if else for in range ( ) : = + self import print".split(),
             "noise": [chr(c) for c in range(33, 127)]}
    os.makedirs(folder, exist_ok=True)
    src = os.path.join(folder, "corpus.jsonl")
    with open(src, "w") as f:
        for dom, vocab in words.items():
            for _ in range(300):
                text = " ".join(rng.choice(vocab, size=int(rng.integers(30, 120))))
                f.write(json.dumps({"text": text, "meta": {"domain": dom}}) + "\n")
    out = os.path.join(folder, "data")
    doremi.preprocess(src, out, "bytes", domain_key="meta.domain", seq_len=129, validation_share=0.1, progress=False)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="a data folder (doremi preprocess, Megatron or save_to_disk layout)")
    ap.add_argument("--demo", action="store_true", help="write a small demo data folder into OUTPUT first")
    ap.add_argument("--output", required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8, help="rows per micro-batch")
    ap.add_argument("--micro-batches", type=int, default=1, help="pieces per proxy step (exact accumulation)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eta", type=float, default=1.0)
    ap.add_argument("--smoothing", type=float, default=1e-3)
    ap.add_argument("--mode", choices=["random", "deterministic"], default="random")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (the stream is the same)")
    ap.add_argument("--vocab", type=int, default=0, help="model vocabulary (default: the data's tokenizer)")
    ap.add_argument("--save-every", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="continue each stage from its last checkpoint")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if a.demo:
        a.data = write_demo_data(os.path.join(a.output, "demo"))
    if not a.data:
        ap.error("give --data or --demo")

    data = doremi.open_data(a.data)
    names = data.domains
    vocab = a.vocab or int(data.manifest.get("vocab_size", 0) if isinstance(data.manifest, dict) else 0) or 257
    vocab = (vocab + 63) // 64 * 64
    sizes = np.array(data.num_sequences(), dtype=float)
    reference_weights = list(sizes / sizes.sum())  # by size, the paper's default
    print(f"domains {names}; reference weights (by size) {np.round(reference_weights, 4).tolist()}")

    reference = train_lm("reference", a, reference_weights, vocab, a.seed)
    dw = train_proxy(a, reference, names, vocab)
    avg = dw.average
    with open(os.path.join(a.output, "doremi_weights.json"), "w") as f:
        json.dump(dict(zip(names, avg.tolist())), f, indent=2)
    print(f"DoReMi weights (average alpha over {dw.count - 1} steps): "
          f"{dict(zip(names, np.round(avg, 4).tolist()))}")

    main_model = train_lm("main-doremi", a, list(avg), vocab, a.seed + 2)
    baseline = train_lm("main-baseline", a, reference_weights, vocab, a.seed + 2)
    lm, lb = validation_losses(main_model, a.data, names, a.seq_len), validation_losses(baseline, a.data, names,
                                                                                         a.seq_len)
    print(f"\n{'domain':<12} {'reference w':>11} {'DoReMi w':>9} {'baseline loss':>14} {'DoReMi loss':>12}")
    for i, n in enumerate(names):
        print(f"{n:<12} {reference_weights[i]:11.4f} {avg[i]:9.4f} {lb[n]:14.4f} {lm[n]:12.4f}")
    print(f"{'average':<12} {'':>11} {'':>9} {np.mean(list(lb.values())):14.4f} {np.mean(list(lm.values())):12.4f}")
    print(f"{'worst':<12} {'':>11} {'':>9} {max(lb.values()):14.4f} {max(lm.values()):12.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
