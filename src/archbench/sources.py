"""`archbench report`'s sources: study files (their store and plan), eval / fine-tune / bench run folders, or
run ids, resolved to (store path, run id) pairs and rendered by report.py. Kept apart from report.py so that
study.py (which renders a study's report) and report.py import each other in neither direction."""
from __future__ import annotations

from pathlib import Path

from archbench import study
from archbench.config import DEFAULT_DB
from archbench.report import write_report
from archbench.store import Store


def render_report(*, sources: list[str], out: str = "runs/report", db: str = DEFAULT_DB) -> list[Path]:
    """Resolve every source to stored runs and write OUT/report.md and OUT/report.html."""
    refs = [ref for source in sources for ref in resolve(source, db)]
    return write_report(refs, Path(out))


def _shipped(name: str) -> bool:
    try:
        return study.find(name) is not None
    except FileNotFoundError:
        return False


def resolve(source: str, db: str) -> list[tuple[str, str]]:
    """(store path, run id) pairs of one report source."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or (not path.exists() and "/" not in source and _shipped(source)):
        spec = study.load(source, need_env=False)
        if not Path(study.db_path(spec)).exists():
            raise FileNotFoundError(f"study {source!r} has no results yet: run `archbench run {source}` first")
        return [(study.db_path(spec), f"study-{spec['name']}")]
    if not Path(db).exists():
        raise FileNotFoundError(f"--db {db}: no such store")
    with Store(db) as store:
        run_id = store.folder_run(path) if path.is_dir() else (source if store.run(source) is not None else None)
    if run_id:
        return [(db, run_id)]
    if path.is_dir():
        raise FileNotFoundError(f"report source {source}: no run.json, finetune.json or bench.json with a run id")
    raise FileNotFoundError(f"report source {source!r}: not a study, a run folder, or a run id in {db}")
