"""Tests for archbench.data: every input format, gold-answer lookup, limits and one-line errors."""

import json
import os
import sys
import types
from pathlib import Path

import pytest

from archbench.data import DataError, Example, load_examples, load_pool

SQUAD_ROWS = [
    {"id": "q1", "title": "T", "context": "Paris is in France.", "question": "Where is Paris?",
     "answers": {"text": ["France", "in France"], "answer_start": [12, 9]}},
    {"id": "q2", "title": "T", "context": "Budapest is big.", "question": "What is big?",
     "answers": {"text": ["Budapest"], "answer_start": [0]}},
    {"id": "q3", "title": "U", "context": "It took one day.", "question": "How long?",
     "answers": {"text": ["one day", "one", "one day"], "answer_start": [8, 8, 8]}},
]
SEED_ROWS = [
    {"context": "It took one day.", "prompt": "How long?", "response": "one day", "id": "q3"},
    {"context": "Paris is in France.", "prompt": "Where is Paris?", "response": "France", "id": "q1"},
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_squad_jsonl(tmp_path):
    examples = load_examples(str(write_jsonl(tmp_path / "dev.jsonl", SQUAD_ROWS)))
    assert [e.id for e in examples] == ["q1", "q2", "q3"]
    assert examples[0] == Example("q1", "Paris is in France.", "Where is Paris?", ("France", "in France"), "T")
    assert examples[2].answers == ("one day", "one", "one day")  # file order kept, duplicates kept


def test_official_json(tmp_path):
    doc = {"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": "Paris is in France.", "qas": [
            {"id": "q1", "question": "Where is Paris?",
             "answers": [{"text": "France", "answer_start": 12}, {"text": "in France", "answer_start": 9}]}]},
        {"context": "Budapest is big.", "qas": [
            {"id": "q2", "question": "What is big?", "answers": [{"text": "Budapest", "answer_start": 0}]}]},
    ]}]}
    path = tmp_path / "dev-v1.1.json"
    path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    examples = load_examples(str(path))
    jsonl = load_examples(str(write_jsonl(tmp_path / "same.jsonl", SQUAD_ROWS[:2])))
    assert examples == jsonl


def test_seed_jsonl_without_gold_keeps_response(tmp_path):
    examples = load_examples(str(write_jsonl(tmp_path / "seed.jsonl", SEED_ROWS)))
    assert examples[0] == Example("q3", "It took one day.", "How long?", ("one day",), "")


def test_seed_rows_get_all_gold_answers_from_sibling_dev(tmp_path):
    write_jsonl(tmp_path / "squad_v1.1_dev.jsonl", SQUAD_ROWS)
    examples = load_examples(str(write_jsonl(tmp_path / "seed.jsonl", SEED_ROWS)))
    assert examples[0].answers == ("one day", "one")  # response first, de-duplicated
    assert examples[1].answers == ("France", "in France")
    assert examples[0].title == "U"
    assert examples[0].question == "How long?"


def test_seed_response_kept_first_when_not_first_in_gold(tmp_path):
    gold = write_jsonl(tmp_path / "gold.jsonl", SQUAD_ROWS)
    rows = [{**SEED_ROWS[1], "response": "in France"}]
    examples = load_examples(str(write_jsonl(tmp_path / "seed.jsonl", rows)), gold=str(gold))
    assert examples[0].answers == ("in France", "France")


def test_explicit_gold_missing_id_is_an_error(tmp_path):
    gold = write_jsonl(tmp_path / "gold.jsonl", SQUAD_ROWS[:2])
    seed = write_jsonl(tmp_path / "seed.jsonl", SEED_ROWS)
    with pytest.raises(DataError, match=r"seed\.jsonl:1: id 'q3' not found in gold file"):
        load_examples(str(seed), gold=str(gold))


def test_gold_must_be_squad_format(tmp_path):
    seed = write_jsonl(tmp_path / "seed.jsonl", SEED_ROWS)
    with pytest.raises(DataError, match="gold file needs SQuAD rows"):
        load_examples(str(seed), gold=str(write_jsonl(tmp_path / "other.jsonl", SEED_ROWS)))


def test_limit_keeps_first_rows_in_file_order(tmp_path):
    path = write_jsonl(tmp_path / "dev.jsonl", SQUAD_ROWS)
    assert [e.id for e in load_examples(str(path), limit=2)] == ["q1", "q2"]
    assert len(load_examples(str(path), limit=99)) == 3
    with pytest.raises(ValueError):
        load_examples(str(path), limit=0)


def test_blank_lines_are_skipped_but_line_numbers_kept(tmp_path):
    path = tmp_path / "dev.jsonl"
    path.write_text(json.dumps(SQUAD_ROWS[0]) + "\n\n" + '{"id": "x"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"^dev\.jsonl:3: missing field 'answers\.text'$"):
        load_examples(str(path))


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(SQUAD_ROWS[0]) + "\n" + '{"id": "q2" "context": 1}\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_examples(str(path))
    message = str(info.value)
    assert message == "broken.jsonl:2: malformed JSON (Expecting ',' delimiter)"
    assert "\n" not in message


def test_malformed_official_json_names_line(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text('{"data": [\n  {"title": "T",\n   "paragraphs": [}\n]}', encoding="utf-8")
    with pytest.raises(DataError, match=r"^dev\.json:3: malformed JSON"):
        load_examples(str(path))


def test_official_json_missing_field(tmp_path):
    path = tmp_path / "dev.json"
    doc = {"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": [{"id": "a", "answers": []}]}]}]}
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(DataError, match=r"dev\.json:data\[0\]\.paragraphs\[0\]\.qas\[0\]: missing field 'question'"):
        load_examples(str(path))


