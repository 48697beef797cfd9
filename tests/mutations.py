"""Mutation check: named deliberate bugs, each of which a named test must catch (`make mutations`).

Each `Mutation` is (name, file, exact old text, new text, test node ids). The check copies src/, tests/ and
pyproject.toml to a temporary directory, runs the named tests there once unmutated (they must pass), then for each
mutation replaces the old text (which must occur exactly once) in the copy, runs only its tests with PYTHONPATH
pointing at the copy's src/, and restores the file. A mutation is caught when every one of its tests fails. The
check passes when every mutation that is not `pending` is caught; a mutation whose old text or test no longer
exists (stale), or whose test fails without it (unsound), fails the check, so a refactor that moves code or
renames a test must update this list. (Mutation testing as in Jia & Harman 2011 or mutmut, with hand-picked
mutants, each paired with the test meant to catch it.)

    python tests/mutations.py            # all mutations
    python tests/mutations.py -k wkv     # those whose name contains "wkv"
    python tests/mutations.py --list     # the list, nothing run
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600  # per mutation: a hang counts as not caught


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the repository root
    old: str  # exact text, must occur once
    new: str
    tests: tuple[str, ...]  # pytest node ids; every one must fail
    pending: str = ""  # why it cannot run yet (its test is still being written); not counted


E2E = "tests/test_engine_parity.py::"
K = "tests/test_kernels.py::"
S = "tests/test_scoring.py::"

MUTATIONS = [
    # --- the five bugs of issue 17
    Mutation("engine-keeps-first-rows-state", "src/archbench/engine.py",
             "state = fam.select(state, torch.tensor(keep, device=nxt.device))",
             "state = fam.select(state, torch.arange(len(keep), device=nxt.device))",
             (E2E + "test_rows_finishing_at_eos_match_batch_one[tiny-gpt2]",
              E2E + "test_rows_finishing_at_a_stop_string_match_batch_one[tiny-mamba]",
              E2E + "test_rows_finishing_at_eos_match_batch_one[tiny-rwkv]")),
    Mutation("scoring-constants", "src/archbench/tasks/squad.py",
             'return {**metrics.score(prediction, raw, item.example.answers), "empty": float(prediction == "")}',
             'return {"em": 0.0, "f1": 0.0, "seed_em": 0.0, "contains": 0.0, "empty": float(prediction == "")}',
             (S + "test_stored_rows_score_right_answers_one_and_wrong_answers_zero",
              S + "test_summary_means_match_hand_arithmetic")),
    Mutation("trial-seed-drops-trial", "src/archbench/tasks/squad.py",
             "seed=self.seed + trial,", "seed=self.seed,",
             (S + "test_each_trial_shares_one_shot_set_and_trials_differ",)),
    Mutation("finetune-lr-divided-by-1000", "src/archbench/finetune.py",
             "lr=cfg.lr)", "lr=cfg.lr / 1000)",
             ("tests/test_finetune.py::test_each_family_learns_only_lora_and_the_adapter_reloads[tiny-rwkv]",)),
    Mutation("bench-decode-step-outside-timer", "src/archbench/engine.py",
             "    t0 = time.perf_counter()\n    state, logits = loop.step(lm.model, nxt, state)\n",
             "    state, logits = loop.step(lm.model, nxt, state)\n    t0 = time.perf_counter()\n",
             ("tests/test_bench.py::test_decode_step_is_the_engines_and_inside_the_timer",)),
    # --- engine bookkeeping
    Mutation("engine-live-rows-not-reindexed", "src/archbench/engine.py",
             "nxt, live = nxt[keep], [live[b] for b in keep]", "nxt, live = nxt[keep], live[:len(keep)]",
             (E2E + "test_rows_finishing_at_eos_match_batch_one[tiny-llama]",)),
    # --- kernels
    Mutation("mamba-scan-initial-state-not-decayed", "src/archbench/families/mamba.py",
             "dBx[:, 0] += dA[:, 0] * h0", "dBx[:, 0] += h0",
             (K + "test_mamba_selective_scan_matches_loop[7]", K + "test_mamba_chunked_mixer_matches_loop[40]")),
    Mutation("mamba-decay-without-dt", "src/archbench/families/mamba.py",
             "hs = scan(torch.exp(dtc * A),", "hs = scan(torch.exp(A).expand_as(dtc * A),",
             (K + "test_mamba_chunked_mixer_matches_loop[40]",)),
    Mutation("mamba2-ssd-state-not-decayed-across-chunks", "src/archbench/families/mamba2.py",
             "h = h * torch.exp(last)[:, :, None, None] + torch.einsum(", "h = h + torch.einsum(",
             (K + "test_mamba2_ssd_matches_loop[13-4]",)),
    Mutation("rwkv-wkv-without-u-bonus", "src/archbench/families/rwkv.py",
             "torch.where((pair == 0)[None, :, :, None], u + kq[:, None], -torch.inf)",
             "torch.where((pair == 0)[None, :, :, None], kq[:, None], -torch.inf)",
             (K + "test_rwkv_wkv_matches_loop[75-32]",)),
    Mutation("rwkv-wkv-without-max-shift", "src/archbench/families/rwkv.py",
             "m = torch.maximum(e.amax(dim=2), carried)", "m = torch.zeros_like(carried)",
             (K + "test_rwkv_wkv_is_stable_for_large_exponents",)),
    Mutation("cascade-two-softmaxes", "src/archbench/families/transformer.py",
             "w = torch.softmax(torch.cat([sp.view(hkv, b, n, p).transpose(0, 1), s], -1), -1)",
             "w = torch.cat([torch.softmax(sp.view(hkv, b, n, p).transpose(0, 1), -1), torch.softmax(s, -1)], -1)",
             (K + "test_cascade_attention_matches_attention_over_the_concatenation[4-2-6]",)),
    Mutation("packed-prefix-merge-unscaled", "src/archbench/families/transformer.py",
             "return ((op * wp + os_ * ws) / (lp * wp + ws)).view(1, hq, n, d)",
             "return ((op * wp + os_ * ws) / (lp + ws)).view(1, hq, n, d)",
             (K + "test_packed_prefill_attention_matches_per_row_causal_attention[4-2-7]",)),
    # --- metrics
    Mutation("squad-normalisation-keeps-the", "src/archbench/metrics.py",
             '_ARTICLES = re.compile(r"\\b(a|an|the)\\b")', '_ARTICLES = re.compile(r"\\b(a|an)\\b")',
             (S + "test_stored_rows_score_right_answers_one_and_wrong_answers_zero",)),
    Mutation("shots-drawn-from-evaluated-ids", "src/archbench/prompts.py",
             "candidates = [e for e in pool if e.id not in exclude_ids]", "candidates = list(pool)",
             (S + "test_each_trial_shares_one_shot_set_and_trials_differ",)),
]


def _copy(dest: Path) -> None:
    for part in ("src", "tests"):
        shutil.copytree(ROOT / part, dest / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")


def _pytest(copy: Path, tests: tuple[str, ...], report: Path) -> tuple[int, dict[str, str]]:
    """Run `tests` in the copy; returns (exit code, node id -> passed / failed / skipped / missing)."""
    env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONPATH": str(copy / "src"), "HF_HUB_OFFLINE": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}  # one thread: on a shared host, spinning threads slow tiny models 10x
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=no", "-o", "addopts=",
           f"--junitxml={report}", *tests]
    try:
        rc = subprocess.run(cmd, cwd=copy, env=env, timeout=TIMEOUT_S, capture_output=True, text=True).returncode
    except subprocess.TimeoutExpired:
        return -1, {t: "timeout" for t in tests}
    outcomes = {t: "missing" for t in tests}
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            node = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
            kind = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
            outcomes[node] = {"failure": "failed", "error": "error"}.get(kind, kind)
    return rc, outcomes


def _check_import(copy: Path) -> None:
    """The copy's archbench must be the one imported (not the editable install of the repository)."""
    env = {**os.environ, "PYTHONPATH": str(copy / "src")}
    where = subprocess.run([sys.executable, "-c", "import archbench; print(archbench.__file__)"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not where.startswith(str(copy)):
        sys.exit(f"mutations: the copy's archbench is not the one imported ({where}); check the install")


def run(mutations: list[Mutation]) -> bool:
    """Apply each mutation to a fresh copy's file, run its tests, print a line per mutation; True if all caught."""
    active = [m for m in mutations if not m.pending]
    with tempfile.TemporaryDirectory(prefix="archbench-mutations-") as tmp:
        copy = Path(tmp)
        _copy(copy)
        _check_import(copy)
        tests = tuple(dict.fromkeys(t for m in active for t in m.tests))
        _, baseline = _pytest(copy, tests, copy / "baseline.xml")
        ok = True
        for m in mutations:
            ok &= _one(copy, m, baseline)
    return ok


def _one(copy: Path, m: Mutation, baseline: dict[str, str]) -> bool:
    if m.pending:
        print(f"PENDING     {m.name}: {m.pending}")
        return True
    unsound = [t for t in m.tests if baseline.get(t) != "passed"]
    if unsound:  # a test that fails (or is missing) without the mutation proves nothing
        print(f"UNSOUND     {m.name}: without the mutation " + ", ".join(f"{t} {baseline.get(t)}" for t in unsound))
        return False
    path = copy / m.file
    text = path.read_text()
    if text.count(m.old) != 1:
        print(f"STALE       {m.name}: the old text occurs {text.count(m.old)} times in {m.file}")
        return False
    t0 = time.perf_counter()
    path.write_text(text.replace(m.old, m.new))
    try:
        rc, outcomes = _pytest(copy, m.tests, copy / f"{m.name}.xml")
    finally:
        path.write_text(text)
    caught = all(outcomes[t] == "failed" for t in m.tests)
    verdict = "caught" if caught else "NOT CAUGHT"
    print(f"{verdict:<11} {m.name} ({time.perf_counter() - t0:.0f} s)")
    for t in m.tests:
        print(f"              {outcomes[t]:<8} {t}")
    return caught


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="run only mutations whose name contains this text")
    ap.add_argument("--list", action="store_true", help="list the mutations and their tests; run nothing")
    args = ap.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # one line per mutation as it finishes, also under make / a pipe
    chosen = [m for m in MUTATIONS if args.k in m.name]
    if not chosen:
        sys.exit(f"-k {args.k!r}: no mutation name contains it; names: {', '.join(m.name for m in MUTATIONS)}")
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.file}" + (f" (pending: {m.pending})" if m.pending else ""))
            for t in m.tests:
                print(f"    {t}")
        return
    t0 = time.perf_counter()
    ok = run(chosen)
    done = [m for m in chosen if not m.pending]
    print(f"{len(done)} mutations run in {time.perf_counter() - t0:.0f} s, "
          f"{len(chosen) - len(done)} pending: {'all caught' if ok else 'NOT all caught'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
