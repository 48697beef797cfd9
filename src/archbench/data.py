"""Load SQuAD v1.1 questions into one `Example` type, from any of the formats archbench meets.

Reference: Rajpurkar et al. 2016, "SQuAD: 100,000+ Questions for Machine Comprehension of Text"
(official JSON layout data/paragraphs/qas); the Hugging Face dataset `rajpurkar/squad` (JSON Lines
with answers{text, answer_start}); and the seed study's JSON Lines (id, context, prompt, response),
whose single `response` is replaced by all dev-set gold answers when a gold file is available.

Every problem in the input raises `DataError` with a one-line message naming file:line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GOLD_SIBLING = "squad_v1.1_dev.jsonl"
HF_DATASET = "rajpurkar/squad"


class DataError(ValueError):
    """A data file is missing, malformed or incomplete; the message is one line naming file:line."""


@dataclass(frozen=True)
class Example:
    id: str
    context: str
    question: str
    answers: tuple[str, ...]
    title: str = ""


def load_examples(source: str, *, gold: str | None = None, limit: int | None = None) -> list[Example]:
    """Load `source` (a file path, or the literal "squad" for the HF validation split).

    Seed-format rows get all gold answers of their id from `gold`, or from a
    `squad_v1.1_dev.jsonl` next to `source` when `gold` is None. `limit` keeps the first N rows.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of examples, got {limit}")
    if source == "squad":
        examples = _load_hub("validation")
        return examples[:limit] if limit else examples
    path = Path(source)
    examples, seed_lines = _load_file(path)
    if limit:
        examples = examples[:limit]
    if seed_lines is None:
        return examples
    gold_path = Path(gold) if gold is not None else path.parent / GOLD_SIBLING
    if gold is None and (not gold_path.is_file() or gold_path.resolve() == path.resolve()):
        return examples
    return _attach_gold(examples, seed_lines, path, gold_path)


def load_pool(source: str) -> list[Example]:
    """Load a few-shot pool: a file in any supported format, or "squad" for the HF train split."""
    if source == "squad":
        return _load_hub("train")
    return load_examples(source)


def _load_hub(split: str) -> list[Example]:
    try:
        import datasets

        rows = datasets.load_dataset(HF_DATASET, split=split)
    except Exception as exc:  # offline, missing cache, hub error: all mean "use a local file"
        reason = " ".join(str(exc).split())[:200]
        raise DataError(
            f"{HF_DATASET} ({split}): could not load from the Hugging Face hub ({type(exc).__name__}: {reason}); "
            f"pass a local file instead, e.g. {GOLD_SIBLING}"
        ) from None
    examples = [_squad_row(row, f"{HF_DATASET}[{split}]:{i}") for i, row in enumerate(rows)]
    _check_ids(examples, [f"{HF_DATASET}[{split}]:{i}" for i in range(len(examples))])
    return examples


