"""Study files: every shipped study validates, bad files fail with file/key/reason, the dry run lists the
plan offline and writes nothing, and a tiny study runs, stores, reports and then skips what is done."""
import dataclasses
import json
from importlib import resources
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from archbench import study
from archbench.bench_config import BenchConfig
from archbench.cli import app
from archbench.demo import run_demo
from archbench.store import Store

SHIPPED = sorted(p.name for p in (resources.files("archbench") / "studies").iterdir() if p.name.endswith(".yaml"))
ROWS = [{"id": f"q{i}", "context": f"Item {i} was built in {1800 + i} by Ann Lee.",
         "question": f"When was item {i} built?",
         "answers": {"text": [str(1800 + i)], "answer_start": [0]}} for i in range(3)]
POOL = [{"id": f"p{i}", "context": f"Tower {i} is {10 * i} metres tall.", "question": f"How tall is tower {i}?",
         "answers": {"text": [f"{10 * i} metres"], "answer_start": [0]}} for i in range(4)]


@pytest.fixture()
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("ARCHBENCH_DATA", str(tmp_path / "squad"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SQUAD_TRAIN", raising=False)
    return tmp_path


def write(path, text):
    path.write_text(text)
    return str(path)


def tiny_study(tmp_path, extra="", evals=""):
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in POOL))
    return write(tmp_path / "tiny.yaml", f"""
name: tiny
out: {tmp_path / "out"}
data: {{eval: {data}, shots_from: {tmp_path / "pool.jsonl"}}}
models:
  - {{model: tiny-gpt2, label: Tiny GPT-2, family: transformer}}
  - {{model: tiny-mamba, family: mamba}}
ask:
  - {{question: "Who is Albert Einstein?", max_new_tokens: 3}}
evals:
  - {{name: squad, shots: [0, 1], limit: 2, max_new_tokens: 3, batch_size: 2}}
{evals}{extra}""")


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_study_validates(env, name):
    spec = study.load(name.removesuffix(".yaml"))
    stages = study.plan(spec)
    assert stages and len({s.name for s in stages}) == len(stages)
    assert all(s.call.task_options["data"].startswith(str(env / "squad")) for s in stages
               if s.kind == "eval" and "data" in s.call.task_options)  # read through $ARCHBENCH_DATA


def test_seed_study_plan(env):
    spec = study.load("seed")
    stages = study.plan(spec)
    assert len(spec["models"]) == 7
    evals = [s for s in stages if s.kind == "eval"]
    assert {s.call.shots for s in evals} == {(0, 3)}
    assert {s.call.task_options["prompt_style"] for s in evals if s.group == "seed-protocol"} == \
        {"seed-mamba", "seed-rwkv", "seed-transformer"}
    assert all(s.call.task_options["shots_from"] == "seed" for s in evals if s.group == "seed-protocol")
    fts = [s for s in stages if s.kind == "finetune"]
    assert [s.call.model for s in fts] == ["gpt2", "state-spaces/mamba-130m-hf"]
    tuned = [s for s in evals if s.call.adapter]
    assert {s.model for s in tuned} == {"gpt2+gpt2-lora", "state-spaces/mamba-130m-hf+mamba-130m-lora"}
    assert min(stages.index(s) for s in tuned) > max(stages.index(s) for s in fts)


def test_seed_dry_run_lists_the_plan_offline_and_writes_nothing(env, monkeypatch):
    monkeypatch.chdir(env)
    result = CliRunner().invoke(app, ["run", "seed", "--dry-run"])
    assert result.exit_code == 0, result.output
    for name in ("eval:seed-protocol:Mamba-130M", "eval:archbench:GPT-Neo-2.7B", "finetune:gpt2-lora",
                 "finetune:mamba-130m-lora", "eval:archbench:mamba-130m-lora", "bench:sweep", "ask:3"):
        assert f"[to do] {name}:" in result.output
    assert not (env / "runs").exists()


