"""The eval recipe end to end on tiny real models: outputs, resume after interruption, bad input."""
import json

import pytest
from typer.testing import CliRunner

from archbench import evaluate as ev
from archbench.cli import app
from conftest import eval_config

ROWS = [{"id": f"q{i}", "context": f"Paris is the capital of France. Item {i} was built in {1800 + i} by Ann Lee.",
         "question": f"When was item {i} built?", "answers": {"text": [str(1800 + i), f"in {1800 + i}"],
                                                            "answer_start": [0, 0]}} for i in range(7)]
POOL = [{"id": f"p{i}", "context": f"Rome is in Italy. Tower {i} is {10 * i} metres tall.",
         "question": f"How tall is tower {i}?", "answers": {"text": [f"{10 * i} metres"], "answer_start": [0]}}
        for i in range(6)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture()
def files(tmp_path):
    return write_jsonl(tmp_path / "dev.jsonl", ROWS), write_jsonl(tmp_path / "pool.jsonl", POOL)


def run(tmp_path, data, pool, **kw):
    args = dict(models=["tiny-gpt2"], data=data, shots=[0, 3], shots_from=pool, batch_size=3, max_new_tokens=4,
                run_dir=str(tmp_path / "run"), db=str(tmp_path / "db.sqlite"))
    return ev.evaluate(eval_config(**{**args, **kw}))


def test_eval_writes_summary_predictions_and_timings(tmp_path, files):
    summary = run(tmp_path, *files, trials=2)
    results = summary["results"]
    assert [(r["shots"], r["trial"]) for r in results] == [(0, 0), (3, 0), (3, 1)]
    for r in results:
        assert r["n"] == len(ROWS)
        for key in ("prefill_s", "decode_s", "prefill_tok_s", "decode_tok_s", "gen_tok_s", "ttft_ms", "chars_s",
                    "peak_mem_mb", "wall_s"):
            assert r[key] > 0, key
        assert r["prompt_tokens"] > 0 and r["generated_tokens"] >= r["n"]
        assert 0 <= r["em"] <= r["f1"] <= 1
    three = [r for r in results if r["shots"] == 3]
    assert all(r["shots_used_mean"] == 3 for r in three)
    agg = {(a["model"], a["shots"]): a for a in summary["aggregates"]}
    assert agg[("tiny-gpt2", 3)]["trials"] == 2
    lines = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 3 * len(ROWS)
    assert {tuple(x["golds"]) for x in lines if x["id"] == "q0"} == {("1800", "in 1800")}
    # the prompts of one trial share their shots, and two trials drew different shot sets
    stored = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert stored["results"] == json.loads(json.dumps(results))


def test_resume_after_interruption_recomputes_nothing(tmp_path, files, monkeypatch):
    real = ev.generate
    seen = []

    def interrupted(lm, prompts, settings, engine):
        seen.append(len(prompts))
        for i, batch in enumerate(real(lm, prompts, settings, engine)):
            if i == 1 and len(seen) == 2:  # 0-shot, then die in the second batch of 3-shot (the engine's
                # warm-up runs its own few tokens, not through `generate`)
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(ev, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, *files)
    monkeypatch.setattr(ev, "generate", lambda *a: (seen.append(len(a[1])), (yield from real(*a)))[1])
    summary = run(tmp_path, *files)
    assert seen[2:] == [len(ROWS) - 3]  # rerun: only the 3-shot rows not yet stored
    assert [r["n"] for r in summary["results"]] == [len(ROWS), len(ROWS)]
    lines = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    keys = [(x["id"], x["shots"]) for x in lines]
    assert len(keys) == len(set(keys)) == 2 * len(ROWS)


def test_hf_engine_gives_the_same_answers_and_splits_its_time(tmp_path, files):
    ours = run(tmp_path / "a", *files, shots=[0], max_new_tokens=6)
    ref = run(tmp_path / "b", *files, shots=[0], max_new_tokens=6, engine="hf")
    preds = {p: {r["id"]: r["prediction"] for r in map(json.loads, (tmp_path / p / "run" / "predictions.jsonl")
                                                      .read_text().splitlines())} for p in ("a", "b")}
    assert preds["a"] == preds["b"]
    (r,) = ref["results"]
    assert r["engine"] == "hf" and r["prefill_s"] > 0 and r["decode_s"] > 0 and r["ttft_ms"] > 0
    assert ours["results"][0]["engine"] == "archbench"


def test_rerun_with_other_protocol_is_refused(tmp_path, files):
    run(tmp_path, *files, shots=[0])
    with pytest.raises(ValueError, match="prompt_style"):
        run(tmp_path, *files, shots=[0], prompt_style="seed-mamba")


def test_three_families_together(data_dir, tmp_path, run_eval):
    summary = run_eval(models=["tiny-mamba", "tiny-rwkv", "tiny-gpt2"], data=str(data_dir / "seed_eval_100.jsonl"),
                       shots=[0, 3], shots_from=str(data_dir / "squad_v1.1_train_8k.jsonl"), limit=4,
                       max_new_tokens=4, run_dir=str(tmp_path / "r"), db=str(tmp_path / "db.sqlite"))
    assert {(r["family"], r["shots"]) for r in summary["results"]} == {
        (f, k) for f in ("mamba", "rwkv", "transformer") for k in (0, 3)}
    assert all(r["n"] == 4 for r in summary["results"])
    assert [r["model"] for r in summary["results"] if r["shots"] == 0] == ["tiny-mamba", "tiny-rwkv", "tiny-gpt2"]


def cli(*args):
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize("content, words", [
    ('{"id": "a", "context": "c", "question": "q", "answers": {"text": ["x"]}}\n{"id": "b", "context": \n',
     "bad.jsonl:2"),
    ('{"id": "a", "question": "q", "answers": {"text": ["x"]}}\n', "context"),
])
def test_cli_bad_data_is_one_line(tmp_path, content, words):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    code, out = cli("eval", "--model", "tiny-gpt2", "--data", str(bad), "--run-dir", str(tmp_path / "r"),
                    "--db", str(tmp_path / "db.sqlite"))
    assert code == 2 and words in out
    assert len([line for line in out.splitlines() if line.strip()]) == 1


def test_cli_unknown_model_names_the_zoo(tmp_path, files):
    code, out = cli("eval", "--model", "no-such/model", "--data", files[0], "--run-dir", str(tmp_path / "r"),
                    "--db", str(tmp_path / "db.sqlite"))
    assert code == 2 and "tiny-gpt2" in out and "offline" in out


def test_cli_few_shot_without_pool_is_refused(tmp_path, files):
    code, out = cli("eval", "--model", "tiny-gpt2", "--data", files[0], "--shots", "3",
                    "--run-dir", str(tmp_path / "r"), "--db", str(tmp_path / "db.sqlite"))
    assert code == 2 and "--shots-from" in out


def test_cli_batch_size_auto(tmp_path, files):
    args = ["eval", "--model", "tiny-gpt2", "--data", files[0], "--max-new-tokens", "2", "--batch-size", "auto",
            "--db", str(tmp_path / "db.sqlite")]
    code, out = cli(*args, "--run-dir", str(tmp_path / "a"))
    assert code == 0, out
    batches = json.loads((tmp_path / "a" / "summary.json").read_text())["results"][0]["batches"]
    assert batches == 1  # seven short prompts fit one batch
    code, out = cli(*args, "--run-dir", str(tmp_path / "b"), "--engine", "hf")
    assert code == 2 and "--batch-size auto needs --engine archbench" in out


def test_prompt_longer_than_window_keeps_earlier_results(tmp_path, files):
    long = [{**ROWS[0], "id": "long", "context": "word " * 6000}]  # tiny-gpt2's window is 4,096 tokens
    data = write_jsonl(tmp_path / "long.jsonl", ROWS[1:3] + long)
    summary = run(tmp_path, data, files[1], shots=[0, 3])
    rows = {r["shots"]: r for r in summary["results"]}
    assert rows[0]["n"] == rows[3]["n"] == 3
    preds = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    longest = [p for p in preds if p["id"] == "long"]
    assert all(p["prompt_tokens"] <= 4096 - 4 for p in longest)
    assert [p["shots_used"] for p in longest if p["shots"] == 3] == [0]
