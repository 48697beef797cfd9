"""archbench bench: bench.json schema and field sanity on tiny models, exact KV-cache / state sizes,
skipped and out-of-memory points, prompts and the roofline formulas."""
import json
import subprocess

import pytest
import torch
from typer.testing import CliRunner

from archbench import bench as bench_mod
from archbench import families
from archbench import roofline
from archbench.bench import MEASURED, bench, prompt_ids
from archbench.cli import app
from archbench.loading import load
from archbench.store import Store

FAST = dict(new_tokens=3, min_runs=2, min_seconds=0.0, launcher="inline")
IDENTITY = ("model", "family", "params", "untrained", "engine", "kernel", "context", "batch", "new_tokens",
            "status", "reason")
TINY = ["tiny-gpt2", "tiny-llama", "tiny-mamba", "tiny-mamba2", "tiny-rwkv"]


def _fixed_rates(mp):
    """The machine's rates are measured in the CLI test; elsewhere fixed values keep tests quick."""
    mp.setattr(roofline, "matmul_rates", lambda *a, **k: {"torch.mm": 1e11})
    mp.setattr(roofline, "mem_bandwidth", lambda *a, **k: 1e10)


def _check_ok(p: dict, min_runs: int) -> None:
    assert p["status"] == "ok" and p["runs"] >= min_runs
    assert 0 < p["ttft_ms_median"] <= p["ttft_ms_p90"]
    assert 0 < p["decode_ms_median"] <= p["decode_ms_p90"]
    assert p["prefill_tok_s"] == pytest.approx(p["batch"] * p["context"] / (p["ttft_ms_median"] / 1e3))
    assert p["decode_tok_s"] == pytest.approx(p["batch"] / (p["decode_ms_median"] / 1e3))
    assert p["peak_mem_mb"] > 0 and p["mem_kind"] == "rss"
    assert p["state_bytes"] > 0 and p["prefill_flops"] > 0 and p["decode_bytes_per_step"] > p["state_bytes"]
    assert p["prefill_flops_frac"] > 0 and p["decode_bw_frac"] > 0


def _kv_bytes(cfg, batch: int, tokens: int) -> int:
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
        result = bench(TINY, [32, 8], [2, 1], out=str(tmp / "out"), db=str(tmp / "db.sqlite"),
                       **{**FAST, "min_runs": 1})
    return result, tmp


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


def test_hf_engine_reads_cache_sizes(tmp_path, monkeypatch):
    _fixed_rates(monkeypatch)
    result = bench(["tiny-gpt2", "tiny-mamba"], [8, 32], [2], engine="hf", prompt_source="text",
                   out=str(tmp_path / "out"), db=str(tmp_path / "db.sqlite"), **FAST)
    gpt2, mamba = result["points"][:2], result["points"][2:]
    cfg = load("tiny-gpt2").model.config
    for p in result["points"]:
        _check_ok(p, min_runs=2)
        assert p["kernel"] == "transformers.generate" and p["reason"] is None
    assert [p["state_bytes"] for p in gpt2] == [_kv_bytes(cfg, 2, 8), _kv_bytes(cfg, 2, 32)]
    assert mamba[0]["state_bytes"] == mamba[1]["state_bytes"]


def test_oom_is_recorded_and_larger_points_skipped(tmp_path, monkeypatch, patch_family):
    _fixed_rates(monkeypatch)
    real = families.get("transformer").prefill

    def prefill(model, seqs, state=None):
        if seqs.shape[1] >= 16:
            raise torch.OutOfMemoryError("simulated: tried to allocate 2.00 GiB")
        return real(model, seqs, state)

    patch_family("transformer", prefill=prefill)
    result = bench(["tiny-gpt2"], [8, 16], [1, 2], out=str(tmp_path / "out"), db=str(tmp_path / "db.sqlite"), **FAST)
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
    spec = dict(model="tiny-rwkv", context=4, batch=1, new_tokens=2, engine="archbench", device="cpu",
                dtype="float32", prompt_source="random", min_runs=1, min_seconds=0.0, seed=0)
    with pytest.raises(RuntimeError, match="a real bug"):
        bench_mod.measure(spec)
    failing("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
    assert bench_mod.measure(spec)["status"] == "oom"


def test_killed_point_process_is_oom(monkeypatch):
    monkeypatch.setattr(bench_mod.subprocess, "run", lambda args, **k: subprocess.CompletedProcess(args, -9, "", ""))
    raw = bench_mod._launch({"model": "tiny-gpt2", "context": 8, "batch": 1, "device": "cpu"}, "process")
    assert raw["status"] == "oom" and "SIGKILL" in raw["reason"]


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


def test_bad_options_fail_fast(tmp_path):
    for kwargs, match in ((dict(new_tokens=1), "new-tokens"), (dict(engine="vllm"), "engine"),
                          (dict(contexts=[0]), "positive")):
        args = dict(models=["tiny-gpt2"], contexts=[8], batches=[1], out=str(tmp_path), db=str(tmp_path / "d"))
        with pytest.raises(ValueError, match=match):
            bench(**{**args, **kwargs})
