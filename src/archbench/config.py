"""Typed settings: one frozen dataclass per recipe, every default written once, validated on construction.

The CLI (cli.py) reads its defaults and help from these fields and the study schema (study.py) is derived
from them, so a setting is declared in exactly one place. A bad value raises `ConfigError` with a one-line
message naming the option. Fine-tuning's and the lab's settings live beside their recipes (finetune.py,
lab/train.py) in the same style.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

DEVICES = ("cpu", "cuda", "mps")
DTYPES = ("float32", "float16", "bfloat16")
ENGINES = ("archbench", "hf")
DEFAULT_DB = "runs/archbench.sqlite"


class ConfigError(ValueError):
    """A setting out of range; the message is one line naming the option."""


def _need(ok: bool, option: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{option}: {message}")


def check_device(device: str) -> None:
    """Refuse a device this machine does not have, in one line (not a traceback from deep inside torch)."""
    import torch

    kind = device.split(":")[0]
    _need(kind in DEVICES, "--device", f"{device!r} is not one of {', '.join(DEVICES)}")
    if kind == "cuda":
        _need(torch.cuda.is_available(), "--device", "cuda was asked for but this torch build or machine has no "
                                                     "CUDA device (torch.cuda.is_available() is False)")
    if kind == "mps":
        _need(torch.backends.mps.is_available(), "--device", "mps was asked for but is not available here")


@dataclass(frozen=True)
class GenConfig:
    """How a completion is generated (greedy)."""

    max_new_tokens: int = 32
    stop: tuple[str, ...] = ("\n",)  # cut and stop at the first occurrence in the generated text
    batch_size: int = 8  # 0 = auto: as many rows as the token budget allows, halved on out-of-memory
    min_new_tokens: int = 0  # bench: min = max so that every run does the same work
    compile: bool = False  # engine: torch.compile the decode step (CUDA only)

    def __post_init__(self):
        _need(self.max_new_tokens >= 1, "--max-new-tokens", f"must be >= 1, got {self.max_new_tokens}")
        _need(self.batch_size >= 0, "--batch-size", f"must be >= 1 (or auto), got {self.batch_size}")
        _need(0 <= self.min_new_tokens <= self.max_new_tokens, "min_new_tokens",
              f"must be between 0 and max_new_tokens, got {self.min_new_tokens}")


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how models run."""

    device: str = "cpu"
    dtype: str = "float32"
    engine: str = "archbench"  # archbench's own engine, or hf (transformers' generate)
    trust_remote_code: bool = False  # let transformers run the Python code a hub repo ships (its own classes)

    def __post_init__(self):
        _need(self.dtype in DTYPES, "--dtype", f"{self.dtype!r} is not one of {', '.join(DTYPES)}")
        _need(self.engine in ENGINES, "--engine", f"{self.engine!r} is not one of {', '.join(ENGINES)}")
        _need(self.device.split(":")[0] in DEVICES, "--device", f"{self.device!r} is not one of {', '.join(DEVICES)}")


@dataclass(frozen=True)
class EvalConfig:
    """An evaluation: models x shot settings x trials on one task, stored and resumable in `run_dir`."""

    models: tuple[str, ...]
    task: str = "squad"
    task_options: dict = field(default_factory=dict)  # the task's own options (data, gold, lengths, ...)
    shots: tuple[int, ...] = (0,)
    trials: int = 1  # shot sets drawn per few-shot setting
    gen: GenConfig = GenConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    adapter: str | None = None  # LoRA adapter directory
    run_dir: str = "runs/eval"
    db: str = DEFAULT_DB
    new_run: bool = False  # start a new run in run_dir even if one of other content is stored there
    device_map: str | None = None  # "auto": accelerate spreads each model over this node's devices
    rank_timeout: float = 1800.0  # seconds a process waits for the others (torchrun) before it gives up
    unit_batches: int = 4  # batches per unit of work shared out among processes

    def __post_init__(self):
        _need(len(self.models) > 0, "--model", "at least one model is needed")
        _need(self.device_map in (None, "auto", "balanced", "balanced_low_0", "sequential"), "--device-map",
              f"{self.device_map!r} is not one of auto, balanced, balanced_low_0, sequential")
        _need(self.rank_timeout > 0, "--rank-timeout", f"must be > 0 seconds, got {self.rank_timeout}")
        _need(self.unit_batches >= 1, "unit_batches", f"must be >= 1, got {self.unit_batches}")
        _need(len(self.shots) > 0 and min(self.shots) >= 0, "--shots", f"shot counts must be >= 0, got {self.shots}")
        _need(self.trials >= 1, "--trials", f"must be >= 1, got {self.trials}")
        limit = self.task_options.get("limit")
        _need(limit is None or limit >= 1, "--limit", f"must be a positive number of examples, got {limit}")


@dataclass(frozen=True)
class AskConfig:
    """Free-form questions to several models, answers side by side (greedy, stopped only by end-of-text)."""

    models: tuple[str, ...]
    question: str
    shots: int = 0  # 0, or the seed study's 3 free-form shots
    chat: bool = False  # use the tokenizer's chat template
    max_new_tokens: int = 256
    runtime: RuntimeConfig = RuntimeConfig()
    db: str = DEFAULT_DB
    run_id: str | None = None  # default: ask-<time>

    def __post_init__(self):
        _need(len(self.models) > 0, "--model", "at least one model is needed")
        _need(self.shots in (0, 3), "--shots", f"free-form questions take 0 or 3 shots, got {self.shots}")
        _need(self.max_new_tokens >= 1, "--max-new-tokens", f"must be >= 1, got {self.max_new_tokens}")


def defaults(cls) -> dict:
    """Field name -> default of a config dataclass (required fields left out)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def field_types(cls) -> dict[str, tuple[type, ...]]:
    """Field name -> the plain types a YAML value may have (for study validation)."""
    plain = {int: (int,), float: (int, float), str: (str,), bool: (bool,), dict: (dict,)}
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        origin = typing.get_origin(hint)
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if origin in (tuple, list):
            out[name] = (list,)
        elif args and origin is not None:  # X | None
            out[name] = plain.get(args[0], (object,))
        else:
            out[name] = plain.get(hint, (object,))
    return out
