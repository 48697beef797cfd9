"""CPU linear layers for archbench's engine: oneDNN with weights packed once, or PyTorch's F.linear, whichever
this host runs faster, chosen by a short measurement that is cached per host.

PyTorch's CPU `F.linear` calls MKL's sgemm, which on some CPUs (AMD EPYC among them: MKL takes a generic
path there) reaches well under half of the fp32 FMA peak, and re-packs the weight on every call, which
dominates the skinny products of decode (a batch of 1-8 rows). oneDNN's linear with a weight reordered
once into its blocked layout (what intel-extension-for-pytorch's `ipex.optimize` does, and inductor's
CPU weight prepacking) reaches the peak on large products and runs decode shapes 2-4x faster on a 2-core
EPYC (measured: benchmarks/engine_vs_hf.py). Neither wins everywhere (oneDNN capped to AVX2 on an AVX-512
host, `ONEDNN_MAX_CPU_ISA=AVX2`, loses to MKL's AVX-512 sgemm), so `choice()` times both on a decode shape
(1-2 rows, and up to DECODE_ROWS rows: MKL's gemv wins the first on some hosts, oneDNN the second) and a
prefill shape, once per host key (CPU model and flags, torch version and
threads, the ISA caps of oneDNN / MKL / ATen in the environment) in $ARCHBENCH_CACHE/linear-paths.json;
`ARCHBENCH_LINEAR=torch` or `=onednn` skips the measurement. Results agree with `F.linear` to fp32 rounding.

`packed(model)` is a context manager: inside it every fp32 `nn.Linear` and GPT-2 `Conv1D` of `model` runs
through oneDNN when the path chosen for its number of rows is oneDNN and the product has at least MIN_MACS
multiply-adds (below that, oneDNN's fixed call cost makes plain `F.linear` faster: both measured from 1 to
256 rows on weights from 128x128 to 1536x576); the packed copy is cached on the module and rebuilt if the
weight changes. Outside it the model is untouched (the `--engine hf` path never sees it). `Weight` is the
same dispatch for a weight the engine builds itself (a fused projection). `kernel(device, dtype)` names the
paths taken and the measured ratios.
"""
from __future__ import annotations

import json
import os
import time
import types
from contextlib import contextmanager
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

ROWS_HINT = 8  # oneDNN picks the packed layout for this many rows; measured equal from 1 to 1,500 rows
MIN_MACS = 2**19  # smaller products stay on F.linear: oneDNN's ~14 us call overhead loses below this
DECODE_ROWS = 16  # a product of at most this many rows counts as decode (skinny, weight-bandwidth bound)
REGIMES = {"decode1": 1, "decode": 4, "prefill": 256}  # rows measured per regime (regime(): 1-2, 3-16, more)
STREAM = 24  # weight copies a decode measurement streams through
ONEDNN, TORCH = "onednn-prepacked", "torch"
_ENV_KEYS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY",
             "ARCHBENCH_LINEAR")


def available(device: torch.device, dtype: torch.dtype) -> bool:
    """oneDNN prepacked linears can run: fp32 on a CPU with a oneDNN build of PyTorch."""
    return (device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def cpu_flags() -> dict:
    """The CPU's model name and whether it has AVX2, AVX-512F and AMX tiles (/proc/cpuinfo; empty elsewhere)."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return {"model": "unknown", "avx2": False, "avx512f": False, "amx": False}
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "unknown")
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    return {"model": model, "avx2": "avx2" in flags, "avx512f": "avx512f" in flags, "amx": "amx_tile" in flags}


def host_key() -> str:
    """What the measured choice depends on: CPU, torch build and threads, and the ISA caps set in the env."""
    env = ",".join(f"{k}={os.environ[k]}" for k in _ENV_KEYS if os.environ.get(k))
    flags = cpu_flags()
    isa = "+".join(k for k in ("avx2", "avx512f", "amx") if flags[k]) or "baseline"
    return f"{flags['model']}|{isa}|torch {torch.__version__}|{torch.get_num_threads()} threads|{env}"


def onednn_pack(weight: torch.Tensor) -> torch.Tensor:
    """oneDNN's blocked copy of an (out, in) fp32 weight."""
    with torch.no_grad():
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), ROWS_HINT)


