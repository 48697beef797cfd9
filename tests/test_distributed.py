"""Evaluations across processes (distributed.py): `torchrun --nproc_per_node 2` (gloo, CPU) of `archbench eval`
gives the predictions and scores of one process, and a run killed, interrupted or left hanging by a rank is
resumed under 1 and then 2 processes with nothing lost or duplicated; a study's report is the same under 2
processes. The unit tests check the longest-first assignment, the chunks and the shard merge."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from archbench import distributed
from archbench import evaluate as ev
from archbench.store import Store
from conftest import eval_config

ROWS = [{"id": f"q{i}", "context": f"Item {i} was built in {1800 + i} by Ann Lee." + " It is old." * (i % 4),
         "question": f"When was item {i} built?", "answers": {"text": [str(1800 + i)], "answer_start": [0]}}
        for i in range(30)]
POOL = [{"id": f"p{i}", "context": f"Tower {i} is {10 * i} metres tall.", "question": f"How tall is tower {i}?",
         "answers": {"text": [f"{10 * i} metres"], "answer_start": [0]}} for i in range(6)]
MODELS = ("tiny-gpt2", "tiny-mamba")
EXPECTED = len(MODELS) * (1 + 2) * len(ROWS)  # models x (0-shot + 3-shot x 2 trials) x questions


@pytest.fixture(autouse=True)
def one_thread():
    """In-process runs on one thread, as torchrun's processes (OMP_NUM_THREADS=1): no oversubscribed cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def files(tmp_path, write_jsonl):
    return write_jsonl(tmp_path / "dev.jsonl", ROWS), write_jsonl(tmp_path / "pool.jsonl", POOL)


def options(data, pool, run_dir, db) -> dict:
    return dict(models=list(MODELS), data=data, shots=[0, 3], shots_from=pool, trials=2, batch_size=4,
                max_new_tokens=3, run_dir=str(run_dir), db=str(db))


def launch(n: int, opts: dict, fault: str = "", timeout: float = 60, command: str = "eval") -> tuple[int, str]:
    """`torchrun --standalone --nproc_per_node n -m archbench eval ...` as CI would type it."""
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), "-m",
            "archbench", command]
    if command == "eval":
        for m in opts["models"]:
            args += ["--model", m]
        args += ["--data", opts["data"], "--shots", ",".join(map(str, opts["shots"])), "--shots-from",
                 opts["shots_from"], "--trials", str(opts["trials"]), "--batch-size", str(opts["batch_size"]),
                 "--max-new-tokens", str(opts["max_new_tokens"]), "--run-dir", opts["run_dir"], "--db", opts["db"],
                 "--rank-timeout", str(timeout)]
    else:
        args += opts["args"]
    env = {**os.environ, "ARCHBENCH_FAULT": fault, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1] / "src"), env.get("PYTHONPATH", "")])
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def stored(db, run_dir) -> list[tuple]:
    """(model, shots, trial, id, prediction, scores) of every stored row, and predictions.jsonl's rows."""
    with Store(db) as store:
        run_id = store.folder_run(Path(run_dir))
        rows = [(r["model"], r["shots"], r["trial"], r["example_id"], r["prediction"], json.dumps(r["scores"]))
                for r in store.predictions(run_id)]
    lines = [json.loads(x) for x in (Path(run_dir) / "predictions.jsonl").read_text().splitlines()]
    return rows, [(x["model"], x["shots"], x["trial"], x["id"], x["prediction"]) for x in lines]


