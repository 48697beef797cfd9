"""Tests for archbench.prompts: exact seed prompt strings, chat rendering, shot selection, window fitting."""

import json
import os
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from archbench.data import DataError, Example
from archbench.prompts import (
    FittedPrompt,
    draw_shots,
    fit_prompt,
    list_styles,
    load_style,
    render,
    render_question,
    resolve_shots,
)

SYSTEM = (
    "You are a question answering bot. Your task is to answer the questions based on the appropriate contexts "
    "and your own knowledge. Your answers should contain only the most important things and should be as short "
    "as possible."
)
EXAMPLE = Example("e1", "Paris is the capital of France.", "What is the capital of France?", ("Paris",))
SHOTS = [
    Example("s1", "The Ruhr joins the Rhine at Duisburg.", "What river joins the Rhine?", ("Ruhr", "the Ruhr")),
    Example("s2", "It took one day.", "How long did it take?", ("one day",)),
]
SEED_IDS = ["57275cb3f1498d1400e8f6db", "5725bc7138643c19005acc1f", "56de4a474396321400ee2786"]
SEED_QUESTIONS = [
    "What French animation studio did ABC purchase in 1993?",
    "How many days after Gagarin's flight did the US House Committee on Science and Astronautics meet?",
    "Where are Jersey and Guernsey",
]


class WordTokenizer:
    """Whitespace tokenizer stub: one id per word; decode joins words with spaces."""

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]}

    def decode(self, ids):
        words = {i: w for w, i in self.vocab.items()}
        return " ".join(words[i] for i in ids)


def test_list_styles():
    assert list_styles() == ["chat", "default", "seed-mamba", "seed-rwkv", "seed-transformer"]


def test_unknown_style_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown prompt style 'gpt'.*default, seed-mamba"):
        load_style("gpt")


def test_default_style():
    assert render(load_style("default"), EXAMPLE, SHOTS[1:]) == (
        "Context: It took one day.\nQuestion: How long did it take?\nAnswer: one day\n\n"
        "Context: Paris is the capital of France.\nQuestion: What is the capital of France?\nAnswer:"
    )
    assert render(load_style("default"), EXAMPLE, []) == (
        "Context: Paris is the capital of France.\nQuestion: What is the capital of France?\nAnswer:"
    )


def test_seed_mamba_exact():
    assert render(load_style("seed-mamba"), EXAMPLE, SHOTS) == (
        SYSTEM + "\n\n"
        "The Ruhr joins the Rhine at Duisburg.\n\nQ: What river joins the Rhine?\n\nA: Ruhr\n\n"
        "It took one day.\n\nQ: How long did it take?\n\nA: one day\n\n"
        "Paris is the capital of France.\n\nQ: What is the capital of France?\n\nA:"
    )
    assert render(load_style("seed-mamba"), EXAMPLE, []) == (
        SYSTEM + "\n\nParis is the capital of France.\n\nQ: What is the capital of France?\n\nA:"
    )


def test_seed_transformer_exact():
    assert render(load_style("seed-transformer"), EXAMPLE, SHOTS[1:]) == (
        SYSTEM + "\n\n"
        "Question: How long did it take?\n\nContext: It took one day.\n\n"
        "Question: How long did it take?\n\nA: one day\n\n"
        "Question: What is the capital of France?\n\nContext: Paris is the capital of France.\n\n"
        "Question: What is the capital of France?\n\nA:"
    )


def test_seed_rwkv_exact():
    assert render(load_style("seed-rwkv"), EXAMPLE, SHOTS[1:]) == (
        SYSTEM + "\n\n"
        "Question: How long did it take?\n\nContext: It took one day.\n\nQuestion: How long did it take?\n\n"
        "Answer: one day\n\n"
        "Question: What is the capital of France?\n\nContext: Paris is the capital of France.\n\n"
        "Question: What is the capital of France?\n\nAnswer:"
    )


def test_braces_in_context_are_kept():
    odd = Example("x", "f(x) = {x}", "What is {y}?", ("z",))
    assert render(load_style("default"), odd, []) == "Context: f(x) = {x}\nQuestion: What is {y}?\nAnswer:"


def chat_tokenizer():
    model = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=model, unk_token="[UNK]")
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    return tokenizer


