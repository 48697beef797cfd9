"""Lazy registry from architecture family names to their modules.

A family module is small and flat (nanoGPT / mamba.py style) and exposes:
  NAME: str                      family name shown in tables
  MODEL_TYPES: frozenset[str]    transformers `model_type`s it owns (the transformer family takes every other
                                 decoder-only type)
  LORA_TARGETS: dict[str, list]  default LoRA target modules per model_type ("*" = fallback)
  LORA_REFUSED: set[str]         (optional) module names peft refuses as LoRA targets for this family
  PAD_SAFE: bool                 whether transformers' own forward honours a left-padded attention mask
and, for archbench's generation engine, `prefill` / `step` (see engine.py).
Modules are imported only when a family is first asked for.
"""
from __future__ import annotations

import importlib
from types import ModuleType

_MODULES = {
    "transformer": "archbench.families.transformer",
    "mamba": "archbench.families.mamba",
    "mamba2": "archbench.families.mamba2",
    "rwkv": "archbench.families.rwkv",
}
# model_type -> family for the recurrent families; anything else decoder-only is a transformer.
_RECURRENT = {"mamba": "mamba", "falcon_mamba": "mamba", "mamba2": "mamba2", "rwkv": "rwkv"}


def names() -> list[str]:
    return list(_MODULES)


def family_of(model_type: str) -> str:
    """Family name for a transformers `model_type`."""
    return _RECURRENT.get(model_type, "transformer")


def prefill_by_length(seqs, state, fresh, run, select, cat, device):
    """Prefill of a recurrent family without padding: rows of equal length run together, starting from the
    batch-1 prefix `state` or from `fresh(n)`; `run(ids (n, T), start) -> (state, (n, V) logits)`.
    Returns (state, (B, V) logits) with rows in the order of `seqs` (token lists or a (B, T) tensor)."""
    import torch

    seqs = seqs.tolist() if torch.is_tensor(seqs) else [list(s) for s in seqs]
    states, logits = [None] * len(seqs), [None] * len(seqs)
    for n in sorted({len(s) for s in seqs}):
        rows = [i for i, s in enumerate(seqs) if len(s) == n]
        start = select(state, torch.zeros(len(rows), dtype=torch.long)) if state else fresh(len(rows))
        st, lg = run(torch.tensor([seqs[i] for i in rows], device=device), start)
        for j, i in enumerate(rows):
            states[i], logits[i] = select(st, torch.tensor([j])), lg[j]
    return cat(states), torch.stack(logits)


def get(name: str) -> ModuleType:
    """Import and return the family module `name`; an unknown name lists the valid ones."""
    if name not in _MODULES:
        raise KeyError(f"unknown family {name!r}; known families: {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[name])
