"""The eval recipe: models x shot settings x trials on one task (tasks/), scored, timed, stored, resumable.

Protocol (defaults in config.py): greedy decoding, stop at the first newline, 32 new tokens. The task decides
the items, how a prompt is built and fitted to each model's window, and the metrics. As in HELM (Liang et al.
2022) one trial draws one shot set that every item of the trial shares; several trials measure how much the
choice of shots moves scores. Items are generated group by group of the task's breakdown (e.g. one context
length at a time), so each group's timing is its own. Every finished batch is committed to the SQLite store at
once; a rerun of the same run directory skips finished items, and summary.json / predictions.jsonl are
rebuilt from stored rows. Items a model cannot take (longer than its window) are skipped and recorded.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from archbench import identity, loading, tasks
from archbench.config import EvalConfig, GenConfig, check_device
from archbench.generation import generate
from archbench.store import Store
from archbench.summary import summarize
from archbench.trackers import MemoryTracker, Timer, environment


def run_identity(cfg: EvalConfig, task, items: list, shot_sets: dict) -> dict:
    """What the stored predictions of this run depend on (identity.py): content digests, not paths."""
    return {"task": task.name, "options": identity.options(task.identity()), **identity.items(items),
            "shots": identity.shots(shot_sets),
            "gen": {"max_new_tokens": cfg.gen.max_new_tokens, "stop": list(cfg.gen.stop), "dtype": cfg.runtime.dtype}}


def stored_run(run_dir: Path, wanted: dict) -> tuple[str, list[str]] | None:
    """The run stored in `run_dir` (None: none yet) as its run id and what differs between its identity and
    `wanted` (an empty list: the same run)."""
    meta = run_dir / "run.json"
    if not meta.exists():
        return None
    run = json.loads(meta.read_text())
    if "identity" not in run:  # written before content identities: compare its protocol keys, as it did
        old, new = {"task": "squad", **run["protocol"]}, {"task": wanted["task"], **wanted["options"], **wanted["gen"]}
        return run["run_id"], sorted(k for k in old if k in new and old[k] != new[k] and k not in ("data", "gold",
                                                                                                 "shots_from"))
    return run["run_id"], identity.changes(run["identity"], wanted)


def _open_run(run_dir: Path, wanted: dict, new_run: bool) -> str:
    """The run id of `run_dir`: its stored run when the identity matches, a new one with --new-run or an empty
    directory; a mismatch is refused in one line naming what changed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    found = None if new_run else stored_run(run_dir, wanted)
    meta = run_dir / "run.json"
    if found:
        run_id, changed = found
        if changed:
            raise ValueError(f"{meta}: this run directory holds a run of other content ({'; '.join(changed)}); "
                             "rerun with --new-run or use a new --run-dir")
        record = json.loads(meta.read_text())
    else:
        run_id, record = f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}", {"models": {}}
    meta.write_text(json.dumps({**record, "run_id": run_id, "identity": wanted}, indent=1))
    return run_id


def _check_model(run_dir: Path, lm) -> dict:
    """The model's identity; refuse when a model this run already evaluated now has other weights / adapter."""
    meta = run_dir / "run.json"
    record = json.loads(meta.read_text())
    mine = identity.model(lm)
    changed = identity.model_changes(record.get("models", {}), lm.name, mine)
    if changed:
        raise ValueError(f"{meta}: {changed} since this run evaluated it; rerun with --new-run or use a new "
                         "--run-dir")
    record.setdefault("models", {})[lm.name] = mine
    meta.write_text(json.dumps(record, indent=1))
    return mine


