"""The offline demo: `archbench demo` runs the shipped demo study (studies/demo.yaml) and returns its report.

Every zoo family plus SmolLM2-135M-Instruct, free-form questions, SQuAD 0/3-shot, a small efficiency sweep
and a short LoRA run of SmolLM2, all on a CPU without the hub. SQuAD comes from `data_dir` (the CLI's
--data-dir, else $ARCHBENCH_DATA). Same as `archbench run demo`, with the output folder set by `out`.
"""
from __future__ import annotations

from pathlib import Path

from archbench.study import run_study


def run_demo(*, out: str = "runs/demo", data_dir: str | None = None, dry_run: bool = False) -> Path:
    """Run (or list) the demo study into `out`; returns the path of report.md."""
    env = {"ARCHBENCH_DATA": str(data_dir)} if data_dir else None
    result = run_study(study="demo", dry_run=dry_run, env=env, out=out)
    return Path(result["spec"]["report"]["out"] or out) / "report.md"
