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
import os
import socket
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from archbench import distributed, identity, loading, tasks
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
            "compile": cfg.gen.compile, **asdict(cfg.runtime), "adapter": cfg.adapter, "device_map": cfg.device_map,
            "unit_batches": cfg.unit_batches,
            "task_spec": task_spec(task)}


def task_spec(task) -> dict:
    """What tables and plots need to know of a task without importing it."""
    return {"name": task.name, "title": task.title, "breakdown": list(task.breakdown),
            "columns": list(task.columns), "metrics": [asdict(m) for m in task.metrics]}


@dataclass
class _Run:
    """One eval run in progress: what every stage of the loop needs (store and live file: the writer only)."""

    cfg: EvalConfig
    task: object
    store: Store | None
    live: object  # predictions.jsonl, appended per batch (one process; several write shards instead)
    run_id: str
    shot_sets: dict
    ranks: distributed.Ranks
    start: dict  # what rank 0 found stored at the start: done ids and skipped keys, the attempt id
    plan: list = field(default_factory=list)  # every rank's units, in plan order (the merge order)
    loads: list = field(default_factory=list)  # estimated work handed to each rank so far
    stats: dict = field(default_factory=dict)  # this rank's timing and token counts


def evaluate(cfg: EvalConfig) -> dict:
    """Evaluate every model x shot setting x trial on the task; returns the summary (also in run_dir).
    Under torchrun / accelerate launch every process runs this; the units are shared out (distributed.py)."""
    check_device(cfg.runtime.device)
    ranks = distributed.ranks(cfg.rank_timeout)
    task = tasks.make(cfg.task, **cfg.task_options)
    run_path = Path(cfg.run_dir)
    items = task.items()
    shot_sets = {(k, t): task.shots(k, t) for k in cfg.shots if k > 0 for t in range(cfg.trials)}  # fail early
    wanted = run_identity(cfg, task, items, shot_sets)
    with ExitStack() as stack:
        store = stack.enter_context(Store(cfg.db)) if ranks.main else None
        mine = _start(cfg, task, wanted, store, ranks.world) if ranks.main else None
        start = distributed.broadcast(ranks, mine, "start")
        if "error" in start:
            raise ValueError(start["error"])
        _check_shared(ranks, run_path, start["attempt"])
        live = stack.enter_context(open(run_path / "predictions.jsonl", "a")) if store and ranks.world == 1 else None
        run = _Run(cfg, task, store, live, start["run_id"], shot_sets, ranks, start, loads=[0.0] * ranks.world,
                   stats={"rank": ranks.rank, "host": socket.gethostname(), "device": _device(cfg, ranks)})
        t0 = time.perf_counter()
        for name in cfg.models:
            _evaluate_model(run, name, items)
        run.stats["wall_s"] = time.perf_counter() - t0
        stats = distributed.gather(ranks, run.stats, "waiting for every process to finish its units")
        summary = _finish(run, stats) if ranks.main else None
    return distributed.broadcast(ranks, summary, "sharing the summary")


def _start(cfg: EvalConfig, task, wanted: dict, store: Store, world: int) -> dict:
    """Rank 0: open the run, merge the shards an interrupted run left, and say what is stored."""
    run_path = Path(cfg.run_dir)
    try:
        run_id = _open_run(run_path, wanted, cfg.new_run)
    except ValueError as err:
        return {"error": str(err)}
    distributed.merge(store, run_id, distributed.leftovers(run_path))
    store.ensure_run(run_id, "eval", run_config(cfg, task, wanted), environment(cfg.runtime.device))
    done: dict[str, list] = {}
    for r in store.db.execute("SELECT model, shots, trial, example_id FROM predictions WHERE run_id=?", (run_id,)):
        done.setdefault(f"{r[0]}|{r[1]}|{r[2]}", []).append(r[3])
    skipped = [r["key"] for r in store.records(run_id, "skipped")]
    attempt = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    if world > 1:  # the other ranks check that they see it
        distributed.append(run_path / distributed.SHARDS / distributed.ATTEMPT, {"attempt": attempt})
    return {"run_id": run_id, "done": done, "skipped": skipped, "attempt": attempt}


