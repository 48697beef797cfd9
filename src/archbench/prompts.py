"""Build SQuAD prompts: prompt styles as YAML data, few-shot selection, and fitting to a context window.

Reference: few-shot in-context prompting as in Brown et al. 2020 ("Language Models are Few-Shot
Learners") with shots drawn by seed from a separate pool, never from the evaluated questions, as in
HELM (Liang et al. 2022) few-shot trials. The `seed-*` styles, the `seed` shots and `render_question`
reproduce the seed study's prompts byte for byte (../shared/reference/seed-study.md).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import yaml

from archbench.data import DataError, Example, load_examples, load_pool

_NOT_STYLES = {"seed-shots", "freeform"}
SEED_DATA_FILE = "seed_eval_100.jsonl"


@dataclass(frozen=True)
class PromptStyle:
    name: str
    system: str
    item: str
    answer_prefix: str
    shot_separator: str
    chat: bool


@dataclass(frozen=True)
class FittedPrompt:
    text: str
    shots_used: int
    context_truncated: bool
    n_tokens: int


def _read_yaml(name: str) -> dict:
    return yaml.safe_load((resources.files("archbench") / "prompts" / f"{name}.yaml").read_text(encoding="utf-8"))


def list_styles() -> list[str]:
    """Names of the packaged prompt styles."""
    folder = resources.files("archbench") / "prompts"
    names = (entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml"))
    return sorted(name for name in names if name not in _NOT_STYLES)


def load_style(name: str) -> PromptStyle:
    """Load a packaged style by name; an unknown name raises ValueError listing the valid ones."""
    styles = list_styles()
    if name not in styles:
        raise ValueError(f"unknown prompt style '{name}'; choose one of: {', '.join(styles)}")
    data = _read_yaml(name)
    return PromptStyle(
        name=name,
        system=data["system"],
        item=data["item"],
        answer_prefix=data["answer_prefix"],
        shot_separator=data["shot_separator"],
        chat=bool(data["chat"]),
    )


def render(style: PromptStyle, example: Example, shots: Sequence[Example], tokenizer=None) -> str:
    """The full prompt for `example` after `shots`; chat styles need the model's tokenizer."""
    if style.chat:
        return _render_chat(style, example, shots, tokenizer)
    parts = [_item(style, s) + style.answer_prefix + " " + s.answers[0] for s in shots]
    parts.append(_item(style, example) + style.answer_prefix)
    head = style.system + "\n\n" if style.system else ""
    return head + style.shot_separator.join(parts)


def _item(style: PromptStyle, example: Example) -> str:
    return style.item.format(context=example.context, question=example.question)


def _render_chat(style: PromptStyle, example: Example, shots: Sequence[Example], tokenizer) -> str:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"prompt style '{style.name}' needs a tokenizer with a chat template")
    messages = [{"role": "system", "content": style.system}] if style.system else []
    for shot in shots:
        messages.append({"role": "user", "content": _item(style, shot)})
        messages.append({"role": "assistant", "content": shot.answers[0]})
    messages.append({"role": "user", "content": _item(style, example)})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def draw_shots(pool: Sequence[Example], k: int, seed: int, exclude_ids: set[str]) -> list[Example]:
    """`k` examples drawn from `pool` by `seed`, never one whose id is in `exclude_ids`."""
    candidates = [e for e in pool if e.id not in exclude_ids]
    if k > len(candidates):
        raise ValueError(f"few-shot pool too small: {k} shots wanted, {len(candidates)} usable examples")
    return random.Random(seed).sample(candidates, k)


def resolve_shots(
    shots_from: str | None, k: int, *, seed: int, evaluated: Sequence[Example], data_source: str | None
) -> list[Example]:
    """The shots for a run: drawn from a pool file, or the seed study's fixed three ("seed")."""
    if k < 0:
        raise ValueError(f"number of shots must be >= 0, got {k}")
    if k == 0:
        return []
    if shots_from is None:
        raise ValueError(
            f"{k}-shot prompts need --shots-from: a pool file disjoint from the evaluated questions "
            "(e.g. squad_v1.1_train_8k.jsonl), or 'seed' to reproduce the seed study's shots"
        )
    if shots_from == "seed":
        return _seed_shots(k, data_source)
    return draw_shots(load_pool(shots_from), k, seed, {e.id for e in evaluated})