def test_two_processes_match_one_and_survive_kill_hang_and_resume(tmp_path, files, monkeypatch):
    ref = ev.evaluate(eval_config(**options(*files, tmp_path / "one", tmp_path / "one.sqlite")))
    want_rows, want_lines = stored(tmp_path / "one.sqlite", tmp_path / "one")
    assert len(want_rows) == len(want_lines) == EXPECTED and ref["processes"]["world"] == [1]
    # a clean 2-process run: the same rows, scores and file as one process
    two = options(*files, tmp_path / "two", tmp_path / "two.sqlite")
    code, out = launch(2, two)
    assert code == 0, out[-3000:]
    assert stored(two["db"], two["run_dir"]) == (want_rows, want_lines)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    procs = summary["processes"]
    assert procs["world"] == [2] and [r["rank"] for r in procs["ranks"]] == [0, 1]
    assert sum(r["n"] for r in procs["ranks"]) == EXPECTED and all(r["n"] > 0 for r in procs["ranks"])
    assert procs["slowest_wall_s"] == max(r["wall_s"] for r in procs["ranks"]) > 0
    assert procs["gen_tok_s"] == pytest.approx(procs["new_tokens"] / procs["slowest_wall_s"])
    assert [r[k] for r in summary["results"] for k in ("em", "f1", "n")] == \
           [r[k] for r in ref["results"] for k in ("em", "f1", "n")]
    assert not (tmp_path / "two" / "shards").exists()
    # killed: rank 1 exits after 2 batches (torchrun then stops rank 0); its shards stay behind
    run = options(*files, tmp_path / "resume", tmp_path / "resume.sqlite")
    code, out = launch(2, run, fault="die:1:2")
    assert code != 0 and list((tmp_path / "resume" / "shards").glob("*.jsonl")), out[-3000:]
    # resumed by one process, itself interrupted after 3 more batches
    monkeypatch.setattr(distributed, "fault", lambda r, n: (_ for _ in ()).throw(KeyboardInterrupt) if n == 3 else 0)
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate(eval_config(**run))
    with Store(run["db"]) as store:
        run_id = store.folder_run(Path(run["run_dir"]))
        middle = len(store.predictions(run_id))
    assert 2 * 4 <= middle < EXPECTED  # rank 1's two shard batches were merged, then 3 more batches
    # resumed by two processes, rank 1 hangs: rank 0 says so in one line within the timeout
    t0 = time.monotonic()
    code, out = launch(2, run, fault="hang:1:1", timeout=15)
    assert code != 0 and "did not answer within --rank-timeout 15s" in out, out[-3000:]
    assert time.monotonic() - t0 < 240
    # and a clean rerun completes the run: every row once, the same predictions as one process
    code, out = launch(2, run)
    assert code == 0, out[-3000:]
    rows, lines = stored(run["db"], run["run_dir"])
    assert len(rows) == len(set(r[:4] for r in rows)) == EXPECTED
    assert sorted(rows) == sorted(want_rows) and sorted(lines) == sorted(want_lines)
    worlds = json.loads((tmp_path / "resume" / "summary.json").read_text())["processes"]["world"]
    assert worlds == [2]  # only completed attempts record their processes


def test_longest_first_assignment_balances_and_is_deterministic():
    costs = [7.0, 5.0, 4.0, 4.0, 3.0, 3.0, 2.0]
    owner = distributed.assign(costs, 2)
    assert owner == distributed.assign(costs, 2)
    loads = [sum(c for c, o in zip(costs, owner) if o == r) for r in range(2)]
    assert sorted(loads) == [14.0, 14.0]  # LPT: 7+4+3 / 5+4+3+2
    carried = [10.0, 0.0]
    assert distributed.assign([1.0, 1.0], 2, carried) == [1, 1] and carried == [10.0, 2.0]
    assert distributed.assign(costs, 1) == [0] * len(costs)


def test_chunks_are_whole_batches_of_the_length_sorted_group():
    pairs = [(SimpleNamespace(id=f"q{i}"), SimpleNamespace(n_tokens=n)) for i, n in enumerate([3, 9, 5, 9, 1])]
    out = distributed.chunks(pairs, batch_size=2, batches_per_unit=1)
    assert [[p[0].id for p in c] for c in out] == [["q1", "q3"], ["q2", "q0"], ["q4"]]
    assert len(distributed.chunks(pairs, batch_size=0, batches_per_unit=4)) == 1  # auto: the engine cuts