def test_chat_style_uses_template_with_shots_as_turns():
    text = render(load_style("chat"), EXAMPLE, SHOTS[1:], chat_tokenizer())
    instruction = "Answer the question with a short phrase from the context.\n\n"
    assert text == (
        "<|user|>\n" + instruction + "Context: It took one day.\nQuestion: How long did it take?</s>\n"
        "<|assistant|>\none day</s>\n"
        "<|user|>\n" + instruction + "Context: Paris is the capital of France.\n"
        "Question: What is the capital of France?</s>\n<|assistant|>\n"
    )


def test_chat_style_needs_a_tokenizer():
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        render(load_style("chat"), EXAMPLE, [])


POOL = [Example(f"p{i}", f"context {i}", f"question {i}", (f"answer {i}",)) for i in range(10)]


def test_draw_shots_excludes_ids_and_is_deterministic():
    exclude = {f"p{i}" for i in range(7)}
    first = draw_shots(POOL, 3, seed=1, exclude_ids=exclude)
    assert sorted(e.id for e in first) == ["p7", "p8", "p9"]
    assert draw_shots(POOL, 2, seed=5, exclude_ids=set()) == draw_shots(POOL, 2, seed=5, exclude_ids=set())
    seen = {tuple(e.id for e in draw_shots(POOL, 2, seed=s, exclude_ids=set())) for s in range(20)}
    assert len(seen) > 1  # the seed matters
    with pytest.raises(ValueError, match="pool too small"):
        draw_shots(POOL, 4, seed=1, exclude_ids=exclude)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_resolve_shots_from_pool_never_uses_evaluated(tmp_path):
    rows = [{"id": e.id, "context": e.context, "question": e.question, "answers": {"text": list(e.answers)}}
            for e in POOL]
    pool = write_jsonl(tmp_path / "train.jsonl", rows)
    evaluated = POOL[:8]
    shots = resolve_shots(str(pool), 2, seed=0, evaluated=evaluated, data_source=None)
    assert sorted(e.id for e in shots) == ["p8", "p9"]
    with pytest.raises(ValueError, match="pool too small"):
        resolve_shots(str(pool), 3, seed=0, evaluated=evaluated, data_source=None)


def test_resolve_shots_needs_a_source():
    assert resolve_shots(None, 0, seed=0, evaluated=[EXAMPLE], data_source=None) == []
    with pytest.raises(ValueError, match="--shots-from"):
        resolve_shots(None, 3, seed=0, evaluated=[EXAMPLE], data_source=None)


def seed_rows():
    rows = [{"context": "Ctx A.", "prompt": "Other?", "response": "x", "id": "other"}]
    for i, (id_, question) in enumerate(zip(SEED_IDS, SEED_QUESTIONS)):
        rows.append({"context": f"Seed context {i}.", "prompt": question, "response": "gold", "id": id_})
    return rows


def test_resolve_seed_shots_from_data_file_or_sibling(tmp_path):
    seed_file = write_jsonl(tmp_path / "mine.jsonl", seed_rows())
    shots = resolve_shots("seed", 3, seed=0, evaluated=[], data_source=str(seed_file))
    assert [s.id for s in shots] == SEED_IDS
    assert [s.answers for s in shots] == [("DIC Entertainment",), ("one day",), ("Channel Islands",)]
    assert shots[2].context == "Seed context 2."
    # the last two when fewer are asked (the seed's GPT-2 dropped the first, ABC, shot)
    assert [s.id for s in resolve_shots("seed", 2, seed=0, evaluated=[], data_source=str(seed_file))] == SEED_IDS[1:]
    write_jsonl(tmp_path / "seed_eval_100.jsonl", seed_rows())
    other = write_jsonl(tmp_path / "val.jsonl", seed_rows()[:1])
    assert [s.id for s in resolve_shots("seed", 3, seed=0, evaluated=[], data_source=str(other))] == SEED_IDS


def test_resolve_seed_shots_errors(tmp_path):
    with pytest.raises(ValueError, match="needs a local data file"):
        resolve_shots("seed", 3, seed=0, evaluated=[], data_source=None)
    with pytest.raises(ValueError, match="only 3 shots"):
        resolve_shots("seed", 4, seed=0, evaluated=[], data_source="x.jsonl")
    lonely = write_jsonl(tmp_path / "lonely.jsonl", seed_rows()[:2])
    with pytest.raises(DataError, match="seed shots' ids"):
        resolve_shots("seed", 3, seed=0, evaluated=[], data_source=str(lonely))
    wrong = seed_rows()
    wrong[1]["prompt"] = "A different question?"
    with pytest.raises(DataError, match="is not the seed shot question"):
        resolve_shots("seed", 3, seed=0, evaluated=[], data_source=str(write_jsonl(tmp_path / "w.jsonl", wrong)))