@pytest.mark.parametrize("text, key, reason", [
    ("name: x\nout: o\nmodels: [{model: m, family: rwkv}]\nevals: [{name: e}]\n", "evals[0].data",
     "the squad task needs data"),
    ("name: x\nout: o\nmodels: [{model: m, family: rwkv}]\nevals: [{name: e, task: nope}]\n", "evals[0].task",
     "unknown task 'nope'"),
    ("name: x\nout: o\ndata: {eval: d}\nmodels: [{model: m, family: lstm}]\n", "models[0].family", "unknown family"),
    ("name: x\nout: o\nmodels: [{model: tiny-mamba, family: rwkv}]\n", "models[0].family",
     "declared 'rwkv', but 'tiny-mamba' is a 'mamba' model"),
    ("name: x\nout: o\ndata: {eval: d}\nmodels: [{model: m, family: rwkv}]\nevals: [{name: e, shots: [0, 3]}]\n",
     "evals[0].shots_from", "few-shot settings need a shot pool"),
    ("name: x\nout: o\ndata: {eval: d}\nmodels: [{model: m, family: rwkv}]\nevals: [{name: e, models: [z]}]\n",
     "evals[0].models", "'z' is not a model of the study"),
    ("name: x\nout: o\ndata: {eval: d}\nmodels: [{model: m, family: rwkv}]\nevals: [{name: e, trials: two}]\n",
     "evals[0].trials", "expected int, got 'two'"),
    (("name: x\nout: o\ndata: {eval: d}\nmodels: [{model: m, family: rwkv}]\nbench: [{name: b, models: [m], "
     "contexts: [128], batch: [1]}]\n"), "bench[0].batch", "unknown key"),
    ("name: x\nout: o\ndata: {eval: '${NO_SUCH_VAR_AB}/a'}\nmodels: [{model: m, family: rwkv}]\n",
     "data.eval", "environment variable NO_SUCH_VAR_AB is not set"),
    (("name: x\nout: o\ndata: {eval: d}\nmodels: [{model: m, family: rwkv}]\n"
     "finetune: [{name: f, model: m, train: t, args: {lora_rank: 4}}]\n"), "finetune[0].args.lora_rank",
     "not a fine-tuning option"),
    ("name: [x\n", "not valid YAML", ""),
])
def test_bad_study_names_file_key_and_reason(tmp_path, text, key, reason):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(study.StudyError) as err:
        study.load(path)
    assert str(err.value).startswith(f"{path}: ") and key in str(err.value) and reason in str(err.value)
    result = CliRunner().invoke(app, ["run", path, "--dry-run"])
    assert result.exit_code == 2 and key in result.output


def test_missing_study_lists_shipped_ones():
    result = CliRunner().invoke(app, ["run", "nosuchstudy"])
    assert result.exit_code == 2 and "demo" in result.output and "seed" in result.output and "lab" in result.output


