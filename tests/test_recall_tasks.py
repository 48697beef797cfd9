"""The long-context recall tasks (tasks/squad_recall.py, tasks/phonebook.py) build the prompts they promise.

Offline: SQuAD from $ARCHBENCH_DATA and SmolLM2's tokenizer from the zoo's cache. Checked: prompt lengths hit
each target in the model's own tokens; the gold paragraph is in the prompt once, whole, at the asked depth;
no distractor mentions a gold answer; the same seed gives the same prompts; points beyond the window are
skipped; the phone book asks for a name that occurs once; scoring on known strings; read-twice doubles the
context.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from archbench import metrics, tasks, zoo
from archbench.tasks import Skip, longctx, phonebook, squad_recall

DEV = Path(os.environ.get("ARCHBENCH_DATA", "../shared/data/squad")) / "squad_v1.1_dev.jsonl"
RESERVE = 32
SLACK = 8  # tokens a filled prompt may fall short of its target: less than one more document's label
pytestmark = pytest.mark.skipif(not DEV.is_file(), reason=f"{DEV} not found (set ARCHBENCH_DATA)")


@pytest.fixture(scope="module")
def tok():
    return zoo._tokenizer()


@pytest.fixture(scope="module")
def recall():
    return tasks.make("squad-recall", data=str(DEV), lengths=(512, 1024, 2048), depths=(0.0, 0.5, 1.0), limit=3)


@pytest.fixture(scope="module")
def built(recall, tok):
    return {item.id: (item, recall.build(item, [], tok, 8192, RESERVE)) for item in recall.items()}


def documents(text: str) -> list[str]:
    """The documents of a squad-recall prompt, in order (the first copy when the prompt states them twice)."""
    block = text.split("\n\n", 1)[1].rsplit(f"\n\n{squad_recall.REMINDER}", 1)[0]
    return re.split(r"(?:^|\n\n)Document \d+:\n", block)[1:]


def test_prompt_length_hits_each_target(built, tok):
    lengths = set()
    for item, prompt in built.values():
        target = dict(item.meta)["length"] - RESERVE  # the point's length counts the answer's tokens too
        assert prompt.n_tokens == longctx.count_tokens(tok, prompt.text)
        assert target - SLACK <= prompt.n_tokens <= target, (item.id, prompt.n_tokens, target)
        lengths.add(dict(item.meta)["length"])
    assert lengths == {512, 1024, 2048}


def test_gold_paragraph_once_whole_at_its_depth(built):
    for item, prompt in built.values():
        gold, docs = item.example.context, documents(prompt.text)
        assert prompt.text.count(gold) == 1
        assert docs.count(gold) == 1  # one whole document, not a cut one
        depth = dict(item.meta)["depth"]
        if depth == 0.0:
            assert docs[0] == gold
        elif depth == 1.0:
            assert docs[-1] == gold
        elif len(docs) >= 3:
            assert 0 < docs.index(gold) < len(docs) - 1
        assert len(docs) >= 2


def test_no_distractor_mentions_a_gold_answer(built, recall):
    for item, prompt in built.values():
        golds = item.example.answers
        for doc in documents(prompt.text):
            if doc != item.example.context:
                assert not squad_recall.mentions_gold(doc, golds), (item.id, golds)
                assert not any(g.lower() in doc.lower() for g in golds)
    q = recall.questions()[0]
    pool = recall.distractors(q)
    assert len(pool) > 1000  # the whole dev set minus the paragraphs that mention an answer
    assert not any(metrics.contains(recall._paragraphs[i][1], q.answers) for i in pool)


def test_same_seed_same_prompts_other_seed_other_prompts(built, tok):
    again = tasks.make("squad-recall", data=str(DEV), lengths=(512, 1024, 2048), depths=(0.0, 0.5, 1.0), limit=3)
    assert [i.id for i in again.items()] == list(built)
    for item in again.items()[:9]:
        assert again.build(item, [], tok, 8192, RESERVE).text == built[item.id][1].text
    other = tasks.make("squad-recall", data=str(DEV), lengths=(512,), depths=(0.5,), limit=3, seed=7)
    item, prompt = next(v for v in built.values() if dict(v[0].meta) == {"length": 512, "depth": 0.5})
    assert other.build(item, [], tok, 8192, RESERVE).text != prompt.text  # another seed: another haystack


def test_depths_share_one_haystack(built):
    by_point: dict[tuple, list] = {}
    for item, prompt in built.values():
        key = (item.example.id, dict(item.meta)["length"])
        by_point.setdefault(key, []).append(sorted(d for d in documents(prompt.text) if d != item.example.context))
    for key, hays in by_point.items():
        assert hays[0] == hays[1] == hays[2], key


def test_points_beyond_the_window_are_skipped(recall, tok):
    item = next(i for i in recall.items() if dict(i.meta)["length"] == 2048)
    with pytest.raises(Skip, match="2048-token point exceeds the model's 1024-token window"):
        recall.build(item, [], tok, 1024, RESERVE)
    assert recall.build(item, [], tok, 2048, RESERVE).n_tokens <= 2048 - RESERVE  # exactly at the window: fits
    assert recall.build(item, [], tok, None, RESERVE).n_tokens <= 2048 - RESERVE  # no window (recurrent)
    short = tasks.make("squad-recall", data=str(DEV), lengths=(48,), depths=(0.0,), limit=1)
    with pytest.raises(Skip, match="alone take"):  # the gold paragraph is never cut to fit
        short.build(short.items()[0], [], tok, None, RESERVE)


def test_read_twice_states_the_documents_twice(recall, tok):
    twice = tasks.make("squad-recall", data=str(DEV), lengths=(512, 1024, 2048), depths=(0.0, 0.5, 1.0), limit=3,
                       jrt=True)
    item = twice.items()[4]
    once_text = recall.build(item, [], tok, None, RESERVE).text
    twice_prompt = twice.build(item, [], tok, None, RESERVE)
    block = once_text.split("\n\n", 1)[1].rsplit(f"\n\n{squad_recall.REMINDER}", 1)[0]
    assert twice_prompt.text == once_text.replace(block, block + longctx.JRT_SEPARATOR + block)
    assert twice_prompt.text.count(item.example.context) == 2
    assert twice_prompt.n_tokens > 1.8 * longctx.count_tokens(tok, once_text) - 100
    with pytest.raises(Skip, match="exceeds the model's 1200-token window"):  # ~2k tokens once doubled
        twice.build(item, [], tok, 1200, RESERVE)
    assert twice.identity()["jrt"] is True and recall.identity()["jrt"] is False


def test_scores_and_zero_shot(recall):
    item = recall.items()[0]
    gold = item.example.answers[0]
    assert recall.score(item, gold, gold + "\n") == {"contains": 1.0, "em": 1.0, "f1": 1.0, "empty": 0.0}
    assert recall.score(item, f"It was {gold} in the end", "")["contains"] == 1.0
    wrong = recall.score(item, "zzzz qqqq", "")
    assert wrong["contains"] == wrong["em"] == wrong["f1"] == 0.0
    assert recall.shots(0, 0) == []
    with pytest.raises(ValueError, match="zero-shot"):
        recall.shots(3, 0)


def test_bad_options_fail_in_one_line():
    with pytest.raises(ValueError, match="--depths: 1.5 is outside"):
        tasks.make("squad-recall", data=str(DEV), depths=(0.0, 1.5))
    with pytest.raises(ValueError, match="--lengths: 'abc' is not an integer"):
        tasks.make("squad-recall", data=str(DEV), lengths="512,abc")
    with pytest.raises(ValueError, match="--data: .*no such file"):
        tasks.make("squad-recall", data="/nonexistent/dev.jsonl")
    with pytest.raises(ValueError, match="--entries: 0 is not a positive integer"):
        tasks.make("phonebook", entries=(10, 0))
    with pytest.raises(ValueError, match="--shots-from: not an option of the phonebook task"):
        tasks.make("phonebook", shots_from="x.jsonl")
    with pytest.raises(ValueError, match="--gold: not an option of the squad-recall task"):
        tasks.make("squad-recall", gold=str(DEV))
    assert tasks.make("squad-recall", data=str(DEV), lengths="512, 1024").lengths == (512, 1024)


@pytest.fixture(scope="module")
def book():
    return tasks.make("phonebook", entries=(10, 50, 200), depths=(0.0, 0.5, 1.0), limit=4)


def test_phonebook_asks_for_a_name_present_once(book, tok):
    items = book.items()
    assert len(items) == 3 * 3 * 4 and len({i.id for i in items}) == len(items)
    for item in items:
        meta = dict(item.meta)
        prompt = book.build(item, [], tok, 8192, RESERVE)
        name = item.example.question.removeprefix("What is the phone number of ").removesuffix("?")
        number = item.example.answers[0]
        lines = item.example.context.split("\n")
        assert len(lines) == meta["entries"]
        assert prompt.text.count(name) == 2  # once in the book, once in the question
        assert item.example.context.count(name) == 1 and item.example.context.count(number) == 1
        assert f"{name}: {number}" in lines
        index = lines.index(f"{name}: {number}")
        assert index == meta["position"] == {0.0: 0, 1.0: meta["entries"] - 1}.get(meta["depth"], index)
        assert prompt.n_tokens == longctx.count_tokens(tok, prompt.text)


def test_phonebook_is_seeded(book):
    again = tasks.make("phonebook", entries=(10, 50, 200), depths=(0.0, 0.5, 1.0), limit=4)
    assert [(i.id, i.example) for i in again.items()] == [(i.id, i.example) for i in book.items()]
    other = tasks.make("phonebook", entries=(10, 50, 200), depths=(0.0, 0.5, 1.0), limit=4, seed=99)
    assert other.items()[0].example.context != book.items()[0].example.context


def test_phonebook_scoring_on_known_strings(book):
    item = book.items()[0]
    number = item.example.answers[0]
    assert book.score(item, number, number) == {"em": 1.0, "contains": 1.0, "empty": 0.0}
    assert book.score(item, f" {number}.", "")["em"] == 1.0
    assert book.score(item, f"It is {number}.", "") == {"em": 0.0, "contains": 1.0, "empty": 0.0}
    wrong = number[:-1] + str((int(number[-1]) + 1) % 10)
    assert book.score(item, wrong, "") == {"em": 0.0, "contains": 0.0, "empty": 0.0}
    assert book.score(item, "1" + number + "5", "")["contains"] == 0.0  # inside a longer number
    assert book.score(item, "", "\n")["empty"] == 1.0
    assert phonebook.score_answer("123-456-7890", "123-456-7890")["em"] == 1.0


def test_phonebook_window_and_read_twice(book, tok):
    item = next(i for i in book.items() if dict(i.meta)["entries"] == 200)
    with pytest.raises(Skip, match="exceeds the model's 1024-token window"):
        book.build(item, [], tok, 1024, RESERVE)
    twice = tasks.make("phonebook", entries=(10, 50, 200), depths=(0.0, 0.5, 1.0), limit=4, jrt=True)
    once, again = book.build(item, [], tok, None, RESERVE), twice.build(item, [], tok, None, RESERVE)
    context = item.example.context
    assert again.text == once.text.replace(context, context + longctx.JRT_SEPARATOR + context)
    name = item.example.question.removeprefix("What is the phone number of ").removesuffix("?")
    assert again.text.count(name) == 3
    assert twice.identity()["jrt"] is True and "jrt" in book.identity()
    assert book.shots(0, 1) == []
    with pytest.raises(ValueError, match="zero-shot"):
        book.shots(1, 0)


def test_registry_knows_both_tasks():
    assert {"squad-recall", "phonebook"} <= set(tasks.names())
    assert tasks.make("phonebook", entries="10,20", limit=1).breakdown == ("entries", "depth")
