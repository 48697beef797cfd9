"""Tables rendered from an eval summary (summary.json): the seed-style comparison table.

One row per model: Model | family | params | for each shot setting: EM | F1 | tok/s (+ empty answers).
With several trials a cell shows mean ± standard deviation over trials. Untrained zoo models are marked.
Used by the CLI (rich) and the Markdown report, so each number is formatted in one place only.
"""
from __future__ import annotations

from rich.table import Table


def _label(r: dict) -> str:
    return r["model"] + (" (untrained)" if r.get("untrained") else "")


def params_label(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _cell(rs: list[dict], key: str, fmt: str) -> str:
    values = [r[key] for r in rs]
    mean = sum(values) / len(values)
    if len(values) == 1:
        return format(mean, fmt)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{format(mean, fmt)} ± {format(std, fmt)}"


def seed_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the seed-style table."""
    shots = sorted({r["shots"] for r in summary["results"]})
    header = ["Model", "family", "params"]
    for k in shots:
        header += [f"{k}-shot EM", "F1", "tok/s", "empty"]
    by_model: dict[str, dict[int, list[dict]]] = {}
    for r in summary["results"]:
        by_model.setdefault(_label(r), {}).setdefault(r["shots"], []).append(r)
    rows = []
    for label, per_shot in by_model.items():
        first = next(iter(per_shot.values()))[0]
        row = [label, first["family"] or "?", params_label(first["params"])]
        for k in shots:
            rs = per_shot.get(k)
            row += ([_cell(rs, "em", ".2f"), _cell(rs, "f1", ".2f"), _cell(rs, "gen_tok_s", ".1f"),
                     f"{sum(r['empty'] for r in rs)}/{sum(r['n'] for r in rs)}"] if rs else ["-"] * 4)
        rows.append(row)
    return header, rows


def rich_table(summary: dict, title: str = "SQuAD") -> Table:
    header, rows = seed_rows(summary)
    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="left" if h in ("Model", "family") else "right")
    for row in rows:
        table.add_row(*row)
    return table


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
