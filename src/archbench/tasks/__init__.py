"""What is evaluated: one `Task` per module in this package, found through a lazy registry.

A task (cf. lm-evaluation-harness's tasks) decides everything about its examples that a model-independent
eval recipe (evaluate.py) must not: which items there are, how a prompt is built and fitted to a model's
window (drop shots, cut the context, or skip the item: never cut what the answer needs), and how a
prediction is scored into named metrics. Scores are stored as a dict per example, so a new metric needs no
schema change; tables, the report and the plots iterate over the task's declared `metrics` and break results
down by its `breakdown` keys (e.g. context length).

Adding a task = one module defining a class that satisfies `Task` and a `make(**options)` function, plus one
line in `_MODULES` (and a YAML under prompts/ if it has prompt variants).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol, Sequence

from archbench.data import Example

_MODULES = {
    "squad": "archbench.tasks.squad",
    "squad-recall": "archbench.tasks.squad_recall",
    "phonebook": "archbench.tasks.phonebook",
}


@dataclass(frozen=True)
class Metric:
    name: str  # key in a score dict
    label: str  # column heading
    percent: bool = True  # a mean in [0, 1] shown as a percentage; False: shown as a count per run


@dataclass(frozen=True)
class Item:
    """One evaluated unit: an example plus the facts that place it in a breakdown (e.g. length, depth)."""

    id: str  # unique within the task: the store's example_id
    example: Example
    meta: tuple[tuple[str, object], ...] = ()  # (key, value) pairs, JSON-serialisable values


@dataclass(frozen=True)
class Prompt:
    """An item's prompt fitted to one model's tokenizer and window."""

    text: str
    shots_used: int
    context_truncated: bool
    n_tokens: int


class Skip(ValueError):
    """An item that cannot be evaluated on a model (e.g. longer than its window); the message says why."""


class Task(Protocol):
    name: str
    title: str  # report heading, e.g. "SQuAD v1.1"
    metrics: tuple[Metric, ...]  # in column order; the first is the headline metric
    breakdown: tuple[str, ...]  # meta keys results are broken down by in tables and plots
    columns: tuple[str, ...]  # the metric names shown in tables, in order (a subset of `metrics`)

    def items(self) -> list[Item]:
        """The items to evaluate, deterministic from the task's options."""

    def shots(self, k: int, trial: int) -> list[Example]:
        """The shot set of a trial (one set shared by every item of the trial); [] for k = 0."""

    def build(self, item: Item, shots: Sequence[Example], tokenizer, window: int | None, reserve: int) -> Prompt:
        """The prompt of `item` whose tokens plus `reserve` new tokens fit `window` (None: no limit), or
        raise Skip."""

    def score(self, item: Item, prediction: str, raw: str) -> dict[str, float]:
        """Named metric values of one answer: `prediction` is the extracted answer, `raw` the generated text."""

    def identity(self) -> dict:
        """What the task's options are (stored with the run; a resumed run must match them)."""


def names() -> list[str]:
    return list(_MODULES)


def make(name: str, **options) -> Task:
    """The task `name` built from its options; an unknown name lists the valid ones."""
    if name not in _MODULES:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[name]).make(**options)
