#!/usr/bin/python3
"""Self-test of gptneox_parity.py, make_parity_fixture.py and
save_hf_checkpoint.py (no C++ needed): the parity script must pass on
transformers' own outputs and fail on a perturbed or missing tensor.

usage: test_gptneox_parity.py [--keep DIR]
Prints one line per case and closes with 'N passed, N failed'; exit 1 if any failed.
Takes about 15 s on one core.
"""
import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gptneox_parity  # noqa: E402
import make_parity_fixture  # noqa: E402
import neox_common as nc  # noqa: E402
import save_hf_checkpoint  # noqa: E402
import torch  # noqa: E402

results = []


def parity(*argv):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = gptneox_parity.main(list(argv))
    return rc, buf.getvalue()


def case(name, ok, detail=""):
    results.append(ok)
    print(f"{'PASS' if ok else 'FAIL'}: {name}" + (f"\n{detail}" if not ok and detail else ""))


def copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_outputs(d, fn):
    p = os.path.join(d, "outputs.safetensors")
    t = nc.load_file(p)
    fn(t)
    nc.save_file(t, p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="write the fixtures here and keep them")
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = args.keep or tempfile.mkdtemp(prefix="parity-selftest-")
    os.makedirs(root, exist_ok=True)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            make_parity_fixture.main([os.path.join(root, "fx")])
        par, seq = os.path.join(root, "fx", "parallel"), os.path.join(root, "fx", "sequential")

        for d in (par, seq):
            rc, out = parity(d)
            case(f"parity passes on transformers' outputs ({os.path.basename(d)})", rc == 0, out)
        rc, out = parity(par, "--float64", "--rtol", "1e-6")
        case("float64 reference agrees to 1e-6", rc == 0, out)

        # The exit status through a real process, as the C++ test sees it.
        p = subprocess.run([sys.executable, os.path.join(HERE, "gptneox_parity.py"), seq, "--quiet"],
                           capture_output=True, text=True)
        case("command line exits 0 on a match", p.returncode == 0, p.stdout + p.stderr)

        d = copy(par, os.path.join(root, "perturbed"))
        name = "gpt_neox.layers.1.attention.dense.weight"

        def bump(t):
            g = t[name]
            g[3, 5] += 1e-3 * g.norm()
        edit_outputs(d, bump)
        rc, out = parity(d)
        case("one perturbed gradient element fails", rc == 1 and name in out and "FAIL" in out, out)
        p = subprocess.run([sys.executable, os.path.join(HERE, "gptneox_parity.py"), d],
                           capture_output=True, text=True)
        case("command line exits 1 on a mismatch", p.returncode == 1, p.stdout + p.stderr)
        rc, _ = parity(d, "--rtol", "1e-2")
        case("--rtol loosens the threshold", rc == 0)

        d = copy(seq, os.path.join(root, "missing"))
        edit_outputs(d, lambda t: t.pop("gpt_neox.final_layer_norm.bias"))
        rc, out = parity(d)
        case("a missing gradient fails", rc == 1 and "MISSING" in out, out)

        d = copy(seq, os.path.join(root, "badloss"))
        edit_outputs(d, lambda t: t["losses"].mul_(1.001))
        rc, out = parity(d)
        case("perturbed losses fail", rc == 1, out)

        d = copy(seq, os.path.join(root, "nometa"))
        w = nc.load_file(os.path.join(d, "model.safetensors"))
        nc.save_file(w, os.path.join(d, "model.safetensors"))
        rc, out = parity(d)
        case("model.safetensors without format metadata fails clearly", rc == 1 and "__metadata__" in out, out)

        d = copy(par, os.path.join(root, "badcfg"))
        cfg = nc.read_json(os.path.join(d, "config.json"))
        cfg["rope_theta"] = 500.0
        json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
        rc, out = parity(d)
        case("inconsistent rotary_emb_base / rope_theta fails", rc == 1 and "rope_theta" in out, out)

        d = copy(par, os.path.join(root, "wrongweight"))
        w = nc.load_file(os.path.join(d, "model.safetensors"))
        w.pop("embed_out.weight")
        nc.save_file(w, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        rc, out = parity(d)
        case("an untied checkpoint without embed_out.weight fails to load", rc == 1 and "embed_out" in out, out)

        d = copy(seq, os.path.join(root, "writeref"))
        os.remove(os.path.join(d, "outputs.safetensors"))
        ref = os.path.join(root, "ref.safetensors")
        rc, out = parity(d, "--write-reference", ref)
        ok = rc == 0 and os.path.isfile(ref)
        if ok:
            shutil.copy(ref, os.path.join(d, "outputs.safetensors"))
            rc, out = parity(d, "--rtol", "0")
            ok = rc == 0
        case("--write-reference writes outputs that then match exactly", ok, out)

        for flags in ([], ["--sequential", "--tied", "--gelu", "gelu_new", "--layers", "3", "--hidden", "48",
                           "--heads", "3", "--rotary-pct", "0.5", "--vocab", "96", "--seq", "9"]):
            d = os.path.join(root, "hf-" + ("default" if not flags else "custom"))
            with contextlib.redirect_stdout(io.StringIO()):
                save_hf_checkpoint.main([d] + flags)
            cfg = nc.read_json(os.path.join(d, "config.json"))
            rc, out = parity(d)
            tied_ok = ("embed_out.weight" in nc.load_file(os.path.join(d, "model.safetensors"))) != ("--tied" in flags)
            case(f"save_hf_checkpoint.py {' '.join(flags) or '(defaults)'} round-trips",
                 rc == 0 and tied_ok and cfg["model_type"] == "gpt_neox", out)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    passed = sum(results)
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