@pytest.mark.parametrize("field", ["context", "prompt", "response", "id"])
def test_seed_missing_field(tmp_path, field):
    rows = [SEED_ROWS[0], {k: v for k, v in SEED_ROWS[1].items() if k != field}]
    path = write_jsonl(tmp_path / "squad_val.jsonl", rows)
    with pytest.raises(DataError, match=rf"^squad_val\.jsonl:2: missing field '{field}'$"):
        load_examples(str(path))


@pytest.mark.parametrize("field", ["context", "question", "id"])
def test_squad_missing_field(tmp_path, field):
    rows = [{k: v for k, v in SQUAD_ROWS[0].items() if k != field}]
    with pytest.raises(DataError, match=rf"^x\.jsonl:1: missing field '{field}'$"):
        load_examples(str(write_jsonl(tmp_path / "x.jsonl", rows)))


def test_wrong_types_and_no_answers(tmp_path):
    with pytest.raises(DataError, match=r"x\.jsonl:1: field 'context' must be a string"):
        load_examples(str(write_jsonl(tmp_path / "x.jsonl", [{**SQUAD_ROWS[0], "context": 3}])))
    with pytest.raises(DataError, match=r"x\.jsonl:1: no gold answers"):
        load_examples(str(write_jsonl(tmp_path / "x.jsonl", [{**SQUAD_ROWS[0], "answers": {"text": []}}])))
    with pytest.raises(DataError, match=r"x\.jsonl:1: expected a JSON object"):
        load_examples(str(write_jsonl(tmp_path / "x.jsonl", [[1, 2]])))


def test_duplicate_ids(tmp_path):
    with pytest.raises(DataError, match=r"x\.jsonl:2: duplicate id 'q1' \(first at x\.jsonl:1\)"):
        load_examples(str(write_jsonl(tmp_path / "x.jsonl", [SQUAD_ROWS[0], SQUAD_ROWS[0]])))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        load_examples(str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="empty.jsonl: empty file"):
        load_examples(str(tmp_path / "empty.jsonl"))
    with pytest.raises(DataError, match="gone.jsonl: no such file"):
        load_examples(str(write_jsonl(tmp_path / "s.jsonl", SEED_ROWS)), gold=str(tmp_path / "gone.jsonl"))


def fake_datasets(monkeypatch, load):
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load))


def test_hub_source_is_converted(monkeypatch):
    calls = []

    def load(name, split):
        calls.append((name, split))
        return SQUAD_ROWS

    fake_datasets(monkeypatch, load)
    assert [e.id for e in load_examples("squad", limit=2)] == ["q1", "q2"]
    assert load_pool("squad")[2].answers == ("one day", "one", "one day")
    assert calls == [("rajpurkar/squad", "validation"), ("rajpurkar/squad", "train")]


def test_hub_unreachable_is_one_line_error(monkeypatch):
    def load(name, split):
        raise ConnectionError("Couldn't reach\n'rajpurkar/squad' on the Hub (LocalEntryNotFoundError)")

    fake_datasets(monkeypatch, load)
    with pytest.raises(DataError) as info:
        load_examples("squad")
    assert "\n" not in str(info.value)
    assert "pass a local file" in str(info.value)


def test_load_pool_reads_files(tmp_path):
    assert [e.id for e in load_pool(str(write_jsonl(tmp_path / "train.jsonl", SQUAD_ROWS)))] == ["q1", "q2", "q3"]


DATA = os.environ.get("ARCHBENCH_DATA")
needs_data = pytest.mark.skipif(not DATA, reason="set ARCHBENCH_DATA to the shared squad folder to test real files")


@needs_data
def test_real_seed_eval_gets_dev_golds():
    examples = load_examples(str(Path(DATA) / "seed_eval_100.jsonl"))
    assert len(examples) == 100
    assert examples[0].id == "56d99e78dc89441400fdb61a" and examples[0].answers[0] == "487"
    assert sum(len(e.answers) > 1 for e in examples) > 20
    by_id = {e.id: e for e in examples}
    assert by_id["5725bc7138643c19005acc1f"].answers == ("one day", "one")


@needs_data
def test_real_files_load():
    assert len(load_examples(str(Path(DATA) / "squad_v1.1_dev.jsonl"))) == 10570
    assert len(load_pool(str(Path(DATA) / "squad_v1.1_train_8k.jsonl"))) == 8184
    val = load_examples(str(Path(DATA) / "squad_val_1k.jsonl"), limit=100)
    seed = load_examples(str(Path(DATA) / "seed_eval_100.jsonl"))
    assert val == seed