def run_config(cfg: EvalConfig, task, wanted: dict) -> dict:
    """The flat record of a run's settings stored with it (the report's provenance reads it); paths are
    information, `identity` (without the per-item digests) is what the run is."""
    return {"models": list(cfg.models), **task.identity(), "shots": list(cfg.shots), "trials": cfg.trials,
            "identity": {k: v for k, v in wanted.items() if k != "rows"},
            "batch_size": cfg.gen.batch_size, "max_new_tokens": cfg.gen.max_new_tokens, "stop": list(cfg.gen.stop),
            "compile": cfg.gen.compile, **asdict(cfg.runtime), "adapter": cfg.adapter,
            "task_spec": task_spec(task)}


def task_spec(task) -> dict:
    """What tables and plots need to know of a task without importing it."""
    return {"name": task.name, "title": task.title, "breakdown": list(task.breakdown),
            "columns": list(task.columns), "metrics": [asdict(m) for m in task.metrics]}


@dataclass
class _Run:
    """One eval run in progress: what every stage of the loop needs."""

    cfg: EvalConfig
    task: object
    store: Store
    live: object  # predictions.jsonl, appended per batch
    run_id: str
    shot_sets: dict


def evaluate(cfg: EvalConfig) -> dict:
    """Evaluate every model x shot setting x trial on the task; returns the summary (also in run_dir)."""
    check_device(cfg.runtime.device)
    task = tasks.make(cfg.task, **cfg.task_options)
    run_path = Path(cfg.run_dir)
    items = task.items()
    shot_sets = {(k, t): task.shots(k, t) for k in cfg.shots if k > 0 for t in range(cfg.trials)}  # fail early
    wanted = run_identity(cfg, task, items, shot_sets)
    run_id = _open_run(run_path, wanted, cfg.new_run)
    with Store(cfg.db) as store, open(run_path / "predictions.jsonl", "a") as live:
        store.ensure_run(run_id, "eval", run_config(cfg, task, wanted), environment(cfg.runtime.device))
        run = _Run(cfg, task, store, live, run_id, shot_sets)
        for name in cfg.models:
            _evaluate_model(run, name, items)
        return _write_outputs(store, run_id, run_path)


def _evaluate_model(run: _Run, name: str, items: list) -> None:
    rt = run.cfg.runtime
    lm = loading.load(name, device=rt.device, dtype=rt.dtype, adapter=run.cfg.adapter)
    digests = _check_model(Path(run.cfg.run_dir), lm)
    run.store.add_model(run.run_id, lm)
    run.store.put(run.run_id, "model_identity", lm.name, digests)
    warmed = False
    for k in run.cfg.shots:
        for trial in range(run.cfg.trials if k > 0 else 1):
            done = run.store.done_ids(run.run_id, lm.name, k, trial)
            skipped = {r["key"] for r in run.store.records(run.run_id, "skipped")}
            todo = [it for it in items if it.id not in done and f"{lm.name}|{k}|{trial}|{it.id}" not in skipped]
            if not todo:
                continue
            prompts = _build(run, lm, todo, run.shot_sets.get((k, trial), []), (k, trial))
            if prompts and not warmed:
                _warm_up(lm, prompts[0][1].text, run.cfg.gen, rt.engine)
                warmed = True
            for group in _groups(run.task, prompts):
                _generate_group(run, lm, (k, trial), group, len(done))


def _build(run: _Run, lm, todo: list, shots: list, setting: tuple[int, int]) -> list[tuple]:
    """(item, prompt) for every item the model can take; the others are recorded as skipped with the reason."""
    out = []
    for item in todo:
        try:
            out.append((item, run.task.build(item, shots, lm.tokenizer, lm.max_len, run.cfg.gen.max_new_tokens)))
        except tasks.Skip as why:
            key = f"{lm.name}|{setting[0]}|{setting[1]}|{item.id}"
            run.store.put(run.run_id, "skipped", key, {"model": lm.name, "shots": setting[0], "trial": setting[1],
                                                       "id": item.id, "meta": dict(item.meta), "reason": str(why)})
    if len(out) < len(todo):
        print(f"{lm.name}: {len(todo) - len(out)} of {len(todo)} items skipped (recorded with their reasons)")
    return out


