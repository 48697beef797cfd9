"""Training-step time of every architecture at matched size, measured in one process, interleaved.

The issue-13 table re-measured with the lab's own training path (train.setup + train.train_step: the same
model, fast mixers, optimizer and batches `archbench train` uses). Each architecture is matched to the
non-embedding parameters of nanoGPT's baby GPT (GPT-2, 4 x 128) with shapes.match; rounds go round-robin over
the architectures so a drifting load on a shared host hits all alike; the median step of all rounds is
reported with the ratio to GPT-2's. `--reference` also times transformers' own forward (slow: a few steps).

    python -m archbench.lab.steptime --steps 10 --rounds 3 --threads 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from archbench.lab import shapes
from archbench.lab.train import TrainConfig, setup, train_step


def measure(archs: list[str], steps: int, rounds: int, fast: bool, threads: int | None) -> list[dict]:
    """Median ms per optimizer step (batch 12 x 64 characters) per architecture."""
    tmp = Path(tempfile.mkdtemp(prefix="steptime-"))
    target = shapes.non_embedding_params(shapes.build("gpt2", 128, 4, 67, 64))
    runs, times = {}, {a: [] for a in archs}
    for arch in archs:
        cfg = TrainConfig(out=str(tmp / arch), arch=arch, params=target, iters=10 ** 6, fast=fast,
                          threads=threads, db=str(tmp / "t.sqlite"))
        runs[arch] = (cfg, setup(cfg))
        train_step(cfg, runs[arch][1], 0)  # warm-up
    for r in range(rounds):
        for arch in archs:
            cfg, run = runs[arch]
            times[arch] += [train_step(cfg, run, 1 + r * steps + i)["step_s"] for i in range(steps)]
    base = statistics.median(times[archs[0]])
    rows = []
    for arch in archs:
        cfg, run = runs[arch]
        ms = statistics.median(times[arch]) * 1000
        rows.append({"arch": arch, "shape": f"{run['shape']['blocks']}x{run['shape']['width']}",
                     "params": run["shape"]["params"], "non_embedding": run["shape"]["non_embedding_params"],
                     "kernel": run["kernel"], "ms_per_step": round(ms, 1),
                     "vs_first": round(ms / 1000 / base, 2), "samples": len(times[arch])})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="gpt2,llama,mamba,mamba2,rwkv")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--reference", action="store_true", help="transformers' forward instead of the fast mixers")
    a = p.parse_args()
    rows = measure([x.strip() for x in a.arch.split(",")], a.steps, a.rounds, not a.reference, a.threads)
    print("| arch | shape | params | non-embedding | kernel | ms / step | vs first |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['arch']} | {r['shape']} | {r['params']:,} | {r['non_embedding']:,} | {r['kernel']} | "
              f"{r['ms_per_step']} | {r['vs_first']}x |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
