"""archbench bench: the decode step it times is the engine's (engine.run, the loop eval runs), its timings agree
with a known sleep and a direct measurement, exact KV-cache / state sizes, one batch per point, skipped and
out-of-memory points, bench.json schema, prompts, the roofline formulas and BenchConfig validation.

Timing checks are ratios with wide margins: the test machine is a shared, loaded host. Torch runs on one
thread in this module (two threads per process on an oversubscribed 2-core host made single steps jump 20x)."""
import json
import statistics
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from archbench import bench as bench_mod
from archbench import engine, families, roofline
from archbench.bench import MEASURED, BenchConfig, bench, prompt_ids
from archbench.cli import app
from archbench.config import ConfigError, RuntimeConfig
from archbench.loading import load
from archbench.store import Store

FAST = dict(new_tokens=3, min_runs=2, min_seconds=0.0, rounds=1, launcher="inline")
IDENTITY = ("model", "family", "params", "untrained", "engine", "kernel", "context", "batch", "new_tokens",
            "status", "reason")
TINY = ("tiny-gpt2", "tiny-llama", "tiny-mamba", "tiny-mamba2", "tiny-rwkv")
SLEEP_S = 0.1  # added to every decode step by the sleep test


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fixed_rates(mp):
    """The machine's rates are measured in the CLI test; elsewhere fixed values keep tests quick."""
    mp.setattr(roofline, "matmul_rates", lambda *a, **k: {"torch.mm": 1e11})
    mp.setattr(roofline, "mem_bandwidth", lambda *a, **k: 1e10)


def _run(tmp_path, models, contexts, batches, **kw) -> dict:
    """bench() on a fresh output folder and store, FAST settings unless overridden."""
    cfg = BenchConfig(models=models, contexts=contexts, batches=batches, out=str(tmp_path / "out"),
                      db=str(tmp_path / "db.sqlite"), **{**FAST, **kw})
    return bench(cfg)


def _point(result: dict, model: str, context: int, batch: int) -> dict:
    return next(p for p in result["points"] if (p["model"], p["context"], p["batch"]) == (model, context, batch))


def _check_ok(p: dict, min_runs: int) -> None:
    assert p["status"] == "ok" and p["runs"] >= min_runs
    assert 0 < p["ttft_ms_median"] <= p["ttft_ms_p90"]
    assert 0 < p["decode_ms_median"] <= p["decode_ms_p90"]
    assert p["prefill_tok_s"] == pytest.approx(p["batch"] * p["context"] / (p["ttft_ms_median"] / 1e3))
    assert p["decode_tok_s"] == pytest.approx(p["batch"] / (p["decode_ms_median"] / 1e3))
    assert p["peak_mem_mb"] > 0 and p["mem_kind"] == "rss"
    assert p["state_bytes"] > 0 and p["prefill_flops"] > 0 and p["decode_bytes_per_step"] > p["state_bytes"]
    assert p["prefill_flops_frac"] > 0 and p["decode_bw_frac"] > 0