def _groups(task, prompts: list[tuple]) -> list[list[tuple]]:
    """The (item, prompt) pairs split by the task's breakdown values, in order of first appearance."""
    groups: dict[tuple, list] = {}
    for item, prompt in prompts:
        meta = dict(item.meta)
        groups.setdefault(tuple(meta.get(k) for k in task.breakdown), []).append((item, prompt))
    return list(groups.values())


def _warm_up(lm, text: str, gen: GenConfig, engine: str) -> None:
    """One short untimed generation so lazy initialisation never lands in a timed region."""
    warm = dataclasses.replace(gen, max_new_tokens=2, batch_size=1, min_new_tokens=0)
    for _ in generate(lm, [text], warm, engine):
        pass


def _rows(run: _Run, batch, group: list[tuple], shot_count: int) -> list[dict]:
    rows = []
    for c in batch.completions:
        item, prompt = group[c.index]
        prediction = c.text.strip()
        rows.append({"id": item.id, "shots": shot_count, "shots_used": prompt.shots_used,
                     "context_truncated": prompt.context_truncated, "prompt_tokens": c.prompt_tokens,
                     "new_tokens": c.new_tokens, "prompt": prompt.text, "prediction": prediction, "raw": c.raw,
                     "golds": list(item.example.answers), "meta": dict(item.meta),
                     "scores": run.task.score(item, prediction, c.raw)})
    return rows


def _generate_group(run: _Run, lm, setting: tuple[int, int], group: list[tuple], already: int) -> None:
    k, trial = setting
    meta = dict(group[0][0].meta)
    where = "".join(f" {key}={meta.get(key)}" for key in run.task.breakdown)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(f"{lm.name} {k}-shot trial {trial}{where}", total=len(group) + already,
                            completed=already)
        stream = generate(lm, [p.text for _, p in group], run.cfg.gen, run.cfg.runtime.engine)
        while True:
            with MemoryTracker(lm.device) as mem, Timer(lm.device) as wall:
                batch = next(stream, None)
            if batch is None:
                break
            rows = _rows(run, batch, group, k)
            run.store.add_batch(run.run_id, lm.name, k, trial, rows, {
                "n": len(rows), "prefill_tokens": batch.prefill_tokens, "decode_tokens": batch.decode_tokens,
                "new_tokens": sum(c.new_tokens for c in batch.completions),
                "chars": sum(len(c.raw) for c in batch.completions), "prefill_s": batch.prefill_s,
                "decode_s": batch.decode_s, "wall_s": wall.result.seconds, "peak_mem_mb": mem.result.peak_mb,
                "info": {**batch.info, "memory": asdict(mem.result), "group": meta_key(meta, run.task.breakdown)}})
            run.live.writelines(_line(r["id"], lm.name, k, trial, r) for r in rows)
            run.live.flush()
            bar.advance(task, len(rows))


def meta_key(meta: dict, breakdown) -> dict:
    """The breakdown values of an item (the part of its meta that groups results)."""
    return {key: meta.get(key) for key in breakdown}


def _line(example_id: str, model: str, shots: int, trial: int, row: dict) -> str:
    """One predictions.jsonl row."""
    return json.dumps({"id": example_id, "model": model, "shots": shots, "trial": trial, "meta": row["meta"],
                       "shots_used": row["shots_used"], "prompt_tokens": row["prompt_tokens"],
                       "prediction": row["prediction"], "golds": row["golds"], **row["scores"]}) + "\n"


def _write_outputs(store: Store, run_id: str, run_dir: Path) -> dict:
    summary = summarize(store, run_id)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    with open(run_dir / "predictions.jsonl", "w") as f:  # rebuilt from the store: no duplicates after a resume
        for r in store.predictions(run_id):
            f.write(_line(r["example_id"], r["model"], r["shots"], r["trial"], r))
    return summary