def test_tiny_study_runs_reports_and_skips_finished_stages(tmp_path):
    path = tiny_study(tmp_path)
    lines = []
    result = study.run_study(study=path, echo=lines.append)
    assert [s.name for s in result["stages"]] == ["ask:1", "eval:squad:Tiny-GPT-2", "eval:squad:tiny-mamba"]
    assert sum(line.startswith("== ") for line in lines) == 3
    with Store(tmp_path / "out" / "archbench.sqlite") as store:
        assert {a["model"] for a in store.records("tiny-ask-1", "answer")} == {"tiny-gpt2", "tiny-mamba"}
        (plan,) = [r for r in store.records("study-tiny", "study") if r["key"] == "plan"]
        assert all(s["done"] for s in plan["stages"])
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| Tiny GPT-2 (untrained) |" in md and "| tiny-mamba (untrained) |" in md
    assert "archbench run " + path in md and "1-shot EM" in md
    assert '<img class="plot"' in (tmp_path / "out" / "report.html").read_text()

    lines.clear()
    study.run_study(study=path, echo=lines.append)  # everything is stored: nothing runs again
    assert not any(line.startswith("== ") for line in lines)
    assert sum("[done]" in line for line in lines) == 3

    lines.clear()
    study.run_study(study=path, dry_run=True, only=["eval:squad:tiny-mamba"], echo=lines.append)
    assert any(line.startswith("   [done] eval:squad:tiny-mamba") for line in lines)
    assert any(line.startswith(" - [done] ask:1") for line in lines)

    result = CliRunner().invoke(app, ["report", path, "--out", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "again" / "report.md").read_text() == md

    changed = tmp_path / "tiny.yaml"
    changed.write_text(changed.read_text().replace("max_new_tokens: 3, batch_size", "max_new_tokens: 4, batch_size"))
    lines.clear()
    study.run_study(study=path, dry_run=True, echo=lines.append)
    assert sum("[settings changed (max_new_tokens (3 -> 4)): remove " in line for line in lines) == 2


def test_only_checks_names_and_fine_tune_order(tmp_path):
    path = tiny_study(tmp_path, extra=f"""finetune:
  - {{name: lora, model: tiny-gpt2, train: {tmp_path / "pool.jsonl"}, args: {{max_steps: 1}}}}
  - {{name: other, model: tiny-gpt2, train: {tmp_path / "pool.jsonl"}}}
""", evals="  - {name: tuned, models: [lora], limit: 1}\n")
    spec = study.load(path)
    assert [s.name for s in study.plan(spec)][-3:] == ["finetune:lora", "finetune:other", "eval:tuned:lora"]
    with pytest.raises(study.StudyError, match="--only nope: no such stage"):
        study.run_study(study=path, only=["nope"], echo=lambda line: None)
    with pytest.raises(study.StudyError, match="eval:tuned:lora needs finetune:lora to finish first"):
        study.run_study(study=path, only=["eval:tuned"], echo=lambda line: None)


def test_demo_is_the_shipped_demo_study(env, monkeypatch):
    monkeypatch.delenv("ARCHBENCH_DATA")
    monkeypatch.chdir(env)
    # the README's default: ../shared/data/squad when ARCHBENCH_DATA is unset
    assert study.load("demo")["data"]["eval"] == "../shared/data/squad/seed_eval_100.jsonl"
    report = run_demo(out=str(env / "demo"), data_dir=str(env / "squad"), dry_run=True)
    assert report == env / "demo" / "report.md" and not (env / "demo").exists()
    with pytest.raises(study.StudyError, match="data.eval: environment variable NO_SUCH_VAR_AB is not set"):
        study.load(write(env / "x.yaml", "name: x\nout: o\ndata: {eval: '${NO_SUCH_VAR_AB}/a'}\n"
                                         "models: [{model: m, family: rwkv}]\n"))


def test_a_lab_stage_trains_then_reports_and_its_model_is_evaluable(tmp_path):
    text = write(tmp_path / "t.txt", "To be, or not to be, that is the question.\n" * 60)
    path = write(tmp_path / "lab.yaml", f"""
name: minilab
out: {tmp_path / "out"}
train:
  - {{name: g, args: {{arch: gpt2, data: text, text: {text}, width: 32, depth: 1, iters: 6, batch_size: 4,
                      context: 16, warmup: 1, eval_every: 0, threads: 1}}}}
models:
  - {{model: {tmp_path / "out" / "lab" / "g"}, label: lab GPT-2, family: transformer}}
ask:
  - {{question: "To be", max_new_tokens: 3}}
""")
    lines = []
    result = study.run_study(study=path, echo=lines.append)
    assert [s.name for s in result["stages"]] == ["train:g", "ask:1"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Trained from scratch (lab)" in md and "| g | gpt2 | transformer |" in md
    assert "| lab GPT-2 |" in md  # the trained directory answered like any model (not marked untrained)
    lines.clear()
    study.run_study(study=path, echo=lines.append)
    assert not any(line.startswith("== ") for line in lines)  # the trained model is done: nothing reruns


def test_a_learning_rate_sweep_runs_each_rate_and_reports_the_best(tmp_path):
    args = ("{arch: gpt2, data: mqar, width: 32, depth: 2, batch_size: 16, iters: 6, warmup: 1, mqar_vocab: 128, "
            "mqar_train: 32x4, mqar_test: '32x4,64x4', mqar_examples: 64, mqar_test_examples: 16, eval_every: 0, "
            "threads: 1}")
    path = write(tmp_path / "sweep.yaml", f"""
name: sweep
out: {tmp_path / "out"}
train:
  - {{name: m, lrs: [1.0e-4, 3.0e-2], args: {args}}}
""")  # (train runs alone: no models list needed)
    result = study.run_study(study=path, echo=lambda _: None)
    assert [s.name for s in result["stages"]] == ["train:m-lr0.0001", "train:m-lr0.03"]
    # (so few steps learn little: which rate wins is checked on known numbers in the next test)
    runs = {lr: json.loads((tmp_path / "out" / "lab" / f"m-lr{lr}" / "train.json").read_text())
            for lr in ("0.0001", "0.03")}
    md = (tmp_path / "out" / "report.md").read_text()
    for i, test in enumerate(("32 x 4", "64 x 4")):
        best = max(runs, key=lambda lr: runs[lr]["mqar"][i]["accuracy"])
        row = next(line for line in md.splitlines() if line.startswith("| m | gpt2 |") and f"| {test} |" in line)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[5] == f"{runs[best]['mqar'][i]['accuracy']:.3f}" and cells[6] == best
        assert cells[7] == "0.0001, 0.03" and cells[8] != "-"  # both rates tried; state bytes measured
    assert (tmp_path / "out" / "plots" / "lab_mqar.png").exists()
    with pytest.raises(study.StudyError, match=r"train\[0\].lrs"):
        study.load(write(tmp_path / "bad.yaml", "name: b\nout: o\ntrain: [{name: m, lrs: [1.0e-3], args: "
                                                "{lr: 1.0e-3}}]\nmodels: [{model: m, family: rwkv}]\n"))
    with pytest.raises(study.StudyError, match="models: a study needs at least one model"):
        study.load(write(tmp_path / "empty.yaml", "name: e\nout: o\n"))


def test_the_report_keeps_each_points_best_learning_rate():
    from archbench import report_lab

    def run(name, lr, width, accs):
        settings = {"arch": "llama", "data": "mqar", "width": width, "lr": lr, "out": f"o/{name}"}
        return {"name": name, "arch": "llama", "family": "transformer", "shape": {"blocks": 2, "width": width},
                "settings": settings, "mqar": [{"seq_len": n, "pairs": 8, "accuracy": a, "state_bytes": 64 * n}
                                               for n, a in zip((64, 128), accs)]}

    res = {"lab": [run("a-lr0.001", 1e-3, 64, (0.9, 0.2)), run("a-lr0.01", 1e-2, 64, (0.5, 0.4)),
                   run("b", 1e-3, 32, (0.1, 0.0))]}  # b: another width, so not part of a's sweep
    got = {(p["label"], p["seq_len"]): (p["accuracy"], p["lr"], p["tried"]) for p in report_lab.mqar_points(res)}
    assert got == {("a", 64): (0.9, 1e-3, [1e-3, 1e-2]), ("a", 128): (0.4, 1e-2, [1e-3, 1e-2]),
                   ("b", 64): (0.1, 1e-3, [1e-3]), ("b", 128): (0.0, 1e-3, [1e-3])}


def test_bench_stage_is_done_only_with_the_points_and_settings_it_asks_for(tmp_path):
    """A bench.json left by other contexts, or measured with other settings (the study's YAML changed), does not
    count as this stage's points."""
    call = BenchConfig(models=("m",), contexts=(32, 512), batches=(1,), rounds=2, out=str(tmp_path))
    stage = SimpleNamespace(kind="bench", out=str(tmp_path), call=call)

    def write(*points, config=call):
        (tmp_path / "bench.json").write_text(json.dumps({"config": config.record(), "points": [
            {"model": "m", "context": t, "batch": 1, "status": s, "rounds": r} for t, s, r in points]}))

    assert study.status(stage, None) == (False, "to do")
    write((64, "skipped", None), (512, "ok", 2))
    assert study.status(stage, None) == (False, "to do (1/2 points stored)")
    write((32, "ok", 1), (512, "ok", 2))  # a round short
    assert study.status(stage, None)[0] is False
    write((32, "skipped", None), (512, "ok", 2))
    assert study.status(stage, None) == (True, "done")
    write((32, "skipped", None), (512, "ok", 2), config=dataclasses.replace(call, new_tokens=16, min_runs=5))
    assert study.status(stage, None) == (False, "to do (settings changed: new_tokens 16 -> 64, min_runs 5 -> 3)")
