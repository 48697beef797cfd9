"""SQuAD recall under long context: a question's gold paragraph hidden among distractor paragraphs.

Follows RULER's SQuAD QA task (Hsieh et al. 2024, "RULER: What's the Real Context Size of Your Long-Context
Language Models?"): the gold paragraph plus distractor paragraphs, shuffled and labelled "Document i:",
padded to a target length in the model's own tokens, scored by whether a gold answer appears in the output.
Differences, by design: a distractor is never a paragraph that contains a gold answer (RULER does not check);
the gold paragraph's depth is controlled (`depths`: 0 first, 1 last) rather than random; and the haystack is
filled to the token, not to a whole number of paragraphs: the last distractor is cut (never the gold one).

A point (question x length x depth) is an `Item` with meta (("length", L), ("depth", d)). As in RULER, a
length counts the whole sequence the model holds: prompt tokens + the `reserve` tokens of the answer = L,
within a few tokens (so an L-token point fits an L-token window). The distractors of a question come in a
fixed, seeded order (other paragraphs of its article first, then other articles), a length takes as many as
fit, and their shuffle depends on (seed, question, length) only, so depths differ only in where the gold
paragraph sits (and by a token or two in where the cut paragraph ends). With `jrt` the same documents are
stated twice before the question (longctx.read_twice): the prompt is then about twice L, and is skipped when
that exceeds the window. Zero-shot.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from archbench import data as data_mod
from archbench import metrics
from archbench.config import ConfigError
from archbench.data import Example
from archbench.tasks import Item, Metric, Prompt, Skip, longctx

METRICS = (Metric("contains", "contains"), Metric("em", "EM"), Metric("f1", "F1"),
           Metric("empty", "empty", percent=False))
INSTRUCTION = "Read the documents below, then answer the question with a short phrase taken from them."
REMINDER = "Answer the question with a short phrase from the documents above."  # as RULER, said again after them
DOC_SEPARATOR = "\n\n"
ORDER_CACHE = 64  # questions whose distractor order is kept (each is ~2k paragraph indices)


def default_data() -> str:
    """The SQuAD v1.1 dev file in $ARCHBENCH_DATA (default ../shared/data/squad)."""
    return str(Path(os.environ.get("ARCHBENCH_DATA", "../shared/data/squad")) / data_mod.GOLD_SIBLING)


def render(documents: Sequence[str], question: str, jrt: bool = False) -> str:
    """The prompt: instruction, labelled documents (twice with `jrt`), reminder, question, answer cue. (Without
    the reminder SmolLM2-135M-Instruct ended half of the prompts we tried at once, with an empty answer.)"""
    block = DOC_SEPARATOR.join(f"Document {i}:\n{text}" for i, text in enumerate(documents, start=1))
    return f"{INSTRUCTION}\n\n{longctx.read_twice(block, jrt)}\n\n{REMINDER}\nQuestion: {question}\nAnswer:"


def mentions_gold(paragraph: str, golds: Sequence[str]) -> bool:
    """True when any gold answer occurs in `paragraph`: as a raw case-insensitive substring or as whole words
    after SQuAD normalisation (as metrics.contains scores), so no distractor can supply an answer either way."""
    return _mentions(paragraph.lower(), f" {metrics.normalize_answer(paragraph)} ", golds)


def _mentions(low: str, padded_norm: str, golds: Sequence[str]) -> bool:
    for gold in golds:
        norm = metrics.normalize_answer(gold)
        if (gold.strip() and gold.strip().lower() in low) or (norm and f" {norm} " in padded_norm):
            return True
    return False


def fill(tokens, most: int, budget: int, tries: int = 8) -> int | None:
    """The largest `keep` in 0..most (tokens kept of the cut paragraph) found with tokens(keep) <= budget,
    or None when even keep = 0 is over. tokens(keep) grows by about one per kept token, so each step moves
    `keep` by the remaining gap: a few tokenisations of the whole prompt instead of a bisection's dozen."""
    empty = tokens(0)
    if empty > budget:
        return None
    best, keep = 0, min(most, max(0, budget - empty - 3))  # ~3 tokens for the document's label
    for _ in range(tries):
        if keep == best:
            break
        n = tokens(keep)
        if n <= budget:
            best = keep
            if n == budget or keep == most:
                break
            keep = min(most, keep + (budget - n))
        else:
            keep = max(best, keep - (n - budget))
    return best