def _check_shared(ranks: distributed.Ranks, run_path: Path, attempt: str) -> None:
    """Every rank must see rank 0's files: the shards reach the writer through the run directory."""
    if ranks.main:
        return
    seen = run_path / distributed.SHARDS / distributed.ATTEMPT
    if not seen.exists() or attempt not in seen.read_text():
        raise ValueError(f"--run-dir {run_path}: rank {ranks.rank} does not see rank 0's files there; on several "
                         "nodes the run directory must be on a file system every node shares")


def _finish(run: _Run, stats: list[dict]) -> dict:
    """Rank 0, after every rank is done: merge the shards in plan order, store the processes' timing, write
    summary.json and predictions.jsonl."""
    run_path = Path(run.cfg.run_dir)
    shards = [distributed.shard_path(run_path, u) for u in run.plan]
    distributed.merge(run.store, run.run_id, shards + distributed.leftovers(run_path))
    distributed.tidy(run_path)
    run.store.put(run.run_id, "processes", run.start["attempt"],
                  {"world": run.ranks.world, "device_map": run.cfg.device_map, "ranks": stats})
    return _write_outputs(run.store, run.run_id, run_path)


def _device(cfg: EvalConfig, r: distributed.Ranks) -> str:
    """One device per process: cuda becomes cuda:LOCAL_RANK under several processes."""
    device = cfg.runtime.device
    if cfg.device_map and r.local_world > 1:
        raise ValueError(f"--device-map {cfg.device_map}: spreads one model over this node's devices, so run "
                         f"one process per node (this node runs {r.local_world})")
    return f"cuda:{r.local_rank}" if device == "cuda" and r.world > 1 else device


def _evaluate_model(run: _Run, name: str, items: list) -> None:
    rt = run.cfg.runtime
    lm = loading.load(name, device=run.stats["device"], dtype=rt.dtype, adapter=run.cfg.adapter,
                      device_map=run.cfg.device_map, trust_remote_code=rt.trust_remote_code)
    if run.store is not None:
        digests = _check_model(Path(run.cfg.run_dir), lm)
        run.store.add_model(run.run_id, lm)
        run.store.put(run.run_id, "model_identity", lm.name, digests)
        if run.cfg.device_map:
            placement = {k: str(v) for k, v in (getattr(lm.model, "hf_device_map", None) or {}).items()}
            run.store.put(run.run_id, "device_map", lm.name, {"device_map": run.cfg.device_map, "layers": placement})
    units = _plan(run, lm, items)
    owner = distributed.assign([u.cost for u in units], run.ranks.world, run.loads)
    mine = [u for u, rank in zip(units, owner) if rank == run.ranks.rank]
    if mine:
        _warm_up(lm, mine[0].pairs[0][1].text, run.cfg.gen, rt.engine)
    for unit in mine:
        _generate_unit(run, lm, unit)
    run.plan.extend(units)


def _plan(run: _Run, lm, items: list) -> list[distributed.Unit]:
    """The model's units still to do, identical on every rank (built from rank 0's start snapshot)."""
    units, skipped = [], set(run.start["skipped"])
    for k in run.cfg.shots:
        for trial in range(run.cfg.trials if k > 0 else 1):
            done = set(run.start["done"].get(f"{lm.name}|{k}|{trial}", ()))
            todo = [it for it in items if it.id not in done and f"{lm.name}|{k}|{trial}|{it.id}" not in skipped]
            if not todo:
                continue
            pairs = _build(run, lm, todo, run.shot_sets.get((k, trial), []), (k, trial))
            for group in _groups(run.task, pairs):
                for chunk in distributed.chunks(group, run.cfg.gen.batch_size, run.cfg.unit_batches):
                    cost = lm.params * sum(p.n_tokens + run.cfg.gen.max_new_tokens for _, p in chunk)
                    units.append(distributed.Unit(lm.name, k, trial, chunk, float(cost), len(run.plan) + len(units)))
    return units


