"""A store written by the previous release (0.1.0: fixed em/f1/seed_em/contains columns, no task) opens, is
migrated in place, and summarises and reports the same numbers. The fixture was written by archbench at 75697a6
(a tiny eval: tiny-gpt2 and tiny-mamba, 0/1-shot x 2 trials, 4 questions; a few scores set by hand in SQL so that
not every value is zero); its summary.json and report.md were rendered by that release."""
import json
import re
import shutil
from pathlib import Path

from archbench.sources import render_report
from archbench.store import Store
from archbench.summary import summarize

FIXTURES = Path(__file__).parent / "fixtures"
NUMBERS = ("n", "em", "f1", "seed_em", "contains", "empty", "shots_used_mean", "prompt_tokens", "generated_tokens",
           "prefill_s", "decode_s", "prefill_tok_s", "decode_tok_s", "gen_tok_s", "ttft_ms", "chars_s", "peak_mem_mb",
           "wall_s", "batches")


def _old_store(tmp_path) -> Path:
    db = tmp_path / "old.sqlite"
    shutil.copy(FIXTURES / "store-0.1.0.sqlite", db)
    return db


def test_old_store_summarises_to_the_old_numbers(tmp_path):
    old = json.loads((FIXTURES / "store-0.1.0-summary.json").read_text())
    with Store(_old_store(tmp_path)) as store:
        new = summarize(store, old["run_id"])
    assert len(new["results"]) == len(old["results"]) == 6
    for a, b in zip(old["results"], new["results"]):
        assert (a["model"], a["shots"], a["trial"]) == (b["model"], b["shots"], b["trial"])
        assert {k: a[k] for k in NUMBERS} == {k: b[k] for k in NUMBERS}
    assert any(r["em"] > 0 for r in new["results"]) and any(r["empty"] > 0 for r in new["results"])
    for a, b in zip(old["aggregates"], new["aggregates"]):
        assert {k: v for k, v in a.items()} == {k: b[k] for k in a}


def _tables(md: str) -> list[list[list[str]]]:
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("|")]
    return [r for r in rows if not all(set(c) <= {"-"} for c in r)]


def test_old_store_reports_the_same_cells(tmp_path):
    db = _old_store(tmp_path)
    with Store(db) as store:
        run_id = store.runs("eval")[0]["run_id"]
    render_report(sources=[run_id], out=str(tmp_path / "rep"), db=str(db))
    old, new = _tables((FIXTURES / "store-0.1.0-report.md").read_text()), _tables((tmp_path / "rep" / "report.md")
                                                                                  .read_text())
    assert len(old) == len(new) and old[0] == new[0]  # same header
    for a, b in zip(old, new):
        for x, y in zip(a, b):
            if re.fullmatch(r"[\d.]+ ± [\d.]+/\d+", x):  # 0.1.0 wrote counts as mean ± std per trial / n
                mean, n = float(x.split(" ± ")[0]), int(x.split("/")[1])
                assert y == f"{round(mean * 2):.0f}/{2 * n}"  # now: the count over both trials, as the CLI shows
            else:
                assert x == y
