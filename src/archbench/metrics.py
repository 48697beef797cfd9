"""Answer-quality metrics for SQuAD: official EM/F1, the seed study's strict match, and containment.

Reference: the official SQuAD v1.1 evaluation script (Rajpurkar et al. 2016, "SQuAD: 100,000+
Questions for Machine Comprehension of Text"): answer normalisation, exact match and token F1,
each the maximum over all gold answers. `seed_em` reproduces the strict single-answer match of the
seed study (../shared/reference/seed-study.md). Written here rather than calling torchmetrics'
batched tensor API; tests/test_metrics.py checks agreement with torchmetrics.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace (SQuAD v1.1)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _f1(prediction_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(prediction_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(prediction_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """Official SQuAD v1.1 (EM, F1) of one prediction, each the max over `golds`, in [0, 1]."""
    if not golds:
        raise ValueError("squad_scores needs at least one gold answer")
    pred = normalize_answer(prediction)
    pred_tokens = pred.split()
    em = max(float(pred == normalize_answer(g)) for g in golds)
    f1 = max(_f1(pred_tokens, normalize_answer(g).split()) for g in golds)
    return em, f1


def seed_em(prediction: str, first_gold: str) -> float:
    """The seed study's strict match on the raw generated text against its single gold answer.

    Cut at the first blank line, strip, drop one trailing "." when the gold has none, then compare
    case-insensitively; no other normalisation.
    """
    answer = prediction.split("\n\n", 1)[0].strip()
    if answer.endswith(".") and not first_gold.endswith("."):
        answer = answer[:-1]
    return float(answer.lower() == first_gold.lower())


def contains(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when some non-empty normalised gold occurs in the normalised prediction as whole words."""
    pred = f" {normalize_answer(prediction)} "
    for gold in golds:
        norm = normalize_answer(gold)
        if norm and f" {norm} " in pred:
            return 1.0
    return 0.0


def score(prediction: str, raw: str, golds: Sequence[str]) -> dict[str, float]:
    """All metrics for one answer: `prediction` is the extracted answer, `raw` the generated text."""
    em, f1 = squad_scores(prediction, golds)
    return {"em": em, "f1": f1, "seed_em": seed_em(raw, golds[0]), "contains": contains(prediction, golds)}
