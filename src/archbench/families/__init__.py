"""The architecture families: one typed `Family` per module in this package, found through a lazy registry.

A family is everything archbench knows about one architecture (cf. lm-evaluation-harness's small model API):
its name and the transformers `model_type`s it owns, how it is drawn, its tiny zoo checkpoints, its seed-study
prompt style, its LoRA targets, whether transformers' own forward honours left padding, its context window,
which layers hold attention, and the engine's functions (engine.py):

    prefill(model, seqs, state=None) -> state, logits   seqs: token lists or a (B, T) tensor; `state` is an
                                                        optional batch-1 prefix state every row continues;
                                                        logits (B, V) fp32 of each row's last token
    step(model, tokens, state) -> state, logits         tokens (B,): one decode step for every row
    select(state, rows) -> state                        keep rows (finished sequences leave the batch)
    state_bytes(state) -> int                           bytes of the KV cache / recurrent state
    kernel(model) -> str                                which code path runs the sequence mixing

Adding a family = one module that ends in `FAMILY = Family(...)` + one line in `_MODULES`. Modules are
imported only when a family is first asked for. A `model_type` no family claims is refused in one line
(never silently a Transformer).
"""
from __future__ import annotations

import importlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

_MODULES = {  # family name -> module; the order is the order of tables and plots
    "transformer": "archbench.families.transformer",
    "mamba": "archbench.families.mamba",
    "mamba2": "archbench.families.mamba2",
    "rwkv": "archbench.families.rwkv",
    "rwkv5": "archbench.families.rwkv5",
    "rwkv6": "archbench.families.rwkv6",
    "rwkv7": "archbench.families.rwkv7",
    "hybrid": "archbench.families.hybrid",
}


@dataclass(frozen=True)
class Family:
    name: str
    model_types: frozenset[str]  # transformers `model_type`s this family owns
    color: str  # matplotlib colour of its lines and bars
    tiny: dict[str, tuple[str, dict]]  # zoo alias -> (transformers config class, kwargs) of untrained models
    seed_style: str  # the seed study's prompt style for this family (prompts/seed-*.yaml)
    lora_targets: dict[str, list[str]]  # default LoRA target modules per model_type ("*" = fallback)
    pad_safe: bool  # transformers' forward honours a left-padded attention mask (the hf engine batches)
    layer_kinds: Callable[[object], list[str]]  # config -> the kind of each layer ("attention", "mamba", ...)
    prefill: Callable
    step: Callable
    select: Callable
    cat: Callable | None  # concatenate batch states (None: the family never needs it)
    state_bytes: Callable
    kernel: Callable
    lora_refused: frozenset[str] = field(default_factory=frozenset)  # module names peft refuses as targets

    def attention_layers(self, config) -> list[int]:
        """Indices of the layers that keep a KV cache (their memory grows with context)."""
        return [i for i, kind in enumerate(self.layer_kinds(config)) if "attention" in kind.split("+")]

    def context_window(self, config) -> int | None:
        """Tokens a prompt may have: the position limit of a model with attention layers, None otherwise."""
        if not self.attention_layers(config):
            return None
        for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None


def layer_mix(family: Family, config) -> str:
    """The layer mix of a model, e.g. '16 attention' or '2 attention + 6 mamba'."""
    counts = Counter(family.layer_kinds(config))
    return " + ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))


def names() -> list[str]:
    return list(_MODULES)


def get(name: str) -> Family:
    """The family `name`; an unknown name lists the valid ones."""
    if name not in _MODULES:
        raise KeyError(f"unknown family {name!r}; known families: {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[name]).FAMILY


def all_families() -> list[Family]:
    return [get(name) for name in _MODULES]


def family_of(model_type: str) -> str:
    """The family that owns a transformers `model_type`; one line naming the known types if none does."""
    for fam in all_families():
        if model_type in fam.model_types:
            return fam.name
    known = sorted(t for fam in all_families() for t in fam.model_types)
    raise KeyError(f"model_type {model_type!r} belongs to no archbench family (known: {', '.join(known)})")
