"""A run is what it evaluated (issue 16): resume by content, never mix. Edited rows and appended rows are refused
with a message that names the change; the same file through a symlink or a relative path resumes; an unchanged
rerun resumes without generating; changed model weights or adapter are refused; --new-run starts afresh."""
import json
import os
import shutil

import pytest

from archbench import evaluate as ev
from archbench import zoo
from conftest import eval_config

ROWS = [{"id": f"q{i}", "context": f"Item {i} was built in {1800 + i} by Ann Lee.", "question": f"When was {i} built?",
         "answers": {"text": [str(1800 + i)], "answer_start": [0]}} for i in range(4)]


def _run(tmp_path, data, **kw):
    args = dict(models=["tiny-gpt2"], data=str(data), max_new_tokens=2, run_dir=str(tmp_path / "run"),
                db=str(tmp_path / "db.sqlite"))
    return ev.evaluate(eval_config(**{**args, **kw}))


@pytest.fixture()
def data(tmp_path, write_jsonl):
    return tmp_path / "d.jsonl", write_jsonl(tmp_path / "d.jsonl", ROWS)


def _count_generations(monkeypatch) -> list:
    real, seen = ev.generate, []
    monkeypatch.setattr(ev, "generate", lambda lm, prompts, *a: (seen.append(len(prompts)),
                                                                   (yield from real(lm, prompts, *a)))[1])
    return seen


def test_edited_and_appended_rows_are_refused_naming_the_change(tmp_path, data, write_jsonl):
    path, _ = data
    _run(tmp_path, path)
    edited = [{**r, "context": r["context"] + " Edited."} if i < 2 else r for i, r in enumerate(ROWS)]
    write_jsonl(path, edited + [{**ROWS[0], "id": "new1"}])
    with pytest.raises(ValueError, match=r"data: 2 rows differ, 1 added.*--new-run"):
        _run(tmp_path, path)
    write_jsonl(path, ROWS + [{**ROWS[0], "id": "new1"}, {**ROWS[1], "id": "new2"}])
    with pytest.raises(ValueError, match=r"data: 2 added"):
        _run(tmp_path, path)
    golds = [{**r, "answers": {"text": ["other"], "answer_start": [0]}} if i == 3 else r for i, r in enumerate(ROWS)]
    write_jsonl(path, golds)
    with pytest.raises(ValueError, match="gold answers"):
        _run(tmp_path, path)
    summary = _run(tmp_path, path, new_run=True)  # the way forward the message names
    assert summary["results"][0]["n"] == len(ROWS)


def test_same_content_through_another_path_resumes_without_generating(tmp_path, data, monkeypatch):
    path, _ = data
    first = _run(tmp_path, path)
    link = tmp_path / "elsewhere" / "link.jsonl"
    link.parent.mkdir()
    os.symlink(path, link)
    seen = _count_generations(monkeypatch)
    again = _run(tmp_path, link)
    monkeypatch.chdir(tmp_path)
    third = _run(tmp_path, os.path.relpath(path, tmp_path))
    assert seen == [] and again["run_id"] == third["run_id"] == first["run_id"]
    assert [r["n"] for r in third["results"]] == [len(ROWS)]


def test_changed_style_or_generation_settings_are_named(tmp_path, data):
    path, _ = data
    _run(tmp_path, path)
    with pytest.raises(ValueError, match=r"prompt_style \('default' -> 'seed-mamba'\)"):
        _run(tmp_path, path, prompt_style="seed-mamba")
    with pytest.raises(ValueError, match=r"max_new_tokens \(2 -> 3\)"):
        _run(tmp_path, path, max_new_tokens=3)


def test_changed_model_weights_are_refused(tmp_path, data, monkeypatch):
    path, _ = data
    copy = tmp_path / "model"
    shutil.copytree(zoo.ensure("tiny-gpt2"), copy)
    _run(tmp_path, path, models=[str(copy)])
    weights = next(copy.glob("*.safetensors"))
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"its weights changed"):
        _run(tmp_path, path, models=[str(copy)])


def test_run_json_and_store_keep_the_digests(tmp_path, data):
    path, _ = data
    summary = _run(tmp_path, path)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert set(record["identity"]["rows"]) == {r["id"] for r in ROWS}
    assert record["models"]["tiny-gpt2"]["weights"] and summary["config"]["identity"]["items"] == \
        record["identity"]["items"]
    assert "rows" not in summary["config"]["identity"]  # per-item digests stay in run.json


def test_changed_adapter_is_refused(tmp_path, data):
    path, _ = data
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(zoo.ensure("tiny-gpt2")))
    adapter = tmp_path / "adapter"
    peft = get_peft_model(base, LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights=False))
    peft.save_pretrained(str(adapter))
    _run(tmp_path, path, adapter=str(adapter))
    for p in peft.parameters():  # another adapter saved over the same directory
        if p.requires_grad:
            p.data += 0.5
    peft.save_pretrained(str(adapter))
    with pytest.raises(ValueError, match=r"its adapter changed"):
        _run(tmp_path, path, adapter=str(adapter))
