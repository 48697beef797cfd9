"""Report plots with matplotlib's Agg canvas (no display, no pyplot state): each returns PNG bytes or None.

Every function takes points the report already built from stored results, so a plotted value is the very
number shown in a table. Colours mark the family; hollow markers and dashed lines mark untrained models.
"""
from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D


def family_color(family: str) -> str:
    """The family's colour from the registry (gray for a name no family has)."""
    from archbench import families

    return families.get(family).color if family in families.names() else "gray"


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def _legend(ax, families: set[str], untrained: bool) -> None:
    handles = [Line2D([], [], color=family_color(f), marker="o", linestyle="", label=f) for f in sorted(families)]
    if untrained:
        handles.append(Line2D([], [], color="gray", marker="o", markerfacecolor="none", linestyle="",
                              label="untrained (random init)"))
    ax.legend(handles=handles, fontsize=7, loc="best")


def _scatter(points: list[dict], key: str, ylabel: str, title: str, logy: bool) -> bytes | None:
    """One panel per shot setting: `key` against parameters, labelled points coloured by family."""
    points = [p for p in points if p.get("params") and p.get(key) is not None]
    if not points:
        return None
    shots = sorted({p["shots"] for p in points})
    fig = Figure(figsize=(4.2 * len(shots), 3.8))
    for i, k in enumerate(shots):
        ax = fig.add_subplot(1, len(shots), i + 1)
        for p in (p for p in points if p["shots"] == k):
            color = family_color(p["family"])
            ax.plot([p["params"]], [p[key]], marker="o", linestyle="", color=color,
                    markerfacecolor="none" if p["untrained"] else color)
            ax.annotate(p["label"], (p["params"], p[key]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}, {k}-shot", fontsize=9)
        ax.grid(alpha=0.3)
        _legend(ax, {p["family"] for p in points}, any(p["untrained"] for p in points))
    return _png(fig)


def accuracy_vs_params(points: list[dict]) -> bytes | None:
    """The task's plotted score (SQuAD: F1; mean over trials) against parameter count, by family."""
    name = points[0]["score_label"] if points else "score"
    return _scatter(points, "score", name, f"{name.split()[-1]} vs parameters", logy=False)


def speed_vs_params(points: list[dict]) -> bytes | None:
    """Generated tokens per second against parameter count, by family (log-log)."""
    return _scatter([p for p in points if p.get("tok_s")], "tok_s", "generated tokens/s", "Speed vs parameters",
                    logy=True)


def bench_vs_context(points: list[dict]) -> bytes | None:
    """Decode latency per token and peak memory against context length, one line per model and batch."""
    points = [p for p in points if p.get("status", "ok") == "ok" and p.get("context")]
    if not points:
        return None
    fig = Figure(figsize=(9, 3.8))
    panels = (("decode_ms_median", "decode latency (ms/token, median)"), ("peak_mem_mb", "peak memory (MB)"))
    for i, (key, ylabel) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        lines: dict[tuple, list[dict]] = {}
        for p in points:
            if p.get(key):
                lines.setdefault((p["label"], p["family"], p["untrained"], p["batch"]), []).append(p)
        for (label, family, untrained, batch), ps in lines.items():
            ps.sort(key=lambda p: p["context"])
            ax.plot([p["context"] for p in ps], [p[key] for p in ps], marker="o", color=family_color(family),
                    linestyle="--" if untrained else "-", markerfacecolor="none" if untrained else None,
                    label=f"{label} b={batch}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        if lines:
            ax.legend(fontsize=6, loc="best")
    return _png(fig)


def loss_curves(runs: list[dict], title: str = "LoRA fine-tuning") -> bytes | None:
    """Training loss per optimiser step, one line per run."""
    runs = [r for r in runs if r["steps"]]
    if not runs:
        return None
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    for r in runs:
        ax.plot(r["steps"], r["losses"], marker="." if len(r["steps"]) < 50 else None, label=r["label"])
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)