def _seed_shots(k: int, data_source: str | None) -> list[Example]:
    """The seed study's fixed shots (the last `k` of its three), contexts looked up by id."""
    specs = _read_yaml("seed-shots")["shots"]
    if k > len(specs):
        raise ValueError(f"--shots-from seed has only {len(specs)} shots, {k} wanted")
    if data_source is None or data_source == "squad":
        raise ValueError(f"--shots-from seed needs a local data file holding the seed rows, e.g. {SEED_DATA_FILE}")
    wanted = {spec["id"] for spec in specs}
    for candidate in (Path(data_source), Path(data_source).parent / SEED_DATA_FILE):
        if not candidate.is_file():
            continue
        rows = {e.id: e for e in load_examples(str(candidate)) if e.id in wanted}
        if len(rows) == len(wanted):
            return [_seed_shot(rows[spec["id"]], spec, candidate) for spec in specs[len(specs) - k :]]
    raise DataError(f"{data_source}: the seed shots' ids are neither in it nor in a {SEED_DATA_FILE} next to it")


def _seed_shot(row: Example, spec: dict, source: Path) -> Example:
    if row.question != spec["question"]:
        raise DataError(f"{source}: row '{row.id}' is not the seed shot question '{spec['question']}'")
    return replace(row, answers=(spec["answer"],))


def _count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_prompt(
    style: PromptStyle,
    example: Example,
    shots: Sequence[Example],
    tokenizer,
    max_tokens: int | None,
    reserve: int,
) -> FittedPrompt:
    """Render a prompt whose tokens plus `reserve` new tokens fit in `max_tokens`.

    Drops the earliest shots first, then truncates the example's context (keeping its beginning);
    raises ValueError when even no shots and an empty context do not fit. None = no limit.
    """
    shots = list(shots)
    for used in range(len(shots), -1, -1):
        text = render(style, example, shots[len(shots) - used :], tokenizer)
        n_tokens = _count(tokenizer, text)
        if max_tokens is None or n_tokens + reserve <= max_tokens:
            return FittedPrompt(text, used, False, n_tokens)
    ids = tokenizer(example.context, add_special_tokens=False)["input_ids"]
    best = None
    low, high = 0, len(ids) - 1  # largest kept-token count that fits, by bisection
    while low <= high:
        keep = (low + high) // 2
        short = replace(example, context=tokenizer.decode(ids[:keep]) if keep else "")
        text = render(style, short, [], tokenizer)
        n_tokens = _count(tokenizer, text)
        if n_tokens + reserve <= max_tokens:
            best, low = FittedPrompt(text, 0, True, n_tokens), keep + 1
        else:
            high = keep - 1
    if best is None:
        raise ValueError(
            f"example {example.id}: prompt does not fit the {max_tokens}-token window with {reserve} tokens "
            "reserved for the answer, even with no shots and an empty context"
        )
    return best


def render_question(question: str, shots: int, style_name: str) -> str:
    """The seed study's free-form prompt: "Q: …\\nA:" alone (0 shots) or after its three shots."""
    data = _read_yaml("freeform")
    labels = data["labels"].get(style_name, data["labels"]["default"])
    q, a = labels["question"], labels["answer"]
    if shots == 0:
        return f"{q} {question}\n{a}"
    if shots != len(data["shots"]):
        raise ValueError(f"free-form questions take 0 or {len(data['shots'])} shots, got {shots}")
    turns = [f"{q} {s['question']}\n{a} {s['answer']}" for s in data["shots"]]
    return data["system"] + "\n\n" + "\n\n".join([*turns, f"{q} {question}\n{a}"])
