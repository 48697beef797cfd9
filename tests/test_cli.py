"""The thin CLI: models listing and side-by-side free-form answers on tiny models (stored)."""
from typer.testing import CliRunner

from archbench import families, loading
from archbench.cli import app
from archbench.store import Store


def test_models_lists_zoo_and_families():
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0
    lines = {line.split()[0]: line.split() for line in result.output.splitlines() if line.strip()}
    for fam in families.all_families():  # every family's tiny models, with their family and layer mix
        for alias in fam.tiny:
            assert lines[alias][1] == fam.name and "untrained" in " ".join(lines[alias])
        assert f"family {fam.name}" in result.output
    assert lines["smollm2-135m"][1:5] == ["transformer", "llama", "30", "attention"]
    assert lines["tiny-gpt2"][3:5] == ["16", "attention"] and lines["tiny-mamba"][3:5] == ["4", "mamba"]


def test_ask_answers_side_by_side_and_stores_them(tmp_path):
    db = tmp_path / "db.sqlite"
    result = CliRunner().invoke(app, ["ask", "--model", "tiny-gpt2", "--model", "tiny-rwkv", "--question",
                                      "Who is Albert Einstein?", "--shots", "3", "--max-new-tokens", "5",
                                      "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "tiny-gpt2 (untrained)" in result.output and "tiny-rwkv (untrained)" in result.output
    with Store(db) as store:
        answers = store.records(None, "answer")
    assert [a["model"] for a in answers] == ["tiny-gpt2", "tiny-rwkv"]
    assert all(a["new_tokens"] == 5 for a in answers)  # untrained: never emits end-of-text
    assert answers[1]["prompt"].endswith("Question: Who is Albert Einstein?\nAnswer:")
    assert "You are a question answering bot" in answers[0]["prompt"]


def test_ask_chat_needs_a_template(tmp_path, monkeypatch):
    args = ["ask", "--model", "tiny-mamba", "--question", "Hi?", "--chat", "--max-new-tokens", "2", "--db",
            str(tmp_path / "db.sqlite")]
    result = CliRunner().invoke(app, args)
    # the borrowed SmolLM2 tokenizer carries a chat template, so this runs and the prompt is templated
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "db.sqlite") as store:
        (answer,) = store.records(None, "answer")
    assert answer["prompt"].startswith("<|im_start|>") and answer["prompt"].endswith("<|im_start|>assistant\n")

    real = loading.load

    def no_template(*a, **kw):  # the same model with a tokenizer that has no chat template
        lm = real(*a, **kw)
        lm.tokenizer.chat_template = None
        return lm

    monkeypatch.setattr(loading, "load", no_template)
    result = CliRunner().invoke(app, args[:-1] + [str(tmp_path / "db2.sqlite")])
    assert result.exit_code == 2, result.output  # refused in one line naming the option and the model
    assert "--chat: model 'tiny-mamba' has no chat template" in result.output
    assert "Traceback" not in result.output
