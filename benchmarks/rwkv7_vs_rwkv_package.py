"""RWKV-7 on CPU: archbench's family functions (families/rwkv7.py) against BlinkDL's own runtime, the `rwkv`
package (`RWKV(model, strategy="cpu fp32")` with RWKV_V7_ON=1), on one random checkpoint in BlinkDL's `.pth`
layout (the RWKV-7 0.1B shape by default: 12 layers, width 768, world vocabulary).

Measured in one process, interleaved (package, ours, package, ...), medians of --repeats: prefill of a
--prompt-token prompt (time to the first token's logits) and per-token decode over --steps greedy steps at
batch 1 (the package's only batch size) and ours at batch 8. Greedy tokens of both are compared (must be
identical). Timings depend on the host; on a shared machine use --threads 1 --clock cpu.

    python benchmarks/rwkv7_vs_rwkv_package.py --threads 1 --clock cpu
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from archbench import fastlinear
from archbench.families import rwkv7 as fam
from archbench.models.rwkv7 import Rwkv7ForCausalLM
from archbench.models.rwkv_convert import cached, random_pth

CLOCK = [time.perf_counter]  # --clock cpu: time.process_time (CPU seconds of this process; with one thread a
# fairer measure on a shared, loaded host, where wall time counts time spent waiting for a core)


def _package():
    os.environ.update(RWKV_V7_ON="1", RWKV_JIT_ON="0", RWKV_CUDA_ON="0")
    spec = importlib.util.find_spec("rwkv.model")
    if spec is None:
        raise SystemExit("this benchmark needs BlinkDL's rwkv package: pip install rwkv")
    import rwkv.model

    return rwkv.model


def _theirs(ref, prompt, steps):
    t0 = CLOCK[0]()
    logits, state = ref.forward(prompt, None)
    t1 = CLOCK[0]()
    toks = [int(logits.argmax())]
    for _ in range(steps):
        logits, state = ref.forward([toks[-1]], state)
        toks.append(int(logits.argmax()))
    return t1 - t0, (CLOCK[0]() - t1) / steps, toks


def _ours(model, prompt, steps, rows=1):
    with torch.inference_mode(), fastlinear.packed(model):
        t0 = CLOCK[0]()
        state, logits = fam.FAMILY.prefill(model, [prompt] * rows)
        t1 = CLOCK[0]()
        toks = [int(logits[0].argmax())]
        for _ in range(steps):
            state, logits = fam.FAMILY.step(model, logits.argmax(-1), state)
            toks.append(int(logits[0].argmax()))
    return t1 - t0, (CLOCK[0]() - t1) / steps, toks


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = ap.parse_args()
    if args.clock == "cpu":
        CLOCK[0] = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    ref_mod = _package()
    with tempfile.TemporaryDirectory() as tmp:
        random_pth(Path(tmp) / "m.pth", vocab=args.vocab, width=args.width, layers=args.layers)
        ref = ref_mod.RWKV(model=str(Path(tmp) / "m"), strategy="cpu fp32")
        model = Rwkv7ForCausalLM.from_pretrained(str(cached(Path(tmp) / "m.pth", Path(tmp) / "cache"))).eval()
    prompt = torch.randint(0, args.vocab, (args.prompt,), generator=torch.Generator().manual_seed(0)).tolist()
    res = {"rwkv package, batch 1": [], "archbench, batch 1": [], "archbench, batch 8": []}
    _theirs(ref, prompt[:16], 2), _ours(model, prompt[:16], 2)  # warm-up
    for _ in range(args.repeats):
        res["rwkv package, batch 1"].append(_theirs(ref, prompt, args.steps))
        res["archbench, batch 1"].append(_ours(model, prompt, args.steps))
        res["archbench, batch 8"].append(_ours(model, prompt, args.steps, rows=8))
    same = res["rwkv package, batch 1"][0][2] == res["archbench, batch 1"][0][2] == res["archbench, batch 8"][0][2]
    print(f"RWKV-7 L{args.layers}-D{args.width}, vocab {args.vocab}, prompt {args.prompt}, {args.steps} steps, "
          f"threads {torch.get_num_threads()}, {args.clock} clock; greedy tokens identical: {same}")
    print(f"{'':24} {'prefill s':>10} {'prefill tok/s':>14} {'decode ms/step':>15} {'decode tok/s':>13}")
    for name, runs in res.items():
        rows = 8 if name.endswith("8") else 1
        pre, dec = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        print(f"{name:24} {pre:10.3f} {rows * args.prompt / pre:14.0f} {dec * 1e3:15.1f} {rows / dec:13.1f}")


if __name__ == "__main__":
    main()