def _kv_bytes(cfg, batch: int, tokens: float) -> float:
    """2 (keys, values) * layers * batch * kv_heads * tokens * head_dim * 4 bytes (fp32)."""
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return 2 * cfg.num_hidden_layers * batch * kv_heads * tokens * head_dim * 4


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Every tiny family at contexts 8 and 32, batches 1 and 2, measured in this process."""
    tmp = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        _fixed_rates(mp)
        result = _run(tmp, TINY, (32, 8), (2, 1), min_runs=1)
    return result, tmp


# the step bench times is the engine's -----------------------------------------------------------------
def _frames() -> set[tuple[str, str]]:
    """(module, function) of every frame calling the current one."""
    out, frame = set(), sys._getframe(2)
    while frame is not None:
        out.add((frame.f_globals.get("__name__"), frame.f_code.co_name))
        frame = frame.f_back
    return out


def test_decode_step_is_the_engines_and_inside_the_timer(tmp_path, monkeypatch, patch_family):
    """A known sleep added to the family's step raises bench's decode median by about the sleep (and not its
    time to first token); every step call comes from engine.run's timed step, as many as the runs need."""
    _fixed_rates(monkeypatch)
    kw = dict(new_tokens=4, min_runs=3)
    base = _point(_run(tmp_path / "base", ("tiny-mamba",), (16,), (1,), **kw), "tiny-mamba", 16, 1)
    real, calls = families.get("mamba").step, []

    def slow_step(model, tokens, state):
        calls.append(_frames())
        time.sleep(SLEEP_S)
        return real(model, tokens, state)

    patch_family("mamba", step=slow_step)
    slow = _point(_run(tmp_path / "slow", ("tiny-mamba",), (16,), (1,), **kw), "tiny-mamba", 16, 1)
    added = (slow["decode_ms_median"] - base["decode_ms_median"]) / 1e3
    assert 0.8 * SLEEP_S < added < 1.6 * SLEEP_S, (base["decode_ms_median"], slow["decode_ms_median"])
    assert slow["ttft_ms_median"] < base["ttft_ms_median"] + 0.5 * SLEEP_S * 1e3  # the sleep is not in the prefill
    assert len(calls) == (slow["runs"] + 1) * (kw["new_tokens"] - 1)  # the warm-up run and the timed runs
    for frames in calls:
        assert {("archbench.engine", "_timed_step"), ("archbench.engine", "run"),
                ("archbench.bench_runs", "engine_run")} <= frames


def test_decode_time_matches_a_direct_measurement(tmp_path, monkeypatch):
    """Bench's per-step decode median is within a factor of 3 of K steps timed by a plain loop here."""
    _fixed_rates(monkeypatch)
    steps, direct = 8, []
    lm = load("tiny-mamba")
    fam = families.get(lm.family)
    ids = prompt_ids(lm, 64, 2)
    with torch.inference_mode():
        for _ in range(5):
            state, logits = fam.prefill(lm.model, ids)
            start = time.perf_counter()
            for _ in range(steps):
                state, logits = fam.step(lm.model, logits.argmax(-1), state)
            direct.append((time.perf_counter() - start) / steps)
    p = _point(_run(tmp_path, ("tiny-mamba",), (64,), (2,), new_tokens=steps + 1, min_runs=5),
               "tiny-mamba", 64, 2)
    ratio = p["decode_ms_median"] / 1e3 / statistics.median(direct)
    assert 1 / 3 < ratio < 3, (p["decode_ms_median"], statistics.median(direct))


def test_recurrent_decode_is_flat_in_context(tmp_path, monkeypatch):
    """Mamba and RWKV: the same state bytes and about the same decode step at 16 and 1024 prompt tokens (a
    step that re-read the prompt would take many times longer at 1024)."""
    _fixed_rates(monkeypatch)
    result = _run(tmp_path, ("tiny-mamba", "tiny-rwkv"), (16, 1024), (1,), new_tokens=6, min_runs=3)
    for name in ("tiny-mamba", "tiny-rwkv"):
        short, long = _point(result, name, 16, 1), _point(result, name, 1024, 1)
        assert short["state_bytes"] == long["state_bytes"]
        assert short["decode_bytes_per_step"] == long["decode_bytes_per_step"]
        assert 0.5 < long["decode_ms_median"] / short["decode_ms_median"] < 2, (short, long)


def test_point_is_one_batch_past_the_engines_token_budget(tmp_path, monkeypatch):
    """B * (T + N) above engine.TOKEN_BUDGET: bench still runs the B rows as one batch (it passes the point's
    own budget to engine.run; the module's default is untouched)."""
    _fixed_rates(monkeypatch)
    monkeypatch.setattr(engine, "TOKEN_BUDGET", 20)
    seen = []
    real = engine.run

    def run(lm, ids, gen, share_prefix=True, trace=None, token_budget=None):
        for batch in real(lm, ids, gen, share_prefix, trace, token_budget):
            seen.append(len(batch.rows))
            yield batch

    monkeypatch.setattr(engine, "run", run)
    p = _point(_run(tmp_path, ("tiny-gpt2",), (16,), (3,)), "tiny-gpt2", 16, 3)  # 3 * (16 + 3) = 57 > 20
    assert p["status"] == "ok" and set(seen) == {3} and engine.TOKEN_BUDGET == 20


