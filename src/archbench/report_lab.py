"""The lab's part of the report (models trained from scratch by lab/train.py), built from stored results only.

A learning-rate sweep (a study's `train: - {name, lrs: [...]}`) is several runs with the same settings but the
learning rate; Zoology (Arora et al. 2023, Sec. 3 / App. E) reports each MQAR point as the best of its sweep, and
so do `mqar_points` and the table: one row per (model, test length x pairs) with the best accuracy, the learning
rate that reached it and how many were tried, plus the state bytes of one test sequence (KV cache or recurrent
state, measured by lab/evaluate.py) - the recall-memory frontier's x axis.
"""
from __future__ import annotations

import json
import re

from archbench import fmt

_NOT_SWEEP = ("lr", "out", "run_id", "db", "resume", "stop_after", "threads")  # what differs inside one sweep
_LR_SUFFIX = re.compile(r"-lr[0-9.e+-]+$")


def _group(run: dict) -> str:
    settings = run.get("settings", {})
    return json.dumps({k: v for k, v in settings.items() if k not in _NOT_SWEEP}, sort_keys=True)


def mqar_points(res: dict) -> list[dict]:
    """Best-of-sweep MQAR accuracy per (run group, seq_len, pairs), with the learning rate that reached it."""
    candidates: dict[tuple, list[dict]] = {}
    for run in res["lab"]:
        for row in run.get("mqar", []):
            candidates.setdefault((_group(run), row["seq_len"], row["pairs"]), []).append(
                {"label": _LR_SUFFIX.sub("", run["name"]), "family": run["family"], "arch": run["arch"],
                 "shape": run.get("shape") or {}, "seq_len": row["seq_len"], "pairs": row["pairs"],
                 "accuracy": row["accuracy"], "state_bytes": row.get("state_bytes"),
                 "lr": run.get("settings", {}).get("lr")})
    points = [{**max(ps, key=lambda p: p["accuracy"]), "tried": sorted(p["lr"] for p in ps if p["lr"] is not None)}
              for ps in candidates.values()]
    return sorted(points, key=lambda p: (p["label"], p["pairs"], p["seq_len"]))


def mqar_table(res: dict) -> tuple[list[str], list[list[str]]]:
    header = ["Model", "arch", "family", "shape", "test (length x pairs)", "accuracy", "best lr", "lrs tried",
              "state (one sequence)"]
    rows = []
    for p in mqar_points(res):
        shape = p["shape"]
        rows.append([p["label"], p["arch"], p["family"],
                     f"{shape['blocks']}x{shape['width']}" if "blocks" in shape else "-",
                     f"{p['seq_len']} x {p['pairs']}", f"{p['accuracy']:.3f}",
                     "-" if p["lr"] is None else f"{p['lr']:g}", ", ".join(f"{lr:g}" for lr in p["tried"]),
                     "-" if p["state_bytes"] is None else fmt.size(p["state_bytes"])])
    return header, rows


def loss_runs(res: dict) -> list[dict]:
    """Per lab run: training loss against tokens seen and against training wall-clock (the seconds of the
    optimizer steps, summed by the training loop; evaluation and checkpoints excluded)."""
    runs = []
    for r in res["lab"]:
        log = [e for e in r["log"] if "loss" in e and "wall_s" in e]
        runs.append({"label": f"{r['name']} ({r['family']})", "family": r["family"],
                     "data": r.get("settings", {}).get("data", "text"), "tokens": [e["tokens"] for e in log],
                     "wall_s": [e["wall_s"] for e in log], "losses": [e["loss"] for e in log]})
    return runs
