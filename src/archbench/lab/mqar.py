"""Multi-query associative recall (MQAR), generated: Arora et al. 2023, "Zoology: Measuring and Improving
Recall in Efficient Language Models", Sec. 3 and its `multiquery_ar` generator (read, not copied).

One example of sequence length L with P pairs over a vocabulary of V tokens:

    k1 v1 k2 v2 ... kP vP | filler ... q ... filler ... q' ...
    keys from [1, V/2), values from [V/2, V) (disjoint halves; 0 is never drawn), every key once per example;
    each key is queried once after the pairs, at an even offset 2*g of the query region, gaps g drawn without
    replacement with probability ~ g^(a-1) (a power law: most queries come soon after the pairs, a = 0.01);
    the token after a query is labelled with its value; every other label is -100 (no loss, not scored).

Inputs are the first L tokens, labels the next-token targets (input position i predicts token i + 1), so a
query's label sits at the query's own position. Filler positions hold random tokens; unlike Zoology, which
draws them from the whole vocabulary, fillers here never repeat one of the example's keys, so every query's
key appears exactly once before it (the property the tests check). fill="zero" sets every filler to token 0
instead (Zoology's random_non_queries=False, its figure-2 setting). Deterministic: numpy's Generator seeded
with (seed, L, P, V). A train set is a mix of (L, P) segments; a test set is a grid, each point scored apart.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IGNORE = -100
FILLS = ("random", "zero")
POWER_A = 0.01  # Zoology's default: gaps between a key and its query follow p(g) ~ g^(a-1)


@dataclass(frozen=True)
class Segment:
    seq_len: int
    pairs: int
    inputs: torch.Tensor  # (N, seq_len) int64
    labels: torch.Tensor  # (N, seq_len) int64, IGNORE except at queries (the answer the model must give)


def check(seq_len: int, pairs: int, vocab: int) -> None:
    """One-line errors for (length, pairs, vocabulary) that cannot make a valid example."""
    if seq_len % 2 or seq_len < 4 * pairs:
        raise ValueError(f"MQAR length {seq_len}, pairs {pairs}: the length must be even and >= 4 x pairs")
    if vocab // 2 - 1 < pairs or vocab <= seq_len:
        raise ValueError(f"MQAR vocabulary {vocab}: must exceed the length {seq_len} (Zoology's rule) and hold "
                         f"{pairs} keys and {pairs} values in disjoint halves")


def generate(seq_len: int, pairs: int, vocab: int, n: int, seed: int, power_a: float = POWER_A,
             fill: str = "random") -> Segment:
    """n examples of length seq_len with `pairs` key-value pairs; same arguments, same tensors.
    fill: "random" tokens between the queries, or "zero" (token 0, Zoology's random_non_queries=False)."""
    check(seq_len, pairs, vocab)
    if fill not in FILLS:
        raise ValueError(f"MQAR fill {fill!r}: choose {' or '.join(FILLS)}")
    rng = np.random.default_rng([seed, seq_len, pairs, vocab])
    half = vocab // 2
    keys = np.argsort(rng.random((n, half - 1)), axis=1)[:, :pairs] + 1  # (n, P) distinct, in [1, V/2)
    values = np.argsort(rng.random((n, vocab - half)), axis=1)[:, :pairs] + half  # (n, P) in [V/2, V)
    space = (seq_len - 2 * pairs) // 2  # query slots: even offsets of the query region
    p = power_a * np.arange(1, space + 1) ** (power_a - 1)
    gaps = np.stack([rng.choice(space, size=pairs, replace=False, p=p / p.sum()) for _ in range(n)])  # (n, P)
    seq = rng.integers(1, vocab, size=(n, seq_len + 1))  # fillers, then overwritten
    seq[:, 0:2 * pairs:2], seq[:, 1:2 * pairs:2] = keys, values
    rows = np.arange(n)[:, None]
    qpos = 2 * pairs + 2 * gaps  # (n, P) query positions
    seq[rows, qpos], seq[rows, qpos + 1] = keys, values
    tail = seq[:, 2 * pairs:]  # fillers must not repeat a key: redraw those from the value half
    is_query = np.zeros_like(tail, dtype=bool)
    is_query[rows, 2 * gaps] = is_query[rows, 2 * gaps + 1] = True
    clash = ~is_query & (tail[:, :, None] == keys[:, None, :]).any(-1)
    tail[clash] = rng.integers(half, vocab, size=int(clash.sum()))
    if fill == "zero":
        tail[~is_query] = 0
    labels = np.full((n, seq_len + 1), IGNORE)
    labels[rows, qpos + 1] = values
    return Segment(seq_len, pairs, torch.from_numpy(seq[:, :-1].copy()), torch.from_numpy(labels[:, 1:].copy()))


def mix(points: list[tuple[int, int]], vocab: int, n: int, seed: int, fill: str = "random") -> list[Segment]:
    """A training mix: n examples per (seq_len, pairs) point."""
    return [generate(length, pairs, vocab, n, seed, fill=fill) for length, pairs in points]


def grid(points: list[tuple[int, int]], vocab: int, n: int, seed: int, fill: str = "random") -> list[Segment]:
    """A test grid: one segment per (seq_len, pairs) point, seeded apart from training (seed + 1_000_003)."""
    return [generate(length, pairs, vocab, n, seed + 1_000_003, fill=fill) for length, pairs in points]


def parse_points(text: str) -> list[tuple[int, int]]:
    """'64x4,128x8' -> [(64, 4), (128, 8)] (sequence length x pairs)."""
    try:
        points = [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item.strip()]
    except ValueError:
        points = []
    if not points or any(len(p) != 2 for p in points):
        raise ValueError(f"MQAR points {text!r}: write LENGTHxPAIRS, comma-separated, e.g. 64x4,128x8")
    return points
