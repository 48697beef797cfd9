"""The summary of an eval run, recomputed from its stored rows (the single source of every number).

One result per model x shots x trial x breakdown group (e.g. context length): the mean of every metric the
task declares (a count for metrics that are not rates), tokens, and the batches' timing; aggregates give the
mean and spread over trials. Runs stored before tasks existed were SQuAD runs and get SQuAD's metrics.
`processes` says how many processes ran an eval (distributed.py) and its throughput over the slowest rank.
"""
from __future__ import annotations

import json
import statistics

from archbench.store import Store

SQUAD_SPEC = {"name": "squad", "title": "SQuAD v1.1", "breakdown": [],
              "metrics": [{"name": "em", "label": "EM", "percent": True},
                          {"name": "f1", "label": "F1", "percent": True},
                          {"name": "seed_em", "label": "seed acc", "percent": True},
                          {"name": "contains", "label": "contains", "percent": True},
                          {"name": "empty", "label": "empty", "percent": False}]}


def task_spec(config: dict) -> dict:
    """The task spec stored with a run's config (SQuAD's for runs stored before tasks existed)."""
    if config.get("task_spec"):
        return config["task_spec"]
    from archbench.tasks.squad import columns

    return {**SQUAD_SPEC, "columns": list(columns(config.get("prompt_style", ""), config.get("shots_from")))}


def _key(meta: dict, breakdown: list[str]) -> str:
    return json.dumps({k: meta.get(k) for k in breakdown}, sort_keys=True)


def _timing(batches: list[dict]) -> dict:
    prefill_s = sum(b["prefill_s"] for b in batches)
    decode_s = sum(b["decode_s"] for b in batches)
    wall_s = sum(b["wall_s"] for b in batches)
    new_tokens = sum(b["new_tokens"] for b in batches)
    info = batches[-1]["info"] if batches else {}
    return {"prefill_s": prefill_s, "decode_s": decode_s,
            "prefill_tok_s": sum(b["prefill_tokens"] for b in batches) / prefill_s if prefill_s else 0.0,
            "decode_tok_s": sum(b["decode_tokens"] for b in batches) / decode_s if decode_s else 0.0,
            "gen_tok_s": new_tokens / (prefill_s + decode_s) if prefill_s + decode_s else 0.0,
            "ttft_ms": 1000 * statistics.median(b["prefill_s"] for b in batches) if batches else 0.0,
            "chars_s": sum(b["chars"] for b in batches) / wall_s if wall_s else 0.0,
            "peak_mem_mb": max((b["peak_mem_mb"] for b in batches), default=0.0),
            "wall_s": wall_s, "batches": len(batches), "engine": info.get("engine"), "kernel": info.get("kernel")}


def _result(spec: dict, meta: dict, rows: list[dict], batches: list[dict]) -> dict:
    scores = {}
    for m in spec["metrics"]:
        total = sum(r["scores"].get(m["name"], 0.0) for r in rows)
        scores[m["name"]] = total / len(rows) if m["percent"] else total
    return {**meta, "n": len(rows), "shots_used_mean": sum(r["shots_used"] for r in rows) / len(rows), **scores,
            "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
            "generated_tokens": sum(r["new_tokens"] for r in rows), **_timing(batches)}


def summarize(store: Store, run_id: str) -> dict:
    """Recompute the summary of an eval run from its stored rows."""
    run = store.run(run_id)
    spec, models = task_spec(run["config"]), store.models(run_id)
    groups: dict[tuple, list[dict]] = {}
    for row in store.predictions(run_id):
        key = (row["model"], row["shots"], row["trial"], _key(row["meta"], spec["breakdown"]))
        groups.setdefault(key, []).append(row)
    results = []
    for (model, shots, trial, group), rows in groups.items():
        batches = [b for b in store.batches(run_id, model, shots, trial)
                   if _key(b["info"].get("group") or {}, spec["breakdown"]) == group]
        m = models.get(model, {})
        meta = {"model": model, "family": m.get("family"), "layers": m.get("layers"), "params": m.get("params"),
                "untrained": bool(m.get("untrained")), "adapter": m.get("adapter"), "shots": shots, "trial": trial,
                "group": json.loads(group)}
        results.append(_result(spec, meta, rows, batches))
    order = list(models)  # the order the models were evaluated in
    results.sort(key=lambda r: (order.index(r["model"]) if r["model"] in order else len(order), r["shots"],
                                json.dumps(r["group"], sort_keys=True), r["trial"]))
    skipped = store.records(run_id, "skipped")
    out = {"run_id": run_id, "env": run["env"], "config": run["config"], "task": spec, "results": results,
           "aggregates": aggregate(results, spec), "skipped": len(skipped)}
    attempts = store.records(run_id, "processes")
    return {**out, "processes": processes(attempts)} if attempts else out


def processes(attempts: list[dict]) -> dict:
    """How many processes ran (per attempt: a resumed run may change the count), each rank's timing, and
    throughput as all ranks' tokens over the slowest rank's wall time (summed over attempts)."""
    ranks = [r for a in attempts for r in a["ranks"]]
    slowest = sum(max(r.get("wall_s", 0.0) for r in a["ranks"]) for a in attempts)
    tokens = {k: sum(r.get(k, 0) for r in ranks) for k in ("prefill_tokens", "decode_tokens", "new_tokens")}
    return {"world": [a["world"] for a in attempts], "device_map": attempts[-1].get("device_map"),
            "ranks": attempts[-1]["ranks"], "slowest_wall_s": slowest, **tokens,
            "tok_s": (tokens["prefill_tokens"] + tokens["decode_tokens"]) / slowest if slowest else 0.0,
            "gen_tok_s": tokens["new_tokens"] / slowest if slowest else 0.0}


def aggregate(results: list[dict], spec: dict = SQUAD_SPEC) -> list[dict]:
    """Mean and spread over trials for each model x shot setting x breakdown group."""
    out: dict[tuple, list[dict]] = {}
    for r in results:
        out.setdefault((r["model"], r["shots"], json.dumps(r.get("group", {}), sort_keys=True)), []).append(r)
    aggs = []
    for (model, shots, group), rs in out.items():
        agg = {"model": model, "shots": shots, "group": json.loads(group), "trials": len(rs)}
        for key in [m["name"] for m in spec["metrics"]] + ["gen_tok_s"]:
            values = [r[key] for r in rs]
            agg[f"{key}_values"] = values
            agg[f"{key}_mean"] = statistics.fmean(values)
            agg[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        aggs.append(agg)
    return aggs
