"""Checkpoints of the LoRA recipe (finetune.py): the shared training state plus every process's RNG state,
so a resumed run continues bit for bit (torchtune's recipe checkpoints the same pieces: weights, optimizer,
schedule, step). Only the newest complete checkpoint is kept; its state.pt is written last and marks completion.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(out: Path) -> Path | None:
    done = sorted(p for p in out.glob("checkpoint-*") if (p / "state.pt").exists())
    return done[-1] if done else None


def save_checkpoint(accelerator, out: Path, step: int, state: dict) -> None:
    """Every process writes its RNG state, then the main one the shared state (state.pt marks completion)."""
    path = out / f"checkpoint-{step:06d}"
    path.mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), path / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save(state, path / "state.pt")
        for old in out.glob("checkpoint-*"):
            if old != path:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
