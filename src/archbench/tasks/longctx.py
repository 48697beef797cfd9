"""Pieces shared by the long-context recall tasks (squad_recall.py, phonebook.py).

Option parsing (lists of lengths / fractions given as sequences or "a,b,c" strings, each bad value refused in
one line naming the option), token counting the way the engine tokenises (no special tokens), the window
check that turns a prompt too long for a model into `Skip` (never a silent cut), zero-shot refusal of
shots, and "Just Read Twice" (Arora et al. 2024, "Just read twice: closing the recall gap for recurrent
language models"): the context is stated twice before the question, so a recurrent model reads it once
more knowing what kind of text it holds.
"""
from __future__ import annotations

from typing import Sequence

from archbench.config import ConfigError
from archbench.tasks import Skip

JRT_SEPARATOR = "\n\n"  # between the two copies of a context


def count_tokens(tokenizer, text: str) -> int:
    """Tokens of `text` as the engine feeds it (engine.py tokenises without special tokens)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def read_twice(context: str, jrt: bool) -> str:
    """The context block of a prompt: the context, or with `jrt` the context twice."""
    return context + JRT_SEPARATOR + context if jrt else context


def check_window(task: str, item_id: str, n_tokens: int, reserve: int, window: int | None) -> None:
    """Raise Skip when a prompt of `n_tokens` plus `reserve` answer tokens does not fit `window`."""
    if window is not None and n_tokens + reserve > window:
        raise Skip(f"{task} {item_id}: the prompt has {n_tokens} tokens, + {reserve} for the answer exceeds "
                   f"the model's {window}-token window")


def no_shots(task: str, k: int) -> list:
    """Recall tasks are zero-shot: [] for k = 0, a one-line refusal otherwise."""
    if k != 0:
        raise ConfigError(f"--shots: the {task} task is zero-shot, {k} shots asked for; use 0")
    return []


def check_options(task: str, given: dict, known: set[str]) -> None:
    """Refuse an option the task does not take, in one line listing the ones it does."""
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"--{unknown[0].replace('_', '-')}: not an option of the {task} task "
                          f"(its options: {', '.join(sorted(known))})")


def check_limit(limit, what: str) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"--limit: expected a positive number of {what}, got {limit!r}")


def _values(option: str, value) -> list[str]:
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
    elif isinstance(value, (int, float)):
        parts = [value]
    elif isinstance(value, Sequence):
        parts = list(value)
    else:
        raise ConfigError(f"--{option}: expected a list of numbers, got {value!r}")
    if not parts:
        raise ConfigError(f"--{option}: empty list")
    return parts


def _distinct(option: str, value, convert) -> tuple:
    """A non-empty tuple of distinct values, each `convert(option, part)`, from a sequence or a "a,b" string."""
    out = [convert(option, part) for part in _values(option, value)]
    if len(set(out)) != len(out):
        raise ConfigError(f"--{option}: repeated value in {out}")
    return tuple(out)


def _positive_int(option: str, part) -> int:
    try:
        number = int(part)
    except (TypeError, ValueError):
        raise ConfigError(f"--{option}: {part!r} is not an integer") from None
    if number < 1 or number != float(part):
        raise ConfigError(f"--{option}: {part!r} is not a positive integer")
    return number


def _fraction(option: str, part) -> float:
    try:
        number = float(part)
    except (TypeError, ValueError):
        raise ConfigError(f"--{option}: {part!r} is not a number") from None
    if not 0.0 <= number <= 1.0:
        raise ConfigError(f"--{option}: {number} is outside [0, 1]")
    return number


def positive_ints(option: str, value) -> tuple[int, ...]:
    """A non-empty tuple of distinct positive integers, from a sequence or a "512,1024" string."""
    return _distinct(option, value, _positive_int)


def fractions(option: str, value) -> tuple[float, ...]:
    """A non-empty tuple of distinct numbers in [0, 1] (0 = first, 1 = last), from a sequence or a string."""
    return _distinct(option, value, _fraction)


def slot(fraction: float, n: int) -> int:
    """The index in 0..n-1 that a relative position in [0, 1] names (0 first, 1 last)."""
    return round(fraction * (n - 1)) if n > 1 else 0