def _load_file(path: Path) -> tuple[list[Example], list[str] | None]:
    """Parse a file; return its examples and, for seed-format files, each row's location."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if not text.strip():
        raise DataError(f"{path}: empty file, no examples")
    if path.suffix == ".json":
        examples, locations, is_seed = _parse_official(path, text)
    else:
        examples, locations, is_seed = _parse_jsonl(path, text)
    _check_ids(examples, locations)
    return examples, locations if is_seed else None


def _parse_jsonl(path: Path, text: str) -> tuple[list[Example], list[str], bool]:
    examples: list[Example] = []
    locations: list[str] = []
    is_seed: bool | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        row = _parse_json(line, where)
        if is_seed is None:
            is_seed = "prompt" in row and "question" not in row
        examples.append(_seed_row(row, where) if is_seed else _squad_row(row, where))
        locations.append(where)
    return examples, locations, bool(is_seed)


def _parse_official(path: Path, text: str) -> tuple[list[Example], list[str], bool]:
    doc = _parse_json(text, path.name, whole_file=True)
    articles = doc.get("data")
    if not isinstance(articles, list):
        raise DataError(f"{path.name}: missing field 'data' (expected official SQuAD JSON)")
    examples, locations = [], []
    for a, article in enumerate(articles):
        where = f"{path.name}:data[{a}]"
        title = _text(article, "title", where, default="")
        for p, paragraph in enumerate(_items(article, "paragraphs", where)):
            p_where = f"{where}.paragraphs[{p}]"
            context = _text(paragraph, "context", p_where)
            for q, qa in enumerate(_items(paragraph, "qas", p_where)):
                q_where = f"{p_where}.qas[{q}]"
                answers = [_text(ans, "text", f"{q_where}.answers[{i}]")
                           for i, ans in enumerate(_items(qa, "answers", q_where))]
                examples.append(_example(qa, q_where, context, _text(qa, "question", q_where), answers, title))
                locations.append(q_where)
    if not examples:
        raise DataError(f"{path.name}: no questions found")
    return examples, locations, False


def _parse_json(text: str, where: str, whole_file: bool = False) -> dict:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        line = f":{exc.lineno}" if whole_file else ""
        raise DataError(f"{where}{line}: malformed JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


def _squad_row(row: dict, where: str) -> Example:
    answers = row.get("answers")
    if not isinstance(answers, dict) or "text" not in answers:
        raise DataError(f"{where}: missing field 'answers.text'")
    texts = answers["text"]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise DataError(f"{where}: field 'answers.text' must be a list of strings")
    context = _text(row, "context", where)
    return _example(row, where, context, _text(row, "question", where), texts, _text(row, "title", where, default=""))


def _seed_row(row: dict, where: str) -> Example:
    context = _text(row, "context", where)
    return _example(row, where, context, _text(row, "prompt", where), [_text(row, "response", where)], "")


def _example(row: dict, where: str, context: str, question: str, answers: list[str], title: str) -> Example:
    if "id" not in row:
        raise DataError(f"{where}: missing field 'id'")
    if not isinstance(row["id"], (str, int)) or str(row["id"]) == "":
        raise DataError(f"{where}: field 'id' must be a non-empty string")
    if not answers:
        raise DataError(f"{where}: no gold answers")
    return Example(id=str(row["id"]), context=context, question=question, answers=tuple(answers), title=title)


def _text(row: object, field: str, where: str, default: str | None = None) -> str:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object")
    if field not in row:
        if default is not None:
            return default
        raise DataError(f"{where}: missing field '{field}'")
    value = row[field]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field}' must be a string, got {type(value).__name__}")
    return value


def _items(row: object, field: str, where: str) -> list:
    if not isinstance(row, dict) or field not in row:
        raise DataError(f"{where}: missing field '{field}'")
    if not isinstance(row[field], list):
        raise DataError(f"{where}: field '{field}' must be a list")
    return row[field]


def _check_ids(examples: list[Example], locations: list[str]) -> None:
    first: dict[str, str] = {}
    for example, where in zip(examples, locations):
        if example.id in first:
            raise DataError(f"{where}: duplicate id '{example.id}' (first at {first[example.id]})")
        first[example.id] = where


def _attach_gold(examples: list[Example], locations: list[str], path: Path, gold_path: Path) -> list[Example]:
    """Replace each seed row's single answer with its response followed by all gold answers."""
    gold_examples, gold_is_seed = _load_file(gold_path)
    if gold_is_seed is not None:
        raise DataError(f"{gold_path}: a gold file needs SQuAD rows (question + answers), not seed rows")
    by_id = {g.id: g for g in gold_examples}
    merged = []
    for example, where in zip(examples, locations):
        match = by_id.get(example.id)
        if match is None:
            raise DataError(f"{where}: id '{example.id}' not found in gold file {gold_path}")
        answers = tuple(dict.fromkeys(example.answers + match.answers))
        merged.append(Example(example.id, example.context, example.question, answers, match.title))
    return merged
