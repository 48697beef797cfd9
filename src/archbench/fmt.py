"""How numbers look in every table (CLI and report alike): one function per kind of cell, so the same result
always reads the same wherever it is shown."""
from __future__ import annotations

import statistics
from typing import Sequence


def size(n: float | None) -> str:
    """Bytes in binary units: '512 B', '1.5 KiB', '3.0 MiB'; '-' for unknown."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"  # unreachable: GiB always returns


def pct(x: float | None) -> str:
    """A fraction as a percentage with one decimal ('-' for unknown)."""
    return "-" if x is None else f"{100 * x:.1f}"


def params(n: int | None) -> str:
    """A parameter count: '6.4M', '1.30B'; '?' for unknown."""
    if not n:
        return "?"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def spread(values: Sequence[float], spec: str) -> str:
    """One value, or mean ± sample standard deviation of several (e.g. over trials)."""
    values = list(values)
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return format(mean, spec)
    return f"{format(mean, spec)} ± {format(statistics.stdev(values), spec)}"


def count(parts: Sequence[float], totals: Sequence[int]) -> str:
    """A count over all trials: '6/150' (e.g. empty answers out of all answers)."""
    return f"{sum(parts):.0f}/{sum(totals)}"


def status(state: str | None, reason: str | None = None) -> str:
    """A bench point's status with the reason it was not measured: 'ok', 'skipped: context 512 + 16 new tokens
    exceeds the model's window of 64 tokens'; '?' for unknown."""
    return ": ".join(filter(None, (state or "?", reason)))


def label(model: str, untrained: bool) -> str:
    """A model's row label; untrained zoo models are marked everywhere."""
    return model + (" (untrained)" if untrained else "")


def family(name: str | None, layers: str | None = None) -> str:
    """A model's family with its layer mix when the mix says more than the name: 'hybrid: 1 attention + 3
    mamba2', 'mamba'; '?' for unknown."""
    if not name:
        return "?"
    if not layers or layers.split(" + ") == [f"{layers.split()[0]} {name}"]:
        return name
    return f"{name}: {layers}"
