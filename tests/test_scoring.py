"""Eval scoring and few-shot trial rules end to end, with a stub generator whose answers are known.

The eval recipe (evaluate.py) runs on a real tiny model's tokenizer and window, but `archbench.evaluate.generate`
is replaced by a stub that answers each question with a chosen text: right (exactly, after SQuAD normalisation,
or by the second gold answer) on some rows, wrong, partly right or empty on others. The stored rows must carry
the official SQuAD v1.1 scores of those texts (Rajpurkar et al. 2016) and the summary their means, worked out
by hand below. The stored prompts must follow HELM's few-shot trial rules (Liang et al. 2022): one shot set per
trial shared by all its questions, different sets across trials, never an evaluated question as a shot.
"""
from __future__ import annotations

import re

import pytest

from archbench import evaluate as ev
from archbench.backend import BatchResult, Completion
from archbench.store import Store
from conftest import _write_jsonl, eval_config

ROWS = [{"id": f"q{i}", "context": f"Paris is the capital of France. Item {i} was built in {1800 + i} by Ann Lee.",
         "question": f"When was item {i} built?", "answers": {"text": [str(1800 + i), f"in {1800 + i}"],
                                                            "answer_start": [0, 0]}} for i in range(7)]
# the pool holds every evaluated question under its own id too (as when the pool is the dev file itself)
POOL = [{"id": f"p{i}", "context": f"Rome is in Italy. Tower {i} is {10 * i} metres tall.",
         "question": f"How tall is tower {i}?", "answers": {"text": [f"{10 * i} metres"], "answer_start": [0]}}
        for i in range(30)] + ROWS

# id -> (generated text, em, f1, seed_em, contains), each score worked out by hand from the golds above
ANSWERS = {
    "q0": ("1800", 1, 1, 1, 1),  # the first gold verbatim
    "q1": ("The 1801.", 1, 1, 0, 1),  # equal after normalisation (article, punctuation); not the strict match
    "q2": ("in 1802", 1, 1, 0, 1),  # the second gold answer
    "q3": ("Ann Lee", 0, 0, 0, 0),  # wrong
    "q4": ("1804 or so", 0, 0.5, 0, 1),  # 1 of 3 tokens against "1804": P 1/3, R 1 -> F1 0.5 (0.4 against "in 1804")
    "q5": ("", 0, 0, 0, 0),  # empty
    "q6": ("Paris", 0, 0, 0, 0),  # a word of the context, wrong
}
QUESTION = re.compile(r"Question: (.*)")


def _stub_generate(lm, prompts, gen, engine="archbench"):
    """Answer every prompt by its last question's item number from ANSWERS, in batches of gen.batch_size."""
    size = gen.batch_size or len(prompts)
    for start in range(0, len(prompts), size):
        comps = []
        for i in range(start, min(start + size, len(prompts))):
            item = re.findall(r"When was item (\d+) built\?", QUESTION.findall(prompts[i])[-1])
            text = ANSWERS[f"q{item[0]}"][0] if item else "warm-up"
            comps.append(Completion(index=i, text=text, raw=text, new_tokens=3, prompt_tokens=50))
        yield BatchResult(comps, prefill_s=0.01, decode_s=0.02, prefill_tokens=50 * len(comps),
                          decode_tokens=2 * len(comps), info={"engine": "stub"})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One eval of tiny-gpt2 (stubbed answers): 0 shots and 3 shots x 3 trials; (summary, stored rows)."""
    tmp = tmp_path_factory.mktemp("scoring")
    data, pool = _write_jsonl(tmp / "dev.jsonl", ROWS), _write_jsonl(tmp / "pool.jsonl", POOL)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ev, "generate", _stub_generate)
        summary = ev.evaluate(eval_config(models=["tiny-gpt2"], data=data, shots=[0, 3], shots_from=pool, trials=3,
                                          batch_size=3, max_new_tokens=4, run_dir=str(tmp / "run"),
                                          db=str(tmp / "db.sqlite")))
    with Store(tmp / "db.sqlite") as store:
        rows = store.predictions(summary["run_id"])
    return summary, rows


def test_stored_rows_score_right_answers_one_and_wrong_answers_zero(run):
    _, rows = run
    assert len(rows) == len(ROWS) * 4  # 0-shot + three 3-shot trials
    for r in rows:
        text, em, f1, seed_em, contains = ANSWERS[r["example_id"]]
        assert r["prediction"] == text
        got = {k: r["scores"][k] for k in ("em", "f1", "seed_em", "contains", "empty")}
        want = {"em": em, "f1": f1, "seed_em": seed_em, "contains": contains, "empty": float(text == "")}
        assert got == pytest.approx(want), f"{r['example_id']} answered {text!r}"


def test_summary_means_match_hand_arithmetic(run):
    summary, _ = run
    results = summary["results"]
    assert [(r["shots"], r["trial"]) for r in results] == [(0, 0), (3, 0), (3, 1), (3, 2)]
    for r in results:  # EM: q0-q2 of 7; F1: three 1s and one 0.5; seed: q0; contains: q0, q1, q2, q4
        assert r["n"] == 7
        assert r["em"] == pytest.approx(3 / 7) and r["f1"] == pytest.approx(3.5 / 7)
        assert r["seed_em"] == pytest.approx(1 / 7) and r["contains"] == pytest.approx(4 / 7)
        assert r["empty"] == 1  # a count, not a rate
    (three,) = [a for a in summary["aggregates"] if a["shots"] == 3]
    assert three["trials"] == 3 and three["em_mean"] == pytest.approx(3 / 7) and three["em_std"] == 0
    assert three["f1_values"] == pytest.approx([0.5, 0.5, 0.5])


def _shot_questions(prompt: str) -> tuple[str, ...]:
    """The questions of a prompt's shots (every Question line but the last, which is the item's own)."""
    return tuple(QUESTION.findall(prompt)[:-1])


def test_each_trial_shares_one_shot_set_and_trials_differ(run):
    _, rows = run
    evaluated = {r["question"] for r in ROWS}
    sets = {}
    for r in rows:
        shots = _shot_questions(r["prompt"])
        assert QUESTION.findall(r["prompt"])[-1] in evaluated
        if r["shots"] == 0:
            assert shots == (), f"a 0-shot prompt of {r['example_id']} holds shots: {shots}"
            continue
        assert len(shots) == 3 and r["shots_used"] == 3
        assert not set(shots) & evaluated, f"trial {r['trial']}: an evaluated question was used as a shot: {shots}"
        sets.setdefault(r["trial"], set()).add(shots)
    assert sorted(sets) == [0, 1, 2]
    for trial, found in sets.items():
        assert len(found) == 1, f"trial {trial}: its prompts hold {len(found)} different shot sets"
    drawn = [frozenset(next(iter(sets[t]))) for t in sorted(sets)]
    assert len(set(drawn)) == 3, f"the three trials did not draw three different shot sets: {drawn}"