@dataclass
class SquadRecall:
    data: str  # SQuAD JSON Lines with titles (the dev file): the questions and the paragraph pool
    lengths: tuple[int, ...] = (512, 1024, 2048, 4096, 8192)  # prompt + answer tokens per point
    depths: tuple[float, ...] = (0.0, 0.5, 1.0)  # where the gold paragraph sits among the documents
    limit: int | None = None  # questions, sampled by seed across the file (None: all)
    seed: int = 1234
    jrt: bool = False  # Just Read Twice: the documents twice before the question
    name: str = "squad-recall"
    title: str = "SQuAD recall (RULER QA)"
    metrics: tuple[Metric, ...] = METRICS
    breakdown: tuple[str, ...] = ("length", "depth")
    columns: tuple[str, ...] = ("contains", "em", "f1", "empty")
    _questions: list[Example] | None = field(default=None, repr=False)
    _paragraphs: list[tuple[str, str]] | None = field(default=None, repr=False)  # (article key, text)
    _search: list[tuple[str, str]] | None = field(default=None, repr=False)  # (lowercased, " normalised ")
    _order: dict[str, list[int]] = field(default_factory=dict, repr=False)  # question id -> distractor indices
    _counts: dict[int, tuple[object, dict[int, int]]] = field(default_factory=dict, repr=False)

    def _load(self) -> None:
        examples = data_mod.load_examples(self.data)
        seen: dict[str, int] = {}
        self._paragraphs = []
        for e in examples:
            if e.context not in seen:
                seen[e.context] = len(self._paragraphs)
                self._paragraphs.append((e.title or e.context, e.context))
        self._search = [(t.lower(), f" {metrics.normalize_answer(t)} ") for _, t in self._paragraphs]
        if self.limit is not None and self.limit > len(examples):
            raise ConfigError(f"--limit: {self.limit} questions asked for, {self.data} has {len(examples)}")
        keep = sorted(random.Random(self.seed).sample(range(len(examples)), self.limit)) if self.limit else None
        self._questions = [examples[i] for i in keep] if keep is not None else examples

    def questions(self) -> list[Example]:
        if self._questions is None:
            self._load()
        return self._questions

    def items(self) -> list[Item]:
        return [Item(f"{q.id}:L{n}:d{d:g}", q, (("length", n), ("depth", d)))
                for q in self.questions() for n in self.lengths for d in self.depths]

    def shots(self, k: int, trial: int) -> list[Example]:
        return longctx.no_shots(self.name, k)

    def distractors(self, question: Example) -> list[int]:
        """Indices of the paragraphs that may surround `question`'s gold paragraph, in the order they are
        used: other paragraphs of its article (shuffled), then other articles' (shuffled); none mentions
        a gold answer and none is the gold paragraph."""
        if question.id not in self._order:
            self.questions()
            rng = random.Random(f"{self.seed}:{question.id}")
            article = next(key for key, text in self._paragraphs if text == question.context)
            same, other = [], []
            for i, (key, text) in enumerate(self._paragraphs):
                if text != question.context and not _mentions(*self._search[i], question.answers):
                    (same if key == article else other).append(i)
            rng.shuffle(same)
            rng.shuffle(other)
            if len(self._order) >= ORDER_CACHE:  # items come question by question: keep only recent ones
                del self._order[next(iter(self._order))]
            self._order[question.id] = same + other
        return self._order[question.id]

    def _count(self, tokenizer, index: int) -> int:
        owner, counts = self._counts.setdefault(id(tokenizer), (tokenizer, {}))  # keeps the tokenizer alive
        if index not in counts:
            counts[index] = longctx.count_tokens(tokenizer, self._paragraphs[index][1])
        return counts[index]

    def _whole(self, item: Item, tokenizer, budget: int) -> int:
        """How many distractors fit `budget` whole, by estimate (paragraph tokens + a label each)."""
        q = item.example
        total = longctx.count_tokens(tokenizer, render([q.context], q.question))
        if total > budget:
            raise Skip(f"{self.name} {item.id}: the gold paragraph and question alone take {total} tokens, "
                       f"more than the {budget} a {dict(item.meta)['length']}-token point leaves for the prompt")
        label = longctx.count_tokens(tokenizer, DOC_SEPARATOR + "Document 99:\n")
        for n, index in enumerate(self.distractors(q)):
            total += self._count(tokenizer, index) + label
            if total > budget:
                return n
        return len(self.distractors(q))

    def _arrange(self, item: Item, slots: list[int], cut_ids: list[int], tokenizer, keep: int) -> list[str]:
        """The documents: the distractors `slots` in order, the last chosen one (`slots`' cut paragraph, whose
        tokens are `cut_ids`) cut to `keep` tokens or left out at 0, the gold paragraph at its depth."""
        cut = self.distractors(item.example)[len(slots) - 1]
        texts = [tokenizer.decode(cut_ids[:keep]) if i == cut else self._paragraphs[i][1] for i in slots
                 if i != cut or keep > 0]
        at = longctx.slot(dict(item.meta)["depth"], len(texts) + 1)
        return texts[:at] + [item.example.context] + texts[at:]

    def documents(self, item: Item, tokenizer, budget: int) -> list[str]:
        """The documents of `item`'s prompt, in order, filled to `budget` prompt tokens: `n` whole distractors
        and the next one cut, shuffled, the gold paragraph at its depth. When the estimate of `n` was off,
        `n` moves (one way only) until the cut paragraph is what fills the remainder."""
        q, length = item.example, dict(item.meta)["length"]
        order, n, step = self.distractors(q), self._whole(item, tokenizer, budget), 0
        while True:
            if n >= len(order):
                raise Skip(f"{self.name} {item.id}: only {len(order)} distractor paragraphs are free of the gold "
                           f"answers, too few for a {length}-token point")
            slots = order[: n + 1]
            random.Random(f"{self.seed}:{q.id}:{length}").shuffle(slots)
            cut_ids = tokenizer(self._paragraphs[order[n]][1], add_special_tokens=False)["input_ids"]

            def tokens(keep: int, slots=slots, cut_ids=cut_ids) -> int:
                docs = self._arrange(item, slots, cut_ids, tokenizer, keep)
                return longctx.count_tokens(tokenizer, render(docs, q.question))

            keep = fill(tokens, len(cut_ids), budget)
            if keep is None and step <= 0 and n > 0:  # over even without the cut paragraph: one fewer
                n, step = n - 1, -1
            elif keep == len(cut_ids) and step >= 0 and tokens(keep) < budget:  # all of it fits: one more
                n, step = n + 1, 1
            elif keep is None:
                raise Skip(f"{self.name} {item.id}: no arrangement of the documents fits {budget} prompt tokens")
            else:
                return self._arrange(item, slots, cut_ids, tokenizer, keep)

    def build(self, item: Item, shots: Sequence[Example], tokenizer, window: int | None, reserve: int) -> Prompt:
        if shots:
            longctx.no_shots(self.name, len(shots))
        length = dict(item.meta)["length"]
        if window is not None and length > window:
            raise Skip(f"{self.name} {item.id}: a {length}-token point exceeds the model's {window}-token window")
        docs = self.documents(item, tokenizer, length - reserve)
        text = render(docs, item.example.question, self.jrt)
        n_tokens = longctx.count_tokens(tokenizer, text)
        longctx.check_window(self.name, item.id, n_tokens, reserve, window)
        return Prompt(text, 0, False, n_tokens)

    def score(self, item: Item, prediction: str, raw: str) -> dict[str, float]:
        golds = item.example.answers
        em, f1 = metrics.squad_scores(prediction, golds)
        return {"contains": metrics.contains(prediction, golds), "em": em, "f1": f1,
                "empty": float(prediction == "")}

    def identity(self) -> dict:
        return {"task": self.name, "data": self.data, "lengths": list(self.lengths), "depths": list(self.depths),
                "limit": self.limit, "seed": self.seed, "jrt": self.jrt}


def make(**options) -> SquadRecall:
    """The squad-recall task from its options (data, lengths, depths, limit, seed, jrt); `data` defaults to
    squad_v1.1_dev.jsonl in $ARCHBENCH_DATA. A bad or unknown option fails in one line naming it."""
    longctx.check_options("squad-recall", options, {"data", "lengths", "depths", "limit", "seed", "jrt"})
    longctx.check_limit(options.get("limit"), "questions")
    path = options.get("data") or default_data()
    if not Path(path).is_file():
        raise ConfigError(f"--data: {path}: no such file (squad-recall reads a SQuAD v1.1 dev file with titles)")
    return SquadRecall(path, longctx.positive_ints("lengths", options.get("lengths", SquadRecall.lengths)),
                       longctx.fractions("depths", options.get("depths", SquadRecall.depths)),
                       options.get("limit"), int(options.get("seed", 1234)), bool(options.get("jrt", False)))
