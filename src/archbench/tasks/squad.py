"""SQuAD v1.1 extractive question answering, zero- and few-shot (Rajpurkar et al. 2016), the seed study's task.

Items are the questions of a data file in any format data.py reads; prompts come from a YAML prompt style
(prompts/*.yaml, the seed study's exact strings among them); a trial's shots are drawn by seed from a
separate pool, never an evaluated id (HELM's few-shot trials, Liang et al. 2022). To fit a window the prompt
drops its earliest shots first, then cuts the context (keeping its beginning). Metrics (metrics.py): official
EM and F1 over all gold answers, the seed study's strict match, containment, and the count of empty answers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from archbench import data as data_mod
from archbench import metrics, prompts
from archbench.config import ConfigError
from archbench.data import Example
from archbench.tasks import Item, Metric, Prompt, Skip

METRICS = (Metric("em", "EM"), Metric("f1", "F1"), Metric("seed_em", "seed acc"), Metric("contains", "contains"),
           Metric("empty", "empty", percent=False))


def columns(prompt_style: str, shots_from: str | None) -> tuple[str, ...]:
    """Table columns: the seed study's strict match leads when its protocol (style or shots) is reproduced."""
    seed = str(prompt_style).startswith("seed") or shots_from == "seed"
    return (("seed_em",) if seed else ()) + ("em", "f1", "empty")


@dataclass
class Squad:
    data: str  # a SQuAD file (seed / official JSON / JSON Lines) or "squad" (the hub's validation split)
    gold: str | None = None  # official dev file giving all gold answers of seed-format rows
    shots_from: str | None = None  # few-shot pool file, "seed" (the seed study's fixed shots) or "squad"
    limit: int | None = None
    prompt_style: str = "default"
    seed: int = 1234
    name: str = "squad"
    title: str = "SQuAD v1.1"
    metrics: tuple[Metric, ...] = METRICS
    breakdown: tuple[str, ...] = ()
    _examples: list[Example] | None = field(default=None, repr=False)

    @property
    def columns(self) -> tuple[str, ...]:
        return columns(self.prompt_style, self.shots_from)

    def examples(self) -> list[Example]:
        if self._examples is None:
            self._examples = data_mod.load_examples(self.data, gold=self.gold, limit=self.limit)
        return self._examples

    def items(self) -> list[Item]:
        return [Item(e.id, e) for e in self.examples()]

    def shots(self, k: int, trial: int) -> list[Example]:
        return prompts.resolve_shots(self.shots_from, k, seed=self.seed + trial, evaluated=self.examples(),
                                     data_source=self.data)

    def build(self, item: Item, shots: Sequence[Example], tokenizer, window: int | None, reserve: int) -> Prompt:
        try:
            fit = prompts.fit_prompt(prompts.load_style(self.prompt_style), item.example, shots, tokenizer,
                                     window, reserve)
        except ValueError as err:
            raise Skip(str(err)) from None
        return Prompt(fit.text, fit.shots_used, fit.context_truncated, fit.n_tokens)

    def score(self, item: Item, prediction: str, raw: str) -> dict[str, float]:
        return {**metrics.score(prediction, raw, item.example.answers), "empty": float(prediction == "")}

    def identity(self) -> dict:
        """Options, with the prompt style's content digested (a changed YAML is another protocol)."""
        from archbench.identity import digest

        style = digest(prompts.load_style(self.prompt_style).__dict__)
        return {"task": self.name, "data": self.data, "gold": self.gold, "shots_from": self.shots_from,
                "limit": self.limit, "prompt_style": self.prompt_style, "style": style, "seed": self.seed}


def make(**options) -> Squad:
    """The SQuAD task from its options; unknown options, a missing --data or an unknown style fail in one line."""
    known = {"data", "gold", "shots_from", "limit", "prompt_style", "seed"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"--{unknown[0].replace('_', '-')}: not an option of the squad task "
                          f"(its options: {', '.join(sorted(known))})")
    if not options.get("data"):
        raise ConfigError("--data: the squad task needs a data file (seed/official JSON/JSONL) or 'squad' (hub)")
    prompts.load_style(options.get("prompt_style", "default"))  # an unknown style fails before any work
    return Squad(**options)