def test_a_batch_the_engine_halves_is_out_of_memory(tmp_path, monkeypatch, patch_family):
    _fixed_rates(monkeypatch)
    real = families.get("transformer").prefill

    def prefill(model, seqs, state=None):
        if len(seqs) > 1:
            raise torch.OutOfMemoryError("simulated: tried to allocate 2.00 GiB")
        return real(model, seqs, state)

    patch_family("transformer", prefill=prefill)
    p = _point(_run(tmp_path, ("tiny-gpt2",), (8,), (2,)), "tiny-gpt2", 8, 2)
    assert p["status"] == "oom" and "halved the batch of 2 rows to 1" in p["reason"]


# sizes and schema -------------------------------------------------------------------------------------
def test_process_launcher_writes_bench_json_store_and_skips_past_the_window(tmp_path, monkeypatch):
    """The default launcher: each point in `python -m archbench.bench --point JSON`."""
    _fixed_rates(monkeypatch)
    data = _run(tmp_path, ("tiny-gpt2",), (16, 5000), (1,), launcher="process")
    assert data["config"]["launcher"] == "process" and data["config"]["contexts"] == [16, 5000]
    ok, skipped = data["points"]
    for p in (ok, skipped):
        assert set(IDENTITY + MEASURED) <= set(p)
    _check_ok(ok, min_runs=2)
    assert ok["rounds"] == 1 and ok["state_bytes"] == _kv_bytes(load("tiny-gpt2").model.config, 1, 16)
    assert skipped["status"] == "skipped" and "window of 4096" in skipped["reason"]
    assert all(skipped[k] is None for k in MEASURED)
    assert json.loads((tmp_path / "out" / "bench.json").read_text()) == json.loads(json.dumps(data))
    with Store(str(tmp_path / "db.sqlite")) as store:
        records = store.records(data["run_id"], "bench")
        assert [r["status"] for r in records] == ["ok", "skipped"]
        assert store.run(data["run_id"])["config"] == data["config"]


def test_rounds_pool_their_samples(tmp_path, monkeypatch):
    _fixed_rates(monkeypatch)
    calls = []
    real = bench_mod.measure
    monkeypatch.setattr(bench_mod, "measure", lambda spec: calls.append(spec) or real(spec))
    p = _point(_run(tmp_path, ("tiny-mamba",), (8,), (1,), rounds=3), "tiny-mamba", 8, 1)
    assert len(calls) == 3 and p["rounds"] == 3 and p["runs"] >= 6  # three rounds of at least two runs


def test_cli_writes_bench_json_store_and_skips_past_the_window(tmp_path):
    out, db = tmp_path / "B", tmp_path / "db.sqlite"
    res = CliRunner().invoke(app, ["bench", "--model", "tiny-gpt2", "--context", "16,5000", "--batch", "1",
                                   "--new-tokens", "3", "--min-runs", "2", "--min-seconds", "0",
                                   "--rounds", "2", "--out", str(out), "--db", str(db)])
    assert res.exit_code == 0, res.output
    assert "tiny-gpt2" in res.output and "bench.json" in res.output
    data = json.loads((out / "bench.json").read_text())
    assert data["env"]["matmul_flops"] == max(data["env"]["matmul_paths"].values()) > 1e6
    assert data["env"]["mem_bandwidth_bytes_s"] > 1e6
    assert data["config"]["launcher"] == "process"
    ok, skipped = data["points"]
    for p in (ok, skipped):
        assert set(IDENTITY + MEASURED) <= set(p)
    _check_ok(ok, min_runs=2)
    assert ok["rounds"] == 2 and ok["runs"] >= 4  # two rounds of at least two runs, pooled
    assert ok["state_bytes"] == _kv_bytes(load("tiny-gpt2").model.config, 1, 16)
    assert skipped["status"] == "skipped" and "window of 4096" in skipped["reason"]
    assert all(skipped[k] is None for k in MEASURED)
    with Store(db) as store:
        records = store.records(data["run_id"], "bench")
        assert [r["status"] for r in records] == ["ok", "skipped"]
        assert store.run(data["run_id"])["env"]["matmul_flops"] == data["env"]["matmul_flops"]