def test_merge_drops_a_torn_line_and_skips_batches_already_stored(tmp_path):
    row = {"id": "a", "shots_used": 0, "context_truncated": False, "prompt_tokens": 3, "new_tokens": 1,
           "prompt": "p", "prediction": "x", "raw": "x", "golds": ["x"], "scores": {"em": 1.0}, "meta": {}}
    batch = {"n": 1, "prefill_tokens": 3, "decode_tokens": 0, "new_tokens": 1, "chars": 1, "prefill_s": 0.1,
             "decode_s": 0.0, "wall_s": 0.1, "peak_mem_mb": 0.0, "info": {}}
    line = {"model": "m", "shots": 0, "trial": 0, "rows": [row], "batch": batch}
    shard = tmp_path / "shards" / "u.jsonl"
    distributed.append(shard, line)
    distributed.append(shard, line)  # the same batch again: a merge interrupted before the shard was deleted
    with open(shard, "a") as f:
        f.write('{"model": "m", "rows": [')  # torn by a kill
    with Store(tmp_path / "db.sqlite") as store:
        store.ensure_run("r", "eval", {}, {})
        assert distributed.merge(store, "r", distributed.leftovers(tmp_path)) == 1
        assert len(store.predictions("r")) == 1 and len(store.batches("r", "m", 0, 0)) == 1
    assert not shard.exists()


def test_study_under_two_processes_reports_like_one(tmp_path, monkeypatch, write_jsonl):
    from archbench.study import run_study

    data, pool = write_jsonl(tmp_path / "dev.jsonl", ROWS[:8]), write_jsonl(tmp_path / "pool.jsonl", POOL)
    text = "name: tiny\nout: {out}\ndata: {{eval: %s, shots_from: %s}}\n" % (data, pool) + \
           "models:\n  - {{model: tiny-gpt2, family: transformer}}\n  - {{model: tiny-mamba, family: mamba}}\n" + \
           "evals:\n  - {{name: squad, shots: [0, 1], trials: 2, max_new_tokens: 3, batch_size: 2}}\n"
    (tmp_path / "one.yaml").write_text(text.format(out=tmp_path / "one"))
    (tmp_path / "two.yaml").write_text(text.format(out=tmp_path / "two"))
    run_study(study=str(tmp_path / "one.yaml"), echo=lambda *a: None)
    code, out = launch(2, {"args": [str(tmp_path / "two.yaml")]}, command="run")
    assert code == 0, out[-3000:]
    reports = [(tmp_path / d / "report.md").read_text() for d in ("one", "two")]
    assert _scores_only(reports[0], tmp_path / "one") == _scores_only(reports[1], tmp_path / "two")
    with Store(tmp_path / "two" / "archbench.sqlite") as store:
        runs = [r["run_id"] for r in store.runs("eval")]  # one eval run per model
        assert sum(len(store.predictions(r)) for r in runs) == 2 * (1 + 2) * 8
        assert [a["world"] for r in runs for a in store.records(r, "processes")] == [2, 2]


def _scores_only(report: str, out: Path) -> list[str]:
    """The report without what differs between two runs of the same content: table cells under a timing
    heading (tok/s, ms, s), and lines naming times, paths, run ids or the environment."""
    keep, timing, header = [], set(), []
    for line in report.replace(str(out), "OUT").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if cells and set("".join(cells)) <= set("-: "):  # the separator: the row above was the heading
            timing = {i for i, c in enumerate(header) if "tok/s" in c or c.endswith(("ms", " s")) or "wall" in c}
        header = cells
        if cells:
            line = " | ".join("~" if i in timing else c for i, c in enumerate(cells))
        if any(w in line.lower() for w in ("created", "run id", "python", "torch", "host", "-20", "platform", "cpu")):
            continue
        keep.append(line)
    return keep
