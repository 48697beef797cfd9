"""The SQuAD evaluation recipe: models x shot settings x trials, scored, timed, stored, resumable.

Protocol (defaults): greedy decoding, stop at the first newline, 32 new tokens; official SQuAD v1.1 EM/F1
over all gold answers (Rajpurkar et al. 2016) plus the seed study's strict match and `contains`.
Few-shot sets come from a separate pool and, as in HELM (Liang et al. 2022), one trial draws one shot set
that every question of the trial shares; several trials measure how much the choice of shots moves scores.
Every finished batch is committed to the SQLite store at once; a rerun of the same run directory skips
finished examples, and summary.json / predictions.jsonl are rebuilt from stored rows.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from archbench import data as data_mod
from archbench import loading, metrics, prompts
from archbench.generation import DEFAULT_ENGINE, GenSettings, generate
from archbench.store import Store
from archbench.trackers import MemoryTracker, Timer, environment

DEFAULT_DB = "runs/archbench.sqlite"
# settings that change what a stored prediction means: a rerun in the same run directory must match them
PROTOCOL_KEYS = ("data", "gold", "prompt_style", "shots_from", "seed", "max_new_tokens", "stop", "dtype")


def stored_run(run_dir: Path, settings: dict) -> tuple[str, list[str]] | None:
    """The run stored in `run_dir` (None: none yet) as its run id and the protocol keys on which `settings`
    differ from it."""
    meta = run_dir / "run.json"
    if not meta.exists():
        return None
    run = json.loads(meta.read_text())
    old = run["protocol"]
    return run["run_id"], sorted(k for k in PROTOCOL_KEYS
                                 if old.get(k) != (list(settings[k]) if k == "stop" else settings[k]))


def _open_run(run_dir: Path, config: dict) -> str:
    """Return the run id of `run_dir`, creating it; refuse a rerun whose protocol differs."""
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = run_dir / "run.json"
    found = stored_run(run_dir, config)
    if found:
        run_id, changed = found
        if changed:
            raise ValueError(f"{meta}: this run directory was made with other settings ({', '.join(changed)}); "
                             "use a new --run-dir")
        return run_id
    run_id = f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    meta.write_text(json.dumps({"run_id": run_id, "protocol": {k: config[k] for k in PROTOCOL_KEYS}}, indent=1))
    return run_id


def _rows(batch, todo, fitted, shot_count) -> list[dict]:
    rows = []
    for c in batch.completions:
        ex, fit = todo[c.index], fitted[c.index]
        prediction = c.text.strip()
        rows.append({"id": ex.id, "shots": shot_count, "shots_used": fit.shots_used,
                     "context_truncated": fit.context_truncated, "prompt_tokens": c.prompt_tokens,
                     "new_tokens": c.new_tokens, "prompt": fit.text, "prediction": prediction, "raw": c.raw,
                     "golds": list(ex.answers), **metrics.score(prediction, c.raw, ex.answers)})
    return rows


def _warm_up(lm, text: str, settings: GenSettings, engine: str) -> None:
    """One short untimed generation so lazy initialisation never lands in a timed region."""
    warm = GenSettings(max_new_tokens=2, stop=settings.stop, batch_size=1, compile=settings.compile)
    for _ in generate(lm, [text], warm, engine):
        pass


def summarize(store: Store, run_id: str) -> dict:
    """Recompute the summary of an eval run from its stored rows (the single source of every number)."""
    run = store.run(run_id)
    models = store.models(run_id)
    groups: dict[tuple, list[dict]] = {}
    for row in store.predictions(run_id):
        groups.setdefault((row["model"], row["shots"], row["trial"]), []).append(row)
    results = []
    for (model, shots, trial), rows in groups.items():
        batches = store.batches(run_id, model, shots, trial)
        prefill_s = sum(b["prefill_s"] for b in batches)
        decode_s = sum(b["decode_s"] for b in batches)
        wall_s = sum(b["wall_s"] for b in batches)
        new_tokens = sum(b["new_tokens"] for b in batches)
        info = batches[-1]["info"] if batches else {}
        mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
        meta = models.get(model, {})
        results.append({
            "model": model, "family": meta.get("family"), "params": meta.get("params"),
            "untrained": bool(meta.get("untrained")), "adapter": meta.get("adapter"),
            "shots": shots, "trial": trial, "n": len(rows),
            "shots_used_mean": mean("shots_used"),
            "em": mean("em"), "f1": mean("f1"), "seed_em": mean("seed_em"), "contains": mean("contains"),
            "empty": sum(1 for r in rows if r["prediction"] == ""),
            "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
            "generated_tokens": sum(r["new_tokens"] for r in rows),
            "prefill_s": prefill_s, "decode_s": decode_s,
            "prefill_tok_s": sum(b["prefill_tokens"] for b in batches) / prefill_s if prefill_s else 0.0,
            "decode_tok_s": sum(b["decode_tokens"] for b in batches) / decode_s if decode_s else 0.0,
            "gen_tok_s": new_tokens / (prefill_s + decode_s) if prefill_s + decode_s else 0.0,
            "ttft_ms": 1000 * statistics.median(b["prefill_s"] for b in batches) if batches else 0.0,
            "chars_s": sum(b["chars"] for b in batches) / wall_s if wall_s else 0.0,
            "peak_mem_mb": max((b["peak_mem_mb"] for b in batches), default=0.0),
            "wall_s": wall_s, "batches": len(batches),
            "engine": info.get("engine"), "kernel": info.get("kernel"),
        })
    order = list(models)  # the order the models were evaluated in
    results.sort(key=lambda r: (order.index(r["model"]) if r["model"] in order else len(order), r["shots"], r["trial"]))
    return {"run_id": run_id, "env": run["env"], "config": run["config"], "results": results,
            "aggregates": aggregate(results)}


def aggregate(results: list[dict]) -> list[dict]:
    """Mean and spread over trials for each model x shot setting."""
    out: dict[tuple, list[dict]] = {}
    for r in results:
        out.setdefault((r["model"], r["shots"]), []).append(r)
    aggs = []
    for (model, shots), rs in out.items():
        agg = {"model": model, "shots": shots, "trials": len(rs)}
        for key in ("em", "f1", "seed_em", "contains", "gen_tok_s", "empty"):
            values = [r[key] for r in rs]
            agg[f"{key}_mean"] = statistics.fmean(values)
            agg[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        aggs.append(agg)
    return aggs


_LINE_KEYS = ("shots_used", "prompt_tokens", "prediction", "golds", "em", "f1")


def _line(example_id: str, model: str, shots: int, trial: int, row: dict) -> str:
    """One predictions.jsonl row."""
    return json.dumps({"id": example_id, "model": model, "shots": shots, "trial": trial,
                       **{k: row[k] for k in _LINE_KEYS}}) + "\n"


def _write_outputs(store: Store, run_id: str, run_dir: Path) -> dict:
    summary = summarize(store, run_id)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    with open(run_dir / "predictions.jsonl", "w") as f:  # rebuilt from the store: no duplicates after a resume
        for r in store.predictions(run_id):
            f.write(_line(r["example_id"], r["model"], r["shots"], r["trial"], r))
    return summary


def evaluate(*, models: list[str], data: str, gold: str | None = None, shots: list[int] = (0,),
             shots_from: str | None = None, trials: int = 1, limit: int | None = None,
             prompt_style: str = "default", batch_size: int = 8, max_new_tokens: int = 32,
             stop: tuple[str, ...] = ("\n",), run_dir: str = "runs/eval", db: str = DEFAULT_DB,
             device: str = "cpu", dtype: str = "float32", engine: str = DEFAULT_ENGINE, adapter: str | None = None,
             seed: int = 1234, compile: bool = False) -> dict:
    """Evaluate every model x shot setting x trial on SQuAD; returns the summary (also in run_dir)."""
    examples = data_mod.load_examples(data, gold=gold, limit=limit)
    style = prompts.load_style(prompt_style)
    config = {"models": list(models), "data": data, "gold": gold, "shots": list(shots), "shots_from": shots_from,
              "trials": trials, "limit": limit, "prompt_style": prompt_style, "batch_size": batch_size,
              "max_new_tokens": max_new_tokens, "stop": list(stop), "device": device, "dtype": dtype,
              "engine": engine, "adapter": adapter, "seed": seed, "compile": compile}
    run_path = Path(run_dir)
    run_id = _open_run(run_path, config)
    settings = GenSettings(max_new_tokens=max_new_tokens, stop=tuple(stop), batch_size=batch_size, compile=compile)
    shot_sets = {(k, t): prompts.resolve_shots(shots_from, k, seed=seed + t, evaluated=examples, data_source=data)
                 for k in shots if k > 0 for t in range(trials)}  # resolved up front: a bad pool fails before work
    with Store(db) as store, open(run_path / "predictions.jsonl", "a") as live:
        store.ensure_run(run_id, "eval", config, environment(device))
        for name in models:
            lm = loading.load(name, device=device, dtype=dtype, adapter=adapter)
            store.add_model(run_id, lm)
            warmed = False
            for k in shots:
                for trial in range(trials if k > 0 else 1):
                    done = store.done_ids(run_id, lm.name, k, trial)
                    todo = [e for e in examples if e.id not in done]
                    if not todo:
                        continue
                    shot_set = shot_sets.get((k, trial), [])
                    fitted = [prompts.fit_prompt(style, e, shot_set, lm.tokenizer, lm.max_len, max_new_tokens)
                              for e in todo]
                    if not warmed:
                        _warm_up(lm, fitted[0].text, settings, engine)
                        warmed = True
                    _run_setting(store, live, run_id, lm, k, trial, todo, fitted, settings, engine, len(done))
        summary = _write_outputs(store, run_id, run_path)
    return summary


def _run_setting(store, live, run_id, lm, k, trial, todo, fitted, settings, engine, already) -> None:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(f"{lm.name} {k}-shot trial {trial}", total=len(todo) + already, completed=already)
        stream = generate(lm, [f.text for f in fitted], settings, engine)
        while True:
            with MemoryTracker(lm.device) as mem, Timer(lm.device) as wall:
                batch = next(stream, None)
            if batch is None:
                break
            rows = _rows(batch, todo, fitted, k)
            store.add_batch(run_id, lm.name, k, trial, rows, {
                "n": len(rows), "prefill_tokens": batch.prefill_tokens, "decode_tokens": batch.decode_tokens,
                "new_tokens": sum(c.new_tokens for c in batch.completions),
                "chars": sum(len(c.raw) for c in batch.completions), "prefill_s": batch.prefill_s,
                "decode_s": batch.decode_s, "wall_s": wall.result.seconds, "peak_mem_mb": mem.result.peak_mb,
                "info": {**batch.info, "memory": asdict(mem.result)}})
            live.writelines(_line(r["id"], lm.name, k, trial, r) for r in rows)
            live.flush()
            bar.advance(task, len(rows))
