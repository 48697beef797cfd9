"""The settings of `archbench bench` (bench.py), one frozen dataclass with every default written once.

Torch-free on purpose (as finetune_config.py): the CLI (`archbench bench`) and the study schema (study.py) read
the defaults and option names from here without importing torch. The measurement protocol the fields steer
(warm-up, minimum runs and duration, rounds round-robin, a fresh process per point) follows optimum-benchmark;
see bench.py. A bad value raises `config.ConfigError` with a one-line message naming the option.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from archbench.config import DEFAULT_DB, ConfigError, RuntimeConfig

PROMPT_SOURCES = ("random", "text")
LAUNCHERS = ("process", "inline")  # optimum-benchmark's launchers: a fresh process per point, or this one


def _need(ok: bool, option: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{option}: {message}")


@dataclass(frozen=True)
class BenchConfig:
    """An efficiency sweep: models x contexts x batches, `rounds` times round-robin, written to `out`."""

    models: tuple[str, ...]
    contexts: tuple[int, ...] = (128, 512, 2048, 8192)  # prompt lengths in tokens
    batches: tuple[int, ...] = (1, 8, 32)
    new_tokens: int = 64  # per run: the first ends the prefill, the other N - 1 are decode steps
    runtime: RuntimeConfig = RuntimeConfig()
    prompt_source: str = "random"  # random token ids, or text (a built-in paragraph repeated)
    min_runs: int = 3  # timed runs per point and round, at least ...
    min_seconds: float = 1.0  # ... and for at least this long
    rounds: int = 3  # sweeps round-robin over a model's points, samples pooled
    out: str = "runs/bench"
    db: str = DEFAULT_DB
    launcher: str = "process"  # a fresh process per point, or inline (this process: tests)
    seed: int = 0  # random prompts' seed

    def __post_init__(self):
        for name in ("models", "contexts", "batches"):  # lists (YAML, CLI) become tuples: the config is frozen
            object.__setattr__(self, name, tuple(getattr(self, name)))
        _need(len(self.models) > 0, "--model", "at least one model is needed")
        for option, values in (("--context", self.contexts), ("--batch", self.batches)):
            _need(len(values) > 0 and all(isinstance(v, int) and v >= 1 for v in values), option,
                  f"needs positive integers, got {list(values)}")
        _need(self.new_tokens >= 2, "--new-tokens", f"must be >= 2 (the first token ends the prefill; decode "
                                                    f"needs one more), got {self.new_tokens}")
        _need(self.prompt_source in PROMPT_SOURCES, "--prompt-source",
              f"{self.prompt_source!r} is not one of {', '.join(PROMPT_SOURCES)}")
        _need(self.min_runs >= 1, "--min-runs", f"must be >= 1, got {self.min_runs}")
        _need(self.min_seconds >= 0, "--min-seconds", f"must be >= 0, got {self.min_seconds}")
        _need(self.rounds >= 1, "--rounds", f"must be >= 1, got {self.rounds}")
        _need(self.launcher in LAUNCHERS, "launcher", f"{self.launcher!r} is not one of {', '.join(LAUNCHERS)}")
        _need(bool(self.out), "--out", "an output folder is needed")

    @classmethod
    def from_options(cls, **options) -> "BenchConfig":
        """A config from flat options (a CLI command's, a study's bench entry): engine, device, dtype and
        trust_remote_code go to `runtime`; an unknown option is refused in one line."""
        known = {f.name for f in fields(cls)} | {f.name for f in fields(RuntimeConfig)}
        _need(not set(options) - known, "bench", f"unknown option(s) {', '.join(sorted(set(options) - known))}")
        runtime = {k: options.pop(k) for k in ("engine", "device", "dtype", "trust_remote_code") if k in options}
        return cls(runtime=RuntimeConfig(**runtime), **options)

    def record(self) -> dict:
        """The flat settings stored in bench.json's "config" and the store's run (the report reads them)."""
        rt = self.runtime
        return dict(models=list(self.models), contexts=sorted(self.contexts), batches=sorted(self.batches),
                    new_tokens=self.new_tokens, engine=rt.engine, device=rt.device, dtype=rt.dtype,
                    prompt_source=self.prompt_source, min_runs=self.min_runs, min_seconds=self.min_seconds,
                    rounds=self.rounds, launcher=self.launcher, seed=self.seed,
                    trust_remote_code=rt.trust_remote_code)

    def spec(self, model: str, context: int, batch: int) -> dict:
        """One point as `measure` takes it (JSON: it crosses to the point process)."""
        rt = self.runtime
        return dict(model=model, context=context, batch=batch, new_tokens=self.new_tokens, engine=rt.engine,
                    device=rt.device, dtype=rt.dtype, prompt_source=self.prompt_source, min_runs=self.min_runs,
                    min_seconds=self.min_seconds, seed=self.seed, trust_remote_code=rt.trust_remote_code)
