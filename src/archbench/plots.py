"""Report plots with matplotlib's Agg canvas (no display, no pyplot state): each returns PNG bytes or None.

Every function takes points the report already built from stored results, so a plotted value is the very
number shown in a table. Colours mark the family; hollow markers and dashed lines mark untrained models.
"""
from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from archbench import fmt


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


def _bench_panel(ax, points: list[dict], key: str, ylabel: str) -> None:
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


def _measured(bench: list[dict]) -> list[dict]:
    """Bench points that ran (not skipped or out of memory) at a context length."""
    return [p for p in bench if p.get("status", "ok") == "ok" and p.get("context")]


def _recall_panel(ax, points: list[dict]) -> None:
    """Mean score per model against the context size, shaded from the lowest to the highest depth / trial."""
    lines: dict[tuple, dict[float, list[float]]] = {}
    for p in points:
        lines.setdefault((p["label"], p["family"], p["untrained"]), {}).setdefault(p["x"], []).append(p["score"])
    for (label, family, untrained), by_x in lines.items():
        xs = sorted(by_x)
        mean = [sum(by_x[x]) / len(by_x[x]) for x in xs]
        ax.plot(xs, mean, marker="o", color=family_color(family), linestyle="--" if untrained else "-",
                markerfacecolor="none" if untrained else None, label=label)
        ax.fill_between(xs, [min(by_x[x]) for x in xs], [max(by_x[x]) for x in xs], color=family_color(family),
                        alpha=0.15)
    ax.set_xscale("log")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(points[0]["x_label"])
    ax.set_ylabel(points[0]["metric"])
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, loc="best")


def recall_beside_cost(recall: list[dict], bench: list[dict]) -> bytes | None:
    """Side by side for the same models: recall vs context (one panel per task) and decode latency vs context."""
    tasks = list(dict.fromkeys(p["task"] for p in recall))
    bench = _measured(bench)
    if not tasks:
        return None
    fig = Figure(figsize=(4.5 * (len(tasks) + bool(bench)), 3.8))
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(1, len(tasks) + bool(bench), i + 1)
        _recall_panel(ax, [p for p in recall if p["task"] == task])
        ax.set_title(task, fontsize=9)
    if bench:
        ax = fig.add_subplot(1, len(tasks) + 1, len(tasks) + 1)
        _bench_panel(ax, bench, "decode_ms_median", "decode latency (ms/token, median)")
        ax.set_title("cost of the same context", fontsize=9)
    return _png(fig)


def depth_heatmaps(points: list[dict]) -> bytes | None:
    """Per model and task: score over depth (rows) x context size (columns), mean over trials."""
    panels = list(dict.fromkeys((p["task"], p["label"]) for p in points if p.get("depth") is not None))
    if not panels:
        return None
    fig = Figure(figsize=(3.2 * min(len(panels), 4), 2.8 * (-(-len(panels) // 4))))
    for i, (task, label) in enumerate(panels):
        ps = [p for p in points if (p["task"], p["label"]) == (task, label)]
        xs, ds = sorted({p["x"] for p in ps}), sorted({p["depth"] for p in ps})
        grid = [[_mean([p["score"] for p in ps if p["x"] == x and p["depth"] == d]) for x in xs] for d in ds]
        ax = fig.add_subplot(-(-len(panels) // 4), min(len(panels), 4), i + 1)
        ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
        ax.set_xticks(range(len(xs)), [str(x) for x in xs], fontsize=6)
        ax.set_yticks(range(len(ds)), [str(d) for d in ds], fontsize=6)
        ax.set_xlabel(ps[0]["x_label"], fontsize=7)
        ax.set_ylabel("depth", fontsize=7)
        ax.set_title(f"{label}\n{task}", fontsize=7)
    return _png(fig)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def bench_vs_context(points: list[dict]) -> bytes | None:
    """Decode latency per token and peak memory against context length, one line per model and batch."""
    points = _measured(points)
    if not points:
        return None
    fig = Figure(figsize=(9, 3.8))
    panels = (("decode_ms_median", "decode latency (ms/token, median)"), ("peak_mem_mb", "peak memory (MB)"))
    for i, (key, ylabel) in enumerate(panels):
        _bench_panel(fig.add_subplot(1, 2, i + 1), points, key, ylabel)
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


def lab_losses(runs: list[dict]) -> bytes | None:
    """Lab training loss against tokens seen and against training wall-clock; one row of panels per data kind
    (text, MQAR), one line per run coloured by family."""
    kinds = list(dict.fromkeys(r["data"] for r in runs if r["tokens"]))
    if not kinds:
        return None
    fig = Figure(figsize=(9, 3.4 * len(kinds)))
    for row, kind in enumerate(kinds):
        for col, (key, xlabel) in enumerate((("tokens", "tokens seen"), ("wall_s", "training wall-clock (s)"))):
            ax = fig.add_subplot(len(kinds), 2, 2 * row + col + 1)
            for r in (r for r in runs if r["data"] == kind and r["tokens"]):
                ax.plot(r[key], r["losses"], color=family_color(r["family"]), label=r["label"], linewidth=1,
                        marker="." if len(r["losses"]) < 50 else None)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"training loss ({kind})")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    return _png(fig)


def mqar_frontier(points: list[dict], bench: list[dict]) -> bytes | None:
    """MQAR accuracy (best of each sweep) vs sequence length, and vs the bytes of state one sequence leaves
    (Zoology's recall-memory frontier), beside decode latency vs context of benchmarked models."""
    if not points:
        return None
    bench = _measured(bench)
    fig = Figure(figsize=(4.5 * (2 + bool(bench)), 3.8))
    ax = fig.add_subplot(1, 2 + bool(bench), 1)
    lines: dict[tuple, list[dict]] = {}
    for p in points:
        lines.setdefault((p["label"], p["family"], p["pairs"]), []).append(p)
    for (label, family, pairs), ps in lines.items():
        ps.sort(key=lambda p: p["seq_len"])
        ax.plot([p["seq_len"] for p in ps], [p["accuracy"] for p in ps], marker="o", color=family_color(family),
                label=f"{label} ({pairs} pairs)")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("MQAR sequence length")
    ax.set_ylabel("accuracy (best learning rate)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6)
    ax = fig.add_subplot(1, 2 + bool(bench), 2)
    for p in (p for p in points if p.get("state_bytes")):
        ax.plot([p["state_bytes"]], [p["accuracy"]], marker="o", linestyle="", color=family_color(p["family"]))
        ax.annotate(f"{p['label']} {p['seq_len']}x{p['pairs']}", (p["state_bytes"], p["accuracy"]), fontsize=5,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt.size(v)))
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("state bytes after one sequence (KV cache / recurrent state)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3, which="both")
    _legend(ax, {p["family"] for p in points}, False)
    if bench:
        ax = fig.add_subplot(1, 3, 3)
        _bench_panel(ax, bench, "decode_ms_median", "decode latency (ms/token, median)")
        ax.set_title("decode cost vs context", fontsize=9)
    return _png(fig)
