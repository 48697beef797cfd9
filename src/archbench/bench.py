"""`archbench bench`: prefill, decode, memory and state size of every model x context x batch point.

The claim under test (Mamba paper, Gu & Dao 2023, Sec. 4.5; RWKV paper, Peng et al. 2023, Sec. 7): a
recurrent model keeps a fixed-size state, so its per-token decode cost and memory stay flat as the context
grows, while a Transformer's KV cache and attention grow with it. Kept apart as in optimum-benchmark:
the backend (archbench's engine, `engine.run`, the very loop eval runs; or transformers' `generate` for
--engine hf), the scenario (`measure`: one point) and the trackers (trackers.py clocks and memory,
roofline.py rates and work). Settings: `BenchConfig` (bench_config.py, torch-free; re-exported here).

Method, per point
  - prompt: B rows of exactly T tokens, seeded random ids (special ids excluded) or a built-in paragraph
    repeated and cut to length (--prompt-source text); no padding anywhere;
  - one warm-up run (excluded) under the memory tracker: it does the same work as a timed run, so it gives
    the point's peak memory while no sampler thread runs during timed regions; it also reads the state size;
  - the sweep of a model's points runs `rounds` times, round-robin, a fresh process per point and round,
    and each point's samples are pooled: a slow drift of the machine's speed (a shared host) then hits
    every point alike instead of the one that happened to run during it; peak memory is the largest seen;
  - in each round, timed runs repeat until both `min_runs` and `min_seconds` are reached.
    archbench engine: one `engine.run` of the B rows with min_new_tokens = max_new_tokens = N, no stop
    strings and no shared prefix, traced by a `StepTrace`: the TokenBatch's prefill_s (prefill and first
    argmax) is the time to first token, the trace's per-step seconds (device synchronised around each
    step) of all runs form the decode distribution, and its state bytes give the cache after the prefill
    and after each step. The B rows must run as one batch: for the point's runs the engine's token budget
    (engine.TOKEN_BUDGET, a memory guard for eval's batching) is raised to B * (T + N) (bench_runs.py); a
    batch the engine still splits was halved on out-of-memory, and the point is recorded as "oom".
    hf engine (optimum-benchmark's way): generate with max_new_tokens=1 is the time to first token, and
    in generate with min_new_tokens = max_new_tokens = N a streamer times each of the N - 1 later tokens;
  - a fixed number of new tokens (no early stop), greedy;
  - every point runs in a fresh `python -m archbench.bench --point JSON` process, so one point's memory
    cannot inflate the next; an out-of-memory error (or the kernel's OOM kill) is recorded as "oom", and
    larger points of that model are then skipped; points past the model's window are skipped with a reason.
Writes OUT/bench.json ({"run_id", "config", "env" with the measured "matmul_flops" (the fastest of
"matmul_paths") and "mem_bandwidth_bytes_s", "points"}; a point's numbers are the MEASURED names below, None
unless its status is "ok"), one store record per point (kind "bench"), and prints a table.
"""
from __future__ import annotations

import gc
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from archbench import config, engine, families, fmt, roofline
from archbench.bench_config import LAUNCHERS, PROMPT_SOURCES, BenchConfig  # noqa: F401 - re-exported
from archbench.bench_runs import BatchSplit, engine_run, hf_run
from archbench.config import RuntimeConfig
from archbench.loading import DTYPES, check_engine, load
from archbench.store import Store
from archbench.trackers import MemoryTracker, environment, is_out_of_memory

MEASURED = ("ttft_ms_median", "ttft_ms_p90", "prefill_tok_s", "decode_ms_median", "decode_ms_p90",
            "decode_tok_s", "peak_mem_mb", "peak_reserved_mb", "mem_kind", "state_bytes", "prefill_flops",
            "prefill_flops_frac", "decode_bytes_per_step", "decode_bw_frac", "runs", "rounds")
TEXT = ("The river delta formed over several thousand years as sediment carried from the northern highlands "
        "settled where the current slowed near the coast. Early settlers drained the marshes with a network "
        "of canals, and by the fourteenth century the region supplied grain to most of the surrounding "
        "cities. A series of floods in 1421 destroyed many of the dikes, and the rebuilding that followed "
        "was organised by local water boards, which still exist today and are among the oldest democratic "
        "institutions in the country. Modern engineers have since added storm barriers that close "
        "automatically when the sea rises above a set level. ")


