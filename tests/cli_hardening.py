#!/usr/bin/env python3
"""Bad input and faults against the real `doremi` program, one group per class
of failure a user can meet (issue: hardening for real users):

  crash       every failure exits 1 with one line "error: ..." naming what is wrong
  stale       a rerun with other settings or data refuses to reuse the old output
  concurrent  a second run on a locked output folder fails naming the holder's pid
  collision   domain names that differ only in characters a file name cannot hold
  late        a run config's invalid later stages fail before any work
  leftovers   SIGINT/SIGTERM remove staging folders; killed runs leave no duplicate metrics
  downstream  `doremi downstream` on bad task folders, flags and output paths

usage: cli_hardening.py PATH/TO/doremi [GROUP...]
Prints one line per case and a table of the counts; exits 1 if any case fails.
Standard library only.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

DOREMI = os.path.abspath(sys.argv[1])
GROUPS = sys.argv[2:] or ["crash", "stale", "concurrent", "collision", "late", "leftovers", "downstream"]
W = tempfile.mkdtemp(prefix="doremi-hardening-")
RESULTS = {}  # group -> [passed, failed]
FAILURES = []
TINY = ["--preset", "tiny", "--seq-len", "32", "--batch", "2"]


def run(*args, timeout=300, **kw):
    try:
        return subprocess.run([DOREMI, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:  # counts as a failure of the case
        return subprocess.CompletedProcess(e.cmd, None, "", f"(still running after {timeout} s)")


def record(group, name, ok, detail=""):
    RESULTS.setdefault(group, [0, 0])[0 if ok else 1] += 1
    print(f"{'ok' if ok else 'FAILED'}: [{group}] {name}" + ("" if ok else f"\n    {detail}"), flush=True)
    if not ok:
        FAILURES.append(f"[{group}] {name}")


def expect_error(group, name, result, *needles):
    """Exit status 1 and one stderr line 'error: ...', the last, containing every needle (progress lines may precede)."""
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error")]
    ok = (result.returncode == 1 and len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("error: ")
          and all(n in errors[0] for n in needles))
    record(group, name, ok, f"rc={result.returncode} stderr={result.stderr[-600:]!r} wanted {needles}")
    return ok


def expect_ok(group, name, result):
    record(group, name, result.returncode == 0, f"rc={result.returncode} stderr={result.stderr[-600:]!r}")


def write_corpus(path, domains, docs=30):
    with open(path, "w") as f:
        for i in range(docs):
            for d in domains:
                text = f"{d} document {i}: " + ("the quick brown fox jumps over the lazy dog " * 4)
                f.write(json.dumps({"text": text, "meta": {"set": d}}) + "\n")


def edit_json(path, change):
    with open(path) as f:
        j = json.load(f)
    change(j)
    with open(path, "w") as f:
        json.dump(j, f)


def metric_steps(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [json.loads(l)["step"] for l in f if l.strip()]


def kill_after_steps(args, out, steps, timeout):
    """Runs doremi with `args`, SIGKILLs it once OUT/metrics.jsonl lists `steps` steps (or after `timeout` s)."""
    p = subprocess.Popen([DOREMI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if len(metric_steps(out)) >= steps:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.02)
    p.kill()
    p.wait()


# A small dataset with a validation split, one without, and a reference model.
CORPUS = os.path.join(W, "corpus.jsonl")
write_corpus(CORPUS, ["alpha", "beta", "gamma"])
DATA, DATA_NOVAL = os.path.join(W, "data"), os.path.join(W, "data-noval")
for out, extra in [(DATA, ["--validation-share", "0.2"]), (DATA_NOVAL, [])]:
    r = run("preprocess", "--input", CORPUS, "--domain-key", "meta.set", "--seq-len", "32", "--output", out, *extra)
    assert r.returncode == 0, r.stderr
REF = os.path.join(W, "ref")
r = run("train", "--data", DATA, *TINY, "--steps", "3", "--output", REF)
assert r.returncode == 0, r.stderr


def crash():
    g = "crash"
    expect_error(g, "eval on a folder preprocessed without a validation split",
                 run("eval", "--model", REF, "--data", DATA_NOVAL), "validation split", DATA_NOVAL)
    for t in ["100000", "-3"]:
        expect_error(g, f"preprocess --threads {t}", run("preprocess", "--input", CORPUS, "--domain-key", "meta.set",
                                                        "--threads", t, "--output", os.path.join(W, "p-threads")),
                     "--threads", t)
    expect_error(g, "quickstart --threads 100000", run("quickstart", "--threads", "100000", "--output",
                                                       os.path.join(W, "qs")), "--threads")
    a_file = os.path.join(W, "a-file")
    open(a_file, "w").close()
    expect_error(g, "train --output names a file", run("train", "--data", DATA, *TINY, "--steps", "1", "--output", a_file),
                 a_file, "not a folder")
    expect_error(g, "preprocess --output names a file", run("preprocess", "--input", CORPUS, "--domain-key", "meta.set",
                                                           "--output", a_file), a_file)
    for ro in ["/sys/doremi-hardening", "/sys/kernel"]:
        if os.path.isdir("/sys/kernel"):
            expect_error(g, f"train --output on a read-only file system ({ro})",
                         run("train", "--data", DATA, *TINY, "--steps", "1", "--output", ro), ro)
    # JSON that parses but holds a wrong type or an out-of-range number.
    for field, value in [("num_hidden_layers", "two"), ("num_hidden_layers", 1e300), ("vocab_size", -5),
                         ("hidden_size", None)]:
        m = os.path.join(W, f"model-{field}")
        shutil.rmtree(m, ignore_errors=True)
        shutil.copytree(os.path.join(REF, "final"), m)
        edit_json(os.path.join(m, "config.json"), lambda j: j.__setitem__(field, value))
        expect_error(g, f"eval: config.json with {field} = {json.dumps(value)}", run("eval", "--model", m, "--data", DATA),
                     "config.json")
    d = os.path.join(W, "data-badmanifest")
    shutil.copytree(DATA, d)
    edit_json(os.path.join(d, "manifest.json"), lambda j: j.__setitem__("seq_len", "long"))
    expect_error(g, "eval: manifest.json with seq_len = \"long\"", run("eval", "--model", REF, "--data", d), "manifest.json")
    d2 = os.path.join(W, "data-badcount")
    shutil.copytree(DATA, d2)
    edit_json(os.path.join(d2, "manifest.json"), lambda j: j["domains"]["beta"]["train"].__setitem__("pack_chunks", -1))
    expect_error(g, "baseline-weights: manifest count of -1", run("baseline-weights", "--data", d2, "--output",
                                                                  os.path.join(W, "bw.json")), "manifest.json", "beta")
    # A checkpoint's trainer state with a field of the wrong type.
    ck = os.path.join(W, "ckpt-bad")
    r = run("train", "--data", DATA, *TINY, "--steps", "4", "--checkpoint-every", "2", "--output", ck)
    assert r.returncode == 0, r.stderr
    os.remove(os.path.join(ck, "done.json"))
    shutil.rmtree(os.path.join(ck, "final"))
    last = sorted(e for e in os.listdir(ck) if e.startswith("checkpoint-"))[-1]
    shutil.rmtree(os.path.join(ck, last))  # resume from checkpoint 2, whose state we break
    first = sorted(e for e in os.listdir(ck) if e.startswith("checkpoint-"))[-1]
    edit_json(os.path.join(ck, first, "trainer_state.json"), lambda j: j.__setitem__("step", "two"))
    expect_error(g, "train resume: trainer_state.json with step = \"two\"",
                 run("train", "--data", DATA, *TINY, "--steps", "4", "--checkpoint-every", "2", "--output", ck), ck)
    # Out of memory: a batch far beyond the address space allowed.
    r = subprocess.run(["bash", "-c", f'ulimit -v 4000000; exec "{DOREMI}" train --data {DATA} --preset tiny '
                        f'--seq-len 32 --batch 200000000 --steps 1 --output {W}/oom'],
                       capture_output=True, text=True, timeout=120)
    expect_error(g, "train --batch 200000000 under a 4 GB address-space limit", r, "memory", "--batch")
    for flag, value in [("--seq-len", "0"), ("--batch", "0"), ("--steps", "-1"), ("--warmup", "2")]:
        args = ["train", "--data", DATA, *TINY, "--steps", "2", "--output", os.path.join(W, "t-flags")]
        i = args.index(flag) if flag in args else None
        if i is not None:
            args[i + 1] = value
        else:
            args += [flag, value]
        expect_error(g, f"train {flag} {value}", run(*args), flag, value)
    # A huge η: η·λ overflows (1e308) or the update is meaningless; refused, naming the flag.
    for eta, accum in [("1e308", "1"), ("1e300", "3")]:
        r = run("dro", "--data", DATA, "--reference", REF, "--seq-len", "32", "--batch", "2", "--grad-accum", accum,
                "--steps", "3", "--eta", eta, "--output", os.path.join(W, f"dro-eta-{eta}"))
        expect_error(g, f"dro --eta {eta} --grad-accum {accum}", r, "--eta", eta.replace("e", "e+"))
    # generate: bad flags and prompts, named.
    for flags, needles in [(["--top-p", "2"], ["--top-p", "2"]), (["--temperature", "0"], ["--temperature"]),
                           (["--top-k", "-1"], ["--top-k"]), (["--max-new-tokens", "0"], ["--max-new-tokens"]),
                           (["--max-new-tokens", "100000"], ["prompt 0", "context"])]:
        expect_error(g, f"generate {' '.join(flags)}", run("generate", "--model", REF, "--prompt", "ab", *flags),
                     *needles)
    expect_error(g, "generate with an empty prompt", run("generate", "--model", REF, "--prompt", ""), "prompt 0 is empty")
    expect_error(g, "generate without a prompt", run("generate", "--model", REF), "--prompt")
    bad = os.path.join(W, "prompts-bad.txt")
    with open(bad, "w") as f:
        f.write('"fine"\nnot json\n')
    expect_error(g, "generate --prompts-file with a line that is not a JSON string",
                 run("generate", "--model", REF, "--prompts-file", bad), bad, "line 2")
    r = run("generate", "--model", REF, "--prompt", "ab", "--max-new-tokens", "5", "--json", "--ignore-eos")
    ok = r.returncode == 0 and len(json.loads(r.stdout.splitlines()[0])["tokens"]) == 5
    record(g, "generate --json prints the prompt's 5 new tokens", ok, f"rc={r.returncode} {r.stdout[-300:]!r} {r.stderr[-300:]!r}")


def stale():
    g = "stale"
    out = os.path.join(W, "stale-train")
    base = ["train", "--data", DATA, *TINY, "--output", out]
    expect_ok(g, "first train run", run(*base, "--steps", "3"))
    expect_ok(g, "identical rerun reuses the finished output", run(*base, "--steps", "3"))
    expect_error(g, "rerun with more --steps", run(*base, "--steps", "5"), "steps", "--overwrite")
    expect_error(g, "rerun with --steps below the checkpoint's", run(*base, "--steps", "2"), "steps")
    expect_error(g, "rerun with another --lr", run(*base, "--steps", "3", "--lr", "0.01"), "lr")
    expect_error(g, "rerun with another --seq-len", run("train", "--data", DATA, "--preset", "tiny", "--batch", "2",
                                                        "--seq-len", "16", "--steps", "3", "--output", out), "seq_len")
    expect_error(g, "rerun with other --weights", run(*base, "--steps", "3", "--weights", "pack"), "weights")
    r = run(*base, "--steps", "5", "--overwrite")
    ok = r.returncode == 0 and metric_steps(out) == [1, 2, 3, 4, 5]
    record(g, "--overwrite starts afresh with the new settings", ok, r.stderr[-400:])
    # Another data folder (same domains, other text) under the same output.
    other = os.path.join(W, "corpus2.jsonl")
    write_corpus(other, ["alpha", "beta", "gamma"], docs=40)
    data2 = os.path.join(W, "data2")
    run("preprocess", "--input", other, "--domain-key", "meta.set", "--seq-len", "32", "--validation-share", "0.2",
        "--output", data2)
    expect_error(g, "rerun on other data", run("train", "--data", data2, *TINY, "--steps", "5", "--output", out), "data")
    # A resume below a checkpoint's step (the library check behind the fingerprint).
    foreign = os.path.join(W, "foreign")
    os.makedirs(foreign)
    open(os.path.join(foreign, "notes.txt"), "w").close()
    expect_error(g, "train into a folder of other files", run(*base[:-1], foreign, "--steps", "2"), "fingerprint.json")
    r = run("train", "--data", DATA, *TINY, "--output", foreign, "--steps", "2", "--overwrite")
    expect_error(g, "--overwrite refuses a folder that is not a doremi output", r, "does not look like")
    # preprocess
    pre = os.path.join(W, "stale-pre")
    pargs = ["preprocess", "--input", CORPUS, "--domain-key", "meta.set", "--validation-share", "0.2", "--output", pre]
    expect_ok(g, "preprocess", run(*pargs, "--seq-len", "32"))
    expect_error(g, "preprocess rerun with another --seq-len", run(*pargs, "--seq-len", "16"), "seq_len")
    expect_error(g, "preprocess rerun with --nopack", run(*pargs, "--seq-len", "32", "--nopack"), "pack")
    with open(CORPUS, "a") as f:
        f.write(json.dumps({"text": "one more alpha document", "meta": {"set": "alpha"}}) + "\n")
    expect_error(g, "preprocess rerun after the input changed", run(*pargs, "--seq-len", "32"), "inputs")
    # dro
    dro = os.path.join(W, "stale-dro")
    dargs = ["dro", "--data", DATA, "--reference", REF, "--seq-len", "32", "--batch", "2", "--steps", "3", "--output", dro]
    expect_ok(g, "dro", run(*dargs))
    expect_error(g, "dro rerun with another --eta", run(*dargs, "--eta", "2"), "eta")
    # pipeline: a finished run, then the config changes.
    cfg = {"data": DATA, "output": os.path.join(W, "stale-pipe"), "preset": "tiny", "seq_len": 32, "baseline": False,
           "reference": {"steps": 2, "batch_size": 2}, "proxy": {"steps": 2, "batch_size": 2},
           "main": {"steps": 2, "batch_size": 2}}
    path = os.path.join(W, "pipe.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    expect_ok(g, "pipeline", run("pipeline", "--config", path))
    cfg["main"]["steps"] = 3
    with open(path, "w") as f:
        json.dump(cfg, f)
    expect_error(g, "pipeline rerun with other main steps", run("pipeline", "--config", path), "main.steps")
    expect_ok(g, "pipeline --overwrite", run("pipeline", "--config", path, "--overwrite"))
    # A stage folder of the pipeline edited by hand: the stage's own fingerprint catches it.
    edit_json(os.path.join(cfg["output"], "round-1", "reference", "fingerprint.json"),
              lambda j: j["settings"].__setitem__("lr", 0.5))
    expect_error(g, "pipeline stage whose fingerprint differs", run("pipeline", "--config", path), "reference", "lr")


def concurrent():
    g = "concurrent"
    out = os.path.join(W, "locked")
    first = subprocess.Popen([DOREMI, "train", "--data", DATA, *TINY, "--steps", "100000", "--output", out],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = os.path.join(out, ".doremi.lock")
    deadline = time.time() + 60
    while time.time() < deadline and not (os.path.exists(lock) and open(lock).read().strip()):
        time.sleep(0.05)
    time.sleep(0.3)
    try:
        expect_error(g, "a second train into a folder being written", run("train", "--data", DATA, *TINY, "--steps",
                                                                          "100000", "--output", out, timeout=30),
                     "in use", str(first.pid))
        expect_error(g, "--overwrite of a folder being written",
                     run("train", "--data", DATA, *TINY, "--steps", "3", "--output", out, "--overwrite", timeout=30),
                     str(first.pid))
        cfg = os.path.join(W, "locked.json")
        with open(cfg, "w") as f:
            json.dump({"data": DATA, "output": out, "seq_len": 32}, f)
        expect_error(g, "a pipeline into a folder being written", run("pipeline", "--config", cfg, timeout=30),
                     str(first.pid))
        record(g, "the first run is still running", first.poll() is None)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    expect_error(g, "after the holder died, the folder is free (and its settings are checked)",
                 run("train", "--data", DATA, *TINY, "--steps", "3", "--output", out), "steps")


def collision():
    g = "collision"
    for names in [["a/b", "a_b"], ["x\\y", "x_y"], ["..", "_.."], ["tab\there", "tab_here"], [".hidden", "%2Ehidden"]]:
        corpus = os.path.join(W, "collide.jsonl")
        with open(corpus, "w") as f:
            for i, n in enumerate(names):
                for k in range(20 + 10 * i):
                    f.write(json.dumps({"text": f"{n} {k} " + "lorem ipsum dolor sit amet " * 3, "d": n}) + "\n")
        out = os.path.join(W, f"collide-{len(RESULTS.get(g, [0, 0]))}-{sum(RESULTS.get(g, [0, 0]))}")
        r = run("preprocess", "--input", corpus, "--domain-key", "d", "--seq-len", "16", "--output", out)
        if r.returncode != 0:
            record(g, f"preprocess {names}", False, r.stderr[-400:])
            continue
        m = json.load(open(os.path.join(out, "manifest.json")))
        folders = [m["domains"][n]["folder"] for n in names]
        on_disk = sorted(os.listdir(os.path.join(out, "train")))
        docs = [m["domains"][n]["train"]["documents"] for n in names]
        ok = len(set(folders)) == len(names) and sorted(folders) == on_disk and docs == [20, 30]
        record(g, f"domains {names!r} get their own folders", ok, f"folders {folders}, on disk {on_disk}, docs {docs}")
        r = run("baseline-weights", "--data", out, "--mode", "nopack", "--output", os.path.join(W, "cw.json"))
        r2 = run("train", "--data", out, "--preset", "tiny", "--seq-len", "16", "--batch", "2", "--steps", "1",
                 "--output", out + "-train")
        record(g, f"train reads both domains {names!r}", r.returncode == 0 and r2.returncode == 0, r2.stderr[-400:])
    # A manifest written before the escaping (no "folder" entries) still opens.
    old = os.path.join(W, "data-old")
    shutil.copytree(DATA, old)
    edit_json(os.path.join(old, "manifest.json"), lambda j: [e.pop("folder", None) for e in j["domains"].values()])
    expect_ok(g, "a manifest without folder entries still opens", run("eval", "--model", REF, "--data", old))


def late():
    g = "late"
    for stage, bad, needle in [("main", {"lr": -1}, "lr"), ("main", {"beta2": 1.5}, "beta2"),
                               ("proxy", {"end_lr": -1}, "end_lr")]:
        out = os.path.join(W, f"late-{stage}")
        cfg = {"data": DATA, "output": out, "preset": "tiny", "seq_len": 32,
               "reference": {"steps": 30, "batch_size": 2}, "proxy": {"steps": 30, "batch_size": 2},
               "main": {"steps": 2, "batch_size": 2}}
        cfg[stage].update(bad)
        path = os.path.join(W, f"late-{stage}-{needle}.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        r = run("pipeline", "--config", path)
        if expect_error(g, f"pipeline with {stage} {bad}", r, path, stage, needle):
            record(g, f"... and no stage ran ({stage} {bad})", not os.path.exists(os.path.join(out, "round-1")))
    cfg = {"data": DATA, "output": os.path.join(W, "late-ctx"), "preset": "tiny", "main_preset": "tiny", "seq_len": 100000}
    path = os.path.join(W, "late-ctx.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    expect_error(g, "pipeline with a seq_len beyond the context", run("pipeline", "--config", path), path, "seq_len")


def stop_while_staging(args, out, sig):
    """Starts `doremi args`, stops it while a checkpoint staging folder exists, sends `sig`; returns the Popen."""
    for attempt in range(20):
        shutil.rmtree(out, ignore_errors=True)
        err = open(os.path.join(W, "stderr.txt"), "w+")
        p = subprocess.Popen([DOREMI, *args], stdout=subprocess.DEVNULL, stderr=err, text=True)
        deadline = time.time() + 60
        while p.poll() is None and time.time() < deadline:
            try:
                staging = [e for e in os.listdir(out) if e.startswith(".checkpoint-") and ".tmp-" in e]
            except FileNotFoundError:
                staging = []
            if staging:
                os.kill(p.pid, signal.SIGSTOP)
                if any(os.path.exists(os.path.join(out, s)) for s in staging):
                    os.kill(p.pid, sig)
                    os.kill(p.pid, signal.SIGCONT)
                    p.wait(timeout=60)
                    err.seek(0)
                    p.err_text = err.read()
                    return p
                os.kill(p.pid, signal.SIGCONT)
        p.kill()
        p.wait()
    raise RuntimeError("never caught a checkpoint being staged")


def leftovers():
    g = "leftovers"
    out = os.path.join(W, "interrupted")
    args = ["train", "--data", DATA, *TINY, "--steps", "100000", "--checkpoint-every", "1", "--output", out]
    for sig, code in [(signal.SIGINT, 130), (signal.SIGTERM, 143)]:
        p = stop_while_staging(args, out, sig)
        left = [e for e in os.listdir(out) if ".tmp-" in e]
        record(g, f"{sig.name} while a checkpoint is staged: exit {code}, no staging folder left",
               p.returncode == code and not left and "error: interrupted" in p.err_text,
               f"rc={p.returncode} left={left} stderr={p.err_text[-300:]!r}")
    # SIGKILL cannot be caught: the next run on the folder removes what it left.
    p = stop_while_staging(args, out, signal.SIGKILL)
    left = [e for e in os.listdir(out) if ".tmp-" in e]
    r = run("train", "--data", DATA, *TINY, "--steps", "1", "--checkpoint-every", "1", "--output", out)
    left_after = [e for e in os.listdir(out) if ".tmp-" in e]
    record(g, "after SIGKILL while staging, the next run removes the staging folder", bool(left) and not left_after,
           f"before {left}, after {left_after}")
    # A run killed before its first checkpoint: the rerun lists every step once.
    out = os.path.join(W, "nockpt")
    margs = ["train", "--data", DATA, *TINY, "--steps", "400", "--output", out]
    kill_after_steps(margs, out, 5, timeout=60)
    r = run(*margs)
    steps = metric_steps(out) if r.returncode == 0 else []
    record(g, "rerun after a kill without checkpoints: metrics.jsonl lists steps 1..400 once",
           steps == list(range(1, 401)), f"rc={r.returncode} {len(steps)} lines, stderr {r.stderr[-300:]!r}")
    # A kill after a checkpoint: metrics are cut back to it.
    out = os.path.join(W, "ckpt-kill")
    cargs = ["train", "--data", DATA, *TINY, "--steps", "400", "--checkpoint-every", "50", "--output", out]
    kill_after_steps(cargs, out, 70, timeout=120)
    r = run(*cargs)
    steps = metric_steps(out) if r.returncode == 0 else []
    record(g, "rerun after a kill past a checkpoint: metrics.jsonl lists steps 1..400 once",
           steps == list(range(1, 401)), f"rc={r.returncode} {len(steps)} lines")


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def downstream():
    g = "downstream"
    tasks = os.path.join(W, "tasks")
    text = [{"text": f"the quick brown fox jumps over the lazy dog {i}"} for i in range(4)]
    for split in ["validation", "test"]:
        write_jsonl(os.path.join(tasks, "lambada", f"{split}.jsonl"), text)
    out = os.path.join(W, "downstream.json")
    base = ["downstream", "--model", REF, "--output", out]

    def expect_error_no_output(name, result, *needles):
        if expect_error(g, name, result, *needles):
            record(g, f"... and no --output file ({name})", not os.path.exists(out))

    expect_error_no_output("--data folder missing", run(*base, "--data", os.path.join(W, "no-tasks"), "--tasks",
                                                        "lambada"), "--data", "no-tasks")
    expect_error_no_output("unknown task", run(*base, "--data", tasks, "--tasks", "lambada,trivia"), "trivia")
    nosplit = os.path.join(W, "tasks-nosplit")
    write_jsonl(os.path.join(nosplit, "lambada", "validation.jsonl"), text)
    expect_error_no_output("a task folder without its evaluation split",
                           run(*base, "--data", nosplit, "--tasks", "lambada"), "lambada", "test")
    nofield = os.path.join(W, "tasks-nofield")
    for split in ["validation", "test"]:
        write_jsonl(os.path.join(nofield, "lambada", f"{split}.jsonl"), [{"txt": "a b c"}])
    expect_error_no_output("a task split without its field", run(*base, "--data", nofield, "--tasks", "lambada"),
                           "text")
    empty = os.path.join(W, "empty-run")
    os.makedirs(empty, exist_ok=True)
    expect_error_no_output("--all-checkpoints on a folder without checkpoints",
                           run("downstream", "--run", empty, "--all-checkpoints", "--data", tasks, "--tasks", "lambada",
                               "--output", out), empty, "no checkpoints")
    for bad_out in [os.path.join(W, "no-such-folder", "r.json"), "/sys/doremi-downstream.json"]:
        expect_error(g, f"--output {bad_out} cannot be written",
                     run("downstream", "--model", REF, "--data", tasks, "--tasks", "lambada", "--output", bad_out),
                     "--output", bad_out)
    preds = os.path.join(W, "predictions.jsonl")
    r = run("downstream", "--run", REF, "--all-checkpoints", "--data", tasks, "--tasks", "lambada", "--output", out,
            "--predictions", preds)
    expect_ok(g, "--run --all-checkpoints with --output and --predictions", r)
    if r.returncode == 0:
        res = json.load(open(out))
        lines = [json.loads(l) for l in open(preds)]
        steps = [c["step"] for c in res["checkpoints"]]
        record(g, "... one result per checkpoint in step order, one prediction line per example and checkpoint",
               steps == sorted(steps) and len(lines) == 4 * len(steps) and
               all({"task", "prompt", "raw", "processed", "answers", "correct"} <= set(l) for l in lines),
               f"steps {steps}, {len(lines)} prediction lines")


try:
    for group in GROUPS:
        try:
            globals()[group]()
        except Exception as e:  # a case that could not even run counts as failed
            record(group, "the group ran to its end", False, repr(e))
finally:
    shutil.rmtree(W, ignore_errors=True)
print("\nclass        cases  passed")
for group, (passed, failed) in RESULTS.items():
    print(f"{group:<12} {passed + failed:>5}  {passed:>6}")
if FAILURES:
    print(f"{len(FAILURES)} failed: " + "; ".join(FAILURES))
    sys.exit(1)
