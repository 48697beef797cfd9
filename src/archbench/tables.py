"""Eval tables rendered from a summary's aggregates: the seed-style comparison, for any task.

One row per model; for each shot setting (and breakdown group, e.g. context length) the task's table
columns: its rate metrics, generated tokens/s, then its counts (e.g. empty answers out of all answers).
With several trials a cell shows mean ± standard deviation over trials. Untrained zoo models are marked.
The CLI (rich) and the report (Markdown / HTML) both call `eval_table`, and every cell comes from fmt.py, so
the same result reads the same everywhere.
"""
from __future__ import annotations

from rich.table import Table

from archbench import fmt


def setting_label(shots: int, group: dict) -> str:
    """'3-shot', or with a breakdown group '0-shot length=1024 depth=0.5'."""
    return " ".join([f"{shots}-shot"] + [f"{k}={v}" for k, v in group.items()])


def _columns(spec: dict) -> list[dict]:
    by_name = {m["name"]: m for m in spec["metrics"]}
    return [by_name[c] for c in spec.get("columns") or [m["name"] for m in spec["metrics"]]]


def header(spec: dict, setting: str) -> list[str]:
    """Column headings of one setting: '<setting> <first metric>', the other metrics, tok/s, counts."""
    cols = _columns(spec)
    rates = [m["label"] for m in cols if m["percent"]]
    counts = [m["label"] for m in cols if not m["percent"]]
    names = rates + ["tok/s"] + counts
    return [f"{setting} {names[0]}"] + names[1:]


def cells(spec: dict, agg: dict, n: int) -> list[str]:
    """One model x setting: rate metrics (mean ± std over trials), tokens/s, then counts out of all answers."""
    cols = _columns(spec)
    out = [fmt.spread(agg[f"{m['name']}_values"], ".2f") for m in cols if m["percent"]]
    out.append(fmt.spread(agg["gen_tok_s_values"], ".1f"))
    out += [fmt.count(agg[f"{m['name']}_values"], [n] * agg["trials"]) for m in cols if not m["percent"]]
    return out


def settings_of(points: list[dict]) -> list[int]:
    """The shot settings of points, sorted."""
    return sorted({p["agg"]["shots"] for p in points})


def eval_table(spec: dict, points: list[dict], first: tuple[str, ...] = ("Model",),
               settings: list[int] | None = None) -> tuple[list, list]:
    """Header and rows for points (each: label, agg, n, and the `first` columns' values by lower-case key):
    one row per model (and breakdown group, e.g. context length, in columns of its own), one column group per
    shot setting (default: the points' own)."""
    settings = settings or settings_of(points)
    breakdown = list(spec.get("breakdown") or [])
    head = list(first) + breakdown
    width = len(header(spec, ""))
    for shots in settings:
        head += header(spec, setting_label(shots, {}))
    rows: dict[tuple, list[str]] = {}
    order = {label: i for i, label in enumerate(dict.fromkeys(p["label"] for p in points))}
    for p in sorted(points, key=lambda p: (order[p["label"]], [p["agg"]["group"].get(k) for k in breakdown])):
        group = p["agg"]["group"]
        lead = [str(p["label" if c == "Model" else c.lower()]) for c in first] + [str(group.get(k)) for k in breakdown]
        row = rows.setdefault((p["label"], _key(group)), lead + ["-"] * (len(head) - len(lead)))
        at = len(lead) + settings.index(p["agg"]["shots"]) * width
        row[at:at + width] = cells(spec, p["agg"], p["n"])
    return head, list(rows.values())


def _key(group: dict) -> tuple:
    return tuple(sorted(group.items()))


def summary_points(summary: dict) -> list[dict]:
    """The points of one summary for `eval_table`: one per aggregate, with its model's facts."""
    meta = {r["model"]: r for r in summary["results"]}
    return [{"label": fmt.label(a["model"], meta[a["model"]]["untrained"]), "agg": a,
             "family": fmt.family(meta[a["model"]]["family"], meta[a["model"]].get("layers")),
             "n": next(r["n"] for r in summary["results"] if r["model"] == a["model"] and r["shots"] == a["shots"]
                       and r["group"] == a["group"]),
             "params": fmt.params(meta[a["model"]]["params"])}
            for a in summary["aggregates"]]


def rich_table(summary: dict) -> Table:
    spec = summary["task"]
    head, rows = eval_table(spec, summary_points(summary), ("Model", "family", "params"))
    table = Table(title=f"{spec['title']} ({max(r['n'] for r in summary['results'])} items)")
    for h in head:
        table.add_column(h, justify="left" if h in ("Model", "family") else "right")
    for row in rows:
        table.add_row(*row)
    return table


def markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