def test_sweep_schema_and_sanity(sweep):
    result, tmp = sweep
    assert json.loads((tmp / "out" / "bench.json").read_text()) == json.loads(json.dumps(result))
    points = result["points"]
    assert len(points) == len(TINY) * 4
    assert [(p["batch"], p["context"]) for p in points[:4]] == [(1, 8), (1, 32), (2, 8), (2, 32)]
    for p in points:
        assert p["kernel"] and p["params"] > 0
        assert p["untrained"] is True and p["engine"] == "archbench" and p["new_tokens"] == 3
        _check_ok(p, min_runs=1)


def test_transformer_cache_is_linear_in_context(sweep):
    for name in ("tiny-gpt2", "tiny-llama"):  # tiny-llama has grouped-query attention (2 kv heads of 4)
        lm = load(name)
        shp = roofline.shape(lm.model, lm.family)
        for p in (p for p in sweep[0]["points"] if p["model"] == name):
            assert p["state_bytes"] == _kv_bytes(lm.model.config, p["batch"], p["context"])
            # steps 1 and 2 of 3 new tokens read caches of context + 1 and + 2 tokens
            mean = _kv_bytes(lm.model.config, p["batch"], p["context"] + 1.5)
            assert p["decode_bytes_per_step"] == shp["weight_bytes"] + mean


@pytest.mark.parametrize("name", ["tiny-mamba", "tiny-mamba2", "tiny-rwkv"])
def test_recurrent_state_is_constant_in_context(sweep, name):
    sizes = {(p["batch"], p["context"]): p["state_bytes"] for p in sweep[0]["points"] if p["model"] == name}
    assert sizes[(1, 8)] == sizes[(1, 32)] and sizes[(2, 8)] == sizes[(2, 32)] == 2 * sizes[(1, 8)]
    lm = load(name)
    for p in (p for p in sweep[0]["points"] if p["model"] == name):
        assert p["decode_bytes_per_step"] == roofline.shape(lm.model, lm.family)["weight_bytes"] + p["state_bytes"]


def test_table_cells_come_from_fmt(sweep):
    from rich.console import Console

    console = Console(width=400, record=True)
    console.print(bench_mod.table(sweep[0]["points"]))
    text = console.export_text()
    p = sweep[0]["points"][0]
    assert f"{p['model']} (untrained)" in text
    assert bench_mod.fmt.size(p["state_bytes"]) in text and bench_mod.fmt.pct(p["decode_bw_frac"]) in text


def test_hf_engine_reads_cache_sizes(tmp_path, monkeypatch):
    _fixed_rates(monkeypatch)
    result = _run(tmp_path, ("tiny-gpt2", "tiny-mamba"), (8, 32), (2,), runtime=RuntimeConfig(engine="hf"),
                  prompt_source="text")
    gpt2, mamba = result["points"][:2], result["points"][2:]
    cfg = load("tiny-gpt2").model.config
    for p in result["points"]:
        _check_ok(p, min_runs=2)
        assert p["kernel"] == "transformers.generate" and p["reason"] is None
    assert [p["state_bytes"] for p in gpt2] == [_kv_bytes(cfg, 2, 8), _kv_bytes(cfg, 2, 32)]
    assert mamba[0]["state_bytes"] == mamba[1]["state_bytes"]


# failures ---------------------------------------------------------------------------------------------
def test_oom_is_recorded_and_larger_points_skipped(tmp_path, monkeypatch, patch_family):
    _fixed_rates(monkeypatch)
    real = families.get("transformer").prefill

    def prefill(model, seqs, state=None):
        if len(seqs[0]) >= 16:
            raise torch.OutOfMemoryError("simulated: tried to allocate 2.00 GiB")
        return real(model, seqs, state)

    patch_family("transformer", prefill=prefill)
    result = _run(tmp_path, ("tiny-gpt2",), (8, 16), (1, 2))
    status = {(p["batch"], p["context"]): (p["status"], p["reason"]) for p in result["points"]}
    assert status[(1, 8)] == ("ok", None) and status[(2, 8)] == ("ok", None)
    assert status[(1, 16)][0] == "oom" and "simulated" in status[(1, 16)][1]
    assert status[(2, 16)][0] == "skipped" and "context 16, batch 1 ran out of memory" in status[(2, 16)][1]
    saved = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert [p["status"] for p in saved["points"]] == ["ok", "oom", "ok", "skipped"]