# prompts ----------------------------------------------------------------------------------------
def prompt_ids(lm, context: int, batch: int, source: str = "random", seed: int = 0) -> torch.Tensor:
    """(batch, context) token ids: seeded random non-special ids, or the built-in paragraph repeated and
    cut to exactly `context` tokens (row r starts 13 r tokens in, so rows differ)."""
    if source == "random":
        vocab = lm.model.get_input_embeddings().num_embeddings
        allowed = torch.ones(vocab, dtype=torch.bool)
        allowed[[i for i in lm.tokenizer.all_special_ids if i < vocab]] = False
        pool = allowed.nonzero()[:, 0]
        gen = torch.Generator().manual_seed(seed)
        ids = pool[torch.randint(len(pool), (batch, context), generator=gen)]
    elif source == "text":
        text = lm.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
        text = text * (-(-(context + 13 * batch) // len(text)))
        ids = torch.tensor([text[13 * r: 13 * r + context] for r in range(batch)])
    else:
        raise ValueError(f"--prompt-source {source!r}: choose one of {', '.join(PROMPT_SOURCES)}")
    return ids.to(lm.device)


def _samples(run, lm, ids: torch.Tensor, spec: dict) -> dict:
    """The warm-up run (memory, state sizes) and the timed runs of one point."""
    with torch.inference_mode():
        with MemoryTracker(lm.device) as mem:
            warm = run(lm, ids, spec["new_tokens"], read_state=True)
        ttft, decode, start = [], [], time.perf_counter()
        while len(ttft) < spec["min_runs"] or time.perf_counter() - start < spec["min_seconds"]:
            r = run(lm, ids, spec["new_tokens"])
            ttft.append(r["ttft_s"])
            decode += r["decode_s"]
    steps = [b for b in warm["after_step"] if b is not None]
    return {"status": "ok", "ttft_s": ttft, "decode_s": decode, "runs": len(ttft),
            "state_bytes": warm["state_bytes"], "state_bytes_decode": sum(steps) / len(steps) if steps else None,
            "peak_mem_mb": mem.result.peak_mb, "peak_reserved_mb": mem.result.reserved_mb,
            "mem_kind": mem.result.kind}


def measure(spec: dict) -> dict:
    """Run one point (spec: model, context, batch, new_tokens, engine, device, dtype, trust_remote_code,
    prompt_source, min_runs, min_seconds, seed) in this process; returns the raw samples, or {"status": "oom", ...}."""
    lm = load(spec["model"], device=spec["device"], dtype=spec["dtype"], trust_remote_code=spec["trust_remote_code"])
    run = hf_run if spec["engine"] == "hf" else engine_run
    try:
        ids = prompt_ids(lm, spec["context"], spec["batch"], spec["prompt_source"], spec["seed"])
        return _samples(run, lm, ids, spec)
    except BatchSplit as err:
        return {"status": "oom", "reason": str(err)}
    except Exception as err:  # noqa: BLE001 - only out-of-memory is recorded; anything else re-raises
        if not is_out_of_memory(err):
            raise
        return {"status": "oom", "reason": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}


def _release(device) -> None:
    """Give a freed model's memory back before the next point loads one."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def _launch(spec: dict, launcher: str) -> dict:
    """Measure a point in a fresh interpreter (launcher "process") or in this one ("inline")."""
    if launcher == "inline":
        raw = measure(spec)
        _release(spec["device"])
        return raw
    proc = subprocess.run([sys.executable, "-m", "archbench.bench", "--point", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode == -signal.SIGKILL:
        return {"status": "oom", "reason": "point process killed by SIGKILL (the kernel's out-of-memory killer)"}
    if proc.returncode != 0:
        raise RuntimeError(f"bench point {spec['model']} context {spec['context']} batch {spec['batch']} "
                           f"failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# records ----------------------------------------------------------------------------------------------
def _model_meta(name: str, rt: RuntimeConfig, store: Store, run_id: str) -> dict:
    """Load the model once in this process for what every point record and the roofline need; free it."""
    lm = load(name, device=rt.device, dtype=rt.dtype, trust_remote_code=rt.trust_remote_code)
    check_engine(lm, rt.engine)
    store.add_model(run_id, lm)
    kernel = engine.kernel(lm) if rt.engine == "archbench" else "transformers.generate"
    meta = {"model": name, "family": lm.family, "params": lm.params, "untrained": lm.untrained,
            "layers": families.layer_mix(families.get(lm.family), lm.model.config),
            "kernel": kernel, "max_len": lm.max_len, "shape": roofline.shape(lm.model, lm.family)}
    del lm
    _release(rt.device)
    return meta


def _skip_reason(meta: dict, context: int, batch: int, new_tokens: int, ooms: list) -> str | None:
    if meta["max_len"] is not None and context + new_tokens > meta["max_len"]:
        return (f"context {context} + {new_tokens} new tokens exceeds the model's window "
                f"of {meta['max_len']} tokens")
    for c, b in ooms:
        if context >= c and batch >= b:
            return f"not run: the smaller point context {c}, batch {b} ran out of memory"
    return None


def _pool(old: dict | None, new: dict) -> dict:
    """A point's samples over rounds: timings pooled, the largest peak memory; a round that runs out of
    memory settles the point as "oom"."""
    if old is None or new["status"] != "ok":
        return new
    peak = {k: max((x for x in (old[k], new[k]) if x is not None), default=None)
            for k in ("peak_mem_mb", "peak_reserved_mb")}
    return {**old, **peak, "ttft_s": old["ttft_s"] + new["ttft_s"], "decode_s": old["decode_s"] + new["decode_s"],
            "runs": old["runs"] + new["runs"], "rounds": old.get("rounds", 1) + 1}


def _median_p90(xs: list[float]) -> tuple[float, float]:
    return float(np.median(xs)), float(np.percentile(xs, 90))


def _record(meta: dict, spec: dict, raw: dict, env: dict) -> dict:
    """One bench.json point: identity, status, and (status "ok") the derived numbers."""
    rec = {k: meta[k] for k in ("model", "family", "layers", "params", "untrained", "kernel")}
    rec.update({k: spec[k] for k in ("engine", "context", "batch", "new_tokens")})
    rec.update(status=raw["status"], reason=raw.get("reason"), **dict.fromkeys(MEASURED))
    if raw["status"] != "ok":
        return rec
    b, t = spec["batch"], spec["context"]
    ttft, ttft90 = _median_p90(raw["ttft_s"])
    dec, dec90 = _median_p90(raw["decode_s"])
    flops = roofline.prefill_flops(meta["shape"], t, b)
    rec.update(ttft_ms_median=ttft * 1e3, ttft_ms_p90=ttft90 * 1e3, prefill_tok_s=b * t / ttft,
               decode_ms_median=dec * 1e3, decode_ms_p90=dec90 * 1e3, decode_tok_s=b / dec,
               peak_mem_mb=raw["peak_mem_mb"], peak_reserved_mb=raw["peak_reserved_mb"], mem_kind=raw["mem_kind"],
               state_bytes=raw["state_bytes"], prefill_flops=flops,
               prefill_flops_frac=flops / ttft / env["matmul_flops"], runs=raw["runs"],
               rounds=raw.get("rounds", 1))
    if raw["state_bytes_decode"] is None:
        rec["reason"] = "the engine returned no cache tensors: state size and decode bytes unknown"
    else:
        per_step = roofline.decode_bytes(meta["shape"], raw["state_bytes_decode"])
        rec.update(decode_bytes_per_step=per_step, decode_bw_frac=per_step / dec / env["mem_bandwidth_bytes_s"])
    return rec


def table(points: list[dict]) -> Table:
    """The sweep as a rich table, one row per point (sizes and percentages in fmt.py's cells)."""
    tab = Table(title="archbench bench", show_lines=False)
    for col in ("model", "family", "ctx", "batch", "status", "TTFT ms (p90)", "prefill tok/s", "decode ms (p90)",
                "decode tok/s", "peak MB", "state", "FLOP/s %", "BW %"):
        tab.add_column(col, justify="left" if col in ("model", "family", "status") else "right")
    for p in points:
        label, fam = fmt.label(p["model"], p["untrained"]), fmt.family(p["family"], p.get("layers"))
        if p["status"] != "ok":
            tab.add_row(label, fam, str(p["context"]), str(p["batch"]), fmt.status(p["status"], p["reason"]),
                        *["-"] * 8)
            continue
        tab.add_row(label, fam, str(p["context"]), str(p["batch"]), "ok",
                    f"{p['ttft_ms_median']:.1f} ({p['ttft_ms_p90']:.1f})", f"{p['prefill_tok_s']:.0f}",
                    f"{p['decode_ms_median']:.2f} ({p['decode_ms_p90']:.2f})", f"{p['decode_tok_s']:.1f}",
                    f"{p['peak_mem_mb']:.0f}", fmt.size(p["state_bytes"]), fmt.pct(p["prefill_flops_frac"]),
                    fmt.pct(p["decode_bw_frac"]))
    return tab


# the sweep ----------------------------------------------------------------------------------------------
@dataclass
class _Sweep:
    """One bench run in progress: what every point of the sweep needs."""

    cfg: BenchConfig
    store: Store
    run_id: str
    env: dict
    out_dir: Path
    result: dict
    done: list = field(default_factory=list)  # records of the models already swept


def _machine(cfg: BenchConfig, console: Console) -> dict:
    """The run's environment with the machine's measured matmul rate and memory bandwidth."""
    rt = cfg.runtime
    console.print("measuring the machine's matmul rate and memory bandwidth ...")
    rates = roofline.matmul_rates(rt.device, DTYPES[rt.dtype])
    return {**environment(rt.device), "matmul_flops": max(rates.values()), "matmul_paths": rates,
            "matmul_dtype": rt.dtype, "mem_bandwidth_bytes_s": roofline.mem_bandwidth(rt.device)}


def _point(sw: _Sweep, meta: dict, point: tuple[int, int], state: dict) -> None:
    """One round of one point: launch it (unless skipped), pool its samples, store and write its record.
    `state` holds the model's "ooms", "raws" and "records" so far."""
    t, b = point
    spec = sw.cfg.spec(meta["model"], t, b)
    reason = _skip_reason(meta, t, b, sw.cfg.new_tokens, state["ooms"])
    raw = {"status": "skipped", "reason": reason} if reason else _launch(spec, sw.cfg.launcher)
    if raw["status"] == "oom":
        state["ooms"].append((t, b))
    state["raws"][point] = _pool(state["raws"].get(point), raw)
    state["records"][point] = rec = _record(meta, spec, state["raws"][point], sw.env)
    sw.store.put(sw.run_id, "bench", f"{meta['model']}|{sw.cfg.runtime.engine}|context={t}|batch={b}", rec)
    sw.result["points"] = sw.done + list(state["records"].values())
    (sw.out_dir / "bench.json").write_text(json.dumps(sw.result, indent=1))


def _sweep_model(sw: _Sweep, meta: dict, bar: Progress, task) -> None:
    """Every point of one model, `rounds` times round-robin (a drift of the machine hits every point alike)."""
    state = {"ooms": [], "raws": {}, "records": {}}
    for _ in range(sw.cfg.rounds):
        for b in sorted(sw.cfg.batches):
            for t in sorted(sw.cfg.contexts):
                bar.update(task, description=f"{meta['model']} context {t} batch {b}")
                if state["raws"].get((t, b), {}).get("status", "ok") == "ok":  # skipped / oom points are settled
                    _point(sw, meta, (t, b), state)
                bar.advance(task)
    sw.done += list(state["records"].values())


def bench(cfg: BenchConfig) -> dict:
    """Measure every model x batch x context point; write OUT/bench.json and the store; print a table."""
    config.check_device(cfg.runtime.device)
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = f"{out_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    console = Console(width=None if sys.stdout.isatty() else 160)
    with Store(cfg.db) as store:
        metas = [_model_meta(m, cfg.runtime, store, run_id) for m in cfg.models]  # bad names fail first
        env = _machine(cfg, console)
        store.ensure_run(run_id, "bench", cfg.record(), env)
        sw = _Sweep(cfg, store, run_id, env, out_dir, {"run_id": run_id, "config": cfg.record(), "env": env,
                                                          "points": []})
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("bench", total=len(metas) * len(cfg.batches) * len(cfg.contexts) * cfg.rounds)
            for meta in metas:
                _sweep_model(sw, meta, bar, task)
    console.print(table(sw.result["points"]))
    console.print(f"wrote {out_dir / 'bench.json'}")
    return sw.result


def _main(argv: list[str] | None = None) -> None:
    """Child entry point: measure the point given as JSON and print the result as one JSON line."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m archbench.bench")
    parser.add_argument("--point", required=True, help="the point spec as JSON (see `measure`)")
    print(json.dumps(measure(json.loads(parser.parse_args(argv).point))), flush=True)


if __name__ == "__main__":
    _main()
