"""Measurement trackers: context managers that return typed results (optimum-benchmark's latency and
memory trackers are the model). Clocks are read only after the device is synchronised.

    with Timer(device) as t: ...           -> t.result.seconds
    with MemoryTracker(device) as m: ...   -> m.result.peak_mb (RSS sampled by a thread on CPU;
                                              max allocated / reserved on CUDA after resetting peaks)
    TokenClock(device)                     -> a transformers streamer noting when each token exists
"""
from __future__ import annotations

import platform
import threading
import time
from dataclasses import dataclass

import psutil
import torch


def synchronize(device) -> None:
    """Wait for queued device work so that a clock read means what it says."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@dataclass(frozen=True)
class Timing:
    seconds: float


@dataclass(frozen=True)
class Memory:
    peak_mb: float  # CPU: peak resident set size of this process; CUDA: max allocated
    reserved_mb: float | None = None  # CUDA only
    kind: str = "rss"  # "rss" or "cuda_allocated"


class Timer:
    def __init__(self, device="cpu"):
        self.device, self.result = device, None

    def __enter__(self):
        synchronize(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.result = Timing(time.perf_counter() - self._t0)
        return False


class MemoryTracker:
    def __init__(self, device="cpu", interval_s: float = 0.005):
        self.device, self.interval_s, self.result = torch.device(device), interval_s, None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._proc, self._peak, self._stop = psutil.Process(), 0, threading.Event()
            self._peak = self._proc.memory_info().rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            synchronize(self.device)
            self.result = Memory(torch.cuda.max_memory_allocated(self.device) / 2**20,
                                 torch.cuda.max_memory_reserved(self.device) / 2**20, "cuda_allocated")
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._proc.memory_info().rss)
            self.result = Memory(self._peak / 2**20, None, "rss")
        return False


class TokenClock:
    """A transformers streamer that notes when each generated token exists (device synchronised): `put` is
    called once with the prompt, then once per new token, so times[1] is the first token's."""

    def __init__(self, device):
        self.device, self.times = device, []

    def put(self, value):
        synchronize(self.device)
        self.times.append(time.perf_counter())

    def end(self):
        pass


def is_out_of_memory(err: BaseException) -> bool:
    """An allocation failure: torch's OutOfMemoryError (CUDA) or the CPU allocator's RuntimeError."""
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and any(s in str(err) for s in ("out of memory", "can't allocate memory")))


def environment(device="cpu") -> dict:
    """What a reader needs to reproduce a number: versions, device, threads, fast-kernel availability."""
    import importlib.util

    import transformers

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": psutil.cpu_count(logical=True),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "cuda": torch.cuda.is_available(),
        "mamba_ssm": importlib.util.find_spec("mamba_ssm") is not None,
        "causal_conv1d": importlib.util.find_spec("causal_conv1d") is not None,
    }
    if torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env