def _build(run: _Run, lm, todo: list, shots: list, setting: tuple[int, int]) -> list[tuple]:
    """(item, prompt) for every item the model can take; the others are recorded (by the writer) as skipped
    with the reason."""
    out = []
    for item in todo:
        try:
            out.append((item, run.task.build(item, shots, lm.tokenizer, lm.max_len, run.cfg.gen.max_new_tokens)))
        except tasks.Skip as why:
            if run.store is None:
                continue
            key = f"{lm.name}|{setting[0]}|{setting[1]}|{item.id}"
            run.store.put(run.run_id, "skipped", key, {"model": lm.name, "shots": setting[0], "trial": setting[1],
                                                       "id": item.id, "meta": dict(item.meta), "reason": str(why)})
    if len(out) < len(todo) and run.ranks.main:
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
    """One short untimed generation so lazy initialisation never lands in a timed region (archbench's engine:
    its own warm-up on a few tokens through every path of a run; hf: the first prompt, 2 new tokens)."""
    if engine == "archbench":
        from archbench import engine as own

        return own.warm_up(lm, gen)
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


def _generate_unit(run: _Run, lm, unit: distributed.Unit) -> None:
    meta = dict(unit.pairs[0][0].meta)
    where = "".join(f" {key}={meta.get(key)}" for key in run.task.breakdown)
    who = f"[{run.ranks.rank}/{run.ranks.world}] " if run.ranks.world > 1 else ""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(f"{who}{lm.name} {unit.shots}-shot trial {unit.trial}{where}", total=len(unit.pairs))
        stream = generate(lm, [p.text for _, p in unit.pairs], run.cfg.gen, run.cfg.runtime.engine)
        while True:
            with MemoryTracker(lm.device) as mem, Timer(lm.device) as wall:
                batch = next(stream, None)
            if batch is None:
                break
            rows = _rows(run, batch, unit.pairs, unit.shots)
            _commit(run, unit, rows, {
                "n": len(rows), "prefill_tokens": batch.prefill_tokens, "decode_tokens": batch.decode_tokens,
                "new_tokens": sum(c.new_tokens for c in batch.completions),
                "chars": sum(len(c.raw) for c in batch.completions), "prefill_s": batch.prefill_s,
                "decode_s": batch.decode_s, "wall_s": wall.result.seconds, "peak_mem_mb": mem.result.peak_mb,
                "info": {**batch.info, "memory": asdict(mem.result), "group": meta_key(meta, run.task.breakdown),
                         "rank": run.ranks.rank, "world": run.ranks.world, "attempt": run.start["attempt"]}})
            bar.advance(task, len(rows))


def _commit(run: _Run, unit: distributed.Unit, rows: list[dict], batch: dict) -> None:
    """A finished batch to the store (one process) or to its unit's shard (several); counted for the rank."""
    if run.ranks.world == 1:
        run.store.add_batch(run.run_id, unit.model, unit.shots, unit.trial, rows, batch)
        run.live.writelines(_line(r["id"], unit.model, unit.shots, unit.trial, r) for r in rows)
        run.live.flush()
    else:
        distributed.append(distributed.shard_path(Path(run.cfg.run_dir), unit),
                           {"model": unit.model, "shots": unit.shots, "trial": unit.trial, "rows": rows,
                            "batch": batch})
    s = run.stats
    for key in ("n", "prefill_tokens", "decode_tokens", "new_tokens", "prefill_s", "decode_s"):
        s[key] = s.get(key, 0) + batch[key]
    s["batches"] = s.get("batches", 0) + 1
    s["gen_s"] = s.get("gen_s", 0.0) + batch["wall_s"]
    distributed.fault(run.ranks, s["batches"])


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