DATA = os.environ.get("ARCHBENCH_DATA")


@pytest.mark.skipif(not DATA, reason="set ARCHBENCH_DATA to the shared squad folder to test real files")
def test_real_seed_shots_are_rows_90_94_97():
    from archbench.data import load_examples

    evaluated = load_examples(str(Path(DATA) / "seed_eval_100.jsonl"))
    shots = resolve_shots("seed", 3, seed=0, evaluated=evaluated, data_source=str(Path(DATA) / "squad_val_1k.jsonl"))
    # seed-study.md lists them ABC, Gagarin, Jersey/Guernsey: rows 90, 97, 94 (1-based) in file order
    rows = [evaluated[89], evaluated[96], evaluated[93]]
    assert [s.id for s in shots] == [r.id for r in rows]
    assert [s.question for s in shots] == SEED_QUESTIONS
    assert [s.context for s in shots] == [r.context for r in rows]


def test_fit_prompt_no_limit_and_fitting():
    tok = WordTokenizer()
    style = load_style("default")
    full = render(style, EXAMPLE, SHOTS)
    fitted = fit_prompt(style, EXAMPLE, SHOTS, tok, None, 128)
    assert fitted == FittedPrompt(full, 2, False, len(full.split()))
    assert fit_prompt(style, EXAMPLE, SHOTS, tok, len(full.split()) + 5, 5).shots_used == 2


def test_fit_prompt_drops_earliest_shots_first():
    tok = WordTokenizer()
    style = load_style("default")
    one_shot = render(style, EXAMPLE, SHOTS[1:])
    fitted = fit_prompt(style, EXAMPLE, SHOTS, tok, len(one_shot.split()) + 4, 4)
    assert fitted == FittedPrompt(one_shot, 1, False, len(one_shot.split()))
    zero = render(style, EXAMPLE, [])
    fitted = fit_prompt(style, EXAMPLE, SHOTS, tok, len(zero.split()) + 4, 4)
    assert (fitted.text, fitted.shots_used, fitted.context_truncated) == (zero, 0, False)


def test_fit_prompt_truncates_context_after_dropping_shots():
    tok = WordTokenizer()
    style = load_style("default")
    # zero-shot prompt is 13 words: "Context:" + 6 context words + 6 for question/Answer:
    budget = len(render(style, EXAMPLE, []).split()) - 2
    fitted = fit_prompt(style, EXAMPLE, SHOTS, tok, budget + 3, 3)
    assert fitted.shots_used == 0 and fitted.context_truncated
    assert fitted.text == "Context: Paris is the capital\nQuestion: What is the capital of France?\nAnswer:"
    assert fitted.n_tokens == budget


def test_fit_prompt_raises_when_nothing_fits():
    tok = WordTokenizer()
    style = load_style("default")
    empty_context = len(render(style, Example("e1", "", EXAMPLE.question, ("Paris",)), []).split())
    assert fit_prompt(style, EXAMPLE, [], tok, empty_context + 2, 2).text.startswith("Context: \nQuestion")
    with pytest.raises(ValueError, match=r"^example e1: prompt does not fit the 9-token window"):
        fit_prompt(style, EXAMPLE, SHOTS, tok, 9, 2)


def test_render_question_zero_shot():
    assert render_question("Who is Albert Einstein?", 0, "seed-mamba") == "Q: Who is Albert Einstein?\nA:"
    assert render_question("Who is Albert Einstein?", 0, "seed-rwkv") == "Question: Who is Albert Einstein?\nAnswer:"


def test_render_question_three_shot():
    text = render_question("Who is Albert Einstein?", 3, "seed-transformer")
    head = (
        "You are a question answering bot. Please answer the questions to the best of your knowledge.\n\n"
        "Q: What is the capital of Hungary?\nA: Budapest\n\n"
        "Q: Which is the most populous country in the world?\nA: India\n\n"
        "Q: Who was Isaac Newton?\nA: Isaac Newton"
    )
    assert text.startswith(head)
    assert text.endswith("\n\nQ: Who is Albert Einstein?\nA:")
    rwkv = render_question("Who is Albert Einstein?", 3, "seed-rwkv")
    assert "Question: What is the capital of Hungary?\nAnswer: Budapest\n\n" in rwkv and "\nA:" not in rwkv
    with pytest.raises(ValueError, match="0 or 3 shots"):
        render_question("x", 2, "default")
