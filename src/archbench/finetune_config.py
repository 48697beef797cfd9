"""The settings of the LoRA fine-tuning recipe (finetune.py), one frozen dataclass with every default written once.

Torch-free on purpose: the CLI (`archbench finetune`) and the study schema (study.py) read the defaults and the
option names from here without importing torch. The fields follow LoRA (Hu et al. 2021) as `peft` exposes it
(rank, alpha, dropout, target modules) and torchtune's LoRA recipe (steps, warm-up, clipping, checkpoints).
A bad value raises `config.ConfigError` with a one-line message naming the option.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from archbench.config import DEFAULT_DB, ConfigError

SCHEDULES = ("cosine", "linear")
LOSS_ON = ("answer", "all")  # answer: loss on the answer + EOS only; all: every token
DEVICES = (None, "cpu", "cuda")  # None: CUDA when available; several GPUs are picked with CUDA_VISIBLE_DEVICES


@dataclass(frozen=True)
class FinetuneConfig:
    """One LoRA run: base model, training rows, output directory, and how to train."""

    model: str  # zoo alias, local directory or hub id
    train: str  # SQuAD train file or "squad" (hub)
    out: str  # output directory: adapter, finetune.json, train_log.jsonl, checkpoints
    prompt_style: str = "default"  # the eval prompt style the rows are rendered with
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    target_modules: tuple[str, ...] = ()  # () = the family's default targets; "a,b" items are split
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    lr: float = 2e-4
    batch_size: int = 8  # rows per micro-batch per process
    grad_accum: int = 1
    max_length: int = 1024  # tokens per row; longer rows get their context cut, never the answer
    schedule: str = "cosine"
    warmup_steps: int = 10
    max_grad_norm: float = 1.0  # 0 = no clipping
    loss_on: str = "answer"
    limit: int | None = None  # use the first N training rows
    eval_every: int = 0  # steps between held-out evals (0 = none)
    eval_data: str | None = None
    eval_limit: int = 20
    save_every: int = 20  # steps between checkpoints (0 = none; the last step always saves when > 0)
    resume: bool = False
    merge: bool = False  # also write base + adapter merged to OUT/merged
    seed: int = 1234
    device: str | None = None
    db: str = DEFAULT_DB

    def __post_init__(self):
        object.__setattr__(self, "target_modules", split_targets(self.target_modules))
        for option, ok, message in _checks(self):
            if not ok:
                raise ConfigError(f"{option}: {message}")


def split_targets(value) -> tuple[str, ...]:
    """Target module names from a string "a,b", a list of such strings (repeated options) or None."""
    items = [value] if isinstance(value, str) else list(value or ())
    return tuple(t.strip() for item in items for t in str(item).split(",") if t.strip())


def _checks(c: FinetuneConfig) -> list[tuple[str, bool, str]]:
    """(option, holds, message) for every rule a setting must follow."""
    return [
        ("--model", bool(c.model), "a model is needed"),
        ("--train", bool(c.train), "a training file is needed"),
        ("--out", bool(c.out), "an output directory is needed"),
        ("--lora-r", c.lora_r >= 1, f"must be >= 1, got {c.lora_r}"),
        ("--lora-alpha", c.lora_alpha > 0, f"must be > 0, got {c.lora_alpha}"),
        ("--lora-dropout", 0 <= c.lora_dropout < 1, f"must be in [0, 1), got {c.lora_dropout}"),
        ("--epochs", c.epochs > 0, f"must be > 0, got {c.epochs}"),
        ("--max-steps", c.max_steps is None or c.max_steps >= 1, f"must be >= 1, got {c.max_steps}"),
        ("--lr", c.lr > 0, f"must be > 0, got {c.lr}"),
        ("--batch-size", c.batch_size >= 1, f"must be >= 1, got {c.batch_size}"),
        ("--grad-accum", c.grad_accum >= 1, f"must be >= 1, got {c.grad_accum}"),
        ("--max-length", c.max_length >= 2, f"must be >= 2 tokens, got {c.max_length}"),
        ("--schedule", c.schedule in SCHEDULES, f"{c.schedule!r}: choose {' or '.join(SCHEDULES)}"),
        ("--warmup-steps", c.warmup_steps >= 0, f"must be >= 0, got {c.warmup_steps}"),
        ("--max-grad-norm", c.max_grad_norm >= 0, f"must be >= 0 (0 = no clipping), got {c.max_grad_norm}"),
        ("--loss-on", c.loss_on in LOSS_ON, f"{c.loss_on!r}: choose {' or '.join(LOSS_ON)}"),
        ("--limit", c.limit is None or c.limit >= 1, f"must be >= 1, got {c.limit}"),
        ("--eval-every", c.eval_every >= 0, f"must be >= 0 (0 = no periodic eval), got {c.eval_every}"),
        ("--eval-every", not (c.eval_every and not c.eval_data),
         "needs --eval-data: a held-out SQuAD file, e.g. squad_val_1k.jsonl"),
        ("--eval-limit", c.eval_limit >= 1, f"must be >= 1, got {c.eval_limit}"),
        ("--save-every", c.save_every >= 0, f"must be >= 0 (0 = no checkpoints), got {c.save_every}"),
        ("--device", c.device in DEVICES, f"{c.device!r}: cpu or cuda (pick GPUs with CUDA_VISIBLE_DEVICES)"),
    ]


# set by the caller, not by a study's fine-tune `args`: the study supplies model, train, out, device and db
FIXED = ("model", "train", "out", "device", "db")
# the fields a study's fine-tune `args` may set
STUDY_ARGS = tuple(f.name for f in dataclasses.fields(FinetuneConfig) if f.name not in FIXED)
# settings a resumed run must share with its checkpoint (the others only change logging and outputs); the base
# model and the training data are compared by content (the run's identity: finetune.py), not by name or path
RESUME_KEYS = ("prompt_style", "lora_r", "lora_alpha", "lora_dropout", "target_modules",
               "epochs", "max_steps", "lr", "batch_size", "grad_accum", "max_length", "schedule", "warmup_steps",
               "max_grad_norm", "loss_on", "limit", "seed", "world_size")


def settings_record(cfg: FinetuneConfig, world_size: int) -> dict:
    """The flat record of a run's settings, as stored in checkpoints, the store and finetune.json (targets
    None when the family's defaults are used, as earlier releases wrote them)."""
    return {**dataclasses.asdict(cfg), "target_modules": list(cfg.target_modules) or None, "world_size": world_size}
