"""The results store: one SQLite file (stdlib `sqlite3`), one row per example, committed as batches finish.

Tables
  runs         run_id, kind (eval/ask/bench/finetune), created, config, env
  models       run_id, model, family, params, untrained, source, adapter, layers (the layer mix)
  predictions  one row per (run, model, shots, trial, example): prompt, prediction, golds, and the task's
               named scores and breakdown facts as JSON (`scores`, `meta`), so a new metric needs no new
               column. Stores written before `scores` existed (fixed em/f1/seed_em/contains columns) are
               migrated when opened: their scores are copied into `scores` and nothing else changes.
  batches      one row per generated batch: tokens, prefill/decode seconds, peak memory, engine info
  records      free-form JSON rows for other kinds of result (bench points, train logs, answers)
Summaries are never stored as the source of truth: they are recomputed from these rows.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, kind TEXT, created REAL, config TEXT, env TEXT);
CREATE TABLE IF NOT EXISTS models (run_id TEXT, model TEXT, family TEXT, params INTEGER, untrained INTEGER,
    source TEXT, adapter TEXT, layers TEXT, PRIMARY KEY (run_id, model));
CREATE TABLE IF NOT EXISTS predictions (run_id TEXT, model TEXT, shots INTEGER, trial INTEGER, example_id TEXT,
    shots_used INTEGER, context_truncated INTEGER, prompt_tokens INTEGER, new_tokens INTEGER, prompt TEXT,
    prediction TEXT, raw TEXT, golds TEXT, em REAL, f1 REAL, seed_em REAL, contains REAL, created REAL,
    scores TEXT, meta TEXT, PRIMARY KEY (run_id, model, shots, trial, example_id));
CREATE TABLE IF NOT EXISTS batches (run_id TEXT, model TEXT, shots INTEGER, trial INTEGER, created REAL,
    n INTEGER, prefill_tokens INTEGER, decode_tokens INTEGER, new_tokens INTEGER, chars INTEGER,
    prefill_s REAL, decode_s REAL, wall_s REAL, peak_mem_mb REAL, info TEXT);
CREATE TABLE IF NOT EXISTS records (run_id TEXT, kind TEXT, key TEXT, created REAL, data TEXT,
    PRIMARY KEY (run_id, kind, key));
"""


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Bring a store of an earlier release up to this schema without changing any stored value."""
        if "layers" not in {r[1] for r in self.db.execute("PRAGMA table_info(models)")}:
            with self.db:
                self.db.execute("ALTER TABLE models ADD COLUMN layers TEXT")
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(predictions)")}
        if "scores" in columns:
            return
        with self.db:
            self.db.execute("ALTER TABLE predictions ADD COLUMN scores TEXT")
            self.db.execute("ALTER TABLE predictions ADD COLUMN meta TEXT")
            self.db.execute("UPDATE predictions SET meta = '{}', scores = json_object('em', em, 'f1', f1, "
                            "'seed_em', seed_em, 'contains', contains, 'empty', CAST(prediction = '' AS REAL))")

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # runs and models -------------------------------------------------------------------------
    def ensure_run(self, run_id: str, kind: str, config: dict, env: dict) -> None:
        with self.db:
            self.db.execute("INSERT OR IGNORE INTO runs VALUES (?,?,?,?,?)",
                            (run_id, kind, time.time(), json.dumps(config), json.dumps(env)))

    def run(self, run_id: str) -> dict | None:
        row = self.db.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if row is None:
            return None
        return {**dict(row), "config": json.loads(row["config"]), "env": json.loads(row["env"])}

    def runs(self, kind: str | None = None) -> list[dict]:
        rows = self.db.execute("SELECT run_id FROM runs" + (" WHERE kind=?" if kind else "") + " ORDER BY created",
                               (kind,) if kind else ()).fetchall()
        return [self.run(r["run_id"]) for r in rows]

    def add_model(self, run_id: str, lm) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO models VALUES (?,?,?,?,?,?,?,?)",
                            (run_id, lm.name, lm.family, lm.params, int(lm.untrained), lm.source, lm.adapter,
                             getattr(lm, "layers", None)))

    def models(self, run_id: str) -> dict[str, dict]:
        rows = self.db.execute("SELECT * FROM models WHERE run_id=? ORDER BY rowid", (run_id,)).fetchall()
        return {r["model"]: dict(r) for r in rows}

    # predictions and batches -----------------------------------------------------------------
    def done_ids(self, run_id: str, model: str, shots: int, trial: int) -> set[str]:
        rows = self.db.execute("SELECT example_id FROM predictions WHERE run_id=? AND model=? AND shots=? AND trial=?",
                               (run_id, model, shots, trial)).fetchall()
        return {r[0] for r in rows}

    def add_batch(self, run_id: str, model: str, shots: int, trial: int, rows: list[dict], batch: dict) -> None:
        """Write one finished batch (its example rows and its timing row) in one transaction."""
        now = time.time()
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO predictions (run_id, model, shots, trial, example_id, shots_used, "
                "context_truncated, prompt_tokens, new_tokens, prompt, prediction, raw, golds, created, scores, "
                "meta) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [(run_id, model, shots, trial, r["id"], r["shots_used"], int(r["context_truncated"]),
                  r["prompt_tokens"], r["new_tokens"], r["prompt"], r["prediction"], r["raw"],
                  json.dumps(r["golds"]), now, json.dumps(r["scores"]), json.dumps(r.get("meta", {})))
                 for r in rows])
            self.db.execute("INSERT INTO batches VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                            (run_id, model, shots, trial, now, batch["n"], batch["prefill_tokens"],
                             batch["decode_tokens"], batch["new_tokens"], batch["chars"], batch["prefill_s"],
                             batch["decode_s"], batch["wall_s"], batch["peak_mem_mb"], json.dumps(batch["info"])))

    def predictions(self, run_id: str, model: str | None = None) -> list[dict]:
        q, args = "SELECT * FROM predictions WHERE run_id=?", [run_id]
        if model is not None:
            q, args = q + " AND model=?", args + [model]
        rows = self.db.execute(q + " ORDER BY model, shots, trial, created, rowid", args).fetchall()
        out = []
        for r in rows:
            row = {k: r[k] for k in r.keys() if k not in ("em", "f1", "seed_em", "contains")}
            scores, meta = json.loads(r["scores"]), json.loads(r["meta"] or "{}")
            out.append({**row, **scores, "golds": json.loads(r["golds"]), "scores": scores, "meta": meta})
        return out

    def batches(self, run_id: str, model: str, shots: int, trial: int) -> list[dict]:
        rows = self.db.execute("SELECT * FROM batches WHERE run_id=? AND model=? AND shots=? AND trial=? "
                               "ORDER BY created", (run_id, model, shots, trial)).fetchall()
        return [{**dict(r), "info": json.loads(r["info"])} for r in rows]

    def folder_run(self, folder: Path) -> str | None:
        """The run id of an output folder: from its run.json / finetune.json / bench.json, else the last run
        whose stored config names the folder as its `out`."""
        for name in ("run.json", "finetune.json", "bench.json"):
            if (folder / name).exists():
                run_id = json.loads((folder / name).read_text()).get("run_id")
                if run_id:
                    return run_id
        found = [r["run_id"] for r in self.runs() if r["config"].get("out")
                 and Path(r["config"]["out"]).resolve() == folder.resolve()]
        return found[-1] if found else None

    # free-form records (bench points, training logs, free-form answers) -----------------------
    def put(self, run_id: str, kind: str, key: str, data: dict) -> None:
        with self.db:
            self.db.execute("INSERT INTO records VALUES (?,?,?,?,?) ON CONFLICT (run_id, kind, key) "
                            "DO UPDATE SET data = excluded.data",  # an updated record keeps its place
                            (run_id, kind, key, time.time(), json.dumps(data)))

    def records(self, run_id: str | None, kind: str) -> list[dict]:
        q, args = "SELECT * FROM records WHERE kind=?", [kind]
        if run_id is not None:
            q, args = q + " AND run_id=?", args + [run_id]
        rows = self.db.execute(q + " ORDER BY created, rowid", args).fetchall()
        return [{"run_id": r["run_id"], "key": r["key"], **json.loads(r["data"])} for r in rows]
