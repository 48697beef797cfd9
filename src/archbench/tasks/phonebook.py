"""Phone-book lookup: find one person's number in a list of N synthetic "Name Surname: number" entries.

Follows the phone-book task of Jelassi et al. 2024 ("Repeat After Me: Transformers are Better than State Space
Models at Copying"), where a Transformer's recall stays high as the book grows while a fixed-size state's
falls. Everything is generated from `seed` (no data file): each book has N distinct full names drawn from the
lists below and N distinct numbers "ddd-ddd-dddd"; the asked name occurs exactly once in the book. A point is
(book size N, depth d = relative position of the asked entry: 0 first, 1 last), with `limit` books per point;
the books of a size are the same at every depth, so depths differ only in which entry is asked for. Items carry
meta (("entries", N), ("depth", d), ("position", index of the asked entry)). With `jrt` (Arora et al. 2024,
"Just Read Twice") the book is stated twice before the question. A prompt that does not fit the model's window
is skipped (Skip), never cut. Zero-shot. Metrics: `em` (the answer is exactly the number, ignoring surrounding
spaces and a final full stop) and `contains` (the number appears in the answer as a whole number).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Sequence

from archbench.config import ConfigError
from archbench.data import Example
from archbench.tasks import Item, Metric, Prompt, longctx

METRICS = (Metric("em", "EM"), Metric("contains", "contains"), Metric("empty", "empty", percent=False))
INSTRUCTION = "Below is a phone book. Each line gives a person's name and phone number."
FIRST = ("Aaron Abigail Adrian Alice Amelia Andrew Anthony Arthur Audrey Benjamin Bianca Caleb Camila Carlos Charlotte "
         "Chloe Daniel David Diana Dominic Edgar Eleanor Elijah Emily Ethan Felix Fiona Gabriel Grace Hannah Harold "
         "Henry Isaac Isabel Jacob Julia Kevin Laura Leonard Lucy Marcus Maria Martin Naomi Nathan Nora Oliver "
         "Oscar Paula Peter Quentin Rachel Robert Samuel Sophia Theodore Ursula Victor Wendy Xavier Yvonne Zachary")
LAST = ("Abbott Baker Barnes Bennett Brooks Carter Castillo Chandler Dawson Delgado Ellison Ferguson Fleming Foster "
        "Garrison Gibson Hamilton Harper Hawkins Ingram Jennings Kimball Lawson Lindqvist Mackenzie Marsh Morrison "
        "Nakamura Norwood Okafor Palmer Pearson Quinlan Ramirez Reynolds Salazar Sheridan Sutton Thornton Underwood "
        "Valentine Vasquez Whitaker Winslow Yamamoto Zimmerman")
FIRST_NAMES, LAST_NAMES = tuple(FIRST.split()), tuple(LAST.split())
MAX_ENTRIES = len(FIRST_NAMES) * len(LAST_NAMES)
_NUMBER = re.compile(r"\d{3}-\d{3}-\d{4}")


def book(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """`n` entries (full name, number), names and numbers all distinct, in the rng's order."""
    names = [f"{FIRST_NAMES[i // len(LAST_NAMES)]} {LAST_NAMES[i % len(LAST_NAMES)]}"
             for i in rng.sample(range(MAX_ENTRIES), n)]
    numbers: dict[str, None] = {}
    while len(numbers) < n:
        numbers[f"{rng.randint(200, 999)}-{rng.randint(200, 999)}-{rng.randint(0, 9999):04d}"] = None
    return list(zip(names, numbers))


def lines(entries: Sequence[tuple[str, str]]) -> str:
    """The book as text: one "Name Surname: number" line per entry."""
    return "\n".join(f"{who}: {number}" for who, number in entries)


def render(book_text: str, question: str, jrt: bool = False) -> str:
    """The prompt: instruction, the book (twice with `jrt`), the question, the answer cue."""
    return f"{INSTRUCTION}\n\n{longctx.read_twice(book_text, jrt)}\n\nQuestion: {question}\nAnswer:"


def score_answer(prediction: str, number: str) -> dict[str, float]:
    """em: the answer is exactly `number` (spaces and one final "." aside); contains: `number` occurs in it
    as a whole number (not inside a longer run of digits)."""
    answer = prediction.strip()
    answer = answer[:-1].rstrip() if answer.endswith(".") else answer
    found = any(m.group(0) == number and _whole(prediction, m.start(), m.end()) for m in _NUMBER.finditer(prediction))
    return {"em": float(answer == number), "contains": float(found), "empty": float(prediction.strip() == "")}


def _whole(text: str, start: int, end: int) -> bool:
    return (start == 0 or not text[start - 1].isdigit()) and (end == len(text) or not text[end].isdigit())


@dataclass
class Phonebook:
    entries: tuple[int, ...] = (10, 50, 200)  # book sizes N
    depths: tuple[float, ...] = (0.0, 0.5, 1.0)  # where the asked entry sits (0 first, 1 last)
    limit: int = 20  # books per size
    seed: int = 1234
    jrt: bool = False  # Just Read Twice: the book twice before the question
    name: str = "phonebook"
    title: str = "Phone-book lookup"
    metrics: tuple[Metric, ...] = METRICS
    breakdown: tuple[str, ...] = ("entries", "depth")
    columns: tuple[str, ...] = ("em", "contains", "empty")

    def items(self) -> list[Item]:
        out = []
        for n in self.entries:
            for b in range(self.limit):
                entries = book(n, random.Random(f"{self.seed}:{n}:{b}"))
                text = lines(entries)
                for d in self.depths:
                    at = longctx.slot(d, n)
                    who, number = entries[at]
                    example = Example(f"pb-n{n}-b{b}-d{d:g}", text, f"What is the phone number of {who}?", (number,))
                    out.append(Item(example.id, example, (("entries", n), ("depth", d), ("position", at))))
        return out

    def shots(self, k: int, trial: int) -> list[Example]:
        return longctx.no_shots(self.name, k)

    def build(self, item: Item, shots: Sequence[Example], tokenizer, window: int | None, reserve: int) -> Prompt:
        if shots:
            longctx.no_shots(self.name, len(shots))
        text = render(item.example.context, item.example.question, self.jrt)
        n_tokens = longctx.count_tokens(tokenizer, text)
        longctx.check_window(self.name, item.id, n_tokens, reserve, window)
        return Prompt(text, 0, False, n_tokens)

    def score(self, item: Item, prediction: str, raw: str) -> dict[str, float]:
        return score_answer(prediction, item.example.answers[0])

    def identity(self) -> dict:
        return {"task": self.name, "entries": list(self.entries), "depths": list(self.depths),
                "limit": self.limit, "seed": self.seed, "jrt": self.jrt}


def make(**options) -> Phonebook:
    """The phonebook task from its options (entries, depths, limit = books per size, seed, jrt); a bad or
    unknown option fails in one line naming it."""
    longctx.check_options("phonebook", options, {"entries", "depths", "limit", "seed", "jrt"})
    sizes = longctx.positive_ints("entries", options.get("entries", Phonebook.entries))
    if max(sizes) > MAX_ENTRIES:
        raise ConfigError(f"--entries: at most {MAX_ENTRIES} distinct names, {max(sizes)} asked for")
    longctx.check_limit(options.get("limit"), "books per size")
    return Phonebook(sizes, longctx.fractions("depths", options.get("depths", Phonebook.depths)),
                     options.get("limit") or Phonebook.limit, int(options.get("seed", 1234)),
                     bool(options.get("jrt", False)))
