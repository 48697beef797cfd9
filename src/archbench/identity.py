"""What a run is: digests of the content it depends on, not the paths it was given.

A run's identity (cf. lm-evaluation-harness, which keys its cache by request content, and HELM, which stores
each run spec with its data) is: the items actually evaluated (ids and the text that reaches the prompt, with a
digest per item so a change can be counted), their gold answers, the shot sets drawn from the pool, the prompt
style's content, the task's other options and the generation settings; and per model, its weights (zoo models:
recipe and weights; local directories: their weight files; hub ids: the resolved commit) and its adapter.
Paths are kept only as information. A rerun resumes when the identity matches and is refused, naming what
changed, when it does not; the same content reached by another path (a symlink, relative vs absolute) resumes.
Weight digests are cached by (path, size, mtime), so a model's files are hashed once.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pth", "*.gguf")
_CACHE: dict[tuple, str] = {}


def digest(*parts) -> str:
    """A short digest of JSON-serialisable values (e.g. a prompt style's content)."""
    return _sha(*parts)


def _sha(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def items(task_items: Iterable) -> dict:
    """Digest of the evaluated items' text and golds, with one short digest per item id."""
    rows, golds = {}, []
    for it in task_items:
        ex = it.example
        rows[it.id] = _sha(ex.context, ex.question, list(it.meta))[:10]
        golds.append((it.id, list(ex.answers)))
    return {"items": _sha(sorted(rows.items())), "golds": _sha(golds), "rows": rows}


def shots(shot_sets: dict) -> str:
    """Digest of the shot sets drawn per (shots, trial): the pool rows that reach a prompt."""
    return _sha(sorted((f"{k}/{t}", [(e.id, e.context, e.question, list(e.answers)) for e in exs])
                       for (k, t), exs in shot_sets.items()))


def files(paths: Iterable[Path]) -> str:
    """Digest of files' bytes, cached by (path, size, mtime) for this process and in $ARCHBENCH_CACHE."""
    paths = sorted(Path(p) for p in paths)
    key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    if key not in _CACHE:
        _CACHE[key] = _disk_cached(key, paths)
    return _CACHE[key]


def _disk_cached(key: tuple, paths: list[Path]) -> str:
    from archbench.zoo import cache_dir

    store = cache_dir() / "digests.json"
    known = json.loads(store.read_text()) if store.exists() else {}
    name = _sha(key)
    if name not in known:
        h = hashlib.sha256()
        for p in paths:
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
        known[name] = h.hexdigest()[:16]
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        tmp.replace(store)
    return known[name]


def _weights(folder: Path) -> list[Path]:
    return [p for pattern in WEIGHT_FILES for p in folder.glob(pattern)] + [folder / "config.json"]


def model(lm) -> dict:
    """A loaded model's identity: weights digest (local / zoo) or resolved hub commit, and its adapter's."""
    source = Path(lm.source)
    if source.is_dir():
        weights = files(p for p in _weights(source) if p.exists())
    else:
        weights = f"hub:{lm.source}@{_hub_commit(lm.source)}"
    adapter = None
    if lm.adapter:
        folder = Path(lm.adapter)
        adapter = files(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    return {"weights": weights, "adapter": adapter}


def _hub_commit(repo: str) -> str:
    """The commit the hub cache resolved `repo` to (the snapshot loaded), or 'unresolved'."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        ref = Path(HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "refs" / "main"
        return ref.read_text().strip() if ref.exists() else "unresolved"
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return "unresolved"


def options(task_identity: dict) -> dict:
    """The task's options without the paths its content came from (the content is digested instead)."""
    return {k: v for k, v in task_identity.items() if not (isinstance(v, str) and Path(v).exists())}


def changes(old: dict, new: dict) -> list[str]:
    """What differs between two run identities, in words: field names, and for items how many rows."""
    out = []
    for key in sorted(set(old) | set(new)):
        if key in ("rows", "models") or old.get(key) == new.get(key):
            continue
        if key == "items":
            out.append(_row_changes(old.get("rows", {}), new.get("rows", {})))
        elif key in ("options", "gen"):
            a, b = old.get(key) or {}, new.get(key) or {}
            out += [f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            out.append({"golds": "gold answers", "shots": "shot sets"}.get(key, key))
    return out


def _row_changes(old: dict, new: dict) -> str:
    differ = sum(1 for k in old.keys() & new.keys() if old[k] != new[k])
    added, removed = len(new.keys() - old.keys()), len(old.keys() - new.keys())
    parts = [f"{n} {what}" for n, what in ((differ, "rows differ"), (added, "added"), (removed, "removed")) if n]
    return "data: " + (", ".join(parts) or "row order changed")


def model_changes(old: dict, name: str, new: dict) -> str | None:
    """A line naming what changed in a model already evaluated in this run (None: nothing)."""
    before = old.get(name)
    if before is None or before == new:
        return None
    what = [k for k in ("weights", "adapter") if before.get(k) != new.get(k)]
    return f"model {name!r}: its {' and '.join(what)} changed"
