"""Report rendering from a fixture store written row by row with `Store` (no models): every table cell is
traced back to the stored rows, Markdown and HTML carry the same tables, the HTML is self-contained and
escaped, and it opens in headless Chromium without console errors."""
import json
import os
import re
import shutil
import statistics
import subprocess
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from archbench.cli import app
from archbench.sources import render_report
from archbench.store import Store

ENV = {"python": "3.x", "torch": "fixture", "device": "cpu"}
PROTOCOL = {"data": "dev.jsonl", "gold": None, "shots_from": "pool.jsonl", "prompt_style": "default",
            "max_new_tokens": 32, "stop": ["\n"], "seed": 1234, "limit": 4, "dtype": "float32"}
MODELS = {"tiny-gpt2": ("transformer", 6_400_000, True), "smollm2-135m": ("transformer", 134_515_008, False),
          "tiny-mamba": ("mamba", 6_700_000, True), "smollm2-135m+lora1": ("transformer", 134_515_008, False)}
# (run, model, shots, trial) -> per-example (em, f1) and the batch's (new_tokens, prefill_s, decode_s)
CELLS = {
    ("e1", "tiny-gpt2", 0, 0): ([(0, 0.0), (0, 0.1), (0, 0.0), (1, 1.0)], (40, 0.5, 1.5)),
    ("e1", "tiny-gpt2", 3, 0): ([(0, 0.2), (1, 1.0), (0, 0.0), (0, 0.0)], (30, 1.0, 1.0)),
    ("e1", "tiny-gpt2", 3, 1): ([(1, 1.0), (1, 1.0), (0, 0.5), (0, 0.0)], (20, 1.0, 0.5)),
    ("e1", "smollm2-135m", 0, 0): ([(1, 1.0), (0, 0.4), (1, 1.0), (0, 0.0)], (16, 0.25, 0.75)),
    ("e1", "smollm2-135m", 3, 0): ([(1, 1.0), (1, 1.0), (0, 0.6), (1, 1.0)], (12, 0.5, 0.5)),
    ("e1", "smollm2-135m", 3, 1): ([(1, 1.0), (0, 0.3), (0, 0.6), (1, 1.0)], (10, 0.5, 0.75)),
    ("e1", "tiny-mamba", 0, 0): ([(0, 0.0), (0, 0.0), (0, 0.25), (0, 0.0)], (64, 0.1, 0.9)),
    ("ft", "smollm2-135m+lora1", 0, 0): ([(1, 1.0), (1, 1.0), (1, 1.0), (0, 0.5)], (8, 0.25, 0.25)),
    ("e2", "smollm2-135m", 0, 0): ([(0, 0.5), (0, 0.4), (1, 1.0), (0, 0.0)], (16, 0.5, 0.5)),
}
NASTY = '</script><b>bold</b> & "quotes"'
BENCH = [{"model": m, "family": f, "context": c, "batch": 1, "status": "ok", "ttft_ms_median": c / 10,
          "ttft_ms_p90": c / 9, "prefill_tok_s": 1000.0 + c, "decode_ms_median": 2.0 + c / 256, "decode_ms_p90": 3.0,
          "decode_tok_s": 400.0, "peak_mem_mb": 50.0 + c / 8, "state_bytes": 4096 if f == "mamba" else 1024 * c}
         for m, f in (("tiny-gpt2", "transformer"), ("tiny-mamba", "mamba")) for c in (128, 512)] + [
    {"model": "tiny-gpt2", "family": "transformer", "context": 8192, "batch": 1, "status": "skipped",
     "reason": "context 8192 + 16 new tokens exceeds the model's window of 4096 tokens"}]


def _lm(name):
    family, params, untrained = MODELS[name]
    return SimpleNamespace(name=name, family=family, params=params, untrained=untrained, source=name,
                           adapter="runs/ft/lora1" if "+" in name else None)


@pytest.fixture()
def store_db(tmp_path):
    db = tmp_path / "fixture.sqlite"
    with Store(db) as store:
        for run_id in ("e1", "ft", "e2"):
            store.ensure_run(run_id, "eval", {**PROTOCOL, "models": []}, ENV)
        for (run_id, model, shots, trial), (scores, (new, pre, dec)) in CELLS.items():
            store.add_model(run_id, _lm(model))
            rows = [{"id": f"q{i}", "shots_used": shots, "context_truncated": False, "prompt_tokens": 50,
                     "new_tokens": new // len(scores), "prompt": f"Context: c{i}\nQuestion: q{i} <i>?\nAnswer:",
                     "prediction": NASTY if i == 0 else "" if (shots, i) == (3, 3) else f"answer {i}",
                     "raw": f"answer {i}",
                     "golds": [f"gold {i}", "a & b"],
                     "scores": {"em": em, "f1": f1, "seed_em": em, "contains": em,
                                "empty": float((shots, i) == (3, 3))}}
                    for i, (em, f1) in enumerate(scores)]
            store.add_batch(run_id, model, shots, trial, rows, {
                "n": len(rows), "prefill_tokens": 200, "decode_tokens": new, "new_tokens": new, "chars": 5 * new,
                "prefill_s": pre, "decode_s": dec, "wall_s": pre + dec, "peak_mem_mb": 100.0, "info": {}})
        store.ensure_run("b1", "bench", {"out": str(tmp_path / "bench")}, ENV)
        for p in BENCH:
            store.put("b1", "bench", f"{p['model']}|{p['context']}|{p['batch']}", p)
        store.ensure_run("f1", "finetune", {"model": "smollm2-135m", "out": str(tmp_path / "lora1"),
                                            "identity": {"rows": "r0ws", "base": "ba5e"}}, ENV)
        for step, loss in enumerate([3.0, 2.5, 2.2, 2.0], 1):
            store.put("f1", "train_log", str(step), {"step": step, "loss": loss, "lr": 1e-4})
        store.put("f1", "finetune", "result", {"first_loss": 3.0, "final_loss": 2.0, "steps": 4, "rows": 8,
                                               "trainable_params": 460_800, "wall_s": 12.0})
        store.ensure_run("a1", "ask", {}, ENV)
        store.put("a1", "answer", "k", {"model": "tiny-gpt2", "untrained": True, "question": "Who? <x>", "shots": 0,
                                        "answer": "a | b\nc"})
    return db


