"""Lazy registry from architecture family names to their modules.

A family module is small and flat (nanoGPT / mamba.py style) and exposes:
  NAME: str                      family name shown in tables
  MODEL_TYPES: frozenset[str]    transformers `model_type`s it owns (the transformer family takes every other
                                 decoder-only type)
  LORA_TARGETS: dict[str, list]  default LoRA target modules per model_type ("*" = fallback)
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


def get(name: str) -> ModuleType:
    """Import and return the family module `name`; an unknown name lists the valid ones."""
    if name not in _MODULES:
        raise KeyError(f"unknown family {name!r}; known families: {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[name])