def onednn_linear(x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., in) @ weight.T + bias with a weight from `onednn_pack`."""
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight, bias, "none", [], "")


def _fastest_s(fn, calls: int, rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def measure() -> dict:
    """Seconds per product of both paths on 1536 x 576 weights (a small LM's MLP), fastest of a few rounds:
    decode shapes (1 row, 4 rows) streamed through STREAM copies of the weight (85 MB, past a CPU's last-level
    cache, as decode streams a model's weights from memory: a cache-resident weight would favour the path with
    the cheaper call, not the one nearer the bandwidth), the prefill shape (256 rows) on one weight. ~0.3 s."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(1536, 576, generator=gen)
    weights = [w.clone() for _ in range(STREAM)]
    packs = [onednn_pack(v) for v in weights]
    out = {}
    with torch.inference_mode():
        for regime, rows in REGIMES.items():
            x = torch.randn(rows, 576, generator=gen)
            n = 1 if regime == "prefill" else STREAM
            paths = {TORCH: lambda x=x, n=n: [F.linear(x, v) for v in weights[:n]],
                     ONEDNN: lambda x=x, n=n: [onednn_linear(x, v) for v in packs[:n]]}
            for fn in paths.values():  # warm-up: oneDNN creates its primitive on the first call
                fn()
            out[regime] = {name: _fastest_s(fn, 3 if n == 1 else 1, 3 if n == 1 else 5) / n
                           for name, fn in paths.items()}
    return out


def regime(rows: int) -> str:
    """The measured regime a product of `rows` rows falls in."""
    return "decode1" if rows <= 2 else "decode" if rows <= DECODE_ROWS else "prefill"


def _decide(seconds: dict) -> dict:
    """Per regime the faster path and how much faster it is than the other (>= 1)."""
    out = {}
    for regime, s in seconds.items():
        fast, slow = sorted(s, key=s.get)
        out[regime] = {"path": fast, "speedup": s[slow] / s[fast], "seconds": s}
    return out


def _cache_file():
    from archbench.zoo import cache_dir

    return cache_dir() / "linear-paths.json"


def _fixed(path: str, source: str) -> dict:
    return {r: {"path": path} for r in REGIMES} | {"source": source}


@lru_cache(maxsize=1)
def choice() -> dict:
    """{"decode": {...}, "prefill": {...}, "source": ...}: the linear path per regime for fp32 on this host's
    CPU ("path", and "speedup" over the other path where measured). Measured once per host key (module
    docstring), then read from the cache file; `ARCHBENCH_LINEAR=torch|onednn` forces a path."""
    forced = os.environ.get("ARCHBENCH_LINEAR", "auto").lower()
    if not available(torch.device("cpu"), torch.float32) or forced == TORCH:
        return _fixed(TORCH, "forced" if forced == TORCH else "no oneDNN")
    if forced.startswith("onednn"):
        return _fixed(ONEDNN, "forced")
    key, path = host_key(), _cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not set(REGIMES) <= set(cached.get(key, {})):  # never measured here, or before a regime was added
        cached[key] = _decide(measure())
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cached, indent=1, sort_keys=True))
            tmp.replace(path)
        except OSError:
            pass  # a read-only cache only costs the measurement next time
        return cached[key] | {"source": "measured now"}
    return cached[key] | {"source": "measured (cached)"}


def uses_onednn(device: torch.device, dtype: torch.dtype, rows: int) -> bool:
    """Whether a product of `rows` rows on `device`/`dtype` goes through oneDNN on this host."""
    if not available(device, dtype):
        return False
    return choice()[regime(rows)]["path"] == ONEDNN


def kernel(device: torch.device, dtype: torch.dtype) -> str:
    """The linear paths taken, e.g. 'decode onednn-prepacked x2.1, prefill torch x1.3 (measured (cached))':
    per regime the path and its measured speed-up over the other one."""
    if not available(device, dtype):
        return TORCH
    c = choice()
    parts = [f"{r} {c[r]['path']}" + (f" x{c[r]['speedup']:.2f}" if "speedup" in c[r] else "")
             for r in REGIMES]
    return f"{', '.join(parts)} ({c['source']})"


class Weight:
    """An (out, in) weight and optional bias that the engine applies itself (a fused projection): x @ w.T + b
    through oneDNN with a copy packed on first use where `packed` would send the product there, else
    F.linear."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight, self.bias, self._packed = weight.detach().contiguous(), bias, None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if _takes_onednn(self.weight, x):
            if self._packed is None:
                self._packed = onednn_pack(self.weight)
            return onednn_linear(x, self._packed, self.bias)
        return F.linear(x, self.weight, self.bias)

    def add_to(self, x: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        """x + self(inp) (x (..., out), inp (..., in)); on F.linear's path one addmm (the residual added inside
        the product)."""
        if self.bias is None and not _takes_onednn(self.weight, inp):
            rows = inp.numel() // inp.shape[-1]
            return torch.addmm(x.reshape(rows, -1), inp.reshape(rows, -1), self.weight.t()).view(x.shape)
        return x + self(inp)


def _takes_onednn(weight: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether x (..., in) @ weight.T runs through oneDNN: this host's path for its number of rows, and at least
    MIN_MACS multiply-adds."""
    rows = x.numel() // x.shape[-1]
    return rows * weight.numel() >= MIN_MACS and uses_onednn(x.device, x.dtype, rows)


def _weight(module) -> torch.Tensor:
    """(out, in) weight: GPT-2's Conv1D stores (in, out)."""
    return module.weight if isinstance(module, nn.Linear) else module.weight.t()


def _packed(module) -> torch.Tensor:
    w = module.weight
    key = (w.data_ptr(), w._version)  # a weight changed in place (training) or replaced is packed again
    if getattr(module, "_onednn_key", None) != key:
        module._onednn_weight, module._onednn_key = onednn_pack(_weight(module)), key
    return module._onednn_weight


def _forward(module, x: torch.Tensor) -> torch.Tensor:
    if not _takes_onednn(module.weight, x):
        return type(module).forward(module, x)
    return onednn_linear(x, _packed(module), module.bias)


def _eligible(module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return (isinstance(module, (nn.Linear, Conv1D)) and module.weight.dtype == torch.float32
            and module.weight.device.type == "cpu" and "forward" not in vars(module))  # accelerate hooks own it


@contextmanager
def packed(model: nn.Module):
    """Run `model`'s fp32 CPU linears through oneDNN with prepacked weights inside the block where oneDNN is
    this host's path for the product's rows (no-op where neither regime takes oneDNN)."""
    p = next(model.parameters())
    if not any(uses_onednn(p.device, p.dtype, rows) for rows in REGIMES.values()):
        yield
        return
    mods = [m for m in model.modules() if _eligible(m)]
    for m in mods:
        m.forward = types.MethodType(_forward, m)
    try:
        yield
    finally:
        for m in mods:
            del m.forward