@pytest.fixture()
def report(tmp_path, store_db):
    paths = render_report(sources=["e1", "ft", "e2", "b1", "f1", "a1"], out=str(tmp_path / "rep"), db=str(store_db))
    return {p.suffix: p for p in paths}


def md_tables(text):
    """Markdown tables as lists of rows (header first), cells unescaped."""
    out, table = [], None
    for line in text.splitlines():
        if line.startswith("| "):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if set("".join(cells)) <= {"-"}:
                continue
            table = table if table is not None else []
            table.append(cells)
        elif table is not None:
            out.append(table)
            table = None
    return out + ([table] if table else [])


class _Tables(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self.cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(" ".join(self.cell.split()))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def expected_cell(run_id, model, shots, key):
    """A cell computed in the test straight from the rows written above (never through archbench)."""
    per_trial = []
    for (r, m, k, _), (scores, (new, pre, dec)) in CELLS.items():
        if (r, m, k) == (run_id, model, shots):
            per_trial.append({"em": statistics.fmean(s[0] for s in scores),
                              "f1": statistics.fmean(s[1] for s in scores), "tok/s": new / (pre + dec),
                              "empty": int(shots == 3)}[key])  # the fixture empties row 3 of 3-shot trials
    if key == "empty":  # a count over all trials' answers, as in the CLI table
        return f"{sum(per_trial)}/{4 * len(per_trial)}"
    fmt = ".1f" if key == "tok/s" else ".2f"
    mean = format(statistics.fmean(per_trial), fmt)
    return mean if len(per_trial) == 1 else f"{mean} ± {format(statistics.stdev(per_trial), fmt)}"


def test_every_seed_table_cell_traces_to_stored_rows(report):
    tables = md_tables(report[".md"].read_text())
    seed_style = [t for t in tables if t[0][:2] == ["Model", "params"]]
    transformer = next(t for t in seed_style if any(r[0] == "tiny-gpt2 (untrained)" for r in t))
    assert transformer[0] == ["Model", "params", "0-shot EM", "F1", "tok/s", "empty", "3-shot EM", "F1", "tok/s",
                              "empty"]
    for row in transformer[1:]:
        model = {"tiny-gpt2 (untrained)": "tiny-gpt2", "smollm2-135m": "smollm2-135m"}[row[0]]
        want = [expected_cell("e1", model, k, key) for k in (0, 3) for key in ("em", "f1", "tok/s", "empty")]
        assert row[2:] == want, row
    assert {r[0]: r[1] for r in transformer[1:]} == {"tiny-gpt2 (untrained)": "6.4M", "smollm2-135m": "134.5M"}
    mamba = next(t for t in seed_style if t[1][0] == "tiny-mamba (untrained)")
    assert mamba[1][2:6] == [expected_cell("e1", "tiny-mamba", 0, k) for k in ("em", "f1", "tok/s", "empty")]
    assert mamba[1][6:] == ["-", "-", "-", "-"]


def test_fine_tuned_and_repeated_runs_show_signed_differences(report):
    tables = md_tables(report[".md"].read_text())
    ft = next(t for t in tables if t[0][0] == "Fine-tuned")
    (row,) = ft[1:]
    assert row[:4] == ["smollm2-135m+lora1", "smollm2-135m", "ft", "0"]
    assert row[4:7] == [expected_cell("e1", "smollm2-135m", 0, "em"), "0.75", "+0.25"]
    assert row[7:] == [expected_cell("e1", "smollm2-135m", 0, "f1"), "0.88", "+0.28"]
    cmp = next(t for t in tables if t[0][:2] == ["Model", "shots"] and "Δ EM" in t[0])
    (row,) = [r for r in cmp[1:] if r[0] == "smollm2-135m"]
    assert row[1:] == ["0", "e1", "e2", "0.50", "0.25", "-0.25", "0.60", "0.47", "-0.12"]


def test_bench_training_and_answers_tables(report):
    tables = md_tables(report[".md"].read_text())
    bench = next(t for t in tables if "decode ms/tok" in t[0])
    assert bench[1] == ["tiny-gpt2 (untrained)", "transformer", "128", "1", "ok", "12.8", "1128", "2.50", "400.0",
                        "66", "128.0 KiB"]
    assert [r[0] for r in bench[1:]] == ["tiny-gpt2 (untrained)"] * 3 + ["tiny-mamba (untrained)"] * 2
    assert bench[3][2:] == ["8192", "1", "skipped: context 8192 + 16 new tokens exceeds the model's window of 4096 "
                            "tokens"] + ["-"] * 6  # a point not measured says why, and shows no number
    train = next(t for t in tables if t[0][0] == "Fine-tune")
    assert train[1] == ["lora1", "smollm2-135m", "8", "4", "3.000", "2.000", "460800", "12"]
    answers = next(t for t in tables if t[0] == ["Model", "shots", "question", "answer"])
    assert answers[1] == ["tiny-gpt2 (untrained)", "0", "Who? <x>", "a | b c"]


def test_html_has_the_same_tables_plots_and_escaped_data(report):
    page = report[".html"].read_text()
    parser = _Tables()
    parser.feed(page)
    assert parser.tables == md_tables(report[".md"].read_text())
    assert page.count('<img class="plot"') == 4
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert "</script><b>" not in page and "<b>bold</b>" not in page
    script = re.search(r'<script type="application/json" id="example-data">(.*?)</script>', page, re.DOTALL)
    data = json.loads(script[1])
    assert len(data["rows"]) == sum(len(s) for s, _ in CELLS.values())
    assert NASTY in {r["y"] for r in data["rows"]}
    assert {r["m"] for r in data["rows"]} >= {"tiny-gpt2 (untrained)", "smollm2-135m"}
    assert len(data["prompts"]) == 4  # identical prompts are stored once
    assert (report[".md"].parent / "plots" / "bench_vs_context.png").stat().st_size > 1000


def test_report_cli_and_unknown_source(tmp_path, store_db):
    result = CliRunner().invoke(app, ["report", "e1", "--out", str(tmp_path / "r"), "--db", str(store_db)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "report.html").exists()
    result = CliRunner().invoke(app, ["report", "nope", "--out", str(tmp_path / "r"), "--db", str(store_db)])
    assert result.exit_code == 2 and "not a study, a run folder, or a run id" in result.output


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(tmp_path, page, *args):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--enable-logging=stderr", "--v=0", *args, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("ARCHBENCH_REQUIRE_CHROMIUM"),
                    reason="headless Chromium not installed (.ci/run installs it and sets ARCHBENCH_REQUIRE_CHROMIUM)")
def test_html_opens_in_headless_chromium(tmp_path, report):
    shot = tmp_path / "shot.png"
    run = _chromium(tmp_path, report[".html"], f"--screenshot={shot}", "--window-size=1280,2400")
    assert shot.exists() and shot.stat().st_size > 10_000, run.stderr[-2000:]
    run = _chromium(tmp_path, report[".html"], "--dump-dom")
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    assert re.search(r'<span id="browser-count">36 of 36 examples</span>', run.stdout)
    assert run.stdout.count('class="ex ') == 36 and run.stdout.count('<img class="plot"') == 4
    assert "<b>bold</b>" not in run.stdout  # the prediction was inserted as text, not markup
    broken = tmp_path / "broken.html"
    broken.write_text("<!doctype html><script>undefinedFunction();</script>")
    assert any("Uncaught" in line for line in _chromium(tmp_path, broken, "--dump-dom").stderr.splitlines()
               if ":CONSOLE" in line)  # the console check does see errors


def test_recall_task_gets_per_size_rows_and_plots_beside_cost(tmp_path, run_eval):
    """A task broken down by context size: rows per (entries, depth), the recall-vs-size plot and heat map."""
    db = str(tmp_path / "db.sqlite")
    run_eval(models=["tiny-mamba"], task="phonebook", entries=(10, 20), depths=(0.0, 1.0), limit=1,
             max_new_tokens=2, run_dir=str(tmp_path / "pb"), db=db)
    paths = render_report(sources=[str(tmp_path / "pb")], out=str(tmp_path / "rep"), db=db)
    md = paths[0].read_text()
    table = next(t for t in md_tables(md) if t[0][:5] == ["Model", "layers", "params", "entries", "depth"])
    assert [row[1:5:3] for row in table[1:]] == [["4 mamba", "0.0"], ["4 mamba", "1.0"], ["4 mamba", "0.0"],
                                                ["4 mamba", "1.0"]]
    assert [row[3] for row in table[1:]] == ["10", "10", "20", "20"]
    assert {p.name for p in (tmp_path / "rep" / "plots").iterdir()} >= {"recall_vs_context.png",
                                                                       "recall_heatmaps.png"}


def test_environment_lists_what_each_run_is(report):
    md = report[".md"].read_text()
    assert "f1 (finetune): rows r0ws, base ba5e" in md  # a fine-tune's identity (training rows, base weights)