def test_other_errors_are_not_swallowed(patch_family):
    def failing(message):
        patch_family("rwkv", step=lambda *a: (_ for _ in ()).throw(RuntimeError(message)))

    failing("a real bug")
    spec = BenchConfig(models=("tiny-rwkv",), new_tokens=2, min_runs=1, min_seconds=0.0).spec("tiny-rwkv", 4, 1)
    with pytest.raises(RuntimeError, match="a real bug"):
        bench_mod.measure(spec)
    failing("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
    assert bench_mod.measure(spec)["status"] == "oom"


def test_killed_point_process_is_oom(monkeypatch):
    monkeypatch.setattr(bench_mod.subprocess, "run", lambda args, **k: subprocess.CompletedProcess(args, -9, "", ""))
    raw = bench_mod._launch({"model": "tiny-gpt2", "context": 8, "batch": 1, "device": "cpu"}, "process")
    assert raw["status"] == "oom" and "SIGKILL" in raw["reason"]


# prompts, roofline, settings --------------------------------------------------------------------------
def test_prompts_have_exact_length_and_no_special_ids():
    lm = load("tiny-gpt2")
    ids = prompt_ids(lm, 300, 3, "random", seed=1)
    assert ids.shape == (3, 300) and torch.equal(ids, prompt_ids(lm, 300, 3, "random", seed=1))
    assert not set(ids.flatten().tolist()) & set(lm.tokenizer.all_special_ids)
    text = prompt_ids(lm, 500, 2, "text")
    assert text.shape == (2, 500) and not torch.equal(text[0], text[1])
    assert "water boards" in lm.tokenizer.decode(text[0])
    with pytest.raises(ValueError, match="prompt-source"):
        prompt_ids(lm, 8, 1, "squad")


def test_roofline_accounting_of_gpt2():
    lm = load("tiny-gpt2")
    cfg, m = lm.model.config, lm.model.transformer
    shp = roofline.shape(lm.model, lm.family)
    assert lm.model.lm_head.weight is m.wte.weight  # tied: the head is read, the position table is not
    assert shp["body_params"] == lm.params - m.wte.weight.numel() - m.wpe.weight.numel()
    assert shp["weight_bytes"] == 4 * (lm.params - m.wpe.weight.numel())
    d, layers, T, B = cfg.n_embd, cfg.n_layer, 100, 3
    expect = B * (2 * shp["body_params"] * T + 2 * cfg.vocab_size * d + 2 * layers * T**2 * d)
    assert roofline.prefill_flops(shp, T, B) == expect
    assert roofline.shape(load("tiny-mamba").model, "mamba")["d_attn"] == 0


@pytest.mark.parametrize("options, match", [
    (dict(models=()), "--model"), (dict(new_tokens=1), "--new-tokens"), (dict(contexts=[0]), "--context"),
    (dict(contexts=[]), "--context"), (dict(batches=[2, -1]), "--batch"), (dict(min_runs=0), "--min-runs"),
    (dict(min_seconds=-1), "--min-seconds"), (dict(rounds=0), "--rounds"), (dict(prompt_source="squad"),
    "--prompt-source"), (dict(launcher="thread"), "launcher"), (dict(engine="vllm"), "--engine"),
    (dict(dtype="int3"), "--dtype"), (dict(device="tpu"), "--device"), (dict(colour="red"), "colour")])
def test_bad_options_are_refused_in_one_line(options, match):
    with pytest.raises(ConfigError, match=match) as err:
        BenchConfig.from_options(**{"models": ("tiny-gpt2",), **options})
    assert "\n" not in str(err.value)


def test_options_become_a_config_and_cuda_is_checked(tmp_path):
    cfg = BenchConfig.from_options(models=["tiny-gpt2"], contexts=[8, 4], batches=[1], engine="hf",
                                   device="cuda", dtype="float16", out=str(tmp_path))
    assert cfg.models == ("tiny-gpt2",) and cfg.contexts == (8, 4) and cfg.runtime.engine == "hf"
    assert cfg.record()["contexts"] == [4, 8] and cfg.spec("tiny-gpt2", 8, 1)["dtype"] == "float16"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device"):
            bench(cfg)
